//! Peerings: slot -> connection, and the dense per-direction counter index.

use crate::cap;
use core::mem::size_of;

pub const PCX_PENDING_ACCEPTANCE: u32 = 1;
pub const PCX_ACTIVE: u32 = 2;
pub const PCX_REJECTED: u32 = 3;
pub const PCX_EXPIRED: u32 = 4;
pub const PCX_FAILED: u32 = 5;
pub const PCX_DELETED: u32 = 6;

pub fn pcx_status_str(status: u32) -> &'static str {
    match status {
        PCX_PENDING_ACCEPTANCE => "pending-acceptance",
        PCX_ACTIVE => "active",
        PCX_REJECTED => "rejected",
        PCX_EXPIRED => "expired",
        PCX_FAILED => "failed",
        PCX_DELETED => "deleted",
        _ => "unknown",
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peering {
    /// `PCX_*`.
    pub status: u32,
    pub requester_vpc: u32,
    pub accepter_vpc: u32,
    pub flags: u32,
    /// Bandwidth cap per direction, indexed by `DIR_*`. Across hosts, each sending host's
    /// share of the peering's cap.
    pub cap: [cap::CapConfig; 2],
    /// The fleet-wide number of the peering, carried in the Geneve option (0 on a single
    /// host).
    pub tunnel_key: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Peering>() == 56);

/// Direction of traffic over a peering, as seen from the requester.
pub const DIR_REQUESTER_TO_ACCEPTER: u32 = 0;
pub const DIR_ACCEPTER_TO_REQUESTER: u32 = 1;
/// The one spelling of each direction, indexed by `DIR_*`: in tables, JSON values, trace
/// facts and metric labels alike.
pub const DIRECTIONS: [&str; 2] = ["requester_to_accepter", "accepter_to_requester"];

/// Index into the per-peering counter array.
#[inline(always)]
pub const fn peering_counter_index(slot: u32, dir: u32) -> u32 {
    slot * 2 + dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_PEERINGS;

    #[test]
    fn counter_index_is_dense() {
        assert_eq!(peering_counter_index(0, DIR_REQUESTER_TO_ACCEPTER), 0);
        assert_eq!(peering_counter_index(0, DIR_ACCEPTER_TO_REQUESTER), 1);
        assert_eq!(
            peering_counter_index(MAX_PEERINGS - 1, 1),
            MAX_PEERINGS * 2 - 1
        );
    }
}
