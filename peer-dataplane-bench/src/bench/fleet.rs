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

/// Every interface an agent is told of resolves (there is no kernel here).
struct AnyIfindex;

impl IfindexResolver for AnyIfindex {
    fn ifindex(&self, name: &str) -> Option<u32> {
        Some(
            10 + name
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % 100_000,
        )
    }

    fn mtu(&self, _: &str) -> Option<u32> {
        Some(1600)
    }
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The HTTP side: two replicas, any token.
struct Api {
    http: ureq::Agent,
    bases: Vec<String>,
}

impl Api {
    fn call(
        &self,
        replica: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, u64, Value)> {
        self.call_as(replica, TOKEN, method, path, body)
    }

    fn call_as(
        &self,
        replica: usize,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, u64, Value)> {
        let url = format!("{}{path}", self.bases[replica % self.bases.len()]);
        let auth = format!("Bearer {token}");
        let mut resp = match (method, body) {
            ("GET", _) => self.http.get(&url).header("authorization", &auth).call()?,
            ("DELETE", _) => self
                .http
                .delete(&url)
                .header("authorization", &auth)
                .call()?,
            ("POST", Some(b)) => self
                .http
                .post(&url)
                .header("authorization", &auth)
                .send_json(b)?,
            ("POST", None) => self
                .http
                .post(&url)
                .header("authorization", &auth)
                .send_empty()?,
            ("PUT", Some(b)) => self
                .http
                .put(&url)
                .header("authorization", &auth)
                .send_json(b)?,
            _ => bail!("unsupported request {method} {path}"),
        };
        let revision = resp
            .headers()
            .get("x-pdp-revision")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let text = resp.body_mut().read_to_string()?;
        Ok((
            resp.status().as_u16(),
            revision,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        ))
    }

