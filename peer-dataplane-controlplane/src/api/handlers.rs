//! One handler per route: the caller, the operation, the answer.

use super::*;
use crate::{history, hoststate};
use peer_dataplane_model::desired::document::HostDoc;

/// The account that owns an object (through its VPC).
pub(super) fn owner<'a>(w: &'a World, vpc: &str) -> Option<&'a str> {
    w.vpcs.get(vpc).map(|v| v.account.as_str())
}

/// An object an account owns through the VPC it belongs to.
pub(super) trait Owned {
    fn owner<'a>(&self, w: &'a World) -> Option<&'a str>;
}

macro_rules! owned_by_vpc {
    ($($t:ty => |$w:ident, $o:ident| $vpc:expr;)*) => {$(
        impl Owned for $t {
            fn owner<'a>(&self, $w: &'a World) -> Option<&'a str> {
                let $o = self;
                owner($w, $vpc)
            }
        }
    )*};
}

owned_by_vpc! {
    Vpc => |_w, o| &o.id;
    Subnet => |_w, o| &o.vpc;
    RouteTable => |_w, o| &o.vpc;
    NetworkAcl => |_w, o| &o.vpc;
    SecurityGroup => |_w, o| &o.vpc;
    // Ports belong to the account of their subnet's VPC.
    Port => |w, o| w.subnets.get(&o.subnet).map_or("", |s| s.vpc.as_str());
}

/// The objects of `all` the caller's account owns.
fn mine<'a, T: Owned>(w: &World, all: &'a BTreeMap<String, T>, c: &Caller) -> Vec<&'a T> {
    let account = Some(c.account.as_str());
    all.values().filter(|o| o.owner(w) == account).collect()
}

/// Object `id` of `all` (a `what`): 404 if there is none, 403 if another account owns it.
fn owned<'a, T: Owned>(
    w: &World,
    all: &'a BTreeMap<String, T>,
    c: &Caller,
    what: &str,
    id: &str,
) -> Result<&'a T, ApiError> {
    let o = all
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("{what} {id} does not exist")))?;
    if o.owner(w) != Some(c.account.as_str()) {
        return Err(ApiError::forbidden(format!(
            "{what} {id} belongs to another account"
        )));
    }
    Ok(o)
}

/// Create, list, get and delete of objects an account owns: `field` of the world, named
/// `what` in errors, created from request `req` by `ops::create`, removed by `ops::delete`.
macro_rules! owned_crud {
    ($($field:ident: $what:literal, $req:ty => $create:ident, $list:ident, $get:ident, $delete:ident;)*) => {$(
        pub(super) async fn $create(
            State(s): State<Shared>,
            h: HeaderMap,
            b: Result<Json<$req>, JsonRejection>,
        ) -> ApiResult {
            let c = s.caller(&h)?;
            let req = body(b)?;
            let out = s.mutate(|w, _| ops::$create(w, &c, req.clone()))?;
            ok(StatusCode::CREATED, out)
        }

        pub(super) async fn $list(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
            let (c, w) = (s.caller(&h)?, s.world());
            ok(StatusCode::OK, mine(&w, &w.$field, &c))
        }

        pub(super) async fn $get(
            State(s): State<Shared>,
            h: HeaderMap,
            Path(id): Path<String>,
        ) -> ApiResult {
            let (c, w) = (s.caller(&h)?, s.world());
            ok(StatusCode::OK, owned(&w, &w.$field, &c, $what, &id)?)
        }

        pub(super) async fn $delete(
            State(s): State<Shared>,
            h: HeaderMap,
            Path(id): Path<String>,
        ) -> ApiResult {
            let c = s.caller(&h)?;
            s.mutate(|w, _| ops::$delete(w, &c, &id).map(|w| (w, ())))?;
            ok(StatusCode::OK, json!({"deleted": id}))
        }
    )*};
}

owned_crud! {
    vpcs: "vpc", ops::CreateVpc => create_vpc, list_vpcs, get_vpc, delete_vpc;
    subnets: "subnet", ops::CreateSubnet => create_subnet, list_subnets, get_subnet, delete_subnet;
    route_tables: "route table", ops::CreateRouteTable =>
        create_route_table, list_route_tables, get_route_table, delete_route_table;
    network_acls: "network acl", ops::CreateNetworkAcl =>
        create_network_acl, list_network_acls, get_network_acl, delete_network_acl;
    security_groups: "security group", ops::CreateSecurityGroup =>
        create_security_group, list_security_groups, get_security_group, delete_security_group;
    ports: "port", ops::CreatePort => create_port, list_ports, get_port, delete_port;
}

