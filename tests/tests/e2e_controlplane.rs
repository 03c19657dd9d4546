//! End to end with the control plane: a real `peer-dataplane controlplane` process and a
//! real agent following it (`run --control-plane`), the seed topology built through the
//! API, real packets. Needs root, BPF and network namespaces.

use anyhow::{ensure, Result};
use peer_dataplane_tests::controlplane::{
    free_port, ControlPlane, ACCOUNTS, AGENT_TOKEN, HOST_2_TOKEN,
};
use peer_dataplane_tests::seed::{Agent, SeedNetwork, A, B};
use peer_dataplane_tests::traffic::ping_instance;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const ACCT_A: &str = "111111111111";
const ACCT_B: &str = "222222222222";
const SYNC: Duration = Duration::from_secs(10);

struct Env {
    net: SeedNetwork,
    cp: ControlPlane,
    agent: Agent,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The seed network, a control plane seeded through its API (minus `hold_back` steps),
/// and an agent following it.
fn start(tag: &str, hold_back: &[&str]) -> Result<(Env, u64)> {
    start_with(tag, hold_back, false)
}

/// [`start`], the control plane serving https when `tls` (the agent verifies it with
/// `--ca`).
fn start_with(tag: &str, hold_back: &[&str], tls: bool) -> Result<(Env, u64)> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = std::env::temp_dir().join(peer_dataplane_tests::unique(tag));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let net = SeedNetwork::create(&peer_dataplane_tests::unique(tag))?;
    let port = net.host.run(free_port)?;
    let tls = if tls {
        Some(peer_dataplane_tests::controlplane::make_tls(&dir)?)
    } else {
        None
    };
    let cp = ControlPlane::start_with(&bin, &net.host, &dir.join("cp.db"), port, tls)?;
    let revision = cp.seed(hold_back)?;
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(peer_dataplane_tests::unique(tag));
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let mut agent = cp.start_agent(&bin, &net.host, &dir, &pin_dir, "agent")?;
    agent.wait_synced(revision, SYNC)?;
    Ok((
        Env {
            net,
            cp,
            agent,
            dir,
        },
        revision,
    ))
}

impl Env {
    /// pcx-ab is pending: nothing crosses, every echo counted as peering-inactive.
    fn nothing_crosses_while_pending(&self) -> Result<()> {
        self.agent.expect_ping_dropped(
            "ping a -> b over a pending peering",
            self.net.ns(A),
            &B,
            "peering-inactive",
            1,
        )
    }

    /// B accepts pcx-ab through the API; once the agent has the revision, a reaches b.
    fn accept_ab(&mut self, how: &str) -> Result<()> {
        let r = self
            .cp
            .expect("POST", "/v1/vpc-peering/pcx-ab/accept", ACCT_B, None, 200)?;
        self.agent.wait_synced(r.revision, SYNC)?;
        ensure!(
            ping_instance(self.net.ns(A), &B, false, 2)?,
            "a cannot reach b after the accept{how}\n{}",
            self.agent.log_text()
        );
        Ok(())
    }
}

