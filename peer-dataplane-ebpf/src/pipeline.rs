//! The forwarding pipeline (docs/datapath.md §4.1), stage by stage.
//!
//! Order: port → parse → route → peering → transitive → egress NACL → endpoint → return
//! route → ingress NACL → security groups (both ports, with conntrack) → TTL → deliver
//! target → cap → rewrite. Two choices in it:
//! - Both ports' security groups are checked together, once the receiver is known (the
//!   conntrack key names both VPCs) and every stateless check has passed.
//! - The cap comes last, so that only packets about to be forwarded spend tokens: traffic
//!   denied further down must not starve allowed traffic of the peering's bandwidth.
//!
//! A flow already decided in the current epoch goes from parse straight to its delivery,
//! before even the port lookup (see `flowcache`, docs/datapath.md §4.19).

use crate::{
    acl, cap, clock,
    counters::{Outcome, Seen},
    decap, deliver, encap, flowcache, icmp,
    maps::{DEVMAP, PKT_SCRATCH},
    parse::{self, Packet},
    peering, port, rewrite, route, sg, trace,
};
use aya_ebpf::programs::XdpContext;
use peer_dataplane_common::{
    acl::NO_ACL,
    overlay::{OverlayConfig, OverlayIdKey, PeeringOption},
    trace::{
        acl_allows, NO_ROUTE, STAGE_CAP, STAGE_DELIVER, STAGE_EGRESS_ACL, STAGE_ENDPOINT,
        STAGE_INGRESS_ACL, STAGE_ORIGIN, STAGE_PARSE, STAGE_PORT, STAGE_RETURN_ROUTE,
        STAGE_REWRITE, STAGE_ROUTE, STAGE_SECURITY_GROUPS, STAGE_TTL,
    },
    DropReason, Endpoint, PassReason, Port, RouteValue, ENDPOINT_REMOTE, ROUTE_BLACKHOLE,
    ROUTE_LOCAL, ROUTE_PCX,
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
    let ifindex = ctx.ingress_ifindex() as u32;
    clock::start_packet();
    let mut parsed = false;
    if !T {
        // Before the first lookup of the state: see `flowcache::begin`.
        flowcache::begin();
        match kept_decision(ctx, seen, ifindex) {
            Ok(decided) => return Ok(decided),
            Err(ip) => parsed = ip,
        }
    }
    if let Some(port) = port::lookup(ifindex) {
        return from_port::<T>(ctx, seen, port, parsed);
    }
    match encap::config() {
        Some(cfg) if cfg.uplink == ifindex => from_uplink::<T>(ctx, seen, cfg),
        // Frames from interfaces we do not serve are untouched.
        _ => Ok(Outcome::pass(PassReason::UnknownPort)),
    }
}

/// Before any other lookup: a frame whose flow holds a decision of this epoch goes
/// straight to its delivery (`flowcache`). Decisions are kept for frames from ports only,
/// and any change to the ports moves the epoch on, so the port lookup would only say again
/// what the decision says. `Err(true)`: no decision, and the frame is IP, parsed into this
/// CPU's scratch slot; `Err(false)`: no decision, not parsed (or not IP, or malformed:
/// the stages in order decide what that means).
#[inline(always)]
fn kept_decision(ctx: &XdpContext, seen: &mut Seen, ifindex: u32) -> Result<Outcome, bool> {
    // Kept decisions off, or the uplink's frames (tunnels to open: never kept).
    let Some(epoch) = flowcache::epoch() else {
        return Err(false);
    };
    if matches!(encap::config(), Some(cfg) if cfg.uplink == ifindex) {
        return Err(false);
    }
    let Some(scratch) = PKT_SCRATCH.get_ptr_mut(0) else {
        return Err(false);
    };
    // SAFETY: this CPU's slot, used by nothing else while this packet runs.
    let p = unsafe { &mut *scratch };
    if !matches!(parse::parse(ctx, p), Ok(true)) {
        return Err(false);
    }
    let decided = flowcache::forward(ctx, p, epoch);
    if decided == 0 {
        return Err(true);
    }
    seen.note(p);
    Ok(flowcache::unpack(decided))
}

/// A frame from an instance: the sender's checks, then the receiver's (same host) or
/// the encapsulation toward the receiver's host. `parsed`: the frame is IP and already
/// parsed into this CPU's scratch slot (by `kept_decision`).
#[inline(always)]
fn from_port<const T: bool>(
    ctx: &XdpContext,
    seen: &mut Seen,
    port: &'static Port,
    parsed: bool,
) -> Result<Outcome, Outcome> {
    trace::note::<T>(|r| {
        r.reached |= STAGE_PORT;
        r.port_vpc = port.vpc;
        r.port_route_table = port.route_table;
        r.port_acl = port.acl;
        r.port_sg = port.sg;
    });
    let p = if parsed {
        flowcache::count_miss();
        parsed_frame(seen)?
    } else {
        let Some(p) = parse_frame::<T>(ctx, seen)? else {
            return Ok(Outcome::pass(PassReason::NotIp));
        };
        p
    };
    flowcache::note_for_trace::<T>(ctx.ingress_ifindex() as u32, p);
    let slot = match route_to_peering::<T>(port, p)? {
        Ok(slot) => slot,
        Err(decided) => return Ok(decided),
    };
    // Peering checks.
    let x = peering::resolve::<T>(slot, port.vpc)?;
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
    let ep = receiver::<T>(port.sg, port.vpc, p, &x, false)?;
    if ep.flags & ENDPOINT_REMOTE != 0 {
        return to_host::<T>(ctx, p, port, ep, &x);
    }
    let forwarded = forward::<T>(ctx, p, ep, &x, true)?;
    // Kept unless the groups let it through on their rules alone: those are read
    // again for every such packet.
    if !T {
        flowcache::keep(&x, ep, port.vpc);
    }
    Ok(forwarded)
}

