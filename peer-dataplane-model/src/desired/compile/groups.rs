//! Security groups as ACL sets: one set per distinct combination of groups on ports, its
//! rules the groups' allow rules with peer-group references expanded to addresses.

use crate::desired::validate::{SgRemote, Topology};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};

/// The distinct security-group lists on ports, by the name of their compiled set: ports
/// with the same groups share one set.
pub fn sg_combinations(t: &Topology) -> BTreeMap<String, Vec<String>> {
    t.ports
        .values()
        .filter_map(|p| p.security_groups.clone())
        .map(|groups| (sg_set_name(&groups), groups))
        .collect()
}

/// `groups` (sorted) joined with `+`; a digest of them when that is too long for a name.
pub fn sg_set_name(groups: &[String]) -> String {
    let joined = format!("sgs:{}", groups.join("+"));
    if joined.len() <= peer_dataplane_common::NAME_MAX_LEN {
        return joined;
    }
    // FNV-1a: stable across builds and restarts, which the names map relies on.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in joined.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("sgs#{h:016x}")
}

/// Each security group's member addresses (host prefixes of its ports' addresses, on this
/// host or another).
pub(super) fn sg_members(t: &Topology) -> BTreeMap<&str, Vec<IpNet>> {
    let mut members: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
    for p in t.ports.values().chain(t.remote_ports.values()) {
        for g in p.security_groups.iter().flatten() {
            let m = members.entry(g.as_str()).or_default();
            m.extend(p.ipv4.map(|a| IpNet::from(std::net::IpAddr::V4(a))));
            m.extend(p.ipv6.map(|a| IpNet::from(std::net::IpAddr::V6(a))));
        }
    }
    members
}

/// The rules of security groups `groups` in one direction, as allow rules of an ACL (a
/// peer-group reference becomes one rule per address of that group's `members`).
pub(super) fn sg_rules(
    t: &Topology,
    members: &BTreeMap<&str, Vec<IpNet>>,
    groups: &[String],
    egress: bool,
) -> Vec<crate::desired::acl::Rule> {
    let mut distinct = BTreeSet::new();
    for g in groups {
        for r in t.security_groups[g]
            .rules
            .iter()
            .filter(|r| r.egress == egress)
        {
            let cidrs = match &r.remote {
                SgRemote::Cidr(c) => vec![*c],
                SgRemote::Group(peer) => members.get(peer.as_str()).cloned().unwrap_or_default(),
            };
            for cidr in cidrs {
                distinct.insert((r.protocol, r.ports, cidr));
            }
        }
    }
    distinct
        .into_iter()
        .enumerate()
        .map(|(i, (protocol, ports, cidr))| crate::desired::acl::Rule {
            number: i as u32 + 1,
            protocol,
            ports,
            cidr,
            allow: true,
        })
        .collect()
}
