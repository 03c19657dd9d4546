//! Where the socket generators (AF_XDP, AF_PACKET) send from: the far end of the port, so
//! that their frames *enter* the port and meet its XDP hook as received traffic. For a
//! veth port that is its peer (the instance's side), found through rtnetlink in this
//! namespace or in the named namespace (`/run/netns`) that holds it; for anything else
//! (a NIC port) the operator names the interface cabled to it.

use crate::bpf::interfaces::{self, Link};
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// An interface to send from, and the namespace it lives in.
#[derive(Debug, Clone)]
pub struct FarEnd {
    /// `None`: the calling thread's namespace.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub ifindex: u32,
    pub tx_queues: u32,
    pub rx_queues: u32,
}

impl FarEnd {
    /// `pdp-a-peer` or `eth0 (netns pdp-demo-a)`.
    pub fn describe(&self) -> String {
        match &self.netns {
            None => self.ifname.clone(),
            Some(p) => format!("{} (netns {})", self.ifname, netns_label(p)),
        }
    }

    /// Runs `f` in the far end's namespace (sockets it creates live there): on a thread
    /// of its own there, or right here when the far end is in this namespace.
    pub fn in_namespace<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match &self.netns {
            None => f(),
            Some(p) => in_netns(p, f),
        }
    }
}

/// Where named namespaces live (`ip netns add`).
const NETNS_DIR: &str = "/run/netns";

fn netns_label(p: &Path) -> String {
    match p.strip_prefix(NETNS_DIR) {
        Ok(name) => name.display().to_string(),
        Err(_) => p.display().to_string(),
    }
}

/// A namespace argument: a name under /run/netns, or a path (`/proc/PID/ns/net`).
pub fn netns_path(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new(NETNS_DIR).join(arg)
    }
}

/// The interface to send from into `port` (its index here, and name for messages):
/// `from` in `from_netns` (or here) when given; otherwise the port's veth peer.
pub fn resolve(
    port: &str,
    port_ifindex: u32,
    from: Option<&str>,
    from_netns: Option<&str>,
) -> Result<FarEnd> {
    let netns = from_netns.map(netns_path);
    if let Some(p) = &netns {
        std::fs::metadata(p)
            .with_context(|| format!("--from-netns: no namespace at {}", p.display()))?;
    }
    let listed = |ns: &Option<PathBuf>| -> Result<Vec<Link>> {
        match ns {
            None => interfaces::list(),
            Some(p) => in_netns(p, interfaces::list),
        }
    };
    if let Some(name) = from {
        let l = listed(&netns)?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| {
                anyhow!(
                    "--from: no interface {name} in {}",
                    netns
                        .as_deref()
                        .map_or("this namespace".to_string(), |p| format!(
                            "netns {}",
                            netns_label(p)
                        ))
                )
            })?;
        return Ok(far_end(netns, l));
    }
    if let Some(p) = netns {
        // The port's peer in the given namespace.
        let l = in_netns(&p, interfaces::list)?
            .into_iter()
            .find(|l| l.peer_index == Some(port_ifindex) && l.peer_netnsid.is_some())
            .ok_or_else(|| {
                anyhow!(
                    "netns {} holds no veth peer of port {port}; name the interface with --from",
                    netns_label(&p)
                )
            })?;
        return Ok(far_end(Some(p), l));
    }
    let here = interfaces::list()?;
    let me = here
        .iter()
        .find(|l| l.index == port_ifindex)
        .ok_or_else(|| anyhow!("port {port} (ifindex {port_ifindex}) is not in this namespace"))?;
    let peer = match (me.kind.as_deref(), me.peer_index) {
        (Some("veth"), Some(peer)) => peer,
        (kind, _) => bail!(
            "port {port} is not a veth ({}): frames must be sent into it from the interface \
             cabled to it; name that interface with --from IFACE (and --from-netns NS if it \
             is in another namespace)",
            kind.unwrap_or("a device without a kind, such as a NIC")
        ),
    };
    let Some(id) = me.peer_netnsid else {
        let l = here
            .into_iter()
            .find(|l| l.index == peer)
            .ok_or_else(|| anyhow!("the veth peer of port {port} (ifindex {peer}) is missing"))?;
        return Ok(far_end(None, l));
    };
    // The peer lives in another namespace: the named one this namespace numbers `id`.
    let entries = std::fs::read_dir(NETNS_DIR).map(|d| d.flatten().collect::<Vec<_>>());
    for e in entries.unwrap_or_default() {
        let path = e.path();
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        if interfaces::netnsid_of(&f)? == Some(id) {
            let l = in_netns(&path, interfaces::list)?
                .into_iter()
                .find(|l| l.index == peer)
                .ok_or_else(|| {
                    anyhow!(
                        "netns {} has no interface {peer}, the peer of port {port}",
                        netns_label(&path)
                    )
                })?;
            return Ok(far_end(Some(path), l));
        }
    }
    bail!(
        "the veth peer of port {port} is in a namespace that is not under {NETNS_DIR} (id \
         {id} here); name it with --from-netns PATH (e.g. /proc/PID/ns/net) and --from IFACE"
    )
}

fn far_end(netns: Option<PathBuf>, l: Link) -> FarEnd {
    FarEnd {
        netns,
        ifname: l.name,
        ifindex: l.index,
        tx_queues: l.tx_queues,
        rx_queues: l.rx_queues,
    }
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering netns {}", path.display()));
    }
    Ok(())
}

/// Runs `f` on a thread of its own inside the namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let inside = path.to_path_buf();
    std::thread::spawn(move || {
        enter(&inside)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("a thread in netns {} panicked", netns_label(path)))?
}
