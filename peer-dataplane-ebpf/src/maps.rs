//! The program's maps. Capacity and flags of every pinned map come from
//! `peer_dataplane_common::registry`; all are pinned by name so the agent, the CLI and a
//! restarted agent find the same objects.

use crate::parse::Packet;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use peer_dataplane_common::{
    acl::{AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey},
    clock::Clock,
    conntrack::{CtEntry, CtKey},
    counters::{GlobalCounters, PeeringCounters},
    flowcache::{FlowCounters, FlowEntry, FlowKey, FlowSlot, FlowTags},
    overlay::{HostKey, OverlayConfig, OverlayIdKey},
    registry,
    trace::TraceRecord,
    Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteData, RouteValue,
};

/// A pinned map with the capacity and flags the registry gives it.
macro_rules! pinned {
    ($map:ident, $spec:ident) => {
        $map::pinned(registry::$spec.max_entries, registry::$spec.flags)
    };
}

#[map(name = "pdp_ports")]
pub static PORTS: HashMap<u32, Port> = pinned!(HashMap, PORTS);

#[map(name = "pdp_routes")]
pub static ROUTES: LpmTrie<RouteData, RouteValue> = pinned!(LpmTrie, ROUTES);

#[map(name = "pdp_peerings")]
pub static PEERINGS: HashMap<u32, Peering> = pinned!(HashMap, PEERINGS);

#[map(name = "pdp_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> = pinned!(HashMap, ENDPOINTS);

#[map(name = "pdp_devmap")]
pub static DEVMAP: DevMapHash = pinned!(DevMapHash, DEVMAP);

#[map(name = "pdp_global_ctr")]
pub static GLOBAL_COUNTERS: PerCpuArray<GlobalCounters> = pinned!(PerCpuArray, GLOBAL_COUNTERS);

#[map(name = "pdp_pcx_ctr")]
pub static PEERING_COUNTERS: PerCpuArray<PeeringCounters> = pinned!(PerCpuArray, PEERING_COUNTERS);

/// Written and read by userspace only; declared here so that one object defines every
/// pinned map the agent uses.
#[map(name = "pdp_names")]
pub static NAMES: HashMap<NameKey, Name> = pinned!(HashMap, NAMES);

/// Network ACL lookups (see `peer_dataplane_common::acl`). The tries are not preallocated.
#[map(name = "pdp_acl_addr")]
pub static ACL_ADDR: LpmTrie<RouteData, AclBits> = pinned!(LpmTrie, ACL_ADDR);

#[map(name = "pdp_acl_port")]
pub static ACL_PORT: LpmTrie<AclPortData, AclBits> = pinned!(LpmTrie, ACL_PORT);

#[map(name = "pdp_acl_proto")]
pub static ACL_PROTO: HashMap<AclProtoKey, AclBits> = pinned!(HashMap, ACL_PROTO);

#[map(name = "pdp_acl_meta")]
pub static ACL_META: HashMap<u32, AclMeta> = pinned!(HashMap, ACL_META);

/// Host addresses and single ports of ACL sets, looked up before the tries.
#[map(name = "pdp_acl_exact")]
pub static ACL_EXACT: HashMap<AclExactKey, AclBits> = pinned!(HashMap, ACL_EXACT);

/// Per-rule hits, per CPU: slot `hit_base + rule bit` of the set.
#[map(name = "pdp_acl_hits")]
pub static ACL_HITS: PerCpuArray<u64> = pinned!(PerCpuArray, ACL_HITS);

/// Security-group connection tracking (see `peer_dataplane_common::conntrack`).
#[map(name = "pdp_conntrack")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = pinned!(LruHashMap, CONNTRACK);

/// Flow decisions, per CPU (see `peer_dataplane_common::flowcache`).
#[map(name = "pdp_flow_cache")]
pub static FLOW_CACHE: PerCpuArray<FlowSlot> = pinned!(PerCpuArray, FLOW_CACHE);

/// The installed state's epoch (slot 0): moved on by the agent after every change.
#[map(name = "pdp_epoch")]
pub static EPOCH: Array<u64> = pinned!(Array, EPOCH);

/// What the flow cache did, per CPU.
#[map(name = "pdp_flow_stats")]
pub static FLOW_STATS: PerCpuArray<FlowCounters> = pinned!(PerCpuArray, FLOW_STATS);

