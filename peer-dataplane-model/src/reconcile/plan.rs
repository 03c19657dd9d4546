//! Desired state -> plan -> apply. [`MapState`] is the contents of every map; [`plan`]
//! diffs two of them into an ordered list of single-entry writes; [`apply`] performs them
//! on anything that implements [`DataplaneMaps`] (the kernel maps, or a `MapState` in
//! unit tests).
//!
//! Ordering is what keeps a packet from seeing a half-applied change (docs/datapath.md §3.8): every
//! object is written before anything that refers to it, and removed only after everything
//! that referred to it is gone. Each single write is atomic in the kernel.

use super::routes::RouteEntries;
pub use super::routes::RouteKey;
use anyhow::Result;
use peer_dataplane_common::acl::{AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey};
use peer_dataplane_common::overlay::{HostKey, OverlayConfig, OverlayIdKey};
use peer_dataplane_common::{Endpoint, EndpointKey, Name, NameKey, Peering, Port, RouteValue};
use std::collections::BTreeMap;

/// LPM key of the ACL port trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclPortKey {
    pub prefix_len: u32,
    pub data: AclPortData,
}

/// The contents of every map the agent owns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapState {
    pub ports: BTreeMap<u32, Port>,
    pub routes: RouteEntries,
    pub peerings: BTreeMap<u32, Peering>,
    pub endpoints: BTreeMap<EndpointKey, Endpoint>,
    /// devmap key (ifindex) -> target ifindex.
    pub devmap: BTreeMap<u32, u32>,
    pub names: BTreeMap<NameKey, Name>,
    /// Network ACL sets: address trie (keyed like routes, the table bits holding the
    /// set), port trie, protocol table, per-set meta.
    pub acl_addr: BTreeMap<RouteKey, AclBits>,
    pub acl_port: BTreeMap<AclPortKey, AclBits>,
    pub acl_proto: BTreeMap<AclProtoKey, AclBits>,
    /// Host addresses and single ports, kept out of the tries.
    pub acl_exact: BTreeMap<AclExactKey, AclBits>,
    pub acl_meta: BTreeMap<u32, AclMeta>,
    /// This host's overlay setting (key 0), in a fleet.
    pub overlay: BTreeMap<u32, OverlayConfig>,
    /// Hosts by underlay address -> slot.
    pub hosts: BTreeMap<HostKey, u32>,
    /// VNIs -> VPC ids, tunnel keys -> peering slots.
    pub overlay_ids: BTreeMap<OverlayIdKey, u32>,
}

impl MapState {
    /// Entries of the map pinned as `name` (a registry name), if this state holds it.
    pub fn len_of(&self, name: &str) -> Option<usize> {
        use peer_dataplane_common::registry::names as n;
        Some(match name {
            n::PORTS => self.ports.len(),
            n::ROUTES => self.routes.len(),
            n::PEERINGS => self.peerings.len(),
            n::ENDPOINTS => self.endpoints.len(),
            n::DEVMAP => self.devmap.len(),
            n::NAMES => self.names.len(),
            n::ACL_ADDR => self.acl_addr.len(),
            n::ACL_PORT => self.acl_port.len(),
            n::ACL_PROTO => self.acl_proto.len(),
            n::ACL_EXACT => self.acl_exact.len(),
            n::ACL_META => self.acl_meta.len(),
            n::HOSTS => self.hosts.len(),
            n::OVERLAY_IDS => self.overlay_ids.len(),
            _ => return None,
        })
    }
}

/// One single-entry write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    PutName(NameKey, Name),
    PutDevmap(u32, u32),
    /// Zero the per-peering counters of a newly assigned slot.
    ResetPeeringCounters(u32),
    PutPeering(u32, Peering),
    PutEndpoint(EndpointKey, Endpoint),
    PutRoute(RouteKey, RouteValue),
    PutAclAddr(RouteKey, Box<AclBits>),
    PutAclPort(AclPortKey, Box<AclBits>),
    PutAclProto(AclProtoKey, Box<AclBits>),
    PutAclExact(AclExactKey, Box<AclBits>),
    /// Zero `n` per-rule hit counters from `base` (before a set's meta points at them).
    ResetAclHits(u32, u32),
    PutAclMeta(u32, Box<AclMeta>),
    PutHost(HostKey, u32),
    PutOverlayId(OverlayIdKey, u32),
    PutOverlay(u32, OverlayConfig),
    PutPort(u32, Port),
    DelPort(u32),
    /// Turns the overlay off (an array entry cannot be deleted: it is zeroed).
    DelOverlay(u32),
    DelOverlayId(OverlayIdKey),
    DelHost(HostKey),
    DelRoute(RouteKey),
    DelAclMeta(u32),
    DelAclAddr(RouteKey),
    DelAclPort(AclPortKey),
    DelAclProto(AclProtoKey),
    DelAclExact(AclExactKey),
    DelEndpoint(EndpointKey),
    DelPeering(u32),
    DelDevmap(u32),
    DelName(NameKey),
}

