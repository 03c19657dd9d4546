//! The embedded store: one SQLite file, a row per object in `objects`, the revision and
//! the account tokens' hashes in `meta`. A commit is one transaction: a failed write leaves
//! the database as it was.

use super::rows::{assemble, rows, ROUTE_TABLE};
use super::ObjectStore;
use crate::auth::TokenHashes;
use crate::world::*;
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

/// The `meta` key of the account tokens' hashes (JSON of [`TokenHashes`]).
const TOKEN_HASHES: &str = "account_token_hashes";

/// The embedded store: one SQLite file.
pub struct Store {
    conn: Connection,
    /// Checkpoints the write-ahead log in the background (a file store only).
    _checkpoints: Option<Checkpointer>,
}

/// How often the log is folded into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Folds the write-ahead log into the database file from a thread of its own. SQLite
/// would otherwise do it inside the commit that fills the log past 1,000 pages, and
/// that commit (every few hundred API calls) would wait for the copy and its fsync: a
/// passive checkpoint here never blocks a commit, which keeps appending to the log.
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {} to checkpoint it", path.display()))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_EVERY)
                {
                    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = r {
                        log::warn!("checkpointing the database's log: {e}");
                    }
                }
                // One last fold on the way out, so the file alone holds everything.
                let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
            })
            .context("starting the checkpoint thread")?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ObjectStore for Store {
    fn load(&mut self) -> Result<(World, u64)> {
        Store::load(self)
    }

    fn commit(&mut self, old: &World, new: &World, next: u64) -> Result<u64> {
        Store::commit(self, old, new, next).map(|()| next)
    }

    fn token_hashes(&mut self) -> Result<Option<TokenHashes>> {
        Store::token_hashes(self)
    }

    fn put_token_hashes(&mut self, hashes: &TokenHashes) -> Result<()> {
        Store::put_token_hashes(self, hashes)
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
";

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)
            .with_context(|| format!("opening database {}", path.display()))?;
        // WAL: readers never block the writer; NORMAL sync is durable across process crashes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints happen off the commit path (see `Checkpointer`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let mut store = Self::init(conn)?;
        store._checkpoints = Some(Checkpointer::start(path)?);
        Ok(store)
    }

    pub fn in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store> {
        // Deleted rows are overwritten, not just unlinked: a revoked token's hash, or a
        // token of the old plain table, leaves nothing behind in free pages.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        let mut store = Store {
            conn,
            _checkpoints: None,
        };
        store.hash_plain_tokens()?;
        Ok(store)
    }

    /// A database from before tokens were hashed kept them in plain text in a table of
    /// their own: they are hashed into the stored set and the table is dropped, once.
    fn hash_plain_tokens(&mut self) -> Result<()> {
        let exists: bool = self.conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tokens'",
            [],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !exists {
            return Ok(());
        }
        let plain: Vec<(String, String)> = {
            let mut stmt = self.conn.prepare("SELECT token, account FROM tokens")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut hashes = match self.token_hashes()? {
            Some(h) => h,
            None => TokenHashes::new()?,
        };
        for (token, account) in &plain {
            hashes.insert(account, token)?;
        }
        let tx = self.conn.transaction()?;
        put_token_hashes(&tx, &hashes)?;
        tx.execute_batch("DROP TABLE tokens")?;
        tx.commit().context("hashing the stored tokens")?;
        log::info!(
            "hashed the {} account tokens the database kept in plain text",
            plain.len()
        );
        Ok(())
    }

    /// The stored world and its revision.
    pub fn load(&self) -> Result<(World, u64)> {
        let mut stmt = self.conn.prepare("SELECT kind, id, body FROM objects")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let (w, embedded) = assemble(rows)?;
        if !embedded.is_empty() {
            self.split_embedded_routes(&w, &embedded)?;
        }
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

    /// A database written before routes had rows of their own keeps them inside their
    /// table's row: they move to rows of their own, in one transaction, when it is opened.
    fn split_embedded_routes(&self, w: &World, tables: &[String]) -> Result<()> {
        let mut before = w.clone();
        for id in tables {
            before.route_tables.get_mut(id).unwrap().routes = Routes::new();
        }
        let tx = self.conn.unchecked_transaction()?;
        for (kind, id, body) in rows(&before, w)? {
            if let Some(body) = body {
                tx.execute(
                    "INSERT INTO objects (kind, id, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                    params![kind, id, body],
                )?;
            }
        }
        for id in tables {
            let t = &w.route_tables[id];
            let bare = RouteTable {
                routes: Routes::new(),
                ..t.clone()
            };
            tx.execute(
                "UPDATE objects SET body = ?1 WHERE kind = ?2 AND id = ?3",
                params![serde_json::to_string(&bare)?, ROUTE_TABLE, id],
            )?;
        }
        tx.commit().context("moving routes to rows of their own")?;
        log::info!(
            "moved the routes of {} route tables to rows of their own",
            tables.len()
        );
        Ok(())
    }

    /// Writes what changed from `old` to `new` and the new revision, atomically.
    pub fn commit(&mut self, old: &World, new: &World, revision: u64) -> Result<()> {
        let tx = self.conn.transaction()?;
        for (kind, id, body) in rows(old, new)? {
            match body {
                Some(body) => tx.execute(
                    "INSERT INTO objects (kind, id, body) VALUES (?1, ?2, ?3)
                     ON CONFLICT (kind, id) DO UPDATE SET body = excluded.body",
                    params![kind, id, body],
                )?,
                None => tx.execute(
                    "DELETE FROM objects WHERE kind = ?1 AND id = ?2",
                    params![kind, id],
                )?,
            };
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![revision.to_string()],
        )?;
        tx.commit()
            .context("committing to the control-plane database")
    }

    pub fn token_hashes(&self) -> Result<Option<TokenHashes>> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                params![TOKEN_HASHES],
                |r| r.get(0),
            )
            .optional()?;
        json.map(|j| serde_json::from_str(&j).context("the stored account token hashes"))
            .transpose()
    }

    pub fn put_token_hashes(&mut self, hashes: &TokenHashes) -> Result<()> {
        put_token_hashes(&self.conn, hashes)
    }
}

