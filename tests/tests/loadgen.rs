//! `peer-dataplane loadgen` against a live, privileged setup, with every generator: the
//! real object with its programs pinned as the agent pins them, the seed topology
//! installed, the pipeline attached to port A as the agent attaches it, and a counting
//! sink behind port B. The generator's frames must really cross the data plane: its
//! report, the pipeline's counters and the sink must agree. Live frames are checked
//! either way this kernel goes: they work, or they are refused with the errno and the way
//! out. Needs root and BPF.

use anyhow::{ensure, Result};
use peer_dataplane_common::counters::GlobalCounters;
use peer_dataplane_common::program_names;
use peer_dataplane_tests::harness::TestDataplane;
use peer_dataplane_tests::netns::{self, Netns};
use peer_dataplane_tests::seed::{self, A, B};
use serde_json::Value;
use std::time::Duration;

/// The UDP port of this test's frames: the sink counts these only.
const DPORT: u16 = 7000;

/// The seed's ports (two queues each) in a namespace of their own, the pipeline on A.
fn setup(name: &str) -> Result<(Netns, TestDataplane)> {
    let ns = seed::ports_only_queues(&peer_dataplane_tests::unique(name), 2)?;
    netns::enter(&ns.path())?;
    let mut dp = TestDataplane::load()?;
    dp.install(&seed::seed_doc())?;
    // Frames sent into port A (AF_XDP, AF_PACKET) meet the pipeline at its XDP hook.
    dp.keep_in_dispatcher(program_names::PIPELINE, A.port)?;
    // Redirected frames leave through pdp-b and arrive on its peer, where the sink counts.
    dp.keep_in_dispatcher(program_names::SINK, &format!("{}-peer", B.port))?;
    dp.sink_match_udp_dport(DPORT)?;
    Ok((ns, dp))
}

/// The kernel's answer to live frames on port A (a side-effect-free probe).
fn live_frames_allowed() -> std::result::Result<(), String> {
    peer_dataplane::bpf::probe::live_frames(netns::ifindex(A.port)).map_err(|r| r.to_string())
}

/// `loadgen` of `packets` frames over two destinations (B's instance, forwarded, and a
/// free address of its subnet, dropped as no-endpoint) with `extra` arguments.
fn loadgen(dp: &TestDataplane, packets: u64, extra: &[&str]) -> Result<std::process::Output> {
    let args = format!(
        "loadgen --src {} --dst 172.16.2.19-{} --flows 2 --dport {DPORT} --length 128 \
         --packets {packets} --duration 60 -o json",
        seed::v4_str(&A.ipv4),
        seed::v4_str(&B.ipv4)
    );
    let mut args: Vec<&str> = args.split_whitespace().collect();
    args.extend_from_slice(extra);
    peer_dataplane_tests::cli(&dp.pin_dir, &args)
}

/// A refused run: it failed, its error says each of `says`, and no counter moved since
/// `before`.
fn refused(
    dp: &TestDataplane,
    before: &GlobalCounters,
    out: &std::process::Output,
    says: &[&str],
) -> Result<()> {
    let e = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "not refused: {e}");
    for s in says {
        ensure!(e.contains(s), "the error does not say {s:?}: {e}");
    }
    ensure!(dp.global()? == *before, "a refused run moved counters");
    Ok(())
}

