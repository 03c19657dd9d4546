//! `peer-dataplane trace`: what the loaded program decides for a described packet, stage
//! by stage (in the spirit of `ovn-trace`). The packet is built here and run once through
//! the pinned `pdp_trace` program with BPF_PROG_RUN, on the live maps; that program is the
//! pipeline with its side effects off, and it leaves what each stage saw in this CPU's
//! trace record (see `peer_dataplane_common::trace`). Nothing is counted, no flow is
//! tracked and no cap tokens are spent, so tracing on a production host is safe.

mod explain;
mod lookups;
mod overlay;
mod tunnel;

pub use explain::explain;

use super::frame::{build_frame, ingress_port, Request};
use crate::bpf::{maps, pins, progrun, KernelMaps};
use anyhow::{anyhow, ensure, Context, Result};
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions};
use peer_dataplane_common::trace::TraceRecord;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

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
    let (ifindex, frame) = match &req.from_host {
        Some(host) => tunnel::frame(&state, req, host)?,
        None => {
            let ifindex = ingress_port(&state, req)?;
            let port = state.ports.get(&ifindex).copied();
            (ifindex, build_frame(req, port.as_ref())?)
        }
    };
    let prog = pins::pinned_program(pin_dir, peer_dataplane_common::program_names::TRACE)?;
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
    let started = maps::monotonic_ns();
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
