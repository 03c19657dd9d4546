//! The shipped pktgen script: it parses, prints its usage, and refuses clearly what it
//! cannot do. (Kernel pktgen itself needs a module this test machine cannot load; the
//! script is for real hosts.)

use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../pktgen/pdp-pktgen.sh");

#[test]
fn pktgen_script_parses_and_explains_itself() {
    let syntax = Command::new("bash").args(["-n", SCRIPT]).output().unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );

    let usage = Command::new("bash").arg(SCRIPT).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    let text = String::from_utf8_lossy(&usage.stdout);
    assert!(
        text.contains("Kernel pktgen load against a peer-dataplane port"),
        "{text}"
    );

    let missing = Command::new("bash")
        .arg(SCRIPT)
        .args([
            "-i",
            "pdp-no-such-if",
            "-m",
            "02:70:64:70:00:01",
            "-s",
            "10.0.2.10",
            "-d",
            "172.16.0.1",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("no interface pdp-no-such-if") || err.contains("needs root"),
        "{err}"
    );
}