pub trait DataplaneMaps {
    fn write(&mut self, op: &Op) -> Result<()>;
}

/// Entries of `desired` that are new or changed, and keys of `current` not in `desired`.
fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    current: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let puts = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let dels = current
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    (puts, dels)
}

/// The ordered writes that turn `current` into `desired`. `new_peering_slots` are slots
/// assigned in this change, whose counters must start from zero.
pub fn plan(desired: &MapState, current: &MapState, new_peering_slots: &[u32]) -> Vec<Op> {
    let (names_put, names_del) = diff(&desired.names, &current.names);
    let (dev_put, dev_del) = diff(&desired.devmap, &current.devmap);
    let (pcx_put, pcx_del) = diff(&desired.peerings, &current.peerings);
    let (ep_put, ep_del) = diff(&desired.endpoints, &current.endpoints);
    let (rt_put, rt_del) = desired.routes.diff(&current.routes);
    let (port_put, port_del) = diff(&desired.ports, &current.ports);
    let (aa_put, aa_del) = diff(&desired.acl_addr, &current.acl_addr);
    let (ap_put, ap_del) = diff(&desired.acl_port, &current.acl_port);
    let (apr_put, apr_del) = diff(&desired.acl_proto, &current.acl_proto);
    let (ax_put, ax_del) = diff(&desired.acl_exact, &current.acl_exact);
    let (am_put, am_del) = diff(&desired.acl_meta, &current.acl_meta);
    let (host_put, host_del) = diff(&desired.hosts, &current.hosts);
    let (oid_put, oid_del) = diff(&desired.overlay_ids, &current.overlay_ids);
    let (ov_put, ov_del) = diff(&desired.overlay, &current.overlay);

    let mut ops = Vec::new();
    // Adds and changes, referents first: names, devmap targets, peerings, routes (which
    // name peerings), endpoints (which name devmap targets and route tables, for the
    // return route), ports (which name route tables).
    ops.extend(names_put.into_iter().map(|(k, v)| Op::PutName(k, v)));
    ops.extend(dev_put.into_iter().map(|(k, v)| Op::PutDevmap(k, v)));
    ops.extend(
        new_peering_slots
            .iter()
            .map(|s| Op::ResetPeeringCounters(*s)),
    );
    ops.extend(pcx_put.into_iter().map(|(k, v)| Op::PutPeering(k, v)));
    // The overlay: hosts (named by remote endpoints), the numbers the decap path turns
    // into VPC ids and peering slots, then the setting that turns it on (names the uplink's
    // devmap entry).
    ops.extend(host_put.into_iter().map(|(k, v)| Op::PutHost(k, v)));
    ops.extend(oid_put.into_iter().map(|(k, v)| Op::PutOverlayId(k, v)));
    ops.extend(ov_put.into_iter().map(|(k, v)| Op::PutOverlay(k, v)));
    ops.extend(rt_put.into_iter().map(|(k, v)| Op::PutRoute(k, v)));
    // ACL sets: entries, then the meta that makes the set usable; ports and endpoints
    // (below) name sets.
    ops.extend(
        aa_put
            .into_iter()
            .map(|(k, v)| Op::PutAclAddr(k, Box::new(v))),
    );
    ops.extend(
        ap_put
            .into_iter()
            .map(|(k, v)| Op::PutAclPort(k, Box::new(v))),
    );
    ops.extend(
        apr_put
            .into_iter()
            .map(|(k, v)| Op::PutAclProto(k, Box::new(v))),
    );
    ops.extend(
        ax_put
            .into_iter()
            .map(|(k, v)| Op::PutAclExact(k, Box::new(v))),
    );
    for (k, v) in am_put {
        ops.push(Op::ResetAclHits(v.hit_base, v.rules));
        ops.push(Op::PutAclMeta(k, Box::new(v)));
    }
    ops.extend(ep_put.into_iter().map(|(k, v)| Op::PutEndpoint(k, v)));
    ops.extend(port_put.into_iter().map(|(k, v)| Op::PutPort(k, v)));
    // Removals, referrers first.
    ops.extend(port_del.into_iter().map(Op::DelPort));
    ops.extend(ep_del.into_iter().map(Op::DelEndpoint));
    ops.extend(ov_del.into_iter().map(Op::DelOverlay));
    ops.extend(oid_del.into_iter().map(Op::DelOverlayId));
    ops.extend(host_del.into_iter().map(Op::DelHost));
    ops.extend(rt_del.into_iter().map(Op::DelRoute));
    ops.extend(am_del.into_iter().map(Op::DelAclMeta));
    ops.extend(aa_del.into_iter().map(Op::DelAclAddr));
    ops.extend(ap_del.into_iter().map(Op::DelAclPort));
    ops.extend(apr_del.into_iter().map(Op::DelAclProto));
    ops.extend(ax_del.into_iter().map(Op::DelAclExact));
    ops.extend(pcx_del.into_iter().map(Op::DelPeering));
    ops.extend(dev_del.into_iter().map(Op::DelDevmap));
    ops.extend(names_del.into_iter().map(Op::DelName));
    ops
}

