//! `cargo xtask bench sync`: how fast a control-plane change reaches the kernel maps.
//!
//! A real control plane and a real agent (`run --control-plane`) in a namespace, the seed
//! topology built through the API. Then:
//! 1. one route change, repeated: the clock starts before the API call and stops when the
//!    pinned routes trie answers with the new route (or without it), polled from here;
//! 2. a full sync of 100,000 routes: one bulk replacement of a route table, followed by
//!    the running agent;
//! 3. one route change again, in that 100,000-route table (the agent's delta path must
//!    not grow with the table);
//! 4. a fresh agent syncing everything from scratch;
//! 5. kernel memory per route: the routes trie's `memlock` (fdinfo) with and without them.
//!
//! Prints a table and writes `target/bench/sync.json`.

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use peer_dataplane::bpf::KernelMaps;
use peer_dataplane::desired::compile::key_for;
use peer_dataplane_common::{map_names, ROUTE_BLACKHOLE};
use peer_dataplane_tests::controlplane::{free_port, request, token_of, ControlPlane};
use peer_dataplane_tests::netns;
use peer_dataplane_tests::seed::{self, Agent};
use serde_json::{json, Value};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ACCOUNT_A: &str = "111111111111";
const PROBE: &str = "172.16.77.0/24";
const BULK: usize = 100_000;

fn memlock(pin_dir: &Path) -> Result<u64> {
    let map = aya::maps::MapData::from_pin(pin_dir.join(map_names::ROUTES))?;
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        map.fd().as_fd().as_raw_fd()
    ))?;
    let line = fdinfo
        .lines()
        .find(|l| l.starts_with("memlock:"))
        .context("no memlock in fdinfo")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("memlock value")?
        .parse()?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Client {
    http: ureq::Agent,
    base: String,
}

impl Client {
    /// (status, x-pdp-revision) of one request as account A.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, u64)> {
        let url = format!("{}{path}", self.base);
        let token = token_of(ACCOUNT_A);
        let r = request(&self.http, method, &url, Some(&token), body)?;
        Ok((r.status, r.revision))
    }
}

pub fn bench(agent_bin: &Path, changes: usize) -> Result<()> {
    let ns = seed::ports_only("pdp-bsync")?;
    // This thread joins the namespace: the control plane listens on its loopback.
    netns::enter(&ns.path())?;
    let dir = std::env::temp_dir().join("pdp-bsync");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port();
    let cp = ControlPlane::start_for_bench(agent_bin, &ns, &dir.join("cp.db"), port)?;
    let revision = cp.seed(&[])?;
    let pin_dir = PathBuf::from("/sys/fs/bpf/pdp-bsync");
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let url = cp.url();
    let start_agent = |tag: &str| cp.start_agent(agent_bin, &ns, &dir, &pin_dir, tag);
    let mut agent = start_agent("agent")?;
    agent.wait_synced(revision, Duration::from_secs(10))?;

    let maps = KernelMaps::open(&pin_dir)?;
    let client = Client {
        http: ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into(),
        base: url.clone(),
    };
    let small = single_changes(&client, &maps, &pin_dir, &agent, changes, "seed table")?;
    let bulk = bulk_replace(&client, &maps, &pin_dir, &mut agent)?;
    let large = single_changes(
        &client,
        &maps,
        &pin_dir,
        &agent,
        changes,
        "100,000-route table",
    )?;
    let large_apply = apply_times(&agent.log_text(), changes);
    let policy = policy_changes(&client, &mut agent, POLICY_CHANGES)?;
    // ... and a fresh agent (no pins) syncing everything from scratch.
    drop(agent); // stops it and removes pins and links
    let t0 = Instant::now();
    let mut fresh = start_agent("fresh")?;
    fresh.wait_synced(bulk.revision, Duration::from_secs(120))?;
    let from_scratch = t0.elapsed();
    let scratch_apply = last_apply_ms(&fresh.log_text());
    for l in fresh
        .log_text()
        .lines()
        .filter(|l| l.contains("whole document") || l.contains("ready") || l.contains("adopted"))
    {
        eprintln!("  fresh agent: {l}");
    }
    drop(fresh);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    report(
        changes,
        &small,
        &large,
        &large_apply,
        &policy,
        &bulk,
        from_scratch,
        scratch_apply,
    )
}

