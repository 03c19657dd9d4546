//! The distributed store: etcd v3. Each object is one key, `PREFIX/objects/KIND/ID`, holding
//! its JSON; the account tokens' hashes are one key, `PREFIX/account-token-hashes` (JSON
//! of [`TokenHashes`]: no token is ever a key or a value). A commit is one etcd transaction
//! that writes exactly the objects that changed, guarded by the key `PREFIX/revision`: it
//! applies only if nobody committed since this replica last read or wrote, so two replicas
//! never lose each other's updates (the second is refused and must re-read). The revision
//! a commit returns is etcd's.
//!
//! The store is called from the API's synchronous critical section; it runs the etcd client
//! on a runtime of its own, from a short-lived thread per call (a runtime cannot be entered
//! from a thread that is already running one).

use super::rows::{assemble, rows};
use super::{ObjectStore, StaleRead, StoreEvent};
use crate::auth::TokenHashes;
use crate::world::*;
use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use std::time::Duration;

mod access;
mod watch;

pub use access::EtcdAccess;
use watch::watch;

pub struct EtcdStore {
    /// Always `Some` until dropped (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    prefix: String,
    /// etcd's revision of the guard key as this replica last saw it (0: never read, or
    /// never written).
    guard: i64,
    /// This replica's claim to expire pending peerings: the lease the key
    /// `PREFIX/sweeper` is held under, while it is held.
    sweeper_lease: Option<i64>,
    /// Who this replica is, in the sweeper key (host and process).
    name: String,
    /// Members given (a request that could not connect is tried on another).
    members: usize,
    /// Commits this replica has made (names each in the guard key).
    commits: u64,
}

/// An error of connecting to a member: the request was not sent.
fn never_sent(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<etcd_client::Error>(),
        Some(etcd_client::Error::GRpcStatus(s))
            if s.code() == tonic::Code::Unavailable && s.message().contains("connect")
    )
}

/// The cluster could not answer (a member down, no leader yet, a proposal that timed out
/// while a new leader was elected): whether the request was carried out is not known.
/// etcd reports the last as `Unknown` with the server's timeout in the message.
fn unavailable(e: &anyhow::Error) -> bool {
    let Some(etcd_client::Error::GRpcStatus(s)) = e.downcast_ref::<etcd_client::Error>() else {
        return false;
    };
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => true,
        tonic::Code::Unknown => [
            "context deadline exceeded",
            "request timed out",
            "leader changed",
            "no leader",
        ]
        .iter()
        .any(|m| s.message().contains(m)),
        _ => false,
    }
}

/// The key (under the prefix) of the account tokens' hashes.
const TOKEN_HASHES: &str = "account-token-hashes";
/// Where older versions kept account tokens in plain text, one key each.
const PLAIN_TOKENS: &str = "tokens/";

/// Largest answer taken from etcd.
const MAX_MESSAGE: usize = 512 << 20;

/// How long a replica's claim to sweep outlives its last renewal (sweeps run every 10 s).
pub const SWEEPER_TTL_SECS: i64 = 15;

/// etcd no longer knows this replica's auth token (a member restarted, or the token's
/// time to live ran out): authenticate again.
fn token_expired(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<etcd_client::Error>(),
        Some(etcd_client::Error::GRpcStatus(s))
            if s.code() == tonic::Code::Unauthenticated
                || s.message().contains("invalid auth token")
    )
}

impl EtcdStore {
    /// Connects to `endpoints` (`host:port`, any member of the cluster) under `prefix`.
    pub fn connect(endpoints: &[String], prefix: &str) -> Result<EtcdStore> {
        Self::connect_with(endpoints, prefix, &EtcdAccess::default())
    }

