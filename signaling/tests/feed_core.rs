//! Feeds of edges' speakers in the signaling core, without sockets (`proto::Server` on a
//! virtual clock): on the origin, an edge's announcement of a participant with a track opens a
//! feed from that edge (`CreateRelayPeer`, then `RelayOutput::OpenFeed` to the URL its relay
//! token carries); the feed's relayed track binds to the announced participant and goes to
//! the origin's listeners and its other edges' relays but never back to the announcing edge;
//! an unpublished track stops; the edge's link ending ends the feed. On an edge, a relay
//! session (an origin's feed) is never given what the edge mirrors of its origin.
//! Deterministic: fixed seed, simulated time, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::signal_response;
use prost::Message as _;
use stoa_sfu::str0m::RtcConfig;
use stoa_sfu::str0m::media::Mid;
use stoa_sfu::{EngineCommand, Event, MediaLabel, PeerId, TrackId};
use stoa_signaling::join::parse_query;
use stoa_signaling::proto::{
    AdminOp, FEED_RETRY, JOIN_PARTICIPANTS, NODE_URL_ATTRIBUTE, Output, ROSTER_TOPIC, RelayOutput,
    Server, ServerConfig, UPDATE_PARTICIPANTS,
};
use stoa_signaling::room::RoomLimits;
use stoa_signaling::token::Claims;

mod core_support;
use core_support::{claims, drain, fire, join, server, some_offer, subscribes, updates_for};

const TICK: Duration = Duration::from_millis(100);

/// The claims of node `node`'s relay token, naming its URL `url`.
fn relay(node: &str, url: &str) -> Claims {
    let claims = Claims {
        iss: "key".into(),
        ..stoa_signaling::token::relay_claims(node, "r", Some(url))
    };
    assert_eq!(claims.attributes[NODE_URL_ATTRIBUTE], url);
    claims
}

