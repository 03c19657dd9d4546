//! Differential test: random states (`random::topology`) and random frames, run through
//! the reference model (`peer_dataplane_tests::oracle`, written from docs/datapath.md) and
//! through the real program (BPF_PROG_RUN), on a clock the test holds. Every frame must get
//! the same verdict, the same reason, the same redirect target and the same output bytes;
//! every state must leave the same counters (global, per peering and direction, per ACL
//! rule). The expected counters are the model's from the state's install on: across each
//! change between frames they are carried as docs/datapath.md §4.17 says (never re-read
//! from the program), and checked right after the change and at the end. At the end a coverage table shows how often each drop and pass reason was
//! reached; the test fails if one was reached fewer than 100 times.
//!
//! Size: `PDP_DIFF_STATES` states (default 500) of `PDP_DIFF_PACKETS` frames each
//! (default 1,000), from seed `PDP_DIFF_SEED`. `cargo xtask difftest --states N` runs a
//! longer one. A divergence prints the seed, the state, the frame and both answers.
//!
//! Needs root and BPF; runs in a network namespace of its own.

use anyhow::{anyhow, bail, Context, Result};
use peer_dataplane::desired::compile::key_for;
use peer_dataplane::desired::document::Document;
use peer_dataplane::desired::validate::{validate, Topology};
use peer_dataplane::maps::{stored, DataplaneMaps, Op};
use peer_dataplane_common::counters::PeeringCounters;
use peer_dataplane_common::flowcache::FlowCounters;
use peer_dataplane_common::{
    DropReason, PassReason, RouteValue, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER,
    MAX_PEERINGS, NAME_PEERING, ROUTE_PCX,
};
use peer_dataplane_tests::changes;
use peer_dataplane_tests::harness::{
    action_name, TestDataplane, TEST_EPOCH_NS, XDP_DROP, XDP_PASS, XDP_REDIRECT,
};
use peer_dataplane_tests::netns::{self, Netns};
use peer_dataplane_tests::oracle::{
    describe, program_verdict, Counters, Outcome, State, Verdict, World,
};
use peer_dataplane_tests::random::{self, Frames, Rng, Topo, IFACES};
use std::collections::BTreeMap;

const DIRS: [u32; 2] = [DIR_REQUESTER_TO_ACCEPTER, DIR_ACCEPTER_TO_REQUESTER];
/// A slot no peering uses: tampered routes to a peering that does not exist point here.
const GONE_SLOT: u32 = MAX_PEERINGS - 1;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn read_counters(
    dp: &TestDataplane,
    doc_peerings: &[String],
    hit_slots: &BTreeMap<(String, bool, u32), u32>,
) -> Result<Counters> {
    let mut peerings = BTreeMap::new();
    for pcx in doc_peerings {
        let slot = dp.installed.ids.get(NAME_PEERING, pcx).unwrap();
        let (ra, ar) = dp.peering(slot)?;
        peerings.insert((pcx.clone(), DIR_REQUESTER_TO_ACCEPTER), ra);
        peerings.insert((pcx.clone(), DIR_ACCEPTER_TO_REQUESTER), ar);
    }
    let mut acl_hits = BTreeMap::new();
    for (k, s) in hit_slots {
        acl_hits.insert(k.clone(), dp.installed.maps.acl_hits(*s)?);
    }
    Ok(Counters {
        global: dp.global()?,
        peerings,
        acl_hits,
    })
}

/// Writes the state's raw map changes (see `oracle::Tampering`).
fn tamper(dp: &mut TestDataplane, topo: &Topo, ifindex: &BTreeMap<String, u32>) -> Result<()> {
    let t = &topo.tampering;
    for (table, dest, pcx) in &t.routes {
        let key = dp
            .installed
            .route_table_key(table)
            .ok_or_else(|| anyhow!("table {table} is not installed"))?;
        let slot = dp.installed.ids.get(NAME_PEERING, pcx).unwrap_or(GONE_SLOT);
        dp.installed.maps.write(&Op::put::<stored::Routes>(
            key_for(key, dest),
            RouteValue {
                kind: ROUTE_PCX,
                target: slot,
            },
        ))?;
    }
    for port in &t.no_redirect {
        dp.installed
            .maps
            .write(&Op::del::<stored::Devmap>(ifindex[port]))?;
    }
    // Written behind the agent's back: decisions kept before are stale, as after any
    // change the agent writes.
    dp.installed.maps.bump_epoch()?;
    Ok(())
}

