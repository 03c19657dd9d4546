//! The row format both stores keep: one row per object (kind, id, its JSON), a route a
//! row of its own (kind `route`, id `TABLE/DESTINATION`) and a route table's row without
//! its routes, so changing one route of a large table writes one small row.

use crate::world::*;
use anyhow::{Context, Result};
use imbl::ordmap::DiffItem;
use std::collections::BTreeMap;

/// Calls `$m!(kind name, field)` for every object collection of [`World`] but the route
/// tables, which are stored apart (see [`rows`]).
macro_rules! for_each_kind {
    ($m:ident) => {
        $m!("vpc", vpcs);
        $m!("subnet", subnets);
        $m!("peering", peerings);
        $m!("port", ports);
        $m!("network_acl", network_acls);
        $m!("security_group", security_groups);
        $m!("host", hosts);
        $m!("id_counter", id_counters);
    };
}

/// One stored row to write: kind, id, and the JSON body (`None`: delete the row).
pub(super) type Row = (&'static str, String, Option<String>);

/// A row as read back: kind, id, JSON body (`None`: deleted).
pub type StoredRow = (String, String, Option<String>);

pub(super) const ROUTE_TABLE: &str = "route_table";
pub(super) const ROUTE: &str = "route";

/// The rows that turn the stored `old` into `new`: exactly the objects that differ. A
/// route is a row of its own (kind `route`, id `TABLE/DESTINATION`) and a route table's
/// row holds no routes, so changing one route of a large table writes one small row.
pub(super) fn rows(old: &World, new: &World) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    macro_rules! kind {
        ($kind:literal, $field:ident) => {
            diff_into(&mut out, $kind, &old.$field, &new.$field, |v| {
                serde_json::to_string(v)
            })?;
        };
    }
    for_each_kind!(kind);
    // A table's own row: its id and VPC (its routes are compared below, sharing first).
    let bare = |t: &RouteTable| (t.id.clone(), t.vpc.clone());
    let bare_old: BTreeMap<String, _> = old
        .route_tables
        .iter()
        .map(|(k, t)| (k.clone(), bare(t)))
        .collect();
    let bare_new: BTreeMap<String, _> = new
        .route_tables
        .iter()
        .map(|(k, t)| (k.clone(), bare(t)))
        .collect();
    diff_into(&mut out, ROUTE_TABLE, &bare_old, &bare_new, |(id, vpc)| {
        serde_json::to_string(&RouteTable {
            id: id.clone(),
            vpc: vpc.clone(),
            routes: Routes::new(),
        })
    })?;
    let empty = Routes::new();
    let tables = old.route_tables.keys().chain(new.route_tables.keys());
    for id in tables.collect::<std::collections::BTreeSet<_>>() {
        let before = old.route_tables.get(id).map_or(&empty, |t| &t.routes);
        let after = new.route_tables.get(id).map_or(&empty, |t| &t.routes);
        // The persistent maps' diff skips what the two share: it costs the change.
        for item in before.diff(after) {
            out.push(match item {
                DiffItem::Add(dest, route)
                | DiffItem::Update {
                    new: (dest, route), ..
                } => (
                    ROUTE,
                    format!("{id}/{dest}"),
                    Some(serde_json::to_string(route)?),
                ),
                DiffItem::Remove(dest, _) => (ROUTE, format!("{id}/{dest}"), None),
            });
        }
    }
    Ok(out)
}

/// Rows of one kind: new or changed objects, and deleted ones.
fn diff_into<T: PartialEq>(
    out: &mut Vec<Row>,
    kind: &'static str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    body: impl Fn(&T) -> serde_json::Result<String>,
) -> Result<()> {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push((kind, k.clone(), Some(body(v)?)));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push((kind, k.clone(), None));
    }
    Ok(())
}

/// Builds the world from every stored row (kind, id, JSON body), in any order. Also names
/// the route tables stored the old way, routes inside the table's row (see [`Store::load`]).
pub(super) fn assemble(
    rows: impl IntoIterator<Item = (String, String, String)>,
) -> Result<(World, Vec<String>)> {
    let mut w = World::default();
    let embedded = apply_rows(
        &mut w,
        rows.into_iter()
            .map(|(kind, id, body)| (kind, id, Some(body))),
    )?;
    Ok((w, embedded))
}

/// Applies stored rows to `w`: each object replaced or removed, each route added or
/// removed in its table. Used for a whole read (onto an empty world) and for what another
/// writer committed (what [`rows`] wrote, read back). A route of a table that neither `w`
/// nor the rows hold is an error (the rows do not belong to `w`), unless the same rows
/// delete that table. Returns the tables whose own row still holds their routes (written
/// before routes had rows of their own): those routes are kept.
pub fn apply_rows(w: &mut World, rows: impl IntoIterator<Item = StoredRow>) -> Result<Vec<String>> {
    // Tables first: a route row may belong to a table made by the same rows.
    let (tables, others): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|(k, _, _)| k == ROUTE_TABLE);
    let mut deleted = std::collections::BTreeSet::new();
    let mut embedded = Vec::new();
    for (_, id, body) in tables {
        match body {
            Some(body) => {
                let t: RouteTable = serde_json::from_str(&body)
                    .with_context(|| format!("stored route table {id} is not valid"))?;
                let routes = if !t.routes.is_empty() {
                    embedded.push(id.clone());
                    t.routes
                } else {
                    w.route_tables
                        .get(&id)
                        .map(|old| old.routes.clone())
                        .unwrap_or_default()
                };
                w.route_tables.insert(id, RouteTable { routes, ..t });
            }
            None => {
                w.route_tables.remove(&id);
                deleted.insert(id);
            }
        }
    }
    for (kind, id, body) in others {
        macro_rules! one {
            ($kind:literal, $field:ident) => {
                if kind == $kind {
                    match &body {
                        Some(b) => drop(
                            w.$field.insert(
                                id.clone(),
                                serde_json::from_str(b)
                                    .with_context(|| format!("stored {kind} {id} is not valid"))?,
                            ),
                        ),
                        None => drop(w.$field.remove(&id)),
                    }
                    continue;
                }
            };
        }
        for_each_kind!(one);
        if kind == ROUTE {
            let (table, dest) = id
                .split_once('/')
                .ok_or_else(|| anyhow::anyhow!("stored route {id:?} is not TABLE/DESTINATION"))?;
            let Some(t) = w.route_tables.get_mut(table) else {
                // A route of a table deleted by the same rows goes with it.
                if deleted.contains(table) {
                    continue;
                }
                anyhow::bail!("stored route {id}: route table {table} is not stored");
            };
            match &body {
                Some(b) => drop(
                    t.routes.insert(
                        dest.to_string(),
                        serde_json::from_str(b)
                            .with_context(|| format!("stored route {id} is not valid"))?,
                    ),
                ),
                None => drop(t.routes.remove(dest)),
            }
            continue;
        }
        anyhow::bail!("stored row of unknown kind {kind:?} ({id})");
    }
    Ok(embedded)
}
