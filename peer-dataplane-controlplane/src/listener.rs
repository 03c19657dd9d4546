//! The API's listener. Every accepted connection is served in a task of its own, so that
//! nothing a client does, or fails to do, holds the accept loop or the other clients:
//!
//! - a TLS handshake must complete within the client deadline;
//! - a request's headers must arrive within the client deadline, and a kept-alive
//!   connection that sends no next request is closed after it too;
//! - one source address may hold only so many connections open and so many TLS
//!   handshakes in flight; past that its new connections are closed at once.
//!
//! A silent or trickling client (slowloris) thus costs one task and one socket until
//! its deadline, and nothing else. Each refusal and each deadline is counted in the
//! metrics (`pdp_controlplane_connections_refused_total`, `…_client_deadlines_total`).

use crate::metrics::Metrics;
use anyhow::Result;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use log::debug;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// What one client may hold, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A TLS handshake, and each request's headers, must complete within this; an idle
    /// kept-alive connection is closed after it.
    pub client_deadline: Duration,
    /// Connections one source address may hold open at once.
    pub connections_per_source: usize,
    /// TLS handshakes one source address may have in flight at once.
    pub handshakes_per_source: usize,
}

impl Default for Limits {
    /// A fleet's agents come from one address each; a benchmark's simulated agents and
    /// clients share loopback, hence the room (`--max-connections-per-source`).
    fn default() -> Self {
        Limits {
            client_deadline: Duration::from_secs(10),
            connections_per_source: 512,
            handshakes_per_source: 32,
        }
    }
}

/// How long a stopping server waits for requests in progress (long polls are told to
/// end; a request that is committing finishes).
const DRAIN: Duration = Duration::from_secs(3);

/// Serves `app` on `tcp` (over TLS with `tls`) until `stop` completes.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    let connections = PerSource::new();
    let handshakes = PerSource::new();
    // Connections are told to close when this flips; each holds a sender of `open`.
    let (closing, closing_rx) = watch::channel(false);
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    tokio::pin!(stop);
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut stop => break,
            accepted = tcp.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    debug!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = connections.claim(addr.ip(), limits.connections_per_source) else {
            debug!(
                "{addr}: {} connections already open from that address; closed",
                limits.connections_per_source
            );
            metrics.connection_refused("connections-per-source");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            addr,
            limits,
            metrics: metrics.clone(),
            closing: closing_rx.clone(),
        };
        let (acceptor, handshakes, open) = (acceptor.clone(), handshakes.clone(), open.clone());
        tokio::spawn(async move {
            let _open = open;
            let _slot = slot;
            let Some(acceptor) = acceptor else {
                return conn.serve(stream).await;
            };
            let Some(handshaking) = handshakes.claim(addr.ip(), limits.handshakes_per_source)
            else {
                debug!(
                    "{addr}: {} TLS handshakes already in flight from that address; closed",
                    limits.handshakes_per_source
                );
                conn.metrics.connection_refused("handshakes-per-source");
                return;
            };
            let handshake =
                tokio::time::timeout(limits.client_deadline, acceptor.accept(stream)).await;
            drop(handshaking);
            match handshake {
                Ok(Ok(tls)) => conn.serve(tls).await,
                Ok(Err(e)) => {
                    debug!("TLS handshake with {addr} failed: {e}");
                    conn.metrics.tls_handshake_failed();
                }
                Err(_) => {
                    debug!(
                        "TLS handshake with {addr}: no handshake within {:?}",
                        limits.client_deadline
                    );
                    conn.metrics.client_deadline("tls-handshake");
                }
            }
        });
    }
    // Stop accepting, tell every connection to finish what it is doing, and wait (a
    // little) for them.
    drop(tcp);
    let _ = closing.send(true);
    drop(open);
    let _ = tokio::time::timeout(DRAIN, all_closed.recv()).await;
    Ok(())
}

/// One accepted connection, past its handshake.
struct Connection {
    app: Router,
    addr: SocketAddr,
    limits: Limits,
    metrics: Arc<Metrics>,
    closing: watch::Receiver<bool>,
}

impl Connection {
    /// Serves HTTP/1.1 requests on `io` until the client leaves, misses a deadline, or
    /// the server stops.
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, addr) = (self.app.clone(), self.addr);
        // Handlers see the source address (`ConnectInfo`), as with axum's own server.
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(addr));
                tower::ServiceExt::oneshot(app.clone(), req)
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.client_deadline);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = async { self.closing.wait_for(|c| *c).await.map(|_| ()) } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                debug!(
                    "{addr}: no complete request headers within {:?}; closed",
                    self.limits.client_deadline
                );
                self.metrics.client_deadline("headers");
            } else {
                debug!("{addr}: {e}");
            }
        }
    }
}

/// How many of something each source address holds.
#[derive(Clone)]
struct PerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One held by a source; given back when dropped.
struct Slot {
    of: PerSource,
    ip: IpAddr,
}

impl PerSource {
    fn new() -> PerSource {
        PerSource(Arc::default())
    }

    /// One more for `ip`, unless it already holds `max`.
    fn claim(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            of: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.of.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_share_and_gets_it_back() {
        let p = PerSource::new();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = p.claim(a, 2).unwrap();
        let _second = p.claim(a, 2).unwrap();
        assert!(p.claim(a, 2).is_none(), "a third for the same source");
        assert!(p.claim(b, 2).is_some(), "another source has its own share");
        drop(first);
        assert!(
            p.claim(a, 2).is_some(),
            "a slot given back can be claimed again"
        );
    }
}
