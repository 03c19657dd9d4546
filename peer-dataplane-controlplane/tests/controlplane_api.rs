//! The control-plane API in process (axum router, in-memory SQLite): the peering lifecycle,
//! authentication, the host-state long poll, persistence across restarts, and a table with
//! one row per validation rule, each checking the error code and that nothing changed.

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use peer_dataplane_controlplane::api::{self, Clock, Server, Shared};
use peer_dataplane_controlplane::auth::RateLimit;
use peer_dataplane_controlplane::store::Store;
use peer_dataplane_controlplane::world::ERROR_CODES;
use serde_json::{json, Value};
use tower::ServiceExt;

const A: &str = "token-account-a"; // account 111111111111: vpc-a
const B: &str = "token-account-b"; // account 222222222222: vpc-b
const C: &str = "token-account-c"; // account 333333333333: vpc-c
const AGENT: &str = "host-1-agent-token"; // host-1's credential
const AGENT_2: &str = "host-2-agent-token"; // host-2's

fn host_tokens() -> std::collections::BTreeMap<String, String> {
    [("host-1", AGENT), ("host-2", AGENT_2)]
        .iter()
        .map(|(h, t)| (h.to_string(), t.to_string()))
        .collect()
}

/// No rate limit a test could reach, unless it sets one.
const UNLIMITED: RateLimit = RateLimit {
    per_second: 1e9,
    burst: 1e9,
};

