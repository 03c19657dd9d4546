//! `cargo xtask bench sync`: how fast a control-plane change reaches the kernel maps.
//!
//! A real control plane and a real agent (`run --control-plane`) in a namespace, the seed
//! topology built through the API. Then:
//! 1. one route change, repeated: the clock starts before the API call and stops when the
//!    pinned routes trie answers with the new route (or without it), polled from here;
//! 2. a full sync of 100,000 routes: one bulk replacement of a route table, followed by
//!    the running agent; then a fresh agent syncing everything from scratch;
//! 3. kernel memory per route: the routes trie's `memlock` (fdinfo) with and without them.

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use peer_dataplane::bpf::KernelMaps;
use peer_dataplane::desired::compile::key_for;
use peer_dataplane_common::{map_names, ROUTE_BLACKHOLE};
use peer_dataplane_tests::controlplane::{free_port, revision_of, token_of, ControlPlane};
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
        let auth = format!("Bearer {}", token_of(ACCOUNT_A));
        let mut resp = match (method, body) {
            ("POST", Some(b)) => self
                .http
                .post(&url)
                .header("authorization", &auth)
                .send_json(b)?,
            ("PUT", Some(b)) => self
                .http
                .put(&url)
                .header("authorization", &auth)
                .send_json(b)?,
            ("DELETE", None) => self
                .http
                .delete(&url)
                .header("authorization", &auth)
                .call()?,
            _ => bail!("unsupported request {method} {path}"),
        };
        let revision = revision_of(&resp);
        let _ = resp.body_mut().read_to_string();
        Ok((resp.status().as_u16(), revision))
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
    let cp = ControlPlane::start(agent_bin, &ns, &dir.join("cp.db"), port)?;
    let revision = cp.seed(&[])?;
    let pin_dir = PathBuf::from("/sys/fs/bpf/pdp-bsync");
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let url = cp.url();
    let start_agent = |tag: &str| cp.start_agent(agent_bin, &ns, &dir, &pin_dir, tag);
    let mut agent = start_agent("agent")?;
    agent.wait_synced(revision, Duration::from_secs(10))?;

    let maps = KernelMaps::open(&pin_dir)?;
    // Single changes are made in place, so rtb-a keeps its trie key while they run.
    let table = peer_dataplane::agent::install::Installed::open(&pin_dir)?
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
    let client = Client {
        http: ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into(),
        base: url.clone(),
    };

    let lat = single_changes(&client, &present, &agent, changes)?;
    let bulk = bulk_replace(&client, &maps, &pin_dir, &mut agent)?;
    // ... and a fresh agent (no pins) syncing everything from scratch.
    drop(agent); // stops it and removes pins and links
    let t0 = Instant::now();
    let mut fresh = start_agent("fresh")?;
    fresh.wait_synced(bulk.revision, Duration::from_secs(120))?;
    let from_scratch = t0.elapsed();
    let scratch_apply = last_apply_ms(&fresh.log_text());
    drop(fresh);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    report(changes, &lat, &bulk, from_scratch, scratch_apply);
    Ok(())
}

/// One route change at a time: API call -> kernel map, each timed.
fn single_changes(
    client: &Client,
    present: &dyn Fn() -> Result<bool>,
    agent: &Agent,
    changes: usize,
) -> Result<Vec<Duration>> {
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
            eprint!("\r  route changes: {}/{changes}", i + 1);
            std::io::stderr().flush().ok();
        }
    }
    eprintln!();
    lat.sort();

    Ok(lat)
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
    lat: &[Duration],
    bulk: &Bulk,
    from_scratch: Duration,
    scratch_apply: f64,
) {
    let Bulk {
        api_time,
        incremental,
        incremental_apply,
        added,
        ..
    } = *bulk;
    println!("control plane -> data plane (real control plane and agent processes, loopback HTTP)");
    println!("{:<62} {:>10}", "MEASURE", "VALUE");
    println!(
        "{:<62} {:>7.3} ms",
        format!("one route change, API call -> map updated, p50 ({changes} changes)"),
        ms(percentile(&lat, 0.50))
    );
    println!(
        "{:<62} {:>7.3} ms",
        "one route change, API call -> map updated, p99",
        ms(percentile(&lat, 0.99))
    );
    println!(
        "{:<62} {:>7.3} ms",
        "one route change, API call -> map updated, max",
        ms(*lat.last().unwrap())
    );
    println!(
        "{:<62} {:>7.0} ms",
        format!(
            "bulk replace of {} routes: API call (validate + commit)",
            BULK + 2
        ),
        ms(api_time)
    );
    println!(
        "{:<62} {:>7.0} ms",
        "  ... API call -> running agent has them all",
        ms(incremental)
    );
    println!(
        "{:<62} {:>7.0} ms",
        "  ... of which the agent's validate + diff + map writes", incremental_apply
    );
    println!(
        "{:<62} {:>7.0} ms",
        "full sync from scratch: agent start -> all installed",
        ms(from_scratch)
    );
    println!(
        "{:<62} {:>7.0} ms",
        "  ... of which the agent's validate + diff + map writes", scratch_apply
    );
    println!(
        "{:<62} {:>7.1} B",
        format!("kernel memory per route (routes trie memlock, {added} routes)"),
        bulk.memory as f64 / added as f64
    );
}

/// The agent's own "applied in X ms" of its last sync.
fn last_apply_ms(log: &str) -> f64 {
    log.lines()
        .rev()
        .filter_map(|l| l.split("applied in ").nth(1))
        .find_map(|r| r.split(" ms").next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
