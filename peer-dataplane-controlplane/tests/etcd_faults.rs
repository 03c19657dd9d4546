//! Faults with real etcd processes: a replica killed in the middle of a request, one
//! member of three killed, the whole store unreachable and back, and one replica at a
//! time expiring pending peerings.

mod common;

use common::etcd::{free_port, Etcd, EtcdExt};
use peer_dataplane_controlplane::api::{self, Clock, Server};
use peer_dataplane_controlplane::auth::RateLimit;
use peer_dataplane_controlplane::store::ObjectStore;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "111111111111";
const TOKEN: &str = "token-of-account-a-for-fault-tests";
const HOST: &str = "hv-1";
const HOST_TOKEN: &str = "token-of-host-hv-1-for-fault-tests";

fn unlimited() -> RateLimit {
    RateLimit {
        per_second: 1e9,
        burst: 1e9,
    }
}

fn replica(etcd: &Etcd, prefix: &str) -> (std::sync::Arc<Server>, axum::Router) {
    let hosts: BTreeMap<String, String> = [(HOST.to_string(), HOST_TOKEN.to_string())].into();
    let s = Server::new(etcd.store(prefix), Clock::new(), hosts, unlimited()).unwrap();
    s.add_token(ACCOUNT, TOKEN).unwrap();
    (s.clone(), api::router(s))
}

