//! `cargo xtask bench fleet`: the control plane on a real 3-member etcd cluster, two
//! control-plane replicas (real processes), and N simulated agents (N = 200 by default):
//! each the agent's own sync code (`answer::take`, `Installed::install`) over in-memory
//! maps, long-polling a replica by delta over HTTP, one thread each. Everything runs in a
//! network namespace of its own, on loopback.
//!
//! Measured, as a table and `target/bench/fleet.json`:
//! - API call -> every affected agent applied: p50/p99/max over 200 changes of mixed kinds
//!   (route add/delete, peering request/accept/delete, network ACL create/delete), the
//!   affected hosts computed here independently (those with a port in a VPC the change
//!   touches);
//! - bytes on the wire and agent CPU per change per agent, in VPCs of 10 routes and in the
//!   VPC of a 100,000-route table;
//! - deliveries to agents whose host the change did not concern (must be 0), and changes
//!   an affected agent did not receive (must be 0);
//! - a full sync of one agent from scratch at 100,000 routes;
//! - API throughput (changes/s) from 8 clients over both replicas.
//!
//! At the end every agent's document must equal the whole document a replica serves.

use anyhow::{bail, Context, Result};
use peer_dataplane::agent::answer::{self, Taken};
use peer_dataplane::agent::install::Installed;
use peer_dataplane::agent::long_poll::{Change, StateResponse};
use peer_dataplane::desired::delta::Held;
use peer_dataplane::desired::document::Document;
use peer_dataplane::desired::{IfindexResolver, Topology};
use peer_dataplane::maps::MapState;
use peer_dataplane_tests::controlplane::canonical_document;
use peer_dataplane_tests::etcd::Etcd;
use peer_dataplane_tests::netns::{self, Netns};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "111111111111";
/// Set when the bench tears the fleet down: agents losing their replica then is expected.
static FINISHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const TOKEN: &str = "bench-fleet-account-token-0123456789";
/// Small VPCs, peered in pairs (0-1, 2-3, ...); each host has a port in one of them.
const SMALL: usize = 40;
const BIG_ROUTES: usize = 100_000;
/// Hosts with a port in the big VPC (and in its peer).
const BIG_HOSTS: [usize; 3] = [0, 1, 2];
const BIG_PEER_HOSTS: [usize; 3] = [3, 4, 5];

fn host(i: usize) -> String {
    format!("hv-{i:04}")
}

fn host_token(i: usize) -> String {
    format!("bench-fleet-host-token-{i:04}-0123456789")
}

fn small_vpc_of(host: usize) -> usize {
    host % SMALL
}

mod changes;
mod cluster;
mod report;
mod sim;

use changes::{hosts_of, plan, Outcome};
use cluster::{start_replica, Api};
use report::{report, Tally};
use sim::{run_agent, Delivery, SimAgent};

pub fn bench(agent_bin: &Path, agents: usize, changes: usize) -> Result<()> {
    let r = run(agent_bin, agents, changes);
    FINISHING.store(true, Ordering::Relaxed);
    r
}

/// Removes the bench's directory however the run ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(agent_bin: &Path, agents: usize, changes: usize) -> Result<()> {
    if agents < 6 {
        bail!("--agents must be at least 6 (the big VPC's hosts)");
    }
    let env = crate::report::environment();
    let ns = Netns::create(&format!("pdp-bfleet-{}", std::process::id()))?;
    netns::enter(&ns.path())?;
    let dir = std::env::temp_dir().join(format!("pdp-bfleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _scratch = Scratch(dir.clone());
    eprintln!("  etcd: 3 members ...");
    let etcd = Etcd::cluster_in(&ns, &dir.join("etcd"), 3)?;
    let url = etcd.url("/fleet");
    let ports = [
        peer_dataplane_tests::controlplane::free_port(),
        peer_dataplane_tests::controlplane::free_port(),
    ];
    let _replicas = [
        start_replica(agent_bin, &url, &dir, ports[0], agents)?,
        start_replica(agent_bin, &url, &dir, ports[1], agents)?,
    ];
    let api = Api {
        http: ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(120)))
            .http_status_as_error(false)
            .build()
            .into(),
        bases: ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
    };

    let tables = build_region(&api, agents)?;
    let (sims, first_sync) = start_agents(&api, &ns, agents)?;
    let outcomes = mixed_run(&api, &sims, &tables, agents, changes)?;
    let tally = Tally::of(&sims, &outcomes);
    check_documents(&api, &sims)?;
    let scratch = sync_from_scratch(&api, &ns, &outcomes)?;
    let throughput = throughput(&api, &ns, &tables)?;
    let (unnecessary, missing) = (tally.unnecessary, tally.missing);
    report(
        &env,
        agents,
        &outcomes,
        &first_sync,
        tally,
        scratch,
        throughput,
    )?;
    FINISHING.store(true, Ordering::Relaxed);
    drop(etcd);
    if unnecessary > 0 || missing > 0 {
        bail!("{unnecessary} unnecessary and {missing} missed deliveries");
    }
    Ok(())
}

