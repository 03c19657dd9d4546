//! `peer-dataplane run`: loads the program, installs the state document, attaches to the
//! ports, and re-applies the document on SIGHUP or when the file changes. A document that
//! fails validation (or names an interface that does not exist) is refused as a whole and
//! the data plane keeps its previous state.

use crate::desired::{compile, IfindexResolver, KernelIfindex};
use crate::document::Document;
use crate::ids::Ids;
use crate::kernel::{self, KernelMaps};
use crate::maps::{apply, plan, MapState};
use crate::validate::{validate, Topology};
use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{xdp::XdpLinkId, Xdp, XdpMode};
use aya::Ebpf;
use log::{error, info, warn};
use peer_dataplane_common::{program_names, NAME_PEERING};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode; fail if the driver lacks it.
    Native,
    /// Generic (skb) mode: slower, works everywhere.
    Generic,
    /// Native, falling back to generic per interface when the driver lacks native XDP.
    Auto,
}

pub struct RunOptions {
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub xdp_mode: XdpModeArg,
    pub object: Vec<u8>,
}

/// The installed state and what the agent knows about it.
pub struct Installed {
    pub maps: KernelMaps,
    pub mirror: MapState,
    pub ids: Ids,
}

impl Installed {
    /// Opens the pinned maps and reads back what is installed (from a previous run too).
    pub fn open(pin_dir: &Path) -> Result<Installed> {
        let maps = KernelMaps::open(pin_dir)?;
        let mirror = maps.read_state()?;
        let ids = Ids::from_names(&mirror.names);
        Ok(Installed { maps, mirror, ids })
    }

    /// Installs `topo`, writing only what differs from what is installed. Returns the
    /// number of single-entry writes.
    pub fn install(&mut self, topo: &Topology, ifindex: &dyn IfindexResolver) -> Result<usize> {
        let (desired, ids) = compile(topo, &self.ids, ifindex)?;
        let new_slots = ids.new_since(&self.ids, NAME_PEERING);
        let ops = plan(&desired, &self.mirror, &new_slots);
        if let Err(e) = apply(&ops, &mut self.maps) {
            // Part of the plan may be in; re-read so the next attempt diffs against the truth.
            self.mirror = self.maps.read_state().unwrap_or_default();
            self.ids = Ids::from_names(&self.mirror.names);
            return Err(e);
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

struct Attachments {
    mode: XdpModeArg,
    links: BTreeMap<String, XdpLinkId>,
}

impl Attachments {
    fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
        ebpf.program_mut(program_names::PIPELINE)
            .ok_or_else(|| {
                anyhow!(
                    "program {} missing from the object",
                    program_names::PIPELINE
                )
            })?
            .try_into()
            .context("program type")
    }

    /// Attaches to every interface in `want` not yet attached; detaches the rest.
    fn sync(&mut self, ebpf: &mut Ebpf, want: &[String]) -> Result<()> {
        let prog = Self::program(ebpf)?;
        for iface in want {
            if self.links.contains_key(iface) {
                continue;
            }
            let link = match self.mode {
                XdpModeArg::Native => prog.attach(iface, XdpMode::Driver),
                XdpModeArg::Generic => prog.attach(iface, XdpMode::Skb),
                XdpModeArg::Auto => prog.attach(iface, XdpMode::Driver).or_else(|e| {
                    warn!("{iface}: native XDP unavailable ({e}); using generic mode");
                    prog.attach(iface, XdpMode::Skb)
                }),
            }
            .with_context(|| format!("attaching XDP ({:?} mode) to {iface}", self.mode))?;
            info!("attached to {iface} ({:?} mode)", self.mode);
            self.links.insert(iface.clone(), link);
        }
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|i| !want.contains(i))
            .cloned()
            .collect();
        for iface in stale {
            let link = self.links.remove(&iface).unwrap();
            if let Err(e) = prog.detach(link) {
                warn!("detaching from {iface}: {e}");
            } else {
                info!("detached from {iface}");
            }
        }
        Ok(())
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub async fn run(opts: RunOptions) -> Result<()> {
    // Refuse a bad document before touching the kernel.
    let topo = load_topology(&opts.config)?;
    let mut ebpf = kernel::load(&opts.object, &opts.pin_dir)?;
    let prog = Attachments::program(&mut ebpf)?;
    prog.load()
        .context("verifying and loading the XDP program")?;

    let mut installed = Installed::open(&opts.pin_dir)?;
    let writes = installed.install(&topo, &KernelIfindex)?;
    info!(
        "installed {} from {} ({writes} map writes): {} vpcs, {} peerings, {} route tables, {} ports",
        opts.pin_dir.display(),
        opts.config.display(),
        topo.vpcs.len(),
        topo.peerings.len(),
        topo.route_tables.len(),
        topo.ports.len()
    );
    let mut attachments = Attachments {
        mode: opts.xdp_mode,
        links: BTreeMap::new(),
    };
    attachments.sync(&mut ebpf, &topo.ports.keys().cloned().collect::<Vec<_>>())?;
    info!("ready");

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut last_mtime = mtime(&opts.config);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        let reason = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = poll.tick() => {
                let m = mtime(&opts.config);
                if m == last_mtime { continue; }
                last_mtime = m;
                "file change"
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        match reload(&opts.config, &mut installed, &mut attachments, &mut ebpf) {
            Ok(writes) => info!(
                "reloaded {} on {reason}: {writes} map writes",
                opts.config.display()
            ),
            Err(e) => error!("reload on {reason} refused, previous state kept: {e:#}"),
        }
    }
    info!(
        "stopping: detaching from {} interfaces; maps stay pinned in {}",
        attachments.links.len(),
        opts.pin_dir.display()
    );
    attachments.sync(&mut ebpf, &[])?;
    Ok(())
}

fn reload(
    config: &Path,
    installed: &mut Installed,
    att: &mut Attachments,
    ebpf: &mut Ebpf,
) -> Result<usize> {
    let topo = load_topology(config)?;
    let writes = installed.install(&topo, &KernelIfindex)?;
    att.sync(ebpf, &topo.ports.keys().cloned().collect::<Vec<_>>())?;
    Ok(writes)
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
