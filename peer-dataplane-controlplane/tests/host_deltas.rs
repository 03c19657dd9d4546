//! Deltas through the API in process: after every kind of change, each host's delta from
//! the revision it holds, applied to the document it holds, must give exactly the whole
//! document the control plane serves at the new revision; and a single route change
//! travels as one route, not as its table.

mod common;

use axum::Router;
use common::call;
use peer_dataplane_model::desired::delta::{Delta, Held};
use peer_dataplane_model::desired::document::Document;
use peer_dataplane_tests::controlplane::canonical_document;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const HOSTS: usize = 3;
const ACCOUNT: &str = "555555555555";
const TOKEN: &str = "token-for-the-delta-account";

fn host(i: usize) -> String {
    format!("hv-{i}")
}

fn host_token(i: usize) -> String {
    format!("token-of-delta-host-{i}")
}

struct Agent {
    held: Held,
    revision: u64,
}

struct Fleet {
    r: Router,
    server: std::sync::Arc<peer_dataplane_controlplane::api::Server>,
    agents: Vec<Agent>,
}

impl Fleet {
    async fn whole(&self, h: usize) -> (Document, u64) {
        let s = call(
            &self.r,
            "GET",
            &format!("/v1/hosts/{}/state", host(h)),
            &host_token(h),
            None,
        )
        .await;
        (
            serde_json::from_value(s["document"].clone()).unwrap(),
            s["revision"].as_u64().unwrap(),
        )
    }

    /// Every host follows by delta; checks each against the whole document. Returns the
    /// deltas (per host) for the caller to look at.
    async fn follow(&mut self, what: &str) -> Vec<Delta> {
        let mut out = Vec::new();
        for h in 0..HOSTS {
            let a = &self.agents[h];
            let path = format!(
                "/v1/hosts/{}/state?after={}&delta=true&wait_ms=0",
                host(h),
                a.revision
            );
            let s = call(&self.r, "GET", &path, &host_token(h), None).await;
            assert!(
                s.get("document").is_none(),
                "{what}: host {h} got a whole document: {s}"
            );
            let d: Delta = serde_json::from_value(s["delta"].clone()).unwrap();
            let a = &mut self.agents[h];
            a.held
                .apply(&d)
                .unwrap_or_else(|e| panic!("{what}: host {h}: {e}"));
            a.revision = s["revision"].as_u64().unwrap();
            let (whole, revision) = self.whole(h).await;
            let a = &self.agents[h];
            assert_eq!(revision, a.revision, "{what}: host {h}");
            assert_eq!(
                canonical_document(&a.held.doc),
                canonical_document(&whole),
                "{what}: host {h}'s document after the delta"
            );
            out.push(d);
        }
        // The server checked the change at the cost of what it touched; the world it
        // committed passes the whole check too.
        peer_dataplane_controlplane::ops::check(&self.server.world())
            .unwrap_or_else(|e| panic!("{what}: the whole check refuses the committed world: {e}"));
        out
    }
}

