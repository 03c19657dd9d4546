//! `cargo xtask demo`: the seed topology in network namespaces, built through the control
//! plane's API; the real agent following the control plane; real traffic; and the
//! counters that prove each outcome. Removes everything it created.

use anyhow::{bail, Context, Result};
use peer_dataplane_tests::controlplane::{free_port, token_of, ControlPlane};
use peer_dataplane_tests::seed::{v4_str, v6_str, Agent, SeedNetwork, A, B, C};
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
    print_topology();
    let mut demo = Demo::start(&bin)?;
    demo.pending()?;
    demo.accepted()?;
    demo.not_transitive()?;
    demo.deleted()?;
    demo.finish()
}

fn print_topology() {
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
}

/// The running demo: namespaces, control plane, agent, and the outcomes so far.
struct Demo {
    // Dropped in this order: agent, control plane, namespaces.
    agent: Agent,
    cp: ControlPlane,
    net: SeedNetwork,
    dir: PathBuf,
    stats_cmd: String,
    out: Outcomes,
}

impl Demo {
    /// The namespaces, the control plane with the topology, the agent following it.
    fn start(bin: &std::path::Path) -> Result<Demo> {
        let net = SeedNetwork::create("pdp-demo")?;
        let dir = std::env::temp_dir().join("pdp-demo");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;

        heading("starting the control plane (REST API, SQLite store)");
        let port = net.host.run(free_port)?;
        let cp = ControlPlane::start(bin, &net.host, &dir.join("cp.db"), port)?;
        println!(
            "    peer-dataplane-controlplane --listen 127.0.0.1:{port} --db {} --account-tokens {} --host-tokens {}",
            cp.db.display(),
            cp.db.with_extension("account-tokens").display(),
            cp.db.with_extension("host-tokens").display()
        );
        let revision = cp.seed(&["accept-ab"])?;
        println!("    built the topology with 23 API requests by accounts A, B and C (revision {revision}); B has not accepted pcx-ab");

        heading("starting the agent: native XDP on the three ports, following the control plane");
        let pin_dir = PathBuf::from("/sys/fs/bpf/pdp-demo");
        let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
        println!(
            "    peer-dataplane --pin-dir {} run {}",
            pin_dir.display(),
            cp.agent_args()?.join(" ")
        );
        let mut agent = cp.start_agent(bin, &net.host, &dir, &pin_dir, "agent")?;
        agent.wait_synced(revision, SYNC)?;
        print_indented(
            &agent
                .log_text()
                .lines()
                .map(|l| format!("| {l}\n"))
                .collect::<String>(),
        );
        let stats_cmd = format!("peer-dataplane --pin-dir {} stats", pin_dir.display());
        Ok(Demo {
            agent,
            cp,
            net,
            dir,
            stats_cmd,
            out: Outcomes(Vec::new()),
        })
    }

    /// One API call, shown as the `curl` that makes it; returns the new revision.
    fn api(&self, method: &str, path: &str, account: &str, status: u16) -> Result<u64> {
        println!(
            "    $ curl -X {method} -H 'Authorization: Bearer {}' {}{path}",
            token_of(account),
            self.cp.url()
        );
        let r = self.cp.expect(method, path, account, None, status)?;
        let pcx = r
            .body
            .get("status")
            .and_then(|s| s.as_str())
            .map(|s| format!(": status {s}"))
            .unwrap_or_default();
        println!("      HTTP {}{pcx}", r.status);
        Ok(r.revision)
    }

    fn pending(&mut self) -> Result<()> {
        heading("1. pcx-ab requested by A and not accepted yet: nothing crosses");
        self.api("GET", "/v1/vpc-peering/pcx-ab", ACCOUNT_A, 200)?;
        self.out.check(
            "ping A -> B gets no answer while pcx-ab is pending-acceptance",
            !ping_instance(self.net.ns(A), &B, false, 2)?,
        );
        Ok(())
    }

