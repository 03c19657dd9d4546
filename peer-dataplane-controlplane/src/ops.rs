//! Control-plane operations as pure functions: `(world, caller, request, now) -> new world`
//! or an [`ApiError`]. A request is validated completely on a copy of the world; the
//! caller persists and publishes the copy only if the operation and [`check`] succeed, so
//! nothing is ever applied half-way.

use crate::hoststate;
use crate::model::*;
use ipnet::IpNet;
use peer_dataplane_model::desired::validate::{overlaps, parse_mac, v4_mapped_range};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub account: String,
}

type Result<T> = std::result::Result<T, ApiError>;

// ---------------------------------------------------------------------------------------
// Requests

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    #[serde(default)]
    pub id: Option<String>,
    pub region: String,
    pub cidrs: Vec<String>,
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSubnet {
    #[serde(default)]
    pub id: Option<String>,
    pub vpc_id: String,
    pub cidr: String,
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
    #[serde(default)]
    pub route_table_id: Option<String>,
    #[serde(default)]
    pub network_acl_id: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRouteTable {
    #[serde(default)]
    pub id: Option<String>,
    pub vpc_id: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRoute {
    pub destination_cidr: String,
    pub target: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePeering {
    #[serde(default)]
    pub id: Option<String>,
    pub requester_vpc_id: String,
    pub accepter_vpc_id: String,
    #[serde(default)]
    pub accepter_account_id: Option<String>,
    #[serde(default)]
    pub requester_region: Option<String>,
    #[serde(default)]
    pub accepter_region: Option<String>,
    #[serde(default)]
    pub auto_accept: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchPeering {
    /// Cap per direction in Mbit/s; `null` removes an explicit cap.
    pub bandwidth_mbps: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePort {
    #[serde(default)]
    pub id: Option<String>,
    pub host: String,
    pub interface: String,
    pub subnet_id: String,
    pub mac: String,
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
    #[serde(default)]
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNetworkAcl {
    #[serde(default)]
    pub id: Option<String>,
    pub vpc_id: String,
    #[serde(default)]
    pub rules: Vec<AclRule>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSecurityGroup {
    #[serde(default)]
    pub id: Option<String>,
    pub vpc_id: String,
    #[serde(default)]
    pub rules: Vec<SgRule>,
}

// ---------------------------------------------------------------------------------------
// Helpers

/// Parses a CIDR, refusing host bits and the IPv4-mapped IPv6 range; `field` names the
/// request field in the error.
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet> {
    let net: IpNet = s.parse().map_err(|_| {
        ApiError::invalid_cidr(format!(
            "{field}: \"{s}\" is not a CIDR (e.g. 10.0.0.0/16 or fd00::/48)"
        ))
    })?;
    if net.trunc() != net {
        return Err(ApiError::invalid_cidr(format!(
            "{field}: \"{s}\" has host bits set (did you mean {}?)",
            net.trunc()
        )));
    }
    if let IpNet::V6(n) = net {
        if overlaps(&IpNet::V6(n), &IpNet::V6(v4_mapped_range())) {
            return Err(ApiError::invalid_cidr(format!(
                "{field}: \"{s}\" overlaps ::ffff:0:0/96 (IPv4-mapped), which is reserved"
            )));
        }
    }
    Ok(net)
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

/// The requested id (checked), or the next free one for `prefix`.
fn new_id<T>(
    w: &mut World,
    requested: &Option<String>,
    prefix: &str,
    existing: &BTreeMap<String, T>,
) -> Result<String> {
    if let Some(id) = requested {
        check_id("id", id, prefix)?;
        if existing.contains_key(id) {
            return Err(ApiError::already_exists(format!("{id} already exists")));
        }
        return Ok(id.clone());
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

fn direction_ok(field: &str, d: &str) -> Result<()> {
    match d {
        "ingress" | "egress" => Ok(()),
        _ => Err(ApiError::invalid_request(format!(
            "{field}: direction \"{d}\" must be ingress or egress"
        ))),
    }
}

fn protocol_ok(field: &str, p: &str, from: Option<u16>, to: Option<u16>) -> Result<()> {
    let known = matches!(p, "all" | "tcp" | "udp" | "icmp" | "icmpv6") || p.parse::<u8>().is_ok();
    if !known {
        return Err(ApiError::invalid_request(format!(
            "{field}: protocol \"{p}\" must be all, tcp, udp, icmp, icmpv6 or a number"
        )));
    }
    match (from, to) {
        (Some(a), Some(b)) if a > b => Err(ApiError::invalid_request(format!(
            "{field}: port_from {a} is above port_to {b}"
        ))),
        (Some(_), None) | (None, Some(_)) => Err(ApiError::invalid_request(format!(
            "{field}: give both port_from and port_to, or neither"
        ))),
        (Some(_), Some(_)) if !matches!(p, "tcp" | "udp") => Err(ApiError::invalid_request(
            format!("{field}: ports apply to tcp and udp only, not {p}"),
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// VPCs, subnets, route tables

pub fn create_vpc(w: &World, c: &Caller, r: CreateVpc) -> Result<(World, Vpc)> {
    let mut w = w.clone();
    region_ok("region", &r.region)?;
    if r.cidrs.is_empty() {
        return Err(ApiError::invalid_request(
            "cidrs: a VPC needs at least one IPv4 CIDR",
        ));
    }
    let mut nets = Vec::new();
    for (i, s) in r.cidrs.iter().enumerate() {
        let net = parse_cidr(&format!("cidrs[{i}]"), s)?;
        if !matches!(net, IpNet::V4(_)) {
            return Err(ApiError::invalid_cidr(format!(
                "cidrs[{i}]: \"{s}\" is IPv6; put it in ipv6_cidr"
            )));
        }
        nets.push(net);
    }
    if let Some(s) = &r.ipv6_cidr {
        let net = parse_cidr("ipv6_cidr", s)?;
        if !matches!(net, IpNet::V6(_)) {
            return Err(ApiError::invalid_cidr(format!(
                "ipv6_cidr: \"{s}\" is IPv4"
            )));
        }
        nets.push(net);
    }
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            if overlaps(a, b) {
                return Err(ApiError::cidr_overlap(format!(
                    "cidrs: {a} and {b} overlap"
                )));
            }
        }
    }
    let vpcs = w.vpcs.clone();
    let id = new_id(&mut w, &r.id, "vpc", &vpcs)?;
    let rtbs = w.route_tables.clone();
    let rtb = new_id(&mut w, &None, "rtb", &rtbs)?;
    let vpc = Vpc {
        id: id.clone(),
        account: c.account.clone(),
        region: r.region,
        cidrs: nets
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(|n| n.to_string())
            .collect(),
        ipv6_cidr: nets
            .iter()
            .find(|n| matches!(n, IpNet::V6(_)))
            .map(|n| n.to_string()),
        main_route_table: rtb.clone(),
    };
    w.route_tables.insert(
        rtb.clone(),
        RouteTable {
            id: rtb,
            vpc: id.clone(),
            routes: BTreeMap::new(),
        },
    );
    w.vpcs.insert(id, vpc.clone());
    Ok((w, vpc))
}

pub fn delete_vpc(w: &World, c: &Caller, id: &str) -> Result<World> {
    let v = owned_vpc(w, c, "vpc", id)?;
    let mut deps: Vec<String> = Vec::new();
    deps.extend(
        w.subnets
            .values()
            .filter(|s| s.vpc == id)
            .map(|s| format!("subnet {}", s.id)),
    );
    // Every peering that names the VPC, live or not: a deleted or rejected one is still
    // in hosts' documents (routes to it are blackholes) and names this VPC.
    deps.extend(
        w.peerings
            .values()
            .filter(|p| p.other_side(id).is_some())
            .map(|p| format!("peering {} ({})", p.id, p.status.as_str())),
    );
    deps.extend(
        w.route_tables
            .values()
            .filter(|t| t.vpc == id && t.id != v.main_route_table)
            .map(|t| format!("route table {}", t.id)),
    );
    deps.extend(
        w.network_acls
            .values()
            .filter(|a| a.vpc == id)
            .map(|a| format!("network acl {}", a.id)),
    );
    deps.extend(
        w.security_groups
            .values()
            .filter(|g| g.vpc == id)
            .map(|g| format!("security group {}", g.id)),
    );
    if !deps.is_empty() {
        return Err(ApiError::dependency_violation(format!(
            "vpc {id} still has {}",
            deps.join(", ")
        )));
    }
    let mut w = w.clone();
    let main = w.vpcs.remove(id).unwrap().main_route_table;
    w.route_tables.remove(&main);
    Ok(w)
}

pub fn create_subnet(w: &World, c: &Caller, r: CreateSubnet) -> Result<(World, Subnet)> {
    let v = owned_vpc(w, c, "vpc_id", &r.vpc_id)?.clone();
    let net = parse_cidr("cidr", &r.cidr)?;
    if !matches!(net, IpNet::V4(_)) {
        return Err(ApiError::invalid_cidr(format!(
            "cidr: \"{}\" is IPv6; put it in ipv6_cidr",
            r.cidr
        )));
    }
    if !vpc_cidrs(&v).iter().any(|p| p.contains(&net)) {
        return Err(ApiError::invalid_cidr(format!(
            "cidr: {net} is not inside vpc {} ({})",
            v.id,
            v.cidrs.join(", ")
        )));
    }
    let ipv6 = match &r.ipv6_cidr {
        None => None,
        Some(s) => {
            let n = parse_cidr("ipv6_cidr", s)?;
            let inside = matches!(n, IpNet::V6(_)) && vpc_cidrs(&v).iter().any(|p| p.contains(&n));
            if !inside {
                return Err(ApiError::invalid_cidr(format!(
                    "ipv6_cidr: {n} is not inside vpc {}'s IPv6 CIDR",
                    v.id
                )));
            }
            Some(n)
        }
    };
    for s in w.subnets.values().filter(|s| s.vpc == v.id) {
        let other: IpNet = s.cidr.parse().unwrap();
        if overlaps(&other, &net) {
            return Err(ApiError::cidr_overlap(format!(
                "cidr: {net} overlaps subnet {} ({})",
                s.id, s.cidr
            )));
        }
        if let (Some(a), Some(b)) = (
            ipv6,
            s.ipv6_cidr.as_ref().and_then(|x| x.parse::<IpNet>().ok()),
        ) {
            if overlaps(&a, &b) {
                return Err(ApiError::cidr_overlap(format!(
                    "ipv6_cidr: {a} overlaps subnet {} ({b})",
                    s.id
                )));
            }
        }
    }
    let route_table = match &r.route_table_id {
        None => v.main_route_table.clone(),
        Some(t) => {
            let rt = w.route_tables.get(t).ok_or_else(|| {
                ApiError::not_found(format!("route_table_id: route table {t} does not exist"))
            })?;
            if rt.vpc != v.id {
                return Err(ApiError::invalid_request(format!(
                    "route_table_id: route table {t} belongs to vpc {}, not {}",
                    rt.vpc, v.id
                )));
            }
            t.clone()
        }
    };
    if let Some(a) = &r.network_acl_id {
        let acl = w.network_acls.get(a).ok_or_else(|| {
            ApiError::not_found(format!("network_acl_id: network acl {a} does not exist"))
        })?;
        if acl.vpc != v.id {
            return Err(ApiError::invalid_request(format!(
                "network_acl_id: network acl {a} belongs to vpc {}, not {}",
                acl.vpc, v.id
            )));
        }
    }
    let mut w = w.clone();
    let existing = w.subnets.clone();
    let id = new_id(&mut w, &r.id, "subnet", &existing)?;
    let s = Subnet {
        id: id.clone(),
        vpc: v.id.clone(),
        cidr: net.to_string(),
        ipv6_cidr: ipv6.map(|n| n.to_string()),
        route_table,
        network_acl: r.network_acl_id,
    };
    w.subnets.insert(id, s.clone());
    Ok((w, s))
}

fn owned_subnet<'a>(w: &'a World, c: &Caller, id: &str) -> Result<&'a Subnet> {
    let s = w
        .subnets
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("subnet {id} does not exist")))?;
    owned_vpc(w, c, "subnet", &s.vpc)?;
    Ok(s)
}

pub fn delete_subnet(w: &World, c: &Caller, id: &str) -> Result<World> {
    owned_subnet(w, c, id)?;
    let ports: Vec<&str> = w
        .ports
        .values()
        .filter(|p| p.subnet == id)
        .map(|p| p.id.as_str())
        .collect();
    if !ports.is_empty() {
        return Err(ApiError::dependency_violation(format!(
            "subnet {id} still has ports {}",
            ports.join(", ")
        )));
    }
    let mut w = w.clone();
    w.subnets.remove(id);
    Ok(w)
}

pub fn create_route_table(
    w: &World,
    c: &Caller,
    r: CreateRouteTable,
) -> Result<(World, RouteTable)> {
    owned_vpc(w, c, "vpc_id", &r.vpc_id)?;
    let mut w = w.clone();
    let existing = w.route_tables.clone();
    let id = new_id(&mut w, &r.id, "rtb", &existing)?;
    let t = RouteTable {
        id: id.clone(),
        vpc: r.vpc_id,
        routes: BTreeMap::new(),
    };
    w.route_tables.insert(id, t.clone());
    Ok((w, t))
}

/// A route table whose VPC the caller owns.
pub fn owned_route_table<'a>(w: &'a World, c: &Caller, id: &str) -> Result<&'a RouteTable> {
    let t = w
        .route_tables
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("route table {id} does not exist")))?;
    owned_vpc(w, c, "route table", &t.vpc).map_err(|e| {
        if e.code == "forbidden" {
            ApiError::forbidden(format!("route table {id} belongs to another account"))
        } else {
            e
        }
    })?;
    Ok(t)
}

pub fn delete_route_table(w: &World, c: &Caller, id: &str) -> Result<World> {
    let t = owned_route_table(w, c, id)?;
    if w.vpcs
        .get(&t.vpc)
        .map(|v| v.main_route_table == id)
        .unwrap_or(false)
    {
        return Err(ApiError::dependency_violation(format!(
            "route table {id} is the main route table of vpc {}",
            t.vpc
        )));
    }
    let users: Vec<&str> = w
        .subnets
        .values()
        .filter(|s| s.route_table == id)
        .map(|s| s.id.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::dependency_violation(format!(
            "route table {id} is used by subnets {}",
            users.join(", ")
        )));
    }
    let mut w = w.clone();
    w.route_tables.remove(id);
    Ok(w)
}

/// Checks one route for table `t` (field names prefixed with `field`); returns the
/// normalised route. Shared by single and bulk route writes.
fn validate_route(w: &World, t: &RouteTable, field: &str, r: &CreateRoute) -> Result<Route> {
    let v = &w.vpcs[&t.vpc];
    let dest = parse_cidr(&format!("{field}destination_cidr"), &r.destination_cidr)?;
    if vpc_cidrs(v).contains(&dest) {
        return Err(ApiError::invalid_target(format!(
            "{field}destination_cidr: {dest} is a CIDR of vpc {}; its local route is implicit",
            v.id
        )));
    }
    match r.target.as_str() {
        "local" => {
            return Err(ApiError::invalid_target(format!(
                "{field}target: local routes are implicit for the VPC's own CIDRs"
            )));
        }
        "blackhole" => {}
        pcx => {
            let p = w.peerings.get(pcx).ok_or_else(|| {
                ApiError::invalid_target(format!(
                    "{field}target: {pcx} is not a known peering connection"
                ))
            })?;
            let Some(peer) = p.other_side(&v.id) else {
                return Err(ApiError::invalid_target(format!(
                    "{field}target: peering {pcx} joins {} and {}, not this table's vpc {}",
                    p.requester_vpc, p.accepter_vpc, v.id
                )));
            };
            if !p.status.is_live() {
                return Err(ApiError::invalid_target(format!(
                    "{field}target: peering {pcx} is {}",
                    p.status.as_str()
                )));
            }
            let peer_vpc = &w.vpcs[peer];
            if !vpc_cidrs(peer_vpc).iter().any(|n| n.contains(&dest)) {
                return Err(ApiError::destination_outside_peer(format!(
                    "{field}destination_cidr: {dest} is outside peer vpc {} ({}) of peering {pcx}",
                    peer_vpc.id,
                    vpc_cidrs(peer_vpc)
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
    }
    Ok(Route {
        destination_cidr: dest.to_string(),
        target: r.target.clone(),
    })
}

pub fn create_route(w: &World, c: &Caller, rtb: &str, r: CreateRoute) -> Result<(World, Route)> {
    let t = owned_route_table(w, c, rtb)?;
    let route = validate_route(w, t, "", &r)?;
    if let Some(existing) = t.routes.get(&route.destination_cidr) {
        return Err(ApiError::already_exists(format!(
            "route table {rtb} already has a route for {} (to {})",
            route.destination_cidr, existing.target
        )));
    }
    let mut w = w.clone();
    w.route_tables
        .get_mut(rtb)
        .unwrap()
        .routes
        .insert(route.destination_cidr.clone(), route.clone());
    Ok((w, route))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRoutes {
    pub routes: Vec<CreateRoute>,
}

/// Replaces every explicit route of a table in one change (all validated first).
pub fn replace_routes(
    w: &World,
    c: &Caller,
    rtb: &str,
    r: ReplaceRoutes,
) -> Result<(World, usize)> {
    let t = owned_route_table(w, c, rtb)?;
    let mut routes = BTreeMap::new();
    for (i, req) in r.routes.iter().enumerate() {
        let route = validate_route(w, t, &format!("routes[{i}]."), req)?;
        if routes.contains_key(&route.destination_cidr) {
            return Err(ApiError::already_exists(format!(
                "routes[{i}]: {} is listed twice",
                route.destination_cidr
            )));
        }
        routes.insert(route.destination_cidr.clone(), route);
    }
    let n = routes.len();
    let mut w = w.clone();
    w.route_tables.get_mut(rtb).unwrap().routes = routes;
    Ok((w, n))
}

pub fn delete_route(w: &World, c: &Caller, rtb: &str, cidr: &str) -> Result<World> {
    owned_route_table(w, c, rtb)?;
    let dest = parse_cidr("destination", cidr)?.to_string();
    let mut w = w.clone();
    if w.route_tables
        .get_mut(rtb)
        .unwrap()
        .routes
        .remove(&dest)
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "route table {rtb} has no route for {dest}"
        )));
    }
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// Peerings (docs/datapath.md §2, §3.4)

/// The first live peering of `vpc` (other than `except`) whose peer's CIDRs overlap
/// `newcomer`'s: (peering id, its peer vpc, the overlapping pair).
fn overlapping_peer<'a>(
    w: &'a World,
    vpc: &str,
    newcomer: &Vpc,
    except: &str,
) -> Option<(&'a str, &'a Vpc, (IpNet, IpNet))> {
    for p in w
        .peerings
        .values()
        .filter(|p| p.id != except && p.status.is_live())
    {
        let Some(peer) = p.other_side(vpc) else {
            continue;
        };
        let peer = &w.vpcs[peer];
        if peer.id == newcomer.id {
            continue;
        }
        if let Some(pair) = first_overlap(peer, newcomer) {
            return Some((&p.id, peer, pair));
        }
    }
    None
}

/// Why `p` cannot be live, if it cannot: the two VPCs overlap, or one VPC's other peers
/// overlap the newcomer (docs/datapath.md §3.4).
fn overlap_reason(w: &World, p: &Peering) -> Option<String> {
    let (a, b) = (&w.vpcs[&p.requester_vpc], &w.vpcs[&p.accepter_vpc]);
    if let Some((x, y)) = first_overlap(a, b) {
        return Some(format!(
            "CIDR {x} of vpc {} overlaps CIDR {y} of vpc {}",
            a.id, b.id
        ));
    }
    for (me, newcomer) in [(a, b), (b, a)] {
        if let Some((pcx, peer, (x, y))) = overlapping_peer(w, &me.id, newcomer, &p.id) {
            return Some(format!(
                "vpc {} is already peered with vpc {} (CIDR {x}, via {pcx}), which overlaps CIDR {y} of vpc {}",
                me.id, peer.id, newcomer.id
           ));
        }
    }
    None
}

pub fn create_peering(
    w: &World,
    c: &Caller,
    r: CreatePeering,
    now: Timestamp,
) -> Result<(World, Peering)> {
    let req = owned_vpc(w, c, "requester_vpc_id", &r.requester_vpc_id)?;
    let acc = vpc(w, "accepter_vpc_id", &r.accepter_vpc_id)?;
    if req.id == acc.id {
        return Err(ApiError::invalid_request(format!(
            "accepter_vpc_id: {} is the requester vpc itself",
            acc.id
        )));
    }
    if let Some(a) = &r.accepter_account_id {
        if *a != acc.account {
            return Err(ApiError::invalid_request(format!(
                "accepter_account_id: vpc {} does not belong to account {a}",
                acc.id
            )));
        }
    }
    for (field, given, actual) in [
        ("requester_region", &r.requester_region, &req.region),
        ("accepter_region", &r.accepter_region, &acc.region),
    ] {
        if let Some(g) = given {
            if g != actual {
                return Err(ApiError::invalid_request(format!(
                    "{field}: the vpc is in region {actual}, not {g}"
                )));
            }
        }
    }
    if r.auto_accept && acc.account != c.account {
        return Err(ApiError::auto_accept_cross_account(format!(
            "auto_accept: vpc {} belongs to another account; its owner must accept",
            acc.id
        )));
    }
    if let Some(p) = w
        .peerings
        .values()
        .find(|p| p.status.is_live() && p.other_side(&req.id) == Some(acc.id.as_str()))
    {
        return Err(ApiError::duplicate_peering(format!(
            "peering {} already joins vpc {} and vpc {} ({})",
            p.id,
            req.id,
            acc.id,
            p.status.as_str()
        )));
    }
    let mut w2 = w.clone();
    let existing = w2.peerings.clone();
    let id = new_id(&mut w2, &r.id, "pcx", &existing)?;
    let mut p = Peering {
        id: id.clone(),
        requester_vpc: req.id.clone(),
        requester_account: req.account.clone(),
        requester_region: req.region.clone(),
        accepter_vpc: acc.id.clone(),
        accepter_account: acc.account.clone(),
        accepter_region: acc.region.clone(),
        status: if r.auto_accept {
            PeeringStatus::Active
        } else {
            PeeringStatus::PendingAcceptance
        },
        status_message: None,
        created_at: now,
        expires_at: now + PEERING_EXPIRY_SECS,
        bandwidth_mbps: None,
    };
    if let Some(why) = overlap_reason(&w2, &p) {
        p.status = PeeringStatus::Failed;
        p.status_message = Some(why);
    }
    w2.peerings.insert(id, p.clone());
    Ok((w2, p))
}

fn peering<'a>(w: &'a World, id: &str) -> Result<&'a Peering> {
    w.peerings
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("peering {id} does not exist")))
}

/// A peering the caller is a party to (either side).
pub fn visible_peering<'a>(w: &'a World, c: &Caller, id: &str) -> Result<&'a Peering> {
    let p = peering(w, id)?;
    if !p.involves_account(&c.account) {
        return Err(ApiError::forbidden(format!(
            "peering {id} does not involve your account"
        )));
    }
    Ok(p)
}

