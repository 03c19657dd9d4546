//! The forwarding pipeline (docs/datapath.md §4.1), stage by stage.
//!
//! Order: port → parse → route → peering → transitive → egress NACL → endpoint → return
//! route → ingress NACL → security groups (both ports, with conntrack) → TTL → deliver
//! target → cap → rewrite. Two choices in it:
//! - Both ports' security groups are checked together, once the receiver is known (the
//!   conntrack key names both VPCs) and every stateless check has passed.
//! - The cap comes last, so that only packets about to be forwarded spend tokens: traffic
//!   denied further down must not starve allowed traffic of the peering's bandwidth.

use crate::{
    acl, cap,
    counters::{Outcome, Seen, NO_PEERING},
    deliver,
    maps::PKT_SCRATCH,
    parse::{self, Packet},
    peering, port, rewrite, route, sg, trace,
};
use aya_ebpf::programs::XdpContext;
use peer_dataplane_common::{
    trace::{
        acl_allows, NO_ROUTE, STAGE_CAP, STAGE_DELIVER, STAGE_EGRESS_ACL, STAGE_ENDPOINT,
        STAGE_INGRESS_ACL, STAGE_ORIGIN, STAGE_PARSE, STAGE_PORT, STAGE_RETURN_ROUTE,
        STAGE_REWRITE, STAGE_ROUTE, STAGE_SECURITY_GROUPS, STAGE_TTL,
    },
    DropReason, Endpoint, PassReason, Port, RouteValue, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX,
};

/// Runs the pipeline on one frame. `T`: tracing (`pdp_trace`): every stage notes what it
/// saw, and nothing the packet would change is changed (rule hits, conntrack, cap
/// tokens); the caller counts nothing either.
#[inline(always)]
pub fn run<const T: bool>(ctx: &XdpContext) -> (Outcome, Seen) {
    let mut seen = Seen {
        fragment: false,
        ipv4_options: false,
    };
    trace::start::<T>(ctx.ingress_ifindex() as u32);
    // Both arms carry the same struct: a stage's drop is just an early outcome.
    let outcome = match try_run::<T>(ctx, &mut seen) {
        Ok(o) | Err(o) => o,
    };
    (outcome, seen)
}

#[inline(always)]
fn try_run<const T: bool>(ctx: &XdpContext, seen: &mut Seen) -> Result<Outcome, Outcome> {
    let (port, p, slot) = match classify::<T>(ctx, seen)? {
        Classified::Peering { port, packet, slot } => (port, packet, slot),
        Classified::Decided(o) => return Ok(o),
    };
    // Peering checks.
    let x = peering::resolve::<T>(slot, port.vpc)
        .map_err(|(reason, ctr)| Outcome::drop(reason, ctr.unwrap_or(NO_PEERING)))?;
    let drop = |reason: DropReason| Outcome::drop(reason, x.ctr);
    trace::reached::<T>(STAGE_ORIGIN);
    if !peering::originated_in(port, p) {
        return Err(drop(DropReason::Transitive));
    }
    // Egress network ACL of the sender's subnet (checked once the packet is known to be
    // peering traffic, so that its drops count under the peering).
    let egress = acl::check::<T>(port.acl, &p.dst, p);
    trace::note::<T>(|r| {
        r.reached |= STAGE_EGRESS_ACL;
        r.egress_acl_set = port.acl;
        r.egress_acl = egress;
    });
    if !acl_allows(egress) {
        return Err(drop(DropReason::NaclDeny));
    }
    let ep = receiver::<T>(port, p, &x)?;
    forward::<T>(ctx, p, ep, &x)
}

/// What the sender side made of a frame: peering traffic to check further, or decided.
enum Classified<'a> {
    Peering {
        port: &'static Port,
        packet: &'a Packet,
        slot: u32,
    },
    Decided(Outcome),
}

/// Port, parse and route: which peering the frame wants to cross, if any.
#[inline(always)]
fn classify<'a, const T: bool>(
    ctx: &XdpContext,
    seen: &mut Seen,
) -> Result<Classified<'a>, Outcome> {
    // Source port: frames from interfaces we do not serve (an uplink, say) are untouched.
    let Some(port) = port::lookup(ctx.ingress_ifindex() as u32) else {
        return Ok(Classified::Decided(Outcome::pass(PassReason::UnknownPort)));
    };
    trace::note::<T>(|r| {
        r.reached |= STAGE_PORT;
        r.port_vpc = port.vpc;
        r.port_route_table = port.route_table;
        r.port_acl = port.acl;
        r.port_sg = port.sg;
    });

    let Some(scratch) = PKT_SCRATCH.get_ptr_mut(0) else {
        return Err(DropReason::ParseError.into());
    };
    // SAFETY: this CPU's slot, used by nothing else while this packet runs.
    let p = unsafe { &mut *scratch };
    trace::reached::<T>(STAGE_PARSE);
    if !parse::parse(ctx, p)? {
        return Ok(Classified::Decided(Outcome::pass(PassReason::NotIp)));
    }
    let p: &Packet = p;
    trace::note::<T>(|r| {
        r.is_v4 = p.is_v4 as u8;
        r.proto = p.proto;
        r.ttl = p.ttl;
        r.ports_known = p.ports_known as u8;
        r.sport = p.sport;
        r.dport = p.dport;
        r.src = p.src;
        r.dst = p.dst;
    });
    seen.fragment = p.fragment;
    seen.ipv4_options = p.ipv4_options;
    if parse::not_routable(p) {
        return Ok(Classified::Decided(Outcome::pass(PassReason::NotRoutable)));
    }

    // Route lookup in the sender subnet's table.
    let route = route::lookup(port.route_table, &p.dst);
    trace::note::<T>(|r| {
        r.reached |= STAGE_ROUTE;
        (r.route_kind, r.route_target) = kind_and_target(route);
    });
    let Some(route) = route else {
        return Err(DropReason::NoRoute.into());
    };
    let slot = match route.kind {
        ROUTE_PCX => route.target,
        ROUTE_LOCAL => return Ok(Classified::Decided(Outcome::pass(PassReason::LocalRoute))),
        ROUTE_BLACKHOLE => return Err(DropReason::Blackhole.into()),
        _ => return Err(DropReason::NoRoute.into()),
    };

    Ok(Classified::Peering {
        port,
        packet: p,
        slot,
    })
}

