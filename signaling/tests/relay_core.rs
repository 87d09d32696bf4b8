//! Relayed rooms in the signaling core, without sockets (`proto::Server` on a virtual clock):
//! the edge's link (`AdminOp::RelayFrom` → relay peer → the origin's `/rtc/v1` and back), its
//! mirror participants and their relayed tracks reaching local listeners, and on the origin
//! the relay participant that is neither shown, counted nor reported. Deterministic: fixed
//! seed, simulated time, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use stoa_sfu::str0m::RtcConfig;
use stoa_sfu::str0m::change::SdpOffer;
use stoa_sfu::str0m::media::Mid;
use stoa_sfu::{EngineCommand, Event, MediaLabel, PeerId, TrackId};
use stoa_signaling::join::parse_query;
use stoa_signaling::proto::{
    AdminOp, AdminReply, Output, ParticipantUpdate, RelayOutput, Server, ServiceError, SessionId,
};
use stoa_signaling::token::Claims;

mod core_support;
use core_support::{claims, drain, fire, join, server, some_offer, subscribes, updates_for};

const TICK: Duration = Duration::from_millis(100);

fn speaker_info(sid: &str, identity: &str, tracks: &[&str], version: u32) -> lk::ParticipantInfo {
    lk::ParticipantInfo {
        sid: sid.into(),
        identity: identity.into(),
        name: format!("{identity} the speaker"),
        metadata: "m".into(),
        state: State::Active as i32,
        version,
        permission: Some(lk::ParticipantPermission {
            can_publish: true,
            can_subscribe: true,
            ..Default::default()
        }),
        tracks: tracks
            .iter()
            .map(|t| lk::TrackInfo {
                sid: (*t).into(),
                r#type: lk::TrackType::Audio as i32,
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn edge_mirrors_the_origins_speakers_and_feeds_its_listeners() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut edge = server(t0);
    let (listener, listener_peer) = join(&mut edge, now, claims("l1", "r", false));
    drain(&mut edge);

    // The link: a relay peer is created...
    edge.handle_admin(
        now,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "ws://127.0.0.1:7880".into(),
        },
    )
    .unwrap();
    let outs = drain(&mut edge);
    let relay_peer = outs
        .iter()
        .find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, audios, .. }) => {
                assert!(*audios >= 1);
                Some(*peer)
            }
            _ => None,
        })
        .expect("CreateRelayPeer");
    // ...and its offer opens the origin's /rtc/v1.
    let offer = some_offer(now);
    let sdp = offer.to_sdp_string();
    edge.handle_engine_event(
        now,
        Event::Offer {
            peer: relay_peer,
            offer,
            slots: vec![],
        },
    );
    let outs = drain(&mut edge);
    let opened = outs.iter().find_map(|o| match o {
        Output::Relay(RelayOutput::Open {
            room,
            origin,
            offer,
        }) => Some((room.clone(), origin.clone(), offer.clone())),
        _ => None,
    });
    let (room, origin, sent) = opened.expect("the link opens");
    assert_eq!(
        (room.as_str(), origin.as_str()),
        ("r", "ws://127.0.0.1:7880")
    );
    assert_eq!(sent.sdp, sdp);
    assert_eq!(sent.r#type, "offer");

    // The origin's join response: the relay itself (hidden) and one speaker.
    let mut own = speaker_info("PA_relay", "node:edge", &[], 1);
    own.permission.as_mut().unwrap().hidden = true;
    let join_response = lk::JoinResponse {
        participant: Some(own.clone()),
        other_participants: vec![speaker_info("PA_s", "alice", &["TR_a"], 3)],
        ..Default::default()
    };
    edge.handle_relay_response(now, "r", signal_response::Message::Join(join_response));
    now += TICK;
    edge.handle_timeout(now);
    let outs = drain(&mut edge);
    let seen = updates_for(&outs, listener);
    assert!(
        seen.iter().any(|p| p.sid == "PA_s"
            && p.identity == "alice"
            && p.name == "alice the speaker"
            && p.tracks.iter().any(|t| t.sid == "TR_a")),
        "the listener sees the mirrored speaker: {seen:?}"
    );
    assert!(
        !seen.iter().any(|p| p.sid == "PA_relay"),
        "the relay itself is not mirrored"
    );
    assert!(
        subscribes(&outs).is_empty(),
        "nothing to receive before media arrives"
    );
    let participants = match edge
        .handle_admin(now, AdminOp::ListParticipants { room: "r".into() })
        .unwrap()
    {
        AdminReply::Participants(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(participants.len(), 2, "the listener and the mirror");

    // The origin's answer reaches the engine.
    let mut origin_rtc = RtcConfig::new().build(now);
    let answer = origin_rtc
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&sdp).unwrap())
        .unwrap();
    let answer = lk::SessionDescription {
        r#type: "answer".into(),
        sdp: answer.to_sdp_string(),
        id: 1,
        ..Default::default()
    };
    edge.handle_relay_response(now, "r", signal_response::Message::Answer(answer));
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::HandleAnswer { peer, .. }) if *peer == relay_peer
    )));

    // The engine files the relayed track: bound to the mirror's track, the listener receives it
    // under the origin's participant and track sids.
    let track = TrackId {
        peer: relay_peer,
        mid: Mid::from("0"),
    };
    edge.handle_engine_event(
        now,
        Event::RelayTrackPublished {
            track,
            label: MediaLabel {
                stream_id: "PA_s|TR_a".into(),
                track_id: "TR_a".into(),
            },
            ssrc: None,
        },
    );
    let subs = subscribes(&drain(&mut edge));
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].0, track);
    assert_eq!(subs[0].1.stream_id, "PA_s|TR_a");
    assert_eq!(subs[0].1.track_id, "TR_a");
    assert_eq!(subs[0].2, vec![listener_peer]);

    // A listener who joins later is subscribed at once, like to a local publisher's track.
    let (late, late_peer) = join(&mut edge, now, claims("l2", "r", false));
    let outs = drain(&mut edge);
    let subs = subscribes(&outs);
    assert_eq!(subs.len(), 1);
    assert_eq!((subs[0].0, subs[0].2.clone()), (track, vec![late_peer]));
    assert!(updates_for(&outs, late).iter().any(|p| p.sid == "PA_s"));

    // The mirror speaks: the edge's observer (its control plane) is not told, since the
    // origin reports its own speakers to the room's control plane.
    edge.handle_engine_event(
        now,
        Event::SpeakersChanged(vec![stoa_sfu::proto::speaker::SpeakerLevel {
            key: track,
            level: 0.5,
            active: true,
        }]),
    );
    let outs = drain(&mut edge);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Observe(_))),
        "{outs:?}"
    );

    // The origin asks for more sections: the relay peer offers again, on the open link.
    edge.handle_relay_response(
        now,
        "r",
        signal_response::Message::MediaSectionsRequirement(lk::MediaSectionsRequirement {
            num_audios: 2,
            num_videos: 0,
        }),
    );
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::OfferRelaySections { peer, audios: 2 }) if *peer == relay_peer
    )));
    edge.handle_engine_event(
        now,
        Event::Offer {
            peer: relay_peer,
            offer: some_offer(now),
            slots: vec![],
        },
    );
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Relay(RelayOutput::Send { room, request })
            if room == "r" && matches!(**request, signal_request::Message::Offer(ref sd) if sd.id == 2)
    )));

    // A second speaker appears in an update; an older snapshot of the first changes nothing.
    let update = lk::ParticipantUpdate {
        participants: vec![
            speaker_info("PA_s", "alice", &[], 2),
            speaker_info("PA_t", "bob", &["TR_b"], 1),
        ],
    };
    edge.handle_relay_response(now, "r", signal_response::Message::Update(update));
    now += TICK;
    edge.handle_timeout(now);
    let outs = drain(&mut edge);
    assert!(updates_for(&outs, listener).iter().any(|p| p.sid == "PA_t"));
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Engine(EngineCommand::Unsubscribe { .. }))),
        "a stale snapshot unpublishes nothing"
    );

    // The origin says the first speaker left: its track is unsubscribed, the listeners see it
    // gone, and no webhook claims a participant of this node left.
    let mut gone = speaker_info("PA_s", "alice", &["TR_a"], 4);
    gone.state = State::Disconnected as i32;
    edge.handle_relay_response(
        now,
        "r",
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: vec![gone],
        }),
    );
    now += TICK;
    edge.handle_timeout(now);
    let outs = drain(&mut edge);
    let mut unsubscribed: Vec<PeerId> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Engine(EngineCommand::Unsubscribe { peer, track: t }) if *t == track => {
                Some(*peer)
            }
            _ => None,
        })
        .collect();
    unsubscribed.sort_by_key(|p| p.index());
    let mut expected = vec![listener_peer, late_peer];
    expected.sort_by_key(|p| p.index());
    assert_eq!(unsubscribed, expected);
    assert!(
        updates_for(&outs, listener)
            .iter()
            .any(|p| p.sid == "PA_s" && p.state == State::Disconnected as i32)
    );
    assert!(!outs.iter().any(|o| matches!(o, Output::Webhook(_))));
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert!(!room.participants.contains_key("PA_s"));
    assert!(room.participants.contains_key("PA_t"));

    // Shown again (a listener made speaker again on the origin), its track binds again: the
    // engine's m-line is still labelled with it.
    edge.handle_relay_response(
        now,
        "r",
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: vec![speaker_info("PA_s", "alice", &["TR_a"], 5)],
        }),
    );
    let subs = subscribes(&drain(&mut edge));
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].0, track);
    let mut peers = subs[0].2.clone();
    peers.sort_by_key(|p| p.index());
    assert_eq!(peers, expected);

    // The link ends: the remaining mirrors leave, the relay peer closes, the socket closes.
    edge.handle_relay_closed(now, "r");
    now += TICK;
    edge.handle_timeout(now);
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::ClosePeer { peer }) if *peer == relay_peer
    )));
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Relay(RelayOutput::Close { room }) if room == "r"
    )));
    for gone in ["PA_s", "PA_t"] {
        assert!(
            updates_for(&outs, listener)
                .iter()
                .any(|p| p.sid == gone && p.state == State::Disconnected as i32)
        );
    }
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert_eq!(
        room.participants.len(),
        2,
        "only the two local listeners are left"
    );
    assert_eq!(edge.relayed_rooms().count(), 0);
    // Events of the closed relay peer are ignored.
    edge.handle_engine_event(now, Event::Disconnected(relay_peer));
    assert!(drain(&mut edge).is_empty());
}

