//! HTTPS for the control plane's API: a listener that completes a rustls handshake on
//! every accepted connection before axum sees it. Each handshake runs in a task of its
//! own, off the accept loop, with a deadline, and a source address may have only so many
//! in flight: a client that connects and stays silent, or sends its ClientHello a byte at
//! a time, costs the others nothing. A failed handshake (a port scanner, a client that
//! does not trust us) is logged and dropped; it never stops the listener.

use anyhow::{anyhow, Context, Result};
use log::debug;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The server's TLS configuration from a PEM certificate chain and its PEM private key.
pub fn config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading --tls-cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing --tls-cert {}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "--tls-cert {} holds no PEM certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a PEM private key from --tls-key {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the --tls-key does not match the --tls-cert")?;
    Ok(Arc::new(config))
}

/// How long a client may take to complete its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshakes in flight from one source address; more connections are closed at once.
const HANDSHAKES_PER_SOURCE: usize = 32;

pub struct TlsListener {
    local: std::io::Result<SocketAddr>,
    /// Connections whose handshake completed, from the accept task.
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp` (on the current tokio runtime).
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        let local = tcp.local_addr();
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        TlsListener { local, ready }
    }
}

/// Accepts connections and hands each to a handshake task, as long as its source has
/// fewer than [`HANDSHAKES_PER_SOURCE`] in flight.
async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let in_flight: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                debug!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return; // the server is gone
        }
        let ip = addr.ip();
        {
            let mut m = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_default();
            if *n >= HANDSHAKES_PER_SOURCE {
                debug!("{addr}: {n} TLS handshakes already in flight from {ip}; closed");
                continue;
            }
            *n += 1;
        }
        let (acceptor, ready, in_flight) = (acceptor.clone(), ready.clone(), in_flight.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await;
            {
                let mut m = in_flight.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = m.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&ip);
                    }
                }
            }
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, addr)).await;
                }
                Ok(Err(e)) => debug!("TLS handshake with {addr} failed: {e}"),
                Err(_) => debug!("TLS handshake with {addr} timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(x) => x,
            // The accept task ended (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local {
            Ok(a) => Ok(*a),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
