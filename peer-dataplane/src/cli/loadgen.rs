//! `peer-dataplane loadgen`: a packet generator that needs no NIC, no kernel module and no
//! peer host. This module builds the frames (`flows` templates: destinations across a
//! range, source ports) and reports what the pipeline did with them; the generators that
//! send them (live frames, AF_XDP, AF_PACKET) are [`crate::loadgen`]'s.

use crate::cli::frame::{build_frame, Protocol, Request};
use crate::loadgen::{Generator, Sent};
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// What to send.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub src: IpAddr,
    /// Destinations, first to last (inclusive), spread over the flows.
    pub dst_first: IpAddr,
    pub dst_last: IpAddr,
    pub protocol: Protocol,
    pub dport: Option<u16>,
    /// Distinct frames (destination and source port combinations).
    pub flows: u32,
    /// Frame length in bytes.
    pub length: usize,
}

/// The frame templates: destination `i mod span` above `dst_first`, source port
/// 40000 + `i`.
pub fn frames(t: &Traffic, mac: Option<&peer_dataplane_common::Port>) -> Result<Vec<Vec<u8>>> {
    ensure!(t.flows >= 1, "--flows must be at least 1");
    let (first, last) = (to_u128(t.dst_first), to_u128(t.dst_last));
    ensure!(
        t.dst_first.is_ipv4() == t.dst_last.is_ipv4() && last >= first,
        "the destination range {} - {} is empty or mixes families",
        t.dst_first,
        t.dst_last
    );
    let span = last - first + 1;
    (0..t.flows)
        .map(|i| {
            let dst = from_u128(first + (i as u128 % span), t.dst_first.is_ipv4());
            build_frame(
                &Request {
                    port: None,
                    src: t.src,
                    dst,
                    protocol: t.protocol,
                    sport: Some(40000u16.wrapping_add(i as u16)),
                    dport: t.dport,
                    ttl: 64,
                    length: Some(t.length),
                    from_host: None,
                },
                mac,
            )
        })
        .collect()
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

/// Parses `A` or `A-B` (an inclusive range) or a CIDR (its addresses).
pub fn parse_range(s: &str) -> Result<(IpAddr, IpAddr)> {
    if let Some((a, b)) = s.split_once('-') {
        let a: IpAddr = a
            .trim()
            .parse()
            .with_context(|| format!("{a:?} in {s:?}"))?;
        let b: IpAddr = b
            .trim()
            .parse()
            .with_context(|| format!("{b:?} in {s:?}"))?;
        return Ok((a, b));
    }
    if s.contains('/') {
        let net: ipnet::IpNet = s.parse().with_context(|| format!("CIDR {s:?}"))?;
        return Ok(match net {
            // Skip the network and broadcast addresses where there are any others.
            ipnet::IpNet::V4(n) if n.prefix_len() < 31 => (
                IpAddr::V4((u32::from(n.network()) + 1).into()),
                IpAddr::V4((u32::from(n.broadcast()) - 1).into()),
            ),
            n => (n.network(), n.broadcast()),
        });
    }
    let a: IpAddr = s.parse().with_context(|| format!("destination {s:?}"))?;
    Ok((a, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_in_three_forms() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            parse_range("10.0.0.5").unwrap(),
            (ip("10.0.0.5"), ip("10.0.0.5"))
        );
        assert_eq!(
            parse_range("10.0.0.5-10.0.0.9").unwrap(),
            (ip("10.0.0.5"), ip("10.0.0.9"))
        );
        assert_eq!(
            parse_range("172.16.2.0/24").unwrap(),
            (ip("172.16.2.1"), ip("172.16.2.254"))
        );
        assert!(parse_range("10.0.0.x").is_err());
    }

    #[test]
    fn frames_spread_over_the_range() {
        let t = Traffic {
            src: "10.0.2.10".parse().unwrap(),
            dst_first: "172.16.2.1".parse().unwrap(),
            dst_last: "172.16.2.3".parse().unwrap(),
            protocol: Protocol::Udp,
            dport: Some(7000),
            flows: 4,
            length: 64,
        };
        let f = frames(&t, None).unwrap();
        assert_eq!(f.len(), 4);
        assert!(f.iter().all(|f| f.len() == 64));
        let dst_last_octet: Vec<u8> = f.iter().map(|f| f[33]).collect();
        assert_eq!(dst_last_octet, [1, 2, 3, 1]);
        let sport: Vec<u16> = f
            .iter()
            .map(|f| u16::from_be_bytes([f[34], f[35]]))
            .collect();
        assert_eq!(sport, [40000, 40001, 40002, 40003]);
        let bad = Traffic {
            dst_last: "172.16.1.1".parse().unwrap(),
            ..t
        };
        assert!(frames(&bad, None).is_err());
    }
}

/// How a run's frames were generated.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HowSent {
    pub generator: Generator,
    /// Why this generator (`asked for`, or what `auto` found).
    pub reason: String,
    /// AF_XDP's zero-copy or copy mode, AF_PACKET's send path.
    pub mode: Option<String>,
    /// Where frames start (`from pdp-a-peer`, `as if received on ifindex 3`).
    pub path: String,
    /// The port the frames enter.
    pub port: String,
    pub threads: usize,
}

