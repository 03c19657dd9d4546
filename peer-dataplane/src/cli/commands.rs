//! The operator's commands, one function each: open the pins, take what they need, name it
//! (`crate::views`) and print it (`super::render`).

use super::frame::{ingress_port, port_name, Protocol, Request};
use super::render::{show, Output};
use super::{conntrack, inspect, loadgen, stats, trace};
use crate::bpf::{pins, KernelMaps};
use crate::views;
use anyhow::{ensure, Result};
use std::path::Path;
use std::time::Duration;

/// `stats`: the counters, their per-CPU split, or (`watch`: interval in seconds and an
/// optional count) rates every interval.
pub fn stats(
    pin_dir: &Path,
    output: Output,
    per_cpu: bool,
    watch: Option<(f64, Option<u64>)>,
) -> Result<()> {
    let maps = KernelMaps::open(pin_dir)?;
    if per_cpu {
        let cpus = views::stats::per_cpu(&maps.snapshot()?);
        return show(output, &cpus, |c| stats::render_per_cpu(c));
    }
    let Some((interval, count)) = watch else {
        let s = views::stats::collect(&maps.snapshot()?);
        return show(output, &s, stats::render_table);
    };
    ensure!(interval > 0.0, "--interval must be above 0 seconds");
    let mut before = views::stats::collect(&maps.snapshot()?);
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let after = views::stats::collect(&maps.snapshot()?);
        let r = views::stats::rates(&before, &after, interval);
        match output {
            Output::Table => println!("{}", stats::render_rates(&r)),
            Output::Json => println!("{}", serde_json::to_string(&r)?),
        }
        before = after;
        n += 1;
    }
    Ok(())
}

/// `peering list` (`id` none) or `peering get ID`.
pub fn peerings(pin_dir: &Path, id: Option<&str>, output: Output) -> Result<()> {
    let snap = KernelMaps::open(pin_dir)?.snapshot()?;
    match id {
        None => show(output, &views::installed::peerings(&snap), |p| {
            inspect::render_peerings(p)
        }),
        Some(id) => show(output, &views::installed::peering(&snap, id)?, |p| {
            inspect::render_peerings(std::slice::from_ref(p))
        }),
    }
}

/// `route list`.
pub fn routes(pin_dir: &Path, table: Option<&str>, vpc_tables: bool, output: Output) -> Result<()> {
    let snap = KernelMaps::open(pin_dir)?.snapshot()?;
    let routes = views::installed::routes(&snap, table, vpc_tables)?;
    show(output, &routes, |r| inspect::render_routes(r))
}

/// `port list`.
pub fn ports(pin_dir: &Path, output: Output) -> Result<()> {
    let snap = KernelMaps::open(pin_dir)?.snapshot()?;
    show(output, &views::installed::ports(&snap), |p| {
        inspect::render_ports(p)
    })
}

/// `acl hits`.
pub fn acl_hits(pin_dir: &Path, acl: Option<&str>, output: Output) -> Result<()> {
    let snap = KernelMaps::open(pin_dir)?.snapshot()?;
    let hits = views::installed::acl_hits(&snap, acl)?;
    show(output, &hits, |h| inspect::render_acl_hits(h))
}

/// `conntrack list`.
pub fn conntrack_list(
    pin_dir: &Path,
    filter: &conntrack::Filter,
    all: bool,
    output: Output,
) -> Result<()> {
    let maps = KernelMaps::open(pin_dir)?;
    let flows = conntrack::list(&maps, filter, all)?;
    show(output, &flows, |f| conntrack::render_table(f))
}

