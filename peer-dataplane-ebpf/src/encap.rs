//! Encapsulation toward another host (docs/datapath.md §7.1, §7.2): once every sender-side check
//! has passed, a frame whose destination lives on another host leaves as Geneve over
//! the underlay. Outer MACs and the egress interface come from the kernel's FIB; the
//! inner frame loses its VLAN tag and carries the destination's MACs.

use crate::{
    maps::{NEXT_HOPS, OVERLAY},
    parse::{ptr_at_mut, Packet, ETH_HLEN, VLAN_HLEN},
    trace,
};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_OUTPUT,
    },
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use core::mem::size_of;
use peer_dataplane_common::{
    overlay::{
        flow_port, write_encap_header, Encap, OverlayConfig, PeeringOption, ENCAP_LEN,
        OVERLAY_ENABLED, UNDERLAY_OVERHEAD,
    },
    Endpoint, Port,
};

const AF_INET: u8 = 2;

/// This host's overlay settings, if it is part of a fleet.
#[inline(always)]
pub fn config() -> Option<&'static OverlayConfig> {
    let c = OVERLAY.get(0)?;
    if c.flags & OVERLAY_ENABLED == 0 {
        None
    } else {
        Some(c)
    }
}

/// An encapsulation decided: the outer header's fields and the interface it leaves by.
pub struct Plan {
    pub header: Encap,
    pub ifindex: u32,
}

/// How long a FIB answer toward a host is used before it is asked again: a changed
/// neighbour (a gateway failing over, say) is followed within this time, and the FIB is
/// asked once per host and CPU in this time instead of once per packet. Failures are
/// never kept: a host becomes reachable as soon as the FIB says so.
pub const NEXT_HOP_LIFETIME_NS: u64 = 50_000_000;

use crate::maps::NextHop;

/// [`plan`]'s verdict: `FITS`, `UNREACHABLE`, or else the underlay IP MTU exceeded.
pub const FITS: u32 = 0;
pub const UNREACHABLE: u32 = u32::MAX;

/// Length of the IP packet the frame carries (what the underlay must carry, plus
/// [`UNDERLAY_OVERHEAD`]).
#[inline(always)]
pub fn inner_ip_len(ctx: &XdpContext, p: &Packet) -> usize {
    (ctx.data_end() - ctx.data()).saturating_sub(p.l3_off)
}

/// Checks the encapsulated size against the uplink's MTU, asks the FIB for the next hop
/// toward `ep`'s host and fills in `out` (all but the option, which the caller knows).
/// No route or no resolved neighbour: `UNREACHABLE`, dropped as `underlay-unreachable`.
/// (Passing the frame to the kernel to resolve the neighbour would hand it an inner
/// frame on an instance's port, where nothing routes it onward: the agent keeps the
/// neighbours of every known host resolved instead.)
///
/// Not inlined, here and below: these stages' buffers (FIB parameters, headers) get a
/// stack frame of their own instead of growing the pipeline's past the 512-byte limit.
#[inline(never)]
pub fn plan<const T: bool>(
    ctx: &XdpContext,
    cfg: &OverlayConfig,
    ep: &Endpoint,
    p: &Packet,
    out: &mut Plan,
) -> u32 {
    let ip_len = inner_ip_len(ctx, p);
    let outer_len = ip_len + UNDERLAY_OVERHEAD;
    trace::note::<T>(|r| {
        r.reached |= peer_dataplane_common::trace::STAGE_ENCAP;
        r.overlay_host = ep.host;
        r.overlay_vni = ep.vni;
        r.overlay_peer = ep.underlay;
        r.overlay_mtu = cfg.mtu;
    });
    if outer_len > cfg.mtu as usize {
        return cfg.mtu;
    }
    let hop = match cached::<T>(ep) {
        Some(h) => h,
        None => match ask_fib::<T>(ctx, cfg, ep) {
            Ok(h) => h,
            Err(verdict) => return verdict,
        },
    };
    if hop.route_mtu != 0 && outer_len > hop.route_mtu as usize {
        trace::note::<T>(|r| r.overlay_mtu = hop.route_mtu);
        return hop.route_mtu;
    }
    let (s, d) = (&cfg.underlay, &ep.underlay);
    out.ifindex = hop.ifindex;
    out.header = Encap {
        outer_dst_mac: hop.dst_mac,
        outer_src_mac: hop.src_mac,
        src_ip: [s[12], s[13], s[14], s[15]],
        dst_ip: [d[12], d[13], d[14], d[15]],
        udp_sport: flow_port(&p.src, &p.dst, p.proto, p.sport, p.dport),
        inner_len: (ETH_HLEN + ip_len) as u16,
        vni: ep.vni,
        option: PeeringOption::default(),
    };
    FITS
}

