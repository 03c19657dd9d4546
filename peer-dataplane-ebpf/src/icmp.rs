//! Path-MTU answers (docs/datapath.md §7.4): a packet for another host that would not fit
//! the underlay once encapsulated is turned, in place, into ICMP "fragmentation needed"
//! (IPv4) or ICMPv6 "packet too big" and sent back out of the port it came in by. The answer comes from the original destination, quotes the head of the
//! original packet and names the largest inner packet the underlay carries.
//!
//! IPv4 without DF gets the same answer: the data plane does not fragment, and the
//! sender's stack lowers its path MTU and fragments itself from then on.

use crate::parse::{ptr_at_mut, read, Packet, ETH_HLEN, VLAN_HLEN};
use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use peer_dataplane_common::{checksum, overlay::UNDERLAY_OVERHEAD, DropReason};

/// Bytes of the original packet quoted in the answer (from its IP header on): enough
/// for any IPv4 header with options and the transport ports, or an IPv6 header, a few
/// extension headers and the transport ports. A multiple of 4, as `bpf_csum_diff` needs.
pub const QUOTE: usize = 128;
const IPV4_ROOM: usize = 20 + 8;
const IPV6_ROOM: usize = 40 + 8;
/// IPv6's minimum link MTU: no packet-too-big may name less (RFC 8201).
const IPV6_MIN_MTU: u32 = 1280;

/// Rewrites the frame into the answer. `underlay_mtu` is the IP MTU the encapsulated
/// frame exceeded. False if the packet is too short to quote (it is then just dropped).
/// Not inlined: its buffers get a stack frame of their own (see `encap::plan`).
#[inline(never)]
pub fn too_big(ctx: &XdpContext, p: &Packet, underlay_mtu: u32) -> bool {
    answer(ctx, p, underlay_mtu).is_ok()
}

#[inline(always)]
fn answer(ctx: &XdpContext, p: &Packet, underlay_mtu: u32) -> Result<(), DropReason> {
    let l3 = if p.vlan {
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };
    let len = ctx.data_end() - ctx.data();
    if len < l3 + QUOTE {
        return Err(DropReason::MtuExceeded);
    }
    let eth = read::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0)?;
    let inner_mtu = underlay_mtu.saturating_sub(UNDERLAY_OVERHEAD as u32);
    let room = if p.is_v4 { IPV4_ROOM } else { IPV6_ROOM };
    // SAFETY: helper calls on our own context.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -(room as i32)) != 0 {
            return Err(DropReason::MtuExceeded);
        }
        let keep = (l3 + room + QUOTE) as i32;
        if bpf_xdp_adjust_tail(ctx.ctx, keep - (len + room) as i32) != 0 {
            return Err(DropReason::MtuExceeded);
        }
    }
    // Ethernet (and the tag, if any) back to the sender: the MACs swap.
    let mut e = eth;
    e[..6].copy_from_slice(&eth[6..12]);
    e[6..12].copy_from_slice(&eth[..6]);
    if p.vlan {
        let out = ptr_at_mut::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0)?;
        // SAFETY: bounds-checked by `ptr_at_mut`.
        unsafe { *out = e };
    } else {
        let out = ptr_at_mut::<[u8; ETH_HLEN]>(ctx, 0)?;
        // SAFETY: as above.
        unsafe { (*out).copy_from_slice(&e[..ETH_HLEN]) };
    }
    if p.is_v4 {
        answer_v4(ctx, p, l3, inner_mtu)
    } else {
        answer_v6(ctx, p, l3, inner_mtu.max(IPV6_MIN_MTU))
    }
}

#[inline(always)]
fn answer_v4(ctx: &XdpContext, p: &Packet, l3: usize, mtu: u32) -> Result<(), DropReason> {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IPV4_ROOM + QUOTE) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 1;
    ip[12..16].copy_from_slice(&p.dst[12..16]);
    ip[16..20].copy_from_slice(&p.src[12..16]);
    let c = checksum::ipv4_header(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let out = ptr_at_mut::<[u8; 20]>(ctx, l3)?;
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe { *out = ip };
    // Type 3 (unreachable), code 4 (fragmentation needed), next-hop MTU in the low half.
    let icmp = ptr_at_mut::<[u8; 8 + QUOTE]>(ctx, l3 + 20)?;
    // SAFETY: as above; the quote already sits behind the ICMP header.
    unsafe {
        let i = &mut *icmp;
        i[..8].copy_from_slice(&[3, 4, 0, 0, 0, 0, 0, 0]);
        i[6..8].copy_from_slice(&(mtu as u16).to_be_bytes());
        let c = fold(bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp as *mut u32,
            (8 + QUOTE) as u32,
            0,
        ));
        i[2..4].copy_from_slice(&c.to_ne_bytes());
    }
    Ok(())
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, p: &Packet, l3: usize, mtu: u32) -> Result<(), DropReason> {
    let payload = (8 + QUOTE) as u32;
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    ip[6] = 58;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&p.dst);
    ip[24..40].copy_from_slice(&p.src);
    let out = ptr_at_mut::<[u8; 40]>(ctx, l3)?;
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe { *out = ip };
    // Type 2 (packet too big), code 0, the MTU in the second word.
    let icmp = ptr_at_mut::<[u8; 8 + QUOTE]>(ctx, l3 + 40)?;
    // Pseudo-header: both addresses (in the header just written), length, next header.
    let mut tail = [payload.to_be(), 58u32.to_be()];
    // SAFETY: bounds-checked pointers into the frame and a stack array, sizes in bytes.
    unsafe {
        let i = &mut *icmp;
        i[..4].copy_from_slice(&[2, 0, 0, 0]);
        i[4..8].copy_from_slice(&mtu.to_be_bytes());
        let addrs = ptr_at_mut::<[u8; 32]>(ctx, l3 + 8)?;
        let mut sum = bpf_csum_diff(core::ptr::null_mut(), 0, addrs as *mut u32, 32, 0);
        sum = bpf_csum_diff(core::ptr::null_mut(), 0, tail.as_mut_ptr(), 8, sum as u32);
        sum = bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp as *mut u32,
            payload,
            sum as u32,
        );
        i[2..4].copy_from_slice(&fold(sum).to_ne_bytes());
    }
    Ok(())
}

/// The one's-complement checksum of a `bpf_csum_diff` sum. The helper adds the bytes as
/// they lie in memory, so the result goes back into the frame in native byte order.
#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}
