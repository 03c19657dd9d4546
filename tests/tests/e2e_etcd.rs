//! End to end with the control plane on etcd: real etcd members, a real control-plane
//! process keeping its objects there, and a real agent (XDP) following it by deltas. The
//! store goes away and comes back; the agent is killed while changes go on and started
//! again. Needs root, BPF, network namespaces and the `etcd` binary.

use anyhow::{ensure, Context, Result};
use peer_dataplane_tests::controlplane::{free_port, ControlPlane};
use peer_dataplane_tests::etcd::Etcd;
use peer_dataplane_tests::seed::{SeedNetwork, A, B};
use peer_dataplane_tests::traffic::ping_instance;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ACCT_A: &str = "111111111111";
const SYNC: Duration = Duration::from_secs(10);

/// The agent's `pdp_sync_synced` gauge, read from its metrics endpoint in `ns`.
fn synced_gauge(ns: &Path, port: u16) -> Result<Option<i64>> {
    let ns = ns.to_path_buf();
    std::thread::spawn(move || -> Result<Option<i64>> {
        peer_dataplane_tests::netns::enter(&ns)?;
        let text = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()?
            .body_mut()
            .read_to_string()?;
        Ok(text
            .lines()
            .find(|l| l.starts_with("pdp_sync_synced "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("metrics probe panicked"))?
}

fn wait_gauge(ns: &Path, port: u16, want: i64) -> Result<()> {
    peer_dataplane_tests::wait_until(
        &format!("pdp_sync_synced {want}"),
        Duration::from_secs(30),
        || Ok(synced_gauge(ns, port)? == Some(want)),
    )
}

/// The last "synced revision R (N map writes" of the agent's log: N.
fn last_writes(log: &str, revision: u64) -> Option<usize> {
    log.lines()
        .filter_map(|l| l.split(&format!("synced revision {revision} (")).nth(1))
        .find_map(|r| r.split(" map writes").next()?.parse().ok())
}

#[test]
fn agents_follow_an_etcd_control_plane_through_a_store_outage_and_a_restart() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let bin = peer_dataplane_tests::agent_path()?;
    let tag = peer_dataplane_tests::unique("etcd");
    let dir = std::env::temp_dir().join(&tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let net = SeedNetwork::create(&tag)?;
    let mut etcd = Etcd::cluster_in(&net.host, &dir.join("etcd"), 1)?;
    let port = net.host.run(free_port)?;
    let cp =
        ControlPlane::start_on_store(&bin, &net.host, &dir.join("cp"), port, &etcd.url("/e2e"))?;
    let revision = cp.seed(&[])?;
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(&tag);
    let _ = peer_dataplane::bpf::pins::remove_pins(&pin_dir);
    let metrics = net.host.run(free_port)?;
    let start_agent = |tag: &str| -> Result<peer_dataplane_tests::seed::Agent> {
        let mut args = cp.agent_args()?;
        args.extend(["--metrics".to_string(), format!("127.0.0.1:{metrics}")]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        peer_dataplane_tests::seed::Agent::start_with(
            &bin,
            &net.host,
            &dir.join("agent.toml"),
            &pin_dir,
            &args,
            tag,
        )
    };
    let mut agent = start_agent("agent")?;
    agent.wait_synced(revision, SYNC)?;
    let a = net.ns(A);
    ensure!(ping_instance(a, &B, false, 1)?, "a -> b with the store up");
    wait_gauge(&net.host.path(), metrics, 1)?;

    // The store goes away: the agent is told, says so, and forwarding goes on.
    etcd.kill_all();
    agent.wait_log("unsynced: ", Duration::from_secs(30))?;
    let log = agent.log_text();
    ensure!(
        log.contains("cannot reach its store") && log.contains("forwarding continues"),
        "{log}"
    );
    wait_gauge(&net.host.path(), metrics, 0)?;
    ensure!(
        ping_instance(a, &B, false, 3)?,
        "forwarding stopped with the store down"
    );

    // Back: the control plane reads the store again, the agent catches up and follows.
    etcd.restart_all()?;
    peer_dataplane_tests::wait_until(
        "the control plane reaching its store",
        Duration::from_secs(30),
        || Ok(cp.get_health().is_ok()),
    )?;
    let r = cp.expect(
        "DELETE",
        "/v1/route-tables/rtb-a/routes/172.16.0.0/16",
        ACCT_A,
        None,
        200,
    )?;
    agent.wait_synced(r.revision, SYNC)?;
    agent.expect_ping_dropped(
        "ping a -> b after the route was deleted (store back)",
        a,
        &B,
        "no-route",
        1,
    )?;
    ensure!(
        agent.log_text().contains("synced again"),
        "{}",
        agent.log_text()
    );
    wait_gauge(&net.host.path(), metrics, 1)?;

    // The agent killed while changes go on: started again, it adopts what is installed
    // and writes only what changed meanwhile (the route put back), not everything again.
    agent.kill_hard()?;
    let route = json!({"destination_cidr": "172.16.0.0/16", "target": "pcx-ab"});
    let r = cp.expect(
        "POST",
        "/v1/route-tables/rtb-a/routes",
        ACCT_A,
        Some(&route),
        201,
    )?;
    let mut agent = start_agent("restarted")?;
    agent.wait_synced(r.revision, SYNC)?;
    let writes =
        last_writes(&agent.log_text(), r.revision).context("the restarted agent's sync line")?;
    ensure!(
        writes == 1,
        "the restarted agent wrote {writes} entries, not only the route put back\n{}",
        agent.log_text()
    );
    ensure!(
        ping_instance(a, &B, false, 1)?,
        "a -> b after the restarted agent caught up"
    );
    drop(agent);
    drop(cp);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