pub(super) async fn replace_routes(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
    b: Result<Json<ops::ReplaceRoutes>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    let n = s.mutate(|w, _| ops::replace_routes(w, &c, &id, req.clone()))?;
    ok(StatusCode::OK, json!({"route_table": id, "routes": n}))
}

pub(super) async fn delete_route(
    State(s): State<Shared>,
    h: HeaderMap,
    Path((id, cidr)): Path<(String, String)>,
) -> ApiResult {
    let c = s.caller(&h)?;
    s.mutate(|w, _| ops::delete_route(w, &c, &id, &cidr).map(|w| (w, ())))?;
    ok(StatusCode::OK, json!({"deleted": cidr}))
}

pub(super) async fn create_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    b: Result<Json<ops::CreatePeering>, JsonRejection>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let req = body(b)?;
    ok(
        StatusCode::CREATED,
        s.mutate(|w, now| ops::create_peering(w, &c, req.clone(), now))?,
    )
}

pub(super) async fn list_peerings(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
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

pub(super) async fn get_peering(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let c = s.caller(&h)?;
    let w = s.world();
    let w = ops::expire(&w, s.clock.now()).unwrap_or(w);
    ok(StatusCode::OK, ops::visible_peering(&w, &c, &id)?)
}

/// A state change of one peering (`POST …/{id}/accept`, `…/reject`, `DELETE …/{id}`).
macro_rules! peering_transition {
    ($($handler:ident => $op:expr;)*) => {$(
        pub(super) async fn $handler(
            State(s): State<Shared>,
            h: HeaderMap,
            Path(id): Path<String>,
        ) -> ApiResult {
            let c = s.caller(&h)?;
            ok(StatusCode::OK, s.mutate(|w, now| $op(w, &c, &id, now))?)
        }
    )*};
}

peering_transition! {
    accept_peering => ops::accept_peering;
    reject_peering => ops::reject_peering;
    delete_peering => |w, c, id, _| ops::delete_peering(w, c, id);
}

/// A change to one object by id, with a request body, answering with the changed object.
macro_rules! change_with_body {
    ($($handler:ident: $status:ident, $req:ty;)*) => {$(
        pub(super) async fn $handler(
            State(s): State<Shared>,
            h: HeaderMap,
            Path(id): Path<String>,
            b: Result<Json<$req>, JsonRejection>,
        ) -> ApiResult {
            let c = s.caller(&h)?;
            let req = body(b)?;
            ok(StatusCode::$status, s.mutate(|w, _| ops::$handler(w, &c, &id, req.clone()))?)
        }
    )*};
}

change_with_body! {
    create_route: CREATED, ops::CreateRoute;
    patch_peering: OK, ops::PatchPeering;
}

#[derive(Deserialize)]
pub(super) struct StateQuery {
    /// Return at once if the revision is newer than this; otherwise wait for a change.
    #[serde(default)]
    after: Option<u64>,
    /// How long to wait for a change, in milliseconds (at most 60 s).
    #[serde(default)]
    wait_ms: Option<u64>,
    /// Answer with what changed for this host since `after` (a delta), not the whole
    /// document, when this replica still holds revision `after`; and wait until something
    /// changes *for this host*, not merely in the region.
    #[serde(default)]
    delta: bool,
}

/// `GET /v1/hosts/{host}/state?after=REV&wait_ms=MS`: the host's state document and its
/// revision. With `after`, waits (long poll) until the revision passes it or time runs out.
pub(super) async fn host_state(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(host): Path<String>,
    Query(q): Query<StateQuery>,
) -> ApiResult {
    host_caller(&s, &h, &host)?;
    unsynced_store(&s)?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(60_000));
    match q.after {
        Some(after) if q.delta => host_delta(&s, &host, after, wait).await,
        Some(after) => {
            let mut rx = s.revision_tx.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|r| *r > after)).await;
            whole_document(&s, &host)
        }
        None => whole_document(&s, &host),
    }
}

