//! `peer-dataplane peering|route|port|acl …`: what is installed, read back from the pinned
//! maps and named with the names map, so that it works while the agent is down.

use super::render::{bits_per_second, dash, table};
use crate::views::installed::{AclRuleHits, PeeringEntry, PortEntry, RouteEntry};
use peer_dataplane_common::DIRECTIONS;

pub fn render_peerings(ps: &[PeeringEntry]) -> String {
    let mut rows = Vec::new();
    for p in ps {
        for (dir, from, to, d) in [
            (
                0,
                &p.requester_vpc,
                &p.accepter_vpc,
                &p.requester_to_accepter,
            ),
            (
                1,
                &p.accepter_vpc,
                &p.requester_vpc,
                &p.accepter_to_requester,
            ),
        ] {
            rows.push(vec![
                p.id.clone(),
                p.status.to_string(),
                DIRECTIONS[dir].to_string(),
                format!("{from} -> {to}"),
                bits_per_second(d.cap_bps),
                d.burst_bytes.map_or("-".into(), |b| b.to_string()),
                d.packets.to_string(),
                d.dropped.to_string(),
            ]);
        }
    }
    table(
        &[
            "PEERING", "STATUS", "DIR", "VPCS", "CAP", "BURST", "PACKETS", "DROPPED",
        ],
        &rows,
    )
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

pub fn render_ports(ps: &[PortEntry]) -> String {
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
