//! Differential test (issue 4): random states and random frames, valid and malformed, run
//! through the reference model (`peer_dataplane::model`) and through the real program
//! (BPF_PROG_RUN). Every frame must get the same verdict and the same output bytes; every
//! state must leave the same counters (global, per peering and direction, per ACL rule).
//!
//! Size: `PDP_DIFF_STATES` states (default 100) of `PDP_DIFF_PACKETS` frames each (default
//! 1,000), from seed `PDP_DIFF_SEED`. `cargo xtask difftest --states N` runs a longer one.
//! A divergence prints the seed, the state, the frame and both answers.
//!
//! Needs root and BPF; runs in a network namespace of its own.

use anyhow::{anyhow, Result};
use peer_dataplane::model::{self, Model, Verdict};
use peer_dataplane::validate::{validate, Topology};
use peer_dataplane_common::{
    counters::{GlobalCounters, PeeringCounters},
    DropReason, PassReason, DIR_ACCEPTER_TO_REQUESTER, DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING,
};
use peer_dataplane_tests::harness::{action_name, TestDataplane, TEST_EPOCH_NS, XDP_DROP, XDP_PASS, XDP_REDIRECT};
use peer_dataplane_tests::netns;
use peer_dataplane_tests::random::{self, CapSetup, Rng};
use peer_dataplane_tests::seed::{self, Instance, A, B, C};
use std::collections::BTreeMap;

const PEERINGS: [&str; 2] = ["pcx-ab", "pcx-bc"];
const DIRS: [u32; 2] = [DIR_REQUESTER_TO_ACCEPTER, DIR_ACCEPTER_TO_REQUESTER];

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Every counter the test compares.
#[derive(Debug, Clone, PartialEq)]
struct Counters {
    global: GlobalCounters,
    peerings: BTreeMap<(String, u32), PeeringCounters>,
    acl_hits: BTreeMap<u32, u64>,
}

fn read_counters(dp: &TestDataplane, slots: &[u32]) -> Result<Counters> {
    let mut peerings = BTreeMap::new();
    for pcx in PEERINGS {
        let slot = dp.installed.ids.get(NAME_PEERING, pcx).unwrap();
        let (ra, ar) = dp.peering(slot)?;
        peerings.insert((pcx.to_string(), DIR_REQUESTER_TO_ACCEPTER), ra);
        peerings.insert((pcx.to_string(), DIR_ACCEPTER_TO_REQUESTER), ar);
    }
    let mut acl_hits = BTreeMap::new();
    for s in slots {
        acl_hits.insert(*s, dp.installed.maps.acl_hits(*s)?);
    }
    Ok(Counters {
        global: dp.global()?,
        peerings,
        acl_hits,
    })
}

/// `c` plus what the model says one frame of `len` bytes adds.
fn add_expected(
    c: &mut Counters,
    o: &model::Outcome,
    len: u64,
    slot_of: &dyn Fn(&(String, bool, u32)) -> u32,
) {
    let g = &mut c.global;
    g.rx_packets += 1;
    g.rx_bytes += len;
    g.fragments += o.fragment as u64;
    g.ipv4_options += o.ipv4_options as u64;
    let pcx = o.peering.as_ref().map(|p| c.peerings.get_mut(p).unwrap());
    match o.verdict {
        Verdict::Pass(r) => {
            g.passed_packets += 1;
            g.pass[r as usize] += 1;
        }
        Verdict::Redirect(_) => {
            g.redirected_packets += 1;
            g.redirected_bytes += len;
            let p = pcx.expect("a forwarded frame crosses a peering");
            p.packets += 1;
            p.bytes += len;
        }
        Verdict::Drop(r) => {
            g.dropped_packets += 1;
            g.drop[r as usize] += 1;
            if let Some(p) = pcx {
                p.drop[r as usize] += 1;
            }
        }
    }
    for h in &o.acl_hits {
        *c.acl_hits.get_mut(&slot_of(h)).unwrap() += 1;
    }
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::Pass(r) => format!("XDP_PASS ({})", r.as_str()),
        Verdict::Drop(r) => format!("XDP_DROP ({})", r.as_str()),
        Verdict::Redirect(i) => format!("XDP_REDIRECT (ifindex {i})"),
    }
}

struct Totals {
    packets: u64,
    verdicts: BTreeMap<String, u64>,
}

