//! Ports: the instance attachments on this host.

use super::checker::Checker;
use super::{Port, Topology, MAX_PORT_SECURITY_GROUPS};
use crate::desired::document::PortDoc;
use crate::desired::rules::{self, Mac};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Addresses in use: (VPC, address) -> the port that has it.
pub type Addresses = BTreeMap<(String, IpAddr), String>;

/// A port of this host (`remote` false) or of another host of the fleet.
pub fn check_port(
    c: &mut Checker,
    topo: &Topology,
    p: &PortDoc,
    remote: bool,
    router_mac: Mac,
    addresses: &mut Addresses,
) -> Option<Port> {
    let what = match (&p.host, remote) {
        (Some(h), true) => format!("remote port {h}/{}", p.interface),
        _ => format!("port {}", p.interface),
    };
    c.check(rules::port_interface(&what, &p.interface));
    let host = check_host(c, topo, p, remote, &what)?;
    // The host that carries it: named for a remote port, this host for a local one.
    let carrier = host.as_ref().or(topo.local_host.as_ref());
    if let Some(h) = carrier.and_then(|h| topo.hosts.get(h)) {
        c.check(rules::port_not_on_uplink(
            &what,
            &p.interface,
            &h.id,
            h.uplink.as_deref(),
        ));
    }
    let Some(subnet) = topo.subnets.get(&p.subnet) else {
        c.missing(
            "subnet",
            &p.subnet,
            format!("{what}: subnet {} does not exist", p.subnet),
        );
        return None;
    };
    if !remote && subnet.route_table.is_empty() {
        c.err(format!(
            "{what}: subnet {} is carried as a peer's (no route table here); a port of this host cannot be in it",
            subnet.id
        ));
        return None;
    }
    let mac = c.check(rules::mac(&what, "mac", &p.mac));
    let gateway_mac = match &p.gateway_mac {
        None => Some(router_mac),
        Some(s) => c.check(rules::mac(&what, "gateway_mac", s)),
    };
    let ipv4 = p.ipv4.as_deref().and_then(|s| match s.parse::<Ipv4Addr>() {
        Ok(a) if subnet.cidr.contains(&a) => Some(a),
        Ok(a) => {
            c.err(format!(
                "{what}: ipv4 {a} is not inside subnet {} ({})",
                subnet.id, subnet.cidr
            ));
            None
        }
        Err(_) => {
            c.err(format!("{what}: ipv4 \"{s}\" is not an IPv4 address"));
            None
        }
    });
    let ipv6 = p
        .ipv6
        .as_deref()
        .and_then(|s| match (s.parse::<Ipv6Addr>(), subnet.ipv6_cidr) {
            (Ok(a), Some(net)) if net.contains(&a) => Some(a),
            (Ok(a), net) => {
                let net = net
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "no IPv6 CIDR".into());
                c.err(format!(
                    "{what}: ipv6 {a} is not inside subnet {} ({net})",
                    subnet.id
                ));
                None
            }
            (Err(_), _) => {
                c.err(format!("{what}: ipv6 \"{s}\" is not an IPv6 address"));
                None
            }
        });
    if p.ipv4.is_none() && p.ipv6.is_none() {
        c.err(format!("{what}: has neither ipv4 nor ipv6"));
    }
    for a in ipv4.map(IpAddr::V4).into_iter().chain(ipv6.map(IpAddr::V6)) {
        if let Some(other) = addresses.insert((subnet.vpc.clone(), a), p.interface.clone()) {
            c.err(format!(
                "{what}: address {a} is already used by port {other} in vpc {}",
                subnet.vpc
            ));
        }
    }
    let security_groups = p.security_groups.as_ref().map(|groups| {
        let mut sorted: Vec<String> = groups.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() > MAX_PORT_SECURITY_GROUPS {
            c.err(format!(
                "{what}: {} security groups, at most {MAX_PORT_SECURITY_GROUPS}",
                sorted.len()
            ));
        }
        for g in &sorted {
            match topo.security_groups.get(g) {
                Some(sg) if sg.vpc != subnet.vpc => c.err(format!(
                    "{what}: security group {g} belongs to vpc {}, not the port's vpc {}",
                    sg.vpc, subnet.vpc
                )),
                Some(_) => {}
                None => c.missing(
                    "security group",
                    g,
                    format!("{what}: security group {g} does not exist"),
                ),
            }
        }
        sorted
    });
    Some(Port {
        interface: p.interface.clone(),
        host,
        subnet: p.subnet.clone(),
        mac: mac?,
        gateway_mac: gateway_mac?,
        ipv4,
        ipv6,
        security_groups,
    })
}

/// The carrying host: none for this host's ports (which may name it), a known other host
/// for remote ones. `None` (the outer option) when that is broken.
fn check_host(
    c: &mut Checker,
    topo: &Topology,
    p: &PortDoc,
    remote: bool,
    what: &str,
) -> Option<Option<String>> {
    let local = topo.local_host.as_ref();
    match (&p.host, remote) {
        (None, false) => Some(None),
        // Outside a fleet the name of this host is just a label.
        (Some(h), false) if local.is_none() || Some(h) == local => Some(None),
        (Some(h), false) => {
            c.err(format!(
                "{what}: host {h} is not this host; a port of another host is a [[remote_port]]"
            ));
            None
        }
        (None, true) => {
            c.err(format!(
                "{what}: no host (a remote port names the host that carries it)"
            ));
            None
        }
        (Some(h), true) if Some(h) == local => {
            c.err(format!(
                "{what}: host {h} is this host; its ports are [[port]]"
            ));
            None
        }
        (Some(h), true) if !topo.hosts.contains_key(h) => {
            c.missing("host", h, format!("{what}: host {h} does not exist"));
            None
        }
        (Some(h), true) => Some(Some(h.clone())),
    }
}
