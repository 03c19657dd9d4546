//! Who may call the control plane, and how often.
//!
//! - Accounts present a bearer token (registered from a file, kept in the store); a host's
//!   agent presents its own host's token and may read that host's state only.
//! - Tokens are compared in constant time, against every known token (no early exit), so
//!   that response times say nothing about how much of a guess was right.
//! - Each credential has a token bucket of requests; past it the API answers `429` with
//!   `Retry-After`, and the request changes nothing.
//! - Secrets never come from the command line (where `ps` shows them): files, or the
//!   environment.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Equal bytes, in time that depends on the lengths only.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

/// The name `token` belongs to in `tokens` (name -> token), looked up in constant time.
pub fn find<'a>(
    tokens: impl IntoIterator<Item = (&'a String, &'a String)>,
    token: &str,
) -> Option<&'a String> {
    let mut found = None;
    for (name, t) in tokens {
        if ct_eq(t.as_bytes(), token.as_bytes()) {
            found = Some(name);
        }
    }
    found
}

/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// `NAME:TOKEN` pairs, one a line (blank lines and `#` comments ignored), from `path`.
pub fn read_pairs(path: &Path, what: &str) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} from {}", path.display()))?;
    parse_pairs(&text).with_context(|| format!("{what} in {}", path.display()))
}

pub fn parse_pairs(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, token)) = line.split_once(':') else {
            bail!("line {}: expected NAME:TOKEN", i + 1);
        };
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty() {
            bail!("line {}: the name is empty", i + 1);
        }
        if token.len() < MIN_TOKEN_LEN {
            bail!(
                "line {} ({name}): the token is {} characters; at least {MIN_TOKEN_LEN} are required",
                i + 1,
                token.len()
            );
        }
        if out.insert(name.to_string(), token.to_string()).is_some() {
            bail!("line {}: {name} is listed twice", i + 1);
        }
    }
    Ok(out)
}

/// Requests per second and burst, per credential.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for RateLimit {
    /// Far above what an operator's scripts or an agent need, far below a flood.
    fn default() -> Self {
        RateLimit {
            per_second: 100.0,
            burst: 200.0,
        }
    }
}

/// A token bucket per credential.
pub struct Limiter {
    limit: RateLimit,
    buckets: Mutex<BTreeMap<String, (f64, Instant)>>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter {
            limit,
            buckets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Spends one request of `who`'s; `Err(seconds until the next one)` if none is left.
    pub fn spend(&self, who: &str, now: Instant) -> Result<(), u64> {
        let mut b = self.buckets.lock().unwrap();
        let (tokens, at) = b.entry(who.to_string()).or_insert((self.limit.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * self.limit.per_second;
        *tokens = (*tokens + refill).min(self.limit.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.limit.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn constant_time_lookup_finds_the_owner() {
        let mut t = BTreeMap::new();
        t.insert("a".to_string(), "0123456789abcdef".to_string());
        t.insert("b".to_string(), "fedcba9876543210".to_string());
        assert_eq!(find(&t, "fedcba9876543210").map(String::as_str), Some("b"));
        assert_eq!(find(&t, "fedcba987654321"), None);
        assert_eq!(find(&t, ""), None);
        assert!(!ct_eq(b"abc", b"abd"));
    }

    #[test]
    fn pairs_files_say_what_is_wrong() {
        assert!(
            parse_pairs("a:0123456789abcdef\n# c\n\nb: fedcba9876543210 \n")
                .unwrap()
                .len()
                == 2
        );
        let e = parse_pairs("host-1:short").unwrap_err().to_string();
        assert!(
            e.contains("line 1 (host-1): the token is 5 characters"),
            "{e}"
        );
        let e = parse_pairs("nocolon").unwrap_err().to_string();
        assert!(e.contains("line 1: expected NAME:TOKEN"), "{e}");
        let e = parse_pairs("a:0123456789abcdef\na:0123456789abcdeg")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: a is listed twice"), "{e}");
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let l = Limiter::new(RateLimit {
            per_second: 10.0,
            burst: 3.0,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.spend("a", t0).is_ok());
        }
        assert_eq!(l.spend("a", t0), Err(1));
        // Another credential has its own bucket.
        assert!(l.spend("b", t0).is_ok());
        // 100 ms later one request has refilled, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.spend("a", t1).is_ok());
        assert!(l.spend("a", t1).is_err());
    }
}
