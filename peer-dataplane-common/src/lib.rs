//! The ABI shared by the XDP program and the agent: map names, map keys and values,
//! drop/pass reasons and counter layouts, plus the small pieces of arithmetic both sides
//! need (address encoding, prefix masking, checksum updates).
//!
//! Every type here is `#[repr(C)]` with explicit padding and its size pinned at compile
//! time: the eBPF object and the agent are built separately and must agree bit for bit.
#![no_std]

pub mod acl;
pub mod addr;
pub mod cap;
pub mod checksum;
pub mod clock;
pub mod conntrack;
pub mod counters;
pub mod flowcache;
pub mod overlay;
pub mod reason;
pub mod registry;
pub mod trace;

pub use reason::{DropReason, PassReason};

use core::mem::size_of;

/// Map names as they appear in the ELF object and as file names under [`PIN_DIR`].
pub use registry::names as map_names;

pub use registry::BPF_F_NO_PREALLOC;

/// Program names (ELF symbols) of the XDP entry points.
pub mod program_names {
    /// The forwarding pipeline.
    pub const PIPELINE: &str = "pdp_xdp";
    /// Benchmark baseline: a program that only redirects.
    pub const REDIRECT_ONLY: &str = "pdp_redirect_only";
    /// The pipeline with side effects off, recording each stage (`peer-dataplane trace`).
    pub const TRACE: &str = "pdp_trace";
    /// The programs the agent pins under `<pin dir>/programs/`, for the CLI's
    /// BPF_PROG_RUN (`trace`, `loadgen`) on the loaded code and its maps.
    pub const PINNED: [&str; 2] = [PIPELINE, TRACE];
    /// Benchmarks: hands every frame to the kernel's stack (`bench e2e`'s Linux run).
    pub const PASS: &str = "pdp_pass";
    /// Benchmarks: a flow of its own for each live frame, then the pipeline or the kernel.
    pub const LOADGEN: &str = "pdp_loadgen";
    /// Benchmarks: counts and drops every frame, behind the destination port.
    pub const SINK: &str = "pdp_sink";
    pub const PIN_SUBDIR: &str = "programs";
}

/// Where the agent pins its maps (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/peer-dataplane";

/// Capacity of each map. Hash maps are preallocated by the kernel, so these sizes are
/// the kernel memory the agent commits to at load time; the LPM trie is not preallocated.
pub const MAX_PORTS: u32 = 4096;
pub const MAX_ROUTES: u32 = 2 * 1024 * 1024;
/// Peerings are addressed by a dense slot so that their counters can live in a per-CPU
/// array (no hashing, no atomics on the hot path).
pub const MAX_PEERINGS: u32 = 1024;
pub const MAX_ENDPOINTS: u32 = 65536;
/// Hosts of the overlay a host may exchange traffic with.
pub const MAX_HOSTS: u32 = 16384;
/// VNIs and peering tunnel keys a host knows.
pub const MAX_OVERLAY_IDS: u32 = 65536;
/// Names of objects, and the rule number behind every ACL hit slot (up to
/// `acl::ACL_HIT_SLOTS` of those alone).
pub const MAX_NAMES: u32 = 65536;
/// Entries in each ACL lookup map (all sets together).
pub const MAX_ACL_ENTRIES: u32 = 262144;

/// Route-table ids below this value name real route tables; ids at or above it name the
/// per-VPC "CIDR table" (`VPC_TABLE_BASE | vpc_id`), which holds the VPC's own CIDRs and
/// answers "is this address inside VPC v?" with the same LPM lookup as routing.
pub const VPC_TABLE_BASE: u32 = 0x8000_0000;

#[inline(always)]
pub const fn vpc_table(vpc_id: u32) -> u32 {
    VPC_TABLE_BASE | vpc_id
}

/// Route tables are double-buffered in the trie: table id `t` lives under key `2t` or
/// `2t + 1` (its generation). A change to several routes of one table fills the other
/// generation, then flips the ports and endpoints that use the table (one atomic write
/// each), then clears the old one: no packet sees half of a table change (docs/datapath.md §3.8).
#[inline(always)]
pub const fn route_table_key(table_id: u32, generation: u32) -> u32 {
    (table_id << 1) | (generation & 1)
}

