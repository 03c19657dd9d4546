//! VPCs and subnets.

use super::*;

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
    let id = new_id(&mut w, r.id.as_deref(), "vpc", |o| &o.vpcs)?;
    let rtb = new_id(&mut w, None, "rtb", |o| &o.route_tables)?;
    let vni = next_number(&mut w, "vni", peer_dataplane_common::overlay::MAX_VNI)?;
    let vpc = Vpc {
        spec: VpcDoc {
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
            vni: Some(vni),
        },
        main_route_table: rtb.clone(),
    };
    w.route_tables.insert(
        rtb.clone(),
        RouteTable {
            id: rtb,
            vpc: id.clone(),
            routes: Routes::new(),
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
    let id = new_id(&mut w, r.id.as_deref(), "subnet", |o| &o.subnets)?;
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

pub(super) fn owned_subnet<'a>(w: &'a World, c: &Caller, id: &str) -> Result<&'a Subnet> {
    let s = w
        .subnets
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("subnet {id} does not exist")))?;
    owned_vpc(w, c, "subnet", &s.vpc)?;
    Ok(s)
}

pub fn delete_subnet(w: &World, c: &Caller, id: &str) -> Result<World> {
    owned_subnet(w, c, id)?;
    let ports = w.ports.values().filter(|p| p.subnet == id);
    unused(
        || format!("subnet {id} still has ports"),
        ports.map(|p| p.id.as_str()),
    )?;
    let mut w = w.clone();
    w.subnets.remove(id);
    Ok(w)
}