#[derive(Default)]
struct Totals {
    frames: u64,
    states: u64,
    verdicts: BTreeMap<String, u64>,
    tampered: u64,
    acl_rules_max: usize,
    /// Changes installed between two frames, by kind.
    changes: BTreeMap<changes::Kind, u64>,
    /// Forwarded frames sent again without their target's redirect entry.
    targets_probed: u64,
}

/// Per mille of frames before which the state changes (states without raw map changes).
const CHANGE_PER_MILLE: u64 = 8;

#[allow(clippy::too_many_arguments)]
fn run_state(
    dp: &mut TestDataplane,
    rng: &mut Rng,
    seed: u64,
    state_no: u64,
    packets: u64,
    ifindex: &BTreeMap<String, u32>,
    totals: &mut Totals,
    tampered_before: &mut bool,
) -> Result<()> {
    let topo = random::topology(rng);
    validate(&topo.doc).map_err(|e| {
        anyhow!(
            "state {state_no}: the generator made an invalid document: {e}\n{}",
            topo.doc.to_toml()
        )
    })?;
    if *tampered_before {
        // The maps hold writes the agent did not make: diff against what is really there.
        dp.installed.mirror = dp.installed.maps.read_state()?;
    }
    dp.install(&topo.doc)
        .with_context(|| format!("state {state_no}: installing\n{}", topo.doc.to_toml()))?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;
    for pcx in &topo.doc.peerings {
        let slot = dp.installed.ids.get(NAME_PEERING, &pcx.id).unwrap();
        for dir in DIRS {
            dp.installed.maps.set_cap_state(slot, dir, 0)?;
        }
    }
    tamper(dp, &topo, ifindex)?;
    *tampered_before = !topo.tampering.routes.is_empty() || !topo.tampering.no_redirect.is_empty();
    totals.tampered += *tampered_before as u64;
    let mut run = Run {
        seed,
        state_no,
        topo: &topo,
        ifindex,
        doc: topo.doc.clone(),
        world: World::new(&topo.doc, ifindex, &topo.tampering),
        hit_slots: BTreeMap::new(),
        changes: Vec::new(),
    };
    run.hit_slots = run.hit_slots(dp, totals)?;
    run.frames(dp, rng, packets, totals)?;
    totals.frames += packets;
    totals.states += 1;
    Ok(())
}

/// One installed state under test, as changed so far.
struct Run<'a> {
    seed: u64,
    state_no: u64,
    topo: &'a random::Topo,
    ifindex: &'a BTreeMap<String, u32>,
    /// The document installed now, and the model's world of it.
    doc: Document,
    world: World,
    /// Every installed ACL rule's hit counter slot, by (ACL, direction, rule number).
    hit_slots: BTreeMap<(String, bool, u32), u32>,
    /// The changes made since the state was installed, in order.
    changes: Vec<changes::Kind>,
}

