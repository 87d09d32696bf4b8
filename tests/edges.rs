//! A room that outgrows its node: two `stoa serve` processes on one real redis-server, counting
//! a node as full at two participants. A speaker (the host) and a listener fill the room's
//! origin; the next listeners' tokens name the other node, an edge, which relays the room
//! from the origin when they join; every listener, on the origin and on the edge, hears the
//! speaker (stoa-bench's WebRTC clients joined through the product path, counting the packets
//! each receives); the host's own token is refused on the edge. Then the origin is killed: the
//! room moves to the edge at the host's next token request and the edge's listeners, still
//! connected, hear her again. And two rooms of
//! one origin spilling to the same edge: two relay links between the same two nodes, each on
//! a UDP socket of its own on the edge, both carrying their room. And, on three nodes, a speaker
//! of a full origin sent to an edge, heard on the origin through the feed the origin opens from the edge,
//! and heard again on the origin, through a feed from the third node, after her edge is killed
//! and she rejoins there.
//! Loopback only; every wait bounded.
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
use support::api::{create_room, get_until};
use support::cluster::{Clients, Keys, Node, by_url, start_node, wait_nodes};
use support::scratch_dir;
use support::tones::user_token;

const KEYS: Keys = ("edgekey", "a-long-enough-edge-test-secret-0123456");
const WAIT: Duration = Duration::from_secs(40);

fn user(id: &str) -> String {
    user_token(KEYS, id)
}

/// The media URL `POST /api/rooms/{room}/token` names for `identity`.
fn media_url(api: SocketAddr, room: &str, identity: &str) -> String {
    support::cluster::media_url(KEYS, api, room, identity)
}

/// `N` nodes sharing one Redis, and a room created through the first.
struct RoomNodes<const N: usize> {
    nodes: [Node; N],
    /// The first node's API.
    api: SocketAddr,
    room: String,
    /// The room's node (where the host's token sends her).
    origin: String,
    /// The others, in the order they were started.
    edges: Vec<String>,
}

/// Starts `N` nodes on `redis` counting themselves full at two participants, members'
/// presence expiring 2 s after their node's last heartbeat (one every 0.7 s), node records at
/// the default node_ttl, and `extra` config lines; waits for every record and creates a room
/// of `kind` titled `title` for the host, hana.
fn room_on_nodes<const N: usize>(
    redis: &RedisServer,
    scratch: &str,
    extra: &str,
    title: &str,
    kind: &str,
) -> RoomNodes<N> {
    let config = support::api::config(
        &scratch_dir(scratch),
        KEYS.0,
        KEYS.1,
        &format!("presence_ttl = 2\nnode_capacity = 2\n{extra}"),
    );
    let nodes: [Node; N] = std::array::from_fn(|_| start_node(&config, &redis.url, &[]));
    let api = nodes[0].stoa.addr;
    wait_nodes(api, KEYS, "every node's record", |n| n.len() == N);
    let room = create_room(api, &user("hana"), json!({"title": title, "kind": kind}));
    let origin = media_url(api, &room, "hana");
    assert!(nodes.iter().any(|n| n.url == origin), "placed on a node");
    let edges = nodes
        .iter()
        .map(|n| n.url.clone())
        .filter(|u| *u != origin)
        .collect();
    RoomNodes {
        nodes,
        api,
        room,
        origin,
        edges,
    }
}

