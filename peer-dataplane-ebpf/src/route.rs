//! Route stage: one LPM trie keyed by (table, address) serves every route table and every
//! VPC's CIDR table (see `peer_dataplane_common::vpc_table`).

use crate::maps::ROUTES;
use aya_ebpf::maps::lpm_trie::Key;
use peer_dataplane_common::{RouteData, RouteValue, ROUTE_TABLE_BITS};

/// Longest-prefix match of `addr` in `table`. A reference, not a copy: the compiler
/// may read a copied `Option`'s payload before its tag, which the verifier refuses
/// when the lookup found nothing.
#[inline(always)]
pub fn lookup(table: u32, addr: &[u8; 16]) -> Option<&'static RouteValue> {
    let key = Key::new(
        ROUTE_TABLE_BITS + 128,
        RouteData {
            table_be: table.to_be_bytes(),
            addr: crate::words::copy(addr),
        },
    );
    ROUTES.get(&key)
}
