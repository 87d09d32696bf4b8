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

/// Two engine shards, every room spread over both (a room's peers alternate between them, as a
/// large room's do), so that what these tests prove holds across shards too.
fn world(seed: u64) -> Sim {
    let config = ServerConfig {
        room_peers_per_shard: 1,
        ..ServerConfig::default()
    };
    Sim::new(Instant::now(), seed, 2, config)
}

/// Runs until every open client's subscriber connection is up.
fn connect_all(sim: &mut Sim) {
    assert!(
        sim.connect_all(10 * SECOND),
        "subscriber connections did not come up"
    );
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
    sim.stage("r", "speaker", "l", listeners).unwrap()
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

fn updates_of<'a>(
    log: &'a [signal_response::Message],
    identity: &'a str,
) -> impl Iterator<Item = &'a lk::ParticipantInfo> + 'a {
    log.iter()
        .filter_map(|m| match m {
            signal_response::Message::Update(u) => Some(u.participants.iter()),
            _ => None,
        })
        .flatten()
        .filter(move |p| p.identity == identity)
}

#[test]
fn mute_by_client_and_by_server_stops_forwarding() {
    let mut sim = world(2);
    let (speaker, listeners) = stage(&mut sim, 2);
    let tsid = track_sid(&sim, speaker);
    sim.speak(speaker, 20);
    sim.run_for(SECOND);
    let before = sim.clients[listeners[0]].heard.len();
    assert!(before >= 15, "heard {before}");

    // The client mutes: everyone sees it; the engine forwards nothing meanwhile.
    sim.request(
        speaker,
        signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: tsid.clone(),
            muted: true,
        }),
    );
    sim.run_for(SECOND);
    let seen = sim.clients[listeners[1]].seen("speaker").unwrap();
    assert!(seen.tracks[0].muted, "listeners see the mute");
    let muted_at = sim.clients[listeners[0]].heard.len();
    sim.speak(speaker, 20);
    sim.run_for(SECOND);
    assert_eq!(
        sim.clients[listeners[0]].heard.len(),
        muted_at,
        "nothing forwarded while muted"
    );

    // Unmuted by the client, then muted by the server: the publisher is told.
    sim.request(
        speaker,
        signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: tsid.clone(),
            muted: false,
        }),
    );
    sim.speak(speaker, 20);
    sim.run_for(SECOND);
    assert!(sim.clients[listeners[0]].heard.len() >= muted_at + 15);
    let reply = sim.admin(AdminOp::MuteTrack {
        room: "r".into(),
        identity: "speaker".into(),
        track_sid: tsid.clone(),
        muted: true,
    });
    assert!(matches!(reply, Ok(AdminReply::Track(t)) if t.muted));
    let told = sim.clients[speaker].find(|m| match m {
        signal_response::Message::Mute(m) => Some((m.sid.clone(), m.muted)),
        _ => None,
    });
    assert_eq!(told, Some((tsid.clone(), true)));
    let at = sim.clients[listeners[0]].heard.len();
    sim.speak(speaker, 20);
    sim.run_for(SECOND);
    assert_eq!(
        sim.clients[listeners[0]].heard.len(),
        at,
        "server mute holds"
    );
    // Every change, by client or server, is told to the in-process observer (the control
    // plane's view follows it); a mute that changes nothing is not.
    let mutes: Vec<&str> = sim
        .seen
        .events
        .iter()
        .filter(|(e, who)| e.starts_with("track_") && e.contains("mute") && who == "speaker")
        .map(|(e, _)| e.as_str())
        .collect();
    assert_eq!(mutes, ["track_muted", "track_unmuted", "track_muted"]);
    sim.admin(AdminOp::MuteTrack {
        room: "r".into(),
        identity: "speaker".into(),
        track_sid: tsid.clone(),
        muted: true,
    })
    .unwrap();
    let again = sim
        .seen
        .events
        .iter()
        .filter(|(e, _)| e == "track_muted")
        .count();
    assert_eq!(again, 2, "an unchanged mute is not reported");
    // An unknown track is an error, not a panic.
    let reply = sim.admin(AdminOp::MuteTrack {
        room: "r".into(),
        identity: "speaker".into(),
        track_sid: "TR_nope".into(),
        muted: true,
    });
    assert!(reply.is_err());
}