#[test]
fn peering_lifecycle_through_the_api_drives_forwarding() -> Result<()> {
    let (mut env, _) = start("cp-life", &["accept-ab"])?;

    // pending-acceptance: routes exist, but nothing crosses.
    env.nothing_crosses_while_pending()?;
    let pcx = env
        .cp
        .expect("GET", "/v1/vpc-peering/pcx-ab", ACCT_A, None, 200)?;
    assert_eq!(pcx.body["status"], "pending-acceptance");

    // The requester cannot accept; an unauthenticated caller cannot either.
    let r = env
        .cp
        .expect("POST", "/v1/vpc-peering/pcx-ab/accept", ACCT_A, None, 403)?;
    assert_eq!(r.body["error"]["code"], "forbidden");
    let r = env
        .cp
        .call("POST", "/v1/vpc-peering/pcx-ab/accept", None, None)?;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );

    // Accepted by the accepter: forwarding starts.
    env.accept_ab("")?;
    let a = env.net.ns(A);

    // A route removed and added back through the API takes effect each time.
    let r = env.cp.expect(
        "DELETE",
        "/v1/route-tables/rtb-a/routes/172.16.0.0/16",
        ACCT_A,
        None,
        200,
    )?;
    env.agent.wait_synced(r.revision, SYNC)?;
    env.agent
        .expect_ping_dropped("ping a -> b without a route", a, &B, "no-route", 1)?;
    let route = json!({"destination_cidr": "172.16.0.0/16", "target": "pcx-ab"});
    let r = env.cp.expect(
        "POST",
        "/v1/route-tables/rtb-a/routes",
        ACCT_A,
        Some(&route),
        201,
    )?;
    env.agent.wait_synced(r.revision, SYNC)?;
    ensure!(
        ping_instance(a, &B, false, 1)?,
        "a cannot reach b after the route came back"
    );

    // Deleting the peering (by the accepter) blackholes it.
    let r = env
        .cp
        .expect("DELETE", "/v1/vpc-peering/pcx-ab", ACCT_B, None, 200)?;
    env.agent.wait_synced(r.revision, SYNC)?;
    env.agent.expect_ping_dropped(
        "ping a -> b over a deleted peering",
        a,
        &B,
        "peering-inactive",
        2,
    )?;
    let s = env.agent.stats_json()?;
    let ab = s["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "pcx-ab")
        .unwrap()
        .clone();
    assert_eq!(ab["status"], "deleted");
    assert!(
        ab["requester_to_accepter"]["dropped"]["peering-inactive"]
            .as_u64()
            .unwrap()
            >= 3,
        "{ab}"
    );

    // An overlapping peering ends failed, naming the overlap; the data plane ignores it.
    let vpc = json!({"id": "vpc-x", "region": "eu-west-1", "cidrs": ["10.0.128.0/17"]});
    env.cp.expect("POST", "/v1/vpcs", ACCT_B, Some(&vpc), 201)?;
    let req = json!({"requester_vpc_id": "vpc-x", "accepter_vpc_id": "vpc-a"});
    let r = env
        .cp
        .expect("POST", "/v1/vpc-peering", ACCT_B, Some(&req), 201)?;
    assert_eq!(r.body["status"], "failed");
    assert_eq!(
        r.body["status_message"],
        "CIDR 10.0.128.0/17 of vpc vpc-x overlaps CIDR 10.0.0.0/16 of vpc vpc-a"
    );
    env.agent.wait_synced(r.revision, SYNC)?;
    Ok(())
}

#[test]
fn forwarding_survives_control_plane_downtime() -> Result<()> {
    let (mut env, _) = start("cp-down", &[])?;
    let a = env.net.ns(A);
    ensure!(
        ping_instance(a, &B, false, 1)?,
        "a -> b with the control plane up"
    );

    env.cp.kill()?;
    env.agent.wait_log("unsynced: ", Duration::from_secs(30))?;
    ensure!(
        ping_instance(a, &B, false, 3)?,
        "forwarding stopped with the control plane down"
    );
    let log = env.agent.log_text();
    assert!(
        log.contains("the control plane is unreachable") && log.contains("forwarding continues"),
        "{log}"
    );

    // Back, from the same database: the agent catches up and follows changes again.
    env.cp.restart()?;
    let r = env.cp.expect(
        "DELETE",
        "/v1/route-tables/rtb-a/routes/172.16.0.0/16",
        ACCT_A,
        None,
        200,
    )?;
    env.agent.wait_synced(r.revision, SYNC)?;
    env.agent.expect_ping_dropped(
        "ping a -> b after the route was deleted (control plane restarted)",
        a,
        &B,
        "no-route",
        1,
    )?;
    assert!(env.agent.log_text().contains("synced again"));
    Ok(())
}

