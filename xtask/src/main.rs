//! `cargo xtask <task>`: everything a fresh machine needs, from installing the eBPF
//! toolchain to running the demo, the tests and the benchmarks.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks (apt packages, bpf-linker, bpffs mount).
    Setup,
    /// Build the XDP object (target/ebpf/.../peer-dataplane-ebpf).
    BuildEbpf,
    /// Build the agent with the XDP object embedded (target/release/peer-dataplane) and the
    /// control plane (target/release/peer-dataplane-controlplane).
    Build,
    /// Run every test: host unit tests, BPF_PROG_RUN tables, network-namespace end to end.
    Test {
        /// Run the whole suite this many times and report every test that failed in any
        /// run (a flaky test shows up as failing in some runs only).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Extra arguments for the test binaries (e.g. a name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build, create the demo topology in network namespaces, run traffic, show counters.
    Demo,
    /// The differential test (reference model vs the program) at any size; CI runs 500
    /// states of 1,000 frames.
    Difftest {
        #[arg(long, default_value_t = 1000)]
        states: u64,
        /// Frames per state.
        #[arg(long, default_value_t = 1000)]
        packets: u64,
        /// Seed of the random states and frames (a divergence report names it).
        #[arg(long, default_value_t = 0x5eed_2026)]
        seed: u64,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// BPF_PROG_RUN ns/packet: redirect-only baseline vs the pipeline with 10 and 100k routes.
    Prog {
        /// BPF_PROG_RUN repeat count per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
    },
    /// This data plane vs the Linux kernel (ip route, nftables, tc police): same generator,
    /// topology and frames; prints the table and writes a plot (SVG).
    E2e {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Rounds per configuration (alternating data planes; the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Where to write the plot.
        #[arg(long, default_value = "target/bench-e2e.svg")]
        plot: PathBuf,
    },
    /// Control plane -> data plane: one route change p50/p99, a 100k-route full sync,
    /// kernel memory per route.
    Sync {
        /// Number of single route changes to time.
        #[arg(long, default_value_t = 1000)]
        changes: u32,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A cargo child that inherits nothing from the outer cargo (toolchain, flags, target dir).
fn clean_cargo(cargo: &str) -> Command {
    let mut c = Command::new(cargo);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let inherited = (k.starts_with("CARGO") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k.starts_with("RUSTUP")
            || k == "RUSTFLAGS"
            || k == "RUSTDOC";
        if inherited {
            c.env_remove(&k);
        }
    }
    c.current_dir(root());
    c
}

// ---------------------------------------------------------------------------------------
// setup

const APT_BASE: [&str; 10] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "bpftool",
    "ethtool",
    "iproute2",
    "iputils-ping",
    "util-linux", // nsenter
    "procps",
    "openssl", // certificates for the control plane's TLS test
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn missing_packages(pkgs: &[String]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .cloned()
        .collect()
}

fn apt_install(pkgs: &[String], updated: &mut bool) -> Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        return Ok(());
    }
    if !*updated {
        step("apt-get update");
        run(Command::new("apt-get").args(["update", "-q"]))?;
        *updated = true;
    }
    step(&format!("apt-get install {}", missing.join(" ")));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// LLVM major version of the eBPF compiler (Debian's rustc-web).
fn ebpf_llvm_major() -> Result<u32> {
    let v = output(Command::new("/usr/bin/rustc").arg("-vV"))?;
    let line = v
        .lines()
        .find(|l| l.starts_with("LLVM version:"))
        .context("rustc -vV has no LLVM version")?;
    let major = line
        .trim_start_matches("LLVM version:")
        .trim()
        .split('.')
        .next()
        .unwrap_or("");
    major
        .parse()
        .with_context(|| format!("parsing LLVM major from {line:?}"))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo")
        })
}

fn setup() -> Result<()> {
    step("checking the eBPF toolchain (Debian rustc-web with the bpfel core library, bpf-linker)");
    if unsafe_geteuid() != 0 {
        bail!("setup installs packages and mounts bpffs: run it as root");
    }
    let mut updated = false;
    apt_install(
        &APT_BASE.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &mut updated,
    )?;
    let llvm = ebpf_llvm_major()?;
    apt_install(&[format!("llvm-{llvm}-dev")], &mut updated)?;

    // bpf-linker must link with the same LLVM major as rustc-web's; a stamp records it.
    let stamp = cargo_home().join(".pdp-bpf-linker-llvm");
    let linker = cargo_home().join("bin/bpf-linker");
    let have = output(Command::new(&linker).arg("--version")).unwrap_or_default();
    let stamped = std::fs::read_to_string(&stamp).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) || stamped.trim() != llvm.to_string() {
        step(&format!(
            "cargo install bpf-linker {BPF_LINKER_VERSION} for LLVM {llvm} (about 90 s on 2 cores)"
        ));
        let mut c = clean_cargo("cargo");
        c.env("LLVM_PREFIX", format!("/usr/lib/llvm-{llvm}")).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm}"),
        ]);
        run(&mut c)?;
        std::fs::write(&stamp, llvm.to_string())?;
    }

    let bpffs = Path::new("/sys/fs/bpf");
    let mounted = Command::new("mountpoint")
        .arg("-q")
        .arg(bpffs)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        step("mounting bpffs on /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    step(&format!(
        "setup complete: rustc-web (LLVM {llvm}), bpf-linker {BPF_LINKER_VERSION}, bpffs mounted"
    ));
    Ok(())
}

