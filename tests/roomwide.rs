//! One room over two nodes is one room to the RoomService API, to `/api` and to the people in
//! it: two `stoa serve` processes on one real redis-server, each full at four participants. The
//! host speaks on the room's origin with three listeners there; four more listeners are
//! placed on the other node, an edge, which relays the room from the origin. Then, through
//! either node:
//! - Twirp `ListParticipants` and `ListRooms` count everyone once (the relay never, the
//!   edge's mirror of the host once), `ListRooms` lists a room whose media lives on the other
//!   node only, `GetParticipant` finds people on the other node;
//! - `UpdateParticipant`, `MutePublishedTrack` and `RemoveParticipant` about someone the
//!   node does not hold reach the node that does (the host's mute seen by an edge listener
//!   through the relay);
//! - a listener of the edge promoted (by Twirp, or by the host through `/api`) is told to
//!   leave with `MIGRATION`, and the next token of the one promoted through `/api` names the
//!   origin, where she joins allowed to publish;
//! - the host's kick through the origin's `/api` ends a session on the edge;
//! - webhooks (both nodes send to one receiver) tell of the room's start once and of each
//!   connected person's join once, never of the relay;
//! - a speaker on the origin sees the edge's listener as a participant (announced over the
//!   relay link), once, and sees him leave;
//! - clients on either node see the same room-wide `Room.num_participants` and
//!   `num_publishers` in their `RoomUpdate`s (everyone connected once, as `/api` counts the
//!   present), and a leave on the edge is counted on the origin.
//!
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

use livekit_protocol as lk;
use redis_server::RedisServer;
use serde_json::{Value, json};
use stoa_bench::client::Role;
use support::api::{call, create_room, get_until, ok};
use support::cluster::{Clients, Keys, by_url, start_node, wait_nodes};
use support::hooks::HookReceiver;
use support::tones::user_token;
use support::{SignalClient, scratch_dir};

const KEYS: Keys = ("widekey", "a-long-enough-roomwide-test-secret-0123");
const WAIT: Duration = Duration::from_secs(40);

fn user(id: &str) -> String {
    user_token(KEYS, id)
}

/// `POST /api/rooms/{room}/token` for `identity`: the media URL and token.
fn grant(api: SocketAddr, room: &str, identity: &str) -> (String, String) {
    let g = support::cluster::grant(KEYS, api, room, identity);
    (
        g["url"].as_str().unwrap().to_owned(),
        g["token"].as_str().unwrap().to_owned(),
    )
}

/// A RoomService call with an admin token for `room` (as a server SDK makes it).
fn twirp(addr: SocketAddr, method: &str, room: &str, body: Value) -> (u16, Value) {
    let token = stoa_signaling::token::mint(
        KEYS.0,
        KEYS.1,
        "server",
        None,
        stoa_signaling::token::VideoGrants {
            room_admin: true,
            room_list: true,
            room: room.to_owned(),
            ..Default::default()
        },
        Duration::from_secs(600),
        support::unix_now(),
    )
    .unwrap();
    call(
        addr,
        "POST",
        &format!("/twirp/livekit.RoomService/{method}"),
        &token,
        Some(body),
    )
}

fn twirp_ok(addr: SocketAddr, method: &str, room: &str, body: Value) -> Value {
    let (status, v) = twirp(addr, method, room, body);
    assert_eq!(status, 200, "{method}: {v}");
    v
}

