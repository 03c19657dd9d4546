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
use crate::bpf::{progrun, KernelMaps};
use anyhow::Result;
use peer_dataplane_common::trace::{TraceRecord, NO_FLOW_SLOT};
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
    /// Whether this flow has a kept decision (a trace neither uses nor keeps one).
    pub flow_cache: FlowCacheTrace,
}

/// The flow decision cache as the traced packet's flow finds it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FlowCacheTrace {
    /// Kept decisions are used.
    pub on: bool,
    /// The installed state's epoch.
    pub epoch: u64,
    /// The packet's decisions can be kept (TCP, UDP with ports; ICMP echo).
    pub cacheable: bool,
    /// The flow's slot in each CPU's table.
    pub slot: Option<u32>,
    /// CPUs holding a decision for this flow: (CPU, the epoch it was made in).
    pub kept: Vec<KeptOn>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeptOn {
    pub cpu: usize,
    pub epoch: u64,
    /// Made in the current epoch: the flow's next packet on that CPU uses it.
    pub current: bool,
}

/// What the trace record and the table's slot on every CPU say of the packet's flow.
fn flow_cache(maps: &KernelMaps, r: &TraceRecord) -> Result<FlowCacheTrace> {
    let mut t = FlowCacheTrace {
        on: r.flow_cache_on != 0,
        epoch: r.epoch,
        cacheable: r.flow_slot != NO_FLOW_SLOT,
        ..FlowCacheTrace::default()
    };
    if !t.cacheable {
        return Ok(t);
    }
    t.slot = Some(r.flow_slot);
    for (cpu, slot) in maps.flow_slot(r.flow_slot)?.iter().enumerate() {
        // The traced key names a real port, so an equal key is no empty slot.
        if slot.key.same(&r.flow_key) {
            t.kept.push(KeptOn {
                cpu,
                epoch: slot.entry.epoch,
                current: slot.entry.epoch == r.epoch,
            });
        }
    }
    Ok(t)
}

/// One line on the flow cache, for people.
fn render_flow_cache(f: &FlowCacheTrace) -> String {
    if !f.on {
        return format!(
            "flow cache: off (epoch {}): every packet runs the whole pipeline\n",
            f.epoch
        );
    }
    if !f.cacheable {
        return format!(
            "flow cache: epoch {}; this packet's decision is never kept (no ports, or ICMP other than echo)\n",
            f.epoch
        );
    }
    let current: Vec<String> = f
        .kept
        .iter()
        .filter(|k| k.current)
        .map(|k| k.cpu.to_string())
        .collect();
    let stale: Vec<String> = f
        .kept
        .iter()
        .filter(|k| !k.current)
        .map(|k| format!("CPU {} (epoch {})", k.cpu, k.epoch))
        .collect();
    let mut s = format!("flow cache: epoch {}; ", f.epoch);
    if current.is_empty() {
        s.push_str("no decision of this epoch is kept for this flow: its next packet runs the whole pipeline");
    } else {
        s.push_str(&format!(
            "a decision of this epoch is kept on CPU {}: the flow's next packets there skip to delivery",
            current.join(", ")
        ));
    }
    if !stale.is_empty() {
        s.push_str(&format!("; stale, unused: {}", stale.join(", ")));
    }
    s.push('\n');
    s
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
    let progrun::TraceRun { out, record, .. } = progrun::trace_once(pin_dir, ifindex, &frame)?;
    let mut t = explain(&record, &state, req, &frame, &out);
    t.flow_cache = flow_cache(&maps, &record)?;
    Ok(t)
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
    s.push_str(&render_flow_cache(&t.flow_cache));
    s
}