#[allow(clippy::too_many_arguments)]
fn run_state(
    dp: &mut TestDataplane,
    rng: &mut Rng,
    seed: u64,
    state_no: u64,
    packets: u64,
    ports: &[(Instance, u32)],
    lo: u32,
    totals: &mut Totals,
) -> Result<()> {
    let (doc, caps) = random::state(rng);
    let topo: Topology = validate(&doc)
        .map_err(|e| anyhow!("state {state_no}: the generator made an invalid document: {e}"))?;
    dp.install(&doc)?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;

    let mut model_state = model::State::default();
    // The program's clock stands still unless the test moves it (see below).
    let mut now = TEST_EPOCH_NS + state_no * 3600 * 1_000_000_000;
    dp.freeze_clock(now)?;
    for (i, pcx) in PEERINGS.iter().enumerate() {
        let slot = dp.installed.ids.get(NAME_PEERING, pcx).unwrap();
        for dir in DIRS {
            let tat = match caps[i] {
                CapSetup::Drained => now + 3600 * 1_000_000_000,
                _ => dp.installed.maps.cap_state(slot, dir)?,
            };
            dp.installed.maps.set_cap_state(slot, dir, tat)?;
            model_state.buckets.insert((pcx.to_string(), dir), tat);
        }
    }
    let ifx: BTreeMap<String, u32> = ports
        .iter()
        .map(|(i, x)| (i.port.to_string(), *x))
        .collect();
    let m = Model::new(&topo, ifx);

    // ACL hit slots of every rule of this state.
    let mut slots = BTreeMap::new();
    for (id, a) in &topo.network_acls {
        for (egress, rules) in [(false, &a.ingress), (true, &a.egress)] {
            for r in rules.iter() {
                let s = dp
                    .installed
                    .acl_hit_slot(&topo, id, egress, r.number)
                    .ok_or_else(|| anyhow!("no hit slot for {id} rule {}", r.number))?;
                slots.insert((id.clone(), egress, r.number), s);
            }
        }
    }
    let slot_list: Vec<u32> = slots.values().copied().collect();
    let slot_of = |h: &(String, bool, u32)| slots[h];

    let before = read_counters(dp, &slot_list)?;
    let mut expected = before.clone();
    for n in 0..packets {
        let (from, ingress) = if rng.chance(4) {
            (*rng.pick(&[A, B, C]), lo)
        } else {
            *rng.pick(ports)
        };
        let frame = random::frame(rng, from);
        // Time moves between frames by a random step, from nothing to past every timeout.
        now += random::time_step(rng);
        dp.freeze_clock(now)?;
        let want = m.run(&mut model_state, ingress, &frame, now);
        let got = dp.run(ingress, &frame)?;
        let want_action = match want.verdict {
            Verdict::Pass(_) => XDP_PASS,
            Verdict::Drop(_) => XDP_DROP,
            Verdict::Redirect(_) => XDP_REDIRECT,
        };
        if got.action != want_action || got.data != want.frame {
            return Err(anyhow!(
                "divergence (seed {seed}, state {state_no}, frame {n}) on ingress {ingress}:\n  \
                 model:   {} -> {:02x?}\n  program: {} -> {:02x?}\n  frame:   {:02x?}\n  state:\n{}",
                describe(&want.verdict),
                want.frame,
                action_name(got.action),
                got.data,
                frame,
                doc.to_toml()
            ));
        }
        *totals.verdicts.entry(describe(&want.verdict)).or_default() += 1;
        add_expected(&mut expected, &want, frame.len() as u64, &slot_of);
    }
    totals.packets += packets;
    let after = read_counters(dp, &slot_list)?;
    if after != expected {
        let mut diffs = Vec::new();
        let (g1, g2) = (&after.global, &expected.global);
        for (name, a, b) in [
            ("rx_packets", g1.rx_packets, g2.rx_packets),
            ("rx_bytes", g1.rx_bytes, g2.rx_bytes),
            ("redirected", g1.redirected_packets, g2.redirected_packets),
            ("fragments", g1.fragments, g2.fragments),
            ("ipv4_options", g1.ipv4_options, g2.ipv4_options),
        ] {
            if a != b {
                diffs.push(format!("{name}: program {a}, model {b}"));
            }
        }
        for r in DropReason::ALL {
            let (a, b) = (g1.drop[r as usize], g2.drop[r as usize]);
            if a != b {
                diffs.push(format!("drop[{}]: program {a}, model {b}", r.as_str()));
            }
        }
        for r in PassReason::ALL {
            let (a, b) = (g1.pass[r as usize], g2.pass[r as usize]);
            if a != b {
                diffs.push(format!("pass[{}]: program {a}, model {b}", r.as_str()));
            }
        }
        for (k, a) in &after.peerings {
            if *a != expected.peerings[k] {
                diffs.push(format!(
                    "peering {k:?}: program {a:?}, model {:?}",
                    expected.peerings[k]
                ));
            }
        }
        if after.acl_hits != expected.acl_hits {
            diffs.push(format!(
                "acl hits: program {:?}, model {:?}",
                after.acl_hits, expected.acl_hits
            ));
        }
        return Err(anyhow!(
            "counters diverge (seed {seed}, state {state_no}):\n  {}\n  state:\n{}",
            diffs.join("\n  "),
            doc.to_toml()
        ));
    }
    Ok(())
}

#[test]
fn model_and_program_agree_on_random_states_and_frames() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let states = env("PDP_DIFF_STATES", 100);
    let packets = env("PDP_DIFF_PACKETS", 1000);
    let seed = env("PDP_DIFF_SEED", 0x5eed_2026);
    let ns = seed::ports_only(&peer_dataplane_tests::unique("diff"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    let ports: Vec<(Instance, u32)> = [A, B, C]
        .iter()
        .map(|i| (*i, netns::ifindex(i.port)))
        .collect();
    let lo = netns::ifindex("lo");
    let mut rng = Rng::new(seed);
    let mut totals = Totals {
        packets: 0,
        verdicts: BTreeMap::new(),
    };
    let started = std::time::Instant::now();
    for s in 0..states {
        run_state(&mut dp, &mut rng, seed, s, packets, &ports, lo, &mut totals)?;
        if (s + 1) % 10 == 0 || s + 1 == states {
            eprintln!(
                "  {}/{states} states, {} frames, 0 divergences ({:.1} s)",
                s + 1,
                totals.packets,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!("outcomes over {} frames:", totals.packets);
    for (v, n) in &totals.verdicts {
        eprintln!("  {n:>8}  {v}");
    }
    // The generator must reach the interesting paths, or agreement proves little.
    for must in [
        "XDP_REDIRECT",
        "(parse-error)",
        "(nacl-deny)",
        "(sg-deny)",
        "(rate-limited)",
        "(no-route)",
        "(transitive)",
        "(ttl-exceeded)",
        "(peering-inactive)",
        "(unsupported-encap)",
    ] {
        assert!(
            totals.verdicts.keys().any(|k| k.contains(must)),
            "no frame ended {must}: the generator needs widening"
        );
    }
    Ok(())
}
