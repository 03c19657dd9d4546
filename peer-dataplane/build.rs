//! Embeds the XDP object so that the agent ships as one binary.
//!
//! - `PDP_EBPF_OBJECT=PATH` (set by `cargo xtask build`, `test`, `demo`): embed that object.
//! - otherwise a plain `cargo build` builds the object itself, with the recipe `cargo xtask`
//!   uses, and embeds it; if that fails, the build fails and says what to run.
//! - `PDP_SKIP_EBPF_BUILD=1`: embed nothing; `peer-dataplane run` then needs
//!   `--bpf-object PATH` and says so when started without it.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PDP_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=PDP_SKIP_EBPF_BUILD");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded.rs");
    let object = match env::var("PDP_EBPF_OBJECT") {
        Ok(path) if !path.is_empty() => Some(PathBuf::from(path)),
        _ if env::var("PDP_SKIP_EBPF_BUILD").is_ok_and(|v| v == "1") => {
            println!(
                "cargo:warning=PDP_SKIP_EBPF_BUILD=1: peer-dataplane is built without the XDP \
                 object; `peer-dataplane run` will need --bpf-object PATH"
            );
            None
        }
        _ => Some(build_object()),
    };
    let code = match object {
        Some(path) => {
            println!("cargo:rerun-if-changed={}", path.display());
            let path = fs::canonicalize(&path)
                .unwrap_or_else(|e| panic!("XDP object {}: {e}", path.display()));
            format!(
                "pub static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!({:?}));\n",
                path.display().to_string()
            )
        }
        None => "pub static OBJECT: Option<&[u8]> = None;\n".to_string(),
    };
    fs::write(out, code).unwrap();
}

/// Builds the object into `target/ebpf` (its own target dir, so the outer build's lock is
/// not in the way) and returns its path.
fn build_object() -> PathBuf {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    for dir in ["peer-dataplane-ebpf", "peer-dataplane-common"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let how = "Run `cargo xtask build` once (it installs the eBPF toolchain pieces and \
               bpf-linker, then builds the agent with the object embedded), or set \
               PDP_SKIP_EBPF_BUILD=1 to build an agent that needs --bpf-object PATH";
    let status = peer_dataplane_build::ebpf_build_command(&root)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("could not start the XDP object's build (/usr/bin/cargo): {e}. {how}")
        });
    let object = peer_dataplane_build::object_path(&root);
    if !status.success() || !object.exists() {
        panic!("building the XDP object failed ({status}; its errors are above). {how}");
    }
    object
}
