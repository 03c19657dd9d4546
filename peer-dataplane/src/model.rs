//! Reference model of the XDP pipeline (issue 4): what the program must do to one frame,
//! written from the specification and the validated [`Topology`] alone, in plain Rust,
//! without the maps, the compiled ACLs or any of the program's code. The differential
//! test feeds the same states and frames to this model and to the real program
//! (BPF_PROG_RUN) and requires the same verdict, output bytes and counters.
//!
//! Where the model reads "rules", it evaluates them one by one ([`crate::acl::evaluate_naive`]
//! for network ACLs; a direct scan for security groups); where it reads "routes", it scans
//! the route table for the longest prefix. It is slow on purpose: obviously right beats fast.

use crate::acl::{self, Protocol};
use crate::validate::{PeeringStatus, SgRemote, Target, Topology};
use peer_dataplane_common::{
    cap::CapConfig,
    conntrack::{expired, CT_FIN, CT_REPLIED, CT_RST},
    DropReason, PassReason, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What happens to the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass(PassReason),
    Drop(DropReason),
    /// Forwarded out of the port with this ifindex.
    Redirect(u32),
}

/// The model's answer for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The peering and direction (`DIR_*`) the frame was counted under, if any.
    pub peering: Option<(String, u32)>,
    /// The frame as the program leaves it (rewritten when forwarded).
    pub frame: Vec<u8>,
    /// Counted as a fragment / as carrying IPv4 options.
    pub fragment: bool,
    pub ipv4_options: bool,
    /// Network ACL rules that decided: (ACL id, egress, rule number).
    pub acl_hits: Vec<(String, bool, u32)>,
}

/// A tracked flow, as its first packet saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowKey {
    pub src_vpc: String,
    pub dst_vpc: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    fn reversed(&self) -> FlowKey {
        FlowKey {
            src_vpc: self.dst_vpc.clone(),
            dst_vpc: self.src_vpc.clone(),
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub last_seen_ns: u64,
    pub flags: u32,
}

/// The state the pipeline keeps between frames.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub flows: BTreeMap<FlowKey, Flow>,
    /// Cap buckets: (peering, `DIR_*`) -> theoretical arrival time, ns. Absent = 0.
    pub buckets: BTreeMap<(String, u32), u64>,
}

/// The topology, and which ifindex each port's interface has.
pub struct Model<'t> {
    topo: &'t Topology,
    ifindex: BTreeMap<String, u32>,
}

/// A parsed frame.
#[derive(Debug, Clone)]
struct Parsed {
    l3: usize,
    vlan: bool,
    v4: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    fragment: bool,
    options: bool,
    /// (sport, dport) when known; ICMP: (identifier, type << 8 | code).
    ports: Option<(u16, u16)>,
    tcp_flags: u8,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// `n` bytes at `off`, or a parse error if the frame ends first.
fn bytes(f: &[u8], off: usize, n: usize) -> Result<&[u8], DropReason> {
    f.get(off..off + n).ok_or(DropReason::ParseError)
}

fn parse(f: &[u8]) -> Result<Option<Parsed>, DropReason> {
    let mut ethertype = be16(bytes(f, 12, 2)?);
    let mut l3 = 14;
    let mut vlan = false;
    if ethertype == 0x88a8 {
        return Err(DropReason::UnsupportedEncap);
    }
    if ethertype == 0x8100 {
        ethertype = be16(bytes(f, 16, 2)?);
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            return Err(DropReason::UnsupportedEncap);
        }
        l3 = 18;
        vlan = true;
    }
    match ethertype {
        0x0800 => parse_v4(f, l3, vlan).map(Some),
        0x86dd => parse_v6(f, l3, vlan).map(Some),
        _ => Ok(None),
    }
}

fn parse_v4(f: &[u8], l3: usize, vlan: bool) -> Result<Parsed, DropReason> {
    let h = bytes(f, l3, 20)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::ParseError);
    }
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < 20 {
        return Err(DropReason::ParseError);
    }
    let total = be16(&h[2..]) as usize;
    if total < ihl || l3 + total > f.len() {
        return Err(DropReason::ParseError);
    }
    let frag = be16(&h[6..]);
    let offset = frag & 0x1fff;
    let mut p = Parsed {
        l3,
        vlan,
        v4: true,
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        proto: h[9],
        ttl: h[8],
        fragment: frag & 0x2000 != 0 || offset != 0,
        options: ihl > 20,
        ports: None,
        tcp_flags: 0,
    };
    if offset == 0 {
        transport(f, &mut p, l3 + ihl, l3 + total)?;
    }
    Ok(p)
}

