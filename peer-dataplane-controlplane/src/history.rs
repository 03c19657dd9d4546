//! What changed for one host since a revision it holds: the recent worlds this replica
//! has held (a ring; a copy of the world shares its routes, so a snapshot costs the small
//! objects only). A host's delta from revision R is its document's objects at R compared
//! with now, plus the routes that differ between the two in the tables it keeps: route
//! tables are persistent maps, and comparing two versions of one skips what they share,
//! so it costs what changed. An agent whose R has left the ring (or that this replica
//! never saw) gets its whole document instead.

use crate::hoststate::{self, Index};
use crate::world::{Routes, World};
use imbl::ordmap::DiffItem;
use peer_dataplane_model::desired::delta::{Delta, RouteChange};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

/// Revisions kept: an agent at most this many revisions behind gets a delta.
pub const KEPT: usize = 256;

/// A world as this replica held it at one revision, and its index (built once, read by
/// every long poll that computes a delta from or to it).
pub struct View {
    pub world: World,
    pub index: Index,
}

impl View {
    pub fn of(world: &World) -> Arc<View> {
        Arc::new(View {
            world: world.clone(),
            index: Index::of(world),
        })
    }
}

struct Snapshot {
    revision: u64,
    view: Arc<View>,
}

#[derive(Default)]
pub struct History {
    ring: VecDeque<Snapshot>,
}

/// What a host's delta is computed from, taken under the server's lock (cheap copies).
pub struct Base {
    from: Arc<View>,
    now: Arc<View>,
    pub revision: u64,
}

impl History {
    /// Records `view` at `revision`, the world this replica holds from now on.
    pub fn push(&mut self, revision: u64, view: Arc<View>) {
        if self.ring.len() == KEPT {
            if let Some(old) = self.ring.pop_front() {
                drop_aside(old);
            }
        }
        self.ring.push_back(Snapshot { revision, view });
    }

    /// The latest world held, and its revision.
    pub fn latest(&self) -> Option<(u64, Arc<View>)> {
        self.ring.back().map(|s| (s.revision, s.view.clone()))
    }

    /// The worlds at `after` and now; `None` if `after` is not a revision this replica
    /// still holds.
    pub fn base(&self, after: u64) -> Option<Base> {
        let at = self.ring.iter().position(|s| s.revision == after)?;
        let now = self.ring.back()?;
        Some(Base {
            from: self.ring[at].view.clone(),
            now: now.view.clone(),
            revision: now.revision,
        })
    }
}

/// Frees a snapshot that left the ring on a thread of its own: the last world holding
/// the routes a bulk change replaced (100,000, say) takes milliseconds to free, which
/// is not to happen under the server's lock in the middle of an API call.
fn drop_aside(old: Snapshot) {
    static REAPER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Snapshot>>> =
        std::sync::OnceLock::new();
    let tx = REAPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Snapshot>();
        std::thread::Builder::new()
            .name("history-reaper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .expect("starting the history's reaper thread");
        std::sync::Mutex::new(tx)
    });
    let _ = tx.lock().unwrap().send(old);
}

/// The route tables whose routes differ between two worlds (one absent from either
/// counts as empty). The persistent maps' diff skips what the two share and stops at
/// the first difference: it costs at most the change.
pub fn changed_tables(old: &World, new: &World) -> BTreeSet<String> {
    let empty = Routes::new();
    let ids: BTreeSet<&String> = old
        .route_tables
        .keys()
        .chain(new.route_tables.keys())
        .collect();
    ids.into_iter()
        .filter(|id| {
            let a = old.route_tables.get(*id).map_or(&empty, |t| &t.routes);
            let b = new.route_tables.get(*id).map_or(&empty, |t| &t.routes);
            a.diff(b).next().is_some()
        })
        .cloned()
        .collect()
}

/// Host `host`'s delta from `base.from` to `base.now`.
pub fn delta(base: &Base, host: &str) -> Delta {
    let (from, now) = (&base.from.world, &base.now.world);
    let old = hoststate::document_in(from, &base.from.index, host, false);
    let new = hoststate::document_in(now, &base.now.index, host, false);
    let mut d = Delta::objects_between(&old, &new);
    // A table new to the host travels whole.
    for t in &mut d.put.route_tables {
        t.routes = now.route_tables[&t.id].routes.values().cloned().collect();
    }
    let whole: BTreeSet<&str> = d.put.route_tables.iter().map(|t| t.id.as_str()).collect();
    let kept: BTreeSet<&str> = new
        .route_tables
        .iter()
        .map(|t| t.id.as_str())
        .filter(|t| !whole.contains(t))
        .collect();
    let empty = Routes::new();
    for table in kept {
        let before = from.route_tables.get(table).map_or(&empty, |t| &t.routes);
        let after = &now.route_tables[table].routes;
        for item in before.diff(after) {
            let (dest, target) = match item {
                DiffItem::Add(dest, r) | DiffItem::Update { new: (dest, r), .. } => {
                    (dest, Some(r.target.clone()))
                }
                DiffItem::Remove(dest, _) => (dest, None),
            };
            d.routes.push(RouteChange {
                table: table.to_string(),
                destination: dest.clone(),
                target,
            });
        }
    }
    d
}
