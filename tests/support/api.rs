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

/// `GET path` (which must succeed) repeated until `done` holds of its JSON, bounded by
/// [`super::TIMEOUT`] (then the test fails naming `what` and the last answer).
pub fn get_until(
    addr: SocketAddr,
    path: &str,
    token: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + super::TIMEOUT;
    loop {
        let v = ok(addr, "GET", path, token, None);
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {v}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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

/// A raw HTTP answer: status, headers (names lowercased) and body bytes.
#[derive(Debug)]
pub struct Fetched {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body as sent (Content-Length framed).
    pub body: Vec<u8>,
}

impl Fetched {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request with extra headers, for binary answers (audio, ranges); an empty
/// `token` sends none (someone signed out).
pub fn fetch(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    send(addr, method, path, token, headers, &[])
}

/// As [`fetch`], with a body (its `Content-Length` added when it is not empty); redirects are
/// answers like any other, never followed.
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Fetched {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, super::TIMEOUT)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    stream
        .set_read_timeout(Some(super::TIMEOUT))
        .expect("read timeout");
    let auth = if token.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {token}\r\n")
    };
    let mut extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    if !body.is_empty() {
        extra.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    stream.write_all(body).expect("send the body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no head"));
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    Fetched {
        status,
        headers,
        body,
    }
}
