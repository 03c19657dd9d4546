//! Random states and random frames for the differential test. A state is a random
//! topology of 2 to 8 VPCs (non-overlapping IPv4 and IPv6 CIDRs, several regions, peerings
//! in every status, overlapping route prefixes, network ACLs of up to 300 rules, security
//! groups with peer-group references, caps near the traffic's rate), sometimes with raw
//! map changes no valid document can make. Frames are sometimes right and often not:
//! every header field the parser reads is bent somewhere (VLAN stacks, IHL, lengths,
//! fragments, extension headers, TTLs, truncation), and flows repeat, in both directions,
//! so that connection tracking and caps see conversations. Reproducible from a seed.

use crate::oracle::Tampering;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use peer_dataplane::desired::document::{
    AclRuleDoc, Document, NetworkAclDoc, PeeringDoc, PortDoc, RouteDoc, RouteTableDoc,
    SecurityGroupDoc, SgRuleDoc, SubnetDoc, VpcDoc,
};
use peer_dataplane::desired::validate::PeeringStatus;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// xorshift64*: small, fast, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Interfaces the differential test's namespace holds (`dp0`…): ports of a random state
/// are some of them; the rest are interfaces the program does not serve.
pub const IFACES: usize = 12;

pub fn iface(i: usize) -> String {
    format!("dp{i}")
}

pub const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x64, 0x70, 0x00, 0x01];
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];

/// An instance of a random state: a port on interface `iface`.
#[derive(Debug, Clone)]
pub struct Instance {
    pub iface: String,
    pub vpc: usize,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone)]
pub struct Vpc {
    pub id: String,
    pub v4: Vec<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

/// A random state: the document, what frames aim at, and the raw map changes to make.
pub struct Topo {
    pub doc: Document,
    pub vpcs: Vec<Vpc>,
    pub instances: Vec<Instance>,
    pub tampering: Tampering,
    /// Destinations of tampered routes (frames aim there too).
    pub extra_dsts: Vec<IpAddr>,
}

fn host4(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

fn host6(net: &Ipv6Net, n: u128) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()) + n)
}

fn live(status: &str) -> bool {
    status == "active" || status == "pending-acceptance"
}

/// A random valid state, with a tampering now and then.
/// A random valid state, with a tampering now and then.
pub fn topology(rng: &mut Rng) -> Topo {
    let n = 2 + rng.below(7) as usize;
    let mut doc = Document {
        router_mac: Some(mac_str(&ROUTER_MAC)),
        ..Document::default()
    };
    let vpcs = random_vpcs(rng, n, &mut doc);
    random_peerings(rng, &vpcs, &mut doc);
    let instances = random_subnets_and_ports(rng, &vpcs, &mut doc);
    random_peer_routes(rng, &vpcs, &mut doc);
    random_network_acls(rng, &vpcs, &instances, &mut doc);
    random_security_groups(rng, &vpcs, &instances, &mut doc);
    let (tampering, extra_dsts) = tamper(rng, &doc, &vpcs, &instances);
    Topo {
        doc,
        vpcs,
        instances,
        tampering,
        extra_dsts,
    }
}

/// VPC i owns 10.(16 i .. 16 i + 15).0.0 and, at times, 172.(16 + i).0.0/16 and an IPv6 /48.
fn random_vpcs(rng: &mut Rng, n: usize, doc: &mut Document) -> Vec<Vpc> {
    let mut vpcs = Vec::new();
    for i in 0..n {
        // VPC i owns 10.(16 i .. 16 i + 15).0.0 and, at times, 172.(16 + i).0.0/16.
        let len = *rng.pick(&[16u8, 18, 20]);
        let second = rng.below(16) as u8;
        let third = if len == 16 {
            0
        } else {
            (rng.below(4) as u8) << 6
        };
        let mut v4 =
            vec![Ipv4Net::new(Ipv4Addr::new(10, 16 * i as u8 + second, third, 0), len).unwrap()];
        if rng.chance(20) {
            v4.push(Ipv4Net::new(Ipv4Addr::new(172, 16 + i as u8, 0, 0), 16).unwrap());
        }
        let v6 = rng.chance(70).then(|| {
            Ipv6Net::new(Ipv6Addr::new(0xfd00, i as u16 + 1, 0, 0, 0, 0, 0, 0), 48).unwrap()
        });
        let id = format!("vpc-{i}");
        doc.vpcs.push(VpcDoc {
            id: id.clone(),
            account: format!("{:012}", 100 + rng.below(3)),
            region: if rng.chance(70) {
                REGIONS[0]
            } else {
                *rng.pick(&REGIONS)
            }
            .to_string(),
            cidrs: v4.iter().map(|c| c.to_string()).collect(),
            ipv6_cidr: v6.map(|c| c.to_string()),
            vni: None,
        });
        vpcs.push(Vpc { id, v4, v6 });
    }

    vpcs
}

