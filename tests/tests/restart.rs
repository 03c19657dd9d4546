//! Hitless restart : the agent is SIGKILLed in the middle of a steady UDP stream
//! across the peering and started again. The program stays attached through its pinned
//! link and keeps forwarding with the pinned maps while no agent runs; the new agent swaps
//! its program in atomically. Every packet sent must arrive, and the counters, which live
//! in pinned maps and so survive the restart, must show each one forwarded.

use anyhow::{ensure, Result};
use peer_dataplane_tests::seed::{self, Agent, SeedNetwork, A, B};
use peer_dataplane_tests::wait_until;
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PACKETS: u64 = 4000;

fn forwarded_a_to_b(stats: &Value) -> u64 {
    let p = stats["peerings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "pcx-ab")
        .unwrap();
    p["requester_to_accepter"]["packets"].as_u64().unwrap()
}

#[test]
fn sigkill_and_restart_during_a_udp_stream_loses_no_packet() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = std::env::temp_dir().join(peer_dataplane_tests::unique("restart"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("state.toml");
    std::fs::write(&config, seed::SEED_TOML)?;
    let net = SeedNetwork::create(&peer_dataplane_tests::unique("rst"))?;
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(peer_dataplane_tests::unique("rst"));
    let mut first = Agent::start(&bin, &net.host, &config, &pin_dir, "native")?;
    let before = forwarded_a_to_b(&first.stats_json()?);

    let dst: SocketAddr = (std::net::Ipv4Addr::from(B.ipv4), 7300).into();
    let rx = net.ns(B).run(move || UdpSocket::bind(dst))??;
    rx.set_read_timeout(Some(Duration::from_millis(200)))?;
    let src: SocketAddr = (std::net::Ipv4Addr::from(A.ipv4), 0).into();
    let tx = net.ns(A).run(move || UdpSocket::bind(src))??;

    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (done, received) = (done.clone(), received.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !done.load(Ordering::Relaxed) {
                if rx.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // About 1,600 packets/s (a paced load, not a wait) until every packet is out.
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        for i in 0..PACKETS {
            if tx.send_to(&i.to_be_bytes(), dst).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    });
    let got = || received.load(Ordering::Relaxed);
    let deadline = Duration::from_secs(20);

    // The stream flows through the first agent's program...
    wait_until("500 packets received before the kill", deadline, || {
        Ok(got() >= 500)
    })?;
    first.kill_hard()?;
    let killed_at = Instant::now();
    // ...and through the pinned program while no agent runs at all.
    let at_kill = got();
    wait_until(
        "500 more packets received with no agent running",
        deadline,
        || Ok(got() >= at_kill + 500),
    )?;
    let config_arg = config.display().to_string();
    let second = Agent::start_with(
        &bin,
        &net.host,
        &config,
        &pin_dir,
        &["--config", &config_arg],
        "agent2",
    )?;
    let restarted_in = killed_at.elapsed();
    ensure!(
        got() < PACKETS,
        "the stream ended before the new agent was up: make it longer"
    );

    let sent = sender.join().unwrap();
    // Wait until every packet sent is forwarded and received; if that never happens, the
    // assertions below say which step lost packets.
    let forwarded_now = || -> Result<u64> { Ok(forwarded_a_to_b(&second.stats_json()?) - before) };
    let _ = wait_until("every packet forwarded and received", deadline, || {
        Ok(forwarded_now()? >= sent && got() >= sent)
    });
    done.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    let received = got();
    let stats = second.stats_json()?;
    let forwarded = forwarded_a_to_b(&stats) - before;
    let log = second.log_text();
    eprintln!(
        "sent {sent}, forwarded {forwarded}, received {received}; agent down for {restarted_in:?}"
    );
    ensure!(
        log.contains("replaced the program on the pinned XDP link"),
        "the new agent did not adopt the link:\n{log}"
    );
    ensure!(
        log.contains("(0 map writes)"),
        "an unchanged state must need no writes:\n{log}"
    );
    assert_eq!(sent, PACKETS, "the sender could not send every packet");
    assert_eq!(
        forwarded, sent,
        "packets delivered to the XDP hook but not forwarded"
    );
    assert_eq!(received, sent, "packets lost across the restart");
    assert_eq!(
        stats["global"]["dropped_packets"].as_u64(),
        Some(0),
        "{stats}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