impl Run<'_> {
    fn hit_slots(
        &self,
        dp: &TestDataplane,
        totals: &mut Totals,
    ) -> Result<BTreeMap<(String, bool, u32), u32>> {
        let checked: Topology = validate(&self.doc).map_err(|e| anyhow!("{e}"))?;
        let mut hit_slots = BTreeMap::new();
        for (id, a) in &checked.network_acls {
            totals.acl_rules_max = totals
                .acl_rules_max
                .max(a.ingress.len().max(a.egress.len()));
            for (egress, rules) in [(false, &a.ingress), (true, &a.egress)] {
                for r in rules {
                    let s = dp
                        .installed
                        .acl_hit_slot(&checked, id, egress, r.number)
                        .ok_or_else(|| anyhow!("no hit slot for {id} rule {}", r.number))?;
                    hit_slots.insert((id.clone(), egress, r.number), s);
                }
            }
        }
        Ok(hit_slots)
    }

    fn counters(&self, dp: &TestDataplane) -> Result<Counters> {
        let peerings: Vec<String> = self.doc.peerings.iter().map(|p| p.id.clone()).collect();
        read_counters(dp, &peerings, &self.hit_slots)
    }

    /// The installed peering slots, by peering.
    fn slots(&self, dp: &TestDataplane) -> BTreeMap<String, Option<u32>> {
        self.doc
            .peerings
            .iter()
            .map(|p| (p.id.clone(), dp.installed.ids.get(NAME_PEERING, &p.id)))
            .collect()
    }

    /// Installs a random change of the state (see `changes`), between two frames: the
    /// program's kept decisions stay where they are, the model has none. Peerings that
    /// got a new slot start with full buckets in both.
    fn change(
        &mut self,
        dp: &mut TestDataplane,
        rng: &mut Rng,
        model: &mut State,
        totals: &mut Totals,
    ) -> Result<Option<Document>> {
        let Some((doc, kind)) = changes::change(rng, &self.doc) else {
            return Ok(None);
        };
        let before = self.slots(dp);
        dp.install(&doc).with_context(|| {
            format!(
                "state {}: installing a {} change\n{}",
                self.state_no,
                kind.as_str(),
                doc.to_toml()
            )
        })?;
        let old = std::mem::replace(&mut self.doc, doc);
        for (pcx, slot) in self.slots(dp) {
            if before.get(&pcx) != Some(&slot) {
                model.refill(&pcx);
            }
        }
        self.world = World::new(&self.doc, self.ifindex, &self.topo.tampering);
        self.hit_slots = self.hit_slots(dp, totals)?;
        self.changes.push(kind);
        *totals.changes.entry(kind).or_default() += 1;
        Ok(Some(old))
    }

    /// Sends `packets` random frames through the program and the model, frame by frame
    /// the same outcome, changing the state now and then between two frames; the
    /// counters must agree before each change and at the end.
    fn frames(
        &mut self,
        dp: &mut TestDataplane,
        rng: &mut Rng,
        packets: u64,
        totals: &mut Totals,
    ) -> Result<()> {
        let (seed, state_no, topo, ifindex) = (self.seed, self.state_no, self.topo, self.ifindex);
        let mut model = State::default();
        // Time stands still unless the test moves it.
        let mut now = TEST_EPOCH_NS + state_no * 3600 * 1_000_000_000;
        dp.freeze_clock(now)?;
        let mut expected = self.counters(dp)?;
        let mut last = expected.global;
        let busy = rng.chance(50);
        // Raw map changes stay as they are only until the agent installs again.
        let changing = topo.tampering.routes.is_empty() && topo.tampering.no_redirect.is_empty();
        let mut frames = Frames::new(topo, !busy);
        let mut again: Option<(String, Vec<u8>, u64)> = None;
        for n in 0..packets {
            if changing && n > 0 && rng.below(1000) < CHANGE_PER_MILLE {
                // The counters so far: a change may move ACL hit slots.
                self.check_counters(dp, &expected)?;
                if let Some(old) = self.change(dp, rng, &mut model, totals)? {
                    // What the install must leave: the model's counters carried across
                    // the change, checked at once (an install that zeroes or moves a
                    // counter shows here), never re-read from the program.
                    expected = expected.across(&old, &self.doc);
                    self.check_counters(dp, &expected)?;
                    last = expected.global;
                }
            }
            // A forwarded frame is often sent again a few times in a row, as packets of
            // one flow come: those meet its kept decision, unless a change came between.
            let (iface, frame, at) = match again.take() {
                Some((iface, frame, left)) => {
                    if left > 1 {
                        again = Some((iface.clone(), frame.clone(), left - 1));
                    }
                    (iface, frame, None)
                }
                None => frames.next(rng, now),
            };
            let ingress = ifindex[&iface];
            let step = random::time_step(rng, busy);
            let then = at.unwrap_or(now + step);
            if then != now {
                now = then;
                dp.freeze_clock(now)?;
            }
            let want: Outcome = self.world.run(&mut model, ingress, &frame, now);
            let got = dp.run(ingress, &frame)?;
            let global = dp.global()?;
            let got_verdict = program_verdict(&last, &global);
            last = global;
            let (want_action, want_verdict) = match want.verdict {
                Verdict::Pass(r) => (XDP_PASS, format!("pass {}", r.as_str())),
                Verdict::Drop(r) => (XDP_DROP, format!("drop {}", r.as_str())),
                Verdict::Redirect(_) => (XDP_REDIRECT, "redirect".to_string()),
            };
            // The redirect target: the frame leaves with its receiver's MAC, unique per port.
            if got.action != want_action
                || got.data != want.frame
                || got_verdict.as_deref() != Some(want_verdict.as_str())
            {
                bail!(
                "divergence (seed {seed}, state {state_no}, frame {n}) on {iface} (ifindex {ingress}) at {now} ns:\n  \
                 model:   {} -> {:02x?}\n  program: {} ({}) -> {:02x?}\n  frame:   {:02x?}\n  tampering: {:?}\n  \
                 changes since the state was installed: {:?}\n  state:\n{}",
                describe(&want.verdict),
                want.frame,
                action_name(got.action),
                got_verdict.unwrap_or_else(|| "nothing counted".into()),
                got.data,
                frame,
                topo.tampering,
                self.changes,
                self.doc.to_toml()
            );
            }
            // The redirect target itself (BPF_PROG_RUN does not say where a frame would
            // go): now and then the model's target loses its redirect entry and the same
            // frame must then be dropped as redirect-failed; a program that redirected it
            // elsewhere would still redirect it.
            if let Verdict::Redirect(target) = want.verdict {
                if rng.chance(10) {
                    last = self.probe_target(
                        dp,
                        &mut model,
                        (ingress, &frame, now),
                        target,
                        &mut expected,
                    )?;
                    totals.targets_probed += 1;
                }
            }
            if matches!(want.verdict, Verdict::Redirect(_)) && again.is_none() && rng.chance(30) {
                again = Some((iface.clone(), frame.clone(), 1 + rng.below(4)));
            }
            let key = match want.verdict {
                Verdict::Redirect(_) => "forwarded".to_string(),
                v => describe(&v),
            };
            *totals.verdicts.entry(key).or_default() += 1;
            expected.add(&want, frame.len() as u64);
        }
        self.check_counters(dp, &expected)
    }

    /// Sends `frame` again with the redirect entry of `target` (where the model forwarded
    /// it) deleted from the program's devmap and the model's ports: both must drop it as
    /// redirect-failed. The entry comes back after. Returns the global counters after.
    fn probe_target(
        &mut self,
        dp: &mut TestDataplane,
        model: &mut State,
        (ingress, frame, now): (u32, &[u8], u64),
        target: u32,
        expected: &mut Counters,
    ) -> Result<peer_dataplane_common::counters::GlobalCounters> {
        let before = dp.global()?;
        dp.installed
            .maps
            .write(&Op::del::<stored::Devmap>(target))?;
        self.world.set_no_redirect(target, true);
        let want = self.world.run(model, ingress, frame, now);
        let got = dp.run(ingress, frame)?;
        dp.installed
            .maps
            .write(&Op::put::<stored::Devmap>(target, target))?;
        self.world.set_no_redirect(target, false);
        let after = dp.global()?;
        let verdict = program_verdict(&before, &after);
        let failed = format!("drop {}", DropReason::RedirectFailed.as_str());
        if describe(&want.verdict) != failed
            || got.action != XDP_DROP
            || verdict.as_deref() != Some(failed.as_str())
        {
            bail!(
                "redirect target (seed {}, state {}): the model forwards {frame:02x?} to ifindex {target}; \
                 with that port's redirect entry gone the model says {} and the program {} ({})\n  state:\n{}",
                self.seed,
                self.state_no,
                describe(&want.verdict),
                action_name(got.action),
                verdict.unwrap_or_else(|| "nothing counted".into()),
                self.doc.to_toml()
            );
        }
        expected.add(&want, frame.len() as u64);
        Ok(after)
    }

    /// The program's counters after the frames must be the model's.
    fn check_counters(&self, dp: &mut TestDataplane, expected: &Counters) -> Result<()> {
        let (seed, state_no) = (self.seed, self.state_no);
        let after = self.counters(dp)?;
        if after != *expected {
            let mut diffs = Vec::new();
            if after.global != expected.global {
                diffs.push(format!(
                    "global: program {:?}\n          model   {:?}",
                    after.global, expected.global
                ));
            }
            for (k, v) in &expected.peerings {
                let got = after
                    .peerings
                    .get(k)
                    .copied()
                    .unwrap_or(PeeringCounters::ZERO);
                if got != *v {
                    diffs.push(format!("{k:?}: program {got:?}\n          model   {v:?}"));
                }
            }
            for (k, v) in &expected.acl_hits {
                let got = after.acl_hits.get(k).copied().unwrap_or(0);
                if got != *v {
                    diffs.push(format!("acl hits {k:?}: program {got}, model {v}"));
                }
            }
            bail!(
                "counters diverge in state {state_no} (seed {seed}), after the changes {:?}:\n  {}\n  state:\n{}",
                self.changes,
                diffs.join("\n  "),
                self.doc.to_toml()
            );
        }
        Ok(())
    }
}

