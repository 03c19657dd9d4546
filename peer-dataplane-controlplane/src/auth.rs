//! Who may call the control plane, and how often.
//!
//! - Accounts present a bearer token; a host's agent presents its own host's token and may
//!   read that host's state only. Both come from files (`--account-tokens`,
//!   `--host-tokens`), which are the truth: at start and on SIGHUP the accepted set
//!   becomes exactly the files' set, so removing a line revokes that token.
//! - Account tokens are kept in the store (every replica of a shared store accepts them)
//!   as keyed hashes only: HMAC-SHA256 under a random key kept beside them
//!   ([`TokenHashes`]). A dump of the store holds no token, and a presented token is
//!   hashed once and looked up, so the lookup's time says nothing about the token.
//! - Host tokens stay in memory only, compared in constant time against every known one.
//! - Each credential has a token bucket of requests; past it the API answers `429` with
//!   `Retry-After`, and the request changes nothing. Failed authentications have a bucket
//!   per source address: once it is spent, that address gets `429` for everything until
//!   it refills, so guessing tokens is slow and costs the other clients nothing.
//! - Secrets never come from the command line (where `ps` shows them): files, or the
//!   environment; they are never logged.

use anyhow::{anyhow, bail, Context, Result};
use ring::hmac;
use serde::{Deserialize, Serialize};
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

/// Account tokens as the store keeps them: the HMAC-SHA256 of each token under `key`,
/// never the token. The key is random, made once per store and kept beside the hashes,
/// so hashes from one installation say nothing about another's (no precomputed tables).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenHashes {
    /// The HMAC key, hex.
    pub key: String,
    /// Hash (hex) -> account.
    pub accounts: BTreeMap<String, String>,
}

