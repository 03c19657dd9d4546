//! `peer-dataplane`: the agent (`run`) and the operator CLI.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use peer_dataplane::{agent, kernel, stats};
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
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: agent::XdpModeArg,
        /// XDP object to load instead of the one embedded in this binary.
        #[arg(long)]
        bpf_object: Option<PathBuf>,
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
    },
    /// Remove the pinned maps (after the agent has stopped).
    Cleanup,
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

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            config,
            xdp_mode,
            bpf_object,
        } => {
            let object = agent::object_bytes(bpf_object.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(agent::run(agent::RunOptions {
                config,
                pin_dir: cli.pin_dir,
                xdp_mode,
                object,
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
        Command::Stats { output } => {
            let maps = kernel::KernelMaps::open(&cli.pin_dir)?;
            let s = stats::collect(&maps)?;
            match output {
                Output::Table => print!("{}", stats::render_table(&s)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&s)?),
            }
            Ok(())
        }
        Command::Cleanup => kernel::remove_pins(&cli.pin_dir).context("removing pinned maps"),
    }
}
