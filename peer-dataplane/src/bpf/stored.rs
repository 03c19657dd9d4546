//! The stored maps in the kernel: one generic writer and reader for every map of the
//! table in `peer_dataplane_model::maps`, by bytes through `bpf(2)`. What differs between
//! maps is only the kernel's rule for their kind:
//!
//! - an array entry cannot be removed: removing one writes zeros, and an all-zero entry
//!   reads back as absent;
//! - a devmap's value is the target ifindex followed by a chained program's fd, 0 (none):
//!   the agent holds only the ifindex (`MapSpec::held_value_size`).

use super::pins::check_layout;
use super::syscall;
use crate::maps::{EntryReader, EntryStore, KernelLayout, Stored, STORED};
use anyhow::{anyhow, bail, Context, Result};
use aya::maps::MapData;
use peer_dataplane_common::registry::MapKind;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

/// The pinned stored maps, in table order.
pub struct StoredMaps {
    maps: Vec<MapData>,
}

impl StoredMaps {
    /// Opens every stored map pinned under `pin_dir`, checking each one's shape.
    pub fn open(pin_dir: &Path) -> Result<StoredMaps> {
        let mut maps = Vec::with_capacity(STORED.len());
        for spec in STORED {
            let path = pin_dir.join(spec.name);
            let map = MapData::from_pin(&path).map_err(|e| {
                anyhow!(
                    "cannot open pinned map {} ({e}); has `peer-dataplane run` ever run on this host?",
                    path.display()
                )
            })?;
            check_layout(spec, &map, &path)?;
            maps.push(map);
        }
        Ok(StoredMaps { maps })
    }

    fn fd<M: Stored>(&self) -> BorrowedFd<'_> {
        self.maps[M::INDEX].fd().as_fd()
    }

    /// The value at `k` (for an LPM trie: of the longest prefix that matches `k`).
    pub fn get<M: Stored>(&self, k: &M::Key) -> Result<Option<M::Value>> {
        let mut value = vec![0u8; M::SPEC.value_size as usize];
        let found = syscall::lookup(self.fd::<M>(), &key_bytes::<M>(k), &mut value)
            .with_context(|| format!("looking up {}", M::SPEC.name))?;
        Ok(found.then(|| decode_value::<M>(&value)).flatten())
    }
}

fn key_bytes<M: Stored>(k: &M::Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(M::SPEC.key_size as usize);
    k.encode(&mut out);
    out
}

fn value_bytes<M: Stored>(v: &M::Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(M::SPEC.value_size as usize);
    v.encode(&mut out);
    debug_assert_eq!(
        out.len(),
        M::SPEC.held_value_size() as usize,
        "{}",
        M::SPEC.name
    );
    // What the agent does not hold (a devmap's program fd) is written as zeros; the
    // kernel reads exactly `value_size` bytes.
    out.resize(M::SPEC.value_size as usize, 0);
    out
}

/// The value whose kernel bytes are `b`; `None` for an array's all-zero (absent) entry.
fn decode_value<M: Stored>(b: &[u8]) -> Option<M::Value> {
    if M::SPEC.kind == MapKind::Array && b.iter().all(|b| *b == 0) {
        return None;
    }
    M::Value::decode(&b[..M::SPEC.held_value_size() as usize])
}

impl EntryStore for StoredMaps {
    fn put<M: Stored>(&mut self, k: &M::Key, v: &M::Value) -> Result<()> {
        syscall::update(self.fd::<M>(), &key_bytes::<M>(k), &value_bytes::<M>(v))
            .with_context(|| format!("writing {}", M::SPEC.name))
    }

    fn delete<M: Stored>(&mut self, k: &M::Key) -> Result<()> {
        let key = key_bytes::<M>(k);
        if M::SPEC.kind == MapKind::Array {
            let zero = vec![0u8; M::SPEC.value_size as usize];
            return syscall::update(self.fd::<M>(), &key, &zero)
                .with_context(|| format!("zeroing an entry of {}", M::SPEC.name));
        }
        match syscall::delete(self.fd::<M>(), &key) {
            Ok(true) => Ok(()),
            Ok(false) => bail!("deleting from {}: no such entry", M::SPEC.name),
            Err(e) => Err(e).with_context(|| format!("deleting from {}", M::SPEC.name)),
        }
    }
}

impl EntryReader for StoredMaps {
    fn entries<M: Stored>(&self) -> Result<Vec<(M::Key, M::Value)>> {
        let what = || format!("reading {}", M::SPEC.name);
        let fd = self.fd::<M>();
        let mut key = vec![0u8; M::SPEC.key_size as usize];
        let mut next = key.clone();
        let mut value = vec![0u8; M::SPEC.value_size as usize];
        let mut out = Vec::new();
        let mut first = true;
        while syscall::next_key(fd, (!first).then_some(&key[..]), &mut next).with_context(what)? {
            first = false;
            std::mem::swap(&mut key, &mut next);
            // A key removed between the two calls (not by the agent: it is the only
            // writer) is simply not there.
            if !syscall::lookup(fd, &key, &mut value).with_context(what)? {
                continue;
            }
            let k = M::Key::decode(&key).with_context(what)?;
            if let Some(v) = decode_value::<M>(&value) {
                out.push((k, v));
            }
        }
        Ok(out)
    }
}