/// `cache stats`.
pub fn cache_stats(pin_dir: &Path, output: Output) -> Result<()> {
    let maps = KernelMaps::open(pin_dir)?;
    let s = maps.flow_cache_stats()?;
    show(output, &s, |s| {
        let mut out = format!(
            "flow cache {} at epoch {}, {} slots per CPU\n",
            if s.on { "on" } else { "off" },
            s.epoch,
            s.slots_per_cpu
        );
        let c = &s.counters;
        let ratio = |hits: u64, misses: u64| {
            if hits + misses == 0 {
                "-".to_string()
            } else {
                format!("{:.1} %", 100.0 * hits as f64 / (hits + misses) as f64)
            }
        };
        out.push_str(&format!(
            "hits {}  misses {}  hit ratio {}  kept {}  evictions {}  declined {}  deferred {}\n",
            c.hits,
            c.misses,
            ratio(c.hits, c.misses),
            c.kept,
            c.evictions,
            c.declined,
            c.deferred
        ));
        for (cpu, n) in s.kept_per_cpu.iter().enumerate() {
            let c = s.counters_per_cpu.get(cpu).copied().unwrap_or_default();
            out.push_str(&format!(
                "  cpu {cpu}: {n} decisions of this epoch; hits {} misses {} evictions {} declined {} deferred {}\n",
                c.hits, c.misses, c.evictions, c.declined, c.deferred
            ));
        }
        out
    })
}

/// `cache flush`: every decision kept so far becomes stale.
pub fn cache_flush(pin_dir: &Path) -> Result<()> {
    let mut maps = KernelMaps::open(pin_dir)?;
    let epoch = maps.bump_epoch()?;
    println!("flow decisions dropped: the epoch is now {epoch}");
    Ok(())
}

/// `cache on` / `cache off`.
pub fn cache_set(pin_dir: &Path, on: bool) -> Result<()> {
    let mut maps = KernelMaps::open(pin_dir)?;
    maps.set_flow_cache(on)?;
    println!(
        "flow cache {}",
        if on {
            "on"
        } else {
            "off: every packet runs the whole pipeline"
        }
    );
    Ok(())
}

/// `conntrack flush`.
pub fn conntrack_flush(pin_dir: &Path, filter: &conntrack::Filter) -> Result<()> {
    let mut maps = KernelMaps::open(pin_dir)?;
    let n = conntrack::flush(&mut maps, filter)?;
    println!("flushed {n} flows");
    Ok(())
}

/// The packet `trace` describes.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Ingress port (interface name or ifindex); default: the port whose address is --src.
    #[arg(long)]
    pub port: Option<String>,
    #[arg(long)]
    pub src: std::net::IpAddr,
    #[arg(long)]
    pub dst: std::net::IpAddr,
    /// tcp (a SYN), tcp-synack, tcp-ack, tcp-fin, tcp-rst, udp, icmp (echo request),
    /// icmp-reply, or an IP protocol number.
    #[arg(long, default_value = "icmp")]
    pub protocol: String,
    /// Source port (default 40000), or the ICMP echo identifier (default 1).
    #[arg(long)]
    pub sport: Option<u16>,
    #[arg(long)]
    pub dport: Option<u16>,
    #[arg(long, default_value_t = 64)]
    pub ttl: u8,
    /// Frame length in bytes (padded payload), for caps.
    #[arg(long)]
    pub length: Option<usize>,
    /// The packet as host HOST of the fleet sends it: Geneve arriving on the uplink, to
    /// see this host's checks of the tunnel (--src is an instance on HOST).
    #[arg(long, value_name = "HOST", conflicts_with = "port")]
    pub from_host: Option<String>,
}

/// `trace`.
pub fn trace(pin_dir: &Path, a: TraceArgs, output: Output) -> Result<()> {
    let req = Request {
        port: a.port,
        src: a.src,
        dst: a.dst,
        protocol: Protocol::parse(&a.protocol)?,
        sport: a.sport,
        dport: a.dport,
        ttl: a.ttl,
        length: a.length,
        from_host: a.from_host,
    };
    let t = trace::trace(pin_dir, &req)?;
    show(output, &t, trace::render)
}

