//! Which engine shard each peer goes to, in the signaling core without sockets: a room's peers
//! stay together on one shard until the room outgrows `room_peers_per_shard`, rooms take
//! different shards, and a room spread over several shards still reaches every listener (the
//! engine relays between its shards). Deterministic: fixed seeds, simulated time, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::signal_request;
use stoa_sfu::{EngineCommand, PeerId, ShardId};
use stoa_signaling::proto::{Output, ROOM_PEERS_PER_SHARD, Server, ServerConfig};
use stoa_signaling::sim::Sim;

mod core_support;
use core_support::{claims, drain, join};

const SECOND: Duration = Duration::from_secs(1);

fn core(t0: Instant, shards: u16, per_shard: u32) -> Server {
    let config = ServerConfig {
        engine_shards: shards,
        room_peers_per_shard: per_shard,
        ..ServerConfig::default()
    };
    Server::new(config, t0, 1_700_000_000_000)
}

fn shards_of(peers: &[PeerId]) -> BTreeSet<u16> {
    peers.iter().map(|p| p.shard().0).collect()
}

#[test]
fn rooms_take_different_shards_and_spread_only_past_their_share() {
    let t0 = Instant::now();
    let mut s = core(t0, 3, 3);
    let a: Vec<PeerId> = (0..3)
        .map(|i| join(&mut s, t0, claims(&format!("a{i}"), "a", false)).1)
        .collect();
    assert_eq!(shards_of(&a), BTreeSet::from([0]), "room a together");
    let b: Vec<PeerId> = (0..2)
        .map(|i| join(&mut s, t0, claims(&format!("b{i}"), "b", false)).1)
        .collect();
    assert_eq!(shards_of(&b), BTreeSet::from([1]), "room b apart from a");
    // Room a is full on shard 0: its fourth peer goes to the least-loaded other shard.
    let (a3_session, a3) = join(&mut s, t0, claims("a3", "a", false));
    assert_eq!(a3.shard(), ShardId(2));
    // Room c: shard 2 holds one peer, shard 1 two, shard 0 three.
    let (_, c) = join(&mut s, t0, claims("c0", "c", false));
    assert_eq!(c.shard(), ShardId(2));
    drain(&mut s);

    // a3 leaves: the engine is told to close its peer, and its place is free again.
    s.handle_request(
        t0,
        a3_session,
        signal_request::Message::Leave(lk::LeaveRequest::default()),
    );
    let closed = drain(&mut s)
        .iter()
        .any(|o| matches!(o, Output::Engine(EngineCommand::ClosePeer { peer }) if *peer == a3));
    assert!(closed, "a3's peer closed");
    assert!(s.placed_peers().all(|(p, _)| p != a3));
    assert_eq!(s.shard_loads(), &[3, 2, 1], "a3's place is free again");
    // Room d: shard 2 is the lightest again (with a3 still counted, shards 1 and 2 would tie
    // and shard 1 would come first).
    let (_, d) = join(&mut s, t0, claims("d0", "d", false));
    assert_eq!(d.shard(), ShardId(2));
    // Room a is full on shard 0 again: its next peer takes the lightest other shard, 1.
    let (_, a4) = join(&mut s, t0, claims("a4", "a", false));
    assert_eq!(a4.shard(), ShardId(1));
    let rooms: Vec<(PeerId, String)> = s.placed_peers().map(|(p, r)| (p, r.to_owned())).collect();
    assert_eq!(rooms.len(), 3 + 2 + 1 + 1 + 1);
    assert!(rooms.iter().any(|(p, r)| *p == a4 && r == "a"));
}

#[test]
fn the_default_keeps_a_room_on_one_shard() {
    let t0 = Instant::now();
    let mut s = core(t0, 2, ROOM_PEERS_PER_SHARD);
    let peers: Vec<PeerId> = (0..50)
        .map(|i| join(&mut s, t0, claims(&format!("l{i}"), "big", false)).1)
        .collect();
    assert_eq!(shards_of(&peers).len(), 1);
    let other = join(&mut s, t0, claims("x", "quiet", false)).1;
    assert!(!shards_of(&peers).contains(&other.shard().0));
}

/// A speaker and `listeners` listeners in `room`, connected, the speaker publishing.
fn stage(sim: &mut Sim, room: &str, listeners: usize) -> (usize, Vec<usize>) {
    sim.stage(
        room,
        &format!("{room}-speaker"),
        &format!("{room}-l"),
        listeners,
    )
    .unwrap()
}

/// The shards of the peers of `clients`.
fn client_shards(sim: &Sim, clients: &[usize]) -> BTreeSet<u16> {
    clients
        .iter()
        .flat_map(|&c| {
            let session = sim.clients[c].session.unwrap();
            let (p, s) = sim.server.session_peers(session).unwrap();
            [p, s].into_iter().flatten()
        })
        .map(|p| p.shard().0)
        .collect()
}

#[test]
fn two_rooms_on_two_shards_each_hear_their_speaker() {
    let mut sim = Sim::new(Instant::now(), 3, 2, ServerConfig::default());
    let (sa, la) = stage(&mut sim, "a", 3);
    let (sb, lb) = stage(&mut sim, "b", 3);
    let a: Vec<usize> = la.iter().copied().chain([sa]).collect();
    let b: Vec<usize> = lb.iter().copied().chain([sb]).collect();
    let (shards_a, shards_b) = (client_shards(&sim, &a), client_shards(&sim, &b));
    assert_eq!(shards_a.len(), 1, "{shards_a:?}");
    assert_eq!(shards_b.len(), 1, "{shards_b:?}");
    assert_ne!(shards_a, shards_b, "rooms on different shards");
    sim.speak(sa, 30);
    sim.speak(sb, 30);
    sim.run_for(SECOND);
    for &l in la.iter().chain(&lb) {
        let heard = sim.clients[l].heard.len();
        assert!(heard >= 25, "listener {l} heard {heard} of 30");
        assert!(
            heard <= 30,
            "listener {l} heard {heard}: the other room's speaker too?"
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn a_room_spread_over_shards_reaches_every_listener() {
    let config = ServerConfig {
        room_peers_per_shard: 2,
        ..ServerConfig::default()
    };
    let mut sim = Sim::new(Instant::now(), 5, 2, config);
    let (speaker, listeners) = stage(&mut sim, "r", 5);
    assert_eq!(client_shards(&sim, &listeners).len(), 2, "the room spread");
    sim.speak(speaker, 30);
    sim.run_for(SECOND);
    for &l in &listeners {
        let heard = sim.clients[l].heard.len();
        assert!(heard >= 25, "listener {l} heard {heard} of 30");
    }
    // A data message reaches the listeners on both shards.
    assert!(sim.send_data(speaker, b"hello"));
    sim.run_for(SECOND);
    for &l in &listeners {
        assert!(
            sim.clients[l]
                .data
                .iter()
                .any(|d| d.windows(5).any(|w| w == b"hello")),
            "listener {l} got the data message"
        );
    }
    sim.check_invariants().unwrap();
}
