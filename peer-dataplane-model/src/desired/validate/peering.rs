//! Peerings: both sides exist and differ, a status, caps per direction, and the peer-CIDR
//! rules of a VPC's live peerings.

use super::checker::Checker;
use super::{Cap, Peering, Topology, MIN_BURST_BYTES};
use crate::desired::document::PeeringDoc;
use crate::desired::rules::overlaps;

pub fn check_peering(c: &mut Checker, topo: &Topology, p: &PeeringDoc) -> Option<Peering> {
    let what = format!("peering {}", p.id);
    let mut ok = true;
    for (role, vpc) in [
        ("requester_vpc", &p.requester_vpc),
        ("accepter_vpc", &p.accepter_vpc),
    ] {
        if !topo.vpcs.contains_key(vpc) {
            c.missing("vpc", vpc, format!("{what}: {role} {vpc} does not exist"));
            ok = false;
        }
    }
    if p.requester_vpc == p.accepter_vpc {
        c.err(format!(
            "{what}: requester and accepter are the same vpc {}",
            p.requester_vpc
        ));
        ok = false;
    }
    if !ok {
        return None;
    }
    let status = p.status;
    if status.is_live() {
        let (a, b) = (&topo.vpcs[&p.requester_vpc], &topo.vpcs[&p.accepter_vpc]);
        for x in &a.cidrs {
            for y in &b.cidrs {
                if overlaps(x, y) {
                    c.err(format!(
                        "{what}: vpc {} CIDR {x} overlaps vpc {} CIDR {y}; overlapping VPCs cannot be peered (status must be failed)",
                        a.id, b.id
                   ));
                }
            }
        }
    }
    let caps = peering_caps(c, topo, p)?;
    Some(Peering {
        id: p.id.clone(),
        requester_vpc: p.requester_vpc.clone(),
        accepter_vpc: p.accepter_vpc.clone(),
        status,
        caps,
        tunnel_key: p.tunnel_key,
    })
}

/// docs/datapath.md §3.7: caps per direction; a cross-region peering always has one (1 Gbit/s).
fn peering_caps(c: &mut Checker, topo: &Topology, p: &PeeringDoc) -> Option<[Option<Cap>; 2]> {
    use peer_dataplane_common::cap::{default_burst_bytes, CROSS_REGION_DEFAULT_BPS};
    let what = format!("peering {}", p.id);
    let mut ok = true;
    for (field, v) in [
        ("bandwidth_mbps", p.bandwidth_mbps),
        (
            "bandwidth_mbps_requester_to_accepter",
            p.bandwidth_mbps_requester_to_accepter,
        ),
        (
            "bandwidth_mbps_accepter_to_requester",
            p.bandwidth_mbps_accepter_to_requester,
        ),
    ] {
        if let Some(m) = v {
            if !(1..=MAX_BANDWIDTH_MBPS).contains(&m) {
                c.err(format!(
                    "{what}: {field} {m} is outside 1..={MAX_BANDWIDTH_MBPS}"
                ));
                ok = false;
            }
        }
    }
    if let Some(b) = p.burst_bytes {
        if b < MIN_BURST_BYTES {
            c.err(format!(
                "{what}: burst_bytes {b} is below {MIN_BURST_BYTES} (one full frame)"
            ));
            ok = false;
        }
    }
    let shares = p.cap_shares.unwrap_or([1, 1]);
    if shares.contains(&0) {
        c.err(format!(
            "{what}: cap_shares {shares:?} must be 1 or more each"
        ));
        ok = false;
    }
    if !ok {
        return None;
    }
    let cross_region = topo.vpcs[&p.requester_vpc].region != topo.vpcs[&p.accepter_vpc].region;
    // In a fleet each sending host polices an equal share of the cap (and of its burst),
    // so that all of them together never exceed it.
    let cap = |dir: Option<u64>, share: u32| {
        let bps = match dir.or(p.bandwidth_mbps) {
            Some(m) => m * 1_000_000,
            None if cross_region => CROSS_REGION_DEFAULT_BPS,
            None => return None,
        };
        let burst = p.burst_bytes.unwrap_or(default_burst_bytes(bps));
        Some(Cap {
            bits_per_second: (bps / share as u64).max(1),
            burst_bytes: (burst / share as u64).max(MIN_BURST_BYTES),
        })
    };
    Some([
        cap(p.bandwidth_mbps_requester_to_accepter, shares[0]),
        cap(p.bandwidth_mbps_accepter_to_requester, shares[1]),
    ])
}

/// Highest cap accepted, in Mbit/s (400 Gbit/s, as the control plane's API).
pub const MAX_BANDWIDTH_MBPS: u64 = 400_000;

/// docs/datapath.md §3.4: the CIDRs of all peers of one VPC must not overlap, and two VPCs are joined
/// by at most one live peering.
pub fn check_peer_cidrs(c: &mut Checker, topo: &Topology) {
    for vpc in topo.vpcs.keys() {
        let live: Vec<&Peering> = topo
            .peerings
            .values()
            .filter(|p| p.status.is_live() && p.other_side(vpc).is_some())
            .collect();
        for (i, p) in live.iter().enumerate() {
            let peer_p = p.other_side(vpc).unwrap();
            for q in &live[i + 1..] {
                let peer_q = q.other_side(vpc).unwrap();
                if peer_p == peer_q {
                    // Reported once, from the lexically smaller side.
                    if vpc.as_str() < peer_p {
                        c.err(format!(
                            "peerings {} and {} both join vpc {vpc} and vpc {peer_p}",
                            p.id, q.id
                        ));
                    }
                    continue;
                }
                for x in &topo.vpcs[peer_p].cidrs {
                    for y in &topo.vpcs[peer_q].cidrs {
                        if overlaps(x, y) {
                            c.err(format!(
                                "vpc {vpc}: its peers {peer_p} ({x}, via {}) and {peer_q} ({y}, via {}) have overlapping CIDRs",
                                p.id, q.id
                           ));
                        }
                    }
                }
            }
        }
    }
}