#[test]
fn relayed_track_before_its_participant_binds_when_the_origin_tells() {
    let t0 = Instant::now();
    let mut edge = server(t0);
    let (_, listener_peer) = join(&mut edge, t0, claims("l1", "r", false));
    edge.handle_admin(
        t0,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "http://127.0.0.1:1".into(),
        },
    )
    .unwrap();
    let relay_peer = drain(&mut edge)
        .iter()
        .find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, .. }) => Some(*peer),
            _ => None,
        })
        .unwrap();
    let track = TrackId {
        peer: relay_peer,
        mid: Mid::from("1"),
    };
    edge.handle_engine_event(
        t0,
        Event::RelayTrackPublished {
            track,
            label: MediaLabel {
                stream_id: "PA_s|TR_a".into(),
                track_id: "TR_a".into(),
            },
            ssrc: Some(7),
        },
    );
    assert!(
        subscribes(&drain(&mut edge)).is_empty(),
        "nobody to bind it to yet"
    );
    let update = lk::ParticipantUpdate {
        participants: vec![speaker_info("PA_s", "alice", &["TR_a"], 1)],
    };
    edge.handle_relay_response(t0, "r", signal_response::Message::Update(update));
    let subs = subscribes(&drain(&mut edge));
    assert_eq!(subs.len(), 1);
    assert_eq!((subs[0].0, subs[0].2.clone()), (track, vec![listener_peer]));

    // The relay peer fails: the link ends and the mirror leaves.
    edge.handle_engine_event(t0, Event::Disconnected(relay_peer));
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::Unsubscribe { peer, .. }) if *peer == listener_peer
    )));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Relay(RelayOutput::Close { .. })))
    );
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert!(!room.participants.contains_key("PA_s"));

    // Deleting the room ends a new link too.
    edge.handle_admin(
        t0,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "http://127.0.0.1:1".into(),
        },
    )
    .unwrap();
    let second = drain(&mut edge)
        .iter()
        .find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, .. }) => Some(*peer),
            _ => None,
        })
        .unwrap();
    assert_ne!(second, relay_peer);
    edge.handle_admin(t0, AdminOp::DeleteRoom { room: "r".into() })
        .unwrap();
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::ClosePeer { peer }) if *peer == second
    )));
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Relay(RelayOutput::Close { .. })))
    );
    assert_eq!(edge.relayed_rooms().count(), 0);

    // An empty origin is refused.
    assert!(
        edge.handle_admin(
            t0,
            AdminOp::RelayFrom {
                room: "r".into(),
                origin: String::new(),
            },
        )
        .is_err()
    );
}

