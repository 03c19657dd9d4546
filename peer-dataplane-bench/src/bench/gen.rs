//! The generator of `bench e2e` and of the live rows of `bench prog`: one generator for
//! both sides of a comparison, chosen as `peer-dataplane loadgen --generator` chooses
//! (auto: live frames where the kernel runs them, else AF_XDP, else AF_PACKET), and named
//! in every report and its JSON.
//!
//! - **Live frames**: `pdp_loadgen` runs under BPF_PROG_RUN live frames as if received on
//!   the port, gives each frame its flow from a per-CPU sequence and tail-calls the
//!   program under test (or passes the frame to the kernel's stack).
//! - **AF_XDP, AF_PACKET**: real frames sent from the port's veth peer, one socket per
//!   thread (AF_XDP: per queue); the program under test is attached to the port for the
//!   run, or nothing is (the kernel's own path). Each frame is its own flow too: the
//!   sockets cycle through one template per flow, with the ports `pdp_loadgen` would give.
//!
//! Either way the frames that make it are counted by `pdp_sink` behind the destination
//! port, per CPU.

use anyhow::{Context, Result};
use peer_dataplane::loadgen::{self, far_end, Generator, GeneratorArg, Load, Opened, Sent, Source};
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns;
use std::time::Duration;

/// Source port of flow 0 (`pdp_loadgen`, `flow_frames`).
pub const FIRST_SPORT: u16 = 1024;

/// The UDP port of every benchmark frame (what the sink counts); past 50,000 flows the
/// next one is used too.
pub const BENCH_DPORT: u16 = 7000;

/// Source ports a destination port spans before the next one (as `pdp_loadgen`).
const SPORTS: u32 = 50_000;

/// What handles the frames once they are in the port.
#[derive(Clone, Copy)]
pub enum Next<'a> {
    /// An XDP program of the object (this data plane, or a baseline).
    Program(&'a str),
    /// Nothing: the Linux kernel's own path.
    Kernel,
}

/// How much a run sends: each frame the next of `flows` flows, from `threads` threads,
/// for `seconds`.
#[derive(Clone, Copy)]
pub struct Shape {
    pub flows: u32,
    pub threads: usize,
    pub seconds: f64,
}

/// One counted run.
pub struct Run {
    pub sent: Sent,
    /// Frames and bytes the sink counted.
    pub received: u64,
    pub bytes: u64,
    /// The sink's frames per CPU.
    pub per_cpu: Vec<u64>,
}

pub struct BenchGen {
    pub generator: Generator,
    pub why: String,
    /// AF_XDP's copy or zero-copy mode, once a socket was opened.
    pub mode: Option<String>,
    /// The socket senders of the last run (an AF_XDP queue takes one socket at a time):
    /// (port, flows, threads), where they send from, and the senders.
    sockets: Option<((String, u32, usize), Source<'static>, Opened<'static>)>,
}

impl BenchGen {
    /// Decides the generator for frames entering `port` (a veth of the calling thread's
    /// namespace whose peer is `{port}-peer`).
    pub fn choose(arg: GeneratorArg, port: &str) -> Result<BenchGen> {
        let ifindex = netns::ifindex(port);
        let choice = loadgen::choose(
            arg,
            || peer_dataplane::bpf::probe::live_frames(ifindex).map_err(|r| r.to_string()),
            || {
                let far =
                    far_end::resolve(port, ifindex, None, None).map_err(|e| format!("{e:#}"))?;
                loadgen::probe_af_xdp(&far).map_err(|e| format!("{e:#}"))
            },
        )?;
        Ok(BenchGen {
            generator: choice.generator,
            why: choice.why,
            mode: None,
            sockets: None,
        })
    }

