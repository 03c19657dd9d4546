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

use super::gen::{flow_frames, spread, BenchGen, Next, Shape, BENCH_DPORT};
use super::rows::{a_to_b_frame, alternating, line, ns_cmd, Received, FLOWS, FRAME_BYTES};
use anyhow::{bail, ensure, Context, Result};
use peer_dataplane::desired::document::Document;
use peer_dataplane::loadgen::GeneratorArg;
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns::{self, sh};
use peer_dataplane_tests::seed::{self, mac_str, v4_str, A, B, ROUTER_MAC};
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

/// Runs `script` through `program -batch -` (ip) or `-f -` (nft) on stdin.
fn batch(program: &str, flag: &[&str], script: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(flag)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child.stdin.take().unwrap().write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} {flag:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The Linux forwarding path between ports A and B (addresses, neighbour, sysctls).
fn linux_base() -> Result<()> {
    for kv in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        // Strict: a frame must come in on the interface its source is routed out of, as
        // the data plane checks a route back to the source.
        "net.ipv4.conf.all.rp_filter=1",
        "net.ipv4.conf.default.rp_filter=1",
    ] {
        line(&format!("sysctl -q -w {kv}"))?;
    }
    let router = mac_str(&ROUTER_MAC);
    for port in [A.port, B.port] {
        line(&format!("sysctl -q -w net.ipv4.conf.{port}.rp_filter=1"))?;
        // Frames arrive addressed to the router's MAC, as instances send them.
        line(&format!("ip link set {port} address {router}"))?;
    }
    line(&format!("ip addr add {}/24 dev {}", v4_str(&A.gw4), A.port))?;
    line(&format!("ip addr add {}/24 dev {}", v4_str(&B.gw4), B.port))?;
    // B's neighbour entry names the router's MAC, not B's: the generator's pages are
    // recycled with the bytes of their last trip (see `loadgen::PAGE_REUSES`), and a frame
    // Linux forwarded must still be addressed to port A when it comes round again. The
    // sink does not look at MACs.
    line(&format!(
        "ip neigh replace {} lladdr {router} dev {} nud permanent",
        v4_str(&B.ipv4),
        B.port
    ))?;
    Ok(())
}

/// The Linux side of `c`: the routes `doc` gives port A's table toward B, the NACL and
/// the groups in nftables, the cap as a policer.
fn linux_apply(c: &Config, doc: &Document) -> Result<Policer> {
    ns_cmd("ip", &["route", "flush", "proto", "static"])?;
    ns_cmd("ip", &["-6", "route", "flush", "proto", "static"])?;
    let mut script = String::new();
    let rtb = doc.route_tables.iter().find(|t| t.id == "rtb-a").unwrap();
    for r in rtb.routes.iter().filter(|r| r.target == "pcx-ab") {
        script.push_str(&format!(
            "route add {} dev {} proto static\n",
            r.destination, B.port
        ));
    }
    if !script.is_empty() {
        batch("ip", &["-batch", "-"], &script)?;
    }
    let _ = ns_cmd("nft", &["delete", "table", "inet", "pdp_bench"]);
    if c.rules > 0 || c.groups {
        batch("nft", &["-f", "-"], &nft_ruleset(c, doc))?;
    }

    let _ = ns_cmd("tc", &["qdisc", "del", "dev", B.port, "clsact"]);
    let _ = ns_cmd("nft", &["delete", "table", "netdev", "pdp_bench_cap"]);
    if let Some(mbps) = c.cap_mbps {
        let bps = mbps * 1_000_000;
        let burst = peer_dataplane_common::cap::default_burst_bytes(bps);
        ns_cmd("tc", &["qdisc", "add", "dev", B.port, "clsact"])?;
        let police = ns_cmd(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                B.port,
                "egress",
                "protocol",
                "all",
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "police",
                "rate",
                &format!("{mbps}mbit"),
                "burst",
                &burst.to_string(),
                "conform-exceed",
                "drop",
            ],
        );
        if police.is_err() {
            // A kernel without act_police (CONFIG_NET_ACT_POLICE, and no modules to load):
            // the same token-bucket policer from nftables, on the port's egress hook where,
            // as for tc and the data plane's cap, a packet's length includes its L2 header.
            ns_cmd("tc", &["qdisc", "del", "dev", B.port, "clsact"])?;
            batch(
                "nft",
                &["-f", "-"],
                &format!(
                    "table netdev pdp_bench_cap {{\n  chain egress {{\n    type filter hook egress device \"{}\" priority filter; policy accept;\n    \
                     limit rate over {} bytes/second burst {burst} bytes drop\n  }}\n}}\n",
                    B.port,
                    bps / 8
                ),
            )?;
            return Ok(Policer::Nftables);
        }
        return Ok(Policer::Tc);
    }
    Ok(Policer::None)
}

