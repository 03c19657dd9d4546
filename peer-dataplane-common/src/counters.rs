//! Counter layouts. Both live in per-CPU arrays: the program increments its own CPU's copy
//! with plain adds, the agent and CLI sum the copies.

use crate::reason::{DROP_REASON_SLOTS, PASS_REASON_SLOTS};
use core::mem::size_of;

/// Whole-program counters (one entry, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub redirected_packets: u64,
    pub redirected_bytes: u64,
    pub passed_packets: u64,
    pub dropped_packets: u64,
    /// IPv4/IPv6 fragments seen (forwarded on their L3 header; see the parse stage).
    pub fragments: u64,
    /// IPv4 packets with options (IHL > 5) seen.
    pub ipv4_options: u64,
    pub pass: [u64; PASS_REASON_SLOTS],
    pub drop: [u64; DROP_REASON_SLOTS],
}
const _: () =
    assert!(size_of::<GlobalCounters>() == 8 * (8 + PASS_REASON_SLOTS + DROP_REASON_SLOTS));

impl GlobalCounters {
    pub const ZERO: GlobalCounters = GlobalCounters {
        rx_packets: 0,
        rx_bytes: 0,
        redirected_packets: 0,
        redirected_bytes: 0,
        passed_packets: 0,
        dropped_packets: 0,
        fragments: 0,
        ipv4_options: 0,
        pass: [0; PASS_REASON_SLOTS],
        drop: [0; DROP_REASON_SLOTS],
    };

    /// Adds `other` into `self` (summing per-CPU copies).
    pub fn accumulate(&mut self, other: &GlobalCounters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.redirected_packets += other.redirected_packets;
        self.redirected_bytes += other.redirected_bytes;
        self.passed_packets += other.passed_packets;
        self.dropped_packets += other.dropped_packets;
        self.fragments += other.fragments;
        self.ipv4_options += other.ipv4_options;
        for i in 0..PASS_REASON_SLOTS {
            self.pass[i] += other.pass[i];
        }
        for i in 0..DROP_REASON_SLOTS {
            self.drop[i] += other.drop[i];
        }
    }
}

/// Counters of one peering in one direction (index [`crate::peering_counter_index`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeeringCounters {
    /// Packets and bytes forwarded across the peering.
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped after the peering was identified, by reason.
    pub drop: [u64; DROP_REASON_SLOTS],
}
const _: () = assert!(size_of::<PeeringCounters>() == 8 * (2 + DROP_REASON_SLOTS));

impl PeeringCounters {
    pub const ZERO: PeeringCounters = PeeringCounters {
        packets: 0,
        bytes: 0,
        drop: [0; DROP_REASON_SLOTS],
    };

    pub fn accumulate(&mut self, other: &PeeringCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        for i in 0..DROP_REASON_SLOTS {
            self.drop[i] += other.drop[i];
        }
    }
}