#[tokio::test]
async fn every_kind_of_change_reaches_each_host_as_a_delta_that_rebuilds_its_document() {
    let host_tokens: BTreeMap<String, String> =
        (0..HOSTS).map(|i| (host(i), host_token(i))).collect();
    let (server, r) = common::server(ACCOUNT, TOKEN, host_tokens);
    for i in 0..HOSTS {
        let body = json!({"underlay_ipv4": format!("10.201.0.{}", i + 1), "uplink": "eth0"});
        call(
            &r,
            "PUT",
            &format!("/v1/hosts/{}", host(i)),
            &host_token(i),
            Some(body),
        )
        .await;
    }
    let mut fleet = Fleet {
        r: r.clone(),
        server: server.clone(),
        agents: Vec::new(),
    };
    for h in 0..HOSTS {
        let (doc, revision) = fleet.whole(h).await;
        fleet.agents.push(Agent {
            held: Held::new(doc),
            revision,
        });
    }

    // VPCs, subnets, ports on different hosts.
    for v in 0..3 {
        call(&r, "POST", "/v1/vpcs", TOKEN, Some(json!({"id": format!("vpc-{v}"), "region": "eu-west-1", "cidrs": [format!("10.{v}.0.0/16")]}))).await;
        fleet.follow(&format!("vpc {v}")).await;
        call(&r, "POST", "/v1/subnets", TOKEN, Some(json!({"id": format!("subnet-{v}"), "vpc_id": format!("vpc-{v}"), "cidr": format!("10.{v}.1.0/24")}))).await;
        fleet.follow(&format!("subnet {v}")).await;
        let port = json!({"id": format!("port-{v}"), "host": host(v), "interface": format!("p{v}"), "subnet_id": format!("subnet-{v}"), "mac": format!("02:00:00:00:00:{v:02x}"), "ipv4": format!("10.{v}.1.10")});
        call(&r, "POST", "/v1/ports", TOKEN, Some(port)).await;
        fleet.follow(&format!("port {v}")).await;
    }
    // A peering, accepted: caps, remote instances, hosts appear.
    let p = call(
        &r,
        "POST",
        "/v1/vpc-peering",
        TOKEN,
        Some(json!({"requester_vpc_id": "vpc-0", "accepter_vpc_id": "vpc-1"})),
    )
    .await;
    let pcx = p["id"].as_str().unwrap().to_string();
    fleet.follow("peering requested").await;
    call(
        &r,
        "POST",
        &format!("/v1/vpc-peering/{pcx}/accept"),
        TOKEN,
        None,
    )
    .await;
    fleet.follow("peering accepted").await;
    let rtb = call(&r, "GET", "/v1/vpcs/vpc-0", TOKEN, None).await["main_route_table"]
        .as_str()
        .unwrap()
        .to_string();

    // A large table, then one route: the route travels alone.
    let routes: Vec<Value> = (0..2000)
        .map(|i| json!({"destination_cidr": format!("10.1.{}.{}/32", i / 250, i % 250 + 1), "target": pcx}))
        .collect();
    call(
        &r,
        "PUT",
        &format!("/v1/route-tables/{rtb}/routes"),
        TOKEN,
        Some(json!({"routes": routes})),
    )
    .await;
    fleet.follow("2000 routes replaced").await;
    call(
        &r,
        "POST",
        &format!("/v1/route-tables/{rtb}/routes"),
        TOKEN,
        Some(json!({"destination_cidr": "10.1.200.0/24", "target": pcx})),
    )
    .await;
    // Only host 0 carries vpc-0's table: the route reaches it alone, and nobody else.
    let deltas = fleet.follow("one route added").await;
    assert_eq!(
        deltas[0].routes.len(),
        1,
        "one route, not its table: {:?}",
        deltas[0]
    );
    assert!(
        deltas[0].put.route_tables.is_empty() && deltas[0].size() == 1,
        "{:?}",
        deltas[0]
    );
    assert!(deltas[1].is_empty() && deltas[2].is_empty(), "{deltas:?}");
    call(
        &r,
        "DELETE",
        &format!("/v1/route-tables/{rtb}/routes/10.1.0.7/32"),
        TOKEN,
        None,
    )
    .await;
    let deltas = fleet.follow("one route deleted").await;
    assert_eq!(deltas[0].size(), 1, "{:?}", deltas[0]);
    assert_eq!(deltas[0].routes[0].target, None);
    assert!(deltas[1].is_empty() && deltas[2].is_empty(), "{deltas:?}");
    // Policy: a network ACL, a security group, and a port that uses it.
    let acl = call(&r, "POST", "/v1/network-acls", TOKEN, Some(json!({"vpc_id": "vpc-0", "rules": [{"number": 10, "direction": "ingress", "protocol": "tcp", "port_from": 22, "port_to": 22, "cidr": "10.1.0.0/16", "action": "deny"}]}))).await;
    fleet.follow("network acl").await;
    let sg = call(&r, "POST", "/v1/security-groups", TOKEN, Some(json!({"vpc_id": "vpc-1", "rules": [{"direction": "ingress", "protocol": "all", "cidr": "10.0.0.0/16"}]}))).await;
    fleet.follow("security group").await;
    let sg = sg["id"].as_str().unwrap();
    call(&r, "POST", "/v1/ports", TOKEN, Some(json!({"id": "port-1b", "host": host(2), "interface": "p1b", "subnet_id": "subnet-1", "mac": "02:00:00:00:01:0b", "ipv4": "10.1.1.11", "security_groups": [sg]}))).await;
    fleet.follow("port with a group on a third host").await;
    call(
        &r,
        "DELETE",
        &format!("/v1/network-acls/{}", acl["id"].as_str().unwrap()),
        TOKEN,
        None,
    )
    .await;
    fleet.follow("network acl deleted").await;
    // A change in a VPC no other host uses reaches only its own host; the others' long
    // polls are not woken: they end at their timeout with nothing, their revision moved on.
    let before = fleet.agents[0].revision;
    call(
        &r,
        "POST",
        "/v1/network-acls",
        TOKEN,
        Some(json!({"vpc_id": "vpc-2", "rules": []})),
    )
    .await;
    let deltas = fleet.follow("network acl in vpc-2").await;
    assert!(deltas[0].is_empty() && deltas[1].is_empty(), "{deltas:?}");
    assert_eq!(deltas[2].put.network_acls.len(), 1, "{:?}", deltas[2]);
    assert!(fleet.agents[0].revision > before);
    call(
        &r,
        "POST",
        "/v1/network-acls",
        TOKEN,
        Some(json!({"vpc_id": "vpc-2", "rules": []})),
    )
    .await;
    let path = format!(
        "/v1/hosts/{}/state?after={}&delta=true&wait_ms=200",
        host(0),
        fleet.agents[0].revision
    );
    let s = call(&r, "GET", &path, &host_token(0), None).await;
    assert_eq!(s["delta"], json!({}), "{s}");
    assert!(
        s["revision"].as_u64().unwrap() > fleet.agents[0].revision,
        "{s}"
    );

    // Everything torn down again: ports, the peering, a table's routes.
    call(&r, "DELETE", "/v1/ports/port-1b", TOKEN, None).await;
    fleet.follow("port deleted").await;
    call(
        &r,
        "PUT",
        &format!("/v1/route-tables/{rtb}/routes"),
        TOKEN,
        Some(json!({"routes": []})),
    )
    .await;
    fleet.follow("routes cleared").await;
    call(&r, "DELETE", &format!("/v1/vpc-peering/{pcx}"), TOKEN, None).await;
    fleet.follow("peering deleted").await;

    // An agent whose revision this replica does not hold gets its whole document.
    let s = call(
        &r,
        "GET",
        &format!("/v1/hosts/{}/state?after=1&delta=true&wait_ms=0", host(0)),
        &host_token(0),
        None,
    )
    .await;
    assert!(s.get("document").is_some() || s["delta"].is_object(), "{s}");
}
