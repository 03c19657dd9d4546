//! The command line: every subcommand and its flags.

use clap::{Parser, Subcommand};
use peer_dataplane::bpf::links;
use peer_dataplane::cli::commands;
use peer_dataplane::cli::render::Output;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "peer-dataplane",
    version,
    about = "VPC-peering data plane: XDP agent and operator CLI"
)]
pub struct Cli {
    /// bpffs directory holding the pinned maps.
    #[arg(long, global = true, default_value = peer_dataplane_common::PIN_DIR)]
    pub pin_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Allow a plain http:// control plane that is not on loopback (the host's token
        /// then crosses the network unencrypted: a lab or test network only).
        #[arg(long, requires = "control_plane")]
        insecure_http: bool,
        /// Join the fleet: register this host with the control plane at this underlay
        /// IPv4 address (the source of its tunnels), before following it.
        #[arg(long, requires_all = ["control_plane", "uplink"])]
        underlay_ipv4: Option<std::net::Ipv4Addr>,
        /// The interface tunnels to and from other hosts use (with --underlay-ipv4).
        #[arg(long, requires = "underlay_ipv4")]
        uplink: Option<String>,
        #[arg(long, value_enum, default_value = "native")]
        xdp_mode: links::XdpModeArg,
        /// Kinds of interface a port may be on, as `ip -d link` names them (`device`: a
        /// driver's own interface, such as a NIC or an SR-IOV function). Anything else
        /// named as a port (the host's NIC, a bridge, the loopback) is refused.
        #[arg(long, value_delimiter = ',', default_value = "veth,tun,macvtap,netkit")]
        port_kinds: Vec<String>,
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
    /// Kept flow decisions (docs/datapath.md §4.19).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// What the loaded program decides for a packet, stage by stage (BPF_PROG_RUN of the
    /// pinned trace program on the live maps; counts nothing, tracks nothing, spends no
    /// cap tokens). E.g. `trace --src 10.0.2.10 --dst 172.16.2.20 --protocol tcp --dport 443`.
    Trace {
        #[command(flatten)]
        packet: commands::TraceArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Generate load on this host without a NIC or kernel module: BPF_PROG_RUN live frames
    /// of the pinned pipeline, as if received on a port (redirects are really sent). Prints
    /// progress, then pps, bit/s and what the pipeline did, by reason.
    Loadgen {
        #[command(flatten)]
        load: commands::LoadgenArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Detach from every port and remove the pinned links and maps (stop the agent first).
    Cleanup,
    /// Print a shell completion script (e.g. `peer-dataplane completions bash >
    /// /etc/bash_completion.d/peer-dataplane`).
    Completions { shell: clap_complete::Shell },
    /// Run the control plane: the peering lifecycle REST API with an embedded SQLite store.
    /// Run the control plane (the peering lifecycle REST API with an embedded SQLite
    /// store): runs `peer-dataplane-controlplane` from this binary's directory (or PATH)
    /// with the same arguments; see `peer-dataplane-controlplane --help`.
    #[command(disable_help_flag = true)]
    Controlplane {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand)]
pub enum PeeringAction {
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
pub enum RouteAction {
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
pub enum AclAction {
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
pub enum PortAction {
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Subcommand)]
pub enum CacheAction {
    /// The epoch, whether the cache is on, and the decisions each CPU keeps.
    Stats {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Make every kept decision stale (the next packet of each flow runs the pipeline).
    Flush,
    /// Keep decisions again.
    On,
    /// Keep no decisions: every packet runs the whole pipeline.
    Off,
}

#[derive(Subcommand)]
pub enum ConntrackAction {
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
pub struct ConntrackFilter {
    /// Only flows with this VPC on either side.
    #[arg(long)]
    pub vpc: Option<String>,
    /// Only flows with this address on either side.
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,
}

impl From<ConntrackFilter> for peer_dataplane::cli::conntrack::Filter {
    fn from(f: ConntrackFilter) -> Self {
        peer_dataplane::cli::conntrack::Filter {
            vpc: f.vpc,
            address: f.address,
        }
    }
}