/// A frame on the uplink: Geneve from another host (checked, decapsulated, then the
/// receiver's side of the pipeline), or the underlay's own traffic (untouched).
#[inline(always)]
fn from_uplink<const T: bool>(
    ctx: &XdpContext,
    seen: &mut Seen,
    cfg: &OverlayConfig,
) -> Result<Outcome, Outcome> {
    let Some(t) = decap::strip::<T>(ctx, cfg)? else {
        return Ok(Outcome::pass(PassReason::Underlay));
    };
    // Peers only ever send IP inside.
    let Some(p) = parse_frame::<T>(ctx, seen)? else {
        return Err(DropReason::GeneveMalformed.into());
    };
    let src_vpc = decap::source_vpc(&t, &p.src)?;
    trace::note::<T>(|r| r.port_vpc = src_vpc);
    // The peering as this host sees it: deleted here, dropped here, whoever synced first.
    let Some(slot) = decap::overlay_id(OverlayIdKey::peering(t.key)) else {
        return Err(DropReason::PeeringInactive.into());
    };
    let x = peering::resolve::<T>(slot, src_vpc)?;
    if decap::overlay_id(OverlayIdKey::vni(t.vni)) != Some(x.peer_vpc) {
        return Err(Outcome::drop(DropReason::VniMismatch, x.ctr));
    }
    let ep = receiver::<T>(NO_ACL, src_vpc, p, &x, true)?;
    forward::<T>(ctx, p, ep, &x, false)
}

/// Parse stage, into this CPU's scratch slot. `Ok(None)`: not IP.
#[inline(always)]
fn parse_frame<'a, const T: bool>(
    ctx: &XdpContext,
    seen: &mut Seen,
) -> Result<Option<&'a Packet>, Outcome> {
    let Some(scratch) = PKT_SCRATCH.get_ptr_mut(0) else {
        return Err(DropReason::ParseError.into());
    };
    // SAFETY: this CPU's slot, used by nothing else while this packet runs.
    let p = unsafe { &mut *scratch };
    trace::reached::<T>(STAGE_PARSE);
    if !parse::parse(ctx, p)? {
        return Ok(None);
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
    seen.note(p);
    Ok(Some(p))
}

/// The frame `kept_decision` parsed (never traced), noted in `seen` here rather than
/// before the lookup: values set before that call and carried through every stage cost
/// the verifier more paths than it allows.
#[inline(always)]
fn parsed_frame<'a>(seen: &mut Seen) -> Result<&'a Packet, Outcome> {
    let Some(scratch) = PKT_SCRATCH.get_ptr(0) else {
        return Err(DropReason::ParseError.into());
    };
    // SAFETY: this CPU's slot, filled for this packet.
    let p: &Packet = unsafe { &*scratch };
    seen.note(p);
    Ok(p)
}

/// Route stage: the peering slot the frame wants to cross, or (inner `Err`) a decision
/// that it is not peering traffic at all.
#[inline(always)]
fn route_to_peering<const T: bool>(
    port: &Port,
    p: &Packet,
) -> Result<Result<u32, Outcome>, Outcome> {
    if parse::not_routable(p) {
        return Ok(Err(Outcome::pass(PassReason::NotRoutable)));
    }
    // Route lookup in the sender subnet's table.
    let route = route::lookup(port.route_table, &p.dst).copied();
    trace::note::<T>(|r| {
        r.reached |= STAGE_ROUTE;
        (r.route_kind, r.route_target) = kind_and_target(route);
    });
    let Some(route) = route else {
        return Err(DropReason::NoRoute.into());
    };
    match route.kind {
        ROUTE_PCX => Ok(Ok(route.target)),
        ROUTE_LOCAL => Ok(Err(Outcome::pass(PassReason::LocalRoute))),
        ROUTE_BLACKHOLE => Err(DropReason::Blackhole.into()),
        _ => Err(DropReason::NoRoute.into()),
    }
}

