//! The real XDP object, loaded with its maps pinned in a private bpffs directory, driven
//! by BPF_PROG_RUN. State goes in through the agent's own install path.

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use peer_dataplane::agent::install::Installed;
use peer_dataplane::bpf::pins as kernel;
use peer_dataplane::bpf::KernelIfindex;
use peer_dataplane::desired::document::Document;
use peer_dataplane::desired::validate::validate;
use peer_dataplane_common::{
    clock::{Clock, CLOCK_FROZEN},
    counters::{GlobalCounters, PeeringCounters},
    program_names,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use peer_dataplane::bpf::progrun::{
    action_name, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where tests start a frozen clock: far from 0, so that "10 s ago" is a valid time, and
/// unrelated to the machine's uptime.
pub const TEST_EPOCH_NS: u64 = 1_000_000 * 1_000_000_000;

pub struct TestDataplane {
    pub ebpf: Ebpf,
    pub installed: Installed,
    pub pin_dir: PathBuf,
}

/// [`TestDataplane::counters`]: global counters, and (peering, direction, counters).
pub type Counters = (GlobalCounters, Vec<(&'static str, u32, PeeringCounters)>);

pub struct RunOutput {
    pub action: u32,
    pub data: Vec<u8>,
    pub duration: Duration,
}

impl TestDataplane {
    /// Loads the object at `PDP_EBPF_OBJECT` with pins under a directory of its own.
    pub fn load() -> Result<TestDataplane> {
        Self::load_from(&crate::object_path()?)
    }

    pub fn load_from(object: &std::path::Path) -> Result<TestDataplane> {
        crate::require_root()?;
        let object = std::fs::read(object)
            .with_context(|| format!("reading the XDP object {}", object.display()))?;
        // Unique to this process; what a killed run left behind is reaped first.
        crate::reap_stale();
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique(&format!(
            "dp{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        )));
        let _ = kernel::remove_pins(&pin_dir);
        let mut ebpf = kernel::load(&object, &pin_dir)?;
        for name in [
            program_names::PIPELINE,
            program_names::REDIRECT_ONLY,
            program_names::TRACE,
            program_names::PASS,
            program_names::SINK,
            program_names::LOADGEN,
        ] {
            kernel::xdp_program(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name} (verifier)"))?;
        }
        // As the agent does: the CLI's `trace` and `loadgen` run the pinned programs.
        kernel::pin_programs(&mut ebpf, &pin_dir)?;
        let installed = Installed::open(&pin_dir)?;
        Ok(TestDataplane {
            ebpf,
            installed,
            pin_dir,
        })
    }

    /// Validates and installs `doc`; interfaces resolve in the calling thread's netns.
    pub fn install(&mut self, doc: &Document) -> Result<usize> {
        let topo = validate(doc).map_err(|e| anyhow!("{e}"))?;
        self.installed
            .install(&topo, None, &KernelIfindex::default())
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()
            .map_err(Into::into)
    }

    /// One BPF_PROG_RUN of `program` on `packet` as if received on `ingress_ifindex`.
    pub fn run_on(
        &self,
        program: &str,
        ingress_ifindex: u32,
        packet: &[u8],
        repeat: u32,
    ) -> Result<RunOutput> {
        let ctx = peer_dataplane::bpf::progrun::xdp_md(packet.len(), ingress_ifindex);
        let mut out = vec![0u8; packet.len() + 256];
        let prog = self.program(program)?;
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|e: ProgramError| anyhow!("BPF_PROG_RUN of {program}: {e}"))?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput {
            action: r.return_value,
            data: out,
            duration: r.duration,
        })
    }

    /// Attaches `program` (native mode) to a spare interface. An attached program sits in
    /// the kernel's XDP dispatcher already, so BPF_PROG_RUN with `repeat > 1` no longer
    /// installs and removes it around every call (an image rebuild costing ~18 ms here).
    pub fn keep_in_dispatcher(&mut self, program: &str, spare_iface: &str) -> Result<()> {
        self.attach(program, spare_iface).map(drop)
    }

    /// Attaches `program` to `iface` in native mode until [`Self::detach`].
    pub fn attach(&mut self, program: &str, iface: &str) -> Result<aya::programs::xdp::XdpLinkId> {
        kernel::xdp_program(&mut self.ebpf, program)?
            .attach(iface, aya::programs::XdpMode::Driver)
            .with_context(|| format!("attaching {program} to {iface}"))
    }

    pub fn detach(&mut self, program: &str, link: aya::programs::xdp::XdpLinkId) -> Result<()> {
        kernel::xdp_program(&mut self.ebpf, program)?
            .detach(link)
            .with_context(|| format!("detaching {program}"))
    }

    /// Makes `pdp_sink` count, as the sender's, only UDP frames to `dport` (0: all).
    pub fn sink_match_udp_dport(&mut self, dport: u16) -> Result<()> {
        self.sink_match_udp_dports(dport, dport)
    }

    /// Makes `pdp_sink` count, as the sender's, only UDP frames to ports `first..=last`
    /// (`first` 0: all).
    pub fn sink_match_udp_dports(&mut self, first: u16, last: u16) -> Result<()> {
        let map = self
            .ebpf
            .map_mut("pdp_sink_match")
            .ok_or_else(|| anyhow!("no map pdp_sink_match"))?;
        let mut m: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
        m.set(0, first as u32, 0)?;
        m.set(1, last as u32, 0)?;
        Ok(())
    }

    /// Frames `pdp_sink` has counted as the sender's (summed over CPUs): compare deltas.
    /// (Slot 1 of `pdp_sink_count` holds the frames that were not.)
    pub fn sink_count(&self) -> Result<u64> {
        self.sink_slot(0)
    }

    /// Bytes of the frames [`Self::sink_count`] counts (summed over CPUs).
    pub fn sink_bytes(&self) -> Result<u64> {
        self.sink_slot(2)
    }

    /// [`Self::sink_count`] per CPU.
    pub fn sink_count_per_cpu(&self) -> Result<Vec<u64>> {
        let map = self
            .ebpf
            .map("pdp_sink_count")
            .ok_or_else(|| anyhow!("no map pdp_sink_count"))?;
        let counts: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map)?;
        Ok(counts.get(&0, 0)?.iter().copied().collect())
    }

    fn sink_slot(&self, slot: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map("pdp_sink_count")
            .ok_or_else(|| anyhow!("no map pdp_sink_count"))?;
        let counts: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map)?;
        Ok(counts.get(&slot, 0)?.iter().sum())
    }

    /// Points `pdp_loadgen` (benchmarks) at its frames' next stop: `flows` flows per
    /// frame from source port `sport` and destination port `dport` on, then program
    /// `next` (the pipeline, say) or, with none, the kernel's stack.
    pub fn loadgen_config(
        &mut self,
        flows: u32,
        next: Option<&str>,
        sport: u16,
        dport: u16,
    ) -> Result<()> {
        {
            let map = self
                .ebpf
                .map_mut("pdp_loadgen_cfg")
                .ok_or_else(|| anyhow!("no map pdp_loadgen_cfg"))?;
            let mut m: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
            for (slot, v) in [flows, next.is_some() as u32, sport as u32, dport as u32]
                .into_iter()
                .enumerate()
            {
                m.set(slot as u32, v, 0)?;
            }
        }
        if let Some(next) = next {
            let fd = kernel::xdp_program(&mut self.ebpf, next)?
                .fd()?
                .try_clone()?;
            let map = self
                .ebpf
                .map_mut("pdp_loadgen_next")
                .ok_or_else(|| anyhow!("no map pdp_loadgen_next"))?;
            let mut next: aya::maps::ProgramArray<_> = aya::maps::ProgramArray::try_from(map)?;
            next.set(0, &fd, 0)?;
        }
        Ok(())
    }

    /// Stops the program's clock at `at_ns` (see `peer_dataplane_common::clock`): from now
    /// on conntrack and caps see exactly the time the test sets, whatever the uptime.
    pub fn freeze_clock(&mut self, at_ns: u64) -> Result<()> {
        self.installed.maps.set_clock(Clock::frozen(at_ns))
    }

    /// Moves the frozen clock forward by `d`; returns the new time.
    pub fn advance_clock(&mut self, d: Duration) -> Result<u64> {
        let c = self.installed.maps.clock()?;
        if c.flags & CLOCK_FROZEN == 0 {
            bail!("advance_clock needs a frozen clock (freeze_clock first)");
        }
        let at = c.offset_ns + d.as_nanos() as u64;
        self.freeze_clock(at)?;
        Ok(at)
    }

    /// Now on the program's clock.
    pub fn now(&self) -> Result<u64> {
        self.installed.maps.now_ns()
    }

    pub fn run(&self, ingress_ifindex: u32, packet: &[u8]) -> Result<RunOutput> {
        self.run_on(program_names::PIPELINE, ingress_ifindex, packet, 1)
    }

    pub fn global(&self) -> Result<GlobalCounters> {
        self.installed.maps.global_counters()
    }

    pub fn peering(&self, slot: u32) -> Result<(PeeringCounters, PeeringCounters)> {
        self.installed.maps.peering_counters(slot)
    }

    /// The global counters and both directions' counters of each installed peering in
    /// `peerings` (compare two of these for a frame's deltas).
    pub fn counters(&self, peerings: &[&'static str]) -> Result<Counters> {
        let mut per = Vec::new();
        for pcx in peerings {
            let slot = self
                .installed
                .ids
                .get(peer_dataplane_common::NAME_PEERING, pcx)
                .ok_or_else(|| anyhow!("peering {pcx} is not installed"))?;
            let (ra, ar) = self.peering(slot)?;
            per.push((*pcx, peer_dataplane_common::DIR_REQUESTER_TO_ACCEPTER, ra));
            per.push((*pcx, peer_dataplane_common::DIR_ACCEPTER_TO_REQUESTER, ar));
        }
        Ok((self.global()?, per))
    }
}

/// Runs every case of a table (`what`: "cases", "scenarios"), printing `ok` or `FAIL` and
/// the problems per case, then fails naming every case that failed.
pub fn run_table<C>(
    what: &str,
    cases: &[C],
    name: impl Fn(&C) -> &'static str,
    mut run: impl FnMut(&C) -> Result<()>,
) {
    let mut failed = Vec::new();
    for c in cases {
        match run(c) {
            Ok(()) => eprintln!("  ok    {}", name(c)),
            Err(e) => {
                eprintln!("  FAIL  {}\n    {e}", name(c));
                failed.push(name(c));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {what} failed: {failed:?}",
        failed.len(),
        cases.len()
    );
}

impl Drop for TestDataplane {
    fn drop(&mut self) {
        let _ = kernel::remove_pins(&self.pin_dir);
    }
}