#[test]
fn origin_neither_shows_counts_nor_reports_the_relay() {
    let t0 = Instant::now();
    let mut origin = server(t0);
    let (speaker, speaker_peer) = join(&mut origin, t0, claims("alice", "r", true));
    let (_, listener_peer) = join(&mut origin, t0, claims("l1", "r", false));
    let relay_claims = Claims {
        iss: "key".into(),
        ..stoa_signaling::token::relay_claims("edge-1", "r", None)
    };
    assert_eq!(relay_claims.sub, "node:edge-1");
    assert!(relay_claims.video.hidden);
    assert_eq!(relay_claims.video.can_publish, Some(false));
    assert_eq!(relay_claims.video.can_publish_data, Some(false));
    assert_eq!(relay_claims.video.can_subscribe, Some(true));
    let (relay, relay_peer) = join(&mut origin, t0, relay_claims);
    for peer in [speaker_peer, listener_peer, relay_peer] {
        origin.handle_engine_event(t0, Event::Connected(peer));
    }
    let now = t0 + TICK * 10;
    origin.handle_timeout(now);
    let outs = drain(&mut origin);
    // Nobody is told of the relay; it sees the speaker.
    let to_speaker = updates_for(&outs, speaker);
    assert!(!to_speaker.iter().any(|p| p.identity == "node:edge-1"));
    assert!(
        to_speaker.iter().any(|p| p.identity == "l1"),
        "listeners are shown to speakers"
    );
    assert!(
        updates_for(&outs, relay)
            .iter()
            .any(|p| p.identity == "alice")
    );
    // Not counted: the room has two participants, one of them a listener.
    let joined: Vec<String> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Webhook(e) if e.event == "participant_joined" => {
                e.participant.as_ref().map(|p| p.identity.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(!joined.iter().any(|i| i.starts_with("node:")));
    let room = origin.rooms().find(|r| r.name == "r").unwrap();
    assert_eq!(room.info().num_participants, 2);
    let stats = origin.stats();
    assert_eq!((stats.publishers, stats.listeners), (1, 1));
    let listed = match origin
        .handle_admin(now, AdminOp::ListParticipants { room: "r".into() })
        .unwrap()
    {
        AdminReply::Participants(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(listed.len(), 2);
    assert!(!listed.iter().any(|p| p.identity.starts_with("node:")));
    // Its leave is not reported either.
    origin.handle_request(
        now,
        relay,
        signal_request::Message::Leave(lk::LeaveRequest::default()),
    );
    let outs = drain(&mut origin);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Webhook(_))),
        "no webhook for the relay"
    );
}

#[test]
fn an_origin_participant_rejoining_under_a_new_sid_replaces_its_mirror() {
    let t0 = Instant::now();
    let mut edge = server(t0);
    let (listener, listener_peer) = join(&mut edge, t0, claims("l1", "r", false));
    let (_, _) = join(&mut edge, t0, claims("carol", "r", false));
    edge.handle_admin(
        t0,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "ws://127.0.0.1:1".into(),
        },
    )
    .unwrap();
    let relay_peer = drain(&mut edge)
        .iter()
        .find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, .. }) => Some(*peer),
            _ => None,
        })
        .unwrap();
    let update = |infos: Vec<lk::ParticipantInfo>| {
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: infos,
        })
    };
    edge.handle_relay_response(
        t0,
        "r",
        update(vec![speaker_info("PA_old", "alice", &["TR_a"], 1)]),
    );
    let track = TrackId {
        peer: relay_peer,
        mid: Mid::from("0"),
    };
    edge.handle_engine_event(
        t0,
        Event::RelayTrackPublished {
            track,
            label: MediaLabel {
                stream_id: "PA_old|TR_a".into(),
                track_id: "TR_a".into(),
            },
            ssrc: None,
        },
    );
    assert_eq!(subscribes(&drain(&mut edge)).len(), 1);

    // alice rejoined the origin: a new sid, before the old one's leave arrived.
    edge.handle_relay_response(
        t0,
        "r",
        update(vec![speaker_info("PA_new", "alice", &["TR_b"], 1)]),
    );
    let now = t0 + TICK;
    edge.handle_timeout(now);
    let outs = drain(&mut edge);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::Unsubscribe { peer, track: t }) if *peer == listener_peer && *t == track
    )));
    let seen = updates_for(&outs, listener);
    assert!(
        seen.iter()
            .any(|p| p.sid == "PA_old" && p.state == State::Disconnected as i32)
    );
    assert!(seen.iter().any(|p| p.sid == "PA_new"));
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert!(!room.participants.contains_key("PA_old"));
    assert_eq!(room.by_identity("alice").unwrap().sid, "PA_new");

    // A participant of the origin with a local participant's identity is not mirrored.
    edge.handle_relay_response(
        now,
        "r",
        update(vec![speaker_info("PA_c", "carol", &[], 1)]),
    );
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert!(!room.participants.contains_key("PA_c"));
    assert_eq!(room.len(), 3, "l1, carol, and alice's mirror");
}

