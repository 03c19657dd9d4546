//! The fleet: hosts and their underlay addresses, which one is this host, and the numbers
//! the overlay carries (VNIs of VPCs, tunnel keys of peerings), unique across the fleet.

use super::checker::Checker;
use super::{Host, Topology};
use crate::desired::document::{Document, HostDoc};
use crate::desired::rules;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub fn check_host(c: &mut Checker, h: &HostDoc) -> Option<Host> {
    let what = format!("host {}", h.id);
    let underlay_ipv4 = c.check(rules::underlay_ipv4(&what, &h.underlay_ipv4));
    let underlay_ipv6 = match &h.underlay_ipv6 {
        Some(s) => Some(c.check(rules::underlay_ipv6(&what, s))?),
        None => None,
    };
    if let Some(u) = &h.uplink {
        c.check(rules::interface(&format!("{what} uplink"), u));
    }
    Some(Host {
        id: h.id.clone(),
        underlay_ipv4: underlay_ipv4?,
        underlay_ipv6,
        uplink: h.uplink.clone(),
    })
}

/// No two hosts share an underlay address.
pub fn check_underlay_addresses(c: &mut Checker, t: &Topology) {
    let mut by_addr: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for h in t.hosts.values() {
        let addrs = [
            Some(IpAddr::V4(h.underlay_ipv4)),
            h.underlay_ipv6.map(IpAddr::V6),
        ];
        for a in addrs.into_iter().flatten() {
            if let Some(other) = by_addr.insert(a, &h.id) {
                c.err(format!(
                    "host {}: underlay address {a} is also host {other}'s",
                    h.id
                ));
            }
        }
    }
}

/// `local_host` names a host with an uplink; remote ports need it; in a fleet every VPC
/// has a VNI and every peering a tunnel key, each unique.
pub fn check_local_host(c: &mut Checker, t: &mut Topology, doc: &Document) {
    match &doc.local_host {
        None if !doc.remote_ports.is_empty() => {
            c.err("document: remote ports need local_host (this host's id among [[host]])".into())
        }
        None => return,
        Some(id) => match t.hosts.get(id) {
            None => c.missing("host", id, format!("local_host: host {id} does not exist")),
            Some(h) if h.uplink.is_none() => c.err(format!(
                "local_host: host {id} has no uplink (the interface the overlay uses)"
            )),
            Some(_) => t.local_host = Some(id.clone()),
        },
    }
    let mut vnis: BTreeMap<u32, &str> = BTreeMap::new();
    for v in &doc.vpcs {
        let what = format!("vpc {}", v.id);
        let Some(n) = v.vni else {
            c.err(format!("{what}: no vni (every VPC needs one in a fleet)"));
            continue;
        };
        if c.check(rules::vni(&what, n)).is_some() {
            if let Some(other) = vnis.insert(n, &v.id) {
                c.err(format!("{what}: vni {n} is also vpc {other}'s"));
            }
        }
    }
    let mut keys: BTreeMap<u32, &str> = BTreeMap::new();
    for p in &doc.peerings {
        match p.tunnel_key {
            None | Some(0) => c.err(format!(
                "peering {}: no tunnel_key (every peering needs one above 0 in a fleet)",
                p.id
            )),
            Some(k) => {
                if let Some(other) = keys.insert(k, &p.id) {
                    c.err(format!(
                        "peering {}: tunnel_key {k} is also peering {other}'s",
                        p.id
                    ));
                }
            }
        }
    }
}