/// One route change at a time: API call -> kernel map, each timed. Single changes are
/// made in place, so rtb-a keeps its trie key while they run.
fn single_changes(
    client: &Client,
    maps: &KernelMaps,
    pin_dir: &Path,
    agent: &Agent,
    changes: usize,
    what: &str,
) -> Result<Vec<Duration>> {
    let table = peer_dataplane::agent::install::Installed::open(pin_dir)?
        .route_table_key("rtb-a")
        .context("rtb-a key")?;
    let probe: IpNet = PROBE.parse()?;
    let key = key_for(table, &probe);
    let present = || -> Result<bool> {
        Ok(maps
            .lookup_route(&key)?
            .map(|v| v.kind == ROUTE_BLACKHOLE)
            .unwrap_or(false))
    };
    // The map is polled with short sleeps: a timer slack of 1 ns (not the default 50 us)
    // keeps each sleep close to what was asked, so the poll sees the write when it lands.
    // SAFETY: a plain prctl on this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let mut lat = Vec::with_capacity(changes);
    let route = json!({"destination_cidr": PROBE, "target": "blackhole"});
    let path_add = "/v1/route-tables/rtb-a/routes".to_string();
    let path_del = format!("/v1/route-tables/rtb-a/routes/{PROBE}");
    for i in 0..changes {
        let add = i % 2 == 0;
        let t0 = Instant::now();
        let (status, _) = if add {
            client.call("POST", &path_add, Some(&route))?
        } else {
            client.call("DELETE", &path_del, None)?
        };
        if status / 100 != 2 {
            bail!("change {i}: HTTP {status}");
        }
        while present()? != add {
            if t0.elapsed() > Duration::from_secs(10) {
                bail!(
                    "change {i} did not reach the map within 10 s\n{}",
                    agent.log_text()
                );
            }
            // Sleep, don't spin: two cores are shared with the control plane and the agent.
            std::thread::sleep(Duration::from_micros(20));
        }
        lat.push(t0.elapsed());
        if i % 100 == 99 {
            eprint!("\r  route changes ({what}): {}/{changes}", i + 1);
            std::io::stderr().flush().ok();
        }
    }
    eprintln!();
    lat.sort();

    Ok(lat)
}

const POLICY_CHANGES: usize = 100;

/// A change that touches no route in the VPC of the 100,000-route table: a network ACL
/// created, then deleted, `n` times in all. Each is waited for; returns the agent's own
/// work for each (its "applied in"), sorted.
fn policy_changes(client: &Client, agent: &mut Agent, n: usize) -> Result<Vec<Duration>> {
    let acl = json!({"id": "acl-bench", "vpc_id": "vpc-a", "rules": [
        {"number": 10, "direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22,
         "cidr": "172.16.0.0/16", "action": "deny"}]});
    for i in 0..n {
        let (status, revision) = if i % 2 == 0 {
            client.call("POST", "/v1/network-acls", Some(&acl))?
        } else {
            client.call("DELETE", "/v1/network-acls/acl-bench", None)?
        };
        if status / 100 != 2 {
            bail!("network acl change {i}: HTTP {status}");
        }
        agent.wait_synced(revision, Duration::from_secs(10))?;
        if i % 20 == 19 {
            eprint!("\r  network acl changes: {}/{n}", i + 1);
            std::io::stderr().flush().ok();
        }
    }
    eprintln!();
    Ok(apply_times(&agent.log_text(), n))
}

/// What replacing a table with 100,000 routes cost.
struct Bulk {
    revision: u64,
    api_time: Duration,
    incremental: Duration,
    incremental_apply: f64,
    added: usize,
    memory: u64,
}

/// 100,000 routes in one table, followed by the running agent.
fn bulk_replace(
    client: &Client,
    maps: &KernelMaps,
    pin_dir: &Path,
    agent: &mut Agent,
) -> Result<Bulk> {
    let mem_before = memlock(pin_dir)?;
    let routes_before = maps.read_state()?.routes.len();
    let mut routes = vec![
        json!({"destination_cidr": "172.16.0.0/16", "target": "pcx-ab"}),
        json!({"destination_cidr": "fd00:b::/48", "target": "pcx-ab"}),
    ];
    for i in 0..BULK {
        let destination = if i % 2 == 0 {
            let k = i / 2 + 1;
            format!("172.16.{}.{}/32", (k >> 8) & 0xff, k & 0xff)
        } else {
            format!("fd00:b:0:{:x}::/64", i / 2 + 16)
        };
        routes.push(json!({"destination_cidr": destination, "target": "pcx-ab"}));
    }
    eprintln!(
        "  replacing rtb-a with {} routes through the API ...",
        routes.len()
    );
    let t0 = Instant::now();
    let (status, bulk_rev) = client.call(
        "PUT",
        "/v1/route-tables/rtb-a/routes",
        Some(&json!({"routes": routes})),
    )?;
    let api_time = t0.elapsed();
    if status != 200 {
        bail!("bulk replace: HTTP {status}");
    }
    agent.wait_synced(bulk_rev, Duration::from_secs(120))?;
    let incremental = t0.elapsed();
    let incremental_apply = last_apply_ms(&agent.log_text());
    let routes_after = maps.read_state()?.routes.len();
    let mem_after = memlock(pin_dir)?;
    let added = routes_after - routes_before;
    if added < BULK {
        bail!("only {added} routes reached the map");
    }

    Ok(Bulk {
        revision: bulk_rev,
        api_time,
        incremental,
        incremental_apply,
        added,
        memory: mem_after - mem_before,
    })
}

