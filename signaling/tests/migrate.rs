//! An operator's drain moving a node's participants elsewhere, a batch at a time
//! (`AdminOp::Migrate`): the core alone on a virtual clock with real engine shards and str0m
//! clients (`stoa_signaling::sim`). Seeded, bounded, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use stoa_signaling::proto::{AdminOp, AdminReply, ServerConfig};
use stoa_signaling::sim::Sim;

const SECOND: Duration = Duration::from_secs(1);

fn migrate(sim: &mut Sim, room: &str, limit: usize) -> usize {
    match sim.admin(AdminOp::Migrate {
        room: room.to_owned(),
        limit,
    }) {
        Ok(AdminReply::Count(n)) => n,
        other => panic!("{other:?}"),
    }
}

#[test]
fn migrate_moves_publishers_first_in_bounded_batches_with_a_migration_leave() {
    let mut sim = Sim::new(Instant::now(), 7, 2, ServerConfig::default());
    let speaker = sim.join("r", "speaker", true);
    let listeners: Vec<usize> = (0..3)
        .map(|i| sim.join("r", &format!("l{i}"), false))
        .collect();
    let other = sim.join("q", "elsewhere", false);
    let ok = sim.run_until(10 * SECOND, |s| {
        s.clients.iter().all(|c| c.subscriber.connected)
    });
    assert!(ok, "subscriber connections did not come up");
    sim.publish(speaker);
    let ok = sim.run_until(10 * SECOND, |s| s.clients[speaker].publisher.connected);
    assert!(ok, "publisher did not connect");

    // A batch of two: the speaker first, then one listener.
    assert_eq!(migrate(&mut sim, "r", 2), 2);
    sim.settle();
    let leave = sim.clients[speaker].leave().expect("the speaker is told");
    assert_eq!(leave.reason, lk::DisconnectReason::Migration as i32);
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    assert!(!leave.can_reconnect, "not back to this node");
    assert!(!sim.clients[speaker].is_open());
    let told: Vec<usize> = listeners
        .iter()
        .copied()
        .filter(|&l| sim.clients[l].leave().is_some())
        .collect();
    assert_eq!(told.len(), 1, "one listener in the first batch");
    let left: Vec<usize> = listeners
        .iter()
        .copied()
        .filter(|l| !told.contains(l))
        .collect();
    for &l in &left {
        assert!(sim.clients[l].is_open(), "the rest stay for the next batch");
    }
    assert_eq!(sim.participants("r").len(), 2);

    // The next batch takes the rest, then there is nobody left to move.
    assert_eq!(migrate(&mut sim, "r", 10), 2);
    sim.settle();
    for &l in &left {
        let leave = sim.clients[l].leave().expect("told");
        assert_eq!(leave.reason, lk::DisconnectReason::Migration as i32);
        assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    }
    assert_eq!(migrate(&mut sim, "r", 10), 0);
    assert_eq!(migrate(&mut sim, "no-such-room", 10), 0);
    assert_eq!(migrate(&mut sim, "q", 0), 0, "a zero budget moves nobody");
    // Other rooms are untouched.
    assert!(sim.clients[other].is_open());
    assert!(sim.clients[other].leave().is_none());
    assert_eq!(sim.participants("q").len(), 1);
    if let Err(e) = sim.check_invariants() {
        panic!("{e}");
    }
}
