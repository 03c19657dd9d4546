//! End to end: the real agent binary in a "hypervisor" namespace, the seed topology's
//! instances in namespaces of their own, real packets through native XDP on veth.
//! Needs root, BPF and network namespaces; namespaces and pins are removed on drop.

use anyhow::{ensure, Result};
use peer_dataplane::desired::document::Document;
use peer_dataplane::desired::validate::PeeringStatus;
use peer_dataplane_tests::seed::{self, Agent, SeedNetwork, A, B, C};
use peer_dataplane_tests::traffic::{self, ping_instance, tcp_exchange, udp_exchange};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

struct Env {
    net: SeedNetwork,
    agent: Agent,
    _dir: TempDir,
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start(tag: &str, doc: &Document, mode: &str) -> Result<Env> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = TempDir(std::env::temp_dir().join(peer_dataplane_tests::unique(tag)));
    std::fs::create_dir_all(&dir.0)?;
    let config = dir.0.join("state.toml");
    std::fs::write(&config, doc.to_toml())?;
    let net = SeedNetwork::create(&peer_dataplane_tests::unique(tag))?;
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(peer_dataplane_tests::unique(tag));
    let agent = Agent::start(&bin, &net.host, &config, &pin_dir, mode)?;
    Ok(Env {
        net,
        agent,
        _dir: dir,
    })
}

fn peering<'a>(stats: &'a Value, id: &str) -> &'a Value {
    stats["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {stats}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn peered_vpcs_exchange_ping_udp_tcp_both_families() -> Result<()> {
    let env = start("e2e-fwd", &seed::seed_doc(), "native")?;
    let (a, b, c) = (env.net.ns(A), env.net.ns(B), env.net.ns(C));
    ensure!(
        ping_instance(a, &B, false, 3)?,
        "ping a -> b (IPv4) failed\n{}",
        env.agent.log_text()
    );
    ensure!(ping_instance(b, &A, true, 3)?, "ping b -> a (IPv6) failed");
    ensure!(
        ping_instance(c, &B, false, 2)?,
        "ping c -> b over pcx-bc failed"
    );
    ensure!(
        udp_exchange(a, &A, b, &B, false, 7000)?,
        "udp a <-> b (IPv4) failed"
    );
    ensure!(
        udp_exchange(b, &B, a, &A, true, 7001)?,
        "udp b <-> a (IPv6) failed"
    );
    ensure!(
        tcp_exchange(a, b, &B, false, 7002)?,
        "tcp a -> b (IPv4) failed"
    );
    ensure!(
        tcp_exchange(c, b, &B, true, 7003)?,
        "tcp c -> b (IPv6) failed"
    );

    let s = env.agent.stats_json()?;
    let ab = peering(&s, "pcx-ab");
    assert_eq!(ab["status"], "active");
    assert_eq!(ab["requester_vpc"], "vpc-a");
    // a->b: 3 echo requests, 1 udp, the tcp handshake and data, the 3 echo replies b->a of
    // the IPv6 ping go the other way. Lower bounds, since TCP may retransmit.
    assert!(
        n(&ab["requester_to_accepter"]["packets"]) >= 3 + 3 + 1 + 3,
        "{ab}"
    );
    assert!(
        n(&ab["accepter_to_requester"]["packets"]) >= 3 + 3 + 1 + 2,
        "{ab}"
    );
    assert!(n(&ab["requester_to_accepter"]["bytes"]) > 0);
    let bc = peering(&s, "pcx-bc");
    assert!(n(&bc["accepter_to_requester"]["packets"]) >= 2 + 3, "{bc}");
    assert_eq!(
        n(&s["global"]["dropped_packets"]),
        0,
        "nothing dropped: {s}"
    );
    assert!(n(&s["global"]["redirected_packets"]) >= 30, "{s}");
    Ok(())
}

