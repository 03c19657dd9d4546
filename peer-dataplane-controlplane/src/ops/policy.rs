//! Network ACLs and security groups.

use super::*;

fn check_acl_rules(acl_rules: &[AclRule]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (i, r) in acl_rules.iter().enumerate() {
        let f = format!("rules[{i}]");
        rules::acl_rule_number(&f, r.number)?;
        rules::direction(&f, &r.direction)?;
        if !seen.insert((r.direction.clone(), r.number)) {
            return Err(ApiError::already_exists(format!(
                "{f}: {} rule number {} is used twice",
                r.direction, r.number
            )));
        }
        rule_fields(&f, &r.direction, &r.protocol, r.port_from, r.port_to)?;
        rules::rule_cidr(&format!("{f}.cidr"), &r.cidr)?;
        rules::acl_action(&f, &r.action)?;
    }
    Ok(())
}

pub fn create_network_acl(
    w: &World,
    c: &Caller,
    r: CreateNetworkAcl,
) -> Result<(World, NetworkAcl)> {
    owned_vpc(w, c, "vpc_id", &r.vpc)?;
    check_acl_rules(&r.rules)?;
    let mut w = w.clone();
    let id = new_id(&mut w, Some(&r.id), "acl", |o| &o.network_acls)?;
    let acl = NetworkAcl {
        id: id.clone(),
        ..r
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
    let subnets = w.subnets.values();
    unused(
        || format!("network acl {id} is used by subnets"),
        subnets
            .filter(|s| s.network_acl.as_deref() == Some(id))
            .map(|s| s.id.as_str()),
    )?;
    let mut w = w.clone();
    w.network_acls.remove(id);
    Ok(w)
}

pub fn create_security_group(
    w: &World,
    c: &Caller,
    r: CreateSecurityGroup,
) -> Result<(World, SecurityGroup)> {
    let v = owned_vpc(w, c, "vpc_id", &r.vpc)?;
    for (i, rule) in r.rules.iter().enumerate() {
        let f = format!("rules[{i}]");
        rule_fields(
            &f,
            &rule.direction,
            &rule.protocol,
            rule.port_from,
            rule.port_to,
        )?;
        match (&rule.cidr, &rule.peer_security_group) {
            (Some(cidr), None) => {
                rules::rule_cidr(&format!("{f}.cidr"), cidr)?;
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
    let id = new_id(&mut w, Some(&r.id), "sg", |o| &o.security_groups)?;
    let sg = SecurityGroup {
        id: id.clone(),
        ..r
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
        .filter(|p| p.security_groups.iter().flatten().any(|s| s == id))
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
