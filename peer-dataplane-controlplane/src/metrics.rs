//! The control plane's own counters, served as Prometheus text on `GET /metrics`: what
//! the listener refused, which clients missed their deadlines, failed authentications
//! and the requests refused for them, and token reloads. Nothing here names a token.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    connections_refused: IntCounterVec,
    client_deadlines: IntCounterVec,
    tls_handshake_failures: IntCounter,
    auth_failures: IntCounter,
    auth_throttled: IntCounter,
    rate_limited: IntCounter,
    token_reloads: IntCounterVec,
    account_tokens: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let one = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("a valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let account_tokens = IntGauge::new(
            "pdp_controlplane_account_tokens",
            "Account tokens this replica accepts.",
        )
        .expect("a valid metric");
        registry
            .register(Box::new(account_tokens.clone()))
            .expect("registered once");
        Metrics {
            connections_refused: vec(
                "pdp_controlplane_connections_refused_total",
                "Connections closed on accept because their source address held its limit.",
                "reason",
            ),
            client_deadlines: vec(
                "pdp_controlplane_client_deadlines_total",
                "Connections closed because the client did not complete a stage in time.",
                "stage",
            ),
            tls_handshake_failures: one(
                "pdp_controlplane_tls_handshake_failures_total",
                "TLS handshakes that failed (not TLS, or a client that does not trust us).",
            ),
            auth_failures: one(
                "pdp_controlplane_auth_failures_total",
                "Requests answered 401: no token, or one that is not known.",
            ),
            auth_throttled: one(
                "pdp_controlplane_auth_throttled_total",
                "Requests answered 429 because their source address failed to authenticate too often.",
            ),
            rate_limited: one(
                "pdp_controlplane_rate_limited_total",
                "Requests answered 429 because their credential spent its request rate.",
            ),
            token_reloads: vec(
                "pdp_controlplane_token_reloads_total",
                "Reloads of the tokens files (at start and on SIGHUP), by outcome.",
                "outcome",
            ),
            account_tokens,
            registry,
        }
    }

    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    pub fn client_deadline(&self, stage: &str) {
        self.client_deadlines.with_label_values(&[stage]).inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    pub fn auth_throttled(&self) {
        self.auth_throttled.inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn token_reload(&self, ok: bool) {
        self.token_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn set_account_tokens(&self, n: usize) {
        self.account_tokens.set(n as i64);
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of counters");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
