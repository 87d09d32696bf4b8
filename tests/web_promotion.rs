//! A listener on an edge is promoted and speaks, all through the web app: two `stoa serve`
//! nodes on one redis-server, each carrying one participant, and two headless Chromium pages
//! of Stoa's web app (a host, a listener), all inside a private network namespace
//! (`unshare -n`). The host's room is on node 0, which the host fills, so the listener's token
//! names node 1, an edge, where she hears the host through the relay. She raises her hand and
//! the host approves it: the edge tells her session to leave (`MIGRATION`), and her page takes
//! a fresh token, which names the origin, and connects there by itself (no Rejoin), allowed to
//! publish; she unmutes and the host hears her. Then the same for a second edge listener,
//! whom the host invites to speak from the audience. The scenario lives in
//! `tests/web/promotion.mjs`, its runner in `tests/failover/run.sh`; both bound every wait, and
//! this test adds an outer bound.
//!
//! Needs Debian's `chromium` and `redis-server`, Node.js, `tests/web/node_modules` and a binary
//! built after `web/dist`: `./test.sh` installs and builds them.

mod support;

use std::time::Duration;

/// Outer bound; run.sh caps itself at 200 s.
const TIMEOUT: Duration = Duration::from_secs(230);

#[test]
fn web_app_moves_a_promoted_edge_listener_to_the_origin_by_itself() {
    support::chromium::run_two_node_scenario("promotion.mjs", Some(1), TIMEOUT);
}