#[test]
fn peering_is_not_transitive() -> Result<()> {
    let env = start("e2e-trans", &seed::seed_doc(), "native")?;
    let (a, b) = (env.net.ns(A), env.net.ns(B));
    env.agent
        .expect_ping_dropped("ping a -> c (no peering)", a, &C, "no-route", 2)?;
    // b relays traffic that claims a's address toward c.
    traffic::add_alias(b, &A.ipv4)?;
    env.agent
        .expect_dropped("b relaying a's ping to c", "transitive", 2..=2, || {
            traffic::ping_from(b, &A.ipv4, &C.ipv4)
        })?;
    ensure!(
        ping_instance(b, &C, false, 1)?,
        "b's own traffic to c must still flow"
    );

    let s = env.agent.stats_json()?;
    let bc = peering(&s, "pcx-bc");
    assert_eq!(
        n(&bc["requester_to_accepter"]["dropped"]["transitive"]),
        2,
        "{bc}"
    );
    Ok(())
}

#[test]
fn deleting_the_peering_blackholes_and_a_bad_document_changes_nothing() -> Result<()> {
    let mut env = start("e2e-del", &seed::seed_doc(), "native")?;
    let (a, b) = (env.net.ns(A), env.net.ns(B));
    ensure!(ping_instance(a, &B, false, 1)?, "a -> b before delete");

    // Malformed documents are refused as a whole and forwarding goes on. Each also carries
    // a blackhole route for b's subnet that would cut a -> b if anything were applied.
    // Two name a port on an interface that is not an instance's (the host's bridge, the
    // loopback): the agent never attaches there.
    env.net
        .host
        .ip(&["link", "add", "pdp-br", "type", "bridge"])?;
    env.net.host.ip(&["link", "set", "pdp-br", "up"])?;
    for (bad, expect) in bad_documents() {
        let refusals = env
            .agent
            .count_log("reload on SIGHUP refused, previous state kept");
        env.agent.reload(&bad)?;
        let log = env.agent.log_text();
        assert_eq!(
            env.agent
                .count_log("reload on SIGHUP refused, previous state kept"),
            refusals + 1,
            "{log}"
        );
        assert!(
            log.contains(expect),
            "expected {expect:?} in the refusal:\n{log}"
        );
        ensure!(
            ping_instance(a, &B, false, 1)?,
            "a refused document ({expect}) changed forwarding"
        );
    }
    let bridge = env.net.host.ip(&["-d", "link", "show", "pdp-br"])?;
    ensure!(
        !bridge.contains("xdp"),
        "XDP attached to the bridge:\n{bridge}"
    );

    let mut deleted = seed::seed_doc();
    deleted
        .peerings
        .iter_mut()
        .find(|p| p.id == "pcx-ab")
        .unwrap()
        .status = PeeringStatus::Deleted;
    env.agent.reload(&deleted)?;
    env.agent.expect_ping_dropped(
        "ping a -> b over a deleted peering",
        a,
        &B,
        "peering-inactive",
        2,
    )?;
    env.agent.expect_dropped(
        "udp b -> a over a deleted peering",
        "peering-inactive",
        1..=1,
        || udp_exchange(b, &B, a, &A, false, 7100),
    )?;
    let s = env.agent.stats_json()?;
    let ab = peering(&s, "pcx-ab");
    assert_eq!(ab["status"], "deleted");
    assert_eq!(
        n(&ab["requester_to_accepter"]["dropped"]["peering-inactive"]),
        2,
        "{ab}"
    );
    assert_eq!(
        n(&ab["accepter_to_requester"]["dropped"]["peering-inactive"]),
        1,
        "{ab}"
    );

    // Re-activated: traffic flows again without restarting anything.
    env.agent.reload(&seed::seed_doc())?;
    ensure!(
        ping_instance(a, &B, false, 1)?,
        "a -> b after re-activation"
    );
    Ok(())
}