#[test]
fn listeners_of_a_full_origin_go_to_an_edge_and_hear_the_speaker_through_the_relay() {
    let redis = RedisServer::start();
    // The room's origin is wherever it was placed; its host speaks there and a listener joins
    // while it has room.
    let RoomNodes {
        nodes,
        api,
        room,
        origin,
        edges,
    } = room_on_nodes::<2>(&redis, "edges", "", "Spills", "stage");
    let edge = edges[0].clone();
    assert_eq!(media_url(api, &room, "lee"), origin, "room at the origin");
    let mut clients = Clients::new(KEYS);
    clients.join(api, &room, "hana", Role::Speaker);
    clients.join(api, &room, "lee", Role::Listener);
    clients.wait_heard(&["lee"], 50, WAIT, "the listener on the origin");

    // The origin's record shows it full: the next listeners are sent to the other node, an
    // edge (the same one for each: the room's recorded edge); the host still goes to the origin.
    wait_nodes(api, KEYS, "the origin full", |n| {
        by_url(n, &origin)["participants"].as_u64() >= Some(2)
    });
    assert_eq!(media_url(api, &room, "mo"), edge, "a listener spills over");
    assert_eq!(media_url(api, &room, "kim"), edge, "to the same edge");
    assert_eq!(media_url(api, &room, "hana"), origin, "the host stays");
    // Asked through the edge's own API, the answer is the same once the edge reads the
    // origin's record full too (each node reads the registry through a one-second cache).
    let edge_api = nodes.iter().find(|n| n.url == edge).unwrap().stoa.addr;
    wait_nodes(
        edge_api,
        KEYS,
        "the origin full, as the edge reads it",
        |n| by_url(n, &origin)["participants"].as_u64() >= Some(2),
    );
    assert_eq!(media_url(edge_api, &room, "mo"), edge);

    // They join there; the edge relays the room from the origin at their admission, and both
    // hear the speaker on the origin (as does the origin's listener still).
    clients.join(api, &room, "mo", Role::Listener);
    clients.join(edge_api, &room, "kim", Role::Listener);
    clients.wait_heard(&["mo", "kim"], 50, WAIT, "the listeners on the edge");
    let before = clients.packets("lee");
    clients.wait_heard(
        &["lee"],
        before + 50,
        WAIT,
        "the listener on the origin, still",
    );

    // The host's own token, brought to the edge, is refused there with a reason: a room's
    // speakers publish on its origin (what she published on the edge would reach its
    // listeners alone).
    let token = support::cluster::grant(KEYS, api, &room, "hana")["token"]
        .as_str()
        .expect("a media token")
        .to_owned();
    let (status, why) = support::SignalClient::connect(edge_api, &token)
        .err()
        .expect("a speaker is refused on the edge");
    assert_eq!(status, 409, "{why}");
    assert!(why.contains("origin"), "{why}");

    // The edge carries its two listeners; the origin still counts its own two people only
    // (the relay is not a listener there).
    let listed = wait_nodes(api, KEYS, "the edge's listeners", |n| {
        by_url(n, &edge)["listeners"].as_u64() >= Some(2)
    });
    assert_eq!(by_url(&listed, &origin)["participants"], 2, "{listed:?}");
    // The edge linked itself once, although it admitted two listeners; the origin relays
    // nothing; the token requests that spilled over were counted.
    let metric = |addr: SocketAddr, name: &str| {
        let (status, text) = support::request(addr, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    assert_eq!(metric(edge_api, "control_relays_started_total"), Some(1.0));
    let origin_api = nodes.iter().find(|n| n.url == origin).unwrap().stoa.addr;
    assert_eq!(metric(origin_api, "control_relays_started_total"), None);
    let spilled: f64 = nodes
        .iter()
        .filter_map(|n| metric(n.stoa.addr, "control_edge_listeners_total"))
        .sum();
    // mo, kim, mo again through the edge's API, then mo's and kim's clients.
    assert_eq!(spilled, 5.0, "listeners counted as sent to the edge");
    // The room counts everyone present, on either node.
    get_until(
        api,
        &format!("/api/rooms/{room}"),
        &user("hana"),
        "four present",
        |r| r["present"] == 4,
    );

    // The origin dies (SIGKILL), with the host and one listener on it. Its members time out
    // (presence_ttl), and, once its record expired (node_ttl, whether or not they timed out
    // yet: tests/failover.rs), the room moves at the host's next token request to the one
    // living node, the edge; she speaks there, and the edge's listeners, connected all along,
    // hear her again without rejoining (their mirror of her went with the relay; her new
    // track is local).
    let [first, second] = nodes;
    let (dead, living) = if first.url == origin {
        (first, second)
    } else {
        (second, first)
    };
    drop(dead);
    clients.lost = 2;
    let heard = [clients.packets("mo"), clients.packets("kim")];
    get_until(
        edge_api,
        &format!("/api/rooms/{room}"),
        &user("mo"),
        "the dead origin's members gone",
        |r| r["present"] == 2,
    );
    let deadline = Instant::now() + WAIT;
    while media_url(edge_api, &room, "hana") != edge {
        assert!(
            Instant::now() < deadline,
            "the room moves to the living node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    clients.join(edge_api, &room, "hana", Role::Speaker);
    clients.wait_heard(
        &["mo"],
        heard[0] + 50,
        WAIT,
        "the edge's listener after the failover",
    );
    clients.wait_heard(
        &["kim"],
        heard[1] + 50,
        WAIT,
        "the edge's listener after the failover",
    );
    drop(living);
    drop(clients);
}

/// Two rooms on one origin, both full, spill their next listeners to the same edge: the edge
/// relays both rooms from the origin, two links between the same two nodes (each on a UDP
/// socket of its own on the edge), and every listener hears its room's speaker, on the origin
/// and on the edge.
#[test]
fn two_rooms_of_one_origin_spill_to_the_same_edge_and_both_are_heard() {
    let redis = RedisServer::start();
    let config = support::api::config(
        &scratch_dir("edges-two-rooms"),
        KEYS.0,
        KEYS.1,
        "presence_ttl = 2\nnode_capacity = 4",
    );
    // The origin alone at first, so that both rooms are placed there.
    let origin_node = start_node(&config, &redis.url, &[]);
    let api = origin_node.stoa.addr;
    let origin = origin_node.url.clone();
    wait_nodes(api, KEYS, "the origin's record", |n| n.len() == 1);
    let rooms = [
        create_room(api, &user("hana"), json!({"title": "One", "kind": "stage"})),
        create_room(api, &user("ana"), json!({"title": "Two", "kind": "stage"})),
    ];
    for (room, listener) in rooms.iter().zip(["lee", "ben"]) {
        assert_eq!(
            media_url(api, room, listener),
            origin,
            "placed on the origin"
        );
    }
    let edge_node = start_node(&config, &redis.url, &[]);
    let (edge, edge_api) = (edge_node.url.clone(), edge_node.stoa.addr);
    wait_nodes(api, KEYS, "two node records", |n| n.len() == 2);

    // Each room's host speaks on the origin, and a listener joins there: four participants
    // fill it.
    let mut clients = Clients::new(KEYS);
    let [one, two] = &rooms;
    clients.join(api, one, "hana", Role::Speaker);
    clients.join(api, one, "lee", Role::Listener);
    clients.join(api, two, "ana", Role::Speaker);
    clients.join(api, two, "ben", Role::Listener);
    clients.wait_heard(&["lee", "ben"], 50, WAIT, "the listeners on the origin");
    wait_nodes(api, KEYS, "the origin full", |n| {
        by_url(n, &origin)["participants"].as_u64() >= Some(4)
    });

    // The next listener of each room is sent to the same edge: the second room spills where
    // the first does.
    assert_eq!(media_url(api, one, "mo"), edge, "room one spills over");
    assert_eq!(
        media_url(api, two, "kim"),
        edge,
        "room two spills to the same edge"
    );
    clients.join(api, one, "mo", Role::Listener);
    clients.join(api, two, "kim", Role::Listener);
    clients.wait_heard(
        &["mo", "kim"],
        50,
        WAIT,
        "both rooms' listeners on the edge",
    );
    let before = [clients.packets("lee"), clients.packets("ben")];
    clients.wait_heard(
        &["lee"],
        before[0] + 50,
        WAIT,
        "room one on the origin, still",
    );
    clients.wait_heard(
        &["ben"],
        before[1] + 50,
        WAIT,
        "room two on the origin, still",
    );

    // The edge started one link per room; the origin none.
    let metric = |addr: SocketAddr, name: &str| {
        let (status, text) = support::request(addr, "GET", "/metrics", None, None);
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
    };
    assert_eq!(metric(edge_api, "control_relays_started_total"), Some(2.0));
    assert_eq!(metric(api, "control_relays_started_total"), None);
    // Each room counts its three present, on either node.
    for (room, host) in [(one, "hana"), (two, "ana")] {
        get_until(
            edge_api,
            &format!("/api/rooms/{room}"),
            &user(host),
            "three present",
            |r| r["present"] == 3,
        );
    }
    drop(clients);
    drop(edge_node);
    drop(origin_node);
}

/// A room whose origin is full sends its next speaker to an edge, where she publishes; the
/// origin opens a feed from the edge, and its members hear her as the edge's listener does.
/// Her edge killed, she rejoins where her next token says (the third node, the origin being
/// full) and is heard again through a new feed.
#[test]
fn a_speaker_of_a_full_origin_speaks_from_an_edge_and_the_origin_hears_her() {
    let redis = RedisServer::start();
    // Three nodes with no stage reserve: a speaker spills over as soon as the origin is full.
    // An open room: every member may speak. Its host and a member fill the origin, neither of
    // them speaking.
    let RoomNodes {
        nodes,
        api,
        room,
        origin,
        edges,
    } = room_on_nodes::<3>(
        &redis,
        "edges-speaker",
        "stage_reserve = 0",
        "Open floor",
        "open",
    );
    let mut clients = Clients::new(KEYS);
    clients.join(api, &room, "hana", Role::Listener);
    clients.join(api, &room, "lee", Role::Listener);
    wait_nodes(api, KEYS, "the origin full", |n| {
        by_url(n, &origin)["participants"].as_u64() >= Some(2)
    });

    // The next member, who may speak, is sent to an edge, and speaks there; so is a listener
    // after her, to the same edge (the room's). The host still goes to the origin.
    let edge = media_url(api, &room, "sam");
    assert!(edges.contains(&edge), "a speaker spills over to an edge");
    let other = edges.iter().find(|e| **e != edge).unwrap().clone();
    assert_eq!(media_url(api, &room, "hana"), origin, "the host stays");
    clients.join(api, &room, "sam", Role::Speaker);
    assert_eq!(media_url(api, &room, "mo"), edge, "the room's edge");
    clients.join(api, &room, "mo", Role::Listener);

    // Everyone hears her: on the edge from her node, on the origin through the feed.
    clients.wait_heard(&["mo"], 50, WAIT, "the listener on her edge");
    clients.wait_heard(
        &["hana", "lee"],
        50,
        WAIT,
        "the origin's members, through the feed",
    );
    let spilled: f64 = nodes
        .iter()
        .filter_map(|n| {
            let (status, text) = support::request(n.stoa.addr, "GET", "/metrics", None, None);
            assert_eq!(status, 200);
            text.lines().find_map(|l| {
                l.strip_prefix("control_edge_speakers_total ")?
                    .parse::<f64>()
                    .ok()
            })
        })
        .sum();
    assert!(
        spilled >= 2.0,
        "sam counted as a speaker sent to the edge: {spilled}"
    );
    get_until(
        api,
        &format!("/api/rooms/{room}"),
        &user("hana"),
        "four present",
        |r| r["present"] == 4,
    );

    // Her node dies (SIGKILL): her client and the edge's listener's see their connections
    // end. Once the edge's record expired, her next token names the other edge (the origin is
    // still full), where she speaks again: the origin opens a feed from that edge, and its
    // members hear her; so does a new listener there.
    let [a, b, c] = nodes;
    let mut living = Vec::new();
    let mut dead = None;
    for n in [a, b, c] {
        if n.url == edge {
            dead = Some(n);
        } else {
            living.push(n);
        }
    }
    let living_api = living
        .iter()
        .find(|n| n.url == origin)
        .expect("the origin lives")
        .stoa
        .addr;
    let heard = [clients.packets("hana"), clients.packets("lee")];
    drop(dead);
    clients.lost = 2;
    wait_nodes(living_api, KEYS, "the dead edge's record expired", |n| {
        n.len() == 2
    });
    assert_eq!(
        media_url(living_api, &room, "sam"),
        other,
        "her token names the other edge"
    );
    clients.join(living_api, &room, "sam", Role::Speaker);
    clients.wait_heard(
        &["hana"],
        heard[0] + 50,
        WAIT,
        "the host hears her again, through a feed from the other edge",
    );
    clients.wait_heard(
        &["lee"],
        heard[1] + 50,
        WAIT,
        "the origin's listener hears her again",
    );
    assert_eq!(
        media_url(living_api, &room, "kim"),
        other,
        "the room's edge now"
    );
    clients.join(living_api, &room, "kim", Role::Listener);
    clients.wait_heard(&["kim"], 50, WAIT, "a new listener on her edge");
    drop(living);
    drop(clients);
}
