//! `cargo xtask bench prog`: BPF_PROG_RUN cost per packet of the forwarding pipeline,
//! against a program that only redirects, measured in the same run; the whole job's rows,
//! single runs of conntrack's hit and miss, and the frames really forwarded.
//!
//! BPF_PROG_RUN repeats a program on the same buffer, so the pipeline's TTL decrement
//! accumulates across repeats. Packets therefore start at TTL 255 and each syscall runs a
//! batch of 250 repeats (the kernel reports the average in-kernel time of a batch, without
//! the syscall); the verdict of every batch is checked so that a different path (say
//! ttl-exceeded) can never be measured by mistake.

use super::*;

const BATCH: u32 = 250;

const ROUNDS: usize = 5;

/// Mean ns/packet over `total` runs of `program` on `packet`.
fn measure(
    dp: &TestDataplane,
    program: &str,
    ifindex: u32,
    packet: &[u8],
    total: u32,
) -> Result<f64> {
    let batches = (total / BATCH).max(1);
    let mut ns = 0u128;
    for _ in 0..batches {
        let out = dp.run_on(program, ifindex, packet, BATCH)?;
        if out.action != XDP_REDIRECT {
            bail!(
                "{program} returned {} instead of XDP_REDIRECT: not the path to measure",
                action_name(out.action)
            );
        }
        ns += out.duration.as_nanos();
    }
    Ok(ns as f64 / batches as f64)
}

/// Median over ROUNDS of the pipeline's ns/packet on `packet` from `ifindex`, with
/// progress under `label`.
fn pipeline_median(
    dp: &TestDataplane,
    label: &str,
    ifindex: u32,
    packet: &[u8],
    total: u32,
) -> Result<f64> {
    let mut v = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        eprint!("\r  {label}, round {}/{ROUNDS}", round + 1);
        v.push(measure(
            dp,
            program_names::PIPELINE,
            ifindex,
            packet,
            total,
        )?);
    }
    eprintln!();
    Ok(median(v))
}

/// Median in-kernel ns of single runs (no batching), run `i` on frame `packet(i)`; with
/// `second`, each frame is run once untimed first (the timed run is its flow's second
/// packet).
fn single_runs(
    dp: &mut TestDataplane,
    ifindex: u32,
    n: usize,
    second: bool,
    packet: impl Fn(usize) -> Vec<u8>,
) -> Result<f64> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let frame = packet(i);
        if second {
            dp.run_on(program_names::PIPELINE, ifindex, &frame, 1)?;
        }
        let out = dp.run_on(program_names::PIPELINE, ifindex, &frame, 1)?;
        if out.action != XDP_REDIRECT {
            bail!(
                "pipeline returned {}: not the path to measure",
                action_name(out.action)
            );
        }
        v.push(out.duration.as_nanos() as f64);
    }
    Ok(median(v))
}