fn transition(w: &World, id: &str, to: PeeringStatus, message: Option<String>) -> World {
    let mut w = w.clone();
    let p = w.peerings.get_mut(id).unwrap();
    p.status = to;
    p.status_message = message;
    w
}

pub fn accept_peering(w: &World, c: &Caller, id: &str, now: Timestamp) -> Result<(World, Peering)> {
    let p = visible_peering(w, c, id)?;
    if p.accepter_account != c.account {
        return Err(ApiError::forbidden(format!(
            "peering {id} can only be accepted by the accepter's account {}",
            p.accepter_account
        )));
    }
    if p.status == PeeringStatus::PendingAcceptance && now >= p.expires_at {
        return Err(ApiError::invalid_state_transition(format!(
            "peering {id} expired at {} unaccepted",
            p.expires_at
        )));
    }
    if p.status != PeeringStatus::PendingAcceptance {
        return Err(ApiError::invalid_state_transition(format!(
            "peering {id} is {}, not pending-acceptance",
            p.status.as_str()
        )));
    }
    if let Some(why) = overlap_reason(w, p) {
        return Err(ApiError::cidr_overlap(format!(
            "peering {id} cannot become active: {why}"
        )));
    }
    let w = transition(w, id, PeeringStatus::Active, None);
    let p = w.peerings[id].clone();
    Ok((w, p))
}

