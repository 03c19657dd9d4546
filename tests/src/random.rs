//! Random states and random frames for the differential test: documents built on the
//! seed topology (peering statuses, routes, network ACLs, security groups, caps), and
//! frames that are sometimes right and often not (every header field the parser reads
//! is bent somewhere: VLAN stacks, IHL, lengths, fragments, extension headers, TTLs,
//! truncation). Reproducible from a seed.

use crate::seed::{Instance, A, B, C, ROUTER_MAC};
use peer_dataplane::document::{
    AclRuleDoc, Document, NetworkAclDoc, RouteDoc, SecurityGroupDoc, SgRuleDoc,
};

/// xorshift64*: small, fast, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

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

/// How a peering's caps are set up in a random state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapSetup {
    None,
    /// 400 Gbit/s with a full bucket: never limits a test's packets.
    Generous,
    /// 100 Mbit/s with the bucket drained an hour ahead: limits every packet.
    Drained,
}

const RULE_CIDRS: [&str; 16] = [
    "0.0.0.0/0",
    "10.0.0.0/16",
    "10.0.2.0/24",
    "10.0.2.10/32",
    "172.16.0.0/16",
    "172.16.2.20/32",
    "192.168.0.0/16",
    "172.16.0.0/12",
    "10.0.0.0/8",
    "::/0",
    "fd00:a::/48",
    "fd00:b::/48",
    "fd00:b:0:2::20/128",
    "fd00:a:0:2::10/128",
    "fd00:c::/48",
    "fd00::/8",
];
const PROTOCOLS: [&str; 7] = ["all", "tcp", "udp", "icmp", "icmpv6", "47", "tcp"];
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

/// A random state on the seed topology; returns the document and the caps to set up.
pub fn state(rng: &mut Rng) -> (Document, [CapSetup; 2]) {
    let mut d = crate::seed::seed_doc();
    for p in &mut d.peerings {
        if !rng.chance(80) {
            p.status = rng
                .pick(&["pending-acceptance", "deleted", "rejected", "expired"])
                .to_string();
        }
    }
    let mut caps = [CapSetup::None; 2];
    for (i, p) in d.peerings.iter_mut().enumerate() {
        caps[i] = *rng.pick(&[
            CapSetup::None,
            CapSetup::None,
            CapSetup::Generous,
            CapSetup::Drained,
        ]);
        match caps[i] {
            CapSetup::None => {}
            CapSetup::Generous => p.bandwidth_mbps = Some(400_000),
            CapSetup::Drained => p.bandwidth_mbps = Some(100),
        }
    }
    // Routes: blackholes, more specific peering routes, missing return routes.
    for t in &mut d.route_tables {
        let (peer_net, pcx) = match t.id.as_str() {
            "rtb-a" => ("172.16.2.0/24", "pcx-ab"),
            "rtb-b" => ("10.0.2.0/24", "pcx-ab"),
            _ => ("172.16.2.0/24", "pcx-bc"),
        };
        if rng.chance(15) {
            t.routes.push(RouteDoc {
                destination: peer_net.into(),
                target: "blackhole".into(),
            });
        } else if rng.chance(15) {
            t.routes.push(RouteDoc {
                destination: peer_net.into(),
                target: pcx.into(),
            });
        }
        if rng.chance(12) {
            let i = rng.below(t.routes.len() as u64) as usize;
            t.routes.remove(i);
        }
    }
    // Network ACLs.
    for si in 0..d.subnets.len() {
        if !rng.chance(40) {
            continue;
        }
        let id = format!("acl-{}", d.subnets[si].id);
        let mut rules = Vec::new();
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..rng.below(12) {
            let direction = *rng.pick(&["ingress", "egress"]);
            let number = rng.below(200) as u32 + 1;
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
                cidr: rng.pick(&RULE_CIDRS).to_string(),
                action: rng.pick(&["allow", "allow", "deny"]).to_string(),
            });
        }
        d.network_acls.push(NetworkAclDoc {
            id: id.clone(),
            vpc: d.subnets[si].vpc.clone(),
            rules,
        });
        d.subnets[si].network_acl = Some(id);
    }
    // Security groups: one per VPC, referring to peered VPCs' groups where allowed.
    let live = |d: &Document, pcx: &str| {
        d.peerings
            .iter()
            .any(|p| p.id == pcx && (p.status == "active" || p.status == "pending-acceptance"))
    };
    let refs = [
        ("sg-a", "vpc-a", vec![("sg-b", "pcx-ab")]),
        (
            "sg-b",
            "vpc-b",
            vec![("sg-a", "pcx-ab"), ("sg-c", "pcx-bc")],
        ),
        ("sg-c", "vpc-c", vec![("sg-b", "pcx-bc")]),
    ];
    for (id, vpc, peers) in refs {
        let mut rules = Vec::new();
        for _ in 0..rng.below(7) {
            let protocol = *rng.pick(&PROTOCOLS);
            let ports = ports_for(rng, protocol);
            let peer = peers[rng.below(peers.len() as u64) as usize];
            let by_group = rng.chance(25) && live(&d, peer.1);
            rules.push(SgRuleDoc {
                direction: rng.pick(&["ingress", "egress"]).to_string(),
                protocol: protocol.into(),
                port_from: ports.map(|p| p.0),
                port_to: ports.map(|p| p.1),
                cidr: (!by_group).then(|| rng.pick(&RULE_CIDRS).to_string()),
                peer_security_group: by_group.then(|| peer.0.to_string()),
            });
        }
        d.security_groups.push(SecurityGroupDoc {
            id: id.into(),
            vpc: vpc.into(),
            rules,
        });
    }
    for p in &mut d.ports {
        let own = format!("sg-{}", &p.interface[4..]);
        p.security_groups = match rng.below(10) {
            0..=4 => None,
            5 => Some(vec![]),
            _ => Some(vec![own]),
        };
    }
    (d, caps)
}

