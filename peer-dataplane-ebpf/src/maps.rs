//! The program's maps. Shapes and names come from `peer-dataplane-common`; all are pinned
//! by name so the agent, the CLI and a restarted agent find the same objects.

use aya_ebpf::{
    macros::map,
    maps::{DevMapHash, HashMap, LpmTrie, PerCpuArray},
};
use peer_dataplane_common::{
    counters::{GlobalCounters, PeeringCounters},
    Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteData, RouteValue, MAX_ENDPOINTS,
    MAX_NAMES, MAX_PEERINGS, MAX_PORTS, MAX_ROUTES,
};

#[map(name = "pdp_ports")]
pub static PORTS: HashMap<u32, Port> = HashMap::pinned(MAX_PORTS, 0);

#[map(name = "pdp_routes")]
pub static ROUTES: LpmTrie<RouteData, RouteValue> = LpmTrie::pinned(MAX_ROUTES, 0);

#[map(name = "pdp_peerings")]
pub static PEERINGS: HashMap<u32, Peering> = HashMap::pinned(MAX_PEERINGS, 0);

#[map(name = "pdp_endpoints")]
pub static ENDPOINTS: HashMap<EndpointKey, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

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
pub static NAMES: HashMap<NameKey, Name> = HashMap::pinned(MAX_NAMES, 0);
