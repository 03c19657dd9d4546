//! Rewrite stage (docs/datapath.md §4.3, §4.16): decrement TTL / hop limit (IPv4 header checksum updated
//! incrementally), write the destination MACs, and pop a VLAN tag: the destination port is
//! an access port and receives untagged frames.

use crate::parse::{ptr_at_mut, Packet, ETH_HLEN, VLAN_HLEN};
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use peer_dataplane_common::{checksum, DropReason};

#[inline(always)]
pub fn decrement_ttl(ctx: &XdpContext, p: &Packet) -> Result<(), DropReason> {
    if p.l3_off > ETH_HLEN + VLAN_HLEN {
        return Err(DropReason::ParseError);
    }
    if p.is_v4 {
        let ttl_proto = ptr_at_mut::<[u8; 4]>(ctx, p.l3_off + 8)?;
        // SAFETY: bounds-checked by `ptr_at_mut` (TTL, protocol, checksum: 4 bytes).
        unsafe {
            let b = &mut *ttl_proto;
            let old = u16::from_be_bytes([b[0], b[1]]);
            let new = u16::from_be_bytes([b[0] - 1, b[1]]);
            let check = checksum::replace_u16(u16::from_be_bytes([b[2], b[3]]), old, new);
            b[0] -= 1;
            let c = check.to_be_bytes();
            b[2] = c[0];
            b[3] = c[1];
        }
    } else {
        let hop = ptr_at_mut::<u8>(ctx, p.l3_off + 7)?;
        // SAFETY: bounds-checked by `ptr_at_mut`.
        unsafe { *hop -= 1 };
    }
    Ok(())
}

#[inline(always)]
pub fn macs_and_vlan(
    ctx: &XdpContext,
    p: &Packet,
    mac: &[u8; 6],
    gw_mac: &[u8; 6],
) -> Result<(), DropReason> {
    let off = if p.vlan { VLAN_HLEN } else { 0 };
    let eth = ptr_at_mut::<[u8; 12]>(ctx, off)?;
    // SAFETY: bounds-checked by `ptr_at_mut`.
    unsafe {
        let e = &mut *eth;
        e[..6].copy_from_slice(mac);
        e[6..].copy_from_slice(gw_mac);
    }
    if p.vlan {
        // The MACs now sit just before the inner ethertype; drop the 4 bytes in front.
        // SAFETY: helper call on our own context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) } != 0 {
            return Err(DropReason::ParseError);
        }
    }
    Ok(())
}
