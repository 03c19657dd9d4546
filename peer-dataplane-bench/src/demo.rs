//! `cargo xtask demo`: the seed topology in network namespaces, built through the control
//! plane's API; real agents following the control plane; real traffic; and the counters
//! that prove each outcome. By default the instances are spread over three hosts (A and a
//! second B instance on host 1, B on host 2, C on host 3) joined by an underlay bridge,
//! one agent per host; `--single-host` puts every port on one host. Removes everything it
//! created.

use anyhow::{bail, Context, Result};
use peer_dataplane_tests::controlplane::{free_port, token_of, ControlPlane, FLEET_API, SEED_API};
use peer_dataplane_tests::fleet::{self, FleetNetwork, B2};
use peer_dataplane_tests::netns::Netns;
use peer_dataplane_tests::seed::{v4_str, v6_str, Agent, Instance, SeedNetwork, A, B, C};
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
    let mut single_host = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--agent" => agent_bin = args.next().map(PathBuf::from),
            "--single-host" => single_host = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let bin = agent_bin.context(
        "usage: pdp-demo --agent PATH [--single-host] (run it through `cargo xtask demo`)",
    )?;
    peer_dataplane_tests::require_root()?;
    print_topology(single_host);
    let mut demo = Demo::start(&bin, single_host)?;
    demo.pending()?;
    demo.accepted()?;
    demo.not_transitive()?;
    demo.deleted()?;
    demo.finish()
}

fn print_topology(single_host: bool) {
    heading(if single_host {
        "topology (examples/seed-api.json): one host"
    } else {
        "topology (examples/fleet-api.json): three hosts"
    });
    let on = |i: Instance| {
        if single_host {
            String::new()
        } else {
            format!(" on host-{}", fleet::host_of(i) + 1)
        }
    };
    for (name, cidr, i) in [
        ("A", "10.0.0.0/16   ", A),
        ("B", "172.16.0.0/16 ", B),
        ("C", "192.168.0.0/16", C),
    ] {
        println!(
            "    VPC {name} {cidr} account {}  instance {} / {} behind port {}{}",
            ["111111111111", "222222222222", "333333333333"][(name.as_bytes()[0] - b'A') as usize],
            v4_str(&i.ipv4),
            v6_str(&i.ipv6),
            i.port,
            on(i)
        );
    }
    if !single_host {
        println!(
            "    VPC B                                   instance {} / {} behind port {}{}",
            v4_str(&B2.ipv4),
            v6_str(&B2.ipv6),
            B2.port,
            on(B2)
        );
    }
    println!("    peerings: pcx-ab (A <-> B), pcx-bc (B <-> C); no A <-> C peering");
    if single_host {
        println!("    namespaces: pdp-demo-host (the hypervisor: ports, agent, control plane), pdp-demo-a, -b, -c");
    } else {
        println!("    namespaces: pdp-demo-h1, -h2, -h3 (hosts: ports, uplink up0, agent; the control plane on h1),");
        println!("                pdp-demo-ul (the underlay: bridge br0, 192.0.2.0/24), pdp-demo-a, -b, -c, -b2 (instances)");
    }
}

/// The demo's namespaces: one host, or three and their underlay.
enum Net {
    Single(SeedNetwork),
    Fleet(FleetNetwork),
}

impl Net {
    fn ns(&self, i: Instance) -> &Netns {
        match self {
            Net::Single(n) => n.ns(i),
            Net::Fleet(n) => n.ns(i),
        }
    }

    /// Index of the host (and its agent) that carries `i`.
    fn host_of(&self, i: Instance) -> usize {
        match self {
            Net::Single(_) => 0,
            Net::Fleet(_) => fleet::host_of(i),
        }
    }

    fn hosts(&self) -> Vec<&Netns> {
        match self {
            Net::Single(n) => vec![&n.host],
            Net::Fleet(n) => n.hosts.iter().collect(),
        }
    }
}

/// The running demo: namespaces, control plane, agents, and the outcomes so far.
struct Demo {
    // Dropped in this order: agents, control plane, namespaces.
    agents: Vec<Agent>,
    cp: ControlPlane,
    net: Net,
    dir: PathBuf,
    out: Outcomes,
}