fn info(sid: &str, identity: &str, tracks: &[&str], version: u32) -> lk::ParticipantInfo {
    lk::ParticipantInfo {
        sid: sid.into(),
        identity: identity.into(),
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
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The engine hears `track` speaking.
fn speaks(s: &mut Server, now: Instant, track: TrackId) {
    s.handle_engine_event(
        now,
        Event::SpeakersChanged(vec![stoa_sfu::proto::speaker::SpeakerLevel {
            key: track,
            level: 0.5,
            active: true,
        }]),
    );
}

/// Edge `peer`'s announcement of `participants`, on its reliable channel.
fn announce(s: &mut Server, now: Instant, peer: PeerId, participants: Vec<lk::ParticipantInfo>) {
    let update = lk::ParticipantUpdate { participants };
    let packet = lk::DataPacket {
        value: Some(lk::data_packet::Value::User(lk::UserPacket {
            payload: update.encode_to_vec(),
            topic: Some(ROSTER_TOPIC.to_owned()),
            ..Default::default()
        })),
        ..Default::default()
    };
    // Any channel id: the origin takes the topic from a relay session, whichever channel.
    let channel = RtcConfig::new()
        .build(now)
        .sdp_api()
        .add_channel("_reliable".into());
    s.handle_engine_event(
        now,
        Event::ChannelData {
            peer,
            channel,
            binary: true,
            data: packet.encode_to_vec(),
        },
    );
}

fn unsubscribed(outs: &[Output], track: TrackId) -> Vec<PeerId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Engine(EngineCommand::Unsubscribe { peer, track: t }) if *t == track => {
                Some(*peer)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn origin_feeds_an_edges_speaker_to_everyone_but_that_edge() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut origin = server(t0);
    let (_, listener_peer) = join(&mut origin, now, claims("l1", "r", false));
    let (a, a_peer) = join(&mut origin, now, relay("edge-a", "ws://10.0.0.2:7880"));
    let (b, b_peer) = join(&mut origin, now, relay("edge-b", "ws://10.0.0.3:7880"));
    for peer in [listener_peer, a_peer, b_peer] {
        origin.handle_engine_event(now, Event::Connected(peer));
    }
    drain(&mut origin);

    // Edge A announces a listener: no feed.
    let mut listener = info("PA_l", "lena", &[], 1);
    listener.permission.as_mut().unwrap().can_publish = false;
    announce(&mut origin, now, a_peer, vec![listener]);
    let outs = drain(&mut origin);
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Engine(EngineCommand::CreateRelayPeer { .. }))),
        "{outs:?}"
    );

    // Edge A announces a speaker with a track: the origin opens a feed from edge A.
    announce(
        &mut origin,
        now,
        a_peer,
        vec![info("PA_c", "carol", &["TR_c"], 2)],
    );
    let outs = drain(&mut origin);
    let feed_peer = outs
        .iter()
        .find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer {
                peer,
                audios,
                channels,
                ..
            }) => {
                assert!(*audios >= 1);
                assert!(channels.is_empty(), "media only: {channels:?}");
                Some(*peer)
            }
            _ => None,
        })
        .expect("a feed's relay peer");
    // Her next snapshot opens nothing more.
    announce(
        &mut origin,
        now,
        a_peer,
        vec![info("PA_c", "carol", &["TR_c"], 3)],
    );
    assert!(
        !drain(&mut origin)
            .iter()
            .any(|o| matches!(o, Output::Engine(EngineCommand::CreateRelayPeer { .. })))
    );
    // Edge B's relay is shown edge A's people, listener and speaker, and the origin's
    // listener (whoever may see them on edge B sees the whole audience); edge A's relay is
    // shown the origin's listener but not its own people back.
    now += TICK;
    origin.handle_timeout(now);
    let outs = drain(&mut origin);
    let shown = |session| -> Vec<String> {
        updates_for(&outs, session)
            .into_iter()
            .map(|p| p.identity)
            .collect()
    };
    let to_b = shown(b);
    for who in ["lena", "carol", "l1"] {
        assert!(
            to_b.iter().any(|i| i == who),
            "{who} shown to edge B: {to_b:?}"
        );
    }
    let to_a = shown(a);
    assert!(to_a.iter().any(|i| i == "l1"), "{to_a:?}");
    assert!(
        !to_a.iter().any(|i| i == "lena" || i == "carol"),
        "nothing back to edge A: {to_a:?}"
    );
    origin.handle_engine_event(
        now,
        Event::Offer {
            peer: feed_peer,
            offer: some_offer(now),
            slots: vec![],
        },
    );
    let outs = drain(&mut origin);
    let opened = outs.iter().find_map(|o| match o {
        Output::Relay(RelayOutput::OpenFeed { room, edge, offer }) => {
            Some((room.clone(), edge.clone(), offer.id))
        }
        _ => None,
    });
    assert_eq!(
        opened,
        Some(("r".to_owned(), "ws://10.0.0.2:7880".to_owned(), 1)),
        "{outs:?}"
    );

    // The edge's answer reaches the engine; its snapshots on the feed change nothing.
    origin.handle_feed_response(
        now,
        "r",
        "ws://10.0.0.2:7880",
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: vec![info("PA_x", "xavier", &["TR_x"], 1)],
        }),
    );
    assert!(
        origin
            .rooms()
            .all(|r| r.participants.values().all(|p| p.identity != "xavier")),
        "the feed is media only"
    );

    // The room is recorded (on its origin).
    origin
        .handle_admin(
            now,
            AdminOp::SetRecording {
                room: "r".into(),
                recording: true,
            },
        )
        .unwrap();
    drain(&mut origin);

    // The engine files her track on the feed: bound, sent to the origin's listener and to edge
    // B's relay, not back to edge A's, and tapped for the recording.
    let track = TrackId {
        peer: feed_peer,
        mid: Mid::from("0"),
    };
    origin.handle_engine_event(
        now,
        Event::RelayTrackPublished {
            track,
            label: MediaLabel {
                stream_id: "PA_c|TR_c".into(),
                track_id: "TR_c".into(),
            },
            ssrc: None,
        },
    );
    let outs = drain(&mut origin);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Tap(t) if t.track == track && t.tapped && t.participant == "carol" && t.track_sid == "TR_c"
    )), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::SetTap { track: t, tapped: true }) if *t == track
    )));
    let subs = subscribes(&outs);
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].0, track);
    assert_eq!(subs[0].1.stream_id, "PA_c|TR_c");
    let mut peers = subs[0].2.clone();
    peers.sort_unstable();
    let mut expected = vec![listener_peer, b_peer];
    expected.sort_unstable();
    assert_eq!(peers, expected, "never back to edge A ({a_peer})");

    // A listener who joins later receives her at once; a relay of edge A that replaces the
    // first does not.
    let (_, late_peer) = join(&mut origin, now, claims("l2", "r", false));
    let subs = subscribes(&drain(&mut origin));
    assert_eq!(subs.len(), 1);
    assert_eq!((subs[0].0, subs[0].2.clone()), (track, vec![late_peer]));

    // Her speaking is announced to the origin's clients, not reported to its observer (her
    // node reports her).
    speaks(&mut origin, now, track);
    let outs = drain(&mut origin);
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Observe(_))),
        "{outs:?}"
    );
    // With the next tick's flush.
    now += TICK;
    let outs = fire(&mut origin, now);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Send(_, m) if matches!(&m.message,
            Some(signal_response::Message::SpeakersChanged(c)) if c.speakers.iter().any(|s| s.sid == "PA_c"))
    )));
    assert!(
        !outs.iter().any(|o| matches!(o, Output::Observe(_))),
        "{outs:?}"
    );

    // She unpublishes on edge A: her track stops for everyone here.
    announce(
        &mut origin,
        now,
        a_peer,
        vec![info("PA_c", "carol", &[], 4)],
    );
    let outs = drain(&mut origin);
    assert!(
        outs.iter().any(|o| matches!(
            o,
            Output::Tap(t) if t.track == track && !t.tapped
        )),
        "{outs:?}"
    );
    let mut stopped = unsubscribed(&outs, track);
    stopped.sort_unstable();
    let mut expected = vec![listener_peer, late_peer, b_peer];
    expected.sort_unstable();
    assert_eq!(stopped, expected);
    // She was speaking: the origin's clients hear she stopped, with the next tick's flush.
    now += TICK;
    let outs = fire(&mut origin, now);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Send(_, m) if matches!(&m.message,
            Some(signal_response::Message::SpeakersChanged(c)) if c.speakers.iter().any(|s| s.sid == "PA_c" && !s.active))
    )), "{outs:?}");
    // She publishes again (the engine's m-line keeps its label): bound again.
    announce(
        &mut origin,
        now,
        a_peer,
        vec![info("PA_c", "carol", &["TR_c"], 5)],
    );
    let subs = subscribes(&drain(&mut origin));
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].0, track);

    // The feed fails (the edge unreachable, its socket closed): her track stops, and the
    // feed is opened again FEED_RETRY later, as she still speaks there.
    origin.handle_feed_closed(now, "r", "ws://10.0.0.2:7880");
    let outs = drain(&mut origin);
    assert!(!unsubscribed(&outs, track).is_empty(), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::ClosePeer { peer }) if *peer == feed_peer
    )));
    let reopened = |outs: &[Output]| {
        outs.iter().find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, .. }) => Some(*peer),
            _ => None,
        })
    };
    now += TICK;
    origin.handle_timeout(now);
    assert_eq!(reopened(&drain(&mut origin)), None, "not at once");
    let mut feed_peer = None;
    for _ in 0..((FEED_RETRY.as_millis() / TICK.as_millis()) * 2) {
        now += TICK;
        origin.handle_timeout(now);
        feed_peer = feed_peer.or(reopened(&drain(&mut origin)));
    }
    let feed_peer = feed_peer.expect("the feed opened again");
    let track = TrackId {
        peer: feed_peer,
        mid: Mid::from("0"),
    };
    origin.handle_engine_event(
        now,
        Event::RelayTrackPublished {
            track,
            label: MediaLabel {
                stream_id: "PA_c|TR_c".into(),
                track_id: "TR_c".into(),
            },
            ssrc: None,
        },
    );
    assert_eq!(subscribes(&drain(&mut origin)).len(), 1, "bound again");

    // Edge B's relay leaves: the feed stays (edge A still relays the room).
    origin.handle_closed(now, b, "gone");
    now += Duration::from_secs(60);
    origin.handle_timeout(now);
    let outs = drain(&mut origin);
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Relay(RelayOutput::CloseFeed { .. }))),
        "{outs:?}"
    );

    // Edge A links again: its new relay session replaces the old (one identity per room), and
    // announces her again. The feed, carrying media only, keeps carrying; nothing of hers goes
    // to the new relay, neither her track nor her snapshot.
    let (a2, a2_peer) = join(&mut origin, now, relay("edge-a", "ws://10.0.0.2:7880"));
    origin.handle_engine_event(now, Event::Connected(a2_peer));
    drain(&mut origin);
    announce(
        &mut origin,
        now,
        a2_peer,
        vec![info("PA_c", "carol", &["TR_c"], 6)],
    );
    let mut outs = drain(&mut origin);
    let subs = subscribes(&outs);
    assert_eq!(subs.len(), 1, "bound again: {subs:?}");
    assert!(!subs[0].2.contains(&a2_peer), "{subs:?}");
    for _ in 0..((FEED_RETRY.as_millis() / TICK.as_millis()) * 2) {
        now += TICK;
        origin.handle_timeout(now);
        outs.extend(drain(&mut origin));
    }
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, Output::Relay(RelayOutput::CloseFeed { .. }))),
        "{outs:?}"
    );
    assert!(
        !updates_for(&outs, a2).iter().any(|p| p.identity == "carol"),
        "not shown back"
    );

    // A listener joins (the first ones stopped pinging a minute ago, and are held); she
    // speaks again; then edge A's link ends for good: her track stops at once, and the feed
    // FEED_RETRY later. The listener hears she stopped speaking before it sees her gone
    // (livekit-client skips a speaker change naming someone it no longer knows).
    let (l3, l3_peer) = join(&mut origin, now, claims("l3", "r", false));
    origin.handle_engine_event(now, Event::Connected(l3_peer));
    drain(&mut origin);
    speaks(&mut origin, now, track);
    now += TICK;
    let outs = fire(&mut origin, now);
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Send(to, m) if *to == l3 && matches!(&m.message,
            Some(signal_response::Message::SpeakersChanged(c)) if c.speakers.iter().any(|s| s.sid == "PA_c" && s.active))
    )), "{outs:?}");
    origin
        .handle_admin(
            now,
            AdminOp::RemoveParticipant {
                room: "r".into(),
                identity: "node:edge-a".into(),
            },
        )
        .unwrap();
    let mut outs = drain(&mut origin);
    assert!(!unsubscribed(&outs, track).is_empty());
    for _ in 0..((FEED_RETRY.as_millis() / TICK.as_millis()) * 2) {
        now += TICK;
        origin.handle_timeout(now);
        outs.extend(drain(&mut origin));
    }
    let to_listener = |wanted: fn(&signal_response::Message) -> bool| {
        outs.iter()
            .filter_map(|o| match o {
                Output::Send(to, m) if *to == l3 => m.message.as_ref(),
                _ => None,
            })
            .position(wanted)
    };
    let stopped = to_listener(|m| {
        matches!(m, signal_response::Message::SpeakersChanged(c)
            if c.speakers.iter().any(|s| s.sid == "PA_c" && !s.active))
    })
    .expect("told she stopped speaking");
    let gone = to_listener(|m| {
        matches!(m, signal_response::Message::Update(u)
            if u.participants.iter().any(|p| p.sid == "PA_c" && p.state == State::Disconnected as i32))
    })
    .expect("told she left");
    assert!(stopped < gone, "{outs:?}");
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Relay(RelayOutput::CloseFeed { room, edge }) if room == "r" && edge == "ws://10.0.0.2:7880"
    )), "{outs:?}");
    assert!(outs.iter().any(|o| matches!(
        o,
        Output::Engine(EngineCommand::ClosePeer { peer }) if *peer == feed_peer
    )));
}

