//! What every BPF_PROG_RUN of an XDP program here needs: its context, the names of its
//! verdicts, and a thread that stays on one CPU (per-CPU maps are read per CPU). Used by
//! `trace`, `loadgen`, the tests and the benchmarks.

use std::io;

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
