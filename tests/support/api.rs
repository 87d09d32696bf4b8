//! The control plane's REST API as the end-to-end tests call it: bearer-token requests with JSON
//! bodies, the checks every test makes of an answer, and a config file with one API key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use livekit_protocol as lk;
use serde_json::Value;

use super::{SignalClient, request};

/// Writes `dir/stoa.toml` with one API key (`key` = `secret`) and `[control]` settings.
pub fn config(dir: &Path, key: &str, secret: &str, control: &str) -> PathBuf {
    let path = dir.join("stoa.toml");
    std::fs::write(
        &path,
        format!("[keys]\n{key} = \"{secret}\"\n[control]\n{control}\n"),
    )
    .expect("write the config");
    path
}

/// One API call returning (status, JSON; `Null` for an empty body).
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = request(addr, method, path, Some(token), body.as_deref());
    let value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    };
    (status, value)
}

/// An API call that must succeed (2xx); its JSON.
pub fn ok(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let (status, v) = call(addr, method, path, token, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// An API call that must be refused with `status` and `code`, as `{code, message}`.
pub fn refused(addr: SocketAddr, method: &str, path: &str, token: &str, status: u16, code: &str) {
    let (got, v) = call(addr, method, path, token, None);
    assert_eq!(
        (got, v["code"].as_str()),
        (status, Some(code)),
        "{method} {path}: {v}"
    );
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{method} {path}: no message in {v}"
    );
}

/// Creates a room as `host` (201); its id.
pub fn create_room(addr: SocketAddr, host: &str, body: Value) -> String {
    let (status, room) = call(addr, "POST", "/api/rooms", host, Some(body));
    assert_eq!(status, 201, "{room}");
    room["id"].as_str().expect("room id").to_owned()
}

/// Joins room `room` as the holder of user token `user` through the API
/// (`POST /api/rooms/{id}/token`) and connects a signaling session with the minted token, at
/// the URL the API names; the session, its join response and the media token.
pub fn join_live(
    addr: SocketAddr,
    room: &str,
    user: &str,
) -> (SignalClient, lk::JoinResponse, String) {
    let grant = ok(
        addr,
        "POST",
        &format!("/api/rooms/{room}/token"),
        user,
        None,
    );
    assert_eq!(grant["url"], format!("ws://{addr}"));
    let token = grant["token"].as_str().expect("media token").to_owned();
    let (client, join) = SignalClient::join(addr, &token);
    (client, join, token)
}
