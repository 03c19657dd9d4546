//! Route tables and their routes.

use super::*;

pub fn create_route_table(
    w: &World,
    c: &Caller,
    r: CreateRouteTable,
) -> Result<(World, RouteTable)> {
    owned_vpc(w, c, "vpc_id", &r.vpc_id)?;
    let mut w = w.clone();
    let id = new_id(&mut w, r.id.as_deref(), "rtb", |o| &o.route_tables)?;
    let t = RouteTable {
        id: id.clone(),
        vpc: r.vpc_id,
        routes: Routes::new(),
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
    let subnets = w.subnets.values();
    unused(
        || format!("route table {id} is used by subnets"),
        subnets
            .filter(|s| s.route_table == id)
            .map(|s| s.id.as_str()),
    )?;
    let mut w = w.clone();
    w.route_tables.remove(id);
    Ok(w)
}

/// Checks one route for table `t` (field names prefixed with `field`); returns the
/// normalised route. Shared by single and bulk route writes.
fn validate_route(w: &World, t: &RouteTable, field: &str, r: &CreateRoute) -> Result<Route> {
    let v = &w.vpcs[&t.vpc];
    let dest = parse_cidr(&format!("{field}destination_cidr"), &r.destination)?;
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
            rules::joins(
                &format!("{field}target"),
                pcx,
                &p.requester_vpc,
                &p.accepter_vpc,
                &v.id,
            )?;
            if !p.status.is_live() {
                return Err(ApiError::invalid_target(format!(
                    "{field}target: peering {pcx} is {}",
                    p.status.as_str()
                )));
            }
            let peer_vpc = &w.vpcs[p.other_side(&v.id).unwrap_or_default()];
            rules::inside_peer(
                &format!("{field}destination_cidr: {dest}"),
                &dest,
                pcx,
                &peer_vpc.id,
                &vpc_cidrs(peer_vpc),
            )?;
        }
    }
    // Normalised destination; every other field as requested.
    Ok(Route {
        destination: dest.to_string(),
        ..r.clone()
    })
}

pub fn create_route(w: &World, c: &Caller, rtb: &str, r: CreateRoute) -> Result<(World, Route)> {
    let t = owned_route_table(w, c, rtb)?;
    let route = validate_route(w, t, "", &r)?;
    if let Some(existing) = t.routes.get(&route.destination) {
        return Err(ApiError::already_exists(format!(
            "route table {rtb} already has a route for {} (to {})",
            route.destination, existing.target
        )));
    }
    let mut w = w.clone();
    w.route_tables
        .get_mut(rtb)
        .unwrap()
        .routes
        .insert(route.destination.clone(), route.clone());
    Ok((w, route))
}

/// Replaces every explicit route of a table in one change (all validated first).
pub fn replace_routes(
    w: &World,
    c: &Caller,
    rtb: &str,
    r: ReplaceRoutes,
) -> Result<(World, usize)> {
    let t = owned_route_table(w, c, rtb)?;
    let mut routes = Routes::new();
    for (i, req) in r.routes.iter().enumerate() {
        let route = validate_route(w, t, &format!("routes[{i}]."), req)?;
        if routes.contains_key(&route.destination) {
            return Err(ApiError::already_exists(format!(
                "routes[{i}]: {} is listed twice",
                route.destination
            )));
        }
        routes.insert(route.destination.clone(), route);
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
