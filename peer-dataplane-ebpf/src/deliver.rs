//! Deliver stage: redirect to the destination's local port through the devmap.
//! (Encapsulation toward a remote host is a later stage; endpoints are local for now.)

use crate::maps::{DEVMAP, ENDPOINTS};
use peer_dataplane_common::{DropReason, Endpoint, EndpointKey};

#[inline(always)]
pub fn redirect(ep: &Endpoint) -> Result<u32, DropReason> {
    DEVMAP
        .redirect(ep.ifindex, 0)
        .map_err(|_| DropReason::RedirectFailed)
}

/// Where the instance with `addr` in `vpc` lives.
#[inline(always)]
pub fn endpoint(vpc: u32, addr: &[u8; 16]) -> Option<&'static Endpoint> {
    let key = EndpointKey {
        vpc,
        addr: crate::words::copy(addr),
    };
    // SAFETY: not preallocated: the entry stays whole while we read it (see `port`).
    unsafe { ENDPOINTS.get(&key) }
}
