//! The tap a recording reads from ([`EngineCommand::SetTap`]): a copy of every packet of a
//! tapped track, nothing of the others, nothing while the server mutes it, and a bound on
//! what waits for a shell that does not drain. Simulated time and network, seeded, bounded.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::Sim;
use stoa_sfu::{EngineCommand, Publish, SfuError};

const SEC: Duration = Duration::from_secs(1);

/// Two publishers and one subscriber of both, connected.
fn room(seed: u64) -> (Sim, usize, usize) {
    let mut sim = Sim::new(seed);
    let alice = sim.join_publisher("alice", Publish::Allow).unwrap();
    let bob = sim.join_publisher("bob", Publish::Allow).unwrap();
    let sub = sim.join_subscriber("sub");
    sim.connect_all();
    let (a, b) = (sim.track_of(alice), sim.track_of(bob));
    sim.subscribe(sub, a);
    sim.subscribe(sub, b);
    sim.run_for(SEC / 2, |_| {});
    (sim, alice, bob)
}

fn index(opus: &[u8]) -> u32 {
    u32::from_be_bytes([opus[0], opus[1], opus[2], opus[3]])
}

#[test]
fn tapped_track_packets_arrive_untapped_do_not() {
    let (mut sim, alice, bob) = room(21);
    let (a, b) = (sim.track_of(alice), sim.track_of(bob));
    // Before the tap: nothing.
    sim.run_for(SEC / 2, |s| {
        s.send_audio(alice, 30);
        s.send_audio(bob, 30);
    });
    assert!(sim.tapped.is_empty());

    let now = sim.now;
    sim.sfu().handle_command(
        now,
        EngineCommand::SetTap {
            track: a,
            tapped: true,
        },
    );
    let first = sim.clients[alice].sent;
    sim.run_for(SEC, |s| {
        s.send_audio(alice, 30);
        s.send_audio(bob, 30);
    });
    let last = sim.clients[alice].sent;
    assert!(
        sim.tapped.iter().all(|t| t.track == a),
        "only alice's track"
    );
    let indexes: Vec<u32> = sim.tapped.iter().map(|t| index(t.packet.opus())).collect();
    // Every packet alice sent after the tap, in order, with the publisher's own SSRC and
    // timestamps (not a subscriber's rewritten ones).
    assert_eq!(indexes, (first..last).collect::<Vec<_>>());
    for t in &sim.tapped {
        assert_eq!(t.packet.opus()[4], alice as u8);
        let i = index(t.packet.opus());
        assert_eq!(t.packet.timestamp, i * 960, "publisher's timestamps");
    }
    assert_eq!(
        sim.tapped
            .iter()
            .map(|t| t.packet.ssrc)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1
    );
    // Forwarding is unaffected: the subscriber heard both publishers throughout.
    let heard = &sim.clients[2].heard;
    assert!(heard.iter().filter(|h| h.publisher == alice as u8).count() as u32 >= last - 5);
    assert!(heard.iter().any(|h| h.publisher == bob as u8));

    // Untapped: nothing more.
    let before = sim.tapped.len();
    sim.sfu().set_tap(a, false).unwrap();
    sim.run_for(SEC / 2, |s| s.send_audio(alice, 30));
    assert_eq!(sim.tapped.len(), before);
    assert!(sim.tapped.iter().all(|t| t.track != b));
    assert_eq!(sim.sfu().stats().rtp_tap_dropped, 0);
}

#[test]
fn a_server_muted_track_gives_nothing() {
    let (mut sim, alice, _) = room(22);
    let a = sim.track_of(alice);
    sim.sfu().set_tap(a, true).unwrap();
    sim.run_for(SEC / 2, |s| s.send_audio(alice, 30));
    let unmuted = sim.tapped.len();
    assert!(unmuted >= 20, "{unmuted}");
    sim.sfu().set_track_muted(a, true).unwrap();
    sim.run_for(SEC, |s| s.send_audio(alice, 30));
    // At most the packets in flight when the mute came.
    assert!(
        sim.tapped.len() <= unmuted + 2,
        "{} > {unmuted}",
        sim.tapped.len()
    );
    let muted = sim.tapped.len();
    sim.sfu().set_track_muted(a, false).unwrap();
    sim.run_for(SEC / 2, |s| s.send_audio(alice, 30));
    assert!(sim.tapped.len() >= muted + 20);
}

#[test]
fn an_unknown_track_is_refused() {
    let (mut sim, alice, _) = room(23);
    let mut gone = sim.track_of(alice);
    gone.peer = stoa_sfu::PeerId::new(stoa_sfu::ShardId(0), 999);
    assert!(matches!(
        sim.sfu().set_tap(gone, true),
        Err(SfuError::UnknownTrack(_))
    ));
}

#[test]
fn undrained_taps_are_bounded_and_counted() {
    let (mut sim, alice, _) = room(24);
    let a = sim.track_of(alice);
    sim.hold_taps = true;
    sim.sfu().set_tap(a, true).unwrap();
    // 4,096 packets wait at most: 90 s of 20 ms packets overflow it.
    sim.run_for(90 * SEC, |s| s.send_audio(alice, 30));
    let sent = u64::from(sim.clients[alice].sent);
    let mut waiting = 0u64;
    while sim.sfu().poll_tapped().is_some() {
        waiting += 1;
    }
    let dropped = sim.sfu().stats().rtp_tap_dropped;
    assert_eq!(waiting, 4_096);
    assert!(dropped > 0);
    // Every packet sent after the tap is either waiting or counted (within the few sent
    // before the tap and those still in flight).
    assert!(
        (sent - 5..=sent).contains(&(waiting + dropped)),
        "sent {sent}, waiting {waiting}, dropped {dropped}"
    );
}

/// A publisher sending RED (as browsers do): the tap hands over the packet as received, and
/// `opus()` is its primary block, the frame of that packet.
#[test]
fn red_packets_are_tapped_with_their_opus_frame() {
    let mut sim = Sim::new(25);
    sim.red = true;
    let alice = sim.join_publisher("alice", Publish::Allow).unwrap();
    let sub = sim.join_subscriber("sub");
    sim.connect_all();
    let a = sim.track_of(alice);
    sim.subscribe(sub, a);
    sim.run_for(SEC / 2, |_| {});
    sim.sfu().set_tap(a, true).unwrap();
    let first = sim.clients[alice].sent;
    sim.run_for(SEC, |s| s.send_audio(alice, 30));
    let last = sim.clients[alice].sent;
    assert!(
        sim.tapped.iter().all(|t| matches!(
            t.packet.encoding,
            stoa_sfu::proto::red::Encoding::Red { .. }
        )),
        "the publisher sent RED"
    );
    let indexes: Vec<u32> = sim.tapped.iter().map(|t| index(t.packet.opus())).collect();
    assert_eq!(indexes, (first..last).collect::<Vec<_>>());
    assert!(sim.tapped.iter().all(|t| t.packet.opus().len() == 60));
}
