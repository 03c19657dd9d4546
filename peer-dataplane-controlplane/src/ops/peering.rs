//! Peerings: request, accept, reject, delete, caps, expiry (docs/datapath.md §2, §3.4).

use super::*;

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
    let id = new_id(&mut w2, r.id.as_deref(), "pcx", |o| &o.peerings)?;
    let tunnel_key = next_number(&mut w2, "tunnel_key", u32::MAX)?;
    let mut p = Peering {
        spec: PeeringDoc {
            id: id.clone(),
            requester_vpc: req.id.clone(),
            accepter_vpc: acc.id.clone(),
            status: if r.auto_accept {
                PeeringStatus::Active
            } else {
                PeeringStatus::PendingAcceptance
            },
            tunnel_key: Some(tunnel_key),
            ..PeeringDoc::default()
        },
        requester_account: req.account.clone(),
        requester_region: req.region.clone(),
        accepter_account: acc.account.clone(),
        accepter_region: acc.region.clone(),
        status_message: None,
        created_at: now,
        expires_at: now + PEERING_EXPIRY_SECS,
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
