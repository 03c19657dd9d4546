//! Network ACL maps . Each ACL direction, in one generation, is a *set* with a
//! 32-bit id ([`acl_set`]); its rules are compiled by the agent into rule bitmaps looked
//! up by address (LPM), destination port (LPM) and protocol (hash). The program ANDs the
//! three and takes the lowest set bit: the first matching rule. See the agent's `acl`
//! module for why this equals rule-by-rule evaluation.

use core::mem::size_of;

/// Rules per ACL direction (bits of a bitmap).
pub const ACL_MAX_RULES: usize = 1024;
pub const ACL_WORDS: usize = ACL_MAX_RULES / 64;

/// Per-rule hit counters, shared by all ACL sets (each set has a base offset).
pub const ACL_HIT_SLOTS: u32 = 16384;
/// `hit_base` of a set without per-rule hit counters (security-group sets: their rules
/// only ever allow, and the union of several groups has no single deciding rule).
pub const NO_HITS: u32 = u32::MAX;
pub const MAX_ACL_SETS: u32 = 4096;
/// ACL ids (`MAX_ACL_SETS / 4` of them) are split between network ACLs, below this, and
/// security-group combinations, from here up.
pub const FIRST_SG_SET_ID: u32 = MAX_ACL_SETS / 8;

/// `0` in a port's or endpoint's ACL field: the subnet has no network ACL (allow all).
pub const NO_ACL: u32 = 0;

#[inline(always)]
pub const fn acl_set(acl_id: u32, generation: u32, egress: bool) -> u32 {
    (acl_id << 2) | ((generation & 1) << 1) | (egress as u32)
}

/// The ACL (network ACL or security-group combination) id of set `set`.
#[inline(always)]
pub const fn acl_set_id(set: u32) -> u32 {
    set >> 2
}

/// The generation of set `set`.
#[inline(always)]
pub const fn acl_set_generation(set: u32) -> u32 {
    (set >> 1) & 1
}

/// Whether set `set` holds egress rules (else ingress).
#[inline(always)]
pub const fn acl_set_is_egress(set: u32) -> bool {
    set & 1 == 1
}

/// The set of an address-trie table field (see [`acl_addr_table`]).
#[inline(always)]
pub const fn acl_addr_table_set(table: u32) -> u32 {
    table >> 1
}

/// The table field of an address-trie key: the set, and the address family, so that
/// IPv4 and IPv6 rules (`0.0.0.0/0`, `::/0`) never cover each other's packets.
#[inline(always)]
pub const fn acl_addr_table(set: u32, is_v6: bool) -> u32 {
    (set << 1) | (is_v6 as u32)
}

/// The egress set of the ACL whose ingress set is `ingress_set`, and vice versa.
#[inline(always)]
pub const fn acl_egress(set: u32) -> u32 {
    set | 1
}

/// A rule bitmap, with a summary word (bit `i` set when word `i` is not zero) so that the
/// program visits only the words that can hold a common bit, not all sixteen.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclBits {
    pub summary: u64,
    pub w: [u64; ACL_WORDS],
}
const _: () = assert!(size_of::<AclBits>() == 136);

impl AclBits {
    pub const ZERO: AclBits = AclBits {
        summary: 0,
        w: [0; ACL_WORDS],
    };

    /// The bitmap of `w`, with its summary.
    pub fn new(w: [u64; ACL_WORDS]) -> AclBits {
        let mut summary = 0;
        let mut i = 0;
        while i < ACL_WORDS {
            if w[i] != 0 {
                summary |= 1 << i;
            }
            i += 1;
        }
        AclBits { summary, w }
    }
}

/// Per set: which rules allow, which match any protocol, which match packets without a
/// port, and where its hit counters start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclMeta {
    pub allow: AclBits,
    pub any_protocol: AclBits,
    pub portless: AclBits,
    pub hit_base: u32,
    pub rules: u32,
}
const _: () = assert!(size_of::<AclMeta>() == 3 * 136 + 8);

/// LPM key data of the port trie: the set, then the destination port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AclPortData {
    pub set_be: [u8; 4],
    pub port_be: [u8; 2],
}
const _: () = assert!(size_of::<AclPortData>() == 6);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AclProtoKey {
    pub set: u32,
    pub protocol: u32,
}
const _: () = assert!(size_of::<AclProtoKey>() == 8);

