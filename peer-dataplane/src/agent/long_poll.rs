//! Following the control plane: a thread long-polls the host's desired state and hands
//! each new revision to the agent. When the control plane is unreachable the agent keeps
//! forwarding with the last state it installed, and this thread retries with exponential
//! backoff (100 ms doubling to 5 s).

use crate::desired::document::Document;
use log::{info, warn};
use serde::Deserialize;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone)]
pub struct ControlPlane {
    /// Base URL, e.g. `http://127.0.0.1:8470`.
    pub url: String,
    /// This host's name in the control plane (ports are assigned to hosts).
    pub host: String,
    /// This host's credential (from a file or the environment, never the command line).
    pub token: String,
    /// PEM certificates that the control plane's certificate must chain to (https).
    pub ca: Option<Vec<u8>>,
    /// Register this host in the fleet before following (`--underlay-ipv4`, `--uplink`).
    pub register: Option<Registration>,
}

/// This host's place in the overlay, as it registers it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub underlay_ipv4: std::net::Ipv4Addr,
    pub uplink: String,
}

/// Never prints the token.
impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("host", &self.host)
            .field("token", &"<redacted>")
            .field("ca", &self.ca.is_some())
            .field("register", &self.register)
            .finish()
    }
}

/// Refuses a control-plane URL that would expose this host's token, before anything is
/// sent: plain `http://` to anything but loopback unless `insecure_http` (a lab, a test
/// network) says so, and `--ca` with an `http://` URL, which it could not protect.
pub fn check_transport(url: &str, ca: bool, insecure_http: bool) -> anyhow::Result<()> {
    use anyhow::bail;
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        anyhow::anyhow!("--control-plane {url}: give a URL such as https://cp:8470")
    })?;
    // host[:port][/path], the host possibly in [brackets] (IPv6).
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match scheme {
        "https" => Ok(()),
        "http" if ca => bail!(
            "--ca applies to https only, and --control-plane {url} is plain http: use https:// \
             (the control plane's --tls-cert), or leave --ca out"
        ),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|a| a.is_loopback());
            if loopback || insecure_http {
                Ok(())
            } else {
                bail!(
                    "refusing to send this host's token over plain http to {host}: use https:// \
                     with --ca (the control plane's --tls-cert), or --insecure-http on a \
                     network you trust (a lab, a test)"
                )
            }
        }
        other => bail!("--control-plane {url}: scheme {other} is neither https nor http"),
    }
}

/// The HTTP client the agent talks to the control plane with: long polls, and with `ca`,
/// TLS verified against those roots only.
pub fn client(cp: &ControlPlane) -> anyhow::Result<ureq::Agent> {
    let mut config =
        ureq::Agent::config_builder().timeout_global(Some(LONG_POLL + Duration::from_secs(10)));
    if let Some(pem) = &cp.ca {
        config = config.tls_config(trusting(pem)?);
    }
    Ok(config.build().into())
}

/// TLS that trusts the PEM certificates in `pem` (the `--ca` file) and nothing else.
pub fn trusting(pem: &[u8]) -> anyhow::Result<ureq::tls::TlsConfig> {
    use anyhow::Context;
    let certs = ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .context("reading the --ca certificates")?;
    if certs.is_empty() {
        anyhow::bail!("--ca holds no PEM certificate");
    }
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
        .build())
}

/// A new desired state.
pub struct Update {
    pub revision: u64,
    pub change: Change,
    /// When the control plane's answer arrived (for sync latency).
    pub received: Instant,
}

/// The whole document, or what changed since the revision the agent holds.
pub enum Change {
    Whole(Document),
    Delta {
        after: u64,
        delta: crate::desired::delta::Delta,
    },
}

/// The control plane's answer to `GET /v1/hosts/{host}/state`.
#[derive(Deserialize)]
pub struct StateResponse {
    pub revision: u64,
    document: Option<Document>,
    after: Option<u64>,
    delta: Option<crate::desired::delta::Delta>,
}

impl StateResponse {
    /// What the answer changes; `None` when it holds neither a document nor a delta.
    pub fn change(self) -> Option<Change> {
        match (self.document, self.after, self.delta) {
            (Some(doc), _, _) => Some(Change::Whole(doc)),
            (None, Some(after), Some(delta)) => Some(Change::Delta { after, delta }),
            _ => None,
        }
    }
}

/// Set by the agent when a delta did not fit what it holds: the next poll asks for the
/// whole document.
pub type NeedWhole = std::sync::Arc<std::sync::atomic::AtomicBool>;

const LONG_POLL: Duration = Duration::from_secs(25);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

fn fetch(
    agent: &ureq::Agent,
    cp: &ControlPlane,
    after: Option<u64>,
) -> Result<StateResponse, String> {
    let mut url = format!(
        "{}/v1/hosts/{}/state",
        cp.url.trim_end_matches('/'),
        cp.host
    );
    if let Some(a) = after {
        url.push_str(&format!(
            "?after={a}&delta=true&wait_ms={}",
            LONG_POLL.as_millis()
        ));
    }
    let mut resp = agent
        .get(&url)
        .header("authorization", &format!("Bearer {}", cp.token))
        .call()
        .map_err(|e| match e {
            ureq::Error::StatusCode(503) => {
                format!("GET {url}: the control plane cannot reach its store (HTTP 503)")
            }
            e => format!("GET {url}: the control plane is unreachable ({e})"),
        })?;
    resp.body_mut()
        .read_json::<StateResponse>()
        .map_err(|e| format!("GET {url}: reading the answer: {e}"))
}