pub fn reject_peering(w: &World, c: &Caller, id: &str, now: Timestamp) -> Result<(World, Peering)> {
    let p = visible_peering(w, c, id)?;
    if p.accepter_account != c.account {
        return Err(ApiError::forbidden(format!(
            "peering {id} can only be rejected by the accepter's account {}",
            p.accepter_account
        )));
    }
    if p.status != PeeringStatus::PendingAcceptance || now >= p.expires_at {
        let status = if p.status == PeeringStatus::PendingAcceptance {
            "expired"
        } else {
            p.status.as_str()
        };
        return Err(ApiError::invalid_state_transition(format!(
            "peering {id} is {status}, not pending-acceptance"
        )));
    }
    let w = transition(w, id, PeeringStatus::Rejected, None);
    let p = w.peerings[id].clone();
    Ok((w, p))
}

/// Either side may delete a peering at any time (docs/datapath.md §1, §2); routes that point at it stay and
/// become blackholes (docs/datapath.md §3.1).
pub fn delete_peering(w: &World, c: &Caller, id: &str) -> Result<(World, Peering)> {
    let p = visible_peering(w, c, id)?;
    if p.status == PeeringStatus::Deleted {
        return Err(ApiError::invalid_state_transition(format!(
            "peering {id} is already deleted"
        )));
    }
    let w = transition(w, id, PeeringStatus::Deleted, None);
    let p = w.peerings[id].clone();
    Ok((w, p))
}

