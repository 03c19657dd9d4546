//! Counter layouts. Both live in per-CPU arrays: the program increments its own CPU's copy
//! with plain adds, the agent and CLI sum the copies.

use crate::reason::{DROP_REASON_SLOTS, PASS_REASON_SLOTS};
use core::mem::size_of;

/// Declares the whole-program counters once: the struct, its zero, the per-CPU sum and the
/// list of the scalar totals by name (what the CLI, metrics and JSON print).
macro_rules! global_counters {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// Whole-program counters (one entry, index 0).
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct GlobalCounters {
            $($(#[$doc])* pub $field: u64,)*
            pub pass: [u64; PASS_REASON_SLOTS],
            pub drop: [u64; DROP_REASON_SLOTS],
        }

        impl GlobalCounters {
            pub const ZERO: GlobalCounters = GlobalCounters {
                $($field: 0,)*
                pass: [0; PASS_REASON_SLOTS],
                drop: [0; DROP_REASON_SLOTS],
            };

            /// The scalar totals, by field name, in declaration order.
            pub fn totals(&self) -> [(&'static str, u64); GLOBAL_TOTALS] {
                [$((stringify!($field), self.$field)),*]
            }

            /// Adds `other` into `self` (summing per-CPU copies).
            pub fn accumulate(&mut self, other: &GlobalCounters) {
                $(self.$field += other.$field;)*
                for i in 0..PASS_REASON_SLOTS {
                    self.pass[i] += other.pass[i];
                }
                for i in 0..DROP_REASON_SLOTS {
                    self.drop[i] += other.drop[i];
                }
            }
        }
    };
}

global_counters! {
    rx_packets,
    rx_bytes,
    redirected_packets,
    redirected_bytes,
    passed_packets,
    dropped_packets,
    /// IPv4/IPv6 fragments seen (forwarded on their L3 header; see the parse stage).
    fragments,
    /// IPv4 packets with options (IHL > 5) seen.
    ipv4_options,
}

/// How many scalar totals [`GlobalCounters`] has before its reason arrays.
pub const GLOBAL_TOTALS: usize = 8;
const _: () = assert!(
    size_of::<GlobalCounters>() == 8 * (GLOBAL_TOTALS + PASS_REASON_SLOTS + DROP_REASON_SLOTS)
);

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