    /// [`Self::connect`] with TLS and/or etcd's authentication.
    pub fn connect_with(
        endpoints: &[String],
        prefix: &str,
        access: &EtcdAccess,
    ) -> Result<EtcdStore> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()?;
        let eps = endpoints.to_vec();
        // Fail fast on a member that is down (the client moves on to another), and notice
        // a dead connection within seconds (keepalive pings), not at the next write.
        let options = access
            .options()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        // One read at once: a wrong scheme, CA, certificate or password shows here, at
        // start, not at the first call.
        let probe = format!("{}/revision", prefix.trim_end_matches('/'));
        let members = eps.len();
        let connected = run(&rt, async move {
            let mut c = Client::connect(eps, Some(options)).await?;
            // A member that is down is skipped, as `kv_call` does.
            let mut attempt = 0;
            loop {
                attempt += 1;
                match c.get(probe.clone(), None).await {
                    Ok(_) => return Ok::<_, anyhow::Error>(c),
                    Err(e) => {
                        let e = anyhow::Error::new(e);
                        if attempt > members || !never_sent(&e) {
                            return Err(e);
                        }
                    }
                }
            }
        });
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                // The caller may be inside another runtime, where this one cannot be
                // dropped in place.
                rt.shutdown_background();
                return Err(e).with_context(|| {
                    format!(
                        "connecting to etcd at {}{}",
                        endpoints.join(","),
                        if access.ca.is_some() {
                            " over TLS"
                        } else {
                            " over plain http (no --etcd-ca)"
                        }
                    )
                });
            }
        };
        // No read yet: the first `load` notes what this replica has seen (a commit
        // before any load is refused if anybody has written).
        Ok(EtcdStore {
            rt: Some(rt),
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
            guard: 0,
            sweeper_lease: None,
            members: endpoints.len(),
            commits: 0,
            name: format!(
                "{}/{}",
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_default(),
                std::process::id()
            ),
        })
    }

    /// Parses `etcd://h1:2379,h2:2379[/prefix]`.
    pub fn parse_url(url: &str) -> Result<(Vec<String>, String)> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            anyhow!("store {url:?}: an etcd store is etcd://HOST:PORT[,HOST:PORT...][/PREFIX]")
        })?;
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) if !p.trim_matches('/').is_empty() => {
                (h, format!("/{}", p.trim_matches('/')))
            }
            Some((h, _)) => (h, "/pdp".to_string()),
            None => (rest, "/pdp".to_string()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            bail!("store {url:?}: no etcd endpoint");
        }
        Ok((endpoints, prefix))
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    /// A KV client that takes answers as large as a whole region (100,000 routes are
    /// about 10 MB; gRPC's default limit is 4 MB).
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Runs `op` on a KV client, again (once per member at most) when it could not connect
    /// to the member it was sent to: such a request never left this process, so trying
    /// another member is safe, even for a write. Any other failure is the caller's.
    fn kv_call<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send,
        F: Fn(etcd_client::KvClient) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let mut attempt = 0;
        let mut authenticated_again = false;
        loop {
            attempt += 1;
            match run(self.rt(), op(self.kv())) {
                Err(e) if attempt <= self.members && never_sent(&e) => continue,
                // Refused before it was carried out: safe to send again, once.
                Err(e) if !authenticated_again && token_expired(&e) => {
                    authenticated_again = true;
                    let c = self.client.clone();
                    run(self.rt(), async move { c.refresh_token().await })
                        .context("authenticating to etcd again")?;
                }
                r => return r,
            }
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.prefix)
    }

    /// Every key under `PREFIX/rest` (key without the prefix, value), and etcd's revision.
    fn range(&self, rest: &str) -> Result<(Vec<(String, String)>, i64)> {
        let start = self.key(rest);
        let resp = self.kv_call(|mut c| {
            let s = start.clone();
            async move { c.get(s, Some(GetOptions::new().with_prefix())).await }
        })?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut out = Vec::new();
        for kv in resp.kvs() {
            let k = kv
                .key_str()?
                .strip_prefix(&start)
                .unwrap_or_default()
                .to_string();
            out.push((k, kv.value_str()?.to_string()));
        }
        Ok((out, revision))
    }
}