struct Api {
    server: Shared,
    router: Router,
    /// Seconds the server's clock runs ahead of the wall clock.
    ahead: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Api {
    fn with_store(store: Store) -> Api {
        Self::with_store_and_limit(store, UNLIMITED)
    }

    fn with_store_and_limit(store: Store, limit: RateLimit) -> Api {
        let ahead = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let wall = Clock::new();
        let clock = {
            let ahead = ahead.clone();
            Clock::from_fn(move || wall.now() + ahead.load(std::sync::atomic::Ordering::Relaxed))
        };
        let server = Server::new(store, clock, host_tokens(), limit).unwrap();
        server.add_token("111111111111", A).unwrap();
        server.add_token("222222222222", B).unwrap();
        server.add_token("333333333333", C).unwrap();
        let router = api::router(server.clone());
        Api {
            server,
            router,
            ahead,
        }
    }

    /// Moves the server's clock forward and runs its expiry sweep at once.
    fn advance_clock(&self, seconds: u64) {
        self.ahead
            .fetch_add(seconds, std::sync::atomic::Ordering::Relaxed);
        self.server.sweep();
    }

    fn new() -> Api {
        Self::with_store(Store::in_memory().unwrap())
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    /// A call that must succeed with `status`; returns the body.
    async fn ok(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        let (got, v) = self.call(method, path, Some(token), body).await;
        assert_eq!(got, status, "{method} {path}: {v}");
        v
    }

    /// The seed topology: three VPCs in three accounts, A-B and B-C peered and active,
    /// routes both ways, one port per VPC on host-1.
    async fn seed(&self) {
        for (t, id, cidr, v6) in [
            (A, "vpc-a", "10.0.0.0/16", "fd00:a::/48"),
            (B, "vpc-b", "172.16.0.0/16", "fd00:b::/48"),
            (C, "vpc-c", "192.168.0.0/16", "fd00:c::/48"),
        ] {
            self.ok(
                "POST",
                "/v1/vpcs",
                t,
                Some(json!({"id": id, "region": "eu-west-1", "cidrs": [cidr], "ipv6_cidr": v6})),
                201,
            )
            .await;
        }
        for (t, id, vpc, cidr) in [
            (A, "subnet-a2", "vpc-a", "10.0.2.0/24"),
            (B, "subnet-b2", "vpc-b", "172.16.2.0/24"),
            (C, "subnet-c2", "vpc-c", "192.168.2.0/24"),
        ] {
            self.ok(
                "POST",
                "/v1/subnets",
                t,
                Some(json!({"id": id, "vpc_id": vpc, "cidr": cidr})),
                201,
            )
            .await;
        }
        for (t, id, ip, mac) in [
            (A, "subnet-a2", "10.0.2.10", "02:00:0a:00:02:0a"),
            (B, "subnet-b2", "172.16.2.20", "02:00:ac:10:02:14"),
            (C, "subnet-c2", "192.168.2.30", "02:00:c0:a8:02:1e"),
        ] {
            let iface = format!("pdp-{}", &id[7..8]);
            self.ok("POST", "/v1/ports", t, Some(json!({"host": "host-1", "interface": iface, "subnet_id": id, "mac": mac, "ipv4": ip})), 201).await;
        }
        let ab = self.ok("POST", "/v1/vpc-peering", A, Some(json!({"id": "pcx-ab", "requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-b"})), 201).await;
        assert_eq!(ab["status"], "pending-acceptance");
        self.ok("POST", "/v1/vpc-peering/pcx-ab/accept", B, None, 200)
            .await;
        self.ok(
            "POST",
            "/v1/vpc-peering",
            B,
            Some(json!({"id": "pcx-bc", "requester_vpc_id": "vpc-b", "accepter_vpc_id": "vpc-c"})),
            201,
        )
        .await;
        self.ok("POST", "/v1/vpc-peering/pcx-bc/accept", C, None, 200)
            .await;
        for (t, vpc, dest, pcx) in [
            (A, "vpc-a", "172.16.0.0/16", "pcx-ab"),
            (B, "vpc-b", "10.0.0.0/16", "pcx-ab"),
            (B, "vpc-b", "192.168.0.0/16", "pcx-bc"),
            (C, "vpc-c", "172.16.0.0/16", "pcx-bc"),
        ] {
            let rtb = self
                .ok("GET", &format!("/v1/vpcs/{vpc}"), t, None, 200)
                .await["main_route_table"]
                .as_str()
                .unwrap()
                .to_string();
            self.ok(
                "POST",
                &format!("/v1/route-tables/{rtb}/routes"),
                t,
                Some(json!({"destination_cidr": dest, "target": pcx})),
                201,
            )
            .await;
        }
    }

    async fn rtb(&self, token: &str, vpc: &str) -> String {
        self.ok("GET", &format!("/v1/vpcs/{vpc}"), token, None, 200)
            .await["main_route_table"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

#[tokio::test]
async fn seed_topology_through_the_api_gives_agents_a_valid_document() {
    let api = Api::new();
    api.seed().await;
    let (status, v) = api
        .call("GET", "/v1/hosts/host-1/state", Some(AGENT), None)
        .await;
    assert_eq!(status, 200, "{v}");
    let doc: peer_dataplane_model::desired::document::Document =
        serde_json::from_value(v["document"].clone()).unwrap();
    let topo = peer_dataplane_model::desired::validate::validate(&doc)
        .expect("the agent accepts what the control plane hands out");
    assert_eq!(topo.ports.len(), 3);
    assert_eq!(
        topo.peerings["pcx-ab"].status,
        peer_dataplane_model::desired::validate::PeeringStatus::Active
    );
    assert_eq!(v["revision"].as_u64(), Some(api.server.revision()));
    // Another host (with its own credential) has no ports but the same VPCs and
    // peerings.
    let (_, other) = api
        .call("GET", "/v1/hosts/host-2/state", Some(AGENT_2), None)
        .await;
    assert_eq!(
        other["document"]["port"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0),
        0
    );
}

#[tokio::test]
async fn lifecycle_pending_accept_reject_delete_and_auto_accept() {
    let api = Api::new();
    api.seed().await;
    // A second VPC of account A, peered with A's first: auto_accept within one account.
    api.ok(
        "POST",
        "/v1/vpcs",
        A,
        Some(json!({"id": "vpc-a2", "region": "eu-west-1", "cidrs": ["10.9.0.0/16"]})),
        201,
    )
    .await;
    let p = api.ok("POST", "/v1/vpc-peering", A, Some(json!({"requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-a2", "auto_accept": true})), 201).await;
    assert_eq!(p["status"], "active");
    assert!(p["id"].as_str().unwrap().starts_with("pcx-"));

    // Reject: pending -> rejected, by the accepter.
    api.ok(
        "POST",
        "/v1/vpcs",
        C,
        Some(json!({"id": "vpc-c2", "region": "eu-west-1", "cidrs": ["10.20.0.0/16"]})),
        201,
    )
    .await;
    let p = api.ok("POST", "/v1/vpc-peering", A, Some(json!({"requester_vpc_id": "vpc-a2", "accepter_vpc_id": "vpc-c2", "accepter_account_id": "333333333333"})), 201).await;
    let id = p["id"].as_str().unwrap();
    assert_eq!(p["status"], "pending-acceptance");
    let p = api
        .ok(
            "POST",
            &format!("/v1/vpc-peering/{id}/reject"),
            C,
            None,
            200,
        )
        .await;
    assert_eq!(p["status"], "rejected");

    // Delete by the accepter side; routes stay (blackholes) and the host document says so.
    let p = api
        .ok("DELETE", "/v1/vpc-peering/pcx-ab", B, None, 200)
        .await;
    assert_eq!(p["status"], "deleted");
    let (_, v) = api
        .call("GET", "/v1/hosts/host-1/state", Some(AGENT), None)
        .await;
    let doc: peer_dataplane_model::desired::document::Document =
        serde_json::from_value(v["document"].clone()).unwrap();
    assert_eq!(
        doc.peerings
            .iter()
            .find(|p| p.id == "pcx-ab")
            .unwrap()
            .status
            .as_str(),
        "deleted"
    );
    assert!(doc
        .route_tables
        .iter()
        .any(|t| t.routes.iter().any(|r| r.target == "pcx-ab")));

    // Both parties see the peering; a third account does not.
    let list_b = api.ok("GET", "/v1/vpc-peering", B, None, 200).await;
    assert!(list_b
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "pcx-ab"));
    let list_c = api.ok("GET", "/v1/vpc-peering", C, None, 200).await;
    assert!(!list_c
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "pcx-ab"));
}

#[tokio::test]
async fn overlapping_cidrs_end_failed_with_the_overlap_named() {
    let api = Api::new();
    api.seed().await;
    api.ok(
        "POST",
        "/v1/vpcs",
        C,
        Some(json!({"id": "vpc-x", "region": "eu-west-1", "cidrs": ["10.0.128.0/17"]})),
        201,
    )
    .await;
    let p = api
        .ok(
            "POST",
            "/v1/vpc-peering",
            C,
            Some(json!({"requester_vpc_id": "vpc-x", "accepter_vpc_id": "vpc-a"})),
            201,
        )
        .await;
    assert_eq!(p["status"], "failed");
    assert_eq!(
        p["status_message"],
        "CIDR 10.0.128.0/17 of vpc vpc-x overlaps CIDR 10.0.0.0/16 of vpc vpc-a"
    );
    // Overlap with the other peers of a VPC: vpc-y overlaps vpc-a, which B already peers.
    api.ok(
        "POST",
        "/v1/vpcs",
        C,
        Some(json!({"id": "vpc-y", "region": "eu-west-1", "cidrs": ["10.0.0.0/8"]})),
        201,
    )
    .await;
    let p = api
        .ok(
            "POST",
            "/v1/vpc-peering",
            C,
            Some(json!({"requester_vpc_id": "vpc-y", "accepter_vpc_id": "vpc-b"})),
            201,
        )
        .await;
    assert_eq!(p["status"], "failed");
    let msg = p["status_message"].as_str().unwrap();
    assert!(
        msg.contains("vpc vpc-b is already peered with vpc vpc-a (CIDR 10.0.0.0/16, via pcx-ab)"),
        "{msg}"
    );
    // A failed peering cannot be accepted.
    let id = p["id"].as_str().unwrap();
    let (status, v) = api
        .call(
            "POST",
            &format!("/v1/vpc-peering/{id}/accept"),
            Some(B),
            None,
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("invalid_state_transition"))
    );
}

#[tokio::test]
async fn pending_peering_expires_after_seven_days() {
    let api = Api::new();
    api.seed().await;
    api.ok(
        "POST",
        "/v1/vpcs",
        C,
        Some(json!({"id": "vpc-z", "region": "eu-west-1", "cidrs": ["10.50.0.0/16"]})),
        201,
    )
    .await;
    let p = api
        .ok(
            "POST",
            "/v1/vpc-peering",
            C,
            Some(json!({"requester_vpc_id": "vpc-z", "accepter_vpc_id": "vpc-a"})),
            201,
        )
        .await;
    let id = p["id"].as_str().unwrap().to_string();
    api.advance_clock(7 * 24 * 3600 - 60);
    assert_eq!(
        api.ok("GET", &format!("/v1/vpc-peering/{id}"), A, None, 200)
            .await["status"],
        "pending-acceptance"
    );
    api.advance_clock(120);
    assert_eq!(
        api.ok("GET", &format!("/v1/vpc-peering/{id}"), A, None, 200)
            .await["status"],
        "expired"
    );
    // The sweep persisted it: the committed world (what agents and the store get) has
    // it expired, not only the answer to a read.
    assert_eq!(
        api.server.world().peerings[&id].status,
        peer_dataplane_controlplane::world::PeeringStatus::Expired,
        "the sweep commits the expiry"
    );
    let (status, v) = api
        .call(
            "POST",
            &format!("/v1/vpc-peering/{id}/accept"),
            Some(A),
            None,
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("invalid_state_transition")),
        "{v}"
    );
}

#[tokio::test]
async fn host_state_long_poll_returns_on_the_next_change() {
    let api = Api::new();
    api.seed().await;
    let rev = api.server.revision();
    let router = api.router.clone();
    let poll = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("/v1/hosts/host-1/state?after={rev}&wait_ms=60000"))
            .header("authorization", format!("Bearer {AGENT}"))
            .body(Body::empty())
            .unwrap();
        let t = std::time::Instant::now();
        let resp = router.oneshot(req).await.unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        (
            t.elapsed(),
            serde_json::from_slice::<Value>(&bytes).unwrap(),
        )
    });
    // Wait (on the condition, not the clock) until the poll is parked on the revision.
    while api.server.waiting_polls() == 0 {
        assert!(!poll.is_finished(), "the poll answered before any change");
        tokio::task::yield_now().await;
    }
    assert!(!poll.is_finished(), "the poll answered before any change");
    let rtb = api.rtb(A, "vpc-a").await;
    api.ok(
        "DELETE",
        &format!("/v1/route-tables/{rtb}/routes/172.16.0.0/16"),
        A,
        None,
        200,
    )
    .await;
    let (waited, v) = poll.await.unwrap();
    assert_eq!(v["revision"].as_u64(), Some(rev + 1));
    // Woken by the change, not by the end of its 60 s wait.
    assert!(waited < std::time::Duration::from_secs(30), "{waited:?}");
    // Nothing new: the poll times out and returns the same revision.
    let (_, v) = api
        .call(
            "GET",
            &format!("/v1/hosts/host-1/state?after={}&wait_ms=100", rev + 1),
            Some(AGENT),
            None,
        )
        .await;
    assert_eq!(v["revision"].as_u64(), Some(rev + 1));
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("pdp-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("cp.db");
    let _ = std::fs::remove_file(&db);
    let (world, rev) = {
        let api = Api::with_store(Store::open(&db).unwrap());
        api.seed().await;
        (api.server.world(), api.server.revision())
    };
    let again = Server::new(
        Store::open(&db).unwrap(),
        Clock::new(),
        host_tokens(),
        RateLimit::default(),
    )
    .unwrap();
    assert_eq!(again.world(), world);
    assert_eq!(again.revision(), rev);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// One row per validation rule: the error code, and that nothing changed.

struct Row {
    rule: &'static str,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    body: Option<Value>,
    status: u16,
    code: &'static str,
}

fn row(
    rule: &'static str,
    method: &'static str,
    path: &str,
    token: Option<&'static str>,
    body: Option<Value>,
    status: u16,
    code: &'static str,
) -> Row {
    Row {
        rule,
        method,
        path: path.to_string(),
        token,
        body,
        status,
        code,
    }
}

#[tokio::test]
async fn every_validation_rule_refuses_with_its_code_and_changes_nothing() {
    let api = Api::new();
    api.seed().await;
    let (rtb_a, rtb_b) = (api.rtb(A, "vpc-a").await, api.rtb(B, "vpc-b").await);
    // A rejected peering and an account-A second VPC for some rows.
    api.ok(
        "POST",
        "/v1/vpcs",
        A,
        Some(json!({"id": "vpc-a2", "region": "eu-west-1", "cidrs": ["10.9.0.0/16"]})),
        201,
    )
    .await;
    api.ok(
        "POST",
        "/v1/vpc-peering",
        A,
        Some(json!({"id": "pcx-rej", "requester_vpc_id": "vpc-a2", "accepter_vpc_id": "vpc-c"})),
        201,
    )
    .await;
    api.ok("POST", "/v1/vpc-peering/pcx-rej/reject", C, None, 200)
        .await;
    api.ok(
        "POST",
        "/v1/vpc-peering",
        A,
        Some(json!({"id": "pcx-pend", "requester_vpc_id": "vpc-a2", "accepter_vpc_id": "vpc-b"})),
        201,
    )
    .await;
    api.ok(
        "POST",
        "/v1/security-groups",
        A,
        Some(json!({"id": "sg-web", "vpc_id": "vpc-a", "rules": []})),
        201,
    )
    .await;
    let vpc = |id: &str, cidrs: Value| json!({"id": id, "region": "eu-west-1", "cidrs": cidrs});
    let route = |d: &str, t: &str| json!({"destination_cidr": d, "target": t});
    let pcx = |r: &str, a: &str| json!({"requester_vpc_id": r, "accepter_vpc_id": a});
    let port = |iface: &str, ip: &str, mac: &str| json!({"host": "host-1", "interface": iface, "subnet_id": "subnet-a2", "mac": mac, "ipv4": ip});
    let acl = |rules: Value| json!({"vpc_id": "vpc-a", "rules": rules});
    let acl_rule = |n: u32, proto: &str, from: Option<u16>, to: Option<u16>| json!({"number": n, "direction": "ingress", "protocol": proto, "port_from": from, "port_to": to, "cidr": "0.0.0.0/0", "action": "allow"});
    let rt_a = format!("/v1/route-tables/{rtb_a}/routes");
    let rows = vec![
        // authentication and accounts
        row(
            "no bearer token",
            "POST",
            "/v1/vpcs",
            None,
            Some(vpc("vpc-n", json!(["10.60.0.0/16"]))),
            401,
            "unauthorized",
        ),
        row(
            "unknown bearer token",
            "GET",
            "/v1/vpcs",
            Some("not-a-token"),
            None,
            401,
            "unauthorized",
        ),
        row(
            "another account's vpc",
            "GET",
            "/v1/vpcs/vpc-b",
            Some(A),
            None,
            403,
            "forbidden",
        ),
        row(
            "delete another account's vpc",
            "DELETE",
            "/v1/vpcs/vpc-b",
            Some(A),
            None,
            403,
            "forbidden",
        ),
        row(
            "host state with an account's token (known, but not that host's)",
            "GET",
            "/v1/hosts/host-1/state",
            Some(A),
            None,
            403,
            "forbidden",
        ),
        row(
            "host state with a token nobody holds",
            "GET",
            "/v1/hosts/host-1/state",
            Some("a-token-nobody-holds-at-all"),
            None,
            401,
            "unauthorized",
        ),
        row(
            "an account's call with a host's token",
            "GET",
            "/v1/vpcs",
            Some(AGENT),
            None,
            403,
            "forbidden",
        ),
        row(
            "host state of another host",
            "GET",
            "/v1/hosts/host-1/state",
            Some(AGENT_2),
            None,
            403,
            "forbidden",
        ),
        // request bodies
        row(
            "unknown field",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(json!({"region": "r", "cidrs": ["10.61.0.0/16"], "colour": "red"})),
            400,
            "invalid_request",
        ),
        row(
            "malformed json",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(json!("not an object")),
            400,
            "invalid_request",
        ),
        // VPCs
        row(
            "bad cidr string",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("vpc-n", json!(["10.0.0.0/33"]))),
            400,
            "invalid_cidr",
        ),
        row(
            "cidr with host bits",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("vpc-n", json!(["10.62.0.1/16"]))),
            400,
            "invalid_cidr",
        ),
        row(
            "ipv6 cidr in cidrs",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("vpc-n", json!(["fd00:9::/48"]))),
            400,
            "invalid_cidr",
        ),
        row(
            "no ipv4 cidr",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("vpc-n", json!([]))),
            400,
            "invalid_request",
        ),
        row(
            "own cidrs overlap",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("vpc-n", json!(["10.63.0.0/16", "10.63.1.0/24"]))),
            409,
            "cidr_overlap",
        ),
        row(
            "vpc id taken",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("vpc-a", json!(["10.64.0.0/16"]))),
            409,
            "already_exists",
        ),
        row(
            "malformed vpc id",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(vpc("my vpc", json!(["10.65.0.0/16"]))),
            400,
            "invalid_request",
        ),
        row(
            "bad region",
            "POST",
            "/v1/vpcs",
            Some(A),
            Some(json!({"region": "", "cidrs": ["10.66.0.0/16"]})),
            400,
            "invalid_request",
        ),
        row(
            "delete vpc with dependents",
            "DELETE",
            "/v1/vpcs/vpc-a",
            Some(A),
            None,
            409,
            "dependency_violation",
        ),
        row(
            "get unknown vpc",
            "GET",
            "/v1/vpcs/vpc-nope",
            Some(A),
            None,
            404,
            "not_found",
        ),
        // subnets
        row(
            "subnet outside its vpc",
            "POST",
            "/v1/subnets",
            Some(A),
            Some(json!({"vpc_id": "vpc-a", "cidr": "172.31.0.0/24"})),
            400,
            "invalid_cidr",
        ),
        row(
            "subnets overlap",
            "POST",
            "/v1/subnets",
            Some(A),
            Some(json!({"vpc_id": "vpc-a", "cidr": "10.0.2.128/25"})),
            409,
            "cidr_overlap",
        ),
        row(
            "subnet in another account's vpc",
            "POST",
            "/v1/subnets",
            Some(A),
            Some(json!({"vpc_id": "vpc-b", "cidr": "172.16.9.0/24"})),
            403,
            "forbidden",
        ),
        row(
            "subnet in unknown vpc",
            "POST",
            "/v1/subnets",
            Some(A),
            Some(json!({"vpc_id": "vpc-nope", "cidr": "10.0.9.0/24"})),
            404,
            "not_found",
        ),
        row(
            "subnet with another vpc's route table",
            "POST",
            "/v1/subnets",
            Some(A),
            Some(json!({"vpc_id": "vpc-a2", "cidr": "10.9.1.0/24", "route_table_id": rtb_a})),
            400,
            "invalid_request",
        ),
        row(
            "delete subnet with ports",
            "DELETE",
            "/v1/subnets/subnet-a2",
            Some(A),
            None,
            409,
            "dependency_violation",
        ),
        // routes (docs/datapath.md §3.5)
        row(
            "route to unknown peering",
            "POST",
            &rt_a,
            Some(A),
            Some(route("172.16.5.0/24", "pcx-nope")),
            400,
            "invalid_target",
        ),
        row(
            "explicit local route",
            "POST",
            &rt_a,
            Some(A),
            Some(route("10.0.0.0/16", "local")),
            400,
            "invalid_target",
        ),
        row(
            "route for the vpc's own cidr",
            "POST",
            &rt_a,
            Some(A),
            Some(route("10.0.0.0/16", "blackhole")),
            400,
            "invalid_target",
        ),
        row(
            "destination outside the peer vpc",
            "POST",
            &rt_a,
            Some(A),
            Some(route("192.168.0.0/16", "pcx-ab")),
            400,
            "destination_outside_peer",
        ),
        row(
            "peering that does not join the table's vpc",
            "POST",
            &rt_a,
            Some(A),
            Some(route("192.168.0.0/16", "pcx-bc")),
            400,
            "invalid_target",
        ),
        row(
            "route to a rejected peering",
            "POST",
            &format!("/v1/route-tables/{}/routes", "RTB_A2"),
            Some(A),
            Some(route("192.168.0.0/16", "pcx-rej")),
            400,
            "invalid_target",
        ),
        row(
            "duplicate route",
            "POST",
            &rt_a,
            Some(A),
            Some(route("172.16.0.0/16", "pcx-ab")),
            409,
            "already_exists",
        ),
        row(
            "route in another account's table",
            "POST",
            &format!("/v1/route-tables/{rtb_b}/routes"),
            Some(A),
            Some(route("10.0.0.0/24", "pcx-ab")),
            403,
            "forbidden",
        ),
        row(
            "route with a bad cidr",
            "POST",
            &rt_a,
            Some(A),
            Some(route("172.16.300.0/24", "pcx-ab")),
            400,
            "invalid_cidr",
        ),
        row(
            "delete a route that is not there",
            "DELETE",
            &format!("{rt_a}/172.16.9.0/24"),
            Some(A),
            None,
            404,
            "not_found",
        ),
        row(
            "route table of unknown vpc",
            "POST",
            "/v1/route-tables",
            Some(A),
            Some(json!({"vpc_id": "vpc-nope"})),
            404,
            "not_found",
        ),
        row(
            "delete a main route table",
            "DELETE",
            &format!("/v1/route-tables/{rtb_a}"),
            Some(A),
            None,
            409,
            "dependency_violation",
        ),
        row(
            "bulk routes listing a destination twice",
            "PUT",
            &rt_a,
            Some(A),
            Some(
                json!({"routes": [route("172.16.1.0/24", "pcx-ab"), route("172.16.1.0/24", "blackhole")]}),
            ),
            409,
            "already_exists",
        ),
        row(
            "bulk routes with one outside the peer",
            "PUT",
            &rt_a,
            Some(A),
            Some(
                json!({"routes": [route("172.16.1.0/24", "pcx-ab"), route("192.168.0.0/16", "pcx-ab")]}),
            ),
            400,
            "destination_outside_peer",
        ),
        // peerings (docs/datapath.md §2, §3.4, §5)
        row(
            "peering from another account's vpc",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(pcx("vpc-b", "vpc-c")),
            403,
            "forbidden",
        ),
        row(
            "peering to unknown vpc",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(pcx("vpc-a", "vpc-nope")),
            404,
            "not_found",
        ),
        row(
            "peering a vpc with itself",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(pcx("vpc-a", "vpc-a")),
            400,
            "invalid_request",
        ),
        row(
            "wrong accepter account",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(
                json!({"requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-c", "accepter_account_id": "999"}),
            ),
            400,
            "invalid_request",
        ),
        row(
            "wrong accepter region",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(
                json!({"requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-c", "accepter_region": "us-east-2"}),
            ),
            400,
            "invalid_request",
        ),
        row(
            "auto_accept across accounts",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(
                json!({"requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-c", "auto_accept": true}),
            ),
            400,
            "auto_accept_cross_account",
        ),
        row(
            "second live peering of the same pair",
            "POST",
            "/v1/vpc-peering",
            Some(A),
            Some(pcx("vpc-a", "vpc-b")),
            409,
            "duplicate_peering",
        ),
        row(
            "accept by the requester",
            "POST",
            "/v1/vpc-peering/pcx-pend/accept",
            Some(A),
            None,
            403,
            "forbidden",
        ),
        row(
            "accept by a third account",
            "POST",
            "/v1/vpc-peering/pcx-pend/accept",
            Some(C),
            None,
            403,
            "forbidden",
        ),
        row(
            "accept an active peering",
            "POST",
            "/v1/vpc-peering/pcx-ab/accept",
            Some(B),
            None,
            409,
            "invalid_state_transition",
        ),
        row(
            "accept a rejected peering",
            "POST",
            "/v1/vpc-peering/pcx-rej/accept",
            Some(C),
            None,
            409,
            "invalid_state_transition",
        ),
        row(
            "reject by the requester",
            "POST",
            "/v1/vpc-peering/pcx-pend/reject",
            Some(A),
            None,
            403,
            "forbidden",
        ),
        row(
            "delete by a third account",
            "DELETE",
            "/v1/vpc-peering/pcx-ab",
            Some(C),
            None,
            403,
            "forbidden",
        ),
        row(
            "get unknown peering",
            "GET",
            "/v1/vpc-peering/pcx-nope",
            Some(A),
            None,
            404,
            "not_found",
        ),
        row(
            "zero bandwidth",
            "PATCH",
            "/v1/vpc-peering/pcx-ab",
            Some(A),
            Some(json!({"bandwidth_mbps": 0})),
            400,
            "invalid_request",
        ),
        // ports
        row(
            "port address outside its subnet",
            "POST",
            "/v1/ports",
            Some(A),
            Some(port("pdp-x", "10.0.3.10", "02:00:00:00:00:99")),
            400,
            "invalid_request",
        ),
        row(
            "port address in use in the vpc",
            "POST",
            "/v1/ports",
            Some(A),
            Some(port("pdp-x", "10.0.2.10", "02:00:00:00:00:99")),
            409,
            "address_in_use",
        ),
        row(
            "interface taken on the host",
            "POST",
            "/v1/ports",
            Some(A),
            Some(port("pdp-a", "10.0.2.11", "02:00:00:00:00:99")),
            409,
            "already_exists",
        ),
        row(
            "port with a bad mac",
            "POST",
            "/v1/ports",
            Some(A),
            Some(port("pdp-x", "10.0.2.11", "02:00:00:00:zz:99")),
            400,
            "invalid_request",
        ),
        row(
            "port with no address",
            "POST",
            "/v1/ports",
            Some(A),
            Some(
                json!({"host": "h", "interface": "x", "subnet_id": "subnet-a2", "mac": "02:00:00:00:00:01"}),
            ),
            400,
            "invalid_request",
        ),
        row(
            "port with an unknown security group",
            "POST",
            "/v1/ports",
            Some(A),
            Some(
                json!({"host": "h", "interface": "x", "subnet_id": "subnet-a2", "mac": "02:00:00:00:00:01", "ipv4": "10.0.2.12", "security_groups": ["sg-nope"]}),
            ),
            404,
            "not_found",
        ),
        // network ACLs and security groups
        row(
            "acl rule number 0",
            "POST",
            "/v1/network-acls",
            Some(A),
            Some(acl(json!([acl_rule(0, "tcp", None, None)]))),
            400,
            "invalid_request",
        ),
        row(
            "acl rule number twice",
            "POST",
            "/v1/network-acls",
            Some(A),
            Some(acl(json!([
                acl_rule(10, "tcp", None, None),
                acl_rule(10, "udp", None, None)
            ]))),
            409,
            "already_exists",
        ),
        row(
            "acl unknown protocol",
            "POST",
            "/v1/network-acls",
            Some(A),
            Some(acl(json!([acl_rule(10, "sctpx", None, None)]))),
            400,
            "invalid_request",
        ),
        row(
            "acl ports on icmp",
            "POST",
            "/v1/network-acls",
            Some(A),
            Some(acl(json!([acl_rule(10, "icmp", Some(1), Some(2))]))),
            400,
            "invalid_request",
        ),
        row(
            "acl port range reversed",
            "POST",
            "/v1/network-acls",
            Some(A),
            Some(acl(json!([acl_rule(10, "tcp", Some(90), Some(80))]))),
            400,
            "invalid_request",
        ),
        row(
            "sg rule with cidr and peer group",
            "POST",
            "/v1/security-groups",
            Some(A),
            Some(
                json!({"vpc_id": "vpc-a", "rules": [{"direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22, "cidr": "10.0.0.0/8", "peer_security_group": "sg-web"}]}),
            ),
            400,
            "invalid_request",
        ),
        row(
            "sg rule with unknown peer group",
            "POST",
            "/v1/security-groups",
            Some(A),
            Some(
                json!({"vpc_id": "vpc-a", "rules": [{"direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22, "peer_security_group": "sg-nope"}]}),
            ),
            404,
            "not_found",
        ),
    ];
    let rtb_a2 = api.rtb(A, "vpc-a2").await;
    let mut codes_seen = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for r in &rows {
        let path = r.path.replace("RTB_A2", &rtb_a2);
        let (before_rev, before) = (api.server.revision(), api.server.world());
        let (status, v) = api.call(r.method, &path, r.token, r.body.clone()).await;
        let code = v["error"]["code"].as_str().unwrap_or("-");
        let message = v["error"]["message"].as_str().unwrap_or("");
        if status != r.status || code != r.code || message.is_empty() {
            failures.push(format!(
                "{}: got {status} {code} ({v}), expected {} {}",
                r.rule, r.status, r.code
            ));
        }
        if api.server.revision() != before_rev || api.server.world() != before {
            failures.push(format!("{}: the refused request changed the state", r.rule));
        }
        codes_seen.insert(r.code);
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // Every code but the final consistency gate's (reachable only through a bug in a
    // more specific check) is exercised by some row.
    // (`rate_limited` and `payload_too_large` have tests of their own: the rate limit
    // here, a body past the limit in api_fuzz.rs; `store_unreachable` needs a store that
    // goes away: etcd_faults.rs.)
    for code in ERROR_CODES.iter().filter(|c| {
        ![
            "inconsistent_state",
            "rate_limited",
            "payload_too_large",
            "store_unreachable",
        ]
        .contains(c)
    }) {
        assert!(
            codes_seen.contains(code),
            "no row exercises error code {code}"
        );
    }
}

#[tokio::test]
async fn a_request_overlapping_a_pending_one_fails_and_cannot_be_accepted() {
    let api = Api::new();
    api.seed().await;
    // Pending requests hold their CIDRs too: vpc-q overlaps vpc-p, already asked of vpc-b.
    api.ok(
        "POST",
        "/v1/vpcs",
        C,
        Some(json!({"id": "vpc-p", "region": "eu-west-1", "cidrs": ["10.70.0.0/16"]})),
        201,
    )
    .await;
    api.ok(
        "POST",
        "/v1/vpcs",
        C,
        Some(json!({"id": "vpc-q", "region": "eu-west-1", "cidrs": ["10.70.128.0/17"]})),
        201,
    )
    .await;
    api.ok(
        "POST",
        "/v1/vpc-peering",
        C,
        Some(json!({"id": "pcx-p", "requester_vpc_id": "vpc-p", "accepter_vpc_id": "vpc-b"})),
        201,
    )
    .await;
    let q = api
        .ok(
            "POST",
            "/v1/vpc-peering",
            C,
            Some(json!({"id": "pcx-q", "requester_vpc_id": "vpc-q", "accepter_vpc_id": "vpc-b"})),
            201,
        )
        .await;
    assert_eq!(q["status"], "failed", "{q}");
    assert!(
        q["status_message"]
            .as_str()
            .unwrap()
            .contains("already peered with vpc vpc-p"),
        "{q}"
    );
    api.ok("POST", "/v1/vpc-peering/pcx-p/accept", B, None, 200)
        .await;
    let before = (api.server.revision(), api.server.world());
    let (status, v) = api
        .call("POST", "/v1/vpc-peering/pcx-q/accept", Some(B), None)
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("invalid_state_transition")),
        "{v}"
    );
    assert_eq!((api.server.revision(), api.server.world()), before);
}

#[tokio::test]
async fn bulk_route_replacement_swaps_a_whole_table_in_one_revision() {
    let api = Api::new();
    api.seed().await;
    let rtb = api.rtb(A, "vpc-a").await;
    let rev = api.server.revision();
    let routes: Vec<Value> = (0..1000)
        .map(|i| json!({"destination_cidr": format!("172.16.{}.{}/32", i / 256, i % 256), "target": "pcx-ab"}))
        .collect();
    let v = api
        .ok(
            "PUT",
            &format!("/v1/route-tables/{rtb}/routes"),
            A,
            Some(json!({"routes": routes})),
            200,
        )
        .await;
    assert_eq!(v["routes"], 1000);
    assert_eq!(api.server.revision(), rev + 1, "one change, one revision");
    let t = api
        .ok("GET", &format!("/v1/route-tables/{rtb}"), A, None, 200)
        .await;
    assert_eq!(t["routes"].as_object().unwrap().len(), 1000);
    assert!(
        t["routes"].get("172.16.0.0/16").is_none(),
        "the old route was replaced"
    );
}

#[tokio::test]
async fn bandwidth_and_security_groups_reach_the_agents_document() {
    let api = Api::new();
    api.seed().await;
    api.ok(
        "PATCH",
        "/v1/vpc-peering/pcx-ab",
        A,
        Some(json!({"bandwidth_mbps": 250})),
        200,
    )
    .await;
    api.ok(
        "POST",
        "/v1/security-groups",
        A,
        Some(json!({"id": "sg-web", "vpc_id": "vpc-a", "rules": [
            {"direction": "egress", "protocol": "tcp", "port_from": 443, "port_to": 443, "cidr": "172.16.0.0/16"}
        ]})),
        201,
   )
    .await;
    let (status, v) = api
        .call("GET", "/v1/hosts/host-1/state", Some(AGENT), None)
        .await;
    assert_eq!(status, 200, "{v}");
    let doc: peer_dataplane_model::desired::document::Document =
        serde_json::from_value(v["document"].clone()).unwrap();
    let topo = peer_dataplane_model::desired::validate::validate(&doc).expect("a valid document");
    for cap in topo.peerings["pcx-ab"].caps {
        assert_eq!(cap.map(|c| c.bits_per_second), Some(250_000_000));
    }
    assert!(topo.peerings["pcx-bc"].caps.iter().all(|c| c.is_none()));
    assert_eq!(topo.security_groups["sg-web"].rules.len(), 1);
}

/// Past its rate, an account gets `429` with `Retry-After`, and the refused request changes
/// nothing; other accounts and hosts have buckets of their own.
#[tokio::test]
async fn an_account_over_its_rate_gets_429_and_changes_nothing() {
    let api = Api::with_store_and_limit(
        Store::in_memory().unwrap(),
        RateLimit {
            per_second: 0.001,
            burst: 3.0,
        },
    );
    for i in 0..3 {
        let (status, v) = api.call("GET", "/v1/vpcs", Some(A), None).await;
        assert_eq!(status, 200, "request {i}: {v}");
    }
    let before = (api.server.world(), api.server.revision());
    let req = Request::builder()
        .method("POST")
        .uri("/v1/vpcs")
        .header("authorization", format!("Bearer {A}"))
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"id": "vpc-x", "region": "eu-west-1", "cidrs": ["10.9.0.0/16"]}).to_string(),
        ))
        .unwrap();
    let resp = api.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(
        resp.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "rate_limited", "{v}");
    assert_eq!((api.server.world(), api.server.revision()), before);
    // Account B and the agents are not held back by A.
    assert_eq!(api.call("GET", "/v1/vpcs", Some(B), None).await.0, 200);
    assert_eq!(
        api.call("GET", "/v1/hosts/host-1/state", Some(AGENT), None)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn hosts_register_and_learn_exactly_the_instances_they_can_reach() {
    let api = Api::new();
    api.seed().await;
    let host = |addr: &str| json!({"underlay_ipv4": addr, "uplink": "eth0"});
    api.ok(
        "PUT",
        "/v1/hosts/host-1",
        AGENT,
        Some(host("192.0.2.1")),
        200,
    )
    .await;
    // A host speaks only for itself, and two hosts never share an address.
    let (status, _) = api
        .call(
            "PUT",
            "/v1/hosts/host-2",
            Some(AGENT),
            Some(host("192.0.2.2")),
        )
        .await;
    assert_eq!(status, 403);
    let (status, v) = api
        .call(
            "PUT",
            "/v1/hosts/host-2",
            Some(AGENT_2),
            Some(host("192.0.2.1")),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("address_in_use")),
        "{v}"
    );
    api.ok(
        "PUT",
        "/v1/hosts/host-2",
        AGENT_2,
        Some(host("192.0.2.2")),
        200,
    )
    .await;
    // A second instance of B, on host-2.
    api.ok("POST", "/v1/ports", B, Some(json!({"host": "host-2", "interface": "pdp-b2", "subnet_id": "subnet-b2", "mac": "02:00:ac:10:02:15", "ipv4": "172.16.2.21"})), 201).await;

    let v = api
        .ok("GET", "/v1/hosts/host-2/state", AGENT_2, None, 200)
        .await;
    let doc: peer_dataplane_model::desired::document::Document =
        serde_json::from_value(v["document"].clone()).unwrap();
    let topo = peer_dataplane_model::desired::validate::validate(&doc)
        .expect("the agent accepts its fleet document");
    assert_eq!(topo.local_host.as_deref(), Some("host-2"));
    // B is peered with A and C: their instances on host-1, and not B's own other one.
    let remote: Vec<&str> = doc
        .remote_ports
        .iter()
        .map(|p| p.interface.as_str())
        .collect();
    assert_eq!(remote, ["pdp-a", "pdp-c"]);
    assert!(doc
        .remote_ports
        .iter()
        .all(|p| p.host.as_deref() == Some("host-1")));
    let hosts: Vec<&str> = doc.hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(hosts, ["host-1", "host-2"]);
    // Every VPC has its own VNI, every peering its own tunnel key.
    let vnis: std::collections::BTreeSet<u32> = doc.vpcs.iter().filter_map(|v| v.vni).collect();
    assert_eq!(vnis.len(), 3);
    let keys: std::collections::BTreeSet<u32> =
        doc.peerings.iter().filter_map(|p| p.tunnel_key).collect();
    assert_eq!(keys.len(), 2);
    // A sends from one host, B from two: B's share of pcx-ab's cap is a half.
    let ab = doc.peerings.iter().find(|p| p.id == "pcx-ab").unwrap();
    assert_eq!(ab.cap_shares, Some([1, 2]));

    // A host that carries a port stays; the list shows both.
    let (status, _) = api
        .call("DELETE", "/v1/hosts/host-2", Some(AGENT_2), None)
        .await;
    assert_eq!(status, 409);
    let list = api.ok("GET", "/v1/hosts", A, None, 200).await;
    assert_eq!(list.as_array().map(|a| a.len()), Some(2), "{list}");
}

/// A store written before the overlay existed (no VNIs, no tunnel keys) is numbered when
/// the control plane opens it, as a new revision, and then serves a fleet; registered
/// hosts survive a restart.
#[tokio::test]
async fn a_store_from_before_the_overlay_is_numbered_and_hosts_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("pdp-cp-mig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("cp.db");
    let _ = std::fs::remove_file(&db);
    let rev = {
        let api = Api::with_store(Store::open(&db).unwrap());
        api.seed().await;
        api.server.revision()
    };
    // What an older control plane stored.
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "UPDATE objects SET body = json_remove(body, '$.vni') WHERE kind = 'vpc';
         UPDATE objects SET body = json_remove(body, '$.tunnel_key') WHERE kind = 'peering';
         DELETE FROM objects WHERE kind = 'id_counter' AND id IN ('vni', 'tunnel_key');",
    )
    .unwrap();
    drop(conn);

    let api = Api::with_store(Store::open(&db).unwrap());
    assert_eq!(
        api.server.revision(),
        rev + 1,
        "the numbering is one revision"
    );
    let w = api.server.world();
    let mut vnis: Vec<u32> = w.vpcs.values().filter_map(|v| v.spec.vni).collect();
    vnis.sort();
    assert_eq!(vnis, vec![1, 2, 3]);
    let keys: Vec<u32> = w
        .peerings
        .values()
        .filter_map(|p| p.spec.tunnel_key)
        .collect();
    assert_eq!(keys.len(), w.peerings.len());
    // The fleet works on it: a host registers and gets a valid document with the numbers.
    api.ok(
        "PUT",
        "/v1/hosts/host-1",
        AGENT,
        Some(json!({"underlay_ipv4": "192.0.2.1", "uplink": "eth0"})),
        200,
    )
    .await;
    let v = api
        .ok("GET", "/v1/hosts/host-1/state", AGENT, None, 200)
        .await;
    assert_eq!(v["document"]["local_host"], "host-1");
    // A new VPC continues the numbering.
    let v = api
        .ok(
            "POST",
            "/v1/vpcs",
            A,
            Some(json!({"id": "vpc-d", "region": "eu-west-1", "cidrs": ["10.9.0.0/16"]})),
            201,
        )
        .await;
    assert_eq!(v["vni"], 4, "{v}");
    drop(api);

    let again = Api::with_store(Store::open(&db).unwrap());
    assert!(
        again.server.world().hosts.contains_key("host-1"),
        "a registered host survives a restart"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A port may not sit on its host's uplink or on the loopback, and a host may not
/// register an uplink that already carries one of its ports: each refused with the
/// interface and the host named, nothing written.
#[tokio::test]
async fn no_port_on_a_hosts_uplink_or_loopback() {
    let api = Api::new();
    api.seed().await;
    api.ok(
        "PUT",
        "/v1/hosts/host-2",
        AGENT_2,
        Some(json!({"underlay_ipv4": "192.0.2.2", "uplink": "eth0"})),
        200,
    )
    .await;
    let rev = api.server.revision();
    for (iface, says) in [
        ("eth0", "interface eth0 is host host-2's uplink"),
        ("lo", "interface lo is the host's loopback"),
    ] {
        let (status, v) = api
            .call(
                "POST",
                "/v1/ports",
                Some(B),
                Some(json!({"host": "host-2", "interface": iface, "subnet_id": "subnet-b2", "mac": "02:00:ac:10:02:15", "ipv4": "172.16.2.21"})),
            )
            .await;
        assert_eq!(status, 400, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(says),
            "{v}"
        );
    }
    // host-1 carries pdp-a: it cannot become host-1's uplink.
    let (status, v) = api
        .call(
            "PUT",
            "/v1/hosts/host-1",
            Some(AGENT),
            Some(json!({"underlay_ipv4": "192.0.2.1", "uplink": "pdp-a"})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("interface pdp-a carries port"),
        "{v}"
    );
    assert_eq!(api.server.revision(), rev, "a refused call wrote something");
}
