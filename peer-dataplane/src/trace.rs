//! `peer-dataplane trace`: what the loaded program decides for a described packet, stage
//! by stage (in the spirit of `ovn-trace`). The packet is built here and run once through
//! the pinned `pdp_trace` program with BPF_PROG_RUN, on the live maps; that program is the
//! pipeline with its side effects off, and it leaves what each stage saw in this CPU's
//! trace record (see `peer_dataplane_common::trace`). Nothing is counted, no flow is
//! tracked and no cap tokens are spent, so tracing on a production host is safe.

use crate::conntrack::ip;
use crate::inspect::Names;
use crate::kernel::{self, KernelMaps};
use crate::maps::MapState;
use crate::progrun;
use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::{IpNumber, Ipv4Header, Ipv6Header, PacketBuilder, SlicedPacket};
use peer_dataplane_common::{
    acl::{acl_set_id, bit_set, NO_ACL, NO_HITS},
    addr, route_table_id,
    trace::*,
    DropReason, NameKey, PassReason, Port, DIR_REQUESTER_TO_ACCEPTER, NAME_ACL, NAME_ACL_RULE,
    NAME_PEERING, NAME_PORT, NAME_ROUTE_TABLE, NAME_VPC, PCX_ACTIVE, ROUTE_BLACKHOLE, ROUTE_LOCAL,
    ROUTE_PCX, ROUTE_TABLE_BITS,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;

/// The packet to trace, as an operator describes it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Ingress port: interface name or ifindex; `None`: the port whose address is `src`.
    pub port: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub ttl: u8,
    /// Pad the frame to this many bytes (the cap charges by length).
    pub length: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp(TcpFlags),
    Udp,
    EchoRequest,
    EchoReply,
    Other(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpFlags {
    Syn,
    SynAck,
    Ack,
    Fin,
    Rst,
}

impl Protocol {
    /// `tcp`, `tcp-syn`, `tcp-synack`, `tcp-ack`, `tcp-fin`, `tcp-rst`, `udp`, `icmp`
    /// (echo request), `icmp-reply`, or an IP protocol number.
    pub fn parse(s: &str) -> Result<Protocol> {
        Ok(match s {
            "tcp" | "tcp-syn" => Protocol::Tcp(TcpFlags::Syn),
            "tcp-synack" => Protocol::Tcp(TcpFlags::SynAck),
            "tcp-ack" => Protocol::Tcp(TcpFlags::Ack),
            "tcp-fin" => Protocol::Tcp(TcpFlags::Fin),
            "tcp-rst" => Protocol::Tcp(TcpFlags::Rst),
            "udp" => Protocol::Udp,
            "icmp" | "icmpv6" | "echo" => Protocol::EchoRequest,
            "icmp-reply" | "echo-reply" => Protocol::EchoReply,
            n => match n.parse::<u8>() {
                Ok(6) => Protocol::Tcp(TcpFlags::Syn),
                Ok(17) => Protocol::Udp,
                Ok(p) => Protocol::Other(p),
                Err(_) => bail!(
                    "unknown protocol {n:?}: use tcp[-syn|-synack|-ack|-fin|-rst], udp, icmp, icmp-reply or a protocol number"
                ),
            },
        })
    }

    fn name(&self) -> String {
        match self {
            Protocol::Tcp(f) => format!("tcp {}", tcp_flags_name(*f)),
            Protocol::Udp => "udp".into(),
            Protocol::EchoRequest => "icmp echo-request".into(),
            Protocol::EchoReply => "icmp echo-reply".into(),
            Protocol::Other(p) => format!("protocol {p}"),
        }
    }
}

fn tcp_flags_name(f: TcpFlags) -> &'static str {
    match f {
        TcpFlags::Syn => "SYN",
        TcpFlags::SynAck => "SYN+ACK",
        TcpFlags::Ack => "ACK",
        TcpFlags::Fin => "FIN+ACK",
        TcpFlags::Rst => "RST",
    }
}

/// A trace: the packet, each stage it reached, and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Trace {
    pub packet: Value,
    pub stages: Vec<Stage>,
    /// `forward`, `drop` or `pass` (to the kernel's own stack).
    pub verdict: &'static str,
    /// The drop or pass reason, as the counters name it.
    pub reason: Option<&'static str>,
    /// The XDP action the data plane returns for it.
    pub action: &'static str,
    /// Where a forwarded packet leaves.
    pub egress_port: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub stage: &'static str,
    /// `ok`, or the verdict of the stage that decided the packet (`drop`, `pass`).
    pub result: &'static str,
    pub detail: String,
    /// What the stage found, for scripts (names resolved).
    pub facts: Value,
}