/// Runs `loadgen` and checks that report, counters and sink agree on every frame.
fn sends_and_reports(dp: &TestDataplane, packets: u64, extra: &[&str]) -> Result<Value> {
    let sink_before = dp.sink_count()?;
    let before = dp.global()?;
    let out = loadgen(dp, packets, extra)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "loadgen {extra:?} failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout)?;
    println!("{r:#}\nprogress:\n{stderr}");

    assert_eq!(r["sent"]["packets"], packets, "{r:#}");
    assert_eq!(r["sent"]["bytes"], packets * 128);
    assert!(r["sent"]["pps"].as_f64().unwrap() > 0.0);
    // The generator is named on stderr as soon as it starts, and in the report.
    let generator = r["generator"].as_str().unwrap().to_string();
    assert!(
        stderr.contains(&format!("loadgen: generator: {generator}")),
        "{stderr}"
    );
    let forwarded = r["forwarded"].as_u64().unwrap();
    let no_endpoint = r["drops_by_reason"]["no-endpoint"].as_u64().unwrap_or(0);
    // Half the frames each way (the flows alternate), whichever CPU ran them.
    assert_eq!(forwarded, packets / 2, "{r:#}");
    assert_eq!(no_endpoint, packets / 2, "{r:#}");
    assert_eq!(r["dropped"], no_endpoint);

    // The pipeline's own counters saw these frames (and, on a port, maybe the veths'
    // own neighbour discovery, which it passes: never more than a few)...
    let after = dp.global()?;
    assert_eq!(
        after.redirected_packets - before.redirected_packets,
        forwarded
    );
    let received = after.rx_packets - before.rx_packets;
    let passed = after.passed_packets - before.passed_packets;
    assert_eq!(received, packets + passed, "{r:#}");
    assert_eq!(r["received"], received);
    // ...and every forwarded frame reached the far side of pdp-b, counted as a delta
    // of this test's UDP port. The veth peer's NAPI poll may still be on the last batch.
    peer_dataplane_tests::wait_until(
        "the sink behind pdp-b counting every forwarded frame",
        Duration::from_secs(10),
        || Ok(dp.sink_count()? - sink_before >= forwarded),
    )?;
    assert_eq!(
        dp.sink_count()? - sink_before,
        forwarded,
        "forwarded frames lost on the way"
    );
    Ok(r)
}

#[test]
fn af_xdp_sends_into_the_port_from_its_veth_peer() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (_ns, dp) = setup("lg-xdp")?;
    let r = sends_and_reports(&dp, 100_000, &["--generator", "af-xdp"])?;
    assert_eq!(r["generator"], "af-xdp");
    assert_eq!(r["reason"], "asked for");
    assert_eq!(r["path"], format!("from {}-peer", A.port));
    assert_eq!(r["port"], A.port);
    // A veth has no zero-copy: the kernel copies.
    assert!(
        r["mode"].as_str().unwrap().starts_with("copy mode"),
        "{r:#}"
    );

    // Two threads, one socket on each of the far end's two queues, each pinned to its
    // CPU: both send, and together they send exactly what was asked.
    let r = sends_and_reports(&dp, 100_000, &["--generator", "af-xdp", "--threads", "2"])?;
    let per: Vec<u64> = r["sent"]["per_thread"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(per.len(), 2);
    assert!(per.iter().all(|n| *n > 0), "{per:?}");
    assert_eq!(per.iter().sum::<u64>(), 100_000);

    // More threads than queues is refused before anything is sent, saying what to do.
    let before = dp.global()?;
    let out = loadgen(&dp, 1000, &["--generator", "af-xdp", "--threads", "3"])?;
    refused(
        &dp,
        &before,
        &out,
        &[
            "--threads 3 needs 3 queues on pdp-a-peer, which has 2",
            "ethtool -L",
        ],
    )
}

#[test]
fn af_packet_sends_into_the_port_from_its_veth_peer() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (_ns, dp) = setup("lg-pkt")?;
    let r = sends_and_reports(&dp, 100_000, &["--generator", "af-packet"])?;
    assert_eq!(r["generator"], "af-packet");
    assert_eq!(r["path"], format!("from {}-peer", A.port));
    Ok(())
}