#[test]
fn a_speaker_who_rejoined_on_an_edge_replaces_her_session_on_the_origin() {
    let t0 = Instant::now();
    let mut origin = server(t0);
    let (carol, _) = join(&mut origin, t0, claims("carol", "r", true));
    let (_, a_peer) = join(&mut origin, t0, relay("edge-a", "ws://10.0.0.2:7880"));
    drain(&mut origin);
    let joined_here = origin
        .rooms()
        .flat_map(|r| r.participants.values())
        .find(|p| p.identity == "carol")
        .unwrap()
        .joined_at_ms;
    // An older snapshot of her (joined before her session here) changes nothing.
    let mut old = info("PA_old", "carol", &["TR_o"], 1);
    old.joined_at_ms = joined_here - 1_000;
    announce(&mut origin, t0, a_peer, vec![old]);
    drain(&mut origin);
    assert!(
        origin.session_peers(carol).is_some(),
        "her session here stays"
    );
    // She joined on the edge after (her connection here dropped, the session held for a
    // resume): the newer one wins, and the origin opens a feed from the edge.
    let now = t0 + Duration::from_secs(5);
    let mut newer = info("PA_new", "carol", &["TR_n"], 1);
    newer.joined_at_ms = joined_here + 5_000;
    announce(&mut origin, now, a_peer, vec![newer]);
    let outs = drain(&mut origin);
    assert!(
        origin.session_peers(carol).is_none(),
        "her old session ended"
    );
    assert!(
        outs.iter()
            .any(|o| matches!(o, Output::Engine(EngineCommand::CreateRelayPeer { .. })))
    );
    let room = origin.rooms().find(|r| r.name == "r").unwrap();
    assert!(room.participants.contains_key("PA_new"));
}