/// The region: hosts registered, small VPCs peered in pairs with 10 routes a table, one
/// port per host; a big VPC with 100,000 routes to its peer. Returns each VPC's main
/// route table.
fn build_region(api: &Api, agents: usize) -> Result<BTreeMap<String, String>> {
    eprintln!(
        "  building the region: {agents} hosts, {SMALL} small VPCs, one of {BIG_ROUTES} routes ..."
    );
    for i in 0..agents {
        let body = json!({"underlay_ipv4": format!("10.250.{}.{}", i / 250, i % 250 + 1), "uplink": "eth0"});
        let (s, _, v) = api.call_as(
            i,
            &host_token(i),
            "PUT",
            &format!("/v1/hosts/{}", host(i)),
            Some(&body),
        )?;
        if s != 200 {
            bail!("registering {}: HTTP {s}: {v}", host(i));
        }
    }
    let mut tables = BTreeMap::new();
    for v in 0..SMALL {
        let (_, vpc) = api.ok(0, "POST", "/v1/vpcs", Some(&json!({"id": format!("vpc-s{v}"), "region": "eu-west-1", "cidrs": [format!("10.{v}.0.0/16")]})))?;
        tables.insert(
            format!("vpc-s{v}"),
            vpc["main_route_table"]
                .as_str()
                .context("table")?
                .to_string(),
        );
        api.ok(0, "POST", "/v1/subnets", Some(&json!({"id": format!("subnet-s{v}"), "vpc_id": format!("vpc-s{v}"), "cidr": format!("10.{v}.0.0/20")})))?;
    }
    for (name, cidr, subnet) in [
        ("vpc-big", "10.200.0.0/16", "10.200.1.0/24"),
        ("vpc-bigpeer", "172.16.0.0/12", "172.16.0.0/24"),
    ] {
        let (_, vpc) = api.ok(
            0,
            "POST",
            "/v1/vpcs",
            Some(&json!({"id": name, "region": "eu-west-1", "cidrs": [cidr]})),
        )?;
        tables.insert(
            name.to_string(),
            vpc["main_route_table"]
                .as_str()
                .context("table")?
                .to_string(),
        );
        api.ok(
            0,
            "POST",
            "/v1/subnets",
            Some(&json!({"id": format!("subnet-{name}"), "vpc_id": name, "cidr": subnet})),
        )?;
    }
    for i in 0..agents {
        let v = small_vpc_of(i);
        let port = json!({"id": format!("port-{i}"), "host": host(i), "interface": "p-small", "subnet_id": format!("subnet-s{v}"), "mac": format!("02:00:00:{:02x}:{:02x}:01", i / 256, i % 256), "ipv4": format!("10.{v}.{}.{}", 1 + i / 200, i % 200 + 10)});
        api.ok(i, "POST", "/v1/ports", Some(&port))?;
    }
    for (k, i) in BIG_HOSTS.iter().enumerate() {
        api.ok(0, "POST", "/v1/ports", Some(&json!({"id": format!("port-big-{i}"), "host": host(*i), "interface": "p-big", "subnet_id": "subnet-vpc-big", "mac": format!("02:00:00:ff:00:{k:02x}"), "ipv4": format!("10.200.1.{}", 10 + k)})))?;
    }
    for (k, i) in BIG_PEER_HOSTS.iter().enumerate() {
        api.ok(0, "POST", "/v1/ports", Some(&json!({"id": format!("port-bigpeer-{i}"), "host": host(*i), "interface": "p-bigpeer", "subnet_id": "subnet-vpc-bigpeer", "mac": format!("02:00:00:fe:00:{k:02x}"), "ipv4": format!("172.16.0.{}", 10 + k)})))?;
    }
    let mut pair_pcx = BTreeMap::new();
    for v in (0..SMALL).step_by(2) {
        let (_, p) = api.ok(0, "POST", "/v1/vpc-peering", Some(&json!({"requester_vpc_id": format!("vpc-s{v}"), "accepter_vpc_id": format!("vpc-s{}", v + 1), "auto_accept": true})))?;
        let pcx = p["id"].as_str().context("pcx")?.to_string();
        for (from, to) in [(v, v + 1), (v + 1, v)] {
            let mut routes =
                vec![json!({"destination_cidr": format!("10.{to}.0.0/16"), "target": pcx})];
            routes.extend((0..9).map(
                |k| json!({"destination_cidr": format!("100.64.{k}.0/24"), "target": "blackhole"}),
            ));
            api.ok(
                0,
                "PUT",
                &format!(
                    "/v1/route-tables/{}/routes",
                    tables[&format!("vpc-s{from}")]
                ),
                Some(&json!({"routes": routes})),
            )?;
        }
        pair_pcx.insert(v, pcx);
    }
    let (_, p) = api.ok(0, "POST", "/v1/vpc-peering", Some(&json!({"requester_vpc_id": "vpc-big", "accepter_vpc_id": "vpc-bigpeer", "auto_accept": true})))?;
    let big_pcx = p["id"].as_str().context("pcx")?.to_string();
    let routes: Vec<Value> = (0..BIG_ROUTES)
        .map(|i| json!({"destination_cidr": format!("172.{}.{}.{}/32", 16 + i / 65536, i / 256 % 256, i % 256), "target": big_pcx}))
        .collect();
    api.ok(
        0,
        "PUT",
        &format!("/v1/route-tables/{}/routes", tables["vpc-big"]),
        Some(&json!({"routes": routes})),
    )?;

    Ok(tables)
}

