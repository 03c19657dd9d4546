//! Validation: turns a [`Document`] into a [`Topology`] whose every reference resolves and
//! whose every invariant the data plane relies on holds (docs/datapath.md §3.4, §3.5), or into a list
//! of errors that each name the objects involved. Nothing is applied from a document that
//! fails here.

use crate::desired::document::{Document, PeeringDoc};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use peer_dataplane_common::{NAME_MAX_LEN, PCX_ACTIVE, PCX_PENDING_ACCEPTANCE};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

/// Longest interface name the kernel takes, with its NUL (`IFNAMSIZ`).
pub const IFNAMSIZ: usize = 16;

/// Default gateway MAC when the document names none (locally administered).
pub const DEFAULT_ROUTER_MAC: Mac = [0x02, 0x70, 0x64, 0x70, 0x00, 0x01];

#[derive(Debug, Clone, PartialEq)]
pub struct Vpc {
    pub id: String,
    pub account: String,
    pub region: String,
    /// IPv4 CIDRs, then the IPv6 CIDR if any.
    pub cidrs: Vec<IpNet>,
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
    pub ingress: Vec<crate::desired::acl::Rule>,
    pub egress: Vec<crate::desired::acl::Rule>,
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
    pub protocol: crate::desired::acl::Protocol,
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
    pub routes: BTreeMap<IpNet, Target>,
}

/// Peering status (docs/datapath.md §1, §2): one type for the control plane's API and store, the state
/// document and the data plane's code.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PeeringStatus {
    PendingAcceptance,
    Active,
    Rejected,
    Expired,
    Failed,
    Deleted,
}

impl PeeringStatus {
    pub const ALL: [PeeringStatus; 6] = [
        PeeringStatus::PendingAcceptance,
        PeeringStatus::Active,
        PeeringStatus::Rejected,
        PeeringStatus::Expired,
        PeeringStatus::Failed,
        PeeringStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PeeringStatus::PendingAcceptance => "pending-acceptance",
            PeeringStatus::Active => "active",
            PeeringStatus::Rejected => "rejected",
            PeeringStatus::Expired => "expired",
            PeeringStatus::Failed => "failed",
            PeeringStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<PeeringStatus> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The ABI value (`PCX_*`).
    pub fn code(self) -> u32 {
        match self {
            PeeringStatus::PendingAcceptance => PCX_PENDING_ACCEPTANCE,
            PeeringStatus::Active => PCX_ACTIVE,
            PeeringStatus::Rejected => peer_dataplane_common::PCX_REJECTED,
            PeeringStatus::Expired => peer_dataplane_common::PCX_EXPIRED,
            PeeringStatus::Failed => peer_dataplane_common::PCX_FAILED,
            PeeringStatus::Deleted => peer_dataplane_common::PCX_DELETED,
        }
    }

    /// A peering in these statuses holds its CIDRs: no overlapping peer may join either
    /// VPC (docs/datapath.md §3.4).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            PeeringStatus::PendingAcceptance | PeeringStatus::Active
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Peering {
    pub id: String,
    pub requester_vpc: String,
    pub accepter_vpc: String,
    pub status: PeeringStatus,
    /// Caps of requester-to-accepter and accepter-to-requester traffic (`DIR_*` order).
    pub caps: [Option<Cap>; 2],
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
    pub subnet: String,
    pub mac: Mac,
    pub gateway_mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// Sorted, without duplicates; `None` = not filtered by security groups.
    pub security_groups: Option<Vec<String>>,
}

/// A validated document: every name resolves, every invariant holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Topology {
    pub vpcs: BTreeMap<String, Vpc>,
    pub subnets: BTreeMap<String, Subnet>,
    pub route_tables: BTreeMap<String, RouteTable>,
    pub peerings: BTreeMap<String, Peering>,
    /// Keyed by interface name.
    pub ports: BTreeMap<String, Port>,
    pub network_acls: BTreeMap<String, NetworkAcl>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
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

pub fn format_mac(m: &Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// `::ffff:0:0/96`: the map encoding of IPv4 addresses; refused as an IPv6 CIDR.
pub fn v4_mapped_range() -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96).unwrap()
}

pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Collects errors so that one pass reports everything wrong with a document.
struct Checker {
    errors: Vec<String>,
    /// `kind:id` of every object the document defines, valid or not.
    defined: BTreeSet<String>,
}

impl Checker {
    fn err(&mut self, msg: String) {
        self.errors.push(msg);
    }