/// A loadgen run against the data plane: what was sent and what the pipeline did with it
/// (from the global counters, before and after).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub how: HowSent,
    pub sent: Sent,
    pub frame_bytes: usize,
    pub flows: u32,
    /// Frames the pipeline received on its ports during the run (its own, and anything
    /// else that arrived then, such as neighbour discovery).
    pub received: u64,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Drops and passes by reason (non-zero only).
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    pub passes_by_reason: BTreeMap<&'static str, u64>,
}

pub fn report(
    how: HowSent,
    sent: Sent,
    frame_bytes: usize,
    flows: u32,
    before: &peer_dataplane_common::counters::GlobalCounters,
    after: &peer_dataplane_common::counters::GlobalCounters,
) -> Report {
    // The counters by reason name, as `stats` shows them; what grew during the run.
    let (b, a) = (
        crate::views::stats::global_view(before),
        crate::views::stats::global_view(after),
    );
    let grown = |after: &BTreeMap<&'static str, u64>, before: &BTreeMap<&'static str, u64>| {
        after
            .iter()
            .map(|(r, n)| (*r, n.saturating_sub(before.get(r).copied().unwrap_or(0))))
            .filter(|(_, n)| *n > 0)
            .collect()
    };
    Report {
        how,
        sent,
        frame_bytes,
        flows,
        received: after.rx_packets.saturating_sub(before.rx_packets),
        forwarded: a.redirected_packets.saturating_sub(b.redirected_packets),
        passed: a.passed_packets.saturating_sub(b.passed_packets),
        dropped: a.dropped_packets.saturating_sub(b.dropped_packets),
        drops_by_reason: grown(&a.dropped, &b.dropped),
        passes_by_reason: grown(&a.passed, &b.passed),
    }
}

/// `generator: af-xdp (copy mode ...), 1 thread, from pdp-a-peer into port pdp-a (why)`.
pub fn render_how(h: &HowSent) -> String {
    format!(
        "generator: {}{}, {} thread{}, {} into port {} ({})",
        h.generator.name(),
        h.mode
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default(),
        h.threads,
        if h.threads == 1 { "" } else { "s" },
        h.path,
        h.port,
        h.reason
    )
}

pub fn render_report(r: &Report) -> String {
    let by = |m: &BTreeMap<&'static str, u64>| {
        if m.is_empty() {
            "-".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut out = format!(
        "{}\n\
         sent {} frames of {} bytes over {} flows in {:.2} s: {:.3} Mpps, {:.1} Mbit/s\n\
         the data plane received {}: forwarded {}, passed {} ({}), dropped {} ({})\n",
        render_how(&r.how),
        r.sent.packets,
        r.frame_bytes,
        r.flows,
        r.sent.seconds,
        r.sent.pps / 1e6,
        r.sent.bits_per_second / 1e6,
        r.received,
        r.forwarded,
        r.passed,
        by(&r.passes_by_reason),
        r.dropped,
        by(&r.drops_by_reason),
    );
    if r.sent.per_thread.len() > 1 {
        let each: Vec<String> = r.sent.per_thread.iter().map(|n| n.to_string()).collect();
        out.push_str(&format!("per thread (CPU): {}\n", each.join(" ")));
    }
    if r.sent.packets > 0 && r.received == 0 {
        out.push_str(&format!(
            "the data plane saw none of them: is the agent running with port {} attached?\n",
            r.how.port
        ));
    } else if r.received < r.sent.packets {
        out.push_str(&format!(
            "{} frames sent never reached the data plane (dropped on the way into the port)\n",
            r.sent.packets - r.received
        ));
    }
    out
}