/// Random pairs, every status, caps of every kind.
fn random_peerings(rng: &mut Rng, vpcs: &[Vpc], doc: &mut Document) {
    let n = vpcs.len();
    // Peerings: random pairs, every status, caps of every kind.
    for i in 0..n {
        for j in i + 1..n {
            // Always at least vpc-0 and vpc-1.
            if !rng.chance(45) && (i, j) != (0, 1) {
                continue;
            }
            let (req, acc) = if rng.chance(50) { (i, j) } else { (j, i) };
            let status = if rng.chance(80) {
                "active"
            } else {
                *rng.pick(&[
                    "pending-acceptance",
                    "deleted",
                    "rejected",
                    "expired",
                    "failed",
                ])
            };
            let mut p = PeeringDoc {
                id: format!("pcx-{i}{j}"),
                requester_vpc: vpcs[req].id.clone(),
                accepter_vpc: vpcs[acc].id.clone(),
                status: PeeringStatus::parse(status).expect("a status name"),
                ..PeeringDoc::default()
            };
            match rng.below(100) {
                0..=54 => {}
                // Near the rate frames arrive at (see `time_step`): some pass, some not.
                // A bucket of 15 to 30 small frames, refilled at a few Mbit/s.
                55..=84 => {
                    p.bandwidth_mbps = Some(1 + rng.below(10));
                    p.burst_bytes = Some(1518 + rng.below(1500));
                }
                85..=92 => {
                    p.bandwidth_mbps_requester_to_accepter = Some(1 + rng.below(5));
                    p.burst_bytes = Some(1518 + rng.below(3000));
                }
                _ => p.bandwidth_mbps = Some(400_000),
            }
            doc.peerings.push(p);
        }
    }
}

/// Subnets (one or two a VPC), route tables (shared or their own), ports.
fn random_subnets_and_ports(rng: &mut Rng, vpcs: &[Vpc], doc: &mut Document) -> Vec<Instance> {
    let n = vpcs.len();
    // Subnets, route tables, ports.
    let mut instances = Vec::new();
    // Per VPC: (subnet id, IPv4 CIDR, IPv6 CIDR, route table).
    type Subnet = (String, Ipv4Net, Option<Ipv6Net>, String);
    let mut subnets_of: Vec<Vec<Subnet>> = vec![vec![]; n];
    for (i, v) in vpcs.iter().enumerate() {
        let shared = format!("rtb-{i}");
        doc.route_tables.push(RouteTableDoc {
            id: shared.clone(),
            vpc: v.id.clone(),
            routes: vec![],
        });
        for k in 0..1 + rng.below(2) as u32 {
            let base = u32::from(v.v4[0].network()) + k * 256;
            let cidr = Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap();
            let v6 =
                v.v6.map(|c| Ipv6Net::new(host6(&c, (k as u128) << 64), 64).unwrap());
            let rtb = if k == 1 && rng.chance(50) {
                let own = format!("rtb-{i}-{k}");
                doc.route_tables.push(RouteTableDoc {
                    id: own.clone(),
                    vpc: v.id.clone(),
                    routes: vec![],
                });
                own
            } else {
                shared.clone()
            };
            let id = format!("subnet-{i}-{k}");
            doc.subnets.push(SubnetDoc {
                id: id.clone(),
                vpc: v.id.clone(),
                cidr: cidr.to_string(),
                ipv6_cidr: v6.map(|c| c.to_string()),
                route_table: rtb.clone(),
                network_acl: None,
            });
            subnets_of[i].push((id, cidr, v6, rtb));
        }
    }
    let count = (n + rng.below((IFACES - n + 1) as u64) as usize).min(IFACES);
    let mut taken = BTreeSet::new();
    for slot in 0..count {
        let vpc = if slot < n {
            slot
        } else {
            rng.below(n as u64) as usize
        };
        let (subnet, cidr, v6, _) = rng.pick(&subnets_of[vpc]).clone();
        let mut host = 10 + rng.below(200) as u32;
        while !taken.insert((vpc, host)) {
            host += 1;
        }
        let inst = Instance {
            iface: iface(slot),
            vpc,
            mac: [0x02, 0x00, 0x00, 0x00, vpc as u8, slot as u8],
            ipv4: host4(&cidr, host),
            ipv6: v6
                .filter(|_| rng.chance(85))
                .map(|c| host6(&c, host as u128)),
        };
        doc.ports.push(PortDoc {
            interface: inst.iface.clone(),
            subnet,
            mac: mac_str(&inst.mac),
            ipv4: Some(inst.ipv4.to_string()),
            ipv6: inst.ipv6.map(|a| a.to_string()),
            gateway_mac: rng
                .chance(10)
                .then(|| mac_str(&[0x02, 0x99, 0, 0, 0, slot as u8])),
            security_groups: None,
            host: None,
        });
        instances.push(inst);
    }

    instances
}

