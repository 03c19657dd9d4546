//! What the in-process API tests share: a server with an in-memory store and no rate
//! limit, one call through its router, and real etcd members.
#![allow(dead_code)] // each test file uses its part

pub mod etcd;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use peer_dataplane_controlplane::api::{self, Clock, Server};
use peer_dataplane_controlplane::auth::RateLimit;
use peer_dataplane_controlplane::store::Store;
use serde_json::Value;
use std::collections::BTreeMap;
use tower::ServiceExt;

/// The API's router over a fresh in-memory store, `account` holding `token`, and each
/// host's agent credential.
pub fn router(account: &str, token: &str, host_tokens: BTreeMap<String, String>) -> Router {
    server(account, token, host_tokens).1
}

/// [`router`] and the server behind it.
pub fn server(
    account: &str,
    token: &str,
    host_tokens: BTreeMap<String, String>,
) -> (std::sync::Arc<Server>, Router) {
    let limit = RateLimit {
        per_second: 1e9,
        burst: 1e9,
    };
    let server = Server::new(
        Store::in_memory().unwrap(),
        Clock::new(),
        host_tokens,
        limit,
    )
    .unwrap();
    server.add_token(account, token).unwrap();
    (server.clone(), api::router(server))
}

/// One request; panics unless it succeeds. Returns the JSON answer.
pub async fn call(r: &Router, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    let req = match body {
        Some(b) => req.body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 26)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    assert!(status < 300, "{method} {path}: {status} {v}");
    v
}
