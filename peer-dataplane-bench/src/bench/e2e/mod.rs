//! `cargo xtask bench e2e`: this data plane against the Linux kernel doing the same job,
//! with the same generator, topology and frames, in one run.
//!
//! Topology: the seed's ports in one namespace. Frames enter on port A (10.0.2.10 -> B,
//! UDP) and leave on port B, whose veth peer runs `pdp_sink` (count frames and bytes, and
//! drop), where both data planes are measured.
//! - This data plane: `pdp_xdp` with the installed state.
//! - Linux, doing what the data plane does: strict reverse-path filtering (the return
//!   route check), `ip route` (connected subnets, a permanent neighbour for B, the same
//!   extra routes), nftables holding the egress NACL's rules in order (prefixes and port
//!   ranges) and, for security groups, `ct state established,related accept` before both
//!   ports' group rules; the cap by `tc police`, or nftables `limit` where the kernel has
//!   no act_police.
//!
//! The generator is `peer-dataplane loadgen`'s: BPF_PROG_RUN live frames, one thread, in
//! front of `pdp_loadgen`, which gives every frame its flow (source port, and past
//! 50,000 flows the destination port) before handing it to the pipeline or to the
//! kernel. It runs the program, the forwarding and the sink's NAPI poll on the one CPU, so
//! a figure is the whole per-packet cost of a path on a core. Each figure is the median of
//! rounds that alternate between the two data planes.

mod linux;
mod report;

use super::gen::{flow_frames, spread, BenchGen, Next, Shape, BENCH_DPORT};
use super::rows::{a_to_b_frame, alternating, line, ns_cmd, Received, FLOWS, FRAME_BYTES};
use anyhow::{bail, ensure, Context, Result};
use linux::{linux_apply, linux_base, Policer};
use peer_dataplane::desired::document::Document;
use peer_dataplane::loadgen::GeneratorArg;
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns::{self, sh};
use peer_dataplane_tests::seed::{self, mac_str, v4_str, A, B, ROUTER_MAC};
use report::{e2e_report, scaling_json, scaling_report, write_svg};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Flows per frame of a row unless it says otherwise.
const ROW_FLOWS: u32 = 256;

/// One point of the comparison.
struct Config {
    label: String,
    routes: usize,
    /// An egress NACL on A's subnet with this many rules: denies on /24s and port ranges
    /// that do not match, then allow-all.
    rules: usize,
    /// Security groups on both ports, the flows tracked.
    groups: bool,
    cap_mbps: Option<u64>,
    /// Flows, each frame its own (`pdp_loadgen`).
    flows: u32,
    /// Linux gets the NACL's denies as one nftables interval-set lookup instead of a
    /// chain in order (they all come before the final allow, so order does not matter
    /// here; in general it does).
    linux_set: bool,
}

struct Row {
    config: Config,
    /// Medians over the rounds (this data plane, Linux), or why the row did not run.
    result: std::result::Result<(Received, Received), String>,
}

fn configs() -> Vec<Config> {
    let row = |label: &str, routes, rules, groups, cap_mbps, flows| Config {
        label: label.to_string(),
        routes,
        rules,
        groups,
        cap_mbps,
        flows,
        linux_set: false,
    };
    let as_set = |label: &str, routes| Config {
        linux_set: true,
        ..row(label, routes, 40, true, None, ROW_FLOWS)
    };
    vec![
        row("10 routes", 10, 0, false, None, ROW_FLOWS),
        row("100,000 routes", 100_000, 0, false, None, ROW_FLOWS),
        row("1,000,000 routes", 1_000_000, 0, false, None, ROW_FLOWS),
        row(
            "10 routes, groups + 40-rule NACL",
            10,
            40,
            true,
            None,
            ROW_FLOWS,
        ),
        row(
            "1,000,000 routes, groups + 40-rule NACL",
            1_000_000,
            40,
            true,
            None,
            ROW_FLOWS,
        ),
        row("10 routes, groups + NACL, 1 flow", 10, 40, true, None, 1),
        row(
            "10 routes, groups + NACL, 100,000 flows",
            10,
            40,
            true,
            None,
            100_000,
        ),
        as_set("10 routes, groups + NACL; Linux: nft set", 10),
        as_set("1,000,000 routes, groups + NACL; Linux: nft set", 1_000_000),
        row(
            "10 routes, 1,000-rule NACL",
            10,
            1000,
            false,
            None,
            ROW_FLOWS,
        ),
        row(
            "10 routes, cap 10 Gbit/s (not reached)",
            10,
            0,
            false,
            Some(10_000),
            ROW_FLOWS,
        ),
        row(
            "10 routes, cap 100 Mbit/s",
            10,
            0,
            false,
            Some(100),
            ROW_FLOWS,
        ),
    ]
}

