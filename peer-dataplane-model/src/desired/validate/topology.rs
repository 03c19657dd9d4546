//! The validated shapes: what a [`super::validate`]d document turns into. Every name in
//! them resolves and every invariant holds.

use crate::desired::acl;
use crate::desired::objects::Objects;
use crate::desired::rules::Mac;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Default gateway MAC when the document names none (locally administered).
pub const DEFAULT_ROUTER_MAC: Mac = [0x02, 0x70, 0x64, 0x70, 0x00, 0x01];

#[derive(Debug, Clone, PartialEq)]
pub struct Vpc {
    pub id: String,
    pub account: String,
    pub region: String,
    /// IPv4 CIDRs, then the IPv6 CIDR if any.
    pub cidrs: Vec<IpNet>,
    /// Its VNI in the overlay (required in a fleet).
    pub vni: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub vpc: String,
    pub cidr: Ipv4Net,
    pub ipv6_cidr: Option<Ipv6Net>,
    pub route_table: String,
    pub network_acl: Option<String>,
}

/// A network ACL's rules, split by direction (each compiled on its own).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkAcl {
    pub id: String,
    pub vpc: String,
    pub ingress: Vec<acl::Rule>,
    pub egress: Vec<acl::Rule>,
}

/// A security group: allow-only rules (docs/datapath.md §1, §2).
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityGroup {
    pub id: String,
    pub vpc: String,
    pub rules: Vec<SgRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SgRule {
    pub egress: bool,
    pub protocol: acl::Protocol,
    pub ports: Option<(u16, u16)>,
    pub remote: SgRemote,
}

/// Who a security-group rule lets in (ingress) or out to (egress).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SgRemote {
    Cidr(IpNet),
    /// The members of this group (their ports' addresses).
    Group(String),
}

/// Most security groups one port may have.
pub const MAX_PORT_SECURITY_GROUPS: usize = 16;

/// A bandwidth cap of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bits_per_second: u64,
    pub burst_bytes: u64,
}

/// Smallest bucket accepted: one full-size frame with a VLAN tag.
pub const MIN_BURST_BYTES: u64 = 1518;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Local,
    Blackhole,
    Peering(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    pub id: String,
    pub vpc: String,
    /// Destination -> target, including the implicit `local` routes for the VPC's CIDRs.
    /// Shared: a table whose routes did not change is carried into the next topology
    /// as it is, not checked or copied again (see `validate_reusing`).
    pub routes: std::sync::Arc<BTreeMap<IpNet, Target>>,
    /// The peerings its routes lead to (or once led to: a superset), kept beside the
    /// routes so that a reuse check need not read them.
    pub via: std::sync::Arc<std::collections::BTreeSet<String>>,
}

pub use crate::desired::document::PeeringStatus;

#[derive(Debug, Clone, PartialEq)]
pub struct Peering {
    pub id: String,
    pub requester_vpc: String,
    pub accepter_vpc: String,
    pub status: PeeringStatus,
    /// Caps of requester-to-accepter and accepter-to-requester traffic (`DIR_*` order):
    /// in a fleet, this host's share of each.
    pub caps: [Option<Cap>; 2],
    /// Its number in the overlay (required in a fleet).
    pub tunnel_key: Option<u32>,
}

impl Peering {
    /// The VPC across the peering from `vpc`, if `vpc` is one of its sides.
    pub fn other_side(&self, vpc: &str) -> Option<&str> {
        other_side(&self.requester_vpc, &self.accepter_vpc, vpc)
    }
}

/// The VPC across a peering of `requester` and `accepter` from `vpc`, if `vpc` is a side.
pub fn other_side<'a>(requester: &'a str, accepter: &'a str, vpc: &str) -> Option<&'a str> {
    if requester == vpc {
        Some(accepter)
    } else if accepter == vpc {
        Some(requester)
    } else {
        None
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub interface: String,
    /// The carrying host of a remote port; `None` for this host's own.
    pub host: Option<String>,
    pub subnet: String,
    pub mac: Mac,
    pub gateway_mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Sorted, without duplicates; `None` = not filtered by security groups.
    pub security_groups: Option<Vec<String>>,
}

/// A hypervisor of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub id: String,
    pub underlay_ipv4: Ipv4Addr,
    pub underlay_ipv6: Option<Ipv6Addr>,
    pub uplink: Option<String>,
}

impl Host {
    /// The underlay address as the maps encode it (IPv4 mapped).
    pub fn underlay(&self) -> [u8; 16] {
        peer_dataplane_common::addr::from_v4(self.underlay_ipv4.octets())
    }
}

/// The validated representation of each object kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated;

crate::kinds_of_scope!(Validated);

/// A validated document: every name resolves, every invariant holds. Its objects (`t.vpcs`,
/// ... through `Deref`; ports keyed by interface name), and in a fleet this host's id and
/// the instances on other hosts it may exchange traffic with.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Topology {
    pub objects: Objects<Validated>,
    /// This host, one of `hosts` (with an uplink); `None` on a single host.
    pub local_host: Option<String>,
    /// Ports of other hosts, keyed by `host/interface`.
    pub remote_ports: BTreeMap<String, Port>,
}

crate::holds_objects!(Topology, Validated);

impl Topology {
    /// The local host, in a fleet.
    pub fn local(&self) -> Option<&Host> {
        self.local_host.as_ref().and_then(|h| self.hosts.get(h))
    }
}

/// Every problem found in a document, each naming the objects involved.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationErrors(pub Vec<String>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "state document refused ({} problem{}):",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}
