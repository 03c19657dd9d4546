//! Shared pieces of the privileged tests, the demo and the benchmarks: network namespaces,
//! a loader for the real XDP object with private pins, packet builders and the seed
//! topology.

pub mod controlplane;
pub mod harness;
pub mod netns;
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
