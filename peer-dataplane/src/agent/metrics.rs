//! The agent's Prometheus endpoint (`run --metrics ADDR`, `GET /metrics`). Every scrape
//! reads the pinned maps afresh (the same numbers `peer-dataplane stats` shows) and adds
//! what only the running agent knows: the revision it installed, how long that took, and
//! how many desired states it refused.

use crate::bpf::maps::{KernelMaps, Snapshot};
use crate::views;
use anyhow::{Context, Result};
use peer_dataplane_common::{registry, DIRECTIONS};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the agent's install loop reports.
#[derive(Debug, Clone, Default)]
pub struct InstallStats {
    /// Control-plane revision last installed (0 for a file).
    pub revision: u64,
    pub applied: u64,
    pub refused: u64,
    /// Seconds the last install took (validate, diff, map writes).
    pub last_apply_seconds: f64,
    /// Unix time of the last successful install.
    pub last_success_unix: f64,
    /// Whether the control plane's last answer was a current view (see `long_poll::spawn`).
    pub synced: bool,
}

pub type SharedInstallStats = Arc<Mutex<InstallStats>>;

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The text exposition of one snapshot of the maps (`conntrack_entries` flows), and of
/// what the install loop reports.
pub fn render(snap: &Snapshot, conntrack_entries: usize, sync: &InstallStats) -> Result<String> {
    let r = Registry::new();
    let stats = views::stats::collect(snap);
    peering_metrics(&r, &stats)?;
    global_metrics(&r, &stats)?;
    acl_metrics(&r, snap)?;
    map_metrics(&r, snap, conntrack_entries)?;
    flow_cache_metrics(&r, snap)?;
    install_metrics(&r, sync)?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// Traffic, drops and caps of each peering direction.
fn peering_metrics(r: &Registry, stats: &views::stats::Stats) -> Result<()> {
    let packets = counter(
        r,
        "pdp_peering_packets_total",
        "Packets forwarded across a peering.",
        &["peering", "direction"],
    )?;
    let bytes = counter(
        r,
        "pdp_peering_bytes_total",
        "Bytes forwarded across a peering.",
        &["peering", "direction"],
    )?;
    let pdrops = counter(
        r,
        "pdp_peering_drops_total",
        "Packets dropped once their peering was known, by reason.",
        &["peering", "direction", "reason"],
    )?;
    let cap = gauge(
        r,
        "pdp_peering_cap_bits_per_second",
        "Bandwidth cap of a peering direction (absent: uncapped).",
        &["peering", "direction"],
    )?;
    for p in &stats.peerings {
        for (d, view) in [(0, &p.requester_to_accepter), (1, &p.accepter_to_requester)] {
            let l = [p.id.as_str(), DIRECTIONS[d]];
            packets.with_label_values(&l).inc_by(view.packets);
            bytes.with_label_values(&l).inc_by(view.bytes);
            for (reason, n) in &view.dropped {
                pdrops.with_label_values(&[l[0], l[1], reason]).inc_by(*n);
            }
            if let Some(bps) = view.cap_bps {
                cap.with_label_values(&l).set(bps as i64);
            }
        }
    }

    Ok(())
}

/// What the program saw, forwarded, passed and dropped, by reason.
fn global_metrics(r: &Registry, stats: &views::stats::Stats) -> Result<()> {
    let g = &stats.global;
    let rx = counter(r, "pdp_rx_packets_total", "Frames the program saw.", &[])?;
    rx.with_label_values(&[]).inc_by(g.rx_packets);
    let rxb = counter(
        r,
        "pdp_rx_bytes_total",
        "Bytes of the frames the program saw.",
        &[],
    )?;
    rxb.with_label_values(&[]).inc_by(g.rx_bytes);
    let redirected = counter(r, "pdp_redirected_packets_total", "Frames forwarded.", &[])?;
    redirected
        .with_label_values(&[])
        .inc_by(g.redirected_packets);
    let drops = counter(
        r,
        "pdp_drops_total",
        "Frames dropped, by reason.",
        &["reason"],
    )?;
    for (reason, n) in &g.dropped {
        drops.with_label_values(&[reason]).inc_by(*n);
    }
    let passes = counter(
        r,
        "pdp_passes_total",
        "Frames handed to the kernel, by reason.",
        &["reason"],
    )?;
    for (reason, n) in &g.passed {
        passes.with_label_values(&[reason]).inc_by(*n);
    }

    Ok(())
}

/// Packets each network ACL rule decided.
fn acl_metrics(r: &Registry, snap: &Snapshot) -> Result<()> {
    let hits = counter(
        r,
        "pdp_acl_rule_hits_total",
        "Packets each network ACL rule decided.",
        &["acl", "direction", "rule"],
    )?;
    for h in views::installed::acl_hits(snap, None)? {
        hits.with_label_values(&[h.acl.as_str(), h.direction, &h.rule.to_string()])
            .inc_by(h.hits);
    }

    Ok(())
}

/// Fill and capacity of every map the registry sizes, and the conntrack table.
fn map_metrics(r: &Registry, snap: &Snapshot, conntrack_entries: usize) -> Result<()> {
    let flows = conntrack_entries;
    let fill = gauge(r, "pdp_map_entries", "Entries in a pinned map.", &["map"])?;
    let capacity = gauge(r, "pdp_map_capacity", "Capacity of a pinned map.", &["map"])?;
    for spec in registry::ALL {
        let entries = match spec.name {
            registry::names::CONNTRACK => Some(flows),
            name => snap.state.len_of(name),
        };
        if let Some(n) = entries {
            let label = spec.name.trim_start_matches("pdp_");
            fill.with_label_values(&[label]).set(n as i64);
            capacity
                .with_label_values(&[label])
                .set(spec.max_entries as i64);
        }
    }
    let ct = IntGauge::new(
        "pdp_conntrack_entries",
        "Flows in the conntrack table (expired ones included until reused).",
    )?;
    ct.set(flows as i64);
    r.register(Box::new(ct))?;

    Ok(())
}

/// The flow decision cache: what it did, its epoch, and whether it is on.
fn flow_cache_metrics(r: &Registry, snap: &Snapshot) -> Result<()> {
    let f = &snap.flow_cache;
    for (name, help, n) in [
        (
            "pdp_flow_cache_hits_total",
            "Packets a kept flow decision forwarded.",
            f.counters.hits,
        ),
        (
            "pdp_flow_cache_misses_total",
            "Packets of a cacheable flow that found no decision of the current epoch.",
            f.counters.misses,
        ),
        (
            "pdp_flow_cache_kept_total",
            "Flow decisions kept by packets that ran the whole pipeline.",
            f.counters.kept,
        ),
        (
            "pdp_flow_cache_evictions_total",
            "Current flow decisions replaced by another flow's in their slot.",
            f.counters.evictions,
        ),
        (
            "pdp_flow_cache_declined_total",
            "Flow decisions not kept: their slot held another flow's current decision or first miss, not due for replacement.",
            f.counters.declined,
        ),
        (
            "pdp_flow_cache_deferred_total",
            "Flow decisions not kept because the miss was the flow's first: kept on its next miss.",
            f.counters.deferred,
        ),
    ] {
        counter(r, name, help, &[])?
            .with_label_values(&[])
            .inc_by(n);
    }
    let epoch = IntGauge::new(
        "pdp_flow_cache_epoch",
        "Epoch of the installed state: kept decisions of another epoch are not used.",
    )?;
    epoch.set(f.epoch as i64);
    r.register(Box::new(epoch))?;
    let on = IntGauge::new(
        "pdp_flow_cache_enabled",
        "1 while kept flow decisions are used, 0 while every packet runs the whole pipeline.",
    )?;
    on.set(f.on as i64);
    r.register(Box::new(on))?;
    Ok(())
}

/// What only the running agent knows: installs, refusals, timings.
fn install_metrics(r: &Registry, sync: &InstallStats) -> Result<()> {
    let rev = IntGauge::new(
        "pdp_sync_revision",
        "Control-plane revision installed (0: state from a file).",
    )?;
    rev.set(sync.revision as i64);
    r.register(Box::new(rev))?;
    let applied = counter(
        r,
        "pdp_sync_applied_total",
        "Desired states installed.",
        &[],
    )?;
    applied.with_label_values(&[]).inc_by(sync.applied);
    let refused = counter(
        r,
        "pdp_sync_errors_total",
        "Desired states refused (invalid, or failed to install).",
        &[],
    )?;
    refused.with_label_values(&[]).inc_by(sync.refused);
    let last =
        prometheus::Gauge::new("pdp_sync_last_apply_seconds", "Time the last install took.")?;
    last.set(sync.last_apply_seconds);
    r.register(Box::new(last))?;
    let when = prometheus::Gauge::new(
        "pdp_sync_last_success_timestamp_seconds",
        "Unix time of the last successful install.",
    )?;
    when.set(sync.last_success_unix);
    r.register(Box::new(when))?;
    let synced = IntGauge::new(
        "pdp_sync_synced",
        "1 while the control plane answers with a current view; 0 while it or its store cannot be reached (forwarding goes on with the last installed state).",
    )?;
    synced.set(i64::from(sync.synced));
    r.register(Box::new(synced))?;

    Ok(())
}

/// Binds the metrics endpoint (so that a bad address fails the agent's start).
pub async fn bind(listen: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {listen}"))
}

/// Serves `GET /metrics` on `listener` until the process ends: a plain HTTP/1.1 responder
/// (one request per connection), so that the agent links no web framework.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pin_dir: PathBuf,
    stats: SharedInstallStats,
) -> Result<()> {
    loop {
        let (mut conn, _) = listener.accept().await.context("metrics endpoint")?;
        let (pin_dir, stats) = (pin_dir.clone(), stats.clone());
        tokio::spawn(async move {
            let Some(path) = request_path(&mut conn).await else {
                return;
            };
            let (status, body) = match path.as_deref() {
                Ok("/metrics") => {
                    let stats = stats.lock().unwrap().clone();
                    match scrape(&pin_dir, &stats) {
                        Ok(text) => ("200 OK", text),
                        Err(e) => (
                            "500 Internal Server Error",
                            format!("# reading the pinned maps failed: {e:#}\n"),
                        ),
                    }
                }
                Ok(_) => ("404 Not Found", "not found; try /metrics\n".into()),
                Err(()) => ("405 Method Not Allowed", "only GET\n".into()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

/// One scrape: a snapshot of the pinned maps, rendered.
fn scrape(pin_dir: &std::path::Path, stats: &InstallStats) -> Result<String> {
    let maps = KernelMaps::open(pin_dir)?;
    let snap = maps.snapshot()?;
    render(&snap, maps.conntrack_entries()?.len(), stats)
}

/// Reads a request head (at most 8 KiB, 5 s) and returns its path: `Ok` for a GET,
/// `Err` for another method, `None` when the client sent no complete head.
async fn request_path(conn: &mut tokio::net::TcpStream) -> Option<Result<String, ()>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .ok()??;
    let line = String::from_utf8_lossy(&head);
    let mut words = line.lines().next()?.split_whitespace();
    let (method, target) = (words.next()?, words.next()?);
    let path = target.split('?').next().unwrap_or(target).to_string();
    Some(if method == "GET" { Ok(path) } else { Err(()) })
}
