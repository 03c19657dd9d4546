//! Typed handles to the pinned maps (the agent, the CLI and the tests all go through
//! here): the plan writer, one snapshot read of everything installed and counted, and the
//! single-entry reads and writes the CLI and tests need.

use super::pins::check_bpffs;
use super::stored::StoredMaps;
use crate::maps::{stored, DataplaneMaps, EntryStore, MapState, Op, RouteKey, Stored};
use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use peer_dataplane_common::{
    acl::NO_HITS,
    clock::Clock,
    conntrack::{CtEntry, CtKey},
    counters::{GlobalCounters, PeeringCounters},
    flowcache::{FlowCounters, FlowEntry, FlowKey, FlowSlot},
    peering_counter_index, registry, RouteValue, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn open_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        anyhow!(
            "cannot open pinned map {} ({e}); has `peer-dataplane run` ever run on this host?",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

/// Typed handles to every pinned map.
pub struct KernelMaps {
    pub pin_dir: PathBuf,
    /// The maps the agent fills from the desired state, by the model's table.
    stored: StoredMaps,
    global: PerCpuArray<MapData, GlobalCounters>,
    peering_ctr: PerCpuArray<MapData, PeeringCounters>,
    acl_hits: PerCpuArray<MapData, u64>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    cap_state: Array<MapData, u64>,
    clock: Array<MapData, Clock>,
    flow_cache: PerCpuArray<MapData, FlowSlot>,
    flow_stats: PerCpuArray<MapData, FlowCounters>,
    epoch: Array<MapData, u64>,
}

macro_rules! typed {
    ($dir:expr, $spec:ident) => {
        open_map($dir, registry::$spec.name)?
            .try_into()
            .with_context(|| {
                format!(
                    "pinned map {} has an unexpected type or layout",
                    registry::$spec.name
                )
            })?
    };
}

/// Per-CPU global counters summed.
fn sum_global(per_cpu: &[GlobalCounters]) -> GlobalCounters {
    let mut sum = GlobalCounters::ZERO;
    per_cpu.iter().for_each(|c| sum.accumulate(c));
    sum
}

/// `peer-dataplane cache stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FlowCacheStats {
    pub epoch: u64,
    pub on: bool,
    pub slots_per_cpu: u32,
    /// Slots holding a decision of the current epoch, per CPU.
    pub kept_per_cpu: Vec<usize>,
    /// Hits, misses, decisions kept, evictions, declined and deferred since the maps were
    /// made, per CPU.
    pub counters_per_cpu: Vec<CacheCounters>,
    /// The same, summed.
    pub counters: CacheCounters,
}

/// [`FlowCounters`] as the CLI and metrics show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheCounters {
    pub hits: u64,
    pub misses: u64,
    pub kept: u64,
    pub evictions: u64,
    pub declined: u64,
    pub deferred: u64,
}

impl From<FlowCounters> for CacheCounters {
    fn from(c: FlowCounters) -> CacheCounters {
        CacheCounters {
            hits: c.hits,
            misses: c.misses,
            kept: c.kept,
            evictions: c.evictions,
            declined: c.declined,
            deferred: c.deferred,
        }
    }
}

/// The flow cache's counters of every CPU, summed.
fn sum_flow_counters(per_cpu: &[FlowCounters]) -> CacheCounters {
    let mut sum = FlowCounters::default();
    per_cpu.iter().for_each(|c| sum.add(c));
    sum.into()
}

/// The flow cache's side of a snapshot: its setting and what it did.
#[derive(Debug, Clone, Default)]
pub struct FlowCacheView {
    pub epoch: u64,
    pub on: bool,
    /// Summed over CPUs.
    pub counters: CacheCounters,
}

/// Everything installed and counted, read at one moment (see [`KernelMaps::snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub state: MapState,
    /// The global counters of each CPU, in CPU order.
    pub global_per_cpu: Vec<GlobalCounters>,
    /// Installed peering slot -> (requester -> accepter, accepter -> requester), summed.
    pub peering_traffic: BTreeMap<u32, (PeeringCounters, PeeringCounters)>,
    /// Hit slot of every installed ACL rule -> hits, summed over CPUs.
    pub acl_hits: BTreeMap<u32, u64>,
    pub flow_cache: FlowCacheView,
}