#[test]
fn a_full_room_still_takes_another_nodes_relay() {
    let t0 = Instant::now();
    let config = ServerConfig {
        events: true,
        room_defaults: RoomLimits {
            max_participants: 1,
            ..RoomLimits::default()
        },
        ..ServerConfig::default()
    };
    let mut origin = Server::new(config, t0, 1_700_000_000_000);
    join(&mut origin, t0, claims("l1", "r", false));
    let params = parse_query("access_token=x&protocol=17").unwrap();
    assert!(
        origin
            .connect(t0, claims("l2", "r", false), params.clone())
            .is_err(),
        "full"
    );
    assert!(
        origin
            .connect(t0, relay("edge-a", "ws://10.0.0.2:7880"), params)
            .is_ok()
    );
}

#[test]
fn an_edge_gives_an_origins_feed_only_what_it_holds() {
    let t0 = Instant::now();
    let now = t0;
    let mut edge = server(t0);
    let (_, listener_peer) = join(&mut edge, now, claims("l1", "r", false));
    edge.handle_admin(
        now,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "ws://10.0.0.1:7880".into(),
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
    edge.handle_engine_event(
        now,
        Event::Offer {
            peer: relay_peer,
            offer: some_offer(now),
            slots: vec![],
        },
    );
    let mut own = info("PA_relay", "node:edge", &[], 1);
    own.permission.as_mut().unwrap().hidden = true;
    edge.handle_relay_response(
        now,
        "r",
        signal_response::Message::Join(lk::JoinResponse {
            participant: Some(own),
            other_participants: vec![info("PA_s", "alice", &["TR_a"], 1)],
            ..Default::default()
        }),
    );
    let mirrored = TrackId {
        peer: relay_peer,
        mid: Mid::from("0"),
    };
    edge.handle_engine_event(
        now,
        Event::RelayTrackPublished {
            track: mirrored,
            label: MediaLabel {
                stream_id: "PA_s|TR_a".into(),
                track_id: "TR_a".into(),
            },
            ssrc: None,
        },
    );
    let subs = subscribes(&drain(&mut edge));
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].2, vec![listener_peer]);

    // The origin's feed joins: it is not given the origin's own speaker back.
    let (_, feed_peer) = join(&mut edge, now, relay("origin", "ws://10.0.0.1:7880"));
    let outs = drain(&mut edge);
    assert!(
        !subscribes(&outs)
            .iter()
            .any(|(_, _, peers)| peers.contains(&feed_peer)),
        "{outs:?}"
    );
    // A listener joining now is (the control).
    let (_, late_peer) = join(&mut edge, now, claims("l2", "r", false));
    let subs = subscribes(&drain(&mut edge));
    assert_eq!(subs.len(), 1);
    assert_eq!((subs[0].0, subs[0].2.clone()), (mirrored, vec![late_peer]));

    // The origin shows the relay this edge's own participant: the local one stays the truth.
    let (carol, _) = join(&mut edge, now, claims("carol", "r", true));
    let carol_sid = edge
        .rooms()
        .find(|r| r.name == "r")
        .unwrap()
        .participants
        .values()
        .find(|p| p.identity == "carol")
        .unwrap()
        .sid
        .clone();
    drain(&mut edge);
    edge.handle_relay_response(
        now,
        "r",
        signal_response::Message::Update(lk::ParticipantUpdate {
            participants: vec![info(&carol_sid, "carol", &["TR_x"], 99)],
        }),
    );
    let room = edge.rooms().find(|r| r.name == "r").unwrap();
    assert!(room.participants[&carol_sid].tracks.is_empty());
    assert!(edge.session_peers(carol).is_some(), "her session stays");
}

