//! Several nodes on one Redis: three `stoa serve` processes, each with its own `public_url`, on
//! one real redis-server. Rooms are placed on a living node that is neither loaded nor
//! draining; when a room's node is killed (SIGKILL), the next token request places the room on
//! a living node, and a speaker and a listener (stoa-bench's WebRTC clients, joined through the
//! product path) meet there and the listener hears audio. Loopback only; every wait bounded.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::json;
use stoa_bench::client::Role;
use support::api::{call, create_room, get_until, ok};
use support::cluster::{Clients, Keys, Node, by_url, server_token, start_node, wait_nodes};
use support::scratch_dir;
use support::tones::user_token;

const KEYS: Keys = ("nodekey", "a-long-enough-node-test-secret-0123456");
const WAIT: Duration = Duration::from_secs(30);

fn user(id: &str) -> String {
    user_token(KEYS, id)
}

/// A config for nodes that count as full at 4 participants (so that one or two make a node
/// clearly the busier) and whose records expire 2 s after their last heartbeat.
fn node_config(name: &str) -> std::path::PathBuf {
    let dir = scratch_dir(name);
    support::api::config(&dir, KEYS.0, KEYS.1, "presence_ttl = 2\nnode_capacity = 4")
}

/// Creates a room through `api` and returns the media URL its token names.
fn placed(api: SocketAddr, host: &str) -> String {
    let room = create_room(api, &user(host), json!({"title": "Placed"}));
    let grant = ok(
        api,
        "POST",
        &format!("/api/rooms/{room}/token"),
        &user(host),
        None,
    );
    ok(
        api,
        "POST",
        &format!("/api/rooms/{room}/end"),
        &user(host),
        None,
    );
    grant["url"].as_str().unwrap().to_owned()
}

#[test]
fn rooms_are_placed_on_living_nodes_with_headroom_and_move_when_their_node_dies() {
    let redis = RedisServer::start();
    let config = node_config("nodes");
    let mut nodes: Vec<Option<Node>> = (0..3)
        .map(|_| Some(start_node(&config, &redis.url, &[])))
        .collect();
    let urls: Vec<String> = nodes.iter().flatten().map(|n| n.url.clone()).collect();
    let api0 = nodes[0].as_ref().unwrap().stoa.addr;
    let listed = wait_nodes(api0, KEYS, "three node records", |n| n.len() == 3);
    for url in &urls {
        let node = by_url(&listed, url);
        assert_eq!(node["draining"], false);
        assert!(node["expires_at"].as_u64() > node["seen_at"].as_u64());
    }
    // Users see no nodes.
    let (status, body) = call(api0, "GET", "/api/nodes", &user("lee"), None);
    assert_eq!((status, body["code"].as_str()), (403, Some("server_only")));

    // The first room goes to some node X, whichever node created it; a speaker and a listener
    // meet there and the listener hears the speaker.
    let first = create_room(api0, &user("hana"), json!({"title": "Moves"}));
    let grant = ok(
        api0,
        "POST",
        &format!("/api/rooms/{first}/token"),
        &user("lee"),
        None,
    );
    let x_url = grant["url"].as_str().unwrap().to_owned();
    let x = urls
        .iter()
        .position(|u| *u == x_url)
        .expect("placed on a node");
    let mut before = Clients::new(KEYS);
    before.join(api0, &first, "hana", Role::Speaker);
    before.join(api0, &first, "lee", Role::Listener);
    before.wait_heard(&["lee"], 50, WAIT, "on the first node");

    // X reports its participants; an operator drains another node Y; the next room goes to
    // the third, Z: neither the loaded node nor the drained one.
    let listed = wait_nodes(api0, KEYS, "the first node's load", |n| {
        n.len() == 3 && by_url(n, &x_url)["participants"].as_u64() >= Some(2)
    });
    assert!(by_url(&listed, &x_url)["listeners"].as_u64() >= Some(1));
    let (y, z) = ((x + 1) % 3, (x + 2) % 3);
    let y_id = by_url(&listed, &urls[y])["id"].as_str().unwrap().to_owned();
    let drained = ok(
        api0,
        "POST",
        &format!("/api/nodes/{y_id}/drain"),
        &server_token(KEYS),
        None,
    );
    assert_eq!(drained["draining"], true);
    let (status, _) = call(
        api0,
        "POST",
        "/api/nodes/nosuchnode/drain",
        &server_token(KEYS),
        None,
    );
    assert_eq!(status, 404);
    // Every node reads the registry at most a second late; reading it here refreshes it.
    wait_nodes(api0, KEYS, "the drain", |n| {
        by_url(n, &urls[y])["draining"] == true
    });
    for _ in 0..2 {
        let room = create_room(api0, &user("hana2"), json!({"title": "Placed"}));
        let grant = ok(
            api0,
            "POST",
            &format!("/api/rooms/{room}/token"),
            &user("hana2"),
            None,
        );
        assert_eq!(
            grant["url"],
            urls[z].as_str(),
            "placed away from load and drain"
        );
        ok(
            api0,
            "POST",
            &format!("/api/rooms/{room}/end"),
            &user("hana2"),
            None,
        );
    }

    // X is killed. Its record expires; the first room's next token request places it on the
    // living node that is not drained, and its people meet and hear each other there.
    drop(nodes[x].take());
    let api = nodes[z].as_ref().unwrap().stoa.addr;
    wait_nodes(api, KEYS, "the dead node's record gone", |n| {
        n.len() == 2 && n.iter().all(|n| n["public_url"] != x_url.as_str())
    });
    // The room moves only once nobody is counted as connected to it (its members on X are
    // marked gone when X's heartbeat has expired).
    get_until(
        api,
        &format!("/api/rooms/{first}"),
        &user("hana"),
        "X's members still present",
        |room| room["present"] == 0,
    );
    let grant = ok(
        api,
        "POST",
        &format!("/api/rooms/{first}/token"),
        &user("mo"),
        None,
    );
    assert_eq!(grant["url"], urls[z].as_str());
    let room = ok(
        api,
        "GET",
        &format!("/api/rooms/{first}"),
        &user("hana"),
        None,
    );
    assert_eq!(room["state"], "live");
    let mut after = Clients::new(KEYS);
    after.join(api, &first, "hana", Role::Speaker);
    after.join(api, &first, "lee", Role::Listener);
    after.wait_heard(&["lee"], 50, WAIT, "on the node the room moved to");
    let listed = wait_nodes(api, KEYS, "the room's people on its new node", |n| {
        by_url(n, &urls[z])["participants"].as_u64() >= Some(2)
    });
    assert_eq!(by_url(&listed, &urls[y])["participants"], 0);
    drop(before);
    drop(after);
}