/// This data plane's side of `c`.
fn pdp_doc(c: &Config) -> Document {
    let mut doc = super::doc_with_routes(c.routes);
    if c.rules > 0 {
        super::add_egress_acl(&mut doc, c.rules, true);
    }
    if c.groups {
        super::add_security_groups(&mut doc);
    }
    if let Some(mbps) = c.cap_mbps {
        doc.peerings[0].bandwidth_mbps = Some(mbps);
    }
    doc
}

/// One run of `seconds` into port A, `flows` flows from `threads` threads, on to this
/// data plane or (`linux`) to the kernel.
fn measure(
    dp: &mut TestDataplane,
    gen: &mut BenchGen,
    template: &[u8],
    seconds: f64,
    flows: u32,
    threads: usize,
    linux: bool,
) -> Result<Received> {
    let next = if linux {
        Next::Kernel
    } else {
        Next::Program(program_names::PIPELINE)
    };
    let r = gen.run(
        dp,
        template,
        A.port,
        next,
        Shape {
            flows,
            threads,
            seconds,
        },
    )?;
    Ok(Received::of(&r))
}

pub struct Options<'a> {
    pub object: &'a Path,
    pub seconds: f64,
    pub rounds: usize,
    pub plot: &'a Path,
    pub generator: GeneratorArg,
    /// Thread counts of the scaling table (the main table runs the first).
    pub threads: Vec<usize>,
}

