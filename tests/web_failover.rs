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

mod support;

use std::time::Duration;

/// Outer bound; run.sh caps itself at 200 s.
const TIMEOUT: Duration = Duration::from_secs(230);

#[test]
fn web_app_rejoins_by_itself_when_its_node_drains_or_dies() {
    support::chromium::run_two_node_scenario("failover.mjs", None, TIMEOUT);
}