/// Key of the exact-match map, consulted before the tries: an address that is a host
/// prefix of a set (/32, /128) or a port that is an exact prefix (a single port). A
/// host entry is the longest match any trie lookup could give for that address, so
/// finding it there first changes no answer, while keeping the many single-address and
/// single-port rules out of the tries keeps their lookups shallow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AclExactKey {
    /// [`EXACT_HOST`] or [`EXACT_PORT`].
    pub kind: u32,
    /// [`acl_addr_table`] for a host, the set for a port.
    pub table: u32,
    /// The address, or the port (big-endian) in the first two bytes.
    pub value: [u8; 16],
}
const _: () = assert!(size_of::<AclExactKey>() == 24);

pub const EXACT_HOST: u32 = 0;
pub const EXACT_PORT: u32 = 1;

impl AclExactKey {
    #[inline(always)]
    pub fn host(table: u32, addr: [u8; 16]) -> AclExactKey {
        AclExactKey {
            kind: EXACT_HOST,
            table,
            value: addr,
        }
    }

    #[inline(always)]
    pub fn port(set: u32, port: u16) -> AclExactKey {
        // The big-endian port, then zeros: as one 128-bit number, which the XDP
        // program's compiler stores as words (zeroing bytes one by one calls a loop).
        let value = (u16::from_ne_bytes(port.to_be_bytes()) as u128).to_ne_bytes();
        AclExactKey {
            kind: EXACT_PORT,
            table: set,
            value,
        }
    }
}

/// Lowest set bit of `a & b & c`, if any (the deciding rule). Only words whose summary
/// bit is set in all three are read.
#[inline(always)]
pub fn first_match(a: &AclBits, b: &AclBits, c: &AclBits) -> Option<u32> {
    let mut candidates = a.summary & b.summary & c.summary;
    let mut n = 0;
    while candidates != 0 && n < ACL_WORDS {
        // The mask keeps the index provably in bounds for the verifier.
        let i = (candidates.trailing_zeros() as usize) & (ACL_WORDS - 1);
        let w = a.w[i] & b.w[i] & c.w[i];
        if w != 0 {
            return Some((i * 64) as u32 + w.trailing_zeros());
        }
        candidates &= candidates - 1;
        n += 1;
    }
    None
}

#[inline(always)]
pub fn bit_set(b: &AclBits, bit: u32) -> bool {
    let i = (bit / 64) as usize;
    i < ACL_WORDS && b.w[i] & (1u64 << (bit % 64)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keys_round_trip() {
        for (id, generation, egress) in [(1, 0, false), (7, 1, true), (1023, 1, false)] {
            let set = acl_set(id, generation, egress);
            assert_eq!(acl_set_id(set), id);
            assert_eq!(acl_set_generation(set), generation);
            assert_eq!(acl_set_is_egress(set), egress);
            assert_eq!(acl_addr_table_set(acl_addr_table(set, true)), set);
            assert_eq!(acl_addr_table_set(acl_addr_table(set, false)), set);
        }
    }

    #[test]
    fn first_match_is_the_lowest_common_bit() {
        let mut a = AclBits::ZERO;
        let mut b = AclBits::ZERO;
        let mut c = AclBits::ZERO;
        for x in [&mut a, &mut b, &mut c] {
            x.w[3] = 1 << 5 | 1 << 9;
            x.w[15] = 1 << 63;
            *x = AclBits::new(x.w);
        }
        b.w[3] &= !(1 << 5);
        b = AclBits::new(b.w);
        assert_eq!(first_match(&a, &b, &c), Some(3 * 64 + 9));
        c.w[3] = 0;
        c = AclBits::new(c.w);
        assert_eq!(c.summary, 1 << 15);
        assert_eq!(first_match(&a, &b, &c), Some(1023));
        // Words that overlap in the summary but share no bit are passed over.
        a.w[7] = 1;
        b.w[7] = 2;
        c.w[7] = 3;
        let (a, b, c) = (AclBits::new(a.w), AclBits::new(b.w), AclBits::new(c.w));
        assert_eq!(first_match(&a, &b, &c), Some(1023));
        assert_eq!(first_match(&a, &AclBits::ZERO, &c), None);
        assert!(bit_set(&a, 1023) && !bit_set(&a, 1022) && !bit_set(&a, 5000));
    }

    #[test]
    fn sets_pair_up_by_direction_and_generation() {
        assert_eq!(acl_set(5, 0, false), 20);
        assert_eq!(acl_set(5, 0, true), 21);
        assert_eq!(acl_set(5, 1, false), 22);
        assert_eq!(acl_egress(acl_set(5, 1, false)), acl_set(5, 1, true));
        assert_ne!(acl_set(1, 0, false), NO_ACL);
    }
}
