//! The frames the CLI sends: the packet an operator describes (`trace`, `loadgen`), built
//! as the instance behind its ingress port would send it.

use crate::maps::MapState;
use anyhow::{anyhow, bail, ensure, Result};
use etherparse::{IpNumber, Ipv4Header, Ipv6Header, PacketBuilder};
use peer_dataplane_common::{NameKey, Port, NAME_PORT, PORT_HAS_IPV4, PORT_HAS_IPV6};
use std::net::IpAddr;

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
    /// Trace it as a tunnel frame from this host of the fleet, arriving on the uplink.
    pub from_host: Option<String>,
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

    pub fn name(&self) -> String {
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

/// The installed name of the port at `ifindex` (its interface's name).
pub fn port_name(state: &MapState, ifindex: u32) -> Option<String> {
    state
        .names
        .get(&NameKey {
            kind: NAME_PORT,
            id: ifindex,
        })
        .map(|n| n.as_str().to_string())
}

/// The ingress ifindex: the named port, or the port whose instance address is `src`.
pub fn ingress_port(state: &MapState, req: &Request) -> Result<u32> {
    let name_of = |ifindex: u32| port_name(state, ifindex);
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
            let src = crate::views::map_ip(req.src);
            state
                .ports
                .iter()
                .find(|(_, p)| {
                    (p.flags & PORT_HAS_IPV4 != 0 && p.ipv4 == src)
                        || (p.flags & PORT_HAS_IPV6 != 0 && p.ipv6 == src)
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
