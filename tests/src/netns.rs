//! Network namespaces and veth pairs for tests, created with iproute2 and removed on drop
//! (also when a test fails), plus running code inside a namespace on a thread of its own.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(args: &[&str]) -> Result<String> {
    sh(Command::new("ip").args(args))
}

/// A named network namespace, deleted (with every interface in it) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `name`, removing a stale one of the same name left by a crashed run (and any
    /// namespace of a test process no longer alive). Interfaces created in it later come up
    /// without IPv6 autoconfiguration (no link-local address, no router solicitations, no
    /// DAD): a test's counts see only the frames it sends. A test that needs IPv6 adds its
    /// addresses itself.
    pub fn create(name: &str) -> Result<Netns> {
        crate::reap_stale();
        let _ = ip(&["netns", "del", name]);
        ip(&["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        for (key, value) in [
            ("net.ipv6.conf.default.addr_gen_mode", "1"),
            ("net.ipv6.conf.default.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.dad_transmits", "0"),
            ("net.ipv6.conf.default.router_solicitations", "0"),
        ] {
            ns.exec("sysctl", &["-qw", &format!("{key}={value}")])
                .with_context(|| format!("setting {key} in netns {name}"))?;
        }
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        sh(self.command(program).args(args))
    }

    /// Runs `f` on a new thread that has joined this namespace (sockets it creates live
    /// there; the caller's thread is untouched).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// The ifindex of interface `name` in the calling thread's namespace (0 if there is none,
/// which BPF_PROG_RUN then refuses).
pub fn ifindex(name: &str) -> u32 {
    use peer_dataplane::desired::IfindexResolver;
    peer_dataplane::bpf::KernelIfindex::default()
        .ifindex(name)
        .unwrap_or(0)
}

/// Moves the calling thread into the namespace at `path`.
pub fn enter(path: &std::path::Path) -> Result<()> {
    peer_dataplane::loadgen::far_end::enter(path)
}

/// A veth pair `a` (in `ns_a`) <-> `b` (in `ns_b`), both up, with the given MACs.
pub fn veth(
    ns_a: &Netns,
    a: &str,
    mac_a: Option<&str>,
    ns_b: &Netns,
    b: &str,
    mac_b: Option<&str>,
) -> Result<()> {
    veth_queues(ns_a, a, mac_a, ns_b, b, mac_b, 1)
}

/// [`veth`] with `queues` TX and RX queues on both ends (one generator thread each).
pub fn veth_queues(
    ns_a: &Netns,
    a: &str,
    mac_a: Option<&str>,
    ns_b: &Netns,
    b: &str,
    mac_b: Option<&str>,
    queues: u32,
) -> Result<()> {
    let q = queues.to_string();
    ns_a.ip(&[
        "link",
        "add",
        a,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "netns",
        &ns_b.name,
    ])?;
    if let Some(m) = mac_a {
        ns_a.ip(&["link", "set", a, "address", m])?;
    }
    if let Some(m) = mac_b {
        ns_b.ip(&["link", "set", b, "address", m])?;
    }
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}
