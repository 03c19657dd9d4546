//! `peer-dataplane loadgen`: a packet generator that needs no NIC, no kernel module and no
//! peer host. It runs an XDP program with BPF_PROG_RUN in live-frames mode
//! (`BPF_F_TEST_XDP_LIVE_FRAMES`): the kernel builds real frames from a template, runs the
//! program on them as if received on the port, and carries out its verdict: a redirect is
//! transmitted on the target interface, a pass enters the kernel's stack, a drop is
//! dropped. Run on the agent's pinned `pdp_xdp`, that is the data plane under load, end
//! to end; `cargo xtask bench e2e` also runs it on a pass-only program to load the Linux
//! kernel's own forwarding with the same frames.
//!
//! Frames vary over `flows` templates (destinations across a range, source ports), each
//! run for a chunk of frames per BPF_PROG_RUN call, one thread per CPU asked for.

use crate::cli::frame::{build_frame, Protocol, Request};
use anyhow::{anyhow, ensure, Context, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// How long and how hard.
#[derive(Debug, Clone)]
pub struct Load {
    pub ingress_ifindex: u32,
    /// Frames in all (`None`: until `duration` is up).
    pub packets: Option<u64>,
    pub duration: Duration,
    pub threads: usize,
    /// Frames per kernel batch (at most 256); also the size of the call's page pool.
    pub batch: u32,
}

/// Uses of each page of a call's pool: each BPF_PROG_RUN call gets a fresh pool of
/// `batch` pages, written from the template once. The kernel resets only a recycled
/// frame's pointers, not its bytes, so a page keeps the previous run's rewrite: the
/// data plane's TTL decrement (or the kernel's, for traffic passed to its stack). Calls
/// of `batch * PAGE_REUSES` frames keep a TTL-64 template above 1 on every page.
pub const PAGE_REUSES: u32 = 60;
pub const MAX_BATCH: u32 = 256;

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    pub packets: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub pps: f64,
    pub bits_per_second: f64,
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

/// Runs `prog` on `frames` under `load`; `progress` is called about once a second with
/// the frames sent so far and the time since the start.
pub fn run(
    prog: &Xdp,
    frames: &[Vec<u8>],
    load: &Load,
    progress: &mut dyn FnMut(u64, Duration),
) -> Result<Sent> {
    ensure!(load.threads >= 1, "--threads must be at least 1");
    ensure!(
        (1..=MAX_BATCH).contains(&load.batch),
        "--batch must be 1 to {MAX_BATCH} (the kernel's limit)"
    );
    let chunk = load.batch * PAGE_REUSES;
    let sent = AtomicU64::new(0);
    let claimed = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let deadline = started + load.duration;
    // The run ends when the last worker's last call returns (not when it is noticed).
    let ended: Result<Instant> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..load.threads)
            .map(|w| {
                let (sent, claimed, bytes, stop) = (&sent, &claimed, &bytes, &stop);
                s.spawn(move || -> Result<Instant> {
                    // Failing to pin only costs evenness.
                    let _ = crate::bpf::progrun::pin_thread_to_cpu(w % cpus);
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let n = match load.packets {
                            Some(total) => {
                                // Claim a chunk of the total, or stop.
                                let c = claimed.fetch_add(chunk as u64, Ordering::Relaxed);
                                if c >= total {
                                    break;
                                }
                                (total - c).min(chunk as u64) as u32
                            }
                            None => chunk,
                        };
                        let frame = &frames[i % frames.len()];
                        i += load.threads;
                        let len = frame.len() as u32;
                        let ctx = crate::bpf::progrun::xdp_md(frame.len(), load.ingress_ifindex);
                        prog.test_run(TestRunOptions {
                            data_in: Some(frame),
                            ctx_in: Some(&ctx),
                            repeat: n,
                            attrs: TestRunAttrs::new().xdp_live_frames(load.batch),
                            ..Default::default()
                        })
                        .map_err(|e| {
                            anyhow!(
                                "BPF_PROG_RUN (live frames) on ifindex {}: {e}",
                                load.ingress_ifindex
                            )
                        })?;
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                        bytes.fetch_add(n as u64 * len as u64, Ordering::Relaxed);
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    Ok(Instant::now())
                })
            })
            .collect();
        loop {
            std::thread::sleep(Duration::from_millis(200).min(load.duration));
            let done = workers.iter().all(|w| w.is_finished());
            progress(sent.load(Ordering::Relaxed), started.elapsed());
            if done {
                break;
            }
            if Instant::now() >= deadline + Duration::from_secs(5) {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let mut last = started;
        for w in workers {
            let end = w
                .join()
                .map_err(|_| anyhow!("a generator thread panicked"))??;
            last = last.max(end);
        }
        Ok(last)
    });
    let seconds = (ended? - started).as_secs_f64();
    let (packets, bytes) = (sent.into_inner(), bytes.into_inner());
    Ok(Sent {
        packets,
        bytes,
        seconds,
        pps: packets as f64 / seconds,
        bits_per_second: bytes as f64 * 8.0 / seconds,
    })
}

/// A throttled progress line on stderr (carriage return on a terminal).
pub fn progress_printer(total: Option<u64>, duration: Duration) -> impl FnMut(u64, Duration) {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stderr().is_terminal();
    let mut last = (0u64, Duration::ZERO);
    let mut printed = Duration::ZERO;
    move |sent, elapsed| {
        if elapsed - printed < Duration::from_secs(1) {
            return;
        }
        let rate = (sent - last.0) as f64 / (elapsed - last.1).as_secs_f64().max(1e-9);
        last = (sent, elapsed);
        printed = elapsed;
        let of = match total {
            Some(t) => format!("{sent}/{t} frames"),
            None => format!(
                "{sent} frames, {:.0}/{:.0} s",
                elapsed.as_secs_f64(),
                duration.as_secs_f64()
            ),
        };
        let line = format!("loadgen: {of}, {:.3} Mpps", rate / 1e6);
        let mut e = std::io::stderr();
        if tty {
            let _ = write!(e, "\r{line}   ");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
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

/// A loadgen run against the data plane: what was sent and what the pipeline did with it
/// (from the global counters, before and after).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub sent: Sent,
    pub frame_bytes: usize,
    pub flows: u32,
    pub forwarded: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Drops and passes by reason (non-zero only).
    pub drops_by_reason: BTreeMap<&'static str, u64>,
    pub passes_by_reason: BTreeMap<&'static str, u64>,
}

pub fn report(
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
        sent,
        frame_bytes,
        flows,
        forwarded: a.redirected_packets.saturating_sub(b.redirected_packets),
        passed: a.passed_packets.saturating_sub(b.passed_packets),
        dropped: a.dropped_packets.saturating_sub(b.dropped_packets),
        drops_by_reason: grown(&a.dropped, &b.dropped),
        passes_by_reason: grown(&a.passed, &b.passed),
    }
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
    format!(
        "sent {} frames of {} bytes over {} flows in {:.2} s: {:.3} Mpps, {:.1} Mbit/s\n\
         forwarded {}, passed {} ({}), dropped {} ({})\n",
        r.sent.packets,
        r.frame_bytes,
        r.flows,
        r.sent.seconds,
        r.sent.pps / 1e6,
        r.sent.bits_per_second / 1e6,
        r.forwarded,
        r.passed,
        by(&r.passes_by_reason),
        r.dropped,
        by(&r.drops_by_reason),
    )
}
