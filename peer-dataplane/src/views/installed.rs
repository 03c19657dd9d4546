//! What is installed, named: peerings with their caps and traffic, routes, ports, and
//! per-rule ACL hits. Pure functions of one [`Snapshot`].

use super::{ip, Names};
use crate::bpf::maps::Snapshot;
use crate::desired::validate::format_mac;
use anyhow::{bail, Result};
use peer_dataplane_common::{
    acl::{acl_set_id, acl_set_is_egress},
    addr,
    cap::CapConfig,
    pcx_status_str, route_table_generation, route_table_id, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, ENDPOINT_REMOTE, NAME_ACL, NAME_HOST, NAME_PEERING, NAME_PORT,
    NAME_ROUTE_TABLE, NAME_SUBNET, NAME_VPC, PORT_HAS_IPV4, PORT_HAS_IPV6, ROUTE_BLACKHOLE,
    ROUTE_LOCAL, ROUTE_PCX, ROUTE_TABLE_BITS, VPC_TABLE_BASE,
};
use serde::Serialize;
use std::collections::BTreeMap;

pub use crate::desired::rules::{EGRESS, INGRESS};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeeringEntry {
    pub id: String,
    pub slot: u32,
    pub status: &'static str,
    pub requester_vpc: String,
    pub accepter_vpc: String,
    pub requester_to_accepter: Direction,
    pub accepter_to_requester: Direction,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Direction {
    pub cap_bps: Option<u64>,
    pub burst_bytes: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
}

fn direction(cap: &CapConfig, c: &peer_dataplane_common::counters::PeeringCounters) -> Direction {
    Direction {
        cap_bps: cap.is_capped().then(|| cap.bits_per_second()),
        burst_bytes: cap.is_capped().then(|| cap.burst_bytes()),
        packets: c.packets,
        bytes: c.bytes,
        dropped: c.drop.iter().sum(),
    }
}

pub fn peerings(snap: &Snapshot) -> Vec<PeeringEntry> {
    let names = Names(&snap.state);
    let mut out = Vec::new();
    for (slot, p) in &snap.state.peerings {
        let (ra, ar) = snap.peering_counters(*slot);
        out.push(PeeringEntry {
            id: names.get(NAME_PEERING, *slot),
            slot: *slot,
            status: pcx_status_str(p.status),
            requester_vpc: names.get(NAME_VPC, p.requester_vpc),
            accepter_vpc: names.get(NAME_VPC, p.accepter_vpc),
            requester_to_accepter: direction(&p.cap[DIR_REQUESTER_TO_ACCEPTER as usize], &ra),
            accepter_to_requester: direction(&p.cap[DIR_ACCEPTER_TO_REQUESTER as usize], &ar),
        });
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

pub fn peering(snap: &Snapshot, id: &str) -> Result<PeeringEntry> {
    let all = peerings(snap);
    let known: Vec<String> = all.iter().map(|p| p.id.clone()).collect();
    match all.into_iter().find(|p| p.id == id) {
        Some(p) => Ok(p),
        None => bail!(
            "peering {id} is not installed (installed: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RouteEntry {
    pub table: String,
    /// Which of the table's two generations holds it (see `route_table_key`).
    pub generation: u32,
    pub destination: String,
    /// `local`, `blackhole`, a peering id, or `vpc-cidr` (the per-VPC CIDR tables).
    pub target: String,
}

/// A route key's prefix, printed in its family.
pub fn route_prefix(data: &[u8; 16], prefix_len: u32) -> String {
    let bits = prefix_len - ROUTE_TABLE_BITS;
    if addr::is_v4_mapped(data) && bits >= addr::V4_MAPPED_PREFIX_BITS {
        format!("{}/{}", ip(data), bits - addr::V4_MAPPED_PREFIX_BITS)
    } else {
        format!("{}/{}", ip(data), bits)
    }
}

/// Routes of every route table (or only `only`), and with `vpc_tables` the per-VPC CIDR
/// tables the program uses for "is this address inside VPC v".
pub fn routes(snap: &Snapshot, only: Option<&str>, vpc_tables: bool) -> Result<Vec<RouteEntry>> {
    let state = &snap.state;
    let names = Names(state);
    let mut out = Vec::new();
    for (k, v) in &state.routes {
        let key = u32::from_be_bytes(k.data.table_be);
        let (table, generation) = if key >= VPC_TABLE_BASE {
            if !vpc_tables {
                continue;
            }
            (
                format!("vpc:{}", names.get(NAME_VPC, key & !VPC_TABLE_BASE)),
                0,
            )
        } else {
            (
                names.get(NAME_ROUTE_TABLE, route_table_id(key)),
                route_table_generation(key),
            )
        };
        if only.is_some_and(|t| t != table) {
            continue;
        }
        let target = match v.kind {
            ROUTE_LOCAL => "local".to_string(),
            ROUTE_BLACKHOLE => "blackhole".to_string(),
            ROUTE_PCX => names.get(NAME_PEERING, v.target),
            _ => "vpc-cidr".to_string(),
        };
        out.push(RouteEntry {
            table,
            generation,
            destination: route_prefix(&k.data.addr, k.prefix_len),
            target,
        });
    }
    if let Some(t) = only {
        if out.is_empty()
            && !state
                .names
                .iter()
                .any(|(k, n)| k.kind == NAME_ROUTE_TABLE && n.as_str() == t)
        {
            bail!("route table {t} is not installed");
        }
    }
    out.sort_by(|a, b| (&a.table, &a.destination).cmp(&(&b.table, &b.destination)));
    Ok(out)
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PortEntry {
    pub interface: String,
    pub ifindex: u32,
    pub vpc: String,
    pub subnet: String,
    pub route_table: String,
    pub mac: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    /// The subnet's network ACL, if any.
    pub network_acl: Option<String>,
    /// The compiled set of the port's security groups (`sgs:…`), if any.
    pub security_groups: Option<String>,
    /// The host that carries the instance: this host's name in a fleet (null on a single
    /// host), or the other host of a remote instance.
    pub host: Option<String>,
    /// An instance on another host (reached through the overlay): no interface here, and
    /// its host checks its subnet's ACL and its security groups.
    pub remote: bool,
}

/// Installed ports, then (in a fleet) the instances of other hosts this host may exchange
/// traffic with.
pub fn ports(snap: &Snapshot) -> Vec<PortEntry> {
    let mut out = local_ports(snap);
    out.extend(remote_instances(snap));
    out
}

fn local_ports(snap: &Snapshot) -> Vec<PortEntry> {
    let here = snap
        .state
        .overlay
        .get(&0)
        .map(|o| Names(&snap.state).get(NAME_HOST, o.host));
    let names = Names(&snap.state);
    let mut out: Vec<PortEntry> = snap
        .state
        .ports
        .iter()
        .map(|(ifindex, p)| PortEntry {
            interface: names.get(NAME_PORT, *ifindex),
            ifindex: *ifindex,
            vpc: names.get(NAME_VPC, p.vpc),
            subnet: names.get(NAME_SUBNET, p.subnet),
            route_table: names.get(NAME_ROUTE_TABLE, route_table_id(p.route_table)),
            mac: format_mac(&p.mac),
            ipv4: (p.flags & PORT_HAS_IPV4 != 0).then(|| ip(&p.ipv4).to_string()),
            ipv6: (p.flags & PORT_HAS_IPV6 != 0).then(|| ip(&p.ipv6).to_string()),
            network_acl: names.acl(p.acl),
            security_groups: names.security_groups(p.sg),
            host: here.clone(),
            remote: false,
        })
        .collect();
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    out
}

/// Remote endpoints, one entry per instance (its IPv4 and IPv6 endpoints share a MAC).
fn remote_instances(snap: &Snapshot) -> Vec<PortEntry> {
    let names = Names(&snap.state);
    let mut by_instance: BTreeMap<(String, String, [u8; 6]), PortEntry> = BTreeMap::new();
    for (k, e) in &snap.state.endpoints {
        if e.flags & ENDPOINT_REMOTE == 0 {
            continue;
        }
        let (host, vpc) = (names.get(NAME_HOST, e.host), names.get(NAME_VPC, k.vpc));
        let entry = by_instance
            .entry((host.clone(), vpc.clone(), e.mac))
            .or_insert_with(|| PortEntry {
                interface: "-".into(),
                ifindex: 0,
                vpc,
                subnet: "-".into(),
                route_table: "-".into(),
                mac: format_mac(&e.mac),
                ipv4: None,
                ipv6: None,
                network_acl: None,
                security_groups: None,
                host: Some(host),
                remote: true,
            });
        let a = ip(&k.addr);
        if a.is_ipv4() {
            entry.ipv4 = Some(a.to_string());
        } else {
            entry.ipv6 = Some(a.to_string());
        }
    }
    by_instance.into_values().collect()
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AclRuleHits {
    pub acl: String,
    pub direction: &'static str,
    pub rule: u32,
    pub action: &'static str,
    /// Packets this rule decided, summed over CPUs, since the ACL (in this form) was
    /// installed.
    pub hits: u64,
}

/// Per-rule hits of every installed network ACL (or only `only`), by ACL, direction and
/// rule number.
pub fn acl_hits(snap: &Snapshot, only: Option<&str>) -> Result<Vec<AclRuleHits>> {
    use peer_dataplane_common::acl::{bit_set, NO_HITS};
    let state = &snap.state;
    let names = Names(state);
    let mut out = Vec::new();
    for (set, meta) in &state.acl_meta {
        if meta.hit_base == NO_HITS {
            continue;
        }
        let acl = names.get(NAME_ACL, acl_set_id(*set));
        if only.is_some_and(|a| a != acl) {
            continue;
        }
        for i in 0..meta.rules {
            let slot = meta.hit_base + i;
            let rule = names
                .get(peer_dataplane_common::NAME_ACL_RULE, slot)
                .parse()
                .unwrap_or(0);
            out.push(AclRuleHits {
                acl: acl.clone(),
                direction: if acl_set_is_egress(*set) {
                    EGRESS
                } else {
                    INGRESS
                },
                rule,
                action: if bit_set(&meta.allow, i) {
                    "allow"
                } else {
                    "deny"
                },
                hits: snap.acl_hits.get(&slot).copied().unwrap_or(0),
            });
        }
    }
    if let Some(a) = only {
        if !state
            .names
            .iter()
            .any(|(k, n)| k.kind == NAME_ACL && n.as_str() == a)
        {
            bail!("network acl {a} is not installed");
        }
    }
    out.sort_by(|a, b| (&a.acl, a.direction, a.rule).cmp(&(&b.acl, b.direction, b.rule)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_print_in_their_family() {
        let v4 = addr::from_v4([10, 0, 0, 0]);
        assert_eq!(route_prefix(&v4, 32 + 96 + 16), "10.0.0.0/16");
        let v6: [u8; 16] = "fd00:b::".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert_eq!(route_prefix(&v6, 32 + 48), "fd00:b::/48");
    }
}
