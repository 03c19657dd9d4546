//! Hosts: the hypervisors of the fleet. A host registers itself (its agent, with its own
//! credential): its underlay address, which other hosts send its Geneve traffic to, and
//! its uplink. Every VPC has a VNI and every peering a tunnel key from the moment it is
//! created, so that a document needs nothing more once a second host appears.

use super::*;
use peer_dataplane_model::desired::document::HostDoc;

/// `PUT /v1/hosts/{id}`: registers host `id`, or moves it to a new address.
pub fn put_host(w: &World, id: &str, r: HostDoc) -> Result<(World, Host)> {
    if !r.id.is_empty() && r.id != id {
        return Err(ApiError::invalid_request(format!(
            "id: \"{}\" is not the host of the path ({id})",
            r.id
        )));
    }
    let what = format!("host {id}");
    let v4 = rules::underlay_ipv4(&what, &r.underlay_ipv4)?;
    let v6 = match &r.underlay_ipv6 {
        Some(s) => Some(rules::underlay_ipv6(&what, s)?),
        None => None,
    };
    let Some(uplink) = &r.uplink else {
        return Err(ApiError::invalid_request(format!(
            "{what}: uplink: the interface the overlay uses is required"
        )));
    };
    rules::interface(&format!("{what} uplink"), uplink)?;
    if let Some(p) = w
        .ports
        .values()
        .find(|p| p.host() == id && p.interface == *uplink)
    {
        return Err(ApiError::address_in_use(format!(
            "{what} uplink: interface {uplink} carries port {} of this host; the uplink must be another interface",
            p.id
        )));
    }
    for other in w.hosts.values().filter(|h| h.id != id) {
        let taken = other.underlay_ipv4.parse().ok() == Some(v4)
            || (v6.is_some() && other.underlay_ipv6.as_ref().and_then(|s| s.parse().ok()) == v6);
        if taken {
            return Err(ApiError::address_in_use(format!(
                "{what}: underlay address already used by host {}",
                other.id
            )));
        }
    }
    let host = HostDoc {
        id: id.to_string(),
        underlay_ipv4: v4.to_string(),
        underlay_ipv6: v6.map(|a| a.to_string()),
        uplink: Some(uplink.clone()),
    };
    let mut w = w.clone();
    w.hosts.insert(id.to_string(), host.clone());
    Ok((w, host))
}

/// `DELETE /v1/hosts/{id}`: only once no port is placed on it.
pub fn delete_host(w: &World, id: &str) -> Result<World> {
    if !w.hosts.contains_key(id) {
        return Err(ApiError::not_found(format!("host {id} does not exist")));
    }
    unused(
        || format!("host {id} carries ports"),
        w.ports
            .values()
            .filter(|p| p.host() == id)
            .map(|p| p.id.as_str()),
    )?;
    let mut w = w.clone();
    w.hosts.remove(id);
    Ok(w)
}

/// The next fleet-wide number of `counter` (`vni`, `tunnel_key`), at most `max`.
pub fn next_number(w: &mut World, counter: &str, max: u32) -> Result<u32> {
    let n = w.id_counters.entry(counter.to_string()).or_insert(0);
    if *n >= max as u64 {
        return Err(ApiError::inconsistent(format!(
            "every {counter} up to {max} is taken"
        )));
    }
    *n += 1;
    Ok(*n as u32)
}

/// VPCs and peerings stored before VNIs and tunnel keys existed get theirs (in id order),
/// so that a store written by an older control plane serves a fleet as it is. True if
/// anything changed (the caller stores it as a new revision).
pub fn number_unnumbered(w: &mut World) -> Result<bool> {
    let vpcs: Vec<String> = w
        .vpcs
        .iter()
        .filter(|(_, v)| v.spec.vni.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    let peerings: Vec<String> = w
        .peerings
        .iter()
        .filter(|(_, p)| p.spec.tunnel_key.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for id in &vpcs {
        let vni = next_number(w, "vni", peer_dataplane_common::overlay::MAX_VNI)?;
        w.objects.vpcs.get_mut(id).expect("listed above").spec.vni = Some(vni);
    }
    for id in &peerings {
        let key = next_number(w, "tunnel_key", u32::MAX)?;
        w.objects
            .peerings
            .get_mut(id)
            .expect("listed above")
            .spec
            .tunnel_key = Some(key);
    }
    Ok(!vpcs.is_empty() || !peerings.is_empty())
}