    /// Reports a reference to an object that is not there, unless the document defines it
    /// and it failed validation itself: its own error is the one worth reading.
    fn missing(&mut self, kind: &str, id: &str, msg: String) {
        if !self.defined.contains(&format!("{kind}:{id}")) {
            self.err(msg);
        }
    }

    /// A VPC, subnet or route CIDR: these become trie keys in the shared 128-bit space, so
    /// IPv6 CIDRs over the IPv4-mapped range are refused.
    fn cidr(&mut self, what: &str, s: &str) -> Option<IpNet> {
        match self.rule_cidr(what, s) {
            Some(IpNet::V6(n)) if overlaps(&IpNet::V6(n), &IpNet::V6(v4_mapped_range())) => {
                self.err(format!(
                    "{what}: \"{s}\" overlaps ::ffff:0:0/96 (IPv4-mapped), which is reserved"
                ));
                None
            }
            other => other,
        }
    }

    /// A rule CIDR (ACLs keep the two families apart in their keys, so `::/0` is fine).
    fn rule_cidr(&mut self, what: &str, s: &str) -> Option<IpNet> {
        match s.parse::<IpNet>() {
            Err(_) => {
                self.err(format!(
                    "{what}: \"{s}\" is not a CIDR (expected e.g. 10.0.0.0/16 or fd00::/48)"
                ));
                None
            }
            Ok(net) if net.trunc() != net => {
                self.err(format!(
                    "{what}: \"{s}\" has host bits set (did you mean {}?)",
                    net.trunc()
                ));
                None
            }
            Ok(net) => Some(net),
        }
    }

    /// An object of `kind` that belongs to `vpc`: a fresh id, and a VPC that exists.
    fn vpc_object(
        &mut self,
        kind: &str,
        id: &str,
        vpc: &str,
        topo: &Topology,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        if !self.id(kind, id, seen) {
            return false;
        }
        if !topo.vpcs.contains_key(vpc) {
            self.missing("vpc", vpc, format!("{kind} {id}: vpc {vpc} does not exist"));
            return false;
        }
        true
    }