/// The receiver side: its endpoint, its route back over the same peering, its subnet's
/// ingress ACL, and both ports' security groups.
#[inline(always)]
fn receiver<const T: bool>(
    port: &Port,
    p: &Packet,
    x: &peering::Crossing,
) -> Result<&'static Endpoint, Outcome> {
    let drop = |reason: DropReason| Outcome::drop(reason, x.ctr);
    trace::reached::<T>(STAGE_ENDPOINT);
    let Some(ep) = deliver::endpoint(x.peer_vpc, &p.dst) else {
        let reason = if peering::inside_vpc(x.peer_vpc, &p.dst) {
            DropReason::NoEndpoint
        } else {
            DropReason::OutsidePeer
        };
        return Err(drop(reason));
    };
    trace::note::<T>(|r| {
        r.ep_ifindex = ep.ifindex;
        r.ep_route_table = ep.route_table;
        r.ep_sg = ep.sg;
    });

    // Receiver side: a route back to the source through the same peering.
    let back = route::lookup(ep.route_table, &p.src);
    trace::note::<T>(|r| {
        r.reached |= STAGE_RETURN_ROUTE;
        (r.return_kind, r.return_target) = kind_and_target(back);
    });
    match back {
        Some(r) if r.kind == ROUTE_PCX && r.target == x.slot => {}
        _ => return Err(drop(DropReason::NoReturnRoute)),
    }

    // Ingress network ACL of the receiver's subnet.
    let ingress = acl::check::<T>(ep.acl, &p.src, p);
    trace::note::<T>(|r| {
        r.reached |= STAGE_INGRESS_ACL;
        r.ingress_acl_set = ep.acl;
        r.ingress_acl = ingress;
    });
    if !acl_allows(ingress) {
        return Err(drop(DropReason::NaclDeny));
    }

    // Security groups of both ports, stateful.
    trace::reached::<T>(STAGE_SECURITY_GROUPS);
    sg::check::<T>(port.sg, ep.sg, port.vpc, x.peer_vpc, p).map_err(drop)?;

    Ok(ep)
}

/// TTL, the redirect target, the cap, and the rewrite.
#[inline(always)]
fn forward<const T: bool>(
    ctx: &XdpContext,
    p: &Packet,
    ep: &'static Endpoint,
    x: &peering::Crossing,
) -> Result<Outcome, Outcome> {
    let drop = |reason: DropReason| Outcome::drop(reason, x.ctr);
    trace::reached::<T>(STAGE_TTL);
    if p.ttl <= 1 {
        return Err(drop(DropReason::TtlExceeded));
    }
    // bpf_redirect_map only records the target (transmission happens after we return),
    // so resolve it first: a missing devmap entry then drops the frame untouched.
    trace::reached::<T>(STAGE_DELIVER);
    let action = deliver::redirect(ep).map_err(drop)?;

    // Bandwidth cap of the peering in this direction.
    if x.cap.is_capped() {
        let len = (ctx.data_end() - ctx.data()) as u64;
        if T {
            let (conforms, tat, cost) = cap::peek(&x.cap, x.ctr, len);
            trace::note::<T>(|r| {
                r.reached |= STAGE_CAP;
                r.cap_index = x.ctr;
                r.cap = x.cap;
                r.cap_tat_ns = tat;
                r.cap_cost_ns = cost;
                r.cap_conforms = conforms as u32;
            });
            if !conforms {
                return Err(drop(DropReason::RateLimited));
            }
        } else {
            cap::police(&x.cap, x.ctr, len).map_err(drop)?;
        }
    }
    trace::reached::<T>(STAGE_REWRITE);
    rewrite::decrement_ttl(ctx, p).map_err(drop)?;
    rewrite::macs_and_vlan(ctx, p, ep).map_err(drop)?;
    Ok(Outcome::redirect(action, x.ctr))
}

/// A route lookup's result as a trace records it.
#[inline(always)]
fn kind_and_target(route: Option<RouteValue>) -> (u32, u32) {
    match route {
        Some(v) => (v.kind, v.target),
        None => (NO_ROUTE, NO_ROUTE),
    }
}