pub fn apply(ops: &[Op], maps: &mut impl DataplaneMaps) -> Result<()> {
    for op in ops {
        maps.write(op)?;
    }
    Ok(())
}

/// How [`apply_all_or_nothing`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A write failed; the writes before it were undone: `previous` is in force.
    #[error("map write {failed} of {total} failed ({cause:#}); the {undone} writes before it were undone, the previous state is in force")]
    RolledBack {
        failed: usize,
        total: usize,
        undone: usize,
        cause: anyhow::Error,
    },
    /// A write failed and so did undoing: the maps hold part of the change until the next
    /// attempt (which diffs against what is really there).
    #[error(
        "map write {failed} of {total} failed ({cause:#}), and undoing it failed too ({undo:#})"
    )]
    Mixed {
        failed: usize,
        total: usize,
        cause: anyhow::Error,
        undo: anyhow::Error,
    },
}

/// Applies `ops` — the plan from `previous` (what the maps hold now) to some desired state
/// — all or nothing. If a write fails, the writes already made are undone by the plan from
/// where the maps then are back to `previous`, in the same safe order as any plan
/// (referents first, referrers' removals first), so every packet meanwhile still sees a
/// consistent state, and `previous` is in force afterwards. Counter resets are not undone:
/// they only ever touch counters of objects this change created.
pub fn apply_all_or_nothing(
    ops: &[Op],
    maps: &mut impl DataplaneMaps,
    previous: &MapState,
) -> std::result::Result<(), ApplyError> {
    let mut now = previous.clone();
    for (i, op) in ops.iter().enumerate() {
        if let Err(cause) = maps.write(op) {
            let undo = plan(previous, &now, &[]);
            return Err(match apply(&undo, maps) {
                Ok(()) => ApplyError::RolledBack {
                    failed: i + 1,
                    total: ops.len(),
                    undone: i,
                    cause,
                },
                Err(undo) => ApplyError::Mixed {
                    failed: i + 1,
                    total: ops.len(),
                    cause,
                    undo,
                },
            });
        }
        // The in-memory write cannot fail.
        let _ = now.write(op);
    }
    Ok(())
}

/// An in-memory backend whose `fail_at`-th write (counting from 1) fails, once: for
/// testing that a failed install leaves the previous state in force.
#[derive(Debug, Clone, Default)]
pub struct FailingMaps {
    pub state: MapState,
    pub fail_at: usize,
    pub writes: usize,
}

impl DataplaneMaps for FailingMaps {
    fn write(&mut self, op: &Op) -> Result<()> {
        self.writes += 1;
        if self.writes == self.fail_at {
            anyhow::bail!("injected failure of write {}", self.writes);
        }
        self.state.write(op)
    }
}

