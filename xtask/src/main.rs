//! `cargo xtask <task>`: everything a fresh machine needs, from installing the eBPF
//! toolchain to running the demo, the tests and the benchmarks.

mod suite;

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
    Demo {
        /// Every port on one host instead of the seed spread over three hosts.
        #[arg(long)]
        single_host: bool,
    },
    /// The differential test (reference model vs the program) at any size; CI runs 500
    /// states of 1,000 frames (`--fleet`: the two-host one, 200 states of 400 frames).
    Difftest {
        #[arg(long, default_value_t = 1000)]
        states: u64,
        /// Frames per state.
        #[arg(long, default_value_t = 1000)]
        packets: u64,
        /// Seed of the random states and frames (a divergence report names it).
        #[arg(long, default_value_t = 0x5eed_2026)]
        seed: u64,
        /// The two-host differential (tests/tests/differential_fleet.rs) instead.
        #[arg(long)]
        fleet: bool,
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
        /// Generator of the rows whose frames are really forwarded: auto, live-frames,
        /// af-xdp or af-packet (as `peer-dataplane loadgen --generator`).
        #[arg(long, default_value = "auto")]
        generator: String,
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
        /// The generator of both data planes: auto, live-frames, af-xdp or af-packet (as
        /// `peer-dataplane loadgen --generator`).
        #[arg(long, default_value = "auto")]
        generator: String,
        /// Generator threads, each on its own CPU: the main table runs the first count;
        /// several (e.g. 1,2) add a scaling table.
        #[arg(long, default_value = "1")]
        threads: String,
    },
    /// Control plane -> data plane: one route change p50/p99, a 100k-route full sync,
    /// kernel memory per route.
    Sync {
        /// Number of single route changes to time.
        #[arg(long, default_value_t = 1000)]
        changes: u32,
    },
    /// The control plane on a 3-member etcd cluster with 2 replicas and N simulated agents:
    /// API -> applied latency, bytes and agent CPU per change, unnecessary deliveries, a
    /// 100k-route full sync, API throughput.
    Fleet {
        /// Simulated agents (hosts).
        #[arg(long, default_value_t = 200)]
        agents: u32,
        /// Changes of mixed kinds to time.
        #[arg(long, default_value_t = 200)]
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

fn clean_cargo(cargo: &str) -> Command {
    peer_dataplane_build::clean_cargo(cargo, &root())
}

// ---------------------------------------------------------------------------------------
// setup

const APT_BASE: [&str; 13] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "bpftool",
    "ethtool",
    "iproute2",
    "iputils-ping",
    "util-linux", // nsenter
    "procps",
    "openssl",           // certificates for the control plane's TLS test
    "protobuf-compiler", // protoc, for the etcd client's build
    "etcd-server",       // the distributed store's tests run real etcd members
    "sqlite3",           // a test reads the control plane's database as an operator would
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
    peer_dataplane_build::cargo_home()
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

fn build_ebpf() -> Result<PathBuf> {
    step("building the XDP object (bpfel-unknown-none, Debian rustc-web + bpf-linker)");
    run(&mut peer_dataplane_build::ebpf_build_command(&root()))?;
    let obj = peer_dataplane_build::object_path(&root());
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
        "peer-dataplane-bench",
        "--bins",
    ]))?;
    // What this build produced, by checksum: the test suite runs exactly these.
    let release = root().join("target/release");
    let sums = output(
        Command::new("sha256sum")
            .args(PRODUCT_BINS)
            .current_dir(&release),
    )?;
    std::fs::write(release.join(BUILD_SUMS), sums)?;
    Ok(release.join("peer-dataplane"))
}

/// The binaries users get from `cargo xtask build`.
pub const PRODUCT_BINS: [&str; 2] = ["peer-dataplane", "peer-dataplane-controlplane"];
/// Their checksums (`sha256sum` format), beside them.
pub const BUILD_SUMS: &str = "SHA256SUMS";

fn demo(single_host: bool) -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    let agent = build_agent(&obj)?;
    step("running the demo");
    let mut demo = Command::new(root().join("target/release/pdp-demo"));
    if single_host {
        demo.arg("--single-host");
    }
    run(demo.arg("--agent").arg(&agent).current_dir(root()))
}

fn bench_prog(repeat: u32, generator: &str) -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    build_agent(&obj)?;
    step("benchmark: BPF_PROG_RUN ns/packet");
    run(Command::new(root().join("target/release/pdp-bench"))
        .args([
            "prog",
            "--repeat",
            &repeat.to_string(),
            "--generator",
            generator,
        ])
        .arg("--object")
        .arg(&obj)
        .current_dir(root()))
}

fn bench_e2e(seconds: f64, rounds: u32, plot: &Path, generator: &str, threads: &str) -> Result<()> {
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
            "--generator",
            generator,
            "--threads",
            threads,
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

fn bench_fleet(agents: u32, changes: u32) -> Result<()> {
    setup()?;
    let obj = build_ebpf()?;
    let agent = build_agent(&obj)?;
    step("benchmark: the control plane on etcd with a fleet of simulated agents");
    run(Command::new(root().join("target/release/pdp-bench"))
        .args([
            "fleet",
            "--agents",
            &agents.to_string(),
            "--changes",
            &changes.to_string(),
            "--agent",
        ])
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
        Task::Test { repeat, args } => suite::test(&args, repeat),
        Task::Demo { single_host } => demo(single_host),
        Task::Difftest {
            states,
            packets,
            seed,
            fleet,
        } => {
            // Read by tests/tests/differential.rs and differential_fleet.rs.
            let (prefix, test) = if fleet {
                ("PDP_DIFF_FLEET", "two_hosts_agree_with_the_model")
            } else {
                ("PDP_DIFF", "model_and_program_agree")
            };
            std::env::set_var(format!("{prefix}_STATES"), states.to_string());
            std::env::set_var(format!("{prefix}_PACKETS"), packets.to_string());
            std::env::set_var("PDP_DIFF_SEED", seed.to_string());
            suite::test(&[test.to_string(), "--nocapture".to_string()], 1)
        }
        Task::Bench {
            which: Bench::Prog { repeat, generator },
        } => bench_prog(repeat, &generator),
        Task::Bench {
            which: Bench::Sync { changes },
        } => bench_sync(changes),
        Task::Bench {
            which: Bench::Fleet { agents, changes },
        } => bench_fleet(agents, changes),
        Task::Bench {
            which:
                Bench::E2e {
                    seconds,
                    rounds,
                    plot,
                    generator,
                    threads,
                },
        } => bench_e2e(seconds, rounds, &plot, &generator, &threads),
    }
}
