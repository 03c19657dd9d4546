//! Desired state -> plan -> apply. [`MapState`] is the contents of every map; [`plan`]
//! diffs two of them into an ordered list of single-entry writes; [`apply`] performs them
//! on anything that implements [`DataplaneMaps`] (the kernel maps, or a `MapState` in
//! unit tests).
//!
//! Ordering is what keeps a packet from seeing a half-applied change (docs/datapath.md §3.8): every
//! object is written before anything that refers to it, and removed only after everything
//! that referred to it is gone. Each single write is atomic in the kernel.

use crate::maps::{visit_all, DataplaneMaps, Entries, MapState, MapVisitor, Op, Stored};
use anyhow::Result;

/// The ordered writes that turn `current` into `desired`. `new_peering_slots` are slots
/// assigned in this change, whose counters must start from zero.
///
/// Puts (adds and changes) go in the stored maps' table order, referents first; removals
/// in the reverse order, referrers first (see `crate::maps`).
pub fn plan(desired: &MapState, current: &MapState, new_peering_slots: &[u32]) -> Vec<Op> {
    struct Diff<'a> {
        desired: &'a MapState,
        current: &'a MapState,
        new_peering_slots: &'a [u32],
        puts: Vec<Op>,
        /// Each map's removals, in table order.
        dels: Vec<Vec<Op>>,
    }
    impl MapVisitor for Diff<'_> {
        fn visit<M: Stored>(&mut self) -> Result<()> {
            let (puts, dels) = M::entries(self.desired).diff(M::entries(self.current));
            for (k, v) in puts {
                let put = M::put(k, v);
                self.puts
                    .extend(counters_reset_before(&put, self.new_peering_slots));
                self.puts.push(put);
            }
            self.dels.push(dels.into_iter().map(M::del).collect());
            Ok(())
        }
    }
    let mut diff = Diff {
        desired,
        current,
        new_peering_slots,
        puts: Vec::new(),
        dels: Vec::new(),
    };
    visit_all(&mut diff).expect("diffing cannot fail");
    let mut ops = diff.puts;
    ops.extend(diff.dels.into_iter().rev().flatten());
    ops
}

/// The counters to zero before `put`: a newly assigned peering slot's, and the hit
/// counters a network ACL set's meta is about to point at.
fn counters_reset_before(put: &Op, new_peering_slots: &[u32]) -> Option<Op> {
    use crate::maps::Entry;
    use peer_dataplane_common::acl::NO_HITS;
    match put {
        Op::Put(Entry::Peerings(slot, _)) if new_peering_slots.contains(slot) => {
            Some(Op::ResetPeeringCounters(*slot))
        }
        Op::Put(Entry::AclMeta(_, meta)) if meta.hit_base != NO_HITS => {
            Some(Op::ResetAclHits(meta.hit_base, meta.rules))
        }
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::stored::{Peerings, Ports, Routes};
    use crate::maps::RouteKey;
    use peer_dataplane_common::RouteData;
    use peer_dataplane_common::{Peering, Port, RouteValue};
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
        assert!(!ops.contains(&Op::put::<Routes>(
            route(1, 48),
            RouteValue {
                kind: ROUTE_PCX,
                target: 0
            }
        )));
        let pos = |want: &Op| ops.iter().position(|o| o == want).unwrap();
        // The new peering (and its counter reset) precede the route that names it.
        assert!(
            pos(&Op::ResetPeeringCounters(1)) < pos(&Op::put::<Peerings>(1, desired.peerings[&1]))
        );
        assert!(
            pos(&Op::put::<Peerings>(1, desired.peerings[&1]))
                < pos(&Op::put::<Routes>(
                    route(2, 48),
                    desired.routes[&route(2, 48)]
                ))
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
                Op::del::<Ports>(7),
                Op::del::<Routes>(route(1, 40)),
                Op::del::<Peerings>(4)
            ]
        );
    }
}
