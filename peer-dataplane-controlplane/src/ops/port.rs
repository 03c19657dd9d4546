//! Ports: instance attachments, placed on a host.

use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

pub fn create_port(w: &World, c: &Caller, r: CreatePort) -> Result<(World, Port)> {
    let s = owned_subnet(w, c, &r.subnet_id)
        .map_err(|e| ApiError {
            message: format!("subnet_id: {}", e.message),
            ..e
        })?
        .clone();
    if r.host.is_empty() || r.host.len() > 64 {
        return Err(ApiError::invalid_request("host: must be 1 to 64 bytes"));
    }
    rules::port_interface("interface", &r.interface)?;
    if let Some(h) = w.hosts.get(&r.host) {
        rules::port_not_on_uplink("interface", &r.interface, &h.id, h.uplink.as_deref())?;
    }
    if r.interface.contains('/') {
        return Err(ApiError::invalid_request(format!(
            "interface: \"{}\" is not a valid interface name",
            r.interface
        )));
    }
    rules::mac("port", "mac", &r.mac)?;
    if r.ipv4.is_none() && r.ipv6.is_none() {
        return Err(ApiError::invalid_request(
            "ipv4, ipv6: a port needs at least one address",
        ));
    }
    if let Some(a) = &r.ipv4 {
        let ip: Ipv4Addr = a.parse().map_err(|_| {
            ApiError::invalid_request(format!("ipv4: \"{a}\" is not an IPv4 address"))
        })?;
        let net: IpNet = s.cidr.parse().unwrap();
        if !net.contains(&std::net::IpAddr::V4(ip)) {
            return Err(ApiError::invalid_request(format!(
                "ipv4: {ip} is not inside subnet {} ({})",
                s.id, s.cidr
            )));
        }
    }
    if let Some(a) = &r.ipv6 {
        let ip: Ipv6Addr = a.parse().map_err(|_| {
            ApiError::invalid_request(format!("ipv6: \"{a}\" is not an IPv6 address"))
        })?;
        let inside = s
            .ipv6_cidr
            .as_ref()
            .and_then(|n| n.parse::<IpNet>().ok())
            .map(|n| n.contains(&std::net::IpAddr::V6(ip)));
        if inside != Some(true) {
            return Err(ApiError::invalid_request(format!(
                "ipv6: {ip} is not inside subnet {} ({})",
                s.id,
                s.ipv6_cidr.as_deref().unwrap_or("no IPv6 CIDR")
            )));
        }
    }
    for other in w.ports.values() {
        if other.host() == r.host && other.interface == r.interface {
            return Err(ApiError::already_exists(format!(
                "interface: host {} already has port {} on {}",
                r.host, other.id, r.interface
            )));
        }
        let same_vpc = w
            .subnets
            .get(&other.subnet)
            .map(|o| o.vpc == s.vpc)
            .unwrap_or(false);
        for (mine, theirs) in [(&r.ipv4, &other.ipv4), (&r.ipv6, &other.ipv6)] {
            if same_vpc && mine.is_some() && mine == theirs {
                return Err(ApiError::address_in_use(format!(
                    "address {} is already used by port {} in vpc {}",
                    mine.as_ref().unwrap(),
                    other.id,
                    s.vpc
                )));
            }
        }
    }
    for g in &r.security_groups {
        let sg = w
            .security_groups
            .get(g)
            .ok_or_else(|| ApiError::not_found(format!("security_groups: {g} does not exist")))?;
        if sg.vpc != s.vpc {
            return Err(ApiError::invalid_request(format!(
                "security_groups: {g} belongs to vpc {}, not {}",
                sg.vpc, s.vpc
            )));
        }
    }
    let mut w = w.clone();
    let id = new_id(&mut w, r.id.as_deref(), "port", |o| &o.ports)?;
    let p = Port {
        id: id.clone(),
        spec: PortDoc {
            interface: r.interface,
            host: Some(r.host),
            subnet: s.id,
            mac: r.mac.to_ascii_lowercase(),
            ipv4: r.ipv4,
            ipv6: r.ipv6,
            gateway_mac: None,
            // A port created without groups is not filtered by them.
            security_groups: (!r.security_groups.is_empty()).then_some(r.security_groups),
        },
    };
    w.ports.insert(id, p.clone());
    Ok((w, p))
}

pub fn delete_port(w: &World, c: &Caller, id: &str) -> Result<World> {
    let p = w
        .ports
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("port {id} does not exist")))?;
    owned_subnet(w, c, &p.subnet)?;
    let mut w = w.clone();
    w.ports.remove(id);
    Ok(w)
}