/// This CPU's fresh FIB answer toward `ep`'s host, if any. A trace always asks the FIB
/// (it shows what the kernel says now).
#[inline(always)]
fn cached<const T: bool>(ep: &Endpoint) -> Option<NextHop> {
    if T {
        return None;
    }
    let h = NEXT_HOPS.get(ep.host)?;
    (h.underlay == ep.underlay && crate::clock::now() < h.expires_ns).then_some(*h)
}

/// Asks the kernel's FIB for the next hop toward `ep`'s host, remembering a success for
/// [`NEXT_HOP_LIFETIME_NS`]. `Err`: [`plan`]'s verdict (unreachable).
#[inline(always)]
fn ask_fib<const T: bool>(
    ctx: &XdpContext,
    cfg: &OverlayConfig,
    ep: &Endpoint,
) -> Result<NextHop, u32> {
    let s = &cfg.underlay;
    let d = &ep.underlay;
    // SAFETY: plain old data; zero is a valid value of every field.
    let mut f: FibParams = unsafe { core::mem::zeroed() };
    f.family = AF_INET;
    f.ifindex = cfg.uplink;
    // The largest frame the uplink takes: a route with a smaller MTU says so.
    f.__bindgen_anon_1.tot_len = cfg.mtu as u16;
    f.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([s[12], s[13], s[14], s[15]]);
    f.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([d[12], d[13], d[14], d[15]]);
    let mut rc = lookup(ctx, &mut f);
    let mut route_mtu = 0;
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED {
        // SAFETY: the helper wrote the route's MTU into the union on this result.
        route_mtu = unsafe { f.__bindgen_anon_1.mtu_result } as u32;
        // The MTU check stops the lookup before the neighbour: ask again without it.
        f.__bindgen_anon_1.tot_len = 0;
        f.ifindex = cfg.uplink;
        rc = lookup(ctx, &mut f);
    }
    trace::note::<T>(|r| r.overlay_fib = rc);
    if rc != BPF_FIB_LKUP_RET_SUCCESS {
        return Err(UNREACHABLE);
    }
    let hop = NextHop {
        underlay: ep.underlay,
        dst_mac: f.dmac,
        src_mac: f.smac,
        ifindex: f.ifindex,
        route_mtu,
        expires_ns: crate::clock::now().saturating_add(NEXT_HOP_LIFETIME_NS),
    };
    if !T {
        if let Some(slot) = NEXT_HOPS.get_ptr_mut(ep.host) {
            // SAFETY: this CPU's slot; nothing else writes it while we run.
            unsafe { *slot = hop };
        }
    }
    Ok(hop)
}

#[inline(always)]
fn lookup(ctx: &XdpContext, f: &mut FibParams) -> u32 {
    // SAFETY: `f` is a valid parameter block of the size we pass.
    unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            f,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        ) as u32
    }
}

/// Puts the outer headers in front of the frame (dropping its VLAN tag) and writes the
/// inner MACs: the destination instance's, and the sending port's router MAC. False if
/// the frame could not grow.
#[inline(never)]
pub fn encapsulate(ctx: &XdpContext, p: &Packet, port: &Port, ep: &Endpoint, plan: &Plan) -> bool {
    let ethertype: u16 = if p.is_v4 { 0x0800 } else { 0x86dd };
    // A tagged frame's IP header is 4 bytes further in: grow by 4 less, and the inner
    // Ethernet header written below covers the tag's place.
    let grow = if p.vlan {
        ENCAP_LEN - VLAN_HLEN
    } else {
        ENCAP_LEN
    };
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return false;
    }
    let Ok(out) = ptr_at_mut::<[u8; ENCAP_LEN + ETH_HLEN]>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe {
        let o = &mut *out;
        write_encap_header(&mut *(out as *mut [u8; ENCAP_LEN]), &plan.header);
        o[ENCAP_LEN..ENCAP_LEN + 6].copy_from_slice(&ep.mac);
        o[ENCAP_LEN + 6..ENCAP_LEN + 12].copy_from_slice(&port.gw_mac);
        o[ENCAP_LEN + 12..].copy_from_slice(&ethertype.to_be_bytes());
    }
    true
}
