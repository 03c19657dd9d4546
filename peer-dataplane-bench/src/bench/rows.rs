//! What the end-to-end rows share: what one run received, the medians of several, the
//! alternation of this data plane's runs with Linux's, the frame templates' flow count,
//! and a command in the benchmark's namespace.

use super::gen::{Run, BENCH_DPORT};
use anyhow::Result;
use peer_dataplane::cli::frame::Protocol;
use peer_dataplane::cli::loadgen::{self, Traffic};
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns::{self, sh};
use peer_dataplane_tests::seed::{A, B};
use std::io::Write;
use std::process::Command;

/// Bytes of every benchmark frame.
pub const FRAME_BYTES: usize = 64;
/// Frame templates of the cross-host row and the trafgen cross-check.
pub const FLOWS: u32 = 256;

/// What one run of a row gave: frames and bits per second received behind port B (bytes
/// as the sink counted them), frames per second the generator offered, and the sink's
/// frames per CPU.
#[derive(Clone, Default)]
pub struct Received {
    pub pps: f64,
    pub bps: f64,
    pub offered_pps: f64,
    pub per_cpu: Vec<u64>,
}

impl Received {
    pub fn of(r: &Run) -> Received {
        Received {
            pps: r.received as f64 / r.sent.seconds,
            bps: r.bytes as f64 * 8.0 / r.sent.seconds,
            offered_pps: r.sent.pps,
            per_cpu: r.per_cpu.clone(),
        }
    }
}

/// Each figure's median over the rounds (the per-CPU split of the median round).
pub fn medians(runs: &[Received]) -> Received {
    let m = |f: fn(&Received) -> f64| super::median(runs.iter().map(f).collect());
    let pps = m(|r| r.pps);
    let per_cpu = runs
        .iter()
        .find(|r| r.pps == pps)
        .map(|r| r.per_cpu.clone())
        .unwrap_or_default();
    Received {
        pps,
        bps: m(|r| r.bps),
        offered_pps: m(|r| r.offered_pps),
        per_cpu,
    }
}

/// `rounds` rounds alternating this data plane's run (`measure(false)`) and Linux's
/// (`measure(true)`), so that drift on a shared machine hits both alike: the medians of
/// (this data plane, Linux).
pub fn alternating(
    rounds: usize,
    mut measure: impl FnMut(bool) -> Result<Received>,
) -> Result<(Received, Received)> {
    let (mut pdp, mut linux) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        eprint!("round {}/{rounds} ", r + 1);
        std::io::stderr().flush().ok();
        pdp.push(measure(false)?);
        linux.push(measure(true)?);
    }
    Ok((medians(&pdp), medians(&linux)))
}

pub fn ns_cmd(program: &str, args: &[&str]) -> Result<String> {
    // This thread is in the benchmark's namespace; children inherit it.
    sh(Command::new(program).args(args))
}

/// Runs one command line (words split on spaces) in the benchmark's namespace.
pub fn line(cmd: &str) -> Result<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    ns_cmd(words[0], &words[1..])
}

/// A UDP frame A -> B to port `BENCH_DPORT`, with A's MACs (the template of every
/// benchmark frame).
pub fn a_to_b_frame(dp: &TestDataplane) -> Result<Vec<u8>> {
    let port_a = dp
        .installed
        .mirror
        .ports
        .get(&netns::ifindex(A.port))
        .copied();
    let traffic = Traffic {
        src: std::net::IpAddr::V4(A.ipv4.into()),
        dst_first: std::net::IpAddr::V4(B.ipv4.into()),
        dst_last: std::net::IpAddr::V4(B.ipv4.into()),
        protocol: Protocol::Udp,
        dport: Some(BENCH_DPORT),
        flows: 1,
        length: FRAME_BYTES,
    };
    Ok(loadgen::frames(&traffic, port_a.as_ref())?.remove(0))
}