/// The identities `ListParticipants` through `addr` answers, sorted.
fn listed(addr: SocketAddr, room: &str) -> Vec<String> {
    let v = twirp_ok(addr, "ListParticipants", room, json!({ "room": room }));
    let mut ids: Vec<String> = v["participants"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| p["identity"].as_str().unwrap_or_default().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Waits (bounded) until `ListParticipants` through `addr` answers `want`.
fn wait_listed(addr: SocketAddr, room: &str, want: &[&str], what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ids = listed(addr, room);
        if ids == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: listed {ids:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) for a `RoomUpdate` telling `client` the room has `participants` people
/// connected, `publishers` of whom may publish.
fn wait_counted(client: &mut SignalClient, participants: u32, publishers: u32, what: &str) {
    let mut last = None;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let counts = client.wait_for(what, |m| match m {
            lk::signal_response::Message::RoomUpdate(u) => u
                .room
                .as_ref()
                .map(|r| (r.num_participants, r.num_publishers)),
            _ => None,
        });
        if counts == (participants, publishers) {
            return;
        }
        last = Some(counts);
    }
    panic!("{what}: the room's snapshot said {last:?}");
}

/// Waits for the `Leave` the server sends `client`; its reason.
fn leave_reason(client: &mut SignalClient, what: &str) -> i32 {
    client.wait_for(what, |m| match m {
        lk::signal_response::Message::Leave(l) => Some(l.reason),
        _ => None,
    })
}

#[test]
fn a_room_over_two_nodes_is_one_room_to_the_room_service_and_the_api() {
    let redis = RedisServer::start();
    let hooks = HookReceiver::start(0);
    let config = support::api::config(
        &scratch_dir("roomwide"),
        KEYS.0,
        KEYS.1,
        &format!(
            "presence_ttl = 2\nnode_capacity = 4\n[webhook]\napi_key = \"{}\"\nurls = [\"{}\"]",
            KEYS.0,
            hooks.url()
        ),
    );
    let nodes = [
        start_node(&config, &redis.url, &[]),
        start_node(&config, &redis.url, &[]),
    ];
    let api = nodes[0].stoa.addr;
    wait_nodes(api, KEYS, "two node records", |n| n.len() == 2);
    let room = create_room(
        api,
        &user("hana"),
        json!({"title": "One room", "kind": "stage"}),
    );
    let (origin, _) = grant(api, &room, "hana");
    let origin_api = nodes.iter().find(|n| n.url == origin).unwrap().stoa.addr;
    let edge = nodes
        .iter()
        .find(|n| n.url != origin)
        .expect("two nodes")
        .url
        .clone();
    let edge_api = nodes.iter().find(|n| n.url == edge).unwrap().stoa.addr;

    // The origin: the host speaking, a WebRTC listener and two signaling-only listeners.
    let mut clients = Clients::new(KEYS);
    clients.join(api, &room, "hana", Role::Speaker);
    clients.join(api, &room, "lee", Role::Listener);
    let mut at_origin = Vec::new();
    for who in ["ola", "uma"] {
        let (url, token) = grant(api, &room, who);
        assert_eq!(url, origin, "{who} joins the origin while it has room");
        at_origin.push(SignalClient::join(origin_api, &token).0);
    }
    clients.wait_heard(&["lee"], 50, WAIT, "the listener on the origin");

    // The origin full, four listeners go to the edge: one hearing over WebRTC, three
    // signaling-only.
    wait_nodes(api, KEYS, "the origin full", |n| {
        by_url(n, &origin)["participants"].as_u64() >= Some(4)
    });
    let mut on_edge = std::collections::HashMap::new();
    for who in ["kim", "pat", "ray"] {
        let (url, token) = grant(api, &room, who);
        assert_eq!(url, edge, "{who} spills over to the edge");
        on_edge.insert(who, SignalClient::join(edge_api, &token).0);
    }
    clients.join(edge_api, &room, "mo", Role::Listener);
    clients.wait_heard(&["mo"], 50, WAIT, "the listener on the edge");

    // Webhooks from both nodes: the room started once (the edge's media room, opened by its
    // relay link, is the origin's to report), each connected person joined once (mo on the
    // edge), the relay never.
    let events = |kind: &str| -> Vec<Value> {
        hooks
            .requests()
            .iter()
            .filter_map(|(_, body)| serde_json::from_str::<Value>(body).ok())
            .filter(|e| e["event"] == kind && e["room"]["name"] == room.as_str())
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    while !events("participant_joined")
        .iter()
        .any(|e| e["participant"]["identity"] == "mo")
    {
        assert!(Instant::now() < deadline, "mo's participant_joined");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(events("room_started").len(), 1, "{:?}", hooks.requests());
    let mut joined: Vec<String> = events("participant_joined")
        .iter()
        .map(|e| e["participant"]["identity"].as_str().unwrap().to_owned())
        .collect();
    joined.sort();
    assert_eq!(joined, ["hana", "lee", "mo"], "each once, the relay never");

    // Listed through either node: everyone once, the relay never (its `node:` identity).
    let everyone = ["hana", "kim", "lee", "mo", "ola", "pat", "ray", "uma"];
    wait_listed(origin_api, &room, &everyone, "the origin's listing");
    wait_listed(edge_api, &room, &everyone, "the edge's listing");
    // Rooms are listed through any node, each once with everyone counted: this one, and
    // another whose media room lives on one node only.
    let other = create_room(
        api,
        &user("zed"),
        json!({"title": "Elsewhere", "kind": "stage"}),
    );
    grant(api, &other, "zed");
    for addr in [origin_api, edge_api] {
        let rooms = twirp_ok(addr, "ListRooms", &room, json!({ "names": [room] }));
        assert_eq!(rooms["rooms"][0]["numParticipants"], 8, "{rooms}");
        assert_eq!(rooms["rooms"].as_array().unwrap().len(), 1, "{rooms}");
        let all = twirp_ok(addr, "ListRooms", &room, json!({}));
        let mut names: Vec<&str> = all["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        let mut want = vec![room.as_str(), other.as_str()];
        want.sort_unstable();
        assert_eq!(names, want, "{all}");
    }
    // Clients see the same room-wide snapshot on either node, by the control plane's one
    // rule of presence (a person counts once connected, as `/api` counts the present): hana
    // and lee on the origin, mo on the edge, each once (the edge's mirror of hana not again,
    // the relay never; the signaling-only clients not, as they never connect), the host
    // publishing. (Each node alone would say 4 and 5.)
    let present = get_until(
        api,
        &format!("/api/rooms/{room}"),
        &user("hana"),
        "three present",
        |r| r["present"] == 3,
    );
    assert_eq!(present["present"], 3, "{present}");
    for (who, c) in at_origin.iter_mut().enumerate() {
        wait_counted(c, 3, 1, &format!("origin listener {who}'s room snapshot"));
    }
    for (who, c) in on_edge.iter_mut() {
        wait_counted(c, 3, 1, &format!("{who}'s room snapshot on the edge"));
    }
    // Someone on the other node is found; the host through the edge is the origin's record
    // of her, with her track.
    let kim = twirp_ok(
        origin_api,
        "GetParticipant",
        &room,
        json!({"room": room, "identity": "kim"}),
    );
    assert_eq!(kim["identity"], "kim");
    let hana = twirp_ok(
        edge_api,
        "GetParticipant",
        &room,
        json!({"room": room, "identity": "hana"}),
    );
    let track = hana["tracks"][0]["sid"]
        .as_str()
        .expect("her track")
        .to_owned();
    for c in on_edge.values_mut().chain(at_origin.iter_mut()) {
        c.ping();
    }

    // A change to an edge listener asked of the origin is made on the edge, and she sees it.
    let changed = twirp_ok(
        origin_api,
        "UpdateParticipant",
        &room,
        json!({"room": room, "identity": "kim", "attributes": {"seat": "b7"}}),
    );
    assert_eq!(changed["attributes"]["seat"], "b7", "{changed}");
    on_edge
        .get_mut("kim")
        .unwrap()
        .wait_participant("kim", "her new attribute", |p| {
            p.attributes.get("seat").map(String::as_str) == Some("b7")
        });

    // The host's mute asked of the edge is made on the origin; the edge's listener sees her
    // track muted through the relay.
    let muted = twirp_ok(
        edge_api,
        "MutePublishedTrack",
        &room,
        json!({"room": room, "identity": "hana", "trackSid": track, "muted": true}),
    );
    assert_eq!(muted["track"]["muted"], true, "{muted}");
    on_edge
        .get_mut("kim")
        .unwrap()
        .wait_participant("hana", "the host's track muted", |p| {
            p.tracks.iter().any(|t| t.sid == track && t.muted)
        });

    // Removed through the origin: the edge ends the session.
    twirp_ok(
        origin_api,
        "RemoveParticipant",
        &room,
        json!({"room": room, "identity": "ray"}),
    );
    let mut ray = on_edge.remove("ray").unwrap();
    assert_eq!(
        leave_reason(&mut ray, "ray removed"),
        lk::DisconnectReason::ParticipantRemoved as i32
    );

    // Allowed to publish through Twirp on the origin: the edge sends her to the origin.
    let (status, v) = twirp(
        origin_api,
        "UpdateParticipant",
        &room,
        json!({"room": room, "identity": "pat",
               "permission": {"canPublish": true, "canSubscribe": true}}),
    );
    assert_eq!(status, 200, "{v}");
    let mut pat = on_edge.remove("pat").unwrap();
    assert_eq!(
        leave_reason(&mut pat, "pat sent to the origin"),
        lk::DisconnectReason::Migration as i32
    );

    // Brought on stage through the product: kim raises her hand, the host approves on the
    // origin's API; the edge sends her to the origin, and her next token names it.
    ok(
        edge_api,
        "POST",
        &format!("/api/rooms/{room}/hand"),
        &user("kim"),
        None,
    );
    ok(
        origin_api,
        "POST",
        &format!("/api/rooms/{room}/members/kim/approve_hand"),
        &user("hana"),
        None,
    );
    let mut kim = on_edge.remove("kim").unwrap();
    assert_eq!(
        leave_reason(&mut kim, "kim sent to the origin"),
        lk::DisconnectReason::Migration as i32
    );
    let (url, token) = grant(edge_api, &room, "kim");
    assert_eq!(url, origin, "a speaker's token names the origin");
    let (mut kim_there, join) = SignalClient::join(origin_api, &token);
    let me = join.participant.as_ref().unwrap();
    assert!(
        me.permission.as_ref().unwrap().can_publish,
        "she may speak there"
    );
    // A speaker on the origin sees the room's people wherever they are: mo, a listener of
    // the edge, announced by it over the relay link, once.
    let seen: Vec<&str> = join
        .other_participants
        .iter()
        .map(|p| p.identity.as_str())
        .collect();
    assert_eq!(
        seen.iter().filter(|i| **i == "mo").count(),
        1,
        "the edge's listener seen on the origin: {seen:?}"
    );
    assert!(!seen.iter().any(|i| i.starts_with("node:")), "{seen:?}");

    // The host kicks the edge's WebRTC listener through the origin's API: the edge ends it,
    // and the origin's clients count him gone.
    at_origin[0].ping();
    clients.lost = 1;
    ok(
        origin_api,
        "POST",
        &format!("/api/rooms/{room}/members/mo/kick"),
        &user("hana"),
        None,
    );
    let deadline = Instant::now() + WAIT;
    while listed(origin_api, &room).contains(&"mo".to_owned()) {
        assert!(Instant::now() < deadline, "mo's session on the edge ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    get_until(
        api,
        &format!("/api/rooms/{room}"),
        &user("hana"),
        "the room's view without mo",
        |r| r["removed"].as_array().is_some_and(|a| a.len() == 1),
    );
    wait_counted(&mut at_origin[0], 2, 1, "the origin's snapshot without mo");
    kim_there.wait_participant("mo", "mo gone for the origin's speaker", |p| {
        p.state == lk::participant_info::State::Disconnected as i32
    });
    drop(clients);
}