/// Documents the agent must refuse, with the text the refusal must contain.
fn bad_documents() -> Vec<(Document, &'static str)> {
    let with = |f: &dyn Fn(&mut Document)| {
        let mut d = seed::seed_doc();
        add_route(&mut d, "172.16.2.0/24", "blackhole");
        f(&mut d);
        d
    };
    vec![
        (
            with(&|d| d.vpcs.iter_mut().find(|v| v.id == "vpc-c").unwrap().cidrs.push("10.0.128.0/17".into())),
            "its peers vpc-a (10.0.0.0/16, via pcx-ab) and vpc-c (10.0.128.0/17, via pcx-bc) have overlapping CIDRs",
        ),
        (
            with(&|d| add_route(d, "172.16.5.0/24", "pcx-zz")),
            "route table rtb-a route 172.16.5.0/24: target pcx-zz is not a known peering connection",
        ),
        (
            with(&|d| add_route(d, "192.168.0.0/16", "pcx-ab")),
            "route table rtb-a route 192.168.0.0/16: destination is outside peer vpc vpc-b",
        ),
        (with(&|d| add_route(d, "172.16.300.0/24", "pcx-ab")), "\"172.16.300.0/24\" is not a CIDR"),
        (
            with(&|d| d.ports[0].interface = "pdp-br".into()),
            "port pdp-br: interface pdp-br is a bridge; this agent expects ports on veth, tun, macvtap, netkit interfaces (--port-kinds)",
        ),
        (
            with(&|d| d.ports[0].interface = "lo".into()),
            "port lo: interface lo is the host's loopback",
        ),
    ]
}

fn add_route(d: &mut Document, destination: &str, target: &str) {
    d.route_tables
        .iter_mut()
        .find(|t| t.id == "rtb-a")
        .unwrap()
        .routes
        .push(peer_dataplane::desired::document::RouteDoc::new(
            destination,
            target,
        ));
}

#[test]
fn generic_mode_forwards_too() -> Result<()> {
    let env = start("e2e-gen", &seed::seed_doc(), "generic")?;
    ensure!(
        ping_instance(env.net.ns(A), &B, false, 2)?,
        "ping a -> b in generic mode\n{}",
        env.agent.log_text()
    );
    ensure!(
        udp_exchange(env.net.ns(B), &B, env.net.ns(A), &A, true, 7200)?,
        "udp b -> a in generic mode"
    );
    Ok(())
}

#[test]
fn stats_table_is_readable_after_the_agent_stops() -> Result<()> {
    let mut env = start("e2e-stats", &seed::seed_doc(), "native")?;
    ensure!(ping_instance(env.net.ns(A), &B, false, 1)?, "ping a -> b");
    env.agent.stop()?;
    let t = env.agent.stats_table()?;
    assert!(t.starts_with("PEERING"), "{t}");
    let row = t
        .lines()
        .find(|l| l.starts_with("pcx-ab") && l.contains("requester_to_accepter"))
        .unwrap();
    assert!(row.contains("vpc-a -> vpc-b"), "{t}");
    Ok(())
}

