//! The web app rejoins by itself when its node goes away: two `stoa serve` nodes on one
//! redis-server and two headless Chromium pages of Stoa's web app (a host speaking, a listener),
//! all inside a private network namespace (`unshare -n`). An operator drains the room's node:
//! both pages are told to move, say so, take fresh tokens from the API and reconnect to the
//! other node by themselves, and the listener hears the host again; then that node is killed
//! (SIGKILL) and the pages come back on the first one. The scenario lives in
//! `tests/web/failover.mjs`, its runner in `tests/failover/run.sh`; both bound every wait, and
//! this test adds an outer bound.
//!
//! Needs Debian's `chromium` and `redis-server`, Node.js, `tests/web/node_modules` and a binary
//! built after `web/dist`: `./test.sh` installs and builds them.

#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds a real wait with the wall clock"
)]

mod support;

use std::time::Duration;

use support::chromium::{self, missing_prerequisites, run_in_namespace};

/// Outer bound; run.sh caps itself at 200 s.
const TIMEOUT: Duration = Duration::from_secs(230);

#[test]
fn web_app_rejoins_by_itself_when_its_node_drains_or_dies() {
    let missing = missing_prerequisites(&chromium::test_dir("web"), &["playwright-core"]);
    assert!(
        missing.is_empty(),
        "the web failover test cannot run; missing: {}.\nRun ./test.sh first: it installs \
         chromium, builds web/ and runs `npm ci` in tests/web.",
        missing.join(", ")
    );
    // The dev server's key (`stoa serve --dev`), for the operator's drain calls.
    let token = support::cluster::server_token(("devkey", "secret"));
    let run = run_in_namespace(
        &chromium::test_dir("failover"),
        |command| {
            command.env("FAILOVER_SERVER_TOKEN", &token);
        },
        TIMEOUT,
    );
    eprintln!("----- tests/failover/run.sh stderr -----\n{}", run.stderr);
    eprintln!("----- tests/failover/run.sh stdout -----\n{}", run.stdout);
    let summary = run.summary();
    let Some(status) = run.status else {
        panic!(
            "tests/failover/run.sh did not finish within {TIMEOUT:?}; killed it. Summary: {summary}"
        );
    };
    assert!(
        status.success(),
        "web failover failed ({status}); its output is above. Summary: {summary}"
    );
}