/// What `ps` shows of a process: its command line.
fn cmdline(pid: u32) -> Result<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// The release binaries as an operator runs them: no token on any command line, no test
/// endpoint or flag, and a host's credential reads its own host's state only.
#[test]
fn the_control_plane_is_safe_to_expose() -> Result<()> {
    let (env, _) = start("cp-safe", &[])?;
    let secrets: Vec<&str> = ACCOUNTS
        .iter()
        .map(|(_, t)| *t)
        .chain([AGENT_TOKEN, HOST_2_TOKEN])
        .collect();
    for (what, pid) in [
        ("control plane", env.cp.pid().expect("running")),
        ("agent", env.agent.pid()),
    ] {
        let line = cmdline(pid)?;
        ensure!(!line.is_empty(), "{what}: no command line for pid {pid}");
        for s in &secrets {
            ensure!(
                !line.contains(s),
                "{what}'s command line shows a token: {line}"
            );
        }
    }

    // No test endpoint in the release binary: the clock cannot be moved.
    let r = env.cp.call(
        "POST",
        "/v1/test/clock",
        Some(ACCOUNTS[0].1),
        Some(&json!({"seconds": 3600})),
    )?;
    assert_eq!(r.status, 404, "{}", r.body);
    let bin = peer_dataplane_tests::agent_path()?;
    let help = peer_dataplane_tests::netns::sh(
        std::process::Command::new(&bin).args(["controlplane", "--help"]),
    )?;
    ensure!(!help.contains("test-clock"), "{help}");
    let out = std::process::Command::new(&bin)
        .args(["controlplane", "--db", "/nonexistent/x.db", "--test-clock"])
        .output()?;
    ensure!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--test-clock'"),
        "--test-clock was accepted: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A host's credential: its own state yes, another host's no; an account's token no.
    let own = env
        .cp
        .call("GET", "/v1/hosts/host-1/state", Some(AGENT_TOKEN), None)?;
    assert_eq!(own.status, 200, "{}", own.body);
    let other = env
        .cp
        .call("GET", "/v1/hosts/host-1/state", Some(HOST_2_TOKEN), None)?;
    assert_eq!(other.status, 403, "{}", other.body);
    assert_eq!(other.body["error"]["code"], "forbidden");
    let theirs = env
        .cp
        .call("GET", "/v1/hosts/host-2/state", Some(AGENT_TOKEN), None)?;
    assert_eq!(theirs.status, 403, "{}", theirs.body);
    let account = env
        .cp
        .call("GET", "/v1/hosts/host-1/state", Some(ACCOUNTS[0].1), None)?;
    assert_eq!(account.status, 401, "{}", account.body);
    Ok(())
}

/// Over https: the agent verifies the control plane against `--ca` and follows it; a
/// peering accepted through the API starts forwarding as over http.
#[test]
fn the_agent_follows_the_control_plane_over_tls() -> Result<()> {
    let (mut env, _) = start_with("cp-tls", &["accept-ab"], true)?;
    ensure!(env.cp.url().starts_with("https://"), "{}", env.cp.url());
    env.nothing_crosses_while_pending()?;
    env.accept_ab(" over https")?;
    // A plain-http client gets no API out of the TLS port.
    let plain = format!("http://127.0.0.1:{}/healthz", env.cp.port);
    let got = env.net.host.run(move || {
        ureq::get(&plain)
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call()
            .map(|r| r.status().as_u16())
    })?;
    ensure!(got.is_err(), "plain http got an answer: {got:?}");
    Ok(())
}

