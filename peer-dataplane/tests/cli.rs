//! The binary's own behaviour for operators: exit codes and messages of `validate`, and a
//! clear message from `stats` when there is nothing to read.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peer-dataplane"))
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pdp-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SEED: &str = include_str!("../../examples/seed.toml");

#[test]
fn validate_accepts_the_seed_document() {
    let out = bin()
        .args(["validate", "--config"])
        .arg(write("seed.toml", SEED))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("valid (3 vpcs, 3 subnets, 3 route tables, 2 peerings, 3 ports)"),
        "{stdout}"
    );
}

#[test]
fn validate_refuses_with_every_problem_named_and_a_failing_exit_code() {
    let bad = SEED
        .replace(
            "{ destination = \"172.16.0.0/16\", target = \"pcx-ab\" }",
            "{ destination = \"172.16.0.0/16\", target = \"pcx-xx\" }",
        )
        .replace("cidr = \"10.0.2.0/24\"", "cidr = \"10.0.2.0/33\"");
    let out = bin()
        .args(["validate", "--config"])
        .arg(write("bad.toml", &bad))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("target pcx-xx is not a known peering connection"),
        "{err}"
    );
    assert!(
        err.contains("subnet subnet-a2 cidr: \"10.0.2.0/33\" is not a CIDR"),
        "{err}"
    );
    assert!(
        err.contains("2 problems"),
        "a reference to the invalid subnet is not a third: {err}"
    );
    assert!(
        err.starts_with("error: ") && !err.contains("backtrace"),
        "{err}"
    );
}

#[test]
fn validate_names_a_missing_file() {
    let out = bin()
        .args(["validate", "--config", "/nonexistent/state.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("reading state document /nonexistent/state.toml"));
}

#[test]
fn stats_without_pins_says_what_is_missing() {
    let out = bin()
        .args(["--pin-dir", "/tmp/pdp-no-such-dir/x", "stats"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // /tmp is not bpffs: the message says how to mount it.
    assert!(
        err.contains("is not a bpffs mount") && err.contains("mount -t bpf bpf"),
        "{err}"
    );
}

#[test]
fn every_inspection_verb_without_pins_says_what_is_missing() {
    for args in [
        &["peering", "list"][..],
        &["peering", "get", "pcx-ab"],
        &["route", "list"],
        &["port", "list"],
        &["acl", "hits"],
        &["conntrack", "list"],
        &["conntrack", "flush"],
        &["trace", "--src", "10.0.2.10", "--dst", "172.16.2.20"],
    ] {
        let out = bin()
            .args(["--pin-dir", "/tmp/pdp-no-such-dir/x"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is not a bpffs mount"), "{args:?}: {err}");
    }
}

#[test]
fn completions_cover_the_nouns() {
    let out = bin().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    for noun in [
        "peering",
        "route",
        "port",
        "acl",
        "conntrack",
        "stats",
        "trace",
    ] {
        assert!(script.contains(noun), "no {noun} in the bash completions");
    }
}

/// The host's token never goes out in clear by accident: plain http to a control plane
/// that is not on loopback needs `--insecure-http`, and `--ca` with http is an error;
/// both are refused before anything is loaded or sent.
#[test]
fn run_refuses_to_send_the_token_over_plain_http_unless_told() {
    let refused = |extra: &[&str]| {
        let out = bin()
            .args([
                "--pin-dir",
                "/nonexistent/pdp-cli-pins",
                "run",
                "--host",
                "hv-1",
            ])
            .args(extra)
            .env("PDP_AGENT_TOKEN", "0123456789abcdef0123")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = refused(&["--control-plane", "http://192.0.2.1:8470"]);
    assert!(
        e.contains("refusing to send this host's token over plain http to 192.0.2.1")
            && e.contains("--insecure-http"),
        "{e}"
    );
    let e = refused(&[
        "--control-plane",
        "http://127.0.0.1:8470",
        "--ca",
        "/etc/peer-dataplane/cp-ca.pem",
    ]);
    assert!(e.contains("--ca applies to https only"), "{e}");
}