/// The simulated agents, alternating between the two replicas, each once synced; returns
/// them and what each first sync delivered.
fn start_agents(
    api: &Api,
    ns: &Netns,
    agents: usize,
) -> Result<(Vec<Arc<SimAgent>>, Vec<Delivery>)> {
    eprintln!("  starting {agents} simulated agents ...");
    let sims: Vec<Arc<SimAgent>> = (0..agents)
        .map(|_| {
            Arc::new(SimAgent {
                deliveries: Mutex::new(Vec::new()),
                applied: AtomicU64::new(0),
                desired: Mutex::new(None),
            })
        })
        .collect();
    for (i, sim) in sims.iter().enumerate() {
        let (base, sim) = (api.bases[i % 2].clone(), sim.clone());
        let ns_path = ns.path();
        std::thread::Builder::new()
            .name(format!("agent-{i}"))
            .stack_size(4 << 20)
            .spawn(move || {
                if let Err(e) = netns::enter(&ns_path).and_then(|()| run_agent(i, base, sim)) {
                    if !FINISHING.load(Ordering::Relaxed) {
                        eprintln!("\nsimulated agent {i} stopped: {e:#}");
                    }
                }
            })?;
    }
    let (current, _) = api.ok(0, "GET", "/v1/vpcs", None)?;
    wait_all(
        &sims,
        (0..agents).collect(),
        current,
        Duration::from_secs(300),
        "the first sync",
    )?;
    let first_sync: Vec<Delivery> = sims
        .iter()
        .map(|s| s.deliveries.lock().unwrap()[0].clone())
        .collect();
    for s in &sims {
        s.deliveries.lock().unwrap().clear();
    }

    Ok((sims, first_sync))
}

/// The mixed run: small VPCs, then the big one (bytes and CPU at 100,000 routes); each
/// change timed from the API call until every affected agent applied it.
fn mixed_run(
    api: &Api,
    sims: &[Arc<SimAgent>],
    tables: &BTreeMap<String, String>,
    agents: usize,
    changes: usize,
) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let mut pcx = None;
    let big_changes = 35;
    for n in 0..changes + big_changes {
        let big = n >= changes;
        // Each cycle of seven (see `plan`) works on one VPC and a partner it has never
        // been peered with. The big VPC's changes start a cycle of their own, whatever
        // `changes` is (else its first change could accept the small VPCs' request).
        let (i, cycle) = match big {
            true => (n - changes, changes.div_ceil(7) + (n - changes) / 7),
            false => (n, n / 7),
        };
        let (vpc, other) = if big {
            (
                "vpc-big".to_string(),
                format!("vpc-s{}", 2 * (cycle % (SMALL / 2))),
            )
        } else {
            let p = cycle % (SMALL / 2);
            let step = 2 + 2 * (cycle / (SMALL / 2));
            (
                format!("vpc-s{}", 2 * p + 1),
                format!("vpc-s{}", (2 * p + 1 + step - 1) % SMALL),
            )
        };
        let p = plan(i, &vpc, &tables[&vpc], &other, &mut pcx, cycle);
        let affected = hosts_of(&p.vpcs, agents);
        let t0 = Instant::now();
        let (revision, _) = api.ok(n, p.method, &p.path, p.body.as_ref())?;
        let latency = wait_all(
            &sims,
            affected.clone(),
            revision,
            Duration::from_secs(30),
            p.what,
        )?
        .duration_since(t0);
        outcomes.push(Outcome {
            what: p.what,
            big,
            revision,
            latency,
            affected,
        });
        if n % 20 == 19 {
            eprint!("\r  changes: {}/{}", n + 1, changes + big_changes);
            std::io::stderr().flush().ok();
        }
    }
    eprintln!();

    Ok(outcomes)
}

