//! Validation: turns a [`Document`] into a [`Topology`] whose every reference resolves and
//! whose every invariant the data plane relies on holds (docs/datapath.md §3.4, §3.5), or
//! into a list of errors that each name the objects involved. Nothing is applied from a
//! document that fails here. Objects are checked in dependency order: what is referred to
//! before what refers to it.

mod checker;
mod fleet;
mod network;
mod peering;
mod policy;
mod port;
mod topology;

pub use crate::desired::rules::{format_mac, overlaps, parse_mac, v4_mapped_range, Mac, IFNAMSIZ};
pub use peering::MAX_BANDWIDTH_MBPS;
pub use topology::*;

use crate::desired::document::remote_port_key;
use crate::desired::document::Document;
use checker::Checker;
use std::collections::BTreeSet;

/// One route of `table` (an installed, valid topology's), checked as [`validate`] checks
/// it: where `destination` leads, or `None` if the route is to be removed and the table
/// then falls back to nothing (`None` target). A change the single-route path cannot make
/// alone (the VPC's own CIDRs, which stay `local` and are implicit) is an error too: the
/// caller validates the whole document instead.
pub fn route_change(
    topo: &Topology,
    table: &str,
    destination: &str,
    target: Option<&str>,
) -> Result<(ipnet::IpNet, Option<Target>), ValidationErrors> {
    let mut c = Checker::alone();
    let fail = |c: Checker| Err(ValidationErrors(c.errors));
    let Some(t) = topo.route_tables.get(table) else {
        c.err(format!("route table {table} does not exist"));
        return fail(c);
    };
    let vpc = &topo.vpcs[&t.vpc];
    let what = format!("route table {table} route {destination}");
    let Some(dest) = c.cidr(&what, destination) else {
        return fail(c);
    };
    if vpc.cidrs.contains(&dest) {
        c.err(format!(
            "{what}: one of the vpc's own CIDRs (validated whole)"
        ));
        return fail(c);
    }
    let Some(target) = target else {
        return Ok((dest, None));
    };
    let r = crate::desired::document::RouteDoc::new(destination, target);
    match network::check_route(&mut c, topo, vpc, &what, &r) {
        Some((dest, target)) if c.errors.is_empty() => Ok((dest, Some(target))),
        _ => fail(c),
    }
}

pub fn validate(doc: &Document) -> Result<Topology, ValidationErrors> {
    validate_reusing(doc, None, &BTreeSet::new())
}

