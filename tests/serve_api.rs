//! `stoa serve` end to end for the server API: the Twirp `RoomService` on the HTTP port and
//! webhooks configured in `[webhook]`, received on 127.0.0.1. Every wait is bounded and the
//! server is killed when the test ends.
//!
//! The SDK suites (npm `livekit-server-sdk`, PyPI `livekit-api`) and the live-media effects are
//! in `signaling/tests/twirp.rs` and `signaling/tests/admin_media.rs`.

// This test owns a clock: it bounds waits on a real process.
#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds real waits with the wall clock"
)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stoa_signaling::token::{self, ApiKeys, Claims};

const TIMEOUT: Duration = Duration::from_secs(20);
const KEY: &str = "apikey";
const SECRET: &str = "a-long-enough-test-secret-0123456789";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A webhook receiver: each request's `Authorization` header and body.
fn receiver() -> (u16, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(TIMEOUT));
            let mut reader = BufReader::new(stream);
            let mut auth = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = v.trim().to_owned();
                    } else if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut stream = reader.into_inner();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            if tx
                .send((auth, String::from_utf8_lossy(&body).into_owned()))
                .is_err()
            {
                return;
            }
        }
    });
    (port, rx)
}

/// One Twirp JSON call; the status line and the body.
fn twirp(addr: SocketAddr, method: &str, token: &str, body: &str) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(
        stream,
        "POST /twirp/livekit.RoomService/{method} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// Whether the server answers on `addr` yet.
fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("stoa did not listen on {addr}");
}

#[test]
fn serve_exposes_room_service_and_sends_webhooks() {
    let (hook_port, hooks) = receiver();
    let (http_port, rtc_port) = support::free_ports();
    let config = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-serve-api.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[keys]\n{KEY} = \"{SECRET}\"\n[webhook]\nurls = [\"http://127.0.0.1:{hook_port}/hook\"]\n"
        ),
    )
    .expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_stoa"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STOA_") {
            command.env_remove(name);
        }
    }
    let _server = Killed(
        command
            .args(["serve", "--dev", "--config"])
            .arg(&config)
            .env("STOA_DATA_DIR", support::scratch_dir("data"))
            .env("STOA_HTTP_PORT", http_port.to_string())
            .env("STOA_RTC_UDP_PORT", rtc_port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    wait_listening(addr);

    let mut claims = Claims::default();
    claims.video.room_create = true;
    claims.video.room_list = true;
    let jwt = token::mint(
        KEY,
        SECRET,
        "",
        None,
        claims.video,
        Duration::from_secs(600),
        unix_now(),
    )
    .expect("mint");

    let (status, body) = twirp(
        addr,
        "CreateRoom",
        &jwt,
        r#"{"name":"served","metadata":"m"}"#,
    );
    assert!(status.contains(" 200 "), "{status} {body}");
    assert!(body.contains(r#""name":"served""#), "{body}");
    let (status, body) = twirp(addr, "ListRooms", &jwt, "{}");
    assert!(
        status.contains(" 200 ") && body.contains("served"),
        "{status} {body}"
    );
    let (status, body) = twirp(addr, "ListParticipants", &jwt, r#"{"room":"served"}"#);
    assert!(status.contains(" 403 "), "{status} {body}");
    assert!(body.contains("permission_denied"), "{body}");
    let (status, body) = twirp(addr, "NoSuchMethod", &jwt, "{}");
    assert!(
        status.contains(" 501 ") && body.contains("unimplemented"),
        "{status} {body}"
    );
    let (status, _) = twirp(addr, "DeleteRoom", &jwt, r#"{"room":"served"}"#);
    assert!(status.contains(" 200 "), "{status}");

    let keys = ApiKeys::new([(KEY, SECRET)]);
    for expected in ["room_started", "room_finished"] {
        let (auth, body) = hooks.recv_timeout(TIMEOUT).expect("a webhook in time");
        assert!(body.contains(&format!(r#""event":"{expected}""#)), "{body}");
        let claims = keys.verify(&auth, unix_now()).expect("signed with the key");
        assert_eq!(claims.iss, KEY);
        assert!(!claims.sha256.is_empty(), "carries the body hash");
    }
    let _ = std::fs::remove_file(&config);
}
