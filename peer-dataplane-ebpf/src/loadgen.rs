//! Benchmark generator stage (`pdp_loadgen`, `bench e2e`): BPF_PROG_RUN live frames come
//! from one template per call, so this program gives each frame a flow of its own before
//! it goes on: the UDP source port (and, past 50,000 flows, the destination port) of an
//! untagged IPv4 frame are set from a per-CPU sequence, then the frame goes to the
//! program in slot 0 of `pdp_loadgen_next` (this data plane) or to the kernel's stack
//! (Linux). Both data planes get the same frames and pay the same for this step.

use crate::maps::{LOADGEN_CFG, LOADGEN_NEXT, LOADGEN_SEQ};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

/// `pdp_loadgen_cfg` slots.
const CFG_FLOWS: u32 = 0;
const CFG_TO_PIPELINE: u32 = 1;
const CFG_SPORT: u32 = 2;
const CFG_DPORT: u32 = 3;
/// Source ports a destination port spans before the next destination port is used.
const SPORTS: u32 = 50_000;
/// Ethernet + an option-less IPv4 header, then UDP: ports at 34 and 36, checksum at 40.
const UDP_AT: usize = 14 + 20;

#[inline(always)]
pub fn next(ctx: &XdpContext) -> u32 {
    let cfg = |slot| LOADGEN_CFG.get(slot).copied().unwrap_or(0);
    let flows = cfg(CFG_FLOWS).max(1);
    let Some(seq) = LOADGEN_SEQ.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: this CPU's slot.
    let n = unsafe {
        let n = *seq;
        *seq = if n + 1 >= flows { 0 } else { n + 1 };
        n
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + UDP_AT + 8 > end {
        return xdp_action::XDP_ABORTED;
    }
    let sport = (cfg(CFG_SPORT) + n % SPORTS) as u16;
    let dport = (cfg(CFG_DPORT) + n / SPORTS) as u16;
    // SAFETY: bounds checked above against data_end.
    unsafe {
        let udp = (start + UDP_AT) as *mut u16;
        udp.write_unaligned(sport.to_be());
        udp.add(1).write_unaligned(dport.to_be());
        // No checksum (allowed over IPv4): nothing on either path verifies it.
        udp.add(3).write_unaligned(0);
    }
    if cfg(CFG_TO_PIPELINE) != 0 {
        // SAFETY: a tail call with this program's own context.
        unsafe { LOADGEN_NEXT.tail_call(ctx, 0) };
        // Only reached if slot 0 is empty.
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_PASS
}