/// The relay peers `outs` asks the engine to create.
fn relay_peers_created(outs: &[Output]) -> Vec<PeerId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, .. }) => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn ensure_relay_keeps_a_running_link_and_makes_an_ended_or_moved_one_anew() {
    let t0 = Instant::now();
    let mut edge = server(t0);
    let ensure = |edge: &mut Server, origin: &str| {
        let op = AdminOp::EnsureRelay {
            room: "r".into(),
            origin: origin.into(),
        };
        match edge.handle_admin(t0, op).unwrap() {
            AdminReply::Count(n) => n,
            other => panic!("{other:?}"),
        }
    };
    // The first admission starts a link; the next ones keep it.
    assert_eq!(ensure(&mut edge, "ws://127.0.0.1:7880"), 1);
    let first = relay_peers_created(&drain(&mut edge));
    assert_eq!(first.len(), 1);
    assert_eq!(ensure(&mut edge, "ws://127.0.0.1:7880"), 0);
    assert!(relay_peers_created(&drain(&mut edge)).is_empty());
    assert_eq!(edge.relayed_rooms().collect::<Vec<_>>(), ["r"]);
    // The link ends: the next admission makes it again.
    edge.handle_relay_closed(t0, "r");
    drain(&mut edge);
    assert_eq!(edge.relayed_rooms().count(), 0);
    assert_eq!(ensure(&mut edge, "ws://127.0.0.1:7880"), 1);
    let second = relay_peers_created(&drain(&mut edge));
    assert_eq!(second.len(), 1);
    assert_ne!(second, first, "a new relay peer");
    // The room moved to another origin: its link is replaced.
    assert_eq!(ensure(&mut edge, "ws://127.0.0.1:7990"), 1);
    let third = relay_peers_created(&drain(&mut edge));
    assert_eq!(third.len(), 1);
    assert_ne!(third, second);
    assert_eq!(edge.relayed_rooms().count(), 1);
}