#[test]
fn a_stopping_node_says_it_is_draining_and_gets_no_new_rooms() {
    let redis = RedisServer::start();
    let config = node_config("nodes-sigterm");
    let a = start_node(&config, &redis.url, &[]);
    // Its drain waits (up to 20 s) for the session left on it.
    let b = start_node(&config, &redis.url, &[("STOA_DRAIN_SECONDS", "20")]);
    let keys = KEYS;
    // Two sessions on A, one on B: B is the lighter.
    let _on_a = [
        support::join_room(a.stoa.addr, keys, "busy-a", "a1"),
        support::join_room(a.stoa.addr, keys, "busy-a", "a2"),
    ];
    let _on_b = support::join_room(b.stoa.addr, keys, "busy-b", "b1");
    wait_nodes(a.stoa.addr, KEYS, "both nodes' sessions", |n| {
        n.len() == 2
            && by_url(n, &a.url)["participants"] == 2
            && by_url(n, &b.url)["participants"] == 1
    });
    assert_eq!(placed(a.stoa.addr, "hana"), b.url, "the lighter node");

    // SIGTERM: B refuses joins, asks its client to leave, and its record says draining at once.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &b.stoa.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_nodes(a.stoa.addr, KEYS, "the stopping node draining", |n| {
        n.iter()
            .any(|n| n["public_url"] == b.url.as_str() && n["draining"] == true)
    });
    assert_eq!(placed(a.stoa.addr, "hana"), a.url, "not the draining node");

    // A's metrics count a ready and a draining node, and its own load (2 of 4 at least).
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, text) = support::request(a.stoa.addr, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        let has = |line: &str| text.lines().any(|l| l == line);
        if has("control_nodes{state=\"draining\"} 1")
            && has("control_nodes{state=\"ready\"} 1")
            && has("control_node_draining 0")
            && text
                .lines()
                .filter_map(|l| l.strip_prefix("control_node_load "))
                .any(|v| v.parse::<f64>().is_ok_and(|v| v >= 0.5))
        {
            break;
        }
        assert!(Instant::now() < deadline, "node metrics:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
