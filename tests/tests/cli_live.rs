//! The operator CLI against a live, privileged setup: the real object loaded with its maps
//! pinned, the seed topology (with a cap, an ACL and security groups) installed, a few
//! packets run through, then each verb's JSON output checked. Needs root and BPF.

use anyhow::{ensure, Context, Result};
use peer_dataplane::desired::document::{AclRuleDoc, NetworkAclDoc, SecurityGroupDoc, SgRuleDoc};
use peer_dataplane_tests::cli;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns;
use peer_dataplane_tests::packets::{self, L2};
use peer_dataplane_tests::seed::{self, A, B, ROUTER_MAC};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json(pin_dir: &Path, args: &[&str]) -> Result<Value> {
    let out = cli(pin_dir, args)?;
    ensure!(
        out.status.success(),
        "peer-dataplane {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("JSON of {args:?}"))
}

#[test]
fn cli_verbs_report_what_is_installed() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = seed::ports_only(&peer_dataplane_tests::unique("cli"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    dp.install(&cli_doc())?;
    // B -> A, UDP to port 6000: A's subnet ACL denies it on the way in (rule 100).
    let l2 = L2 {
        src: B.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let p = packets::udp4(l2, B.ipv4, A.ipv4, 64, 5000, 6000, b"x");
    dp.run(netns::ifindex(B.port), &p)?;
    let pin = dp.pin_dir.clone();

    peering_verbs(&pin)?;
    route_and_port_verbs(&pin)?;
    acl_verbs(&pin)?;
    stats_verbs(&dp, &pin)?;
    cache_verbs(&dp, &pin)?;
    let table = String::from_utf8(cli(&pin, &["port", "list"])?.stdout)?;
    assert!(table.starts_with("PORT"), "{table}");
    Ok(())
}

/// The seed with a cap on pcx-ab, an ACL on A's subnet and a group on B's port.
fn cli_doc() -> peer_dataplane::desired::Document {
    let mut doc = seed::seed_doc();
    doc.peerings[0].bandwidth_mbps = Some(250);
    let rule = |number, direction: &str, action: &str| AclRuleDoc {
        number,
        direction: direction.into(),
        protocol: "udp".into(),
        port_from: Some(6000),
        port_to: Some(6000),
        cidr: "172.16.0.0/16".into(),
        action: action.into(),
    };
    doc.network_acls.push(NetworkAclDoc {
        id: "acl-a".into(),
        vpc: "vpc-a".into(),
        rules: vec![
            rule(200, "ingress", "allow"),
            rule(100, "ingress", "deny"),
            rule(100, "egress", "allow"),
        ],
    });
    doc.subnets[0].network_acl = Some("acl-a".into());
    doc.security_groups.push(SecurityGroupDoc {
        id: "sg-b".into(),
        vpc: "vpc-b".into(),
        rules: vec![SgRuleDoc {
            direction: "ingress".into(),
            protocol: "all".into(),
            cidr: Some("0.0.0.0/0".into()),
            ..Default::default()
        }],
    });
    doc.ports[1].security_groups = Some(vec!["sg-b".into()]);
    doc
}

/// `peering list|get`, and a peering that is not there.
fn peering_verbs(pin: &std::path::Path) -> Result<()> {
    let list = json(pin, &["peering", "list", "-o", "json"])?;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["pcx-ab", "pcx-bc"]);
    let ab = json(pin, &["peering", "get", "pcx-ab", "-o", "json"])?;
    assert_eq!(ab["status"], "active");
    assert_eq!(ab["requester_vpc"], "vpc-a");
    assert_eq!(ab["requester_to_accepter"]["cap_bps"], 250_000_000);
    assert_eq!(ab["accepter_to_requester"]["cap_bps"], 250_000_000);
    // The packet B -> A met A's ACL on the way in.
    assert_eq!(ab["accepter_to_requester"]["dropped"], 1, "{ab}");
    assert!(list[1]["requester_to_accepter"]["cap_bps"].is_null());

    let missing = cli(pin, &["peering", "get", "pcx-zz"])?;
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("peering pcx-zz is not installed (installed: pcx-ab, pcx-bc)"),
        "{err}"
    );

    Ok(())
}

/// `route list` (one table, the VPC tables, a table that is not there) and `port list`.
fn route_and_port_verbs(pin: &std::path::Path) -> Result<()> {
    let routes = json(pin, &["route", "list", "--table", "rtb-a", "-o", "json"])?;
    let routes: Vec<(String, String)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["destination"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("172.16.0.0/16", "pcx-ab"),
        ("fd00:b::/48", "pcx-ab"),
        ("10.0.0.0/16", "local"),
    ] {
        assert!(
            routes.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from {routes:?}"
        );
    }
    let all = json(pin, &["route", "list", "--vpc-tables", "-o", "json"])?;
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["table"] == "vpc:vpc-c" && r["destination"] == "192.168.0.0/16"));
    let bad = cli(pin, &["route", "list", "--table", "rtb-zz"])?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("route table rtb-zz is not installed"));

    let ports = json(pin, &["port", "list", "-o", "json"])?;
    let a = &ports[0];
    assert_eq!(a["interface"], "pdp-a");
    assert_eq!(a["vpc"], "vpc-a");
    assert_eq!(a["route_table"], "rtb-a");
    assert_eq!(a["ipv4"], "10.0.2.10");
    assert_eq!(a["network_acl"], "acl-a");
    assert!(a["security_groups"].is_null());
    assert_eq!(ports[1]["security_groups"], "sg-b");
    assert_eq!(ports[1]["mac"], seed::mac_str(&B.mac));

    Ok(())
}