pub fn bench(o: &Options) -> Result<()> {
    let (seconds, rounds) = (o.seconds, o.rounds);
    ensure!(
        rounds >= 1 && seconds > 0.0,
        "need at least one round of some time"
    );
    ensure!(
        !o.threads.is_empty() && o.threads.iter().all(|t| *t >= 1),
        "--threads takes thread counts of at least 1, e.g. 1,2"
    );
    for tool in ["nft", "tc", "trafgen"] {
        if sh(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            bail!("{tool} is missing (cargo xtask bench e2e installs nftables, iproute2 and netsniff-ng)");
        }
    }
    let queues = *o.threads.iter().max().unwrap() as u32;
    let ns = seed::ports_only_queues("pdp-e2e", queues)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load_from(o.object)?;
    linux_base()?;
    // Programs run with BPF_PROG_RUN stay in the kernel's XDP dispatcher when attached
    // somewhere (see `keep_in_dispatcher`); the sink counts behind port B.
    dp.keep_in_dispatcher(program_names::PIPELINE, "pdp-c")?;
    dp.keep_in_dispatcher(program_names::LOADGEN, "pdp-c-peer")?;
    dp.keep_in_dispatcher(program_names::SINK, &format!("{}-peer", B.port))?;

    // The sink counts the generator's frames only, not what the kernel sends on its own.
    dp.sink_match_udp_dports(BENCH_DPORT, BENCH_DPORT + 1)?;
    dp.install(&seed::seed_doc())?;
    let template = a_to_b_frame(&dp)?;
    let mut gen = BenchGen::choose(o.generator, A.port)?;
    eprintln!("generator: {}", gen.label());

    let (rows, policers) =
        measure_configs(&mut dp, &mut gen, &template, seconds, rounds, o.threads[0])?;
    let scaling = if o.threads.len() > 1 {
        Some(measure_scaling(
            &mut dp, &mut gen, &template, seconds, rounds, &o.threads,
        ))
    } else {
        None
    };
    // Leave Linux's path bare for the trafgen cross-check.
    let bare = Config {
        label: String::new(),
        routes: 10,
        rules: 0,
        groups: false,
        cap_mbps: None,
        flows: 1,
        linux_set: false,
    };
    let trafgen = linux_apply(&bare, &pdp_doc(&bare))
        .and_then(|_| dp.install(&seed::seed_doc()))
        .and_then(|_| trafgen_cross_check(&mut dp, &flow_frames(&template, FLOWS)));
    drop(dp);
    drop(ns);
    let cross = super::e2e_fleet::measure(o.object, o.generator, seconds, rounds);

    let env = super::report::environment();
    super::report::print_environment(&env);
    println!(
        "generator: {}, {} thread{} (each on its own CPU); {FRAME_BYTES}-byte UDP frames port A -> port B, \
         each frame its own flow; {rounds} rounds of {seconds} s each, alternating, median; frames and bytes \
         counted by the same sink behind port B",
        gen.label(),
        o.threads[0],
        if o.threads[0] == 1 { "" } else { "s" },
    );
    e2e_report(&rows, &policers);
    if let Some(s) = &scaling {
        scaling_report(s);
    }
    match &trafgen {
        Ok(line) => println!("{line}"),
        Err(e) => println!("trafgen cross-check: not run: {e:#}"),
    }
    match &cross {
        Ok(((p, l), tunnel)) => println!(
            "across hosts, the sending host (encapsulation toward host 2 vs a Linux {tunnel} device): \
             {:.1} vs {:.1} kpps = {:.2}x (offered {:.0} / {:.0} kpps)",
            p.pps / 1e3,
            l.pps / 1e3,
            p.pps / l.pps,
            p.offered_pps / 1e3,
            l.offered_pps / 1e3
        ),
        Err(e) => println!("across hosts: not run: {e:#}"),
    }
    if let Err(e) = write_svg(o.plot, &rows) {
        println!("plot: not written: {e:#}");
    } else {
        println!("plot: {}", o.plot.display());
    }
    let json = serde_json::json!({
        "environment": env,
        "generator": gen.json(),
        "threads": o.threads[0],
        "frame_bytes": FRAME_BYTES,
        "seconds": seconds,
        "rounds": rounds,
        "linux_cap": policers.first(),
        "rows": rows.iter().map(|r| {
            let mut j = serde_json::json!({
                "configuration": r.config.label,
                "routes": r.config.routes,
                "nacl_rules": r.config.rules,
                "security_groups": r.config.groups,
                "cap_mbps": r.config.cap_mbps,
                "flows": r.config.flows,
            });
            match &r.result {
                Ok((pdp, linux)) => {
                    let m = j.as_object_mut().unwrap();
                    for (k, v) in [
                        ("pdp_pps", pdp.pps), ("linux_pps", linux.pps), ("ratio", pdp.pps / linux.pps),
                        ("pdp_received_bits_per_second", pdp.bps), ("linux_received_bits_per_second", linux.bps),
                        ("pdp_offered_pps", pdp.offered_pps), ("linux_offered_pps", linux.offered_pps),
                    ] {
                        m.insert(k.into(), v.into());
                    }
                }
                Err(e) => { j["not_run"] = e.clone().into(); }
            }
            j
        }).collect::<Vec<_>>(),
        "scaling": scaling.as_deref().map(scaling_json),
        "trafgen": match &trafgen { Ok(l) => serde_json::json!(l), Err(e) => serde_json::json!({"not_run": format!("{e:#}")}) },
        "across_hosts_sender": match &cross {
            Ok(((p, l), tunnel)) => serde_json::json!({
                "linux_tunnel": tunnel,
                "pdp_pps": p.pps, "linux_pps": l.pps, "ratio": p.pps / l.pps,
                "pdp_offered_pps": p.offered_pps, "linux_offered_pps": l.offered_pps,
            }),
            Err(e) => serde_json::json!({"not_run": format!("{e:#}")}),
        },
    });
    let path = super::report::write("e2e", &json)?;
    println!("figures written to {}", path.display());
    Ok(())
}

