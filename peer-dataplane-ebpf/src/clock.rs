//! The one reading of time for conntrack and caps (see `peer_dataplane_common::clock`):
//! the kernel's monotonic clock as `pdp_clock` adjusts it (not at all in production).

use crate::maps::CLOCK;
use aya_ebpf::helpers::bpf_ktime_get_ns;

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    let kernel = unsafe { bpf_ktime_get_ns() };
    match CLOCK.get(0) {
        Some(c) => c.now(kernel),
        None => kernel,
    }
}