/// Traces `req` through the data plane pinned under `pin_dir`.
pub fn trace(pin_dir: &Path, req: &Request) -> Result<Trace> {
    let maps = KernelMaps::open(pin_dir)?;
    let state = maps.read_state()?;
    let ifindex = ingress_port(&state, req)?;
    let port = state.ports.get(&ifindex).copied();
    let frame = build_frame(req, port.as_ref())?;
    let prog = kernel::pinned_program(pin_dir, peer_dataplane_common::program_names::TRACE)?;
    let path = pin_dir.join(peer_dataplane_common::map_names::TRACE);
    let records: PerCpuArray<MapData, TraceRecord> = MapData::from_pin(&path)
        .map_err(|e| {
            anyhow!(
                "cannot open {} ({e}); restart the agent with this version",
                path.display()
            )
        })
        .and_then(|m| Ok(aya::maps::Map::PerCpuArray(m).try_into()?))?;

    // The record is per CPU: run on one known CPU and read that CPU's slot.
    let cpu = progrun::stay_on_this_cpu().context("keeping the trace on one CPU")?;
    let started = kernel::monotonic_ns();
    let ctx = progrun::xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let run = prog
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..Default::default()
        })
        .map_err(|e| anyhow!("BPF_PROG_RUN of the trace program on ifindex {ifindex}: {e} (the port's interface must exist in this network namespace)"))?;
    out.truncate(run.data_size_out as usize);
    let record = records
        .get(&0, 0)
        .context("reading the trace record")?
        .get(cpu)
        .copied()
        .ok_or_else(|| anyhow!("no trace record for CPU {cpu}"))?;
    ensure!(
        record.stamp_ns >= started,
        "the trace record of CPU {cpu} is stale (another trace ran at the same time?); try again"
    );
    ensure!(
        record.action == run.return_value,
        "the trace record says action {} but the program returned {}; try again",
        record.action,
        run.return_value
    );
    Ok(explain(&record, &state, req, &frame, &out))
}

