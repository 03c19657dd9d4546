//! Latency histograms, for per-peering latency measured in passing: log-linear
//! buckets, four per power of two from 1.024 µs to 34.4 s, so that every bucket is at most
//! a quarter of its lower bound wide and the bucket of a value is a few shifts and no loop
//! (the data plane computes it per sample; userspace turns buckets into percentiles and
//! Prometheus `le` bounds).

/// Values below 2^`FIRST_POWER` ns fall in bucket 0.
pub const FIRST_POWER: u32 = 10;
/// Values from 2^`LAST_POWER` ns on fall in the last bucket.
pub const LAST_POWER: u32 = 35;
/// Sub-buckets per power of two: 2^`SUB_BITS`.
pub const SUB_BITS: u32 = 2;
/// Bucket 0 (under 1.024 µs), the log-linear ones, and the last (34.4 s and over).
pub const BUCKETS: u32 = 2 + (LAST_POWER - FIRST_POWER) * (1 << SUB_BITS);

/// The bucket of a latency of `ns` nanoseconds.
#[inline(always)]
pub fn bucket_of(ns: u64) -> u32 {
    if ns < 1 << FIRST_POWER {
        return 0;
    }
    if ns >= 1 << LAST_POWER {
        return BUCKETS - 1;
    }
    let power = 63 - ns.leading_zeros();
    let sub = ((ns >> (power - SUB_BITS)) & ((1 << SUB_BITS) - 1)) as u32;
    1 + ((power - FIRST_POWER) << SUB_BITS) + sub
}

/// The values bucket `b` holds: `lower..upper` ns (`upper` `u64::MAX` for the last).
pub const fn bucket_bounds(b: u32) -> (u64, u64) {
    if b == 0 {
        return (0, 1 << FIRST_POWER);
    }
    if b >= BUCKETS - 1 {
        return (1 << LAST_POWER, u64::MAX);
    }
    let power = FIRST_POWER + ((b - 1) >> SUB_BITS);
    let sub = ((b - 1) & ((1 << SUB_BITS) - 1)) as u64;
    let step = 1u64 << (power - SUB_BITS);
    let lower = (1u64 << power) + sub * step;
    (lower, lower + step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_holds_exactly_its_bounds() {
        assert_eq!(BUCKETS, 102);
        let mut previous_upper = 0;
        for b in 0..BUCKETS {
            let (lower, upper) = bucket_bounds(b);
            assert_eq!(
                lower,
                previous_upper,
                "bucket {b} starts where {} ends",
                b.max(1) - 1
            );
            assert_eq!(bucket_of(lower), b, "lower bound of bucket {b}");
            if upper != u64::MAX {
                assert_eq!(bucket_of(upper - 1), b, "last value of bucket {b}");
            }
            previous_upper = upper;
        }
        assert_eq!(previous_upper, u64::MAX);
    }

    #[test]
    fn a_bucket_is_at_most_a_quarter_of_its_lower_bound_wide() {
        for b in 1..BUCKETS - 1 {
            let (lower, upper) = bucket_bounds(b);
            assert!((upper - lower) * 4 <= lower, "bucket {b}: {lower}..{upper}");
        }
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_024), 1);
        assert_eq!(bucket_of(30_000_000_000), BUCKETS - 3);
        assert_eq!(bucket_of(31_000_000_000), BUCKETS - 2);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn buckets_grow_with_the_value() {
        let mut last = 0;
        let mut ns = 1u64;
        while ns < 1 << 40 {
            let b = bucket_of(ns);
            assert!(b >= last, "{ns} ns fell in bucket {b}, below {last}");
            last = b;
            ns += ns / 7 + 1;
        }
    }
}
