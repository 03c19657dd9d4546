//! The reference model of the data plane, for the differential test: a packet's fate as
//! `docs/datapath.md` defines it, written from that text and the state document alone.
//!
//! It shares no logic with the program or the agent: frames are parsed with `etherparse`
//! plus the few rules of our own the document states (extension-header limits, fragments,
//! what is not routable); routes, ACLs, security groups, peerings and caps are read from the
//! document's strings, not from the agent's validated topology or compiled maps; conntrack
//! expiry and cap arithmetic are restated here from the document's numbers. From the ABI
//! crate it takes only reason numbers, direction numbers and counter layouts, to compare
//! with what the program counts.
//!
//! The model has no cache and no concurrency: it is the serial definition.

use etherparse::{Ethernet2HeaderSlice, Ipv4HeaderSlice, Ipv6HeaderSlice, SingleVlanHeaderSlice};
use ipnet::IpNet;
use peer_dataplane_common::counters::{GlobalCounters, PeeringCounters};
use peer_dataplane_common::overlay::UNDERLAY_OVERHEAD;
use peer_dataplane_common::{
    DropReason, PassReason, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER,
};
use peer_dataplane_model::desired::document::Document;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const SECOND: u64 = 1_000_000_000;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

// ---------------------------------------------------------------------------------------
// the world, from the document

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Local,
    Blackhole,
    Peering(String),
}

#[derive(Debug, Clone)]
struct Port {
    ifindex: u32,
    vpc: String,
    route_table: String,
    acl: Option<String>,
    mac: [u8; 6],
    gateway_mac: [u8; 6],
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    groups: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Peering {
    requester: String,
    accepter: String,
    active: bool,
    /// Per direction (`DIR_*`): (bits per second, bucket bytes), or uncapped.
    caps: [Option<(u64, u64)>; 2],
}

#[derive(Debug, Clone)]
struct AclRule {
    number: u32,
    egress: bool,
    protocol: Option<u8>,
    ports: Option<(u16, u16)>,
    cidr: IpNet,
    allow: bool,
}

#[derive(Debug, Clone)]
struct SgRule {
    egress: bool,
    protocol: Option<u8>,
    ports: Option<(u16, u16)>,
    cidr: Option<IpNet>,
    group: Option<String>,
}

/// Raw map changes no valid document can make, applied to the program's maps by the test
/// and stated here too (defence in depth: the program must still decide them safely).
#[derive(Debug, Clone, Default)]
pub struct Tampering {
    /// (route table, destination, peering name): a route written directly, whatever the
    /// peering is (one not joining the table's VPC, one whose peer does not hold the
    /// destination, or one that does not exist).
    pub routes: Vec<(String, IpNet, String)>,
    /// Ports whose redirect target is missing.
    pub no_redirect: BTreeSet<String>,
}

/// Two hosts (docs/datapath.md §7): which host carries each port, and whether each host's
/// underlay resolves its next hop toward the other.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub host_of: BTreeMap<u32, usize>,
    pub reachable: [bool; 2],
    /// Each host's uplink MTU (the encapsulated frame's limit, §7.4).
    pub mtu: [u32; 2],
    /// The tunnel frame will not arrive whole (a test alters it on the way): the model
    /// runs the sending host's stages only, so that the receiving host's tracking is
    /// not updated for a frame it never gets.
    pub cut: bool,
}

pub struct World {
    /// Set: the ports are spread over two hosts.
    pub fleet: Option<Fleet>,
    ports: BTreeMap<u32, Port>,
    vpc_cidrs: BTreeMap<String, Vec<IpNet>>,
    tables: BTreeMap<String, BTreeMap<IpNet, Target>>,
    peerings: BTreeMap<String, Peering>,
    acls: BTreeMap<String, Vec<AclRule>>,
    groups: BTreeMap<String, Vec<SgRule>>,
    members: BTreeMap<String, Vec<IpAddr>>,
    no_redirect: BTreeSet<u32>,
}

fn mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).expect("a MAC");
    }
    m
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap_or_else(|_| panic!("{s:?} is a CIDR"))
}

fn protocol(s: &str) -> Option<u8> {
    match s {
        "all" => None,
        "tcp" => Some(TCP),
        "udp" => Some(UDP),
        "icmp" => Some(ICMP),
        "icmpv6" => Some(ICMPV6),
        n => Some(n.parse().expect("a protocol number")),
    }
}

fn ports(from: Option<u16>, to: Option<u16>) -> Option<(u16, u16)> {
    from.zip(to)
}

impl World {
    /// Whether port `ifindex` has lost its redirect entry (`true`) or has it again: a test
    /// that deletes one in the program says so here.
    pub fn set_no_redirect(&mut self, ifindex: u32, missing: bool) {
        if missing {
            self.no_redirect.insert(ifindex);
        } else {
            self.no_redirect.remove(&ifindex);
        }
    }

    /// The world a (valid) document describes, with ports at the interfaces' ifindexes.
    pub fn new(doc: &Document, ifindex: &BTreeMap<String, u32>, t: &Tampering) -> World {
        let (vpc_cidrs, region) = vpcs(doc);
        let tables = tables(doc, &vpc_cidrs, t);
        let peerings = peerings(doc, &region);
        let (ports, members, no_redirect) = ports_of(doc, ifindex, t);
        World {
            fleet: None,
            ports,
            vpc_cidrs,
            tables,
            peerings,
            acls: acls(doc),
            groups: groups(doc),
            members,
            no_redirect,
        }
    }