/// [`validate`], given the topology `before` validated from an earlier version of `doc`
/// and the route tables whose routes changed since (`changed`): every other table of
/// `before` whose VPC keeps its CIDRs and whose peerings keep their two sides and their
/// peer's CIDRs (all a route's check reads) is carried over as it is, shared, without
/// reading its routes again. Everything else is checked as [`validate`] checks it.
pub fn validate_reusing(
    doc: &Document,
    before: Option<&Topology>,
    changed: &BTreeSet<String>,
) -> Result<Topology, ValidationErrors> {
    let mut c = Checker::for_document(doc);
    let mut t = Topology::default();
    let router_mac = match &doc.router_mac {
        None => DEFAULT_ROUTER_MAC,
        Some(s) => c
            .check(crate::desired::rules::mac("document", "router_mac", s))
            .unwrap_or(DEFAULT_ROUTER_MAC),
    };
    // The fleet first: ports name their hosts.
    let mut seen = BTreeSet::new();
    for h in &doc.hosts {
        if c.id("host", &h.id, &mut seen) {
            if let Some(x) = fleet::check_host(&mut c, h) {
                t.hosts.insert(h.id.clone(), x);
            }
        }
    }
    fleet::check_underlay_addresses(&mut c, &t);
    fleet::check_local_host(&mut c, &mut t, doc);
    let mut seen = BTreeSet::new();
    for v in &doc.vpcs {
        if c.id("vpc", &v.id, &mut seen) {
            if let Some(x) = network::check_vpc(&mut c, v) {
                t.vpcs.insert(v.id.clone(), x);
            }
        }
    }
    // Peerings before route tables: routes point at them.
    let mut seen = BTreeSet::new();
    for p in &doc.peerings {
        if c.id("peering", &p.id, &mut seen) {
            if let Some(x) = peering::check_peering(&mut c, &t, p) {
                t.peerings.insert(p.id.clone(), x);
            }
        }
    }
    peering::check_peer_cidrs(&mut c, &t);
    let mut seen = BTreeSet::new();
    for r in &doc.route_tables {
        if c.id("route table", &r.id, &mut seen) {
            let unchanged = before
                .filter(|_| !changed.contains(&r.id))
                .and_then(|b| reusable_table(b, &t, &r.id, &r.vpc));
            if let Some(x) = unchanged {
                t.route_tables.insert(r.id.clone(), x);
            } else if let Some(x) = network::check_route_table(&mut c, &t, r) {
                t.route_tables.insert(r.id.clone(), x);
            }
        }
    }
    // Network ACLs before subnets, security groups before ports: they are named there.
    let mut seen = BTreeSet::new();
    for a in &doc.network_acls {
        if c.vpc_object("network acl", &a.id, &a.vpc, &t, &mut seen) {
            if let Some(x) = policy::check_acl(&mut c, a) {
                t.network_acls.insert(a.id.clone(), x);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for g in &doc.security_groups {
        if c.vpc_object("security group", &g.id, &g.vpc, &t, &mut seen) {
            if let Some(x) = policy::check_security_group(&mut c, &t, doc, g) {
                t.security_groups.insert(g.id.clone(), x);
            }
        }
    }
    let mut seen = BTreeSet::new();
    for s in &doc.subnets {
        if c.id("subnet", &s.id, &mut seen) {
            if let Some(x) = network::check_subnet(&mut c, &t, s) {
                t.subnets.insert(s.id.clone(), x);
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut addresses = port::Addresses::new();
    for p in &doc.ports {
        if c.id("port", &p.interface, &mut seen) {
            if let Some(x) = port::check_port(&mut c, &t, p, false, router_mac, &mut addresses) {
                t.ports.insert(p.interface.clone(), x);
            }
        }
    }
    let keys: Vec<String> = doc.remote_ports.iter().map(remote_port_key).collect();
    let mut seen = BTreeSet::new();
    for (p, key) in doc.remote_ports.iter().zip(&keys) {
        if c.id("remote port", key, &mut seen) {
            if let Some(x) = port::check_port(&mut c, &t, p, true, router_mac, &mut addresses) {
                t.remote_ports.insert(key.clone(), x);
            }
        }
    }
    if c.errors.is_empty() {
        Ok(t)
    } else {
        Err(ValidationErrors(c.errors))
    }
}

/// `before`'s table `id` (of `vpc`), if nothing a check of its routes reads has changed in
/// `now` (the topology validated so far: VPCs and peerings).
fn reusable_table(before: &Topology, now: &Topology, id: &str, vpc: &str) -> Option<RouteTable> {
    let old = before.route_tables.get(id)?;
    let cidrs = |t: &Topology, v: &str| t.vpcs.get(v).map(|v| v.cidrs.clone());
    let same_vpc = |v: &str| cidrs(before, v).is_some() && cidrs(before, v) == cidrs(now, v);
    if old.vpc != vpc || !same_vpc(vpc) {
        return None;
    }
    for p in old.via.iter() {
        let (a, b) = (before.peerings.get(p), now.peerings.get(p));
        match (a, b) {
            (Some(a), Some(b))
                if a.requester_vpc == b.requester_vpc
                    && a.accepter_vpc == b.accepter_vpc
                    && same_vpc(&b.requester_vpc)
                    && same_vpc(&b.accepter_vpc) => {}
            _ => return None,
        }
    }
    Some(old.clone())
}
