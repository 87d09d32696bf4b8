//! The room's promises tried as a hostile user would: `stoa serve` processes, the REST API over
//! real HTTP, `/api/events` over a real WebSocket and plain LiveKit signaling sessions on `/rtc`.
//! Each attempt must be refused with a clear error and change nothing for anyone else.
//! docs/SECURITY.md lists the attempts and the tests that prove them. Every wait is bounded;
//! servers are killed when a test ends.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use livekit_protocol as lk;
use serde_json::{Value, json};
use stoa_control::auth::Keys;
use stoa_control::model::UserId;
use support::{SignalClient, Stoa, request, scratch_dir};

const KEY: &str = "hostilekey";
const SECRET: &str = "a-long-enough-hostile-test-secret-0123";

fn keys() -> Keys {
    Keys::new(vec![(KEY.into(), SECRET.into())]).unwrap()
}

fn user_token(id: &str, name: &str) -> String {
    keys()
        .user_token(&UserId::parse(id).unwrap(), name, Duration::from_secs(3600))
        .unwrap()
}

/// Writes a config with the test keys and `[control]` settings.
fn config(dir: &Path, control: &str) -> PathBuf {
    let path = dir.join("stoa.toml");
    std::fs::write(
        &path,
        format!("[keys]\n{KEY} = \"{SECRET}\"\n[control]\n{control}\n"),
    )
    .unwrap();
    path
}

fn start(name: &str) -> (Stoa, PathBuf) {
    let dir = scratch_dir(name);
    let stoa = Stoa::start(
        &config(&dir, ""),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    (stoa, dir)
}

/// One API call returning (status, JSON).
fn api(
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

/// An API call that must succeed.
fn ok(addr: SocketAddr, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
    let (status, v) = api(addr, method, path, token, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// An API call that must be refused with `status` and `code`, as `{code, message}`.
fn refused(addr: SocketAddr, method: &str, path: &str, token: &str, status: u16, code: &str) {
    let (got, v) = api(addr, method, path, token, None);
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

fn create_room(addr: SocketAddr, host: &str, body: Value) -> String {
    let (status, room) = api(addr, "POST", "/api/rooms", host, Some(body));
    assert_eq!(status, 201, "{room}");
    room["id"].as_str().unwrap().to_owned()
}

/// Joins through the API and connects a signaling session with the minted token.
fn join_live(addr: SocketAddr, room: &str, user: &str) -> (SignalClient, lk::JoinResponse, String) {
    let grant = ok(
        addr,
        "POST",
        &format!("/api/rooms/{room}/token"),
        user,
        None,
    );
    let token = grant["token"].as_str().unwrap().to_owned();
    let (client, join) = SignalClient::join(addr, &token);
    (client, join, token)
}

fn permission(p: &lk::ParticipantInfo) -> lk::ParticipantPermission {
    p.permission.clone().unwrap_or_default()
}

#[test]
fn leaving_ends_the_media_session_and_bans_still_reach_the_leaver() {
    let (stoa, _dir) = start("hostile-leave");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    // An open room: everyone who joins may publish.
    let id = create_room(addr, &host, json!({"title": "Open mic", "kind": "open"}));
    let (mut host_session, _, _) = join_live(addr, &id, &host);
    let ann = user_token("ann", "Ann");
    let (mut ann_session, ann_join, ann_media) = join_live(addr, &id, &ann);
    assert!(permission(ann_join.participant.as_ref().unwrap()).can_publish);
    host_session.wait_participant("ann", "ann connected", |p| {
        p.state == lk::participant_info::State::Active as i32
            || p.state == lk::participant_info::State::Joined as i32
    });

    // Ann leaves through the API but keeps her media session open: the server ends it.
    ok(addr, "POST", &format!("/api/rooms/{id}/leave"), &ann, None);
    let leave = ann_session.wait_for("the server ending the session", |m| match m {
        lk::signal_response::Message::Leave(l) => Some(l.clone()),
        _ => None,
    });
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    host_session.wait_participant("ann", "ann gone from the room", |p| {
        p.state == lk::participant_info::State::Disconnected as i32
    });
    // Her media token no longer opens a session: she must join (and face moderation) again.
    let (status, why) = SignalClient::connect(addr, &ann_media)
        .err()
        .expect("the old media token is refused");
    assert_eq!(status, 403, "{why}");
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["members"], 1, "{room}");

    // A ban after the leave holds: no token, no media session.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/ann/ban"),
        &host,
        None,
    );
    refused(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &ann,
        403,
        "banned",
    );
    let (status, why) = SignalClient::connect(addr, &ann_media)
        .err()
        .expect("the banned user's media token is refused");
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("banned"), "{why}");
    // The host was untouched throughout: a member, and her session still answered.
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["members"], 1, "{room}");
    assert_eq!(room["state"], "live");
    host_session.ping();
}