/// The receiver side: its endpoint, its route back over the same peering, its subnet's
/// ingress ACL, and both ports' security groups. An endpoint on another host gets only
/// the sender's groups here: its own host checks the rest when the frame arrives.
/// `from_overlay`: the frame came through a tunnel, so its endpoint must be local.
#[inline(always)]
fn receiver<const T: bool>(
    sender_sg: u32,
    src_vpc: u32,
    p: &Packet,
    x: &peering::Crossing,
    from_overlay: bool,
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
    if ep.flags & ENDPOINT_REMOTE != 0 {
        if from_overlay {
            // Sent here by a host whose view placed the instance here; it is elsewhere.
            return Err(drop(DropReason::NoEndpoint));
        }
        trace::reached::<T>(STAGE_SECURITY_GROUPS);
        let groups = sg::check::<T>(sender_sg, NO_ACL, src_vpc, x.peer_vpc, p);
        if groups == sg::DENIED {
            return Err(drop(DropReason::SgDeny));
        }
        return Ok(ep);
    }

    // Receiver side: a route back to the source through the same peering.
    let back = route::lookup(ep.route_table, &p.src).copied();
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
    let groups = sg::check::<T>(sender_sg, ep.sg, src_vpc, x.peer_vpc, p);
    if groups == sg::DENIED {
        return Err(drop(DropReason::SgDeny));
    }

    Ok(ep)
}

/// TTL, the redirect target, the cap (on the sending host only: `police`), and the
/// rewrite. The TTL is decremented once, on the host that delivers.
#[inline(always)]
fn forward<const T: bool>(
    ctx: &XdpContext,
    p: &Packet,
    ep: &'static Endpoint,
    x: &peering::Crossing,
    police: bool,
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
    if police {
        cap_stage::<T>(ctx, x)?;
    }
    trace::reached::<T>(STAGE_REWRITE);
    rewrite::decrement_ttl(ctx, p).map_err(drop)?;
    rewrite::macs_and_vlan(ctx, p, &ep.mac, &ep.gw_mac).map_err(drop)?;
    Ok(Outcome::redirect(action, x.ctr))
}

/// Toward an instance on another host: the underlay's size and next hop, the cap, and
/// the encapsulation. Too big for the underlay: the
/// frame becomes the ICMP answer and goes back out of the port it came by.
#[inline(always)]
fn to_host<const T: bool>(
    ctx: &XdpContext,
    p: &Packet,
    port: &Port,
    ep: &'static Endpoint,
    x: &peering::Crossing,
) -> Result<Outcome, Outcome> {
    let drop = |reason: DropReason| Outcome::drop(reason, x.ctr);
    // The TTL is the receiving host's to check and decrement, after its own checks: the
    // order of the checks (and so the reason a packet is dropped for) is the one a single
    // host has.
    // Remote endpoints are only installed with the overlay; without it, nowhere to go.
    let Some(cfg) = encap::config() else {
        return Err(drop(DropReason::UnderlayUnreachable));
    };
    // SAFETY: plain old data, filled in by `plan` before any use.
    let mut plan: encap::Plan = unsafe { core::mem::zeroed() };
    match encap::plan::<T>(ctx, cfg, ep, p, &mut plan) {
        encap::FITS => {}
        encap::UNREACHABLE => return Err(drop(DropReason::UnderlayUnreachable)),
        mtu => {
            if !icmp::too_big(ctx, p, mtu) {
                return Err(drop(DropReason::MtuExceeded));
            }
            // Back out of the port it came by, through the devmap rather than XDP_TX: a
            // veth wakes its peer for XDP_TX only if the peer runs XDP itself.
            let back = DEVMAP
                .redirect(ctx.ingress_ifindex() as u32, 0)
                .map_err(|_| drop(DropReason::RedirectFailed))?;
            return Err(Outcome::answered(DropReason::MtuExceeded, x.ctr, back));
        }
    }
    plan.header.option = PeeringOption {
        source_vni_be: port.vni.to_be_bytes(),
        tunnel_key_be: x.tunnel_key.to_be_bytes(),
    };
    trace::reached::<T>(STAGE_DELIVER);
    let action = DEVMAP
        .redirect(plan.ifindex, 0)
        .map_err(|_| drop(DropReason::RedirectFailed))?;
    cap_stage::<T>(ctx, x)?;
    trace::reached::<T>(STAGE_REWRITE);
    if !encap::encapsulate(ctx, p, port, ep, &plan) {
        return Err(drop(DropReason::UnderlayUnreachable));
    }
    Ok(Outcome::redirect(action, x.ctr))
}

/// Bandwidth cap of the peering in this direction (this host's share of it).
#[inline(always)]
fn cap_stage<const T: bool>(ctx: &XdpContext, x: &peering::Crossing) -> Result<(), Outcome> {
    if !x.cap.is_capped() {
        return Ok(());
    }
    let drop = |reason: DropReason| Outcome::drop(reason, x.ctr);
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
        Ok(())
    } else {
        cap::police(&x.cap, x.ctr, len).map_err(drop)
    }
}

/// A route lookup's result as a trace records it.
#[inline(always)]
fn kind_and_target(route: Option<RouteValue>) -> (u32, u32) {
    match route {
        Some(v) => (v.kind, v.target),
        None => (NO_ROUTE, NO_ROUTE),
    }
}
