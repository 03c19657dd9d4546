//! API robustness: thousands of random and malformed requests against the control plane
//! in process (its real router and a real SQLite file): bad JSON, wrong types, unknown
//! fields, huge bodies, random paths and methods, other accounts' objects, bad tokens.
//! Never a 5xx; every refused request leaves the store byte-identical (database and WAL
//! files, the world and the revision); every error is JSON with a known code.
//!
//! Size: `PDP_FUZZ_REQUESTS` (default 12,000) from seed `PDP_FUZZ_SEED`.

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use peer_dataplane_controlplane::api::{self, Clock, Server, Shared};
use peer_dataplane_controlplane::auth::RateLimit;
use peer_dataplane_controlplane::model::ERROR_CODES;
use peer_dataplane_controlplane::store::Store;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tower::ServiceExt;

const TOKENS: [(&str, &str); 3] = [
    ("111111111111", "fuzz-token-account-a"),
    ("222222222222", "fuzz-token-account-b"),
    ("333333333333", "fuzz-token-account-c"),
];
const HOST_TOKEN: &str = "fuzz-token-host-1-agent";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

struct Fixture {
    server: Shared,
    router: Router,
    db: PathBuf,
}

impl Fixture {
    fn new(dir: &std::path::Path) -> Fixture {
        let db = dir.join("cp.db");
        let hosts: BTreeMap<String, String> =
            [("host-1".to_string(), HOST_TOKEN.to_string())].into();
        let limit = RateLimit {
            per_second: 1e9,
            burst: 1e9,
        };
        let server = Server::new(Store::open(&db).unwrap(), Clock::new(), hosts, limit).unwrap();
        for (account, token) in TOKENS {
            server.add_token(account, token).unwrap();
        }
        let router = api::router(server.clone());
        Fixture { server, router, db }
    }

    /// Everything persistent: the database and its write-ahead log, byte for byte.
    /// Everything the database holds, read as a second reader would (its files' bytes
    /// also change when the log is checkpointed in the background).
    fn store_contents(&self) -> Vec<(String, String, String)> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opening the database to read it");
        let mut rows = Vec::new();
        for q in [
            "SELECT 'objects', kind || '/' || id, body FROM objects ORDER BY kind, id",
            "SELECT 'meta', key, value FROM meta ORDER BY key",
        ] {
            let mut stmt = conn.prepare(q).unwrap();
            let found = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<rusqlite::Result<Vec<_>>>()
                .unwrap();
            rows.extend(found);
        }
        rows
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
        json: bool,
    ) -> (u16, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if json {
            req = req.header("content-type", "application/json");
        }
        let req = match req.body(Body::from(body)) {
            Ok(r) => r,
            // Not even an HTTP request (a method or path the HTTP layer itself refuses).
            Err(_) => return (400, b"{}".to_vec()),
        };
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 26)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn ok(&self, method: &str, path: &str, token: &str, body: Value) {
        let (status, b) = self
            .send(
                method,
                path,
                Some(token),
                body.to_string().into_bytes(),
                true,
            )
            .await;
        assert!(
            status < 300,
            "seeding {method} {path}: {status} {}",
            String::from_utf8_lossy(&b)
        );
    }

    /// VPCs, subnets, ports, a peering and routes in three accounts.
    async fn seed(&self) {
        let [a, b, c] = TOKENS.map(|(_, t)| t);
        for (t, id, cidr) in [
            (a, "vpc-a", "10.0.0.0/16"),
            (b, "vpc-b", "172.16.0.0/16"),
            (c, "vpc-c", "192.168.0.0/16"),
        ] {
            self.ok(
                "POST",
                "/v1/vpcs",
                t,
                json!({"id": id, "region": "eu-west-1", "cidrs": [cidr]}),
            )
            .await;
        }
        for (t, id, vpc, cidr) in [
            (a, "subnet-a2", "vpc-a", "10.0.2.0/24"),
            (b, "subnet-b2", "vpc-b", "172.16.2.0/24"),
        ] {
            self.ok(
                "POST",
                "/v1/subnets",
                t,
                json!({"id": id, "vpc_id": vpc, "cidr": cidr}),
            )
            .await;
        }
        self.ok("POST", "/v1/ports", a, json!({"host": "host-1", "interface": "pdp-a", "subnet_id": "subnet-a2", "mac": "02:00:0a:00:02:0a", "ipv4": "10.0.2.10"})).await;
        self.ok(
            "POST",
            "/v1/vpc-peering",
            a,
            json!({"id": "pcx-ab", "requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-b"}),
        )
        .await;
        self.ok("POST", "/v1/vpc-peering/pcx-ab/accept", b, json!(null))
            .await;
    }
}

