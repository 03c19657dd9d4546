//! The desired state of one host: the state document its agent installs, holding what
//! the host uses and nothing else, so that a change elsewhere in the region never reaches
//! it (docs/datapath.md §5, "What each host receives"):
//! - the ports that live on the host, and their VPCs ("local VPCs") with every subnet,
//!   route table, network ACL and security group of theirs;
//! - the peerings (in any status) of the local VPCs, and the VPCs at their other ends;
//! - once the host has registered in the fleet, the instances of other hosts it may
//!   exchange traffic with (those of the VPCs peered with a local VPC), the hosts that
//!   carry them, and, as far as those instances need them, their subnets (carried without
//!   route table or ACL, which their own hosts apply) and their security groups (carried
//!   as names, without rules: membership is all this host uses);
//! - the security groups of peer VPCs that a local group names as its peer, as names too.
//!
//! A host never learns an instance it cannot reach or be reached by. The control plane's
//! objects embed the document's types, so this is a selection, not a translation.
//! [`region_document`] is the whole region without ports: the control plane validates it
//! besides every host's document.

use crate::model::{Port, World};
use peer_dataplane_model::desired::document::{
    Document, PeeringDoc, RouteTableDoc, SecurityGroupDoc, SubnetDoc,
};
use std::collections::{BTreeMap, BTreeSet};

pub fn document(w: &World, host: &str) -> Document {
    document_with(w, host, true)
}

/// [`document`] with every route table empty: the objects, compared cheaply (deltas carry
/// routes apart, see `crate::deltas`).
pub fn document_without_routes(w: &World, host: &str) -> Document {
    document_with(w, host, false)
}

fn table_doc(t: &crate::model::RouteTable, routes: bool) -> RouteTableDoc {
    RouteTableDoc {
        id: t.id.clone(),
        vpc: t.vpc.clone(),
        routes: if routes {
            t.routes.values().cloned().collect()
        } else {
            Vec::new()
        },
    }
}

/// Every VPC, subnet, route table, peering, network ACL and security group of the region,
/// and no port.
pub fn region_document(w: &World) -> Document {
    region_document_with(w, true)
}

/// [`region_document`] with every route table empty (see [`document_without_routes`]).
pub fn region_document_without_routes(w: &World) -> Document {
    region_document_with(w, false)
}

fn region_document_with(w: &World, routes: bool) -> Document {
    Document {
        network_acls: w.network_acls.values().cloned().collect(),
        security_groups: w.security_groups.values().cloned().collect(),
        vpcs: w.vpcs.values().map(|v| v.spec.clone()).collect(),
        subnets: w.subnets.values().cloned().collect(),
        route_tables: w
            .route_tables
            .values()
            .map(|t| table_doc(t, routes))
            .collect(),
        peerings: w.peerings.values().map(|p| p.spec.clone()).collect(),
        ..Document::default()
    }
}

