//! `peer-dataplane controlplane`: the peering lifecycle API (SPEC §5) with an embedded
//! SQLite store, and the per-host desired state that agents poll.

pub mod api;
pub mod hoststate;
pub mod model;
pub mod ops;
pub mod store;

use anyhow::{bail, Context, Result};
use log::info;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// `ACCOUNT:TOKEN` pairs to register (kept in the database).
    pub account_tokens: Vec<String>,
    pub agent_token: Option<String>,
    /// Allow tests to move the clock (`POST /v1/test/clock`).
    pub test_clock: bool,
}

pub async fn serve(opts: ServeOptions) -> Result<()> {
    let store = store::Store::open(&opts.db)?;
    let server = api::Server::new(
        store,
        api::Clock::new(opts.test_clock),
        opts.agent_token.clone(),
    )?;
    for pair in &opts.account_tokens {
        let Some((account, token)) = pair.split_once(':') else {
            bail!("--account-token {pair:?}: expected ACCOUNT:TOKEN");
        };
        if account.is_empty() || token.len() < 8 {
            bail!("--account-token {pair:?}: the account must be non-empty and the token at least 8 characters");
        }
        server.add_token(account, token)?;
    }
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    info!(
        "control plane listening on {} (database {}, revision {})",
        listener.local_addr()?,
        opts.db.display(),
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
    let app = api::router(server, opts.test_clock);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the API")
}
