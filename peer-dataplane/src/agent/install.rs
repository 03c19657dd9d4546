//! What is installed and how the agent changes it: the mirror of the pinned maps, the
//! running program and its links, and one install (plan, all-or-nothing apply, attach).

use super::long_poll::NeedWhole;
use super::metrics::SharedInstallStats;
use super::underlay::Underlay;
use crate::bpf::links::Links;
use crate::bpf::object::LoadedObject;
use crate::bpf::{KernelIfindex, KernelMaps};
use crate::desired::delta::Held;
use crate::desired::{validate, Document, Ids, IfindexResolver, Topology};
use crate::maps::{DataplaneMaps, MapState};
use crate::reconcile::{apply_all_or_nothing, generations, plan_install_reusing, ApplyError};
use anyhow::{anyhow, Context, Result};
use std::path::Path;
use std::time::{Instant, SystemTime};

/// Maps an agent installs into: the kernel's, or memory (a simulated agent, `bench fleet`).
pub trait Maps: DataplaneMaps {
    /// What the maps hold now (after a failed undo, to diff against the truth).
    fn read_back(&self) -> Result<MapState>;

    /// Makes every flow decision taken so far stale (after writes to the maps).
    fn invalidate_flows(&mut self) -> Result<()>;
}

impl Maps for KernelMaps {
    fn read_back(&self) -> Result<MapState> {
        self.read_state()
    }

    fn invalidate_flows(&mut self) -> Result<()> {
        self.bump_epoch().map(|_| ())
    }
}

impl Maps for MapState {
    fn read_back(&self) -> Result<MapState> {
        Ok(self.clone())
    }

    /// Memory holds no program, so no decisions.
    fn invalidate_flows(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The installed state and what the agent knows about it.
pub struct Installed<M = KernelMaps> {
    pub maps: M,
    pub mirror: MapState,
    pub ids: Ids,
    /// The uplink and neighbours readied for the overlay so far; `None` where there is
    /// no kernel to ready (a simulated agent).
    pub underlay: Option<Underlay>,
}

impl Installed<MapState> {
    /// An agent's state over in-memory maps, empty.
    pub fn in_memory() -> Installed<MapState> {
        Installed {
            maps: MapState::default(),
            mirror: MapState::default(),
            ids: Ids::default(),
            underlay: None,
        }
    }
}

impl<M> Installed<M> {
    /// The trie key (table id and generation) route table `name` is installed under.
    pub fn route_table_key(&self, name: &str) -> Option<u32> {
        generations::route_table_key_of(&self.ids, &self.mirror, name)
    }

    /// The per-CPU hit counter slot of network ACL `acl`'s rule `number` in one direction.
    pub fn acl_hit_slot(
        &self,
        topo: &Topology,
        acl: &str,
        egress: bool,
        number: u32,
    ) -> Option<u32> {
        generations::acl_hit_slot(&self.ids, &self.mirror, topo, acl, egress, number)
    }
}

impl Installed<KernelMaps> {
    /// Opens the pinned maps and reads back what is installed (from a previous run too).
    pub fn open(pin_dir: &Path) -> Result<Installed> {
        let maps = KernelMaps::open(pin_dir)?;
        let mirror = maps.read_state()?;
        let ids = Ids::from_names(&mirror.names);
        Ok(Installed {
            maps,
            mirror,
            ids,
            underlay: Some(Underlay::default()),
        })
    }
}

impl<M: Maps> Installed<M> {
    /// Installs `topo`, writing only what differs from what is installed. Returns the
    /// number of single-entry writes.
    ///
    /// A route table whose change touches more than one route is written whole into its
    /// other generation and switched over by the (atomic) port and endpoint writes; a
    /// single-route change is made in place, itself atomic.
    ///
    /// `before`, when given, is the topology the installed maps were compiled from: the
    /// route tables `topo` shares with it are not compiled or compared again.
    pub fn install(
        &mut self,
        topo: &Topology,
        before: Option<&Topology>,
        ifindex: &dyn IfindexResolver,
    ) -> Result<usize> {
        // Before the maps: an uplink the overlay cannot use refuses the state whole.
        if let Some(u) = &mut self.underlay {
            u.prepare(topo, ifindex)?;
        }
        let (desired, ids, ops) =
            plan_install_reusing(topo, &self.ids, &self.mirror, before, ifindex)?;
        let applied = apply_all_or_nothing(&ops, &mut self.maps, &self.mirror);
        // Whatever was written, undone or not: packets decided meanwhile saw it.
        if !ops.is_empty() {
            self.maps.invalidate_flows()?;
        }
        match applied {
            Ok(()) => {}
            // Undone: the mirror still describes the maps.
            Err(e @ ApplyError::RolledBack { .. }) => return Err(e.into()),
            Err(e @ ApplyError::Mixed { .. }) => {
                // Part of the plan is in; re-read so the next attempt diffs against the truth.
                self.mirror = self.maps.read_back().unwrap_or_default();
                self.ids = Ids::from_names(&self.mirror.names);
                return Err(e.into());
            }
        }
        self.mirror = desired;
        self.ids = ids;
        Ok(ops.len())
    }
}

/// Reads and validates a state document; the error names every problem.
pub fn load_topology(path: &Path) -> Result<Topology> {
    let doc = Document::load(path)?;
    validate(&doc)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("state document {}", path.display()))
}

pub fn topology_of(doc: &Document, origin: &str) -> Result<Topology> {
    validate(doc)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("desired state from {origin}"))
}

/// The running data plane: program, maps, links, and the desired state it follows.
pub struct Dataplane {
    pub object: LoadedObject,
    pub installed: Installed,
    pub links: Links,
    /// Link kinds a port may be on (`--port-kinds`).
    pub port_kinds: Vec<String>,
    pub stats: SharedInstallStats,
    /// The topology last installed whole or changed in place (the single-route path
    /// checks against it).
    pub topo: Option<Topology>,
    /// The control plane's document for this host and its revision, kept for deltas.
    pub desired: Option<(u64, Held)>,
    /// Tells the sync thread to ask for the whole document (a delta did not fit).
    pub need_whole: NeedWhole,
}

impl Dataplane {
    /// Installs `topo` and attaches to its ports (and, in a fleet, to the uplink, where
    /// the tunnels from other hosts arrive).
    pub fn apply(&mut self, topo: &Topology) -> Result<usize> {
        let writes = self.installed.install(
            topo,
            self.topo.as_ref(),
            &KernelIfindex::new(&self.port_kinds),
        )?;
        let mut ifaces: Vec<String> = topo.ports.keys().cloned().collect();
        ifaces.extend(topo.local().and_then(|h| h.uplink.clone()));
        self.links.sync(self.object.pipeline()?, &ifaces)?;
        Ok(writes)
    }

    /// Records an install (or a refusal) for the metrics endpoint.
    pub fn record(&self, revision: Option<u64>, started: Instant, ok: bool) {
        let mut s = self.stats.lock().unwrap();
        if ok {
            s.applied += 1;
            s.revision = revision.unwrap_or(s.revision);
            s.last_apply_seconds = started.elapsed().as_secs_f64();
            s.last_success_unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
        } else {
            s.refused += 1;
        }
    }
}