/// Silent and slow clients cost the others nothing: with five connections that never send
/// a byte and five that send their first bytes one a second (a TLS ClientHello, or an
/// HTTP request line), a valid request is answered at once, over https and over http.
#[test]
fn silent_and_slow_clients_do_not_hold_the_api_back() -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    for tls in [true, false] {
        let tag = if tls { "cp-slow-tls" } else { "cp-slow" };
        let dir = std::env::temp_dir().join(peer_dataplane_tests::unique(tag));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let ns = peer_dataplane_tests::netns::Netns::create(&peer_dataplane_tests::unique(tag))?;
        let port = ns.run(free_port)?;
        let certs = if tls {
            Some(peer_dataplane_tests::controlplane::make_tls(&dir)?)
        } else {
            None
        };
        let cp = ControlPlane::start_with(&bin, &ns, &dir.join("cp.db"), port, certs)?;
        let (stop, connected) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        // A TLS record header and the start of a ClientHello; an HTTP request line.
        let first_bytes: &'static [u8] = if tls {
            &[
                0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
            ]
        } else {
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        };
        let hostile: Vec<_> = (0..10)
            .map(|i| {
                let (stop, connected, path) = (stop.clone(), connected.clone(), ns.path());
                std::thread::spawn(move || -> Result<()> {
                    peer_dataplane_tests::netns::enter(&path)?;
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    connected.fetch_add(1, Ordering::SeqCst);
                    let mut sent = 0;
                    let mut ticks = 0u32;
                    while !stop.load(Ordering::SeqCst) {
                        // The trickling half: one byte a second.
                        if i >= 5 && ticks.is_multiple_of(10) && sent < first_bytes.len() {
                            let _ = s.write_all(&first_bytes[sent..sent + 1]);
                            sent += 1;
                        }
                        ticks += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok(())
                })
            })
            .collect();
        peer_dataplane_tests::wait_until(
            "ten hostile connections established",
            Duration::from_secs(10),
            || Ok(connected.load(Ordering::SeqCst) == 10),
        )?;
        let started = std::time::Instant::now();
        let r = cp.call("GET", "/healthz", None, None);
        let took = started.elapsed();
        stop.store(true, Ordering::SeqCst);
        for h in hostile {
            h.join()
                .map_err(|_| anyhow::anyhow!("a hostile client panicked"))??;
        }
        let scheme = if tls { "https" } else { "http" };
        let r = r.map_err(|e| {
            anyhow::anyhow!(
                "{scheme}: a valid request got no answer in {took:?} behind silent and slow clients: {e}"
            )
        })?;
        drop(cp);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(r.status, 200, "{}", r.body);
        // Before handshakes left the accept loop, the TLS case waited 10 s per silent
        // client (and the request timed out); 2 s leaves room for a loaded machine.
        assert!(
            took < Duration::from_secs(2),
            "{scheme}: a valid request took {took:?} behind silent and slow clients"
        );
    }
    Ok(())
}

/// The agent trusts `--ca` only: a control plane whose certificate another CA signed is
/// never sent a request (so never the host's token), and the agent says why.
#[test]
fn an_agent_refuses_a_control_plane_its_ca_did_not_sign() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = std::env::temp_dir().join(peer_dataplane_tests::unique("cp-ca"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("other"))?;
    let ns = peer_dataplane_tests::netns::Netns::create(&peer_dataplane_tests::unique("cp-ca"))?;
    let port = ns.run(free_port)?;
    let tls = peer_dataplane_tests::controlplane::make_tls(&dir)?;
    let wrong = peer_dataplane_tests::controlplane::make_tls(&dir.join("other"))?;
    let cp = ControlPlane::start_with(&bin, &ns, &dir.join("cp.db"), port, Some(tls))?;
    let mut args = cp.agent_args()?;
    let at = args.iter().position(|a| a == "--ca").expect("--ca") + 1;
    args[at] = wrong.ca.display().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(peer_dataplane_tests::unique("cp-ca"));
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let mut agent = Agent::start_with(&bin, &ns, &dir.join("agent.toml"), &pin_dir, &args, "ca")?;
    agent.wait_log("unsynced:", Duration::from_secs(15))?;
    let log = agent.log_text();
    let why = log
        .lines()
        .find(|l| l.contains("unsynced:"))
        .unwrap_or_default()
        .to_string();
    drop(agent);
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        why.to_lowercase().contains("certificate") || why.contains("UnknownIssuer"),
        "the agent does not say the certificate is not trusted: {why}"
    );
    ensure!(
        !log.contains("synced revision"),
        "the agent synced from a control plane it should not trust:\n{log}"
    );
    Ok(())
}
