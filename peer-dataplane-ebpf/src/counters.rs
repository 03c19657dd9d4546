//! Counters stage: per-CPU, plain adds (no atomics on the hot path). Every outcome is
//! counted globally; once a packet is known to cross a peering it is also counted under
//! that peering and direction.

use crate::maps::{GLOBAL_COUNTERS, PEERING_COUNTERS};
use aya_ebpf::bindings::xdp_action;
use peer_dataplane_common::{
    reason::{DROP_REASON_SLOTS, PASS_REASON_SLOTS},
    DropReason, PassReason,
};

pub const NO_PEERING: u32 = u32::MAX;

pub enum Outcome {
    Pass(PassReason),
    /// `action` is what `bpf_redirect_map` returned; `ctr` the peering counter index.
    Redirect {
        action: u32,
        ctr: u32,
    },
    /// `ctr` is the peering counter index, or [`NO_PEERING`].
    Drop {
        reason: DropReason,
        ctr: u32,
    },
}

/// Observations that are not outcomes (counted whatever happens to the packet).
pub struct Seen {
    pub fragment: bool,
    pub ipv4_options: bool,
}

#[inline(always)]
pub fn record(len: u64, outcome: &Outcome, seen: &Seen) -> u32 {
    let Some(g) = GLOBAL_COUNTERS.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: per-CPU value of this CPU; nothing else writes it while we run.
    let g = unsafe { &mut *g };
    g.rx_packets += 1;
    g.rx_bytes += len;
    if seen.fragment {
        g.fragments += 1;
    }
    if seen.ipv4_options {
        g.ipv4_options += 1;
    }
    match *outcome {
        Outcome::Pass(reason) => {
            g.passed_packets += 1;
            let i = reason as usize;
            if i < PASS_REASON_SLOTS {
                g.pass[i] += 1;
            }
            xdp_action::XDP_PASS
        }
        Outcome::Redirect { action, ctr } => {
            g.redirected_packets += 1;
            g.redirected_bytes += len;
            if let Some(c) = PEERING_COUNTERS.get_ptr_mut(ctr) {
                // SAFETY: as above.
                let c = unsafe { &mut *c };
                c.packets += 1;
                c.bytes += len;
            }
            action
        }
        Outcome::Drop { reason, ctr } => {
            g.dropped_packets += 1;
            let i = reason as usize;
            if i < DROP_REASON_SLOTS {
                g.drop[i] += 1;
                if ctr != NO_PEERING {
                    if let Some(c) = PEERING_COUNTERS.get_ptr_mut(ctr) {
                        // SAFETY: as above.
                        unsafe { (*c).drop[i] += 1 };
                    }
                }
            }
            xdp_action::XDP_DROP
        }
    }
}
