//! Taking one answer of the control plane in: the held document is brought to the new
//! revision, then a one-route delta is written in place, or the new topology is validated
//! (reusing every route table the change did not touch) for a whole install. The agent
//! runs this over the kernel's maps; `bench fleet` runs the very same over memory for
//! hundreds of simulated hosts.

use super::follow::Change;
use super::in_place;
use super::install::{Installed, Maps};
use crate::desired::delta::Held;
use crate::desired::validate::validate_reusing;
use crate::desired::Topology;
use anyhow::anyhow;
use log::warn;

/// What taking a change in left to do.
pub enum Taken {
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