/// Routes toward peers: whole CIDRs, more specific prefixes (to the same peering or a
/// blackhole), sometimes missing (no route, or no return route).
fn random_peer_routes(rng: &mut Rng, vpcs: &[Vpc], doc: &mut Document) {
    // Routes toward peers: whole CIDRs, more specific prefixes (to the same peering or a
    // blackhole), sometimes missing (no route, or no return route).
    for p in doc.peerings.clone() {
        let side = |id: &str| vpcs.iter().position(|v| v.id == id).unwrap();
        let (a, b) = (side(&p.requester_vpc), side(&p.accepter_vpc));
        for (from, to) in [(a, b), (b, a)] {
            for t in doc
                .route_tables
                .iter_mut()
                .filter(|t| t.vpc == vpcs[from].id)
            {
                let mut dests: Vec<(IpNet, &str)> = Vec::new();
                for c in &vpcs[to].v4 {
                    if rng.chance(92) {
                        dests.push((IpNet::V4(*c), &p.id));
                    }
                    if rng.chance(20) {
                        let more = Ipv4Net::new(c.network(), 24).unwrap();
                        dests.push((
                            IpNet::V4(more),
                            if rng.chance(50) { &p.id } else { "blackhole" },
                        ));
                    }
                }
                if let (Some(c), true) = (vpcs[to].v6, vpcs[from].v6.is_some() && rng.chance(80)) {
                    dests.push((IpNet::V6(c), &p.id));
                    if rng.chance(15) {
                        dests.push((
                            IpNet::V6(Ipv6Net::new(c.network(), 64).unwrap()),
                            "blackhole",
                        ));
                    }
                }
                for (d, target) in dests {
                    if !t.routes.iter().any(|r| r.destination == d.to_string()) {
                        t.routes.push(RouteDoc::new(d.to_string(), target));
                    }
                }
            }
        }
    }
    for t in &mut doc.route_tables {
        if rng.chance(15) {
            let dest = format!("100.64.{}.0/24", rng.below(256));
            t.routes.push(RouteDoc::new(dest, "blackhole"));
        }
    }
}

/// Network ACLs: mostly short, now and then hundreds of rules (past one bitmap word).
fn random_network_acls(rng: &mut Rng, vpcs: &[Vpc], instances: &[Instance], doc: &mut Document) {
    // Network ACLs: mostly short, now and then hundreds of rules (past one bitmap word).
    let rule_cidrs = rule_cidrs(vpcs, instances);
    let subnet_ids: Vec<(String, String)> = doc
        .subnets
        .iter()
        .map(|s| (s.id.clone(), s.vpc.clone()))
        .collect();
    for (si, (subnet, vpc)) in subnet_ids.iter().enumerate() {
        if !rng.chance(40) {
            continue;
        }
        let count = match rng.below(100) {
            0..=69 => rng.below(12),
            70..=89 => 12 + rng.below(52),
            _ => 64 + rng.below(237),
        };
        let mut rules = Vec::new();
        let mut used = BTreeSet::new();
        for _ in 0..count {
            let direction = *rng.pick(&["ingress", "egress"]);
            let number = 1 + rng.below(if count > 50 { 31999 } else { 300 }) as u32;
            if !used.insert((direction, number)) {
                continue;
            }
            let protocol = *rng.pick(&PROTOCOLS);
            let ports = ports_for(rng, protocol);
            rules.push(AclRuleDoc {
                number,
                direction: direction.into(),
                protocol: protocol.into(),
                port_from: ports.map(|p| p.0),
                port_to: ports.map(|p| p.1),
                cidr: rng.pick(&rule_cidrs).to_string(),
                action: rng.pick(&["allow", "allow", "deny"]).to_string(),
            });
        }
        // Most ACLs end with allow-all rules (as a default network ACL does), so that
        // traffic reaches the stages after them.
        if rng.chance(70) {
            for direction in ["ingress", "egress"] {
                for cidr in ["0.0.0.0/0", "::/0"] {
                    let number = 32000 + rules.len() as u32;
                    rules.push(AclRuleDoc {
                        number,
                        direction: direction.into(),
                        protocol: "all".into(),
                        port_from: None,
                        port_to: None,
                        cidr: cidr.into(),
                        action: "allow".into(),
                    });
                }
            }
        }
        let id = format!("acl-{subnet}");
        doc.network_acls.push(NetworkAclDoc {
            id: id.clone(),
            vpc: vpc.clone(),
            rules,
        });
        doc.subnets[si].network_acl = Some(id);
    }
}