/// Fails unless every agent holds the document the replicas serve for its host.
fn check_documents(api: &Api, sims: &[Arc<SimAgent>]) -> Result<()> {
    for (i, s) in sims.iter().enumerate() {
        let (_, v) = {
            let (st, _, v) = api.call_as(
                i,
                &host_token(i),
                "GET",
                &format!("/v1/hosts/{}/state", host(i)),
                None,
            )?;
            (st, v)
        };
        let want: Document = serde_json::from_value(v["document"].clone())?;
        if i == 0 || i == 7 {
            if let Ok(dir) = std::env::var("PDP_DUMP") {
                std::fs::write(format!("{dir}/host-{i}.json"), serde_json::to_vec(&want)?)?;
            }
        }
        let held = s.desired.lock().unwrap();
        let (_, held) = held.as_ref().context("no document")?;
        if canonical_document(&held.doc) != canonical_document(&want) {
            bail!("agent {i}'s document differs from what the replicas serve");
        }
    }

    Ok(())
}

/// A fresh agent of a big host synced from scratch: (wall time, agent CPU, bytes).
fn sync_from_scratch(
    api: &Api,
    ns: &Netns,
    outcomes: &[Outcome],
) -> Result<(Duration, Duration, usize)> {
    eprintln!("  full sync of one agent from scratch at {BIG_ROUTES} routes ...");
    let scratch = Arc::new(SimAgent {
        deliveries: Mutex::new(Vec::new()),
        applied: AtomicU64::new(0),
        desired: Mutex::new(None),
    });
    let t0 = Instant::now();
    {
        let (base, sim, ns_path) = (api.bases[0].clone(), scratch.clone(), ns.path());
        std::thread::spawn(move || {
            let _ = netns::enter(&ns_path).and_then(|()| run_agent(BIG_HOSTS[0], base, sim));
        });
    }
    let last = outcomes.last().map_or(0, |o| o.revision);
    while scratch.applied.load(Ordering::Acquire) < last {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the fresh agent did not sync within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let scratch_wall = t0.elapsed();
    let scratch_cpu = scratch.deliveries.lock().unwrap()[0].cpu;
    let scratch_bytes = scratch.deliveries.lock().unwrap()[0].bytes;

    Ok((scratch_wall, scratch_cpu, scratch_bytes))
}

/// API changes per second: 8 clients, each adding and removing routes in its own table,
/// calls spread over both replicas.
fn throughput(api: &Api, ns: &Netns, tables: &BTreeMap<String, String>) -> Result<f64> {
    eprintln!("  API throughput: 8 clients over 2 replicas ...");
    let per_client = 100;
    let t0 = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|c| {
            let (bases, table, ns_path) = (
                api.bases.clone(),
                tables[&format!("vpc-s{}", 2 * c)].clone(),
                ns.path(),
            );
            std::thread::spawn(move || -> Result<()> {
                netns::enter(&ns_path)?;
                let api = Api {
                    http: ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .build()
                        .into(),
                    bases,
                };
                for k in 0..per_client {
                    let dest = format!("198.18.{c}.{k}/32");
                    if k % 2 == 0 {
                        api.ok(
                            k,
                            "POST",
                            &format!("/v1/route-tables/{table}/routes"),
                            Some(&json!({"destination_cidr": dest, "target": "blackhole"})),
                        )?;
                    } else {
                        let prev = format!("198.18.{c}.{}/32", k - 1);
                        api.ok(
                            k,
                            "DELETE",
                            &format!("/v1/route-tables/{table}/routes/{prev}"),
                            None,
                        )?;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    let throughput = (8 * per_client) as f64 / t0.elapsed().as_secs_f64();

    Ok(throughput)
}

/// Waits until every agent in `who` has applied `revision`; returns when the last did.
fn wait_all(
    sims: &[Arc<SimAgent>],
    who: BTreeSet<usize>,
    revision: u64,
    timeout: Duration,
    what: &str,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind = who
            .iter()
            .filter(|i| sims[**i].applied.load(Ordering::Acquire) < revision)
            .count();
        if behind == 0 {
            let last = who
                .iter()
                .filter_map(|i| {
                    sims[*i]
                        .deliveries
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|d| d.revision >= revision)
                        .map(|d| d.at)
                })
                .max()
                .unwrap_or_else(Instant::now);
            return Ok(last);
        }
        if Instant::now() > deadline {
            bail!("{what}: {behind} of {} affected agents did not apply revision {revision} within {timeout:?}", who.len());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
