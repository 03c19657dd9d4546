//! Trace records (`peer-dataplane trace`; see `peer_dataplane_common::trace`). Stages call
//! [`note`] with `T` their program's tracing flag: for `pdp_xdp` (`T == false`) every
//! note compiles away.

use crate::maps::TRACE;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use peer_dataplane_common::trace::TraceRecord;

/// Runs `f` on this CPU's trace record, when tracing.
#[inline(always)]
pub fn note<const T: bool>(f: impl FnOnce(&mut TraceRecord)) {
    if T {
        if let Some(r) = TRACE.get_ptr_mut(0) {
            // SAFETY: this CPU's slot, written only by the packet running on it.
            f(unsafe { &mut *r })
        }
    }
}

/// Marks stage `stage` (a `STAGE_*` bit) reached.
#[inline(always)]
pub fn reached<const T: bool>(stage: u32) {
    note::<T>(|r| r.reached |= stage);
}

/// Starts a fresh record for the packet on `ingress_ifindex`.
#[inline(always)]
pub fn start<const T: bool>(ingress_ifindex: u32) {
    note::<T>(|r| {
        *r = TraceRecord::ZERO;
        // SAFETY: helper without arguments.
        r.stamp_ns = unsafe { bpf_ktime_get_ns() };
        r.ingress_ifindex = ingress_ifindex;
    });
}
