//! The REST API (docs/datapath.md §5) over axum. Every mutating request runs one [`ops`] function on
//! the current world, then the final [`ops::check`], then one store transaction, and only
//! then replaces the world and bumps the revision that agents wait on.

use crate::auth;
use crate::hoststate;
use crate::model::*;
use crate::ops::{self, Caller};
use crate::store::Store;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Wall clock, optionally moved forward by tests (`--test-clock`).
pub struct Clock {
    /// Seconds added to the real time (tests only, see `Server::advance_clock`).
    offset: AtomicU64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            offset: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> Timestamp {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        real + self.offset.load(Ordering::Relaxed)
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
    store: Store,
    /// (account, token): an account may hold several tokens.
    tokens: Vec<(String, String)>,
}

pub struct Server {
    inner: Mutex<Inner>,
    revision_tx: watch::Sender<u64>,
    clock: Clock,
    /// host -> the token its agent presents to read that host's state (and no other's).
    host_tokens: BTreeMap<String, String>,
    limiter: auth::Limiter,
}

pub type Shared = Arc<Server>;

impl Server {
    pub fn new(
        store: Store,
        clock: Clock,
        host_tokens: BTreeMap<String, String>,
        limit: auth::RateLimit,
    ) -> anyhow::Result<Shared> {
        let (world, revision) = store.load()?;
        let tokens = store
            .tokens()?
            .into_iter()
            .map(|(token, account)| (account, token))
            .collect();
        let (revision_tx, _) = watch::channel(revision);
        Ok(Arc::new(Server {
            inner: Mutex::new(Inner {
                world,
                revision,
                store,
                tokens,
            }),
            revision_tx,
            clock,
            host_tokens,
            limiter: auth::Limiter::new(limit),
        }))
    }

    pub fn revision(&self) -> u64 {
        self.inner.lock().unwrap().revision
    }

    /// Moves the control plane's clock forward and runs expiry at once. Only in builds
    /// with the `test-hooks` feature (the in-process API tests): no binary can reach it.
    #[cfg(feature = "test-hooks")]
    pub fn advance_clock(&self, seconds: u64) {
        self.clock.offset.fetch_add(seconds, Ordering::Relaxed);
        self.sweep();
    }

    /// Long polls parked waiting for the next revision.
    pub fn waiting_polls(&self) -> usize {
        self.revision_tx.receiver_count()
    }

    pub fn world(&self) -> World {
        self.inner.lock().unwrap().world.clone()
    }

    /// Runs `op` on the current world (after expiring due peerings); commits and publishes
    /// the result only if the operation and the final check succeed.
    fn mutate<T>(
        &self,
        op: impl FnOnce(&World, Timestamp) -> Result<(World, T), ApiError>,
    ) -> Result<T, ApiError> {
        let mut inner = self.inner.lock().unwrap();
        let now = self.clock.now();
        let base = ops::expire(&inner.world, now);
        let (new, out) = op(base.as_ref().unwrap_or(&inner.world), now)?;
        ops::check(&new)?;
        let revision = inner.revision + 1;
        let old = std::mem::take(&mut inner.world);
        if let Err(e) = inner.store.commit(&old, &new, revision) {
            inner.world = old;
            return Err(ApiError {
                status: 500,
                code: "storage_error",
                message: format!("{e:#}"),
            });
        }
        inner.world = new;
        inner.revision = revision;
        drop(inner);
        self.revision_tx.send_replace(revision);
        Ok(out)
    }

    /// Persists expiry of due peerings (a background sweep; requests also expire lazily).
    pub fn sweep(&self) {
        let _ = self.mutate(|w, now| match ops::expire(w, now) {
            Some(w2) => Ok((w2, ())),
            None => Err(ApiError::invalid_request("nothing to expire")),
        });
    }

    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = bearer(headers)?;
        let account = {
            let inner = self.inner.lock().unwrap();
            auth::find(inner.tokens.iter().map(|(a, t)| (a, t)), token)
                .cloned()
                .ok_or_else(|| ApiError::unauthorized("the bearer token is not known"))?
        };
        self.spend(&format!("account {account}"))?;
        Ok(Caller { account })
    }

    /// One request of credential `who`'s rate; `429` once it is spent.
    fn spend(&self, who: &str) -> Result<(), ApiError> {
        self.limiter
            .spend(who, std::time::Instant::now())
            .map_err(|retry_after| {
                ApiError::rate_limited(format!(
                    "too many requests for {who}: retry in {retry_after} s"
                ))
            })
    }

    /// Registers (or replaces) `account`'s token, kept in the store.
    pub fn add_token(&self, account: &str, token: &str) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        inner.store.set_token(account, token)?;
        inner.tokens.retain(|(_, t)| t != token);
        inner.tokens.push((account.to_string(), token.to_string()));
        Ok(())
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("missing \"Authorization: Bearer <token>\" header"))
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

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