fn put_token_hashes(conn: &Connection, hashes: &TokenHashes) -> Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![TOKEN_HASHES, serde_json::to_string(hashes)?],
    )
    .context("storing the account token hashes")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows::{apply_rows, Row, StoredRow, ROUTE};

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
            let mut h = TokenHashes::new().unwrap();
            h.insert("111", "secret-of-sixteen-chars").unwrap();
            s.put_token_hashes(&h).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.load().unwrap(), (w.clone(), 1));
        let h = s.token_hashes().unwrap().unwrap();
        assert_eq!(h.account_of("secret-of-sixteen-chars").unwrap(), "111");
        let mut s = s;
        s.commit(&w, &World::default(), 2).unwrap();
        assert_eq!(s.load().unwrap(), (World::default(), 2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn plain_tokens_of_an_older_database_are_hashed_and_gone() {
        let dir = std::env::temp_dir().join(format!("pdp-store-plain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.db");
        let _ = std::fs::remove_file(&path);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE tokens (token TEXT PRIMARY KEY, account TEXT NOT NULL);
                 INSERT INTO tokens VALUES ('plain-token-of-account-1', '111');",
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let h = s.token_hashes().unwrap().expect("the plain tokens, hashed");
        assert_eq!(h.account_of("plain-token-of-account-1").unwrap(), "111");
        drop(s);
        let bytes = std::fs::read(&path).unwrap();
        let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
        for (what, b) in [("database", &bytes), ("write-ahead log", &wal)] {
            assert!(
                !b.windows(24).any(|w| w == b"plain-token-of-account-1"),
                "the token is still in the {what} file"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn table_with(n: usize) -> World {
        let mut w = World::default();
        let mut t = RouteTable {
            id: "rtb-1".into(),
            vpc: "vpc-1".into(),
            routes: Routes::new(),
        };
        for i in 0..n {
            let d = format!("172.16.{}.{}/32", i / 256, i % 256);
            t.routes.insert(d.clone(), Route::new(d, "pcx-1"));
        }
        w.route_tables.insert(t.id.clone(), t);
        w
    }

    #[test]
    fn one_route_changed_in_a_large_table_is_one_row() {
        let old = table_with(10_000);
        let mut new = old.clone();
        let t = new.route_tables.get_mut("rtb-1").unwrap();
        t.routes.remove("172.16.0.7/32");
        let r = rows(&old, &new).unwrap();
        assert_eq!(r, vec![("route", "rtb-1/172.16.0.7/32".to_string(), None)]);
        // Deleting the table deletes its row and every route's.
        let mut gone = new.clone();
        gone.route_tables.clear();
        let r = rows(&new, &gone).unwrap();
        assert_eq!(r.len(), 1 + 9_999);
        assert!(r.iter().all(|(_, _, body)| body.is_none()));
    }

    #[test]
    fn routes_stored_inside_their_table_move_to_rows_of_their_own() {
        let s = Store::in_memory().unwrap();
        let w = table_with(3);
        // The old layout: the table's row holds its routes.
        s.conn
            .execute(
                "INSERT INTO objects (kind, id, body) VALUES ('route_table', 'rtb-1', ?1)",
                params![serde_json::to_string(&w.route_tables["rtb-1"]).unwrap()],
            )
            .unwrap();
        assert_eq!(s.load().unwrap().0, w);
        let routes: i64 = s
            .conn
            .query_row(
                "SELECT count(*) FROM objects WHERE kind = 'route'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(routes, 3);
        // Deleting a route now sticks (it is not brought back from the table's row).
        let mut s = s;
        let mut fewer = w.clone();
        fewer
            .route_tables
            .get_mut("rtb-1")
            .unwrap()
            .routes
            .remove("172.16.0.1/32");
        s.commit(&w, &fewer, 2).unwrap();
        assert_eq!(s.load().unwrap().0, fewer);
    }

    /// Another writer's rows applied to a world equal the world that writer committed;
    /// a route of a table that is neither held nor deleted by the same rows is refused
    /// (the rows do not belong to this world), and nothing reads it as a silent skip.
    #[test]
    fn rows_applied_rebuild_the_committed_world_and_refuse_a_route_without_table() {
        let old = table_with(5);
        let mut new = old.clone();
        let t = new.route_tables.get_mut("rtb-1").unwrap();
        t.routes.remove("172.16.0.2/32");
        t.routes.insert(
            "10.9.0.0/16".into(),
            Route::new("10.9.0.0/16".to_string(), "pcx-2"),
        );
        let stored = |rows: Vec<Row>| -> Vec<StoredRow> {
            rows.into_iter()
                .map(|(k, id, body)| (k.to_string(), id, body))
                .collect()
        };
        let mut w = old.clone();
        apply_rows(&mut w, stored(rows(&old, &new).unwrap())).unwrap();
        assert_eq!(w, new);
        // The table and its routes deleted by the same rows, in any order.
        let mut gone = stored(rows(&new, &World::default()).unwrap());
        gone.reverse();
        apply_rows(&mut w, gone).unwrap();
        assert_eq!(w, World::default());
        // A route whose table is not there.
        let stray = vec![(
            ROUTE.to_string(),
            "rtb-9/10.0.0.0/8".to_string(),
            Some(serde_json::to_string(&Route::new("10.0.0.0/8".to_string(), "pcx-1")).unwrap()),
        )];
        let e = apply_rows(&mut World::default(), stray.clone()).unwrap_err();
        assert!(
            e.to_string().contains("route table rtb-9 is not stored"),
            "{e}"
        );
        let e = assemble(stray.into_iter().map(|(k, i, b)| (k, i, b.unwrap()))).unwrap_err();
        assert!(e.to_string().contains("rtb-9"), "{e}");
    }

    /// Commits never fold the log into the database file themselves; the checkpoint
    /// thread does, so the file grows while the store stays open (with neither, the log
    /// would grow without end).
    #[test]
    fn the_log_is_folded_into_the_file_in_the_background() {
        let dir = std::env::temp_dir().join(format!("pdp-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cp.db");
        let mut s = Store::open(&path).unwrap();
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let empty = size();
        let mut old = World::default();
        for i in 0..200 {
            let new = table_with(i + 1);
            s.commit(&old, &new, i as u64 + 1).unwrap();
            old = new;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= empty {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file is still {empty} bytes: nothing was checkpointed"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(s.load().unwrap(), (old, 200));
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