    /// Longest prefix match; IPv4 and IPv6 routes never cover each other's addresses.
    fn route(&self, table: &str, a: IpAddr) -> Option<&Target> {
        self.tables[table]
            .iter()
            .filter(|(n, _)| n.contains(&a))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, t)| t)
    }

    fn inside(&self, vpc: &str, a: IpAddr) -> bool {
        self.vpc_cidrs[vpc].iter().any(|c| c.contains(&a))
    }

    /// The instance of VPC `vpc` at address `a` (ports of this host).
    fn endpoint(&self, vpc: &str, a: IpAddr) -> Option<&Port> {
        self.ports.values().find(|p| {
            p.vpc == vpc && (p.ipv4.map(IpAddr::V4) == Some(a) || p.ipv6.map(IpAddr::V6) == Some(a))
        })
    }
}

// ---------------------------------------------------------------------------------------
// parsing

#[derive(Debug, Clone)]
struct Parsed {
    vlan: bool,
    l3: usize,
    v4: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ttl: u8,
    fragment: bool,
    options: bool,
    /// TCP/UDP (source, destination) ports; ICMP (identifier, type << 8 | code).
    ports: Option<(u16, u16)>,
    tcp_flags: u8,
}

type ParseResult = Result<Option<Parsed>, DropReason>;

fn parse(f: &[u8]) -> ParseResult {
    let eth = Ethernet2HeaderSlice::from_slice(f).map_err(|_| DropReason::ParseError)?;
    let mut ethertype = eth.ether_type().0;
    let mut l3 = 14;
    let mut vlan = false;
    if ethertype == 0x88a8 {
        return Err(DropReason::UnsupportedEncap);
    }
    if ethertype == 0x8100 {
        let tag =
            SingleVlanHeaderSlice::from_slice(&f[14..]).map_err(|_| DropReason::ParseError)?;
        ethertype = tag.ether_type().0;
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
    let h = Ipv4HeaderSlice::from_slice(f.get(l3..).unwrap_or_default())
        .map_err(|_| DropReason::ParseError)?;
    let ihl = h.ihl() as usize * 4;
    let total = h.total_len() as usize;
    if total < ihl || l3 + total > f.len() {
        return Err(DropReason::ParseError);
    }
    let offset = h.fragments_offset().value();
    let mut p = Parsed {
        vlan,
        l3,
        v4: true,
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
        proto: h.protocol().0,
        ttl: h.ttl(),
        fragment: h.more_fragments() || offset != 0,
        options: ihl > 20,
        ports: None,
        tcp_flags: 0,
    };
    if offset == 0 {
        transport(&f[..l3 + total], l3 + ihl, &mut p)?;
    }
    Ok(p)
}

fn parse_v6(f: &[u8], l3: usize, vlan: bool) -> Result<Parsed, DropReason> {
    let h = Ipv6HeaderSlice::from_slice(f.get(l3..).unwrap_or_default())
        .map_err(|_| DropReason::ParseError)?;
    let end = l3 + 40 + h.payload_length() as usize;
    if end > f.len() {
        return Err(DropReason::ParseError);
    }
    let mut p = Parsed {
        vlan,
        l3,
        v4: false,
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        proto: h.next_header().0,
        ttl: h.hop_limit(),
        fragment: false,
        options: false,
        ports: None,
        tcp_flags: 0,
    };
    // Extension headers: at most four are walked (hop-by-hop, routing, fragment,
    // authentication, destination options); a fifth is a parse error.
    let byte = |i: usize| f.get(i).copied().ok_or(DropReason::ParseError);
    let is_ext = |n: u8| matches!(n, 0 | 43 | 44 | 51 | 60);
    let mut off = l3 + 40;
    let mut walked = 0;
    while is_ext(p.proto) {
        if walked == 4 {
            return Err(DropReason::ParseError);
        }
        walked += 1;
        let next = byte(off)?;
        let len = byte(off + 1)? as usize;
        match p.proto {
            44 => {
                // The fragment header's bytes 2-3 must be there too.
                let offset = u16::from_be_bytes([byte(off + 2)?, byte(off + 3)?]) >> 3;
                p.fragment = true;
                p.proto = next;
                off += 8;
                if off > end {
                    return Err(DropReason::ParseError);
                }
                if offset != 0 {
                    // A later fragment: the rest is payload, never headers.
                    return Ok(p);
                }
                continue;
            }
            51 => off += (len + 2) * 4,
            _ => off += (len + 1) * 8,
        }
        p.proto = next;
        if off > end {
            return Err(DropReason::ParseError);
        }
    }
    transport(&f[..end], off, &mut p)?;
    Ok(p)
}

/// Ports of the transport header at `off` of `ip` (the frame up to the IP packet's end).
fn transport(ip: &[u8], off: usize, p: &mut Parsed) -> Result<(), DropReason> {
    // A transport header that starts past 2 KiB into the frame is not looked for.
    if off > 2048 {
        return Err(DropReason::ParseError);
    }
    let need = match p.proto {
        TCP => 20,
        UDP | ICMP | ICMPV6 => 8,
        _ => return Ok(()),
    };
    if off + need > ip.len() {
        return Err(DropReason::ParseError);
    }
    let t = &ip[off..];
    let be = |i: usize| u16::from_be_bytes([t[i], t[i + 1]]);
    match p.proto {
        TCP => {
            if t[12] >> 4 < 5 {
                return Err(DropReason::ParseError);
            }
            p.ports = Some((be(0), be(2)));
            p.tcp_flags = t[13];
        }
        UDP => p.ports = Some((be(0), be(2))),
        _ => p.ports = Some((be(4), be(0))),
    }
    Ok(())
}

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
                || a.to_ipv4_mapped().is_some()
        }
    }
}

