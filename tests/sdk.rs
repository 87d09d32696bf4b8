//! Client-SDK conformance: LiveKit's own client SDKs, unmodified, against `stoa serve --dev`, each
//! inside a private network namespace (`unshare -n`) so that nothing but loopback can be reached.
//!
//! - Python `livekit` (rtc) from PyPI, pinned in `tests/python/requirements.txt`
//!   (`tests/sdk/python_sdk.py`);
//! - `@livekit/rtc-node` from npm, pinned by `tests/sdk/package-lock.json`
//!   (`tests/sdk/node_sdk.mjs`).
//!
//! Both are built on LiveKit's Rust core and libwebrtc: they join on `/rtc/v1` (one peer
//! connection; checked with the server's `signaling_joins_total{path}` counter, which run.sh
//! prints after each scenario) and send the token as `Authorization: Bearer`. Each scenario proves real
//! audio end to end (a tone published by one participant is decoded by the other and its
//! frequency checked), then mute, data messages, a permission change made through the Twirp
//! RoomService, and leave. `livekit-client` in Chromium has its own test (`tests/browser.rs`);
//! docs/COMPATIBILITY.md has the whole matrix. `tests/sdk/run.sh` sets up the namespace (with the
//! veth holding 127.0.0.2 that libwebrtc needs) and the server; this test bounds it.
//!
//! Run them alone with `cargo test -p stoa --test sdk -- --nocapture` after `./test.sh` installed
//! the packages.

#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds a real wait with the wall clock"
)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::chromium::{run_in_namespace, test_dir};

/// Outer bound; run.sh caps itself at 300 s and each scenario at 170 s.
const TIMEOUT: Duration = Duration::from_secs(200);

/// One SDK at a time: two libwebrtc stacks at once on a small machine make timing flaky.
static ONE_SDK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn python_sdk_talks_to_stoa() {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/.venv/bin/python");
    assert!(
        venv.exists(),
        "the Python SDK scenario cannot run: {} is missing. Run ./test.sh first: it installs \
         tests/python/requirements.txt into that virtualenv.",
        venv.display()
    );
    run_scenario("python");
}

#[test]
fn node_sdk_talks_to_stoa() {
    let module = test_dir("sdk").join("node_modules/@livekit/rtc-node/package.json");
    assert!(
        module.exists(),
        "the Node SDK scenario cannot run: {} is missing. Run ./test.sh first: it runs `npm ci` \
         in tests/sdk.",
        module.display()
    );
    run_scenario("node");
}

fn run_scenario(sdk: &str) {
    let _one = ONE_SDK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let run = run_in_namespace(
        &test_dir("sdk"),
        |command| {
            command
                .env_remove("STOA_URL")
                .env_remove("STOA_API_KEY")
                .env_remove("STOA_API_SECRET")
                .env("STOA_SDK_SCENARIOS", sdk);
        },
        TIMEOUT,
    );
    eprintln!(
        "----- tests/sdk/run.sh ({sdk}) stderr -----\n{}",
        run.stderr
    );
    eprintln!(
        "----- tests/sdk/run.sh ({sdk}) stdout -----\n{}",
        run.stdout
    );
    // The scenario's summary is its last line starting `{"sdk"` (the Node SDK's own logger also
    // writes JSON lines to stdout).
    let summary = run
        .stdout
        .lines()
        .rev()
        .find(|line| line.starts_with("{\"sdk\""))
        .unwrap_or("(no JSON summary)");
    let Some(status) = run.status else {
        panic!(
            "tests/sdk/run.sh ({sdk}) did not finish within {TIMEOUT:?}; killed it. Summary: {summary}"
        );
    };
    assert!(
        status.success(),
        "the {sdk} SDK scenario failed ({status}); its output is above. Summary: {summary}"
    );
    assert!(
        summary.contains("\"ok\": true") || summary.contains("\"ok\":true"),
        "no passing summary from the {sdk} scenario: {summary}"
    );
    // Every join of the scenario (two participants at least) took the single-connection path.
    let joins = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("run.sh: signaling joins after {sdk}: ")))
        .unwrap_or("(no joins line)");
    let count = |path: &str| {
        joins
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{path}=")))
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert!(
        count("v1").is_some_and(|n| n >= 2) && count("legacy") == Some(0),
        "the {sdk} SDK should join on /rtc/v1 only; the server counted {joins}"
    );
}