/// The route table id of a trie table key (see [`route_table_key`]).
#[inline(always)]
pub const fn route_table_id(key: u32) -> u32 {
    key >> 1
}

/// The generation of a trie table key (see [`route_table_key`]).
#[inline(always)]
pub const fn route_table_generation(key: u32) -> u32 {
    key & 1
}

/// Route table ids stay below this so that their keys stay below [`VPC_TABLE_BASE`].
pub const MAX_ROUTE_TABLE_ID: u32 = VPC_TABLE_BASE >> 1;

// ---------------------------------------------------------------------------------------
// Ports: ingress ifindex -> the instance attachment behind it.

pub const PORT_HAS_IPV4: u32 = 1 << 0;
pub const PORT_HAS_IPV6: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Port {
    pub vpc: u32,
    pub subnet: u32,
    pub route_table: u32,
    /// `PORT_HAS_*` bits.
    pub flags: u32,
    /// The instance's own addresses (IPv4 in mapped form, see [`addr`]); a packet whose
    /// source is one of these skips the VPC-membership lookup of the transitivity check.
    pub ipv4: [u8; 16],
    pub ipv6: [u8; 16],
    /// The instance's MAC.
    pub mac: [u8; 6],
    /// The virtual router MAC the instance sees as its gateway on this port.
    pub gw_mac: [u8; 6],
    /// Egress ACL set of the port's subnet ([`acl::acl_set`]), or [`acl::NO_ACL`].
    pub acl: u32,
    /// Egress set of the port's security groups (an ACL set whose rules all allow), or
    /// [`acl::NO_ACL`] for a port without security groups.
    pub sg: u32,
    /// VNI of the port's VPC: the source VPC a Geneve option names for traffic from this
    /// port to another host (0 on a single host).
    pub vni: u32,
}
const _: () = assert!(size_of::<Port>() == 72);

// ---------------------------------------------------------------------------------------
// Routes: one LPM trie keyed by (table, prefix). The key is the `aya` LPM `Key<RouteData>`
// (a u32 prefix length followed by `RouteData`), 24 bytes in all.

/// LPM key data: table id (big-endian, so that it is the most significant 32 bits of the
/// matched string) followed by a 128-bit address (IPv4 as `::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RouteData {
    pub table_be: [u8; 4],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<RouteData>() == 20);

/// Bits of the LPM key taken by the table id.
pub const ROUTE_TABLE_BITS: u32 = 32;

pub const ROUTE_LOCAL: u32 = 1;
pub const ROUTE_PCX: u32 = 2;
pub const ROUTE_BLACKHOLE: u32 = 3;
/// Entry of a per-VPC CIDR table ([`vpc_table`]).
pub const ROUTE_VPC_CIDR: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteValue {
    /// `ROUTE_*`.
    pub kind: u32,
    /// Peering slot for `ROUTE_PCX`, VPC id for `ROUTE_VPC_CIDR`, else 0.
    pub target: u32,
}
const _: () = assert!(size_of::<RouteValue>() == 8);

/// Builds the LPM key (prefix length in bits, data) for `addr/prefix_len` in `table`.
/// `addr` is a 16-byte address from [`addr`]; `prefix_len` is in the address family's own
/// bits (0..=32 for IPv4, 0..=128 for IPv6). Host bits are cleared.
#[inline(always)]
pub fn route_key(table: u32, addr: &[u8; 16], prefix_len: u32, is_v4: bool) -> (u32, RouteData) {
    let addr_bits = if is_v4 {
        addr::V4_MAPPED_PREFIX_BITS + prefix_len
    } else {
        prefix_len
    };
    let data = RouteData {
        table_be: table.to_be_bytes(),
        addr: addr::mask(addr, addr_bits),
    };
    (ROUTE_TABLE_BITS + addr_bits, data)
}

// ---------------------------------------------------------------------------------------
// Peerings: slot -> connection.

pub const PCX_PENDING_ACCEPTANCE: u32 = 1;
pub const PCX_ACTIVE: u32 = 2;
pub const PCX_REJECTED: u32 = 3;
pub const PCX_EXPIRED: u32 = 4;
pub const PCX_FAILED: u32 = 5;
pub const PCX_DELETED: u32 = 6;

