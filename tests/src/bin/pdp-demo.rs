//! `cargo xtask demo`: the seed topology in network namespaces, the real agent, real
//! traffic, and the counters that prove each outcome. Removes everything it created.

use anyhow::{bail, Context, Result};
use peer_dataplane_tests::seed::{self, v4_str, v6_str, Agent, SeedNetwork, A, B, C};
use peer_dataplane_tests::traffic::{self, ping_instance, tcp_exchange, udp_exchange};
use std::path::PathBuf;

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

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut agent_bin = None;
    while let Some(a) = args.next() {
        if a == "--agent" {
            agent_bin = args.next().map(PathBuf::from);
        }
    }
    let agent_bin =
        agent_bin.context("usage: pdp-demo --agent PATH (run it through `cargo xtask demo`)")?;
    peer_dataplane_tests::require_root()?;

    heading("topology (examples/seed.toml)");
    println!(
        "    VPC A 10.0.0.0/16    instance {} / {}  behind port {}",
        v4_str(&A.ipv4),
        v6_str(&A.ipv6),
        A.port
    );
    println!(
        "    VPC B 172.16.0.0/16  instance {} / {}  behind port {}",
        v4_str(&B.ipv4),
        v6_str(&B.ipv6),
        B.port
    );
    println!(
        "    VPC C 192.168.0.0/16 instance {} / {}  behind port {}",
        v4_str(&C.ipv4),
        v6_str(&C.ipv6),
        C.port
    );
    println!("    peerings: pcx-ab (A <-> B), pcx-bc (B <-> C); no A <-> C peering");
    println!("    namespaces: pdp-demo-host (the hypervisor: ports + agent), pdp-demo-a, pdp-demo-b, pdp-demo-c");
    let net = SeedNetwork::create("pdp-demo")?;

    let dir = std::env::temp_dir().join("pdp-demo");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("state.toml");
    std::fs::write(&config, seed::SEED_TOML)?;
    let pin_dir = PathBuf::from("/sys/fs/bpf/pdp-demo");
    heading("starting the agent (native XDP on the three ports)");
    println!(
        "    nsenter --net=/var/run/netns/pdp-demo-host {} --pin-dir {} run --config {}",
        agent_bin.display(),
        pin_dir.display(),
        config.display()
    );
    let mut agent = Agent::start(&agent_bin, &net.host, &config, &pin_dir, "native")?;
    for line in agent.log_text().lines() {
        println!("    | {line}");
    }
    let stats_cmd = format!(
        "{} --pin-dir {} stats",
        agent_bin.display(),
        pin_dir.display()
    );

    let (a, b, c) = (net.ns(A), net.ns(B), net.ns(C));
    let mut out = Outcomes(Vec::new());

    heading("1. A <-> B traffic flows over pcx-ab");
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

    heading("2. A -> C is dropped: peering is not transitive");
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

    heading("3. deleting pcx-ab blackholes A -> B");
    let mut doc = seed::seed_doc();
    doc.peerings
        .iter_mut()
        .find(|p| p.id == "pcx-ab")
        .unwrap()
        .status = "deleted".into();
    println!(
        "    status of pcx-ab set to \"deleted\" in {}, SIGHUP to the agent",
        config.display()
    );
    agent.reload(&doc)?;
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
        &format!("counted as peering-inactive on pcx-ab A -> B ({inactive})"),
        inactive >= 2,
    );
    println!("\n    $ {stats_cmd}");
    print_indented(&agent.stats_table()?);
    out.check(
        "pcx-bc is untouched: ping C -> B still answered",
        ping_instance(c, &B, false, 1)?,
    );

    heading("cleaning up (agent stopped, namespaces and pins removed)");
    drop(agent);
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

fn print_indented(s: &str) {
    for line in s.lines() {
        println!("    {line}");
    }
}