const PATHS: [&str; 24] = [
    "/v1/vpcs",
    "/v1/vpcs/vpc-a",
    "/v1/vpcs/vpc-b",
    "/v1/vpcs/vpc-zz",
    "/v1/subnets",
    "/v1/subnets/subnet-a2",
    "/v1/subnets/subnet-b2",
    "/v1/route-tables",
    "/v1/route-tables/rtb-vpc-a",
    "/v1/route-tables/rtb-vpc-b/routes",
    "/v1/route-tables/rtb-vpc-a/routes/172.16.0.0/16",
    "/v1/route-tables/rtb-vpc-a/routes/not-a-cidr",
    "/v1/vpc-peering",
    "/v1/vpc-peering/pcx-ab",
    "/v1/vpc-peering/pcx-ab/accept",
    "/v1/vpc-peering/pcx-ab/reject",
    "/v1/vpc-peering/pcx-nope/accept",
    "/v1/ports",
    "/v1/ports/port-1",
    "/v1/network-acls",
    "/v1/security-groups",
    "/v1/hosts/host-1/state",
    "/v1/hosts/host-2/state?after=abc&wait_ms=-1",
    "/v1/test/clock",
];

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW",
];

/// Values of every JSON type, some hostile.
fn junk(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 8 } else { 11 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(rng.next() as i64),
        3 => json!(-1),
        4 => json!(1e308),
        5 => json!(*rng.pick(&[
            "",
            "vpc-a",
            "10.0.0.0/8",
            "::/0",
            "pcx-ab",
            "active",
            "\u{0}",
            "../../etc/passwd"
        ])),
        6 => json!("x".repeat(rng.below(5000) as usize)),
        7 => json!(*rng.pick(&[
            "172.16.300.0/24",
            "10.0.0.0/33",
            "fe80::/129",
            "deleted",
            "rtb-vpc-a"
        ])),
        8 => Value::Array((0..rng.below(4)).map(|_| junk(rng, depth + 1)).collect()),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.below(5) {
                let k = rng.pick(&FIELDS).to_string();
                m.insert(k, junk(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

const FIELDS: [&str; 24] = [
    "id",
    "region",
    "cidrs",
    "ipv6_cidr",
    "vpc_id",
    "cidr",
    "destination_cidr",
    "target",
    "requester_vpc_id",
    "accepter_vpc_id",
    "accepter_account_id",
    "auto_accept",
    "bandwidth_mbps",
    "host",
    "interface",
    "subnet_id",
    "mac",
    "ipv4",
    "rules",
    "routes",
    "security_groups",
    "network_acl_id",
    "unknown_field",
    "seconds",
];

/// A body: a plausible object bent, junk JSON, broken JSON, raw bytes, or nothing.
fn body(rng: &mut Rng) -> (Vec<u8>, bool) {
    let plausible = [
        json!({"id": "vpc-f", "region": "eu-west-1", "cidrs": ["10.9.0.0/16"]}),
        json!({"id": "subnet-f", "vpc_id": "vpc-b", "cidr": "172.16.9.0/24"}),
        json!({"destination_cidr": "192.168.0.0/16", "target": "pcx-ab"}),
        json!({"requester_vpc_id": "vpc-c", "accepter_vpc_id": "vpc-a"}),
        json!({"bandwidth_mbps": 100}),
        json!({"host": "host-1", "interface": "pdp-z", "subnet_id": "subnet-b2", "mac": "02:00:00:00:00:99", "ipv4": "172.16.2.99"}),
        json!({"routes": [{"destination_cidr": "172.16.0.0/16", "target": "pcx-ab"}]}),
    ];
    match rng.below(100) {
        0..=29 => {
            let mut v = rng.pick(&plausible).clone();
            if let Value::Object(m) = &mut v {
                for _ in 0..1 + rng.below(3) {
                    let k = rng.pick(&FIELDS).to_string();
                    if rng.chance(30) {
                        m.remove(&k);
                    } else {
                        m.insert(k, junk(rng, 1));
                    }
                }
            }
            (v.to_string().into_bytes(), rng.chance(95))
        }
        30..=54 => (junk(rng, 0).to_string().into_bytes(), rng.chance(90)),
        55..=69 => {
            let mut b = rng.pick(&plausible).to_string().into_bytes();
            let cut = rng.below(b.len() as u64) as usize;
            b.truncate(cut);
            (b, true)
        }
        70..=79 => (
            (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            rng.chance(50),
        ),
        80..=81 => (
            b"{\"id\": \""
                .iter()
                .chain(&vec![b'a'; 1 << 20])
                .copied()
                .collect(),
            true,
        ),
        _ => (Vec::new(), rng.chance(50)),
    }
}

fn path(rng: &mut Rng) -> String {
    match rng.below(100) {
        0..=79 => rng.pick(&PATHS).to_string(),
        80..=89 => format!(
            "{}/{}",
            rng.pick(&PATHS),
            rng.pick(&["..", "%2e%2e", "%00", "x".repeat(300).as_str(), "?", "#"])
        ),
        _ => {
            let segs: Vec<String> = (0..1 + rng.below(5))
                .map(|_| format!("{:x}", rng.next() % 0xfffff))
                .collect();
            format!("/{}", segs.join("/"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_malformed_requests_never_fail_the_server_or_write_half_way() {
    let n: u64 = std::env::var("PDP_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12_000);
    let seed: u64 = std::env::var("PDP_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xf022);
    let dir = std::env::temp_dir().join(format!("pdp-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let f = Fixture::new(&dir);
    f.seed().await;
    let mut rng = Rng(seed | 1);
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();

    // Two bodies past the 64 MiB limit: refused whole, nothing written.
    let huge = vec![b'['; api::MAX_BODY + 1];
    let before = (f.store_contents(), f.server.revision());
    let (status, _) = f
        .send("POST", "/v1/vpcs", Some(TOKENS[0].1), huge, true)
        .await;
    assert_eq!(status, 413, "a body past the limit");
    assert!(
        (f.store_contents(), f.server.revision()) == before,
        "a refused huge body changed the store"
    );

    for i in 0..n {
        let p = path(&mut rng);
        // Mostly a method the path has, so that requests get past routing.
        let method = if rng.chance(70) {
            if p.ends_with("/accept") || p.ends_with("/reject") {
                "POST"
            } else if p.contains("/routes") && rng.chance(50) {
                *rng.pick(&["POST", "PUT", "DELETE"])
            } else {
                *rng.pick(&["GET", "POST", "POST", "DELETE", "PATCH"])
            }
        } else {
            *rng.pick(&METHODS)
        };
        let token = match rng.below(100) {
            0..=69 => Some(rng.pick(&TOKENS).1.to_string()),
            70..=79 => Some(HOST_TOKEN.to_string()),
            80..=89 => Some(format!("{:x}", rng.next())),
            _ => None,
        };
        let (b, json_type) = body(&mut rng);
        let before = (f.store_contents(), f.server.world(), f.server.revision());
        let (status, bytes) = f
            .send(method, &p, token.as_deref(), b.clone(), json_type)
            .await;
        *by_status.entry(status).or_default() += 1;
        let what = || {
            format!(
                "request {i}: {method} {p} token {token:?} body {:?} -> {status} {}",
                String::from_utf8_lossy(&b[..b.len().min(200)]),
                String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
            )
        };
        assert!(status < 500, "server error: {}", what());
        if status >= 400 {
            let after = (f.store_contents(), f.server.world(), f.server.revision());
            assert!(
                after == before,
                "a refused request changed the store: {}",
                what()
            );
            // Our errors are JSON with a known code; the HTTP layer's own (404 of an unknown
            // route, 405, 413, 415) may be plain text.
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                if let Some(code) = v["error"]["code"].as_str() {
                    assert!(
                        ERROR_CODES.contains(&code),
                        "unknown error code {code}: {}",
                        what()
                    );
                    *codes.entry(code.to_string()).or_default() += 1;
                    if code == "inconsistent_state" && std::env::var_os("PDP_FUZZ_SHOW").is_some() {
                        eprintln!("{}", what());
                    }
                }
            }
        }
    }
    eprintln!("{n} requests (seed {seed:#x}); by status: {by_status:?}");
    eprintln!("error codes: {codes:?}");
    // The mix reached deep: refusals of many kinds, and successes that changed things.
    assert!(
        by_status.keys().any(|s| *s < 300),
        "no request succeeded: {by_status:?}"
    );
    // The final consistency gate refuses only what a more specific check missed: a bug.
    assert!(
        !codes.contains_key("inconsistent_state"),
        "requests got past the specific checks (rerun with PDP_FUZZ_SHOW=1): {codes:?}"
    );
    for code in ["unauthorized", "forbidden", "not_found", "invalid_request"] {
        assert!(
            codes.contains_key(code),
            "no request was refused as {code}: {codes:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
