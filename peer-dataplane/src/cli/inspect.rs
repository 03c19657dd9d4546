//! `peer-dataplane peering|route|port|acl …`: what is installed, read back from the pinned
//! maps and named with the names map, so that it works while the agent is down.

use super::render::{bits_per_second, dash, directions, table, table_of};
use crate::views::installed::{AclRuleHits, PeeringEntry, PortEntry, RouteEntry};

pub fn render_peerings(ps: &[PeeringEntry]) -> String {
    let mut rows = Vec::new();
    for p in ps {
        let (r2a, a2r) = (&p.requester_to_accepter, &p.accepter_to_requester);
        for (dir, vpcs, d) in directions(&p.requester_vpc, &p.accepter_vpc, r2a, a2r) {
            let burst = d.burst_bytes.map(|b| b.to_string());
            let cells = [p.id.clone(), p.status.into(), dir.into(), vpcs];
            let counts = [d.packets.to_string(), d.dropped.to_string()];
            let cap = [bits_per_second(d.cap_bps), dash(&burst)];
            rows.push([&cells[..], &cap, &counts].concat());
        }
    }
    let header = [
        "PEERING", "STATUS", "DIR", "VPCS", "CAP", "BURST", "PACKETS", "DROPPED",
    ];
    table(&header, &rows)
}

pub fn render_routes(rs: &[RouteEntry]) -> String {
    let header = ["TABLE", "DESTINATION", "TARGET", "GENERATION"];
    table_of(&header, rs, |r| {
        let gen = r.generation.to_string();
        [&r.table, &r.destination, &r.target, &gen]
            .map(String::clone)
            .to_vec()
    })
}

pub fn render_ports(ps: &[PortEntry]) -> String {
    let header = [
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
        "HOST",
    ];
    table_of(&header, ps, |p| {
        let names = [
            &p.interface,
            &p.ifindex.to_string(),
            &p.vpc,
            &p.subnet,
            &p.route_table,
            &p.mac,
        ]
        .map(String::clone);
        let optional = [&p.ipv4, &p.ipv6, &p.network_acl, &p.security_groups].map(dash);
        let host = match (&p.host, p.remote) {
            (Some(h), true) => format!("{h} (remote)"),
            (h, _) => dash(h),
        };
        [&names[..], &optional, &[host]].concat()
    })
}

pub fn render_acl_hits(hs: &[AclRuleHits]) -> String {
    let header = ["NETWORK ACL", "DIRECTION", "RULE", "ACTION", "HITS"];
    table_of(&header, hs, |h| {
        let (rule, hits) = (h.rule.to_string(), h.hits.to_string());
        [&h.acl, h.direction, &rule, h.action, &hits]
            .map(str::to_string)
            .to_vec()
    })
}
