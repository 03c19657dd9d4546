//! ACL sets in the maps: a compiled ACL's entries and meta, and where each network ACL's
//! per-rule hit counters go.

use super::{key_for, net_addr};
use crate::maps::{AclPortKey, MapState};
use ipnet::IpNet;
use peer_dataplane_common::acl::{
    acl_addr_table, AclBits, AclExactKey, AclMeta, AclPortData, AclProtoKey, ACL_HIT_SLOTS, NO_HITS,
};
use peer_dataplane_common::ROUTE_TABLE_BITS;
use std::collections::BTreeMap;

/// Writes compiled ACL `c` as set `set`; `hit_base` is [`NO_HITS`] for sets without
/// per-rule counters.
pub(super) fn insert_acl_set(
    s: &mut MapState,
    set: u32,
    c: &crate::desired::acl::Compiled,
    hit_base: u32,
) {
    let bits = |b: &crate::desired::acl::Bitmap| AclBits::new(*b);
    for (net, b) in &c.addresses {
        let table = acl_addr_table(set, matches!(net, IpNet::V6(_)));
        if net.prefix_len() == net.max_prefix_len() {
            let (a, _, _) = net_addr(net);
            s.acl_exact.insert(AclExactKey::host(table, a), bits(b));
        } else {
            s.acl_addr.insert(key_for(table, net), bits(b));
        }
    }
    for ((port, len), b) in &c.ports {
        if *len == 16 {
            s.acl_exact.insert(AclExactKey::port(set, *port), bits(b));
            continue;
        }
        let data = AclPortData {
            set_be: set.to_be_bytes(),
            port_be: port.to_be_bytes(),
        };
        s.acl_port.insert(
            AclPortKey {
                prefix_len: ROUTE_TABLE_BITS + *len as u32,
                data,
            },
            bits(b),
        );
    }
    for (proto, b) in &c.protocols {
        s.acl_proto.insert(
            AclProtoKey {
                set,
                protocol: *proto as u32,
            },
            bits(b),
        );
    }
    s.acl_meta.insert(
        set,
        AclMeta {
            allow: bits(&c.allow),
            any_protocol: bits(&c.any_protocol),
            portless: bits(&c.portless),
            hit_base,
            rules: c.numbers.len() as u32,
        },
    );
}

/// Per-rule hit counter ranges of network ACL sets. A set installed now keeps its range
/// (same set key, same number of rules); any other set takes the first range that no
/// installed set and no set assigned before it uses. Installed ranges stay taken even for
/// sets about to be removed: they are in use until the removal, which comes after the new
/// sets are written.
pub struct HitSlots {
    installed: BTreeMap<u32, (u32, u32)>,
    taken: Vec<(u32, u32)>,
}

impl HitSlots {
    pub fn new(installed: &MapState) -> HitSlots {
        let installed: BTreeMap<u32, (u32, u32)> = installed
            .acl_meta
            .iter()
            .filter(|(_, m)| m.hit_base != NO_HITS && m.rules > 0)
            .map(|(set, m)| (*set, (m.hit_base, m.rules)))
            .collect();
        let taken = installed.values().copied().collect();
        HitSlots { installed, taken }
    }

    /// The first counter of set `set`'s `rules` rules; `None` if no free range is left.
    pub fn assign(&mut self, set: u32, rules: u32) -> Option<u32> {
        if rules == 0 {
            return Some(0);
        }
        if let Some((base, n)) = self.installed.get(&set) {
            if *n == rules {
                return Some(*base);
            }
        }
        self.taken.sort();
        let mut start = 0u32;
        for (base, n) in &self.taken {
            if *base >= start + rules {
                break;
            }
            start = start.max(base + n);
        }
        if start + rules > ACL_HIT_SLOTS {
            return None;
        }
        self.taken.push((start, rules));
        Some(start)
    }

    /// Marks `rules` counters from `base` as taken.
    pub fn take(&mut self, base: u32, rules: u32) {
        self.taken.push((base, rules));
    }

    /// Counters taken (installed or assigned).
    pub fn in_use(&self) -> u32 {
        self.taken.iter().map(|(_, n)| n).sum()
    }
}