#[test]
fn live_frames_work_or_are_refused_with_the_errno_and_the_way_out() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (_ns, dp) = setup("lg-live")?;
    match live_frames_allowed() {
        Ok(()) => {
            println!("this kernel runs live frames: checking that they work");
            let r = sends_and_reports(&dp, 300_000, &["--generator", "live-frames"])?;
            assert_eq!(r["generator"], "live-frames");
            assert_eq!(
                r["path"],
                format!("as if received on ifindex {}", netns::ifindex(A.port))
            );
        }
        Err(refusal) => {
            println!("this kernel refuses live frames ({refusal}): checking the refusal");
            let before = dp.global()?;
            let out = loadgen(&dp, 1000, &["--generator", "live-frames"])?;
            // The errno by name (EPERM on this project's machines), and the way out;
            // refused before anything was sent.
            refused(
                &dp,
                &before,
                &out,
                &[
                    &refusal,
                    "BPF_PROG_RUN with live frames: E",
                    "--generator af-xdp",
                ],
            )?;
        }
    }
    Ok(())
}

#[test]
fn auto_takes_live_frames_or_falls_back_to_af_xdp_and_says_why() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (_ns, dp) = setup("lg-auto")?;
    let r = sends_and_reports(&dp, 100_000, &[])?;
    match live_frames_allowed() {
        Ok(()) => assert_eq!(r["generator"], "live-frames", "{r:#}"),
        Err(refusal) => {
            assert_eq!(r["generator"], "af-xdp", "{r:#}");
            let why = r["reason"].as_str().unwrap();
            assert!(
                why.starts_with("live frames refused: ") && why.contains(&refusal),
                "{why}"
            );
        }
    }
    Ok(())
}

/// The usual layout: each instance in a namespace of its own behind its port. The socket
/// generators find the port's far end there (through the namespace id the port's veth
/// names) and send from it.
#[test]
fn the_far_end_is_found_in_the_instance_namespace() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let net = seed::SeedNetwork::create(&peer_dataplane_tests::unique("lg-far"))?;
    netns::enter(&net.host.path())?;
    let mut dp = TestDataplane::load()?;
    dp.install(&seed::seed_doc())?;
    dp.keep_in_dispatcher(program_names::PIPELINE, A.port)?;
    let before = dp.global()?;
    for generator in ["af-xdp", "af-packet"] {
        let out = peer_dataplane_tests::cli(
            &dp.pin_dir,
            &[
                "loadgen",
                "--generator",
                generator,
                "--src",
                "10.0.2.10",
                "--dst",
                "172.16.2.20",
                "--dport",
                "7000",
                "--packets",
                "20000",
                "-o",
                "json",
            ],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "loadgen {generator}: {stderr}");
        let r: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            r["path"],
            format!("from eth0 (netns {})", net.ns(A).name),
            "{r:#}"
        );
        assert_eq!(r["forwarded"], 20_000, "{r:#}");
    }
    assert_eq!(
        dp.global()?.redirected_packets - before.redirected_packets,
        40_000
    );

    // A name that is not there is an error naming it; nothing is sent.
    let before = dp.global()?;
    let out = peer_dataplane_tests::cli(
        &dp.pin_dir,
        &[
            "loadgen",
            "--generator",
            "af-xdp",
            "--src",
            "10.0.2.10",
            "--dst",
            "172.16.2.20",
            "--from",
            "nope0",
            "--from-netns",
            &net.ns(A).name,
            "--packets",
            "10",
        ],
    )?;
    refused(
        &dp,
        &before,
        &out,
        &[&format!(
            "--from: no interface nope0 in netns {}",
            net.ns(A).name
        )],
    )
}

#[test]
fn a_bad_request_changes_nothing_and_says_what_is_wrong() -> Result<()> {
    peer_dataplane_tests::require_root()?;
    let (_ns, dp) = setup("lg-bad")?;
    let before = dp.global()?;
    let bad = peer_dataplane_tests::cli(
        &dp.pin_dir,
        &["loadgen", "--src", "10.9.9.9", "--dst", "172.16.2.20"],
    )?;
    refused(
        &dp,
        &before,
        &bad,
        &["no port has the address 10.9.9.9; name the ingress port with --port"],
    )
}
