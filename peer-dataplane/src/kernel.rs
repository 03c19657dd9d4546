//! The real data plane: loads the XDP object with its maps pinned under bpffs, opens the
//! pinned maps by path (the agent, the CLI and the tests all go through here), writes
//! plans into them and reads counters out of them.

use crate::maps::{AclPortKey, DataplaneMaps, MapState, Op, RouteKey};
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader};
use peer_dataplane_common::{
    acl::{AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey, ACL_HIT_SLOTS, MAX_ACL_SETS},
    clock::Clock,
    conntrack::{CtEntry, CtKey, MAX_CT_ENTRIES},
    counters::{GlobalCounters, PeeringCounters},
    map_names, peering_counter_index, program_names, Endpoint, EndpointKey, Name, NameKey, Peering,
    Port, RouteData, RouteValue, BPF_F_NO_PREALLOC, DIR_ACCEPTER_TO_REQUESTER,
    DIR_REQUESTER_TO_ACCEPTER, MAX_ACL_ENTRIES, MAX_ENDPOINTS, MAX_NAMES, MAX_PEERINGS, MAX_PORTS,
    MAX_ROUTES, NOT_PREALLOCATED,
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

/// (name, key size, value size, max entries) of every pinned map, as this build defines
/// them. aya reuses a pinned map by name without comparing its shape, so a pin left by a
/// build with another layout must be caught here, before the program reads it wrongly.
fn expected_layouts() -> [(&'static str, u32, u32, u32); 18] {
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    [
        (map_names::PORTS, 4, sz(size_of::<Port>()), MAX_PORTS),
        (
            map_names::ROUTES,
            4 + sz(size_of::<RouteData>()),
            sz(size_of::<RouteValue>()),
            MAX_ROUTES,
        ),
        (
            map_names::PEERINGS,
            4,
            sz(size_of::<Peering>()),
            MAX_PEERINGS,
        ),
        (
            map_names::ENDPOINTS,
            sz(size_of::<EndpointKey>()),
            sz(size_of::<Endpoint>()),
            MAX_ENDPOINTS,
        ),
        // struct bpf_devmap_val: target ifindex and a chained program fd/id.
        (map_names::DEVMAP, 4, 8, MAX_PORTS),
        (
            map_names::GLOBAL_COUNTERS,
            4,
            sz(size_of::<GlobalCounters>()),
            1,
        ),
        (
            map_names::PEERING_COUNTERS,
            4,
            sz(size_of::<PeeringCounters>()),
            MAX_PEERINGS * 2,
        ),
        (
            map_names::NAMES,
            sz(size_of::<NameKey>()),
            sz(size_of::<Name>()),
            MAX_NAMES,
        ),
        (
            map_names::ACL_ADDR,
            4 + sz(size_of::<RouteData>()),
            sz(size_of::<AclBits>()),
            MAX_ACL_ENTRIES,
        ),
        (
            map_names::ACL_PORT,
            4 + sz(size_of::<AclPortData>()),
            sz(size_of::<AclBits>()),
            MAX_ACL_ENTRIES,
        ),
        (
            map_names::ACL_PROTO,
            sz(size_of::<AclProtoKey>()),
            sz(size_of::<AclBits>()),
            MAX_ACL_SETS * 8,
        ),
        (
            map_names::ACL_META,
            4,
            sz(size_of::<AclMeta>()),
            MAX_ACL_SETS,
        ),
        (map_names::ACL_HITS, 4, 8, ACL_HIT_SLOTS),
        (
            map_names::ACL_EXACT,
            sz(size_of::<AclExactKey>()),
            sz(size_of::<AclBits>()),
            MAX_ACL_ENTRIES,
        ),
        (
            map_names::CONNTRACK,
            sz(size_of::<CtKey>()),
            sz(size_of::<CtEntry>()),
            MAX_CT_ENTRIES,
        ),
        (map_names::CAP_STATE, 4, 8, MAX_PEERINGS * 2),
        (map_names::CLOCK, 4, sz(size_of::<Clock>()), 1),
        (
            map_names::TRACE,
            4,
            sz(size_of::<peer_dataplane_common::trace::TraceRecord>()),
            1,
        ),
    ]
}

/// Fails, naming the map, if a pin under `pin_dir` has a shape this build does not expect.
pub fn check_pinned_layouts(pin_dir: &Path) -> Result<()> {
    for (name, key, value, max) in expected_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("inspecting pinned map {}", path.display()))?;
        if NOT_PREALLOCATED.contains(&name) && info.map_flags() & BPF_F_NO_PREALLOC == 0 {
            bail!(
                "pinned map {} is preallocated, but this build reads it in place and needs it \
                 created with BPF_F_NO_PREALLOC: it was created by another version. Stop the old agent and run \
                 `peer-dataplane cleanup` to start from empty maps (installed state and counters are lost)",
                path.display()
            );
        }
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found != (key, value, max) {
            bail!(
                "pinned map {} has key {} B, value {} B, {} entries, but this build expects key {key} B, \
                 value {value} B, {max} entries: it was created by another version. Stop the old agent and run \
                 `peer-dataplane cleanup` to start from empty maps (installed state and counters are lost)",
                path.display(),
                found.0,
                found.1,
                found.2
            );
        }
    }
    Ok(())
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
    acl_addr: LpmTrie<MapData, RouteData, AclBits>,
    acl_port: LpmTrie<MapData, AclPortData, AclBits>,
    acl_proto: HashMap<MapData, AclProtoKey, AclBits>,
    acl_meta: HashMap<MapData, u32, AclMeta>,
    acl_hits: PerCpuArray<MapData, u64>,
    acl_exact: HashMap<MapData, AclExactKey, AclBits>,
    conntrack: HashMap<MapData, CtKey, CtEntry>,
    cap_state: Array<MapData, u64>,
    clock: Array<MapData, Clock>,
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
            acl_addr: typed!(pin_dir, map_names::ACL_ADDR),
            acl_port: typed!(pin_dir, map_names::ACL_PORT),
            acl_proto: typed!(pin_dir, map_names::ACL_PROTO),
            acl_meta: typed!(pin_dir, map_names::ACL_META),
            acl_hits: typed!(pin_dir, map_names::ACL_HITS),
            acl_exact: typed!(pin_dir, map_names::ACL_EXACT),
            conntrack: typed!(pin_dir, map_names::CONNTRACK),
            cap_state: typed!(pin_dir, map_names::CAP_STATE),
            clock: typed!(pin_dir, map_names::CLOCK),
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
        for kv in self.acl_addr.iter() {
            let (k, v) = kv.context("reading pdp_acl_addr")?;
            s.acl_addr.insert(
                RouteKey {
                    prefix_len: k.prefix_len(),
                    data: k.data(),
                },
                v,
            );
        }
        for kv in self.acl_port.iter() {
            let (k, v) = kv.context("reading pdp_acl_port")?;
            s.acl_port.insert(
                AclPortKey {
                    prefix_len: k.prefix_len(),
                    data: k.data(),
                },
                v,
            );
        }
        for kv in self.acl_proto.iter() {
            let (k, v) = kv.context("reading pdp_acl_proto")?;
            s.acl_proto.insert(k, v);
        }
        for kv in self.acl_exact.iter() {
            let (k, v) = kv.context("reading pdp_acl_exact")?;
            s.acl_exact.insert(k, v);
        }
        for kv in self.acl_meta.iter() {
            let (k, v) = kv.context("reading pdp_acl_meta")?;
            s.acl_meta.insert(k, v);
        }
        Ok(s)
    }

    /// Longest-prefix match of `key` in the routes trie (what the program would find).
    pub fn lookup_route(&self, key: &RouteKey) -> Result<Option<RouteValue>> {
        match self.routes.get(&Key::new(key.prefix_len, key.data), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("looking up pdp_routes"),
        }
    }

    /// The global counters of each CPU, in CPU order.
    pub fn global_counters_per_cpu(&self) -> Result<Vec<GlobalCounters>> {
        let per_cpu = self.global.get(&0, 0).context("reading pdp_global_ctr")?;
        Ok(per_cpu.iter().copied().collect())
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

    fn reset_acl_hits(&mut self, base: u32, n: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        for slot in base..base + n {
            self.acl_hits
                .set(slot, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
        }
        Ok(())
    }

    /// Hits of ACL rule slot `slot`, summed over CPUs.
    pub fn acl_hits(&self, slot: u32) -> Result<u64> {
        Ok(self
            .acl_hits
            .get(&slot, 0)
            .context("reading pdp_acl_hits")?
            .iter()
            .sum())
    }

    /// Zeroes the counters and refills the cap buckets of a newly allocated peering slot.
    fn reset_peering_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        for dir in [DIR_REQUESTER_TO_ACCEPTER, DIR_ACCEPTER_TO_REQUESTER] {
            let zero = PerCpuValues::try_from(vec![PeeringCounters::ZERO; cpus])?;
            let index = peering_counter_index(slot, dir);
            self.peering_ctr.set(index, zero, 0)?;
            self.cap_state.set(index, 0, 0)?;
        }
        Ok(())
    }

    /// Every conntrack entry (a snapshot: the program keeps changing the table).
    pub fn conntrack_entries(&self) -> Result<Vec<(CtKey, CtEntry)>> {
        let mut out = Vec::new();
        for kv in self.conntrack.iter() {
            match kv {
                Ok(kv) => out.push(kv),
                // An entry evicted between reading its key and its value.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading pdp_conntrack"),
            }
        }
        Ok(out)
    }

    /// Removes the entries `filter` selects; returns how many went.
    pub fn conntrack_flush(&mut self, filter: impl Fn(&CtKey, &CtEntry) -> bool) -> Result<usize> {
        let mut n = 0;
        for (k, e) in self.conntrack_entries()? {
            if filter(&k, &e) {
                match self.conntrack.remove(&k) {
                    Ok(()) => n += 1,
                    Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(e).context("deleting from pdp_conntrack"),
                }
            }
        }
        Ok(n)
    }

    /// Writes one conntrack entry (tests use this to age a flow).
    pub fn conntrack_put(&mut self, k: &CtKey, e: &CtEntry) -> Result<()> {
        self.conntrack
            .insert(k, e, 0)
            .context("writing pdp_conntrack")
    }

    /// Sets the cap bucket of a peering and direction (tests: drain or refill it).
    pub fn set_cap_state(&mut self, slot: u32, dir: u32, tat: u64) -> Result<()> {
        self.cap_state
            .set(peering_counter_index(slot, dir), tat, 0)
            .context("writing pdp_cap_state")
    }

    /// The program's clock setting (`Clock::KERNEL` unless a test changed it).
    pub fn clock(&self) -> Result<Clock> {
        self.clock.get(&0, 0).context("reading pdp_clock")
    }

    /// Sets the program's clock (tests only: the agent never writes it).
    pub fn set_clock(&mut self, c: Clock) -> Result<()> {
        self.clock.set(0, c, 0).context("writing pdp_clock")
    }

    /// Now on the program's clock: what conntrack and caps compare their stamps with.
    pub fn now_ns(&self) -> Result<u64> {
        Ok(self.clock()?.now(monotonic_ns()))
    }

    /// The cap bucket (`tat`, ns) of a peering and direction.
    pub fn cap_state(&self, slot: u32, dir: u32) -> Result<u64> {
        self.cap_state
            .get(&peering_counter_index(slot, dir), 0)
            .context("reading pdp_cap_state")
    }
}