/// The forward chain: the egress NACL's rules in order, then (groups) tracked flows
/// accepted and new ones checked against A's egress group, then B's ingress group.
fn nft_ruleset(c: &Config, doc: &Document) -> String {
    let mut nft = String::from("table inet pdp_bench {\n");
    nft.push_str(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    nft.push_str(&format!("    iifname \"{}\" jump from_a\n  }}\n", A.port));
    nft.push_str("  chain from_a {\n");
    if c.rules > 0 {
        nft.push_str("    jump nacl_a_egress\n");
    }
    if c.groups {
        // A flow the groups allowed is tracked from its first packet on, replied or not
        // (as the data plane's conntrack does): its mark says so. `ct state established`
        // alone would send every packet of a flow not yet answered through the rules.
        nft.push_str(
            "    ct state established,related accept\n    ct mark 0x1 accept\n    jump sg_a_egress\n",
        );
    }
    nft.push_str("  }\n");
    if let Some(acl) = doc.network_acls.iter().find(|a| a.id == "acl-bench") {
        let mut rules: Vec<_> = acl
            .rules
            .iter()
            .filter(|r| r.direction == "egress")
            .collect();
        rules.sort_by_key(|r| r.number);
        if c.linux_set {
            let elements: Vec<String> = rules
                .iter()
                .filter(|r| r.action == "deny")
                .map(|r| {
                    format!(
                        "{} . {}-{}",
                        r.cidr,
                        r.port_from.unwrap(),
                        r.port_to.unwrap()
                    )
                })
                .collect();
            nft.push_str(&format!(
                "  set nacl_deny {{\n    type ipv4_addr . inet_service\n    flags interval\n    elements = {{ {} }}\n  }}\n",
                elements.join(", ")
            ));
            rules.retain(|r| r.action == "allow");
        }
        nft.push_str("  chain nacl_a_egress {\n");
        if c.linux_set {
            nft.push_str("    ip daddr . udp dport @nacl_deny drop\n");
        }
        for r in rules {
            let verdict = if r.action == "allow" {
                "return"
            } else {
                "drop"
            };
            let net = if r.cidr == "0.0.0.0/0" {
                String::new()
            } else {
                format!("ip daddr {} ", r.cidr)
            };
            let ports = match (r.protocol.as_str(), r.port_from, r.port_to) {
                ("udp" | "tcp", Some(lo), Some(hi)) => format!("{} dport {lo}-{hi} ", r.protocol),
                _ => String::new(),
            };
            nft.push_str(&format!("    {net}{ports}{verdict}\n"));
        }
        nft.push_str("    drop\n  }\n");
    }
    if c.groups {
        for (chain, group, field, next) in [
            ("sg_a_egress", "sg-a", "daddr", "goto sg_b_ingress"),
            ("sg_b_ingress", "sg-b", "saddr", "ct mark set 0x1 accept"),
        ] {
            let g = doc.security_groups.iter().find(|g| g.id == group).unwrap();
            nft.push_str(&format!("  chain {chain} {{\n"));
            for r in &g.rules {
                let (lo, hi) = (r.port_from.unwrap(), r.port_to.unwrap());
                nft.push_str(&format!(
                    "    ip {field} {} {} dport {lo}-{hi} {next}\n",
                    r.cidr.as_deref().unwrap(),
                    r.protocol
                ));
            }
            nft.push_str("    drop\n  }\n");
        }
    }
    nft.push_str("}\n");
    nft
}

/// What polices the cap on the Linux side.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policer {
    None,
    Tc,
    Nftables,
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

/// pps at each thread count, the scaling against the first, and the sink's split over
/// CPUs.
fn scaling_report(rows: &[ScalingRow]) {
    println!(
        "\nscaling: generator threads, each on its own CPU and TX queue of port A's peer; per-CPU split of the frames counted at the sink"
    );
    println!(
        "{:<34} {:>7} {:>9} {:>10} {:>7} {:>8} {:>8} {:>11} {:>11}",
        "CONFIGURATION",
        "THREADS",
        "PDP KPPS",
        "LINUX KPPS",
        "RATIO",
        "PDP xN",
        "LINUX xN",
        "PDP CPUS %",
        "LINUX CPUS %"
    );
    for r in rows {
        let base = rows
            .iter()
            .find(|b| b.label == r.label)
            .and_then(|b| b.result.as_ref().ok());
        match (&r.result, base) {
            (Ok((p, l)), Some((bp, bl))) => println!(
                "{:<34} {:>7} {:>9.1} {:>10.1} {:>6.2}x {:>7.2}x {:>7.2}x {:>11} {:>11}",
                r.label,
                r.threads,
                p.pps / 1e3,
                l.pps / 1e3,
                p.pps / l.pps,
                p.pps / bp.pps,
                l.pps / bl.pps,
                spread(&p.per_cpu),
                spread(&l.per_cpu)
            ),
            (Err(e), _) => println!("{:<34} {:>7} not run: {e}", r.label, r.threads),
            _ => println!("{:<34} {:>7} (no baseline)", r.label, r.threads),
        }
    }
}

fn scaling_json(rows: &[ScalingRow]) -> serde_json::Value {
    serde_json::json!(rows
        .iter()
        .map(|r| match &r.result {
            Ok((p, l)) => serde_json::json!({
                "configuration": r.label, "threads": r.threads,
                "pdp_pps": p.pps, "linux_pps": l.pps, "ratio": p.pps / l.pps,
                "pdp_sink_frames_per_cpu": p.per_cpu, "linux_sink_frames_per_cpu": l.per_cpu,
                "pdp_offered_pps": p.offered_pps, "linux_offered_pps": l.offered_pps,
            }),
            Err(e) =>
                serde_json::json!({"configuration": r.label, "threads": r.threads, "not_run": e}),
        })
        .collect::<Vec<_>>())
}

/// The table of both paths per configuration, and the headline ratios.
fn e2e_report(rows: &[Row], policers: &[&str]) {
    println!(
        "{:<46} {:>9} {:>10} {:>7}   {:>10} {:>12}   {:>17}",
        "CONFIGURATION",
        "PDP KPPS",
        "LINUX KPPS",
        "RATIO",
        "PDP Mbit/s",
        "LINUX Mbit/s",
        "OFFERED KPPS"
    );
    for r in rows {
        let Ok((pdp, linux)) = &r.result else {
            println!(
                "{:<46} not run: {}",
                r.config.label,
                r.result.as_ref().err().unwrap()
            );
            continue;
        };
        println!(
            "{:<46} {:>9.1} {:>10.1} {:>6.2}x   {:>10.1} {:>12.1}   {:>8.0} / {:>6.0}",
            r.config.label,
            pdp.pps / 1e3,
            linux.pps / 1e3,
            pdp.pps / linux.pps,
            pdp.bps / 1e6,
            linux.bps / 1e6,
            pdp.offered_pps / 1e3,
            linux.offered_pps / 1e3,
        );
    }
    let find = |label: &str| {
        rows.iter()
            .find(|r| r.config.label == label)
            .and_then(|r| r.result.as_ref().ok())
    };
    for label in [
        "10 routes",
        "10 routes, groups + 40-rule NACL",
        "1,000,000 routes, groups + 40-rule NACL",
    ] {
        if let Some((p, l)) = find(label) {
            println!(
                "ratio, {label}: {:.2}x ({:.0} vs {:.0} kpps)",
                p.pps / l.pps,
                p.pps / 1e3,
                l.pps / 1e3
            );
        }
    }
    if let Some(p) = policers.first() {
        println!("Linux cap: {p}");
    }
    for r in rows {
        let (Some(mbps), Ok((pdp, linux))) = (r.config.cap_mbps, &r.result) else {
            continue;
        };
        let over = |bps: f64| 100.0 * (bps / (mbps as f64 * 1e6) - 1.0);
        if linux.bps < mbps as f64 * 1e6 * 0.9 {
            continue; // not reached
        }
        println!(
            "cap {mbps} Mbit/s: this data plane delivered {:+.1} %, Linux {:+.1} % against it",
            over(pdp.bps),
            over(linux.bps)
        );
    }
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

/// Two panels: throughput vs routes, and vs ACL rules; one line per data plane.
fn write_svg(path: &Path, rows: &[Row]) -> Result<()> {
    let plain = |r: &&Row| !r.config.groups && r.config.cap_mbps.is_none() && r.result.is_ok();
    let routes: Vec<&Row> = rows
        .iter()
        .filter(|r| plain(r) && r.config.rules == 0)
        .collect();
    anyhow::ensure!(!routes.is_empty(), "no route row ran");
    let fig = |r: &Row| r.result.clone().unwrap();
    let mut rules: Vec<&Row> = vec![routes[0]];
    rules.extend(rows.iter().filter(|r| plain(r) && r.config.rules > 0));
    // The top of the y axis: the highest figure plus room for the legend, in 500s of kpps.
    let top = rows
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .flat_map(|(p, l)| [p.pps, l.pps])
        .fold(0.0, f64::max)
        * 1.15
        / 1e3;
    let ymax = (top / 500.0).ceil().max(1.0) * 500.0;
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"960\" height=\"420\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"960\" height=\"420\" fill=\"white\"/>\n",
    );
    let rp: Vec<(f64, f64, f64)> = routes
        .iter()
        .map(|r| {
            let (p, l) = fig(r);
            (r.config.routes as f64, p.pps / 1e3, l.pps / 1e3)
        })
        .collect();
    let ap: Vec<(f64, f64, f64)> = rules
        .iter()
        .map(|r| {
            let (p, l) = fig(r);
            (r.config.rules.max(1) as f64, p.pps / 1e3, l.pps / 1e3)
        })
        .collect();
    svg_panel(
        &mut svg,
        ymax,
        0.0,
        "Throughput vs routes (no ACL)",
        "routes in the sender's table",
        &rp,
    );
    svg_panel(
        &mut svg,
        ymax,
        480.0,
        "Throughput vs NACL rules (10 routes)",
        "egress NACL rules on /24s and port ranges (1 = none)",
        &ap,
    );
    svg.push_str("</svg>\n");
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// One panel of the plot at `x0`: axes up to `ymax` kpps, and both paths' series over
/// `pts` (x value, this data plane's kpps, Linux's kpps), x on a log scale.
fn svg_panel(
    svg: &mut String,
    ymax: f64,
    x0: f64,
    title: &str,
    xlabel: &str,
    pts: &[(f64, f64, f64)],
) {
    // pts: (x value, pdp kpps, linux kpps); x on a log scale.
    let (w, h, top, left) = (380.0, 300.0, 50.0, x0 + 60.0);
    let lx: Vec<f64> = pts.iter().map(|p| p.0.max(1.0).log10()).collect();
    let (xmin, xmax) = (
        lx.iter().cloned().fold(f64::MAX, f64::min),
        lx.iter().cloned().fold(f64::MIN, f64::max),
    );
    let sx = |v: f64| left + (v.max(1.0).log10() - xmin) / (xmax - xmin).max(1e-9) * w;
    let sy = |v: f64| top + h - v / ymax * h;
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"25\" font-size=\"14\" text-anchor=\"middle\">{title}</text>\n",
        left + w / 2.0
    ));
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        top + h, left + w, top + h, top + h
    ));
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}</text>\n<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/>\n",
            left - 6.0,
            sy(v) + 4.0,
            v,
            left + w,
            y = sy(v)
        ));
    }
    for p in pts {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            sx(p.0),
            top + h + 18.0,
            p.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{xlabel} (log scale)</text>\n<text x=\"{}\" y=\"{}\" transform=\"rotate(-90 {} {})\" text-anchor=\"middle\">kpps received</text>\n",
        left + w / 2.0,
        top + h + 40.0,
        x0 + 16.0,
        top + h / 2.0,
        x0 + 16.0,
        top + h / 2.0
    ));
    for (which, color, name) in [
        (1, "#1f77b4", "peer-dataplane (XDP)"),
        (2, "#d62728", "Linux (ip route + nftables)"),
    ] {
        let line: Vec<String> = pts
            .iter()
            .map(|p| {
                let y = if which == 1 { p.1 } else { p.2 };
                format!("{:.1},{:.1}", sx(p.0), sy(y))
            })
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            line.join(" ")
        ));
        for pt in &line {
            let (x, y) = pt.split_once(',').unwrap();
            svg.push_str(&format!(
                "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{color}\"/>\n"
            ));
        }
        let ly = top + 12.0 + 16.0 * (which as f64 - 1.0);
        svg.push_str(&format!(
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n",
            left + w - 210.0,
            ly - 4.0,
            left + w - 192.0,
            ly
        ));
    }
}
