//! Browser end-to-end test: the unmodified `livekit-client` npm package, in headless Chromium,
//! against `stoa serve --dev`, both inside a private network namespace (`unshare -n`), so that
//! nothing but loopback can be reached. The pages speak livekit-client's default single-connection
//! protocol on `/rtc/v1`, except in the legacy test, which forces the two-connection one on `/rtc`;
//! each page checks which path its WebSockets took.
//!
//! The scenario lives in `tests/browser/e2e.mjs` (two pages: A publishes a 1 kHz microphone,
//! B subscribes and hears it, B may not publish, A mutes, A leaves); `tests/browser/run.sh`
//! starts the server and runs it. Both bound every wait; this test adds an outer bound.
//!
//! A second test runs the scenario relay-only through Stoa's TURN relay over UDP, TCP and TLS;
//! a third restarts the server under the live room (`[shutdown] clients = "reconnect"`): both
//! pages reconnect by themselves, B hears A again, and a control-plane room is still there.
//! A fourth plays the hostile client with livekit-client (`tests/browser/hostile.mjs`, see
//! docs/SECURITY.md): a listener and a hard-muted speaker publishing, data without permission or
//! under another identity; each refused, as the host's page sees it.
//!
//! Needs Debian's `chromium`, Node.js and `tests/browser/node_modules`: `./test.sh` installs
//! them. Run it alone with
//! `cargo test -p stoa --test browser -- --nocapture`.

// This test owns a clock: it bounds the wait on a real process tree.
#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds a real wait with the wall clock"
)]

mod support;

use std::time::Duration;

use support::chromium::{self, missing_prerequisites, run_in_namespace};

/// Outer bound; run.sh caps itself at 120 s.
const TIMEOUT: Duration = Duration::from_secs(150);

/// livekit-client's default protocol: one peer connection on `/rtc/v1` (the pages check that
/// they spoke only that path).
#[test]
fn livekit_client_in_chromium_talks_to_stoa() {
    run_scenario(None);
}

/// The same scenario on livekit-client's two-connection protocol on `/rtc`
/// (`singlePeerConnection: false`), which older clients and those that fall back use: audio,
/// RED, data, a permission change, mute and leave on the legacy path too.
#[test]
fn livekit_client_on_the_legacy_two_connection_path_talks_to_stoa() {
    run_scenario(Some("legacy"));
}

/// A rolling restart of the node under a live room: SIGTERM with `[shutdown] clients =
/// "reconnect"`, the same binary and config started again; the pages come back by themselves
/// (livekit-client's own reconnect) and B hears A again; the control plane's room survives.
#[test]
fn livekit_client_comes_back_by_itself_after_a_server_restart() {
    run_scenario(Some("restart"));
}

/// Session resume: once B hears A, B's network path is cut for a few seconds (inside the
/// namespace, iptables resets its signaling connection and drops its media UDP) and restored.
/// B resumes (`reconnect=1&sid=…`, ICE restart): it sees `Reconnected`, keeps its sid, hears A
/// again, and neither page sees the other leave or join. The time from restoration to audio is
/// printed (summary `resume.restorationToAudioMs`).
#[test]
fn livekit_client_resumes_after_its_network_is_cut_for_seconds() {
    run_scenario(Some("cut"));
}

/// The same scenario with both pages relay-only (`iceTransportPolicy: 'relay'`) through Stoa's
/// own TURN relay, named in the JoinResponse with per-session credentials: over UDP, TCP and
/// TLS (`turns:`), each in its own namespace and server. B must hear A over a relay candidate
/// of that transport.
#[test]
fn livekit_client_hears_through_stoa_turn_over_udp_tcp_and_tls() {
    for transport in ["udp", "tcp", "tls"] {
        run_scenario(Some(transport));
    }
}

/// The hostile client in Chromium (tests/browser/hostile.mjs): users admitted through
/// `POST /api/rooms/{id}/token` use the unmodified livekit-client against their grants (forged
/// local permissions, forged sender identities): a listener publishing and sending data, a speaker
/// naming another sender or sending on the server's reaction topic, a hard-muted speaker
/// publishing again. Each is refused, and the host's page shows none of it.
#[test]
fn livekit_client_as_a_hostile_client_changes_nothing_the_host_sees() {
    run_scenario(Some("hostile"));
}

/// One browser at a time: two Chromiums at once on a small machine make timing flaky.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs tests/browser/run.sh in a private network namespace; `relay` selects relay-only mode
/// over that transport, or the restart (`"restart"`), network-cut (`"cut"`), hostile-client
/// (`"hostile"`) or legacy-signaling (`"legacy"`) scenario.
fn run_scenario(relay: Option<&str>) {
    let _one = ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = chromium::test_dir("browser");
    let missing = missing_prerequisites(
        &dir,
        &["livekit-client", "livekit-server-sdk", "playwright-core"],
    );
    assert!(
        missing.is_empty(),
        "the browser end-to-end test cannot run; missing: {}.\nRun ./test.sh first: it installs \
         chromium and runs `npm ci` in tests/browser.",
        missing.join(", ")
    );

    let run = run_in_namespace(
        &dir,
        |command| {
            // The scenario targets the dev server run.sh starts, whatever the caller's
            // environment.
            command
                .env_remove("STOA_URL")
                .env_remove("STOA_API_KEY")
                .env_remove("STOA_API_SECRET")
                .env_remove("STOA_E2E_RELAY")
                .env_remove("STOA_E2E_RESTART")
                .env_remove("STOA_E2E_CUT")
                .env_remove("STOA_E2E_SCENARIO")
                .env_remove("STOA_E2E_SIGNALING");
            match relay {
                Some("legacy") => {
                    command.env("STOA_E2E_SIGNALING", "legacy");
                }
                Some("restart") => {
                    command.env("STOA_E2E_RESTART", "1");
                }
                Some("cut") => {
                    command.env("STOA_E2E_CUT", "1");
                }
                Some("hostile") => {
                    command.env("STOA_E2E_SCENARIO", "hostile");
                }
                Some(relay) => {
                    command.env("STOA_E2E_RELAY", relay);
                }
                None => {}
            }
        },
        TIMEOUT,
    );

    let mode = match relay {
        None => "direct".to_owned(),
        Some(m @ ("restart" | "hostile")) => m.to_owned(),
        Some("legacy") => "legacy /rtc, two connections".to_owned(),
        Some("cut") => "network cut and resume".to_owned(),
        Some(r) => format!("relay over {r}"),
    };
    eprintln!(
        "----- tests/browser/run.sh ({mode}) stderr -----\n{}",
        run.stderr
    );
    eprintln!("----- tests/browser/run.sh stdout -----\n{}", run.stdout);
    let summary = run.summary();
    let Some(status) = run.status else {
        panic!(
            "tests/browser/run.sh ({mode}) did not finish within {TIMEOUT:?}; killed it. Summary: {summary}"
        );
    };
    assert!(
        status.success(),
        "browser end-to-end test ({mode}) failed ({status}); its output is above. Summary: {summary}"
    );
}
