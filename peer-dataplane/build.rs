//! Embeds the XDP object when `PDP_EBPF_OBJECT` names one (cargo xtask build / test / demo
//! set it), so that the agent ships as one binary. Without it the agent needs
//! `--bpf-object`, and a plain `cargo test` needs no eBPF toolchain.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PDP_EBPF_OBJECT");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("embedded.rs");
    let code = match env::var("PDP_EBPF_OBJECT") {
        Ok(path) if !path.is_empty() => {
            println!("cargo:rerun-if-changed={path}");
            let path =
                fs::canonicalize(&path).unwrap_or_else(|e| panic!("PDP_EBPF_OBJECT={path}: {e}"));
            format!(
                "pub static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!({:?}));\n",
                path.display().to_string()
            )
        }
        _ => {
            // Say so at build time too, not only when `run` starts.
            println!(
                "cargo:warning=peer-dataplane is built without the XDP object: `peer-dataplane run` \
                 will need --bpf-object PATH. `cargo xtask build` builds the object and embeds it."
            );
            "pub static OBJECT: Option<&[u8]> = None;\n".to_string()
        }
    };
    fs::write(out, code).unwrap();
}
