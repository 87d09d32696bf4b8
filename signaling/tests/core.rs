//! The signaling core without sockets: `proto::Server` driving real engine shards and str0m
//! clients in memory on a virtual clock (`stoa_signaling::sim`). Seeded, bounded, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, deprecated)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use stoa_signaling::proto::{AdminOp, AdminReply, ParticipantUpdate, ServerConfig};
use stoa_signaling::room::RoomLimits;
use stoa_signaling::sim::Sim;

const SECOND: Duration = Duration::from_secs(1);

fn world(seed: u64) -> Sim {
    Sim::new(Instant::now(), seed, 2, ServerConfig::default())
}

/// Runs until every open client's subscriber connection is up.
fn connect_all(sim: &mut Sim) {
    let ok = sim.run_until(10 * SECOND, |s| {
        s.clients
            .iter()
            .filter(|c| c.is_open())
            .all(|c| c.subscriber.connected)
    });
    assert!(ok, "subscriber connections did not come up");
}

fn track_sid(sim: &Sim, c: usize) -> String {
    sim.clients[c]
        .find(|m| match m {
            signal_response::Message::TrackPublished(t) => t.track.as_ref().map(|t| t.sid.clone()),
            _ => None,
        })
        .expect("no TrackPublished")
}

/// A speaker who publishes, with `n` listeners; everyone connected and subscribed.
fn stage(sim: &mut Sim, listeners: usize) -> (usize, Vec<usize>) {
    let speaker = sim.join("r", "speaker", true);
    let ls: Vec<usize> = (0..listeners)
        .map(|i| sim.join("r", &format!("l{i}"), false))
        .collect();
    connect_all(sim);
    sim.publish(speaker);
    let ok = sim.run_until(10 * SECOND, |s| s.clients[speaker].publisher.connected);
    assert!(ok, "publisher did not connect");
    (speaker, ls)
}

#[test]
fn join_publish_subscribe_and_hear() {
    let mut sim = world(1);
    let (speaker, listeners) = stage(&mut sim, 3);
    // The join response came first, then the subscriber offer with the data channels.
    let first = &sim.clients[listeners[0]].log[0];
    assert!(
        matches!(first, signal_response::Message::Join(_)),
        "{first:?}"
    );
    let tsid = track_sid(&sim, speaker);
    assert!(tsid.starts_with("TR_"), "{tsid}");
    sim.speak(speaker, 50);
    sim.run_for(SECOND);
    for &l in &listeners {
        let heard = sim.clients[l].heard.len();
        assert!(heard >= 45, "listener {l} heard {heard} of 50");
        // The track was announced before its offer.
        let info = sim.clients[l].seen("speaker").expect("speaker announced");
        assert_eq!(info.tracks.len(), 1);
        assert_eq!(info.tracks[0].sid, tsid);
    }
    // Listeners do not see each other; the speaker sees everyone.
    assert!(sim.clients[listeners[0]].seen("l1").is_none());
    assert!(sim.clients[speaker].seen("l1").is_some());
    // Every subscriber connection counted one join latency.
    assert_eq!(sim.seen.join_latencies.len(), 4);
    let events: Vec<&str> = sim.seen.events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(events.contains(&"room_started"), "{events:?}");
    assert!(events.contains(&"participant_joined"), "{events:?}");
    assert!(events.contains(&"track_published"), "{events:?}");
}
