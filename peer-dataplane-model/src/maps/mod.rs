//! The stored maps: the maps the agent fills from the desired state, declared once in the
//! table below. Each line names the map (its type in [`stored`] and its variant in
//! [`Entry`] and [`Key`]), its field of [`MapState`], the registry entry it is pinned as,
//! and its key and value types. From the table come [`MapState`], the put and delete
//! [`Op`]s, the diff and the plan's order (`reconcile::plan`), the in-memory backend
//! below, and the kernel backend's writes, open and read-back (the agent's `bpf::maps`).
//!
//! **The order of the table is the write order.** Puts go top to bottom, removals bottom
//! to top: a map is listed after every map its entries name (a route names a peering
//! slot, a port a route table and ACL sets, a remote endpoint a host), so a packet never
//! meets a reference to something not yet written or already removed (docs/datapath.md
//! §3.8).
//!
//! Adding a stored map: its registry line, its static in the eBPF program, and a line
//! here. The compiler then asks for nothing else; what fills the new field is the feature.

mod layout;
mod routes;
mod table;

pub use layout::{AclPortKey, KernelLayout, LpmKey, RouteKey};
pub use routes::{table_of, RouteEntries, TableEntries};
pub use table::{Entries, EntryReader, EntryStore, MapVisitor, Stored};

use anyhow::Result;
use peer_dataplane_common::acl::{AclBits, AclExactKey, AclMeta, AclProtoKey};
use peer_dataplane_common::overlay::{HostKey, OverlayConfig, OverlayIdKey};
use peer_dataplane_common::registry::{self, MapSpec};
use peer_dataplane_common::{Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteValue};
use table::{carried, entries_type, stored_maps};

stored_maps! {
    /// Object names by (kind, id): what a restarted agent and the CLI read ids back with.
    Names(names): NAMES, NameKey => Name;
    /// Redirect targets: devmap key (ifindex) -> target ifindex.
    Devmap(devmap): DEVMAP, u32 => u32;
    /// Peerings by slot.
    Peerings(peerings): PEERINGS, u32 => Peering;
    /// Hosts of the overlay by underlay address -> slot (remote endpoints name them).
    Hosts(hosts): HOSTS, HostKey => u32;
    /// VNIs -> VPC ids, tunnel keys -> peering slots (what the decap path resolves).
    OverlayIds(overlay_ids): OVERLAY_IDS, OverlayIdKey => u32;
    /// This host's overlay setting (key 0), in a fleet; names the uplink's devmap entry.
    Overlay(overlay): OVERLAY, u32 => OverlayConfig;
    /// Every route table and the VPC CIDR tables (routes name peering slots).
    Routes(routes: RouteEntries): ROUTES, RouteKey => RouteValue;
    /// Network ACL and security-group sets: address trie (keyed like routes, the table
    /// bits holding the set), port trie, protocol table, host addresses and single ports
    /// kept out of the tries; then the per-set meta that makes a set usable.
    AclAddr(acl_addr): ACL_ADDR, RouteKey => AclBits [boxed];
    AclPort(acl_port): ACL_PORT, AclPortKey => AclBits [boxed];
    AclProto(acl_proto): ACL_PROTO, AclProtoKey => AclBits [boxed];
    AclExact(acl_exact): ACL_EXACT, AclExactKey => AclBits [boxed];
    AclMeta(acl_meta): ACL_META, u32 => AclMeta [boxed];
    /// Instances by (VPC, address); they name devmap targets, route tables and ACL sets.
    Endpoints(endpoints): ENDPOINTS, EndpointKey => Endpoint;
    /// Ports by ifindex; they name route tables and ACL sets.
    Ports(ports): PORTS, u32 => Port;
}

/// One single-entry write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Put(Entry),
    Del(Key),
    /// Zero the per-peering counters of a newly assigned slot (before the peering's put).
    ResetPeeringCounters(u32),
    /// Zero `n` per-rule hit counters from `base` (before a set's meta points at them).
    ResetAclHits(u32, u32),
}

