//! The overlay between hosts: Geneve (RFC 8926) over UDP, one option of our own class.
//!
//! A frame toward an instance on another host leaves as
//! `outer Ethernet | outer IPv4 | UDP (dst 6081) | Geneve (VNI = destination VPC) |
//! option (source VPC, peering) | inner Ethernet | inner IP ...`.

use core::mem::size_of;

/// IANA's port for Geneve.
pub const GENEVE_PORT: u16 = 6081;
/// Geneve protocol type of an Ethernet payload (Transparent Ethernet Bridging).
pub const GENEVE_PROTO_ETHERNET: u16 = 0x6558;
/// Our option class, from the range IANA leaves for experimental use (0xFF00..=0xFFFF).
pub const OPTION_CLASS: u16 = 0xFF50;
/// The peering option's type. The high bit marks it critical: a receiver that does not
/// understand it must drop the packet rather than deliver it unchecked.
pub const OPTION_TYPE_PEERING: u8 = 0x80 | 0x01;
/// Geneve's critical bit in an option type.
pub const OPTION_CRITICAL: u8 = 0x80;

pub const OUTER_ETH_LEN: usize = 14;
pub const OUTER_IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const GENEVE_LEN: usize = 8;
/// Option header (class, type, length) and its 8 bytes of data.
pub const OPTION_LEN: usize = 4 + size_of::<PeeringOption>();
/// Bytes encapsulation puts in front of the inner Ethernet frame (IPv4 underlay).
pub const ENCAP_LEN: usize = OUTER_ETH_LEN + OUTER_IPV4_LEN + UDP_LEN + GENEVE_LEN + OPTION_LEN;
/// What the underlay's IP MTU must hold beyond the inner IP packet: the outer IPv4, UDP and
/// Geneve headers, the option and the inner Ethernet header (62 bytes).
pub const UNDERLAY_OVERHEAD: usize = OUTER_IPV4_LEN + UDP_LEN + GENEVE_LEN + OPTION_LEN + 14;
/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00ff_ffff;

/// Data of the peering option: who sent the packet into the overlay and over which peering.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeeringOption {
    /// VNI of the sender's VPC.
    pub source_vni_be: [u8; 4],
    /// The peering's fleet-wide number ([`crate::Peering::tunnel_key`]).
    pub tunnel_key_be: [u8; 4],
}
const _: () = assert!(size_of::<PeeringOption>() == 8);

/// This host's place in the overlay (`pdp_overlay`, one entry). Absent or without
/// [`OVERLAY_ENABLED`]: a single host, nothing is encapsulated or decapsulated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverlayConfig {
    /// This host's underlay address (IPv4 in mapped form): the outer source of what it
    /// sends, the only outer destination it decapsulates.
    pub underlay: [u8; 16],
    /// This host's slot in `pdp_hosts`.
    pub host: u32,
    /// Interface the overlay leaves and arrives by.
    pub uplink: u32,
    /// The uplink's IP MTU: an inner packet that would not fit once encapsulated is
    /// answered with ICMP "fragmentation needed" / "packet too big".
    pub mtu: u32,
    /// `OVERLAY_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<OverlayConfig>() == 32);

pub const OVERLAY_ENABLED: u32 = 1;

/// Key of `pdp_hosts`: a host's underlay address (IPv4 in mapped form); the value is the
/// host's slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HostKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<HostKey>() == 16);

/// Key of `pdp_overlay_ids`: a fleet-wide number and what kind of object it names; the
/// value is this host's id of that object (a VPC id or a peering slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct OverlayIdKey {
    /// `OVERLAY_ID_*`.
    pub kind: u32,
    pub id: u32,
}
const _: () = assert!(size_of::<OverlayIdKey>() == 8);

/// A VPC by its VNI.
pub const OVERLAY_ID_VNI: u32 = 1;
/// A peering by its tunnel key.
pub const OVERLAY_ID_PEERING: u32 = 2;

impl OverlayIdKey {
    pub const fn vni(vni: u32) -> OverlayIdKey {
        OverlayIdKey {
            kind: OVERLAY_ID_VNI,
            id: vni,
        }
    }

    pub const fn peering(tunnel_key: u32) -> OverlayIdKey {
        OverlayIdKey {
            kind: OVERLAY_ID_PEERING,
            id: tunnel_key,
        }
    }
}

/// Geneve's flag bits (second byte of its header): O (an OAM frame) and C (critical
/// options present).
pub const GENEVE_FLAG_OAM: u8 = 0x80;
pub const GENEVE_FLAG_CRITICAL: u8 = 0x40;
/// Outer UDP source ports are drawn from the dynamic range (RFC 8926 §3.3 recommends
/// 49152..=65535 for the entropy it carries).
pub const FLOW_PORT_BASE: u16 = 49152;
/// TTL of the outer IPv4 header.
pub const OUTER_TTL: u8 = 64;

/// One encapsulation's variable fields; [`encap_header`] lays them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encap {
    pub outer_dst_mac: [u8; 6],
    pub outer_src_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub udp_sport: u16,
    /// Length of the inner Ethernet frame that follows the headers.
    pub inner_len: u16,
    /// VNI of the destination VPC.
    pub vni: u32,
    pub option: PeeringOption,
}

/// The [`ENCAP_LEN`] bytes in front of the inner Ethernet frame: outer Ethernet, IPv4 (DF
/// set: the data plane does its own path-MTU answers and never wants the underlay to
/// fragment; header checksum filled in), UDP (checksum 0, allowed over IPv4 by RFC 8926
/// §3.3), Geneve with the C flag, and the peering option.
pub fn encap_header(e: &Encap) -> [u8; ENCAP_LEN] {
    let mut h = [0u8; ENCAP_LEN];
    write_encap_header(&mut h, e);
    h
}

