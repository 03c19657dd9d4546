//! A fleet of 100 hosts through the API in process: what each host's document holds, and
//! how big it is. Every host must learn exactly the instances of other hosts in VPCs peered
//! with a VPC it carries (computed here independently), and nothing else; the test prints
//! the per-host document sizes against the whole fleet's.

mod common;

use common::call;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

const HOSTS: usize = 100;
const VPCS: usize = 40;
const PORTS_PER_VPC: usize = 5;
const ACCOUNT: &str = "444444444444";
const TOKEN: &str = "token-for-the-fleet-account";

fn host(i: usize) -> String {
    format!("hv-{i:03}")
}

fn host_token(i: usize) -> String {
    format!("token-of-host-{i:03}-for-tests")
}

/// Port `j` of VPC `v` lives on this host: spread, so that a VPC spans several hosts.
fn placement(v: usize, j: usize) -> usize {
    (v * 7 + j * 13) % HOSTS
}

/// VPC `v` is peered with `v + 1` (a chain): each VPC has two peers, none transitively.
fn peers(v: usize) -> Vec<usize> {
    [v.checked_sub(1), (v + 1 < VPCS).then_some(v + 1)]
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test]
async fn each_of_100_hosts_learns_exactly_the_instances_it_can_reach() {
    let host_tokens: BTreeMap<String, String> =
        (0..HOSTS).map(|i| (host(i), host_token(i))).collect();
    let r = common::router(ACCOUNT, TOKEN, host_tokens);

    for i in 0..HOSTS {
        let body = json!({"underlay_ipv4": format!("10.200.{}.{}", i / 200, i % 200 + 1), "uplink": "eth0"});
        call(
            &r,
            "PUT",
            &format!("/v1/hosts/{}", host(i)),
            &host_token(i),
            Some(body),
        )
        .await;
    }
    let mut rtb = Vec::new();
    for v in 0..VPCS {
        let cidr = format!("10.{v}.0.0/16");
        let vpc = call(
            &r,
            "POST",
            "/v1/vpcs",
            TOKEN,
            Some(json!({"id": format!("vpc-{v}"), "region": "eu-west-1", "cidrs": [cidr]})),
        )
        .await;
        rtb.push(vpc["main_route_table"].as_str().unwrap().to_string());
        let subnet = format!("subnet-{v}");
        call(&r, "POST", "/v1/subnets", TOKEN, Some(json!({"id": subnet, "vpc_id": format!("vpc-{v}"), "cidr": format!("10.{v}.1.0/24")}))).await;
        for j in 0..PORTS_PER_VPC {
            let body = json!({
                "id": format!("port-{v}-{j}"),
                "host": host(placement(v, j)),
                "interface": format!("p{v}x{j}"),
                "subnet_id": subnet,
                "mac": format!("02:00:00:00:{v:02x}:{j:02x}"),
                "ipv4": format!("10.{v}.1.{}", j + 10),
            });
            call(&r, "POST", "/v1/ports", TOKEN, Some(body)).await;
        }
    }
    for v in 0..VPCS - 1 {
        let body = json!({"requester_vpc_id": format!("vpc-{v}"), "accepter_vpc_id": format!("vpc-{}", v + 1), "auto_accept": true});
        let p = call(&r, "POST", "/v1/vpc-peering", TOKEN, Some(body)).await;
        let pcx = p["id"].as_str().unwrap().to_string();
        for (from, to) in [(v, v + 1), (v + 1, v)] {
            let route = json!({"destination": format!("10.{to}.0.0/16"), "target": pcx});
            call(
                &r,
                "POST",
                &format!("/v1/route-tables/{}/routes", rtb[from]),
                TOKEN,
                Some(route),
            )
            .await;
        }
    }

    // Independently: the remote instances each host must learn.
    let mut sizes = Vec::new();
    let mut remote_counts = Vec::new();
    for h in 0..HOSTS {
        let here: BTreeSet<usize> = (0..VPCS)
            .filter(|v| (0..PORTS_PER_VPC).any(|j| placement(*v, j) == h))
            .collect();
        let reach: BTreeSet<usize> = here.iter().flat_map(|v| peers(*v)).collect();
        let want: BTreeSet<String> = reach
            .iter()
            .flat_map(|v| (0..PORTS_PER_VPC).map(move |j| (*v, j)))
            .filter(|(v, j)| placement(*v, *j) != h)
            .map(|(v, j)| format!("p{v}x{j}"))
            .collect();
        let state = call(
            &r,
            "GET",
            &format!("/v1/hosts/{}/state", host(h)),
            &host_token(h),
            None,
        )
        .await;
        let doc = &state["document"];
        let got: BTreeSet<String> = doc["remote_port"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p["interface"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            got,
            want,
            "host {} learns exactly what it can reach",
            host(h)
        );
        // Only the VPCs it uses: its own and their peers.
        let vpcs: BTreeSet<String> = doc["vpc"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| v["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let want_vpcs: BTreeSet<String> = here.union(&reach).map(|v| format!("vpc-{v}")).collect();
        assert_eq!(vpcs, want_vpcs, "host {}: the VPCs it carries", host(h));
        let hosts_listed = doc["host"].as_array().map_or(0, |a| a.len());
        let want_hosts: BTreeSet<usize> = reach
            .iter()
            .flat_map(|v| (0..PORTS_PER_VPC).map(move |j| placement(*v, j)))
            .chain(std::iter::once(h))
            .collect();
        assert_eq!(
            hosts_listed,
            want_hosts.len(),
            "host {}: hosts listed",
            host(h)
        );
        sizes.push(doc.to_string().len());
        remote_counts.push(got.len());
    }
    sizes.sort();
    remote_counts.sort();
    let all_ports = VPCS * PORTS_PER_VPC;
    println!(
        "{HOSTS} hosts, {VPCS} VPCs, {all_ports} instances, {} peerings: per-host document (JSON) \
         min {} / median {} / max {} bytes; remote instances per host min {} / median {} / max {} of {all_ports}",
        VPCS - 1,
        sizes[0],
        sizes[HOSTS / 2],
        sizes[HOSTS - 1],
        remote_counts[0],
        remote_counts[HOSTS / 2],
        remote_counts[HOSTS - 1],
    );
}