/// What and how much `loadgen` sends.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Ingress port (interface name or ifindex); default: the port whose address is --src.
    #[arg(long)]
    pub port: Option<String>,
    #[arg(long)]
    pub src: std::net::IpAddr,
    /// Destinations: an address, FIRST-LAST, or a CIDR.
    #[arg(long)]
    pub dst: String,
    /// udp, tcp (SYNs), icmp, or an IP protocol number.
    #[arg(long, default_value = "udp")]
    pub protocol: String,
    #[arg(long, default_value_t = 9)]
    pub dport: u16,
    /// Distinct frames (destination and source-port combinations) to cycle through.
    #[arg(long, default_value_t = 256)]
    pub flows: u32,
    /// Frame length in bytes.
    #[arg(long, default_value_t = 64)]
    pub length: usize,
    /// Stop after this many frames (default: run for --duration).
    #[arg(long)]
    pub packets: Option<u64>,
    /// Seconds to run (an upper bound with --packets).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// How frames get in: live-frames (BPF_PROG_RUN of the pinned pipeline as if received
    /// on the port), af-xdp or af-packet (real frames sent into the port from its far end);
    /// auto takes the first of these the kernel allows and says why.
    #[arg(long, value_enum, default_value = "auto")]
    pub generator: crate::loadgen::GeneratorArg,
    /// Generator threads, one per CPU (AF_XDP: one socket per queue of the far end).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// af-xdp, af-packet: the interface to send from (default: the port's veth peer).
    #[arg(long)]
    pub from: Option<String>,
    /// af-xdp, af-packet: the namespace of --from, a name under /run/netns or a path
    /// (default: found from the port's veth peer).
    #[arg(long)]
    pub from_netns: Option<String>,
    /// live-frames: frames per kernel batch (1 to 256).
    #[arg(long, default_value_t = 256)]
    pub batch: u32,
}

/// `loadgen`.
pub fn loadgen(pin_dir: &Path, a: LoadgenArgs, output: Output) -> Result<()> {
    use crate::loadgen::{self as gen, Generator, Source};
    ensure!(a.duration > 0.0, "--duration must be above 0 seconds");
    ensure!(a.threads >= 1, "--threads must be at least 1");
    let protocol = Protocol::parse(&a.protocol)?;
    let (dst_first, dst_last) = loadgen::parse_range(&a.dst)?;
    let maps = KernelMaps::open(pin_dir)?;
    let state = maps.read_state()?;
    let ifindex = ingress_port(
        &state,
        &Request {
            port: a.port.clone(),
            src: a.src,
            dst: dst_first,
            protocol,
            sport: None,
            dport: None,
            ttl: 64,
            length: None,
            from_host: None,
        },
    )?;
    let port = port_name(&state, ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"));
    let traffic = loadgen::Traffic {
        src: a.src,
        dst_first,
        dst_last,
        protocol,
        dport: matches!(protocol, Protocol::Udp | Protocol::Tcp(_)).then_some(a.dport),
        flows: a.flows,
        length: a.length,
    };
    let frames = loadgen::frames(&traffic, state.ports.get(&ifindex))?;
    let prog = pins::pinned_program(pin_dir, peer_dataplane_common::program_names::PIPELINE)?;

    // The far end is looked up only if a socket generator may run.
    let mut far: Option<Result<gen::FarEnd, String>> = None;
    let mut far_end = || {
        far.get_or_insert_with(|| {
            gen::far_end::resolve(&port, ifindex, a.from.as_deref(), a.from_netns.as_deref())
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
    };
    let choice = gen::choose(
        a.generator,
        || crate::bpf::probe::live_frames(ifindex).map_err(|r| r.to_string()),
        || {
            let f = far_end()?;
            gen::probe_af_xdp(&f).map_err(|e| format!("{e:#}"))
        },
    )?;
    let source = match choice.generator {
        Generator::LiveFrames => Source::LiveFrames {
            prog: &prog,
            ingress_ifindex: ifindex,
            batch: a.batch,
        },
        Generator::AfXdp => Source::AfXdp(far_end().map_err(anyhow::Error::msg)?),
        Generator::AfPacket => Source::AfPacket(far_end().map_err(anyhow::Error::msg)?),
    };
    let mut opened = gen::open(&source, &frames, a.threads)?;
    let how = loadgen::HowSent {
        generator: choice.generator,
        reason: choice.why,
        mode: opened.mode.clone(),
        path: source.describe(),
        port,
        threads: opened.threads(),
    };
    eprintln!("loadgen: {}", loadgen::render_how(&how));
    let load = gen::Load {
        packets: a.packets,
        duration: Duration::from_secs_f64(a.duration),
    };
    let before = maps.global_counters()?;
    let mut progress = gen::progress_printer(a.packets, load.duration);
    let sent = gen::run(&source, &mut opened, a.length, &load, &mut progress)?;
    eprintln!();
    let after = maps.global_counters()?;
    let r = loadgen::report(how, sent, a.length, a.flows, &before, &after);
    show(output, &r, loadgen::render_report)
}