impl EtcdStore {
    /// Renews this replica's claim to sweep, or makes one if nobody holds it.
    fn claim_sweeps(&mut self) -> Result<bool> {
        if let Some(lease) = self.sweeper_lease {
            let mut c = self.client.clone();
            let ttl = run(self.rt(), async move {
                let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok::<_, etcd_client::Error>(stream.message().await?.map_or(0, |r| r.ttl()))
            })?;
            if ttl > 0 {
                return Ok(true);
            }
            self.sweeper_lease = None; // ran out: claim again, like anyone
        }
        let key = self.key("sweeper");
        let name = self.name.clone();
        let mut c = self.client.clone();
        let (held, lease) = run(self.rt(), async move {
            let lease = c.lease_grant(SWEEPER_TTL_SECS, None).await?.id();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    name,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let held = c.txn(txn).await?.succeeded();
            if !held {
                c.lease_revoke(lease).await?;
            }
            Ok::<_, etcd_client::Error>((held, lease))
        })?;
        if held {
            self.sweeper_lease = Some(lease);
            log::info!("this replica expires pending peerings now (etcd lease {lease:x})");
        }
        Ok(held)
    }
}

/// A runtime may not be dropped (which waits for its threads) inside another runtime's
/// task, where the API's server drops a store: let its threads go in the background.
impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Let another replica sweep at once rather than after the lease runs out.
        if let Some(lease) = self.sweeper_lease.take() {
            let mut c = self.client.clone();
            let _ = run(self.rt(), async move {
                tokio::time::timeout(Duration::from_secs(1), c.lease_revoke(lease))
                    .await
                    .map_err(|_| anyhow!("timed out"))?
                    .map_err(anyhow::Error::from)
            });
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `f` on `rt` from a thread of its own and waits for it.
fn run<T: Send, E: Into<anyhow::Error> + Send>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = Result<T, E>> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(f).map_err(Into::into))
            .join()
            .map_err(|_| anyhow!("the etcd client thread panicked"))?
    })
}

impl ObjectStore for EtcdStore {
    fn load(&mut self) -> Result<(World, u64)> {
        // One read of everything under the prefix: the objects and the guard at one
        // revision, so that what this replica compares its next commit with is exactly
        // what it read.
        let prefix = format!("{}/", self.prefix);
        let resp = self.kv_call(|mut c| {
            let p = prefix.clone();
            async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
        })?;
        let mut guard = 0;
        let mut stored = Vec::new();
        for kv in resp.kvs() {
            let k = kv.key_str()?.strip_prefix(&prefix).unwrap_or_default();
            if k == "revision" {
                guard = kv.mod_revision();
            } else if let Some(obj) = k.strip_prefix("objects/") {
                let (kind, id) = obj
                    .split_once('/')
                    .ok_or_else(|| anyhow!("etcd key {k:?} is not objects/KIND/ID"))?;
                stored.push((
                    kind.to_string(),
                    id.to_string(),
                    kv.value_str()?.to_string(),
                ));
            }
        }
        self.guard = guard;
        // Routes were always rows of their own here: nothing is embedded to move.
        let (w, _) = assemble(stored)?;
        Ok((w, self.guard.max(0) as u64))
    }

