//! Room-wide counts in clients' room snapshots, in the signaling core alone (`proto::Server` on
//! a virtual clock): the control plane tells the core how many people are connected to a room
//! through other nodes (`AdminOp::PresentElsewhere`), and `Room.num_participants` in
//! `JoinResponse` and `RoomUpdate` counts them with the node's own connected sessions (by the
//! control plane's rule of presence), each person once (an edge's mirror of an origin's
//! speaker is counted by the origin, a relay link never).
//! Audience updates reach each client at most once a second, and not when the counts did not
//! change. Deterministic: fixed seed, simulated time, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::signal_response;
use prost::Message as _;
use stoa_sfu::str0m::RtcConfig;
use stoa_sfu::str0m::media::{Direction, MediaKind};
use stoa_sfu::{EngineCommand, Event};
use stoa_signaling::join::parse_query;
use stoa_signaling::proto::{
    AdminOp, AdminReply, Output, ParticipantUpdate, ROOM_UPDATE_EVERY, ROSTER_BATCH,
    ROSTER_PACKETS_PER_TICK, ROSTER_TOPIC, RelayOutput, Server, ServerConfig, SessionId,
};
use stoa_signaling::token::Claims;

mod core_support;
use core_support::{claims, drain};

const TICK: Duration = Duration::from_millis(100);

fn server(t0: Instant) -> Server {
    Server::new(ServerConfig::default(), t0, 1_700_000_000_000)
}

/// A legacy (two-connection) client joins; its session, not connected yet (`JOINED`).
fn join_only(s: &mut Server, now: Instant, c: Claims) -> SessionId {
    let params = parse_query("access_token=x&protocol=17&auto_subscribe=1").unwrap();
    s.connect(now, c, params).unwrap()
}

/// The client's connection comes up: `ACTIVE`, counted by presence.
fn connect(s: &mut Server, now: Instant, session: SessionId) {
    let (_, subscriber) = s.session_peers(session).unwrap();
    s.handle_engine_event(now, Event::Connected(subscriber.unwrap()));
}

/// A client joins and connects.
fn join(s: &mut Server, now: Instant, c: Claims) -> SessionId {
    let session = join_only(s, now, c);
    connect(s, now, session);
    session
}

/// `(num_participants, num_publishers)` of the JoinResponse `session` got among `outs`.
fn joined_counts(outs: &[Output], session: SessionId) -> Option<(u32, u32)> {
    outs.iter().find_map(|o| match o {
        Output::Send(to, m) if *to == session => match &m.message {
            Some(signal_response::Message::Join(j)) => j
                .room
                .as_ref()
                .map(|r| (r.num_participants, r.num_publishers)),
            _ => None,
        },
        _ => None,
    })
}

