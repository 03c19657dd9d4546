//! `peer-dataplane run`: loads the program, installs the desired state, attaches to the
//! ports, and keeps the maps in step with the desired state, from a file (re-read on
//! SIGHUP or change) or from the control plane (long poll). A desired state that fails
//! validation, or names an interface that does not exist, is refused as a whole and the
//! data plane keeps its previous state; so does an unreachable control plane.

pub mod answer;
pub mod apply;
pub mod in_place;
pub mod install;
pub mod long_poll;
pub mod metrics;
pub mod underlay;

use crate::bpf::links::{Links, XdpModeArg};
use crate::bpf::object::LoadedObject;
use anyhow::{bail, Context, Result};
use apply::{apply_update, reload_file, Retry};
use install::{load_topology, Dataplane, Installed};
use log::{error, info};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

/// Where the desired state comes from.
pub enum Source {
    File(PathBuf),
    ControlPlane(long_poll::ControlPlane),
}

pub struct RunOptions {
    pub source: Source,
    pub pin_dir: PathBuf,
    pub xdp_mode: XdpModeArg,
    /// Link kinds a port may be on (`--port-kinds`).
    pub port_kinds: Vec<String>,
    pub object: Vec<u8>,
    /// Serve Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // With a file, refuse a bad document before touching the kernel.
    let initial = match &opts.source {
        Source::File(path) => Some(load_topology(path)?),
        Source::ControlPlane(_) => None,
    };
    let mut dp = start(&opts).await?;
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
            updates = Some(long_poll::spawn(
                cp.clone(),
                dp.need_whole.clone(),
                dp.stats.clone(),
            )?);
        }
        _ => unreachable!(),
    }
    info!("ready");
    let config = match &opts.source {
        Source::File(p) => Some(p.clone()),
        Source::ControlPlane(_) => None,
    };
    follow_changes(&mut dp, config.as_deref(), updates).await?;
    info!(
        "stopping; {} ports stay attached through their pinned links, maps stay in {} (`peer-dataplane cleanup` detaches)",
        dp.links.held(),
        opts.pin_dir.display()
    );
    Ok(())
}

/// Loads the program over the pinned maps, serves metrics, takes over the pinned links
/// and pins the programs the CLI runs.
async fn start(opts: &RunOptions) -> Result<Dataplane> {
    let object = LoadedObject::load(&opts.object, &opts.pin_dir)?;
    let installed = Installed::open(&opts.pin_dir)?;
    let links = Links::new(&opts.pin_dir, opts.xdp_mode)?;
    let mut dp = Dataplane {
        object,
        installed,
        links,
        port_kinds: opts.port_kinds.clone(),
        stats: Default::default(),
        topo: None,
        desired: None,
        need_whole: Default::default(),
    };
    if let Some(addr) = opts.metrics {
        let listener = metrics::bind(addr).await?;
        let (pin_dir, stats) = (opts.pin_dir.clone(), dp.stats.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, pin_dir, stats).await {
                error!("metrics endpoint stopped: {e:#}");
            }
        });
        info!("serving Prometheus metrics on http://{addr}/metrics");
    }
    // Adopt every pinned link at once: the new program takes over from the old one on the
    // same maps, before any (possibly slow) sync with the control plane.
    let pinned = dp.links.pinned();
    if !pinned.is_empty() {
        dp.links.sync(dp.object.pipeline()?, &pinned)?;
        info!(
            "adopted {} pinned XDP links and the installed state ({} routes)",
            pinned.len(),
            dp.installed.mirror.routes.len()
        );
    }
    // The trace program is only run by the CLI; verified after the takeover above.
    dp.object.load_trace_and_pin(&opts.pin_dir)?;
    Ok(dp)
}

/// Applies every change of the desired state (file: SIGHUP or a new mtime; control plane:
/// each new revision) and retries failed installs, until SIGTERM or SIGINT.
async fn follow_changes(
    dp: &mut Dataplane,
    config: Option<&Path>,
    mut updates: Option<tokio::sync::mpsc::Receiver<long_poll::Update>>,
) -> Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut last_mtime = config.and_then(mtime);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    // A valid state whose install failed (and was undone): tried again with backoff until
    // it goes in or a newer state replaces it.
    let mut retry: Option<Retry> = None;
    loop {
        let retry_at = retry.as_ref().map(|r| r.at).unwrap_or_else(Instant::now);
        tokio::select! {
            _ = hup.recv(), if config.is_some() => retry = reload_file(config.unwrap(), "SIGHUP", dp),
            _ = poll.tick(), if config.is_some() => {
                let m = config.and_then(mtime);
                if m != last_mtime {
                    last_mtime = m;
                    retry = reload_file(config.unwrap(), "file change", dp);
                }
            }
            Some(update) = async { match updates.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                retry = apply_update(update, dp);
            }
            _ = tokio::time::sleep_until(retry_at.into()), if retry.is_some() => {
                retry = retry.take().and_then(|r| r.again(dp));
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
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
