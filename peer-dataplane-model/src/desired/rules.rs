//! The invariants of single fields and rules, each checked by one function that both the
//! agent's validation and the control plane's API call. A failure says which field, what
//! is wrong with it, and (as a [`Fault`]) which API error code it maps to.

use super::acl::Protocol;
use ipnet::{IpNet, Ipv6Net};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest interface name the kernel takes, with its NUL (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

pub type Mac = [u8; 6];

/// Which kind of mistake a field has (the control plane's error code follows from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Not a CIDR, host bits set, or a reserved range.
    Cidr,
    /// A route target that cannot carry the route.
    Target,
    /// A route to a peer whose destination lies outside the peer VPC.
    OutsidePeer,
    /// Anything else about the request's fields.
    Request,
}

/// A field that breaks an invariant: the fault and a message naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub fault: Fault,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

pub type Check<T> = Result<T, Invalid>;

fn invalid<T>(fault: Fault, what: &str, msg: impl fmt::Display) -> Check<T> {
    Err(Invalid {
        fault,
        message: format!("{what}: {msg}"),
    })
}

/// A rule CIDR: a network address without host bits (ACL and security-group keys keep the
/// two families apart, so `::/0` is fine here).
pub fn rule_cidr(what: &str, s: &str) -> Check<IpNet> {
    match s.parse::<IpNet>() {
        Err(_) => invalid(
            Fault::Cidr,
            what,
            format!("\"{s}\" is not a CIDR (expected e.g. 10.0.0.0/16 or fd00::/48)"),
        ),
        Ok(net) if net.trunc() != net => invalid(
            Fault::Cidr,
            what,
            format!("\"{s}\" has host bits set (did you mean {}?)", net.trunc()),
        ),
        Ok(net) => Ok(net),
    }
}

/// A VPC, subnet or route CIDR: these become trie keys in the shared 128-bit space, so
/// IPv6 CIDRs over the IPv4-mapped range are refused.
pub fn cidr(what: &str, s: &str) -> Check<IpNet> {
    match rule_cidr(what, s)? {
        IpNet::V6(n) if overlaps(&IpNet::V6(n), &IpNet::V6(v4_mapped_range())) => invalid(
            Fault::Cidr,
            what,
            format!("\"{s}\" overlaps ::ffff:0:0/96 (IPv4-mapped), which is reserved"),
        ),
        net => Ok(net),
    }
}

/// `::ffff:0:0/96`: the map encoding of IPv4 addresses; refused as an IPv6 CIDR.
pub fn v4_mapped_range() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).unwrap()
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// CIDRs for a message: `a, b`.
pub fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one spelling of a rule's direction.
pub const INGRESS: &str = "ingress";
pub const EGRESS: &str = "egress";

/// A rule's direction: `true` for egress.
pub fn direction(what: &str, s: &str) -> Check<bool> {
    match s {
        INGRESS => Ok(false),
        EGRESS => Ok(true),
        d => invalid(
            Fault::Request,
            what,
            format!("direction \"{d}\" must be ingress or egress"),
        ),
    }
}

/// A rule's protocol: `all` (or `-1`), a name, or a number.
pub fn protocol(what: &str, s: &str) -> Check<Protocol> {
    Ok(match s {
        "all" | "-1" => Protocol::All,
        "tcp" => Protocol::Number(6),
        "udp" => Protocol::Number(17),
        "icmp" => Protocol::Number(1),
        "icmpv6" => Protocol::Number(58),
        n => match n.parse::<u8>() {
            Ok(n) => Protocol::Number(n),
            Err(_) => {
                return invalid(
                    Fault::Request,
                    what,
                    format!("protocol \"{n}\" must be all, tcp, udp, icmp, icmpv6 or a number"),
                )
            }
        },
    })
}

/// A rule's destination port range (TCP and UDP only).
fn ports(
    what: &str,
    from: Option<u16>,
    to: Option<u16>,
    protocol: Protocol,
) -> Check<Option<(u16, u16)>> {
    match (from, to) {
        (None, None) => Ok(None),
        (Some(lo), Some(hi)) if lo > hi => invalid(
            Fault::Request,
            what,
            format!("port_from {lo} is above port_to {hi}"),
        ),
        (Some(lo), Some(hi)) if matches!(protocol, Protocol::Number(6 | 17)) => Ok(Some((lo, hi))),
        (Some(_), Some(_)) => invalid(Fault::Request, what, "ports apply to tcp and udp only"),
        _ => invalid(
            Fault::Request,
            what,
            "give both port_from and port_to, or neither",
        ),
    }
}

/// A rule's protocol and, for TCP and UDP, its destination port range: the ports are
/// checked against the protocol once it is valid.
pub fn protocol_and_ports(
    what: &str,
    protocol_name: &str,
    from: Option<u16>,
    to: Option<u16>,
) -> Check<(Protocol, Option<(u16, u16)>)> {
    let p = protocol(what, protocol_name)?;
    Ok((p, ports(what, from, to, p)?))
}

