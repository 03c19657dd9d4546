//! The forwarding pipeline (SPEC §4.1), stage by stage.
//!
//! Order, and why it departs from SPEC §4.1 in two places:
//! port → parse → route → peering → transitive → egress NACL → endpoint → return route →
//! ingress NACL → security groups (both ports, with conntrack) → TTL → deliver target →
//! cap → rewrite.
//! - Both ports' security groups are checked together, once the receiver is known (the
//!   conntrack key names both VPCs) and every stateless check has passed, so that a flow
//!   is tracked only once its packet is allowed end to end.
//! - The cap comes last, so that only packets about to be forwarded spend tokens: traffic
//!   denied further down must not starve allowed traffic of the peering's bandwidth.

use crate::{
    acl, cap,
    counters::{Outcome, Seen, NO_PEERING},
    deliver,
    maps::PKT_SCRATCH,
    parse::{self, Packet},
    peering, port, rewrite, route, sg,
};
use aya_ebpf::programs::XdpContext;
use peer_dataplane_common::{DropReason, PassReason, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> (Outcome, Seen) {
    let mut seen = Seen {
        fragment: false,
        ipv4_options: false,
    };
    // Both arms carry the same struct: a stage's drop is just an early outcome.
    let outcome = match try_run(ctx, &mut seen) {
        Ok(o) | Err(o) => o,
    };
    (outcome, seen)
}

#[inline(always)]
fn try_run(ctx: &XdpContext, seen: &mut Seen) -> Result<Outcome, Outcome> {
    // Source port: frames from interfaces we do not serve (an uplink, say) are untouched.
    let Some(port) = port::lookup(ctx.ingress_ifindex() as u32) else {
        return Ok(Outcome::pass(PassReason::UnknownPort));
    };

    let Some(scratch) = PKT_SCRATCH.get_ptr_mut(0) else {
        return Err(DropReason::ParseError.into());
    };
    // SAFETY: this CPU's slot, used by nothing else while this packet runs.
    let p = unsafe { &mut *scratch };
    if !parse::parse(ctx, p)? {
        return Ok(Outcome::pass(PassReason::NotIp));
    }
    let p: &Packet = p;
    seen.fragment = p.fragment;
    seen.ipv4_options = p.ipv4_options;
    if parse::not_routable(p) {
        return Ok(Outcome::pass(PassReason::NotRoutable));
    }

    // Route lookup in the sender subnet's table.
    let Some(route) = route::lookup(port.route_table, &p.dst) else {
        return Err(DropReason::NoRoute.into());
    };
    let slot = match route.kind {
        ROUTE_PCX => route.target,
        ROUTE_LOCAL => return Ok(Outcome::pass(PassReason::LocalRoute)),
        ROUTE_BLACKHOLE => return Err(DropReason::Blackhole.into()),
        _ => return Err(DropReason::NoRoute.into()),
    };

    // Peering checks.
    let x = peering::resolve(slot, port.vpc)
        .map_err(|(reason, ctr)| Outcome::drop(reason, ctr.unwrap_or(NO_PEERING)))?;
    let drop = |reason: DropReason| Outcome::drop(reason, x.ctr);
    if !peering::originated_in(port, p) {
        return Err(drop(DropReason::Transitive));
    }
    // Egress network ACL of the sender's subnet (checked once the packet is known to be
    // peering traffic, so that its drops count under the peering).
    acl::check(port.acl, &p.dst, p).map_err(drop)?;
    let Some(ep) = deliver::endpoint(x.peer_vpc, &p.dst) else {
        let reason = if peering::inside_vpc(x.peer_vpc, &p.dst) {
            DropReason::NoEndpoint
        } else {
            DropReason::OutsidePeer
        };
        return Err(drop(reason));
    };

    // Receiver side: a route back to the source through the same peering.
    match route::lookup(ep.route_table, &p.src) {
        Some(r) if r.kind == ROUTE_PCX && r.target == x.slot => {}
        _ => return Err(drop(DropReason::NoReturnRoute)),
    }

    // Ingress network ACL of the receiver's subnet.
    acl::check(ep.acl, &p.src, p).map_err(drop)?;

    // Security groups of both ports, stateful.
    sg::check(port.sg, ep.sg, port.vpc, x.peer_vpc, p).map_err(drop)?;

    if p.ttl <= 1 {
        return Err(drop(DropReason::TtlExceeded));
    }
    // bpf_redirect_map only records the target (transmission happens after we return),
    // so resolve it first: a missing devmap entry then drops the frame untouched.
    let action = deliver::redirect(ep).map_err(drop)?;

    // Bandwidth cap of the peering in this direction.
    if x.cap.is_capped() {
        let len = (ctx.data_end() - ctx.data()) as u64;
        cap::police(&x.cap, x.ctr, len).map_err(drop)?;
    }
    rewrite::decrement_ttl(ctx, p).map_err(drop)?;
    rewrite::macs_and_vlan(ctx, p, ep).map_err(drop)?;
    Ok(Outcome::redirect(action, x.ctr))
}
