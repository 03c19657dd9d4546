//! Stable numeric ids for named objects. Map keys use small integers; the control plane
//! uses names. An object keeps its id for as long as it exists (so a reload rewrites only
//! what changed), and ids are recovered from the pinned names map on restart.

use peer_dataplane_common::{
    acl::{FIRST_SG_SET_ID, MAX_ACL_SETS},
    Name, NameKey, MAX_HOSTS, MAX_PEERINGS, MAX_ROUTE_TABLE_ID, NAME_ACL, NAME_HOST, NAME_PEERING,
    NAME_ROUTE_TABLE, NAME_SG_SET, NAME_SUBNET, NAME_VPC, VPC_TABLE_BASE,
};
use std::collections::{BTreeMap, BTreeSet};

/// Kinds of named objects that get ids, with the id range each may use.
const KINDS: [(u32, u32, u32); 7] = [
    // kind, first id, one past the last id
    (NAME_VPC, 1, VPC_TABLE_BASE),
    (NAME_SUBNET, 1, u32::MAX),
    (NAME_ROUTE_TABLE, 1, MAX_ROUTE_TABLE_ID),
    // Peerings index the per-CPU counter array: dense slots from 0.
    (NAME_PEERING, 0, MAX_PEERINGS),
    // ACL sets are `id << 2 | generation << 1 | direction`, and fewer than MAX_ACL_SETS;
    // network ACLs and security-group combinations share that id space.
    (NAME_ACL, 1, FIRST_SG_SET_ID),
    (NAME_SG_SET, FIRST_SG_SET_ID, MAX_ACL_SETS / 4),
    // Hosts from 1: an endpoint's host 0 means "this host".
    (NAME_HOST, 1, MAX_HOSTS + 1),
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ids {
    by_kind: BTreeMap<u32, BTreeMap<String, u32>>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("no free id left for {kind}: at most {max} can exist at once")]
pub struct IdsExhausted {
    pub kind: &'static str,
    pub max: u32,
}

pub fn kind_str(kind: u32) -> &'static str {
    match kind {
        NAME_VPC => "vpc",
        NAME_SUBNET => "subnet",
        NAME_ROUTE_TABLE => "route table",
        NAME_PEERING => "peering",
        NAME_ACL => "network acl",
        NAME_SG_SET => "security group combination",
        NAME_HOST => "host",
        _ => "object",
    }
}

impl Ids {
    /// Rebuilds the table from the contents of the pinned names map.
    pub fn from_names(names: &BTreeMap<NameKey, Name>) -> Ids {
        let mut ids = Ids::default();
        for (k, v) in names {
            if KINDS.iter().any(|(kind, ..)| *kind == k.kind) {
                ids.by_kind
                    .entry(k.kind)
                    .or_default()
                    .insert(v.as_str().to_string(), k.id);
            }
        }
        ids
    }

    pub fn get(&self, kind: u32, name: &str) -> Option<u32> {
        self.by_kind.get(&kind)?.get(name).copied()
    }

    /// The ids for exactly `wanted` names of each kind: existing names keep theirs, new
    /// names get the lowest id not held by any name before this call (so an id freed now
    /// is never reused within the same change), names not wanted are released.
    pub fn assign<S: std::borrow::Borrow<str> + Ord>(
        &self,
        wanted: &BTreeMap<u32, BTreeSet<S>>,
    ) -> Result<Ids, IdsExhausted> {
        let mut next = Ids::default();
        let none = BTreeMap::new();
        for (kind, first, end) in KINDS {
            let old = self.by_kind.get(&kind).unwrap_or(&none);
            // Built only when a new name needs an id (most changes add none).
            let mut taken: Option<BTreeSet<u32>> = None;
            let mut out = BTreeMap::new();
            let mut cursor = first;
            for name in wanted.get(&kind).into_iter().flatten() {
                let name: &str = name.borrow();
                if let Some(id) = old.get(name) {
                    out.insert(name.to_string(), *id);
                    continue;
                }
                let taken = taken.get_or_insert_with(|| old.values().copied().collect());
                while taken.contains(&cursor) {
                    cursor += 1;
                }
                if cursor >= end {
                    return Err(IdsExhausted {
                        kind: kind_str(kind),
                        max: end - first,
                    });
                }
                taken.insert(cursor);
                out.insert(name.to_string(), cursor);
            }
            if !out.is_empty() {
                next.by_kind.insert(kind, out);
            }
        }
        Ok(next)
    }

    /// Names map contents describing these ids.
    pub fn names(&self) -> BTreeMap<NameKey, Name> {
        let mut out = BTreeMap::new();
        for (kind, names) in &self.by_kind {
            for (name, id) in names {
                out.insert(
                    NameKey {
                        kind: *kind,
                        id: *id,
                    },
                    Name::new(name),
                );
            }
        }
        out
    }

    /// Ids present in `self` but not in `before` (newly allocated).
    pub fn new_since(&self, before: &Ids, kind: u32) -> Vec<u32> {
        let old: BTreeSet<u32> = before
            .by_kind
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.values().copied())
            .collect();
        self.by_kind
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.values().copied())
            .filter(|id| !old.contains(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(kind: u32, names: &[&str]) -> BTreeMap<u32, BTreeSet<String>> {
        BTreeMap::from([(kind, names.iter().map(|s| s.to_string()).collect())])
    }

    #[test]
    fn existing_names_keep_ids_and_freed_ids_are_not_reused_at_once() {
        let a = Ids::default()
            .assign(&want(NAME_PEERING, &["pcx-a", "pcx-b"]))
            .unwrap();
        assert_eq!(a.get(NAME_PEERING, "pcx-a"), Some(0));
        assert_eq!(a.get(NAME_PEERING, "pcx-b"), Some(1));
        let b = a.assign(&want(NAME_PEERING, &["pcx-b", "pcx-c"])).unwrap();
        assert_eq!(b.get(NAME_PEERING, "pcx-b"), Some(1));
        assert_eq!(
            b.get(NAME_PEERING, "pcx-c"),
            Some(2),
            "slot 0 was freed in this change"
        );
        assert_eq!(b.get(NAME_PEERING, "pcx-a"), None);
        assert_eq!(b.new_since(&a, NAME_PEERING), vec![2]);
        // Later, slot 0 is free again.
        let c = b
            .assign(&want(NAME_PEERING, &["pcx-b", "pcx-c", "pcx-d"]))
            .unwrap();
        assert_eq!(c.get(NAME_PEERING, "pcx-d"), Some(0));
    }

    #[test]
    fn round_trips_through_names_map() {
        let a = Ids::default()
            .assign(&want(NAME_VPC, &["vpc-1", "vpc-2"]))
            .unwrap();
        assert_eq!(Ids::from_names(&a.names()), a);
    }

    #[test]
    fn peering_slots_are_bounded() {
        let many: Vec<String> = (0..=MAX_PEERINGS).map(|i| format!("pcx-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let err = Ids::default()
            .assign(&want(NAME_PEERING, &refs))
            .unwrap_err();
        assert_eq!(err.kind, "peering");
    }
}
