//! Where the control plane keeps its objects: [`ObjectStore`], and the embedded one,
//! SQLite ([`Store`]): one row per object (its JSON), a revision counter and the account
//! tokens. A commit writes exactly the objects that differ between the old and the new
//! world, in one transaction: a failed write leaves the database as it was.

use crate::model::*;
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

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
    /// Account tokens: token -> account.
    fn tokens(&self) -> Result<BTreeMap<String, String>>;
    /// Registers `token` for `account` (replacing the account of an existing token).
    fn set_token(&mut self, account: &str, token: &str) -> Result<()>;
    /// A store other writers share announces their commits here: the revision of each
    /// commit, or [`RESYNC`] when what happened meanwhile is not known (read it all again).
    /// `None`: this process is the only writer.
    fn changes(&mut self) -> Option<std::sync::mpsc::Receiver<u64>> {
        None
    }
}

/// See [`ObjectStore::changes`].
pub const RESYNC: u64 = 0;

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

/// The embedded store: one SQLite file.
pub struct Store {
    conn: Connection,
}

impl ObjectStore for Store {
    fn load(&mut self) -> Result<(World, u64)> {
        Store::load(self)
    }

    fn commit(&mut self, old: &World, new: &World, next: u64) -> Result<u64> {
        Store::commit(self, old, new, next).map(|()| next)
    }

    fn tokens(&self) -> Result<BTreeMap<String, String>> {
        Store::tokens(self)
    }

    fn set_token(&mut self, account: &str, token: &str) -> Result<()> {
        Store::set_token(self, account, token)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL,
    id   TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, account TEXT NOT NULL);
";

/// Calls `$m!(kind name, field)` for every object collection of [`World`].
macro_rules! for_each_kind {
    ($m:ident) => {
        $m!("vpc", vpcs);
        $m!("subnet", subnets);
        $m!("route_table", route_tables);
        $m!("peering", peerings);
        $m!("port", ports);
        $m!("network_acl", network_acls);
        $m!("security_group", security_groups);
        $m!("host", hosts);
        $m!("id_counter", id_counters);
    };
}

pub mod etcd;

/// Rows to write (id, JSON body) and ids to delete.
type RowChanges = (Vec<(String, String)>, Vec<String>);

fn diff<T: Serialize + PartialEq>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
) -> Result<RowChanges> {
    let mut puts = Vec::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            puts.push((k.clone(), serde_json::to_string(v)?));
        }
    }
    let dels = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    Ok((puts, dels))
}

fn load_kind<T: DeserializeOwned>(conn: &Connection, kind: &str) -> Result<BTreeMap<String, T>> {
    let mut stmt = conn.prepare("SELECT id, body FROM objects WHERE kind = ?1")?;
    let rows = stmt.query_map(params![kind], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = BTreeMap::new();
    for row in rows {
        let (id, body) = row?;
        let v = serde_json::from_str(&body)
            .with_context(|| format!("stored {kind} {id} is not valid"))?;
        out.insert(id, v);
    }
    Ok(out)
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        // WAL: readers never block the writer; NORMAL sync is durable across process crashes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        Ok(Store { conn })
    }

    /// The stored world and its revision.
    pub fn load(&self) -> Result<(World, u64)> {
        let mut w = World::default();
        macro_rules! load {
            ($kind:literal, $field:ident) => {
                w.$field = load_kind(&self.conn, $kind)?;
            };
        }
        for_each_kind!(load);
        let revision = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()?
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or(0);
        Ok((w, revision))
    }

    /// Writes what changed from `old` to `new` and the new revision, atomically.
    pub fn commit(&mut self, old: &World, new: &World, revision: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        macro_rules! write {
            ($kind:literal, $field:ident) => {
                let (puts, dels) = diff(&old.$field, &new.$field)?;
                for (id, body) in puts {
                    tx.execute(
                        "INSERT INTO objects (kind, id, body) VALUES (?1, ?2, ?3)
                         ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                        params![$kind, id, body],
                    )?;
                }
                for id in dels {
                    tx.execute(
                        "DELETE FROM objects WHERE kind = ?1 AND id = ?2",
                        params![$kind, id],
                    )?;
                }
            };
        }
        for_each_kind!(write);
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![revision.to_string()],
        )?;
        tx.commit()
            .context("committing to the control-plane database")
    }

    pub fn tokens(&self) -> Result<BTreeMap<String, String>> {
        let mut stmt = self.conn.prepare("SELECT token, account FROM tokens")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>().map_err(Into::into)
    }

    /// Registers `token` for `account` (replacing the account of an existing token).
    pub fn set_token(&mut self, account: &str, token: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO tokens (token, account) VALUES (?1, ?2)
             ON CONFLICT (token) DO UPDATE SET account = excluded.account",
            params![token, account],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_then_load_round_trips_and_deletes() {
        let dir = std::env::temp_dir().join(format!("pdp-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.db");
        let _ = std::fs::remove_file(&path);
        let mut w = World::default();
        w.vpcs.insert(
            "vpc-1".into(),
            Vpc {
                spec: peer_dataplane_model::desired::document::VpcDoc {
                    id: "vpc-1".into(),
                    account: "111".into(),
                    region: "r".into(),
                    cidrs: vec!["10.0.0.0/16".into()],
                    ..Default::default()
                },
                main_route_table: "rtb-1".into(),
            },
        );
        w.id_counters.insert("vpc".into(), 1);
        {
            let mut s = Store::open(&path).unwrap();
            s.commit(&World::default(), &w, 1).unwrap();
            s.set_token("111", "secret").unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), (w.clone(), 1));
        assert_eq!(s.tokens().unwrap()["secret"], "111");
        let mut s = s;
        s.commit(&w, &World::default(), 2).unwrap();
        assert_eq!(s.load().unwrap(), (World::default(), 2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
