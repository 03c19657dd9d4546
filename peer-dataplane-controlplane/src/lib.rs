//! `peer-dataplane-controlplane`: the peering lifecycle API (docs/datapath.md §5) with an embedded
//! SQLite store, and the per-host desired state that agents poll.

pub mod api;
pub mod auth;
pub mod checked;
pub mod deltas;
pub mod hoststate;
pub mod model;
pub mod ops;
pub mod requests;
pub mod store;
pub mod tls;

use anyhow::{Context, Result};
use log::info;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the objects live.
pub enum StoreChoice {
    /// The embedded store: one SQLite file.
    Sqlite(PathBuf),
    /// etcd, by URL (`etcd://h1:2379,h2:2379[/prefix]`).
    Etcd(String),
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub store: StoreChoice,
    /// File of `ACCOUNT:TOKEN` lines to register (kept in the database).
    pub account_tokens: Option<PathBuf>,
    /// File of `HOST:TOKEN` lines: each host's agent credential.
    pub host_tokens: Option<PathBuf>,
    pub rate_limit: auth::RateLimit,
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
}

pub async fn serve(opts: ServeOptions) -> Result<()> {
    let host_tokens = match &opts.host_tokens {
        Some(p) => auth::read_pairs(p, "host tokens")?,
        None => Default::default(),
    };
    let (server, where_) = match &opts.store {
        StoreChoice::Sqlite(db) => (
            api::Server::new(
                store::Store::open(db)?,
                api::Clock::new(),
                host_tokens,
                opts.rate_limit,
            )?,
            format!("database {}", db.display()),
        ),
        StoreChoice::Etcd(url) => {
            let (endpoints, prefix) = store::etcd::EtcdStore::parse_url(url)?;
            let s = store::etcd::EtcdStore::connect(&endpoints, &prefix)?;
            (
                api::Server::new(s, api::Clock::new(), host_tokens, opts.rate_limit)?,
                format!("etcd {} under {prefix}", endpoints.join(",")),
            )
        }
    };
    if let Some(p) = &opts.account_tokens {
        for (account, token) in auth::read_pairs(p, "account tokens")? {
            server.add_token(&account, &token)?;
        }
    }
    // Read the TLS files before binding: a bad certificate fails at start, not later.
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::config(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    info!(
        "control plane listening on {}://{} ({where_}, revision {})",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        server.revision()
    );
    let sweeper = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    });
    let app = api::router(server);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match tls {
        Some(config) => axum::serve(tls::TlsListener::new(listener, config), app)
            .with_graceful_shutdown(stop)
            .await
            .context("serving the API over https"),
        None => axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .context("serving the API"),
    }
}
