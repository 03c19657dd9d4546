//! The agent's Prometheus endpoint (`run --metrics ADDR`, `GET /metrics`). Every scrape
//! reads the pinned maps afresh (the same numbers `peer-dataplane stats` shows) and adds
//! what only the running agent knows: the revision it installed, how long that took, and
//! how many desired states it refused.

use crate::inspect;
use crate::kernel::KernelMaps;
use anyhow::{Context, Result};
use peer_dataplane_common::{
    acl::MAX_ACL_SETS, conntrack::MAX_CT_ENTRIES, MAX_ACL_ENTRIES, MAX_ENDPOINTS, MAX_NAMES,
    MAX_PEERINGS, MAX_PORTS, MAX_ROUTES,
};
use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What the agent's sync loop reports.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// Control-plane revision last installed (0 for a file).
    pub revision: u64,
    pub applied: u64,
    pub refused: u64,
    /// Seconds the last install took (validate, diff, map writes).
    pub last_apply_seconds: f64,
    /// Unix time of the last successful install.
    pub last_success_unix: f64,
}

pub type SharedSync = Arc<Mutex<SyncState>>;

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

/// The text exposition of everything, read now.
pub fn render(maps: &KernelMaps, sync: &SyncState) -> Result<String> {
    let r = Registry::new();
    let dir_label = |d: u32| {
        if d == 0 {
            "requester_to_accepter"
        } else {
            "accepter_to_requester"
        }
    };

    let packets = counter(
        &r,
        "pdp_peering_packets_total",
        "Packets forwarded across a peering.",
        &["peering", "direction"],
    )?;
    let bytes = counter(
        &r,
        "pdp_peering_bytes_total",
        "Bytes forwarded across a peering.",
        &["peering", "direction"],
    )?;
    let pdrops = counter(
        &r,
        "pdp_peering_drops_total",
        "Packets dropped once their peering was known, by reason.",
        &["peering", "direction", "reason"],
    )?;
    let cap = gauge(
        &r,
        "pdp_peering_cap_bits_per_second",
        "Bandwidth cap of a peering direction (absent: uncapped).",
        &["peering", "direction"],
    )?;
    // One read of the installed state and of every counter per scrape.
    let state = maps.read_state()?;
    let stats = crate::stats::collect_in(maps, &state)?;
    for p in &stats.peerings {
        for (d, view) in [(0, &p.requester_to_accepter), (1, &p.accepter_to_requester)] {
            let l = [p.id.as_str(), dir_label(d)];
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

    let g = &stats.global;
    let rx = counter(&r, "pdp_rx_packets_total", "Frames the program saw.", &[])?;
    rx.with_label_values(&[]).inc_by(g.rx_packets);
    let rxb = counter(
        &r,
        "pdp_rx_bytes_total",
        "Bytes of the frames the program saw.",
        &[],
    )?;
    rxb.with_label_values(&[]).inc_by(g.rx_bytes);
    let redirected = counter(&r, "pdp_redirected_packets_total", "Frames forwarded.", &[])?;
    redirected
        .with_label_values(&[])
        .inc_by(g.redirected_packets);
    let drops = counter(
        &r,
        "pdp_drops_total",
        "Frames dropped, by reason.",
        &["reason"],
    )?;
    for (reason, n) in &g.dropped {
        drops.with_label_values(&[reason]).inc_by(*n);
    }
    let passes = counter(
        &r,
        "pdp_passes_total",
        "Frames handed to the kernel, by reason.",
        &["reason"],
    )?;
    for (reason, n) in &g.passed {
        passes.with_label_values(&[reason]).inc_by(*n);
    }

    let hits = counter(
        &r,
        "pdp_acl_rule_hits_total",
        "Packets each network ACL rule decided.",
        &["acl", "direction", "rule"],
    )?;
    for h in inspect::acl_hits_in(maps, &state, None)? {
        hits.with_label_values(&[h.acl.as_str(), h.direction, &h.rule.to_string()])
            .inc_by(h.hits);
    }

    let flows = maps.conntrack_entries()?.len();
    let fill = gauge(&r, "pdp_map_entries", "Entries in a pinned map.", &["map"])?;
    let capacity = gauge(
        &r,
        "pdp_map_capacity",
        "Capacity of a pinned map.",
        &["map"],
    )?;
    for (name, n, max) in [
        ("ports", state.ports.len(), MAX_PORTS),
        ("routes", state.routes.len(), MAX_ROUTES),
        ("peerings", state.peerings.len(), MAX_PEERINGS),
        ("endpoints", state.endpoints.len(), MAX_ENDPOINTS),
        ("names", state.names.len(), MAX_NAMES),
        ("acl_addr", state.acl_addr.len(), MAX_ACL_ENTRIES),
        ("acl_port", state.acl_port.len(), MAX_ACL_ENTRIES),
        ("acl_exact", state.acl_exact.len(), MAX_ACL_ENTRIES),
        ("acl_proto", state.acl_proto.len(), MAX_ACL_SETS * 8),
        ("acl_meta", state.acl_meta.len(), MAX_ACL_SETS),
        ("conntrack", flows, MAX_CT_ENTRIES),
    ] {
        fill.with_label_values(&[name]).set(n as i64);
        capacity.with_label_values(&[name]).set(max as i64);
    }
    let ct = IntGauge::new(
        "pdp_conntrack_entries",
        "Flows in the conntrack table (expired ones included until reused).",
    )?;
    ct.set(flows as i64);
    r.register(Box::new(ct))?;

    let rev = IntGauge::new(
        "pdp_sync_revision",
        "Control-plane revision installed (0: state from a file).",
    )?;
    rev.set(sync.revision as i64);
    r.register(Box::new(rev))?;
    let applied = counter(
        &r,
        "pdp_sync_applied_total",
        "Desired states installed.",
        &[],
    )?;
    applied.with_label_values(&[]).inc_by(sync.applied);
    let refused = counter(
        &r,
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

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out)?;
    Ok(String::from_utf8(out)?)
}

/// Binds the metrics endpoint (so that a bad address fails the agent's start).
pub async fn bind(listen: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {listen}"))
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pin_dir: PathBuf,
    sync: SharedSync,
) -> Result<()> {
    use axum::{http::StatusCode, routing::get, Router};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let pin_dir = pin_dir.clone();
            let sync = sync.clone();
            async move {
                let snapshot = sync.lock().unwrap().clone();
                match KernelMaps::open(&pin_dir).and_then(|m| render(&m, &snapshot)) {
                    Ok(text) => (
                        StatusCode::OK,
                        [("content-type", "text/plain; version=0.0.4")],
                        text,
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "text/plain; version=0.0.4")],
                        format!("# reading the pinned maps failed: {e:#}\n"),
                    ),
                }
            }
        }),
    );
    axum::serve(listener, app).await.context("metrics endpoint")
}