/// Sleeps `backoff`, then doubles it (up to [`BACKOFF_MAX`]) for the next failure.
fn wait(backoff: &mut Duration) {
    std::thread::sleep(*backoff);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

/// `PUT /v1/hosts/{host}`: joins (or rejoins, idempotently) the fleet.
fn register(agent: &ureq::Agent, cp: &ControlPlane, r: &Registration) -> Result<(), String> {
    let url = format!("{}/v1/hosts/{}", cp.url.trim_end_matches('/'), cp.host);
    let body = serde_json::json!({
        "underlay_ipv4": r.underlay_ipv4.to_string(),
        "uplink": r.uplink,
    });
    match agent
        .put(&url)
        .header("authorization", &format!("Bearer {}", cp.token))
        .send_json(&body)
    {
        Ok(_) => Ok(()),
        // A refusal names what is wrong (an address in use, say): retrying will not help,
        // but the agent keeps retrying so that a fix on the control plane's side is seen.
        Err(ureq::Error::StatusCode(code)) => Err(format!("PUT {url}: HTTP {code}")),
        Err(e) => Err(format!("PUT {url}: {e}")),
    }
}

/// Starts the sync thread; new revisions arrive on the returned channel.
///
/// `stats.synced` says whether the control plane's last answer was a current view: it is
/// off while the control plane cannot be reached, or cannot reach its store (the agent
/// then keeps forwarding with what it installed last).
pub fn spawn(
    cp: ControlPlane,
    need_whole: NeedWhole,
    stats: super::metrics::SharedInstallStats,
) -> anyhow::Result<mpsc::Receiver<Update>> {
    let agent = client(&cp)?;
    let (tx, rx) = mpsc::channel(4);
    std::thread::Builder::new()
        .name("cp-sync".into())
        .spawn(move || {
            let mut after: Option<u64> = None;
            let mut backoff = BACKOFF_MIN;
            let mut failing = false;
            if let Some(r) = &cp.register {
                loop {
                    match register(&agent, &cp, r) {
                        Ok(()) => {
                            info!("registered host {} (underlay {}, uplink {})", cp.host, r.underlay_ipv4, r.uplink);
                            break;
                        }
                        Err(e) => {
                            warn!("cannot register in the fleet yet ({e}); retrying");
                            wait(&mut backoff);
                        }
                    }
                }
                backoff = BACKOFF_MIN;
            }
            loop {
                if need_whole.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    after = None;
                }
                let asked = Instant::now();
                match fetch(&agent, &cp, after) {
                    Ok(r) => {
                        if let Some(doc) = &r.document {
                            let routes: usize = doc.route_tables.iter().map(|t| t.routes.len()).sum();
                            info!(
                                "whole document of revision {} ({routes} routes) fetched in {:.1} ms",
                                r.revision,
                                asked.elapsed().as_secs_f64() * 1e3
                            );
                        }
                        if failing {
                            info!("synced again: the control plane answers at revision {}", r.revision);
                            failing = false;
                        }
                        stats.lock().unwrap().synced = true;
                        backoff = BACKOFF_MIN;
                        let revision = r.revision;
                        let Some(change) = r.change() else {
                                warn!("the control plane's answer holds neither a document nor a delta; asking for the whole document");
                                after = None;
                                wait(&mut backoff);
                                continue;
                        };
                        after = Some(revision);
                        let u = Update { revision, change, received: Instant::now() };
                        if tx.blocking_send(u).is_err() {
                            return; // the agent is stopping
                        }
                    }
                    Err(e) => {
                        if !failing {
                            let held = stats.lock().unwrap().revision;
                            warn!("unsynced: {e}; forwarding continues with the last installed state (revision {held})");
                            failing = true;
                        }
                        stats.lock().unwrap().synced = false;
                        wait(&mut backoff);
                    }
                }
            }
        })
        .expect("spawning the control-plane sync thread");
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback_or_when_told() {
        for ok in [
            ("https://cp:8470", true, false),
            ("https://192.0.2.1:8470", false, false),
            ("http://127.0.0.1:8470", false, false),
            ("http://localhost:8470/", false, false),
            ("http://[::1]:8470", false, false),
            ("http://192.0.2.1:8470", false, true),
        ] {
            assert!(check_transport(ok.0, ok.1, ok.2).is_ok(), "{ok:?}");
        }
        let e = check_transport("http://192.0.2.1:8470", false, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain http to 192.0.2.1") && e.contains("--insecure-http"),
            "{e}"
        );
        let e = check_transport("http://127.0.0.1:8470", true, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca applies to https only"), "{e}");
        assert!(check_transport("ftp://cp", false, true).is_err());
        assert!(check_transport("cp:8470", false, true).is_err());
    }
}
