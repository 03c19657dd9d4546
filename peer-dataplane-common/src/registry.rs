//! The one list of pinned maps: name, kind, key and value types, capacity and flags. The
//! program's map definitions take their capacity and flags from here; the agent derives
//! from it the pin names, the layout check of pins left by another build, the snapshot
//! reader and the capacities the metrics report. Adding a map is one line here plus its
//! definition in the program and its uses.

use crate::acl::{AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey, ACL_HIT_SLOTS};
use crate::clock::Clock;
use crate::conntrack::{CtEntry, CtKey, MAX_CT_ENTRIES};
use crate::counters::{GlobalCounters, PeeringCounters};
use crate::flowcache::{FlowCounters, FlowSlot, FLOW_SLOTS};
use crate::overlay::{HostKey, OverlayConfig, OverlayIdKey};
use crate::trace::TraceRecord;
use crate::{
    Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteData, RouteValue, MAX_ACL_ENTRIES,
    MAX_ENDPOINTS, MAX_HOSTS, MAX_NAMES, MAX_OVERLAY_IDS, MAX_PEERINGS, MAX_PORTS, MAX_ROUTES,
};
use core::mem::size_of;

/// Map flag: entries are allocated on update and freed after an RCU grace period. The
/// hash maps the program reads in place use it, so that a packet never reads an entry half
/// old, half new (a preallocated map hands a replaced element to the next update at once;
/// docs/datapath.md §3.8). The agent refuses pins of those maps made without it.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// The BPF map type of a registry entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapKind {
    Hash,
    LruHash,
    LpmTrie,
    Array,
    PerCpuArray,
    DevMapHash,
}

/// One pinned map as this build defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSpec {
    /// Pin name under the pin directory (and the map's name in the object).
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapSpec {
    pub const fn preallocated(&self) -> bool {
        self.flags & BPF_F_NO_PREALLOC == 0
    }

    /// Bytes of a value the agent holds: all of it, but for a devmap, whose value is the
    /// target ifindex followed by a chained program's fd that the agent leaves 0 (none).
    pub const fn held_value_size(&self) -> u32 {
        match self.kind {
            MapKind::DevMapHash => size_of::<u32>() as u32,
            _ => self.value_size,
        }
    }
}

/// The key of an LPM trie as the kernel lays it out: prefix length, then the data, with
/// no padding after it (the kernel's key size is 4 + the data's size).
#[repr(C, packed)]
pub struct LpmKey<T> {
    pub prefix_len: u32,
    pub data: T,
}

/// `struct bpf_devmap_val`: the target ifindex and a chained program (unused, 0).
#[repr(C)]
pub struct DevmapValue {
    pub ifindex: u32,
    pub prog_fd: u32,
}