/// An edge with listener `l1` and a link whose origin shows speaker `alice` (`PA_s`), her
/// track `TR_a` bound to a relayed engine track: the edge, the listener's session and peer,
/// and the relayed track.
fn edge_with_mirror(t0: Instant) -> (Server, SessionId, PeerId, TrackId) {
    let mut edge = server(t0);
    let (listener, listener_peer) = join(&mut edge, t0, claims("l1", "r", false));
    edge.handle_admin(
        t0,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "ws://127.0.0.1:1".into(),
        },
    )
    .unwrap();
    let relay_peer = relay_peers_created(&drain(&mut edge))[0];
    let update = lk::ParticipantUpdate {
        participants: vec![speaker_info("PA_s", "alice", &["TR_a"], 1)],
    };
    edge.handle_relay_response(t0, "r", signal_response::Message::Update(update));
    let track = TrackId {
        peer: relay_peer,
        mid: Mid::from("0"),
    };
    edge.handle_engine_event(
        t0,
        Event::RelayTrackPublished {
            track,
            label: MediaLabel {
                stream_id: "PA_s|TR_a".into(),
                track_id: "TR_a".into(),
            },
            ssrc: None,
        },
    );
    assert_eq!(subscribes(&drain(&mut edge)).len(), 1);
    (edge, listener, listener_peer, track)
}