pub fn patch_peering(w: &World, c: &Caller, id: &str, r: PatchPeering) -> Result<(World, Peering)> {
    visible_peering(w, c, id)?;
    if let Some(m) = r.bandwidth_mbps {
        if m == 0 || m > 400_000 {
            return Err(ApiError::invalid_request(format!(
                "bandwidth_mbps: {m} is outside 1..=400000"
            )));
        }
    }
    let mut w = w.clone();
    let p = w.peerings.get_mut(id).unwrap();
    p.bandwidth_mbps = r.bandwidth_mbps;
    let p = p.clone();
    Ok((w, p))
}

/// Pending peerings whose 7 days have passed become `expired`. `None` if none did.
pub fn expire(w: &World, now: Timestamp) -> Option<World> {
    let due: Vec<String> = w
        .peerings
        .values()
        .filter(|p| p.status == PeeringStatus::PendingAcceptance && now >= p.expires_at)
        .map(|p| p.id.clone())
        .collect();
    if due.is_empty() {
        return None;
    }
    let mut w = w.clone();
    for id in due {
        let p = w.peerings.get_mut(&id).unwrap();
        p.status = PeeringStatus::Expired;
        p.status_message = Some("not accepted within 7 days".into());
    }
    Some(w)
}

// ---------------------------------------------------------------------------------------
// Ports, network ACLs, security groups