/// The ingress ifindex: the named port, or the port whose instance address is `src`.
pub fn ingress_port(state: &MapState, req: &Request) -> Result<u32> {
    let name_of = |ifindex: u32| {
        state
            .names
            .get(&NameKey {
                kind: NAME_PORT,
                id: ifindex,
            })
            .map(|n| n.as_str().to_string())
    };
    match &req.port {
        Some(p) => {
            if let Some((ifindex, _)) = state
                .ports
                .iter()
                .find(|(i, _)| name_of(**i).as_deref() == Some(p.as_str()))
            {
                return Ok(*ifindex);
            }
            // An ifindex traces even a frame on an interface that is not a port.
            p.parse::<u32>().map_err(|_| {
                let mut known: Vec<String> =
                    state.ports.keys().filter_map(|i| name_of(*i)).collect();
                known.sort();
                anyhow!(
                    "port {p} is not installed (ports: {}); give a port name or an ifindex",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })
        }
        None => {
            let src = match req.src {
                IpAddr::V4(a) => addr::from_v4(a.octets()),
                IpAddr::V6(a) => a.octets(),
            };
            state
                .ports
                .iter()
                .find(|(_, p)| {
                    (p.flags & peer_dataplane_common::PORT_HAS_IPV4 != 0 && p.ipv4 == src)
                        || (p.flags & peer_dataplane_common::PORT_HAS_IPV6 != 0 && p.ipv6 == src)
                })
                .map(|(i, _)| *i)
                .ok_or_else(|| {
                    anyhow!(
                        "no port has the address {}; name the ingress port with --port",
                        req.src
                    )
                })
        }
    }
}

/// The frame an instance behind `port` would send: its MAC to the router's.
pub fn build_frame(req: &Request, port: Option<&Port>) -> Result<Vec<u8>> {
    let (smac, dmac) = match port {
        Some(p) => (p.mac, p.gw_mac),
        None => ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]),
    };
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let ip = match (req.src, req.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), req.ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), req.ttl),
        _ => bail!(
            "source {} and destination {} are of different families",
            req.src,
            req.dst
        ),
    };
    let ports = |what: &str| -> Result<(u16, u16)> {
        let dport = req
            .dport
            .ok_or_else(|| anyhow!("{what} needs a destination port (--dport)"))?;
        Ok((req.sport.unwrap_or(40000), dport))
    };
    let mut out = Vec::new();
    let payload: &[u8] = &[];
    match req.protocol {
        Protocol::Udp => {
            let (s, d) = ports("udp")?;
            ip.udp(s, d).write(&mut out, payload)?;
        }
        Protocol::Tcp(flags) => {
            let (s, d) = ports("tcp")?;
            let b = ip.tcp(s, d, 1000, 64240);
            let b = match flags {
                TcpFlags::Syn => b.syn(),
                TcpFlags::SynAck => b.syn().ack(1),
                TcpFlags::Ack => b.ack(1),
                TcpFlags::Fin => b.fin().ack(1),
                TcpFlags::Rst => b.rst(),
            };
            b.write(&mut out, payload)?;
        }
        Protocol::EchoRequest | Protocol::EchoReply => {
            ensure!(
                req.dport.is_none(),
                "icmp has no ports (--sport is the echo identifier)"
            );
            let id = req.sport.unwrap_or(1);
            let v4 = req.src.is_ipv4();
            match (req.protocol == Protocol::EchoRequest, v4) {
                (true, true) => ip.icmpv4_echo_request(id, 1).write(&mut out, payload)?,
                (false, true) => ip.icmpv4_echo_reply(id, 1).write(&mut out, payload)?,
                (true, false) => ip.icmpv6_echo_request(id, 1).write(&mut out, payload)?,
                (false, false) => ip.icmpv6_echo_reply(id, 1).write(&mut out, payload)?,
            }
        }
        Protocol::Other(p) => {
            ensure!(
                req.sport.is_none() && req.dport.is_none(),
                "protocol {p} has no ports"
            );
            // Ethernet and a bare IP header; the program reads nothing beyond it.
            out.extend_from_slice(&dmac);
            out.extend_from_slice(&smac);
            match (req.src, req.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&0x0800u16.to_be_bytes());
                    Ipv4Header::new(0, req.ttl, IpNumber(p), s.octets(), d.octets())
                        .map_err(|e| anyhow!("{e}"))?
                        .write(&mut out)?;
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    out.extend_from_slice(&0x86ddu16.to_be_bytes());
                    Ipv6Header {
                        payload_length: 0,
                        next_header: IpNumber(p),
                        hop_limit: req.ttl,
                        source: s.octets(),
                        destination: d.octets(),
                        ..Default::default()
                    }
                    .write(&mut out)?;
                }
                _ => unreachable!("families checked above"),
            }
        }
    }
    if let Some(len) = req.length {
        ensure!(
            len >= out.len(),
            "--length {len} is shorter than the headers ({} bytes)",
            out.len()
        );
        ensure!(
            len <= 9000,
            "--length {len} is longer than a jumbo frame (9000)"
        );
        if len > out.len() {
            pad(&mut out, len)?;
        }
    }
    Ok(out)
}

/// Grows the frame's payload to `len` bytes, fixing the IP lengths (and the IPv4
/// checksum) so that the frame stays well formed.
fn pad(frame: &mut Vec<u8>, len: usize) -> Result<()> {
    let extra = len - frame.len();
    frame.resize(len, 0);
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            let total = u16::from_be_bytes([frame[16], frame[17]]) as usize + extra;
            frame[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            frame[24..26].copy_from_slice(&[0, 0]);
            let ihl = (frame[14] & 0xf) as usize * 4;
            let sum = peer_dataplane_common::checksum::ipv4_header(&frame[14..14 + ihl]);
            frame[24..26].copy_from_slice(&sum.to_be_bytes());
        }
        _ => {
            let payload = u16::from_be_bytes([frame[18], frame[19]]) as usize + extra;
            frame[18..20].copy_from_slice(&(payload as u16).to_be_bytes());
        }
    }
    // The transport checksum no longer covers the padding; the data plane never checks it.
    Ok(())
}

/// The installed route of table key `table` that covers `a` with the longest prefix.
fn matched_route(state: &MapState, table: u32, a: &[u8; 16]) -> Option<String> {
    state
        .routes
        .keys()
        .filter(|k| u32::from_be_bytes(k.data.table_be) == table)
        .filter(|k| addr::mask(a, k.prefix_len - ROUTE_TABLE_BITS) == k.data.addr)
        .max_by_key(|k| k.prefix_len)
        .map(|k| crate::inspect::route_prefix(&k.data.addr, k.prefix_len))
}