#[test]
fn a_speaking_mirror_that_leaves_is_told_quiet_before_gone() {
    let t0 = Instant::now();
    let (mut edge, listener, _, track) = edge_with_mirror(t0);
    drain(&mut edge);
    edge.handle_engine_event(
        t0,
        Event::SpeakersChanged(vec![stoa_sfu::proto::speaker::SpeakerLevel {
            key: track,
            level: 0.5,
            active: true,
        }]),
    );
    let to_listener = |outs: &[Output], wanted: fn(&signal_response::Message) -> bool| {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send(to, m) if *to == listener => m.message.as_ref(),
                _ => None,
            })
            .position(wanted)
    };
    let outs = fire(&mut edge, t0 + TICK);
    assert!(
        to_listener(
            &outs,
            |m| matches!(m, signal_response::Message::SpeakersChanged(c)
            if c.speakers.iter().any(|s| s.sid == "PA_s" && s.active))
        )
        .is_some(),
        "{outs:?}"
    );
    // The origin says she left.
    let mut gone = speaker_info("PA_s", "alice", &["TR_a"], 2);
    gone.state = State::Disconnected as i32;
    edge.handle_relay_response(
        t0 + TICK,
        "r",
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: vec![gone],
        }),
    );
    let outs = fire(&mut edge, t0 + 2 * TICK);
    let quiet = to_listener(&outs, |m| {
        matches!(m, signal_response::Message::SpeakersChanged(c)
            if c.speakers.iter().any(|s| s.sid == "PA_s" && !s.active))
    })
    .expect("told she stopped speaking");
    let left = to_listener(&outs, |m| {
        matches!(m, signal_response::Message::Update(u)
            if u.participants.iter().any(|p| p.sid == "PA_s" && p.state == State::Disconnected as i32))
    })
    .expect("told she left");
    assert!(quiet < left, "{outs:?}");
}

fn identities(reply: AdminReply) -> Vec<String> {
    let AdminReply::Participants(ps) = reply else {
        panic!("not a participant list: {reply:?}");
    };
    let mut ids: Vec<String> = ps.into_iter().map(|p| p.identity).collect();
    ids.sort();
    ids
}

