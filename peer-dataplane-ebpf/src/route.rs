//! Route stage: one LPM trie keyed by (table, address) serves every route table and every
//! VPC's CIDR table (see `peer_dataplane_common::vpc_table`).

use crate::maps::ROUTES;
use aya_ebpf::maps::lpm_trie::Key;
use peer_dataplane_common::{RouteData, RouteValue, ROUTE_TABLE_BITS};

/// Longest-prefix match of `addr` in `table`.
#[inline(always)]
pub fn lookup(table: u32, addr: &[u8; 16]) -> Option<RouteValue> {
    let key = Key::new(
        ROUTE_TABLE_BITS + 128,
        RouteData {
            table_be: table.to_be_bytes(),
            addr: *addr,
        },
    );
    ROUTES.get(&key).copied()
}
