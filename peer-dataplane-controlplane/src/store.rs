//! Where the control plane keeps its objects: the [`ObjectStore`] trait, what a shared
//! store tells a replica, and the two stores: the embedded SQLite file ([`Store`], in
//! `sqlite`) and etcd for a fleet (`etcd`). Both keep one row per object ([`rows`]: its
//! JSON; a route is a row of its own), a revision and the account tokens' hashes
//! ([`crate::auth::TokenHashes`]; never a token). A commit writes exactly the objects that
//! differ between the old and the new world, all or nothing.

pub mod etcd;
pub mod rows;
pub mod sqlite;

pub use rows::{apply_rows, StoredRow};
pub use sqlite::Store;

use crate::auth::TokenHashes;
use crate::world::World;
use anyhow::Result;

/// A store of the control plane's objects. A commit is all or nothing, and the revision it
/// returns is the store's: the embedded store numbers revisions itself, a distributed one
/// may assign its own.
pub trait ObjectStore: Send {
    /// The stored world and its revision (a distributed store also notes what this replica
    /// has read: its next commit applies only on top of that).
    fn load(&mut self) -> Result<(World, u64)>;
    /// Writes what changed from `old` (the world the change was made on) to `new`, as the
    /// revision after `old`'s, `next`; returns the revision the store gave it.
    fn commit(&mut self, old: &World, new: &World, next: u64) -> Result<u64>;
    /// The account tokens' hashes (`None`: none were ever stored).
    fn token_hashes(&mut self) -> Result<Option<TokenHashes>>;
    /// Replaces the stored account tokens' hashes with `hashes`, whole.
    fn put_token_hashes(&mut self, hashes: &TokenHashes) -> Result<()>;
    /// A store other writers share announces their commits here, and whether it can be
    /// reached (see [`StoreEvent`]). `None`: this process is the only writer.
    fn changes(&mut self) -> Option<std::sync::mpsc::Receiver<StoreEvent>> {
        None
    }

    /// The store's latest revision, read now (a shared store; `None`: this process is
    /// the only writer, so what it holds is the latest).
    fn latest(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// This replica has applied another's commit at `revision` from [`StoreEvent::Commit`]'s
    /// rows: its next commit applies on top of that.
    fn seen(&mut self, _revision: u64) {}

    /// Whether this replica is the one that expires pending peerings now (one replica at
    /// a time does). The only writer always is.
    fn lead_sweeps(&mut self) -> bool {
        true
    }
}

/// What a shared store tells a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A commit (by any replica) at this revision, with the rows it wrote (kind, id, JSON
    /// body; `None`: deleted), when the store says (else: read everything again).
    Commit(u64, Option<Vec<StoredRow>>),
    /// What happened meanwhile is not known: read everything again. Also means the
    /// store is reachable (again).
    Resync,
    /// The store cannot be reached: this replica's view may be stale.
    Unreachable,
    /// The account tokens' hashes were replaced (by any replica).
    Tokens(TokenHashes),
}

/// A commit refused because the store changed since this replica read it (another
/// replica's write): nothing was written; read again and redo the change.
#[derive(Debug)]
pub struct StaleRead;

impl std::fmt::Display for StaleRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("another control-plane replica changed the store since this one read it")
    }
}

impl std::error::Error for StaleRead {}