    fn accepted(&mut self) -> Result<()> {
        heading("2. B accepts pcx-ab: A <-> B traffic flows");
        let rev = self.api("POST", "/v1/vpc-peering/pcx-ab/accept", ACCOUNT_B, 200)?;
        self.agent.wait_synced(rev, SYNC)?;
        println!(
            "    | {}",
            self.agent.log_text().lines().last().unwrap_or("")
        );
        self.out.check(
            "ping A -> B (IPv4, 3 echoes)",
            ping_instance(self.net.ns(A), &B, false, 3)?,
        );
        self.out.check(
            "ping B -> A (IPv6, 3 echoes)",
            ping_instance(self.net.ns(B), &A, true, 3)?,
        );
        self.out.check(
            "UDP exchange A -> B -> A",
            udp_exchange(self.net.ns(A), &A, self.net.ns(B), &B, false, 7000)?,
        );
        self.out.check(
            "TCP connect + echo A -> B",
            tcp_exchange(self.net.ns(A), self.net.ns(B), &B, false, 7001)?,
        );
        println!("\n    $ {}", self.stats_cmd);
        print_indented(&self.agent.stats_table()?);
        Ok(())
    }

    fn not_transitive(&mut self) -> Result<()> {
        heading("3. A -> C is dropped: peering is not transitive");
        self.out.check(
            "ping A -> C gets no answer (A has no route to C)",
            !ping_instance(self.net.ns(A), &C, false, 2)?,
        );
        traffic::add_alias(self.net.ns(B), &A.ipv4)?;
        self.out.check(
            "B relaying traffic sourced from A to C is dropped",
            !traffic::ping_from(self.net.ns(B), &A.ipv4, &C.ipv4)?,
        );
        let s = self.agent.stats_json()?;
        let no_route = s["global"]["dropped"]["no-route"].as_u64().unwrap_or(0);
        let transitive = s["global"]["dropped"]["transitive"].as_u64().unwrap_or(0);
        println!("    counters: drop no-route = {no_route}, drop transitive = {transitive}");
        self.out.check(
            "counted as no-route and transitive drops",
            no_route >= 2 && transitive >= 2,
        );
        // Why: ask the loaded program, stage by stage.
        let (a4, c4) = (v4_str(&A.ipv4), v4_str(&C.ipv4));
        println!(
            "\n    $ peer-dataplane trace --port {} --src {a4} --dst {c4}",
            B.port
        );
        let trace = self
            .agent
            .cli(&["trace", "--port", B.port, "--src", &a4, "--dst", &c4])?;
        print_indented(&trace);
        self.out.check(
            "trace explains it: B's route to C is fine, the source is not B's (transitive)",
            trace.contains("origin") && trace.contains("verdict: drop, transitive"),
        );
        Ok(())
    }

    fn deleted(&mut self) -> Result<()> {
        heading("4. A deletes pcx-ab: A -> B is blackholed");
        let rev = self.api("DELETE", "/v1/vpc-peering/pcx-ab", ACCOUNT_A, 200)?;
        self.agent.wait_synced(rev, SYNC)?;
        println!(
            "    | {}",
            self.agent.log_text().lines().last().unwrap_or("")
        );
        self.out.check(
            "ping A -> B gets no answer",
            !ping_instance(self.net.ns(A), &B, false, 2)?,
        );
        let s = self.agent.stats_json()?;
        let ab = s["peerings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "pcx-ab")
            .unwrap();
        let inactive = ab["requester_to_accepter"]["dropped"]["peering-inactive"]
            .as_u64()
            .unwrap_or(0);
        self.out.check(
            &format!(
                "counted as peering-inactive on pcx-ab A -> B ({inactive}, pending and deleted)"
            ),
            inactive >= 4,
        );
        println!("\n    $ {}", self.stats_cmd);
        print_indented(&self.agent.stats_table()?);
        self.out.check(
            "pcx-bc is untouched: ping C -> B still answered",
            ping_instance(self.net.ns(C), &B, false, 1)?,
        );
        Ok(())
    }

    /// Stops everything, removes what the demo made, and says how many outcomes held.
    fn finish(self) -> Result<()> {
        heading("cleaning up (agent and control plane stopped, namespaces and pins removed)");
        let Demo {
            agent,
            cp,
            net,
            dir,
            out,
            ..
        } = self;
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
}