pub fn create_port(w: &World, c: &Caller, r: CreatePort) -> Result<(World, Port)> {
    let s = owned_subnet(w, c, &r.subnet_id)
        .map_err(|e| ApiError {
            message: format!("subnet_id: {}", e.message),
            ..e
        })?
        .clone();
    if r.host.is_empty() || r.host.len() > 64 {
        return Err(ApiError::invalid_request("host: must be 1 to 64 bytes"));
    }
    if r.interface.is_empty()
        || r.interface.len() >= peer_dataplane_model::desired::validate::IFNAMSIZ
        || r.interface.contains('/')
    {
        return Err(ApiError::invalid_request(format!(
            "interface: \"{}\" is not a valid interface name",
            r.interface
        )));
    }
    if parse_mac(&r.mac).is_none() {
        return Err(ApiError::invalid_request(format!(
            "mac: \"{}\" is not a MAC address (xx:xx:xx:xx:xx:xx)",
            r.mac
        )));
    }
    if r.ipv4.is_none() && r.ipv6.is_none() {
        return Err(ApiError::invalid_request(
            "ipv4, ipv6: a port needs at least one address",
        ));
    }
    if let Some(a) = &r.ipv4 {
        let ip: Ipv4Addr = a.parse().map_err(|_| {
            ApiError::invalid_request(format!("ipv4: \"{a}\" is not an IPv4 address"))
        })?;
        let net: IpNet = s.cidr.parse().unwrap();
        if !net.contains(&std::net::IpAddr::V4(ip)) {
            return Err(ApiError::invalid_request(format!(
                "ipv4: {ip} is not inside subnet {} ({})",
                s.id, s.cidr
            )));
        }
    }
    if let Some(a) = &r.ipv6 {
        let ip: Ipv6Addr = a.parse().map_err(|_| {
            ApiError::invalid_request(format!("ipv6: \"{a}\" is not an IPv6 address"))
        })?;
        let inside = s
            .ipv6_cidr
            .as_ref()
            .and_then(|n| n.parse::<IpNet>().ok())
            .map(|n| n.contains(&std::net::IpAddr::V6(ip)));
        if inside != Some(true) {
            return Err(ApiError::invalid_request(format!(
                "ipv6: {ip} is not inside subnet {} ({})",
                s.id,
                s.ipv6_cidr.as_deref().unwrap_or("no IPv6 CIDR")
            )));
        }
    }
    for other in w.ports.values() {
        if other.host == r.host && other.interface == r.interface {
            return Err(ApiError::already_exists(format!(
                "interface: host {} already has port {} on {}",
                r.host, other.id, r.interface
            )));
        }
        let same_vpc = w
            .subnets
            .get(&other.subnet)
            .map(|o| o.vpc == s.vpc)
            .unwrap_or(false);
        for (mine, theirs) in [(&r.ipv4, &other.ipv4), (&r.ipv6, &other.ipv6)] {
            if same_vpc && mine.is_some() && mine == theirs {
                return Err(ApiError::address_in_use(format!(
                    "address {} is already used by port {} in vpc {}",
                    mine.as_ref().unwrap(),
                    other.id,
                    s.vpc
                )));
            }
        }
    }
    for g in &r.security_groups {
        let sg = w
            .security_groups
            .get(g)
            .ok_or_else(|| ApiError::not_found(format!("security_groups: {g} does not exist")))?;
        if sg.vpc != s.vpc {
            return Err(ApiError::invalid_request(format!(
                "security_groups: {g} belongs to vpc {}, not {}",
                sg.vpc, s.vpc
            )));
        }
    }
    let mut w = w.clone();
    let existing = w.ports.clone();
    let id = new_id(&mut w, &r.id, "port", &existing)?;
    let p = Port {
        id: id.clone(),
        host: r.host,
        interface: r.interface,
        subnet: s.id,
        mac: r.mac.to_ascii_lowercase(),
        ipv4: r.ipv4,
        ipv6: r.ipv6,
        security_groups: r.security_groups,
    };
    w.ports.insert(id, p.clone());
    Ok((w, p))
}