/// Security groups: one or two per VPC; a peer group of the VPC itself or of a live peer
/// in the same region.
fn random_security_groups(rng: &mut Rng, vpcs: &[Vpc], instances: &[Instance], doc: &mut Document) {
    let n = vpcs.len();
    let rule_cidrs = rule_cidrs(vpcs, instances);
    // Security groups: one or two per VPC; a peer group of the VPC itself or of a live
    // peer in the same region.
    let mut groups: Vec<(String, usize)> = Vec::new();
    for i in 0..n {
        for k in 0..1 + rng.below(2) {
            groups.push((format!("sg-{i}-{k}"), i));
        }
    }
    let region = |d: &Document, i: usize| d.vpcs[i].region.clone();
    for (id, i) in &groups {
        let peers: Vec<&String> = groups
            .iter()
            .filter(|(_, j)| {
                *j == *i
                    || (region(doc, *j) == region(doc, *i)
                        && doc.peerings.iter().any(|p| {
                            live(p.status.as_str())
                                && ((p.requester_vpc == vpcs[*i].id
                                    && p.accepter_vpc == vpcs[*j].id)
                                    || (p.accepter_vpc == vpcs[*i].id
                                        && p.requester_vpc == vpcs[*j].id))
                        }))
            })
            .map(|(g, _)| g)
            .collect();
        let mut rules = Vec::new();
        // Often the default group's shape: everything out, and in from the VPC's peers.
        if rng.chance(60) {
            for (direction, cidr) in [
                ("egress", "0.0.0.0/0"),
                ("egress", "::/0"),
                ("ingress", "10.0.0.0/8"),
                ("ingress", "fd00::/8"),
            ] {
                if rng.chance(80) {
                    rules.push(SgRuleDoc {
                        direction: direction.into(),
                        protocol: "all".into(),
                        port_from: None,
                        port_to: None,
                        cidr: Some(cidr.into()),
                        peer_security_group: None,
                    });
                }
            }
        }
        for _ in 0..rng.below(8) {
            let protocol = *rng.pick(&PROTOCOLS);
            let ports = ports_for(rng, protocol);
            let by_group = rng.chance(25);
            rules.push(SgRuleDoc {
                direction: rng.pick(&["ingress", "egress"]).to_string(),
                protocol: protocol.into(),
                port_from: ports.map(|p| p.0),
                port_to: ports.map(|p| p.1),
                cidr: (!by_group).then(|| rng.pick(&rule_cidrs).to_string()),
                peer_security_group: by_group.then(|| rng.pick(&peers).to_string()),
            });
        }
        doc.security_groups.push(SecurityGroupDoc {
            id: id.clone(),
            vpc: vpcs[*i].id.clone(),
            rules,
        });
    }
    for (p, inst) in doc.ports.iter_mut().zip(instances) {
        let own: Vec<String> = groups
            .iter()
            .filter(|(_, j)| *j == inst.vpc)
            .map(|(g, _)| g.clone())
            .collect();
        p.security_groups = match rng.below(10) {
            0..=4 => None,
            5 => Some(vec![]),
            6..=8 => Some(vec![rng.pick(&own).clone()]),
            _ => Some(own),
        };
    }
}

