//! What the agents received, tallied, and the figures printed and written.

use super::*;

pub(super) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// What the agents received: every delivery should belong to a change that concerned
/// its host, and every change should reach every host it concerned.
pub(super) struct Tally {
    pub(super) unnecessary: usize,
    pub(super) missing: usize,
    pub(super) wholes: usize,
    /// The big VPC's deliveries: (agent CPU, agent, change).
    pub(super) slowest: Vec<(Duration, usize, &'static str)>,
    /// (bytes, agent CPU ms) per delivery, small VPCs' changes and the big VPC's.
    pub(super) small_cost: (Vec<f64>, Vec<f64>),
    pub(super) big_cost: (Vec<f64>, Vec<f64>),
}

impl Tally {
    pub(super) fn of(sims: &[Arc<SimAgent>], outcomes: &[Outcome]) -> Tally {
        let by_revision: BTreeMap<u64, &Outcome> =
            outcomes.iter().map(|o| (o.revision, o)).collect();
        let mut unnecessary = 0;
        let mut missing = 0;
        let mut wholes = 0;
        let mut slowest = Vec::new();
        let mut small_cost = (Vec::new(), Vec::new());
        let mut big_cost = (Vec::new(), Vec::new());
        for (i, s) in sims.iter().enumerate() {
            let got = s.deliveries.lock().unwrap().clone();
            for d in &got {
                wholes += usize::from(d.whole);
                match by_revision.get(&d.revision) {
                    Some(o) if o.affected.contains(&i) => {
                        if o.big {
                            slowest.push((d.cpu, i, o.what));
                        }
                        let c = if o.big {
                            &mut big_cost
                        } else {
                            &mut small_cost
                        };
                        c.0.push(d.bytes as f64);
                        c.1.push(d.cpu.as_secs_f64() * 1e3);
                    }
                    _ => unnecessary += 1,
                }
            }
            let revs: BTreeSet<u64> = got.iter().map(|d| d.revision).collect();
            missing += outcomes
                .iter()
                .filter(|o| o.affected.contains(&i) && !revs.contains(&o.revision))
                .count();
        }

        Tally {
            unnecessary,
            missing,
            wholes,
            slowest,
            small_cost,
            big_cost,
        }
    }
}

/// Prints the figures and writes them to `target/bench/fleet.json`.
pub(super) fn report(
    env: &Value,
    agents: usize,
    outcomes: &[Outcome],
    first_sync: &[Delivery],
    tally: Tally,
    (scratch_wall, scratch_cpu, scratch_bytes): (Duration, Duration, usize),
    throughput: f64,
) -> Result<()> {
    let Tally {
        unnecessary,
        missing,
        wholes,
        mut slowest,
        small_cost,
        big_cost,
    } = tally;
    let mut lat: Vec<f64> = outcomes
        .iter()
        .filter(|o| !o.big)
        .map(|o| o.latency.as_secs_f64() * 1e3)
        .collect();
    let (p50, p99, max) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99), pct(&mut lat, 1.0));
    let mut by_kind: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| !o.big) {
        by_kind
            .entry(o.what)
            .or_default()
            .push(o.latency.as_secs_f64() * 1e3);
    }
    let mut first_bytes: Vec<f64> = first_sync.iter().map(|d| d.bytes as f64).collect();
    crate::report::print_environment(&env);
    println!("fleet: 3 etcd members, 2 control-plane replicas, {agents} simulated agents (the agent's sync code over memory), loopback HTTP");
    println!("{:<70} {:>12}", "MEASURE", "VALUE");
    let line = |what: String, v: String| println!("{what:<70} {v:>12}");
    line(
        format!(
            "API call -> all affected agents applied, p50 ({} changes)",
            lat.len()
        ),
        format!("{p50:.1} ms"),
    );
    line("  ... p99".into(), format!("{p99:.1} ms"));
    line("  ... max".into(), format!("{max:.1} ms"));
    for (k, v) in &mut by_kind {
        line(format!("  ... {k}, p50"), format!("{:.1} ms", pct(v, 0.5)));
    }
    let (mut sb, mut sc) = small_cost;
    let (mut bb, mut bc) = big_cost;
    line(
        format!(
            "bytes per change per agent, 10-route VPCs, p50 ({} deliveries)",
            sb.len()
        ),
        format!("{:.0} B", pct(&mut sb, 0.5)),
    );
    line("  ... max".into(), format!("{:.0} B", pct(&mut sb, 1.0)));
    line(
        "agent CPU per change per agent, 10-route VPCs, p50".into(),
        format!("{:.3} ms", pct(&mut sc, 0.5)),
    );
    line("  ... p99".into(), format!("{:.3} ms", pct(&mut sc, 0.99)));
    line(
        format!(
            "bytes per change per agent, 100,000-route VPC, p50 ({} deliveries)",
            bb.len()
        ),
        format!("{:.0} B", pct(&mut bb, 0.5)),
    );
    line("  ... max".into(), format!("{:.0} B", pct(&mut bb, 1.0)));
    line(
        "agent CPU per change per agent, 100,000-route VPC, p50".into(),
        format!("{:.3} ms", pct(&mut bc, 0.5)),
    );
    line("  ... p99".into(), format!("{:.3} ms", pct(&mut bc, 0.99)));
    line("  ... max".into(), format!("{:.3} ms", pct(&mut bc, 1.0)));
    slowest.sort();
    for (cpu, agent, what) in slowest.iter().rev().take(3) {
        let whose = if BIG_HOSTS.contains(agent) {
            "holds the 100,000 routes"
        } else {
            "a peer's host"
        };
        line(
            format!("  ... slowest: agent {agent} ({whose}), {what}"),
            format!("{:.3} ms", cpu.as_secs_f64() * 1e3),
        );
    }
    line(
        "deliveries to agents the change did not concern".into(),
        unnecessary.to_string(),
    );
    line(
        "changes an affected agent did not receive".into(),
        missing.to_string(),
    );
    line(
        format!("first sync: whole document per agent, p50 of {agents}"),
        format!("{:.0} B", pct(&mut first_bytes, 0.5)),
    );
    line(
        format!("full sync of one agent from scratch, {BIG_ROUTES} routes: wall"),
        format!("{:.0} ms", scratch_wall.as_secs_f64() * 1e3),
    );
    line(
        "  ... agent CPU (parse, validate, compile, plan, apply)".into(),
        format!("{:.0} ms", scratch_cpu.as_secs_f64() * 1e3),
    );
    line(
        "  ... bytes".into(),
        format!("{:.1} MB", scratch_bytes as f64 / 1e6),
    );
    line(
        "API throughput, 8 clients over 2 replicas".into(),
        format!("{throughput:.0} /s"),
    );
    let path = crate::report::write(
        "fleet",
        &json!({
            "environment": env,
            "agents": agents,
            "changes": lat.len(),
            "api_to_all_affected_applied_ms": {"p50": p50, "p99": p99, "max": max},
            "by_kind_p50_ms": by_kind.iter_mut().map(|(k, v)| (k.to_string(), pct(v, 0.5))).collect::<BTreeMap<_, _>>(),
            "bytes_per_change_per_agent_10_routes": {"p50": pct(&mut sb, 0.5), "max": pct(&mut sb, 1.0)},
            "agent_cpu_ms_per_change_per_agent_10_routes": {"p50": pct(&mut sc, 0.5), "p99": pct(&mut sc, 0.99)},
            "bytes_per_change_per_agent_100k_routes": {"p50": pct(&mut bb, 0.5), "max": pct(&mut bb, 1.0)},
            "agent_cpu_ms_per_change_per_agent_100k_routes": {"p50": pct(&mut bc, 0.5), "p99": pct(&mut bc, 0.99), "max": pct(&mut bc, 1.0)},
            "unnecessary_deliveries": unnecessary,
            "missed_deliveries": missing,
            "whole_documents_after_first_sync": wholes,
            "full_sync_from_scratch_100k": {"wall_ms": scratch_wall.as_secs_f64() * 1e3, "agent_cpu_ms": scratch_cpu.as_secs_f64() * 1e3, "bytes": scratch_bytes},
            "api_throughput_per_s": throughput,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}
