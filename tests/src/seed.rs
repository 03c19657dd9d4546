//! The seed topology (examples/seed.toml) in network namespaces: a "hypervisor" namespace
//! holding the three ports, and one namespace per instance behind each port. Used by the
//! demo and the end-to-end tests; the BPF_PROG_RUN tests only need the port interfaces.

use crate::netns::{veth, Netns};
use anyhow::{bail, Context, Result};
use peer_dataplane::desired::document::Document;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SEED_TOML: &str = include_str!("../../examples/seed.toml");
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x70, 0x64, 0x70, 0x00, 0x01];

pub fn seed_doc() -> Document {
    Document::from_toml(SEED_TOML).expect("examples/seed.toml parses")
}

#[derive(Clone, Copy, Debug)]
pub struct Instance {
    pub name: &'static str,
    pub vpc: &'static str,
    /// Host-side port interface.
    pub port: &'static str,
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    pub gw4: [u8; 4],
    pub gw6: [u8; 16],
}

const fn v6(prefix: [u16; 4], host: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        a[2 * i] = (prefix[i] >> 8) as u8;
        a[2 * i + 1] = prefix[i] as u8;
        i += 1;
    }
    a[14] = (host >> 8) as u8;
    a[15] = host as u8;
    a
}

pub const A: Instance = Instance {
    name: "a",
    vpc: "vpc-a",
    port: "pdp-a",
    mac: [0x02, 0x00, 0x0a, 0x00, 0x02, 0x0a],
    ipv4: [10, 0, 2, 10],
    ipv6: v6([0xfd00, 0xa, 0, 2], 0x10),
    gw4: [10, 0, 2, 1],
    gw6: v6([0xfd00, 0xa, 0, 2], 1),
};
pub const B: Instance = Instance {
    name: "b",
    vpc: "vpc-b",
    port: "pdp-b",
    mac: [0x02, 0x00, 0xac, 0x10, 0x02, 0x14],
    ipv4: [172, 16, 2, 20],
    ipv6: v6([0xfd00, 0xb, 0, 2], 0x20),
    gw4: [172, 16, 2, 1],
    gw6: v6([0xfd00, 0xb, 0, 2], 1),
};
pub const C: Instance = Instance {
    name: "c",
    vpc: "vpc-c",
    port: "pdp-c",
    mac: [0x02, 0x00, 0xc0, 0xa8, 0x02, 0x1e],
    ipv4: [192, 168, 2, 30],
    ipv6: v6([0xfd00, 0xc, 0, 2], 0x30),
    gw4: [192, 168, 2, 1],
    gw6: v6([0xfd00, 0xc, 0, 2], 1),
};
pub const INSTANCES: [Instance; 3] = [A, B, C];

pub fn mac_str(m: &[u8; 6]) -> String {
    peer_dataplane::desired::validate::format_mac(m)
}

pub fn v4_str(a: &[u8; 4]) -> String {
    std::net::Ipv4Addr::from(*a).to_string()
}

pub fn v6_str(a: &[u8; 16]) -> String {
    std::net::Ipv6Addr::from(*a).to_string()
}

/// One namespace holding the seed's port interfaces (each a veth whose peer stays in the
/// same namespace): enough for BPF_PROG_RUN, which needs real ifindexes.
pub fn ports_only(ns_name: &str) -> Result<Netns> {
    ports_only_queues(ns_name, 1)
}

/// [`ports_only`] with `queues` queues on every veth (multi-threaded generators).
pub fn ports_only_queues(ns_name: &str, queues: u32) -> Result<Netns> {
    let ns = Netns::create(ns_name)?;
    for i in INSTANCES {
        crate::netns::veth_queues(
            &ns,
            i.port,
            None,
            &ns,
            &format!("{}-peer", i.port),
            Some(&mac_str(&i.mac)),
            queues,
        )?;
    }
    Ok(ns)
}

/// The full seed network: a hypervisor namespace with the ports, an instance namespace
/// behind each, addressed and routed via the virtual gateway.
pub struct SeedNetwork {
    pub host: Netns,
    pub instances: Vec<(Instance, Netns)>,
}

impl SeedNetwork {
    pub fn create(prefix: &str) -> Result<SeedNetwork> {
        let host = Netns::create(&format!("{prefix}-host"))?;
        let mut instances = Vec::new();
        for i in INSTANCES {
            let ns = instance(&host, i, &format!("{prefix}-{}", i.name))?;
            instances.push((i, ns));
        }
        Ok(SeedNetwork { host, instances })
    }

