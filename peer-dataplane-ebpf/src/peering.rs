//! Peering stage (docs/datapath.md §3.1, §3.3, §3.5): the route's peering must be active and must join
//! the sender's VPC; the packet must have originated in the sender's VPC; the destination
//! must lie inside the peer VPC.

use crate::{
    counters::{Outcome, NO_PEERING},
    maps::PEERINGS,
    parse::Packet,
    route, trace,
};
use peer_dataplane_common::{
    addr,
    cap::CapConfig,
    peering_counter_index,
    trace::{NO_ROUTE, STAGE_PEERING},
    vpc_table, DropReason, Port, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER, PCX_ACTIVE,
    PORT_HAS_IPV4, PORT_HAS_IPV6, ROUTE_VPC_CIDR,
};

/// A packet about to cross peering `slot`.
pub struct Crossing {
    pub slot: u32,
    pub peer_vpc: u32,
    /// Index of this peering-and-direction in the per-peering counters (and caps).
    pub ctr: u32,
    /// Bandwidth cap of this direction.
    pub cap: CapConfig,
    /// The peering's fleet-wide number (the Geneve option carries it).
    pub tunnel_key: u32,
}

/// Resolves the peering a route (or a tunnel key) points at; a drop is counted under the
/// peering and direction once they are known.
#[inline(always)]
pub fn resolve<const T: bool>(slot: u32, src_vpc: u32) -> Result<Crossing, Outcome> {
    trace::note::<T>(|r| {
        r.reached |= STAGE_PEERING;
        r.peering_slot = slot;
        // Until found: not installed, and (then) not joining the sender's VPC.
        r.peering_status = NO_ROUTE;
        r.peering_dir = NO_ROUTE;
    });
    // SAFETY: not preallocated: the entry stays whole while we read it (see `port`).
    let Some(pcx) = (unsafe { PEERINGS.get(&slot) }) else {
        // A route may name a peering whose entry is gone: a blackhole, never a forward.
        return Err(Outcome::drop(DropReason::PeeringInactive, NO_PEERING));
    };
    trace::note::<T>(|r| r.peering_status = pcx.status);
    let (dir, peer_vpc) = if pcx.requester_vpc == src_vpc {
        (DIR_REQUESTER_TO_ACCEPTER, pcx.accepter_vpc)
    } else if pcx.accepter_vpc == src_vpc {
        (DIR_ACCEPTER_TO_REQUESTER, pcx.requester_vpc)
    } else {
        return Err(Outcome::drop(DropReason::PeeringMismatch, NO_PEERING));
    };
    trace::note::<T>(|r| {
        r.peering_dir = dir;
        r.peer_vpc = peer_vpc;
    });
    let ctr = peering_counter_index(slot, dir);
    if pcx.status != PCX_ACTIVE {
        return Err(Outcome::drop(DropReason::PeeringInactive, ctr));
    }
    Ok(Crossing {
        slot,
        peer_vpc,
        ctr,
        cap: pcx.cap[(dir & 1) as usize],
        tunnel_key: pcx.tunnel_key,
    })
}

/// True if `addr` lies inside one of `vpc`'s CIDRs.
#[inline(always)]
pub fn inside_vpc(vpc: u32, addr: &[u8; 16]) -> bool {
    matches!(route::lookup(vpc_table(vpc), addr), Some(r) if r.kind == ROUTE_VPC_CIDR)
}

/// No transitive peering, no edge-to-edge routing (docs/datapath.md §3.3): a packet may leave over a
/// peering only if it originated in the sender's VPC. Its own address is the fast path;
/// anything else (an instance routing for others) must at least be inside the VPC.
/// An IPv6 packet claiming an IPv4-mapped source did not originate anywhere real (and
/// would otherwise match the VPC's IPv4 CIDRs).
#[inline(always)]
pub fn originated_in(port: &Port, p: &Packet) -> bool {
    if p.is_v4 {
        (port.flags & PORT_HAS_IPV4 != 0 && port.ipv4 == p.src) || inside_vpc(port.vpc, &p.src)
    } else if addr::is_v4_mapped(&p.src) {
        false
    } else {
        (port.flags & PORT_HAS_IPV6 != 0 && port.ipv6 == p.src) || inside_vpc(port.vpc, &p.src)
    }
}
