//! The single-route path: a delta that changes one route and nothing else is checked
//! against the installed topology and written as one in-place map write. Nothing is
//! compiled or diffed, so its cost does not grow with the size of the tables. Anything
//! else (or a route this path cannot judge alone) goes the whole way: validate, compile,
//! plan and apply.

use super::install::{Installed, Maps};
use crate::desired::delta::Delta;
use crate::desired::document::Document;
use crate::desired::validate::{route_change, Target};
use crate::desired::Topology;
use crate::maps::DataplaneMaps;
use crate::reconcile::generations::route_write;
use anyhow::Result;

/// `Some(writes)` if the delta was the change of one route and is now installed; `None`
/// if it needs the whole path. An error is a failed map write (nothing was changed).
pub fn try_route<M: Maps>(
    installed: &mut Installed<M>,
    topo: &mut Option<Topology>,
    d: &Delta,
) -> Result<Option<usize>> {
    let only_one_route = d.routes.len() == 1
        && d.local_host.is_none()
        && d.put == Document::default()
        && d.removed == Default::default();
    if !only_one_route {
        return Ok(None);
    }
    let Some(topo) = topo.as_mut() else {
        return Ok(None);
    };
    let c = &d.routes[0];
    // An invalid route is refused by the whole path, with its full report.
    let Ok((dest, target)) = route_change(topo, &c.table, &c.destination, c.target.as_deref())
    else {
        return Ok(None);
    };
    let Some(op) = route_write(
        &installed.ids,
        &installed.mirror,
        topo,
        &c.table,
        &dest,
        target.as_ref(),
    ) else {
        return Ok(None);
    };
    installed.maps.write(&op)?;
    installed.mirror.write(&op)?;
    installed.maps.invalidate_flows()?;
    // Shared with nothing by now (the last install's topology is this one): an in-place
    // change, not a copy of the table.
    let table = topo
        .route_tables
        .get_mut(&c.table)
        .expect("route_change found it");
    if let Some(Target::Peering(p)) = &target {
        if !table.via.contains(p) {
            std::sync::Arc::make_mut(&mut table.via).insert(p.clone());
        }
    }
    let routes = std::sync::Arc::make_mut(&mut table.routes);
    match target {
        Some(t) => routes.insert(dest, t),
        None => routes.remove(&dest),
    };
    Ok(Some(1))
}
