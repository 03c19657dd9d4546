//! `peer-dataplane peering|route|port …`: what is installed, read back from the pinned maps
//! and named with the names map, so that it works while the agent is down.

use crate::conntrack::ip;
use crate::kernel::KernelMaps;
use crate::maps::MapState;
use crate::stats::table;
use crate::validate::format_mac;
use anyhow::{bail, Result};
use peer_dataplane_common::{
    acl::{acl_set_id, acl_set_is_egress, NO_ACL},
    addr,
    cap::CapConfig,
    pcx_status_str, route_table_generation, route_table_id, NameKey, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, NAME_ACL, NAME_PEERING, NAME_PORT, NAME_ROUTE_TABLE, NAME_SG_SET,
    NAME_SUBNET, NAME_VPC, PORT_HAS_IPV4, PORT_HAS_IPV6, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX,
    ROUTE_TABLE_BITS, VPC_TABLE_BASE,
};
use serde::Serialize;

/// Names by (kind, id), with `#id` for ids the names map does not know.
pub(crate) struct Names<'a>(pub &'a MapState);

impl Names<'_> {
    pub fn get(&self, kind: u32, id: u32) -> String {
        self.0
            .names
            .get(&NameKey { kind, id })
            .map(|n| n.as_str().to_string())
            .unwrap_or_else(|| format!("#{id}"))
    }

    /// The network ACL an ACL set belongs to, if any.
    pub fn acl(&self, set: u32) -> Option<String> {
        (set != NO_ACL).then(|| self.get(NAME_ACL, acl_set_id(set)))
    }

    /// The security groups a compiled group set stands for (`sg-a+sg-b`), if any.
    pub fn security_groups(&self, set: u32) -> Option<String> {
        (set != NO_ACL).then(|| {
            self.get(NAME_SG_SET, acl_set_id(set))
                .trim_start_matches("sgs:")
                .to_string()
        })
    }
}

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

pub fn peerings(maps: &KernelMaps) -> Result<Vec<PeeringEntry>> {
    let state = maps.read_state()?;
    let names = Names(&state);
    let mut out = Vec::new();
    for (slot, p) in &state.peerings {
        let (ra, ar) = maps.peering_counters(*slot)?;
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
    Ok(out)
}

pub fn peering(maps: &KernelMaps, id: &str) -> Result<PeeringEntry> {
    let all = peerings(maps)?;
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

fn cap_cell(d: &Direction) -> String {
    match d.cap_bps {
        None => "-".into(),
        Some(b) => format!("{} Mbit/s", b as f64 / 1e6),
    }
}

pub fn render_peerings(ps: &[PeeringEntry]) -> String {
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.status.to_string(),
                p.requester_vpc.clone(),
                p.accepter_vpc.clone(),
                cap_cell(&p.requester_to_accepter),
                cap_cell(&p.accepter_to_requester),
                format!(
                    "{}/{}",
                    p.requester_to_accepter.packets, p.accepter_to_requester.packets
                ),
                format!(
                    "{}/{}",
                    p.requester_to_accepter.dropped, p.accepter_to_requester.dropped
                ),
            ]
        })
        .collect();
    table(
        &[
            "PEERING",
            "STATUS",
            "REQUESTER",
            "ACCEPTER",
            "CAP REQ->ACC",
            "CAP ACC->REQ",
            "PACKETS ->/<-",
            "DROPPED ->/<-",
        ],
        &rows,
    )
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
pub fn routes(maps: &KernelMaps, only: Option<&str>, vpc_tables: bool) -> Result<Vec<RouteEntry>> {
    let state = maps.read_state()?;
    let names = Names(&state);
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

pub fn render_routes(rs: &[RouteEntry]) -> String {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                r.table.clone(),
                r.destination.clone(),
                r.target.clone(),
                r.generation.to_string(),
            ]
        })
        .collect();
    table(&["TABLE", "DESTINATION", "TARGET", "GENERATION"], &rows)
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
}

pub fn ports(maps: &KernelMaps) -> Result<Vec<PortEntry>> {
    let state = maps.read_state()?;
    let names = Names(&state);
    let mut out: Vec<PortEntry> = state
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
        })
        .collect();
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    Ok(out)
}

pub fn render_ports(ps: &[PortEntry]) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            vec![
                p.interface.clone(),
                p.ifindex.to_string(),
                p.vpc.clone(),
                p.subnet.clone(),
                p.route_table.clone(),
                p.mac.clone(),
                dash(&p.ipv4),
                dash(&p.ipv6),
                dash(&p.network_acl),
                dash(&p.security_groups),
            ]
        })
        .collect();
    table(
        &[
            "PORT",
            "IFINDEX",
            "VPC",
            "SUBNET",
            "ROUTE TABLE",
            "MAC",
            "IPV4",
            "IPV6",
            "NETWORK ACL",
            "SECURITY GROUPS",
        ],
        &rows,
    )
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
pub fn acl_hits(maps: &KernelMaps, only: Option<&str>) -> Result<Vec<AclRuleHits>> {
    acl_hits_in(maps, &maps.read_state()?, only)
}

/// [`acl_hits`] against a `state` already read back from `maps`.
pub fn acl_hits_in(
    maps: &KernelMaps,
    state: &MapState,
    only: Option<&str>,
) -> Result<Vec<AclRuleHits>> {
    use peer_dataplane_common::acl::{bit_set, NO_HITS};
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
                    "egress"
                } else {
                    "ingress"
                },
                rule,
                action: if bit_set(&meta.allow, i) {
                    "allow"
                } else {
                    "deny"
                },
                hits: maps.acl_hits(slot)?,
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

pub fn render_acl_hits(hs: &[AclRuleHits]) -> String {
    let rows: Vec<Vec<String>> = hs
        .iter()
        .map(|h| {
            vec![
                h.acl.clone(),
                h.direction.to_string(),
                h.rule.to_string(),
                h.action.to_string(),
                h.hits.to_string(),
            ]
        })
        .collect();
    table(
        &["NETWORK ACL", "DIRECTION", "RULE", "ACTION", "HITS"],
        &rows,
    )
}
