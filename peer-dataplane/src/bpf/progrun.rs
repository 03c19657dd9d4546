//! Every BPF_PROG_RUN of the agent binary: the trace's single run with its record, the
//! live-frames generator's runs, and what each needs (the context, the names of the
//! verdicts, a thread that stays on one CPU: per-CPU maps are read per CPU). Used by
//! `trace`, `loadgen`, the tests and the benchmarks.

use super::{maps::monotonic_ns, pins};
use anyhow::{anyhow, ensure, Context, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use peer_dataplane_common::trace::TraceRecord;
use peer_dataplane_common::{map_names, program_names};
use std::io;
use std::path::Path;

/// One run of the pinned trace program: its verdict, the frame it left, and what each
/// stage saw (this CPU's trace record).
pub struct TraceRun {
    pub action: u32,
    pub out: Vec<u8>,
    pub record: TraceRecord,
}

/// Runs `frame`, as received on `ifindex`, once through the trace program pinned under
/// `pin_dir`, on the live maps.
pub fn trace_once(pin_dir: &Path, ifindex: u32, frame: &[u8]) -> Result<TraceRun> {
    let prog = pins::pinned_program(pin_dir, program_names::TRACE)?;
    let path = pin_dir.join(map_names::TRACE);
    let records: PerCpuArray<MapData, TraceRecord> = MapData::from_pin(&path)
        .map_err(|e| {
            anyhow!(
                "cannot open {} ({e}); restart the agent with this version",
                path.display()
            )
        })
        .and_then(|m| Ok(Map::PerCpuArray(m).try_into()?))?;

    // The record is per CPU: run on one known CPU and read that CPU's slot.
    let cpu = stay_on_this_cpu().context("keeping the trace on one CPU")?;
    let started = monotonic_ns();
    let ctx = xdp_md(frame.len(), ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let run = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
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
    Ok(TraceRun {
        action: run.return_value,
        out,
        record,
    })
}

/// One BPF_PROG_RUN of `prog` in live-frames mode: `frame` (with context `ctx`) sent
/// `repeat` times, `batch` frames per kernel batch; the kernel carries out each verdict.
pub fn run_live_frames(
    prog: &Xdp,
    frame: &[u8],
    ctx: &[u8],
    repeat: u32,
    batch: u32,
) -> io::Result<()> {
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(ctx),
        repeat,
        attrs: TestRunAttrs::new().xdp_live_frames(batch),
        ..Default::default()
    })
    .map(drop)
    .map_err(|e| match e {
        ProgramError::SyscallError(s) => s.io_error,
        e => io::Error::other(e.to_string()),
    })
}

/// The `struct xdp_md` context of a run on a `len`-byte frame received on
/// `ingress_ifindex`: { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
/// egress_ifindex }, offsets relative to the frame.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

/// Keeps the calling thread on `cpu` from now on.
pub fn pin_thread_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a plain syscall on this thread with a zeroed cpu_set_t of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Keeps the calling thread on the CPU it runs on now; returns that CPU.
pub fn stay_on_this_cpu() -> io::Result<usize> {
    // SAFETY: no arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        return Err(io::Error::last_os_error());
    }
    pin_thread_to_cpu(cpu as usize)?;
    Ok(cpu as usize)
}