    /// `af-xdp (copy mode: ...; live frames refused: ...)`.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(m) = &self.mode {
            parts.push(m.clone());
        }
        parts.push(self.why.clone());
        format!("{} ({})", self.generator.name(), parts.join("; "))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "generator": self.generator.name(),
            "reason": self.why,
            "mode": self.mode,
        })
    }

    /// Frames enter `port` as `shape` says (A -> B UDP, `template`'s addresses); `next`
    /// handles them; the sink (already told what to count) counts what comes out.
    pub fn run(
        &mut self,
        dp: &mut TestDataplane,
        template: &[u8],
        port: &str,
        next: Next,
        shape: Shape,
    ) -> Result<Run> {
        let Shape {
            flows,
            threads,
            seconds,
        } = shape;
        let load = Load {
            packets: None,
            duration: Duration::from_secs_f64(seconds),
        };
        let (frames_before, bytes_before, cpus_before) =
            (dp.sink_count()?, dp.sink_bytes()?, dp.sink_count_per_cpu()?);
        let sent = match self.generator {
            Generator::LiveFrames => {
                let to = match next {
                    Next::Program(p) => Some(p),
                    Next::Kernel => None,
                };
                dp.loadgen_config(flows, to, FIRST_SPORT, BENCH_DPORT)?;
                let prog: &aya::programs::Xdp = dp
                    .ebpf
                    .program(program_names::LOADGEN)
                    .context("pdp_loadgen")?
                    .try_into()?;
                let source = Source::LiveFrames {
                    prog,
                    ingress_ifindex: netns::ifindex(port),
                    batch: 256,
                };
                let mut opened = loadgen::open(&source, &[template.to_vec()], threads)?;
                loadgen::run(&source, &mut opened, template.len(), &load, &mut |_, _| {})?
            }
            Generator::AfXdp | Generator::AfPacket => {
                let link = match next {
                    Next::Program(p) => Some((p, dp.attach(p, port)?)),
                    Next::Kernel => None,
                };
                let sent = self.socket_run(port, template, flows, threads, &load);
                if let Some((p, link)) = link {
                    dp.detach(p, link)?;
                }
                sent?
            }
        };
        // The last frames may still be in the sink's NAPI poll: wait until its count
        // stops moving (a condition, bounded).
        let mut last = dp.sink_count()?;
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(10));
            let now = dp.sink_count()?;
            if now == last {
                break;
            }
            last = now;
        }
        let per_cpu: Vec<u64> = dp
            .sink_count_per_cpu()?
            .iter()
            .zip(&cpus_before)
            .map(|(a, b)| a - b)
            .collect();
        Ok(Run {
            sent,
            received: dp.sink_count()? - frames_before,
            bytes: dp.sink_bytes()? - bytes_before,
            per_cpu,
        })
    }

    /// A run of the socket senders from `{port}-peer`, reusing the last run's when they
    /// fit.
    fn socket_run(
        &mut self,
        port: &str,
        template: &[u8],
        flows: u32,
        threads: usize,
        load: &Load,
    ) -> Result<Sent> {
        let key = (port.to_string(), flows, threads);
        if self.sockets.as_ref().map(|(k, _, _)| k) != Some(&key) {
            // Close the old sockets first: their queues are the new ones'.
            self.sockets = None;
            let far = far_end::resolve(port, netns::ifindex(port), None, None)?;
            let source = match self.generator {
                Generator::AfXdp => Source::AfXdp(far),
                _ => Source::AfPacket(far),
            };
            let opened = loadgen::open(&source, &flow_frames(template, flows), threads)?;
            self.mode = opened.mode.clone();
            self.sockets = Some((key, source, opened));
        }
        let (_, source, opened) = self.sockets.as_mut().unwrap();
        loadgen::run(source, opened, template.len(), load, &mut |_, _| {})
    }
}

/// One frame per flow: `template` with the ports flow `i` gets from `pdp_loadgen`
/// (source port `FIRST_SPORT + i mod 50,000`, destination port `BENCH_DPORT + i /
/// 50,000`) and no UDP checksum (allowed over IPv4; nothing on either path checks it).
pub fn flow_frames(template: &[u8], flows: u32) -> Vec<Vec<u8>> {
    const UDP_AT: usize = 14 + 20;
    (0..flows)
        .map(|i| {
            let mut f = template.to_vec();
            let sport = (FIRST_SPORT as u32 + i % SPORTS) as u16;
            let dport = (BENCH_DPORT as u32 + i / SPORTS) as u16;
            f[UDP_AT..UDP_AT + 2].copy_from_slice(&sport.to_be_bytes());
            f[UDP_AT + 2..UDP_AT + 4].copy_from_slice(&dport.to_be_bytes());
            f[UDP_AT + 6..UDP_AT + 8].copy_from_slice(&[0, 0]);
            f
        })
        .collect()
}

/// `62/38`: each CPU's share of `per_cpu`, in percent.
pub fn spread(per_cpu: &[u64]) -> String {
    let total: u64 = per_cpu.iter().sum();
    if total == 0 {
        return "-".into();
    }
    per_cpu
        .iter()
        .map(|n| format!("{:.0}", 100.0 * *n as f64 / total as f64))
        .collect::<Vec<_>>()
        .join("/")
}