/// `(num_participants, num_publishers)` of every RoomUpdate `session` got among `outs`.
fn room_updates(outs: &[Output], session: SessionId) -> Vec<(u32, u32)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(to, m) if *to == session => match &m.message {
                Some(signal_response::Message::RoomUpdate(u)) => u
                    .room
                    .as_ref()
                    .map(|r| (r.num_participants, r.num_publishers)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Runs the core's timers for `d`, returning every output.
fn run(s: &mut Server, now: &mut Instant, d: Duration) -> Vec<Output> {
    let end = *now + d;
    let mut outs = Vec::new();
    while *now < end {
        *now += TICK;
        s.handle_timeout(*now);
        outs.extend(drain(s));
    }
    outs
}

fn elsewhere(s: &mut Server, now: Instant, room: &str, n: u32) -> bool {
    match s
        .handle_admin(
            now,
            AdminOp::PresentElsewhere {
                room: room.into(),
                participants: n,
            },
        )
        .unwrap()
    {
        AdminReply::Count(c) => c == 1,
        other => panic!("{other:?}"),
    }
}

#[test]
fn snapshot_counts_people_on_other_nodes() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = server(t0);
    let a = join(&mut s, now, claims("a", "r", false));
    let outs = drain(&mut s);
    assert_eq!(joined_counts(&outs, a), Some((1, 0)), "alone, as before");
    let outs = run(&mut s, &mut now, ROOM_UPDATE_EVERY);
    assert_eq!(room_updates(&outs, a), vec![(1, 0)]);

    // Told of people elsewhere: the next update counts the whole room.
    assert!(elsewhere(&mut s, now, "r", 5));
    let outs = run(&mut s, &mut now, ROOM_UPDATE_EVERY);
    assert_eq!(room_updates(&outs, a), vec![(6, 0)]);

    // Told the same again: nothing new to send.
    assert!(elsewhere(&mut s, now, "r", 5));
    let outs = run(&mut s, &mut now, 3 * ROOM_UPDATE_EVERY);
    assert!(room_updates(&outs, a).is_empty(), "{outs:?}");

    // A local join counts, like presence, once its client connected (as a publisher too):
    // its JoinResponse counts the whole room without it, everyone's next update with it.
    let b = join_only(&mut s, now, claims("b", "r", true));
    let outs = drain(&mut s);
    assert_eq!(joined_counts(&outs, b), Some((6, 0)));
    let outs = run(&mut s, &mut now, ROOM_UPDATE_EVERY);
    assert!(room_updates(&outs, a).is_empty(), "nothing changed yet");
    connect(&mut s, now, b);
    let outs = run(&mut s, &mut now, ROOM_UPDATE_EVERY);
    assert_eq!(room_updates(&outs, a), vec![(7, 1)]);
    assert_eq!(room_updates(&outs, b), vec![(7, 1)]);

    // The node's own view (what a room-wide Twirp listing sums over nodes) stays its own.
    match s
        .handle_admin(now, AdminOp::ListRooms { names: vec![] })
        .unwrap()
    {
        AdminReply::Rooms(rooms) => assert_eq!(rooms[0].num_participants, 2),
        other => panic!("{other:?}"),
    }
    let listed = match s
        .handle_admin(now, AdminOp::ListHeld { room: "r".into() })
        .unwrap()
    {
        AdminReply::Participants(p) => p.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed, 2);

    // A room not open here keeps nothing, and is not opened.
    assert!(!elsewhere(&mut s, now, "other", 3));
    assert_eq!(s.rooms().count(), 1);
    assert!(s.room_snapshot("other").is_none());
}

#[test]
fn a_join_storm_updates_each_client_once_a_second() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = server(t0);
    let a = join(&mut s, now, claims("a", "r", false));
    drain(&mut s);
    run(&mut s, &mut now, ROOM_UPDATE_EVERY);

    // 300 listeners join here over three seconds, while the control plane reports the
    // other nodes' growing audience every 100 ms: 100 changes a second.
    let mut seen: Vec<(Instant, (u32, u32))> = Vec::new();
    let mut note = |now: Instant, outs: &[Output]| {
        seen.extend(room_updates(outs, a).into_iter().map(|c| (now, c)));
    };
    for i in 0..300u32 {
        join(&mut s, now, claims(&format!("l{i}"), "r", false));
        if i % 10 == 9 {
            elsewhere(&mut s, now, "r", i * 2);
            now += TICK;
            s.handle_timeout(now);
        }
        let outs = drain(&mut s);
        note(now, &outs);
    }
    for _ in 0..20 {
        now += TICK;
        s.handle_timeout(now);
        let outs = drain(&mut s);
        note(now, &outs);
    }
    // Never two within a second; the last one exact once the storm is over.
    assert!(seen.len() >= 3, "{seen:?}");
    for pair in seen.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_secs(1),
            "one update a second, not one per change: {seen:?}"
        );
    }
    assert_eq!(seen.last().map(|(_, c)| *c), Some((1 + 300 + 299 * 2, 0)));
}

