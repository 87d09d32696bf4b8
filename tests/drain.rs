//! An operator drains nodes of a room spread over three `stoa serve` processes on one real
//! redis-server (full at two participants): the drained node moves its members, who hear the
//! room again on living nodes after asking the API for new tokens.
//!
//! First an edge: its listeners are told to leave with LiveKit's `MIGRATION` reason (a raw
//! signaling client reads the `LeaveRequest`; stoa-bench's WebRTC client ends), their next
//! tokens name the third node, and there they hear the speaker again through its relay while
//! the origin's people never noticed. Then, the edge's drain lifted, the origin: the room gets
//! a new origin before anyone moves, its speaker and listener are told to move, rejoin there
//! through the API, and every listener hears the speaker again. Loopback only; every wait
//! bounded.
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

use livekit_protocol as lk;
use redis_server::RedisServer;
use serde_json::{Value, json};
use stoa_bench::client::Role;
use support::SignalClient;
use support::api::{create_room, get_until, ok};
use support::cluster::{Clients, Keys, Node, by_url, server_token, start_node, wait_nodes};
use support::scratch_dir;
use support::tones::user_token;

const KEYS: Keys = ("drainkey", "a-long-enough-drain-test-secret-012345");
const WAIT: Duration = Duration::from_secs(40);

fn user(id: &str) -> String {
    user_token(KEYS, id)
}

/// `POST /api/rooms/{room}/token` for `identity`: its JSON (`url`, `token`).
fn grant(api: SocketAddr, room: &str, identity: &str) -> Value {
    support::cluster::grant(KEYS, api, room, identity)
}

fn media_url(api: SocketAddr, room: &str, identity: &str) -> String {
    support::cluster::media_url(KEYS, api, room, identity)
}

/// A counter (or gauge) on `addr`'s `/metrics`, if present.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let (status, text) = support::request(addr, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
}

fn drain(api: SocketAddr, id: &str, on: bool) {
    let method = if on { "POST" } else { "DELETE" };
    let node = ok(
        api,
        method,
        &format!("/api/nodes/{id}/drain"),
        &server_token(KEYS),
        None,
    );
    assert_eq!(node["draining"], on);
}

