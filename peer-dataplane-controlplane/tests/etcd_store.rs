//! The etcd store against a real etcd member (a local process on free ports, its data in
//! a directory of its own, removed afterwards): the API's state survives a restart and a
//! second replica reads the same; two replicas never lose each other's updates.
//! Needs the `etcd` binary (`cargo xtask setup` installs Debian's etcd-server).

mod common;

use common::etcd::{Etcd, EtcdExt};
use peer_dataplane_controlplane::api::{Clock, Server};
use peer_dataplane_controlplane::auth::RateLimit;
use peer_dataplane_controlplane::store::etcd::EtcdStore;
use peer_dataplane_controlplane::store::ObjectStore;
use peer_dataplane_controlplane::world::World;
use std::time::{Duration, Instant};

fn with_counter(w: &World, name: &str, n: u64) -> World {
    let mut w = w.clone();
    w.id_counters.insert(name.to_string(), n);
    w
}

#[test]
fn urls_name_the_members_and_the_prefix() {
    let (eps, prefix) = EtcdStore::parse_url("etcd://h1:2379,h2:2379,h3:2379").unwrap();
    assert_eq!(eps, ["h1:2379", "h2:2379", "h3:2379"]);
    assert_eq!(prefix, "/pdp");
    let (_, prefix) = EtcdStore::parse_url("etcd://h1:2379/region/eu-west-1/").unwrap();
    assert_eq!(prefix, "/region/eu-west-1");
    assert!(EtcdStore::parse_url("http://h1:2379").is_err());
    assert!(EtcdStore::parse_url("etcd://").is_err());
}

#[test]
fn state_survives_a_restart_and_a_second_replica_reads_the_same() {
    let etcd = Etcd::start("restart");
    let limit = RateLimit::default();
    let server = Server::new(etcd.store("/t1"), Clock::new(), Default::default(), limit).unwrap();
    server
        .add_token("111111111111", "token-of-account-a-for-tests")
        .unwrap();
    // Objects go in through the store the API commits to.
    let mut store = etcd.store("/t1");
    let (w0, r0) = store.load().unwrap();
    let w1 = with_counter(&w0, "vpc", 7);
    let r1 = store.commit(&w0, &w1, r0 + 1).unwrap();
    assert!(r1 > r0, "the revision is etcd's and moves forward");

    let again = Server::new(etcd.store("/t1"), Clock::new(), Default::default(), limit).unwrap();
    assert_eq!(again.world(), w1);
    assert_eq!(again.revision(), r1);
    let tokens = etcd.store("/t1").token_hashes().unwrap().unwrap();
    assert_eq!(
        tokens.account_of("token-of-account-a-for-tests").unwrap(),
        "111111111111"
    );
    // Another prefix is another control plane.
    assert_eq!(etcd.store("/t2").load().unwrap().0, World::default());
}

/// Runs `f` on a runtime of its own (these tests are synchronous).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Every key and value under `prefix`, as text.
fn everything_under(etcd: &Etcd, prefix: &str) -> Vec<(String, String)> {
    block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        let r = c
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    kv.value_str().unwrap().to_string(),
                )
            })
            .collect()
    })
}

#[test]
fn tokens_are_hashed_at_rest_and_a_revocation_reaches_every_replica() {
    let etcd = Etcd::start("tokens");
    let limit = RateLimit::default();
    let (a, b) = (
        Server::new(etcd.store("/tk"), Clock::new(), Default::default(), limit).unwrap(),
        Server::new(etcd.store("/tk"), Clock::new(), Default::default(), limit).unwrap(),
    );
    let keep = ("111111111111", "token-of-account-a-kept-1");
    let revoke = ("222222222222", "token-of-account-b-revoked");
    let both: std::collections::BTreeMap<String, String> = [keep, revoke]
        .iter()
        .map(|(a, t)| (a.to_string(), t.to_string()))
        .collect();
    assert!(a.set_account_tokens(&both).unwrap());
    assert!(
        !a.set_account_tokens(&both).unwrap(),
        "the same set again changes nothing"
    );
    let accepts = |s: &Server, token: &str| s.account_of(token).is_some();
    wait(
        Duration::from_secs(5),
        "replica B to accept both tokens",
        || accepts(&b, keep.1) && accepts(&b, revoke.1),
    );
    for (k, v) in everything_under(&etcd, "/tk/") {
        for (_, token) in [keep, revoke] {
            assert!(
                !k.contains(token) && !v.contains(token),
                "a token in etcd: {k} = {v}"
            );
        }
    }
    // A's file loses a line: A writes the new set, and B follows its watch within 1 s.
    let fewer = [keep]
        .iter()
        .map(|(a, t)| (a.to_string(), t.to_string()))
        .collect();
    assert!(a.set_account_tokens(&fewer).unwrap());
    assert!(!accepts(&a, revoke.1) && accepts(&a, keep.1));
    wait(
        Duration::from_secs(1),
        "replica B to refuse the revoked token",
        || !accepts(&b, revoke.1),
    );
    assert!(accepts(&b, keep.1));
}

