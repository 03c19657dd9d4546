//! `peer-dataplane-controlplane`: the peering lifecycle API (docs/datapath.md §5) with an embedded
//! SQLite store, and the per-host desired state that agents poll.

pub mod api;
pub mod auth;
pub mod gate;
pub mod history;
pub mod hoststate;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod requests;
pub mod store;
pub mod tls;
pub mod world;

use anyhow::{Context, Result};
use log::{info, warn};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the objects live.
pub enum StoreChoice {
    /// The embedded store: one SQLite file.
    Sqlite(PathBuf),
    /// etcd, by URL (`etcd://h1:2379,h2:2379[/prefix]`), and how to reach it.
    Etcd(String, store::etcd::EtcdAccess),
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub store: StoreChoice,
    /// File of `ACCOUNT:TOKEN` lines: the account tokens (their hashes kept in the store).
    pub account_tokens: Option<PathBuf>,
    /// File of `HOST:TOKEN` lines: each host's agent credential.
    pub host_tokens: Option<PathBuf>,
    pub rate_limit: auth::RateLimit,
    /// Failed authentications per source address.
    pub auth_failure_limit: auth::RateLimit,
    /// Serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub limits: listener::Limits,
}

/// The tokens files, read whole: both parse, or neither is used.
struct TokenFiles {
    accounts: Option<std::collections::BTreeMap<String, String>>,
    hosts: std::collections::BTreeMap<String, String>,
}

impl TokenFiles {
    fn read(opts: &ServeOptions) -> Result<TokenFiles> {
        Ok(TokenFiles {
            accounts: match &opts.account_tokens {
                Some(p) => Some(auth::read_pairs(p, "account tokens")?),
                None => None,
            },
            hosts: match &opts.host_tokens {
                Some(p) => auth::read_pairs(p, "host tokens")?,
                None => Default::default(),
            },
        })
    }

    /// Makes the files' sets exactly what `server` accepts. Without `--account-tokens`
    /// the stored set stays (a replica may leave the set to another one's file).
    fn apply(self, server: &api::Server) -> Result<()> {
        if let Some(accounts) = &self.accounts {
            server.set_account_tokens(accounts)?;
        }
        server.set_host_tokens(self.hosts);
        Ok(())
    }
}

pub async fn serve(opts: ServeOptions) -> Result<()> {
    // Everything that can be wrong with the files is found before anything is served.
    let files = TokenFiles::read(&opts)?;
    let (server, where_) = match &opts.store {
        StoreChoice::Sqlite(db) => (
            api::Server::new(
                store::Store::open(db)?,
                api::Clock::new(),
                Default::default(),
                opts.rate_limit,
            )?,
            format!("database {}", db.display()),
        ),
        StoreChoice::Etcd(url, access) => {
            let (endpoints, prefix) = store::etcd::EtcdStore::parse_url(url)?;
            let s = store::etcd::EtcdStore::connect_with(&endpoints, &prefix, access)?;
            let how = match (&access.ca, &access.identity, &access.user) {
                (None, _, None) => String::new(),
                (ca, cert, user) => format!(
                    " over {}{}{}",
                    if ca.is_some() { "TLS" } else { "plain http" },
                    if cert.is_some() {
                        " with a client certificate"
                    } else {
                        ""
                    },
                    user.as_ref()
                        .map(|(u, _)| format!(" as user {u}"))
                        .unwrap_or_default()
                ),
            };
            (
                api::Server::new(s, api::Clock::new(), Default::default(), opts.rate_limit)?,
                format!("etcd {} under {prefix}{how}", endpoints.join(",")),
            )
        }
    };
    server.limit_auth_failures(opts.auth_failure_limit);
    files.apply(&server)?;
    server.metrics().token_reload(true);
    // Read the TLS files before binding: a bad certificate fails at start, not later.
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::config(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    info!(
        "control plane listening on {}://{} ({where_}, revision {}, {} account tokens)",
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?,
        server.revision(),
        server.account_tokens(),
    );
    let sweeper = server.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tick.tick().await;
            sweeper.sweep();
        }
    });
    // SIGHUP: the tokens files again, whole; a file that does not parse changes nothing.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let (reloader, limits) = (server.clone(), opts.limits);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let outcome = TokenFiles::read(&opts).and_then(|f| f.apply(&reloader));
            reloader.metrics().token_reload(outcome.is_ok());
            match outcome {
                Ok(()) => info!(
                    "SIGHUP: tokens files read again: {} account tokens",
                    reloader.account_tokens()
                ),
                Err(e) => warn!("SIGHUP: {e:#}; the tokens in force are unchanged"),
            }
        }
    });
    let metrics = server.metrics();
    let app = api::router(server);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    listener::serve(listener, tls, app, limits, metrics, stop).await
}