/// Raw map changes for one state in three (see [`Tampering`]): a route to a peering that
/// does not join the table's VPC, one to a peering whose peer does not hold the
/// destination, one to a peering that does not exist, a port without a redirect target.
fn tamper(
    rng: &mut Rng,
    doc: &Document,
    vpcs: &[Vpc],
    instances: &[Instance],
) -> (Tampering, Vec<IpAddr>) {
    let mut t = Tampering::default();
    let mut dsts = Vec::new();
    if !rng.chance(50) {
        return (t, dsts);
    }
    for _ in 0..1 + rng.below(3) {
        let table = rng.pick(&doc.route_tables).clone();
        let vpc = &table.vpc;
        let dest = Ipv4Net::new(Ipv4Addr::new(100, 100, rng.below(256) as u8, 0), 24).unwrap();
        let joining: Vec<&PeeringDoc> = doc
            .peerings
            .iter()
            .filter(|p| &p.requester_vpc == vpc || &p.accepter_vpc == vpc)
            .collect();
        let foreign: Vec<&PeeringDoc> = doc
            .peerings
            .iter()
            .filter(|p| &p.requester_vpc != vpc && &p.accepter_vpc != vpc)
            .collect();
        let pcx = match rng.below(3) {
            0 if !joining.is_empty() => rng.pick(&joining).id.clone(),
            1 if !foreign.is_empty() => {
                // Aim at an instance of the foreign peering's VPCs too.
                let p = rng.pick(&foreign);
                let v = vpcs.iter().position(|v| v.id == p.accepter_vpc).unwrap();
                if let Some(i) = instances.iter().find(|i| i.vpc == v) {
                    let at = Ipv4Net::new(i.ipv4, 32).unwrap();
                    t.routes
                        .push((table.id.clone(), IpNet::V4(at), p.id.clone()));
                    dsts.push(IpAddr::V4(i.ipv4));
                }
                p.id.clone()
            }
            _ => "pcx-gone".to_string(),
        };
        if table
            .routes
            .iter()
            .any(|r| r.destination == dest.to_string())
        {
            continue;
        }
        t.routes.push((table.id.clone(), IpNet::V4(dest), pcx));
        dsts.push(IpAddr::V4(host4(&dest, 7)));
    }
    if rng.chance(40) {
        t.no_redirect.insert(rng.pick(instances).iface.clone());
    }
    (t, dsts)
}

fn rule_cidrs(vpcs: &[Vpc], instances: &[Instance]) -> Vec<IpNet> {
    let mut c: Vec<IpNet> = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    c.push("10.0.0.0/8".parse().unwrap());
    c.push("fd00::/8".parse().unwrap());
    for v in vpcs {
        c.extend(v.v4.iter().map(|n| IpNet::V4(*n)));
        c.extend(
            v.v4.iter()
                .map(|n| IpNet::V4(Ipv4Net::new(n.network(), 24).unwrap())),
        );
        c.extend(v.v6.map(IpNet::V6));
    }
    for i in instances {
        c.push(IpNet::V4(Ipv4Net::new(i.ipv4, 32).unwrap()));
        c.extend(i.ipv6.map(|a| IpNet::V6(Ipv6Net::new(a, 128).unwrap())));
    }
    c
}

const PROTOCOLS: [&str; 8] = ["all", "tcp", "udp", "icmp", "icmpv6", "47", "tcp", "udp"];
const PORT_RANGES: [Option<(u16, u16)>; 7] = [
    None,
    Some((7000, 7000)),
    Some((0, 1023)),
    Some((1024, 65535)),
    Some((53, 53)),
    Some((443, 443)),
    Some((7000, 7100)),
];

fn ports_for(rng: &mut Rng, protocol: &str) -> Option<(u16, u16)> {
    if protocol == "tcp" || protocol == "udp" {
        *rng.pick(&PORT_RANGES)
    } else {
        None
    }
}

pub fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------
// frames

/// One conversation's identity, kept to send more of it (or its replies) later.
#[derive(Debug, Clone)]
struct Flow {
    from: usize,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// Frames for one state: new ones, and repeats or replies of recent flows.
pub struct Frames<'a> {
    topo: &'a Topo,
    recent: Vec<Flow>,
    /// When a packet of each recent flow (either way) was last sent.
    sent_at: Vec<u64>,
    /// Whether repeats may jump to a flow's idle timeout (not in busy states, whose
    /// frames come microseconds apart to meet the caps).
    jumps: bool,
}

/// Idle timeouts of tracked flows (docs/datapath.md §4.12): a repeat of a flow sometimes
/// comes exactly one of these after the flow's last packet, or a nanosecond later.
const TIMEOUTS_NS: [u64; 6] = [
    10_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
    600_000_000_000,
    432_000_000_000_000,
];