pub fn delete_port(w: &World, c: &Caller, id: &str) -> Result<World> {
    let p = w
        .ports
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("port {id} does not exist")))?;
    owned_subnet(w, c, &p.subnet)?;
    let mut w = w.clone();
    w.ports.remove(id);
    Ok(w)
}

fn check_acl_rules(rules: &[AclRule]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (i, r) in rules.iter().enumerate() {
        let f = format!("rules[{i}]");
        if !(1..=32766).contains(&r.number) {
            return Err(ApiError::invalid_request(format!(
                "{f}: number {} is outside 1..=32766",
                r.number
            )));
        }
        direction_ok(&f, &r.direction)?;
        if !seen.insert((r.direction.clone(), r.number)) {
            return Err(ApiError::already_exists(format!(
                "{f}: {} rule number {} is used twice",
                r.direction, r.number
            )));
        }
        protocol_ok(&f, &r.protocol, r.port_from, r.port_to)?;
        parse_cidr(&format!("{f}.cidr"), &r.cidr)?;
        if !matches!(r.action.as_str(), "allow" | "deny") {
            return Err(ApiError::invalid_request(format!(
                "{f}: action \"{}\" must be allow or deny",
                r.action
            )));
        }
    }
    Ok(())
}

pub fn create_network_acl(
    w: &World,
    c: &Caller,
    r: CreateNetworkAcl,
) -> Result<(World, NetworkAcl)> {
    owned_vpc(w, c, "vpc_id", &r.vpc_id)?;
    check_acl_rules(&r.rules)?;
    let mut w = w.clone();
    let existing = w.network_acls.clone();
    let id = new_id(&mut w, &r.id, "acl", &existing)?;
    let acl = NetworkAcl {
        id: id.clone(),
        vpc: r.vpc_id,
        rules: r.rules,
    };
    w.network_acls.insert(id, acl.clone());
    Ok((w, acl))
}