#[test]
fn plain_tokens_an_older_version_stored_are_hashed_and_deleted() {
    let etcd = Etcd::start("plain-tokens");
    block_on(async {
        let mut c = etcd_client::Client::connect(etcd.endpoints(), None)
            .await
            .unwrap();
        c.put("/old/tokens/plain-token-of-account-1", "111111111111", None)
            .await
            .unwrap();
    });
    let s = Server::new(
        etcd.store("/old"),
        Clock::new(),
        Default::default(),
        RateLimit::default(),
    )
    .unwrap();
    assert_eq!(
        s.account_of("plain-token-of-account-1").as_deref(),
        Some("111111111111")
    );
    let all = everything_under(&etcd, "/old/");
    assert!(
        all.iter()
            .all(|(k, v)| !k.contains("plain-token") && !v.contains("plain-token")),
        "{all:?}"
    );
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_replicas_never_lose_each_others_updates() {
    let etcd = Etcd::start("replicas");
    let (mut a, mut b) = (etcd.store("/r"), etcd.store("/r"));
    let (w, r) = a.load().unwrap();
    assert_eq!(b.load().unwrap(), (w.clone(), r));
    let wa = with_counter(&w, "from-a", 1);
    a.commit(&w, &wa, r + 1).unwrap();
    // B's change was made on the world before A's: refused whole, nothing written.
    let wb = with_counter(&w, "from-b", 1);
    let e = format!("{:#}", b.commit(&w, &wb, r + 1).unwrap_err());
    assert!(e.contains("another control-plane replica"), "{e}");
    let (now, _) = etcd.store("/r").load().unwrap();
    assert_eq!(now, wa, "A's update is kept, B's not half-applied");
    // Having read again, B commits on top of A's change.
    let mut b = etcd.store("/r");
    let (cur, rev) = b.load().unwrap();
    let wb = with_counter(&cur, "from-b", 1);
    b.commit(&cur, &wb, rev + 1).unwrap();
    let (now, _) = etcd.store("/r").load().unwrap();
    assert_eq!(now.id_counters.len(), 2);
}

async fn post(
    router: &axum::Router,
    path: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// Two control-plane replicas on one etcd: each takes calls; the one whose view is behind
/// has its commit refused by the store, reads again and redoes the call on the newer
/// world. Both VPCs exist, each with its own VNI: no update lost, no number given twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_replicas_both_take_calls_and_lose_nothing() {
    let etcd = Etcd::start("api");
    let token = "token-of-account-a-for-tests";
    let limit = RateLimit::default();
    let replica = || {
        let s = Server::new(etcd.store("/api"), Clock::new(), Default::default(), limit).unwrap();
        s.add_token("111111111111", token).unwrap();
        (s.clone(), peer_dataplane_controlplane::api::router(s))
    };
    let (a, ra) = replica();
    let (b, rb) = replica();
    let vpc = |id: &str, cidr: &str| serde_json::json!({"id": id, "region": "eu-west-1", "cidrs": [cidr]});
    let (s1, v1) = post(&ra, "/v1/vpcs", token, vpc("vpc-x", "10.1.0.0/16")).await;
    assert_eq!(s1, 201, "{v1}");
    // B learns of it from etcd's watch, without writing anything itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.world().vpcs.contains_key("vpc-x") {
        assert!(
            Instant::now() < deadline,
            "replica B never saw replica A's commit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.revision(),
        a.revision(),
        "both replicas at etcd's revision"
    );
    // Another commit on A: B may not have read it when its own call comes; either way,
    // B's call goes in on top of A's (refused by etcd, read again and redone, if behind).
    let (s1b, v1b) = post(&ra, "/v1/vpcs", token, vpc("vpc-w", "10.4.0.0/16")).await;
    assert_eq!(s1b, 201, "{v1b}");
    // B has not seen vpc-x: its commit is refused by etcd, then redone on the new world.
    let (s2, v2) = post(&rb, "/v1/vpcs", token, vpc("vpc-y", "10.2.0.0/16")).await;
    assert_eq!(s2, 201, "{v2}");
    assert_ne!(v1["vni"], v2["vni"], "two VPCs, two VNIs");
    // A has not seen vpc-y: creating it again there is refused as a duplicate once A has
    // read the store again (never written twice).
    let (_, v3) = post(&ra, "/v1/vpcs", token, vpc("vpc-y", "10.3.0.0/16")).await;
    assert_eq!(v3["error"]["code"], "already_exists", "{v3}");
    let (world, _) = etcd.store("/api").load().unwrap();
    let ids: Vec<&String> = world.vpcs.keys().collect();
    assert_eq!(ids, ["vpc-w", "vpc-x", "vpc-y"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.world() != world {
        assert!(Instant::now() < deadline, "replica A never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.world(), world);
}

/// Replica B follows A's commits from the rows etcd's watch carries (objects and single
/// routes, a table replaced whole, a VPC and its table deleted): its world ends equal to
/// what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_applies_anothers_commits_row_by_row() {
    let etcd = Etcd::start("rows");
    let token = "token-of-account-a-for-tests";
    let limit = RateLimit {
        per_second: 1e9,
        burst: 1e9,
    };
    let replica = || {
        let s = Server::new(etcd.store("/rows"), Clock::new(), Default::default(), limit).unwrap();
        s.add_token("111111111111", token).unwrap();
        (s.clone(), peer_dataplane_controlplane::api::router(s))
    };
    let (_a, ra) = replica();
    let (b, _rb) = replica();
    let vpc = |id: &str, cidr: &str| serde_json::json!({"id": id, "region": "eu-west-1", "cidrs": [cidr]});
    let (_, va) = post(&ra, "/v1/vpcs", token, vpc("vpc-a", "10.1.0.0/16")).await;
    post(&ra, "/v1/vpcs", token, vpc("vpc-b", "172.16.0.0/12")).await;
    post(&ra, "/v1/vpcs", token, vpc("vpc-c", "10.3.0.0/16")).await;
    let (_, p) = post(&ra, "/v1/vpc-peering", token, serde_json::json!({"requester_vpc_id": "vpc-a", "accepter_vpc_id": "vpc-b", "auto_accept": true})).await;
    let pcx = p["id"].as_str().unwrap();
    let rtb = va["main_route_table"].as_str().unwrap();
    let routes: Vec<serde_json::Value> = (0..2000)
        .map(|i| serde_json::json!({"destination_cidr": format!("172.16.{}.{}/32", i / 250, i % 250), "target": pcx}))
        .collect();
    let put = |body: serde_json::Value| {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method("PUT")
            .uri(format!("/v1/route-tables/{rtb}/routes"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        ra.clone().oneshot(req)
    };
    assert_eq!(
        put(serde_json::json!({"routes": routes}))
            .await
            .unwrap()
            .status(),
        200
    );
    let (s, v) = post(
        &ra,
        &format!("/v1/route-tables/{rtb}/routes"),
        token,
        serde_json::json!({"destination_cidr": "172.20.0.0/16", "target": "blackhole"}),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        put(serde_json::json!({"routes": routes[..1500]}))
            .await
            .unwrap()
            .status(),
        200
    );
    {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method("DELETE")
            .uri("/v1/vpcs/vpc-c")
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(ra.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let (world, revision) = etcd.store("/rows").load().unwrap();
    assert_eq!(world.route_tables[rtb].routes.len(), 1500);
    assert!(!world.vpcs.contains_key("vpc-c"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.revision() < revision {
        assert!(
            Instant::now() < deadline,
            "replica B never reached revision {revision}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.world(),
        world,
        "B's world, built from the rows of A's commits"
    );
}

/// etcd serving TLS only, with client certificates required and authentication on: a
/// replica with the CA, its certificate and a password login (or its certificate's
/// user) stores, watches and follows another replica; without a client certificate,
/// with a wrong password, or without TLS, it is refused with an error that says so.
#[test]
fn a_replica_reaches_etcd_over_tls_with_a_client_certificate_and_a_password() {
    use peer_dataplane_controlplane::store::etcd::EtcdAccess;
    let etcd = common::etcd::secure_with_users("tls-auth");
    let files = etcd.secure_files();
    let eps = etcd.endpoints();
    let limit = RateLimit::default();
    let a = Server::new(etcd.store("/sec"), Clock::new(), Default::default(), limit).unwrap();
    let by_cert =
        EtcdStore::connect_with(&eps, "/sec", &common::etcd::access(files, false)).unwrap();
    let b = Server::new(by_cert, Clock::new(), Default::default(), limit).unwrap();
    a.add_token("111111111111", "token-of-account-a-over-tls")
        .unwrap();
    wait(
        Duration::from_secs(5),
        "replica B (certificate user) to follow A",
        || b.account_of("token-of-account-a-over-tls").is_some(),
    );
    let mut store = etcd.store("/sec");
    let (w0, r0) = store.load().unwrap();
    let w1 = with_counter(&w0, "vpc", 3);
    store.commit(&w0, &w1, r0 + 1).unwrap();
    wait(
        Duration::from_secs(5),
        "both replicas to see the commit",
        || a.world() == w1 && b.world() == w1,
    );

    let refused = |access: &EtcdAccess| match EtcdStore::connect_with(&eps, "/sec", access)
        .and_then(|mut s| s.load())
    {
        Ok(_) => panic!("etcd served a replica it should have refused"),
        Err(e) => format!("{e:#}"),
    };
    let mut wrong_password = common::etcd::access(files, true);
    wrong_password.user = Some(("pdp".into(), "not-the-password".into()));
    let e = refused(&wrong_password);
    assert!(e.contains("authentication failed"), "{e}");
    let mut no_certificate = common::etcd::access(files, true);
    no_certificate.identity = None;
    let e = refused(&no_certificate);
    assert!(e.contains("connecting to etcd"), "{e}");
    let e = refused(&EtcdAccess::default());
    assert!(e.contains("connecting to etcd"), "{e}");
    // The flags' files: each missing companion named.
    let e = EtcdAccess::from_files(None, Some(&files.client_cert), None, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--etcd-cert and --etcd-key go together"), "{e}");
    let e = EtcdAccess::from_files(None, None, None, Some("pdp"), None)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--etcd-user needs --etcd-password-file"), "{e}");
}