pub fn pcx_status_str(status: u32) -> &'static str {
    match status {
        PCX_PENDING_ACCEPTANCE => "pending-acceptance",
        PCX_ACTIVE => "active",
        PCX_REJECTED => "rejected",
        PCX_EXPIRED => "expired",
        PCX_FAILED => "failed",
        PCX_DELETED => "deleted",
        _ => "unknown",
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peering {
    /// `PCX_*`.
    pub status: u32,
    pub requester_vpc: u32,
    pub accepter_vpc: u32,
    pub flags: u32,
    /// Bandwidth cap per direction, indexed by `DIR_*`. Across hosts, each sending host's
    /// share of the peering's cap.
    pub cap: [cap::CapConfig; 2],
    /// The fleet-wide number of the peering, carried in the Geneve option (0 on a single
    /// host).
    pub tunnel_key: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Peering>() == 56);

/// Direction of traffic over a peering, as seen from the requester.
pub const DIR_REQUESTER_TO_ACCEPTER: u32 = 0;
pub const DIR_ACCEPTER_TO_REQUESTER: u32 = 1;
/// The one spelling of each direction, indexed by `DIR_*`: in tables, JSON values, trace
/// facts and metric labels alike.
pub const DIRECTIONS: [&str; 2] = ["requester_to_accepter", "accepter_to_requester"];

/// Index into the per-peering counter array.
#[inline(always)]
pub const fn peering_counter_index(slot: u32, dir: u32) -> u32 {
    slot * 2 + dir
}

// ---------------------------------------------------------------------------------------
// Endpoints: (VPC, address) -> where the instance lives.

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EndpointKey {
    pub vpc: u32,
    /// IPv4 in mapped form.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<EndpointKey>() == 20);

/// The instance is behind a port of this host: deliver through the devmap.
pub const ENDPOINT_LOCAL: u32 = 1;
/// The instance lives on another host: encapsulate toward `Endpoint::underlay`.
pub const ENDPOINT_REMOTE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// Interface of the local port (also its devmap key).
    pub ifindex: u32,
    /// Route table of the destination's subnet: the return-route check looks here.
    pub route_table: u32,
    pub subnet: u32,
    /// `ENDPOINT_*`.
    pub flags: u32,
    /// Destination MAC written on delivery.
    pub mac: [u8; 6],
    /// Source MAC written on delivery: the router MAC of the destination port.
    pub gw_mac: [u8; 6],
    /// Ingress ACL set of the destination's subnet ([`acl::acl_set`]), or [`acl::NO_ACL`].
    pub acl: u32,
    /// Ingress set of the destination port's security groups, or [`acl::NO_ACL`].
    pub sg: u32,
    /// Remote endpoints: the slot of the host that carries the instance (the decap check
    /// compares it with the tunnel's sender), else 0.
    pub host: u32,
    /// VNI of the endpoint's VPC (0 on a single host).
    pub vni: u32,
    /// Remote endpoints: the carrying host's underlay address (IPv4 in mapped form).
    pub underlay: [u8; 16],
}
const _: () = assert!(size_of::<Endpoint>() == 60);

// ---------------------------------------------------------------------------------------
// Names: userspace-only map that lets the CLI (and a restarted agent) turn ids back into
// the control plane's names without any other state on disk.

pub const NAME_VPC: u32 = 1;
pub const NAME_SUBNET: u32 = 2;
pub const NAME_ROUTE_TABLE: u32 = 3;
pub const NAME_PEERING: u32 = 4;
pub const NAME_PORT: u32 = 5;
pub const NAME_ACL: u32 = 6;
/// A distinct combination of security groups on ports (compiled as one ACL set).
pub const NAME_SG_SET: u32 = 7;
/// The rule number (as text) behind ACL hit slot `id`, for `peer-dataplane acl hits`.
pub const NAME_ACL_RULE: u32 = 8;
/// A host of the overlay, by its slot in `pdp_hosts`.
pub const NAME_HOST: u32 = 9;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NameKey {
    /// `NAME_*`.
    pub kind: u32,
    pub id: u32,
}
const _: () = assert!(size_of::<NameKey>() == 8);

pub const NAME_MAX_LEN: usize = 60;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    pub len: u32,
    pub bytes: [u8; NAME_MAX_LEN],
}
const _: () = assert!(size_of::<Name>() == 64);