#[test]
fn an_edge_holds_its_own_participants_and_leaves_the_origins_to_the_origin() {
    let t0 = Instant::now();
    let (mut edge, _, _, track) = edge_with_mirror(t0);

    // Its clients see the mirror; what it holds is its own listener.
    let all = edge
        .handle_admin(t0, AdminOp::ListParticipants { room: "r".into() })
        .unwrap();
    assert_eq!(identities(all), ["alice", "l1"]);
    let held = edge
        .handle_admin(t0, AdminOp::ListHeld { room: "r".into() })
        .unwrap();
    assert_eq!(identities(held), ["l1"]);
    // The node's load (placement reads it) is its own people: the mirror is the origin's.
    let stats = edge.stats();
    assert_eq!((stats.publishers, stats.listeners), (0, 1));

    // Muting or changing the mirror here is refused as not held: the origin does it, and its
    // snapshots bring the result. Nothing reaches the engine (a server mute of the relayed
    // track here would outlive the speaker's unmute on the origin).
    let mute = edge.handle_admin(
        t0,
        AdminOp::MuteTrack {
            room: "r".into(),
            identity: "alice".into(),
            track_sid: "TR_a".into(),
            muted: true,
        },
    );
    assert!(
        matches!(mute, Err(ServiceError::ParticipantNotFound(_))),
        "{mute:?}"
    );
    let update = edge.handle_admin(
        t0,
        AdminOp::UpdateParticipant {
            room: "r".into(),
            identity: "alice".into(),
            update: Box::new(ParticipantUpdate {
                metadata: "changed here".into(),
                ..Default::default()
            }),
        },
    );
    assert!(
        matches!(update, Err(ServiceError::ParticipantNotFound(_))),
        "{update:?}"
    );
    let outs = drain(&mut edge);
    assert!(
        !outs.iter().any(|o| matches!(
            o,
            Output::Engine(EngineCommand::SetTrackMuted { track: t, .. }) if *t == track
        )),
        "{outs:?}"
    );
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    let mirror = room.participants.get("PA_s").unwrap();
    assert_eq!(mirror.metadata, "m");
    assert!(!mirror.tracks["TR_a"].info.muted);

    // The origin's snapshot with the track muted is what mutes it here.
    let mut muted = speaker_info("PA_s", "alice", &["TR_a"], 2);
    muted.tracks[0].muted = true;
    edge.handle_relay_response(
        t0,
        "r",
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: vec![muted],
        }),
    );
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert!(room.participants["PA_s"].tracks["TR_a"].info.muted);
}

