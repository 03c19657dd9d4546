//! Bandwidth-cap stage (docs/datapath.md §3.7, §4.15): one GCRA bucket per peering and direction, shared by
//! every CPU (see `peer_dataplane_common::cap`).
//!
//! Concurrency, and the error it allows:
//! - Busy bucket (`tat` ahead of now): a packet pays with one atomic fetch-add, and an
//!   over-cap packet takes its payment back with an atomic add of the negation. Adds
//!   commute, so the accounting is exact; between the add and the refund another CPU may
//!   see the bucket short by that one packet, so near the cap at most one packet per
//!   other CPU can be dropped that a serial bucket would have passed.
//! - Idle bucket (`tat` behind now): the refill `tat = now + cost` must not be lost to a
//!   concurrent payment, so it is a compare-and-swap; if it loses the race the packet
//!   pays by fetch-add instead. The winner's clock may trail ours by the time between
//!   the two reads, and that gap (at most microseconds of link time) is the largest
//!   credit a race can grant beyond the burst.
//!
//! The bpfel target has no `AtomicU64` read-modify-write methods (no CAS in its spec), so
//! the atomics are the compiler intrinsics, lowered to BPF ISA v3 `atomic_fetch_add` and
//! `cmpxchg`. Sequentially consistent ordering: the relaxed fetch-add does not reliably
//! select the fetching instruction.

use crate::maps::CAP_STATE;
use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};
use peer_dataplane_common::{
    cap::{conform, CapConfig},
    DropReason,
};

/// Charges a `len`-byte frame to bucket `index` now; `Err(RateLimited)` if over.
#[inline(always)]
pub fn police(cap: &CapConfig, index: u32, len: u64) -> Result<(), DropReason> {
    let now = crate::clock::now();
    let cost = cap.cost_ns(len);
    if cost > cap.burst_ns {
        // Larger than the whole bucket: could never conform.
        return Err(DropReason::RateLimited);
    }
    let Some(tat) = CAP_STATE.get_ptr_mut(index) else {
        return Err(DropReason::RateLimited);
    };
    // SAFETY: `tat` is an 8-byte-aligned u64 in a map value. An aligned 8-byte load is
    // single-copy atomic on BPF; the updates are atomic instructions.
    unsafe {
        let old = core::ptr::read_volatile(tat);
        if old <= now {
            let (_, won) = atomic_cxchg::<
                u64,
                { AtomicOrdering::SeqCst },
                { AtomicOrdering::SeqCst },
            >(tat, old, now + cost);
            if won {
                return Ok(());
            }
        }
        let new = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(tat, cost).wrapping_add(cost);
        if new > now && new - now > cap.burst_ns {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(tat, cost.wrapping_neg());
            return Err(DropReason::RateLimited);
        }
    }
    Ok(())
}

/// What [`police`] would decide for a `len`-byte frame now, without spending anything
/// (for traces): (conforms, the bucket's `tat`, the frame's cost in ns).
#[inline(always)]
pub fn peek(cap: &CapConfig, index: u32, len: u64) -> (bool, u64, u64) {
    let now = crate::clock::now();
    let cost = cap.cost_ns(len);
    let Some(tat) = CAP_STATE.get_ptr_mut(index) else {
        return (false, 0, cost);
    };
    // SAFETY: see `police`.
    let tat = unsafe { core::ptr::read_volatile(tat) };
    // The serial GCRA step (a frame larger than the burst never conforms there either).
    (conform(tat, now, cost, cap.burst_ns).is_some(), tat, cost)
}