pub fn delete_network_acl(w: &World, c: &Caller, id: &str) -> Result<World> {
    let a = w
        .network_acls
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("network acl {id} does not exist")))?;
    owned_vpc(w, c, "network acl", &a.vpc)?;
    let users: Vec<&str> = w
        .subnets
        .values()
        .filter(|s| s.network_acl.as_deref() == Some(id))
        .map(|s| s.id.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::dependency_violation(format!(
            "network acl {id} is used by subnets {}",
            users.join(", ")
        )));
    }
    let mut w = w.clone();
    w.network_acls.remove(id);
    Ok(w)
}

pub fn create_security_group(
    w: &World,
    c: &Caller,
    r: CreateSecurityGroup,
) -> Result<(World, SecurityGroup)> {
    let v = owned_vpc(w, c, "vpc_id", &r.vpc_id)?;
    for (i, rule) in r.rules.iter().enumerate() {
        let f = format!("rules[{i}]");
        direction_ok(&f, &rule.direction)?;
        protocol_ok(&f, &rule.protocol, rule.port_from, rule.port_to)?;
        match (&rule.cidr, &rule.peer_security_group) {
            (Some(cidr), None) => {
                parse_cidr(&format!("{f}.cidr"), cidr)?;
            }
            (None, Some(g)) => {
                let peer = w.security_groups.get(g).ok_or_else(|| {
                    ApiError::not_found(format!("{f}.peer_security_group: {g} does not exist"))
                })?;
                let peer_region = &w.vpcs[&peer.vpc].region;
                if *peer_region != v.region {
                    return Err(ApiError::invalid_request(format!(
                        "{f}.peer_security_group: {g} is in region {peer_region}, not {}",
                        v.region
                    )));
                }
            }
            _ => {
                return Err(ApiError::invalid_request(format!(
                    "{f}: give exactly one of cidr and peer_security_group"
                )))
            }
        }
    }
    let mut w = w.clone();
    let existing = w.security_groups.clone();
    let id = new_id(&mut w, &r.id, "sg", &existing)?;
    let sg = SecurityGroup {
        id: id.clone(),
        vpc: r.vpc_id,
        rules: r.rules,
    };
    w.security_groups.insert(id, sg.clone());
    Ok((w, sg))
}

