//! `peer-dataplane-controlplane`: the peering lifecycle REST API with an embedded SQLite
//! store. `peer-dataplane controlplane ARGS` runs this binary with the same arguments.

use anyhow::Result;
use clap::Parser;
use peer_dataplane_controlplane::listener::Limits;
use peer_dataplane_controlplane::store::etcd::EtcdAccess;
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
    /// With --store: PEM of the CA the etcd members' certificates chain to (speaks TLS
    /// to etcd; the endpoints are then https).
    #[arg(long, requires = "store")]
    etcd_ca: Option<PathBuf>,
    /// With --store: the client certificate (PEM) to present to etcd (its
    /// --client-cert-auth); needs --etcd-key and --etcd-ca.
    #[arg(long, requires_all = ["store", "etcd_key", "etcd_ca"])]
    etcd_cert: Option<PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// With --store: the etcd user to authenticate as; the password comes from
    /// --etcd-password-file, never the command line.
    #[arg(long, requires_all = ["store", "etcd_password_file"])]
    etcd_user: Option<String>,
    /// File holding --etcd-user's password (one line).
    #[arg(long, requires = "etcd_user", env = "PDP_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
    /// File of ACCOUNT:TOKEN lines: the API's account tokens. The file is the truth: at
    /// start and on SIGHUP the accepted set becomes exactly its lines (a removed line is
    /// a revoked token); the store keeps their hashes only, for every replica. Without
    /// it, the set already stored stays. Tokens are never given on the command line,
    /// where `ps` would show them.
    #[arg(long, env = "PDP_ACCOUNT_TOKENS_FILE")]
    account_tokens: Option<PathBuf>,
    /// File of HOST:TOKEN lines: each host's agent credential, which reads that host's
    /// desired state and no other's (read again on SIGHUP).
    #[arg(long, env = "PDP_HOST_TOKENS_FILE")]
    host_tokens: Option<PathBuf>,
    /// Requests per second each account or host may make (a burst of twice that);
    /// past it the API answers 429.
    #[arg(long, default_value_t = 100.0)]
    rate_limit: f64,
    /// Failed authentications per second one source address may make (a burst of 20
    /// times that); past it every request from that address is answered 429 until the
    /// budget refills.
    #[arg(long, default_value_t = 1.0)]
    auth_failure_limit: f64,
    /// Seconds a client has for its TLS handshake and for each request's headers; an
    /// idle kept-alive connection is closed after it too.
    #[arg(long, default_value_t = 10.0)]
    client_deadline: f64,
    /// Connections one source address may hold open; more are closed at once.
    #[arg(long, default_value_t = Limits::default().connections_per_source)]
    max_connections_per_source: usize,
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
    for (flag, v, unit) in [
        ("--rate-limit", a.rate_limit, "requests per second"),
        (
            "--auth-failure-limit",
            a.auth_failure_limit,
            "failures per second",
        ),
        ("--client-deadline", a.client_deadline, "seconds"),
    ] {
        if !v.is_finite() || v <= 0.0 {
            anyhow::bail!("{flag} must be above 0 ({unit}), not {v}");
        }
    }
    if a.max_connections_per_source == 0 {
        anyhow::bail!("--max-connections-per-source must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(ServeOptions {
        listen: a.listen,
        store: match (a.db, a.store) {
            (Some(db), _) => peer_dataplane_controlplane::StoreChoice::Sqlite(db),
            (None, Some(url)) => peer_dataplane_controlplane::StoreChoice::Etcd(
                url,
                EtcdAccess::from_files(
                    a.etcd_ca.as_deref(),
                    a.etcd_cert.as_deref(),
                    a.etcd_key.as_deref(),
                    a.etcd_user.as_deref(),
                    a.etcd_password_file.as_deref(),
                )?,
            ),
            (None, None) => anyhow::bail!("give --db FILE or --store etcd://…"),
        },
        account_tokens: a.account_tokens,
        host_tokens: a.host_tokens,
        rate_limit: RateLimit {
            per_second: a.rate_limit,
            burst: 2.0 * a.rate_limit,
        },
        auth_failure_limit: RateLimit {
            per_second: a.auth_failure_limit,
            burst: 20.0 * a.auth_failure_limit,
        },
        tls: a.tls_cert.zip(a.tls_key),
        limits: Limits {
            client_deadline: std::time::Duration::from_secs_f64(a.client_deadline),
            connections_per_source: a.max_connections_per_source,
            ..Limits::default()
        },
    }))
}
