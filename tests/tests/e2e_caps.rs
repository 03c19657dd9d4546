//! End to end: a bandwidth cap on a peering, enforced by the real program on veth. A paced
//! UDP stream offered at twice the cap is delivered at the cap (±5 % over 5 s); one
//! offered at half the cap loses nothing. Needs root, BPF and network namespaces.

use anyhow::{ensure, Result};
use peer_dataplane::bpf::KernelMaps;
use peer_dataplane_common::{DropReason, DIR_REQUESTER_TO_ACCEPTER, NAME_PEERING};
use peer_dataplane_tests::seed::{self, Agent, SeedNetwork, A, B};
use peer_dataplane_tests::traffic::udp_stream;
use std::path::PathBuf;
use std::time::Duration;

const CAP_MBPS: u64 = 100;
const WINDOW: Duration = Duration::from_secs(5);
const PAYLOAD: usize = 1400;

/// pcx-ab, requester to accepter: (forwarded bytes, rate-limited drops), and the
/// stream's packets decided so far, (forwarded, dropped for any reason).
fn ab_counters(pin_dir: &std::path::Path) -> Result<((u64, u64), (u64, u64))> {
    let maps = KernelMaps::open(pin_dir)?;
    let (ra, _) = maps.peering_counters(ab_slot(&maps)?)?;
    Ok((
        (ra.bytes, ra.drop[DropReason::RateLimited as usize]),
        (ra.packets, ra.drop.iter().sum()),
    ))
}

fn ab_slot(maps: &KernelMaps) -> Result<u32> {
    let state = maps.read_state()?;
    Ok(state
        .names
        .iter()
        .find(|(k, v)| k.kind == NAME_PEERING && v.as_str() == "pcx-ab")
        .map(|(k, _)| k.id)
        .expect("pcx-ab is installed"))
}

#[test]
fn a_peering_cap_delivers_the_cap_and_never_drops_below_it() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let dir = std::env::temp_dir().join(peer_dataplane_tests::unique("e2e-caps"));
    std::fs::create_dir_all(&dir)?;
    let mut doc = seed::seed_doc();
    let pcx = doc.peerings.iter_mut().find(|p| p.id == "pcx-ab").unwrap();
    pcx.bandwidth_mbps = Some(CAP_MBPS);
    let config = dir.join("state.toml");
    std::fs::write(&config, doc.to_toml())?;
    let net = SeedNetwork::create(&peer_dataplane_tests::unique("caps"))?;
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(peer_dataplane_tests::unique("e2e-caps"));
    let _agent = Agent::start(&bin, &net.host, &config, &pin_dir, "native")?;
    let (a, b) = (net.ns(A), net.ns(B));
    let cap = (CAP_MBPS * 1_000_000) as f64;

    // Twice the cap: delivered at the cap.
    eprintln!(
        "offering {} Mbit/s for {} s",
        2 * CAP_MBPS,
        WINDOW.as_secs()
    );
    let decided = || Ok(ab_counters(&pin_dir)?.1);
    let ((bytes0, limited0), _) = ab_counters(&pin_dir)?;
    let over = udp_stream(
        a,
        &A,
        b,
        &B,
        2 * CAP_MBPS * 1_000_000,
        WINDOW,
        PAYLOAD,
        &decided,
    )?;
    let ((bytes1, limited1), _) = ab_counters(&pin_dir)?;
    let delivered = ((bytes1 - bytes0) * 8) as f64 / over.elapsed.as_secs_f64();
    let received = (over.received * over.frame_len * 8) as f64 / over.elapsed.as_secs_f64();
    eprintln!(
        "offered {:.1} Mbit/s: forwarded {:.1} Mbit/s ({:+.2} % of the cap), received {:.1} Mbit/s, {} rate-limited",
        over.offered_bps() / 1e6,
        delivered / 1e6,
        (delivered / cap - 1.0) * 100.0,
        received / 1e6,
        limited1 - limited0
    );
    ensure!(
        over.offered_bps() > 1.9 * cap,
        "the sender only offered {:.1} Mbit/s",
        over.offered_bps() / 1e6
    );
    ensure!(
        (delivered / cap - 1.0).abs() <= 0.05,
        "forwarded {:.1} Mbit/s, not within 5 % of {CAP_MBPS} Mbit/s",
        delivered / 1e6
    );
    ensure!(
        (received / cap - 1.0).abs() <= 0.05,
        "received {:.1} Mbit/s, not within 5 % of {CAP_MBPS} Mbit/s",
        received / 1e6
    );
    ensure!(limited1 > limited0, "nothing was counted as rate-limited");

    // Once the bucket is full again, half the cap goes through whole.
    peer_dataplane_tests::wait_until(
        "pcx-ab's bucket refilling after the overload",
        Duration::from_secs(10),
        || {
            let maps = KernelMaps::open(&pin_dir)?;
            let (slot, dir) = (ab_slot(&maps)?, DIR_REQUESTER_TO_ACCEPTER);
            Ok(maps.cap_state(slot, dir)? <= maps.now_ns()?)
        },
    )?;
    eprintln!(
        "offering {} Mbit/s for {} s",
        CAP_MBPS / 2,
        WINDOW.as_secs()
    );
    let under = udp_stream(
        a,
        &A,
        b,
        &B,
        CAP_MBPS * 1_000_000 / 2,
        WINDOW,
        PAYLOAD,
        &decided,
    )?;
    let ((_, limited2), _) = ab_counters(&pin_dir)?;
    eprintln!(
        "offered {:.1} Mbit/s: sent {}, received {}, {} rate-limited",
        under.offered_bps() / 1e6,
        under.sent,
        under.received,
        limited2 - limited1
    );
    ensure!(
        limited2 == limited1,
        "{} packets rate-limited at half the cap",
        limited2 - limited1
    );
    ensure!(
        under.received == under.sent,
        "sent {} but received {} at half the cap",
        under.sent,
        under.received
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