impl Name {
    /// Truncates at [`NAME_MAX_LEN`] bytes (on a char boundary); the agent refuses longer
    /// ids before they get here.
    pub fn new(s: &str) -> Self {
        let mut end = s.len().min(NAME_MAX_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; NAME_MAX_LEN];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Name {
            len: end as u32,
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(NAME_MAX_LEN);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("?")
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte arrays, with no
    // implicit padding (sizes are asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Port {}
    unsafe impl aya::Pod for super::RouteData {}
    unsafe impl aya::Pod for super::RouteValue {}
    unsafe impl aya::Pod for super::Peering {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::Name {}
    unsafe impl aya::Pod for super::counters::GlobalCounters {}
    unsafe impl aya::Pod for super::counters::PeeringCounters {}
    unsafe impl aya::Pod for super::acl::AclBits {}
    unsafe impl aya::Pod for super::acl::AclMeta {}
    unsafe impl aya::Pod for super::acl::AclPortData {}
    unsafe impl aya::Pod for super::acl::AclProtoKey {}
    unsafe impl aya::Pod for super::acl::AclExactKey {}
    unsafe impl aya::Pod for super::conntrack::CtKey {}
    unsafe impl aya::Pod for super::conntrack::CtEntry {}
    unsafe impl aya::Pod for super::flowcache::FlowKey {}
    unsafe impl aya::Pod for super::flowcache::FlowEntry {}
    unsafe impl aya::Pod for super::flowcache::FlowSlot {}
    unsafe impl aya::Pod for super::flowcache::FlowCounters {}
    unsafe impl aya::Pod for super::trace::TraceRecord {}
    unsafe impl aya::Pod for super::clock::Clock {}
    unsafe impl aya::Pod for super::overlay::OverlayConfig {}
    unsafe impl aya::Pod for super::overlay::OverlayIdKey {}
    unsafe impl aya::Pod for super::overlay::HostKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_round_trip() {
        for (id, generation) in [(1, 0), (5, 1), (MAX_ROUTE_TABLE_ID - 1, 1)] {
            let key = route_table_key(id, generation);
            assert_eq!(
                (route_table_id(key), route_table_generation(key)),
                (id, generation)
            );
            assert!(key < VPC_TABLE_BASE);
        }
    }

    #[test]
    fn route_key_masks_host_bits_and_counts_table_bits() {
        let a = addr::from_v4([10, 1, 2, 3]);
        let (plen, data) = route_key(7, &a, 16, true);
        assert_eq!(plen, 32 + 96 + 16);
        assert_eq!(data.table_be, [0, 0, 0, 7]);
        assert_eq!(data.addr, addr::from_v4([10, 1, 0, 0]));

        let v6 = [0xfd, 0, 0xa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let (plen, data) = route_key(vpc_table(3), &v6, 48, false);
        assert_eq!(plen, 32 + 48);
        assert_eq!(data.table_be, [0x80, 0, 0, 3]);
        assert_eq!(&data.addr[..6], &v6[..6]);
        assert!(data.addr[6..].iter().all(|b| *b == 0));
    }

    #[test]
    fn name_round_trips_and_truncates_on_char_boundary() {
        assert_eq!(Name::new("pcx-0123abcd").as_str(), "pcx-0123abcd");
        let long = "é".repeat(40); // 80 bytes
        let n = Name::new(&long);
        assert!(n.len as usize <= NAME_MAX_LEN);
        assert_eq!(n.as_str(), "é".repeat(30));
    }

    #[test]
    fn counter_index_is_dense() {
        assert_eq!(peering_counter_index(0, DIR_REQUESTER_TO_ACCEPTER), 0);
        assert_eq!(peering_counter_index(0, DIR_ACCEPTER_TO_REQUESTER), 1);
        assert_eq!(
            peering_counter_index(MAX_PEERINGS - 1, 1),
            MAX_PEERINGS * 2 - 1
        );
    }
}