/// [`encap_header`] written in place (the XDP program writes straight into the frame's
/// headroom: every byte is set).
#[inline(always)]
pub fn write_encap_header(h: &mut [u8; ENCAP_LEN], e: &Encap) {
    *h = [0u8; ENCAP_LEN];
    h[0..6].copy_from_slice(&e.outer_dst_mac);
    h[6..12].copy_from_slice(&e.outer_src_mac);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = OUTER_ETH_LEN;
    let ip_len = (ENCAP_LEN - OUTER_ETH_LEN) as u16 + e.inner_len;
    h[ip] = 0x45;
    h[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
    h[ip + 6] = 0x40; // DF
    h[ip + 8] = OUTER_TTL;
    h[ip + 9] = 17;
    h[ip + 12..ip + 16].copy_from_slice(&e.src_ip);
    h[ip + 16..ip + 20].copy_from_slice(&e.dst_ip);
    let check = crate::checksum::ipv4_header(&h[ip..ip + OUTER_IPV4_LEN]);
    h[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    let udp = ip + OUTER_IPV4_LEN;
    h[udp..udp + 2].copy_from_slice(&e.udp_sport.to_be_bytes());
    h[udp + 2..udp + 4].copy_from_slice(&GENEVE_PORT.to_be_bytes());
    h[udp + 4..udp + 6].copy_from_slice(&(ip_len - OUTER_IPV4_LEN as u16).to_be_bytes());
    let g = udp + UDP_LEN;
    h[g] = (OPTION_LEN / 4) as u8; // version 0, option length in 4-byte words
    h[g + 1] = GENEVE_FLAG_CRITICAL;
    h[g + 2..g + 4].copy_from_slice(&GENEVE_PROTO_ETHERNET.to_be_bytes());
    h[g + 4..g + 8].copy_from_slice(&(e.vni << 8).to_be_bytes());
    let o = g + GENEVE_LEN;
    h[o..o + 2].copy_from_slice(&OPTION_CLASS.to_be_bytes());
    h[o + 2] = OPTION_TYPE_PEERING;
    h[o + 3] = (size_of::<PeeringOption>() / 4) as u8;
    h[o + 4..o + 8].copy_from_slice(&e.option.source_vni_be);
    h[o + 8..o + 12].copy_from_slice(&e.option.tunnel_key_be);
}

/// Outer UDP source port for an inner flow: a hash of its addresses, protocol and ports,
/// so that underlay ECMP spreads flows while keeping each one on one path.
#[inline(always)]
pub fn flow_port(src: &[u8; 16], dst: &[u8; 16], proto: u8, sport: u16, dport: u16) -> u16 {
    // Each address folded to one word first (an IPv4 address is its last word): three
    // rounds of mixing instead of nine, on the hot path of every encapsulation.
    let fold = |a: &[u8; 16]| {
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        w(0) ^ w(4) ^ w(8) ^ w(12)
    };
    let mut h = mix(0x9e37_79b9 ^ proto as u32 ^ fold(src));
    h = mix(h ^ fold(dst).rotate_left(16));
    h = mix(h ^ ((sport as u32) << 16 | dport as u32));
    FLOW_PORT_BASE | (h as u16 & 0x3fff)
}

/// The 32-bit finaliser of MurmurHash3: every input bit affects every output bit.
#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_every_field_where_rfc_8926_puts_it() {
        let e = Encap {
            outer_dst_mac: [2, 0, 0, 0, 0, 2],
            outer_src_mac: [2, 0, 0, 0, 0, 1],
            src_ip: [192, 0, 2, 1],
            dst_ip: [192, 0, 2, 2],
            udp_sport: 50000,
            inner_len: 98,
            vni: 0x123456,
            option: PeeringOption {
                source_vni_be: 7u32.to_be_bytes(),
                tunnel_key_be: 9u32.to_be_bytes(),
            },
        };
        let h = encap_header(&e);
        assert_eq!(h.len(), 62);
        assert_eq!(&h[12..14], &[0x08, 0x00]);
        assert_eq!(u16::from_be_bytes([h[16], h[17]]), 48 + 98);
        assert_eq!(
            crate::checksum::ipv4_header(&h[14..34]),
            0,
            "valid header checksum"
        );
        assert_eq!(u16::from_be_bytes([h[36], h[37]]), 6081);
        assert_eq!(u16::from_be_bytes([h[38], h[39]]), 28 + 98);
        assert_eq!(&h[40..42], &[0, 0], "udp checksum zero");
        assert_eq!(h[42], 3, "three 4-byte words of options");
        assert_eq!(&h[44..46], &[0x65, 0x58]);
        assert_eq!(&h[46..50], &[0x12, 0x34, 0x56, 0]);
        assert_eq!(&h[50..54], &[0xff, 0x50, 0x81, 2]);
        assert_eq!(&h[54..62], &[0, 0, 0, 7, 0, 0, 0, 9]);
    }

    #[test]
    fn flow_ports_stay_in_the_dynamic_range_and_spread() {
        // 1000 flows into 16384 ports: count distinct ones without an allocator.
        let mut seen = [false; 16384];
        let mut distinct = 0;
        for sport in 0..1000u16 {
            let p = flow_port(&[1; 16], &[2; 16], 6, sport, 443);
            assert!(p >= FLOW_PORT_BASE);
            let i = (p - FLOW_PORT_BASE) as usize;
            distinct += !seen[i] as u32;
            seen[i] = true;
        }
        assert!(distinct > 900, "only {distinct} distinct ports");
    }
}