/// Security groups end to end: A may ping and send UDP 7000 to B; B accepts from A's
/// group and sends nothing on its own. Replies come back through connection tracking;
/// B cannot start anything; `conntrack list` shows the flows and `flush` forgets them.
#[test]
fn security_groups_let_replies_back_and_nothing_else() -> Result<()> {
    use peer_dataplane::desired::document::{SecurityGroupDoc, SgRuleDoc};
    let rule = |direction: &str,
                protocol: &str,
                ports: Option<u16>,
                cidr: Option<&str>,
                peer: Option<&str>| SgRuleDoc {
        direction: direction.into(),
        protocol: protocol.into(),
        port_from: ports,
        port_to: ports,
        cidr: cidr.map(Into::into),
        peer_security_group: peer.map(Into::into),
    };
    let mut doc = seed::seed_doc();
    doc.security_groups = vec![
        SecurityGroupDoc {
            id: "sg-a".into(),
            vpc: "vpc-a".into(),
            rules: vec![
                rule("egress", "icmp", None, Some("172.16.0.0/16"), None),
                rule("egress", "udp", Some(7000), Some("172.16.0.0/16"), None),
            ],
        },
        SecurityGroupDoc {
            id: "sg-b".into(),
            vpc: "vpc-b".into(),
            rules: vec![rule("ingress", "all", None, None, Some("sg-a"))],
        },
    ];
    for p in &mut doc.ports {
        match p.interface.as_str() {
            "pdp-a" => p.security_groups = Some(vec!["sg-a".into()]),
            "pdp-b" => p.security_groups = Some(vec!["sg-b".into()]),
            _ => {}
        }
    }
    let env = start("e2e-sg", &doc, "native")?;
    let (a, b) = (env.net.ns(A), env.net.ns(B));
    ensure!(
        ping_instance(a, &B, false, 2)?,
        "a -> b ping (allowed, replies tracked) failed\n{}",
        env.agent.log_text()
    );
    ensure!(
        udp_exchange(a, &A, b, &B, false, 7000)?,
        "udp a -> b 7000 and its reply failed"
    );
    env.agent
        .expect_dropped("udp a -> b 7001 (no rule)", "sg-deny", 1..=1, || {
            udp_exchange(a, &A, b, &B, false, 7001)
        })?;
    env.agent
        .expect_ping_dropped("ping b -> a (b sends nothing)", b, &A, "sg-deny", 1)?;

    let flows: Value =
        serde_json::from_str(&env.agent.cli(&["conntrack", "list", "-o", "json"])?)?;
    let flows = flows.as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["protocol"] == "icmp" && f["src_vpc"] == "vpc-a" && f["state"] == "replied"),
        "no replied icmp flow from vpc-a: {flows:?}"
    );
    assert!(
        flows
            .iter()
            .any(|f| f["protocol"] == "udp" && f["dport"] == 7000 && f["packets_reply"] == 1),
        "no udp 7000 flow with its reply: {flows:?}"
    );
    let table = env.agent.cli(&["conntrack", "list", "--vpc", "vpc-a"])?;
    assert!(table.contains("vpc-a/10.0.2.10"), "{table}");
    let flushed = env.agent.cli(&["conntrack", "flush"])?;
    assert_eq!(flushed.trim(), format!("flushed {} flows", flows.len()));
    let after = env.agent.cli(&["conntrack", "list"])?;
    assert!(after.ends_with("0 flows\n"), "{after}");

    let s = env.agent.stats_json()?;
    let ab = peering(&s, "pcx-ab");
    assert!(
        n(&ab["requester_to_accepter"]["dropped"]["sg-deny"]) >= 1,
        "{ab}"
    );
    assert!(
        n(&ab["accepter_to_requester"]["dropped"]["sg-deny"]) >= 1,
        "{ab}"
    );
    Ok(())
}