#[test]
fn a_listener_of_an_edge_allowed_to_publish_is_sent_to_the_origin() {
    let t0 = Instant::now();
    let (mut edge, listener, listener_peer, _) = edge_with_mirror(t0);
    let (other, _) = join(&mut edge, t0, claims("l2", "r", false));
    drain(&mut edge);

    // A change that does not let it publish stays here.
    let attrs = edge
        .handle_admin(
            t0,
            AdminOp::UpdateParticipant {
                room: "r".into(),
                identity: "l2".into(),
                update: Box::new(ParticipantUpdate {
                    attributes: [("hand".to_owned(), "up".to_owned())].into(),
                    ..Default::default()
                }),
            },
        )
        .unwrap();
    assert!(matches!(attrs, AdminReply::Participant(_)));
    let outs = drain(&mut edge);
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Close(s, _) if *s == other))
    );

    // Promoted: the edge relays one way, so it tells the client to leave (MIGRATION) rather
    // than letting it publish where the origin's listeners would not hear it.
    let reply = edge
        .handle_admin(
            t0,
            AdminOp::UpdateParticipant {
                room: "r".into(),
                identity: "l1".into(),
                update: Box::new(ParticipantUpdate {
                    permission: Some(lk::ParticipantPermission {
                        can_publish: true,
                        can_subscribe: true,
                        can_publish_sources: vec![lk::TrackSource::Microphone as i32],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        )
        .unwrap();
    let AdminReply::Participant(info) = reply else {
        panic!("{reply:?}");
    };
    assert!(info.permission.unwrap().can_publish);
    let outs = drain(&mut edge);
    let leave = outs.iter().find_map(|o| match o {
        Output::Send(to, m) if *to == listener => match &m.message {
            Some(signal_response::Message::Leave(l)) => Some(l.clone()),
            _ => None,
        },
        _ => None,
    });
    let leave = leave.expect("the promoted listener is told to leave");
    assert_eq!(leave.reason, lk::DisconnectReason::Migration as i32);
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Close(s, _) if *s == listener))
    );
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::ClosePeer { peer }) if *peer == listener_peer
    )));
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Engine(EngineCommand::SetPublish { .. }))),
        "nothing is published on the edge"
    );
    let held = edge
        .handle_admin(t0, AdminOp::ListHeld { room: "r".into() })
        .unwrap();
    assert_eq!(identities(held), ["l2"]);

    // Without a link (this node is the room's origin), the same promotion lets it publish.
    let mut origin = server(t0);
    let (kept, _) = join(&mut origin, t0, claims("l1", "o", false));
    drain(&mut origin);
    origin
        .handle_admin(
            t0,
            AdminOp::UpdateParticipant {
                room: "o".into(),
                identity: "l1".into(),
                update: Box::new(ParticipantUpdate {
                    permission: Some(lk::ParticipantPermission {
                        can_publish: true,
                        can_subscribe: true,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        )
        .unwrap();
    let outs = drain(&mut origin);
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Close(s, _) if *s == kept))
    );
}

/// The `room_started` / `room_finished` webhooks among `outs`.
fn room_hooks(outs: &[Output]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Webhook(e) if e.event.starts_with("room_") => Some(e.event.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_room_a_relay_link_opens_is_the_origins_to_report() {
    let t0 = Instant::now();
    let mut edge = server(t0);
    edge.handle_admin(
        t0,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "ws://127.0.0.1:1".into(),
        },
    )
    .unwrap();
    let (_, _) = join(&mut edge, t0, claims("l1", "r", false));
    assert!(room_hooks(&drain(&mut edge)).is_empty(), "no room_started");
    edge.handle_admin(t0, AdminOp::DeleteRoom { room: "r".into() })
        .unwrap();
    assert!(room_hooks(&drain(&mut edge)).is_empty(), "no room_finished");

    // A room of this node's own, opened by a join, is reported as ever.
    let (_, _) = join(&mut edge, t0, claims("l1", "r", false));
    assert_eq!(room_hooks(&drain(&mut edge)), ["room_started"]);
    edge.handle_admin(t0, AdminOp::DeleteRoom { room: "r".into() })
        .unwrap();
    assert_eq!(room_hooks(&drain(&mut edge)), ["room_finished"]);
}

/// Whether each `AcceptOffer` in `outs` marks its peer as another node's relay link.
fn accepted_as_relay(outs: &[Output]) -> Vec<bool> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Engine(EngineCommand::AcceptOffer { relay, .. }) => Some(*relay),
            _ => None,
        })
        .collect()
}

/// A `/rtc/v1` join with `offer` in its join request.
fn join_single(s: &mut Server, now: Instant, c: Claims, offer: &SdpOffer) -> SessionId {
    let mut params = parse_query("access_token=x&protocol=17&auto_subscribe=1").unwrap();
    params.single_pc = true;
    params.publisher_offer = Some(stoa_signaling::join::InitialOffer {
        sdp: offer.to_sdp_string(),
        id: 1,
    });
    s.connect(now, c, params).unwrap()
}

/// The origin tells its engine which connection is an edge's relay link (served first in each
/// fan-out), and that a listener's is not.
#[test]
fn the_origin_marks_a_relay_link_for_its_engine() {
    let t0 = Instant::now();
    let mut origin = server(t0);
    join(&mut origin, t0, claims("alice", "r", true));
    drain(&mut origin);
    let offer = some_offer(t0);
    join_single(&mut origin, t0, claims("l1", "r", false), &offer);
    assert_eq!(accepted_as_relay(&drain(&mut origin)), vec![false]);
    let relay_claims = Claims {
        iss: "key".into(),
        ..stoa_signaling::token::relay_claims("edge-1", "r", None)
    };
    join_single(&mut origin, t0, relay_claims, &offer);
    assert_eq!(accepted_as_relay(&drain(&mut origin)), vec![true]);
}