/// A frame sent by `from` (or by anyone, for frames on an unknown port).
pub fn frame(rng: &mut Rng, from: Instance) -> Vec<u8> {
    let v6 = rng.chance(45);
    let mut f = Vec::with_capacity(256);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&from.mac);
    // L2: plain, one tag, or (rarely) stacked tags.
    match rng.below(100) {
        0..=84 => {}
        85..=94 => f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]),
        95..=97 => f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x81, 0x00, 0x00, 0x65]),
        _ => f.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64]),
    }
    let ethertype: u16 = match rng.below(100) {
        0..=94 if v6 => 0x86dd,
        0..=94 => 0x0800,
        95..=97 => 0x0806,
        _ => rng.next() as u16,
    };
    f.extend_from_slice(&ethertype.to_be_bytes());
    let l3 = f.len();
    let (proto, l4) = transport(rng, v6);
    if v6 {
        ipv6(rng, &mut f, from, proto, &l4);
    } else {
        ipv4(rng, &mut f, from, proto, &l4);
    }
    // Truncation anywhere (BPF_PROG_RUN needs at least the Ethernet header).
    if rng.chance(5) {
        let cut = 14 + rng.below((f.len() - 14) as u64 + 1) as usize;
        f.truncate(cut.max(14));
    }
    // Bytes past the IP packet (Ethernet padding).
    if rng.chance(5) {
        f.extend_from_slice(&[0u8; 6]);
    }
    let _ = l3;
    f
}

