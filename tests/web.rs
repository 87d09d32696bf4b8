//! Web app walk-through: Stoa's own web app (`web/`, embedded in the binary) in two headless
//! Chromium browsers against `stoa serve --dev`, all inside a private network namespace
//! (`unshare -n`), so that nothing but loopback can be reached.
//!
//! The scenario lives in `tests/web/walkthrough.mjs` and asserts, at desktop and phone sizes:
//! a host goes live muted and unmutes on purpose; a listener finds the room, hears the host and
//! sees the server's speaking indicator, with counts that add up; the host records the room and
//! the listener's livekit-client reports it (`room.isRecording`) while both pages show the REC
//! badge, the listener clips the last 30 s, then the host stops it; a raised hand reaches the host
//! as a toast, a tab-title count and a Requests badge in reach without scrolling; the approved
//! speaker arrives muted and is told so, as they are when muted or moved back by a host; the
//! listener's network drops (its browser's network service is stopped) and the page shows the
//! reconnect banner and recovers by itself; browsing docks the room as a mini-player that keeps
//! playing; a refused microphone is explained; opening a room while in another names that room
//! and offers to leave it and join this one (the old tab says so); a hidden listener page shows as away
//! where the room shows it, and deafen shows to others; a single-use speaker invitation link,
//! made and copied by the host, lands the listener on stage, and used-up and revoked links say so; the host edits a scheduled
//! room and its line-up, and hands the live room to a co-host, who hands it back; kick and ban ask first, can be undone, list the
//! removed for hosts, and give the removed a screen saying why and for how long (a countdown);
//! a guest opens the shared link, signs in and lands in the room, where the listener and the
//! guest see each other in the audience (a page at a time, "Show more"; a banned user may not
//! read it) and the listener opens the guest's profile from it, and with playback blocked taps
//! to listen; a reaction crosses pages; icons are SVG; sharing uses the phone's share sheet, the
//! server's Open Graph tags and an embed card that fits its snippet with transparent corners;
//! the ended summary names people to anyone and plays the recording (a WebAudio analyser on the
//! audio element hears it; it seeks; who spoke when is listed), whose Clip opens the clip's own
//! page, which plays too, and the ended room's embed card, signed out, plays it from its own
//! player; a listener who followed the host hears them go live
//! again (the bell's unread count, a toast, a browser notification through the Notification
//! API with the permission granted), a webhook signed with the API secret reaches a local
//! receiver (checked: HS256 signature, issuer, expiry, the body's SHA-256), and the listener
//! joins from the notification centre. axe-core audits the main screens and the run fails
//! on any serious violation. It saves screenshots of every screen, desktop and phone sized, to
//! `target/web-screenshots/`.
//! `tests/web/run.sh` starts the server and runs it; both bound every wait, and this test adds
//! an outer bound.
//!
//! Needs Debian's `chromium`, Node.js, `tests/web/node_modules` and a binary built after
//! `web/dist`: `./test.sh` installs and builds them. Run it alone with
//! `cargo test -p stoa --test web -- --nocapture`.

// This test owns a clock: it bounds the wait on a real process tree.
#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds a real wait with the wall clock"
)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::chromium::{self, missing_prerequisites, run_in_namespace};

/// Outer bound; run.sh caps itself at 430 s.
const TIMEOUT: Duration = Duration::from_secs(460);

#[test]
fn web_app_walkthrough_in_chromium() {
    let dir = chromium::test_dir("web");
    let missing = missing_prerequisites(&dir, &["playwright-core", "axe-core"]);
    assert!(
        missing.is_empty(),
        "the web walk-through cannot run; missing: {}.\nRun ./test.sh first: it installs \
         chromium, builds web/ and runs `npm ci` in tests/web.",
        missing.join(", ")
    );

    let run = run_in_namespace(
        &dir,
        |command| {
            // The scenario targets the dev server run.sh starts, whatever the caller's
            // environment.
            command.env_remove("STOA_WEB_URL").env(
                "WEB_SCREENSHOTS",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("target")
                    .join("web-screenshots"),
            );
        },
        TIMEOUT,
    );

    eprintln!("----- tests/web/run.sh stderr -----\n{}", run.stderr);
    eprintln!("----- tests/web/run.sh stdout -----\n{}", run.stdout);
    let summary = run.summary();
    let Some(status) = run.status else {
        panic!("tests/web/run.sh did not finish within {TIMEOUT:?}; killed it. Summary: {summary}");
    };
    assert!(
        status.success(),
        "web walk-through failed ({status}); its output is above. Summary: {summary}"
    );
}
