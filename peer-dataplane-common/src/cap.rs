//! Bandwidth caps per peering and direction (docs/datapath.md §4.15): a token bucket kept as
//! a *theoretical arrival time* (GCRA). The bucket's state is one u64 per peering and
//! direction, shared by every CPU: the time at which the bucket would be full again,
//! `tat`. A packet costing `cost` ns of link time conforms if, after paying,
//! `tat` stays within `burst_ns` of now, i.e. the bucket (depth: the burst) held enough
//! tokens for it. Idle time refills the bucket because `tat` is never moved below now.
//!
//! The rate and burst travel in the peering's map entry, converted once by the agent into
//! picoseconds per byte so the program never divides.

use core::mem::size_of;

/// One direction's cap; `ps_per_byte == 0` means uncapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CapConfig {
    /// Link time one byte costs at the capped rate, in picoseconds (8e12 / bits per second).
    pub ps_per_byte: u64,
    /// Bucket depth as link time: the burst in bytes times the cost of a byte, in ns.
    pub burst_ns: u64,
}
const _: () = assert!(size_of::<CapConfig>() == 16);

pub const UNCAPPED: CapConfig = CapConfig {
    ps_per_byte: 0,
    burst_ns: 0,
};

/// Cross-region peerings without an explicit cap get this (docs/datapath.md §3.7, §4.15).
pub const CROSS_REGION_DEFAULT_BPS: u64 = 1_000_000_000;

/// Default bucket depth: 10 ms at the rate, and never less than 64 KiB, so that a burst
/// of full-size frames from one flow is not clipped at low rates. At least one timer
/// tick at 100 Hz, the slowest: the data plane's clock moves a tick at a time (`clock`),
/// and a bucket that holds a tick's worth still passes the full rate.
pub const fn default_burst_bytes(bits_per_second: u64) -> u64 {
    let ten_ms = bits_per_second / 8 / 100;
    if ten_ms > 65536 {
        ten_ms
    } else {
        65536
    }
}

impl CapConfig {
    /// The cap for `bits_per_second` (at least 1) with a bucket of `burst_bytes`.
    pub const fn new(bits_per_second: u64, burst_bytes: u64) -> CapConfig {
        let bps = if bits_per_second == 0 {
            1
        } else {
            bits_per_second
        };
        let ps_per_byte = 8_000_000_000_000 / bps;
        // Rates above 8 Tbit/s would round to 0 (uncapped); keep them capped.
        let ps_per_byte = if ps_per_byte == 0 { 1 } else { ps_per_byte };
        CapConfig {
            ps_per_byte,
            burst_ns: burst_bytes.saturating_mul(ps_per_byte) / 1000,
        }
    }

    pub const fn is_capped(&self) -> bool {
        self.ps_per_byte != 0
    }

    /// Link time of a `len`-byte frame in ns, rounded up (the cap errs strict by < 1 ns
    /// per packet).
    #[inline(always)]
    pub const fn cost_ns(&self, len: u64) -> u64 {
        (len * self.ps_per_byte).div_ceil(1000)
    }

    /// Bits per second this cap stands for (rounded; for display).
    pub const fn bits_per_second(&self) -> u64 {
        if self.ps_per_byte == 0 {
            0
        } else {
            8_000_000_000_000 / self.ps_per_byte
        }
    }

    pub const fn burst_bytes(&self) -> u64 {
        if self.ps_per_byte == 0 {
            0
        } else {
            self.burst_ns * 1000 / self.ps_per_byte
        }
    }
}

/// The GCRA step on one bucket, without concurrency: `Some(new tat)` if a packet costing
/// `cost_ns` conforms at `now_ns`, `None` if it is over the cap (and `tat` stays).
#[inline(always)]
pub const fn conform(tat: u64, now_ns: u64, cost_ns: u64, burst_ns: u64) -> Option<u64> {
    let base = if tat > now_ns { tat } else { now_ns };
    let new = base + cost_ns;
    if new - now_ns <= burst_ns {
        Some(new)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_convert_to_costs() {
        let c = CapConfig::new(100_000_000, 125_000); // 100 Mbit/s, 125 kB
        assert_eq!(c.ps_per_byte, 80_000);
        assert_eq!(c.cost_ns(1500), 120_000);
        assert_eq!(c.burst_ns, 10_000_000);
        assert_eq!(c.bits_per_second(), 100_000_000);
        assert_eq!(c.burst_bytes(), 125_000);
        let fast = CapConfig::new(100_000_000_000, 65536); // 100 Gbit/s: 80 ps/byte
        assert_eq!(fast.cost_ns(64), 6); // 5.12 ns rounded up
        assert!(!UNCAPPED.is_capped());
        assert_eq!(default_burst_bytes(1_000_000), 65536);
        assert_eq!(default_burst_bytes(1_000_000_000), 1_250_000);
    }

    #[test]
    fn gcra_passes_the_burst_then_the_rate() {
        // 1 byte per µs, bucket of 3000 bytes, 1000-byte packets.
        let c = CapConfig {
            ps_per_byte: 1_000_000,
            burst_ns: 3_000_000,
        };
        let cost = c.cost_ns(1000);
        let now = 1_000_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            tat = conform(tat, now, cost, c.burst_ns).expect("inside the burst");
        }
        assert_eq!(conform(tat, now, cost, c.burst_ns), None);
        // 1 ms later one packet's worth has refilled, and only one.
        let later = now + 1_000_000;
        tat = conform(tat, later, cost, c.burst_ns).expect("refilled");
        assert_eq!(conform(tat, later, cost, c.burst_ns), None);
        // After a long idle spell the bucket is full again, never fuller.
        let idle = later + 1_000_000_000;
        let mut n = 0;
        while let Some(t) = conform(tat, idle, cost, c.burst_ns) {
            tat = t;
            n += 1;
        }
        assert_eq!(n, 3);
    }
}
