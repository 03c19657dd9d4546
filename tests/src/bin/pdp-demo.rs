//! `cargo xtask demo`: the seed topology in network namespaces, built through the control
//! plane's API; the real agent following the control plane; real traffic; and the
//! counters that prove each outcome. Removes everything it created.

use anyhow::{bail, Context, Result};
use peer_dataplane_tests::controlplane::{free_port, token_of, ControlPlane};
use peer_dataplane_tests::seed::{v4_str, v6_str, SeedNetwork, A, B, C};
use peer_dataplane_tests::traffic::{self, ping_instance, tcp_exchange, udp_exchange};
use std::path::PathBuf;
use std::time::Duration;

const ACCOUNT_A: &str = "111111111111";
const ACCOUNT_B: &str = "222222222222";
const SYNC: Duration = Duration::from_secs(10);

struct Outcomes(Vec<(String, bool)>);

impl Outcomes {
    fn check(&mut self, what: &str, ok: bool) {
        println!("    {} {what}", if ok { "[ok]  " } else { "[FAIL]" });
        self.0.push((what.to_string(), ok));
    }
}

fn heading(s: &str) {
    println!("\n=== {s}");
}

fn print_indented(s: &str) {
    for line in s.lines() {
        println!("    {line}");
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut agent_bin = None;
    while let Some(a) = args.next() {
        if a == "--agent" {
            agent_bin = args.next().map(PathBuf::from);
        }
    }
    let bin =
        agent_bin.context("usage: pdp-demo --agent PATH (run it through `cargo xtask demo`)")?;
    peer_dataplane_tests::require_root()?;

    heading("topology (examples/seed-api.json)");
    for (name, cidr, i) in [
        ("A", "10.0.0.0/16   ", A),
        ("B", "172.16.0.0/16 ", B),
        ("C", "192.168.0.0/16", C),
    ] {
        println!(
            "    VPC {name} {cidr} account {}  instance {} / {} behind port {}",
            ["111111111111", "222222222222", "333333333333"][(name.as_bytes()[0] - b'A') as usize],
            v4_str(&i.ipv4),
            v6_str(&i.ipv6),
            i.port
        );
    }
    println!("    peerings: pcx-ab (A <-> B), pcx-bc (B <-> C); no A <-> C peering");
    println!("    namespaces: pdp-demo-host (the hypervisor: ports, agent, control plane), pdp-demo-a, -b, -c");
    let net = SeedNetwork::create("pdp-demo")?;
    let dir = std::env::temp_dir().join("pdp-demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    heading("starting the control plane (REST API, SQLite store)");
    let port = net.host.run(free_port)?;
    let cp = ControlPlane::start(&bin, &net.host, &dir.join("cp.db"), port)?;
    println!(
        "    peer-dataplane controlplane --listen 127.0.0.1:{port} --db {} --account-tokens {} --host-tokens {}",
        cp.db.display(),
        cp.db.with_extension("account-tokens").display(),
        cp.db.with_extension("host-tokens").display()
    );
    let revision = cp.seed(&["accept-ab"])?;
    println!("    built the topology with 23 API requests by accounts A, B and C (revision {revision}); B has not accepted pcx-ab");

    heading("starting the agent: native XDP on the three ports, following the control plane");
    let pin_dir = PathBuf::from("/sys/fs/bpf/pdp-demo");
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let url = cp.url();
    println!(
        "    peer-dataplane --pin-dir {} run {}",
        pin_dir.display(),
        cp.agent_args()?.join(" ")
    );
    let mut agent = cp.start_agent(&bin, &net.host, &dir, &pin_dir, "agent")?;
    agent.wait_synced(revision, SYNC)?;
    print_indented(
        &agent
            .log_text()
            .lines()
            .map(|l| format!("| {l}\n"))
            .collect::<String>(),
    );
    let stats_cmd = format!("peer-dataplane --pin-dir {} stats", pin_dir.display());
    let api = |method: &str, path: &str, account: &str, status: u16| -> Result<u64> {
        println!(
            "    $ curl -X {method} -H 'Authorization: Bearer {}' {url}{path}",
            token_of(account)
        );
        let r = cp.expect(method, path, account, None, status)?;
        let pcx = r
            .body
            .get("status")
            .and_then(|s| s.as_str())
            .map(|s| format!(": status {s}"))
            .unwrap_or_default();
        println!("      HTTP {}{pcx}", r.status);
        Ok(r.revision)
    };

    let (a, b, c) = (net.ns(A), net.ns(B), net.ns(C));
    let mut out = Outcomes(Vec::new());

    heading("1. pcx-ab requested by A and not accepted yet: nothing crosses");
    api("GET", "/v1/vpc-peering/pcx-ab", ACCOUNT_A, 200)?;
    out.check(
        "ping A -> B gets no answer while pcx-ab is pending-acceptance",
        !ping_instance(a, &B, false, 2)?,
    );

    heading("2. B accepts pcx-ab: A <-> B traffic flows");
    let rev = api("POST", "/v1/vpc-peering/pcx-ab/accept", ACCOUNT_B, 200)?;
    agent.wait_synced(rev, SYNC)?;
    println!("    | {}", agent.log_text().lines().last().unwrap_or(""));
    out.check(
        "ping A -> B (IPv4, 3 echoes)",
        ping_instance(a, &B, false, 3)?,
    );
    out.check(
        "ping B -> A (IPv6, 3 echoes)",
        ping_instance(b, &A, true, 3)?,
    );
    out.check(
        "UDP exchange A -> B -> A",
        udp_exchange(a, &A, b, &B, false, 7000)?,
    );
    out.check(
        "TCP connect + echo A -> B",
        tcp_exchange(a, b, &B, false, 7001)?,
    );
    println!("\n    $ {stats_cmd}");
    print_indented(&agent.stats_table()?);

    heading("3. A -> C is dropped: peering is not transitive");
    out.check(
        "ping A -> C gets no answer (A has no route to C)",
        !ping_instance(a, &C, false, 2)?,
    );
    traffic::add_alias(b, &A.ipv4)?;
    out.check(
        "B relaying traffic sourced from A to C is dropped",
        !traffic::ping_from(b, &A.ipv4, &C.ipv4)?,
    );
    let s = agent.stats_json()?;
    let no_route = s["global"]["dropped"]["no-route"].as_u64().unwrap_or(0);
    let transitive = s["global"]["dropped"]["transitive"].as_u64().unwrap_or(0);
    println!("    counters: drop no-route = {no_route}, drop transitive = {transitive}");
    out.check(
        "counted as no-route and transitive drops",
        no_route >= 2 && transitive >= 2,
    );
    // Why: ask the loaded program, stage by stage.
    let (a4, c4) = (v4_str(&A.ipv4), v4_str(&C.ipv4));
    println!(
        "\n    $ peer-dataplane trace --port {} --src {a4} --dst {c4}",
        B.port
    );
    let trace = agent.cli(&["trace", "--port", B.port, "--src", &a4, "--dst", &c4])?;
    print_indented(&trace);
    out.check(
        "trace explains it: B's route to C is fine, the source is not B's (transitive)",
        trace.contains("origin") && trace.contains("verdict: drop, transitive"),
    );

    heading("4. A deletes pcx-ab: A -> B is blackholed");
    let rev = api("DELETE", "/v1/vpc-peering/pcx-ab", ACCOUNT_A, 200)?;
    agent.wait_synced(rev, SYNC)?;
    println!("    | {}", agent.log_text().lines().last().unwrap_or(""));
    out.check(
        "ping A -> B gets no answer",
        !ping_instance(a, &B, false, 2)?,
    );
    let s = agent.stats_json()?;
    let ab = s["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "pcx-ab")
        .unwrap();
    let inactive = ab["requester_to_accepter"]["dropped"]["peering-inactive"]
        .as_u64()
        .unwrap_or(0);
    out.check(
        &format!("counted as peering-inactive on pcx-ab A -> B ({inactive}, pending and deleted)"),
        inactive >= 4,
    );
    println!("\n    $ {stats_cmd}");
    print_indented(&agent.stats_table()?);
    out.check(
        "pcx-bc is untouched: ping C -> B still answered",
        ping_instance(c, &B, false, 1)?,
    );

    heading("cleaning up (agent and control plane stopped, namespaces and pins removed)");
    drop(agent);
    drop(cp);
    drop(net);
    let _ = std::fs::remove_dir_all(&dir);

    let failed: Vec<&String> = out.0.iter().filter(|(_, ok)| !ok).map(|(w, _)| w).collect();
    println!(
        "\n{} of {} demo outcomes as expected",
        out.0.len() - failed.len(),
        out.0.len()
    );
    if !failed.is_empty() {
        bail!("demo outcomes not met: {failed:?}");
    }
    Ok(())
}
