//! Test packets, built with etherparse, and the transformations the data plane applies.

use etherparse::PacketBuilder;

pub type Mac = [u8; 6];

/// What the sender puts on the wire: instance MAC -> gateway MAC.
#[derive(Clone, Copy)]
pub struct L2 {
    pub src: Mac,
    pub dst: Mac,
    pub vlan: Option<u16>,
}

fn builder_v4(
    l2: L2,
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match l2.vlan {
        Some(v) => PacketBuilder::ethernet2(l2.src, l2.dst)
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv4(src, dst, ttl),
        None => PacketBuilder::ethernet2(l2.src, l2.dst).ipv4(src, dst, ttl),
    }
}

fn builder_v6(
    l2: L2,
    src: [u8; 16],
    dst: [u8; 16],
    hop: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match l2.vlan {
        Some(v) => PacketBuilder::ethernet2(l2.src, l2.dst)
            .single_vlan(etherparse::VlanId::try_new(v).unwrap())
            .ipv6(src, dst, hop),
        None => PacketBuilder::ethernet2(l2.src, l2.dst).ipv6(src, dst, hop),
    }
}

pub fn udp4(
    l2: L2,
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = builder_v4(l2, src, dst, ttl).udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

pub fn tcp4(l2: L2, src: [u8; 4], dst: [u8; 4], ttl: u8, sport: u16, dport: u16) -> Vec<u8> {
    let b = builder_v4(l2, src, dst, ttl)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut out = Vec::with_capacity(b.size(0));
    b.write(&mut out, &[]).unwrap();
    out
}

pub fn icmp4_echo(l2: L2, src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let b = builder_v4(l2, src, dst, ttl).icmpv4_echo_request(0x1234, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping-payload").unwrap();
    out
}

pub fn udp6(
    l2: L2,
    src: [u8; 16],
    dst: [u8; 16],
    hop: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = builder_v6(l2, src, dst, hop).udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

pub fn tcp6(l2: L2, src: [u8; 16], dst: [u8; 16], hop: u8, sport: u16, dport: u16) -> Vec<u8> {
    let b = builder_v6(l2, src, dst, hop)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

pub fn icmp6_echo(l2: L2, src: [u8; 16], dst: [u8; 16], hop: u8) -> Vec<u8> {
    let b = builder_v6(l2, src, dst, hop).icmpv6_echo_request(0x4321, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping6").unwrap();
    out
}

pub fn l3_offset(frame: &[u8]) -> usize {
    if frame[12] == 0x81 && frame[13] == 0x00 {
        18
    } else {
        14
    }
}

/// Recomputes the IPv4 header checksum in place.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let off = l3_offset(frame);
    let ihl = ((frame[off] & 0x0f) as usize) * 4;
    frame[off + 10] = 0;
    frame[off + 11] = 0;
    let c = peer_dataplane_common::checksum::ipv4_header(&frame[off..off + ihl]);
    frame[off + 10..off + 12].copy_from_slice(&c.to_be_bytes());
}

/// Inserts `options` (a multiple of 4 bytes) into an IPv4 frame's header.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let off = l3_offset(frame);
    let mut out = frame[..off + 20].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[off + 20..]);
    out[off] = 0x40 | ((20 + options.len()) / 4) as u8;
    let total = u16::from_be_bytes([out[off + 2], out[off + 3]]) + options.len() as u16;
    out[off + 2..off + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// Marks an IPv4 frame as a fragment (offset in 8-byte units, more-fragments flag).
pub fn as_ipv4_fragment(frame: &[u8], offset_units: u16, more: bool) -> Vec<u8> {
    let mut out = frame.to_vec();
    let off = l3_offset(&out);
    let v = (offset_units & 0x1fff) | if more { 0x2000 } else { 0 };
    out[off + 6..off + 8].copy_from_slice(&v.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// The frame a forwarded packet becomes: MACs rewritten, TTL/hop limit decremented
/// (IPv4 checksum recomputed from scratch, independently of the program's incremental
/// update), VLAN tag popped.
pub fn forwarded(frame: &[u8], dst_mac: Mac, src_mac: Mac) -> Vec<u8> {
    let off = l3_offset(frame);
    let mut out = Vec::with_capacity(frame.len());
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&frame[off - 2..]);
    if out[14] >> 4 == 4 {
        out[14 + 8] -= 1;
        fix_ipv4_checksum(&mut out);
    } else {
        out[14 + 7] -= 1;
    }
    out
}

/// IPv4 header checksum of a frame verifies.
pub fn ipv4_checksum_ok(frame: &[u8]) -> bool {
    let off = l3_offset(frame);
    let ihl = ((frame[off] & 0x0f) as usize) * 4;
    peer_dataplane_common::checksum::ipv4_header(&frame[off..off + ihl]) == 0
}

pub fn icmp4_echo_reply(l2: L2, src: [u8; 4], dst: [u8; 4], ttl: u8, id: u16) -> Vec<u8> {
    let b = builder_v4(l2, src, dst, ttl).icmpv4_echo_reply(id, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping-payload").unwrap();
    out
}

pub fn icmp6_echo_reply(l2: L2, src: [u8; 16], dst: [u8; 16], hop: u8, id: u16) -> Vec<u8> {
    let b = builder_v6(l2, src, dst, hop).icmpv6_echo_reply(id, 1);
    let mut out = Vec::new();
    b.write(&mut out, b"ping6").unwrap();
    out
}

/// TCP flag sets for [`tcp4_flags`].
pub const SYN: u8 = 0x02;
pub const SYN_ACK: u8 = 0x12;
pub const ACK: u8 = 0x10;
pub const RST: u8 = 0x04;
pub const FIN_ACK: u8 = 0x11;

/// A TCP segment with the given flags (FIN, SYN, RST, ACK bits).
pub fn tcp4_flags(
    l2: L2,
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut b = builder_v4(l2, src, dst, 64).tcp(sport, dport, 1000, 64240);
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & RST != 0 {
        b = b.rst();
    }
    if flags & ACK != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}
