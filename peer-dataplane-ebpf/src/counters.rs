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

/// What happens to a packet. A struct with every field set on every path rather than an
/// enum: LLVM spills an enum's unset payload as an undefined register, which the
/// verifier refuses to read.
#[derive(Clone, Copy)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The `PassReason` or `DropReason` (0 for a redirect).
    pub reason: u32,
    /// What `bpf_redirect_map` returned (redirects), or an answered drop's action.
    pub action: u32,
    /// The peering counter index, or [`NO_PEERING`].
    pub ctr: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Pass,
    Redirect,
    Drop,
}

impl Outcome {
    #[inline(always)]
    pub fn pass(reason: PassReason) -> Outcome {
        Outcome {
            verdict: Verdict::Pass,
            reason: reason as u32,
            action: 0,
            ctr: NO_PEERING,
        }
    }

    #[inline(always)]
    pub fn redirect(action: u32, ctr: u32) -> Outcome {
        Outcome {
            verdict: Verdict::Redirect,
            reason: 0,
            action,
            ctr,
        }
    }

    #[inline(always)]
    pub fn drop(reason: DropReason, ctr: u32) -> Outcome {
        Outcome {
            verdict: Verdict::Drop,
            reason: reason as u32,
            action: 0,
            ctr,
        }
    }
}

impl Outcome {
    /// Dropped, but answered: the frame was rewritten into a reply sent with `action`
    /// (an ICMP error redirected back to its port).
    #[inline(always)]
    pub fn answered(reason: DropReason, ctr: u32, action: u32) -> Outcome {
        Outcome {
            action,
            ..Outcome::drop(reason, ctr)
        }
    }

    /// The XDP action of a drop: `XDP_DROP`, or the answer's action.
    #[inline(always)]
    pub fn drop_action(&self) -> u32 {
        if self.action != 0 {
            self.action
        } else {
            xdp_action::XDP_DROP
        }
    }
}

impl From<DropReason> for Outcome {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Outcome::drop(reason, NO_PEERING)
    }
}

/// Observations that are not outcomes (counted whatever happens to the packet).
pub struct Seen {
    pub fragment: bool,
    pub ipv4_options: bool,
}

impl Seen {
    /// What the parsed packet `p` shows of itself.
    #[inline(always)]
    pub fn note(&mut self, p: &crate::parse::Packet) {
        self.fragment = p.fragment;
        self.ipv4_options = p.ipv4_options;
    }
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
    let (reason, ctr) = (outcome.reason, outcome.ctr);
    match outcome.verdict {
        Verdict::Pass => {
            g.passed_packets += 1;
            let i = reason as usize;
            if i < PASS_REASON_SLOTS {
                g.pass[i] += 1;
            }
            xdp_action::XDP_PASS
        }
        Verdict::Redirect => {
            g.redirected_packets += 1;
            g.redirected_bytes += len;
            if let Some(c) = PEERING_COUNTERS.get_ptr_mut(ctr) {
                // SAFETY: as above.
                let c = unsafe { &mut *c };
                c.packets += 1;
                c.bytes += len;
            }
            outcome.action
        }
        Verdict::Drop => {
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
            outcome.drop_action()
        }
    }
}
