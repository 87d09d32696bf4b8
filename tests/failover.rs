//! Failover at the default `[control] node_ttl`: four `stoa serve` processes on one real
//! redis-server, full at two participants, so that a room's listeners spill over from its
//! origin to the three other nodes (its edges; the last one keeps headroom). Every client is a
//! stoa-bench WebRTC client joined through the product path (`POST /api/rooms/{id}/token`,
//! then `/rtc` at the URL it names).
//!
//! First the edge with headroom is killed (SIGKILL): its listener's client notices, asks for a
//! token again until it names a living node (the dead edge's record expires within
//! `node_ttl`), joins there and hears the speaker again. Then the origin, with the speaker on
//! it, is killed: her client notices, she asks for a token again until it names a living node
//! (the room moves as soon as the dead origin's record expired, its members still counted
//! there or not) and speaks there; the listeners still connected to the other edge hear her
//! again without rejoining (their node re-links to the new origin), as do those on the new
//! origin; the origin's listeners rejoin and hear her too. The elapsed times are logged, not
//! asserted (BENCHMARKS.md is where figures live). Loopback only; every wait bounded.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis_server::RedisServer;
use serde_json::json;
use stoa_bench::client::Role;
use support::api::create_room;
use support::cluster::{Clients, Keys, Node, by_url, start_node, wait_nodes};
use support::scratch_dir;
use support::tones::user_token;

const KEYS: Keys = ("failkey", "a-long-enough-failover-test-secret-01234");
const WAIT: Duration = Duration::from_secs(40);
/// Participants a node carries (an edge counts its own listeners, not the speaker's mirror).
const CAPACITY: u64 = 3;

fn user(id: &str) -> String {
    user_token(KEYS, id)
}

/// The media URL `POST /api/rooms/{room}/token` names for `identity`.
fn media_url(api: SocketAddr, room: &str, identity: &str) -> String {
    support::cluster::media_url(KEYS, api, room, identity)
}

