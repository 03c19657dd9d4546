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

/// A control plane's bare surroundings for a test of the API alone: the binary, a fresh
/// directory and namespace named after `tag`, and a free port there.
fn bare(tag: &str) -> Result<(PathBuf, PathBuf, peer_dataplane_tests::netns::Netns, u16)> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = std::env::temp_dir().join(peer_dataplane_tests::unique(tag));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ns = peer_dataplane_tests::netns::Netns::create(&peer_dataplane_tests::unique(tag))?;
    let port = ns.run(free_port)?;
    Ok((bin, dir, ns, port))
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

/// The binaries every end-to-end test runs are the ones `cargo xtask build` produced,
/// byte for byte (its checksums sit beside them), not ones `cargo test` rebuilt for its
/// own targets' features.
#[test]
fn the_binaries_under_test_are_what_cargo_xtask_build_produced() -> Result<()> {
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = bin.parent().expect("a directory");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).map_err(|e| {
        anyhow::anyhow!(
            "{}: no SHA256SUMS of `cargo xtask build` beside it: {e}",
            bin.display()
        )
    })?;
    for name in ["peer-dataplane", "peer-dataplane-controlplane"] {
        ensure!(
            sums.lines().any(|l| l.ends_with(&format!(" {name}"))),
            "SHA256SUMS does not list {name}:\n{sums}"
        );
    }
    let check = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(dir)
        .output()?;
    ensure!(
        check.status.success(),
        "the binaries under test differ from what `cargo xtask build` produced:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    Ok(())
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
    assert_eq!(account.status, 403, "{}", account.body);
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

/// Five connections that never send a byte and five that trickle a ClientHello (https)
/// or a request's headers (http) a byte a second: a valid request is answered at once,
/// and each hostile connection is closed at its deadline (`--client-deadline 3`),
/// counted in the metrics.
#[test]
fn silent_and_slow_clients_do_not_hold_the_api_back() -> Result<()> {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    for tls in [true, false] {
        let tag = if tls { "cp-slow-tls" } else { "cp-slow" };
        let (bin, dir, ns, port) = bare(tag)?;
        let certs = if tls {
            Some(peer_dataplane_tests::controlplane::make_tls(&dir)?)
        } else {
            None
        };
        let cp = ControlPlane::start_with_flags(
            &bin,
            &ns,
            &dir.join("cp.db"),
            port,
            certs,
            &["--client-deadline", "3"],
        )?;
        let (stop, connected, closed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        // A TLS record header and the start of a ClientHello; an HTTP request's head.
        let first_bytes: &'static [u8] = if tls {
            &[
                0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03,
            ]
        } else {
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
        };
        let hostile: Vec<_> = (0..10)
            .map(|i| {
                let (stop, connected, closed, path) =
                    (stop.clone(), connected.clone(), closed.clone(), ns.path());
                std::thread::spawn(move || -> Result<()> {
                    peer_dataplane_tests::netns::enter(&path)?;
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                    s.set_read_timeout(Some(Duration::from_millis(100)))?;
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
                        // The server closing the connection reads as its end (or a reset).
                        let mut b = [0u8; 64];
                        match s.read(&mut b) {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut => {}
                            Err(_) => break,
                        }
                    }
                    if !stop.load(Ordering::SeqCst) {
                        closed.fetch_add(1, Ordering::SeqCst);
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
        let scheme = if tls { "https" } else { "http" };
        // Every hostile connection is closed by its deadline (3 s; 10 s of room).
        let all_closed = peer_dataplane_tests::wait_until(
            &format!("{scheme}: the server to close the ten hostile connections"),
            Duration::from_secs(10),
            || Ok(closed.load(Ordering::SeqCst) == 10),
        );
        stop.store(true, Ordering::SeqCst);
        for h in hostile {
            h.join()
                .map_err(|_| anyhow::anyhow!("a hostile client panicked"))??;
        }
        let stage = if tls { "tls-handshake" } else { "headers" };
        let deadlines = cp.metric(&format!(
            "pdp_controlplane_client_deadlines_total{{stage=\"{stage}\"}}"
        ))?;
        drop(cp);
        let _ = std::fs::remove_dir_all(&dir);
        let r = r.map_err(|e| {
            anyhow::anyhow!(
                "{scheme}: a valid request got no answer in {took:?} behind silent and slow clients: {e}"
            )
        })?;
        assert_eq!(r.status, 200, "{}", r.body);
        // Before handshakes left the accept loop, the https request waited 10 s per
        // silent client (and timed out); over http a header read had no deadline at all.
        assert!(
            took < Duration::from_millis(100),
            "{scheme}: a valid request took {took:?} behind silent and slow clients"
        );
        all_closed?;
        assert!(
            deadlines >= 10.0,
            "{scheme}: {deadlines} connections counted as past their {stage} deadline, not 10"
        );
    }
    Ok(())
}

/// One source address holds at most `--max-connections-per-source` connections: the
/// next is closed at once (and counted); another address is served.
#[test]
fn a_source_address_holds_only_its_share_of_connections() -> Result<()> {
    use std::io::Read;
    let (bin, dir, ns, port) = bare("cp-share")?;
    let cp = ControlPlane::start_with_flags(
        &bin,
        &ns,
        &dir.join("cp.db"),
        port,
        None,
        &["--max-connections-per-source", "8"],
    )?;
    let from: std::net::Ipv4Addr = [127, 0, 0, 7].into();
    let to = std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port);
    let (held, refused) = ns.run(move || {
        let held: Vec<_> = (0..8)
            .map(|_| peer_dataplane_tests::controlplane::connect_from(from, to))
            .collect::<Result<_>>()?;
        // The ninth is accepted by the kernel and closed by the server at once.
        let mut ninth = peer_dataplane_tests::controlplane::connect_from(from, to)?;
        ninth.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut b = [0u8; 16];
        let refused = match ninth.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        anyhow::Ok((held, refused))
    })??;
    // While those eight are held, another address is served.
    let other = cp.raw_http(
        [127, 0, 0, 8].into(),
        vec!["GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()],
    )?;
    let counted =
        cp.metric("pdp_controlplane_connections_refused_total{reason=\"connections-per-source\"}")?;
    drop(held);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(refused, "a ninth connection from one address was served");
    ensure!(
        other[0].0 == 200,
        "another address was not served: {}",
        other[0].1
    );
    ensure!(counted >= 1.0, "the refused connection was not counted");
    Ok(())
}

/// The tokens file is the truth: a token removed from it stops working within 1 s of
/// SIGHUP, the others keep working, a file that does not parse changes nothing, and the
/// database (`sqlite3 .dump`) holds no token, revoked or not.
#[test]
fn a_token_removed_from_its_file_is_revoked_on_sighup() -> Result<()> {
    let (bin, dir, ns, port) = bare("cp-revoke")?;
    let db = dir.join("cp.db");
    let cp = ControlPlane::start(&bin, &ns, &db, port)?;
    let outcome = (|| -> Result<()> {
        let (a, b) = (ACCOUNTS[0].1, ACCOUNTS[1].1);
        for t in [a, b] {
            let r = cp.call("GET", "/v1/vpcs", Some(t), None)?;
            ensure!(r.status == 200, "before: {} {}", r.status, r.body);
        }
        cp.write_account_tokens(&[ACCOUNTS[1], ACCOUNTS[2]])?;
        cp.hangup()?;
        peer_dataplane_tests::wait_until(
            "account A's removed token to answer 401",
            Duration::from_secs(1),
            || Ok(cp.call("GET", "/v1/vpcs", Some(a), None)?.status == 401),
        )?;
        ensure!(cp.call("GET", "/v1/vpcs", Some(b), None)?.status == 200);
        // A file that does not parse (a token too short): nothing changes, and it says so.
        cp.write_account_tokens(&[ACCOUNTS[1], ("444444444444", "short")])?;
        cp.hangup()?;
        peer_dataplane_tests::wait_until(
            "the failed reload to be counted",
            Duration::from_secs(5),
            || Ok(cp.metric("pdp_controlplane_token_reloads_total{outcome=\"error\"}")? >= 1.0),
        )?;
        ensure!(
            cp.call("GET", "/v1/vpcs", Some(ACCOUNTS[2].1), None)?
                .status
                == 200
        );
        ensure!(cp.call("GET", "/v1/vpcs", Some(a), None)?.status == 401);
        ensure!(
            cp.log_text().contains("the tokens in force are unchanged"),
            "{}",
            cp.log_text()
        );
        let dump = std::process::Command::new("sqlite3")
            .arg(&db)
            .arg(".dump")
            .output()?;
        ensure!(
            dump.status.success(),
            "sqlite3 .dump: {}",
            String::from_utf8_lossy(&dump.stderr)
        );
        let dump = String::from_utf8_lossy(&dump.stdout);
        ensure!(
            dump.contains("account_token_hashes"),
            "no token hashes in the dump:\n{dump}"
        );
        for (_, t) in ACCOUNTS
            .iter()
            .chain(&peer_dataplane_tests::controlplane::HOST_TOKENS)
        {
            ensure!(
                !dump.contains(t),
                "the database holds a token in clear:\n{dump}"
            );
        }
        Ok(())
    })();
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

/// 1,000 wrong tokens from one address: a burst of 401s, then 429s with Retry-After,
/// and even a valid token from that address waits; a valid client at another address
/// is served throughout. The log names the address, never a token.
#[test]
fn an_address_that_guesses_tokens_meets_429s_and_others_are_served() -> Result<()> {
    let (bin, dir, ns, port) = bare("cp-guess")?;
    let cp = ControlPlane::start(&bin, &ns, &dir.join("cp.db"), port)?;
    let get = |token: &str| {
        format!("GET /v1/vpcs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
    };
    let guesses: Vec<String> = (0..1000)
        .map(|i| get(&format!("guess-{i:06}-of-a-token")))
        .collect();
    let outcome = (|| -> Result<()> {
        let answers = cp.raw_http([127, 0, 0, 2].into(), guesses)?;
        let count = |code| answers.iter().filter(|(s, _)| *s == code).count();
        let (unauthorized, throttled) = (count(401), count(429));
        ensure!(
            unauthorized + throttled == 1000,
            "answers other than 401 and 429: {:?}",
            answers.iter().find(|(s, _)| *s != 401 && *s != 429)
        );
        // A burst of 20, then one a second (the guesses take well under 30 s).
        ensure!(
            (20..=60).contains(&unauthorized),
            "{unauthorized} guesses were checked, {throttled} refused"
        );
        let refused = answers
            .iter()
            .find(|(s, _)| *s == 429)
            .map(|(_, h)| h.clone())
            .unwrap_or_default();
        ensure!(refused.to_lowercase().contains("retry-after:"), "{refused}");
        // The guessing address waits even with a valid token; another is served.
        let own = cp.raw_http([127, 0, 0, 2].into(), vec![get(ACCOUNTS[0].1)])?;
        ensure!(
            own[0].0 == 429,
            "the guessing address was served: {}",
            own[0].1
        );
        let other = cp.raw_http([127, 0, 0, 3].into(), vec![get(ACCOUNTS[0].1)])?;
        ensure!(
            other[0].0 == 200,
            "another address was refused: {}",
            other[0].1
        );
        ensure!(cp.metric("pdp_controlplane_auth_failures_total")? >= unauthorized as f64);
        ensure!(cp.metric("pdp_controlplane_auth_throttled_total")? >= throttled as f64);
        let log = cp.log_text();
        ensure!(
            log.contains("127.0.0.2: too many failed authentications"),
            "{log}"
        );
        ensure!(
            !log.contains("-of-a-token"),
            "the log shows a token:\n{log}"
        );
        Ok(())
    })();
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
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
