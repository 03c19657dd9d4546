//! `peer-dataplane run`: loads the program, installs the desired state, attaches to the
//! ports, and keeps the maps in step with the desired state, from a file (re-read on
//! SIGHUP or change) or from the control plane (long poll). A desired state that fails
//! validation, or names an interface that does not exist, is refused as a whole and the
//! data plane keeps its previous state; so does an unreachable control plane.

use crate::desired::{compile_over, IfindexResolver, KernelIfindex};
use crate::document::Document;
use crate::ids::Ids;
use crate::kernel::{self, KernelMaps};
use crate::links::{Links, XdpModeArg};
use crate::maps::{apply_all_or_nothing, plan, AclPortKey, ApplyError, MapState, RouteKey};
use crate::sync::{self, Update};
use crate::validate::{validate, Topology};
use anyhow::{anyhow, bail, Context, Result};
use aya::programs::Xdp;
use aya::Ebpf;
use log::{error, info};
use peer_dataplane_common::acl::{
    acl_addr_table_set, acl_set, acl_set_generation, acl_set_id, AclBits, AclExactKey, AclProtoKey,
};
use peer_dataplane_common::{
    program_names, route_table_generation, route_table_id, NAME_PEERING, VPC_TABLE_BASE,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// Where the desired state comes from.
pub enum Source {
    File(PathBuf),
    ControlPlane(sync::ControlPlane),
}

pub struct RunOptions {
    pub source: Source,
    pub pin_dir: PathBuf,
    pub xdp_mode: XdpModeArg,
    pub object: Vec<u8>,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The installed state and what the agent knows about it.
pub struct Installed {
    pub maps: KernelMaps,
    pub mirror: MapState,
    pub ids: Ids,
}

impl Installed {
    /// The trie key (table id and generation) route table `name` is installed under.
    pub fn route_table_key(&self, name: &str) -> Option<u32> {
        let id = self
            .ids
            .get(peer_dataplane_common::NAME_ROUTE_TABLE, name)?;
        let generation = current_generations(&self.mirror).get(&id).copied()?;
        Some(peer_dataplane_common::route_table_key(id, generation))
    }

    /// The per-CPU hit counter slot of network ACL `acl`'s rule `number` in one direction,
    /// as installed for `topo`.
    pub fn acl_hit_slot(
        &self,
        topo: &Topology,
        acl: &str,
        egress: bool,
        number: u32,
    ) -> Option<u32> {
        let a = topo.network_acls.get(acl)?;
        let mut numbers: Vec<u32> = if egress { &a.egress } else { &a.ingress }
            .iter()
            .map(|r| r.number)
            .collect();
        numbers.sort();
        let index = numbers.iter().position(|n| *n == number)? as u32;
        let id = self.ids.get(peer_dataplane_common::NAME_ACL, acl)?;
        let generation = current_acl_generations(&self.mirror).get(&id).copied()?;
        let meta = self.mirror.acl_meta.get(&acl_set(id, generation, egress))?;
        Some(meta.hit_base + index)
    }

    /// Opens the pinned maps and reads back what is installed (from a previous run too).
    pub fn open(pin_dir: &Path) -> Result<Installed> {
        let maps = KernelMaps::open(pin_dir)?;
        let mirror = maps.read_state()?;
        let ids = Ids::from_names(&mirror.names);
        Ok(Installed { maps, mirror, ids })
    }

    /// Installs `topo`, writing only what differs from what is installed. Returns the
    /// number of single-entry writes.
    ///
    /// A route table whose change touches more than one route is written whole into its
    /// other generation and switched over by the (atomic) port and endpoint writes; a
    /// single-route change is made in place, itself atomic.
    pub fn install(&mut self, topo: &Topology, ifindex: &dyn IfindexResolver) -> Result<usize> {
        let (desired, ids, ops) = plan_install(topo, &self.ids, &self.mirror, ifindex)?;
        match apply_all_or_nothing(&ops, &mut self.maps, &self.mirror) {
            Ok(()) => {}
            // Undone: the mirror still describes the maps.
            Err(e @ ApplyError::RolledBack { .. }) => return Err(e.into()),
            Err(e @ ApplyError::Mixed { .. }) => {
                // Part of the plan is in; re-read so the next attempt diffs against the truth.
                self.mirror = self.maps.read_state().unwrap_or_default();
                self.ids = Ids::from_names(&self.mirror.names);
                return Err(e.into());
            }
        }
        self.mirror = desired;
        self.ids = ids;
        Ok(ops.len())
    }
}

/// What installing `topo` over `installed` takes: the desired map contents, the ids, and
/// the ordered writes. Pure: unit-testable against an in-memory [`MapState`].
pub fn plan_install(
    topo: &Topology,
    ids: &Ids,
    installed: &MapState,
    ifindex: &dyn IfindexResolver,
) -> Result<(MapState, Ids, Vec<crate::maps::Op>)> {
    let tables = current_generations(installed);
    let acls = current_acl_generations(installed);
    let table_same = |t: u32| tables.get(&t).copied().unwrap_or(0);
    let acl_same = |a: u32| acls.get(&a).copied().unwrap_or(0);
    let (in_place, in_place_ids) =
        compile_over(topo, ids, ifindex, &table_same, &acl_same, installed)?;
    let flip_tables = tables_with_several_changes(&in_place, installed, &tables);
    // An ACL is a whole: any change to an installed one goes to its other generation.
    let flip_acls: BTreeSet<u32> = acls
        .iter()
        .filter(|(a, g)| acl_view(&in_place, **a, **g) != acl_view(installed, **a, **g))
        .map(|(a, _)| *a)
        .collect();
    let (desired, new_ids) = if flip_tables.is_empty() && flip_acls.is_empty() {
        (in_place, in_place_ids)
    } else {
        let table_gen = |t: u32| {
            if flip_tables.contains(&t) {
                1 - table_same(t)
            } else {
                table_same(t)
            }
        };
        let acl_gen = |a: u32| {
            if flip_acls.contains(&a) {
                1 - acl_same(a)
            } else {
                acl_same(a)
            }
        };
        compile_over(topo, ids, ifindex, &table_gen, &acl_gen, installed)?
    };
    let new_slots = new_ids.new_since(ids, NAME_PEERING);
    let ops = plan(&desired, installed, &new_slots);
    Ok((desired, new_ids, ops))
}

/// ACL id -> generation in use, read off the installed sets.
fn current_acl_generations(m: &MapState) -> BTreeMap<u32, u32> {
    m.acl_meta
        .keys()
        .map(|set| (acl_set_id(*set), acl_set_generation(*set)))
        .collect()
}

/// Everything installed for ACL `acl` in generation `generation` (both directions), with
/// hit counter bases left out: they move when other ACLs change size.
type AclView = (
    Vec<(RouteKey, AclBits)>,
    Vec<(AclPortKey, AclBits)>,
    Vec<(AclProtoKey, AclBits)>,
    Vec<(AclExactKey, AclBits)>,
    Vec<(u32, AclBits, AclBits, AclBits, u32)>,
);

fn acl_view(m: &MapState, acl: u32, generation: u32) -> AclView {
    let sets = [
        acl_set(acl, generation, false),
        acl_set(acl, generation, true),
    ];
    let of_set = |be: [u8; 4]| sets.contains(&u32::from_be_bytes(be));
    (
        m.acl_addr
            .iter()
            // Address keys hold the set shifted left by the family bit.
            .filter(|(k, _)| {
                sets.contains(&acl_addr_table_set(u32::from_be_bytes(k.data.table_be)))
            })
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_port
            .iter()
            .filter(|(k, _)| of_set(k.data.set_be))
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_proto
            .iter()
            .filter(|(k, _)| sets.contains(&k.set))
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_exact
            .iter()
            .filter(|(k, _)| match k.kind {
                peer_dataplane_common::acl::EXACT_HOST => {
                    sets.contains(&acl_addr_table_set(k.table))
                }
                _ => sets.contains(&k.table),
            })
            .map(|(k, v)| (*k, *v))
            .collect(),
        m.acl_meta
            .iter()
            .filter(|(k, _)| sets.contains(k))
            .map(|(k, v)| (*k, v.allow, v.any_protocol, v.portless, v.rules))
            .collect(),
    )
}

/// Route table id -> generation in use, read off the installed routes (after a complete
/// apply, all routes of a table live in one generation).
fn current_generations(m: &MapState) -> BTreeMap<u32, u32> {
    m.routes
        .keys()
        .map(|k| u32::from_be_bytes(k.data.table_be))
        .filter(|t| *t < VPC_TABLE_BASE)
        .map(|key| (route_table_id(key), route_table_generation(key)))
        .collect()
}

/// Tables (ids) that exist now and whose routes would change in more than one entry.
fn tables_with_several_changes(
    desired: &MapState,
    current: &MapState,
    installed: &BTreeMap<u32, u32>,
) -> BTreeSet<u32> {
    let mut changes: BTreeMap<u32, usize> = BTreeMap::new();
    let table_of = |k: &RouteKey| u32::from_be_bytes(k.data.table_be);
    for (k, v) in &desired.routes {
        if current.routes.get(k) != Some(v) {
            *changes.entry(table_of(k)).or_default() += 1;
        }
    }
    for k in current
        .routes
        .keys()
        .filter(|k| !desired.routes.contains_key(*k))
    {
        *changes.entry(table_of(k)).or_default() += 1;
    }
    changes
        .into_iter()
        .filter(|(key, n)| {
            *key < VPC_TABLE_BASE && *n > 1 && installed.contains_key(&route_table_id(*key))
        })
        .map(|(key, _)| route_table_id(key))
        .collect()
}

/// Reads and validates a state document; the error names every problem.
pub fn load_topology(path: &Path) -> Result<Topology> {
    let doc = Document::load(path)?;
    validate(&doc)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("state document {}", path.display()))
}

fn topology_of(doc: &Document, origin: &str) -> Result<Topology> {
    validate(doc)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("desired state from {origin}"))
}

fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    kernel::xdp_program(ebpf, program_names::PIPELINE)
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The running data plane: program, maps, links.
struct Dataplane {
    ebpf: Ebpf,
    installed: Installed,
    links: Links,
    sync: crate::metrics::SharedSync,
}

impl Dataplane {
    /// Installs `topo` and attaches to its ports.
    fn apply(&mut self, topo: &Topology) -> Result<usize> {
        let writes = self.installed.install(topo, &KernelIfindex)?;
        let ports: Vec<String> = topo.ports.keys().cloned().collect();
        self.links.sync(program(&mut self.ebpf)?, &ports)?;
        Ok(writes)
    }

    /// Records an install (or a refusal) for the metrics endpoint.
    fn record(&self, revision: Option<u64>, started: Instant, ok: bool) {
        let mut s = self.sync.lock().unwrap();
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

pub async fn run(opts: RunOptions) -> Result<()> {
    // With a file, refuse a bad document before touching the kernel.
    let initial = match &opts.source {
        Source::File(path) => Some(load_topology(path)?),
        Source::ControlPlane(_) => None,
    };
    let mut ebpf = kernel::load(&opts.object, &opts.pin_dir)?;
    program(&mut ebpf)?
        .load()
        .context("verifying and loading the XDP program")?;
    let installed = Installed::open(&opts.pin_dir)?;
    let links = Links::new(&opts.pin_dir, opts.xdp_mode)?;
    let mut dp = Dataplane {
        ebpf,
        installed,
        links,
        sync: Default::default(),
    };
    if let Some(addr) = opts.metrics {
        let listener = crate::metrics::bind(addr).await?;
        let (pin_dir, sync) = (opts.pin_dir.clone(), dp.sync.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, pin_dir, sync).await {
                error!("metrics endpoint stopped: {e:#}");
            }
        });
        info!("serving Prometheus metrics on http://{addr}/metrics");
    }

