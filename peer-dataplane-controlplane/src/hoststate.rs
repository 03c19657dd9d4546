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

use crate::world::{Port, World};
use peer_dataplane_model::desired::document::{
    Document, PeeringDoc, RouteTableDoc, SecurityGroupDoc, SubnetDoc,
};
use std::collections::{BTreeMap, BTreeSet};

/// Which objects each host and VPC has, computed once per world: a host's document is
/// then built from its own share of the region, not by scanning the region (a replica
/// builds one per parked long poll and per host a change may concern).
#[derive(Default)]
pub struct Index {
    /// Port ids by the host that carries them.
    ports_of_host: BTreeMap<String, BTreeSet<String>>,
    /// Port ids by VPC.
    ports_of_vpc: BTreeMap<String, BTreeSet<String>>,
    /// The hosts carrying ports of each VPC: a peering's cap in one direction is split
    /// evenly among the hosts that can send in that direction.
    senders: BTreeMap<String, BTreeSet<String>>,
    subnets_of_vpc: BTreeMap<String, BTreeSet<String>>,
    tables_of_vpc: BTreeMap<String, BTreeSet<String>>,
    acls_of_vpc: BTreeMap<String, BTreeSet<String>>,
    groups_of_vpc: BTreeMap<String, BTreeSet<String>>,
    peerings_of_vpc: BTreeMap<String, BTreeSet<String>>,
}

impl Index {
    pub fn of(w: &World) -> Index {
        fn add(m: &mut BTreeMap<String, BTreeSet<String>>, key: &str, id: &str) {
            match m.get_mut(key) {
                Some(ids) => drop(ids.insert(id.to_string())),
                None => drop(m.insert(key.to_string(), BTreeSet::from([id.to_string()]))),
            }
        }
        let mut ix = Index::default();
        for (id, p) in &w.ports {
            add(&mut ix.ports_of_host, p.host(), id);
            if let Some(v) = vpc_of(w, p) {
                add(&mut ix.ports_of_vpc, v, id);
                add(&mut ix.senders, v, p.host());
            }
        }
        for (id, s) in &w.subnets {
            add(&mut ix.subnets_of_vpc, &s.vpc, id);
        }
        for (id, t) in &w.route_tables {
            add(&mut ix.tables_of_vpc, &t.vpc, id);
        }
        for (id, a) in &w.network_acls {
            add(&mut ix.acls_of_vpc, &a.vpc, id);
        }
        for (id, g) in &w.security_groups {
            add(&mut ix.groups_of_vpc, &g.vpc, id);
        }
        for (id, p) in &w.peerings {
            add(&mut ix.peerings_of_vpc, &p.requester_vpc, id);
            add(&mut ix.peerings_of_vpc, &p.accepter_vpc, id);
        }
        ix
    }

    /// The ids `m` holds for any of `keys`, in id order.
    fn of_any<'a>(
        m: &'a BTreeMap<String, BTreeSet<String>>,
        keys: &BTreeSet<&str>,
    ) -> BTreeSet<&'a str> {
        keys.iter()
            .filter_map(|k| m.get(*k))
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

pub fn document(w: &World, host: &str) -> Document {
    document_in(w, &Index::of(w), host, true)
}

/// [`document`] with every route table empty: the objects, compared cheaply (deltas carry
/// routes apart, see `crate::history`).
pub fn document_without_routes(w: &World, host: &str) -> Document {
    document_in(w, &Index::of(w), host, false)
}

fn table_doc(t: &crate::world::RouteTable, routes: bool) -> RouteTableDoc {
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

/// Host `host`'s document in world `w`, whose index is `ix` (routes left out unless
/// `routes`).
pub fn document_in(w: &World, ix: &Index, host: &str, routes: bool) -> Document {
    let none = BTreeSet::new();
    let local: Vec<&Port> = ix
        .ports_of_host
        .get(host)
        .unwrap_or(&none)
        .iter()
        .map(|id| &w.ports[id])
        .collect();
    let fleet = w.hosts.contains_key(host);
    let here: BTreeSet<&str> = local.iter().filter_map(|p| vpc_of(w, p)).collect();
    let peerings: Vec<_> = Index::of_any(&ix.peerings_of_vpc, &here)
        .into_iter()
        .map(|id| &w.peerings[id])
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
    // Ports of other registered hosts in the peer VPCs.
    let remote: Vec<&Port> = if fleet {
        Index::of_any(&ix.ports_of_vpc, &peers)
            .into_iter()
            .map(|id| &w.ports[id])
            .filter(|p| p.host() != host && w.hosts.contains_key(p.host()))
            .collect()
    } else {
        Vec::new()
    };
    let mut hosts: BTreeSet<&str> = remote.iter().map(|p| p.host()).collect();
    if fleet {
        hosts.insert(host);
    }
    // A peer's subnets and groups, as far as its instances (and the local groups naming
    // them) need them.
    let foreign_subnets: BTreeSet<&str> = remote.iter().map(|p| p.subnet.as_str()).collect();
    let local_groups = Index::of_any(&ix.groups_of_vpc, &here);
    let mut foreign_groups: BTreeSet<&str> = remote
        .iter()
        .flat_map(|p| p.security_groups.iter().flatten())
        .map(String::as_str)
        .collect();
    for g in &local_groups {
        foreign_groups.extend(
            w.security_groups[*g]
                .rules
                .iter()
                .filter_map(|r| r.peer_security_group.as_deref()),
        );
    }
    let local_subnets = Index::of_any(&ix.subnets_of_vpc, &here);
    let subnets = local_subnets
        .union(&foreign_subnets)
        .filter_map(|id| w.subnets.get(*id))
        .map(|s| {
            if here.contains(s.vpc.as_str()) {
                s.clone()
            } else {
                SubnetDoc {
                    route_table: String::new(),
                    network_acl: None,
                    ..s.clone()
                }
            }
        });
    let groups = local_groups
        .union(&foreign_groups)
        .filter_map(|id| w.security_groups.get(*id))
        .map(|g| {
            if here.contains(g.vpc.as_str()) {
                g.clone()
            } else {
                SecurityGroupDoc {
                    rules: Vec::new(),
                    ..g.clone()
                }
            }
        });
    Document {
        router_mac: None,
        local_host: fleet.then(|| host.to_string()),
        hosts: hosts.iter().map(|h| w.hosts[*h].clone()).collect(),
        network_acls: Index::of_any(&ix.acls_of_vpc, &here)
            .into_iter()
            .map(|id| w.network_acls[id].clone())
            .collect(),
        security_groups: groups.collect(),
        vpcs: vpcs.iter().map(|v| w.vpcs[*v].spec.clone()).collect(),
        subnets: subnets.collect(),
        route_tables: Index::of_any(&ix.tables_of_vpc, &here)
            .into_iter()
            .map(|id| table_doc(&w.route_tables[id], routes))
            .collect(),
        // Cross-region peerings without a cap get the default when validated. Only a
        // fleet splits caps: a single host polices the whole of each.
        peerings: peerings
            .iter()
            .map(|p| PeeringDoc {
                cap_shares: fleet.then(|| {
                    let n = |vpc: &str| ix.senders.get(vpc).map_or(1, |h| h.len().max(1) as u32);
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