    fn id(&mut self, kind: &str, id: &str, seen: &mut BTreeSet<String>) -> bool {
        if id.is_empty() {
            self.err(format!("{kind} with an empty id"));
            return false;
        }
        if id.len() > NAME_MAX_LEN {
            self.err(format!("{kind} {id}: id longer than {NAME_MAX_LEN} bytes"));
            return false;
        }
        if !seen.insert(id.to_string()) {
            self.err(format!("{kind} {id}: defined more than once"));
            return false;
        }
        true
    }
}

pub fn validate(doc: &Document) -> Result<Topology, ValidationErrors> {
    let defined = (doc.vpcs.iter().map(|v| format!("vpc:{}", v.id)))
        .chain(doc.subnets.iter().map(|x| format!("subnet:{}", x.id)))
        .chain(
            doc.route_tables
                .iter()
                .map(|x| format!("route table:{}", x.id)),
        )
        .chain(doc.peerings.iter().map(|x| format!("peering:{}", x.id)))
        .chain(
            doc.network_acls
                .iter()
                .map(|x| format!("network acl:{}", x.id)),
        )
        .chain(
            doc.security_groups
                .iter()
                .map(|x| format!("security group:{}", x.id)),
        )
        .collect();
    let mut c = Checker {
        errors: Vec::new(),
        defined,
    };
    let mut topo = Topology::default();

    let router_mac = match &doc.router_mac {
        None => DEFAULT_ROUTER_MAC,
        Some(s) => parse_mac(s).unwrap_or_else(|| {
            c.err(format!(
                "router_mac: \"{s}\" is not a MAC address (expected xx:xx:xx:xx:xx:xx)"
            ));
            DEFAULT_ROUTER_MAC
        }),
    };

    // VPCs.
    let mut seen = BTreeSet::new();
    for v in &doc.vpcs {
        if !c.id("vpc", &v.id, &mut seen) {
            continue;
        }
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
        topo.vpcs.insert(
            v.id.clone(),
            Vpc {
                id: v.id.clone(),
                account: v.account.clone(),
                region: v.region.clone(),
                cidrs,
            },
        );
    }

    // Peerings (before route tables: routes point at them).
    let mut seen = BTreeSet::new();
    for p in &doc.peerings {
        if !c.id("peering", &p.id, &mut seen) {
            continue;
        }
        if let Some(peering) = check_peering(&mut c, &topo, p) {
            topo.peerings.insert(p.id.clone(), peering);
        }
    }
    check_peer_cidrs(&mut c, &topo);

    // Route tables.
    let mut seen = BTreeSet::new();
    for t in &doc.route_tables {
        if !c.id("route table", &t.id, &mut seen) {
            continue;
        }
        let Some(vpc) = topo.vpcs.get(&t.vpc) else {
            c.missing(
                "vpc",
                &t.vpc,
                format!("route table {}: vpc {} does not exist", t.id, t.vpc),
            );
            continue;
        };
        let mut routes = BTreeMap::new();
        for r in &t.routes {
            let what = format!("route table {} route {}", t.id, r.destination);
            let Some(dest) = c.cidr(&what, &r.destination) else {
                continue;
            };
            let target = match r.target.as_str() {
                "local" => {
                    if !vpc.cidrs.contains(&dest) {
                        c.err(format!(
                            "{what}: target local must be one of vpc {}'s CIDRs ({})",
                            vpc.id,
                            join(&vpc.cidrs)
                        ));
                        continue;
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
                        continue;
                    };
                    let Some(peer) = peering.other_side(&vpc.id) else {
                        c.err(format!(
                            "{what}: peering {pcx} joins {} and {}, not this table's vpc {}",
                            peering.requester_vpc, peering.accepter_vpc, vpc.id
                        ));
                        continue;
                    };
                    let peer_vpc = &topo.vpcs[peer];
                    if !peer_vpc.cidrs.iter().any(|p| p.contains(&dest)) {
                        c.err(format!(
                            "{what}: destination is outside peer vpc {} ({}) of peering {pcx}",
                            peer_vpc.id,
                            join(&peer_vpc.cidrs)
                        ));
                        continue;
                    }
                    Target::Peering(pcx.to_string())
                }
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
        topo.route_tables.insert(
            t.id.clone(),
            RouteTable {
                id: t.id.clone(),
                vpc: t.vpc.clone(),
                routes,
            },
        );
    }

    // Network ACLs (before subnets: subnets name them).
    let mut seen = BTreeSet::new();
    for a in &doc.network_acls {
        if !c.vpc_object("network acl", &a.id, &a.vpc, &topo, &mut seen) {
            continue;
        }
        if let Some(acl) = check_acl(&mut c, a) {
            topo.network_acls.insert(a.id.clone(), acl);
        }
    }

    // Security groups (before ports: ports name them).
    let mut seen = BTreeSet::new();
    for g in &doc.security_groups {
        if !c.vpc_object("security group", &g.id, &g.vpc, &topo, &mut seen) {
            continue;
        }
        if let Some(sg) = check_security_group(&mut c, &topo, doc, g) {
            topo.security_groups.insert(g.id.clone(), sg);
        }
    }

    // Subnets.
    let mut seen = BTreeSet::new();
    for s in &doc.subnets {
        if !c.id("subnet", &s.id, &mut seen) {
            continue;
        }
        let Some(vpc) = topo.vpcs.get(&s.vpc) else {
            c.missing(
                "vpc",
                &s.vpc,
                format!("subnet {}: vpc {} does not exist", s.id, s.vpc),
            );
            continue;
        };
        match topo.route_tables.get(&s.route_table) {
            None => {
                c.missing(
                    "route table",
                    &s.route_table,
                    format!(
                        "subnet {}: route table {} does not exist",
                        s.id, s.route_table
                    ),
                );
                continue;
            }
            Some(t) if t.vpc != s.vpc => {
                c.err(format!(
                    "subnet {}: route table {} belongs to vpc {}, not {}",
                    s.id, t.id, t.vpc, s.vpc
                ));
                continue;
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
                continue;
            }
            None => continue,
        };
        if !vpc.cidrs.iter().any(|v| v.contains(&IpNet::V4(cidr))) {
            c.err(format!(
                "subnet {}: {cidr} is not inside vpc {} ({})",
                s.id,
                vpc.id,
                join(&vpc.cidrs)
            ));
            continue;
        }
        let ipv6_cidr = match &s.ipv6_cidr {
            None => None,
            Some(text) => match c.cidr(&format!("subnet {} ipv6_cidr", s.id), text) {
                Some(IpNet::V6(n)) if vpc.cidrs.iter().any(|v| v.contains(&IpNet::V6(n))) => {
                    Some(n)
                }
                Some(IpNet::V6(n)) => {
                    c.err(format!(
                        "subnet {}: {n} is not inside vpc {}'s IPv6 CIDR",
                        s.id, vpc.id
                    ));
                    continue;
                }
                Some(IpNet::V4(_)) => {
                    c.err(format!("subnet {} ipv6_cidr: \"{text}\" is IPv4", s.id));
                    continue;
                }
                None => continue,
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
                    continue;
                }
                Some(acl) if acl.vpc != s.vpc => {
                    c.err(format!(
                        "subnet {}: network acl {a} belongs to vpc {}, not {}",
                        s.id, acl.vpc, s.vpc
                    ));
                    continue;
                }
                Some(_) => {}
            }
        }
        topo.subnets.insert(
            s.id.clone(),
            Subnet {
                id: s.id.clone(),
                vpc: s.vpc.clone(),
                cidr,
                ipv6_cidr,
                route_table: s.route_table.clone(),
                network_acl: s.network_acl.clone(),
            },
        );
    }

    // Ports.
    let mut seen = BTreeSet::new();
    let mut addresses: BTreeMap<(String, IpAddr), String> = BTreeMap::new();
    for p in &doc.ports {
        if !c.id("port", &p.interface, &mut seen) {
            continue;
        }
        let what = format!("port {}", p.interface);
        if p.interface.len() >= IFNAMSIZ {
            c.err(format!(
                "{what}: interface name longer than {} bytes",
                IFNAMSIZ - 1
            ));
        }
        let Some(subnet) = topo.subnets.get(&p.subnet) else {
            c.missing(
                "subnet",
                &p.subnet,
                format!("{what}: subnet {} does not exist", p.subnet),
            );
            continue;
        };
        let mac = parse_mac(&p.mac);
        if mac.is_none() {
            c.err(format!("{what}: mac \"{}\" is not a MAC address", p.mac));
        }
        let gateway_mac = match &p.gateway_mac {
            None => Some(router_mac),
            Some(s) => {
                let m = parse_mac(s);
                if m.is_none() {
                    c.err(format!("{what}: gateway_mac \"{s}\" is not a MAC address"));
                }
                m
            }
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
        let ipv6 =
            p.ipv6
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
        if let (Some(mac), Some(gateway_mac)) = (mac, gateway_mac) {
            topo.ports.insert(
                p.interface.clone(),
                Port {
                    interface: p.interface.clone(),
                    subnet: p.subnet.clone(),
                    mac,
                    gateway_mac,
                    ipv4,
                    ipv6,
                    security_groups,
                },
            );
        }
    }

    if c.errors.is_empty() {
        Ok(topo)
    } else {
        Err(ValidationErrors(c.errors))
    }
}

fn check_acl(c: &mut Checker, a: &crate::desired::document::NetworkAclDoc) -> Option<NetworkAcl> {
    use crate::desired::acl::Rule;
    let mut acl = NetworkAcl {
        id: a.id.clone(),
        vpc: a.vpc.clone(),
        ingress: Vec::new(),
        egress: Vec::new(),
    };
    let mut numbers = BTreeSet::new();
    let mut ok = true;
    for (i, r) in a.rules.iter().enumerate() {
        let what = format!("network acl {} rule {} (rules[{i}])", a.id, r.number);
        let mut problems = Vec::new();
        if !(1..=32766).contains(&r.number) {
            problems.push("number must be 1..=32766".to_string());
        }
        let egress = rule_direction(&r.direction, &mut problems);
        if let Some(e) = egress {
            if !numbers.insert((e, r.number)) {
                problems.push(format!("number is used twice for {}", r.direction));
            }
        }
        let protocol = rule_protocol(&r.protocol, &mut problems);
        let ports = rule_ports(r.port_from, r.port_to, protocol, &mut problems);
        let allow = match r.action.as_str() {
            "allow" => Some(true),
            "deny" => Some(false),
            x => {
                problems.push(format!("action \"{x}\" must be allow or deny"));
                None
            }
        };
        let cidr = c.rule_cidr(&format!("{what} cidr"), &r.cidr);
        for p in &problems {
            c.err(format!("{what}: {p}"));
        }
        match (egress, protocol, allow, cidr, problems.is_empty()) {
            (Some(egress), Some(protocol), Some(allow), Some(cidr), true) => {
                let rule = Rule {
                    number: r.number,
                    protocol,
                    ports,
                    cidr,
                    allow,
                };
                if egress {
                    acl.egress.push(rule);
                } else {
                    acl.ingress.push(rule);
                }
            }
            _ => ok = false,
        }
    }
    for (dir, rules) in [("ingress", &acl.ingress), ("egress", &acl.egress)] {
        if rules.len() > crate::desired::acl::MAX_RULES {
            c.err(format!(
                "network acl {}: {} {dir} rules, at most {}",
                a.id,
                rules.len(),
                crate::desired::acl::MAX_RULES
            ));
            ok = false;
        }
    }
    ok.then_some(acl)
}

/// A rule's direction: `Some(true)` for egress.
fn rule_direction(s: &str, problems: &mut Vec<String>) -> Option<bool> {
    match s {
        "ingress" => Some(false),
        "egress" => Some(true),
        d => {
            problems.push(format!("direction \"{d}\" must be ingress or egress"));
            None
        }
    }
}

/// A rule's protocol: `all`, a name, or a number.
fn rule_protocol(s: &str, problems: &mut Vec<String>) -> Option<crate::desired::acl::Protocol> {
    use crate::desired::acl::Protocol;
    match s {
        "all" | "-1" => Some(Protocol::All),
        "tcp" => Some(Protocol::Number(6)),
        "udp" => Some(Protocol::Number(17)),
        "icmp" => Some(Protocol::Number(1)),
        "icmpv6" => Some(Protocol::Number(58)),
        n => match n.parse::<u8>() {
            Ok(n) => Some(Protocol::Number(n)),
            Err(_) => {
                problems.push(format!(
                    "protocol \"{n}\" must be all, tcp, udp, icmp, icmpv6 or a number"
                ));
                None
            }
        },
    }
}

/// A rule's destination port range (TCP and UDP only).
fn rule_ports(
    from: Option<u16>,
    to: Option<u16>,
    protocol: Option<crate::desired::acl::Protocol>,
    problems: &mut Vec<String>,
) -> Option<(u16, u16)> {
    use crate::desired::acl::Protocol;
    match (from, to) {
        (None, None) => None,
        (Some(lo), Some(hi)) if lo > hi => {
            problems.push(format!("port_from {lo} is above port_to {hi}"));
            None
        }
        (Some(lo), Some(hi)) if matches!(protocol, Some(Protocol::Number(6 | 17))) => {
            Some((lo, hi))
        }
        (Some(_), Some(_)) => {
            problems.push("ports apply to tcp and udp only".into());
            None
        }
        _ => {
            problems.push("give both port_from and port_to, or neither".into());
            None
        }
    }
}

fn check_security_group(
    c: &mut Checker,
    topo: &Topology,
    doc: &Document,
    g: &crate::desired::document::SecurityGroupDoc,
) -> Option<SecurityGroup> {
    let region = &topo.vpcs[&g.vpc].region;
    let mut sg = SecurityGroup {
        id: g.id.clone(),
        vpc: g.vpc.clone(),
        rules: Vec::new(),
    };
    let mut ok = true;
    for (i, r) in g.rules.iter().enumerate() {
        let what = format!("security group {} rules[{i}]", g.id);
        let mut problems = Vec::new();
        let egress = rule_direction(&r.direction, &mut problems);
        let protocol = rule_protocol(&r.protocol, &mut problems);
        let ports = rule_ports(r.port_from, r.port_to, protocol, &mut problems);
        let remote = match (&r.cidr, &r.peer_security_group) {
            (Some(s), None) => c.rule_cidr(&format!("{what} cidr"), s).map(SgRemote::Cidr),
            (None, Some(peer)) => {
                // A peer group: this VPC's own, or a peered VPC's in the same region.
                match doc.security_groups.iter().find(|x| &x.id == peer) {
                    None => {
                        problems.push(format!("peer_security_group {peer} does not exist"));
                        None
                    }
                    Some(p) => match topo.vpcs.get(&p.vpc) {
                        Some(v) if &v.region != region => {
                            problems.push(format!(
                                "peer_security_group {peer} is in region {}, not {region}: groups can be referenced within one region only",
                                v.region
                           ));
                            None
                        }
                        Some(_)
                            if p.vpc != g.vpc
                                && !topo.peerings.values().any(|x| {
                                    x.status.is_live()
                                        && x.other_side(&g.vpc) == Some(p.vpc.as_str())
                                }) =>
                        {
                            problems.push(format!(
                                "peer_security_group {peer} is in vpc {}, which is not peered with {}",
                                p.vpc, g.vpc
                           ));
                            None
                        }
                        Some(_) => Some(SgRemote::Group(peer.clone())),
                        // Its own error names the missing VPC.
                        None => None,
                    },
                }
            }
            _ => {
                problems.push("give exactly one of cidr and peer_security_group".into());
                None
            }
        };
        for p in &problems {
            c.err(format!("{what}: {p}"));
        }
        match (egress, protocol, remote, problems.is_empty()) {
            (Some(egress), Some(protocol), Some(remote), true) => sg.rules.push(SgRule {
                egress,
                protocol,
                ports,
                remote,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(sg)
}

fn check_peering(c: &mut Checker, topo: &Topology, p: &PeeringDoc) -> Option<Peering> {
    let what = format!("peering {}", p.id);
    let mut ok = true;
    for (role, vpc) in [
        ("requester_vpc", &p.requester_vpc),
        ("accepter_vpc", &p.accepter_vpc),
    ] {
        if !topo.vpcs.contains_key(vpc) {
            c.missing("vpc", vpc, format!("{what}: {role} {vpc} does not exist"));
            ok = false;
        }
    }
    if p.requester_vpc == p.accepter_vpc {
        c.err(format!(
            "{what}: requester and accepter are the same vpc {}",
            p.requester_vpc
        ));
        ok = false;
    }
    let status = PeeringStatus::parse(&p.status);
    if status.is_none() {
        c.err(format!(
            "{what}: status \"{}\" is not one of pending-acceptance, active, rejected, expired, failed, deleted",
            p.status
       ));
        ok = false;
    }
    if !ok {
        return None;
    }
    let status = status.unwrap();
    if status.is_live() {
        let (a, b) = (&topo.vpcs[&p.requester_vpc], &topo.vpcs[&p.accepter_vpc]);
        for x in &a.cidrs {
            for y in &b.cidrs {
                if overlaps(x, y) {
                    c.err(format!(
                        "{what}: vpc {} CIDR {x} overlaps vpc {} CIDR {y}; overlapping VPCs cannot be peered (status must be failed)",
                        a.id, b.id
                   ));
                }
            }
        }
    }
    let caps = peering_caps(c, topo, p)?;
    Some(Peering {
        id: p.id.clone(),
        requester_vpc: p.requester_vpc.clone(),
        accepter_vpc: p.accepter_vpc.clone(),
        status,
        caps,
    })
}

/// docs/datapath.md §3.7: caps per direction; a cross-region peering always has one (1 Gbit/s).
fn peering_caps(c: &mut Checker, topo: &Topology, p: &PeeringDoc) -> Option<[Option<Cap>; 2]> {
    use peer_dataplane_common::cap::{default_burst_bytes, CROSS_REGION_DEFAULT_BPS};
    let what = format!("peering {}", p.id);
    let mut ok = true;
    for (field, v) in [
        ("bandwidth_mbps", p.bandwidth_mbps),
        (
            "bandwidth_mbps_requester_to_accepter",
            p.bandwidth_mbps_requester_to_accepter,
        ),
        (
            "bandwidth_mbps_accepter_to_requester",
            p.bandwidth_mbps_accepter_to_requester,
        ),
    ] {
        if let Some(m) = v {
            if !(1..=MAX_BANDWIDTH_MBPS).contains(&m) {
                c.err(format!(
                    "{what}: {field} {m} is outside 1..={MAX_BANDWIDTH_MBPS}"
                ));
                ok = false;
            }
        }
    }
    if let Some(b) = p.burst_bytes {
        if b < MIN_BURST_BYTES {
            c.err(format!(
                "{what}: burst_bytes {b} is below {MIN_BURST_BYTES} (one full frame)"
            ));
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    let cross_region = topo.vpcs[&p.requester_vpc].region != topo.vpcs[&p.accepter_vpc].region;
    let cap = |dir: Option<u64>| {
        let bps = match dir.or(p.bandwidth_mbps) {
            Some(m) => m * 1_000_000,
            None if cross_region => CROSS_REGION_DEFAULT_BPS,
            None => return None,
        };
        Some(Cap {
            bits_per_second: bps,
            burst_bytes: p.burst_bytes.unwrap_or(default_burst_bytes(bps)),
        })
    };
    Some([
        cap(p.bandwidth_mbps_requester_to_accepter),
        cap(p.bandwidth_mbps_accepter_to_requester),
    ])
}

/// Highest cap accepted, in Mbit/s (400 Gbit/s, as the control plane's API).
pub const MAX_BANDWIDTH_MBPS: u64 = 400_000;

/// docs/datapath.md §3.4: the CIDRs of all peers of one VPC must not overlap, and two VPCs are joined
/// by at most one live peering.
fn check_peer_cidrs(c: &mut Checker, topo: &Topology) {
    for vpc in topo.vpcs.keys() {
        let live: Vec<&Peering> = topo
            .peerings
            .values()
            .filter(|p| p.status.is_live() && p.other_side(vpc).is_some())
            .collect();
        for (i, p) in live.iter().enumerate() {
            let peer_p = p.other_side(vpc).unwrap();
            for q in &live[i + 1..] {
                let peer_q = q.other_side(vpc).unwrap();
                if peer_p == peer_q {
                    // Reported once, from the lexically smaller side.
                    if vpc.as_str() < peer_p {
                        c.err(format!(
                            "peerings {} and {} both join vpc {vpc} and vpc {peer_p}",
                            p.id, q.id
                        ));
                    }
                    continue;
                }
                for x in &topo.vpcs[peer_p].cidrs {
                    for y in &topo.vpcs[peer_q].cidrs {
                        if overlaps(x, y) {
                            c.err(format!(
                                "vpc {vpc}: its peers {peer_p} ({x}, via {}) and {peer_q} ({y}, via {}) have overlapping CIDRs",
                                p.id, q.id
                           ));
                        }
                    }
                }
            }
        }
    }
}

fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