/// The kernel's monotonic clock (what `bpf_ktime_get_ns` reads).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
            Op::PutAclAddr(k, v) => self
                .acl_addr
                .insert(&Key::new(k.prefix_len, k.data), **v, 0)
                .map_err(Into::into),
            Op::PutAclPort(k, v) => self
                .acl_port
                .insert(&Key::new(k.prefix_len, k.data), **v, 0)
                .map_err(Into::into),
            Op::PutAclProto(k, v) => self.acl_proto.insert(k, **v, 0).map_err(Into::into),
            Op::PutAclExact(k, v) => self.acl_exact.insert(k, **v, 0).map_err(Into::into),
            Op::DelAclExact(k) => self.acl_exact.remove(k).map_err(Into::into),
            Op::ResetAclHits(base, n) => self.reset_acl_hits(*base, *n),
            Op::PutAclMeta(k, v) => self.acl_meta.insert(k, **v, 0).map_err(Into::into),
            Op::DelAclMeta(k) => self.acl_meta.remove(k).map_err(Into::into),
            Op::DelAclAddr(k) => self
                .acl_addr
                .remove(&Key::new(k.prefix_len, k.data))
                .map_err(Into::into),
            Op::DelAclPort(k) => self
                .acl_port
                .remove(&Key::new(k.prefix_len, k.data))
                .map_err(Into::into),
            Op::DelAclProto(k) => self.acl_proto.remove(k).map_err(Into::into),
        };
        r.with_context(|| format!("writing {op:?}"))
    }
}

/// Removes the pinned maps (and the directory) of a data plane that is not running.
/// Also detaches from every port: unpinning the links releases them.
pub fn remove_pins(pin_dir: &Path) -> Result<()> {
    if !pin_dir.exists() {
        return Ok(());
    }
    crate::links::remove_all(pin_dir)?;
    unpin_programs(pin_dir)?;
    for name in map_names::ALL {
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