/// HTTP GET of `path` on `addr`, from inside `ns`.
fn http_get(
    ns: &peer_dataplane_tests::netns::Netns,
    addr: &'static str,
    path: &str,
) -> Result<String> {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let text = ns.run(move || -> Result<String> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    Ok(body.to_string())
}

/// `--metrics`: the agent's endpoint, scraped and parsed as Prometheus text.
#[test]
fn metrics_endpoint_is_valid_prometheus_text() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = TempDir(std::env::temp_dir().join(peer_dataplane_tests::unique("e2e-metrics")));
    std::fs::create_dir_all(&dir.0)?;
    let mut doc = seed::seed_doc();
    doc.peerings[0].bandwidth_mbps = Some(500);
    let config = dir.0.join("state.toml");
    std::fs::write(&config, doc.to_toml())?;
    let net = SeedNetwork::create(&peer_dataplane_tests::unique("metrics"))?;
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(peer_dataplane_tests::unique("e2e-metrics"));
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let config_arg = config.display().to_string();
    let agent = Agent::start_with(
        &bin,
        &net.host,
        &config,
        &pin_dir,
        &[
            "--xdp-mode",
            "native",
            "--config",
            &config_arg,
            "--metrics",
            "127.0.0.1:9464",
        ],
        "agent",
    )?;
    ensure!(
        // Four: each direction has a CPU that sees two of its packets (a flow's decision
        // is kept on its second miss on a CPU) even on a two-CPU machine where the
        // packets spread.
        ping_instance(net.ns(A), &B, false, 4)?,
        "ping a -> b failed"
    );
    // A -> C has no route: a drop to see.
    agent.expect_ping_dropped("ping a -> c (no route)", net.ns(A), &C, "no-route", 1)?;

    let body = http_get(&net.host, "127.0.0.1:9464", "/metrics")?;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| anyhow::anyhow!("not Prometheus text: {e}\n{body}"))?;
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    let ab = [
        ("peering", "pcx-ab"),
        ("direction", "requester_to_accepter"),
    ];
    assert!(
        value("pdp_peering_packets_total", &ab).unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    assert!(value("pdp_peering_bytes_total", &ab).unwrap_or(0.0) > 0.0);
    assert_eq!(value("pdp_peering_cap_bits_per_second", &ab), Some(500e6));
    assert!(
        value("pdp_drops_total", &[("reason", "no-route")]).unwrap_or(0.0) >= 1.0,
        "{body}"
    );
    // Each ping direction left its decision on a CPU that saw two of its packets: kept
    // on the second miss, or on the first when the slot's tag already carried the flow's
    // hash bits (ping's random echo id makes that 1 in 128, so how many first misses
    // were deferred is not fixed; cli_live counts those on flows it chooses).
    assert!(
        value("pdp_flow_cache_kept_total", &[]).unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    let misses = value("pdp_flow_cache_misses_total", &[]).unwrap_or(0.0);
    assert!(misses >= 2.0, "{body}");
    // A miss keeps, defers or declines a decision at most once.
    let outcomes: f64 = ["kept", "deferred", "declined"]
        .iter()
        .map(|c| value(&format!("pdp_flow_cache_{c}_total"), &[]).unwrap_or(f64::NAN))
        .sum();
    assert!(outcomes <= misses, "{body}");
    assert!(value("pdp_flow_cache_hits_total", &[]).is_some());
    assert!(value("pdp_flow_cache_evictions_total", &[]).is_some());
    assert_eq!(value("pdp_flow_cache_enabled", &[]), Some(1.0));
    assert!(value("pdp_flow_cache_epoch", &[]).unwrap_or(0.0) >= 1.0);
    assert_eq!(value("pdp_map_entries", &[("map", "ports")]), Some(3.0));
    assert_eq!(
        value("pdp_map_capacity", &[("map", "conntrack")]),
        Some(262144.0)
    );
    assert_eq!(value("pdp_sync_applied_total", &[]), Some(1.0));
    assert_eq!(value("pdp_sync_errors_total", &[]), Some(0.0));
    assert!(value("pdp_sync_last_success_timestamp_seconds", &[]).unwrap_or(0.0) > 1.7e9);
    // Counters are typed as such (what rate() needs).
    assert!(body.contains("# TYPE pdp_peering_packets_total counter"));
    drop(agent);
    Ok(())
}

/// An install that fails (here: a port whose interface does not exist yet) is reported,
/// leaves the previous state in force, and is retried with backoff until it goes in.
#[test]
fn a_failed_install_is_reported_and_retried_until_it_goes_in() -> Result<()> {
    let mut env = start("e2e-retry", &seed::seed_doc(), "native")?;
    let mut doc = seed::seed_doc();
    let mut late = doc
        .ports
        .iter()
        .find(|p| p.interface == "pdp-b")
        .unwrap()
        .clone();
    late.interface = "pdp-late".into();
    late.mac = "02:00:ac:10:02:15".into();
    late.ipv4 = Some("172.16.2.21".into());
    late.ipv6 = None;
    doc.ports.push(late);
    env.agent.reload(&doc)?;
    env.agent.wait_log(
        "on SIGHUP failed, retrying in 100 ms",
        Duration::from_secs(10),
    )?;
    env.agent
        .wait_log("failed again (attempt 2)", Duration::from_secs(10))?;
    // The previous state is in force meanwhile.
    ensure!(
        ping_instance(env.net.ns(A), &B, false, 1)?,
        "a -> b stopped while the install kept failing"
    );
    // The interface appears: the next attempt goes in.
    env.net.host.ip(&[
        "link",
        "add",
        "pdp-late",
        "type",
        "veth",
        "peer",
        "name",
        "pdp-late-p",
    ])?;
    env.net.host.ip(&["link", "set", "pdp-late", "up"])?;
    env.agent
        .wait_log(" on attempt ", Duration::from_secs(15))?;
    let ports = env.agent.cli(&["port", "list", "-o", "json"])?;
    ensure!(ports.contains("pdp-late"), "{ports}");
    Ok(())
}