fn ok<T: Serialize>(status: StatusCode, v: T) -> ApiResult {
    Ok((
        status,
        Json(serde_json::to_value(v).expect("API objects serialize")),
    ))
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

pub fn router(server: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/vpcs", post(create_vpc).get(list_vpcs))
        .route("/v1/vpcs/{id}", get(get_vpc).delete(delete_vpc))
        .route("/v1/subnets", post(create_subnet).get(list_subnets))
        .route("/v1/subnets/{id}", get(get_subnet).delete(delete_subnet))
        .route(
            "/v1/route-tables",
            post(create_route_table).get(list_route_tables),
        )
        .route(
            "/v1/route-tables/{id}",
            get(get_route_table).delete(delete_route_table),
        )
        .route(
            "/v1/route-tables/{id}/routes",
            post(create_route).put(replace_routes),
        )
        .route(
            "/v1/route-tables/{id}/routes/{*cidr}",
            axum::routing::delete(delete_route),
        )
        .route("/v1/vpc-peering", post(create_peering).get(list_peerings))
        .route(
            "/v1/vpc-peering/{id}",
            get(get_peering).patch(patch_peering).delete(delete_peering),
        )
        .route("/v1/vpc-peering/{id}/accept", post(accept_peering))
        .route("/v1/vpc-peering/{id}/reject", post(reject_peering))
        .route("/v1/ports", post(create_port).get(list_ports))
        .route("/v1/ports/{id}", get(get_port).delete(delete_port))
        .route(
            "/v1/network-acls",
            post(create_network_acl).get(list_network_acls),
        )
        .route(
            "/v1/network-acls/{id}",
            get(get_network_acl).delete(delete_network_acl),
        )
        .route(
            "/v1/security-groups",
            post(create_security_group).get(list_security_groups),
        )
        .route(
            "/v1/security-groups/{id}",
            get(get_security_group).delete(delete_security_group),
        )
        .route("/v1/hosts/{host}/state", get(host_state))
        .layer(axum::middleware::map_response_with_state(
            server.clone(),
            add_revision,
        ))
        // Bulk route replacement carries large tables (100k routes is about 6 MB of JSON).
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(server)
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

/// The account that owns an object (through its VPC).
fn owner<'a>(w: &'a World, vpc: &str) -> Option<&'a str> {
    w.vpcs.get(vpc).map(|v| v.account.as_str())
}

macro_rules! owned_crud {
    ($create:ident, $list:ident, $get:ident, $delete:ident, $req:ty, $op_create:path, $op_delete:path, $field:ident, $what:literal, |$o:ident| $vpc:expr) => {
        async fn $create(State(s): State<Shared>, h: HeaderMap, b: Result<Json<$req>, JsonRejection>) -> ApiResult {
            let c = s.caller(&h)?;
            let req = body(b)?;
            let out = s.mutate(|w, _| $op_create(w, &c, req))?;
            ok(StatusCode::CREATED, out)
        }

        async fn $list(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
            let c = s.caller(&h)?;
            let w = s.world();
            let mine: Vec<_> = w.$field.values().filter(|$o| owner(&w, $vpc) == Some(c.account.as_str())).cloned().collect();
            ok(StatusCode::OK, mine)
        }

        async fn $get(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
            let c = s.caller(&h)?;
            let w = s.world();
            let $o = w.$field.get(&id).ok_or_else(|| ApiError::not_found(format!("{} {id} does not exist", $what)))?;
            if owner(&w, $vpc) != Some(c.account.as_str()) {
                return Err(ApiError::forbidden(format!("{} {id} belongs to another account", $what)));
            }
            ok(StatusCode::OK, $o)
        }

        async fn $delete(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
            let c = s.caller(&h)?;
            s.mutate(|w, _| $op_delete(w, &c, &id).map(|w| (w, ())))?;
            ok(StatusCode::OK, json!({"deleted": id}))
        }
    };
}

owned_crud!(
    create_vpc,
    list_vpcs,
    get_vpc,
    delete_vpc,
    ops::CreateVpc,
    ops::create_vpc,
    ops::delete_vpc,
    vpcs,
    "vpc",
    |o| &o.id
);
owned_crud!(
    create_subnet,
    list_subnets,
    get_subnet,
    delete_subnet,
    ops::CreateSubnet,
    ops::create_subnet,
    ops::delete_subnet,
    subnets,
    "subnet",
    |o| &o.vpc
);
owned_crud!(
    create_route_table,
    list_route_tables,
    get_route_table,
    delete_route_table,
    ops::CreateRouteTable,
    ops::create_route_table,
    ops::delete_route_table,
    route_tables,
    "route table",
    |o| &o.vpc
);
owned_crud!(
    create_network_acl,
    list_network_acls,
    get_network_acl,
    delete_network_acl,
    ops::CreateNetworkAcl,
    ops::create_network_acl,
    ops::delete_network_acl,
    network_acls,
    "network acl",
    |o| &o.vpc
);
owned_crud!(
    create_security_group,
    list_security_groups,
    get_security_group,
    delete_security_group,
    ops::CreateSecurityGroup,
    ops::create_security_group,
    ops::delete_security_group,
    security_groups,
    "security group",
    |o| &o.vpc
);

/// Ports belong to the account of their subnet's VPC.
async fn create_port(
    State(s): State<Shared>,
    h: HeaderMap,
    b: Result<Json<ops::CreatePort>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    ok(
        StatusCode::CREATED,
        s.mutate(|w, _| ops::create_port(w, &c, req))?,
    )
}