// ---------------------------------------------------------------------------------------
// state: conntrack and cap buckets

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FlowKey {
    src_vpc: String,
    src: IpAddr,
    sport: u16,
    dst_vpc: String,
    dst: IpAddr,
    dport: u16,
    proto: u8,
}

impl FlowKey {
    fn reversed(&self) -> FlowKey {
        FlowKey {
            src_vpc: self.dst_vpc.clone(),
            src: self.dst,
            sport: self.dport,
            dst_vpc: self.src_vpc.clone(),
            dst: self.src,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

#[derive(Debug, Clone)]
struct Flow {
    last_seen: u64,
    replied: bool,
    fin: bool,
    rst: bool,
}

impl Flow {
    /// Idle time after which the flow is forgotten (docs/datapath.md §4.12).
    fn timeout(&self, proto: u8) -> u64 {
        match proto {
            TCP if self.rst => 10 * SECOND,
            TCP if self.fin => 120 * SECOND,
            TCP if self.replied => 5 * 24 * 3600 * SECOND,
            TCP => 60 * SECOND,
            UDP => 30 * SECOND,
            _ => 600 * SECOND,
        }
    }

    fn alive(&self, proto: u8, now: u64) -> bool {
        now <= self.last_seen || now - self.last_seen <= self.timeout(proto)
    }
}

/// What one state of the data plane remembers between packets.
#[derive(Debug, Clone, Default)]
pub struct State {
    flows: BTreeMap<FlowKey, Flow>,
    /// In a fleet, each host's connection tracking (a host tracks what its own ports'
    /// groups let through, §7).
    host_flows: [BTreeMap<FlowKey, Flow>; 2],
    /// (peering, direction) -> the time at which the bucket is full again, ns.
    buckets: BTreeMap<(String, u32), u64>,
}

impl State {
    /// A peering whose counters and buckets start afresh (a new slot in the program):
    /// its buckets are full again.
    pub fn refill(&mut self, pcx: &str) {
        self.buckets.retain(|(p, _), _| p != pcx);
    }
}

// ---------------------------------------------------------------------------------------
// outcomes and counters

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass(PassReason),
    Drop(DropReason),
    /// Forwarded out of the port with this ifindex.
    Redirect(u32),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The frame as it leaves (forwarded) or stays (passed, dropped).
    pub frame: Vec<u8>,
    /// The peering and direction the packet is counted under.
    pub peering: Option<(String, u32)>,
    /// (network ACL, egress, rule number) of every rule that decided.
    pub acl_hits: Vec<(String, bool, u32)>,
    pub fragment: bool,
    pub ipv4_options: bool,
    /// A dropped packet answered instead (ICMP too big, §7.4): the port the answer
    /// leaves by; `frame` is then the answer.
    pub answered: Option<u32>,
}

/// Every counter the program keeps, as the model expects them.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    pub global: GlobalCounters,
    pub peerings: BTreeMap<(String, u32), PeeringCounters>,
    pub acl_hits: BTreeMap<(String, bool, u32), u64>,
}

impl Counters {
    /// The counters once `new` is installed over `old` (docs/datapath.md §4.17): the
    /// global ones go on; a peering's go on while it stays installed, and a peering
    /// installed anew starts from zero; a network ACL's rule hits go on while its rules
    /// stay the same, and every rule of it starts from zero when they change.
    pub fn across(&self, old: &Document, new: &Document) -> Counters {
        let mut out = Counters {
            global: self.global,
            peerings: BTreeMap::new(),
            acl_hits: BTreeMap::new(),
        };
        for p in &new.peerings {
            let kept = old.peerings.iter().any(|o| o.id == p.id);
            for dir in [DIR_REQUESTER_TO_ACCEPTER, DIR_ACCEPTER_TO_REQUESTER] {
                let key = (p.id.clone(), dir);
                let v = match self.peerings.get(&key) {
                    Some(v) if kept => *v,
                    _ => PeeringCounters::ZERO,
                };
                out.peerings.insert(key, v);
            }
        }
        for acl in &new.network_acls {
            let same = old.network_acls.iter().any(|o| o == acl);
            for r in &acl.rules {
                let key = (acl.id.clone(), r.direction == "egress", r.number);
                let v = if same {
                    self.acl_hits.get(&key).copied().unwrap_or(0)
                } else {
                    0
                };
                out.acl_hits.insert(key, v);
            }
        }
        out
    }