impl<'a> Frames<'a> {
    pub fn new(topo: &'a Topo, jumps: bool) -> Frames<'a> {
        Frames {
            topo,
            recent: Vec::new(),
            sent_at: Vec::new(),
            jumps,
        }
    }

    /// A frame, the interface it arrives on, and (sometimes) the time it must arrive at:
    /// a repeat of a flow exactly at, or just past, an idle timeout after its last packet.
    pub fn next(&mut self, rng: &mut Rng, now: u64) -> (String, Vec<u8>, Option<u64>) {
        let t = self.topo;
        let mut at = None;
        let flow = if !self.recent.is_empty() && rng.chance(35) {
            let k = rng.below(self.recent.len() as u64) as usize;
            if self.jumps && rng.chance(10) {
                let when = self.sent_at[k] + *rng.pick(&TIMEOUTS_NS) + rng.below(2);
                at = (when > now).then_some(when);
            }
            self.sent_at[k] = at.unwrap_or(now);
            let f = self.recent[k].clone();
            if rng.chance(50) {
                f
            } else {
                self.reply(&f).unwrap_or(f)
            }
        } else {
            let f = self.fresh(rng);
            if self.recent.len() < 64 {
                self.recent.push(f.clone());
                self.sent_at.push(now);
            } else {
                let i = rng.below(64) as usize;
                self.recent[i] = f.clone();
                self.sent_at[i] = now;
            }
            f
        };
        let from = &t.instances[flow.from];
        let ingress = match rng.below(100) {
            0..=97 => from.iface.clone(),
            // Not a port: a spare interface, or the loopback.
            _ => {
                if t.instances.len() < IFACES {
                    iface(IFACES - 1)
                } else {
                    "lo".to_string()
                }
            }
        };
        (ingress, frame(rng, from.mac, &flow), at)
    }

    /// The reply of `f`, sent by the instance that has its destination (if any does).
    fn reply(&self, f: &Flow) -> Option<Flow> {
        let to =
            self.topo.instances.iter().position(|i| {
                IpAddr::V4(i.ipv4) == f.dst || i.ipv6.map(IpAddr::V6) == Some(f.dst)
            })?;
        let (sport, dport) = match f.proto {
            // Echo request (type 8 / 128) -> reply (0 / 129), same identifier.
            1 => (f.sport, 0),
            58 => (f.sport, 129 << 8),
            _ => (f.dport, f.sport),
        };
        Some(Flow {
            from: to,
            src: f.dst,
            dst: f.src,
            proto: f.proto,
            sport,
            dport,
        })
    }

    fn fresh(&self, rng: &mut Rng) -> Flow {
        let t = self.topo;
        let from = rng.below(t.instances.len() as u64) as usize;
        let me = &t.instances[from];
        let v6 = rng.chance(40);
        let addr_of = |i: &Instance| -> IpAddr {
            match (v6, i.ipv6) {
                (true, Some(a)) => IpAddr::V6(a),
                _ => IpAddr::V4(i.ipv4),
            }
        };
        let random = |rng: &mut Rng| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::from(
                    ((rng.next() as u128) << 64) | rng.next() as u128,
                ))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
            }
        };
        let src = match rng.below(100) {
            0..=79 => addr_of(me),
            // Elsewhere in the sender's VPC.
            80..=87 => match addr_of(me) {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ 0x55)),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ 0x55)),
            },
            // Someone else's address: relayed traffic.
            88..=94 => addr_of(rng.pick(&t.instances)),
            _ => random(rng),
        };
        let peered: Vec<usize> = (0..t.instances.len())
            .filter(|j| {
                let (a, b) = (&t.vpcs[me.vpc].id, &t.vpcs[t.instances[*j].vpc].id);
                t.doc.peerings.iter().any(|p| {
                    (&p.requester_vpc == a && &p.accepter_vpc == b)
                        || (&p.accepter_vpc == a && &p.requester_vpc == b)
                })
            })
            .collect();
        let tampered = !t.extra_dsts.is_empty();
        let dst = match rng.below(100) {
            0..=11 if tampered && !v6 => *rng.pick(&t.extra_dsts),
            0..=74 if !peered.is_empty() => addr_of(&t.instances[*rng.pick(&peered)]),
            0..=81 => addr_of(rng.pick(&t.instances)),
            // Inside a VPC, no instance there.
            82..=87 => {
                let v = rng.pick(&t.vpcs);
                match (v6, v.v6) {
                    (true, Some(c)) => IpAddr::V6(host6(&c, 0x99)),
                    _ => IpAddr::V4(host4(&v.v4[0], 0x99)),
                }
            }
            88..=91 => {
                if v6 {
                    IpAddr::V6(*rng.pick(&[
                        "ff02::1".parse().unwrap(),
                        "fe80::1".parse().unwrap(),
                        "::ffff:10.16.0.5".parse().unwrap(),
                        "::1".parse().unwrap(),
                    ]))
                } else {
                    IpAddr::V4(*rng.pick(&[
                        Ipv4Addr::new(224, 0, 0, 5),
                        Ipv4Addr::new(169, 254, 169, 254),
                        Ipv4Addr::new(127, 0, 0, 1),
                        Ipv4Addr::new(255, 255, 255, 255),
                    ]))
                }
            }
            _ => random(rng),
        };
        let port = |rng: &mut Rng| {
            let r = rng.next() as u16;
            *rng.pick(&[7000u16, 53, 443, 22, 7050, 40000, r])
        };
        let proto = match rng.below(100) {
            0..=34 => 6,
            35..=69 => 17,
            70..=89 => {
                if matches!(dst, IpAddr::V6(_)) ^ rng.chance(5) {
                    58
                } else {
                    1
                }
            }
            _ => {
                let r = rng.byte();
                *rng.pick(&[47, 50, 132, r])
            }
        };
        let (sport, dport) = match proto {
            6 | 17 => (port(rng), port(rng)),
            // Identifier, type << 8 | code: mostly echo requests.
            1 | 58 => {
                let (req, rep) = if proto == 1 { (8u16, 0u16) } else { (128, 129) };
                let r = rng.byte() as u16;
                let ty = *rng.pick(&[req, req, req, rep, 3, 11, r]);
                (*rng.pick(&[0x1234u16, 0x4321, 7]), ty << 8)
            }
            _ => (0, 0),
        };
        Flow {
            from,
            src,
            dst,
            proto,
            sport,
            dport,
        }
    }
}

