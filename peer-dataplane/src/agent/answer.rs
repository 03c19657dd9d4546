//! Taking one answer of the control plane in: the held document is brought to the new
//! revision, then a one-route delta is written in place, or the new topology is validated
//! (reusing every route table the change did not touch) for a whole install. The agent
//! runs this over the kernel's maps; `bench fleet` runs the very same over memory for
//! hundreds of simulated hosts.

use super::in_place;
use super::install::{Installed, Maps};
use super::long_poll::Change;
use crate::desired::delta::Held;
use crate::desired::validate::validate_reusing;
use crate::desired::Topology;
use anyhow::anyhow;
use log::warn;

/// What taking a change in left to do.
pub enum Taken {
    /// Nothing: the host's view did not change, only the revision it is at moved on (a
    /// long poll that ended without a change for this host).
    Nothing,
    /// Done: one route written in place (this many writes).
    InPlace(usize),
    /// This topology (valid) is to be installed whole.
    Install(Topology),
}

#[derive(Debug)]
pub enum TakeError {
    /// The delta was made for another revision than the one held: ask for the whole
    /// document. Nothing changed.
    DoesNotFit(String),
    /// The new document is invalid: the installed state stays (and nothing is changed in
    /// place until a whole install succeeds).
    Refused(anyhow::Error),
}

/// Takes the answer `change` at `revision` in. `topo` is the topology the maps were last
/// installed from (`None`: unknown, nothing is reused or changed in place); `desired` the
/// document held and its revision.
pub fn take<M: Maps>(
    installed: &mut Installed<M>,
    topo: &mut Option<Topology>,
    desired: &mut Option<(u64, Held)>,
    revision: u64,
    change: Change,
) -> Result<Taken, TakeError> {
    match change {
        Change::Whole(doc) => *desired = Some((revision, Held::new(doc))),
        Change::Delta { after, delta } => {
            match desired {
                Some((held_rev, _)) if *held_rev == after && delta.is_empty() => {
                    *held_rev = revision;
                    return Ok(Taken::Nothing);
                }
                Some((held_rev, held)) if *held_rev == after => {
                    held.apply(&delta).map_err(TakeError::DoesNotFit)?;
                    *held_rev = revision;
                }
                Some((held_rev, _)) => {
                    return Err(TakeError::DoesNotFit(format!(
                        "it is from revision {after}, this agent holds {held_rev}"
                    )))
                }
                None => {
                    return Err(TakeError::DoesNotFit(
                        "this agent holds no document yet".into(),
                    ))
                }
            }
            match in_place::try_route(installed, topo, &delta) {
                Ok(Some(writes)) => {
                    // The installed topology has the route too: nothing to read again.
                    if let Some((_, held)) = desired {
                        held.take_changed();
                    }
                    return Ok(Taken::InPlace(writes));
                }
                Ok(None) => {}
                Err(e) => {
                    warn!("writing one route in place failed ({e:#}); installing the whole state")
                }
            }
        }
    }
    let (_, held) = desired.as_mut().expect("set above");
    // Tables whose routes did not change are carried over from the installed topology.
    let changed = held.take_changed();
    match validate_reusing(&held.doc, topo.as_ref(), &changed) {
        Ok(t) => Ok(Taken::Install(t)),
        Err(e) => {
            *topo = None;
            Err(TakeError::Refused(anyhow!("{e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::delta::{Delta, RouteChange};
    use crate::desired::Document;
    use crate::maps::MapState;

    fn seed() -> Document {
        Document::from_toml(include_str!("../../../examples/seed.toml")).unwrap()
    }

    /// A long poll that ends with nothing for the host moves the held revision on, so
    /// that the next delta (computed from that revision) fits; a delta from elsewhere
    /// does not, and changes nothing.
    #[test]
    fn an_empty_delta_moves_the_held_revision_on() {
        let mut installed = Installed::<MapState>::in_memory();
        let (mut topo, mut desired) = (None, None);
        let mut take = |rev, change| take(&mut installed, &mut topo, &mut desired, rev, change);
        assert!(matches!(
            take(5, Change::Whole(seed())),
            Ok(Taken::Install(_))
        ));
        let empty = Change::Delta {
            after: 5,
            delta: Delta::default(),
        };
        assert!(matches!(take(9, empty), Ok(Taken::Nothing)));
        let route = Delta {
            routes: vec![RouteChange {
                table: "rtb-a".into(),
                destination: "172.16.9.0/24".into(),
                target: Some("blackhole".into()),
            }],
            ..Default::default()
        };
        let stale = Change::Delta {
            after: 5,
            delta: route.clone(),
        };
        assert!(matches!(take(12, stale), Err(TakeError::DoesNotFit(_))));
        let fits = Change::Delta {
            after: 9,
            delta: route,
        };
        assert!(matches!(take(12, fits), Ok(Taken::Install(_))));
    }
}