fn report(
    changes: usize,
    small: &[Duration],
    large: &[Duration],
    large_apply: &[Duration],
    policy: &[Duration],
    bulk: &Bulk,
    from_scratch: Duration,
    scratch_apply: f64,
) -> Result<()> {
    let env = crate::report::environment();
    crate::report::print_environment(&env);
    println!("control plane -> data plane (real control plane and agent processes, loopback HTTP)");
    println!("{:<66} {:>10}", "MEASURE", "VALUE");
    let line = |what: String, v: f64, unit: &str| println!("{what:<66} {v:>7.3} {unit}");
    for (name, lat) in [("seed table", small), ("100,000-route table", large)] {
        line(
            format!("one route change ({name}), API call -> map updated, p50"),
            ms(percentile(lat, 0.50)),
            "ms",
        );
        line(
            format!("  ... p99 ({changes} changes)"),
            ms(percentile(lat, 0.99)),
            "ms",
        );
        line("  ... max".into(), ms(*lat.last().unwrap()), "ms");
    }
    line(
        "  agent's work per change in the 100,000-route table, p50".into(),
        ms(percentile(large_apply, 0.50)),
        "ms",
    );
    line("  ... p99".into(), ms(percentile(large_apply, 0.99)), "ms");
    line(
        format!(
            "agent's work per network ACL change in that VPC, p50 ({} changes)",
            policy.len()
        ),
        ms(percentile(policy, 0.50)),
        "ms",
    );
    line("  ... p99".into(), ms(percentile(policy, 0.99)), "ms");
    line(
        format!(
            "bulk replace of {} routes: API call (validate + commit)",
            BULK + 2
        ),
        ms(bulk.api_time),
        "ms",
    );
    line(
        "  ... API call -> running agent has them all".into(),
        ms(bulk.incremental),
        "ms",
    );
    line(
        "  ... of which the agent's validate + diff + map writes".into(),
        bulk.incremental_apply,
        "ms",
    );
    line(
        "full sync from scratch: agent start -> all installed".into(),
        ms(from_scratch),
        "ms",
    );
    line(
        "  ... of which the agent's validate + diff + map writes".into(),
        scratch_apply,
        "ms",
    );
    line(
        format!(
            "kernel memory per route (routes trie memlock, {} routes)",
            bulk.added
        ),
        bulk.memory as f64 / bulk.added as f64,
        "B",
    );
    let pct = |lat: &[Duration]| json!({"p50_ms": ms(percentile(lat, 0.5)), "p99_ms": ms(percentile(lat, 0.99)), "max_ms": ms(*lat.last().unwrap())});
    let path = crate::report::write(
        "sync",
        &json!({
            "environment": env,
            "changes": changes,
            "route_change_seed_table": pct(small),
            "route_change_100k_table": pct(large),
            "agent_work_per_change_100k_table": pct(large_apply),
            "agent_work_per_acl_change_100k_vpc": pct(policy),
            "bulk_routes": BULK + 2,
            "bulk_api_ms": ms(bulk.api_time),
            "bulk_to_running_agent_ms": ms(bulk.incremental),
            "bulk_agent_apply_ms": bulk.incremental_apply,
            "full_sync_from_scratch_ms": ms(from_scratch),
            "full_sync_agent_apply_ms": scratch_apply,
            "kernel_bytes_per_route": bulk.memory as f64 / bulk.added as f64,
        }),
    )?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The agent's own "applied in X ms" of its last `n` syncs, sorted.
fn apply_times(log: &str, n: usize) -> Vec<Duration> {
    let mut v: Vec<Duration> = log
        .lines()
        .rev()
        .filter_map(|l| l.split("applied in ").nth(1))
        .filter_map(|r| r.split(" ms").next()?.parse::<f64>().ok())
        .take(n)
        .map(|m| Duration::from_secs_f64(m / 1e3))
        .collect();
    v.sort();
    v
}

/// The agent's own "applied in X ms" of its last sync.
fn last_apply_ms(log: &str) -> f64 {
    log.lines()
        .rev()
        .filter_map(|l| l.split("applied in ").nth(1))
        .find_map(|r| r.split(" ms").next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