/// One request in process: (status, JSON answer).
async fn call(
    r: &axum::Router,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(match body {
            Some(b) => axum::body::Body::from(b.to_string()),
            None => axum::body::Body::empty(),
        })
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn vpc(id: &str, cidr: &str) -> Value {
    json!({"id": id, "region": "eu-west-1", "cidrs": [cidr]})
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn one_replica_at_a_time_expires_pending_peerings() {
    let etcd = Etcd::start("sweeper");
    let (mut a, mut b) = (etcd.store("/s"), etcd.store("/s"));
    assert!(a.lead_sweeps(), "the first to ask takes it");
    assert!(!b.lead_sweeps(), "held by A");
    assert!(a.lead_sweeps(), "A renews its claim");
    assert!(!b.lead_sweeps(), "still A's");
    drop(a); // gives the claim up
    assert!(b.lead_sweeps(), "B takes over");
    // Another prefix is another control plane, with a sweeper of its own.
    assert!(etcd.store("/other").lead_sweeps());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_three_members_killed_the_api_keeps_working() {
    // (the leader: the worst one to lose)
    let mut etcd = Etcd::cluster("three", 3);
    let (a, ra) = replica(&etcd, "/three");
    let (b, _rb) = replica(&etcd, "/three");
    let (s, v) = call(
        &ra,
        "POST",
        "/v1/vpcs",
        TOKEN,
        Some(vpc("vpc-0", "10.0.0.0/16")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // The leader, so that the cluster must elect another while the calls go on.
    let leader = etcd.leader();
    etcd.kill(leader);
    // Every call succeeds, on a replica whose client was connected to any member; a
    // commit whose answer was lost in the election is read back, not done twice.
    for i in 1..=20 {
        let (s, v) = call(
            &ra,
            "POST",
            "/v1/vpcs",
            TOKEN,
            Some(vpc(&format!("vpc-{i}"), &format!("10.{i}.0.0/16"))),
        )
        .await;
        assert_eq!(s, 201, "call {i} with the leader down: {v}");
    }
    let (world, _) = etcd.store("/three").load().unwrap();
    assert_eq!(world.vpcs.len(), 21);
    // The fault was the intended one: the cluster lost its leader and elected another.
    let now = etcd.leader();
    assert_ne!(
        now, leader,
        "member {leader} still leads: the kill did not land"
    );
    wait_for("replica B follows", || b.world() == world).await;
    wait_for("both replicas reach the store", || {
        a.store_reachable() && b.store_reachable()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_unreachable_agents_are_told_and_catch_up_when_it_returns() {
    let mut etcd = Etcd::start("unreachable");
    let (server, r) = replica(&etcd, "/u");
    let state = format!("/v1/hosts/{HOST}/state");
    let (s, first) = call(&r, "GET", &state, HOST_TOKEN, None).await;
    assert_eq!(s, 200, "{first}");
    let held = first["revision"].as_u64().unwrap();
    // A long poll parked while the store goes away is answered at once.
    let parked = {
        let r = r.clone();
        let path = format!("{state}?after={held}&delta=true&wait_ms=30000");
        tokio::spawn(async move { call(&r, "GET", &path, HOST_TOKEN, None).await })
    };
    wait_for("the long poll to be parked", || server.waiting_polls() > 0).await;
    etcd.kill(0);
    let (s, v) = tokio::time::timeout(Duration::from_secs(20), parked)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("store_unreachable")),
        "{v}"
    );
    assert!(!server.store_reachable());
    let (s, _) = call(&r, "GET", "/healthz", TOKEN, None).await;
    assert_eq!(s, 503);
    // A write cannot go in: refused whole, nothing changed.
    let (s, v) = call(
        &r,
        "POST",
        "/v1/vpcs",
        TOKEN,
        Some(vpc("vpc-x", "10.9.0.0/16")),
    )
    .await;
    assert!(s >= 500, "{v}");
    assert!(!server.world().vpcs.contains_key("vpc-x"));

    etcd.restart(0).unwrap();
    wait_for("the replica sees the store again", || {
        server.store_reachable()
    })
    .await;
    let (s, v) = call(
        &r,
        "POST",
        "/v1/vpcs",
        TOKEN,
        Some(vpc("vpc-y", "10.8.0.0/16")),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    // The agent's next poll, from the revision it held, answers (nothing here concerns
    // this host's ports: its view did not change, only its revision moves on).
    let (s, v) = call(
        &r,
        "GET",
        &format!("{state}?after={held}&delta=true&wait_ms=0"),
        HOST_TOKEN,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["revision"].as_u64().unwrap() > held, "{v}");
}

/// The control-plane binary on etcd, listening on a free port.
struct Process {
    child: Child,
    port: u16,
}

impl Process {
    fn start(store: &str, dir: &std::path::Path) -> Process {
        let tokens = dir.join("account-tokens");
        std::fs::write(&tokens, format!("{ACCOUNT}:{TOKEN}\n")).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_peer-dataplane-controlplane"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                store,
                "--rate-limit",
                "100000",
            ])
            .arg("--account-tokens")
            .arg(&tokens)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("cp-{port}.log"))).unwrap())
            .spawn()
            .unwrap();
        let p = Process { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http(p.port, "GET", "/healthz", None).map(|(s, _)| s).ok() != Some(200) {
            assert!(Instant::now() < deadline, "the control plane did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a plain socket: (status, body).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, text))
}

#[test]
fn a_replica_killed_in_the_middle_of_a_request_leaves_the_change_whole_or_absent() {
    let etcd = Etcd::start("killed");
    let dir = std::env::temp_dir().join(format!("pdp-cp-killed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = etcd.url("/killed");
    let cp = Process::start(&url, &dir);
    let (s, b) = http(
        cp.port,
        "POST",
        "/v1/vpcs",
        Some(&vpc("vpc-a", "10.0.0.0/16").to_string()),
    )
    .unwrap();
    assert_eq!(s, 201, "{b}");
    let rtb = serde_json::from_str::<Value>(&b).unwrap()["main_route_table"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, b) = http(
        cp.port,
        "POST",
        "/v1/vpcs",
        Some(&vpc("vpc-b", "172.16.0.0/12").to_string()),
    )
    .unwrap();
    assert_eq!(s, 201, "{b}");
    let peering =
        json!({"requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-b", "auto_accept": true});
    let (s, b) = http(
        cp.port,
        "POST",
        "/v1/vpc-peering",
        Some(&peering.to_string()),
    )
    .unwrap();
    assert_eq!(s, 201, "{b}");
    let pcx = serde_json::from_str::<Value>(&b).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    cp.kill();

    // Each round: a table of `n` routes replaced by one of `n + 1` (all different), the
    // replica killed at some point of the call. Afterwards the table is one or the other.
    let table = |n: usize| -> String {
        let routes: Vec<Value> = (0..n)
            .map(|i| json!({"destination_cidr": format!("172.{}.{}.{}/32", 16 + i / 65536 % 16, i / 256 % 256, i % 256), "target": pcx}))
            .collect();
        json!({"routes": routes}).to_string()
    };
    // One round: the replica started on the table of `n` routes, the replacement by `n + 1`
    // sent whole, the replica killed `delay` after the last byte left (never before: the
    // request is in the replica's hands), unless `delay` is `None`. Returns whether an
    // answer came (200) and whether the change is in; anything but whole or absent fails.
    let round = |n: usize, delay: Option<Duration>| -> (bool, bool, Duration) {
        let cp = Process::start(&url, &dir);
        let (s, b) = http(
            cp.port,
            "PUT",
            &format!("/v1/route-tables/{rtb}/routes"),
            Some(&table(n)),
        )
        .unwrap();
        assert_eq!(s, 200, "{b}");
        let (sent_tx, sent) = std::sync::mpsc::channel();
        let (port, path, body) = (
            cp.port,
            format!("/v1/route-tables/{rtb}/routes"),
            table(n + 1),
        );
        let sender = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                s,
                "PUT {path} HTTP/1.1\r\nhost: cp\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let written = Instant::now();
            sent_tx.send(written).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            (out.starts_with("HTTP/1.1 200"), written.elapsed())
        });
        let written = sent.recv().unwrap();
        if let Some(d) = delay {
            std::thread::sleep(d.saturating_sub(written.elapsed()));
            cp.kill();
        }
        let (answered, took) = sender.join().unwrap();
        let (world, _) = etcd.store("/killed").load().unwrap();
        let got = world.route_tables[&rtb].routes.len();
        assert!(
            got == n || got == n + 1,
            "killed {delay:?} after the request: {got} routes stored, not {n} (before) or {} (after)",
            n + 1
        );
        if answered {
            assert_eq!(got, n + 1, "answered 200, so the change is in");
        }
        (answered, got == n + 1, took)
    };
    // How long the call takes unharmed, then kills searched for inside it: one that lands
    // before the commit (absent) and one that lands after etcd took the commit but before
    // the answer (whole, unanswered). A kill after the answer is not this fault, and a
    // search that finds neither fails: the fault did not land where intended.
    let mut n = 20_000;
    let (answered, _, whole) = round(n, None);
    assert!(answered, "the unharmed call was not answered");
    n += 2;
    let mut outcomes = Vec::new();
    let (mut lo, mut hi) = (Duration::ZERO, whole);
    let (mut absent, mut unanswered_in) = (false, false);
    let mut delay = Duration::ZERO;
    for _ in 0..14 {
        let (answered, is_in, _) = round(n, Some(delay));
        n += 2;
        outcomes.push((
            delay.as_millis(),
            answered,
            if is_in { "in" } else { "out" },
        ));
        match (answered, is_in) {
            (true, _) => hi = delay,
            (false, false) => {
                absent = true;
                lo = delay;
            }
            (false, true) => {
                unanswered_in = true;
                hi = delay;
            }
        }
        if absent && unanswered_in {
            break;
        }
        delay = (lo + hi) / 2;
    }
    println!("unharmed call {whole:?}; kill delay (ms), answered, change: {outcomes:?}");
    assert!(
        absent && unanswered_in,
        "no kill landed both before and during the commit (unharmed call {whole:?}): {outcomes:?}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}