/// Waits (bounded) until every client in `who` ended (was told to leave).
fn wait_finished(clients: &Clients, who: &[&str], what: &str) {
    let deadline = Instant::now() + WAIT;
    while !who.iter().all(|w| clients.finished(w)) {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_drained_node_moves_its_members_and_they_hear_the_room_again_elsewhere() {
    let redis = RedisServer::start();
    let config = support::api::config(
        &scratch_dir("drain"),
        KEYS.0,
        KEYS.1,
        "presence_ttl = 2\nnode_capacity = 2",
    );
    let nodes: Vec<Node> = (0..3)
        .map(|_| start_node(&config, &redis.url, &[]))
        .collect();
    let api = nodes[0].stoa.addr;
    wait_nodes(api, KEYS, "three node records", |n| n.len() == 3);
    let addr_of = |url: &str| nodes.iter().find(|n| n.url == url).unwrap().stoa.addr;

    // The host speaks on the room's origin, a listener fills it.
    let room = create_room(
        api,
        &user("hana"),
        json!({"title": "Moves", "kind": "stage"}),
    );
    let origin = media_url(api, &room, "hana");
    assert_eq!(media_url(api, &room, "lee"), origin);
    let mut clients = Clients::new(KEYS);
    clients.join(api, &room, "hana", Role::Speaker);
    clients.join(api, &room, "lee", Role::Listener);
    clients.wait_heard(&["lee"], 50, WAIT, "the listener on the origin");
    wait_nodes(api, KEYS, "the origin full", |n| {
        by_url(n, &origin)["participants"].as_u64() >= Some(2)
    });

    // The next two listeners spill over to an edge: a WebRTC client and a raw signaling one.
    let edge_grant = grant(api, &room, "ray");
    let edge = edge_grant["url"].as_str().unwrap().to_owned();
    assert_ne!(edge, origin, "spilled to an edge");
    assert_eq!(media_url(api, &room, "mo"), edge);
    let spare = nodes
        .iter()
        .map(|n| n.url.clone())
        .find(|u| *u != origin && *u != edge)
        .unwrap();
    clients.join(api, &room, "mo", Role::Listener);
    clients.wait_heard(&["mo"], 50, WAIT, "the edge's listener");
    let (mut ray, _) = SignalClient::join(addr_of(&edge), edge_grant["token"].as_str().unwrap());
    let listed = wait_nodes(api, KEYS, "the edge's two participants", |n| {
        by_url(n, &edge)["participants"].as_u64() >= Some(2)
    });
    let edge_id = by_url(&listed, &edge)["id"].as_str().unwrap().to_owned();
    let origin_id = by_url(&listed, &origin)["id"].as_str().unwrap().to_owned();

    // An operator drains the edge: it asks both its members to move.
    drain(api, &edge_id, true);
    let leave = ray.wait_for("the edge's leave", |m| match m {
        lk::signal_response::Message::Leave(l) => Some(l.clone()),
        _ => None,
    });
    assert_eq!(leave.reason, lk::DisconnectReason::Migration as i32);
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    assert!(!leave.can_reconnect);
    wait_finished(
        &clients,
        &["mo"],
        "the edge's WebRTC listener told to leave",
    );
    assert!(!clients.finished("hana") && !clients.finished("lee"));
    assert_eq!(
        metric(addr_of(&edge), "control_drain_members_moved_total"),
        Some(2.0)
    );
    // Their new tokens name the third node, not the drained edge; there they hear the
    // speaker again through the relay, and the origin's listener never stopped hearing her.
    assert_eq!(media_url(api, &room, "ray"), spare);
    let heard = clients.packets("lee");
    clients.join(api, &room, "mo", Role::Listener);
    clients.wait_heard(&["mo"], 50, WAIT, "the moved listener on the third node");
    clients.wait_heard(&["lee"], heard + 50, WAIT, "the origin's listener, still");
    wait_nodes(api, KEYS, "the drained edge empty", |n| {
        by_url(n, &edge)["participants"] == 0 && by_url(n, &spare)["listeners"] == 1
    });
    assert_eq!(
        metric(addr_of(&origin), "control_drain_members_moved_total"),
        None
    );

    // The edge back in service, the origin is drained: the room gets a new origin first,
    // then its host and listener are told to move; through the API they meet there, and
    // every listener hears the host again.
    drain(api, &edge_id, false);
    wait_nodes(api, KEYS, "the edge back", |n| {
        by_url(n, &edge)["draining"] == false
    });
    drain(api, &origin_id, true);
    wait_finished(
        &clients,
        &["hana", "lee"],
        "the origin's members told to leave",
    );
    let origin_api = addr_of(&origin);
    assert_eq!(
        metric(origin_api, "control_drain_rooms_rehomed_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(origin_api, "control_drain_members_moved_total"),
        Some(2.0)
    );
    let moved_to = media_url(api, &room, "hana");
    assert_ne!(moved_to, origin, "the room has a new origin");
    let heard = clients.packets("mo");
    clients.join(api, &room, "hana", Role::Speaker);
    clients.join(api, &room, "lee", Role::Listener);
    clients.wait_heard(&["lee"], 50, WAIT, "the origin's listener after the move");
    clients.wait_heard(
        &["mo"],
        heard + 50,
        WAIT,
        "the third node's listener after the move",
    );
    get_until(
        api,
        &format!("/api/rooms/{room}"),
        &user("hana"),
        "the host back on stage, three present",
        |r| r["present"] == 3,
    );
    wait_nodes(api, KEYS, "the drained origin empty", |n| {
        by_url(n, &origin)["participants"] == 0
    });
    assert_eq!(clients.failed(), 0, "nobody failed: they were told to move");
    drop(ray);
    drop(clients);
    drop(nodes);
}