/// Per-CPU tags of the flow-decision slots (`peer_dataplane_common::flowcache::tag`).
/// Not pinned: a program loaded anew starts with no tag matching, so each flow misses
/// and has its decision kept again (on its second miss, as a new flow).
#[map]
pub static FLOW_TAGS: PerCpuArray<FlowTags> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU slot for a packet's flow-cache key (kept off the 512-byte stack).
#[map]
pub static FLOW_SCRATCH: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU slot a flow decision is built in before it is kept (off the stack too).
#[map]
pub static ENTRY_SCRATCH: PerCpuArray<FlowEntry> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU slot for the parsed packet (see `parse::parse` for why not the stack).
#[map]
pub static PKT_SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for the two conntrack keys of a packet (its own and the reversed one).
#[map]
pub static CT_SCRATCH: PerCpuArray<CtKey> = PerCpuArray::with_max_entries(2, 0);

/// Bandwidth-cap buckets, one per peering and direction (the GCRA `tat`, in ns), shared
/// by all CPUs: a cap is for the host as a whole.
#[map(name = "pdp_cap_state")]
pub static CAP_STATE: Array<u64> = pinned!(Array, CAP_STATE);

/// What `pdp_trace` saw of the last packet it ran on this CPU (`peer-dataplane trace`).
#[map(name = "pdp_trace_rec")]
pub static TRACE: PerCpuArray<TraceRecord> = pinned!(PerCpuArray, TRACE);

/// Frames `pdp_sink` received, per CPU: slot 0 those matching `pdp_sink_match`, slot 1 the
/// rest, slot 2 the bytes of slot 0's (benchmarks and tests only; not pinned).
#[map(name = "pdp_sink_count")]
pub static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// The UDP destination ports `pdp_sink` counts as the sender's frames: slot 0 the first,
/// slot 1 the last (0 in slot 0: every frame).
#[map(name = "pdp_sink_match")]
pub static SINK_MATCH: Array<u32> = Array::with_max_entries(2, 0);

/// `pdp_loadgen` (benchmarks only; not pinned): flows, whether frames go on to the
/// pipeline, the first source and destination ports.
#[map(name = "pdp_loadgen_cfg")]
pub static LOADGEN_CFG: Array<u32> = Array::with_max_entries(4, 0);

/// `pdp_loadgen`'s per-CPU sequence: the next frame's flow.
#[map(name = "pdp_loadgen_seq")]
pub static LOADGEN_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// `pdp_loadgen`'s next program (slot 0): the pipeline.
#[map(name = "pdp_loadgen_next")]
pub static LOADGEN_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Per-CPU slot holding the current packet's instant once read (`clock::now`).
#[map]
pub static NOW_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The program's clock setting (see `peer_dataplane_common::clock`); zero in production.
#[map(name = "pdp_clock")]
pub static CLOCK: Array<Clock> = pinned!(Array, CLOCK);

/// This host's place in the overlay (see `peer_dataplane_common::overlay`).
#[map(name = "pdp_overlay")]
pub static OVERLAY: Array<OverlayConfig> = pinned!(Array, OVERLAY);

/// Hosts of the overlay by underlay address (value: slot): the decap path's check that a
/// tunnel comes from a known host.
#[map(name = "pdp_hosts")]
pub static HOSTS: HashMap<HostKey, u32> = pinned!(HashMap, HOSTS);

/// VNIs -> VPC ids and tunnel keys -> peering slots, for the decap path.
#[map(name = "pdp_overlay_ids")]
pub static OVERLAY_IDS: HashMap<OverlayIdKey, u32> = pinned!(HashMap, OVERLAY_IDS);

/// Host slots whose next hop is cached (slots are numbered from 1 in the order a host
/// meets them; a host beyond these asks the FIB for every packet).
pub const CACHED_HOSTS: u32 = 1024;

/// A FIB answer toward a host's underlay address.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    /// The host's underlay address the answer is for (a host may move).
    pub underlay: [u8; 16],
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub ifindex: u32,
    /// The route's MTU, if below the uplink's (0: the uplink's).
    pub route_mtu: u32,
    pub expires_ns: u64,
}

/// Next hops toward other hosts by host slot (the first [`CACHED_HOSTS`]), per CPU:
/// what `bpf_fib_lookup` answered, for a short while (see `encap::NEXT_HOP_LIFETIME_NS`).
/// A cache, not state: not pinned, empty after a restart. An array, not a hash: the
/// lookup is an index, on the path of every encapsulated packet.
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(CACHED_HOSTS, 0);