/// The frame of one packet of `f`, bent now and then.
fn frame(rng: &mut Rng, src_mac: [u8; 6], f: &Flow) -> Vec<u8> {
    let v6 = matches!(f.src, IpAddr::V6(_)) || matches!(f.dst, IpAddr::V6(_));
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&ROUTER_MAC);
    out.extend_from_slice(&src_mac);
    // L2: plain, one tag, or (rarely) stacked tags.
    match rng.below(100) {
        0..=87 => {}
        88..=97 => out.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]),
        98 => out.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x81, 0x00, 0x00, 0x65]),
        _ => out.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64]),
    }
    let ethertype: u16 = match rng.below(100) {
        0..=97 if v6 => 0x86dd,
        0..=97 => 0x0800,
        98 => 0x0806,
        _ => rng.next() as u16,
    };
    out.extend_from_slice(&ethertype.to_be_bytes());
    let l4 = transport(rng, f);
    let v6addr = |a: IpAddr| match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    };
    let v4addr = |a: IpAddr| match a {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    if v6 {
        ipv6(rng, &mut out, v6addr(f.src), v6addr(f.dst), f.proto, &l4);
    } else {
        ipv4(rng, &mut out, v4addr(f.src), v4addr(f.dst), f.proto, &l4);
    }
    // Truncation anywhere (BPF_PROG_RUN needs at least the Ethernet header).
    if rng.chance(2) {
        let cut = 14 + rng.below((out.len() - 14) as u64 + 1) as usize;
        out.truncate(cut.max(14));
    }
    // Bytes past the IP packet (Ethernet padding).
    if rng.chance(5) {
        out.extend_from_slice(&[0u8; 6]);
    }
    out
}

/// Transport header and payload of a packet of `f`.
fn transport(rng: &mut Rng, f: &Flow) -> Vec<u8> {
    // Mostly small; now and then near a full frame (a few of those fill a small bucket).
    let payload_len = if rng.chance(15) {
        600 + rng.below(800) as usize
    } else {
        rng.below(24) as usize
    };
    let mut t = Vec::new();
    match f.proto {
        6 => {
            t.extend_from_slice(&f.sport.to_be_bytes());
            t.extend_from_slice(&f.dport.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
            let doff = if rng.chance(4) { rng.below(5) as u8 } else { 5 };
            t.push(doff << 4);
            t.push({
                let r = rng.byte();
                // SYN, SYN-ACK, ACK, FIN-ACK, RST, PSH-ACK, anything.
                *rng.pick(&[0x02, 0x12, 0x10, 0x10, 0x11, 0x04, 0x18, r])
            });
            t.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
        }
        17 => {
            t.extend_from_slice(&f.sport.to_be_bytes());
            t.extend_from_slice(&f.dport.to_be_bytes());
            t.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
            t.extend_from_slice(&[0, 0]);
        }
        1 | 58 => {
            t.extend_from_slice(&f.dport.to_be_bytes());
            t.extend_from_slice(&[0, 0]);
            t.extend_from_slice(&f.sport.to_be_bytes());
            t.extend_from_slice(&[0, 1]);
        }
        _ => {}
    }
    for _ in 0..payload_len {
        t.push(rng.byte());
    }
    t
}

fn ttl(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..=79 => 64,
        80..=85 => 1,
        86..=89 => 0,
        90..=94 => 2,
        _ => rng.byte(),
    }
}