    /// A call that must succeed with a 2xx.
    fn ok(
        &self,
        replica: usize,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u64, Value)> {
        let (s, r, v) = self.call(replica, method, path, body)?;
        if s / 100 != 2 {
            bail!("{method} {path}: HTTP {s}: {v}");
        }
        Ok((r, v))
    }
}

/// What one agent received and did for one answer.
#[derive(Clone)]
struct Delivery {
    revision: u64,
    at: Instant,
    bytes: usize,
    cpu: Duration,
    whole: bool,
}

/// A simulated agent: the agent's sync code over memory, following one replica.
struct SimAgent {
    deliveries: Mutex<Vec<Delivery>>,
    applied: AtomicU64,
    /// The document the agent holds and its revision (read at the end).
    desired: Mutex<Option<(u64, Held)>>,
}

fn run_agent(index: usize, base: String, me: Arc<SimAgent>) -> Result<()> {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut installed = Installed::<MapState>::in_memory();
    let mut topo: Option<Topology> = None;
    let mut after: Option<u64> = None;
    loop {
        let mut url = format!("{base}/v1/hosts/{}/state", host(index));
        if let Some(a) = after {
            url.push_str(&format!("?after={a}&delta=true&wait_ms=20000"));
        }
        let mut resp = http
            .get(&url)
            .header("authorization", &format!("Bearer {}", host_token(index)))
            .call()?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string()?;
        if status != 200 {
            bail!("agent {index}: HTTP {status}: {text}");
        }
        let started = thread_cpu();
        // Parsed as the agent parses it.
        let answer: StateResponse = serde_json::from_str(&text)?;
        let revision = answer.revision;
        let change = answer
            .change()
            .with_context(|| format!("agent {index}: neither a document nor a delta"))?;
        let whole = matches!(change, Change::Whole(_));
        // Uncontended: the bench reads it only once every agent is done.
        let mut desired = me.desired.lock().unwrap();
        match answer::take(&mut installed, &mut topo, &mut desired, revision, change) {
            // A long poll that ended with nothing for this host: not a delivery.
            Ok(Taken::Nothing) => {
                after = Some(revision);
                continue;
            }
            Ok(Taken::InPlace(_)) => {}
            Ok(Taken::Install(t)) => {
                installed.install(&t, topo.as_ref(), &AnyIfindex)?;
                topo = Some(t);
            }
            Err(e) => bail!("agent {index}, revision {revision}: {e:?}"),
        }
        let cpu = thread_cpu() - started;
        after = Some(revision);
        me.deliveries.lock().unwrap().push(Delivery {
            revision,
            at: Instant::now(),
            bytes: text.len(),
            cpu,
            whole,
        });
        drop(desired);
        me.applied.store(revision, Ordering::Release);
    }
}

/// The control-plane binary on etcd, in the bench's namespace.
struct Replica {
    child: Child,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(bin: &Path, store: &str, dir: &Path, port: u16, hosts: usize) -> Result<Replica> {
    let accounts = dir.join("account-tokens");
    std::fs::write(&accounts, format!("{ACCOUNT}:{TOKEN}\n"))?;
    let host_tokens = dir.join("host-tokens");
    let lines: String = (0..hosts)
        .map(|i| format!("{}:{}\n", host(i), host_token(i)))
        .collect();
    std::fs::write(&host_tokens, lines)?;
    let child = Command::new(bin)
        .args([
            "controlplane",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            store,
        ])
        .args(["--rate-limit", "1000000"])
        .arg("--account-tokens")
        .arg(&accounts)
        .arg("--host-tokens")
        .arg(&host_tokens)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("cp-{port}.log")))?)
        .spawn()
        .context("starting a control-plane replica")?;
    let r = Replica { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = ureq::get(&format!("http://127.0.0.1:{port}/healthz"))
            .call()
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false);
        if ok {
            return Ok(r);
        }
        if Instant::now() > deadline {
            bail!(
                "replica on port {port} did not start (see {})",
                dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One change of the mixed run and the hosts it concerns.
struct Planned {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Option<Value>,
    vpcs: Vec<String>,
}

fn hosts_of(vpcs: &[String], hosts: usize) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for v in vpcs {
        if let Some(n) = v.strip_prefix("vpc-s") {
            let n: usize = n.parse().unwrap();
            out.extend((0..hosts).filter(|h| small_vpc_of(*h) == n));
        } else if v == "vpc-big" {
            out.extend(BIG_HOSTS);
        } else if v == "vpc-bigpeer" {
            out.extend(BIG_PEER_HOSTS);
        }
    }
    out
}

/// The `i`-th change of a cycle of seven kinds over VPC `vpc` (and its next pair for
/// peerings): route added, route removed, ACL created, ACL deleted, peering requested,
/// accepted, deleted.
fn plan(
    i: usize,
    vpc: &str,
    table: &str,
    other: &str,
    pcx: &mut Option<String>,
    seq: usize,
) -> Planned {
    let vpcs = vec![vpc.to_string()];
    let dest = format!("192.168.{}.0/24", seq % 250);
    match i % 7 {
        0 => Planned {
            what: "route add",
            method: "POST",
            path: format!("/v1/route-tables/{table}/routes"),
            body: Some(json!({"destination_cidr": dest, "target": "blackhole"})),
            vpcs,
        },
        1 => Planned {
            what: "route delete",
            method: "DELETE",
            path: format!("/v1/route-tables/{table}/routes/{dest}"),
            body: None,
            vpcs,
        },
        2 => Planned {
            what: "acl create",
            method: "POST",
            path: "/v1/network-acls".into(),
            body: Some(
                json!({"id": format!("acl-{vpc}"), "vpc_id": vpc, "rules": [{"number": 10, "direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22, "cidr": "0.0.0.0/0", "action": "deny"}]}),
            ),
            vpcs,
        },
        3 => Planned {
            what: "acl delete",
            method: "DELETE",
            path: format!("/v1/network-acls/acl-{vpc}"),
            body: None,
            vpcs,
        },
        4 => {
            let id = format!("pcx-x{seq}");
            *pcx = Some(id.clone());
            Planned {
                what: "peering request",
                method: "POST",
                path: "/v1/vpc-peering".into(),
                body: Some(json!({"id": id, "requester_vpc_id": vpc, "accepter_vpc_id": other})),
                vpcs: vec![vpc.to_string(), other.to_string()],
            }
        }
        5 => Planned {
            what: "peering accept",
            method: "POST",
            path: format!("/v1/vpc-peering/{}/accept", pcx.as_deref().unwrap()),
            body: None,
            vpcs: vec![vpc.to_string(), other.to_string()],
        },
        _ => Planned {
            what: "peering delete",
            method: "DELETE",
            path: format!("/v1/vpc-peering/{}", pcx.as_deref().unwrap()),
            body: None,
            vpcs: vec![vpc.to_string(), other.to_string()],
        },
    }
}

/// One measured change.
struct Outcome {
    what: &'static str,
    big: bool,
    revision: u64,
    latency: Duration,
    affected: BTreeSet<usize>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

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

/// What the agents received: every delivery should belong to a change that concerned
/// its host, and every change should reach every host it concerned.
struct Tally {
    unnecessary: usize,
    missing: usize,
    wholes: usize,
    /// The big VPC's deliveries: (agent CPU, agent, change).
    slowest: Vec<(Duration, usize, &'static str)>,
    /// (bytes, agent CPU ms) per delivery, small VPCs' changes and the big VPC's.
    small_cost: (Vec<f64>, Vec<f64>),
    big_cost: (Vec<f64>, Vec<f64>),
}

impl Tally {
    fn of(sims: &[Arc<SimAgent>], outcomes: &[Outcome]) -> Tally {
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
        if canonical(&held.doc) != canonical(&want) {
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

/// Prints the figures and writes them to `target/bench/fleet.json`.
fn report(
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

fn canonical(d: &Document) -> Value {
    fn sort(v: &mut Value) {
        match v {
            Value::Array(a) => {
                a.iter_mut().for_each(sort);
                a.sort_by_key(|x| x.to_string());
            }
            Value::Object(o) => o.values_mut().for_each(sort),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(d).unwrap();
    sort(&mut v);
    v
}
