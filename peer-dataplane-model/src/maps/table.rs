//! What the table in [`super`] derives for each stored map: its place in the write order,
//! its registry entry, its key and value types, its field of [`MapState`](super::MapState),
//! and its put and delete operations. Everything else (the diff, the plan's order, the
//! in-memory and kernel backends, the read-back) is generic over [`Stored`].

use super::layout::KernelLayout;
use anyhow::Result;
use peer_dataplane_common::registry::MapSpec;
use std::collections::BTreeMap;
use std::fmt::Debug;

/// One map the agent fills from the desired state (counters and the data plane's own
/// tables are not stored state: the agent never plans writes to them).
pub trait Stored: 'static {
    /// Its place in the table: puts go in table order, removals in reverse.
    const INDEX: usize;
    /// The pinned map it is written to.
    const SPEC: MapSpec;
    type Key: Copy + Ord + Debug + KernelLayout;
    type Value: Copy + PartialEq + Debug + KernelLayout;
    /// How a [`MapState`](super::MapState) holds its entries.
    type Entries: Entries<Self::Key, Self::Value>;
    fn entries(s: &super::MapState) -> &Self::Entries;
    fn entries_mut(s: &mut super::MapState) -> &mut Self::Entries;
    /// The write that puts `(k, v)` into this map.
    fn put(k: Self::Key, v: Self::Value) -> super::Op;
    /// The write that removes `k` from this map.
    fn del(k: Self::Key) -> super::Op;
}

/// A stored map's entries in memory.
pub trait Entries<K, V>: Default + Clone + PartialEq + Debug {
    fn insert(&mut self, k: K, v: V) -> Option<V>;
    fn remove(&mut self, k: &K) -> Option<V>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Entries of `self` that are new or differ from `current`'s, and keys of `current`
    /// that `self` lacks.
    fn diff(&self, current: &Self) -> (Vec<(K, V)>, Vec<K>);
}

impl<K: Ord + Copy + Debug, V: PartialEq + Copy + Debug> Entries<K, V> for BTreeMap<K, V> {
    fn insert(&mut self, k: K, v: V) -> Option<V> {
        BTreeMap::insert(self, k, v)
    }

    fn remove(&mut self, k: &K) -> Option<V> {
        BTreeMap::remove(self, k)
    }

    fn len(&self) -> usize {
        BTreeMap::len(self)
    }

    fn diff(&self, current: &Self) -> (Vec<(K, V)>, Vec<K>) {
        let puts = self
            .iter()
            .filter(|(k, v)| current.get(*k) != Some(*v))
            .map(|(k, v)| (*k, *v))
            .collect();
        let dels = current
            .keys()
            .filter(|k| !self.contains_key(*k))
            .copied()
            .collect();
        (puts, dels)
    }
}

/// Something that holds stored maps' entries: memory, or the kernel's pinned maps.
pub trait EntryStore {
    fn put<M: Stored>(&mut self, k: &M::Key, v: &M::Value) -> Result<()>;
    fn delete<M: Stored>(&mut self, k: &M::Key) -> Result<()>;
    /// Zeroes the counters (and refills the cap buckets) of a newly assigned peering slot.
    fn reset_peering_counters(&mut self, _slot: u32) -> Result<()> {
        Ok(())
    }
    /// Zeroes `n` per-rule hit counters from `base`.
    fn reset_acl_hits(&mut self, _base: u32, _n: u32) -> Result<()> {
        Ok(())
    }
}

/// Something whose stored maps' entries can be read, map by map.
pub trait EntryReader {
    fn entries<M: Stored>(&self) -> Result<Vec<(M::Key, M::Value)>>;
}

/// Called once per stored map, in table order (see `visit_all` in [`super`]).
pub trait MapVisitor {
    fn visit<M: Stored>(&mut self) -> Result<()>;
}

/// The type a write carries a value of type `$value` as (large values boxed, to keep an
/// [`Op`](super::Op) small).
macro_rules! carried {
    ($value:ty) => { $value };
    ($value:ty, boxed) => { Box<$value> };
}

/// The in-memory type of a stored map's entries (`BTreeMap` unless the table says).
macro_rules! entries_type {
    ($key:ty, $value:ty) => { std::collections::BTreeMap<$key, $value> };
    ($key:ty, $value:ty, $entries:ty) => { $entries };
}

/// Derives everything a stored map needs from one line of the table; see [`super`].
macro_rules! stored_maps {
    ($($(#[doc = $doc:literal])*
       $map:ident($field:ident $(: $entries:ty)?): $spec:ident, $key:ty => $value:ty $([$boxed:ident])?;)*) => {
        /// The contents of every stored map.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct MapState {
            $($(#[doc = $doc])* pub $field: entries_type!($key, $value $(, $entries)?),)*
        }

        /// One entry of a stored map.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Entry {
            $($map($key, carried!($value $(, $boxed)?)),)*
        }

        /// One key of a stored map.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Key {
            $($map($key),)*
        }

        /// The stored maps by name, one type each (see [`Stored`]).
        pub mod stored {
            $(pub struct $map;)*
        }

        /// The pinned map of each stored map, in table order.
        pub const STORED: &[MapSpec] = &[$(registry::$spec),*];

        /// Calls `v` once per stored map, in table order.
        pub fn visit_all(v: &mut impl MapVisitor) -> anyhow::Result<()> {
            $(v.visit::<stored::$map>()?;)*
            Ok(())
        }

        impl Entry {
            /// Puts this entry into `store`.
            pub fn put_into(&self, store: &mut impl EntryStore) -> anyhow::Result<()> {
                use std::borrow::Borrow;
                match self {
                    $(Entry::$map(k, v) => store.put::<stored::$map>(k, v.borrow()),)*
                }
            }
        }

        impl Key {
            /// Removes this key from `store`.
            pub fn delete_from(&self, store: &mut impl EntryStore) -> anyhow::Result<()> {
                match self {
                    $(Key::$map(k) => store.delete::<stored::$map>(k),)*
                }
            }
        }

        stored_maps!(@impl 0usize; $($map($field $(: $entries)?): $spec, $key => $value;)*);
    };
    (@impl $index:expr; $map:ident($field:ident $(: $entries:ty)?): $spec:ident, $key:ty => $value:ty; $($rest:tt)*) => {
        impl Stored for stored::$map {
            const INDEX: usize = $index;
            const SPEC: MapSpec = registry::$spec;
            type Key = $key;
            type Value = $value;
            type Entries = entries_type!($key, $value $(, $entries)?);
            fn entries(s: &MapState) -> &Self::Entries {
                &s.$field
            }
            fn entries_mut(s: &mut MapState) -> &mut Self::Entries {
                &mut s.$field
            }
            fn put(k: $key, v: $value) -> Op {
                Op::Put(Entry::$map(k, v.into()))
            }
            fn del(k: $key) -> Op {
                Op::Del(Key::$map(k))
            }
        }
        stored_maps!(@impl $index + 1usize; $($rest)*);
    };
    (@impl $index:expr;) => {};
}

pub(super) use {carried, entries_type, stored_maps};