pub fn delete_security_group(w: &World, c: &Caller, id: &str) -> Result<World> {
    let g = w
        .security_groups
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("security group {id} does not exist")))?;
    owned_vpc(w, c, "security group", &g.vpc)?;
    let mut users: Vec<String> = w
        .ports
        .values()
        .filter(|p| p.security_groups.iter().any(|s| s == id))
        .map(|p| format!("port {}", p.id))
        .collect();
    users.extend(
        w.security_groups
            .values()
            .filter(|s| {
                s.rules
                    .iter()
                    .any(|r| r.peer_security_group.as_deref() == Some(id))
            })
            .map(|s| format!("security group {}", s.id)),
    );
    if !users.is_empty() {
        return Err(ApiError::dependency_violation(format!(
            "security group {id} is referenced by {}",
            users.join(", ")
        )));
    }
    let mut w = w.clone();
    w.security_groups.remove(id);
    Ok(w)
}

/// The final gate: every host's state document must pass the agent's own validation. An
/// operation that would hand any agent a document it refuses is refused here instead.
pub fn check(w: &World) -> Result<()> {
    let mut hosts: BTreeSet<&str> = w.ports.values().map(|p| p.host.as_str()).collect();
    hosts.insert(""); // the port-less view checks VPCs, tables and peerings on their own
    for host in hosts {
        let doc = hoststate::document(w, host);
        if let Err(e) = peer_dataplane_model::desired::validate::validate(&doc) {
            return Err(ApiError::inconsistent(format!(
                "the change would leave an invalid state: {e}"
            )));
        }
    }
    Ok(())
}