impl Op {
    /// The write that puts `(k, v)` into stored map `M`.
    pub fn put<M: Stored>(k: M::Key, v: M::Value) -> Op {
        M::put(k, v)
    }

    /// The write that removes `k` from stored map `M`.
    pub fn del<M: Stored>(k: M::Key) -> Op {
        M::del(k)
    }

    /// Makes this write on `store`.
    pub fn write_to(&self, store: &mut impl EntryStore) -> Result<()> {
        match self {
            Op::Put(e) => e.put_into(store),
            Op::Del(k) => k.delete_from(store),
            Op::ResetPeeringCounters(slot) => store.reset_peering_counters(*slot),
            Op::ResetAclHits(base, n) => store.reset_acl_hits(*base, *n),
        }
    }
}

/// Where a plan is applied: the kernel's maps, memory, or a test's faulty backend.
pub trait DataplaneMaps {
    fn write(&mut self, op: &Op) -> Result<()>;
}

impl EntryStore for MapState {
    fn put<M: Stored>(&mut self, k: &M::Key, v: &M::Value) -> Result<()> {
        M::entries_mut(self).insert(*k, *v);
        Ok(())
    }

    fn delete<M: Stored>(&mut self, k: &M::Key) -> Result<()> {
        M::entries_mut(self).remove(k);
        Ok(())
    }
}

/// The in-memory implementation, for unit tests and for the agent's mirror of the kernel.
impl DataplaneMaps for MapState {
    fn write(&mut self, op: &Op) -> Result<()> {
        op.write_to(self)
    }
}

impl MapState {
    /// Entries of the map pinned as `name` (a registry name), if it is a stored map.
    pub fn len_of(&self, name: &str) -> Option<usize> {
        struct Len<'a>(&'a MapState, &'a str, Option<usize>);
        impl MapVisitor for Len<'_> {
            fn visit<M: Stored>(&mut self) -> Result<()> {
                if M::SPEC.name == self.1 {
                    self.2 = Some(M::entries(self.0).len());
                }
                Ok(())
            }
        }
        let mut len = Len(self, name, None);
        visit_all(&mut len).expect("counting cannot fail");
        len.2
    }

    /// Every stored map's entries as `reader` holds them.
    pub fn read_from(reader: &impl EntryReader) -> Result<MapState> {
        struct Read<'a, R>(&'a R, MapState);
        impl<R: EntryReader> MapVisitor for Read<'_, R> {
            fn visit<M: Stored>(&mut self) -> Result<()> {
                for (k, v) in self.0.entries::<M>()? {
                    M::entries_mut(&mut self.1).insert(k, v);
                }
                Ok(())
            }
        }
        let mut read = Read(reader, MapState::default());
        visit_all(&mut read)?;
        Ok(read.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_map_is_in_the_registry_once_and_an_op_stays_small() {
        for (i, spec) in STORED.iter().enumerate() {
            assert!(
                registry::ALL.contains(spec),
                "{} is not in the registry",
                spec.name
            );
            assert!(!STORED[..i].contains(spec), "{} is listed twice", spec.name);
        }
        assert!(
            std::mem::size_of::<Op>() <= 96,
            "box the large values of new maps"
        );
    }

    #[test]
    fn key_and_value_types_have_the_registry_sizes() {
        struct Sizes;
        impl MapVisitor for Sizes {
            fn visit<M: Stored>(&mut self) -> Result<()> {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                let key = M::Key::decode(&vec![0; M::SPEC.key_size as usize]);
                key.expect("key size").encode(&mut k);
                assert_eq!(k.len() as u32, M::SPEC.key_size, "{}", M::SPEC.name);
                let size = M::SPEC.held_value_size();
                M::Value::decode(&vec![0; size as usize])
                    .expect("value size")
                    .encode(&mut v);
                assert_eq!(v.len() as u32, size, "{}", M::SPEC.name);
                Ok(())
            }
        }
        visit_all(&mut Sizes).unwrap();
    }
}