impl TokenHashes {
    /// No tokens yet, under a fresh random key.
    pub fn new() -> Result<TokenHashes> {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| anyhow!("the system's random source failed"))?;
        Ok(TokenHashes {
            key: hex(&key),
            accounts: BTreeMap::new(),
        })
    }

    /// `tokens` (account -> token) hashed under this set's key, replacing what it held.
    pub fn replaced_by(&self, tokens: &BTreeMap<String, String>) -> Result<TokenHashes> {
        let mut out = TokenHashes {
            key: self.key.clone(),
            accounts: BTreeMap::new(),
        };
        for (account, token) in tokens {
            out.insert(account, token)?;
        }
        Ok(out)
    }

    /// Adds (or moves to `account`) one token.
    pub fn insert(&mut self, account: &str, token: &str) -> Result<()> {
        let h = self.hash(token)?;
        self.accounts.insert(h, account.to_string());
        Ok(())
    }

    /// The account `token` belongs to.
    pub fn account_of(&self, token: &str) -> Option<&String> {
        self.accounts.get(&self.hash(token).ok()?)
    }

    fn hash(&self, token: &str) -> Result<String> {
        let key = unhex(&self.key).ok_or_else(|| anyhow!("the stored token key is not hex"))?;
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), token.as_bytes());
        Ok(hex(tag.as_ref()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

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

impl RateLimit {
    /// Failed authentications one source address may make: a burst of 20, then one a
    /// second (an operator's typo costs nothing; a guesser gets 429s).
    pub const AUTH_FAILURES: RateLimit = RateLimit {
        per_second: 1.0,
        burst: 20.0,
    };
}

/// A token bucket per key (a credential, or a source address).
pub struct Limiter {
    inner: Mutex<(RateLimit, BTreeMap<String, (f64, Instant)>)>,
}

impl Limiter {
    pub fn new(limit: RateLimit) -> Limiter {
        Limiter {
            inner: Mutex::new((limit, BTreeMap::new())),
        }
    }

    /// From now on, `limit` (buckets start over).
    pub fn set_limit(&self, limit: RateLimit) {
        *self.inner.lock().unwrap() = (limit, BTreeMap::new());
    }

    /// Spends one of `who`'s; `Err(seconds until the next one)` if none is left.
    pub fn spend(&self, who: &str, now: Instant) -> Result<(), u64> {
        let mut g = self.inner.lock().unwrap();
        let (limit, buckets) = &mut *g;
        let tokens = Self::refill(limit, buckets, who, now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Self::wait(limit, *tokens))
        }
    }

    /// `Err(seconds until one is left)` if `who` has none left now; spends nothing.
    pub fn check(&self, who: &str, now: Instant) -> Result<(), u64> {
        let mut g = self.inner.lock().unwrap();
        let (limit, buckets) = &mut *g;
        let tokens = *Self::refill(limit, buckets, who, now);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Self::wait(limit, tokens))
        }
    }

    /// Forgets the buckets that are full again (they would start full anyway): a bucket
    /// per source address must not grow without bound.
    pub fn prune(&self, now: Instant) {
        let mut g = self.inner.lock().unwrap();
        let (limit, buckets) = &mut *g;
        buckets.retain(|_, (tokens, at)| {
            *tokens + now.saturating_duration_since(*at).as_secs_f64() * limit.per_second
                < limit.burst
        });
    }

    fn refill<'a>(
        limit: &RateLimit,
        buckets: &'a mut BTreeMap<String, (f64, Instant)>,
        who: &str,
        now: Instant,
    ) -> &'a mut f64 {
        let (tokens, at) = buckets.entry(who.to_string()).or_insert((limit.burst, now));
        let refill = now.saturating_duration_since(*at).as_secs_f64() * limit.per_second;
        *tokens = (*tokens + refill).min(limit.burst);
        *at = now;
        tokens
    }

    fn wait(limit: &RateLimit, tokens: f64) -> u64 {
        ((1.0 - tokens) / limit.per_second).ceil().max(1.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_hashes_find_the_account_and_hold_no_token() {
        let mut tokens = BTreeMap::new();
        tokens.insert("111".to_string(), "0123456789abcdef".to_string());
        tokens.insert("222".to_string(), "fedcba9876543210".to_string());
        let empty = TokenHashes::new().unwrap();
        let h = empty.replaced_by(&tokens).unwrap();
        assert_eq!(
            h.account_of("fedcba9876543210").map(String::as_str),
            Some("222")
        );
        assert_eq!(h.account_of("fedcba987654321"), None);
        let stored = serde_json::to_string(&h).unwrap();
        assert!(
            !stored.contains("0123456789abcdef") && !stored.contains("fedcba"),
            "{stored}"
        );
        // Another store's key: other hashes for the same tokens.
        let other = TokenHashes::new().unwrap().replaced_by(&tokens).unwrap();
        assert!(other.accounts.keys().all(|k| !h.accounts.contains_key(k)));
        // Replacing drops what the new set lacks.
        tokens.remove("111");
        let fewer = h.replaced_by(&tokens).unwrap();
        assert_eq!(fewer.account_of("0123456789abcdef"), None);
        assert_eq!(fewer.key, h.key);
    }

    #[test]
    fn a_spent_bucket_is_checked_without_spending_and_pruned_once_full() {
        let l = Limiter::new(RateLimit {
            per_second: 1.0,
            burst: 2.0,
        });
        let t0 = Instant::now();
        assert!(l.spend("10.0.0.1", t0).is_ok());
        assert!(l.spend("10.0.0.1", t0).is_ok());
        assert_eq!(l.check("10.0.0.1", t0), Err(1));
        assert!(l.check("10.0.0.2", t0).is_ok());
        l.prune(t0);
        assert_eq!(l.check("10.0.0.1", t0), Err(1), "a spent bucket is kept");
        l.prune(t0 + Duration::from_secs(3));
        assert_eq!(
            l.inner.lock().unwrap().1.len(),
            0,
            "full buckets are forgotten"
        );
    }

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