pub(super) fn bench(args: &Args) -> Result<()> {
    let object = args.object.as_deref().context("prog needs --object PATH")?;
    let ns = seed::ports_only("pdp-bench")?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load_from(object)?;
    let (a_if, b_if) = (netns::ifindex(A.port), netns::ifindex(B.port));
    let l2 = L2 {
        src: A.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let v4 = packets::udp4(l2, A.ipv4, B.ipv4, 255, 40000, 7000, &[0u8; 18]);
    let v6 = packets::udp6(l2, A.ipv6, B.ipv6, 255, 40000, 7000, &[0u8; 18]);
    let baseline_frame = packets::forwarded(&v4, B.mac, ROUTER_MAC);

    dp.keep_in_dispatcher(program_names::PIPELINE, "pdp-c")?;
    dp.keep_in_dispatcher(program_names::REDIRECT_ONLY, "pdp-c-peer")?;
    // Live frames (see `live`): the generator in front, the sink behind port B.
    dp.keep_in_dispatcher(program_names::LOADGEN, "pdp-a-peer")?;
    dp.keep_in_dispatcher(program_names::SINK, "pdp-b-peer")?;
    println!(
        "BPF_PROG_RUN, {} runs per figure in batches of {BATCH}, median of {ROUNDS} rounds; {}-byte IPv4 / {}-byte IPv6 UDP frames",
        args.repeat,
        v4.len(),
        v6.len()
    );
    println!(
        "each pipeline row repeats one flow: from its third run on (its second keeps it), the flow's kept decision forwards it (docs/datapath.md §4.19)"
    );
    let f = Frames {
        a_if,
        b_if,
        v4,
        v6,
        baseline_frame,
    };
    let env = report::environment();
    report::print_environment(&env);
    let mut rows = route_rows(&mut dp, args, &f)?;
    rows.extend(acl_rows(&mut dp, args, &f)?);
    let (hit, singles) = sg_rows(&mut dp, args, &f)?;
    rows.extend(hit);
    rows.extend(whole_pipeline_rows(&mut dp, args, &f)?);
    rows.extend(job_rows(&mut dp, args, &f)?);
    // The rows below need more of the kernel than BPF_PROG_RUN: one that cannot run is
    // reported as such and the others still print.
    let live = gen::BenchGen::choose(args.generator, A.port).and_then(|mut g| {
        eprintln!("frames really forwarded: generator {}", g.label());
        live::measure(&mut dp, &job_doc(100_000, 40), &mut g)
    });
    drop(dp);
    let runs = (args.repeat as usize / 50).max(20_000);
    let o = overlay::measure(object, runs);
    prog_report(&rows, singles);
    match &live {
        Ok(live) => live::report(live),
        Err(e) => println!("\nframes really forwarded: not run: {e:#}"),
    }
    match &o {
        Ok(o) => overlay_report(o, runs),
        Err(e) => println!("\noverlay: not run: {e:#}"),
    }
    let path = report::write(
        "prog",
        &serde_json::json!({
            "environment": env,
            "runs_per_figure": args.repeat,
            "rows": rows.iter().map(|(name, ns)| serde_json::json!({
                "name": name, "ns_per_packet": ns, "ratio_to_baseline": ns / rows[0].1,
            })).collect::<Vec<_>>(),
            "conntrack_single_runs_ns": {"hit": singles.hit, "miss": singles.miss, "miss_without_kept_decisions": singles.miss_uncached, "second_packet_keeps": singles.keeps, "second_packet_without_kept_decisions": singles.second_uncached},
            "forwarded_frames": match &live {
                Ok(live) => live.json(),
                Err(e) => serde_json::json!({"not_run": format!("{e:#}")}),
            },
            "overlay_single_runs": match &o {
                Ok(o) => serde_json::json!({
                    "runs": runs,
                    "redirect_only_ns": o.baseline,
                    "same_host_ns": o.same_host,
                    "encap_ns": o.encap,
                    "decap_ns": o.decap,
                    "encap_over_same_host": o.encap / o.same_host,
                    "decap_over_same_host": o.decap / o.same_host,
                }),
                Err(e) => serde_json::json!({"not_run": format!("{e:#}")}),
            },
        }),
    )?;
    println!("figures written to {}", path.display());
    Ok(())
}

/// The overlay's rows: each path against the same-host pipeline.
fn overlay_report(o: &overlay::Figures, runs: usize) {
    println!(
        "\noverlay, host 1 of the fleet seed: whole pipeline on each path (kept decisions off), single runs, median of {runs} each"
    );
    println!("{:<48} {:>10} {:>8}", "PATH", "NS/PACKET", "VS (g)");
    for (name, ns) in [
        ("(a') redirect only (single runs)", o.baseline),
        ("(g) same host, A -> B2 (direct)", o.same_host),
        ("(h) sender, A -> B on host 2 (encap)", o.encap),
        ("(i) receiver, B -> A from host 2 (decap)", o.decap),
    ] {
        println!("{name:<48} {ns:>10.1} {:>7.2}x", ns / o.same_host);
    }
    let net = |x: f64| (x - o.baseline) / (o.same_host - o.baseline);
    println!(
        "h/g (encap vs same host) = {:.2}   i/g (decap vs same host) = {:.2}   without the timed run's fixed cost (a'): {:.2} and {:.2}",
        o.encap / o.same_host,
        o.decap / o.same_host,
        net(o.encap),
        net(o.decap)
    );
}

/// The frames and ports every figure of `bench prog` runs.
struct Frames {
    a_if: u32,
    b_if: u32,
    v4: Vec<u8>,
    v6: Vec<u8>,
    baseline_frame: Vec<u8>,
}

/// (a) the baseline, (b) and (c) the pipeline with 10 and 100,000 routes, both families.
fn route_rows(dp: &mut TestDataplane, args: &Args, f: &Frames) -> Result<Vec<(String, f64)>> {
    let Frames {
        a_if,
        b_if,
        v4,
        v6,
        baseline_frame,
    } = f;
    let (a_if, b_if) = (*a_if, *b_if);
    let mut rows: Vec<(String, f64)> = Vec::new();
    for (label, routes) in [("10 routes", 10usize), ("100,000 routes", 100_000)] {
        eprint!("installing {label} ... ");
        let t = std::time::Instant::now();
        let writes = dp.install(&doc_with_routes(routes))?;
        eprintln!("{writes} map writes in {:.2} s", t.elapsed().as_secs_f64());
        let (mut base, mut p4, mut p6) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            eprint!("\r  round {}/{ROUNDS}", round + 1);
            std::io::stderr().flush().ok();
            // Interleaved so that drift on a shared machine hits all three alike.
            base.push(measure(
                dp,
                program_names::REDIRECT_ONLY,
                b_if,
                baseline_frame,
                args.repeat,
            )?);
            p4.push(measure(dp, program_names::PIPELINE, a_if, v4, args.repeat)?);
            p6.push(measure(dp, program_names::PIPELINE, a_if, v6, args.repeat)?);
        }
        eprintln!();
        if rows.is_empty() {
            rows.push(("(a) redirect only (baseline)".into(), median(base)));
        }
        let tag = if routes == 10 { "b" } else { "c" };
        rows.push((format!("({tag}) pipeline, {label}, IPv4"), median(p4)));
        rows.push((format!("({tag}) pipeline, {label}, IPv6"), median(p6)));
    }

    Ok(rows)
}

