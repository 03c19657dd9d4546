//! `peer-dataplane loadgen` against a live, privileged setup: the real object with its
//! programs pinned as the agent pins them, the seed topology installed, and a counting
//! sink attached behind the destination port. The generator's frames must really cross
//! the data plane: its report, the pipeline's counters and the sink must agree. Needs
//! root and BPF.

use anyhow::{ensure, Result};
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns;
use peer_dataplane_tests::seed::{self, A, B};

#[test]
fn loadgen_sends_through_the_pinned_pipeline_and_reports_by_reason() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let ns = seed::ports_only(&peer_dataplane_tests::unique("loadgen"))?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    dp.install(&seed::seed_doc())?;
    // Redirected frames leave through pdp-b and arrive on its peer, where the sink counts.
    dp.keep_in_dispatcher(program_names::SINK, &format!("{}-peer", B.port))?;
    // The sink counts this test's frames (UDP 7000) only, as a delta.
    dp.sink_match_udp_dport(7000)?;
    let sink_before = dp.sink_count()?;
    let before = dp.global()?;

    // Two destinations: B's instance (forwarded) and a free address of its subnet.
    let packets = 300_000u64;
    let args = format!(
        "loadgen --src {} --dst 172.16.2.19-{} --flows 2 --dport 7000 --length 128 \
         --packets {packets} --duration 60 -o json",
        seed::v4_str(&A.ipv4),
        seed::v4_str(&B.ipv4)
    );
    let out = peer_dataplane_tests::cli(&dp.pin_dir, &args.split_whitespace().collect::<Vec<_>>())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "loadgen failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    println!("{r:#}\nprogress:\n{stderr}");

    assert_eq!(r["sent"]["packets"], packets);
    assert_eq!(r["sent"]["bytes"], packets * 128);
    assert!(r["sent"]["pps"].as_f64().unwrap() > 0.0);
    let forwarded = r["forwarded"].as_u64().unwrap();
    let no_endpoint = r["drops_by_reason"]["no-endpoint"].as_u64().unwrap_or(0);
    assert!(forwarded > 0 && no_endpoint > 0, "{r:#}");
    assert_eq!(forwarded + no_endpoint, packets, "{r:#}");
    assert_eq!(r["dropped"], no_endpoint);
    assert_eq!(r["passed"], 0);

    // The pipeline's own counters saw exactly these frames...
    let after = dp.global()?;
    assert_eq!(after.rx_packets - before.rx_packets, packets);
    assert_eq!(
        after.redirected_packets - before.redirected_packets,
        forwarded
    );
    // ...and every forwarded frame reached the far side of pdp-b.
    // The veth peer's NAPI poll may still be running the sink on the last batch.
    peer_dataplane_tests::wait_until(
        "the sink behind pdp-b counting every forwarded frame",
        std::time::Duration::from_secs(10),
        || Ok(dp.sink_count()? - sink_before >= forwarded),
    )?;
    assert_eq!(
        dp.sink_count()? - sink_before,
        forwarded,
        "forwarded frames lost on the way"
    );

    // A bad request changes nothing and says what is wrong.
    let bad = peer_dataplane_tests::cli(
        &dp.pin_dir,
        &["loadgen", "--src", "10.9.9.9", "--dst", "172.16.2.20"],
    )?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("no port has the address 10.9.9.9; name the ingress port with --port"));
    assert_eq!(dp.global()?, after);
    Ok(())
}
