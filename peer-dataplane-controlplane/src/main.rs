//! `peer-dataplane-controlplane`: the peering lifecycle REST API with an embedded SQLite
//! store. `peer-dataplane controlplane ARGS` runs this binary with the same arguments.

use anyhow::Result;
use clap::Parser;
use peer_dataplane_controlplane::{auth::RateLimit, serve, ServeOptions};
use std::path::PathBuf;

/// Run the control plane: the peering lifecycle REST API with an embedded SQLite store.
#[derive(Parser)]
#[command(name = "peer-dataplane-controlplane", version)]
struct Args {
    /// Address to listen on (keep it on loopback or a management network).
    #[arg(long, default_value = "127.0.0.1:8470")]
    listen: std::net::SocketAddr,
    /// SQLite database file (created if missing): the embedded store.
    #[arg(long, required_unless_present = "store", conflicts_with = "store")]
    db: Option<PathBuf>,
    /// The distributed store instead: etcd://HOST:PORT[,HOST:PORT...][/PREFIX] (default
    /// prefix /pdp). Several control-plane replicas may serve one etcd cluster.
    #[arg(long)]
    store: Option<String>,
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
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<()> {
    if !a.rate_limit.is_finite() || a.rate_limit <= 0.0 {
        anyhow::bail!(
            "--rate-limit must be above 0 (requests per second), not {}",
            a.rate_limit
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(ServeOptions {
        listen: a.listen,
        store: match (a.db, a.store) {
            (Some(db), _) => peer_dataplane_controlplane::StoreChoice::Sqlite(db),
            (None, Some(url)) => peer_dataplane_controlplane::StoreChoice::Etcd(url),
            (None, None) => anyhow::bail!("give --db FILE or --store etcd://…"),
        },
        account_tokens: a.account_tokens,
        host_tokens: a.host_tokens,
        rate_limit: RateLimit {
            per_second: a.rate_limit,
            burst: 2.0 * a.rate_limit,
        },
        tls: a.tls_cert.zip(a.tls_key),
    }))
}