fn unsafe_geteuid() -> u32 {
    // No libc dependency for one call: /proc tells us.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(2).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------
// builds

fn ebpf_object() -> PathBuf {
    root().join("target/ebpf/bpfel-unknown-none/release/peer-dataplane-ebpf")
}

fn build_ebpf() -> Result<PathBuf> {
    step("building the XDP object (bpfel-unknown-none, Debian rustc-web + bpf-linker)");
    let mut c = clean_cargo("/usr/bin/cargo");
    c.env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            // BPF ISA v3 (kernel 5.12+): atomic fetch-add and compare-and-swap, which the
            // shared bandwidth-cap buckets need.
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Ctarget-cpu=v3\x1f-Clink-arg=--btf",
        )
        .env(
            "PATH",
            format!(
                "{}:{}",
                cargo_home().join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args([
            "build",
            "-p",
            "peer-dataplane-ebpf",
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--target-dir",
            "target/ebpf",
        ]);
    run(&mut c)?;
    let obj = ebpf_object();
    if !obj.exists() {
        bail!("build finished but {} is missing", obj.display());
    }
    Ok(obj)
}

/// Host cargo with the XDP object available for embedding and for the tests.
fn host_cargo(obj: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root()).env("PDP_EBPF_OBJECT", obj);
    c
}

fn build_agent(obj: &Path) -> Result<PathBuf> {
    step("building the agent (XDP object embedded) and the control plane");
    run(host_cargo(obj).args([
        "build",
        "--release",
        "-p",
        "peer-dataplane",
        "-p",
        "peer-dataplane-controlplane",
        "-p",
        "peer-dataplane-tests",
        "--bins",
    ]))?;
    Ok(root().join("target/release/peer-dataplane"))
}

fn test(args: &[String], repeat: u32) -> Result<()> {
    if repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    setup()?;
    let obj = build_ebpf()?;
    let agent = build_agent(&obj)?;
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

fn demo() -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    let agent = build_agent(&obj)?;
    step("running the demo");
    run(Command::new(root().join("target/release/pdp-demo"))
        .arg("--agent")
        .arg(&agent)
        .current_dir(root()))
}

fn bench_prog(repeat: u32) -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    build_agent(&obj)?;
    step("benchmark: BPF_PROG_RUN ns/packet");
    run(Command::new(root().join("target/release/pdp-bench"))
        .args(["prog", "--repeat", &repeat.to_string(), "--object"])
        .arg(&obj)
        .current_dir(root()))
}

fn bench_e2e(seconds: f64, rounds: u32, plot: &Path) -> Result<()> {
    setup()?;
    // The Linux side of the comparison, and trafgen for the cross-check.
    apt_install(
        &["nftables", "iproute2", "netsniff-ng"].map(String::from),
        &mut false,
    )?;
    let obj = build_ebpf()?;
    build_agent(&obj)?;
    step("benchmark: this data plane vs Linux, end to end");
    run(Command::new(root().join("target/release/pdp-bench"))
        .args([
            "e2e",
            "--seconds",
            &seconds.to_string(),
            "--rounds",
            &rounds.to_string(),
        ])
        .arg("--plot")
        .arg(root().join(plot))
        .arg("--object")
        .arg(&obj)
        .current_dir(root()))
}

fn bench_sync(changes: u32) -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    let agent = build_agent(&obj)?;
    step("benchmark: control plane -> data plane");
    run(Command::new(root().join("target/release/pdp-bench"))
        .args(["sync", "--changes", &changes.to_string(), "--agent"])
        .arg(&agent)
        .current_dir(root()))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf => build_ebpf().map(|p| println!("{}", p.display())),
        Task::Build => {
            let obj = build_ebpf()?;
            build_agent(&obj).map(|p| println!("{}", p.display()))
        }
        Task::Test { repeat, args } => test(&args, repeat),
        Task::Demo => demo(),
        Task::Difftest {
            states,
            packets,
            seed,
        } => {
            // Read by tests/tests/differential.rs.
            std::env::set_var("PDP_DIFF_STATES", states.to_string());
            std::env::set_var("PDP_DIFF_PACKETS", packets.to_string());
            std::env::set_var("PDP_DIFF_SEED", seed.to_string());
            test(
                &[
                    "model_and_program_agree".to_string(),
                    "--nocapture".to_string(),
                ],
                1,
            )
        }
        Task::Bench {
            which: Bench::Prog { repeat },
        } => bench_prog(repeat),
        Task::Bench {
            which: Bench::Sync { changes },
        } => bench_sync(changes),
        Task::Bench {
            which:
                Bench::E2e {
                    seconds,
                    rounds,
                    plot,
                },
        } => bench_e2e(seconds, rounds, &plot),
    }
}