fn route_target(state: &MapState, kind: u32, target: u32) -> String {
    match kind {
        ROUTE_PCX => Names(state).get(NAME_PEERING, target),
        ROUTE_LOCAL => "local".into(),
        ROUTE_BLACKHOLE => "blackhole".into(),
        _ => format!("kind {kind}"),
    }
}

/// One network ACL stage: which ACL, which rule decided and how.
fn acl_stage(state: &MapState, set: u32, decision: u32, direction: &str) -> (String, Value) {
    if decision == ACL_ABSENT || set == NO_ACL {
        return (
            format!(
                "the {} subnet has no network ACL",
                if direction == "egress" {
                    "sender's"
                } else {
                    "receiver's"
                }
            ),
            json!({"acl": null, "direction": direction, "rule": null, "action": "allow"}),
        );
    }
    let acl = Names(state).get(NAME_ACL, acl_set_id(set));
    match acl_rule_bit(decision) {
        None => (
            format!("{acl} {direction}: no rule matches (the implicit deny)"),
            json!({"acl": acl, "direction": direction, "rule": null, "action": "deny"}),
        ),
        Some(bit) => {
            let rule = state
                .acl_meta
                .get(&set)
                .filter(|m| m.hit_base != NO_HITS)
                .and_then(|m| {
                    debug_assert_eq!(bit_set(&m.allow, bit), acl_allows(decision));
                    Names(state)
                        .get(NAME_ACL_RULE, m.hit_base + bit)
                        .parse::<u32>()
                        .ok()
                });
            let action = if acl_allows(decision) {
                "allow"
            } else {
                "deny"
            };
            let rule_text = rule
                .map(|r| r.to_string())
                .unwrap_or_else(|| format!("bit {bit}"));
            (
                format!("{acl} {direction} rule {rule_text}: {action}"),
                json!({"acl": acl, "direction": direction, "rule": rule, "action": action}),
            )
        }
    }
}

fn sg_result(r: u32) -> &'static str {
    match r {
        SG_NO_GROUPS => "no groups",
        SG_MATCH => "a rule allows it",
        SG_NO_MATCH => "no rule allows it",
        _ => "not checked",
    }
}

fn sg_fact(r: u32) -> &'static str {
    match r {
        SG_NO_GROUPS => "no-groups",
        SG_MATCH => "allow",
        SG_NO_MATCH => "deny",
        _ => "not-checked",
    }
}