/// What a client whose node died does: asks for a token again (every 200 ms, bounded) until it
/// names a node other than the `dead` ones; that URL.
fn token_elsewhere(api: SocketAddr, room: &str, identity: &str, dead: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let url = media_url(api, room, identity);
        if !dead.contains(&url.as_str()) {
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "{identity}'s token still names a dead node"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Takes the node at `url` out of `nodes`.
fn take(nodes: &mut Vec<Node>, url: &str) -> Node {
    let i = nodes
        .iter()
        .position(|n| n.url == url)
        .expect("a node at that URL");
    nodes.remove(i)
}

#[test]
fn a_room_goes_on_when_an_edge_and_then_its_origin_are_killed() {
    let redis = RedisServer::start();
    // Default node_ttl and presence_ttl; nodes full at three participants.
    let config = support::api::config(
        &scratch_dir("failover"),
        KEYS.0,
        KEYS.1,
        &format!("node_capacity = {CAPACITY}"),
    );
    let mut nodes: Vec<Node> = (0..4)
        .map(|_| start_node(&config, &redis.url, &[]))
        .collect();
    let api = nodes[0].stoa.addr;
    wait_nodes(api, KEYS, "four node records", |n| n.len() == 4);

    // The room's origin takes its host and two listeners; the next listeners spill over, three
    // to an edge (full: the speaker's mirror is not counted), then to the next: mo, kim and
    // kay, ned, ola and oli, then pat alone, whose edge keeps headroom.
    let room = create_room(
        api,
        &user("hana"),
        json!({"title": "Failover", "kind": "stage"}),
    );
    let origin = media_url(api, &room, "hana");
    let mut at: BTreeMap<&str, String> = BTreeMap::new();
    let mut clients = Clients::new(KEYS);
    clients.join(api, &room, "hana", Role::Speaker);
    for who in ["lee", "lou"] {
        at.insert(who, media_url(api, &room, who));
        assert_eq!(at[who], origin, "the origin has room");
        clients.join(api, &room, who, Role::Listener);
    }
    clients.wait_heard(&["lee", "lou"], 50, WAIT, "the listeners on the origin");
    let mut full = vec![origin.clone()];
    for pair in [&["mo", "kim", "kay"][..], &["ned", "ola", "oli"], &["pat"]] {
        let now_full = full.clone();
        wait_nodes(api, KEYS, "the nodes so far full", |n| {
            now_full
                .iter()
                .all(|url| by_url(n, url)["participants"].as_u64() >= Some(CAPACITY))
        });
        for who in pair {
            at.insert(who, media_url(api, &room, who));
            clients.join(api, &room, who, Role::Listener);
        }
        let edge = at[pair[0]].clone();
        assert!(
            !full.contains(&edge),
            "{} spills over to a new edge: {at:?}",
            pair[0]
        );
        assert!(
            pair.iter().all(|who| at[who] == edge),
            "to one edge: {at:?}"
        );
        clients.wait_heard(pair, 50, WAIT, "the edge's listeners");
        full.push(edge);
    }
    let edges = &full[1..];

    // The edge with headroom dies. Its listener's client notices and asks for a token again
    // until it names a living node (until the dead edge's record expired, it has headroom and
    // serves the room, so tokens name it), joins there and hears the speaker.
    let dead_edge = take(&mut nodes, &at["pat"]);
    let dead = dead_edge.url.clone();
    let api = nodes[0].stoa.addr;
    let killed = Instant::now();
    drop(dead_edge);
    clients.lost = 1;
    clients.wait_ended(&["pat"], WAIT, "the edge's client notices");
    let url = token_elsewhere(api, &room, "pat", &[&dead]);
    eprintln!(
        "edge killed: a token names a living node after {:?}",
        killed.elapsed()
    );
    at.insert("pat", url);
    clients.join(api, &room, "pat", Role::Listener);
    clients.wait_heard(&["pat"], 50, WAIT, "the dead edge's listener, rejoined");
    eprintln!(
        "edge killed: its listener hears the speaker again after {:?}",
        killed.elapsed()
    );

    // The origin dies with the host and the listeners on it. Their clients notice; the host
    // asks for a token again until it names a living node, to which the room moved.
    let on_origin: Vec<&str> = at
        .iter()
        .filter(|(_, url)| **url == origin)
        .map(|(who, _)| *who)
        .collect();
    let dead_origin = take(&mut nodes, &origin);
    let api = nodes[0].stoa.addr;
    let killed = Instant::now();
    drop(dead_origin);
    clients.lost += 1 + on_origin.len() as u64;
    clients.wait_ended(&["hana"], WAIT, "the speaker's client notices");
    clients.wait_ended(&on_origin, WAIT, "the origin's listeners' clients notice");
    let still: Vec<&str> = ["mo", "kim", "kay", "ned", "ola", "oli"].to_vec();
    let heard: BTreeMap<&str, u64> = still.iter().map(|w| (*w, clients.packets(w))).collect();
    let moved_to = token_elsewhere(api, &room, "hana", &[&origin, &dead]);
    eprintln!("origin killed: the room moved after {:?}", killed.elapsed());
    assert!(
        edges[..2].contains(&moved_to),
        "to a living node: {moved_to}"
    );
    clients.join(api, &room, "hana", Role::Speaker);
    // Everyone still connected hears her again without rejoining: on the new origin her track
    // is local; on the other edge it comes through that node's new link to the new origin.
    for who in still {
        clients.wait_heard(
            &[who],
            heard[who] + 50,
            WAIT,
            &format!("{who} (on {}) after the origin died", at[who]),
        );
        eprintln!(
            "origin killed: {who} hears the speaker again after {:?}",
            killed.elapsed()
        );
    }
    // The origin's listeners rejoin through the API, on a living node.
    for who in &on_origin {
        let url = token_elsewhere(api, &room, who, &[&origin, &dead]);
        assert!(edges[..2].contains(&url), "{who} on a living node: {url}");
        clients.join(api, &room, who, Role::Listener);
    }
    clients.wait_heard(&on_origin, 50, WAIT, "the origin's listeners, rejoined");
    drop(nodes);
    drop(clients);
}