fn ipv4(rng: &mut Rng, f: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) {
    let options = if rng.chance(5) {
        vec![1u8; 4 * (1 + rng.below(10) as usize)]
    } else {
        vec![]
    };
    let ihl = 5 + options.len() / 4;
    let mut total = (20 + options.len() + l4.len()) as u16;
    if rng.chance(4) {
        total =
            total.wrapping_add(*rng.pick(&[1u16, 40, 0u16.wrapping_sub(4), 0u16.wrapping_sub(30)]));
    }
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | ihl as u8;
    if rng.chance(2) {
        h[0] = {
            let r = rng.byte();
            *rng.pick(&[0x44, 0x65, 0x35, r])
        };
    }
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&(rng.next() as u16).to_be_bytes());
    let frag: u16 = match rng.below(100) {
        0..=91 => 0x4000,
        92..=94 => 0x2000,
        95..=97 => 1 + rng.below(100) as u16,
        _ => 0x2000 | (1 + rng.below(100) as u16),
    };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ttl(rng);
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h.extend_from_slice(&options);
    // A correct header checksum, or (rarely) a wrong one, which forwarding must keep wrong.
    let mut sum: u32 = h
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if rng.chance(97) {
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        h[10] = rng.byte();
        h[11] = rng.byte();
    }
    f.extend_from_slice(&h);
    f.extend_from_slice(l4);
}

fn ipv6(rng: &mut Rng, f: &mut Vec<u8>, src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) {
    // Extension headers before the transport, sometimes many.
    let mut ext = Vec::new();
    let mut chain = Vec::new();
    if rng.chance(12) {
        for _ in 0..1 + rng.below(5) {
            chain.push(*rng.pick(&[0u8, 43, 60, 44, 51]));
        }
    }
    let next_of = |i: usize| {
        if i + 1 < chain.len() {
            chain[i + 1]
        } else {
            proto
        }
    };
    for (i, h) in chain.iter().enumerate() {
        let next = next_of(i);
        match h {
            44 => {
                let offset: u16 = if rng.chance(30) {
                    (1 + rng.below(50) as u16) << 3
                } else {
                    0
                };
                let more = rng.chance(50) as u16;
                ext.extend_from_slice(&[next, 0]);
                ext.extend_from_slice(&(offset | more).to_be_bytes());
                ext.extend_from_slice(&[0, 0, 0, 1]);
            }
            51 => {
                // Length in 4-octet units, minus 2: 1 means 12 bytes.
                ext.extend_from_slice(&[next, 1]);
                ext.extend_from_slice(&[0u8; 10]);
            }
            _ => {
                let units = rng.below(2) as u8;
                ext.extend_from_slice(&[next, units]);
                ext.extend_from_slice(&vec![1u8; 6 + 8 * units as usize]);
            }
        }
    }
    let first = chain.first().copied().unwrap_or(proto);
    let mut payload_len = (ext.len() + l4.len()) as u16;
    if rng.chance(4) {
        payload_len = payload_len.wrapping_add(*rng.pick(&[1u16, 100, 0u16.wrapping_sub(3)]));
    }
    let mut h = vec![0u8; 40];
    h[0] = if rng.chance(2) { rng.byte() } else { 0x60 };
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = first;
    h[7] = ttl(rng);
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    f.extend_from_slice(&h);
    f.extend_from_slice(&ext);
    f.extend_from_slice(l4);
}

/// How far the program's clock moves before the next frame. In a busy state (`busy`)
/// frames come microseconds apart, faster than a low cap refills; otherwise time mostly
/// stands or moves by microseconds, sometimes by seconds, and now and then past every
/// conntrack timeout but the established one.
pub fn time_step(rng: &mut Rng, busy: bool) -> u64 {
    const S: u64 = 1_000_000_000;
    if busy {
        return match rng.below(100) {
            0..=49 => 0,
            _ => rng.below(50_000),
        };
    }
    match rng.below(100) {
        0..=49 => 0,
        50..=89 => rng.below(1_000_000),
        90..=97 => rng.below(40 * S),
        _ => rng.below(700 * S),
    }
}