/// Turns a trace record into stages and a verdict, with names from `state`.
pub fn explain(
    r: &TraceRecord,
    state: &MapState,
    req: &Request,
    frame: &[u8],
    out: &[u8],
) -> Trace {
    let (verdict, reason) = match r.verdict {
        VERDICT_REDIRECT => ("forward", None),
        VERDICT_PASS => ("pass", PassReason::from_u32(r.reason).map(|p| p.as_str())),
        _ => ("drop", DropReason::from_u32(r.reason).map(|d| d.as_str())),
    };
    let deciding = if verdict == "forward" {
        0
    } else if r.reached == 0 {
        STAGE_PORT
    } else {
        1 << (31 - r.reached.leading_zeros())
    };
    let mut stages = Vec::new();
    let mut push = |bit: u32, stage: &'static str, detail: String, facts: Value| {
        let result = if bit == deciding { verdict } else { "ok" };
        stages.push(Stage {
            stage,
            result,
            detail,
            facts,
        });
    };
    let reached = |bit: u32| r.reached & bit != 0;
    let port_name = |ifindex: u32| Names(state).get(NAME_PORT, ifindex);

    if !reached(STAGE_PORT) {
        push(
            STAGE_PORT,
            "port",
            format!(
                "ifindex {} is not a port of this data plane: the frame goes to the kernel untouched",
                r.ingress_ifindex
            ),
            json!({"ifindex": r.ingress_ifindex, "interface": null}),
        );
    } else {
        let acl = Names(state).acl(r.port_acl);
        let sgs = Names(state).security_groups(r.port_sg);
        push(
            STAGE_PORT,
            "port",
            format!(
                "{} (ifindex {}): {}, route table {}, network ACL {}, security groups {}",
                port_name(r.ingress_ifindex),
                r.ingress_ifindex,
                Names(state).get(NAME_VPC, r.port_vpc),
                Names(state).get(NAME_ROUTE_TABLE, route_table_id(r.port_route_table)),
                acl.as_deref().unwrap_or("none"),
                sgs.as_deref().unwrap_or("none"),
            ),
            json!({
                "interface": port_name(r.ingress_ifindex),
                "ifindex": r.ingress_ifindex,
                "vpc": Names(state).get(NAME_VPC, r.port_vpc),
                "route_table": Names(state).get(NAME_ROUTE_TABLE, route_table_id(r.port_route_table)),
                "network_acl": acl,
                "security_groups": sgs,
            }),
        );
    }
    let (src, dst) = (ip(&r.src), ip(&r.dst));
    if reached(STAGE_PARSE) {
        let detail = match (verdict, deciding == STAGE_PARSE, reason) {
            (_, true, Some("not-ip")) => "not IPv4 or IPv6: passed to the kernel".to_string(),
            (_, true, Some(why)) => format!("{why}: the frame is not well formed"),
            _ => {
                let l4 = if r.ports_known != 0 && (r.proto == 6 || r.proto == 17) {
                    format!(" {src}:{} -> {dst}:{}", r.sport, r.dport)
                } else {
                    format!(" {src} -> {dst}")
                };
                let proto = match r.proto {
                    1 => "icmp".to_string(),
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    58 => "icmpv6".to_string(),
                    p => format!("protocol {p}"),
                };
                let mut d = format!(
                    "{} {proto}{l4}, ttl {}",
                    if r.is_v4 != 0 { "IPv4" } else { "IPv6" },
                    r.ttl
                );
                if deciding == STAGE_PARSE && reason == Some("not-routable") {
                    d.push_str(": the destination is not unicast here; passed to the kernel");
                }
                d
            }
        };
        push(
            STAGE_PARSE,
            "parse",
            detail,
            json!({"ipv4": r.is_v4 != 0, "protocol": r.proto, "src": src.to_string(), "dst": dst.to_string(), "ttl": r.ttl}),
        );
    }
    if reached(STAGE_ROUTE) {
        let table = Names(state).get(NAME_ROUTE_TABLE, route_table_id(r.port_route_table));
        let (detail, facts) = if r.route_kind == NO_ROUTE {
            (
                format!("no route to {dst} in {table}"),
                json!({"table": table, "destination": null, "target": null}),
            )
        } else {
            let prefix = matched_route(state, r.port_route_table, &r.dst);
            let target = route_target(state, r.route_kind, r.route_target);
            let mut d = format!(
                "{} -> {target} in {table}",
                prefix.as_deref().unwrap_or("?")
            );
            match r.route_kind {
                ROUTE_LOCAL => d.push_str(": inside the VPC, the kernel delivers it"),
                ROUTE_BLACKHOLE => d.push_str(": the route's peering is gone"),
                _ => {}
            }
            (
                d,
                json!({"table": table, "destination": prefix, "target": target}),
            )
        };
        push(STAGE_ROUTE, "route", detail, facts);
    }
    if reached(STAGE_PEERING) {
        let pcx = Names(state).get(NAME_PEERING, r.peering_slot);
        let status = peer_dataplane_common::pcx_status_str(r.peering_status);
        let (detail, facts) = if r.peering_status == NO_ROUTE {
            (
                format!("{pcx} is not installed (deleted): the route is a blackhole"),
                json!({"peering": pcx, "status": null}),
            )
        } else if r.peering_dir == NO_ROUTE {
            (
                format!(
                    "{pcx} does not join {}",
                    Names(state).get(NAME_VPC, r.port_vpc)
                ),
                json!({"peering": pcx, "status": status}),
            )
        } else {
            let dir = if r.peering_dir == DIR_REQUESTER_TO_ACCEPTER {
                "requester-to-accepter"
            } else {
                "accepter-to-requester"
            };
            let mut d = format!(
                "{pcx} ({status}): {} -> {}, {dir}",
                Names(state).get(NAME_VPC, r.port_vpc),
                Names(state).get(NAME_VPC, r.peer_vpc)
            );
            if r.peering_status != PCX_ACTIVE {
                d.push_str(": only an active peering carries traffic");
            }
            (
                d,
                json!({"peering": pcx, "status": status, "direction": dir, "peer_vpc": Names(state).get(NAME_VPC, r.peer_vpc)}),
            )
        };
        push(STAGE_PEERING, "peering", detail, facts);
    }
    if reached(STAGE_ORIGIN) {
        let vpc = Names(state).get(NAME_VPC, r.port_vpc);
        let detail = if deciding == STAGE_ORIGIN {
            format!("source {src} is neither the port's address nor inside {vpc}: transitive traffic is not forwarded")
        } else {
            format!("source {src} originated in {vpc}")
        };
        push(
            STAGE_ORIGIN,
            "origin",
            detail,
            json!({"src": src.to_string(), "vpc": vpc}),
        );
    }
    if reached(STAGE_EGRESS_ACL) {
        let (d, f) = acl_stage(state, r.egress_acl_set, r.egress_acl, "egress");
        push(STAGE_EGRESS_ACL, "egress-acl", d, f);
    }
    if reached(STAGE_ENDPOINT) {
        let peer = Names(state).get(NAME_VPC, r.peer_vpc);
        let (detail, facts) = if deciding == STAGE_ENDPOINT {
            let d = if reason == Some("outside-peer") {
                format!("{dst} is outside {peer}")
            } else {
                format!("no instance of {peer} has {dst} on this host")
            };
            (d, json!({"interface": null}))
        } else {
            (
                format!(
                    "{dst} is behind {} (ifindex {})",
                    port_name(r.ep_ifindex),
                    r.ep_ifindex
                ),
                json!({"interface": port_name(r.ep_ifindex), "ifindex": r.ep_ifindex}),
            )
        };
        push(STAGE_ENDPOINT, "endpoint", detail, facts);
    }
    if reached(STAGE_RETURN_ROUTE) {
        let table = Names(state).get(NAME_ROUTE_TABLE, route_table_id(r.ep_route_table));
        let pcx = Names(state).get(NAME_PEERING, r.peering_slot);
        let found = if r.return_kind == NO_ROUTE {
            "no route".to_string()
        } else {
            format!(
                "{} -> {}",
                matched_route(state, r.ep_route_table, &r.src)
                    .as_deref()
                    .unwrap_or("?"),
                route_target(state, r.return_kind, r.return_target)
            )
        };
        let detail = if deciding == STAGE_RETURN_ROUTE {
            format!("{table} has no route back to {src} over {pcx} (found: {found})")
        } else {
            format!("{table} routes {src} back over {pcx} ({found})")
        };
        push(
            STAGE_RETURN_ROUTE,
            "return-route",
            detail,
            json!({"table": table, "found": found}),
        );
    }
    if reached(STAGE_INGRESS_ACL) {
        let (d, f) = acl_stage(state, r.ingress_acl_set, r.ingress_acl, "ingress");
        push(STAGE_INGRESS_ACL, "ingress-acl", d, f);
    }
    if reached(STAGE_SECURITY_GROUPS) {
        let (sender, receiver) = (
            Names(state).security_groups(r.port_sg),
            Names(state).security_groups(r.ep_sg),
        );
        let ct = match r.sg_conntrack {
            CT_UNTRACKABLE => "not trackable",
            CT_NEW => "no tracked flow",
            CT_ORIGINAL => "tracked flow",
            CT_REPLY => "reply of a tracked flow",
            _ => "not consulted",
        };
        let detail = if r.sg_conntrack == CT_ORIGINAL || r.sg_conntrack == CT_REPLY {
            format!("conntrack: {ct}: the rules are skipped")
        } else if r.sg_egress == SG_NO_GROUPS && r.sg_ingress == SG_NO_GROUPS {
            "neither port has security groups".to_string()
        } else {
            let side = |who: &str, g: &Option<String>, res: u32| match g {
                None => format!("{who} has no groups"),
                Some(g) => format!("{who}'s groups {g}: {}", sg_result(res)),
            };
            format!(
                "conntrack: {ct}; {}; {}",
                side("sender", &sender, r.sg_egress),
                side("receiver", &receiver, r.sg_ingress),
            )
        };
        push(
            STAGE_SECURITY_GROUPS,
            "security-groups",
            detail,
            json!({
                "conntrack": ct,
                "sender_groups": sender,
                "sender": sg_fact(r.sg_egress),
                "receiver_groups": receiver,
                "receiver": sg_fact(r.sg_ingress),
            }),
        );
    }
    if reached(STAGE_TTL) {
        let detail = if deciding == STAGE_TTL {
            format!("ttl {} would expire here", r.ttl)
        } else {
            format!("ttl {}", r.ttl)
        };
        push(STAGE_TTL, "ttl", detail, json!({"ttl": r.ttl}));
    }
    if reached(STAGE_DELIVER) {
        let to = port_name(r.ep_ifindex);
        let detail = if deciding == STAGE_DELIVER {
            format!("{to} (ifindex {}) is not in the redirect map", r.ep_ifindex)
        } else {
            format!("redirect to {to}")
        };
        push(STAGE_DELIVER, "deliver", detail, json!({"interface": to}));
    }
    if reached(STAGE_CAP) {
        let cap = r.cap;
        let debt = r.cap_tat_ns.saturating_sub(r.stamp_ns);
        let credit_ns = cap.burst_ns.saturating_sub(debt);
        let credit_bytes = credit_ns.saturating_mul(1000) / cap.ps_per_byte.max(1);
        let bps = cap.bits_per_second();
        let detail = format!(
            "{} Mbit/s, burst {} bytes: {credit_bytes} bytes of credit, the frame needs {}: {}",
            bps as f64 / 1e6,
            cap.burst_bytes(),
            frame.len(),
            if r.cap_conforms != 0 {
                "conforms"
            } else {
                "over the cap"
            }
        );
        push(
            STAGE_CAP,
            "cap",
            detail,
            json!({"bits_per_second": bps, "burst_bytes": cap.burst_bytes(), "credit_bytes": credit_bytes, "frame_bytes": frame.len(), "conforms": r.cap_conforms != 0}),
        );
    } else if reached(STAGE_REWRITE) {
        push(
            STAGE_CAP,
            "cap",
            "this direction is not capped".into(),
            json!({"bits_per_second": null}),
        );
    }
    if reached(STAGE_REWRITE) {
        let detail = match SlicedPacket::from_ethernet(out) {
            Ok(p) => {
                let ttl = match &p.net {
                    Some(etherparse::NetSlice::Ipv4(h)) => h.header().ttl(),
                    Some(etherparse::NetSlice::Ipv6(h)) => h.header().hop_limit(),
                    _ => 0,
                };
                match &p.link {
                    Some(etherparse::LinkSlice::Ethernet2(e)) => format!(
                        "ttl {} -> {ttl}, {} -> {}",
                        r.ttl,
                        crate::validate::format_mac(&e.source()),
                        crate::validate::format_mac(&e.destination())
                    ),
                    _ => format!("ttl {} -> {ttl}", r.ttl),
                }
            }
            Err(e) => format!("output frame unreadable: {e}"),
        };
        push(
            STAGE_REWRITE,
            "rewrite",
            detail,
            json!({"frame_bytes": out.len()}),
        );
    }
    Trace {
        packet: json!({
            "ingress_ifindex": r.ingress_ifindex,
            "protocol": req.protocol.name(),
            "src": req.src.to_string(),
            "dst": req.dst.to_string(),
            "sport": req.sport,
            "dport": req.dport,
            "ttl": req.ttl,
            "frame_bytes": frame.len(),
        }),
        stages,
        verdict,
        reason,
        action: progrun::action_name(r.action),
        egress_port: (verdict == "forward").then(|| port_name(r.ep_ifindex)),
    }
}

/// The trace for people: one line per stage, then the verdict.
pub fn render(t: &Trace) -> String {
    let mut s = format!(
        "trace: {} {} -> {} ({} bytes) on ifindex {}\n",
        t.packet["protocol"].as_str().unwrap_or("?"),
        t.packet["src"].as_str().unwrap_or("?"),
        t.packet["dst"].as_str().unwrap_or("?"),
        t.packet["frame_bytes"],
        t.packet["ingress_ifindex"],
    );
    let width = t.stages.iter().map(|st| st.stage.len()).max().unwrap_or(0);
    for (i, st) in t.stages.iter().enumerate() {
        let mark = match st.result {
            "ok" => "ok  ",
            "drop" => "DROP",
            _ => "PASS",
        };
        s.push_str(&format!(
            "{:>2}. {:<width$}  {mark}  {}\n",
            i + 1,
            st.stage,
            st.detail
        ));
    }
    s.push_str(&match (t.verdict, t.reason, &t.egress_port) {
        ("forward", _, Some(p)) => format!("verdict: forward to {p} ({})\n", t.action),
        (v, Some(r), _) => format!("verdict: {v}, {r} ({})\n", t.action),
        (v, _, _) => format!("verdict: {v} ({})\n", t.action),
    });
    s
}