fn address(rng: &mut Rng, from: Instance, v6: bool, source: bool) -> [u8; 16] {
    let others = [A, B, C];
    let mapped = |a: [u8; 4]| peer_dataplane_common::addr::from_v4(a);
    let inst = |i: &Instance| if v6 { i.ipv6 } else { mapped(i.ipv4) };
    let pick = rng.below(100);
    let a = if source {
        match pick {
            0..=74 => inst(&from),
            75..=84 => {
                // Elsewhere in the sender's VPC.
                let mut a = inst(&from);
                a[15] ^= 0x55;
                a
            }
            85..=92 => inst(rng.pick(&others)),
            _ => random_addr(rng, v6),
        }
    } else {
        let peers: Vec<Instance> = others
            .iter()
            .copied()
            .filter(|i| i.port != from.port)
            .collect();
        match pick {
            0..=69 => inst(rng.pick(&peers)),
            70..=79 => {
                // Inside a VPC, no instance there.
                let mut a = inst(rng.pick(&others));
                a[15] ^= 0x33;
                a
            }
            80..=87 => {
                if v6 {
                    [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                } else {
                    mapped(*rng.pick(&[[224, 0, 0, 5], [169, 254, 169, 254], [127, 0, 0, 1]]))
                }
            }
            88..=91 if v6 => mapped([172, 16, 2, 20]),
            _ => random_addr(rng, v6),
        }
    };
    a
}

fn random_addr(rng: &mut Rng, v6: bool) -> [u8; 16] {
    let mut a = [0u8; 16];
    for b in &mut a {
        *b = rng.byte();
    }
    if v6 {
        a
    } else {
        peer_dataplane_common::addr::from_v4([a[0], a[1], a[2], a[3]])
    }
}

/// (protocol, transport header and payload)
fn transport(rng: &mut Rng, v6: bool) -> (u8, Vec<u8>) {
    let port = |rng: &mut Rng| {
        let r = rng.next() as u16;
        *rng.pick(&[7000u16, 53, 443, 22, 7050, 40000, r])
    };
    let payload_len = rng.below(24) as usize;
    let mut t = Vec::new();
    let proto = match rng.below(100) {
        0..=34 => {
            t.extend_from_slice(&port(rng).to_be_bytes());
            t.extend_from_slice(&port(rng).to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
            let doff = if rng.chance(5) { rng.below(5) as u8 } else { 5 };
            t.push(doff << 4);
            t.push({
                let r = rng.byte();
                *rng.pick(&[0x02, 0x12, 0x10, 0x11, 0x04, 0x18, r])
            });
            t.extend_from_slice(&[0xfa, 0xf0, 0, 0, 0, 0]);
            6
        }
        35..=69 => {
            t.extend_from_slice(&port(rng).to_be_bytes());
            t.extend_from_slice(&port(rng).to_be_bytes());
            t.extend_from_slice(&((8 + payload_len) as u16).to_be_bytes());
            t.extend_from_slice(&[0, 0]);
            17
        }
        70..=89 => {
            let (req, rep, proto) = if v6 ^ rng.chance(5) {
                (128, 129, 58)
            } else {
                (8, 0, 1)
            };
            let ty = {
                let r = rng.byte();
                *rng.pick(&[req, req, rep, 3, 11, r])
            };
            t.extend_from_slice(&[ty, 0, 0, 0]);
            t.extend_from_slice(&(*rng.pick(&[0x1234u16, 0x4321, 7])).to_be_bytes());
            t.extend_from_slice(&[0, 1]);
            proto
        }
        _ => {
            let r = rng.byte();
            *rng.pick(&[47, 50, 132, r])
        }
    };
    for _ in 0..payload_len {
        t.push(rng.byte());
    }
    (proto, t)
}

fn ttl(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..=69 => 64,
        70..=77 => 1,
        78..=83 => 0,
        84..=89 => 2,
        _ => rng.byte(),
    }
}

fn ipv4(rng: &mut Rng, f: &mut Vec<u8>, from: Instance, proto: u8, l4: &[u8]) {
    let options = if rng.chance(6) {
        vec![1u8; 4 * (1 + rng.below(10) as usize)]
    } else {
        vec![]
    };
    let ihl = 5 + options.len() / 4;
    let mut total = (20 + options.len() + l4.len()) as u16;
    if rng.chance(5) {
        total =
            total.wrapping_add(*rng.pick(&[1u16, 40, 0u16.wrapping_sub(4), 0u16.wrapping_sub(30)]));
    }
    let mut h = vec![0u8; 20];
    h[0] = 0x40 | ihl as u8;
    if rng.chance(3) {
        h[0] = {
            let r = rng.byte();
            *rng.pick(&[0x44, 0x65, 0x35, r])
        };
    }
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&(rng.next() as u16).to_be_bytes());
    let frag: u16 = match rng.below(100) {
        0..=89 => 0x4000,
        90..=93 => 0x2000,
        94..=97 => 0x0000 | (1 + rng.below(100) as u16),
        _ => 0x2000 | (1 + rng.below(100) as u16),
    };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = ttl(rng);
    h[9] = proto;
    let src = address(rng, from, false, true);
    let dst = address(rng, from, false, false);
    h[12..16].copy_from_slice(&src[12..]);
    h[16..20].copy_from_slice(&dst[12..]);
    h.extend_from_slice(&options);
    let check = peer_dataplane_common::checksum::ipv4_header(&h);
    if rng.chance(95) {
        h[10..12].copy_from_slice(&check.to_be_bytes());
    } else {
        h[10] = rng.byte();
        h[11] = rng.byte();
    }
    f.extend_from_slice(&h);
    f.extend_from_slice(l4);
}

fn ipv6(rng: &mut Rng, f: &mut Vec<u8>, from: Instance, proto: u8, l4: &[u8]) {
    // Extension headers before the transport, sometimes many.
    let mut ext = Vec::new();
    let mut chain = Vec::new();
    if rng.chance(15) {
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
    if rng.chance(5) {
        payload_len = payload_len.wrapping_add(*rng.pick(&[1u16, 100, 0u16.wrapping_sub(3)]));
    }
    let mut h = vec![0u8; 40];
    h[0] = if rng.chance(3) { rng.byte() } else { 0x60 };
    h[4..6].copy_from_slice(&payload_len.to_be_bytes());
    h[6] = first;
    h[7] = ttl(rng);
    h[8..24].copy_from_slice(&address(rng, from, true, true));
    h[24..40].copy_from_slice(&address(rng, from, true, false));
    f.extend_from_slice(&h);
    f.extend_from_slice(&ext);
    f.extend_from_slice(l4);
}

/// How far the program's clock moves before the next frame: mostly not at all or by
/// microseconds (frames of one burst), sometimes by seconds, now and then past every
/// conntrack timeout but the established one.
pub fn time_step(rng: &mut Rng) -> u64 {
    const S: u64 = 1_000_000_000;
    match rng.below(100) {
        0..=59 => 0,
        60..=89 => rng.below(1_000_000),
        90..=97 => rng.below(40 * S),
        _ => rng.below(700 * S),
    }
}