#[test]
fn an_edges_relay_on_a_large_origin_gets_the_audience_in_bounded_messages() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut origin = server(t0);
    join(&mut origin, now, claims("host", "r", true));
    let listeners = JOIN_PARTICIPANTS + UPDATE_PARTICIPANTS + 600;
    for i in 0..listeners {
        join(&mut origin, now, claims(&format!("l{i}"), "r", false));
    }
    drain(&mut origin);
    let (relay_session, _) = join(&mut origin, now, relay("edge-a", "ws://10.0.0.2:7880"));
    let outs = drain(&mut origin);
    let joined = outs
        .iter()
        .find_map(|o| match o {
            Output::Send(to, m) if *to == relay_session => match &m.message {
                Some(signal_response::Message::Join(j)) => Some(j.other_participants.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("the relay's join response");
    assert_eq!(joined.len(), JOIN_PARTICIPANTS);
    assert!(
        joined.iter().any(|p| p.identity == "host"),
        "publishers first"
    );
    now += TICK;
    let outs = fire(&mut origin, now);
    let sizes: Vec<usize> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Send(to, m) if *to == relay_session => match &m.message {
                Some(signal_response::Message::Update(u)) => Some(u.participants.len()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(sizes.iter().all(|n| *n <= UPDATE_PARTICIPANTS), "{sizes:?}");
    let mut seen: std::collections::BTreeSet<String> =
        joined.into_iter().map(|p| p.identity).collect();
    seen.extend(
        updates_for(&outs, relay_session)
            .into_iter()
            .map(|p| p.identity),
    );
    seen.remove("node:edge-a");
    assert_eq!(
        seen.len(),
        listeners + 1,
        "the whole room, once each at least"
    );
}
