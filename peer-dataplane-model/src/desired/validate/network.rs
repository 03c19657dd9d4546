//! VPCs, route tables and subnets.

use super::checker::Checker;
use super::{RouteTable, Subnet, Target, Topology, Vpc};
use crate::desired::document::{RouteDoc, RouteTableDoc, SubnetDoc, VpcDoc};
use crate::desired::rules::{self, join, overlaps};
use ipnet::IpNet;
use std::collections::BTreeMap;

pub fn check_vpc(c: &mut Checker, v: &VpcDoc) -> Option<Vpc> {
    let mut cidrs = Vec::new();
    if v.cidrs.is_empty() {
        c.err(format!("vpc {}: has no IPv4 CIDR", v.id));
    }
    for (i, s) in v.cidrs.iter().enumerate() {
        match c.cidr(&format!("vpc {} cidrs[{i}]", v.id), s) {
            Some(IpNet::V4(n)) => cidrs.push(IpNet::V4(n)),
            Some(IpNet::V6(_)) => c.err(format!(
                "vpc {} cidrs[{i}]: \"{s}\" is IPv6; put it in ipv6_cidr",
                v.id
            )),
            None => {}
        }
    }
    if let Some(s) = &v.ipv6_cidr {
        match c.cidr(&format!("vpc {} ipv6_cidr", v.id), s) {
            Some(IpNet::V6(n)) => cidrs.push(IpNet::V6(n)),
            Some(IpNet::V4(_)) => c.err(format!("vpc {} ipv6_cidr: \"{s}\" is IPv4", v.id)),
            None => {}
        }
    }
    for (i, a) in cidrs.iter().enumerate() {
        for b in &cidrs[i + 1..] {
            if overlaps(a, b) {
                c.err(format!("vpc {}: its CIDRs {a} and {b} overlap", v.id));
            }
        }
    }
    Some(Vpc {
        id: v.id.clone(),
        account: v.account.clone(),
        region: v.region.clone(),
        cidrs,
        vni: v.vni,
    })
}

