//! `[shutdown] clients = "reconnect"` on a real `stoa serve --dev`: SIGTERM closes a connected
//! client's signaling connection without a `Leave` (so LiveKit clients reconnect by themselves),
//! refuses nothing it still answers, and the process exits 0 at once instead of draining. The
//! full restart under a live room, with Chromium, is in tests/browser.rs.

#![allow(
    clippy::disallowed_methods,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as lk;
use stoa_signaling::token::{self, Claims};

use support::{SignalClient, Stoa, scratch_dir};

#[test]
fn sigterm_in_reconnect_mode_closes_connections_without_a_leave_and_exits() {
    let dir = scratch_dir("restart-reconnect");
    let config = dir.join("stoa.toml");
    std::fs::write(
        &config,
        "[shutdown]\nclients = \"reconnect\"\ndrain_seconds = 30\n",
    )
    .expect("config");
    let data = dir.join("data");
    let mut stoa = Stoa::start(&config, &[("STOA_DATA_DIR", data.to_str().expect("utf-8"))]);

    let mut claims = Claims::default();
    claims.video.room_join = true;
    claims.video.room = "restart-room".to_owned();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let jwt = token::mint(
        "devkey",
        "secret",
        "alice",
        None,
        claims.video,
        Duration::from_secs(600),
        now,
    )
    .expect("mint");
    let (mut client, _join) = SignalClient::join(stoa.addr, &jwt);

    let pid = stoa.pid();
    let signalled = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    // Whatever the server still sends, it is never a Leave: the connection just ends.
    while let Some(response) = client.next_response() {
        assert!(
            !matches!(
                response.message,
                Some(lk::signal_response::Message::Leave(_))
            ),
            "a Leave would make LiveKit clients give up instead of reconnecting"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stoa.exited() {
        assert!(
            Instant::now() < deadline,
            "stoa did not exit:\n{}",
            stoa.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "exited only after {:?}: it drained instead",
        signalled.elapsed()
    );
    assert_eq!(stoa.exit_code(), Some(0), "{}", stoa.log_text());
    let log = stoa.log_text();
    assert!(
        log.contains("closing connections so that clients reconnect"),
        "{log}"
    );
    assert!(!log.contains("asking clients to leave"), "{log}");
}
