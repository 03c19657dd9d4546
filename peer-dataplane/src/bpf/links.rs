//! XDP attachments as pinned bpf_links, one per port, under `<pin dir>/links/<iface>`.
//!
//! A pinned link keeps the program attached when the agent exits or dies, so forwarding
//! never depends on the agent process (docs/datapath.md §6). A starting agent adopts each pinned link
//! and swaps its freshly loaded program in with one BPF_LINK_UPDATE: packets see either
//! the old program or the new one, never no program. Both use the same pinned maps.

use anyhow::{anyhow, Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Xdp, XdpMode};
use log::{info, warn};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Native (driver) mode; fail if the driver lacks it.
    Native,
    /// Generic (skb) mode: slower, works everywhere.
    Generic,
    /// Native, falling back to generic per interface when the driver lacks native XDP.
    Auto,
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

pub struct Links {
    dir: PathBuf,
    mode: XdpModeArg,
    /// Links this process holds, by interface.
    held: BTreeMap<String, FdLink>,
}

impl Links {
    pub fn new(pin_dir: &Path, mode: XdpModeArg) -> Result<Links> {
        let dir = links_dir(pin_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Links {
            dir,
            mode,
            held: BTreeMap::new(),
        })
    }

    /// Interfaces with a pinned link (from this or an earlier agent).
    pub fn pinned(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
            .collect();
        out.sort();
        out
    }

    /// Makes `prog` the program on exactly the interfaces in `want`: adopts pinned links
    /// (atomic program replacement), attaches and pins new ones, and unpins (detaches) the
    /// links of interfaces no longer wanted.
    pub fn sync(&mut self, prog: &mut Xdp, want: &[String]) -> Result<()> {
        for iface in want {
            if self.held.contains_key(iface) {
                continue;
            }
            let pin = self.dir.join(iface);
            let adopted = if pin.exists() {
                match adopt(prog, &pin) {
                    Ok(link) => Some(link),
                    Err(e) => {
                        // E.g. the interface was recreated: the old link is defunct.
                        warn!("{iface}: cannot adopt the pinned XDP link ({e:#}); attaching anew");
                        std::fs::remove_file(&pin)
                            .with_context(|| format!("unpinning {}", pin.display()))?;
                        None
                    }
                }
            } else {
                None
            };
            let link = if let Some(link) = adopted {
                info!(
                    "{iface}: replaced the program on the pinned XDP link (no gap in forwarding)"
                );
                link
            } else {
                let link = self.attach(prog, iface)?;
                info!(
                    "{iface}: attached ({:?} mode) and pinned the link at {}",
                    self.mode,
                    pin.display()
                );
                link
            };
            self.held.insert(iface.clone(), link);
        }
        for iface in self.pinned() {
            if !want.contains(&iface) {
                self.detach(&iface)?;
            }
        }
        Ok(())
    }

    fn attach(&self, prog: &mut Xdp, iface: &str) -> Result<FdLink> {
        let id = match self.mode {
            XdpModeArg::Native => prog.attach(iface, XdpMode::Driver),
            XdpModeArg::Generic => prog.attach(iface, XdpMode::Skb),
            XdpModeArg::Auto => prog.attach(iface, XdpMode::Driver).or_else(|e| {
                warn!("{iface}: native XDP unavailable ({e}); using generic mode");
                prog.attach(iface, XdpMode::Skb)
            }),
        }
        .with_context(|| format!("attaching XDP ({:?} mode) to {iface}", self.mode))?;
        let link: FdLink = prog.take_link(id)?.try_into().map_err(|e| {
            anyhow!("{iface}: XDP was attached without a bpf_link (kernel older than 5.9?): {e}")
        })?;
        let pin = self.dir.join(iface);
        let pinned = link
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link of {iface} at {}", pin.display()))?;
        Ok(pinned.into())
    }

    /// Unpins the link of `iface`, which detaches the program from it.
    pub fn detach(&mut self, iface: &str) -> Result<()> {
        self.held.remove(iface);
        let pin = self.dir.join(iface);
        if pin.exists() {
            std::fs::remove_file(&pin).with_context(|| format!("unpinning {}", pin.display()))?;
            info!("{iface}: detached (link unpinned)");
        }
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

fn adopt(prog: &mut Xdp, pin: &Path) -> Result<FdLink> {
    let link: FdLink = PinnedLink::from_pin(pin)?.into();
    let id = prog.attach_to_link(link.try_into()?)?;
    Ok(prog.take_link(id)?.try_into()?)
}

/// Unpins every link under `pin_dir` (detaching the program from every port).
pub fn remove_all(pin_dir: &Path) -> Result<()> {
    let dir = links_dir(pin_dir);
    if !dir.exists() {
        return Ok(());
    }
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        std::fs::remove_file(&p).with_context(|| format!("unpinning {}", p.display()))?;
    }
    std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))
}