    fn commit(&mut self, old: &World, new: &World, _next: u64) -> Result<u64> {
        let mut ops = Vec::new();
        for (kind, id, body) in rows(old, new)? {
            let key = self.key(&format!("objects/{kind}/{id}"));
            ops.push(match body {
                Some(body) => TxnOp::put(key, body, None),
                None => TxnOp::delete(key, None),
            });
        }
        let guard = self.key("revision");
        // The guard names this commit: after an answer that was lost (a member or the
        // leader gone mid-call), reading it back tells whether the commit went in.
        self.commits += 1;
        let commit_id = format!("{}/{}", self.name, self.commits);
        ops.push(TxnOp::put(guard.clone(), commit_id.clone(), None));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                guard.clone(),
                CompareOp::Equal,
                self.guard,
            )])
            .and_then(ops);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let resp = loop {
            match self.kv_call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }) {
                Ok(r) => break r,
                Err(e) if std::time::Instant::now() < deadline && unavailable(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    // In, out, or unknown (no member answers yet: ask again).
                    let key = guard.clone();
                    let Ok(g) = self.kv_call(|mut c| {
                        let k = key.clone();
                        async move { c.get(k, None).await }
                    }) else {
                        continue;
                    };
                    match g.kvs().first() {
                        Some(kv) if kv.value_str().ok() == Some(commit_id.as_str()) => {
                            self.guard = kv.mod_revision();
                            return Ok(kv.mod_revision() as u64);
                        }
                        Some(kv) if kv.mod_revision() != self.guard => {
                            return Err(anyhow::Error::new(StaleRead).context(format!(
                                "commit on revision {}: another replica committed first",
                                self.guard
                            )))
                        }
                        // Not in, and nobody else's either: send it again.
                        _ => continue,
                    }
                }
                Err(e) => return Err(e),
            }
        };
        if !resp.succeeded() {
            return Err(anyhow::Error::new(StaleRead).context(format!(
                "commit on revision {}: nothing was written; re-read and retry",
                self.guard
            )));
        }
        let revision = resp.header().map_or(0, |h| h.revision());
        self.guard = revision;
        Ok(revision as u64)
    }

    /// Also hashes, once, the plain tokens older versions kept (one key each), and
    /// deletes them, in one transaction with the hashes' write.
    fn token_hashes(&mut self) -> Result<Option<TokenHashes>> {
        let key = self.key(TOKEN_HASHES);
        let resp = self.kv_call(|mut c| {
            let k = key.clone();
            async move { c.get(k, None).await }
        })?;
        let stored: Option<TokenHashes> = match resp.kvs().first() {
            Some(kv) => Some(
                serde_json::from_str(kv.value_str()?).context("the stored account token hashes")?,
            ),
            None => None,
        };
        let (plain, _) = self.range(PLAIN_TOKENS)?;
        if plain.is_empty() {
            return Ok(stored);
        }
        let mut hashes = match stored {
            Some(h) => h,
            None => TokenHashes::new()?,
        };
        for (token, account) in &plain {
            hashes.insert(account, token)?;
        }
        let txn = Txn::new().and_then([
            TxnOp::put(key, serde_json::to_string(&hashes)?, None),
            TxnOp::delete(
                self.key(PLAIN_TOKENS),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ]);
        self.kv_call(|mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .context("hashing the plain account tokens")?;
        log::info!(
            "hashed the {} account tokens etcd kept in plain text",
            plain.len()
        );
        Ok(Some(hashes))
    }

    /// A watch on the guard key: every replica's commits, from the one after what this
    /// replica read. `etcd-client` watches do not reconnect by themselves: when the watch
    /// ends (a member down, the history compacted), it is started again from the present
    /// and then [`StoreEvent::Resync`] is sent, so that nothing between the two is missed.
    fn changes(&mut self) -> Option<std::sync::mpsc::Receiver<StoreEvent>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let from = self.guard + 1;
        self.rt().spawn(watch(
            self.client.clone(),
            format!("{}/", self.prefix),
            from,
            tx,
        ));
        Some(rx)
    }

    fn latest(&mut self) -> Result<Option<u64>> {
        let key = self.key("revision");
        let resp = self.kv_call(|mut c| {
            let k = key.clone();
            async move { c.get(k, None).await }
        })?;
        Ok(Some(
            resp.kvs()
                .first()
                .map_or(0, |kv| kv.mod_revision().max(0) as u64),
        ))
    }

    fn seen(&mut self, revision: u64) {
        // Every commit writes the guard key: its revision is the guard's.
        self.guard = self.guard.max(revision as i64);
    }

    /// One replica at a time holds `PREFIX/sweeper`, under a lease it renews at each
    /// sweep; when it dies the lease runs out and the next replica to try takes it.
    fn lead_sweeps(&mut self) -> bool {
        match self.claim_sweeps() {
            Ok(held) => held,
            Err(e) => {
                log::warn!("cannot tell whether this replica sweeps ({e:#}); not sweeping");
                self.sweeper_lease = None;
                false
            }
        }
    }

    fn put_token_hashes(&mut self, hashes: &TokenHashes) -> Result<()> {
        let (key, body) = (self.key(TOKEN_HASHES), serde_json::to_string(hashes)?);
        self.kv_call(|mut c| {
            let (k, b) = (key.clone(), body.clone());
            async move { c.put(k, b, None).await }
        })
        .context("storing the account token hashes")?;
        Ok(())
    }
}