/// While the store cannot be reached, this replica's view may be stale: an agent is told
/// so (and keeps forwarding with what it has) rather than served it.
fn unsynced_store(s: &Shared) -> Result<(), ApiError> {
    if s.store_reachable() {
        return Ok(());
    }
    Err(ApiError::store_unreachable(
        "this control-plane replica cannot reach its store; the state it holds may be stale",
    ))
}

fn whole_document(s: &Shared, host: &str) -> ApiResult {
    let (revision, view) = s.latest_view();
    #[derive(Serialize)]
    struct Whole<'a> {
        host: &'a str,
        revision: u64,
        document: peer_dataplane_model::desired::document::Document,
    }
    let document = hoststate::document_in(&view.world, &view.index, host, true);
    ok(
        StatusCode::OK,
        Whole {
            host,
            revision,
            document,
        },
    )
}

/// The long poll of an agent that holds revision `after`: waits until a change reaches
/// this host (changes elsewhere in the region do not wake it), then answers with the
/// delta. On timeout, an empty delta at the latest revision whose view equals `after`'s.
async fn host_delta(s: &Shared, host: &str, after: u64, wait: Duration) -> ApiResult {
    let deadline = tokio::time::Instant::now() + wait;
    let mut rx = s.revision_tx.subscribe();
    let mut store_ok = s.store_ok.subscribe();
    // A revision whose view of this host is the agent's (moves on past changes that do
    // not concern the host, so that it stays in the history).
    let mut base = after;
    loop {
        let changed = async {
            tokio::select! {
                _ = rx.wait_for(|r| *r > base) => {}
                // Parked polls learn at once that the store went away.
                _ = store_ok.wait_for(|ok| !ok) => {}
            }
        };
        let timed_out = tokio::time::timeout_at(deadline, changed).await.is_err();
        unsynced_store(s)?;
        let Some(b) = s.delta_base(base) else {
            if s.revision() <= after {
                // This replica is behind the agent (it came from another): nothing newer.
                return ok(
                    StatusCode::OK,
                    json!({"host": host, "revision": after, "after": after, "delta": {}}),
                );
            }
            return whole_document(s, host);
        };
        let d = history::delta(&b, host);
        if d.is_empty() && !timed_out {
            base = b.revision;
            continue;
        }
        return ok(
            StatusCode::OK,
            json!({"host": host, "revision": b.revision, "after": after, "delta": d}),
        );
    }
}

/// The caller must hold host `host`'s own credential: a host's token opens that host's
/// state and registration, and nothing else.
fn host_caller(s: &Shared, h: &HeaderMap, host: &str) -> Result<(), ApiError> {
    let token = bearer(h)?;
    match s.host_of(token) {
        Some(owner) if owner == host => {}
        Some(owner) => {
            return Err(ApiError::forbidden(format!(
                "the token of host {owner} cannot act for host {host}"
            )))
        }
        None if s.account_of(token).is_some() => {
            return Err(ApiError::forbidden(format!(
                "an account's token cannot act for host {host}; this needs that host's token"
            )))
        }
        None => {
            return Err(ApiError::unauthorized(
                "this needs the token of that host (--host-tokens on the control plane)",
            ))
        }
    }
    s.spend(&format!("host {host}"))
}

/// `PUT /v1/hosts/{host}`: a host registers its underlay address and uplink.
pub(super) async fn put_host(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(host): Path<String>,
    b: Result<Json<HostDoc>, JsonRejection>,
) -> ApiResult {
    host_caller(&s, &h, &host)?;
    let req = body(b)?;
    let out = s.mutate(|w, _| ops::put_host(w, &host, req.clone()))?;
    ok(StatusCode::OK, out)
}

/// `DELETE /v1/hosts/{host}`: by the host itself, once it carries no port.
pub(super) async fn delete_host(
    State(s): State<Shared>,
    h: HeaderMap,
    Path(host): Path<String>,
) -> ApiResult {
    host_caller(&s, &h, &host)?;
    s.mutate(|w, _| ops::delete_host(w, &host).map(|w| (w, ())))?;
    ok(StatusCode::OK, json!({"deleted": host}))
}

/// `GET /v1/hosts`: every registered host (any account may see where the fleet is).
pub(super) async fn list_hosts(State(s): State<Shared>, h: HeaderMap) -> ApiResult {
    s.caller(&h)?;
    let w = s.world();
    ok(StatusCode::OK, w.hosts.values().collect::<Vec<_>>())
}