impl Snapshot {
    /// The global counters summed over CPUs.
    pub fn global(&self) -> GlobalCounters {
        sum_global(&self.global_per_cpu)
    }

    /// Counters of peering `slot` (zero for a slot not installed at the snapshot).
    pub fn peering_counters(&self, slot: u32) -> (PeeringCounters, PeeringCounters) {
        self.peering_traffic
            .get(&slot)
            .copied()
            .unwrap_or((PeeringCounters::ZERO, PeeringCounters::ZERO))
    }
}

impl KernelMaps {
    pub fn open(pin_dir: &Path) -> Result<KernelMaps> {
        check_bpffs(pin_dir)?;
        Ok(KernelMaps {
            pin_dir: pin_dir.to_path_buf(),
            stored: StoredMaps::open(pin_dir)?,
            global: typed!(pin_dir, GLOBAL_COUNTERS),
            peering_ctr: typed!(pin_dir, PEERING_COUNTERS),
            acl_hits: typed!(pin_dir, ACL_HITS),
            conntrack: typed!(pin_dir, CONNTRACK),
            cap_state: typed!(pin_dir, CAP_STATE),
            clock: typed!(pin_dir, CLOCK),
            flow_cache: typed!(pin_dir, FLOW_CACHE),
            flow_stats: typed!(pin_dir, FLOW_STATS),
            epoch: typed!(pin_dir, EPOCH),
        })
    }

    /// Everything installed now (counters aside).
    pub fn read_state(&self) -> Result<MapState> {
        MapState::read_from(&self.stored)
    }

    /// One read of everything installed and everything counted, for the CLI and the
    /// metrics endpoint to name and render (see `crate::views`).
    pub fn snapshot(&self) -> Result<Snapshot> {
        let state = self.read_state()?;
        let mut peering_traffic = BTreeMap::new();
        for slot in state.peerings.keys() {
            peering_traffic.insert(*slot, self.peering_counters(*slot)?);
        }
        let mut acl_hits = BTreeMap::new();
        // Security-group sets count no hits (`NO_HITS`): only network ACL rules have slots.
        for meta in state.acl_meta.values().filter(|m| m.hit_base != NO_HITS) {
            for slot in meta.hit_base..meta.hit_base + meta.rules {
                acl_hits.insert(slot, self.acl_hits(slot)?);
            }
        }
        Ok(Snapshot {
            global_per_cpu: self.global_counters_per_cpu()?,
            peering_traffic,
            acl_hits,
            flow_cache: FlowCacheView {
                epoch: self.epoch()?,
                on: self.flow_cache_on()?,
                counters: sum_flow_counters(&self.flow_counters_per_cpu()?),
            },
            state,
        })
    }

    /// Longest-prefix match of `key` in the routes trie (what the program would find).
    pub fn lookup_route(&self, key: &RouteKey) -> Result<Option<RouteValue>> {
        self.stored.get::<stored::Routes>(key)
    }

    /// The global counters of each CPU, in CPU order.
    pub fn global_counters_per_cpu(&self) -> Result<Vec<GlobalCounters>> {
        let per_cpu = self.global.get(&0, 0).context("reading pdp_global_ctr")?;
        Ok(per_cpu.iter().copied().collect())
    }

    pub fn global_counters(&self) -> Result<GlobalCounters> {
        Ok(sum_global(&self.global_counters_per_cpu()?))
    }

    /// Counters of peering `slot`: (requester -> accepter, accepter -> requester).
    pub fn peering_counters(&self, slot: u32) -> Result<(PeeringCounters, PeeringCounters)> {
        let read = |dir| -> Result<PeeringCounters> {
            let per_cpu = self
                .peering_ctr
                .get(&peering_counter_index(slot, dir), 0)
                .with_context(|| format!("reading pdp_pcx_ctr for slot {slot}"))?;
            let mut sum = PeeringCounters::ZERO;
            per_cpu.iter().for_each(|c| sum.accumulate(c));
            Ok(sum)
        };
        Ok((
            read(DIR_REQUESTER_TO_ACCEPTER)?,
            read(DIR_ACCEPTER_TO_REQUESTER)?,
        ))
    }

