//! `peer-dataplane`: the agent (`run`) and the operator CLI.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use peer_dataplane::{
    agent, conntrack, controlplane, inspect, kernel, links, loadgen, stats, sync, trace,
};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "peer-dataplane",
    version,
    about = "VPC-peering data plane: XDP agent and operator CLI"
)]
struct Cli {
    /// bpffs directory holding the pinned maps.
    #[arg(long, global = true, default_value = peer_dataplane_common::PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the XDP program, install the state document, attach to ports.
    Run {
        /// State document (TOML). Re-applied on SIGHUP and when the file changes.
        #[arg(
            long,
            required_unless_present = "control_plane",
            conflicts_with = "control_plane"
        )]
        config: Option<PathBuf>,
        /// Follow this control plane (e.g. http://10.0.0.1:8470) instead of a file.
        #[arg(long, requires = "host")]
        control_plane: Option<String>,
        /// This host's name in the control plane.
        #[arg(long)]
        host: Option<String>,
        /// File holding this host's token for the control plane (or set PDP_AGENT_TOKEN
        /// in the environment; never on the command line, where `ps` shows it).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// PEM certificate(s) the control plane's TLS certificate must chain to (https).
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: links::XdpModeArg,
        /// XDP object to load instead of the one embedded in this binary.
        #[arg(long)]
        bpf_object: Option<PathBuf>,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464), at /metrics.
        #[arg(long)]
        metrics: Option<std::net::SocketAddr>,
    },
    /// Check a state document without applying it.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
    /// Per-peering packets/bytes each way and drops by reason, from the pinned counters.
    Stats {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Print rates (pps, bit/s, drops by reason) every --interval seconds instead.
        #[arg(long)]
        watch: bool,
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// With --watch: stop after this many intervals (JSON: one line each).
        #[arg(long)]
        count: Option<u64>,
        /// The global counters of each CPU.
        #[arg(long, conflicts_with = "watch")]
        per_cpu: bool,
    },
    /// Installed peerings: status, caps, traffic each way.
    Peering {
        #[command(subcommand)]
        action: PeeringAction,
    },
    /// Installed routes.
    Route {
        #[command(subcommand)]
        action: RouteAction,
    },
    /// Installed ports (instance attachments on this host).
    Port {
        #[command(subcommand)]
        action: PortAction,
    },
    /// Network ACLs: per-rule hit counters.
    Acl {
        #[command(subcommand)]
        action: AclAction,
    },
    /// The security groups' connection-tracking table.
    Conntrack {
        #[command(subcommand)]
        action: ConntrackAction,
    },
    /// What the loaded program decides for a packet, stage by stage (BPF_PROG_RUN of the
    /// pinned trace program on the live maps; counts nothing, tracks nothing, spends no
    /// cap tokens). E.g. `trace --src 10.0.2.10 --dst 172.16.2.20 --protocol tcp --dport 443`.
    Trace {
        /// Ingress port (interface name or ifindex); default: the port whose address is --src.
        #[arg(long)]
        port: Option<String>,
        #[arg(long)]
        src: std::net::IpAddr,
        #[arg(long)]
        dst: std::net::IpAddr,
        /// tcp (a SYN), tcp-synack, tcp-ack, tcp-fin, tcp-rst, udp, icmp (echo request),
        /// icmp-reply, or an IP protocol number.
        #[arg(long, default_value = "icmp")]
        protocol: String,
        /// Source port (default 40000), or the ICMP echo identifier (default 1).
        #[arg(long)]
        sport: Option<u16>,
        #[arg(long)]
        dport: Option<u16>,
        #[arg(long, default_value_t = 64)]
        ttl: u8,
        /// Frame length in bytes (padded payload), for caps.
        #[arg(long)]
        length: Option<usize>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Generate load on this host without a NIC or kernel module: BPF_PROG_RUN live frames
    /// of the pinned pipeline, as if received on a port (redirects are really sent). Prints
    /// progress, then pps, bit/s and what the pipeline did, by reason.
    Loadgen {
        /// Ingress port (interface name or ifindex); default: the port whose address is --src.
        #[arg(long)]
        port: Option<String>,
        #[arg(long)]
        src: std::net::IpAddr,
        /// Destinations: an address, FIRST-LAST, or a CIDR.
        #[arg(long)]
        dst: String,
        /// udp, tcp (SYNs), icmp, or an IP protocol number.
        #[arg(long, default_value = "udp")]
        protocol: String,
        #[arg(long, default_value_t = 9)]
        dport: u16,
        /// Distinct frames (destination and source-port combinations) to cycle through.
        #[arg(long, default_value_t = 256)]
        flows: u32,
        /// Frame length in bytes.
        #[arg(long, default_value_t = 64)]
        length: usize,
        /// Stop after this many frames (default: run for --duration).
        #[arg(long)]
        packets: Option<u64>,
        /// Seconds to run (an upper bound with --packets).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Generator threads, one per CPU.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Frames per kernel batch (1 to 256).
        #[arg(long, default_value_t = 256)]
        batch: u32,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Detach from every port and remove the pinned links and maps (stop the agent first).
    Cleanup,
    /// Print a shell completion script (e.g. `peer-dataplane completions bash >
    /// /etc/bash_completion.d/peer-dataplane`).
    Completions { shell: clap_complete::Shell },
    /// Run the control plane: the peering lifecycle REST API with an embedded SQLite store.
    Controlplane {
        /// Address to listen on (keep it on loopback or a management network).
        #[arg(long, default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// SQLite database file (created if missing).
        #[arg(long)]
        db: PathBuf,
        /// File of ACCOUNT:TOKEN lines: API tokens to register (kept in the database).
        /// Tokens are never given on the command line, where `ps` would show them.
        #[arg(long, env = "PDP_ACCOUNT_TOKENS_FILE")]
        account_tokens: Option<PathBuf>,
        /// File of HOST:TOKEN lines: each host's agent credential, which reads that host's
        /// desired state and no other's.
        #[arg(long, env = "PDP_HOST_TOKENS_FILE")]
        host_tokens: Option<PathBuf>,
        /// Requests per second each account or host may make (a burst of twice that);
        /// past it the API answers 429.
        #[arg(long, default_value_t = 100.0)]
        rate_limit: f64,
        /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PeeringAction {
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One peering, by id (pcx-…).
    Get {
        id: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum RouteAction {
    List {
        /// Only this route table (rtb-…).
        #[arg(long)]
        table: Option<String>,
        /// Also the per-VPC CIDR tables the program uses for VPC membership.
        #[arg(long)]
        vpc_tables: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum AclAction {
    /// Packets each rule decided (the implicit final deny is not a rule: see
    /// `stats` for nacl-deny drops).
    Hits {
        /// Only this network ACL (acl-…).
        acl: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
enum PortAction {
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// Prints `value` as a table for people or as JSON for scripts.
fn show<T: serde::Serialize + ?Sized>(
    output: Output,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    match output {
        Output::Table => print!("{}", table(value)),
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
    }
    Ok(())
}

#[derive(Subcommand)]
enum ConntrackAction {
    /// Tracked flows, oldest first.
    List {
        #[command(flatten)]
        filter: ConntrackFilter,
        /// Include expired entries the LRU still holds.
        #[arg(long)]
        all: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Forget tracked flows: their next packets meet the security-group rules again.
    Flush {
        #[command(flatten)]
        filter: ConntrackFilter,
    },
}

#[derive(clap::Args)]
struct ConntrackFilter {
    /// Only flows with this VPC on either side.
    #[arg(long)]
    vpc: Option<String>,
    /// Only flows with this address on either side.
    #[arg(long)]
    address: Option<std::net::IpAddr>,
}

impl From<ConntrackFilter> for conntrack::Filter {
    fn from(f: ConntrackFilter) -> Self {
        conntrack::Filter {
            vpc: f.vpc,
            address: f.address,
        }
    }
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line; multi-line messages (validation) keep their lines.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// This host's control-plane token: from `--token-file`, else from `PDP_AGENT_TOKEN`.
fn agent_token(file: Option<&std::path::Path>) -> Result<String> {
    let token = match file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading --token-file {}", p.display()))?
            .trim()
            .to_string(),
        None => std::env::var("PDP_AGENT_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "--control-plane needs this host's token: --token-file FILE, or PDP_AGENT_TOKEN in the environment"
            )
        })?,
    };
    if token.is_empty() {
        anyhow::bail!("the host token is empty");
    }
    Ok(token)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            control_plane,
            host,
            token_file,
            ca,
            xdp_mode,
            bpf_object,
            metrics,
        } => {
            let source = match (config, control_plane) {
                (Some(path), _) => agent::Source::File(path),
                (None, Some(url)) => agent::Source::ControlPlane(sync::ControlPlane {
                    url,
                    host: host.context("--host is required with --control-plane")?,
                    token: agent_token(token_file.as_deref())?,
                    ca: ca
                        .map(|p| {
                            std::fs::read(&p)
                                .with_context(|| format!("reading --ca {}", p.display()))
                        })
                        .transpose()?,
                }),
                (None, None) => anyhow::bail!("give --config FILE or --control-plane URL"),
            };
            let object = agent::object_bytes(bpf_object.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent::run(agent::RunOptions {
                source,
                pin_dir: cli.pin_dir,
                xdp_mode,
                object,
                metrics,
            }))
        }
        Command::Validate { config } => {
            let topo = agent::load_topology(&config)?;
            println!(
                "{}: valid ({} vpcs, {} subnets, {} route tables, {} peerings, {} ports)",
                config.display(),
                topo.vpcs.len(),
                topo.subnets.len(),
                topo.route_tables.len(),
                topo.peerings.len(),
                topo.ports.len()
            );
            Ok(())
        }
        Command::Stats {
            output,
            per_cpu: true,
            ..
        } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            show(output, &stats::per_cpu(&maps)?, |c| {
                stats::render_per_cpu(c)
            })
        }
        Command::Stats {
            output,
            watch: true,
            interval,
            count,
            ..
        } => {
            anyhow::ensure!(interval > 0.0, "--interval must be above 0 seconds");
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            let mut before = stats::collect(&maps)?;
            let mut n = 0;
            while count.is_none_or(|c| n < c) {
                std::thread::sleep(std::time::Duration::from_secs_f64(interval));
                let after = stats::collect(&maps)?;
                let r = stats::rates(&before, &after, interval);
                match output {
                    Output::Table => println!("{}", stats::render_rates(&r)),
                    Output::Json => println!("{}", serde_json::to_string(&r)?),
                }
                before = after;
                n += 1;
            }
            Ok(())
        }
        Command::Stats { output, .. } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            let s = stats::collect(&maps)?;
            match output {
                Output::Table => print!("{}", stats::render_table(&s)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(())
        }
        Command::Peering { action } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            match action {
                PeeringAction::List { output } => show(output, &inspect::peerings(&maps)?, |p| {
                    inspect::render_peerings(p)
                }),
                PeeringAction::Get { id, output } => {
                    let p = inspect::peering(&maps, &id)?;
                    show(output, &p, |p| {
                        inspect::render_peerings(std::slice::from_ref(p))
                    })
                }
            }
        }
        Command::Route {
            action:
                RouteAction::List {
                    table,
                    vpc_tables,
                    output,
                },
        } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            let routes = inspect::routes(&maps, table.as_deref(), vpc_tables)?;
            show(output, &routes, |r| inspect::render_routes(r))
        }
        Command::Port {
            action: PortAction::List { output },
        } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            show(output, &inspect::ports(&maps)?, |p| {
                inspect::render_ports(p)
            })
        }
        Command::Acl {
            action: AclAction::Hits { acl, output },
        } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            let hits = inspect::acl_hits(&maps, acl.as_deref())?;
            show(output, &hits, |h| inspect::render_acl_hits(h))
        }
        Command::Conntrack { action } => match action {
            ConntrackAction::List {
                filter,
                all,
                output,
            } => {
                let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
                let flows = conntrack::list(&maps, &filter.into(), all)?;
                match output {
                    Output::Table => print!("{}", conntrack::render_table(&flows)),
                    Output::Json => println!("{}", serde_json::to_string_pretty(&flows)?),
                }
                Ok(())
            }
            ConntrackAction::Flush { filter } => {
                let mut maps = kernel::KernelMaps::open(&cli.pin_dir)?;
                let n = conntrack::flush(&mut maps, &filter.into())?;
                println!("flushed {n} flows");
                Ok(())
            }
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "peer-dataplane",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Trace {
            port,
            src,
            dst,
            protocol,
            sport,
            dport,
            ttl,
            length,
            output,
        } => {
            let req = trace::Request {
                port,
                src,
                dst,
                protocol: trace::Protocol::parse(&protocol)?,
                sport,
                dport,
                ttl,
                length,
            };
            let t = trace::trace(&cli.pin_dir, &req)?;
            show(output, &t, trace::render)
        }
        Command::Loadgen {
            port,
            src,
            dst,
            protocol,
            dport,
            flows,
            length,
            packets,
            duration,
            threads,
            batch,
            output,
        } => {
            anyhow::ensure!(duration > 0.0, "--duration must be above 0 seconds");
            let protocol = trace::Protocol::parse(&protocol)?;
            let (dst_first, dst_last) = loadgen::parse_range(&dst)?;
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            let state = maps.read_state()?;
            let ifindex = trace::ingress_port(
                &state,
                &trace::Request {
                    port,
                    src,
                    dst: dst_first,
                    protocol,
                    sport: None,
                    dport: None,
                    ttl: 64,
                    length: None,
                },
            )?;
            let traffic = loadgen::Traffic {
                src,
                dst_first,
                dst_last,
                protocol,
                dport: matches!(protocol, trace::Protocol::Udp | trace::Protocol::Tcp(_))
                    .then_some(dport),
                flows,
                length,
            };
            let frames = loadgen::frames(&traffic, state.ports.get(&ifindex))?;
            let prog = kernel::pinned_program(
                &cli.pin_dir,
                peer_dataplane_common::program_names::PIPELINE,
            )?;
            let load = loadgen::Load {
                ingress_ifindex: ifindex,
                packets,
                duration: std::time::Duration::from_secs_f64(duration),
                threads,
                batch,
            };
            let before = maps.global_counters()?;
            let mut progress = loadgen::progress_printer(packets, load.duration);
            let sent = loadgen::run(&prog, &frames, &load, &mut progress)?;
            eprintln!();
            let after = maps.global_counters()?;
            let r = loadgen::report(sent, length, flows, &before, &after);
            show(output, &r, loadgen::render_report)
        }
        Command::Cleanup => kernel::remove_pins(&cli.pin_dir).context("removing pinned maps"),
        Command::Controlplane {
            listen,
            db,
            account_tokens,
            host_tokens,
            rate_limit,
            tls_cert,
            tls_key,
        } => {
            if !rate_limit.is_finite() || rate_limit <= 0.0 {
                anyhow::bail!(
                    "--rate-limit must be above 0 (requests per second), not {rate_limit}"
                );
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(controlplane::serve(controlplane::ServeOptions {
                listen,
                db,
                account_tokens,
                host_tokens,
                rate_limit: controlplane::auth::RateLimit {
                    per_second: rate_limit,
                    burst: 2.0 * rate_limit,
                },
                tls: tls_cert.zip(tls_key),
            }))
        }
    }
}