impl Demo {
    /// The namespaces, the control plane with the topology, the agents following it.
    fn start(bin: &std::path::Path, single_host: bool) -> Result<Demo> {
        let net = if single_host {
            Net::Single(SeedNetwork::create("pdp-demo")?)
        } else {
            Net::Fleet(FleetNetwork::create("pdp-demo", 1600)?)
        };
        let dir = std::env::temp_dir().join("pdp-demo");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;

        heading("starting the control plane (REST API, SQLite store)");
        let cp_ns = net.hosts()[0];
        let port = cp_ns.run(free_port)?;
        let db = dir.join("cp.db");
        let cp = if single_host {
            ControlPlane::start(bin, cp_ns, &db, port)?
        } else {
            ControlPlane::start_for_fleet(bin, cp_ns, &db, port)?
        };
        println!(
            "    peer-dataplane-controlplane --listen {}:{port} --db {} --account-tokens {} --host-tokens {}",
            cp.listen,
            cp.db.display(),
            cp.db.with_extension("account-tokens").display(),
            cp.db.with_extension("host-tokens").display()
        );
        let script = if single_host { SEED_API } else { FLEET_API };
        let revision = cp.replay(script, &["accept-ab"])?;
        println!("    built the topology with the API requests of accounts A, B and C (revision {revision}); B has not accepted pcx-ab");

        let mut agents = Vec::new();
        for (i, host_ns) in net.hosts().into_iter().enumerate() {
            let host = format!("host-{}", i + 1);
            let pin_dir = PathBuf::from(if single_host {
                "/sys/fs/bpf/pdp-demo".to_string()
            } else {
                format!("/sys/fs/bpf/pdp-demo-h{}", i + 1)
            });
            let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
            let underlay = v4_str(&fleet::underlay(0));
            let url = format!("http://{underlay}:{port}");
            let own = v4_str(&fleet::underlay(i));
            let args = if single_host {
                cp.agent_args()?
            } else {
                cp.host_agent_args(&host, &url, Some((&own, fleet::UPLINK)))?
            };
            heading(&if single_host {
                "starting the agent: native XDP on the three ports, following the control plane"
                    .to_string()
            } else {
                format!("starting {host}'s agent: native XDP on its ports and uplink, joining the fleet")
            });
            println!(
                "    peer-dataplane --pin-dir {} run {}",
                pin_dir.display(),
                args.join(" ")
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let config = dir.join(format!("{host}.toml"));
            agents.push(Agent::start_with(
                bin, host_ns, &config, &pin_dir, &args, "agent",
            )?);
        }
        let mut demo = Demo {
            agents,
            cp,
            net,
            dir,
            out: Outcomes(Vec::new()),
        };
        // Registration bumps the revision: wait for whatever is newest now.
        let newest = demo
            .cp
            .expect("GET", "/v1/vpcs", "111111111111", None, 200)?
            .revision;
        demo.synced(newest.max(revision))?;
        for (i, a) in demo.agents.iter().enumerate() {
            println!("    host-{} |", i + 1);
            print_indented(
                &a.log_text()
                    .lines()
                    .map(|l| format!("| {l}\n"))
                    .collect::<String>(),
            );
        }
        Ok(demo)
    }

    /// Waits until every agent holds what the control plane has for its host at
    /// `revision` (a host the change does not concern is told nothing: it already does).
    fn synced(&mut self, revision: u64) -> Result<()> {
        for (i, a) in self.agents.iter_mut().enumerate() {
            self.cp
                .wait_current(a, &format!("host-{}", i + 1), revision, SYNC)?;
        }
        Ok(())
    }

    fn agent(&self, i: Instance) -> &Agent {
        &self.agents[self.net.host_of(i)]
    }

    /// `stats` of `i`'s host, shown as the command an operator types there.
    fn show_stats(&self, i: Instance) -> Result<()> {
        let a = self.agent(i);
        println!(
            "\n    [host-{}] $ peer-dataplane --pin-dir {} stats",
            self.net.host_of(i) + 1,
            a.pin_dir.display()
        );
        print_indented(&a.stats_table()?);
        Ok(())
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
        self.synced(rev)?;
        println!(
            "    | {}",
            self.agent(A).log_text().lines().last().unwrap_or("")
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
        self.load_through_the_peering()?;
        self.show_stats(A)?;
        if self.net.host_of(A) != self.net.host_of(B) {
            self.show_stats(B)?;
            let (a4, b4) = (v4_str(&A.ipv4), v4_str(&B.ipv4));
            println!(
                "\n    [host-1] $ peer-dataplane trace --port {} --src {a4} --dst {b4}",
                A.port
            );
            let trace = self
                .agent(A)
                .cli(&["trace", "--port", A.port, "--src", &a4, "--dst", &b4])?;
            print_indented(&trace);
        }
        Ok(())
    }

    /// `loadgen` from A's port toward B: the generator this kernel allows (live frames, or
    /// AF_XDP from the instance's side of the port), every frame forwarded.
    fn load_through_the_peering(&mut self) -> Result<()> {
        const FRAMES: u64 = 200_000;
        let (a4, b4) = (v4_str(&A.ipv4), v4_str(&B.ipv4));
        let packets = FRAMES.to_string();
        let args = [
            "loadgen",
            "--src",
            &a4,
            "--dst",
            &b4,
            "--dport",
            "7002",
            "--flows",
            "64",
            "--packets",
            &packets,
            "--duration",
            "30",
        ];
        println!(
            "\n    [host-{}] $ peer-dataplane {}",
            self.net.host_of(A) + 1,
            args.join(" ")
        );
        let mut json = args.to_vec();
        json.extend(["-o", "json"]);
        let out = self.agent(A).cli(&json)?;
        let r: serde_json::Value = serde_json::from_str(&out)?;
        let n = |k: &str| r[k].as_u64().unwrap_or(0);
        println!(
            "    generator: {} ({}){}",
            r["generator"].as_str().unwrap_or("?"),
            r["reason"].as_str().unwrap_or("?"),
            r["mode"]
                .as_str()
                .map(|m| format!(", {m}"))
                .unwrap_or_default()
        );
        println!(
            "    sent {} frames in {:.2} s ({:.3} Mpps); host 1 meanwhile forwarded {}, passed {}, dropped {}",
            r["sent"]["packets"],
            r["sent"]["seconds"].as_f64().unwrap_or(0.0),
            r["sent"]["pps"].as_f64().unwrap_or(0.0) / 1e6,
            n("forwarded"),
            n("passed"),
            n("dropped")
        );
        // Host 1's counters also see what comes back meanwhile (B's ICMP port-unreachable
        // answers, forwarded to A): at least every frame sent, nothing dropped or passed.
        self.out.check(
            &format!("loadgen A -> B: all {FRAMES} frames forwarded through the peering"),
            r["sent"]["packets"] == FRAMES
                && n("forwarded") >= FRAMES
                && n("dropped") == 0
                && n("passed") == 0,
        );
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
        // A's host refuses A -> C; B's host refuses what B relays.
        let dropped = |i: Instance, r: &str| -> Result<u64> {
            Ok(self.agent(i).stats_json()?["global"]["dropped"][r]
                .as_u64()
                .unwrap_or(0))
        };
        let no_route = dropped(A, "no-route")?;
        let transitive = dropped(B, "transitive")?;
        println!(
            "    counters: drop no-route = {no_route} (host-{}), drop transitive = {transitive} (host-{})",
            self.net.host_of(A) + 1,
            self.net.host_of(B) + 1
        );
        self.out.check(
            "counted as no-route and transitive drops",
            no_route >= 2 && transitive >= 2,
        );
        // Why: ask the loaded program, stage by stage.
        let (a4, c4) = (v4_str(&A.ipv4), v4_str(&C.ipv4));
        println!(
            "\n    [host-{}] $ peer-dataplane trace --port {} --src {a4} --dst {c4}",
            self.net.host_of(B) + 1,
            B.port
        );
        let trace = self
            .agent(B)
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
        self.synced(rev)?;
        println!(
            "    | {}",
            self.agent(A).log_text().lines().last().unwrap_or("")
        );
        self.out.check(
            "ping A -> B gets no answer",
            !ping_instance(self.net.ns(A), &B, false, 2)?,
        );
        let s = self.agent(A).stats_json()?;
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
        self.show_stats(A)?;
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
            agents,
            cp,
            net,
            dir,
            out,
        } = self;
        drop(agents);
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