#[test]
fn permission_changes_publish_and_unpublish_at_once() {
    let mut sim = world(3);
    let (_speaker, listeners) = stage(&mut sim, 2);
    let l = listeners[0];
    // A listener may not publish, whatever its client does.
    sim.publish(l);
    sim.run_for(SECOND);
    let errors = sim.clients[l].errors();
    assert!(
        errors
            .iter()
            .any(|e| e.reason == lk::request_response::Reason::NotAllowed as i32),
        "{errors:?}"
    );
    assert!(
        sim.participants("r")
            .iter()
            .all(|p| p.identity != "l0" || p.tracks.is_empty())
    );

    // Promoted: it publishes without reconnecting, and the other listener hears it.
    let update = ParticipantUpdate {
        permission: Some(lk::ParticipantPermission {
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let reply = sim.admin(AdminOp::UpdateParticipant {
        room: "r".into(),
        identity: "l0".into(),
        update: Box::new(update),
    });
    assert!(
        matches!(reply, Ok(AdminReply::Participant(p)) if p.permission.as_ref().unwrap().can_publish)
    );
    sim.run_for(SECOND);
    // The other listener now sees l0 (a speaker is visible to all).
    assert!(sim.clients[listeners[1]].seen("l0").is_some());
    sim.publish(l);
    let ok = sim.run_until(10 * SECOND, |s| s.clients[l].publisher.connected);
    assert!(ok, "promoted listener's publisher connects");
    sim.speak(l, 30);
    sim.run_for(SECOND);
    let from_l0 = sim.clients[listeners[1]]
        .heard
        .iter()
        .filter(|h| h.1 == l as u8)
        .count();
    assert!(from_l0 >= 20, "heard {from_l0} packets of the new speaker");
    let tracks = |sim: &mut Sim| {
        sim.participants("r")
            .into_iter()
            .find(|p| p.identity == "l0")
            .map_or(0, |p| p.tracks.len())
    };
    assert_eq!(tracks(&mut sim), 1);

    // Demoted: the track is unpublished at once and the client told.
    let update = ParticipantUpdate {
        permission: Some(lk::ParticipantPermission {
            can_subscribe: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    sim.admin(AdminOp::UpdateParticipant {
        room: "r".into(),
        identity: "l0".into(),
        update: Box::new(update),
    })
    .unwrap();
    sim.run_for(SECOND);
    assert_eq!(tracks(&mut sim), 0);
    let unpublished = sim.clients[l].find(|m| match m {
        signal_response::Message::TrackUnpublished(t) => Some(t.track_sid.clone()),
        _ => None,
    });
    assert!(unpublished.is_some(), "the demoted client is told");
    let at = sim.clients[listeners[1]].heard.len();
    sim.speak(l, 20);
    sim.run_for(SECOND);
    assert_eq!(
        sim.clients[listeners[1]].heard.len(),
        at,
        "a demoted speaker is not forwarded"
    );
}

/// Announced tracks whose media never comes are bounded: past the limit, AddTrack is refused
/// with `LIMIT_EXCEEDED`, and the speaker still publishes once her media arrives.
#[test]
fn announced_tracks_without_media_are_bounded() {
    let mut sim = world(4);
    let (speaker, _) = stage(&mut sim, 1);
    for i in 0..12 {
        let req = lk::AddTrackRequest {
            cid: format!("ghost-{i}"),
            name: "ghost".into(),
            r#type: lk::TrackType::Audio as i32,
            source: lk::TrackSource::Microphone as i32,
            ..Default::default()
        };
        sim.request(speaker, signal_request::Message::AddTrack(req));
    }
    sim.run_for(SECOND);
    let refused = sim.clients[speaker]
        .errors()
        .iter()
        .filter(|e| e.reason == lk::request_response::Reason::LimitExceeded as i32)
        .count();
    // The speaker's own microphone is published already; 8 ghosts wait, 4 are refused.
    assert_eq!(refused, 4, "{:?}", sim.clients[speaker].errors());
    let published = sim.clients[speaker]
        .find(|m| match m {
            signal_response::Message::TrackPublished(t) if t.cid.starts_with("ghost-") => Some(()),
            _ => None,
        })
        .is_some();
    assert!(published, "the first ghosts were answered");
}

#[test]
fn a_duplicate_identity_replaces_the_first_session() {
    let mut sim = world(4);
    let first = sim.join("r", "ann", false);
    let watcher = sim.join("r", "host", true);
    connect_all(&mut sim);
    let second = sim.join("r", "ann", false);
    connect_all(&mut sim);
    // Participant updates go out batched, once per tick.
    sim.run_for(SECOND);
    let leave = sim.clients[first]
        .leave()
        .expect("the first session is told");
    assert_eq!(leave.reason, lk::DisconnectReason::DuplicateIdentity as i32);
    assert!(sim.clients[first].closed.is_some());
    assert!(sim.clients[second].is_open());
    let ps = sim.participants("r");
    assert_eq!(ps.iter().filter(|p| p.identity == "ann").count(), 1);
    assert_eq!(ps.len(), 2);
    // The host saw the old one leave and the new one arrive.
    let states: Vec<i32> = updates_of(&sim.clients[watcher].log, "ann")
        .map(|p| p.state)
        .collect();
    assert!(states.contains(&(State::Disconnected as i32)), "{states:?}");
    assert_eq!(states.last(), Some(&(State::Active as i32)), "{states:?}");
}

#[test]
fn a_session_that_stops_pinging_is_held_then_expires_and_can_rejoin() {
    let mut sim = world(5);
    let a = sim.join("r", "ann", false);
    let b = sim.join("r", "bob", true);
    connect_all(&mut sim);
    sim.clients[a].pinging = false;
    // Past the ping timeout (15 s): the connection is closed without a leave, and the
    // participant held for a resume (see tests/resume.rs).
    sim.run_for(17 * SECOND);
    assert!(sim.clients[a].closed.is_some());
    assert!(
        sim.clients[a].leave().is_none(),
        "nothing to tell: the connection is dead"
    );
    assert!(sim.participants("r").iter().any(|p| p.identity == "ann"));
    assert!(sim.clients[b].is_open(), "a pinging client stays");
    // Not resumed within the departure timeout (20 s): gone, and bob sees it leave.
    sim.run_for(21 * SECOND);
    assert!(!sim.participants("r").iter().any(|p| p.identity == "ann"));
    let states: Vec<i32> = updates_of(&sim.clients[b].log, "ann")
        .map(|p| p.state)
        .collect();
    assert_eq!(
        states.last(),
        Some(&(State::Disconnected as i32)),
        "{states:?}"
    );
    // Rejoins in full, with a new participant sid.
    let again = sim.join("r", "ann", false);
    connect_all(&mut sim);
    let ps = sim.participants("r");
    assert_eq!(ps.iter().filter(|p| p.identity == "ann").count(), 1);
    let old_sid = match &sim.clients[a].log[0] {
        signal_response::Message::Join(j) => j.participant.as_ref().unwrap().sid.clone(),
        m => panic!("{m:?}"),
    };
    let new_sid = match &sim.clients[again].log[0] {
        signal_response::Message::Join(j) => j.participant.as_ref().unwrap().sid.clone(),
        m => panic!("{m:?}"),
    };
    assert_ne!(old_sid, new_sid);
}

#[test]
fn leaving_is_announced_and_empty_rooms_close_after_their_timeouts() {
    let mut sim = world(6);
    let host = sim.join("r", "host", true);
    let guest = sim.join("r", "guest", true);
    let lost = sim.join("r", "lost", true);
    connect_all(&mut sim);
    sim.request(
        guest,
        signal_request::Message::Leave(lk::LeaveRequest::default()),
    );
    sim.run_for(SECOND);
    assert!(sim.clients[guest].closed.is_some());
    let last = updates_of(&sim.clients[host].log, "guest")
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last.state, State::Disconnected as i32);
    assert!(
        sim.seen
            .events
            .contains(&("participant_left".into(), "guest".into()))
    );
    // Leaving on purpose and losing the connection are told apart (the control plane frees a
    // seat at once for the first, after its grace for the second).
    assert_eq!(
        last.disconnect_reason,
        lk::DisconnectReason::ClientInitiated as i32
    );
    sim.disconnect(lost);
    sim.run_for(SECOND);
    // A lost connection is first held for a resume (the departure timeout, 20 s): nobody is
    // told; then the others see it go.
    assert!(
        updates_of(&sim.clients[host].log, "lost")
            .last()
            .is_some_and(|u| u.state != State::Disconnected as i32)
    );
    sim.run_for(20 * SECOND);
    let last = updates_of(&sim.clients[host].log, "lost")
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last.state, State::Disconnected as i32);
    assert_eq!(
        last.disconnect_reason,
        lk::DisconnectReason::SignalClose as i32
    );

    // The last one leaves: the room stays for its departure timeout (20 s), then closes.
    sim.request(
        host,
        signal_request::Message::Leave(lk::LeaveRequest::default()),
    );
    sim.run_for(10 * SECOND);
    assert_eq!(
        sim.server.rooms().count(),
        1,
        "kept during the departure timeout"
    );
    sim.run_for(15 * SECOND);
    assert_eq!(sim.server.rooms().count(), 0, "closed after it");
    assert!(sim.seen.events.iter().any(|(e, _)| e == "room_finished"));

    // A room created ahead of time and never joined closes after its empty timeout.
    let limits = RoomLimits {
        empty_timeout: 30,
        ..RoomLimits::default()
    };
    sim.admin(AdminOp::CreateRoom {
        name: "later".into(),
        limits,
        metadata: String::new(),
    })
    .unwrap();
    sim.run_for(20 * SECOND);
    assert_eq!(sim.server.rooms().count(), 1);
    sim.run_for(15 * SECOND);
    assert_eq!(sim.server.rooms().count(), 0);
}

#[test]
fn max_participants_is_enforced() {
    let mut sim = world(7);
    let limits = RoomLimits {
        max_participants: 2,
        ..RoomLimits::default()
    };
    sim.admin(AdminOp::CreateRoom {
        name: "small".into(),
        limits,
        metadata: String::new(),
    })
    .unwrap();
    sim.join("small", "a", false);
    sim.join("small", "b", false);
    let refused = sim.join_with("c", Sim::grants("small", false)).unwrap_err();
    assert_eq!(refused.status, 403);
    assert!(sim.server.admit("small", "c").is_err());
    // The same identity may come back (it replaces itself), and other rooms are unaffected.
    assert!(sim.server.admit("small", "a").is_ok());
    sim.join("other", "c", false);
    connect_all(&mut sim);
    assert_eq!(sim.participants("small").len(), 2);
}

/// Runs until client `c`'s publisher has its reliable data channel open.
fn reliable_open(sim: &mut Sim, c: usize) {
    let ok = sim.run_until(5 * SECOND, |s| {
        s.clients[c].publisher.channels.contains_key("_reliable")
    });
    assert!(ok, "publisher data channel open");
}

#[test]
fn data_reaches_the_room_as_one_engine_command() {
    let mut sim = world(8);
    let (speaker, listeners) = stage(&mut sim, 6);
    reliable_open(&mut sim, speaker);
    let before = sim.seen.send_data_commands;
    assert!(sim.send_data(speaker, b"clap"));
    sim.run_for(SECOND);
    assert_eq!(
        sim.seen.send_data_commands - before,
        1,
        "one command for the whole room"
    );
    for &l in &listeners {
        let got = sim.clients[l].data.last().expect("data received");
        let packet = <lk::DataPacket as prost::Message>::decode(&got[..]).unwrap();
        // Stamped with the sender's identity by the server.
        assert_eq!(packet.participant_identity, "speaker");
        match packet.value {
            Some(lk::data_packet::Value::User(u)) => assert_eq!(u.payload, b"clap"),
            v => panic!("{v:?}"),
        }
    }
    assert!(
        sim.clients[speaker].data.is_empty(),
        "not echoed to the sender"
    );
    // A server message to one identity reaches only it.
    sim.admin(AdminOp::SendData {
        room: "r".into(),
        data: Box::new(stoa_signaling::proto::SendData {
            payload: b"hi".to_vec(),
            reliable: true,
            destination_identities: vec!["l3".into()],
            ..Default::default()
        }),
    })
    .unwrap();
    sim.run_for(SECOND);
    assert_eq!(sim.clients[listeners[3]].data.len(), 2);
    assert_eq!(sim.clients[listeners[2]].data.len(), 1);
}

#[test]
fn a_message_to_the_room_sent_in_slices_reaches_everyone_in_order() {
    // Two targets per slice: each shard's part of a message to the room takes several inputs.
    let start = Instant::now();
    let config = ServerConfig {
        room_peers_per_shard: 1,
        ..ServerConfig::default()
    };
    let mut sim = Sim::with_engine(start, 9, 2, config, |c| c.data_slice = 2);
    let (speaker, listeners) = stage(&mut sim, 7);
    reliable_open(&mut sim, speaker);
    // Two messages back to back: the second queues behind the first in each shard.
    assert!(sim.send_data(speaker, b"one"));
    assert!(sim.send_data(speaker, b"two"));
    sim.run_for(SECOND);
    for &l in &listeners {
        let payloads: Vec<Vec<u8>> = sim.clients[l]
            .data
            .iter()
            .map(
                |d| match <lk::DataPacket as prost::Message>::decode(&d[..]).map(|p| p.value) {
                    Ok(Some(lk::data_packet::Value::User(u))) => u.payload,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(
            payloads,
            vec![b"one".to_vec(), b"two".to_vec()],
            "client {l}"
        );
    }
    assert!(
        sim.shards.iter().all(|s| s.data_pending() == 0),
        "nothing left waiting"
    );
}

#[test]
fn an_undeliverable_engine_command_sends_the_client_to_rejoin() {
    let mut sim = world(9);
    let a = sim.join("r", "ann", false);
    let b = sim.join("r", "bob", false);
    connect_all(&mut sim);
    let session = sim.clients[a].session.unwrap();
    let (_, sub) = sim.server.session_peers(session).unwrap();
    let now = sim.now;
    sim.server.handle_undelivered(now, &[sub.unwrap()]);
    sim.settle();
    let leave = sim.clients[a].leave().expect("told");
    assert_eq!(leave.action, lk::leave_request::Action::Reconnect as i32);
    assert_eq!(leave.reason, lk::DisconnectReason::JoinFailure as i32);
    assert!(sim.clients[b].is_open());
    assert_eq!(sim.server.stats().engine_undelivered, 1);
}

#[test]
fn the_core_is_reproducible_from_its_seed() {
    let sids = |seed| {
        let mut sim = world(seed);
        sim.join("r", "a", true);
        sim.join("r", "b", false);
        connect_all(&mut sim);
        let ps = sim.participants("r");
        let mut sids: Vec<String> = ps.into_iter().map(|p| p.sid).collect();
        sids.sort();
        sids
    };
    assert_eq!(sids(11), sids(11));
    assert_ne!(sids(11), sids(12));
}

/// Random action sequences from several clients in two rooms (what the `signaling_core` fuzz
/// target explores further), with the invariants checked after every action.
#[test]
fn random_sequences_keep_the_invariants() {
    for seed in 0..6u64 {
        let mut sim = world(100 + seed);
        // xorshift: reproducible, no dependency.
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state & 0xff) as u8
        };
        for step in 0..60 {
            let (op, x, y) = (next(), next(), next());
            sim.act(op, x, y);
            if let Err(e) = sim.check_invariants() {
                panic!("seed {seed}, step {step} ({op}, {x}, {y}): {e}");
            }
        }
    }
}

/// The active_recording flag each client last received (JoinResponse, then RoomUpdates).
fn sees_recording(sim: &Sim, c: usize) -> Option<bool> {
    sim.clients[c]
        .log
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::Join(j) => j.room.as_ref().map(|r| r.active_recording),
            signal_response::Message::RoomUpdate(u) => u.room.as_ref().map(|r| r.active_recording),
            _ => None,
        })
        .next_back()
}

/// Recording a room taps its audio tracks (those published before, and a speaker joining
/// later), names each to the recorder before its packets, tells every client with
/// `active_recording`, untaps a speaker who leaves, and stops with the recording.
#[test]
fn a_recorded_room_taps_its_tracks_and_every_client_knows() {
    let mut sim = world(31);
    let (speaker, listeners) = stage(&mut sim, 2);
    sim.speak(speaker, 10);
    sim.run_for(SECOND);
    assert!(
        sim.seen.tapped.is_empty(),
        "nothing tapped before recording"
    );
    assert_eq!(sees_recording(&sim, listeners[0]), Some(false));

    let reply = sim.admin(AdminOp::SetRecording {
        room: "r".into(),
        recording: true,
    });
    assert!(matches!(reply, Ok(AdminReply::Count(1))), "{reply:?}");
    sim.run_for(SECOND / 2);
    for c in [speaker, listeners[0], listeners[1]] {
        assert_eq!(sees_recording(&sim, c), Some(true), "client {c}");
    }
    let first = sim.seen.taps[0].clone();
    assert_eq!(
        (
            first.room.as_str(),
            first.participant.as_str(),
            first.tapped
        ),
        ("r", "speaker", true)
    );
    assert_eq!(first.track_sid, track_sid(&sim, speaker));
    sim.speak(speaker, 25);
    sim.run_for(SECOND);
    let tapped = sim.seen.tapped.len();
    assert!(tapped >= 20, "tapped {tapped} of 25");
    assert!(sim.seen.tapped.iter().all(|t| *t == first.track));

    // A speaker joining late is tapped too, and a listener joining sees the flag at once.
    let late = sim.join("r", "late", true);
    let listener = sim.join("r", "l9", false);
    connect_all(&mut sim);
    sim.publish(late);
    assert!(sim.run_until(10 * SECOND, |s| s.clients[late].publisher.connected));
    sim.run_for(SECOND / 2);
    assert_eq!(sees_recording(&sim, listener), Some(true));
    let second = sim.seen.taps.last().unwrap().clone();
    assert_eq!((second.participant.as_str(), second.tapped), ("late", true));
    sim.speak(late, 25);
    sim.run_for(SECOND);
    assert!(
        sim.seen
            .tapped
            .iter()
            .filter(|t| **t == second.track)
            .count()
            >= 20
    );

    // The late speaker leaves: the recorder is told.
    sim.request(
        late,
        signal_request::Message::Leave(lk::LeaveRequest::default()),
    );
    sim.run_for(SECOND);
    assert!(
        sim.seen
            .taps
            .iter()
            .any(|t| t.track == second.track && !t.tapped),
        "{:?}",
        sim.seen.taps
    );

    // Stopping: untapped, nothing more arrives, everyone sees the flag drop.
    sim.admin(AdminOp::SetRecording {
        room: "r".into(),
        recording: false,
    })
    .unwrap();
    sim.run_for(SECOND / 2);
    let before = sim.seen.tapped.len();
    sim.speak(speaker, 25);
    sim.run_for(SECOND);
    assert_eq!(sim.seen.tapped.len(), before);
    assert!(
        sim.seen
            .taps
            .iter()
            .any(|t| t.track == first.track && !t.tapped)
    );
    assert_eq!(sees_recording(&sim, listeners[0]), Some(false));
    sim.check_invariants().unwrap();
}

/// A recording set for a room not open yet applies when it opens.
#[test]
fn recording_a_room_before_it_opens() {
    let mut sim = world(32);
    let reply = sim.admin(AdminOp::SetRecording {
        room: "r".into(),
        recording: true,
    });
    assert!(matches!(reply, Ok(AdminReply::Count(0))), "{reply:?}");
    let (speaker, listeners) = stage(&mut sim, 1);
    assert_eq!(sees_recording(&sim, listeners[0]), Some(true));
    sim.speak(speaker, 10);
    sim.run_for(SECOND);
    assert!(sim.seen.tapped.len() >= 8);
}

/// Random actions in rooms recorded from the start (and recorded or not along the way): the
/// recorder's named tracks stay exactly the published tracks of recorded rooms.
#[test]
fn random_sequences_in_recorded_rooms_keep_the_taps_right() {
    let (mut taps, mut untaps) = (0, 0);
    for seed in 0..4u64 {
        let mut sim = world(200 + seed);
        for room in ["a", "b"] {
            sim.admin(AdminOp::SetRecording {
                room: room.into(),
                recording: true,
            })
            .unwrap();
        }
        let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state & 0xff) as u8
        };
        // Joins (with publish rights), publishing and time passing weighed up, so that tracks
        // are published, then unpublished, revoked, removed, recorded or not, deleted.
        const OPS: [u8; 14] = [0, 0, 4, 4, 4, 15, 15, 15, 3, 2, 14, 10, 11, 12];
        for step in 0..80 {
            let (op, x, y) = (OPS[usize::from(next()) % OPS.len()], next(), next() | 4);
            sim.act(op, x, y);
            if let Err(e) = sim.check_invariants() {
                panic!("seed {seed}, step {step} ({op}, {x}, {y}): {e}");
            }
        }
        taps += sim.seen.taps.iter().filter(|t| t.tapped).count();
        untaps += sim.seen.taps.iter().filter(|t| !t.tapped).count();
    }
    // The sequences did exercise it.
    assert!(taps >= 3 && untaps >= 3, "{taps} taps, {untaps} untaps");
}
