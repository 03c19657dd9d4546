//! `cargo xtask test`: builds what the suite needs, runs every test tier (`--repeat N`
//! times) and reports per-run totals and the failed tests by binary.

use super::{build_agent, build_ebpf, host_cargo, setup, step};
use anyhow::{bail, Context, Result};
use std::path::Path;

pub fn test(args: &[String], repeat: u32) -> Result<()> {
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    setup()?;
    let obj = build_ebpf()?;
    let agent = under_test(&build_agent(&obj)?)?;
    let mut runs = Vec::new();
    for round in 1..=repeat {
        step(&format!(
            "running all tests{}: host unit tests, BPF_PROG_RUN tables, netns end to end (one at a time)",
            if repeat > 1 {
                format!(" (run {round} of {repeat})")
            } else {
                String::new()
            }
        ));
        runs.push(test_once(&obj, &agent, args)?);
    }
    report(&runs)
}

/// Copies the product's binaries and their checksums from `agent`'s directory to
/// `target/under-test/`, and returns the agent there. `cargo test` rebuilds binaries in
/// `target/release/` with the features its test targets need; the copies stay exactly
/// what `cargo xtask build` produced (a test compares them with the checksums).
fn under_test(agent: &Path) -> Result<std::path::PathBuf> {
    let from = agent.parent().context("the agent's directory")?;
    let to = super::root().join("target/under-test");
    std::fs::create_dir_all(&to)?;
    for f in super::PRODUCT_BINS.iter().chain([&super::BUILD_SUMS]) {
        // Replaced, not written over: a test binary may still be running the old one.
        let tmp = to.join(format!(".{f}.new"));
        std::fs::copy(from.join(f), &tmp)
            .with_context(|| format!("copying {f} to {}", to.display()))?;
        std::fs::rename(&tmp, to.join(f))?;
    }
    Ok(to.join("peer-dataplane"))
}

/// What one `cargo test` run of the whole suite said.
#[derive(Default)]
struct TestRun {
    totals: TestTotals,
    /// `binary::test` of every test that failed.
    failed_tests: Vec<String>,
    /// The run's own exit status was a failure (a test binary that did not even start
    /// counts here too).
    failed: bool,
}

fn test_once(obj: &Path, agent: &Path, args: &[String]) -> Result<TestRun> {
    let mut c = host_cargo(obj);
    c.env("PDP_AGENT_BIN", agent)
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ])
        .args(args);
    // One pipe for both streams, in order: the test binaries' results come on stdout,
    // cargo's "Running <binary>" lines (which name the failures) on stderr.
    let (out, into) = std::io::pipe().context("a pipe for cargo test")?;
    c.stdout(into.try_clone()?).stderr(into);
    let mut child = c.spawn().context("starting cargo test")?;
    // Our copies of the write end must be gone, or the reader never sees the end.
    drop(c);
    // Echo cargo's output and total its per-binary summaries.
    let mut run = TestRun::default();
    let mut binary = String::new();
    let reader = std::io::BufReader::new(out);
    for line in std::io::BufRead::lines(reader) {
        let line = line?;
        println!("{line}");
        run.totals.add(&line);
        if let Some(name) = line.trim().strip_prefix("Running ") {
            // "Running tests/prog_run.rs (target/release/deps/prog_run-…)"
            binary = name.split_whitespace().next().unwrap_or("").to_string();
        }
        if let Some(rest) = line.strip_prefix("test ") {
            if let Some(name) = rest.strip_suffix(" ... FAILED") {
                run.failed_tests.push(format!("{binary}: {name}"));
            }
        }
    }
    run.failed = !child.wait()?.success();
    Ok(run)
}

/// The closing report: totals over every run, and each test that failed in any run with
/// the runs it failed in.
fn report(runs: &[TestRun]) -> Result<()> {
    let mut passed = 0;
    let mut failed = 0;
    let mut ignored = 0;
    let mut by_test: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, r) in runs.iter().enumerate() {
        passed += r.totals.passed;
        failed += r.totals.failed;
        ignored += r.totals.ignored;
        for t in &r.failed_tests {
            by_test.entry(t).or_default().push(i + 1);
        }
    }
    let n = runs.len();
    if n > 1 {
        println!("\n{n} runs of the whole suite:");
        for (i, r) in runs.iter().enumerate() {
            println!(
                "  run {}: {} passed, {} failed, {} ignored{}",
                i + 1,
                r.totals.passed,
                r.totals.failed,
                r.totals.ignored,
                if r.failed && r.totals.failed == 0 {
                    " (cargo test failed outside any test: see above)"
                } else {
                    ""
                }
            );
        }
    }
    if !by_test.is_empty() {
        println!("\nfailed tests:");
        for (t, in_runs) in &by_test {
            let runs: Vec<String> = in_runs.iter().map(|r| r.to_string()).collect();
            println!(
                "  {t}: failed in {} of {n} runs (run {})",
                in_runs.len(),
                runs.join(", ")
            );
        }
    }
    println!(
        "\nall tiers{}: {passed} passed, {failed} failed, {ignored} ignored",
        if n > 1 {
            format!(", {n} runs")
        } else {
            String::new()
        }
    );
    if runs.iter().any(|r| r.failed) {
        bail!("cargo test failed");
    }
    if ignored > 0 {
        bail!("{ignored} tests were ignored: every test, privileged ones included, must run");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    println!("{passed} passed, {failed} failed");
    Ok(())
}

#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    /// Adds a libtest summary line (`test result: ok. 6 passed; 0 failed; 0 ignored; ...`).
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}