/// A network ACL rule number: 1..=32766, lowest evaluated first.
pub fn acl_rule_number(what: &str, n: u32) -> Check<u32> {
    if (1..=32766).contains(&n) {
        Ok(n)
    } else {
        invalid(
            Fault::Request,
            what,
            format!("number {n} is outside 1..=32766"),
        )
    }
}

/// A network ACL rule's action: `true` for allow.
pub fn acl_action(what: &str, s: &str) -> Check<bool> {
    match s {
        "allow" => Ok(true),
        "deny" => Ok(false),
        x => invalid(
            Fault::Request,
            what,
            format!("action \"{x}\" must be allow or deny"),
        ),
    }
}

/// A route over peering `pcx` must lead into the peer VPC: `dest` inside one of its CIDRs.
pub fn inside_peer(
    what: &str,
    dest: &IpNet,
    pcx: &str,
    peer_vpc: &str,
    peer_cidrs: &[IpNet],
) -> Check<()> {
    if peer_cidrs.iter().any(|p| p.contains(dest)) {
        return Ok(());
    }
    invalid(
        Fault::OutsidePeer,
        what,
        format!(
            "destination is outside peer vpc {peer_vpc} ({}) of peering {pcx}",
            join(peer_cidrs)
        ),
    )
}

/// A route over peering `pcx` must be in a table of one of its two VPCs.
pub fn joins(what: &str, pcx: &str, requester: &str, accepter: &str, vpc: &str) -> Check<()> {
    if requester == vpc || accepter == vpc {
        return Ok(());
    }
    invalid(
        Fault::Target,
        what,
        format!("peering {pcx} joins {requester} and {accepter}, not this table's vpc {vpc}"),
    )
}

/// An interface name the kernel can take.
pub fn interface(what: &str, name: &str) -> Check<()> {
    if !name.is_empty() && name.len() < IFNAMSIZ {
        return Ok(());
    }
    invalid(
        Fault::Request,
        what,
        format!(
            "interface name \"{name}\" must be 1 to {} bytes",
            IFNAMSIZ - 1
        ),
    )
}

/// An interface an instance's port may be on: a valid name, and not the loopback (an
/// XDP program there would see the host's own local traffic).
pub fn port_interface(what: &str, name: &str) -> Check<()> {
    interface(what, name)?;
    if name == "lo" {
        return invalid(
            Fault::Request,
            what,
            "interface lo is the host's loopback; a port is an instance's interface",
        );
    }
    Ok(())
}

/// A port of host `host` may not be on that host's uplink (the overlay's interface): the
/// data plane would take over the host's underlay traffic.
pub fn port_not_on_uplink(
    what: &str,
    interface: &str,
    host: &str,
    uplink: Option<&str>,
) -> Check<()> {
    if uplink == Some(interface) {
        return invalid(
            Fault::Request,
            what,
            format!("interface {interface} is host {host}'s uplink; a port cannot be on it"),
        );
    }
    Ok(())
}

pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A MAC address in field `field` of `what`.
pub fn mac(what: &str, field: &str, s: &str) -> Check<Mac> {
    match parse_mac(s) {
        Some(m) => Ok(m),
        None => invalid(
            Fault::Request,
            what,
            format!("{field} \"{s}\" is not a MAC address"),
        ),
    }
}

pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A host's underlay IPv4 address: a unicast address another host can send to.
pub fn underlay_ipv4(what: &str, s: &str) -> Check<Ipv4Addr> {
    underlay(what, "underlay_ipv4", "IPv4", s, |a: &Ipv4Addr| {
        a.is_unspecified() || a.is_multicast() || a.is_broadcast()
    })
}

/// A host's underlay IPv6 address: a unicast address another host can send to.
pub fn underlay_ipv6(what: &str, s: &str) -> Check<Ipv6Addr> {
    underlay(what, "underlay_ipv6", "IPv6", s, |a: &Ipv6Addr| {
        a.is_unspecified() || a.is_multicast() || a.is_loopback()
    })
}

/// An underlay address of one family (`field`, `family`): it parses, and is not one of
/// the addresses `not_unicast` names.
fn underlay<A: std::str::FromStr + fmt::Display>(
    what: &str,
    field: &str,
    family: &str,
    s: &str,
    not_unicast: impl Fn(&A) -> bool,
) -> Check<A> {
    match s.parse::<A>() {
        Ok(a) if not_unicast(&a) => invalid(
            Fault::Request,
            what,
            format!("{field} {a} is not a unicast address"),
        ),
        Ok(a) => Ok(a),
        Err(_) => invalid(
            Fault::Request,
            what,
            format!("{field} \"{s}\" is not an {family} address"),
        ),
    }
}

/// A VPC's VNI: 24 bits, not 0.
pub fn vni(what: &str, v: u32) -> Check<u32> {
    if (1..=peer_dataplane_common::overlay::MAX_VNI).contains(&v) {
        return Ok(v);
    }
    invalid(
        Fault::Request,
        what,
        format!(
            "vni {v} is outside 1..={}",
            peer_dataplane_common::overlay::MAX_VNI
        ),
    )
}
