//! `peer-dataplane trace` against a live, privileged setup: the real object loaded with
//! its programs and maps pinned (as the agent pins them), a topology with a network ACL,
//! a security group, a cap and an inactive peering installed, and the CLI asked to explain
//! one packet per outcome. Also checks that tracing changes nothing: no counters, no rule
//! hits, no tracked flows, no cap tokens spent. Needs root and BPF.

use anyhow::{ensure, Context, Result};
use peer_dataplane::desired::document::{AclRuleDoc, NetworkAclDoc, SecurityGroupDoc, SgRuleDoc};
use peer_dataplane::desired::validate::PeeringStatus;
use peer_dataplane_common::{DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING};
use peer_dataplane_tests::cli;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns;
use peer_dataplane_tests::seed::{self, A, B, C};
use serde_json::Value;
use std::path::Path;

/// `peer-dataplane trace ARGS -o json` (ARGS split on spaces), parsed; the table form
/// must work too.
fn trace(pin_dir: &Path, args: &str) -> Result<Value> {
    let args: Vec<&str> = args.split_whitespace().collect();
    let mut full = vec!["trace"];
    full.extend_from_slice(&args);
    let table = cli(pin_dir, &full)?;
    ensure!(
        table.status.success(),
        "trace {args:?} failed: {}",
        String::from_utf8_lossy(&table.stderr)
    );
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    ensure!(text.contains("verdict: "), "no verdict line in:\n{text}");
    ensure!(
        text.contains("flow cache: "),
        "no flow cache line in:\n{text}"
    );
    println!("$ peer-dataplane trace {}\n{text}", args.join(" "));
    full.extend_from_slice(&["-o", "json"]);
    let out = cli(pin_dir, &full)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("JSON of trace {args:?}"))
}

fn stage<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {t:#}"))
}