fn port_owner<'a>(w: &'a World, p: &Port) -> Option<&'a str> {
    w.subnets.get(&p.subnet).and_then(|s| owner(w, &s.vpc))
}

async fn list_ports(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    let c = s.caller(&h)?;
    let w = s.world();
    let mine: Vec<&Port> = w
        .ports
        .values()
        .filter(|p| port_owner(&w, p) == Some(c.account.as_str()))
        .collect();
    ok(StatusCode::OK, mine)
}

async fn get_port(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let c = s.caller(&h)?;
    let w = s.world();
    let p = w
        .ports
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("port {id} does not exist")))?;
    if port_owner(&w, p) != Some(c.account.as_str()) {
        return Err(ApiError::forbidden(format!(
            "port {id} belongs to another account"
        )));
    }
    ok(StatusCode::OK, p)
}

async fn delete_port(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let c = s.caller(&h)?;
    s.mutate(|w, _| ops::delete_port(w, &c, &id).map(|w| (w, ())))?;
    ok(StatusCode::OK, json!({"deleted": id}))
}

async fn create_route(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<ops::CreateRoute>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    ok(
        StatusCode::CREATED,
        s.mutate(|w, _| ops::create_route(w, &c, &id, req))?,
    )
}

async fn replace_routes(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<ops::ReplaceRoutes>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    let n = s.mutate(|w, _| ops::replace_routes(w, &c, &id, req))?;
    ok(StatusCode::OK, json!({"route_table": id, "routes": n}))
}

async fn delete_route(
    State(s): State<Shared>,
    h: HeaderMap,
    Path((id, cidr)): Path<(String, String)>,
) -> ApiResult {
    let c = s.caller(&h)?;
    s.mutate(|w, _| ops::delete_route(w, &c, &id, &cidr).map(|w| (w, ())))?;
    ok(StatusCode::OK, json!({"deleted": cidr}))
}

async fn create_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    b: Result<Json<ops::CreatePeering>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    ok(
        StatusCode::CREATED,
        s.mutate(|w, now| ops::create_peering(w, &c, req, now))?,
    )
}

async fn list_peerings(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    let c = s.caller(&h)?;
    let now = s.clock.now();
    let w = s.world();
    let w = ops::expire(&w, now).unwrap_or(w);
    let mine: Vec<&Peering> = w
        .peerings
        .values()
        .filter(|p| p.involves_account(&c.account))
        .collect();
    ok(StatusCode::OK, mine)
}

async fn get_peering(State(s): State<Shared>, h: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let c = s.caller(&h)?;
    let w = s.world();
    let w = ops::expire(&w, s.clock.now()).unwrap_or(w);
    ok(StatusCode::OK, ops::visible_peering(&w, &c, &id)?)
}

async fn accept_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let c = s.caller(&h)?;
    ok(
        StatusCode::OK,
        s.mutate(|w, now| ops::accept_peering(w, &c, &id, now))?,
    )
}

async fn reject_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let c = s.caller(&h)?;
    ok(
        StatusCode::OK,
        s.mutate(|w, now| ops::reject_peering(w, &c, &id, now))?,
    )
}

async fn delete_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let c = s.caller(&h)?;
    ok(
        StatusCode::OK,
        s.mutate(|w, _| ops::delete_peering(w, &c, &id))?,
    )
}

async fn patch_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<ops::PatchPeering>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    ok(
        StatusCode::OK,
        s.mutate(|w, _| ops::patch_peering(w, &c, &id, req))?,
    )
}

#[derive(Deserialize)]
struct StateQuery {
    /// Return at once if the revision is newer than this; otherwise wait for a change.
    #[serde(default)]
    after: Option<u64>,
    /// How long to wait for a change, in milliseconds (at most 60 s).
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `GET /v1/hosts/{host}/state?after=REV&wait_ms=MS`: the host's state document and its
/// revision. With `after`, waits (long poll) until the revision passes it or time runs out.
async fn host_state(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(host): Path<String>,
    Query(q): Query<StateQuery>,
) -> ApiResult {
    let token = bearer(&h)?;
    // A host's token opens that host's state, and nothing else.
    match auth::find(&s.host_tokens, token) {
        Some(owner) if *owner == host => {}
        Some(owner) => {
            return Err(ApiError::forbidden(format!(
                "the token of host {owner} cannot read the state of host {host}"
            )))
        }
        None => {
            return Err(ApiError::unauthorized(
                "host state needs the token of that host (--host-tokens on the control plane)",
            ))
        }
    }
    s.spend(&format!("host {host}"))?;
    if let Some(after) = q.after {
        let mut rx = s.revision_tx.subscribe();
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(60_000));
        let _ = tokio::time::timeout(wait, rx.wait_for(|r| *r > after)).await;
    }
    let (world, revision) = {
        let inner = s.inner.lock().unwrap();
        (inner.world.clone(), inner.revision)
    };
    ok(
        StatusCode::OK,
        json!({"host": host, "revision": revision, "document": hoststate::document(&world, &host)}),
    )
}