fn document_with(w: &World, host: &str, routes: bool) -> Document {
    let local: Vec<&Port> = w.ports.values().filter(|p| p.host() == host).collect();
    let fleet = w.hosts.contains_key(host);
    let here: BTreeSet<&str> = local.iter().filter_map(|p| vpc_of(w, p)).collect();
    let peerings: Vec<_> = w
        .peerings
        .values()
        .filter(|p| {
            here.contains(p.requester_vpc.as_str()) || here.contains(p.accepter_vpc.as_str())
        })
        .collect();
    // The VPCs at the other end of those peerings (a local VPC too, if two local VPCs
    // are peered).
    let peers: BTreeSet<&str> = peerings
        .iter()
        .flat_map(|p| {
            let a = here
                .contains(p.requester_vpc.as_str())
                .then_some(p.accepter_vpc.as_str());
            let b = here
                .contains(p.accepter_vpc.as_str())
                .then_some(p.requester_vpc.as_str());
            a.into_iter().chain(b)
        })
        .collect();
    let vpcs: BTreeSet<&str> = here.union(&peers).copied().collect();
    let remote = if fleet {
        remote_ports(w, host, &peers)
    } else {
        Vec::new()
    };
    let mut hosts: BTreeSet<&str> = remote.iter().map(|p| p.host()).collect();
    if fleet {
        hosts.insert(host);
    }
    // Only a fleet splits caps: a single host polices the whole of each.
    let senders = if fleet {
        sending_hosts(w)
    } else {
        BTreeMap::new()
    };
    // A peer's subnets and groups, as far as its instances (and the local groups naming
    // them) need them.
    let foreign_subnets: BTreeSet<&str> = remote.iter().map(|p| p.subnet.as_str()).collect();
    let mut foreign_groups: BTreeSet<&str> = remote
        .iter()
        .flat_map(|p| p.security_groups.iter().flatten())
        .map(String::as_str)
        .collect();
    for g in w
        .security_groups
        .values()
        .filter(|g| here.contains(g.vpc.as_str()))
    {
        foreign_groups.extend(
            g.rules
                .iter()
                .filter_map(|r| r.peer_security_group.as_deref()),
        );
    }
    let subnets = w.subnets.values().filter_map(|s| {
        if here.contains(s.vpc.as_str()) {
            Some(s.clone())
        } else if foreign_subnets.contains(s.id.as_str()) {
            Some(SubnetDoc {
                route_table: String::new(),
                network_acl: None,
                ..s.clone()
            })
        } else {
            None
        }
    });
    let groups = w.security_groups.values().filter_map(|g| {
        if here.contains(g.vpc.as_str()) {
            Some(g.clone())
        } else if foreign_groups.contains(g.id.as_str()) {
            Some(SecurityGroupDoc {
                rules: Vec::new(),
                ..g.clone()
            })
        } else {
            None
        }
    });
    Document {
        router_mac: None,
        local_host: fleet.then(|| host.to_string()),
        hosts: hosts.iter().map(|h| w.hosts[*h].clone()).collect(),
        network_acls: w
            .network_acls
            .values()
            .filter(|a| here.contains(a.vpc.as_str()))
            .cloned()
            .collect(),
        security_groups: groups.collect(),
        vpcs: vpcs.iter().map(|v| w.vpcs[*v].spec.clone()).collect(),
        subnets: subnets.collect(),
        route_tables: w
            .route_tables
            .values()
            .filter(|t| here.contains(t.vpc.as_str()))
            .map(|t| table_doc(t, routes))
            .collect(),
        // Cross-region peerings without a cap get the default when validated.
        peerings: peerings
            .iter()
            .map(|p| PeeringDoc {
                cap_shares: fleet.then(|| {
                    let n = |vpc: &str| senders.get(vpc).map_or(1, |h| h.len().max(1) as u32);
                    [n(&p.requester_vpc), n(&p.accepter_vpc)]
                }),
                ..p.spec.clone()
            })
            .collect(),
        ports: local.iter().map(|p| p.spec.clone()).collect(),
        remote_ports: remote.iter().map(|p| p.spec.clone()).collect(),
    }
}

/// The VPC of each port.
fn vpc_of<'a>(w: &'a World, p: &Port) -> Option<&'a str> {
    w.subnets.get(&p.subnet).map(|s| s.vpc.as_str())
}

/// Ports of other registered hosts in the VPCs `peers`.
fn remote_ports<'a>(w: &'a World, host: &str, peers: &BTreeSet<&str>) -> Vec<&'a Port> {
    w.ports
        .values()
        .filter(|p| p.host() != host && w.hosts.contains_key(p.host()))
        .filter(|p| vpc_of(w, p).is_some_and(|v| peers.contains(v)))
        .collect()
}

/// The hosts carrying ports of each VPC: a peering's cap in one direction is split evenly
/// among the hosts that can send in that direction.
fn sending_hosts(w: &World) -> BTreeMap<&str, BTreeSet<&str>> {
    let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for p in w.ports.values() {
        if let Some(v) = vpc_of(w, p) {
            out.entry(v).or_default().insert(p.host());
        }
    }
    out
}
