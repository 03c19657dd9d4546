//! Who is calling: the bearer token's account or host, the per-caller request budget, the
//! account tokens (kept as hashes in the store, followed by every replica) and the hosts'
//! credentials, and the failed-authentication limit per source address.

use super::*;

impl Server {
    pub(super) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer(headers)?;
        // A known credential on the wrong door is forbidden, not unknown: it is no guess,
        // and does not count against its address's failed authentications.
        let account = match self.account_of(token) {
            Some(a) => a,
            None if self.host_of(token).is_some() => {
                return Err(ApiError::forbidden(
                    "a host's token opens only that host's state and registration",
                ))
            }
            None => return Err(ApiError::unauthorized("the bearer token is not known")),
        };
        self.spend(&format!("account {account}"))?;
        Ok(Caller { account })
    }

    /// The account `token` belongs to, if it is accepted now.
    pub fn account_of(&self, token: &str) -> Option<String> {
        self.inner.lock().unwrap().tokens.account_of(token).cloned()
    }

    /// The host whose agent holds `token`, compared in constant time with every host's.
    pub(super) fn host_of(&self, token: &str) -> Option<String> {
        auth::find(self.host_tokens.lock().unwrap().iter(), token).cloned()
    }

    /// One request of credential `who`'s rate; `429` once it is spent.
    pub(super) fn spend(&self, who: &str) -> Result<(), ApiError> {
        self.limiter
            .spend(who, std::time::Instant::now())
            .map_err(|retry_after| {
                self.metrics.rate_limited();
                ApiError::rate_limited(format!(
                    "too many requests for {who}: retry in {retry_after} s"
                ))
            })
    }

    /// The control plane's counters.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// From now on, `limit` failed authentications per source address.
    pub fn limit_auth_failures(&self, limit: auth::RateLimit) {
        self.auth_failures.set_limit(limit);
    }

    /// How many account tokens this replica accepts.
    pub fn account_tokens(&self) -> usize {
        self.inner.lock().unwrap().tokens.accounts.len()
    }

    /// Makes `tokens` (account -> token) exactly the accepted account tokens, in the
    /// store (hashed) and here; a shared store's other replicas follow within its watch.
    /// Returns whether anything changed.
    pub fn set_account_tokens(&self, tokens: &BTreeMap<String, String>) -> anyhow::Result<bool> {
        self.change_tokens(|stored| stored.replaced_by(tokens))
    }

    /// Registers (or moves) one account token beside the others (the in-process tests'
    /// way; a control plane's set comes whole from its file, see `set_account_tokens`).
    pub fn add_token(&self, account: &str, token: &str) -> anyhow::Result<()> {
        self.change_tokens(|stored| {
            let mut t = stored.clone();
            t.insert(account, token)?;
            Ok(t)
        })
        .map(|_| ())
    }

    /// Applies `change` to the account tokens as stored (under the key already there:
    /// another replica may have written since), writes the result if it differs, and makes
    /// it this replica's. Returns whether anything changed (the store or this replica).
    pub(super) fn change_tokens(
        &self,
        change: impl FnOnce(&auth::TokenHashes) -> anyhow::Result<auth::TokenHashes>,
    ) -> anyhow::Result<bool> {
        let mut inner = self.inner.lock().unwrap();
        let stored = inner
            .store
            .token_hashes()?
            .unwrap_or_else(|| inner.tokens.clone());
        let new = change(&stored)?;
        let written = new != stored;
        if written {
            inner.store.put_token_hashes(&new)?;
        }
        let changed = written || new != inner.tokens;
        inner.tokens = new;
        self.metrics.set_account_tokens(inner.tokens.accounts.len());
        Ok(changed)
    }

    /// Makes `tokens` (host -> token) exactly the accepted host tokens.
    pub fn set_host_tokens(&self, tokens: BTreeMap<String, String>) {
        *self.host_tokens.lock().unwrap() = tokens;
    }

    /// Another replica replaced the account tokens.
    pub(super) fn adopt_tokens(&self, tokens: auth::TokenHashes) {
        let mut inner = self.inner.lock().unwrap();
        if inner.tokens != tokens {
            log::info!(
                "the account tokens changed in the store: {} accepted",
                tokens.accounts.len()
            );
        }
        inner.tokens = tokens;
        self.metrics.set_account_tokens(inner.tokens.accounts.len());
    }

    /// Reads the account tokens from the store again (after a watch that missed events).
    pub(super) fn reread_tokens(&self) {
        let got = self.inner.lock().unwrap().store.token_hashes();
        match got {
            Ok(Some(t)) => self.adopt_tokens(t),
            Ok(None) => {}
            Err(e) => log::warn!("reading the account tokens again: {e:#}"),
        }
    }

    /// A source address's failed authentications: `Err(seconds)` while it may make no
    /// more; spends nothing.
    pub(super) fn auth_failures_left(&self, source: &str) -> Result<(), u64> {
        self.auth_failures.check(source, std::time::Instant::now())
    }

    /// Counts one failed authentication of `source`'s.
    pub(super) fn auth_failed(&self, source: &str) {
        self.metrics.auth_failed();
        if self
            .auth_failures
            .spend(source, std::time::Instant::now())
            .is_ok()
            && self.auth_failures_left(source).is_err()
        {
            log::warn!("{source}: too many failed authentications; its requests are answered 429 for a while");
        }
    }

    /// Forgets the request and failure buckets that have refilled (sweeps call this).
    pub(super) fn prune_limits(&self) {
        let now = std::time::Instant::now();
        self.limiter.prune(now);
        self.auth_failures.prune(now);
    }
}

/// Refuses, with `429`, every request from a source address that has failed to
/// authenticate too often (before its token is even looked at, so that a guesser learns
/// nothing while refused), and counts each `401` against its source.
pub(super) async fn guard_auth_failures(
    State(s): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // Requests come through [`crate::listener`], which names their source; the in-process
    // tests' requests have none and share one bucket.
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(
            || "an unknown address".to_string(),
            |c| c.0.ip().to_string(),
        );
    if let Err(retry) = s.auth_failures_left(&source) {
        s.metrics.auth_throttled();
        let e = ApiError::rate_limited(format!(
            "too many failed authentications from {source}: retry in {retry} s"
        ));
        let mut resp = e.into_response();
        resp.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, retry.into());
        return resp;
    }
    let resp = next.run(req).await;
    if resp.status() == StatusCode::UNAUTHORIZED {
        log::debug!("{source}: authentication failed");
        s.auth_failed(&source);
    }
    resp
}

pub(super) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing \"Authorization: Bearer <token>\" header"))
}
