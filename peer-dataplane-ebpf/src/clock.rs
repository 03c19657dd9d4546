//! The one reading of time for conntrack, caps and the overlay's next-hop cache (see
//! `peer_dataplane_common::clock`): the kernel's coarse monotonic clock as `pdp_clock`
//! adjusts it (not at all in production), read at most once per packet. Every stage of
//! a packet sees the same instant, and a packet that both refreshes a flow and pays a
//! cap reads the clock once.
//!
//! Coarse: the time of the last timer tick (1 to 10 ms old), read from memory. The
//! precise clock reads the time-stamp counter, about 16 ns a packet on these virtual
//! machines, for a precision nothing here uses: flows expire after seconds, and a cap's
//! bucket is at least 10 ms deep, one tick at the slowest tick rate (100 Hz), so a
//! bucket refilled a tick at a time passes the same rate.

use crate::maps::{CLOCK, NOW_SCRATCH};
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// Starts a packet: its first [`now`] reads the clock.
#[inline(always)]
pub fn start_packet() {
    if let Some(s) = NOW_SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, used by nothing else while this packet runs.
        unsafe { *s = 0 };
    }
}

/// This packet's instant.
#[inline(always)]
pub fn now() -> u64 {
    let Some(s) = NOW_SCRATCH.get_ptr_mut(0) else {
        return read();
    };
    // SAFETY: see `start_packet`.
    unsafe {
        if *s == 0 {
            *s = read();
        }
        *s
    }
}

#[inline(always)]
fn read() -> u64 {
    // SAFETY: helper without arguments.
    let kernel = unsafe { bpf_ktime_get_coarse_ns() };
    match CLOCK.get(0) {
        Some(c) => c.now(kernel),
        None => kernel,
    }
}
