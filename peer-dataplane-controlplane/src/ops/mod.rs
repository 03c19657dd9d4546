//! Control-plane operations as pure functions: `(world, caller, request, now) -> new world`
//! or an [`ApiError`]. A request is validated completely on a copy of the world; the
//! caller persists and publishes the copy only if the operation and [`check`] succeed, so
//! nothing is ever applied half-way. One module per kind of object; the field checks are
//! the model's own (`peer_dataplane_model::desired::rules`), as the agents make them.

mod host;
mod network;
mod peering;
mod policy;
mod port;
mod routes;

pub use crate::requests::*;
pub use host::*;
pub use network::*;
pub use peering::*;
pub use policy::*;
pub use port::*;
pub use routes::*;

use crate::hoststate;
use crate::world::*;
use ipnet::IpNet;
use peer_dataplane_model::desired::document::{PeeringDoc, PortDoc, VpcDoc};
use peer_dataplane_model::desired::objects::Objects;
use peer_dataplane_model::desired::rules::{self, Fault, Invalid};
use peer_dataplane_model::desired::validate::overlaps;
use std::collections::{BTreeMap, BTreeSet};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
}

type Result<T> = std::result::Result<T, ApiError>;

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> ApiError {
        match e.fault {
            Fault::Cidr => ApiError::invalid_cidr(e.message),
            Fault::Target => ApiError::invalid_target(e.message),
            Fault::OutsidePeer => ApiError::destination_outside_peer(e.message),
            Fault::Request => ApiError::invalid_request(e.message),
        }
    }
}

/// Parses a CIDR, refusing host bits and the IPv4-mapped IPv6 range; `field` names the
/// request field in the error.
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet> {
    Ok(rules::cidr(field, s)?)
}

/// Refuses a delete while something still refers to the object: `what` (e.g. "subnet
/// subnet-a1 still has ports") and the ids of `users`.
fn unused<'a>(what: impl FnOnce() -> String, users: impl Iterator<Item = &'a str>) -> Result<()> {
    let users: Vec<&str> = users.collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::dependency_violation(format!(
        "{} {}",
        what(),
        users.join(", ")
    )))
}

/// All CIDRs of a VPC (stored values are valid: they were checked on the way in).
pub fn vpc_cidrs(v: &Vpc) -> Vec<IpNet> {
    v.cidrs
        .iter()
        .chain(v.ipv6_cidr.iter())
        .filter_map(|c| c.parse().ok())
        .collect()
}

fn first_overlap(a: &Vpc, b: &Vpc) -> Option<(IpNet, IpNet)> {
    for x in vpc_cidrs(a) {
        for y in vpc_cidrs(b) {
            if overlaps(&x, &y) {
                return Some((x, y));
            }
        }
    }
    None
}

fn check_id(field: &str, id: &str, prefix: &str) -> Result<()> {
    let ok = id.starts_with(&format!("{prefix}-"))
        && id.len() <= peer_dataplane_common::NAME_MAX_LEN
        && id.len() > prefix.len() + 1
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !ok {
        return Err(ApiError::invalid_request(format!(
            "{field}: \"{id}\" must be {prefix}- followed by letters, digits or dashes, at most {} bytes",
            peer_dataplane_common::NAME_MAX_LEN
       )));
    }
    Ok(())
}

/// The requested id (checked; empty = none), or the next free one for `prefix`, among the
/// objects of one `kind`.
fn new_id<T>(
    w: &mut World,
    requested: Option<&str>,
    prefix: &str,
    kind: fn(&Objects<Stored>) -> &BTreeMap<String, T>,
) -> Result<String> {
    let existing = kind(&w.objects);
    if let Some(id) = requested.filter(|id| !id.is_empty()) {
        check_id("id", id, prefix)?;
        if existing.contains_key(id) {
            return Err(ApiError::already_exists(format!("{id} already exists")));
        }
        return Ok(id.to_string());
    }
    let counter = w.id_counters.entry(prefix.to_string()).or_insert(0);
    loop {
        *counter += 1;
        let id = format!("{prefix}-{:08x}", *counter);
        if !existing.contains_key(&id) {
            return Ok(id);
        }
    }
}

fn vpc<'a>(w: &'a World, field: &str, id: &str) -> Result<&'a Vpc> {
    w.vpcs
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("{field}: vpc {id} does not exist")))
}

/// A VPC the caller owns: 404 if it does not exist, 403 if it is another account's.
pub fn owned_vpc<'a>(w: &'a World, c: &Caller, field: &str, id: &str) -> Result<&'a Vpc> {
    let v = vpc(w, field, id)?;
    if v.account != c.account {
        return Err(ApiError::forbidden(format!(
            "{field}: vpc {id} belongs to another account"
        )));
    }
    Ok(v)
}

fn region_ok(field: &str, r: &str) -> Result<()> {
    if r.is_empty() || !r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(ApiError::invalid_request(format!(
            "{field}: \"{r}\" is not a region name"
        )));
    }
    Ok(())
}

/// A rule's direction, protocol and port range, as the agents check them.
fn rule_fields(
    field: &str,
    direction: &str,
    protocol: &str,
    from: Option<u16>,
    to: Option<u16>,
) -> Result<()> {
    rules::direction(field, direction)?;
    rules::protocol_and_ports(field, protocol, from, to)?;
    Ok(())
}

/// A change of routes only needs no whole check: each new route was checked by its
/// operation with rules at least as strict as the agents' (`routes::validate_route`), a
/// removed route is referred to by nothing, and the world it was made on passed the gate
/// (`crate::checked`). True when every object but the routes of the tables is the same
/// (tables: same ids and VPCs).
pub fn only_routes_differ(old: &World, new: &World) -> bool {
    let tables = |w: &World| -> Vec<(String, String)> {
        w.route_tables
            .values()
            .map(|t| (t.id.clone(), t.vpc.clone()))
            .collect()
    };
    old.vpcs == new.vpcs
        && old.subnets == new.subnets
        && old.peerings == new.peerings
        && old.ports == new.ports
        && old.network_acls == new.network_acls
        && old.security_groups == new.security_groups
        && old.hosts == new.hosts
        && tables(old) == tables(new)
}

/// The final gate: every host's state document must pass the agent's own validation. An
/// operation that would hand any agent a document it refuses is refused here instead.
pub fn check(w: &World) -> Result<()> {
    let hosts: BTreeSet<&str> = w.ports.values().map(|p| p.host()).collect();
    // The region without ports checks what no host may carry (a VPC, table or peering
    // no port uses yet), then each host's own selection.
    let ix = hoststate::Index::of(w);
    let docs = std::iter::once(hoststate::region_document(w)).chain(
        hosts
            .into_iter()
            .map(|h| hoststate::document_in(w, &ix, h, true)),
    );
    for doc in docs {
        if let Err(e) = peer_dataplane_model::desired::validate::validate(&doc) {
            return Err(ApiError::inconsistent(format!(
                "the change would leave an invalid state: {e}"
            )));
        }
    }
    Ok(())
}