    // Adopt every pinned link at once: the new program takes over from the old one on the
    // same maps, before any (possibly slow) sync with the control plane.
    let pinned = dp.links.pinned();
    if !pinned.is_empty() {
        dp.links.sync(program(&mut dp.ebpf)?, &pinned)?;
        info!(
            "adopted {} pinned XDP links and the installed state ({} routes)",
            pinned.len(),
            dp.installed.mirror.routes.len()
        );
    }
    // The trace program is only run by the CLI; verified after the takeover above.
    kernel::xdp_program(&mut dp.ebpf, program_names::TRACE)?
        .load()
        .context("verifying and loading the trace program")?;
    kernel::pin_programs(&mut dp.ebpf, &opts.pin_dir)?;

    let mut updates = None;
    match (&opts.source, initial) {
        (Source::File(path), Some(topo)) => {
            let started = Instant::now();
            let writes = dp.apply(&topo)?;
            dp.record(None, started, true);
            info!(
                "installed {} ({writes} map writes): {} vpcs, {} peerings, {} route tables, {} ports",
                path.display(),
                topo.vpcs.len(),
                topo.peerings.len(),
                topo.route_tables.len(),
                topo.ports.len()
            );
        }
        (Source::ControlPlane(cp), _) => {
            info!("syncing from control plane {} as host {}", cp.url, cp.host);
            updates = Some(sync::spawn(cp.clone())?);
        }
        _ => unreachable!(),
    }
    info!("ready");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let config = match &opts.source {
        Source::File(p) => Some(p.clone()),
        Source::ControlPlane(_) => None,
    };
    let mut last_mtime = config.as_deref().and_then(mtime);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    // A valid state whose install failed (and was undone): tried again with backoff until
    // it goes in or a newer state replaces it.
    let mut retry: Option<Retry> = None;
    loop {
        let retry_at = retry.as_ref().map(|r| r.at).unwrap_or_else(Instant::now);
        tokio::select! {
            _ = hup.recv(), if config.is_some() => retry = reload_file(config.as_deref().unwrap(), "SIGHUP", &mut dp),
            _ = poll.tick(), if config.is_some() => {
                let m = config.as_deref().and_then(mtime);
                if m != last_mtime {
                    last_mtime = m;
                    retry = reload_file(config.as_deref().unwrap(), "file change", &mut dp);
                }
            }
            Some(update) = async { match updates.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                retry = apply_update(update, &mut dp);
            }
            _ = tokio::time::sleep_until(retry_at.into()), if retry.is_some() => {
                retry = retry.take().and_then(|r| r.again(&mut dp));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!(
        "stopping; {} ports stay attached through their pinned links, maps stay in {} (`peer-dataplane cleanup` detaches)",
        dp.links.held(),
        opts.pin_dir.display()
    );
    Ok(())
}

/// A valid desired state whose install failed, to try again.
struct Retry {
    topo: Topology,
    what: String,
    revision: Option<u64>,
    attempts: u32,
    at: Instant,
}

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Retry {
    /// Counts a failed attempt (`e`) and schedules the next one: 100 ms after the first
    /// failure, doubling up to 5 s.
    fn failed(mut self, e: &anyhow::Error) -> Retry {
        self.attempts += 1;
        let wait = (RETRY_MIN * 2u32.saturating_pow(self.attempts - 1)).min(RETRY_MAX);
        let again = if self.attempts == 1 {
            String::new()
        } else {
            format!(" again (attempt {})", self.attempts)
        };
        error!(
            "installing {} failed{again}, retrying in {} ms: {e:#}",
            self.what,
            wait.as_millis()
        );
        self.at = Instant::now() + wait;
        self
    }

    /// Installs again; `Some` (with a later time) if it failed once more.
    fn again(self, dp: &mut Dataplane) -> Option<Retry> {
        let (attempt, what, revision) = (self.attempts + 1, self.what.clone(), self.revision);
        match install(
            self.topo,
            self.what,
            revision,
            self.attempts,
            Instant::now(),
            dp,
        ) {
            Ok(writes) => {
                info!("installed {what} on attempt {attempt} ({writes} map writes)");
                if let Some(rev) = revision {
                    info!("synced revision {rev} ({writes} map writes; after {attempt} attempts)");
                }
                None
            }
            Err(retry) => Some(*retry),
        }
    }
}

/// Installs a validated state (after `attempts` failed ones); a failure is reported and
/// comes back as the retry to make.
fn install(
    topo: Topology,
    what: String,
    revision: Option<u64>,
    attempts: u32,
    started: Instant,
    dp: &mut Dataplane,
) -> Result<usize, Box<Retry>> {
    let r = dp.apply(&topo);
    dp.record(revision, started, r.is_ok());
    r.map_err(|e| {
        let retry = Retry {
            topo,
            what,
            revision,
            attempts,
            at: started,
        };
        Box::new(retry.failed(&e))
    })
}

fn reload_file(config: &Path, why: &str, dp: &mut Dataplane) -> Option<Retry> {
    let started = Instant::now();
    let topo = match load_topology(config) {
        Ok(t) => t,
        Err(e) => {
            dp.record(None, started, false);
            error!("reload on {why} refused, previous state kept: {e:#}");
            return None;
        }
    };
    match install(
        topo,
        format!("{} on {why}", config.display()),
        None,
        0,
        started,
        dp,
    ) {
        Ok(writes) => {
            info!(
                "reloaded {} on {why}: {writes} map writes",
                config.display()
            );
            None
        }
        Err(retry) => Some(*retry),
    }
}

fn apply_update(u: Update, dp: &mut Dataplane) -> Option<Retry> {
    let started = Instant::now();
    let what = format!("control plane revision {}", u.revision);
    let topo = match topology_of(&u.document, &what) {
        Ok(t) => t,
        Err(e) => {
            dp.record(Some(u.revision), started, false);
            error!(
                "revision {} refused, previous state kept: {e:#}",
                u.revision
            );
            return None;
        }
    };
    match install(topo, what, Some(u.revision), 0, started, dp) {
        Ok(writes) => {
            info!(
                "synced revision {} ({writes} map writes; applied in {:.2} ms, {:.2} ms after the control plane answered)",
                u.revision,
                started.elapsed().as_secs_f64() * 1e3,
                u.received.elapsed().as_secs_f64() * 1e3
            );
            None
        }
        Err(retry) => Some(*retry),
    }
}

/// The XDP object: embedded at build time (`cargo xtask build`), or read from a path.
pub fn object_bytes(path: Option<&Path>) -> Result<Vec<u8>> {
    match (path, crate::embedded::OBJECT) {
        (Some(p), _) => std::fs::read(p).with_context(|| format!("reading XDP object {}", p.display())),
        (None, Some(bytes)) => Ok(bytes.to_vec()),
        (None, None) => bail!(
            "this binary was built without the XDP object; build with `cargo xtask build` or pass --bpf-object PATH"
        ),
    }
}
