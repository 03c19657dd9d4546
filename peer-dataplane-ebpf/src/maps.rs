//! The program's maps. Shapes and names come from `peer-dataplane-common`; all are pinned
//! by name so the agent, the CLI and a restarted agent find the same objects.

use crate::parse::Packet;
use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use peer_dataplane_common::{
    acl::{AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey, ACL_HIT_SLOTS, MAX_ACL_SETS},
    clock::Clock,
    conntrack::{CtEntry, CtKey, MAX_CT_ENTRIES},
    counters::{GlobalCounters, PeeringCounters},
    trace::TraceRecord,
    Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteData, RouteValue, BPF_F_NO_PREALLOC,
    MAX_ACL_ENTRIES, MAX_ENDPOINTS, MAX_NAMES, MAX_PEERINGS, MAX_PORTS, MAX_ROUTES,
};

#[map(name = "pdp_ports")]
pub static PORTS: HashMap<u32, Port> = HashMap::pinned(MAX_PORTS, BPF_F_NO_PREALLOC);

#[map(name = "pdp_routes")]
pub static ROUTES: LpmTrie<RouteData, RouteValue> = LpmTrie::pinned(MAX_ROUTES, 0);

#[map(name = "pdp_peerings")]
pub static PEERINGS: HashMap<u32, Peering> = HashMap::pinned(MAX_PEERINGS, BPF_F_NO_PREALLOC);

#[map(name = "pdp_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> =
    HashMap::pinned(MAX_ENDPOINTS, BPF_F_NO_PREALLOC);

#[map(name = "pdp_devmap")]
pub static DEVMAP: DevMapHash = DevMapHash::pinned(MAX_PORTS, 0);

#[map(name = "pdp_global_ctr")]
pub static GLOBAL_COUNTERS: PerCpuArray<GlobalCounters> = PerCpuArray::pinned(1, 0);

#[map(name = "pdp_pcx_ctr")]
pub static PEERING_COUNTERS: PerCpuArray<PeeringCounters> =
    PerCpuArray::pinned(MAX_PEERINGS * 2, 0);

/// Written and read by userspace only; declared here so that one object defines every
/// pinned map the agent uses.
#[map(name = "pdp_names")]
pub static NAMES: HashMap<NameKey, Name> = HashMap::pinned(MAX_NAMES, BPF_F_NO_PREALLOC);

/// Network ACL lookups (see `peer_dataplane_common::acl`). The tries are not preallocated.
#[map(name = "pdp_acl_addr")]
pub static ACL_ADDR: LpmTrie<RouteData, AclBits> = LpmTrie::pinned(MAX_ACL_ENTRIES, 0);

#[map(name = "pdp_acl_port")]
pub static ACL_PORT: LpmTrie<AclPortData, AclBits> = LpmTrie::pinned(MAX_ACL_ENTRIES, 0);

#[map(name = "pdp_acl_proto")]
pub static ACL_PROTO: HashMap<AclProtoKey, AclBits> =
    HashMap::pinned(MAX_ACL_SETS * 8, BPF_F_NO_PREALLOC);

#[map(name = "pdp_acl_meta")]
pub static ACL_META: HashMap<u32, AclMeta> = HashMap::pinned(MAX_ACL_SETS, BPF_F_NO_PREALLOC);

/// Host addresses and single ports of ACL sets, looked up before the tries.
#[map(name = "pdp_acl_exact")]
pub static ACL_EXACT: HashMap<AclExactKey, AclBits> =
    HashMap::pinned(MAX_ACL_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-rule hits, per CPU: slot `hit_base + rule bit` of the set.
#[map(name = "pdp_acl_hits")]
pub static ACL_HITS: PerCpuArray<u64> = PerCpuArray::pinned(ACL_HIT_SLOTS, 0);

/// Security-group connection tracking (see `peer_dataplane_common::conntrack`).
#[map(name = "pdp_conntrack")]
pub static CONNTRACK: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAX_CT_ENTRIES, 0);

/// Per-CPU slot for the parsed packet (see `parse::parse` for why not the stack).
#[map]
pub static PKT_SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch for the two conntrack keys of a packet (its own and the reversed one).
#[map]
pub static CT_SCRATCH: PerCpuArray<CtKey> = PerCpuArray::with_max_entries(2, 0);

/// Bandwidth-cap buckets, one per peering and direction (the GCRA `tat`, in ns), shared
/// by all CPUs: a cap is for the host as a whole.
#[map(name = "pdp_cap_state")]
pub static CAP_STATE: Array<u64> = Array::pinned(MAX_PEERINGS * 2, 0);

/// What `pdp_trace` saw of the last packet it ran on this CPU (`peer-dataplane trace`).
#[map(name = "pdp_trace_rec")]
pub static TRACE: PerCpuArray<TraceRecord> = PerCpuArray::pinned(1, 0);

/// Frames `pdp_sink` received, per CPU: slot 0 those matching `pdp_sink_match`, slot 1 the
/// rest (benchmarks and tests only; not pinned).
#[map(name = "pdp_sink_count")]
pub static SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The UDP destination port `pdp_sink` counts as the sender's frames (0: every frame).
#[map(name = "pdp_sink_match")]
pub static SINK_MATCH: Array<u32> = Array::with_max_entries(1, 0);

/// The program's clock setting (see `peer_dataplane_common::clock`); zero in production.
#[map(name = "pdp_clock")]
pub static CLOCK: Array<Clock> = Array::pinned(1, 0);
