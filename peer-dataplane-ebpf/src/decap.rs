//! Decapsulation on the uplink (docs/datapath.md §7.3). Only Geneve to this host's
//! underlay address and port is ours; everything else on the uplink goes to the kernel
//! untouched. Of ours, the outer source must be a host of the fleet and the Geneve header
//! must be what peers send; then the outer headers come off and the inner frame is checked
//! like any other: first that the sending host carries its source, then the receiver's
//! side of the pipeline.

use crate::{
    maps::{ENDPOINTS, HOSTS, OVERLAY_IDS},
    parse::{read, ETH_HLEN},
    trace,
};
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use peer_dataplane_common::{
    addr,
    overlay::{
        HostKey, OverlayConfig, OverlayIdKey, GENEVE_FLAG_OAM, GENEVE_LEN, GENEVE_PORT,
        GENEVE_PROTO_ETHERNET, OPTION_CLASS, OPTION_CRITICAL, OPTION_TYPE_PEERING, UDP_LEN,
    },
    trace::{NO_ROUTE, STAGE_DECAP},
    DropReason, EndpointKey, ENDPOINT_REMOTE,
};

/// Options walked at most (the peering option is normally the only one).
const MAX_OPTIONS: usize = 4;
const IPPROTO_UDP: u8 = 17;

/// What the outer headers said.
pub struct Tunnel {
    /// Slot of the sending host.
    pub host: u32,
    /// VNI: the destination VPC.
    pub vni: u32,
    /// From the peering option: the source VPC's VNI and the peering's tunnel key.
    pub src_vni: u32,
    pub key: u32,
}

/// Checks a frame's outer headers and, if it is a tunnel to us, strips them: the frame
/// is then the inner Ethernet frame. `Ok(None)`: not ours (the kernel's business).
#[inline(always)]
pub fn strip<const T: bool>(
    ctx: &XdpContext,
    cfg: &OverlayConfig,
) -> Result<Option<Tunnel>, DropReason> {
    let Ok(ethertype) = read::<[u8; 2]>(ctx, 12) else {
        return Ok(None);
    };
    if ethertype != [0x08, 0x00] {
        return Ok(None);
    }
    let Ok(ip) = read::<[u8; 20]>(ctx, ETH_HLEN) else {
        return Ok(None);
    };
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let u = &cfg.underlay;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != IPPROTO_UDP || ip[16..20] != u[12..16] {
        return Ok(None);
    }
    let udp_off = ETH_HLEN + ihl;
    let Ok(udp) = read::<[u8; 4]>(ctx, udp_off) else {
        return Ok(None);
    };
    if u16::from_be_bytes([udp[2], udp[3]]) != GENEVE_PORT {
        return Ok(None);
    }

    // Ours from here on: every way out is a verdict.
    let src = addr::from_v4([ip[12], ip[13], ip[14], ip[15]]);
    trace::note::<T>(|r| {
        r.reached |= STAGE_DECAP;
        r.overlay_peer = src;
        r.overlay_host = NO_ROUTE;
    });
    // SAFETY: not preallocated: the entry stays whole while we read it (see `port`).
    let Some(host) = (unsafe { HOSTS.get(&HostKey { addr: src }) }).copied() else {
        return Err(DropReason::UnknownHost);
    };
    trace::note::<T>(|r| r.overlay_host = host);
    // A fragment of a tunnel packet: never sent by a peer (outer DF), not reassembled here.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
        return Err(DropReason::GeneveMalformed);
    }
    let g_off = udp_off + UDP_LEN;
    let g = read::<[u8; GENEVE_LEN]>(ctx, g_off).map_err(|_| DropReason::GeneveMalformed)?;
    let proto = u16::from_be_bytes([g[2], g[3]]);
    if g[0] >> 6 != 0 || g[1] & GENEVE_FLAG_OAM != 0 || proto != GENEVE_PROTO_ETHERNET {
        return Err(DropReason::GeneveMalformed);
    }
    let vni = u32::from_be_bytes([0, g[4], g[5], g[6]]);
    let end = g_off + GENEVE_LEN + ((g[0] & 0x3f) as usize) * 4;

    let mut off = g_off + GENEVE_LEN;
    let mut found: Option<(u32, u32)> = None;
    for _ in 0..MAX_OPTIONS {
        if off >= end {
            break;
        }
        let h = read::<[u8; 4]>(ctx, off).map_err(|_| DropReason::GeneveMalformed)?;
        let data_len = ((h[3] & 0x1f) as usize) * 4;
        let ours = u16::from_be_bytes([h[0], h[1]]) == OPTION_CLASS && h[2] == OPTION_TYPE_PEERING;
        if ours && data_len == 8 {
            let d = read::<[u8; 8]>(ctx, off + 4).map_err(|_| DropReason::GeneveMalformed)?;
            found = Some((
                u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
                u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
            ));
        } else if ours {
            return Err(DropReason::GeneveMalformed);
        } else if h[2] & OPTION_CRITICAL != 0 {
            return Err(DropReason::GeneveUnknownOption);
        }
        off += 4 + data_len;
    }
    // Options that overrun their stated length, or more of them than we walk.
    if off != end {
        return Err(DropReason::GeneveMalformed);
    }
    let Some((src_vni, key)) = found else {
        return Err(DropReason::GeneveMalformed);
    };
    trace::note::<T>(|r| {
        r.overlay_vni = vni;
        r.overlay_src_vni = src_vni;
        r.overlay_key = key;
    });
    if end > 512 {
        return Err(DropReason::GeneveMalformed);
    }
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, end as i32) } != 0 {
        return Err(DropReason::GeneveMalformed);
    }
    Ok(Some(Tunnel {
        host,
        vni,
        src_vni,
        key,
    }))
}

/// A VPC by its VNI, or a peering slot by its tunnel key.
#[inline(always)]
pub fn overlay_id(key: OverlayIdKey) -> Option<u32> {
    // SAFETY: not preallocated: the entry stays whole while we read it (see `port`).
    unsafe { OVERLAY_IDS.get(&key) }.copied()
}

/// The inner source must be an instance that the sending host carries, in the VPC the
/// option names: a host speaks only for its own instances. Returns that VPC.
#[inline(always)]
pub fn source_vpc(t: &Tunnel, src: &[u8; 16]) -> Result<u32, DropReason> {
    let vpc = overlay_id(OverlayIdKey::vni(t.src_vni)).ok_or(DropReason::SpoofedSource)?;
    let key = EndpointKey { vpc, addr: *src };
    // SAFETY: as in `overlay_id`.
    match unsafe { ENDPOINTS.get(&key) } {
        Some(ep) if ep.flags & ENDPOINT_REMOTE != 0 && ep.host == t.host => Ok(vpc),
        _ => Err(DropReason::SpoofedSource),
    }
}
