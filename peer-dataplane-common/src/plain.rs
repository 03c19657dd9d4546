//! [`Plain`]: the ABI types whose bytes are their value. The agent writes and reads the
//! stored maps as bytes through it (one generic path for every map), and with the `user`
//! feature the same list gets aya's `Pod`, for aya's typed maps.

use core::mem::size_of;

/// A type whose every bit pattern is a valid value and whose bytes hold no padding.
///
/// # Safety
/// Implement only for `#[repr(C)]` types made of integers and arrays of them, with no
/// implicit padding (each ABI type asserts its size next to its definition).
pub unsafe trait Plain: Copy + 'static {
    /// The value's bytes, as the kernel stores them.
    fn bytes(&self) -> &[u8] {
        // SAFETY: `Self` has no padding (the trait's contract), so every byte is initialised.
        unsafe { core::slice::from_raw_parts(self as *const Self as *const u8, size_of::<Self>()) }
    }

    /// The value whose bytes are `b`; `None` if `b` is not exactly its size.
    fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != size_of::<Self>() {
            return None;
        }
        // SAFETY: the length matches and every bit pattern is valid (the trait's contract).
        Some(unsafe { core::ptr::read_unaligned(b.as_ptr() as *const Self) })
    }
}

macro_rules! plain {
    ($($t:ty),* $(,)?) => {
        // SAFETY: each is #[repr(C)] (or an integer), made only of integers and byte
        // arrays, with no implicit padding (sizes are asserted where they are defined).
        $(unsafe impl Plain for $t {})*
        #[cfg(feature = "user")]
        mod pod {
            #[allow(unused_imports)]
            use super::*;
            // SAFETY: as for `Plain` above.
            $(unsafe impl aya::Pod for $t {})*
        }
    };
}

use crate::{acl, clock, conntrack, counters, flowcache, overlay, trace};
use crate::{Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteData, RouteValue};

plain!(
    Port,
    RouteData,
    RouteValue,
    Peering,
    EndpointKey,
    Endpoint,
    NameKey,
    Name,
    counters::GlobalCounters,
    counters::PeeringCounters,
    acl::AclBits,
    acl::AclMeta,
    acl::AclPortData,
    acl::AclProtoKey,
    acl::AclExactKey,
    conntrack::CtKey,
    conntrack::CtEntry,
    flowcache::FlowKey,
    flowcache::FlowEntry,
    flowcache::FlowSlot,
    flowcache::FlowCounters,
    trace::TraceRecord,
    clock::Clock,
    overlay::OverlayConfig,
    overlay::OverlayIdKey,
    overlay::HostKey,
);

// SAFETY: integers; aya has its own `Pod` for them.
unsafe impl Plain for u32 {}
unsafe impl Plain for u64 {}
