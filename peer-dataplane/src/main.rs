//! `peer-dataplane`: the agent (`run`) and the operator CLI. This file only dispatches:
//! the agent is `peer_dataplane::agent`, the commands are `peer_dataplane::cli`.

mod args;

use anyhow::{Context, Result};
use args::{
    AclAction, CacheAction, Cli, Command, ConntrackAction, PeeringAction, PortAction, RouteAction,
};
use clap::Parser;
use peer_dataplane::agent::{self, install::load_topology, long_poll};
use peer_dataplane::bpf::pins;
use peer_dataplane::cli::commands;

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
    let pin = cli.pin_dir.as_path();
    match cli.command {
        Command::Run {
            config,
            control_plane,
            host,
            token_file,
            ca,
            insecure_http,
            underlay_ipv4,
            uplink,
            xdp_mode,
            bpf_object,
            metrics,
            port_kinds,
        } => {
            let source = match (config, control_plane) {
                (Some(path), _) => agent::Source::File(path),
                (None, Some(url)) => agent::Source::ControlPlane(long_poll::ControlPlane {
                    url: {
                        long_poll::check_transport(&url, ca.is_some(), insecure_http)?;
                        url
                    },
                    host: host.context("--host is required with --control-plane")?,
                    token: agent_token(token_file.as_deref())?,
                    ca: ca
                        .map(|p| {
                            std::fs::read(&p)
                                .with_context(|| format!("reading --ca {}", p.display()))
                        })
                        .transpose()?,
                    register: underlay_ipv4.zip(uplink).map(|(underlay_ipv4, uplink)| {
                        long_poll::Registration {
                            underlay_ipv4,
                            uplink,
                        }
                    }),
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
                port_kinds,
                object,
                metrics,
            }))
        }
        Command::Validate { config } => {
            let topo = load_topology(&config)?;
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
            watch,
            interval,
            count,
            per_cpu,
        } => commands::stats(pin, output, per_cpu, watch.then_some((interval, count))),
        Command::Peering { action } => match action {
            PeeringAction::List { output } => commands::peerings(pin, None, output),
            PeeringAction::Get { id, output } => commands::peerings(pin, Some(&id), output),
        },
        Command::Route {
            action:
                RouteAction::List {
                    table,
                    vpc_tables,
                    output,
                },
        } => commands::routes(pin, table.as_deref(), vpc_tables, output),
        Command::Port {
            action: PortAction::List { output },
        } => commands::ports(pin, output),
        Command::Acl {
            action: AclAction::Hits { acl, output },
        } => commands::acl_hits(pin, acl.as_deref(), output),
        Command::Conntrack { action } => match action {
            ConntrackAction::List {
                filter,
                all,
                output,
            } => commands::conntrack_list(pin, &filter.into(), all, output),
            ConntrackAction::Flush { filter } => commands::conntrack_flush(pin, &filter.into()),
        },
        Command::Cache { action } => match action {
            CacheAction::Stats { output } => commands::cache_stats(pin, output),
            CacheAction::Flush => commands::cache_flush(pin),
            CacheAction::On => commands::cache_set(pin, true),
            CacheAction::Off => commands::cache_set(pin, false),
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
        Command::Trace { packet, output } => commands::trace(pin, packet, output),
        Command::Loadgen { load, output } => commands::loadgen(pin, load, output),
        Command::Cleanup => pins::remove_pins(pin).context("removing pinned maps"),
        Command::Controlplane { args } => run_controlplane(&args),
    }
}

/// `peer-dataplane controlplane ARGS`: the control plane is its own binary (this one links
/// no database or web framework); run it in this process's place.
fn run_controlplane(args: &[std::ffi::OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    const BIN: &str = "peer-dataplane-controlplane";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(BIN)))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| BIN.into());
    let err = std::process::Command::new(&program).args(args).exec();
    Err(err).with_context(|| {
        format!(
            "running {} (install it beside peer-dataplane or on PATH; `cargo xtask build` builds both)",
            program.display()
        )
    })
}