/// Every configuration, both paths, `rounds` alternating rounds each; and how Linux's
/// cap was enforced. A configuration that fails is reported as such; the others go on.
fn measure_configs(
    dp: &mut TestDataplane,
    gen: &mut BenchGen,
    template: &[u8],
    seconds: f64,
    rounds: usize,
    threads: usize,
) -> Result<(Vec<Row>, Vec<&'static str>)> {
    let mut rows = Vec::new();
    let mut policers: Vec<&str> = Vec::new();
    let all = configs();
    let total = all.len();
    for (n, config) in all.into_iter().enumerate() {
        eprint!("[{}/{total}] {}: installing ... ", n + 1, config.label);
        let t = Instant::now();
        let result = (|| -> Result<(Received, Received)> {
            let doc = pdp_doc(&config);
            dp.install(&doc)?;
            match linux_apply(&config, &doc)? {
                Policer::Nftables => {
                    policers.push("nftables `limit rate over` on port B's egress hook (this kernel has no act_police)")
                }
                Policer::Tc => policers.push("tc police"),
                Policer::None => {}
            }
            eprint!("{:.1} s; ", t.elapsed().as_secs_f64());
            alternating(rounds, |linux| {
                measure(dp, gen, template, seconds, config.flows, threads, linux)
            })
        })();
        match &result {
            Ok(_) => eprintln!(),
            Err(e) => eprintln!("not run: {e:#}"),
        }
        rows.push(Row {
            config,
            result: result.map_err(|e| format!("{e:#}")),
        });
    }
    Ok((rows, policers))
}

/// The rows of the scaling table: a configuration at one thread count, both paths.
pub struct ScalingRow {
    label: &'static str,
    threads: usize,
    result: std::result::Result<(Received, Received), String>,
}

/// Two configurations at each thread count of `threads`, both paths, alternating rounds.
fn measure_scaling(
    dp: &mut TestDataplane,
    gen: &mut BenchGen,
    template: &[u8],
    seconds: f64,
    rounds: usize,
    threads: &[usize],
) -> Vec<ScalingRow> {
    let mut out = Vec::new();
    for (label, rules, groups) in [
        ("10 routes", 0, false),
        ("10 routes, groups + 40-rule NACL", 40, true),
    ] {
        let config = Config {
            label: label.to_string(),
            routes: 10,
            rules,
            groups,
            cap_mbps: None,
            flows: ROW_FLOWS,
            linux_set: false,
        };
        let doc = pdp_doc(&config);
        let applied = dp
            .install(&doc)
            .map(|_| ())
            .and_then(|_| linux_apply(&config, &doc).map(|_| ()));
        for &t in threads {
            eprint!("scaling, {label}, {t} thread(s): ");
            let result = match &applied {
                Err(e) => Err(format!("{e:#}")),
                Ok(()) => alternating(rounds, |linux| {
                    measure(dp, gen, template, seconds, ROW_FLOWS, t, linux)
                })
                .map_err(|e| format!("{e:#}")),
            };
            eprintln!();
            out.push(ScalingRow {
                label,
                threads: t,
                result,
            });
        }
    }
    out
}

/// The base configuration once more, with netsniff-ng's trafgen as the generator: frames
/// sent from an AF_PACKET socket on port A's veth peer, as an instance would, through the
/// XDP program attached to port A (native mode), or through Linux when it is not.
fn trafgen_cross_check(dp: &mut TestDataplane, frames: &[Vec<u8>]) -> Result<String> {
    let cfg = std::env::temp_dir().join("pdp-bench-trafgen.cfg");
    let mut text = String::new();
    for f in frames {
        let bytes: Vec<String> = f.iter().map(|b| format!("0x{b:02x}")).collect();
        text.push_str(&format!("{{ {} }}\n", bytes.join(", ")));
    }
    std::fs::write(&cfg, text)?;
    let count = 2_000_000u64;
    let run = |dp: &TestDataplane| -> Result<(f64, f64)> {
        let before = dp.sink_count()?;
        let t = Instant::now();
        sh(Command::new("trafgen")
            .args(["--dev", &format!("{}-peer", A.port), "--conf"])
            .arg(&cfg)
            .args(["--num", &count.to_string(), "--cpus", "1", "-C", "-Q"]))?;
        let secs = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_millis(50));
        let rx = dp.sink_count()? - before;
        Ok((count as f64 / secs, rx as f64 / secs))
    };
    eprintln!("trafgen cross-check: {count} frames each way ...");
    let (linux_tx, linux_rx) = run(dp)?;
    dp.keep_in_dispatcher(program_names::PIPELINE, A.port)?;
    let (pdp_tx, pdp_rx) = run(dp)?;
    Ok(format!(
        "trafgen (AF_PACKET, 1 CPU, {} frames): this data plane received {:.1} kpps of {:.1} sent; Linux {:.1} kpps of {:.1} sent; ratio {:.2}x",
        count,
        pdp_rx / 1e3,
        pdp_tx / 1e3,
        linux_rx / 1e3,
        linux_tx / 1e3,
        pdp_rx / linux_rx
    ))
}
