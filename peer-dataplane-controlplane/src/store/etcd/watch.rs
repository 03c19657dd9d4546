//! A replica's watch on the store: every commit with the rows it wrote, and whether etcd
//! can be reached.

use super::super::rows::StoredRow;
use super::super::StoreEvent;
use super::{token_expired, MAX_MESSAGE, TOKEN_HASHES};
use etcd_client::{Client, EventType, WatchOptions};
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Sends every commit under `prefix` from revision `from` on, with the rows it wrote (see
/// `changes`), and whether etcd can be reached.
pub(super) async fn watch(client: Client, prefix: String, from: i64, tx: Sender<StoreEvent>) {
    // The first watch starts after what this replica read; later ones from the present.
    let mut opts = Some(
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.max(0)),
    );
    let mut missed = false;
    let mut unreachable = false;
    let mut failures = 0;
    let mut watcher = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let objects = format!("{prefix}objects/");
    let guard = format!("{prefix}revision");
    let token_hashes = format!("{prefix}{TOKEN_HASHES}");
    loop {
        let o = opts
            .take()
            .unwrap_or_else(|| WatchOptions::new().with_prefix());
        match watcher.watch(prefix.clone(), Some(o)).await {
            Ok(mut stream) => {
                unreachable = false;
                failures = 0;
                if missed && tx.send(StoreEvent::Resync).is_err() {
                    return;
                }
                // One commit's events share its revision; a response may hold several.
                // Only a write of the guard key is a commit (tokens, the sweeper's key are not).
                let mut pending: Option<(i64, bool, Vec<StoredRow>)> = None;
                let send = |p: Option<(i64, bool, Vec<StoredRow>)>| match p {
                    Some((r, true, rows)) => {
                        tx.send(StoreEvent::Commit(r as u64, Some(rows))).is_ok()
                    }
                    _ => true,
                };
                while let Ok(Some(resp)) = stream.message().await {
                    for e in resp.events() {
                        let Some(kv) = e.kv() else { continue };
                        let rev = kv.mod_revision();
                        if pending.as_ref().is_some_and(|(r, _, _)| *r != rev)
                            && !send(pending.take())
                        {
                            return;
                        }
                        let (_, commit, rows) =
                            pending.get_or_insert_with(|| (rev, false, Vec::new()));
                        let key = kv.key_str().unwrap_or_default();
                        if key == guard {
                            *commit = true;
                        }
                        if key == token_hashes && e.event_type() == EventType::Put {
                            match serde_json::from_str(kv.value_str().unwrap_or_default()) {
                                Ok(h) => {
                                    if tx.send(StoreEvent::Tokens(h)).is_err() {
                                        return;
                                    }
                                }
                                Err(e) => log::warn!("the stored account token hashes: {e}"),
                            }
                        }
                        if let Some((kind, id)) =
                            key.strip_prefix(&objects).and_then(|k| k.split_once('/'))
                        {
                            let body = match e.event_type() {
                                EventType::Put => {
                                    Some(kv.value_str().unwrap_or_default().to_string())
                                }
                                EventType::Delete => None,
                            };
                            rows.push((kind.to_string(), id.to_string(), body));
                        }
                    }
                    // A response ends with whole commits (etcd does not split a revision).
                    if !send(pending.take()) {
                        return; // the server is gone
                    }
                    if resp.canceled() {
                        break;
                    }
                }
                // Watch again at once: with another member up, this is only a failover.
            }
            // No member answers (for a second: one member down is only a failover to
            // another): the replica's view may be stale from now on.
            Err(e) => {
                if token_expired(&anyhow::Error::new(e)) {
                    let _ = client.refresh_token().await;
                }
                failures += 1;
                if failures >= 5 && !unreachable {
                    if tx.send(StoreEvent::Unreachable).is_err() {
                        return;
                    }
                    unreachable = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        // What happened in between is read whole.
        missed = true;
    }
}
