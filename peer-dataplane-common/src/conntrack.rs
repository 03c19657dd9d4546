//! Connection tracking for security groups (docs/datapath.md §4.12): one LRU hash of
//! flows, keyed by the flow as its first packet saw it. A packet that matches an entry
//! (either way round) belongs to an allowed flow and skips the security-group rules of
//! both ports; that is what makes the groups stateful, and why changing a group leaves
//! tracked flows alone, as the cloud does.

use core::mem::size_of;

/// Flows tracked at once; the least recently used is evicted beyond this.
pub const MAX_CT_ENTRIES: u32 = 262_144;

/// A flow, as its first packet saw it. Addresses are VPC-private, so the key carries the
/// VPC on each side: equal addresses in unrelated VPCs never share an entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CtKey {
    pub src_vpc: u32,
    pub dst_vpc: u32,
    /// IPv4 in mapped form.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// TCP/UDP ports; for ICMP echo the identifier in `sport` and 0 in `dport`; 0 and 0
    /// for other protocols.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<CtKey>() == 48);

impl CtKey {
    /// The key a reply of this flow carries.
    #[inline(always)]
    pub fn reversed(&self) -> CtKey {
        CtKey {
            src_vpc: self.dst_vpc,
            dst_vpc: self.src_vpc,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// A reply has been seen.
pub const CT_REPLIED: u32 = 1 << 0;
/// TCP: a FIN has been seen (either way).
pub const CT_FIN: u32 = 1 << 1;
/// TCP: a RST has been seen.
pub const CT_RST: u32 = 1 << 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// The data plane's clock (`clock`: CLOCK_MONOTONIC_COARSE) at creation and at the
    /// last packet.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Packets in the original and the reply direction. Plain adds from several CPUs:
    /// approximate under concurrency, for display only.
    pub packets: [u64; 2],
    /// `CT_*` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CtEntry>() == 40);

pub const SECOND_NS: u64 = 1_000_000_000;

/// Idle timeouts, like the cloud's: an established TCP connection is kept five days,
/// UDP 30 s, anything else (ICMP echo included) 600 s. TCP before a reply, after a FIN,
/// and after a RST is kept shorter.
pub const CT_TCP_ESTABLISHED_NS: u64 = 432_000 * SECOND_NS;
pub const CT_TCP_OPENING_NS: u64 = 60 * SECOND_NS;
pub const CT_TCP_CLOSING_NS: u64 = 120 * SECOND_NS;
pub const CT_TCP_RESET_NS: u64 = 10 * SECOND_NS;
pub const CT_UDP_NS: u64 = 30 * SECOND_NS;
pub const CT_OTHER_NS: u64 = 600 * SECOND_NS;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// How long entry `flags` of protocol `proto` may stay idle.
#[inline(always)]
pub const fn idle_timeout_ns(proto: u8, flags: u32) -> u64 {
    match proto {
        IPPROTO_TCP => {
            if flags & CT_RST != 0 {
                CT_TCP_RESET_NS
            } else if flags & CT_FIN != 0 {
                CT_TCP_CLOSING_NS
            } else if flags & CT_REPLIED != 0 {
                CT_TCP_ESTABLISHED_NS
            } else {
                CT_TCP_OPENING_NS
            }
        }
        IPPROTO_UDP => CT_UDP_NS,
        _ => CT_OTHER_NS,
    }
}

/// True once an entry last seen at `last_seen_ns` has been idle too long at `now_ns`.
#[inline(always)]
pub const fn expired(proto: u8, flags: u32, last_seen_ns: u64, now_ns: u64) -> bool {
    now_ns > last_seen_ns && now_ns - last_seen_ns > idle_timeout_ns(proto, flags)
}

/// The state name the CLI shows.
pub fn state_str(proto: u8, flags: u32) -> &'static str {
    match proto {
        IPPROTO_TCP if flags & CT_RST != 0 => "reset",
        IPPROTO_TCP if flags & CT_FIN != 0 => "closing",
        IPPROTO_TCP if flags & CT_REPLIED != 0 => "established",
        IPPROTO_TCP => "opening",
        _ if flags & CT_REPLIED != 0 => "replied",
        _ => "new",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_follow_the_protocol_and_state() {
        assert_eq!(idle_timeout_ns(IPPROTO_UDP, 0), 30 * SECOND_NS);
        assert_eq!(idle_timeout_ns(1, CT_REPLIED), 600 * SECOND_NS);
        assert_eq!(idle_timeout_ns(IPPROTO_TCP, 0), CT_TCP_OPENING_NS);
        assert_eq!(
            idle_timeout_ns(IPPROTO_TCP, CT_REPLIED),
            432_000 * SECOND_NS
        );
        assert_eq!(
            idle_timeout_ns(IPPROTO_TCP, CT_REPLIED | CT_FIN),
            CT_TCP_CLOSING_NS
        );
        assert_eq!(
            idle_timeout_ns(IPPROTO_TCP, CT_REPLIED | CT_FIN | CT_RST),
            CT_TCP_RESET_NS
        );
        assert!(!expired(IPPROTO_UDP, 0, 100, 100 + CT_UDP_NS));
        assert!(expired(IPPROTO_UDP, 0, 100, 101 + CT_UDP_NS));
        // A clock read on another CPU may trail the entry's stamp: never "expired".
        assert!(!expired(IPPROTO_UDP, 0, 100, 50));
    }

    #[test]
    fn reversed_swaps_both_sides() {
        let k = CtKey {
            src_vpc: 1,
            dst_vpc: 2,
            src: [1; 16],
            dst: [2; 16],
            sport: 1000,
            dport: 53,
            proto: IPPROTO_UDP,
            _pad: [0; 3],
        };
        let r = k.reversed();
        assert_eq!((r.src_vpc, r.dst_vpc, r.sport, r.dport), (2, 1, 53, 1000));
        assert_eq!((r.src, r.dst), ([2; 16], [1; 16]));
        assert_eq!(r.reversed(), k);
    }
}
