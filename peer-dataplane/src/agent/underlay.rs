//! The host's side of the overlay outside the BPF maps (docs/datapath.md §7.5): the uplink's
//! MTU, its IPv4 forwarding switch, and neighbour entries toward the other hosts.
//!
//! - The encapsulation asks the kernel's FIB (`bpf_fib_lookup`) for the outer MACs, and the
//!   kernel answers that only for an interface with IPv4 forwarding on: the agent turns it
//!   on for the uplink (and only the uplink).
//! - A FIB answer without a resolved neighbour drops the frame (`underlay-unreachable`), so
//!   the agent adds a *managed* neighbour entry for the next hop toward every host it
//!   learns: the kernel then resolves it ahead of traffic and keeps it fresh.

use crate::desired::IfindexResolver;
use crate::desired::Topology;
use anyhow::{anyhow, bail, Context, Result};
use log::{info, warn};
use peer_dataplane_common::overlay::UNDERLAY_OVERHEAD;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

/// The smallest uplink MTU the overlay runs on: IPv6's minimum link MTU (which no
/// packet-too-big may go below) plus the encapsulation.
pub const MIN_UPLINK_MTU: u32 = 1280 + UNDERLAY_OVERHEAD as u32;
/// The instance MTU the overlay is sized for: an uplink below this plus the overhead makes
/// instances discover a smaller path MTU.
pub const INSTANCE_MTU: u32 = 1500;

/// What has been set up so far, so that a sync only touches what is new.
#[derive(Default)]
pub struct Underlay {
    uplink: Option<String>,
    neighbours: BTreeSet<Ipv4Addr>,
}

impl Underlay {
    /// Checks the uplink's MTU (at every install: it may have been lowered since),
    /// readies the uplink of `topo`'s host (once per uplink) and the neighbours of hosts
    /// not seen before. Without a fleet (no local host) there is nothing to do.
    pub fn prepare(&mut self, topo: &Topology, ifindex: &dyn IfindexResolver) -> Result<()> {
        let Some(local) = topo.local() else {
            return Ok(());
        };
        let uplink = local
            .uplink
            .as_deref()
            .ok_or_else(|| anyhow!("host {} has no uplink", local.id))?;
        check_mtu(uplink, ifindex.mtu(uplink))?;
        if self.uplink.as_deref() != Some(uplink) {
            enable_forwarding(uplink)?;
            self.uplink = Some(uplink.to_string());
            self.neighbours.clear();
        }
        for h in topo.hosts.values().filter(|h| h.id != local.id) {
            if self.neighbours.insert(h.underlay_ipv4) {
                if let Err(e) = keep_resolved(uplink, h.underlay_ipv4) {
                    // Not fatal: traffic to that host counts as underlay-unreachable
                    // until the kernel resolves the next hop on its own.
                    warn!("host {} ({}): {e:#}", h.id, h.underlay_ipv4);
                    self.neighbours.remove(&h.underlay_ipv4);
                }
            }
        }
        Ok(())
    }
}

/// Refuses an uplink too small for the overlay; warns about one that makes instances
/// use a smaller path MTU than their own.
pub fn check_mtu(uplink: &str, mtu: Option<u32>) -> Result<()> {
    let mtu = mtu
        .ok_or_else(|| anyhow!("uplink {uplink}: no such interface, or its MTU cannot be read"))?;
    let overhead = UNDERLAY_OVERHEAD as u32;
    if mtu < MIN_UPLINK_MTU {
        bail!(
            "uplink {uplink} has MTU {mtu}; the overlay needs at least {MIN_UPLINK_MTU} \
             (1280-byte IPv6 packets plus {overhead} bytes of encapsulation): \
             `ip link set {uplink} mtu {}`",
            INSTANCE_MTU + overhead
        );
    }
    if mtu < INSTANCE_MTU + overhead {
        warn!(
            "uplink {uplink} has MTU {mtu}: instance packets across hosts fit up to {} bytes; \
             larger ones are answered with ICMP fragmentation-needed / packet-too-big \
             (path MTU {}). For full {INSTANCE_MTU}-byte packets set the uplink MTU to {} or more.",
            mtu - overhead,
            mtu - overhead,
            INSTANCE_MTU + overhead
        );
    }
    Ok(())
}

/// The kernel's FIB answers `bpf_fib_lookup` for an interface only with forwarding on.
fn enable_forwarding(uplink: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{uplink}/forwarding");
    let now = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if now.trim() != "1" {
        std::fs::write(&path, "1").with_context(|| format!("writing 1 to {path}"))?;
        info!("uplink {uplink}: IPv4 forwarding on (the encapsulation's FIB lookups need it)");
    }
    Ok(())
}

/// Adds a managed neighbour entry for the next hop toward `host`: the host itself on a
/// shared segment, its gateway across a routed underlay. An entry that exists is kept.
fn keep_resolved(uplink: &str, host: Ipv4Addr) -> Result<()> {
    let out = Command::new("ip")
        .args(["-j", "route", "get", &host.to_string(), "oif", uplink])
        .output()
        .context("running `ip route get`")?;
    if !out.status.success() {
        bail!(
            "no underlay route via {uplink}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let routes: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j route get`")?;
    let next_hop = routes[0]["gateway"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| host.to_string());
    let out = Command::new("ip")
        .args(["neigh", "add", &next_hop, "dev", uplink, "managed"])
        .output()
        .context("running `ip neigh add`")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !err.contains("File exists") {
        bail!("managed neighbour {next_hop} on {uplink}: {}", err.trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_too_small_for_ipv6_is_refused_with_the_fix() {
        let e = check_mtu("up0", Some(1300)).unwrap_err().to_string();
        assert!(
            e.contains("MTU 1300") && e.contains("1342") && e.contains("mtu 1562"),
            "{e}"
        );
        assert!(
            check_mtu("up0", Some(1500)).is_ok(),
            "smaller path MTU: a warning"
        );
        assert!(check_mtu("up0", Some(9000)).is_ok());
        assert!(check_mtu("up0", None)
            .unwrap_err()
            .to_string()
            .contains("up0"));
    }
}
