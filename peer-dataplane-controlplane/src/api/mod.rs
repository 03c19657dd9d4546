//! The REST API (docs/datapath.md §5) over axum. Every mutating request runs one [`ops`] function on
//! the current world, then the final [`ops::check`], then one store transaction, and only
//! then replaces the world and bumps the revision that agents wait on.

mod credentials;
mod handlers;

use credentials::{bearer, guard_auth_failures};

use crate::auth;
use crate::ops::{self, Caller};
use crate::store::{ObjectStore, StaleRead, StoreEvent};
use crate::world::*;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use handlers::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Where the control plane reads the time (seconds since the epoch): the wall clock, or
/// one the caller supplies (the in-process tests move theirs; no binary has a way to).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The wall clock.
    pub fn new() -> Clock {
        Clock::from_fn(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
    }

    /// A clock that reads `now`.
    pub fn from_fn(now: impl Fn() -> Timestamp + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> Timestamp {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

struct Inner {
    world: World,
    revision: u64,
    store: Box<dyn ObjectStore>,
    /// The account tokens' hashes, as stored.
    tokens: auth::TokenHashes,
    /// Recent worlds, for the hosts' deltas.
    history: crate::history::History,
    /// What the last whole check validated (each change re-validates only what it alters).
    checked: Option<crate::gate::Checked>,
}

pub struct Server {
    inner: Mutex<Inner>,
    revision_tx: watch::Sender<u64>,
    /// Whether the store can be reached (a shared store tells; the embedded one always
    /// can). While it cannot, agents are told so instead of being served a view that may
    /// be stale.
    store_ok: watch::Sender<bool>,
    clock: Clock,
    /// host -> the token its agent presents to read that host's state (and no other's).
    host_tokens: Mutex<BTreeMap<String, String>>,
    /// Requests per credential.
    limiter: auth::Limiter,
    /// Failed authentications per source address.
    auth_failures: auth::Limiter,
    metrics: Arc<crate::metrics::Metrics>,
}

pub type Shared = Arc<Server>;

/// How many times a call is redone on a newer view when other replicas keep committing
/// first (each try costs a guarded transaction; contention on one store is brief).
const MAX_ATTEMPTS: u32 = 20;

impl Server {
    pub fn new(
        store: impl ObjectStore + 'static,
        clock: Clock,
        host_tokens: BTreeMap<String, String>,
        limit: auth::RateLimit,
    ) -> anyhow::Result<Shared> {
        let mut store: Box<dyn ObjectStore> = Box::new(store);
        let (mut world, mut revision) = store.load()?;
        // A store from before the overlay: its VPCs and peerings get their numbers now.
        let before = world.clone();
        if ops::number_unnumbered(&mut world)? {
            revision = store.commit(&before, &world, revision + 1)?;
            log::info!("gave the stored VPCs and peerings their VNIs and tunnel keys (revision {revision})");
        }
        let tokens = match store.token_hashes()? {
            Some(t) => t,
            None => auth::TokenHashes::new()?,
        };
        let (revision_tx, _) = watch::channel(revision);
        let changes = store.changes();
        let mut history = crate::history::History::default();
        history.push(revision, crate::history::View::of(&world));
        let server = Arc::new(Server {
            inner: Mutex::new(Inner {
                world,
                revision,
                store,
                tokens,
                history,
                checked: None,
            }),
            revision_tx,
            store_ok: watch::channel(true).0,
            clock,
            host_tokens: Mutex::new(host_tokens),
            limiter: auth::Limiter::new(limit),
            auth_failures: auth::Limiter::new(auth::RateLimit::AUTH_FAILURES),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        });
        server.metrics.set_account_tokens(server.account_tokens());
        // Other replicas' commits: read the store again when they happen.
        if let Some(rx) = changes {
            let weak = Arc::downgrade(&server);
            std::thread::Builder::new()
                .name("store-changes".into())
                .spawn(move || {
                    for event in rx {
                        let Some(s) = weak.upgrade() else { return };
                        match event {
                            StoreEvent::Commit(revision, rows) => s.catch_up(Some((revision, rows))),
                            StoreEvent::Tokens(t) => s.adopt_tokens(t),
                            StoreEvent::Resync => {
                                s.catch_up(None);
                                s.reread_tokens();
                                if !s.store_ok.send_replace(true) {
                                    log::info!("the store is reachable again (revision {})", s.revision());
                                }
                            }
                            StoreEvent::Unreachable => {
                                log::warn!("the store cannot be reached: agents are told they are unsynced until it can");
                                s.store_ok.send_replace(false);
                            }
                        }
                    }
                })?;
        }
        Ok(server)
    }

    /// Another replica committed `revision`, writing `rows` (`None`: unknown), or (`None`)
    /// something may have happened, see [`StoreEvent::Resync`]: the rows are applied to
    /// this replica's world, or the store is read again whole; nothing is done for a
    /// revision this replica has already seen (its own commits).
    fn catch_up(&self, commit: Option<(u64, Option<Vec<crate::store::StoredRow>>)>) {
        let mut inner = self.inner.lock().unwrap();
        if let Some((revision, Some(rows))) = commit {
            if revision <= inner.revision {
                return;
            }
            let mut world = inner.world.clone();
            match crate::store::apply_rows(&mut world, rows) {
                Ok(_) => {
                    // This replica's next commit is guarded by what it has now seen.
                    inner.store.seen(revision);
                    self.adopt(inner, world, revision, None);
                    return;
                }
                Err(e) => log::warn!(
                    "applying another replica's commit {revision}: {e:#}; reading the store again"
                ),
            }
        } else if commit.is_some_and(|(r, _)| r <= inner.revision) {
            return;
        }
        self.read_whole(inner, "after another replica's commit");
    }

    /// Reads the whole store into this replica and publishes its revision.
    fn read_whole(&self, mut inner: std::sync::MutexGuard<'_, Inner>, why: &str) {
        match inner.store.load() {
            Ok((world, r)) => self.adopt(inner, world, r, None),
            Err(e) => log::warn!("reading the store {why}: {e:#}"),
        }
    }

    /// Makes `world` at `revision` this replica's (and its history's), then wakes the
    /// long polls waiting for it. `view`: the world's view if the final gate already
    /// built it (else it is built here).
    fn adopt(
        &self,
        mut inner: std::sync::MutexGuard<'_, Inner>,
        world: World,
        revision: u64,
        view: Option<std::sync::Arc<crate::history::View>>,
    ) {
        let view = view.unwrap_or_else(|| crate::history::View::of(&world));
        inner.history.push(revision, view);
        inner.world = world;
        inner.revision = revision;
        drop(inner);
        self.revision_tx.send_replace(revision);
    }

    /// Whether the store can be reached (see [`StoreEvent::Unreachable`]).
    pub fn store_reachable(&self) -> bool {
        *self.store_ok.borrow()
    }

    pub fn revision(&self) -> u64 {
        self.inner.lock().unwrap().revision
    }

    /// Long polls parked waiting for the next revision.
    pub fn waiting_polls(&self) -> usize {
        self.revision_tx.receiver_count()
    }

    /// The world this replica holds, indexed, and its revision.
    pub fn latest_view(&self) -> (u64, std::sync::Arc<crate::history::View>) {
        let inner = self.inner.lock().unwrap();
        inner
            .history
            .latest()
            .expect("the history holds the world from the start")
    }

    /// What host deltas from revision `after` are computed from (`None`: not held).
    pub fn delta_base(&self, after: u64) -> Option<crate::history::Base> {
        self.inner.lock().unwrap().history.base(after)
    }

    pub fn world(&self) -> World {
        self.inner.lock().unwrap().world.clone()
    }

    /// Runs `op` on the current world (after expiring due peerings); commits and publishes
    /// the result only if the operation and the final check succeed. If another replica
    /// wrote to the store since this one read it, the store refuses the commit whole: the
    /// world is read again and `op` runs again on it (a few times at most).
    fn mutate<T>(
        &self,
        op: impl Fn(&World, Timestamp) -> Result<(World, T), ApiError>,
    ) -> Result<T, ApiError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut inner = self.inner.lock().unwrap();
            let now = self.clock.now();
            let base = ops::expire(&inner.world, now);
            let base = base.as_ref().unwrap_or(&inner.world);
            let outcome = op(base, now).and_then(|(new, out)| {
                let checked = crate::gate::check(inner.checked.as_ref(), base, &new)?;
                Ok((new, out, checked))
            });
            let (new, out, checked) = match outcome {
                Ok(x) => x,
                Err(e) => {
                    // A refusal must hold against the store's latest state, not a view
                    // that is behind another replica's commit.
                    match inner.store.latest() {
                        Ok(Some(latest)) if latest > inner.revision && attempts < MAX_ATTEMPTS => {
                            drop(inner);
                            self.catch_up_to(latest);
                            continue;
                        }
                        _ => return Err(e),
                    }
                }
            };
            let old = std::mem::take(&mut inner.world);
            let next = inner.revision + 1;
            match inner.store.commit(&old, &new, next) {
                Ok(revision) => {
                    let view = checked.as_ref().map(|c| c.view.clone());
                    if checked.is_some() {
                        inner.checked = checked;
                    }
                    self.adopt(inner, new, revision, view);
                    return Ok(out);
                }
                Err(e) if attempts < MAX_ATTEMPTS && e.downcast_ref::<StaleRead>().is_some() => {
                    // Another replica committed since: catch up, then redo the call.
                    inner.world = old;
                    let latest = inner.store.latest().ok().flatten().unwrap_or(u64::MAX);
                    drop(inner);
                    self.catch_up_to(latest);
                }
                Err(e) => {
                    inner.world = old;
                    return Err(storage_error(e));
                }
            }
        }
    }

    /// Waits (briefly) until this replica holds revision `latest`, which the store's watch
    /// brings as rows; reads the store whole if it does not come.
    fn catch_up_to(&self, latest: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.revision() < latest && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let inner = self.inner.lock().unwrap();
        if inner.revision < latest {
            self.read_whole(inner, "to catch up");
        }
    }

    /// Persists expiry of due peerings (a background sweep; requests also expire lazily).
    /// `mutate` expires due peerings before it runs an operation, so committing the world
    /// it hands over as it is commits the expiry; only done when something is due.
    pub fn sweep(&self) {
        self.prune_limits();
        {
            let mut inner = self.inner.lock().unwrap();
            if !inner.store.lead_sweeps() {
                return; // another replica sweeps
            }
            if ops::expire(&inner.world, self.clock.now()).is_none() {
                return;
            }
        }
        if let Err(e) = self.mutate(|w, _| Ok((w.clone(), ()))) {
            log::warn!("expiring pending peerings: {e}");
        }
    }
}

fn storage_error(e: anyhow::Error) -> ApiError {
    ApiError {
        status: 500,
        code: "storage_error",
        message: format!("{e:#}"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = (self.status == 429).then_some([(axum::http::header::RETRY_AFTER, "1")]);
        (
            status,
            retry,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

/// `v` as the JSON answer, serialized straight to bytes (a host's document may hold
/// 100,000 routes: no intermediate JSON tree).
fn ok<T: Serialize>(status: StatusCode, v: T) -> ApiResult {
    let body = serde_json::to_vec(&v).expect("API objects serialize");
    Ok((
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(format!(
                "request body: larger than the {} MiB limit",
                MAX_BODY >> 20
            ))
        } else {
            ApiError::invalid_request(format!("request body: {}", e.body_text()))
        }
    })
}

// ---------------------------------------------------------------------------------------

/// A collection at `path` (create with POST, list with GET) and its items at `path/{id}`
/// (GET, DELETE, and whatever `item` adds).
fn resource(
    r: Router<Shared>,
    path: &str,
    collection: MethodRouter<Shared>,
    item: MethodRouter<Shared>,
) -> Router<Shared> {
    r.route(path, collection)
        .route(&format!("{path}/{{id}}"), item)
}

pub fn router(server: Shared) -> Router {
    let mut r = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    r = resource(
        r,
        "/v1/vpcs",
        post(create_vpc).get(list_vpcs),
        get(get_vpc).delete(delete_vpc),
    );
    r = resource(
        r,
        "/v1/subnets",
        post(create_subnet).get(list_subnets),
        get(get_subnet).delete(delete_subnet),
    );
    r = resource(
        r,
        "/v1/route-tables",
        post(create_route_table).get(list_route_tables),
        get(get_route_table).delete(delete_route_table),
    );
    r = resource(
        r,
        "/v1/vpc-peering",
        post(create_peering).get(list_peerings),
        get(get_peering).patch(patch_peering).delete(delete_peering),
    );
    r = resource(
        r,
        "/v1/ports",
        post(create_port).get(list_ports),
        get(get_port).delete(delete_port),
    );
    r = resource(
        r,
        "/v1/network-acls",
        post(create_network_acl).get(list_network_acls),
        get(get_network_acl).delete(delete_network_acl),
    );
    r = resource(
        r,
        "/v1/security-groups",
        post(create_security_group).get(list_security_groups),
        get(get_security_group).delete(delete_security_group),
    );
    r.route(
        "/v1/route-tables/{id}/routes",
        post(create_route).put(replace_routes),
    )
    .route(
        "/v1/route-tables/{id}/routes/{*cidr}",
        axum::routing::delete(delete_route),
    )
    .route("/v1/vpc-peering/{id}/accept", post(accept_peering))
    .route("/v1/vpc-peering/{id}/reject", post(reject_peering))
    .route("/v1/hosts", get(list_hosts))
    .route("/v1/hosts/{host}", put(put_host).delete(delete_host))
    .route("/v1/hosts/{host}/state", get(host_state))
    .layer(axum::middleware::map_response_with_state(
        server.clone(),
        add_revision,
    ))
    .layer(axum::middleware::from_fn_with_state(
        server.clone(),
        guard_auth_failures,
    ))
    // Bulk route replacement carries large tables (100k routes is about 6 MB of JSON).
    .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
    .with_state(server)
}

/// `ok`, or 503 naming the store while it cannot be reached.
async fn healthz(State(s): State<Shared>) -> Response {
    if s.store_reachable() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store unreachable").into_response()
    }
}

/// The control plane's counters, Prometheus text (they name no credential).
async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Every answer carries the revision it reflects (at least), so that a caller can wait
/// for an agent to report that revision installed.
async fn add_revision(State(s): State<Shared>, mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(REVISION_HEADER, s.revision().into());
    resp
}

pub const REVISION_HEADER: &str = "x-pdp-revision";

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 << 20;