    fn reset_acl_hits(&mut self, base: u32, n: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        for slot in base..base + n {
            self.acl_hits
                .set(slot, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
        }
        Ok(())
    }

    /// Hits of ACL rule slot `slot`, summed over CPUs.
    pub fn acl_hits(&self, slot: u32) -> Result<u64> {
        Ok(self
            .acl_hits
            .get(&slot, 0)
            .context("reading pdp_acl_hits")?
            .iter()
            .sum())
    }

    /// Zeroes the counters and refills the cap buckets of a newly allocated peering slot.
    fn reset_peering_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        for dir in [DIR_REQUESTER_TO_ACCEPTER, DIR_ACCEPTER_TO_REQUESTER] {
            let zero = PerCpuValues::try_from(vec![PeeringCounters::ZERO; cpus])?;
            let index = peering_counter_index(slot, dir);
            self.peering_ctr.set(index, zero, 0)?;
            self.cap_state.set(index, 0, 0)?;
        }
        Ok(())
    }

    /// Every conntrack entry (a snapshot: the program keeps changing the table).
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let mut out = Vec::new();
        for kv in self.conntrack.iter() {
            match kv {
                Ok(kv) => out.push(kv),
                // An entry evicted between reading its key and its value.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading pdp_conntrack"),
            }
        }
        Ok(out)
    }

    /// Removes the entries `filter` selects; returns how many went.
    pub fn conntrack_flush(&mut self, filter: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
        let mut n = 0;
        for (k, e) in self.conntrack_entries()? {
            if filter(&k, &e) {
                match self.conntrack.remove(&k) {
                    Ok(()) => n += 1,
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).context("deleting from pdp_conntrack"),
                }
            }
        }
        Ok(n)
    }

    /// Writes one conntrack entry (tests use this to age a flow).
    pub fn conntrack_put(&mut self, k: &CtKey, e: &CtEntry) -> Result<()> {
        self.conntrack
            .insert(k, e, 0)
            .context("writing pdp_conntrack")
    }

    /// Sets the cap bucket of a peering and direction (tests: drain or refill it).
    pub fn set_cap_state(&mut self, slot: u32, dir: u32, tat: u64) -> Result<()> {
        self.cap_state
            .set(peering_counter_index(slot, dir), tat, 0)
            .context("writing pdp_cap_state")
    }

    /// The installed state's epoch (see `peer_dataplane_common::flowcache`).
    pub fn epoch(&self) -> Result<u64> {
        Ok(self.epoch.get(&0, 0)?)
    }

    /// Moves the epoch on: every flow decision made before is stale from now on. Called
    /// after every change written to the maps (a change undone too: packets may have
    /// been decided while it was half in).
    pub fn bump_epoch(&mut self) -> Result<u64> {
        let next = self.epoch()?.wrapping_add(1);
        self.epoch
            .set(0, next, 0)
            .context("moving the flow-cache epoch on")?;
        Ok(next)
    }

    /// Turns kept flow decisions on or off (off: every packet runs the whole pipeline;
    /// for measuring it, and for an operator who suspects the cache). Either way the
    /// decisions kept so far become stale.
    pub fn set_flow_cache(&mut self, on: bool) -> Result<()> {
        self.epoch
            .set(1, u64::from(!on), 0)
            .context("turning the flow cache on or off")?;
        self.bump_epoch().map(|_| ())
    }

    /// Whether kept decisions are used (`pdp_epoch` slot 1 is zero).
    pub fn flow_cache_on(&self) -> Result<bool> {
        Ok(self.epoch.get(&1, 0)? == 0)
    }

    /// The flow cache's counters of each CPU, in CPU order.
    pub fn flow_counters_per_cpu(&self) -> Result<Vec<FlowCounters>> {
        let per_cpu = self
            .flow_stats
            .get(&0, 0)
            .context("reading pdp_flow_stats")?;
        Ok(per_cpu.iter().copied().collect())
    }

    /// What the flow cache holds now: its epoch, whether it is on, and how many slots of
    /// each CPU's table hold a decision of the current epoch.
    pub fn flow_cache_stats(&self) -> Result<FlowCacheStats> {
        let epoch = self.epoch()?;
        let on = self.flow_cache_on()?;
        let per_cpu = self.flow_counters_per_cpu()?;
        let mut kept: Vec<usize> = Vec::new();
        for i in 0..registry::FLOW_CACHE.max_entries {
            let per_cpu = self.flow_cache.get(&i, 0)?;
            if kept.is_empty() {
                kept = vec![0; per_cpu.len()];
            }
            for (cpu, slot) in per_cpu.iter().enumerate() {
                if slot.holds_current(epoch) {
                    kept[cpu] += 1;
                }
            }
        }
        Ok(FlowCacheStats {
            epoch,
            on,
            slots_per_cpu: registry::FLOW_CACHE.max_entries,
            kept_per_cpu: kept,
            counters: sum_flow_counters(&per_cpu),
            counters_per_cpu: per_cpu.into_iter().map(CacheCounters::from).collect(),
        })
    }

    /// Slot `slot` of the flow-decision table on every CPU, in CPU order.
    pub fn flow_slot(&self, slot: u32) -> Result<Vec<FlowSlot>> {
        let per_cpu = self
            .flow_cache
            .get(&slot, 0)
            .context("reading pdp_flow_cache")?;
        Ok(per_cpu.iter().copied().collect())
    }

    /// The flow decisions of the current epoch, on every CPU (a slot's key and entry
    /// are read while the program may rewrite them: for counting and showing only).
    pub fn flow_decisions(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        let epoch = self.epoch()?;
        let mut out = Vec::new();
        for i in 0..registry::FLOW_CACHE.max_entries {
            for slot in self.flow_cache.get(&i, 0)?.iter() {
                if slot.holds_current(epoch) {
                    out.push((slot.key, slot.entry));
                }
            }
        }
        Ok(out)
    }

    /// The program's clock setting (`Clock::KERNEL` unless a test changed it).
    pub fn clock(&self) -> Result<Clock> {
        self.clock.get(&0, 0).context("reading pdp_clock")
    }

    /// Sets the program's clock (tests only: the agent never writes it).
    pub fn set_clock(&mut self, c: Clock) -> Result<()> {
        self.clock.set(0, c, 0).context("writing pdp_clock")
    }

    /// Now on the program's clock: what conntrack and caps compare their stamps with.
    pub fn now_ns(&self) -> Result<u64> {
        Ok(self.clock()?.now(monotonic_coarse_ns()))
    }

    /// The cap bucket (`tat`, ns) of a peering and direction.
    pub fn cap_state(&self, slot: u32, dir: u32) -> Result<u64> {
        self.cap_state
            .get(&peering_counter_index(slot, dir), 0)
            .context("reading pdp_cap_state")
    }
}

/// The kernel's monotonic clock (what `bpf_ktime_get_ns` reads: trace stamps).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The kernel's coarse monotonic clock (what `bpf_ktime_get_coarse_ns` reads: the data
/// plane's clock, see `peer_dataplane_common::clock`).
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl EntryStore for KernelMaps {
    fn put<M: Stored>(&mut self, k: &M::Key, v: &M::Value) -> Result<()> {
        self.stored.put::<M>(k, v)
    }

    fn delete<M: Stored>(&mut self, k: &M::Key) -> Result<()> {
        self.stored.delete::<M>(k)
    }

    fn reset_peering_counters(&mut self, slot: u32) -> Result<()> {
        KernelMaps::reset_peering_counters(self, slot)
    }

    fn reset_acl_hits(&mut self, base: u32, n: u32) -> Result<()> {
        KernelMaps::reset_acl_hits(self, base, n)
    }
}

impl DataplaneMaps for KernelMaps {
    fn write(&mut self, op: &Op) -> Result<()> {
        op.write_to(self).with_context(|| format!("writing {op:?}"))
    }
}