    /// Adds what `o` counts for a frame of `len` bytes.
    pub fn add(&mut self, o: &Outcome, len: u64) {
        let g = &mut self.global;
        g.rx_packets += 1;
        g.rx_bytes += len;
        g.fragments += o.fragment as u64;
        g.ipv4_options += o.ipv4_options as u64;
        match o.verdict {
            Verdict::Pass(r) => {
                g.passed_packets += 1;
                g.pass[r as usize] += 1;
            }
            Verdict::Drop(r) => {
                g.dropped_packets += 1;
                g.drop[r as usize] += 1;
                if let Some(k) = &o.peering {
                    self.peerings
                        .entry(k.clone())
                        .or_insert(PeeringCounters::ZERO)
                        .drop[r as usize] += 1;
                }
            }
            Verdict::Redirect(_) => {
                g.redirected_packets += 1;
                g.redirected_bytes += len;
                let k = o
                    .peering
                    .clone()
                    .expect("a forwarded packet crossed a peering");
                let c = self.peerings.entry(k).or_insert(PeeringCounters::ZERO);
                c.packets += 1;
                c.bytes += len;
            }
        }
        for h in &o.acl_hits {
            *self.acl_hits.entry(h.clone()).or_default() += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------
// the pipeline

impl World {
    /// Runs one frame received on `ingress` at time `now` (ns).
    pub fn run(&self, state: &mut State, ingress: u32, frame: &[u8], now: u64) -> Outcome {
        let mut out = Outcome {
            verdict: Verdict::Pass(PassReason::UnknownPort),
            frame: frame.to_vec(),
            peering: None,
            acl_hits: Vec::new(),
            fragment: false,
            ipv4_options: false,
            answered: None,
        };
        out.verdict = self.decide(state, ingress, frame, now, &mut out);
        out
    }

    fn decide(
        &self,
        state: &mut State,
        ingress: u32,
        frame: &[u8],
        now: u64,
        out: &mut Outcome,
    ) -> Verdict {
        use DropReason::*;
        let Some(port) = self.ports.get(&ingress) else {
            return Verdict::Pass(PassReason::UnknownPort);
        };
        let p = match parse(frame) {
            Err(r) => return Verdict::Drop(r),
            Ok(None) => return Verdict::Pass(PassReason::NotIp),
            Ok(Some(p)) => p,
        };
        out.fragment = p.fragment;
        out.ipv4_options = p.options;
        if not_routable(&p) {
            return Verdict::Pass(PassReason::NotRoutable);
        }
        let pcx = match self.route(&port.route_table, p.dst) {
            None => return Verdict::Drop(NoRoute),
            Some(Target::Local) => return Verdict::Pass(PassReason::LocalRoute),
            Some(Target::Blackhole) => return Verdict::Drop(Blackhole),
            Some(Target::Peering(pcx)) => pcx.clone(),
        };
        let Some(peering) = self.peerings.get(&pcx) else {
            return Verdict::Drop(PeeringInactive);
        };
        let (dir, peer_vpc) = if peering.requester == port.vpc {
            (DIR_REQUESTER_TO_ACCEPTER, &peering.accepter)
        } else if peering.accepter == port.vpc {
            (DIR_ACCEPTER_TO_REQUESTER, &peering.requester)
        } else {
            return Verdict::Drop(PeeringMismatch);
        };
        out.peering = Some((pcx.clone(), dir));
        if !peering.active {
            return Verdict::Drop(PeeringInactive);
        }
        // No transit: the source must belong to the sender's VPC.
        let originated = match p.src {
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => false,
            src => self.inside(&port.vpc, src),
        };
        if !originated {
            return Verdict::Drop(Transitive);
        }
        if !self.nacl(port.acl.as_deref(), true, p.dst, &p, out) {
            return Verdict::Drop(NaclDeny);
        }
        let Some(receiver) = self.endpoint(peer_vpc, p.dst) else {
            return Verdict::Drop(if self.inside(peer_vpc, p.dst) {
                NoEndpoint
            } else {
                OutsidePeer
            });
        };
        if let Some(f) = &self.fleet {
            if f.host_of.get(&ingress) != f.host_of.get(&receiver.ifindex) {
                let to = f.host_of[&receiver.ifindex];
                return self.across_hosts(
                    state,
                    port,
                    receiver,
                    (&pcx, dir),
                    &p,
                    frame,
                    now,
                    out,
                    (ingress, f.reachable[1 - to], f.mtu[1 - to]),
                    (1 - to, to),
                );
            }
        }
        match self.route(&receiver.route_table, p.src) {
            Some(Target::Peering(back)) if *back == pcx => {}
            _ => return Verdict::Drop(NoReturnRoute),
        }
        if !self.nacl(receiver.acl.as_deref(), false, p.src, &p, out) {
            return Verdict::Drop(NaclDeny);
        }
        let groups = (port.groups.as_deref(), receiver.groups.as_deref());
        if !self.security_groups(&mut state.flows, port, groups, peer_vpc, &p, now) {
            return Verdict::Drop(SgDeny);
        }
        if p.ttl <= 1 {
            return Verdict::Drop(TtlExceeded);
        }
        if self.no_redirect.contains(&receiver.ifindex) {
            return Verdict::Drop(RedirectFailed);
        }
        if let Some((bps, burst)) = peering.caps[dir as usize] {
            let tat = state.buckets.entry((pcx.clone(), dir)).or_insert(0);
            if !police(bps, burst, tat, frame.len() as u64, now) {
                return Verdict::Drop(RateLimited);
            }
        }
        out.frame = forwarded(frame, &p, receiver);
        Verdict::Redirect(receiver.ifindex)
    }

    /// The rest of the pipeline when the receiver is on the other host (§7.2, §7.3): the
    /// sender's security groups on its host (tracked there), the sending host's underlay
    /// and cap, then the receiving host: the source must be an instance of the sender's
    /// VPC (§7.3 step 4), then the receiver's checks, its groups tracked on its host.
    #[allow(clippy::too_many_arguments)]
    fn across_hosts(
        &self,
        state: &mut State,
        port: &Port,
        receiver: &Port,
        (pcx, dir): (&str, u32),
        p: &Parsed,
        frame: &[u8],
        now: u64,
        out: &mut Outcome,
        (ingress, underlay_resolves, mtu): (u32, bool, u32),
        (from, to): (usize, usize),
    ) -> Verdict {
        use DropReason::*;
        // The sender's groups, on the sender's host (the receiver's are its host's).
        let peer_vpc = receiver.vpc.as_str();
        let mine = (port.groups.as_deref(), None);
        if !self.security_groups(&mut state.host_flows[from], port, mine, peer_vpc, p, now) {
            return Verdict::Drop(SgDeny);
        }
        // Too big once encapsulated: answered with ICMP (if there is enough to quote),
        // back out of the port it came by.
        if frame.len() - p.l3 + UNDERLAY_OVERHEAD > mtu as usize {
            if frame.len() < p.l3 + ICMP_QUOTE {
                return Verdict::Drop(MtuExceeded);
            }
            // Written into the frame before the way back is looked up.
            out.frame = too_big_answer(frame, p, mtu);
            if self.no_redirect.contains(&ingress) {
                return Verdict::Drop(RedirectFailed);
            }
            out.answered = Some(ingress);
            return Verdict::Drop(MtuExceeded);
        }
        if !underlay_resolves {
            return Verdict::Drop(UnderlayUnreachable);
        }
        let peering = &self.peerings[pcx];
        if let Some((bps, burst)) = peering.caps[dir as usize] {
            let tat = state.buckets.entry((pcx.to_string(), dir)).or_insert(0);
            if !police(bps, burst, tat, frame.len() as u64, now) {
                return Verdict::Drop(RateLimited);
            }
        }
        if self.fleet.as_ref().is_some_and(|f| f.cut) {
            // Sent; what the other host makes of it is the caller's to say.
            return Verdict::Redirect(receiver.ifindex);
        }
        if self.endpoint(&port.vpc, p.src).is_none() {
            return Verdict::Drop(SpoofedSource);
        }
        match self.route(&receiver.route_table, p.src) {
            Some(Target::Peering(back)) if back == pcx => {}
            _ => return Verdict::Drop(NoReturnRoute),
        }
        if !self.nacl(receiver.acl.as_deref(), false, p.src, p, out) {
            return Verdict::Drop(NaclDeny);
        }
        let theirs = (None, receiver.groups.as_deref());
        if !self.security_groups(&mut state.host_flows[to], port, theirs, peer_vpc, p, now) {
            return Verdict::Drop(SgDeny);
        }
        if p.ttl <= 1 {
            return Verdict::Drop(TtlExceeded);
        }
        if self.no_redirect.contains(&receiver.ifindex) {
            return Verdict::Drop(RedirectFailed);
        }
        out.frame = forwarded(frame, p, receiver);
        Verdict::Redirect(receiver.ifindex)
    }

    /// Network ACL `acl` (none: no filtering) in one direction, on `addr` (the destination
    /// going out, the source coming in): the lowest-numbered matching rule decides, and
    /// no matching rule denies.
    fn nacl(
        &self,
        acl: Option<&str>,
        egress: bool,
        addr: IpAddr,
        p: &Parsed,
        out: &mut Outcome,
    ) -> bool {
        let Some(id) = acl else {
            return true;
        };
        let hit = self.acls[id]
            .iter()
            .filter(|r| r.egress == egress)
            .find(|r| rule_matches(r.protocol, r.ports, &r.cidr, addr, p));
        match hit {
            Some(r) => {
                out.acl_hits.push((id.to_string(), egress, r.number));
                r.allow
            }
            None => false,
        }
    }

    /// Whether some rule of `groups` (none: not filtered) in one direction matches.
    fn groups_allow(
        &self,
        groups: Option<&[String]>,
        egress: bool,
        addr: IpAddr,
        p: &Parsed,
    ) -> bool {
        let Some(groups) = groups else {
            return true;
        };
        groups.iter().any(|g| {
            self.groups[g]
                .iter()
                .filter(|r| r.egress == egress)
                .any(|r| {
                    let remote: Vec<IpNet> = match (&r.cidr, &r.group) {
                        (Some(c), _) => vec![*c],
                        (None, Some(peer)) => self
                            .members
                            .get(peer)
                            .map(|m| m.iter().map(|a| IpNet::from(*a)).collect())
                            .unwrap_or_default(),
                        (None, None) => vec![],
                    };
                    remote
                        .iter()
                        .any(|c| rule_matches(r.protocol, r.ports, c, addr, p))
                })
        })
    }

    /// Security groups of both ports, stateful (docs/datapath.md §4.12).
    /// `groups`: the sender's and the receiver's, as far as the host checking them has
    /// them (across hosts, each host checks its own port's); `flows`: that host's tracking.
    fn security_groups(
        &self,
        flows: &mut BTreeMap<FlowKey, Flow>,
        sender: &Port,
        (sender_groups, receiver_groups): (Option<&[String]>, Option<&[String]>),
        peer_vpc: &str,
        p: &Parsed,
        now: u64,
    ) -> bool {
        if sender_groups.is_none() && receiver_groups.is_none() {
            return true;
        }
        // What identifies the packet's flow, and whether it may open one.
        let tracked: Option<(u16, u16, bool)> = match (p.proto, p.ports) {
            (TCP | UDP, Some((s, d))) => Some((s, d, true)),
            (TCP | UDP, None) => None,
            (ICMP | ICMPV6, Some((id, ty_code))) => {
                let ty = (ty_code >> 8) as u8;
                let (request, reply) = if p.proto == ICMP { (8, 0) } else { (128, 129) };
                if ty == request {
                    Some((id, 0, true))
                } else if ty == reply {
                    Some((0, id, false))
                } else {
                    None
                }
            }
            (ICMP | ICMPV6, None) => None,
            _ => Some((0, 0, true)),
        };
        let key = tracked.map(|(sport, dport, opens)| {
            let key = FlowKey {
                src_vpc: sender.vpc.clone(),
                src: p.src,
                sport,
                dst_vpc: peer_vpc.to_string(),
                dst: p.dst,
                dport,
                proto: p.proto,
            };
            (key, opens)
        });
        // The TCP FIN and RST this packet carries.
        let is_tcp = p.proto == TCP;
        let (fin, rst) = (
            is_tcp && p.tcp_flags & 0x01 != 0,
            is_tcp && p.tcp_flags & 0x04 != 0,
        );
        if let Some((key, _)) = &key {
            if let Some(f) = flows.get_mut(key).filter(|f| f.alive(p.proto, now)) {
                f.last_seen = now;
                // A fresh SYN on a closed connection's tuple starts it over.
                if is_tcp && p.tcp_flags & 0x12 == 0x02 && (f.fin || f.rst) {
                    f.replied = false;
                    f.fin = false;
                    f.rst = false;
                }
                f.fin |= fin;
                f.rst |= rst;
                return true;
            }
            if let Some(f) = flows
                .get_mut(&key.reversed())
                .filter(|f| f.alive(p.proto, now))
            {
                f.last_seen = now;
                f.replied = true;
                f.fin |= fin;
                f.rst |= rst;
                return true;
            }
        }
        let allowed = self.groups_allow(sender_groups, true, p.dst, p)
            && self.groups_allow(receiver_groups, false, p.src, p);
        if !allowed {
            return false;
        }
        if let Some((key, true)) = key {
            let flow = Flow {
                last_seen: now,
                replied: false,
                fin,
                rst,
            };
            flows.insert(key, flow);
        }
        true
    }
}

/// One rule's match: protocol (any, or equal), destination port range (TCP and UDP rules
/// only; a packet without a known port never matches a rule with a range), and the
/// address inside the CIDR (of the same family).
fn rule_matches(
    protocol: Option<u8>,
    ports: Option<(u16, u16)>,
    cidr: &IpNet,
    addr: IpAddr,
    p: &Parsed,
) -> bool {
    if protocol.is_some_and(|n| n != p.proto) {
        return false;
    }
    if let (Some((lo, hi)), Some(TCP | UDP)) = (ports, protocol) {
        let port = match p.ports {
            Some((_, d)) if p.proto == TCP || p.proto == UDP => d,
            _ => return false,
        };
        if port < lo || port > hi {
            return false;
        }
    }
    cidr.contains(&addr)
}

/// The cap of one direction as a token bucket (docs/datapath.md §4.15): a byte
/// costs `floor(8e12 / bps)` ps of link time, a frame its bytes' cost rounded up to whole
/// ns, and the bucket holds `burst` bytes' worth. A frame passes if, once paid for, the
/// bucket's debt stays within its depth; a frame that is dropped pays nothing.
fn police(bps: u64, burst: u64, tat: &mut u64, len: u64, now: u64) -> bool {
    let ps_per_byte = (8_000_000_000_000 / bps.max(1)).max(1);
    let depth_ns = burst.saturating_mul(ps_per_byte) / 1000;
    let cost = (len * ps_per_byte).div_ceil(1000);
    let paid = (*tat).max(now) + cost;
    if paid - now > depth_ns {
        return false;
    }
    *tat = paid;
    true
}

/// The forwarded frame: TTL or hop limit down by one (the IPv4 header checksum adjusted
/// for that one change, RFC 1624: a wrong checksum stays exactly as wrong), destination
/// MAC the receiving instance's, source MAC its gateway's, VLAN tag removed.
fn forwarded(frame: &[u8], p: &Parsed, receiver: &Port) -> Vec<u8> {
    let mut f = frame.to_vec();
    if p.v4 {
        let ttl = p.l3 + 8;
        let old = u16::from_be_bytes([f[ttl], f[ttl + 1]]);
        f[ttl] -= 1;
        let new = u16::from_be_bytes([f[ttl], f[ttl + 1]]);
        let check = u16::from_be_bytes([f[p.l3 + 10], f[p.l3 + 11]]);
        let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        f[p.l3 + 10..p.l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        f[p.l3 + 7] -= 1;
    }
    if p.vlan {
        f.drain(12..16);
    }
    f[..6].copy_from_slice(&receiver.mac);
    f[6..12].copy_from_slice(&receiver.gateway_mac);
    f
}

/// Each VPC's CIDRs (both families) and region.
fn vpcs(doc: &Document) -> (BTreeMap<String, Vec<IpNet>>, BTreeMap<String, String>) {
    let mut vpc_cidrs = BTreeMap::new();
    let mut region = BTreeMap::new();
    for v in &doc.vpcs {
        let mut c: Vec<IpNet> = v.cidrs.iter().map(|s| net(s)).collect();
        c.extend(v.ipv6_cidr.as_deref().map(net));
        vpc_cidrs.insert(v.id.clone(), c);
        region.insert(v.id.clone(), v.region.clone());
    }
    (vpc_cidrs, region)
}

/// Route tables: the listed routes and the VPC's own CIDRs, which are always local; then
/// the tampered routes.
fn tables(
    doc: &Document,
    vpc_cidrs: &BTreeMap<String, Vec<IpNet>>,
    t: &Tampering,
) -> BTreeMap<String, BTreeMap<IpNet, Target>> {
    let mut tables = BTreeMap::new();
    for rt in &doc.route_tables {
        let mut routes: BTreeMap<IpNet, Target> = rt
            .routes
            .iter()
            .map(|r| {
                let target = match r.target.as_str() {
                    "local" => Target::Local,
                    "blackhole" => Target::Blackhole,
                    pcx => Target::Peering(pcx.to_string()),
                };
                (net(&r.destination), target)
            })
            .collect();
        for c in &vpc_cidrs[&rt.vpc] {
            routes.insert(*c, Target::Local);
        }
        tables.insert(rt.id.clone(), routes);
    }
    for (table, dest, pcx) in &t.routes {
        tables
            .get_mut(table)
            .expect("a tampered table exists")
            .insert(*dest, Target::Peering(pcx.clone()));
    }
    tables
}

/// Peerings with their caps per direction (cross-region ones capped by default).
fn peerings(doc: &Document, region: &BTreeMap<String, String>) -> BTreeMap<String, Peering> {
    let mut peerings = BTreeMap::new();
    for p in &doc.peerings {
        let cross_region = region[&p.requester_vpc] != region[&p.accepter_vpc];
        let cap = |mbps: Option<u64>| -> Option<(u64, u64)> {
            let bps = match mbps {
                Some(m) => m * 1_000_000,
                None if cross_region => 1_000_000_000,
                None => return None,
            };
            // Default bucket: 10 ms at the rate, and never under 64 KiB.
            let burst = p.burst_bytes.unwrap_or((bps / 8 / 100).max(65536));
            Some((bps, burst))
        };
        let mut caps = [None; 2];
        caps[DIR_REQUESTER_TO_ACCEPTER as usize] =
            cap(p.bandwidth_mbps_requester_to_accepter.or(p.bandwidth_mbps));
        caps[DIR_ACCEPTER_TO_REQUESTER as usize] =
            cap(p.bandwidth_mbps_accepter_to_requester.or(p.bandwidth_mbps));
        peerings.insert(
            p.id.clone(),
            Peering {
                requester: p.requester_vpc.clone(),
                accepter: p.accepter_vpc.clone(),
                active: p.status.as_str() == "active",
                caps,
            },
        );
    }
    peerings
}

/// Network ACL rules by ACL, lowest number first.
fn acls(doc: &Document) -> BTreeMap<String, Vec<AclRule>> {
    doc.network_acls
        .iter()
        .map(|a| {
            let mut rules: Vec<AclRule> = a
                .rules
                .iter()
                .map(|r| AclRule {
                    number: r.number,
                    egress: r.direction == "egress",
                    protocol: protocol(&r.protocol),
                    ports: ports(r.port_from, r.port_to),
                    cidr: net(&r.cidr),
                    allow: r.action == "allow",
                })
                .collect();
            rules.sort_by_key(|r| r.number);
            (a.id.clone(), rules)
        })
        .collect()
}

/// Security group rules by group.
fn groups(doc: &Document) -> BTreeMap<String, Vec<SgRule>> {
    doc.security_groups
        .iter()
        .map(|g| {
            let rules = g
                .rules
                .iter()
                .map(|r| SgRule {
                    egress: r.direction == "egress",
                    protocol: protocol(&r.protocol),
                    ports: ports(r.port_from, r.port_to),
                    cidr: r.cidr.as_deref().map(net),
                    group: r.peer_security_group.clone(),
                })
                .collect();
            (g.id.clone(), rules)
        })
        .collect()
}

/// Ports by ifindex, each group's member addresses, and the ports whose redirect entry
/// is tampered away.
type Ports = (
    BTreeMap<u32, Port>,
    BTreeMap<String, Vec<IpAddr>>,
    BTreeSet<u32>,
);

fn ports_of(doc: &Document, ifindex: &BTreeMap<String, u32>, t: &Tampering) -> Ports {
    let router = doc
        .router_mac
        .as_deref()
        .map(mac)
        .expect("router_mac is set");
    let subnets: BTreeMap<&str, _> = doc.subnets.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut ports = BTreeMap::new();
    let mut members: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut no_redirect = BTreeSet::new();
    for p in &doc.ports {
        let subnet = subnets[p.subnet.as_str()];
        let ifx = ifindex[&p.interface];
        let port = Port {
            ifindex: ifx,
            vpc: subnet.vpc.clone(),
            route_table: subnet.route_table.clone(),
            acl: subnet.network_acl.clone(),
            mac: mac(&p.mac),
            gateway_mac: p.gateway_mac.as_deref().map(mac).unwrap_or(router),
            ipv4: p
                .ipv4
                .as_deref()
                .map(|a| a.parse().expect("an IPv4 address")),
            ipv6: p
                .ipv6
                .as_deref()
                .map(|a| a.parse().expect("an IPv6 address")),
            groups: p.security_groups.clone(),
        };
        for g in port.groups.iter().flatten() {
            let m = members.entry(g.clone()).or_default();
            m.extend(port.ipv4.map(IpAddr::V4));
            m.extend(port.ipv6.map(IpAddr::V6));
        }
        if t.no_redirect.contains(&p.interface) {
            no_redirect.insert(ifx);
        }
        ports.insert(ifx, port);
    }
    (ports, members, no_redirect)
}

// ---------------------------------------------------------------------------------------
// verdicts as the differential tests compare them

/// A verdict as text (`drop REASON`, `pass REASON`, `redirect to ifindex N`).
pub fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Pass(r) => format!("pass {}", r.as_str()),
        Verdict::Drop(r) => format!("drop {}", r.as_str()),
        Verdict::Redirect(i) => format!("redirect to ifindex {i}"),
    }
}

/// What the program's counters say one frame did (from the global counters' change).
pub fn program_verdict(before: &GlobalCounters, after: &GlobalCounters) -> Option<String> {
    for r in DropReason::ALL {
        if after.drop[r as usize] > before.drop[r as usize] {
            return Some(format!("drop {}", r.as_str()));
        }
    }
    for r in PassReason::ALL {
        if after.pass[r as usize] > before.pass[r as usize] {
            return Some(format!("pass {}", r.as_str()));
        }
    }
    (after.redirected_packets > before.redirected_packets).then(|| "redirect".to_string())
}

/// Bytes of the original packet an ICMP too-big answer quotes, from its IP header on.
pub const ICMP_QUOTE: usize = 128;

/// The answer to `frame`, too big for an underlay of `underlay_mtu` once encapsulated
/// (docs/datapath.md §7.4): the MACs swapped (a VLAN tag kept), an IP header from the
/// original destination back to its source, ICMP "fragmentation needed" (IPv4) or ICMPv6
/// "packet too big" naming the largest inner packet the underlay carries (IPv6: at least
/// 1280), and the first 128 bytes of the original IP packet.
fn too_big_answer(frame: &[u8], p: &Parsed, underlay_mtu: u32) -> Vec<u8> {
    let inner_mtu = underlay_mtu.saturating_sub(UNDERLAY_OVERHEAD as u32);
    let mut out = frame[..p.l3].to_vec();
    out[..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[..6]);
    let quote = &frame[p.l3..p.l3 + ICMP_QUOTE];
    match (p.src, p.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((28 + ICMP_QUOTE) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(&src.octets());
            let c = peer_dataplane_common::checksum::ipv4_header(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut icmp = vec![3, 4, 0, 0, 0, 0];
            icmp.extend_from_slice(&(inner_mtu as u16).to_be_bytes());
            icmp.extend_from_slice(quote);
            let c = internet_checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            out.extend(ip);
            out.extend(icmp);
        }
        (src, dst) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let (src, dst) = (v6(src), v6(dst));
            let payload = (8 + ICMP_QUOTE) as u16;
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&payload.to_be_bytes());
            ip.extend_from_slice(&[58, 64]);
            ip.extend_from_slice(&dst);
            ip.extend_from_slice(&src);
            let mut icmp = vec![2, 0, 0, 0];
            icmp.extend_from_slice(&inner_mtu.max(1280).to_be_bytes());
            icmp.extend_from_slice(quote);
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&dst);
            pseudo.extend_from_slice(&src);
            pseudo.extend_from_slice(&(payload as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&icmp);
            let c = internet_checksum(&pseudo);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            out.extend(ip);
            out.extend(icmp);
        }
    }
    out
}

/// The ones'-complement sum of `b` as 16-bit big-endian words, complemented.
fn internet_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
