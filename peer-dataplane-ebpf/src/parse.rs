//! Parse stage: Ethernet, one 802.1Q tag, IPv4 (with options) or IPv6 (with up to
//! [`MAX_IPV6_EXT`] extension headers), then TCP/UDP/ICMP ports. The bounds-checked
//! pointer helpers here are the only raw packet access in the program.
//!
//! Deliberate choices (docs/datapath.md §4.3, §4.16):
//! - Truncated headers, a bad version or header length, a total length past the frame, or
//!   a first fragment too short for its transport header: `parse-error` (dropped).
//! - Stacked tags (QinQ, 802.1ad): `unsupported-encap` (dropped).
//! - IPv4 options: parsed past (IHL), forwarded unchanged, counted.
//! - Fragments: routed on the IP header alone. Only the first fragment carries ports;
//!   later fragments have none (`ports_known == false`), which policy stages must respect.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;
use peer_dataplane_common::{addr, DropReason};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

const IPV6_HLEN: usize = 40;
const MAX_IPV6_EXT: usize = 4;

/// What the later stages need to know about a frame. `repr(C)`, addresses first: they
/// are copied word by word into lookup keys (`words`).
#[repr(C)]
pub struct Packet {
    /// Addresses in the 16-byte map encoding (IPv4 mapped).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Offset of the IP header (14, or 18 behind a VLAN tag).
    pub l3_off: usize,
    pub vlan: bool,
    pub is_v4: bool,
    pub proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    pub fragment: bool,
    pub ipv4_options: bool,
    /// False for non-first fragments and for protocols without ports.
    pub ports_known: bool,
    /// TCP/UDP ports; for ICMP the identifier in `sport` and type<<8|code in `dport`.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
}

/// ICMP or ICMPv6 echo (`ports_known`: `dport` holds type << 8 | code): `Some(true)` a
/// request, `Some(false)` a reply, `None` anything else.
#[inline(always)]
pub fn icmp_echo(p: &Packet) -> Option<bool> {
    let ty = (p.dport >> 8) as u8;
    let (request, reply) = match p.proto {
        IPPROTO_ICMP => (8, 0),
        IPPROTO_ICMPV6 => (128, 129),
        _ => return None,
    };
    if ty == request {
        Some(true)
    } else if ty == reply {
        Some(false)
    } else {
        None
    }
}

/// End of the frame, read so that LLVM cannot reuse it across checks. Without this, LLVM
/// proves a pointer bounds check redundant from an earlier scalar length check and drops
/// it, and the verifier (which only trusts pointer comparisons) rejects the access.
#[inline(always)]
fn data_end(ctx: &XdpContext) -> usize {
    // SAFETY: `ctx.ctx` is the program's valid `xdp_md`.
    unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize }
}

#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*const T, DropReason> {
    let start = ctx.data();
    let end = data_end(ctx);
    if start + off + size_of::<T>() > end {
        return Err(DropReason::ParseError);
    }
    Ok((start + off) as *const T)
}

#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, DropReason> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

