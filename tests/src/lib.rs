//! Shared pieces of the privileged tests, the demo and the benchmarks: network namespaces,
//! a loader for the real XDP object with private pins, packet builders and the seed
//! topology.

pub mod changes;
pub mod controlplane;
pub mod etcd;
pub mod fleet;
pub mod harness;
pub mod netns;
pub mod oracle;
pub mod packets;
pub mod random;
pub mod seed;
pub mod traffic;

use anyhow::{bail, Result};

/// Privileged tests do not skip: without root they fail and say why.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this test needs root (BPF, network namespaces); run it through `cargo xtask test`");
    }
    Ok(())
}

/// The XDP object the tests load (set by `cargo xtask test`).
pub fn object_path() -> Result<std::path::PathBuf> {
    match std::env::var_os("PDP_EBPF_OBJECT") {
        Some(p) => Ok(p.into()),
        None => {
            bail!("PDP_EBPF_OBJECT is not set: run the privileged tests through `cargo xtask test`")
        }
    }
}

/// The agent binary the end-to-end tests run (set by `cargo xtask test`).
pub fn agent_path() -> Result<std::path::PathBuf> {
    match std::env::var_os("PDP_AGENT_BIN") {
        Some(p) => Ok(p.into()),
        None => {
            bail!("PDP_AGENT_BIN is not set: run the end-to-end tests through `cargo xtask test`")
        }
    }
}

/// Runs the CLI (`PDP_AGENT_BIN`) against the pins under `pin_dir`.
pub fn cli(pin_dir: &std::path::Path, args: &[&str]) -> Result<std::process::Output> {
    use anyhow::Context;
    std::process::Command::new(agent_path()?)
        .arg("--pin-dir")
        .arg(pin_dir)
        .args(args)
        .output()
        .context("running peer-dataplane")
}

/// Polls `ready` until it says true, or fails after `timeout` naming `what` never happened
/// (tests wait on conditions, never on fixed sleeps).
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        if ready()? {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("{what}: did not happen within {timeout:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}

/// A name unique to this test process, `pdp-<pid>-<tag>`: two suites on one kernel never
/// share a pin directory, a netns or a temporary directory. What a killed run left behind
/// is removed by [`reap_stale`].
pub fn unique(tag: &str) -> String {
    format!("pdp-{}-{tag}", std::process::id())
}

/// The process a [`unique`] name belongs to.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("pdp-")?.split('-').next()?.parse().ok()
}

/// Removes the netns and pin directories that test processes no longer alive left behind
/// (a run killed before its destructors ran). Names of live processes are never touched.
pub fn reap_stale() {
    let dead = |name: &str| match owner_pid(name) {
        Some(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        None => false,
    };
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in names("/var/run/netns") {
        if dead(&ns) {
            let _ = netns::ip(&["netns", "del", &ns]);
        }
    }
    for pin in names("/sys/fs/bpf") {
        if dead(&pin) {
            let _ = peer_dataplane::bpf::pins::remove_pins(
                &std::path::Path::new("/sys/fs/bpf").join(pin),
            );
        }
    }
}
