//! The one recipe for building the XDP object (`peer-dataplane-ebpf` for
//! `bpfel-unknown-none`): Debian's rustc-web with its prebuilt `core` for the BPF target,
//! linked by bpf-linker. `cargo xtask` calls it before building the agent; the agent's
//! build.rs calls it when a plain `cargo build` needs the object.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the object lands, under the workspace root.
pub fn object_path(root: &Path) -> PathBuf {
    root.join("target/ebpf/bpfel-unknown-none/release/peer-dataplane-ebpf")
}

/// `$CARGO_HOME`, where `cargo install` puts bpf-linker.
pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        })
}

/// A cargo child that inherits nothing from an outer cargo (toolchain, flags, target dir,
/// jobserver), run from `root`.
pub fn clean_cargo(cargo: &str, root: &Path) -> Command {
    let mut c = Command::new(cargo);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let inherited = (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTUP")
            || k == "RUSTFLAGS"
            || k == "RUSTDOC";
        if inherited {
            c.env_remove(&k);
        }
    }
    c.current_dir(root);
    c
}

/// The cargo command that builds the object under `root` (its own target dir).
pub fn ebpf_build_command(root: &Path) -> Command {
    let mut c = clean_cargo("/usr/bin/cargo", root);
    c.env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            // BPF ISA v3 (kernel 5.12+): atomic fetch-add and compare-and-swap, which the
            // shared bandwidth-cap buckets need.
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Ctarget-cpu=v3\x1f-Clink-arg=--btf",
        )
        .env(
            "PATH",
            format!(
                "{}:{}",
                cargo_home().join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args([
            "build",
            "-p",
            "peer-dataplane-ebpf",
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--target-dir",
            "target/ebpf",
        ]);
    c
}
