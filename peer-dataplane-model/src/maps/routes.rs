//! The routes trie's contents, grouped by trie table (the table bits of each key). A table
//! compiled the same as before is shared with the installed state, not copied, and two
//! states compare and diff a shared table by pointer: a change that touches no route costs
//! nothing per route, however many there are.

use super::layout::RouteKey;
use super::Entries;
use peer_dataplane_common::RouteValue;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One trie table's entries.
pub type TableEntries = BTreeMap<RouteKey, RouteValue>;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct RouteEntries {
    /// Trie table (id and generation, or a VPC's CIDR table) -> its entries; never empty.
    tables: BTreeMap<u32, Arc<TableEntries>>,
}

/// The trie table a key belongs to.
pub fn table_of(k: &RouteKey) -> u32 {
    u32::from_be_bytes(k.data.table_be)
}

impl RouteEntries {
    pub fn get(&self, k: &RouteKey) -> Option<&RouteValue> {
        self.tables.get(&table_of(k))?.get(k)
    }

    pub fn contains_key(&self, k: &RouteKey) -> bool {
        self.get(k).is_some()
    }

    /// Copies the table's entries first if another state shares them.
    pub fn insert(&mut self, k: RouteKey, v: RouteValue) -> Option<RouteValue> {
        Arc::make_mut(self.tables.entry(table_of(&k)).or_default()).insert(k, v)
    }

    pub fn remove(&mut self, k: &RouteKey) -> Option<RouteValue> {
        let t = table_of(k);
        let entries = self.tables.get_mut(&t)?;
        if !entries.contains_key(k) {
            return None;
        }
        let old = Arc::make_mut(entries).remove(k);
        if entries.is_empty() {
            self.tables.remove(&t);
        }
        old
    }

    pub fn len(&self) -> usize {
        self.tables.values().map(|t| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Every entry, table by table.
    pub fn iter(&self) -> impl Iterator<Item = (&RouteKey, &RouteValue)> {
        self.tables.values().flat_map(|t| t.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &RouteKey> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &RouteValue> {
        self.iter().map(|(_, v)| v)
    }

    /// The trie tables that hold entries.
    pub fn table_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.tables.keys().copied()
    }

    /// One table's entries, shared.
    pub fn table(&self, t: u32) -> Option<&Arc<TableEntries>> {
        self.tables.get(&t)
    }

    /// Sets a whole table to `entries` (shared, not copied); an empty one is removed.
    pub fn set_table(&mut self, t: u32, entries: Arc<TableEntries>) {
        if entries.is_empty() {
            self.tables.remove(&t);
        } else {
            self.tables.insert(t, entries);
        }
    }

    /// Entries of `self` that are new or differ from `current`'s, and keys of `current`
    /// that `self` lacks. Tables the two share are skipped whole.
    pub fn diff(&self, current: &RouteEntries) -> (Vec<(RouteKey, RouteValue)>, Vec<RouteKey>) {
        let empty = Arc::new(TableEntries::new());
        let mut puts = Vec::new();
        let mut dels = Vec::new();
        let ids: std::collections::BTreeSet<u32> = self
            .tables
            .keys()
            .chain(current.tables.keys())
            .copied()
            .collect();
        for t in ids {
            let want = self.tables.get(&t).unwrap_or(&empty);
            let have = current.tables.get(&t).unwrap_or(&empty);
            if Arc::ptr_eq(want, have) {
                continue;
            }
            puts.extend(
                want.iter()
                    .filter(|(k, v)| have.get(*k) != Some(*v))
                    .map(|(k, v)| (*k, *v)),
            );
            dels.extend(have.keys().filter(|k| !want.contains_key(*k)).copied());
        }
        (puts, dels)
    }
}

impl std::fmt::Debug for RouteEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl std::ops::Index<&RouteKey> for RouteEntries {
    type Output = RouteValue;
    fn index(&self, k: &RouteKey) -> &RouteValue {
        self.get(k).expect("no route entry for this key")
    }
}

impl FromIterator<(RouteKey, RouteValue)> for RouteEntries {
    fn from_iter<I: IntoIterator<Item = (RouteKey, RouteValue)>>(iter: I) -> Self {
        let mut r = RouteEntries::default();
        r.extend(iter);
        r
    }
}

impl Extend<(RouteKey, RouteValue)> for RouteEntries {
    fn extend<I: IntoIterator<Item = (RouteKey, RouteValue)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<'a> IntoIterator for &'a RouteEntries {
    type Item = (&'a RouteKey, &'a RouteValue);
    type IntoIter = Box<dyn Iterator<Item = (&'a RouteKey, &'a RouteValue)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl Entries<RouteKey, RouteValue> for RouteEntries {
    fn insert(&mut self, k: RouteKey, v: RouteValue) -> Option<RouteValue> {
        RouteEntries::insert(self, k, v)
    }

    fn remove(&mut self, k: &RouteKey) -> Option<RouteValue> {
        RouteEntries::remove(self, k)
    }

    fn len(&self) -> usize {
        RouteEntries::len(self)
    }

    fn diff(&self, current: &Self) -> (Vec<(RouteKey, RouteValue)>, Vec<RouteKey>) {
        RouteEntries::diff(self, current)
    }
}
