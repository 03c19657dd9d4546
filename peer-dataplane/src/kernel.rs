//! The real data plane: loads the XDP object with its maps pinned under bpffs, opens the
//! pinned maps by path (the agent, the CLI and the tests all go through here), writes
//! plans into them and reads counters out of them.

use crate::maps::{DataplaneMaps, MapState, Op, RouteKey};
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
};
use aya::{Ebpf, EbpfLoader};
use peer_dataplane_common::{
    counters::{GlobalCounters, PeeringCounters},
    map_names, peering_counter_index, Endpoint, EndpointKey, Name, NameKey, Peering, Port,
    RouteData, RouteValue, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER,
};
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

/// Loads the object, creating (or reusing, if already pinned) every map under `pin_dir`.
pub fn load(object: &[u8], pin_dir: &Path) -> Result<Ebpf> {
    check_bpffs(pin_dir)?;
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

fn open_map(pin_dir: &Path, name: &str) -> Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| {
        anyhow!(
            "cannot open pinned map {} ({e}); has `peer-dataplane run` ever run on this host?",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

/// Typed handles to every pinned map.
pub struct KernelMaps {
    pub pin_dir: PathBuf,
    ports: HashMap<MapData, u32, Port>,
    routes: LpmTrie<MapData, RouteData, RouteValue>,
    peerings: HashMap<MapData, u32, Peering>,
    endpoints: HashMap<MapData, EndpointKey, Endpoint>,
    devmap: DevMapHash<MapData>,
    global: PerCpuArray<MapData, GlobalCounters>,
    peering_ctr: PerCpuArray<MapData, PeeringCounters>,
    names: HashMap<MapData, NameKey, Name>,
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open_map($dir, $name)?
            .try_into()
            .with_context(|| format!("pinned map {} has an unexpected type or layout", $name))?
    };
}

impl KernelMaps {
    pub fn open(pin_dir: &Path) -> Result<KernelMaps> {
        check_bpffs(pin_dir)?;
        Ok(KernelMaps {
            pin_dir: pin_dir.to_path_buf(),
            ports: typed!(pin_dir, map_names::PORTS),
            routes: typed!(pin_dir, map_names::ROUTES),
            peerings: typed!(pin_dir, map_names::PEERINGS),
            endpoints: typed!(pin_dir, map_names::ENDPOINTS),
            devmap: typed!(pin_dir, map_names::DEVMAP),
            global: typed!(pin_dir, map_names::GLOBAL_COUNTERS),
            peering_ctr: typed!(pin_dir, map_names::PEERING_COUNTERS),
            names: typed!(pin_dir, map_names::NAMES),
        })
    }

    /// Everything installed now (counters aside).
    pub fn read_state(&self) -> Result<MapState> {
        let mut s = MapState::default();
        for kv in self.ports.iter() {
            let (k, v) = kv.context("reading pdp_ports")?;
            s.ports.insert(k, v);
        }
        for kv in self.routes.iter() {
            let (k, v) = kv.context("reading pdp_routes")?;
            s.routes.insert(
                RouteKey {
                    prefix_len: k.prefix_len(),
                    data: k.data(),
                },
                v,
            );
        }
        for kv in self.peerings.iter() {
            let (k, v) = kv.context("reading pdp_peerings")?;
            s.peerings.insert(k, v);
        }
        for kv in self.endpoints.iter() {
            let (k, v) = kv.context("reading pdp_endpoints")?;
            s.endpoints.insert(k, v);
        }
        for kv in self.devmap.iter() {
            let (k, v) = kv.context("reading pdp_devmap")?;
            s.devmap.insert(k, v.if_index);
        }
        for kv in self.names.iter() {
            let (k, v) = kv.context("reading pdp_names")?;
            s.names.insert(k, v);
        }
        Ok(s)
    }

    pub fn global_counters(&self) -> Result<GlobalCounters> {
        let per_cpu = self.global.get(&0, 0).context("reading pdp_global_ctr")?;
        let mut sum = GlobalCounters::ZERO;
        per_cpu.iter().for_each(|c| sum.accumulate(c));
        Ok(sum)
    }

    /// Counters of peering `slot`: (requester -> accepter, accepter -> requester).
    pub fn peering_counters(&self, slot: u32) -> Result<(PeeringCounters, PeeringCounters)> {
        let read = |dir| -> Result<PeeringCounters> {
            let per_cpu = self
                .peering_ctr
                .get(&peering_counter_index(slot, dir), 0)
                .with_context(|| format!("reading pdp_pcx_ctr for slot {slot}"))?;
            let mut sum = PeeringCounters::ZERO;
            per_cpu.iter().for_each(|c| sum.accumulate(c));
            Ok(sum)
        };
        Ok((
            read(DIR_REQUESTER_TO_ACCEPTER)?,
            read(DIR_ACCEPTER_TO_REQUESTER)?,
        ))
    }

    fn reset_peering_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        for dir in [DIR_REQUESTER_TO_ACCEPTER, DIR_ACCEPTER_TO_REQUESTER] {
            let zero = PerCpuValues::try_from(vec![PeeringCounters::ZERO; cpus])?;
            self.peering_ctr
                .set(peering_counter_index(slot, dir), zero, 0)?;
        }
        Ok(())
    }
}

impl DataplaneMaps for KernelMaps {
    fn write(&mut self, op: &Op) -> Result<()> {
        let r: Result<()> = match op {
            Op::PutName(k, v) => self.names.insert(k, v, 0).map_err(Into::into),
            Op::PutDevmap(k, v) => self.devmap.insert(*k, *v, None, 0).map_err(Into::into),
            Op::ResetPeeringCounters(slot) => self.reset_peering_counters(*slot),
            Op::PutPeering(k, v) => self.peerings.insert(k, v, 0).map_err(Into::into),
            Op::PutEndpoint(k, v) => self.endpoints.insert(k, v, 0).map_err(Into::into),
            Op::PutRoute(k, v) => self
                .routes
                .insert(&Key::new(k.prefix_len, k.data), v, 0)
                .map_err(Into::into),
            Op::PutPort(k, v) => self.ports.insert(k, v, 0).map_err(Into::into),
            Op::DelPort(k) => self.ports.remove(k).map_err(Into::into),
            Op::DelRoute(k) => self
                .routes
                .remove(&Key::new(k.prefix_len, k.data))
                .map_err(Into::into),
            Op::DelEndpoint(k) => self.endpoints.remove(k).map_err(Into::into),
            Op::DelPeering(k) => self.peerings.remove(k).map_err(Into::into),
            Op::DelDevmap(k) => self.devmap.remove(*k).map_err(Into::into),
            Op::DelName(k) => self.names.remove(k).map_err(Into::into),
        };
        r.with_context(|| format!("writing {op:?}"))
    }
}

/// Removes the pinned maps (and the directory) of a data plane that is not running.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    for name in map_names::ALL {
        let p = pin_dir.join(name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))
}