/// The in-memory implementation, for unit tests and for the agent's mirror of the kernel.
impl DataplaneMaps for MapState {
    fn write(&mut self, op: &Op) -> Result<()> {
        match op {
            Op::PutName(k, v) => drop(self.names.insert(*k, *v)),
            Op::PutDevmap(k, v) => drop(self.devmap.insert(*k, *v)),
            Op::ResetPeeringCounters(_) => {}
            Op::PutPeering(k, v) => drop(self.peerings.insert(*k, *v)),
            Op::PutEndpoint(k, v) => drop(self.endpoints.insert(*k, *v)),
            Op::PutRoute(k, v) => drop(self.routes.insert(*k, *v)),
            Op::PutAclAddr(k, v) => drop(self.acl_addr.insert(*k, **v)),
            Op::PutAclPort(k, v) => drop(self.acl_port.insert(*k, **v)),
            Op::PutAclProto(k, v) => drop(self.acl_proto.insert(*k, **v)),
            Op::PutAclExact(k, v) => drop(self.acl_exact.insert(*k, **v)),
            Op::ResetAclHits(..) => {}
            Op::PutAclMeta(k, v) => drop(self.acl_meta.insert(*k, **v)),
            Op::DelAclMeta(k) => drop(self.acl_meta.remove(k)),
            Op::DelAclAddr(k) => drop(self.acl_addr.remove(k)),
            Op::DelAclPort(k) => drop(self.acl_port.remove(k)),
            Op::DelAclProto(k) => drop(self.acl_proto.remove(k)),
            Op::DelAclExact(k) => drop(self.acl_exact.remove(k)),
            Op::PutHost(k, v) => drop(self.hosts.insert(*k, *v)),
            Op::PutOverlayId(k, v) => drop(self.overlay_ids.insert(*k, *v)),
            Op::PutOverlay(k, v) => drop(self.overlay.insert(*k, *v)),
            Op::DelOverlay(k) => drop(self.overlay.remove(k)),
            Op::DelOverlayId(k) => drop(self.overlay_ids.remove(k)),
            Op::DelHost(k) => drop(self.hosts.remove(k)),
            Op::PutPort(k, v) => drop(self.ports.insert(*k, *v)),
            Op::DelPort(k) => drop(self.ports.remove(k)),
            Op::DelRoute(k) => drop(self.routes.remove(k)),
            Op::DelEndpoint(k) => drop(self.endpoints.remove(k)),
            Op::DelPeering(k) => drop(self.peerings.remove(k)),
            Op::DelDevmap(k) => drop(self.devmap.remove(k)),
            Op::DelName(k) => drop(self.names.remove(k)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peer_dataplane_common::RouteData;
    use peer_dataplane_common::{PCX_ACTIVE, PCX_DELETED, ROUTE_PCX};

    fn route(table: u8, plen: u32) -> RouteKey {
        RouteKey {
            prefix_len: plen,
            data: RouteData {
                table_be: [0, 0, 0, table],
                addr: [0; 16],
            },
        }
    }

    #[test]
    fn plan_turns_current_into_desired_and_writes_only_changes() {
        let mut current = MapState::default();
        current.peerings.insert(
            0,
            Peering {
                status: PCX_ACTIVE,
                requester_vpc: 1,
                accepter_vpc: 2,
                flags: 0,
                ..Peering::default()
            },
        );
        current.routes.insert(
            route(1, 48),
            RouteValue {
                kind: ROUTE_PCX,
                target: 0,
            },
        );
        current.routes.insert(
            route(1, 56),
            RouteValue {
                kind: ROUTE_PCX,
                target: 0,
            },
        );

        let mut desired = current.clone();
        desired.peerings.get_mut(&0).unwrap().status = PCX_DELETED;
        desired.routes.remove(&route(1, 56));
        desired.routes.insert(
            route(2, 48),
            RouteValue {
                kind: ROUTE_PCX,
                target: 1,
            },
        );
        desired.peerings.insert(
            1,
            Peering {
                status: PCX_ACTIVE,
                requester_vpc: 1,
                accepter_vpc: 3,
                flags: 0,
                ..Peering::default()
            },
        );

        let ops = plan(&desired, &current, &[1]);
        // Unchanged route 1/48 is not rewritten.
        assert!(!ops.contains(&Op::PutRoute(
            route(1, 48),
            RouteValue {
                kind: ROUTE_PCX,
                target: 0
            }
        )));
        let pos = |want: &Op| ops.iter().position(|o| o == want).unwrap();
        // The new peering (and its counter reset) precede the route that names it.
        assert!(pos(&Op::ResetPeeringCounters(1)) < pos(&Op::PutPeering(1, desired.peerings[&1])));
        assert!(
            pos(&Op::PutPeering(1, desired.peerings[&1]))
                < pos(&Op::PutRoute(route(2, 48), desired.routes[&route(2, 48)]))
        );
        assert_eq!(ops.len(), 5);

        let mut state = current.clone();
        apply(&ops, &mut state).unwrap();
        assert_eq!(state, desired);
        assert!(
            plan(&desired, &state, &[]).is_empty(),
            "a second plan is empty"
        );
    }

    #[test]
    fn removals_go_referrers_first() {
        let mut current = MapState::default();
        current.peerings.insert(4, Peering::default());
        current.routes.insert(
            route(1, 40),
            RouteValue {
                kind: ROUTE_PCX,
                target: 4,
            },
        );
        current.ports.insert(7, Port::default());
        let ops = plan(&MapState::default(), &current, &[]);
        assert_eq!(
            ops,
            vec![
                Op::DelPort(7),
                Op::DelRoute(route(1, 40)),
                Op::DelPeering(4)
            ]
        );
    }
}
