//! Benchmark and test sink (`pdp_sink`), attached behind a destination port: drops every
//! frame and counts it. Slot 0 counts the frames a test or benchmark sent — UDP to the ports
//! in `pdp_sink_match` (every frame when that is 0), slot 2 their bytes — and slot 1
//! everything else that arrives (IPv6 neighbour discovery and MLD from a fresh interface,
//! say), so that a count never includes frames its reader did not send.

use crate::maps::{SINK_COUNT, SINK_MATCH};
use crate::parse::{read, ETH_HLEN, IPPROTO_UDP};
use aya_ebpf::programs::XdpContext;

const SLOT_MATCHED: u32 = 0;
const SLOT_OTHER: u32 = 1;
const SLOT_MATCHED_BYTES: u32 = 2;

#[inline(always)]
pub fn count(ctx: &XdpContext) {
    let first = SINK_MATCH.get(0).copied().unwrap_or(0);
    let last = SINK_MATCH.get(1).copied().unwrap_or(0).max(first);
    let matched =
        first == 0 || matches!(udp_dport(ctx), Some(p) if (first..=last).contains(&(p as u32)));
    let slot = if matched { SLOT_MATCHED } else { SLOT_OTHER };
    add(slot, 1);
    if matched {
        add(SLOT_MATCHED_BYTES, (ctx.data_end() - ctx.data()) as u64);
    }
}

#[inline(always)]
fn add(slot: u32, n: u64) {
    if let Some(c) = SINK_COUNT.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot.
        unsafe { *c += n };
    }
}

/// The UDP destination port of an untagged IPv4 (first fragment) or IPv6 (no extension
/// headers) frame.
#[inline(always)]
fn udp_dport(ctx: &XdpContext) -> Option<u16> {
    let ethertype = read::<[u8; 2]>(ctx, 12).ok()?;
    let l4 = match u16::from_be_bytes(ethertype) {
        0x0800 => {
            let h = read::<[u8; 20]>(ctx, ETH_HLEN).ok()?;
            let first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
            if h[9] != IPPROTO_UDP || !first {
                return None;
            }
            ETH_HLEN + ((h[0] & 0x0f) as usize) * 4
        }
        0x86dd => {
            if read::<u8>(ctx, ETH_HLEN + 6).ok()? != IPPROTO_UDP {
                return None;
            }
            ETH_HLEN + 40
        }
        _ => return None,
    };
    let ports = read::<[u8; 4]>(ctx, l4).ok()?;
    Some(u16::from_be_bytes([ports[2], ports[3]]))
}