    pub fn ns(&self, i: Instance) -> &Netns {
        &self
            .instances
            .iter()
            .find(|(x, _)| x.name == i.name)
            .unwrap()
            .1
    }
}

/// Instance `i` in a namespace `ns_name` of its own behind its port in `host`: addressed,
/// routed via the virtual gateway, whose MAC is a static neighbour.
pub fn instance(host: &Netns, i: Instance, ns_name: &str) -> Result<Netns> {
    let ns = Netns::create(ns_name)?;
    veth(host, i.port, None, &ns, "eth0", Some(&mac_str(&i.mac)))?;
    let router = mac_str(&ROUTER_MAC);
    ns.ip(&[
        "addr",
        "add",
        &format!("{}/24", v4_str(&i.ipv4)),
        "dev",
        "eth0",
    ])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", v6_str(&i.ipv6)),
        "dev",
        "eth0",
        "nodad",
    ])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &v4_str(&i.gw4),
        "dev",
        "eth0",
    ])?;
    ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &v6_str(&i.gw6),
        "dev",
        "eth0",
    ])?;
    ns.ip(&[
        "neigh",
        "replace",
        &v4_str(&i.gw4),
        "lladdr",
        &router,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    ns.ip(&[
        "-6",
        "neigh",
        "replace",
        &v6_str(&i.gw6),
        "lladdr",
        &router,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])?;
    // Native XDP redirect into a veth needs GRO (or an XDP program) on the receiving
    // peer; and the sender's checksum offload would leave UDP checksums unfilled.
    ns.exec("ethtool", &["-K", "eth0", "gro", "on", "tx", "off"])?;
    Ok(ns)
}

/// The real agent binary, running in the hypervisor namespace with its own pin directory.
pub struct Agent {
    child: Child,
    pub bin: PathBuf,
    pub pin_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// The namespace it runs in (the ports' namespace).
    host_ns: PathBuf,
    /// Set after a hard kill: the pins belong to whoever takes over.
    keep_pins: bool,
}

impl Agent {
    /// Starts `bin run --config` in `host` on fresh pins and waits until it reports ready.
    pub fn start(
        bin: &Path,
        host: &Netns,
        config: &Path,
        pin_dir: &Path,
        xdp_mode: &str,
    ) -> Result<Agent> {
        let _ = peer_dataplane::bpf::pins::remove_pins(pin_dir);
        let config_arg = config.display().to_string();
        Self::start_with(
            bin,
            host,
            config,
            pin_dir,
            &["--xdp-mode", xdp_mode, "--config", &config_arg],
            "agent",
        )
    }

    /// Starts `bin run ARGS` in `host` on whatever `pin_dir` holds; logs to
    /// `<config stem>.<log_tag>.log`.
    pub fn start_with(
        bin: &Path,
        host: &Netns,
        config: &Path,
        pin_dir: &Path,
        args: &[&str],
        log_tag: &str,
    ) -> Result<Agent> {
        let log = config.with_extension(format!("{log_tag}.log"));
        let logf = std::fs::File::create(&log)?;
        // nsenter keeps the root /sys (and so /sys/fs/bpf) visible; `ip netns exec` would not.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", host.path().display()))
            .arg(bin)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("run")
            .args(args)
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .context("starting the agent")?;
        let mut agent = Agent {
            child,
            bin: bin.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
            config: config.to_path_buf(),
            log,
            host_ns: host.path(),
            keep_pins: false,
        };
        agent.wait_log("ready", Duration::from_secs(30))?;
        Ok(agent)
    }

    /// Waits until the agent's log has a line containing `needle` (counting from the
    /// start of the log), or fails with the log attached.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_log_count(needle, 1, timeout)
    }

    pub fn wait_log_count(&mut self, needle: &str, count: usize, timeout: Duration) -> Result<()> {
        self.wait_for_log(&format!("the agent logging {needle:?}"), timeout, |log| {
            log.lines().filter(|l| l.contains(needle)).count() >= count
        })
    }

    /// The last revision the agent's log says it installed.
    pub fn synced_revision(&self) -> Option<u64> {
        self.log_text()
            .lines()
            .filter_map(|l| l.split("synced revision ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .max()
    }

    /// Waits until the agent reports a control-plane revision at or past `revision`
    /// installed ("synced revision N").
    pub fn wait_synced(&mut self, revision: u64, timeout: Duration) -> Result<()> {
        self.wait_for_log(
            &format!("the agent syncing revision {revision}"),
            timeout,
            |log| {
                log.lines()
                    .filter_map(|l| l.split("synced revision ").nth(1))
                    .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
                    .any(|n| n >= revision)
            },
        )
    }

    /// Waits until `done` holds of the agent's log; fails (with the log) if the agent exits
    /// first or `timeout` passes.
    fn wait_for_log(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<()> {
        crate::wait_until(what, timeout, || {
            if done(&self.log_text()) {
                return Ok(true);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{what}: the agent exited ({status}) first");
            }
            Ok(false)
        })
        .map_err(|e| anyhow::anyhow!("{e:#}:\n{}", self.log_text()))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes a new state document and sends SIGHUP; waits for the outcome line.
    pub fn reload(&mut self, doc: &Document) -> Result<()> {
        // The agent also reloads on file change: replace the file atomically so that it
        // never reads half a document, then wait for the SIGHUP reload's own log line.
        let before = self.count_log("on SIGHUP");
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, doc.to_toml())?;
        std::fs::rename(&tmp, &self.config)?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        self.wait_log_count("on SIGHUP", before + 1, Duration::from_secs(10))
    }

    pub fn count_log(&self, needle: &str) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// `peer-dataplane stats -o json` against this agent's pins.
    pub fn stats_json(&self) -> Result<serde_json::Value> {
        let out = crate::netns::sh(
            Command::new(&self.bin)
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .args(["stats", "-o", "json"]),
        )?;
        serde_json::from_str(&out).context("parsing stats JSON")
    }

    /// `peer-dataplane ARGS` against this agent's pins, in its namespace (stdout).
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        crate::netns::sh(
            Command::new("nsenter")
                .arg(format!("--net={}", self.host_ns.display()))
                .arg(&self.bin)
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .args(args),
        )
    }

    /// Runs `traffic`, which must report that nothing got through, and checks that the
    /// data plane dropped `count` packets as `reason` meanwhile: a negative check passes
    /// for the reason it claims, not because of any error on the way.
    /// [`Agent::expect_dropped`] for `n` IPv4 echoes from `from` to `to`, each dropped as
    /// `reason`.
    pub fn expect_ping_dropped(
        &self,
        what: &str,
        from: &Netns,
        to: &Instance,
        reason: &str,
        n: u64,
    ) -> Result<()> {
        self.expect_dropped(what, reason, n..=n, || {
            crate::traffic::ping_instance(from, to, false, n as _)
        })
    }

    pub fn expect_dropped(
        &self,
        what: &str,
        reason: &str,
        count: std::ops::RangeInclusive<u64>,
        traffic: impl FnOnce() -> Result<bool>,
    ) -> Result<()> {
        let before = self.stats_json()?;
        let through = traffic()?;
        let after = self.stats_json()?;
        if through {
            bail!("{what}: got through, expected it dropped as {reason}");
        }
        let dropped =
            |s: &serde_json::Value, r: &str| s["global"]["dropped"][r].as_u64().unwrap_or(0);
        let delta = dropped(&after, reason) - dropped(&before, reason);
        if !count.contains(&delta) {
            let others: Vec<String> = after["global"]["dropped"]
                .as_object()
                .map(|m| {
                    m.keys()
                        .filter_map(|r| {
                            let d = dropped(&after, r) - dropped(&before, r);
                            (d > 0).then(|| format!("{r} +{d}"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            bail!(
                "{what}: {delta} packets dropped as {reason}, expected {}..={} (all drops meanwhile: {})",
                count.start(),
                count.end(),
                if others.is_empty() { "none".to_string() } else { others.join(", ") }
            );
        }
        Ok(())
    }

    pub fn stats_table(&self) -> Result<String> {
        crate::netns::sh(
            Command::new(&self.bin)
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .args(["stats"]),
        )
    }

    /// SIGKILL, as a crash or an OOM kill would: no cleanup runs. The pins stay.
    pub fn kill_hard(&mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        self.child.wait()?;
        self.keep_pins = true;
        Ok(())
    }

    pub fn stop(&mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
        if !self.keep_pins {
            let _ = peer_dataplane::bpf::pins::remove_pins(&self.pin_dir);
        }
    }
}
