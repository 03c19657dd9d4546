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
