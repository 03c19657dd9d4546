//! Routes: one LPM trie keyed by (table, prefix). The key is the LPM key layout (a u32
//! prefix length followed by [`RouteData`]), 24 bytes in all; route tables and the per-VPC
//! CIDR tables share it, told apart by the table bits.

use crate::addr;
use core::mem::size_of;

/// Route-table ids below this value name real route tables; ids at or above it name the
/// per-VPC "CIDR table" (`VPC_TABLE_BASE | vpc_id`), which holds the VPC's own CIDRs and
/// answers "is this address inside VPC v?" with the same LPM lookup as routing.
pub const VPC_TABLE_BASE: u32 = 0x8000_0000;

#[inline(always)]
pub const fn vpc_table(vpc_id: u32) -> u32 {
    VPC_TABLE_BASE | vpc_id
}

/// Route tables are double-buffered in the trie: table id `t` lives under key `2t` or
/// `2t + 1` (its generation). A change to several routes of one table fills the other
/// generation, then flips the ports and endpoints that use the table (one atomic write
/// each), then clears the old one: no packet sees half of a table change (docs/datapath.md §3.8).
#[inline(always)]
pub const fn route_table_key(table_id: u32, generation: u32) -> u32 {
    (table_id << 1) | (generation & 1)
}

/// The route table id of a trie table key (see [`route_table_key`]).
#[inline(always)]
pub const fn route_table_id(key: u32) -> u32 {
    key >> 1
}

/// The generation of a trie table key (see [`route_table_key`]).
#[inline(always)]
pub const fn route_table_generation(key: u32) -> u32 {
    key & 1
}

/// Route table ids stay below this so that their keys stay below [`VPC_TABLE_BASE`].
pub const MAX_ROUTE_TABLE_ID: u32 = VPC_TABLE_BASE >> 1;

// (a u32 prefix length followed by `RouteData`), 24 bytes in all.

/// LPM key data: table id (big-endian, so that it is the most significant 32 bits of the
/// matched string) followed by a 128-bit address (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RouteData {
    pub table_be: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<RouteData>() == 20);

/// Bits of the LPM key taken by the table id.
pub const ROUTE_TABLE_BITS: u32 = 32;

pub const ROUTE_LOCAL: u32 = 1;
pub const ROUTE_PCX: u32 = 2;
pub const ROUTE_BLACKHOLE: u32 = 3;
/// Entry of a per-VPC CIDR table ([`vpc_table`]).
pub const ROUTE_VPC_CIDR: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteValue {
    /// `ROUTE_*`.
    pub kind: u32,
    /// Peering slot for `ROUTE_PCX`, VPC id for `ROUTE_VPC_CIDR`, else 0.
    pub target: u32,
}
const _: () = assert!(size_of::<RouteValue>() == 8);

/// Builds the LPM key (prefix length in bits, data) for `addr/prefix_len` in `table`.
/// `addr` is a 16-byte address from [`addr`]; `prefix_len` is in the address family's own
/// bits (0..=32 for IPv4, 0..=128 for IPv6). Host bits are cleared.
#[inline(always)]
pub fn route_key(table: u32, addr: &[u8; 16], prefix_len: u32, is_v4: bool) -> (u32, RouteData) {
    let addr_bits = if is_v4 {
        addr::V4_MAPPED_PREFIX_BITS + prefix_len
    } else {
        prefix_len
    };
    let data = RouteData {
        table_be: table.to_be_bytes(),
        addr: addr::mask(addr, addr_bits),
    };
    (ROUTE_TABLE_BITS + addr_bits, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr;

    #[test]
    fn table_keys_round_trip() {
        for (id, generation) in [(1, 0), (5, 1), (MAX_ROUTE_TABLE_ID - 1, 1)] {
            let key = route_table_key(id, generation);
            assert_eq!(
                (route_table_id(key), route_table_generation(key)),
                (id, generation)
            );
            assert!(key < VPC_TABLE_BASE);
        }
    }

    #[test]
    fn route_key_masks_host_bits_and_counts_table_bits() {
        let a = addr::from_v4([10, 1, 2, 3]);
        let (plen, data) = route_key(7, &a, 16, true);
        assert_eq!(plen, 32 + 96 + 16);
        assert_eq!(data.table_be, [0, 0, 0, 7]);
        assert_eq!(data.addr, addr::from_v4([10, 1, 0, 0]));

        let v6 = [0xfd, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let (plen, data) = route_key(vpc_table(3), &v6, 48, false);
        assert_eq!(plen, 32 + 48);
        assert_eq!(data.table_be, [0x80, 0, 0, 3]);
        assert_eq!(&data.addr[..6], &v6[..6]);
        assert!(data.addr[6..].iter().all(|b| *b == 0));
    }
}