/// The flow cache's counters, summed over CPUs.
fn cache_counters(dp: &TestDataplane) -> Result<FlowCounters> {
    let mut sum = FlowCounters::default();
    for c in dp.installed.maps.flow_counters_per_cpu()? {
        sum.add(&c);
    }
    Ok(sum)
}

/// Interfaces for random states: `dp0`… each a veth whose peer stays in the namespace.
fn interfaces(tag: &str) -> Result<(Netns, BTreeMap<String, u32>)> {
    let ns = Netns::create(&peer_dataplane_tests::unique(tag))?;
    for i in 0..IFACES {
        let name = random::iface(i);
        netns::veth(&ns, &name, None, &ns, &format!("{name}-p"), None)?;
    }
    netns::enter(&ns.path())?;
    let mut ifindex = BTreeMap::new();
    for i in 0..IFACES {
        let name = random::iface(i);
        let x = netns::ifindex(&name);
        if x == 0 {
            bail!("interface {name} has no ifindex");
        }
        ifindex.insert(name, x);
    }
    ifindex.insert("lo".to_string(), netns::ifindex("lo"));
    Ok((ns, ifindex))
}

#[test]
fn model_and_program_agree() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (_ns, ifindex) = interfaces("diff")?;
    let mut dp = TestDataplane::load()?;
    let states = env("PDP_DIFF_STATES", 500);
    let packets = env("PDP_DIFF_PACKETS", 1000);
    let seed = env("PDP_DIFF_SEED", 0x5eed_2026);
    let mut rng = Rng::new(seed);
    let mut totals = Totals::default();
    let mut tampered = false;
    // A repeated flow meets its kept decision only on the CPU that kept it.
    peer_dataplane::bpf::progrun::stay_on_this_cpu()?;
    let cache_before = cache_counters(&dp)?;
    let started = std::time::Instant::now();
    let mut next_report = std::time::Duration::from_secs(10);
    for state_no in 0..states {
        run_state(
            &mut dp,
            &mut rng,
            seed,
            state_no,
            packets,
            &ifindex,
            &mut totals,
            &mut tampered,
        )?;
        if started.elapsed() >= next_report {
            eprintln!(
                "  {} of {states} states, {} frames, {:.0} s",
                state_no + 1,
                totals.frames,
                started.elapsed().as_secs_f64()
            );
            next_report += std::time::Duration::from_secs(10);
        }
    }
    eprintln!(
        "{} states ({} with raw map changes; ACLs up to {} rules a direction) x {packets} frames = {} frames, \
         0 divergences (seed {seed:#x}, {:.1} s)",
        totals.states,
        totals.tampered,
        totals.acl_rules_max,
        totals.frames,
        started.elapsed().as_secs_f64()
    );
    let cache = cache_counters(&dp)?;
    let hits = cache.hits - cache_before.hits;
    let forwarded = totals.verdicts.get("forwarded").copied().unwrap_or(0);
    eprintln!(
        "  kept flow decisions: {hits} frames forwarded by one ({:.0} % of the {forwarded} forwarded), \
         {} kept, {} misses",
        100.0 * hits as f64 / forwarded.max(1) as f64,
        cache.kept - cache_before.kept,
        cache.misses - cache_before.misses
    );
    eprintln!(
        "  redirect targets probed (the frame again without its target's entry): {}",
        totals.targets_probed
    );
    assert!(
        totals.targets_probed * 20 >= forwarded,
        "only {} of {forwarded} forwarded frames had their target probed",
        totals.targets_probed
    );
    // Repeats of forwarded flows must have met their kept decisions, or the run says
    // nothing about them.
    assert!(
        hits * 4 >= forwarded,
        "only {hits} of {forwarded} forwarded frames used a kept decision"
    );
    // Changes between frames, by kind: each must have happened, or kept decisions were
    // not put to the test against it.
    let mut missing = Vec::new();
    for kind in changes::Kind::ALL {
        let n = totals.changes.get(&kind).copied().unwrap_or(0);
        eprintln!("  changes between frames, {:<20} {n:>8}", kind.as_str());
        if n == 0 {
            missing.push(kind.as_str());
        }
    }
    assert!(
        missing.is_empty(),
        "no change between frames of kinds {missing:?} (run more states)"
    );
    // The coverage table: every reason must be reached at least 100 times, except those
    // only a host of a fleet can reach (these random states are single hosts;
    // differential_fleet.rs and the overlay's BPF_PROG_RUN table cover those, and each
    // fails if one is missing).
    let fleet_only: Vec<String> = peer_dataplane_common::reason::FLEET_DROPS
        .iter()
        .map(|r| format!("drop {}", r.as_str()))
        .chain(std::iter::once(format!(
            "pass {}",
            PassReason::Underlay.as_str()
        )))
        .collect();
    let mut rows: Vec<(String, u64)> = Vec::new();
    for r in DropReason::ALL {
        let k = format!("drop {}", r.as_str());
        rows.push((k.clone(), totals.verdicts.get(&k).copied().unwrap_or(0)));
    }
    for r in PassReason::ALL {
        let k = format!("pass {}", r.as_str());
        rows.push((k.clone(), totals.verdicts.get(&k).copied().unwrap_or(0)));
    }
    rows.push((
        "forwarded".into(),
        totals.verdicts.get("forwarded").copied().unwrap_or(0),
    ));
    eprintln!("{:<28} {:>10}", "OUTCOME", "FRAMES");
    for (k, n) in &rows {
        let note = if fleet_only.contains(k) {
            "   fleet only: differential_fleet.rs"
        } else if *n < 100 {
            "   < 100"
        } else {
            ""
        };
        eprintln!("{k:<28} {n:>10}{note}");
    }
    let thin: Vec<&String> = rows
        .iter()
        .filter(|(k, n)| *n < 100 && !fleet_only.contains(k))
        .map(|(k, _)| k)
        .collect();
    assert!(
        thin.is_empty(),
        "outcomes reached fewer than 100 times: {thin:?} (run more states)"
    );
    Ok(())
}