pub fn check_route_table(
    c: &mut Checker,
    topo: &Topology,
    t: &RouteTableDoc,
) -> Option<RouteTable> {
    let Some(vpc) = topo.vpcs.get(&t.vpc) else {
        c.missing(
            "vpc",
            &t.vpc,
            format!("route table {}: vpc {} does not exist", t.id, t.vpc),
        );
        return None;
    };
    let mut routes = BTreeMap::new();
    for r in &t.routes {
        let what = format!("route table {} route {}", t.id, r.destination);
        let Some((dest, target)) = check_route(c, topo, vpc, &what, r) else {
            continue;
        };
        if routes.insert(dest, target).is_some() {
            c.err(format!("{what}: destination listed more than once"));
        }
    }
    // The implicit local routes of the VPC (as in the cloud: always present).
    for cidr in &vpc.cidrs {
        match routes.get(cidr) {
            None => {
                routes.insert(*cidr, Target::Local);
            }
            Some(Target::Local) => {}
            Some(other) => c.err(format!(
                "route table {} route {cidr}: the vpc's own CIDR must stay local, not {other:?}",
                t.id
            )),
        }
    }
    let via = routes
        .values()
        .filter_map(|t| match t {
            Target::Peering(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    Some(RouteTable {
        id: t.id.clone(),
        vpc: t.vpc.clone(),
        routes: std::sync::Arc::new(routes),
        via: std::sync::Arc::new(via),
    })
}

/// One route of a table of `vpc`: its destination and where it leads.
pub(super) fn check_route(
    c: &mut Checker,
    topo: &Topology,
    vpc: &Vpc,
    what: &str,
    r: &RouteDoc,
) -> Option<(IpNet, Target)> {
    let dest = c.cidr(what, &r.destination)?;
    let target = match r.target.as_str() {
        "local" => {
            if !vpc.cidrs.contains(&dest) {
                c.err(format!(
                    "{what}: target local must be one of vpc {}'s CIDRs ({})",
                    vpc.id,
                    join(&vpc.cidrs)
                ));
                return None;
            }
            Target::Local
        }
        "blackhole" => Target::Blackhole,
        pcx => {
            let Some(peering) = topo.peerings.get(pcx) else {
                c.missing(
                    "peering",
                    pcx,
                    format!("{what}: target {pcx} is not a known peering connection"),
                );
                return None;
            };
            let (req, acc) = (&peering.requester_vpc, &peering.accepter_vpc);
            c.check(rules::joins(what, pcx, req, acc, &vpc.id))?;
            let peer_vpc = &topo.vpcs[peering.other_side(&vpc.id)?];
            c.check(rules::inside_peer(
                what,
                &dest,
                pcx,
                &peer_vpc.id,
                &peer_vpc.cidrs,
            ))?;
            Target::Peering(pcx.to_string())
        }
    };
    Some((dest, target))
}

pub fn check_subnet(c: &mut Checker, topo: &Topology, s: &SubnetDoc) -> Option<Subnet> {
    let Some(vpc) = topo.vpcs.get(&s.vpc) else {
        c.missing(
            "vpc",
            &s.vpc,
            format!("subnet {}: vpc {} does not exist", s.id, s.vpc),
        );
        return None;
    };
    match topo.route_tables.get(&s.route_table) {
        // A peer's subnet in a fleet host's document: carried for its instances' addresses;
        // its route table and ACL are applied by the hosts of its own ports.
        None if s.route_table.is_empty() && topo.local_host.is_some() => {}
        None => {
            c.missing(
                "route table",
                &s.route_table,
                format!(
                    "subnet {}: route table {} does not exist",
                    s.id, s.route_table
                ),
            );
            return None;
        }
        Some(t) if t.vpc != s.vpc => {
            c.err(format!(
                "subnet {}: route table {} belongs to vpc {}, not {}",
                s.id, t.id, t.vpc, s.vpc
            ));
            return None;
        }
        Some(_) => {}
    }
    let cidr = match c.cidr(&format!("subnet {} cidr", s.id), &s.cidr) {
        Some(IpNet::V4(n)) => n,
        Some(IpNet::V6(_)) => {
            c.err(format!(
                "subnet {} cidr: \"{}\" is IPv6; put it in ipv6_cidr",
                s.id, s.cidr
            ));
            return None;
        }
        None => return None,
    };
    if !vpc.cidrs.iter().any(|v| v.contains(&IpNet::V4(cidr))) {
        c.err(format!(
            "subnet {}: {cidr} is not inside vpc {} ({})",
            s.id,
            vpc.id,
            join(&vpc.cidrs)
        ));
        return None;
    }
    let ipv6_cidr = match &s.ipv6_cidr {
        None => None,
        Some(text) => match c.cidr(&format!("subnet {} ipv6_cidr", s.id), text) {
            Some(IpNet::V6(n)) if vpc.cidrs.iter().any(|v| v.contains(&IpNet::V6(n))) => Some(n),
            Some(IpNet::V6(n)) => {
                c.err(format!(
                    "subnet {}: {n} is not inside vpc {}'s IPv6 CIDR",
                    s.id, vpc.id
                ));
                return None;
            }
            Some(IpNet::V4(_)) => {
                c.err(format!("subnet {} ipv6_cidr: \"{text}\" is IPv4", s.id));
                return None;
            }
            None => return None,
        },
    };
    for other in topo.subnets.values().filter(|o| o.vpc == s.vpc) {
        if overlaps(&IpNet::V4(other.cidr), &IpNet::V4(cidr)) {
            c.err(format!(
                "subnet {}: {cidr} overlaps subnet {} ({})",
                s.id, other.id, other.cidr
            ));
        }
    }
    if let Some(a) = &s.network_acl {
        match topo.network_acls.get(a) {
            None => {
                c.missing(
                    "network acl",
                    a,
                    format!("subnet {}: network acl {a} does not exist", s.id),
                );
                return None;
            }
            Some(acl) if acl.vpc != s.vpc => {
                c.err(format!(
                    "subnet {}: network acl {a} belongs to vpc {}, not {}",
                    s.id, acl.vpc, s.vpc
                ));
                return None;
            }
            Some(_) => {}
        }
    }
    Some(Subnet {
        id: s.id.clone(),
        vpc: s.vpc.clone(),
        cidr,
        ipv6_cidr,
        route_table: s.route_table.clone(),
        network_acl: s.network_acl.clone(),
    })
}
