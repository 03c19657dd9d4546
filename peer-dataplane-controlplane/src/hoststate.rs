//! The desired state of one host: the state document its agent installs. Every VPC,
//! subnet, route table and peering (a host's ports may talk to any peer), the ports that
//! live on the host, and, once the host has registered in the fleet, the instances of other
//! hosts it may exchange traffic with: those of every VPC peered (in any status) with a
//! VPC that has a port here. Nothing else: a host never learns an instance it cannot reach
//! or be reached by. The control plane's objects embed the document's types, so this is a
//! selection, not a translation.

use crate::model::{Port, World};
use peer_dataplane_model::desired::document::{Document, PeeringDoc, RouteTableDoc};
use std::collections::{BTreeMap, BTreeSet};

pub fn document(w: &World, host: &str) -> Document {
    document_with(w, host, true)
}

/// [`document`] with every route table empty: the objects, compared cheaply (deltas carry
/// routes apart, see `crate::deltas`).
pub fn document_without_routes(w: &World, host: &str) -> Document {
    document_with(w, host, false)
}

fn document_with(w: &World, host: &str, routes: bool) -> Document {
    let local: Vec<&Port> = w.ports.values().filter(|p| p.host() == host).collect();
    let fleet = w.hosts.contains_key(host);
    let remote = if fleet {
        remote_ports(w, host, &local)
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
    Document {
        router_mac: None,
        local_host: fleet.then(|| host.to_string()),
        hosts: hosts.iter().map(|h| w.hosts[*h].clone()).collect(),
        network_acls: w.network_acls.values().cloned().collect(),
        security_groups: w.security_groups.values().cloned().collect(),
        vpcs: w.vpcs.values().map(|v| v.spec.clone()).collect(),
        subnets: w.subnets.values().cloned().collect(),
        route_tables: w
            .route_tables
            .values()
            .map(|t| RouteTableDoc {
                id: t.id.clone(),
                vpc: t.vpc.clone(),
                routes: if routes {
                    t.routes.values().cloned().collect()
                } else {
                    Vec::new()
                },
            })
            .collect(),
        // Cross-region peerings without a cap get the default when validated.
        peerings: w
            .peerings
            .values()
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

/// Ports of other registered hosts in VPCs peered with a VPC that has a port in `local`.
fn remote_ports<'a>(w: &'a World, host: &str, local: &[&Port]) -> Vec<&'a Port> {
    let here: BTreeSet<&str> = local.iter().filter_map(|p| vpc_of(w, p)).collect();
    let peers: BTreeSet<&str> = w
        .peerings
        .values()
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