/// Network ACL cost: the 10-route pipeline with an egress ACL of 10 or 1,000 rules on A's
/// subnet. The deciding rule (allow all) is the last one: a rule scan's worst case.
fn acl_rows(dp: &mut TestDataplane, args: &Args, f: &Frames) -> Result<Vec<(String, f64)>> {
    let mut rows = Vec::new();
    let mut acl_ns = Vec::new();
    for (rules, prefixes) in [(10usize, false), (1000, false), (1000, true)] {
        let mut doc = doc_with_routes(10);
        add_egress_acl(&mut doc, rules, prefixes);
        dp.install(&doc)?;
        acl_ns.push(pipeline_median(
            dp,
            &format!("{rules} ACL rules"),
            f.a_if,
            &f.v4,
            args.repeat,
        )?);
    }
    rows.push((
        "(d) pipeline, 10 routes, 10 ACL rules, IPv4".into(),
        acl_ns[0],
    ));
    rows.push((
        "(e) pipeline, 10 routes, 1,000 ACL rules, IPv4".into(),
        acl_ns[1],
    ));
    rows.push((
        "(e') same, rules on /24s and port ranges, IPv4".into(),
        acl_ns[2],
    ));

    Ok(rows)
}

/// Security groups: a packet of a tracked flow (conntrack hit) against one that is not
/// (miss: both lookups fail, both ports' rules are evaluated, the flow is created). A miss
/// cannot be repeated in a batch (the first run creates the entry), so both are also timed
/// as single runs: the hits on one flow, each miss the first packet of a flow of its own
/// (another source port). Not a flush before each miss: emptying a 262,144-bucket table
/// from userspace evicts the CPU's caches, and the run after it measured that (1.4 us).
fn sg_rows(
    dp: &mut TestDataplane,
    args: &Args,
    f: &Frames,
) -> Result<(Vec<(String, f64)>, Singles)> {
    let (a_if, v4) = (f.a_if, &f.v4);
    let mut doc = doc_with_routes(10);
    add_security_groups(&mut doc);
    dp.install(&doc)?;
    let hit = pipeline_median(dp, "security groups, conntrack hit", a_if, v4, args.repeat)?;
    // The same flow's replies: found under the reversed key.
    let from_b = L2 {
        src: B.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let reply = packets::udp4(from_b, B.ipv4, A.ipv4, 255, 7000, 40000, &[0u8; 18]);
    let replies = pipeline_median(dp, "security groups, replies", f.b_if, &reply, args.repeat)?;
    let singles = (args.repeat as usize / 50).clamp(1000, 20_000);
    eprintln!("  {singles} single runs each: conntrack hit, then miss (a new flow each)");
    let hit_single = single_runs(dp, a_if, singles, false, |_| v4.clone())?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;
    let l2 = L2 {
        src: A.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let miss_single = single_runs(dp, a_if, singles, false, |i| {
        // Source ports 1024.. : none of them is the hit flow's 40000 (singles <= 20,000).
        packets::udp4(l2, A.ipv4, B.ipv4, 255, 1024 + i as u16, 7000, &[0u8; 18])
    })?;
    let tracked = dp.installed.maps.conntrack_flush(|_, _| true)?;
    if tracked < singles {
        bail!("{singles} new flows left {tracked} conntrack entries: not every run was a miss");
    }
    // The same without kept decisions: what looking a flow up and marking it seen adds
    // to its first packet.
    dp.installed.maps.set_flow_cache(false)?;
    let miss_uncached = single_runs(dp, a_if, singles, false, |i| {
        packets::udp4(l2, A.ipv4, B.ipv4, 255, 1024 + i as u16, 7000, &[0u8; 18])
    });
    dp.installed.maps.set_flow_cache(true)?;
    let miss_uncached = miss_uncached?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;
    // A flow's second packet: the whole pipeline again (a conntrack hit now), and the
    // write of the slot that keeps its decision. Flows not seen before: source ports
    // from 41,000 on (none is 40000, and none was used above).
    eprintln!("  {singles} single runs each: the second packet of a new flow (keeps its decision), then without kept decisions");
    let second =
        |i: usize| packets::udp4(l2, A.ipv4, B.ipv4, 255, 41_000 + i as u16, 7000, &[0u8; 18]);
    let keeps = single_runs(dp, a_if, singles, true, second)?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;
    // The same flows' second packets again (new flows to conntrack after the flush)
    // without kept decisions: what keeping adds.
    dp.installed.maps.set_flow_cache(false)?;
    let second_uncached = single_runs(dp, a_if, singles, true, second);
    dp.installed.maps.set_flow_cache(true)?;
    let second_uncached = second_uncached?;
    dp.installed.maps.conntrack_flush(|_, _| true)?;

    Ok((
        vec![
            ("(f) pipeline + security groups, conntrack hit".into(), hit),
            ("(f') same, the flow's replies (B -> A)".into(), replies),
        ],
        Singles {
            hit: hit_single,
            miss: miss_single,
            miss_uncached,
            keeps,
            second_uncached,
        },
    ))
}

/// Conntrack hit and miss timed as single runs, ns; the miss also without kept decisions.
#[derive(Clone, Copy)]
struct Singles {
    hit: f64,
    miss: f64,
    miss_uncached: f64,
    /// A new flow's second packet, which keeps its decision.
    keeps: f64,
    /// The same without kept decisions.
    second_uncached: f64,
}

/// The whole job on one flow, kept decision and whole pipeline: (t) 100,000 routes, a
/// 40-rule egress NACL on /24s and port ranges, security groups on both ports (a tracked
/// flow), a cap; then growth: (u) 10 routes and a 10-rule NACL, (v) 1,000,000 routes and
/// a 1,000-rule NACL, the rest as (t).
fn job_rows(dp: &mut TestDataplane, args: &Args, f: &Frames) -> Result<Vec<(String, f64)>> {
    let job = job_doc;
    let mut rows = Vec::new();
    for (tag, label, routes, rules) in [
        (
            "t",
            "100,000 routes, 40 NACL rules, groups, cap",
            100_000,
            40,
        ),
        ("u", "10 routes, 10 NACL rules, groups, cap", 10, 10),
        (
            "v",
            "1,000,000 routes, 1,000 NACL rules, groups, cap",
            1_000_000,
            1000,
        ),
    ] {
        eprint!("installing ({tag}) {label} ... ");
        let t = std::time::Instant::now();
        let writes = dp.install(&job(routes, rules))?;
        eprintln!("{writes} map writes in {:.2} s", t.elapsed().as_secs_f64());
        dp.installed.maps.conntrack_flush(|_, _| true)?;
        let kept = pipeline_median(dp, &format!("({tag})"), f.a_if, &f.v4, args.repeat)?;
        dp.installed.maps.set_flow_cache(false)?;
        let whole = pipeline_median(dp, &format!("({tag}-)"), f.a_if, &f.v4, args.repeat);
        dp.installed.maps.set_flow_cache(true)?;
        rows.push((format!("({tag}) {label}"), kept));
        rows.push((format!("({tag}-) same, whole pipeline"), whole?));
    }
    // Plain 1,000,000-route rows, as (c) and (c-).
    eprint!("installing 1,000,000 routes ... ");
    let t = std::time::Instant::now();
    let writes = dp.install(&doc_with_routes(1_000_000))?;
    eprintln!("{writes} map writes in {:.2} s", t.elapsed().as_secs_f64());
    let kept = pipeline_median(dp, "(w)", f.a_if, &f.v4, args.repeat)?;
    dp.installed.maps.set_flow_cache(false)?;
    let whole = pipeline_median(dp, "(w-)", f.a_if, &f.v4, args.repeat);
    dp.installed.maps.set_flow_cache(true)?;
    rows.push(("(w) pipeline, 1,000,000 routes, IPv4".into(), kept));
    rows.push(("(w-) same, whole pipeline".into(), whole?));
    Ok(rows)
}

/// Rows (b), (c), (e') and (f) again with kept flow decisions turned off: every run goes
/// through the whole pipeline, as a flow's first packet does (less keeping its decision).
fn whole_pipeline_rows(
    dp: &mut TestDataplane,
    args: &Args,
    f: &Frames,
) -> Result<Vec<(String, f64)>> {
    let mut docs: Vec<(&str, Document)> = Vec::new();
    docs.push(("(b-) whole pipeline, 10 routes, IPv4", doc_with_routes(10)));
    docs.push((
        "(c-) whole pipeline, 100,000 routes, IPv4",
        doc_with_routes(100_000),
    ));
    let mut acl = doc_with_routes(10);
    add_egress_acl(&mut acl, 1000, true);
    docs.push(("(e'-) whole pipeline, 1,000 /24 and range rules", acl));
    let mut sg = doc_with_routes(10);
    add_security_groups(&mut sg);
    docs.push(("(f-) whole pipeline + security groups, tracked", sg));
    dp.installed.maps.set_flow_cache(false)?;
    let mut rows = Vec::new();
    for (label, doc) in docs {
        dp.install(&doc)?;
        rows.push((
            label.to_string(),
            pipeline_median(dp, label, f.a_if, &f.v4, args.repeat)?,
        ));
    }
    dp.installed.maps.set_flow_cache(true)?;
    Ok(rows)
}

/// The table of figures and their ratios.
fn prog_report(rows: &[(String, f64)], singles: Singles) {
    let Singles {
        hit: hit_single,
        miss: miss_single,
        miss_uncached,
        keeps,
        second_uncached,
    } = singles;
    let base = rows[0].1;
    println!("{:<48} {:>10} {:>8}", "PROGRAM", "NS/PACKET", "RATIO");
    for (name, ns) in rows {
        println!("{name:<48} {ns:>10.1} {:>7.2}x", ns / base);
    }
    // Each row by its tag (the IPv4 one where there are two).
    let row = |tag: &str| {
        rows.iter()
            .find(|(name, _)| name.starts_with(tag))
            .map(|r| r.1)
            .unwrap_or(f64::NAN)
    };
    let (b4, c4, d4, e4, e4p, f) = (
        row("(b) "),
        row("(c) "),
        row("(d) "),
        row("(e) "),
        row("(e') "),
        row("(f) "),
    );
    println!(
        "e/d (1,000 vs 10 ACL rules) = {:.2}   e'/d = {:.2}   d/b (cost of a 10-rule ACL) = {:.2}",
        e4 / d4,
        e4p / d4,
        d4 / b4
    );
    println!(
        "b/a (IPv4) = {:.2}   c/a (IPv4) = {:.2}   c/b (IPv4) = {:.2}",
        b4 / base,
        c4 / base,
        c4 / b4
    );
    println!(
        "f/b (security groups, tracked flow) = {:.2}   f'/f (its replies) = {:.2}",
        f / b4,
        row("(f') ") / f
    );
    println!(
        "kept decision vs whole pipeline: b {:.2}   c {:.2}   e' {:.2}   f {:.2}",
        b4 / row("(b-)"),
        c4 / row("(c-)"),
        e4p / row("(e'-)"),
        f / row("(f-)")
    );
    println!(
        "the whole job, kept decision: t/a = {:.2}   (whole pipeline: t-/a = {:.2})",
        row("(t) ") / base,
        row("(t-)") / base
    );
    println!(
        "growth, kept decision: v/u (1M routes + 1,000 rules vs 10 + 10) = {:.2}   w/b (1M vs 10 routes) = {:.2}   whole pipeline: v-/u- = {:.2}   w-/b- = {:.2}",
        row("(v) ") / row("(u) "),
        row("(w) ") / b4,
        row("(v-)") / row("(u-)"),
        row("(w-)") / row("(b-)")
    );
    println!(
        "single runs: conntrack hit {hit_single:.0} ns, miss {miss_single:.0} ns: miss/hit = {:.2}; \
         miss without kept decisions {miss_uncached:.0} ns (looking the flow up and marking it seen: {:+.0} ns); \
         the flow's second packet, which keeps its decision, {keeps:.0} ns, without kept decisions {second_uncached:.0} ns ({:+.0} ns)",
        miss_single / hit_single,
        miss_single - miss_uncached,
        keeps - second_uncached
    );
}
