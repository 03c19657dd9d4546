//! The forwarding pipeline (SPEC §4.1), stage by stage. Policy stages (NACL, security
//! groups, bandwidth caps) slot in where the comments mark them.

use crate::{
    acl,
    counters::{Outcome, Seen, NO_PEERING},
    deliver,
    parse::{self, L3},
    peering, port, rewrite, route,
};
use aya_ebpf::programs::XdpContext;
use peer_dataplane_common::{DropReason, PassReason, ROUTE_BLACKHOLE, ROUTE_LOCAL, ROUTE_PCX};

/// A drop, with the peering counter it belongs to once the peering is known.
struct Drop {
    reason: DropReason,
    ctr: u32,
}

impl From<DropReason> for Drop {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Drop {
            reason,
            ctr: NO_PEERING,
        }
    }
}

#[inline(always)]
pub fn run(ctx: &XdpContext) -> (Outcome, Seen) {
    let mut seen = Seen {
        fragment: false,
        ipv4_options: false,
    };
    let outcome = match try_run(ctx, &mut seen) {
        Ok(o) => o,
        Err(d) => Outcome::Drop {
            reason: d.reason,
            ctr: d.ctr,
        },
    };
    (outcome, seen)
}

#[inline(always)]
fn try_run(ctx: &XdpContext, seen: &mut Seen) -> Result<Outcome, Drop> {
    // Source port: frames from interfaces we do not serve (an uplink, say) are untouched.
    let Some(port) = port::lookup(ctx.ingress_ifindex() as u32) else {
        return Ok(Outcome::Pass(PassReason::UnknownPort));
    };

    let p = match parse::parse(ctx)? {
        L3::NotIp => return Ok(Outcome::Pass(PassReason::NotIp)),
        L3::Ip(p) => p,
    };
    seen.fragment = p.fragment;
    seen.ipv4_options = p.ipv4_options;
    if parse::not_routable(&p) {
        return Ok(Outcome::Pass(PassReason::NotRoutable));
    }

    // [egress security group: issue 4]

    // Route lookup in the sender subnet's table.
    let Some(route) = route::lookup(port.route_table, &p.dst) else {
        return Err(DropReason::NoRoute.into());
    };
    let slot = match route.kind {
        ROUTE_PCX => route.target,
        ROUTE_LOCAL => return Ok(Outcome::Pass(PassReason::LocalRoute)),
        ROUTE_BLACKHOLE => return Err(DropReason::Blackhole.into()),
        _ => return Err(DropReason::NoRoute.into()),
    };

    // Peering checks.
    let x = peering::resolve(slot, port.vpc).map_err(|(reason, ctr)| Drop {
        reason,
        ctr: ctr.unwrap_or(NO_PEERING),
    })?;
    let drop = |reason: DropReason| Drop { reason, ctr: x.ctr };
    if !peering::originated_in(&port, &p) {
        return Err(drop(DropReason::Transitive));
    }
    // Egress network ACL of the sender's subnet (checked once the packet is known to be
    // peering traffic, so that its drops count under the peering).
    acl::check(port.acl, &p.dst, &p).map_err(drop)?;
    let Some(ep) = deliver::endpoint(x.peer_vpc, &p.dst) else {
        let reason = if peering::inside_vpc(x.peer_vpc, &p.dst) {
            DropReason::NoEndpoint
        } else {
            DropReason::OutsidePeer
        };
        return Err(drop(reason));
    };

    // [bandwidth cap: issue 4]

    // Receiver side: a route back to the source through the same peering.
    match route::lookup(ep.route_table, &p.src) {
        Some(r) if r.kind == ROUTE_PCX && r.target == x.slot => {}
        _ => return Err(drop(DropReason::NoReturnRoute)),
    }

    // Ingress network ACL of the receiver's subnet.
    acl::check(ep.acl, &p.src, &p).map_err(drop)?;

    // [ingress security group: issue 4]

    if p.ttl <= 1 {
        return Err(drop(DropReason::TtlExceeded));
    }
    // bpf_redirect_map only records the target (transmission happens after we return),
    // so resolve it first: a missing devmap entry then drops the frame untouched.
    let action = deliver::redirect(&ep).map_err(drop)?;
    rewrite::decrement_ttl(ctx, &p).map_err(drop)?;
    rewrite::macs_and_vlan(ctx, &p, &ep).map_err(drop)?;
    Ok(Outcome::Redirect { action, ctr: x.ctr })
}