fn stage_names(t: &Value) -> Vec<String> {
    t["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

/// The verdict, the reason, and the stage that decided (the last one, not `ok`).
fn decided(t: &Value) -> (String, String, String) {
    let last = t["stages"].as_array().unwrap().last().unwrap();
    (
        t["verdict"].as_str().unwrap().to_string(),
        t["reason"].as_str().unwrap_or("").to_string(),
        format!(
            "{}:{}",
            last["stage"].as_str().unwrap(),
            last["result"].as_str().unwrap()
        ),
    )
}

fn v4(a: [u8; 4]) -> String {
    seed::v4_str(&a)
}

#[test]
fn trace_explains_each_outcome_and_changes_nothing() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = seed::ports_only(&peer_dataplane_tests::unique("trace"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    dp.install(&trace_doc())?;
    let pin = dp.pin_dir.clone();
    let (a, b, c) = (v4(A.ipv4), v4(B.ipv4), v4(C.ipv4));
    let pcx_ab = dp.installed.ids.get(NAME_PEERING, "pcx-ab").unwrap();
    let before = dp.global()?;
    let tat_before = dp
        .installed
        .maps
        .cap_state(pcx_ab, DIR_REQUESTER_TO_ACCEPTER)?;

    trace_forwarded(&pin, &a, &b)?;
    trace_drops(&pin, &a, &b, &c)?;
    // rate-limited: the bucket owes its whole burst.
    let now = dp.now()?;
    let owed = now + 3_600_000_000_000;
    dp.installed
        .maps
        .set_cap_state(pcx_ab, DIR_REQUESTER_TO_ACCEPTER, owed)?;
    let t = trace(
        &pin,
        &format!("--src {a} --dst {b} --protocol tcp --dport 443 --length 1000"),
    )?;
    assert_eq!(
        decided(&t),
        ("drop".into(), "rate-limited".into(), "cap:drop".into())
    );
    assert_eq!(stage(&t, "cap")["facts"]["conforms"], false);
    assert_eq!(stage(&t, "cap")["facts"]["credit_bytes"], 0);
    assert_eq!(stage(&t, "cap")["facts"]["frame_bytes"], 1000);

    // Nothing changed: counters, rule hits, conntrack, the cap's bucket.
    assert_eq!(
        dp.installed
            .maps
            .cap_state(pcx_ab, DIR_REQUESTER_TO_ACCEPTER)?,
        owed,
        "the trace spent cap tokens"
    );
    dp.installed
        .maps
        .set_cap_state(pcx_ab, DIR_REQUESTER_TO_ACCEPTER, tat_before)?;
    assert_eq!(dp.global()?, before, "the trace counted packets");
    let hits = peer_dataplane::views::installed::acl_hits(&dp.installed.maps.snapshot()?, None)?;
    assert!(
        hits.iter().all(|h| h.hits == 0),
        "the trace counted rule hits: {hits:?}"
    );
    assert!(
        dp.installed.maps.conntrack_entries()?.is_empty(),
        "the trace opened a flow"
    );
    assert!(
        dp.installed.maps.flow_decisions()?.is_empty(),
        "the trace kept a flow decision"
    );
    let forwarded = format!("--src {a} --dst {b} --protocol tcp --dport 443");
    let f = &trace(&pin, &forwarded)?["flow_cache"];
    assert_eq!(f["on"], true, "{f}");
    assert_eq!(f["cacheable"], true, "{f}");
    assert_eq!(f["kept"].as_array().unwrap().len(), 0, "{f}");

    // The same packet through the real pipeline is forwarded and does all of that.
    let frame = peer_dataplane::cli::frame::build_frame(
        &peer_dataplane::cli::frame::Request {
            port: None,
            src: a.parse()?,
            dst: b.parse()?,
            protocol: peer_dataplane::cli::frame::Protocol::parse("tcp")?,
            sport: None,
            dport: Some(443),
            ttl: 64,
            length: None,
            from_host: None,
        },
        dp.installed.mirror.ports.get(&netns::ifindex(A.port)),
    )?;
    // Twice, in one BPF_PROG_RUN (one CPU): the first packet marks the flow seen, the
    // second keeps its decision.
    let out = dp.run_on(
        peer_dataplane_common::program_names::PIPELINE,
        netns::ifindex(A.port),
        &frame,
        2,
    )?;
    assert_eq!(out.action, peer_dataplane_tests::harness::XDP_REDIRECT);
    assert_eq!(dp.installed.maps.conntrack_entries()?.len(), 1);
    // It kept its flow's decision, which a trace of the flow now shows; once the epoch
    // moves on, as stale.
    let epoch = dp.installed.maps.epoch()?;
    let f = trace(&pin, &forwarded)?["flow_cache"].clone();
    assert_eq!(f["epoch"], epoch, "{f}");
    let kept = f["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 1, "{f}");
    assert_eq!(kept[0]["current"], true, "{f}");
    assert_eq!(kept[0]["epoch"], epoch, "{f}");
    dp.installed.maps.bump_epoch()?;
    let f = trace(&pin, &forwarded)?["flow_cache"].clone();
    assert_eq!(f["kept"][0]["current"], false, "{f}");

    operator_mistakes(&pin, &a, &b)
}

/// The seed with a cap on pcx-ab, pcx-bc not yet accepted, an ACL on A's subnet and a
/// security group on B's port.
fn trace_doc() -> peer_dataplane::desired::Document {
    let mut doc = seed::seed_doc();
    // A cap on pcx-ab; pcx-bc not yet accepted.
    doc.peerings[0].bandwidth_mbps = Some(100);
    doc.peerings[1].status = PeeringStatus::PendingAcceptance;
    // A's subnet: egress UDP 7001 denied by rule 100, everything else allowed by 200.
    let rule =
        |number, direction: &str, protocol: &str, port: Option<u16>, action: &str| AclRuleDoc {
            number,
            direction: direction.into(),
            protocol: protocol.into(),
            port_from: port,
            port_to: port,
            cidr: "0.0.0.0/0".into(),
            action: action.into(),
        };
    doc.network_acls.push(NetworkAclDoc {
        id: "acl-a".into(),
        vpc: "vpc-a".into(),
        rules: vec![
            rule(100, "egress", "udp", Some(7001), "deny"),
            rule(200, "egress", "all", None, "allow"),
            rule(100, "ingress", "all", None, "allow"),
        ],
    });
    doc.subnets[0].network_acl = Some("acl-a".into());
    // B's group lets in TCP 443 from VPC A, nothing else.
    doc.security_groups.push(SecurityGroupDoc {
        id: "sg-web".into(),
        vpc: "vpc-b".into(),
        rules: vec![SgRuleDoc {
            direction: "ingress".into(),
            protocol: "tcp".into(),
            port_from: Some(443),
            port_to: Some(443),
            cidr: Some("10.0.0.0/16".into()),
            ..Default::default()
        }],
    });
    doc.ports[1].security_groups = Some(vec!["sg-web".into()]);
    doc
}

/// A forwarded packet: every stage reached and passed.
fn trace_forwarded(pin: &std::path::Path, a: &str, b: &str) -> Result<()> {
    let t = trace(
        pin,
        &format!("--src {a} --dst {b} --protocol tcp --dport 443"),
    )?;
    assert_eq!(t["verdict"], "forward", "{t:#}");
    assert_eq!(t["action"], "XDP_REDIRECT");
    assert_eq!(t["egress_port"], B.port);
    assert_eq!(
        stage_names(&t),
        [
            "port",
            "parse",
            "route",
            "peering",
            "origin",
            "egress-acl",
            "endpoint",
            "return-route",
            "ingress-acl",
            "security-groups",
            "ttl",
            "deliver",
            "cap",
            "rewrite"
        ]
    );
    assert!(
        t["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["result"] == "ok"),
        "{t:#}"
    );
    assert_eq!(stage(&t, "port")["facts"]["interface"], A.port);
    assert_eq!(stage(&t, "route")["facts"]["destination"], "172.16.0.0/16");
    assert_eq!(stage(&t, "route")["facts"]["target"], "pcx-ab");
    assert_eq!(
        stage(&t, "peering")["facts"]["direction"],
        "requester_to_accepter"
    );
    assert_eq!(stage(&t, "egress-acl")["facts"]["rule"], 200);
    assert_eq!(stage(&t, "egress-acl")["facts"]["action"], "allow");
    assert_eq!(stage(&t, "ingress-acl")["facts"]["acl"], Value::Null);
    assert_eq!(stage(&t, "endpoint")["facts"]["interface"], B.port);
    let sg = &stage(&t, "security-groups")["facts"];
    assert_eq!(sg["conntrack"], "no tracked flow");
    assert_eq!(sg["receiver_groups"], "sg-web");
    assert_eq!(sg["receiver"], "allow");
    assert_eq!(sg["sender"], "no-groups");
    assert_eq!(stage(&t, "cap")["facts"]["bits_per_second"], 100_000_000u64);
    assert_eq!(stage(&t, "cap")["facts"]["conforms"], true);
    assert!(
        stage(&t, "rewrite")["detail"]
            .as_str()
            .unwrap()
            .contains("ttl 64 -> 63"),
        "{t:#}"
    );

    Ok(())
}

/// Each drop, named with the stage and the object that decided it.
fn trace_drops(pin: &std::path::Path, a: &str, b: &str, c: &str) -> Result<()> {
    // no-route: nothing in rtb-a covers the destination.
    let t = trace(
        pin,
        &format!("--src {a} --dst 198.51.100.7 --protocol udp --dport 53"),
    )?;
    assert_eq!(
        decided(&t),
        ("drop".into(), "no-route".into(), "route:drop".into())
    );
    assert_eq!(stage(&t, "route")["facts"]["table"], "rtb-a");
    assert_eq!(stage(&t, "route")["facts"]["target"], Value::Null);

    // peering-inactive: C's route to B points at pcx-bc, still pending acceptance.
    let t = trace(pin, &format!("--src {c} --dst {b}"))?;
    assert_eq!(
        decided(&t),
        (
            "drop".into(),
            "peering-inactive".into(),
            "peering:drop".into()
        )
    );
    assert_eq!(stage(&t, "peering")["facts"]["peering"], "pcx-bc");
    assert_eq!(
        stage(&t, "peering")["facts"]["status"],
        "pending-acceptance"
    );

    // transitive: on A's port, a source from VPC C.
    let t = trace(pin, &format!("--port {} --src {c} --dst {b}", A.port))?;
    assert_eq!(
        decided(&t),
        ("drop".into(), "transitive".into(), "origin:drop".into())
    );

    // nacl-deny, with the rule number.
    let t = trace(
        pin,
        &format!("--src {a} --dst {b} --protocol udp --dport 7001"),
    )?;
    assert_eq!(
        decided(&t),
        ("drop".into(), "nacl-deny".into(), "egress-acl:drop".into())
    );
    let acl = &stage(&t, "egress-acl")["facts"];
    assert_eq!(acl["acl"], "acl-a");
    assert_eq!(acl["rule"], 100);
    assert_eq!(acl["action"], "deny");
    assert!(stage(&t, "egress-acl")["detail"]
        .as_str()
        .unwrap()
        .contains("acl-a egress rule 100: deny"));

    // sg-deny: UDP 7002 passes the ACL (rule 200) but no rule of sg-web allows it.
    let t = trace(
        pin,
        &format!("--src {a} --dst {b} --protocol udp --dport 7002"),
    )?;
    assert_eq!(
        decided(&t),
        (
            "drop".into(),
            "sg-deny".into(),
            "security-groups:drop".into()
        )
    );
    assert_eq!(stage(&t, "egress-acl")["facts"]["rule"], 200);
    assert_eq!(stage(&t, "security-groups")["facts"]["receiver"], "deny");

    Ok(())
}

/// Operator mistakes get a message naming what is wrong.
fn operator_mistakes(pin: &std::path::Path, a: &str, b: &str) -> Result<()> {
    let err = |args: &str| -> Result<String> {
        let mut full = vec!["trace"];
        full.extend(args.split_whitespace());
        let out = cli(&pin, &full)?;
        ensure!(!out.status.success(), "trace {args:?} should fail");
        Ok(String::from_utf8_lossy(&out.stderr).to_string())
    };
    let e = err(&format!("--src 10.9.9.9 --dst {b}"))?;
    assert!(
        e.contains("no port has the address 10.9.9.9; name the ingress port with --port"),
        "{e}"
    );
    let e = err(&format!("--port pdp-zz --src {a} --dst {b}"))?;
    assert!(
        e.contains("port pdp-zz is not installed (ports: pdp-a, pdp-b, pdp-c)"),
        "{e}"
    );
    let e = err(&format!("--src {a} --dst {b} --protocol udp"))?;
    assert!(e.contains("udp needs a destination port (--dport)"), "{e}");
    let e = err(&format!("--src {a} --dst fd00:b::1"))?;
    assert!(e.contains("different families"), "{e}");
    let e = err(&format!("--src {a} --dst {b} --protocol gre"))?;
    assert!(e.contains("unknown protocol \"gre\""), "{e}");
    Ok(())
}