macro_rules! registry {
    ($($(#[doc = $doc:literal])* $id:ident = $name:literal:
        $kind:ident<$key:ty, $value:ty>[$max:expr] flags $flags:expr;)*) => {
        $($(#[doc = $doc])*
        pub const $id: MapSpec = MapSpec {
            name: $name,
            kind: MapKind::$kind,
            key_size: size_of::<$key>() as u32,
            value_size: size_of::<$value>() as u32,
            max_entries: $max,
            flags: $flags,
        };)*
        /// Every map the agent pins, in the order the CLI reports them.
        pub const ALL: &[MapSpec] = &[$($id),*];
        /// The pin names alone.
        pub mod names {
            $(pub const $id: &str = $name;)*
            pub const ALL: &[&str] = &[$($name),*];
        }
    };
}

registry! {
    /// Ports (instance attachments) by ifindex.
    PORTS = "pdp_ports": Hash<u32, Port>[MAX_PORTS] flags BPF_F_NO_PREALLOC;
    /// Routes of every route table and the VPC CIDR tables, by (table, prefix).
    ROUTES = "pdp_routes": LpmTrie<LpmKey<RouteData>, RouteValue>[MAX_ROUTES] flags 0;
    /// Peerings by slot.
    PEERINGS = "pdp_peerings": Hash<u32, Peering>[MAX_PEERINGS] flags BPF_F_NO_PREALLOC;
    /// Instances by (VPC, address).
    ENDPOINTS = "pdp_endpoints": Hash<EndpointKey, Endpoint>[MAX_ENDPOINTS] flags BPF_F_NO_PREALLOC;
    /// Redirect targets.
    DEVMAP = "pdp_devmap": DevMapHash<u32, DevmapValue>[MAX_PORTS] flags 0;
    /// Global counters, per CPU.
    GLOBAL_COUNTERS = "pdp_global_ctr": PerCpuArray<u32, GlobalCounters>[1] flags 0;
    /// Per-peering, per-direction counters, per CPU.
    PEERING_COUNTERS = "pdp_pcx_ctr": PerCpuArray<u32, PeeringCounters>[MAX_PEERINGS * 2] flags 0;
    /// Object names by (kind, id); userspace only.
    NAMES = "pdp_names": Hash<NameKey, Name>[MAX_NAMES] flags BPF_F_NO_PREALLOC;
    /// Network ACL address trie.
    ACL_ADDR = "pdp_acl_addr": LpmTrie<LpmKey<RouteData>, AclBits>[MAX_ACL_ENTRIES] flags 0;
    /// Network ACL port trie.
    ACL_PORT = "pdp_acl_port": LpmTrie<LpmKey<AclPortData>, AclBits>[MAX_ACL_ENTRIES] flags 0;
    /// Network ACL protocol table.
    ACL_PROTO = "pdp_acl_proto": Hash<AclProtoKey, AclBits>[crate::acl::MAX_ACL_SETS * 8] flags BPF_F_NO_PREALLOC;
    /// Per-set metadata of network ACLs and security-group sets.
    ACL_META = "pdp_acl_meta": Hash<u32, AclMeta>[crate::acl::MAX_ACL_SETS] flags BPF_F_NO_PREALLOC;
    /// Per-rule hits, per CPU.
    ACL_HITS = "pdp_acl_hits": PerCpuArray<u32, u64>[ACL_HIT_SLOTS] flags 0;
    /// Host addresses and single ports of ACL sets, looked up before the tries.
    ACL_EXACT = "pdp_acl_exact": Hash<AclExactKey, AclBits>[MAX_ACL_ENTRIES] flags BPF_F_NO_PREALLOC;
    /// Security-group connection tracking.
    CONNTRACK = "pdp_conntrack": LruHash<CtKey, CtEntry>[MAX_CT_ENTRIES] flags 0;
    /// Flow decisions (see [`crate::flowcache`]).
    FLOW_CACHE = "pdp_flow_cache": PerCpuArray<u32, FlowSlot>[FLOW_SLOTS] flags 0;
    /// Slot 0: the epoch of the installed state, moved on by the agent after each change.
    /// Slot 1: non-zero turns kept decisions off (every packet runs the whole pipeline).
    EPOCH = "pdp_epoch": Array<u32, u64>[2] flags 0;
    /// What the flow cache did, per CPU: hits, misses, decisions kept, evictions, declined,
    /// deferred.
    FLOW_STATS = "pdp_flow_stats": PerCpuArray<u32, FlowCounters>[1] flags 0;
    /// Bandwidth-cap buckets (GCRA theoretical arrival time, ns) per peering and direction.
    CAP_STATE = "pdp_cap_state": Array<u32, u64>[MAX_PEERINGS * 2] flags 0;
    /// What `pdp_trace` saw of the last packet it ran on, per CPU.
    TRACE = "pdp_trace_rec": PerCpuArray<u32, TraceRecord>[1] flags 0;
    /// The program's clock setting (see [`crate::clock`]).
    CLOCK = "pdp_clock": Array<u32, Clock>[1] flags 0;
    /// This host's place in the overlay (see [`crate::overlay`]).
    OVERLAY = "pdp_overlay": Array<u32, OverlayConfig>[1] flags 0;
    /// Hosts of the overlay by underlay address (value: the host's slot).
    HOSTS = "pdp_hosts": Hash<HostKey, u32>[MAX_HOSTS] flags BPF_F_NO_PREALLOC;
    /// VPCs by VNI and peerings by tunnel key (value: this host's id of them).
    OVERLAY_IDS = "pdp_overlay_ids": Hash<OverlayIdKey, u32>[MAX_OVERLAY_IDS] flags BPF_F_NO_PREALLOC;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lpm_keys_have_no_padding() {
        assert_eq!(ACL_PORT.key_size, 4 + size_of::<AclPortData>() as u32);
        assert_eq!(ROUTES.key_size, 4 + size_of::<RouteData>() as u32);
    }

    #[test]
    fn names_are_unique_and_pdp_prefixed() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(a.name.starts_with("pdp_"), "{}", a.name);
            assert!(ALL[i + 1..].iter().all(|b| b.name != a.name), "{}", a.name);
        }
    }
}