fn parse_v6(f: &[u8], l3: usize, vlan: bool) -> Result<Parsed, DropReason> {
    let h = bytes(f, l3, 40)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::ParseError);
    }
    let end = l3 + 40 + be16(&h[4..]) as usize;
    if end > f.len() {
        return Err(DropReason::ParseError);
    }
    let addr = |b: &[u8]| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()));
    let mut p = Parsed {
        l3,
        vlan,
        v4: false,
        src: addr(&h[8..24]),
        dst: addr(&h[24..40]),
        proto: h[6],
        ttl: h[7],
        fragment: false,
        options: false,
        ports: None,
        tcp_flags: 0,
    };
    // Up to four extension headers are walked; a fifth leaves the transport unknown.
    let mut off = l3 + 40;
    let mut first_fragment = true;
    let mut walked_to_transport = false;
    for _ in 0..4 {
        match p.proto {
            0 | 43 | 60 => {
                let e = bytes(f, off, 2)?;
                p.proto = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            44 => {
                let e = bytes(f, off, 4)?;
                p.proto = e[0];
                p.fragment = true;
                first_fragment = be16(&e[2..]) & 0xfff8 == 0;
                off += 8;
                if !first_fragment {
                    if off > end {
                        return Err(DropReason::ParseError);
                    }
                    walked_to_transport = true;
                    break;
                }
            }
            51 => {
                let e = bytes(f, off, 2)?;
                p.proto = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            _ => {
                walked_to_transport = true;
                break;
            }
        }
        if off > end {
            return Err(DropReason::ParseError);
        }
    }
    if !walked_to_transport && matches!(p.proto, 0 | 43 | 44 | 51 | 60) {
        return Err(DropReason::ParseError);
    }
    if first_fragment {
        transport(f, &mut p, off, end)?;
    }
    Ok(p)
}

/// The transport header at `off`, which must end by `end` (the IP packet's end).
fn transport(f: &[u8], p: &mut Parsed, off: usize, end: usize) -> Result<(), DropReason> {
    if off > 2048 {
        return Err(DropReason::ParseError);
    }
    match p.proto {
        6 => {
            if off + 20 > end {
                return Err(DropReason::ParseError);
            }
            let t = bytes(f, off, 14)?;
            if t[12] >> 4 < 5 {
                return Err(DropReason::ParseError);
            }
            p.ports = Some((be16(t), be16(&t[2..])));
            p.tcp_flags = t[13];
        }
        17 => {
            if off + 8 > end {
                return Err(DropReason::ParseError);
            }
            let u = bytes(f, off, 4)?;
            p.ports = Some((be16(u), be16(&u[2..])));
        }
        1 | 58 => {
            if off + 8 > end {
                return Err(DropReason::ParseError);
            }
            let i = bytes(f, off, 8)?;
            p.ports = Some((be16(&i[4..]), be16(i)));
        }
        _ => {}
    }
    Ok(())
}

fn v4_mapped(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// Multicast, broadcast, link-local, loopback, unspecified, and IPv4-mapped IPv6.
fn not_routable(p: &Parsed) -> bool {
    match p.dst {
        IpAddr::V4(a) => {
            let o = a.octets();
            o[0] == 0 || o[0] == 127 || o[0] >= 224 || (o[0] == 169 && o[1] == 254)
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            o[0] == 0xff
                || (o[0] == 0xfe && o[1] & 0xc0 == 0x80)
                || o[..15].iter().all(|b| *b == 0)
                || v4_mapped(&p.dst)
        }
    }
}

/// RFC 1624 incremental update of a checksum for one 16-bit word.
fn checksum_update(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check as u32) + (!old as u32) + new as u32;
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

struct Verdicted {
    verdict: Verdict,
    peering: Option<(String, u32)>,
}

fn drop_under(reason: DropReason, peering: &Option<(String, u32)>) -> Verdicted {
    Verdicted {
        verdict: Verdict::Drop(reason),
        peering: peering.clone(),
    }
}

impl<'t> Model<'t> {
    /// `ifindex`: each port's interface name and its ifindex.
    pub fn new(topo: &'t Topology, ifindex: BTreeMap<String, u32>) -> Model<'t> {
        Model { topo, ifindex }
    }

    /// Runs one frame received on `ingress` at time `now_ns`.
    pub fn run(&self, state: &mut State, ingress: u32, frame: &[u8], now_ns: u64) -> Outcome {
        let mut out = Outcome {
            verdict: Verdict::Pass(PassReason::UnknownPort),
            peering: None,
            frame: frame.to_vec(),
            fragment: false,
            ipv4_options: false,
            acl_hits: Vec::new(),
        };
        let v = self.pipeline(state, ingress, frame, now_ns, &mut out);
        out.verdict = v.verdict;
        out.peering = v.peering;
        out
    }

    fn pipeline(
        &self,
        state: &mut State,
        ingress: u32,
        frame: &[u8],
        now: u64,
        out: &mut Outcome,
    ) -> Verdicted {
        let t = self.topo;
        let pass = |r| Verdicted {
            verdict: Verdict::Pass(r),
            peering: None,
        };
        let Some(port) = t
            .ports
            .values()
            .find(|p| self.ifindex.get(&p.interface) == Some(&ingress))
        else {
            return pass(PassReason::UnknownPort);
        };
        let p = match parse(frame) {
            Err(r) => return drop_under(r, &None),
            Ok(None) => return pass(PassReason::NotIp),
            Ok(Some(p)) => p,
        };
        out.fragment = p.fragment;
        out.ipv4_options = p.options;
        if not_routable(&p) {
            return pass(PassReason::NotRoutable);
        }
        let subnet = &t.subnets[&port.subnet];
        let vpc = subnet.vpc.as_str();
        let pcx = match self.route(&subnet.route_table, &p.dst) {
            None => return drop_under(DropReason::NoRoute, &None),
            Some(Target::Local) => return pass(PassReason::LocalRoute),
            Some(Target::Blackhole) => return drop_under(DropReason::Blackhole, &None),
            Some(Target::Peering(pcx)) => pcx,
        };
        let peering = &t.peerings[&pcx];
        let (dir, peer_vpc) = if peering.requester_vpc == vpc {
            (DIR_REQUESTER_TO_ACCEPTER, peering.accepter_vpc.as_str())
        } else if peering.accepter_vpc == vpc {
            (DIR_ACCEPTER_TO_REQUESTER, peering.requester_vpc.as_str())
        } else {
            return drop_under(DropReason::PeeringMismatch, &None);
        };
        let counted = Some((pcx.clone(), dir));
        let drop = |r| drop_under(r, &counted);
        if peering.status != PeeringStatus::Active {
            return drop(DropReason::PeeringInactive);
        }
        // Transitivity: the source must be the port's own address or inside its VPC.
        let own = match p.src {
            IpAddr::V4(a) => port.ipv4 == Some(a),
            IpAddr::V6(a) => port.ipv6 == Some(a),
        };
        if v4_mapped(&p.src) || !(own || self.inside_vpc(vpc, &p.src)) {
            return drop(DropReason::Transitive);
        }
        if let Some(acl) = &subnet.network_acl {
            if !self.nacl(acl, true, &p.dst, &p, out) {
                return drop(DropReason::NaclDeny);
            }
        }
        let Some(receiver) = t.ports.values().find(|q| {
            t.subnets[&q.subnet].vpc == peer_vpc
                && match p.dst {
                    IpAddr::V4(a) => q.ipv4 == Some(a),
                    IpAddr::V6(a) => q.ipv6 == Some(a),
                }
        }) else {
            return drop(if self.inside_vpc(peer_vpc, &p.dst) {
                DropReason::NoEndpoint
            } else {
                DropReason::OutsidePeer
            });
        };
        let rsubnet = &t.subnets[&receiver.subnet];
        match self.route(&rsubnet.route_table, &p.src) {
            Some(Target::Peering(back)) if back == pcx => {}
            _ => return drop(DropReason::NoReturnRoute),
        }
        if let Some(acl) = &rsubnet.network_acl {
            if !self.nacl(acl, false, &p.src, &p, out) {
                return drop(DropReason::NaclDeny);
            }
        }
        if !self.security_groups(
            state,
            port.security_groups.as_deref(),
            receiver.security_groups.as_deref(),
            vpc,
            peer_vpc,
            &p,
            now,
        ) {
            return drop(DropReason::SgDeny);
        }
        if p.ttl <= 1 {
            return drop(DropReason::TtlExceeded);
        }
        let Some(&out_ifindex) = self.ifindex.get(&receiver.interface) else {
            return drop(DropReason::RedirectFailed);
        };
        let cap = peering.caps[dir as usize]
            .map(|c| CapConfig::new(c.bits_per_second, c.burst_bytes))
            .unwrap_or(peer_dataplane_common::cap::UNCAPPED);
        if cap.is_capped() {
            let bucket = state.buckets.entry((pcx.clone(), dir)).or_insert(0);
            if !police(&cap, bucket, frame.len() as u64, now) {
                return drop(DropReason::RateLimited);
            }
        }
        out.frame = rewrite(frame, &p, receiver.mac, receiver.gateway_mac);
        Verdicted {
            verdict: Verdict::Redirect(out_ifindex),
            peering: counted,
        }
    }

    /// Longest-prefix match in a route table (IPv4 and IPv6 routes never cover each
    /// other's addresses).
    fn route(&self, table: &str, a: &IpAddr) -> Option<Target> {
        self.topo.route_tables[table]
            .routes
            .iter()
            .filter(|(net, _)| net.contains(a))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, t)| t.clone())
    }

    fn inside_vpc(&self, vpc: &str, a: &IpAddr) -> bool {
        self.topo.vpcs[vpc].cidrs.iter().any(|c| c.contains(a))
    }

    fn acl_packet(p: &Parsed, addr: &IpAddr) -> acl::Packet {
        acl::Packet {
            addr: *addr,
            protocol: p.proto,
            port: match p.ports {
                Some((_, d)) if p.proto == 6 || p.proto == 17 => Some(d),
                _ => None,
            },
        }
    }

    /// Network ACL `id` in one direction, rule by rule; records the deciding rule.
    fn nacl(&self, id: &str, egress: bool, addr: &IpAddr, p: &Parsed, out: &mut Outcome) -> bool {
        let a = &self.topo.network_acls[id];
        let rules = if egress { &a.egress } else { &a.ingress };
        let d = acl::evaluate_naive(rules, &Self::acl_packet(p, addr));
        if let Some(n) = d.rule {
            out.acl_hits.push((id.to_string(), egress, n));
        }
        d.allow
    }

    /// Whether some rule of `groups` in one direction lets `p` through to/from `addr`.
    fn sg_allows(&self, groups: &[String], egress: bool, addr: &IpAddr, p: &Parsed) -> bool {
        let ap = Self::acl_packet(p, addr);
        groups.iter().any(|g| {
            self.topo.security_groups[g]
                .rules
                .iter()
                .filter(|r| r.egress == egress)
                .any(|r| {
                    let proto_ok = match r.protocol {
                        Protocol::All => true,
                        Protocol::Number(n) => n == p.proto,
                    };
                    let port_ok = match (r.ports, r.protocol) {
                        (Some((lo, hi)), Protocol::Number(6 | 17)) => {
                            matches!(ap.port, Some(x) if lo <= x && x <= hi)
                        }
                        _ => true,
                    };
                    let remote_ok = match &r.remote {
                        SgRemote::Cidr(c) => c.contains(addr),
                        SgRemote::Group(peer) => self.topo.ports.values().any(|m| {
                            m.security_groups.iter().flatten().any(|x| x == peer)
                                && (m.ipv4.map(IpAddr::V4) == Some(*addr)
                                    || m.ipv6.map(IpAddr::V6) == Some(*addr))
                        }),
                    };
                    proto_ok && port_ok && remote_ok
                })
        })
    }

    /// Stateful security groups of both ports (SPEC §2): a packet of a tracked flow
    /// passes; any other needs the sender's egress and the receiver's ingress rules, and
    /// then opens a flow if it is the kind that does.
    #[allow(clippy::too_many_arguments)]
    fn security_groups(
        &self,
        state: &mut State,
        sender: Option<&[String]>,
        receiver: Option<&[String]>,
        src_vpc: &str,
        dst_vpc: &str,
        p: &Parsed,
        now: u64,
    ) -> bool {
        if sender.is_none() && receiver.is_none() {
            return true;
        }
        // Which flow the packet would belong to, and whether it may open one.
        let flow = match (p.proto, p.ports) {
            (6 | 17, Some((s, d))) => Some((s, d, true)),
            (6 | 17, None) => None,
            (1 | 58, Some((id, type_code))) => {
                let ty = (type_code >> 8) as u8;
                let (request, reply) = if p.proto == 1 { (8, 0) } else { (128, 129) };
                if ty == request {
                    Some((id, 0, true))
                } else if ty == reply {
                    Some((0, id, false))
                } else {
                    None
                }
            }
            (1 | 58, None) => None,
            _ => Some((0, 0, true)),
        };
        let key = flow.map(|(sport, dport, opens)| {
            (
                FlowKey {
                    src_vpc: src_vpc.into(),
                    dst_vpc: dst_vpc.into(),
                    src: p.src,
                    dst: p.dst,
                    sport,
                    dport,
                    proto: p.proto,
                },
                opens,
            )
        });
        let tcp = if p.proto == 6 {
            (if p.tcp_flags & 0x01 != 0 { CT_FIN } else { 0 })
                | (if p.tcp_flags & 0x04 != 0 { CT_RST } else { 0 })
        } else {
            0
        };
        let live = |state: &State, k: &FlowKey| {
            state
                .flows
                .get(k)
                .filter(|f| !expired(k.proto, f.flags, f.last_seen_ns, now))
                .is_some()
        };
        if let Some((k, _)) = &key {
            if live(state, k) {
                let f = state.flows.get_mut(k).unwrap();
                if p.tcp_flags & 0x12 == 0x02 && f.flags & (CT_FIN | CT_RST) != 0 {
                    f.flags = 0;
                }
                f.last_seen_ns = now;
                f.flags |= tcp;
                return true;
            }
            let r = k.reversed();
            if live(state, &r) {
                let f = state.flows.get_mut(&r).unwrap();
                f.last_seen_ns = now;
                f.flags |= CT_REPLIED | tcp;
                return true;
            }
        }
        if let Some(g) = sender {
            if !self.sg_allows(g, true, &p.dst, p) {
                return false;
            }
        }
        if let Some(g) = receiver {
            if !self.sg_allows(g, false, &p.src, p) {
                return false;
            }
        }
        if let Some((k, true)) = key {
            state.flows.insert(
                k,
                Flow {
                    last_seen_ns: now,
                    flags: tcp,
                },
            );
        }
        true
    }
}

/// The GCRA step (see `peer_dataplane_common::cap` for the definition of the bucket).
fn police(cap: &CapConfig, tat: &mut u64, len: u64, now: u64) -> bool {
    let cost = (len * cap.ps_per_byte).div_ceil(1000);
    if cost > cap.burst_ns {
        return false;
    }
    let new = (*tat).max(now) + cost;
    if new - now > cap.burst_ns {
        return false;
    }
    *tat = new;
    true
}

/// The forwarded frame: TTL / hop limit down by one (IPv4 checksum updated), MACs of the
/// receiver's port, VLAN tag removed.
fn rewrite(frame: &[u8], p: &Parsed, mac: [u8; 6], gw_mac: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    if p.v4 {
        let o = p.l3 + 8;
        let old = be16(&f[o..]);
        f[o] -= 1;
        let new = be16(&f[o..]);
        let check = checksum_update(be16(&f[o + 2..]), old, new);
        f[o + 2..o + 4].copy_from_slice(&check.to_be_bytes());
    } else {
        f[p.l3 + 7] -= 1;
    }
    let mut out = Vec::with_capacity(f.len());
    out.extend_from_slice(&mac);
    out.extend_from_slice(&gw_mac);
    out.extend_from_slice(&f[if p.vlan { 16 } else { 12 }..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::Document;

    const SEED: &str = include_str!("../../examples/seed.toml");

    fn frame_udp4(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&32u16.to_be_bytes());
        ip[8] = ttl;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&40000u16.to_be_bytes());
        f[36..38].copy_from_slice(&7000u16.to_be_bytes());
        f
    }

    #[test]
    fn the_seed_forwards_a_to_b_and_refuses_a_to_c() {
        let topo = crate::validate::validate(&Document::from_toml(SEED).unwrap()).unwrap();
        let ifx = BTreeMap::from([
            ("pdp-a".to_string(), 11),
            ("pdp-b".to_string(), 12),
            ("pdp-c".to_string(), 13),
        ]);
        let m = Model::new(&topo, ifx);
        let mut s = State::default();
        let o = m.run(
            &mut s,
            11,
            &frame_udp4([10, 0, 2, 10], [172, 16, 2, 20], 64),
            0,
        );
        assert_eq!(o.verdict, Verdict::Redirect(12));
        assert_eq!(
            o.peering,
            Some(("pcx-ab".into(), DIR_REQUESTER_TO_ACCEPTER))
        );
        assert_eq!(o.frame[14 + 8], 63);
        let o = m.run(
            &mut s,
            11,
            &frame_udp4([10, 0, 2, 10], [192, 168, 2, 30], 64),
            0,
        );
        assert_eq!(o.verdict, Verdict::Drop(DropReason::NoRoute));
        let o = m.run(
            &mut s,
            11,
            &frame_udp4([10, 0, 2, 10], [172, 16, 2, 20], 1),
            0,
        );
        assert_eq!(o.verdict, Verdict::Drop(DropReason::TtlExceeded));
        let o = m.run(
            &mut s,
            99,
            &frame_udp4([10, 0, 2, 10], [172, 16, 2, 20], 64),
            0,
        );
        assert_eq!(o.verdict, Verdict::Pass(PassReason::UnknownPort));
        let o = m.run(
            &mut s,
            11,
            &frame_udp4([10, 0, 2, 10], [172, 16, 2, 20], 64)[..30],
            0,
        );
        assert_eq!(o.verdict, Verdict::Drop(DropReason::ParseError));
    }
}
