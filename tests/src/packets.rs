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

/// The outer side of a Geneve frame as a test writes it by hand (independently of the
/// data plane's own header code).
#[derive(Clone, Copy)]
pub struct Outer {
    pub src_mac: Mac,
    pub dst_mac: Mac,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub udp_sport: u16,
    pub udp_dport: u16,
    /// Byte 0 of the Geneve header's version bits (0 for RFC 8926).
    pub version: u8,
    /// The flags byte (O = 0x80, C = 0x40).
    pub flags: u8,
    pub protocol: u16,
    pub vni: u32,
    /// Outer IPv4 flags/fragment-offset word (0x4000: DF).
    pub frag: u16,
}

impl Outer {
    /// What a host of the fleet sends: IPv4 with DF, UDP 51000 -> 6081, Geneve version 0
    /// with the C flag and an Ethernet payload, VNI `vni`.
    pub fn geneve(src_mac: Mac, dst_mac: Mac, src: [u8; 4], dst: [u8; 4], vni: u32) -> Outer {
        Outer {
            src_mac,
            dst_mac,
            src,
            dst,
            udp_sport: 51000,
            udp_dport: 6081,
            version: 0,
            flags: 0x40,
            protocol: 0x6558,
            vni,
            frag: 0x4000,
        }
    }
}

/// One Geneve option: class, type, data (a multiple of 4 bytes).
pub fn geneve_option(class: u16, typ: u8, data: &[u8]) -> Vec<u8> {
    assert!(data.len().is_multiple_of(4));
    let mut o = class.to_be_bytes().to_vec();
    o.push(typ);
    o.push((data.len() / 4) as u8);
    o.extend_from_slice(data);
    o
}

/// The product's peering option: source VNI, tunnel key.
pub fn peering_option(source_vni: u32, tunnel_key: u32) -> Vec<u8> {
    let mut d = source_vni.to_be_bytes().to_vec();
    d.extend_from_slice(&tunnel_key.to_be_bytes());
    geneve_option(0xff50, 0x81, &d)
}

/// `inner` (an Ethernet frame) in outer Ethernet / IPv4 / UDP / Geneve with `options`.
pub fn geneve4(o: Outer, options: &[u8], inner: &[u8]) -> Vec<u8> {
    let geneve_len = 8 + options.len();
    let udp_len = 8 + geneve_len + inner.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&o.dst_mac);
    f.extend_from_slice(&o.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(&o.frag.to_be_bytes());
    ip.extend_from_slice(&[64, 17, 0, 0]);
    ip.extend_from_slice(&o.src);
    ip.extend_from_slice(&o.dst);
    let c = !fold16(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&o.udp_sport.to_be_bytes());
    f.extend_from_slice(&o.udp_dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.push((o.version << 6) | (options.len() / 4) as u8);
    f.push(o.flags);
    f.extend_from_slice(&o.protocol.to_be_bytes());
    f.extend_from_slice(&(o.vni << 8).to_be_bytes());
    f.extend_from_slice(options);
    f.extend_from_slice(inner);
    f
}

/// One's-complement sum of 16-bit big-endian words (odd tail padded), folded.
pub fn fold16(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}