/// Reads a copy of `T` at `off`, bounds-checked.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, DropReason> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: `ptr_at` checked that `size_of::<T>()` bytes at `p` lie inside the frame.
    Ok(unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses the frame into `p`; `Ok(false)` if it is not IP (the kernel's business).
///
/// `p` is a per-CPU map slot, not a stack variable: the verifier does not track values in
/// map memory, so the many ways a frame can parse meet again as one state right after
/// this stage instead of each being verified through the rest of the pipeline (and the
/// stack stays free for the lookups).
#[inline(always)]
pub fn parse(ctx: &XdpContext, p: &mut Packet) -> Result<bool, DropReason> {
    let frame_len = ctx.data_end() - ctx.data();
    let mut ethertype = be16(read::<[u8; 2]>(ctx, 12)?);
    let mut l3_off = ETH_HLEN;
    let mut vlan = false;
    if ethertype == ETH_P_8021AD {
        return Err(DropReason::UnsupportedEncap);
    }
    if ethertype == ETH_P_8021Q {
        ethertype = be16(read::<[u8; 2]>(ctx, ETH_HLEN + 2)?);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(DropReason::UnsupportedEncap);
        }
        l3_off = ETH_HLEN + VLAN_HLEN;
        vlan = true;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(ctx, p, l3_off, vlan, frame_len).map(|_| true),
        ETH_P_IPV6 => parse_ipv6(ctx, p, l3_off, vlan, frame_len).map(|_| true),
        _ => Ok(false),
    }
}

#[inline(always)]
fn parse_ipv4(
    ctx: &XdpContext,
    p: &mut Packet,
    l3_off: usize,
    vlan: bool,
    frame_len: usize,
) -> Result<(), DropReason> {
    let h = read::<[u8; 20]>(ctx, l3_off)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::ParseError);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(DropReason::ParseError);
    }
    let total_len = be16([h[2], h[3]]) as usize;
    if total_len < ihl || l3_off + total_len > frame_len {
        return Err(DropReason::ParseError);
    }
    let frag = be16([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    *p = Packet {
        l3_off,
        vlan,
        is_v4: true,
        src: addr::from_v4([h[12], h[13], h[14], h[15]]),
        dst: addr::from_v4([h[16], h[17], h[18], h[19]]),
        proto: h[9],
        ttl: h[8],
        fragment: more_fragments || frag_offset != 0,
        ipv4_options: ihl > 20,
        ports_known: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
    if frag_offset == 0 {
        parse_l4(ctx, p, l3_off + ihl, l3_off + total_len)?;
    }
    Ok(())
}

#[inline(always)]
fn parse_ipv6(
    ctx: &XdpContext,
    p: &mut Packet,
    l3_off: usize,
    vlan: bool,
    frame_len: usize,
) -> Result<(), DropReason> {
    let h = read::<[u8; IPV6_HLEN]>(ctx, l3_off)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::ParseError);
    }
    let payload_len = be16([h[4], h[5]]) as usize;
    let ip_end = l3_off + IPV6_HLEN + payload_len;
    if ip_end > frame_len {
        return Err(DropReason::ParseError);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&h[8..24]);
    dst.copy_from_slice(&h[24..40]);
    *p = Packet {
        l3_off,
        vlan,
        is_v4: false,
        src,
        dst,
        proto: h[6],
        ttl: h[7],
        fragment: false,
        ipv4_options: false,
        ports_known: false,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };

    // Walk extension headers to the transport header.
    let mut off = l3_off + IPV6_HLEN;
    let mut first_fragment = true;
    let mut done = false;
    for _ in 0..MAX_IPV6_EXT {
        match p.proto {
            // Hop-by-hop, routing, destination options: length in 8-octet units, +1.
            0 | 43 | 60 => {
                let e = read::<[u8; 2]>(ctx, off)?;
                p.proto = e[0];
                off += (e[1] as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                let f = read::<[u8; 4]>(ctx, off)?;
                p.proto = f[0];
                p.fragment = true;
                first_fragment = be16([f[2], f[3]]) & 0xfff8 == 0;
                off += 8;
                if !first_fragment {
                    // What follows is the middle of the original packet: its bytes are
                    // payload, never headers to walk (the next-header value names the
                    // upper-layer protocol of the whole packet).
                    if off > ip_end {
                        return Err(DropReason::ParseError);
                    }
                    done = true;
                    break;
                }
            }
            // Authentication header: length in 4-octet units, +2.
            51 => {
                let e = read::<[u8; 2]>(ctx, off)?;
                p.proto = e[0];
                off += (e[1] as usize + 2) * 4;
            }
            _ => {
                done = true;
                break;
            }
        }
        if off > ip_end {
            return Err(DropReason::ParseError);
        }
    }
    if !done {
        // More extension headers than we walk: cannot locate the transport header safely.
        match p.proto {
            0 | 43 | 44 | 51 | 60 => return Err(DropReason::ParseError),
            _ => {}
        }
    }
    if first_fragment {
        parse_l4(ctx, p, off, ip_end)?;
    }
    Ok(())
}

/// Reads ports (or the ICMP echo id/type) of a transport header at `off` that must end
/// by `ip_end`. Protocols without ports are left with `ports_known == false`.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, p: &mut Packet, off: usize, ip_end: usize) -> Result<(), DropReason> {
    // Bound the offset for the verifier: IPv4 options and IPv6 extension headers are
    // variable, but never push the transport header past this.
    if off > 2048 {
        return Err(DropReason::ParseError);
    }
    match p.proto {
        IPPROTO_TCP => {
            if off + 20 > ip_end {
                return Err(DropReason::ParseError);
            }
            let t = read::<[u8; 14]>(ctx, off)?;
            if (t[12] >> 4) < 5 {
                return Err(DropReason::ParseError);
            }
            p.sport = be16([t[0], t[1]]);
            p.dport = be16([t[2], t[3]]);
            p.tcp_flags = t[13];
            p.ports_known = true;
        }
        IPPROTO_UDP => {
            if off + 8 > ip_end {
                return Err(DropReason::ParseError);
            }
            let u = read::<[u8; 4]>(ctx, off)?;
            p.sport = be16([u[0], u[1]]);
            p.dport = be16([u[2], u[3]]);
            p.ports_known = true;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if off + 8 > ip_end {
                return Err(DropReason::ParseError);
            }
            let i = read::<[u8; 8]>(ctx, off)?;
            p.sport = be16([i[4], i[5]]);
            p.dport = be16([i[0], i[1]]);
            p.ports_known = true;
        }
        _ => {}
    }
    Ok(())
}

/// Destinations that are never peering traffic: multicast, broadcast, link-local,
/// loopback and unspecified. They go to the kernel (DHCP, neighbour discovery, metadata).
/// So does an IPv6 destination in the IPv4-mapped range, which is not a wire address and
/// would otherwise meet the IPv4 routes (the maps encode IPv4 that way).
#[inline(always)]
pub fn not_routable(p: &Packet) -> bool {
    let d = &p.dst;
    if p.is_v4 {
        let a = d[12];
        a == 0 || a == 127 || a >= 224 || (a == 169 && d[13] == 254)
    } else {
        let unspecified_or_loopback = d[..15].iter().all(|b| *b == 0);
        d[0] == 0xff
            || (d[0] == 0xfe && (d[1] & 0xc0) == 0x80)
            || unspecified_or_loopback
            || addr::is_v4_mapped(d)
    }
}
