//! Pins under bpffs: the bpffs check, the layout check of maps pinned by another build,
//! loading the object with its maps pinned, the programs the CLI runs, and removal.

use super::links;
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::MapData;
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use peer_dataplane_common::program_names;
use peer_dataplane_common::registry::{self, MapSpec};
use std::path::{Path, PathBuf};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Fails with a message an operator can act on unless `dir`'s parent is on bpffs.
pub fn check_bpffs(pin_dir: &Path) -> Result<()> {
    let base = pin_dir.parent().unwrap_or(pin_dir);
    let c = std::ffi::CString::new(base.as_os_str().as_encoded_bytes())?;
    // SAFETY: zeroed statfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not a bpffs mount; mount it with `mount -t bpf bpf {}` (cargo xtask setup does this)",
            base.display(),
            base.display()
        );
    }
    Ok(())
}

/// Fails, naming the map, if a pin under `pin_dir` has a shape this build does not expect.
/// aya reuses a pinned map by name without comparing its shape, so a pin left by a build
/// with another layout must be caught here, before the program reads it wrongly.
pub fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    for spec in registry::ALL {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path)
            .with_context(|| format!("inspecting pinned map {}", path.display()))?;
        check_layout(spec, &map, &path)?;
    }
    Ok(())
}

/// Fails, naming the map, if pinned map `map` (at `path`) is not shaped as `spec`.
pub fn check_layout(spec: &MapSpec, map: &MapData, path: &Path) -> Result<()> {
    let info = map
        .info()
        .with_context(|| format!("inspecting pinned map {}", path.display()))?;
    let expected = (spec.key_size, spec.value_size, spec.max_entries);
    let found = (info.key_size(), info.value_size(), info.max_entries());
    let problem = if !spec.preallocated() && info.map_flags() & registry::BPF_F_NO_PREALLOC == 0 {
        "is preallocated, but this build reads it in place and needs it created with \
         BPF_F_NO_PREALLOC"
            .to_string()
    } else if found != expected {
        format!(
            "has key {} B, value {} B, {} entries, but this build expects key {} B, value {} B, \
             {} entries",
            found.0, found.1, found.2, expected.0, expected.1, expected.2
        )
    } else {
        return Ok(());
    };
    bail!(
        "pinned map {} {problem}: it was created by another version. Stop the old agent and \
         run `peer-dataplane cleanup` to start from empty maps (installed state and counters \
         are lost)",
        path.display()
    )
}

/// Loads the object, creating (or reusing, if already pinned) every map under `pin_dir`.
pub fn load(object: &[u8], pin_dir: &Path) -> Result<Ebpf> {
    check_bpffs(pin_dir)?;
    check_pinned_layouts(pin_dir)?;
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(object)
        .with_context(|| {
            format!(
                "loading the XDP object with maps pinned in {}",
                pin_dir.display()
            )
        })
}

/// Removes the pinned maps (and the directory) of a data plane that is not running.
/// Also detaches from every port: unpinning the links releases them.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    links::remove_all(pin_dir)?;
    unpin_programs(pin_dir)?;
    for name in registry::names::ALL {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))
}

/// XDP program `name` of the loaded object.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the object"))?
        .try_into()
        .with_context(|| format!("program {name} is not an XDP program"))
}

/// Where the agent pins program `name` (see `program_names::PINNED`).
pub fn program_pin(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(program_names::PIN_SUBDIR).join(name)
}

/// Pins the loaded programs the CLI runs (replacing pins of an earlier agent), so that
/// `trace` and `loadgen` run exactly the code that is attached, on its maps.
pub fn pin_programs(ebpf: &mut Ebpf, pin_dir: &Path) -> Result<()> {
    let dir = pin_dir.join(program_names::PIN_SUBDIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for name in program_names::PINNED {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("unpinning the earlier {}", path.display()))?;
        }
        xdp_program(ebpf, name)?
            .pin(&path)
            .with_context(|| format!("pinning program {name} at {}", path.display()))?;
    }
    Ok(())
}

/// Program `name` as the agent pinned it.
pub fn pinned_program(pin_dir: &Path, name: &str) -> Result<Xdp> {
    check_bpffs(pin_dir)?;
    let path = program_pin(pin_dir, name);
    Xdp::from_pin(&path, aya_obj::programs::XdpAttachType::Interface).map_err(|e| {
        anyhow!(
            "cannot open the pinned program {} ({e}); is `peer-dataplane run` (this version) running or has it run on this host?",
            path.display()
        )
    })
}

fn unpin_programs(pin_dir: &Path) -> Result<()> {
    let dir = pin_dir.join(program_names::PIN_SUBDIR);
    if !dir.exists() {
        return Ok(());
    }
    for name in program_names::PINNED {
        let p = dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    std::fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))
}
