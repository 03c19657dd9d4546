//! The program's clock, for connection-tracking expiry and bandwidth caps.
//!
//! Every reading of time in the data plane goes through one helper that combines the
//! kernel's coarse monotonic clock (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC_COARSE:
//! the last timer tick, 1 to 10 ms old) with the one-entry map
//! `pdp_clock`. In production the entry is all zeroes and the clock is the kernel's. Tests
//! use it to control time: `offset_ns` moves the clock forward without waiting, and
//! `FROZEN` stops it at `offset_ns` exactly, so that a scenario or the differential test
//! decides the time of every packet and never depends on how long the machine has been up
//! or on scheduling. The agent never writes this map; the CLI reads it, so that the ages it
//! shows are on the same clock as the program's decisions.

use core::mem::size_of;

/// `Clock::flags`: time stands still at `offset_ns`.
pub const CLOCK_FROZEN: u32 = 1 << 0;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Clock {
    /// Added to the kernel's clock; with `CLOCK_FROZEN`, the time itself.
    pub offset_ns: u64,
    /// `CLOCK_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Clock>() == 16);

impl Clock {
    /// The production setting: the kernel's clock, unchanged.
    pub const KERNEL: Clock = Clock {
        offset_ns: 0,
        flags: 0,
        _pad: 0,
    };

    /// A clock that reads `at_ns` until it is set again.
    pub const fn frozen(at_ns: u64) -> Clock {
        Clock {
            offset_ns: at_ns,
            flags: CLOCK_FROZEN,
            _pad: 0,
        }
    }

    /// The kernel's clock moved forward by `offset_ns`.
    pub const fn offset(offset_ns: u64) -> Clock {
        Clock {
            offset_ns,
            flags: 0,
            _pad: 0,
        }
    }

    /// The data plane's time, given the kernel's monotonic clock reading `kernel_ns`.
    #[inline(always)]
    pub const fn now(&self, kernel_ns: u64) -> u64 {
        if self.flags & CLOCK_FROZEN != 0 {
            self.offset_ns
        } else {
            kernel_ns.wrapping_add(self.offset_ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_clock_offset_and_frozen() {
        assert_eq!(Clock::KERNEL.now(123), 123);
        assert_eq!(Clock::offset(1000).now(123), 1123);
        assert_eq!(Clock::frozen(7).now(123), 7);
        assert_eq!(Clock::frozen(7).now(999_999), 7);
    }
}