/// `acl hits`, an ACL that is not there, and `conntrack list`.
fn acl_verbs(pin: &std::path::Path) -> Result<()> {
    let hits = json(pin, &["acl", "hits", "acl-a", "-o", "json"])?;
    let hits: Vec<(String, u64, String, u64)> = hits
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["direction"].as_str().unwrap().to_string(),
                h["rule"].as_u64().unwrap(),
                h["action"].as_str().unwrap().to_string(),
                h["hits"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("egress".into(), 100, "allow".into(), 0),
            ("ingress".into(), 100, "deny".into(), 1),
            ("ingress".into(), 200, "allow".into(), 0),
        ]
    );
    let bad = cli(pin, &["acl", "hits", "acl-zz"])?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("network acl acl-zz is not installed"));

    let flows = json(pin, &["conntrack", "list", "-o", "json"])?;
    assert_eq!(flows.as_array().unwrap().len(), 0, "{flows}");

    Ok(())
}

/// `cache stats|flush|off|on`: the epoch moves on with each, and no decision of the new
/// epoch is left.
fn cache_verbs(dp: &TestDataplane, pin: &std::path::Path) -> Result<()> {
    // Three runs of a new flow A -> B in one BPF_PROG_RUN (one CPU): the first runs the
    // whole pipeline and only marks the flow seen, the second runs it again and keeps
    // its decision, the third is forwarded by it.
    let start = cache_stats(pin)?;
    run_a_to_b(dp, 5001, 3)?;
    let after = cache_stats(pin)?;
    assert_cache_deltas(
        &start,
        &after,
        &[
            ("misses", 2),
            ("deferred", 1),
            ("kept", 1),
            ("hits", 1),
            ("evictions", 0),
            ("declined", 0),
        ],
    );
    let per_cpu_hits: u64 = after["counters_per_cpu"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hits"].as_u64().unwrap())
        .sum();
    assert_eq!(per_cpu_hits, cache_counter(&after, "hits"));
    let text = String::from_utf8(cli(pin, &["cache", "stats"])?.stdout)?;
    assert!(text.contains("hit ratio"), "{text}");
    let used = a_taken_slot_is_replaced_in_turn(dp, pin)?;
    let kept = |s: &serde_json::Value| -> u64 {
        s["kept_per_cpu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    let before = cache_stats(pin)?;
    assert_eq!(before["on"], true, "{before}");
    assert_eq!(
        before["kept_per_cpu"].as_array().unwrap().len(),
        aya::util::nr_cpus().unwrap()
    );
    let epoch = before["epoch"].as_u64().unwrap();
    let out = cli(pin, &["cache", "flush"])?;
    assert!(out.status.success());
    let flushed = cache_stats(pin)?;
    assert_eq!(flushed["epoch"].as_u64().unwrap(), epoch + 1, "{flushed}");
    assert_eq!(kept(&flushed), 0, "{flushed}");
    assert!(cli(pin, &["cache", "off"])?.status.success());
    let off = cache_stats(pin)?;
    assert_eq!(off["on"], false, "{off}");
    assert_eq!(off["epoch"].as_u64().unwrap(), epoch + 2, "{off}");
    assert!(cli(pin, &["cache", "on"])?.status.success());
    assert_eq!(cache_stats(pin)?["on"], true);
    one_packet_flows_keep_nothing(dp, pin, &used)
}

/// The key of the UDP flow from A to B's port 6000 from source port `sport`.
fn a_to_b_key(sport: u16) -> peer_dataplane_common::flowcache::FlowKey {
    peer_dataplane_common::flowcache::FlowKey {
        ifindex: netns::ifindex(A.port),
        src: peer_dataplane_common::addr::from_v4(A.ipv4),
        dst: peer_dataplane_common::addr::from_v4(B.ipv4),
        sport,
        dport: 6000,
        proto: 17,
        ..peer_dataplane_common::flowcache::FlowKey::ZERO
    }
}

/// `runs` packets of that flow through the pipeline in one BPF_PROG_RUN (on this CPU),
/// forwarded.
fn run_a_to_b(dp: &TestDataplane, sport: u16, runs: u32) -> Result<()> {
    let l2 = L2 {
        src: A.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let p = packets::udp4(l2, A.ipv4, B.ipv4, 64, sport, 6000, b"x");
    let out = dp.run_on(
        peer_dataplane_common::program_names::PIPELINE,
        netns::ifindex(A.port),
        &p,
        runs,
    )?;
    ensure!(out.action == peer_dataplane_tests::harness::XDP_REDIRECT);
    Ok(())
}

/// `cache stats -o json`.
fn cache_stats(pin: &Path) -> Result<Value> {
    json(pin, &["cache", "stats", "-o", "json"])
}

/// A counter of `cache stats -o json`, summed over the CPUs.
fn cache_counter(s: &Value, name: &str) -> u64 {
    s["counters"][name].as_u64().unwrap()
}

/// Asserts how far each named counter moved from `start` to `end`.
fn assert_cache_deltas(start: &Value, end: &Value, deltas: &[(&str, u64)]) {
    for &(name, delta) in deltas {
        assert_eq!(
            cache_counter(end, name) - cache_counter(start, name),
            delta,
            "{name}: {start} -> {end}"
        );
    }
}

/// A flow whose slot holds another flow's decision of this epoch takes it on this CPU's
/// next miss that is a multiple of REPLACE_EVERY, every earlier miss declined; then its
/// own packets hit. Returns the source ports it ran.
fn a_taken_slot_is_replaced_in_turn(dp: &TestDataplane, pin: &std::path::Path) -> Result<Vec<u16>> {
    use peer_dataplane_common::flowcache::{tag, tag_is_of, REPLACE_EVERY};
    // The slots are per CPU: every run below on this one.
    let cpu = peer_dataplane::bpf::progrun::stay_on_this_cpu()?;
    let key = a_to_b_key;
    // Another source port whose decision goes in the same slot as 5001's, and whose tag
    // tells it apart (an eviction is counted by the tags).
    let other = (5002..u16::MAX)
        .find(|&s| {
            key(s).slot() == key(5001).slot() && !tag_is_of(tag(key(5001).hash(), 0), key(s).hash())
        })
        .context("no source port shares 5001's slot")?;
    let run = |sport: u16| run_a_to_b(dp, sport, 1);
    let stats = || cache_stats(pin);
    let cpu_misses = |s: &Value| s["counters_per_cpu"][cpu]["misses"].as_u64().unwrap();
    // 5001's decision in this CPU's slot: kept on its first or second miss here (or
    // already there), shown by a hit.
    let cpu_hits = |s: &Value| s["counters_per_cpu"][cpu]["hits"].as_u64().unwrap();
    let before = cpu_hits(&stats()?);
    let mut tries = 0;
    while cpu_hits(&stats()?) == before {
        ensure!(
            tries < 3,
            "port 5001 not forwarded by a kept decision after 3 runs"
        );
        run(5001)?;
        tries += 1;
    }
    // New flows elsewhere until the next miss is not one that replaces, so that at
    // least one is declined.
    let mut fresh = other + 1;
    while (cpu_misses(&stats()?) + 1) % REPLACE_EVERY == 0 {
        if key(fresh).slot() != key(5001).slot() {
            run(fresh)?;
        }
        fresh += 1;
    }
    let start = stats()?;
    let to_turn = REPLACE_EVERY - cpu_misses(&start) % REPLACE_EVERY;
    let mut runs = 0;
    while cache_counter(&stats()?, "kept") == cache_counter(&start, "kept") {
        ensure!(runs < to_turn, "port {other} not kept after {runs} misses");
        run(other)?;
        runs += 1;
    }
    assert_eq!(
        runs, to_turn,
        "kept on miss {runs}, expected on miss {to_turn}"
    );
    assert!(runs >= 2);
    let taken = stats()?;
    assert_cache_deltas(
        &start,
        &taken,
        &[
            ("misses", runs),
            ("declined", runs - 1),
            ("deferred", 0),
            ("evictions", 1),
            ("hits", 0),
        ],
    );
    run(other)?;
    assert_eq!(
        cache_counter(&stats()?, "hits"),
        cache_counter(&taken, "hits") + 1
    );
    let mut used = vec![5000, 5001, other];
    used.extend(other + 1..fresh);
    Ok(used)
}

/// Flows of one packet each, in slots no earlier flow of this test used: every miss is
/// deferred (its tag marked seen), no decision is kept, no slot written.
fn one_packet_flows_keep_nothing(
    dp: &TestDataplane,
    pin: &std::path::Path,
    used: &[u16],
) -> Result<()> {
    use peer_dataplane_common::flowcache::{tag_is_of, FLOW_SLOTS};
    let stats = || cache_stats(pin);
    let cpu = peer_dataplane::bpf::progrun::stay_on_this_cpu()?;
    // An untouched slot's tag is 0: the epoch's low byte 0 (never current while the
    // epoch's is not) and hash bits 0 (flows with those are left out).
    if stats()?["epoch"].as_u64().unwrap() % 256 == 0 {
        ensure!(cli(pin, &["cache", "flush"])?.status.success());
    }
    let mut taken: std::collections::HashSet<u32> =
        used.iter().map(|&s| a_to_b_key(s).slot()).collect();
    let ports: Vec<u16> = (30_000..u16::MAX)
        .filter(|&s| {
            let k = a_to_b_key(s);
            !tag_is_of(0, k.hash()) && taken.insert(k.slot())
        })
        .take(64)
        .collect();
    ensure!(ports.len() == 64 && taken.len() < FLOW_SLOTS as usize);
    let start = stats()?;
    for &s in &ports {
        run_a_to_b(dp, s, 1)?;
    }
    let end = stats()?;
    let n = ports.len() as u64;
    assert_cache_deltas(
        &start,
        &end,
        &[
            ("misses", n),
            ("deferred", n),
            ("kept", 0),
            ("declined", 0),
            ("hits", 0),
        ],
    );
    assert_eq!(
        end["counters_per_cpu"][cpu]["deferred"].as_u64().unwrap()
            - start["counters_per_cpu"][cpu]["deferred"].as_u64().unwrap(),
        n
    );
    // Each flow's second packet keeps its decision.
    for &s in &ports[..8] {
        run_a_to_b(dp, s, 1)?;
    }
    assert_eq!(
        cache_counter(&stats()?, "kept") - cache_counter(&end, "kept"),
        8
    );
    Ok(())
}

/// `stats --per-cpu` and `stats --watch` while packets flow.
fn stats_verbs(dp: &TestDataplane, pin: &std::path::Path) -> Result<()> {
    // stats --per-cpu: the CPUs' shares add up to the total.
    let cpus = json(pin, &["stats", "--per-cpu", "-o", "json"])?;
    let total: u64 = cpus
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["rx_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(
        cpus.as_array().unwrap().len(),
        aya::util::nr_cpus().unwrap()
    );
    assert_eq!(total, dp.global()?.rx_packets);

    // stats --watch: rates while packets flow (A -> B UDP 6000, which acl-a lets out).
    let bin = peer_dataplane_tests::agent_path()?;
    let watch = Command::new(bin)
        .arg("--pin-dir")
        .arg(&pin)
        .args([
            "stats",
            "--watch",
            "--interval",
            "0.3",
            "--count",
            "2",
            "-o",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let l2a = L2 {
        src: A.mac,
        dst: ROUTER_MAC,
        vlan: None,
    };
    let fwd = packets::udp4(l2a, A.ipv4, B.ipv4, 64, 5000, 6000, b"y");
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < std::time::Duration::from_millis(900) {
        let out = dp.run(netns::ifindex(A.port), &fwd)?;
        ensure!(
            out.action == peer_dataplane_tests::harness::XDP_REDIRECT,
            "A -> B not forwarded"
        );
        sent += 1;
    }
    let out = watch.wait_with_output()?;
    let lines: Vec<Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    let best = lines
        .iter()
        .map(|l| l["redirected_pps"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(best > 0.0 && sent > 0, "no forwarding rate seen: {lines:?}");
    let ab = lines[0]["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "pcx-ab" && p["direction"] == "requester_to_accepter")
        .cloned()
        .unwrap();
    assert!(ab["bps"].as_f64().is_some(), "{ab}");

    Ok(())
}