/// The edge relays room "r" from an origin: its relay peer, the link open.
fn link(edge: &mut Server, now: Instant) -> stoa_sfu::PeerId {
    edge.handle_admin(
        now,
        AdminOp::RelayFrom {
            room: "r".into(),
            origin: "ws://127.0.0.1:7880".into(),
        },
    )
    .unwrap();
    let relay_peer = drain(edge)
        .iter()
        .find_map(|o| match o {
            Output::Engine(EngineCommand::CreateRelayPeer { peer, .. }) => Some(*peer),
            _ => None,
        })
        .expect("CreateRelayPeer");
    let mut rtc = RtcConfig::new().build(now);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let offer = api.apply().unwrap().0;
    edge.handle_engine_event(
        now,
        Event::Offer {
            peer: relay_peer,
            offer,
            slots: vec![],
        },
    );
    assert!(
        drain(edge)
            .iter()
            .any(|o| matches!(o, Output::Relay(RelayOutput::Open { .. })))
    );
    relay_peer
}

#[test]
fn an_edge_counts_its_mirror_of_the_origins_speaker_once() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut edge = server(t0);
    let listener = join(&mut edge, now, claims("l1", "r", false));
    drain(&mut edge);

    // The edge relays the room from its origin, which shows it one speaker.
    link(&mut edge, now);
    let speaker = lk::ParticipantInfo {
        sid: "PA_s".into(),
        identity: "alice".into(),
        state: State::Active as i32,
        version: 1,
        permission: Some(lk::ParticipantPermission {
            can_publish: true,
            can_subscribe: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let join_response = lk::JoinResponse {
        other_participants: vec![speaker],
        ..Default::default()
    };
    edge.handle_relay_response(now, "r", signal_response::Message::Join(join_response));
    let outs = run(&mut edge, &mut now, ROOM_UPDATE_EVERY);
    assert_eq!(
        room_updates(&outs, listener).last(),
        Some(&(2, 1)),
        "before the control plane said: this node's listener and mirror"
    );

    // The control plane counts alice and three listeners on the origin: the mirror of alice
    // is not counted again, the publisher count stays the mirror's.
    assert!(elsewhere(&mut edge, now, "r", 4));
    let outs = run(&mut edge, &mut now, ROOM_UPDATE_EVERY);
    assert_eq!(room_updates(&outs, listener), vec![(5, 1)]);
    let late = join(&mut edge, now, claims("l2", "r", false));
    let outs = drain(&mut edge);
    assert_eq!(
        joined_counts(&outs, late),
        Some((5, 1)),
        "not counted before connecting"
    );
    let outs = run(&mut edge, &mut now, ROOM_UPDATE_EVERY);
    assert_eq!(room_updates(&outs, late), vec![(6, 1)]);
    assert_eq!(room_updates(&outs, listener), vec![(6, 1)]);
}

/// The roster announcements the edge sent to the origin on `peer`'s channel among `outs`:
/// one `ParticipantUpdate` per packet.
fn announcements(outs: &[Output], peer: stoa_sfu::PeerId) -> Vec<Vec<lk::ParticipantInfo>> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Engine(EngineCommand::SendData { targets, data, .. })
                if targets.iter().any(|(p, _)| *p == peer) =>
            {
                let packet = lk::DataPacket::decode(&data[..]).ok()?;
                match packet.value? {
                    lk::data_packet::Value::User(u) if u.topic.as_deref() == Some(ROSTER_TOPIC) => {
                        Some(
                            lk::ParticipantUpdate::decode(u.payload.as_slice())
                                .ok()?
                                .participants,
                        )
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

#[test]
fn an_edge_announces_the_people_it_holds_to_the_origin_in_batches() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut edge = server(t0);
    join(&mut edge, now, claims("first", "r", false));
    drain(&mut edge);
    let relay_peer = link(&mut edge, now);

    // Before the link's reliable channel opens, nothing can go; once it does, everyone held
    // here is announced (a new link is a new relay session on the origin).
    for i in 0..99 {
        join(&mut edge, now, claims(&format!("l{i}"), "r", false));
    }
    let outs = run(&mut edge, &mut now, TICK);
    assert!(announcements(&outs, relay_peer).is_empty());
    let mut rtc = RtcConfig::new().build(now);
    let channel = rtc.sdp_api().add_channel("_reliable".into());
    edge.handle_engine_event(
        now,
        Event::ChannelOpen {
            peer: relay_peer,
            channel,
            label: "_reliable".into(),
        },
    );
    let outs = run(&mut edge, &mut now, TICK);
    let packets = announcements(&outs, relay_peer);
    assert_eq!(
        packets.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![ROSTER_BATCH, 100 - ROSTER_BATCH],
        "one snapshot per person, in packets of at most {ROSTER_BATCH}"
    );
    let mut identities: Vec<String> = packets.concat().into_iter().map(|p| p.identity).collect();
    identities.sort();
    identities.dedup();
    assert_eq!(identities.len(), 100, "each once");

    // Quiet: nothing more. A change and a leave: one snapshot each, the newest.
    let outs = run(&mut edge, &mut now, ROOM_UPDATE_EVERY);
    assert!(announcements(&outs, relay_peer).is_empty());
    edge.handle_admin(
        now,
        AdminOp::UpdateParticipant {
            room: "r".into(),
            identity: "l7".into(),
            update: Box::new(ParticipantUpdate {
                metadata: "seat b7".into(),
                ..Default::default()
            }),
        },
    )
    .unwrap();
    edge.handle_admin(
        now,
        AdminOp::UpdateParticipant {
            room: "r".into(),
            identity: "l7".into(),
            update: Box::new(ParticipantUpdate {
                metadata: "seat c3".into(),
                ..Default::default()
            }),
        },
    )
    .unwrap();
    edge.handle_admin(
        now,
        AdminOp::RemoveParticipant {
            room: "r".into(),
            identity: "first".into(),
        },
    )
    .unwrap();
    let outs = run(&mut edge, &mut now, TICK);
    let sent = announcements(&outs, relay_peer).concat();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let l7 = sent.iter().find(|p| p.identity == "l7").unwrap();
    assert_eq!(l7.metadata, "seat c3");
    let gone = sent.iter().find(|p| p.identity == "first").unwrap();
    assert_eq!(gone.state, State::Disconnected as i32);

    // The link ends: nothing is kept for it; a new link's channel announces everyone again.
    edge.handle_admin(now, AdminOp::StopRelay { room: "r".into() })
        .unwrap();
    join(&mut edge, now, claims("late", "r", false));
    let relay_peer = link(&mut edge, now);
    let outs = run(&mut edge, &mut now, TICK);
    assert!(announcements(&outs, relay_peer).is_empty());
    let mut rtc = RtcConfig::new().build(now);
    let channel = rtc.sdp_api().add_channel("_reliable".into());
    edge.handle_engine_event(
        now,
        Event::ChannelOpen {
            peer: relay_peer,
            channel,
            label: "_reliable".into(),
        },
    );
    let outs = run(&mut edge, &mut now, TICK);
    assert_eq!(announcements(&outs, relay_peer).concat().len(), 100);
}

#[test]
fn an_edge_spreads_a_large_first_announcement_over_ticks() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut edge = server(t0);
    let relay_peer = link(&mut edge, now);
    let n = ROSTER_BATCH * ROSTER_PACKETS_PER_TICK * 2 + 10;
    for i in 0..n {
        join(&mut edge, now, claims(&format!("l{i}"), "r", false));
    }
    let mut rtc = RtcConfig::new().build(now);
    let channel = rtc.sdp_api().add_channel("_reliable".into());
    edge.handle_engine_event(
        now,
        Event::ChannelOpen {
            peer: relay_peer,
            channel,
            label: "_reliable".into(),
        },
    );
    let mut per_tick = Vec::new();
    for _ in 0..5 {
        let outs = run(&mut edge, &mut now, TICK);
        per_tick.push(announcements(&outs, relay_peer).concat().len());
    }
    let full = ROSTER_BATCH * ROSTER_PACKETS_PER_TICK;
    assert_eq!(
        per_tick,
        vec![full, full, 10, 0, 0],
        "bounded a tick, all sent"
    );
}
