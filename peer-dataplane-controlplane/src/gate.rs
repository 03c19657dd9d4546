//! The final gate of a change, at the cost of what the change touches: the validated
//! topology of the region and of each host's document are kept from the last check, and
//! a change re-validates only the documents it alters, reusing every route table whose
//! routes (and whatever a route's check reads) did not change. The verdict is the same as
//! validating every document whole ([`crate::ops::check`]); a test holds the two equal.

use crate::history::{changed_tables, View};
use crate::hoststate::{self, Index};
use crate::world::{ApiError, World};
use peer_dataplane_model::desired::validate::{validate_reusing, Topology};
use peer_dataplane_model::desired::Document;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The world last checked whole, and the topologies its documents validated into (key:
/// host id; "" for the region without ports).
pub struct Checked {
    /// The world and its index (shared with the history once the change commits).
    pub view: Arc<View>,
    topos: BTreeMap<String, Topology>,
}

const REGION: &str = "";

fn document(w: &World, ix: &Index, key: &str) -> Document {
    if key == REGION {
        hoststate::region_document(w)
    } else {
        hoststate::document_in(w, ix, key, true)
    }
}

fn objects(w: &World, ix: &Index, key: &str) -> Document {
    if key == REGION {
        hoststate::region_document_without_routes(w)
    } else {
        hoststate::document_in(w, ix, key, false)
    }
}

/// Checks `new` (made from `base`), given what was checked before. `Ok(None)`: a change
/// of routes only, which needs nothing more (see `ops::only_routes_differ`); the previous
/// [`Checked`] stays usable, whatever changed since is found by comparing worlds.
pub fn check(
    prev: Option<&Checked>,
    base: &World,
    new: &World,
) -> Result<Option<Checked>, ApiError> {
    if crate::ops::only_routes_differ(base, new) {
        return Ok(None);
    }
    let keys: BTreeSet<String> = std::iter::once(REGION.to_string())
        .chain(new.ports.values().map(|p| p.host().to_string()))
        .collect();
    let changed: BTreeSet<String> = match prev {
        Some(p) => changed_tables(&p.view.world, new),
        None => BTreeSet::new(),
    };
    let view = View::of(new);
    let index = &view.index;
    let mut topos = BTreeMap::new();
    for key in keys {
        let before = prev.and_then(|p| p.topos.get(&key).map(|t| (p, t)));
        // A document the change does not alter keeps its verdict and its topology.
        if let Some((p, t)) = before {
            let same_objects =
                objects(&p.view.world, &p.view.index, &key) == objects(new, index, &key);
            let same_routes = t.route_tables.keys().all(|id| !changed.contains(id));
            if same_objects && same_routes {
                topos.insert(key, t.clone());
                continue;
            }
        }
        let doc = document(new, index, &key);
        match validate_reusing(&doc, before.map(|(_, t)| t), &changed) {
            Ok(t) => drop(topos.insert(key, t)),
            Err(e) => {
                return Err(ApiError::inconsistent(format!(
                    "the change would leave an invalid state: {e}"
                )))
            }
        }
    }
    Ok(Some(Checked { view, topos }))
}
