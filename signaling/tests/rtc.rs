//! `/rtc` over a real WebSocket on 127.0.0.1, with str0m clients on real UDP sockets speaking
//! the LiveKit protocol as livekit-client does (two peer connections, subscriber primary).
//! Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::too_many_lines,
    deprecated
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use stoa_signaling::room::RoomLimits;
use stoa_signaling::service::ServiceConfig;
use stoa_signaling::token::{self};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_and_listeners_over_rtc() {
    let s = server().await;
    let room = "audio-room";

    // Speaker joins and publishes.
    let mut alice = Client::join(s.http, &mint("alice", grants(room, true))).await;
    let join = &alice.join;
    assert!(!join.server_info.as_ref().unwrap().version.is_empty());
    assert!(join.subscriber_primary);
    let perm = join
        .participant
        .as_ref()
        .unwrap()
        .permission
        .clone()
        .unwrap();
    assert!(perm.can_publish && perm.can_subscribe);
    assert!(
        alice
            .join
            .participant
            .as_ref()
            .unwrap()
            .sid
            .starts_with("PA_")
    );
    let track_sid = alice.publish().await;
    eventually("alice's connections", || {
        alice.publisher.lock().unwrap().connected && alice.subscriber.lock().unwrap().connected
    })
    .await;

    // A listener joins: sees alice and her track, gets an offer with LiveKit's stream id.
    let mut bob = Client::join(s.http, &mint("bob", grants(room, false))).await;
    let alice_info = bob
        .join
        .other_participants
        .iter()
        .find(|p| p.identity == "alice")
        .cloned();
    let alice_info = match alice_info {
        Some(a) if !a.tracks.is_empty() => a,
        _ => {
            bob.wait_for("alice's track", |m| match m {
                signal_response::Message::Update(u) => u
                    .participants
                    .iter()
                    .find(|p| p.identity == "alice" && !p.tracks.is_empty())
                    .cloned(),
                _ => None,
            })
            .await
        }
    };
    assert_eq!(alice_info.tracks[0].sid, track_sid);
    let offer = bob
        .wait_for("offer with alice's track", |m| match m {
            signal_response::Message::Offer(sd) if sd.sdp.contains("a=msid:") => Some(sd.clone()),
            _ => None,
        })
        .await;
    assert!(
        offer.sdp.contains(&format!(
            "a=msid:{}|{} {}",
            alice_info.sid, track_sid, track_sid
        )),
        "stream id must be PA|TR: {}",
        offer.sdp
    );
    assert_eq!(offer.mid_to_track_id.values().next(), Some(&track_sid));
    eventually("bob's subscriber connection", || {
        bob.subscriber.lock().unwrap().connected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Bob hears alice.
    send_audio(&alice, 60).await;
    eventually("bob hears alice", || bob.heard().len() >= 55).await;
    let heard = bob.heard();
    let mut seqs: Vec<u64> = heard.iter().map(|h| h.0).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), heard.len(), "no duplicates");

    // Bob may not publish: AddTrack and an offer with audio are refused.
    bob.send(signal_request::Message::AddTrack(lk::AddTrackRequest {
        cid: "evil".into(),
        r#type: lk::TrackType::Audio as i32,
        source: lk::TrackSource::Microphone as i32,
        ..Default::default()
    }))
    .await;
    let refused = bob
        .wait_for("AddTrack refusal", |m| match m {
            signal_response::Message::RequestResponse(r) => Some(r.clone()),
            signal_response::Message::TrackPublished(_) => panic!("listener got a track published"),
            _ => None,
        })
        .await;
    assert_eq!(
        refused.reason,
        lk::request_response::Reason::NotAllowed as i32
    );
    bob.offer_publisher("evil").await;
    bob.wait_for("offer refusal", |m| match m {
        signal_response::Message::RequestResponse(r) if r.message.contains("offer refused") => {
            Some(())
        }
        signal_response::Message::Answer(_) => panic!("listener's audio offer was answered"),
        _ => None,
    })
    .await;

    // A second listener is not announced to bob, but is to alice (a speaker).
    let mut carol = Client::join(s.http, &mint("carol", grants(room, false))).await;
    alice
        .wait_for("carol announced to the speaker", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .any(|p| p.identity == "carol")
                .then_some(()),
            _ => None,
        })
        .await;
    bob.drain_for(Duration::from_millis(700)).await;
    assert!(
        !bob.saw_participant(&carol.sid()),
        "listeners must not be announced to listeners"
    );
    // The audience size reaches everyone (audience updates go out at most once a second).
    bob.wait_for("the audience size", |m| match m {
        signal_response::Message::RoomUpdate(r) => r
            .room
            .as_ref()
            .is_some_and(|r| r.num_participants == 3)
            .then_some(()),
        _ => None,
    })
    .await;

    // Alice mutes: bob sees it, and the engine stops forwarding.
    alice
        .send(signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: true,
        }))
        .await;
    bob.wait_for("mute", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.identity == "alice" && p.tracks.iter().any(|t| t.sid == track_sid && t.muted)
            })
            .then_some(()),
        _ => None,
    })
    .await;
    let before = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bob.heard().len() <= before + 1,
        "muted audio still forwarded"
    );

    // Reactions ride on data packets: stamped with the sender's identity by the server.
    let reaction = lk::DataPacket {
        kind: lk::data_packet::Kind::Reliable as i32,
        participant_identity: "someone-else".into(),
        value: Some(lk::data_packet::Value::User(lk::UserPacket {
            payload: b"clap".to_vec(),
            topic: Some("reaction".into()),
            participant_identity: "spoofed".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    eventually("bob's data channel", || {
        bob.subscriber
            .lock()
            .unwrap()
            .channels
            .contains_key("_reliable")
    })
    .await;
    {
        let mut pc = alice.publisher.lock().unwrap();
        let id = *pc
            .channels
            .get("_reliable")
            .expect("alice's publisher data channel is open");
        pc.rtc
            .channel(id)
            .unwrap()
            .write(true, &reaction.encode_to_vec())
            .unwrap();
        pc.drain();
    }
    eventually("bob receives the reaction", || {
        !bob.subscriber.lock().unwrap().channel_data.is_empty()
    })
    .await;
    let got =
        lk::DataPacket::decode(bob.subscriber.lock().unwrap().channel_data[0].as_slice()).unwrap();
    assert_eq!(got.participant_identity, "alice");
    let Some(lk::data_packet::Value::User(user)) = got.value else {
        panic!("not a user packet")
    };
    assert_eq!(user.payload, b"clap");
    assert_eq!(
        user.participant_identity, "alice",
        "identity is stamped by the server"
    );

    // The engine's speaker detector reached bob: alice spoke loudly before muting.
    let alice_sid = alice.sid();
    bob.wait_for("alice as active speaker", |m| match m {
        signal_response::Message::SpeakersChanged(c) => c
            .speakers
            .iter()
            .any(|sp| sp.sid == alice_sid && sp.active)
            .then_some(()),
        _ => None,
    })
    .await;
    // The in-process observer (the control plane's speaking time) heard the same.
    eventually("the observer hears alice speaking", || {
        s.observed
            .lock()
            .unwrap()
            .contains(&("speaking_started".to_owned(), "alice".to_owned()))
    })
    .await;

    // Alice unmutes; bob unsubscribes (nothing forwarded), then subscribes again.
    alice
        .send(signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: false,
        }))
        .await;
    bob.wait_for("unmute", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.identity == "alice" && p.tracks.iter().any(|t| t.sid == track_sid && !t.muted)
            })
            .then_some(()),
        _ => None,
    })
    .await;
    let subscription = |subscribe| {
        signal_request::Message::Subscription(lk::UpdateSubscription {
            track_sids: vec![track_sid.clone()],
            subscribe,
            participant_tracks: vec![],
        })
    };
    bob.send(subscription(false)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bob.heard().len() <= before + 1,
        "unsubscribed audio still forwarded"
    );
    bob.send(subscription(true)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = bob.heard().len();
    send_audio(&alice, 30).await;
    eventually("bob hears alice again", || bob.heard().len() >= before + 25).await;

    // A host force-mutes alice: her client is told, bob sees it, the engine stops forwarding.
    let muted = s
        .signaling
        .mute_published_track(room, "alice", &track_sid, true)
        .await
        .unwrap();
    assert!(muted.muted);
    alice
        .wait_for("server mute", |m| match m {
            signal_response::Message::Mute(m) => (m.sid == track_sid && m.muted).then_some(()),
            _ => None,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bob.heard().len() <= before + 1,
        "force-muted audio still forwarded"
    );

    // A listener invited on stage can publish at once, without reconnecting, and is heard.
    let perm = lk::ParticipantPermission {
        can_subscribe: true,
        can_publish: true,
        can_publish_data: true,
        can_publish_sources: vec![lk::TrackSource::Microphone as i32],
        ..Default::default()
    };
    s.signaling
        .update_permission(room, "carol", perm)
        .await
        .unwrap();
    carol
        .wait_for("carol's own permission update", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .any(|p| {
                    p.identity == "carol" && p.permission.as_ref().is_some_and(|x| x.can_publish)
                })
                .then_some(()),
            _ => None,
        })
        .await;
    let carol_track = carol.publish().await;
    bob.wait_for("carol on stage with a track", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| p.identity == "carol" && p.tracks.iter().any(|t| t.sid == carol_track))
            .then_some(()),
        _ => None,
    })
    .await;
    eventually("carol's publisher connection", || {
        carol.publisher.lock().unwrap().connected
    })
    .await;
    bob.drain_for(Duration::from_millis(300)).await;
    let before = bob.heard().len();
    send_audio(&carol, 40).await;
    eventually("bob hears carol", || bob.heard().len() >= before + 35).await;

    // Revoking alice's publish permission unpublishes her track at once.
    let perm = lk::ParticipantPermission {
        can_subscribe: true,
        can_publish: false,
        can_publish_data: true,
        ..Default::default()
    };
    let info = s
        .signaling
        .update_permission(room, "alice", perm)
        .await
        .unwrap();
    assert!(!info.permission.unwrap().can_publish);
    alice
        .wait_for("track_unpublished", |m| match m {
            signal_response::Message::TrackUnpublished(t) => {
                (t.track_sid == track_sid).then_some(())
            }
            _ => None,
        })
        .await;

    // As a listener now, alice leaves bob's view (listeners do not see listeners)...
    let gone = |m: &signal_response::Message| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.sid == alice_sid && p.state == lk::participant_info::State::Disconnected as i32
            })
            .then_some(()),
        _ => None,
    };
    bob.wait_for("alice out of a listener's view", gone).await;
    // ...and comes back into it when she may speak again.
    let perm = lk::ParticipantPermission {
        can_subscribe: true,
        can_publish: true,
        can_publish_data: true,
        ..Default::default()
    };
    s.signaling
        .update_permission(room, "alice", perm)
        .await
        .unwrap();
    bob.log.clear();
    bob.wait_for("alice back on stage", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.sid == alice_sid
                    && p.state != lk::participant_info::State::Disconnected as i32
                    && p.permission.as_ref().is_some_and(|x| x.can_publish)
            })
            .then_some(()),
        _ => None,
    })
    .await;

    // Alice leaves; bob sees her go.
    alice
        .send(signal_request::Message::Leave(lk::LeaveRequest::default()))
        .await;
    bob.wait_for("alice disconnected", gone).await;
    drop(carol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_isolated() {
    let s = server().await;
    let room = "r";

    // Tokens: forged, expired, wrong room grant missing.
    let forged = token::mint(
        KEY,
        "not-the-secret",
        "x",
        None,
        grants(room, true),
        Duration::from_secs(600),
        now_unix(),
    )
    .unwrap();
    let (status, body) = connect_ws(s.http, &forged).await.err().unwrap();
    assert_eq!(status, 401, "{body}");
    let expired = token::mint(
        KEY,
        SECRET,
        "x",
        None,
        grants(room, true),
        Duration::from_secs(60),
        now_unix() - 3600,
    )
    .unwrap();
    let (status, _) = connect_ws(s.http, &expired).await.err().unwrap();
    assert_eq!(status, 401);
    let (status, _) = connect_ws(s.http, "garbage").await.err().unwrap();
    assert_eq!(status, 401);

    // A v1 join whose join_request cannot be read is a bad request that says why (with CORS,
    // so that livekit-client's validate fetch can read it); a missing one too.
    for (join_request, why) in [
        ("", "join_request is missing"),
        ("&join_request=%21%21", "invalid join_request: not base64"),
        (
            "&join_request=AAAA",
            "invalid join_request: not a WrappedJoinRequest",
        ),
    ] {
        let http = reqwest_like_get(
            s.http,
            &format!(
                "/rtc/v1/validate?access_token={}{join_request}",
                mint("v1", grants(room, false))
            ),
        )
        .await;
        assert!(http.starts_with("HTTP/1.1 400"), "{http}");
        assert!(http.contains(why), "{why}: {http}");
        assert!(
            http.to_ascii_lowercase()
                .contains("access-control-allow-origin: *"),
            "{http}"
        );
    }
    let ok = reqwest_like_get(
        s.http,
        &format!(
            "/rtc/validate?access_token={}",
            mint("v", grants(room, false))
        ),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    // A good session in the room.
    let mut good = Client::join(s.http, &mint("good", grants(room, true))).await;

    // Malformed protobuf: that session is closed with a reason; the good one is untouched.
    let mut bad = connect_ws(s.http, &mint("bad", grants(room, false)))
        .await
        .unwrap();
    let first = next_response(&mut bad).await.unwrap();
    assert!(matches!(first, signal_response::Message::Join(_)));
    bad.send(WsMessage::Binary(vec![0xff, 0xff, 0xff, 0x01, 0x02].into()))
        .await
        .unwrap();
    let reason = loop {
        match tokio::time::timeout(WAIT, bad.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(reason.contains("malformed signal request"), "{reason}");

    // Garbage SDP gets an error response, the session stays.
    good.send(signal_request::Message::Offer(lk::SessionDescription {
        r#type: "offer".into(),
        sdp: "this is not sdp".into(),
        id: 7,
        ..Default::default()
    }))
    .await;
    let err = good
        .wait_for("SDP error", |m| match m {
            signal_response::Message::RequestResponse(r) => Some(r.message.clone()),
            _ => None,
        })
        .await;
    assert!(err.contains("malformed SDP"), "{err}");
    good.send(signal_request::Message::Ping(42)).await;
    good.wait_for("pong", |m| {
        matches!(m, signal_response::Message::Pong(42)).then_some(())
    })
    .await;

    // Out-of-order and unknown ids: an answer nobody asked for, a mute of an unknown track.
    good.send(signal_request::Message::Mute(lk::MuteTrackRequest {
        sid: "TR_nope".into(),
        muted: true,
    }))
    .await;
    good.send(signal_request::Message::PingReq(lk::Ping {
        timestamp: 5,
        rtt: 0,
    }))
    .await;
    good.wait_for("pong after junk", |m| match m {
        signal_response::Message::PongResp(p) => (p.last_ping_timestamp == 5).then_some(()),
        _ => None,
    })
    .await;

    // A duplicate identity replaces the older session.
    let _again = Client::join(s.http, &mint("good", grants(room, true))).await;
    good.wait_for("duplicate identity leave", |m| match m {
        signal_response::Message::Leave(l) => {
            (l.reason == lk::DisconnectReason::DuplicateIdentity as i32).then_some(())
        }
        _ => None,
    })
    .await;
    let list = s.signaling.list_participants(room).await.unwrap();
    assert_eq!(list.iter().filter(|p| p.identity == "good").count(), 1);
}

/// `SpeakersChanged` carries changes only: one who joins while someone speaks steadily (the
/// same level in every packet, so no change follows) still learns at once who is speaking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_learns_who_is_speaking() {
    let s = server().await;
    let room = "steady";
    let mut alice = Client::join(s.http, &mint("alice", grants(room, true))).await;
    alice.publish().await;
    eventually("alice's connections", || {
        alice.publisher.lock().unwrap().connected && alice.subscriber.lock().unwrap().connected
    })
    .await;
    let speaking = Arc::new(AtomicBool::new(true));
    let (publisher, on) = (alice.publisher.clone(), speaking.clone());
    let tone = tokio::spawn(async move {
        let end = Instant::now() + Duration::from_secs(30);
        while on.load(Ordering::Relaxed) && Instant::now() < end {
            publisher.lock().unwrap().send_audio();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let alice_sid = alice.sid();
    alice
        .wait_for("alice as active speaker", |m| match m {
            signal_response::Message::SpeakersChanged(c) => c
                .speakers
                .iter()
                .any(|sp| sp.sid == alice_sid && sp.active)
                .then_some(()),
            _ => None,
        })
        .await;
    // The smoothed level settles; from here on nothing changes.
    alice.drain_for(Duration::from_millis(1500)).await;

    let mut bob = Client::join(s.http, &mint("bob", grants(room, false))).await;
    let current = bob
        .wait_for("the speakers of the moment", |m| match m {
            signal_response::Message::SpeakersChanged(c) => c
                .speakers
                .iter()
                .find(|sp| sp.sid == alice_sid && sp.active)
                .cloned(),
            _ => None,
        })
        .await;
    assert!(current.level > 0.0, "{current:?}");
    speaking.store(false, Ordering::Relaxed);
    tone.await.unwrap();
}

/// A session whose pings stop is closed without a leave and held (its connection was lost, not
/// its place in the room): its client resumes it over a new WebSocket with `reconnect=1&sid=…`
/// and is answered with a `ReconnectResponse` first. A resume with another identity's token is
/// refused; one for an unknown sid is told to rejoin in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stops_pinging_is_held_and_resumed_over_a_new_connection() {
    let s = server_with(ServiceConfig {
        ping_interval: 1,
        ping_timeout: 1,
        ..ServiceConfig::default()
    })
    .await;
    // This client never pings.
    let mut bob = Client::join(s.http, &mint("bob", grants("quiet", false))).await;
    let sid = bob.sid();
    let resumable = bob
        .join
        .client_configuration
        .as_ref()
        .map(|c| c.resume_connection);
    assert_eq!(resumable, Some(lk::ClientConfigSetting::Enabled as i32));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, next_response(&mut bob.ws)).await {
            Ok(Some(signal_response::Message::Leave(l))) => panic!("told to leave: {l:?}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => panic!("the silent session was not closed"),
        }
    }

    // Someone else's valid token cannot take the held session over.
    let eve = mint("eve", grants("quiet", false));
    let extra = format!("&reconnect=1&sid={sid}");
    if let Ok(mut ws) = connect_ws_with(s.http, &eve, &extra).await {
        let first = tokio::time::timeout(WAIT_SHORT, next_response(&mut ws)).await;
        assert!(
            !matches!(first, Ok(Some(signal_response::Message::Reconnect(_)))),
            "another identity resumed bob's session"
        );
    }

    // Its own token resumes it: ReconnectResponse first, then everyone it sees (itself too).
    let token = mint("bob", grants("quiet", false));
    let mut ws = connect_ws_with(s.http, &token, &extra).await.unwrap();
    let first = next_response(&mut ws).await.expect("a response");
    let signal_response::Message::Reconnect(r) = first else {
        panic!("first message of a resume must be the reconnect response, got {first:?}");
    };
    assert!(r.server_info.is_some());
    let second = next_response(&mut ws).await.expect("a response");
    let signal_response::Message::Update(u) = second else {
        panic!("then a participant update, got {second:?}");
    };
    assert!(u.participants.iter().any(|p| p.sid == sid));

    // An unknown participant: rejoin in full.
    let mut ws = connect_ws_with(s.http, &token, "&reconnect=1&sid=PA_unknown")
        .await
        .unwrap();
    let first = next_response(&mut ws).await.expect("a response");
    let signal_response::Message::Leave(leave) = first else {
        panic!("an unknown sid must be told to rejoin, got {first:?}");
    };
    assert_eq!(leave.action, lk::leave_request::Action::Reconnect as i32);
    assert!(leave.can_reconnect);
    assert_eq!(leave.reason, lk::DisconnectReason::StateMismatch as i32);
}

/// How long a refused resume may take to show.
const WAIT_SHORT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_participants_is_enforced_and_rooms_created_by_api() {
    let s = server().await;
    let limits = RoomLimits {
        max_participants: 1,
        ..RoomLimits::default()
    };
    let created = s.signaling.create_room("small", limits).await.unwrap();
    assert!(created.sid.starts_with("RM_"));
    assert_eq!(created.max_participants, 1);
    let again = s
        .signaling
        .create_room("small", RoomLimits::default())
        .await
        .unwrap();
    assert_eq!(again.sid, created.sid, "CreateRoom is idempotent");

    let first = Client::join(s.http, &mint("first", grants("small", false))).await;
    assert_eq!(first.join.room.as_ref().unwrap().sid, created.sid);
    let (status, body) = connect_ws(s.http, &mint("second", grants("small", false)))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("full"), "{body}");
    // The same identity may still reconnect (it replaces itself).
    let _again = Client::join(s.http, &mint("first", grants("small", false))).await;
    drop(first);
}

/// A minimal HTTP/1.1 GET over a plain TCP connection; returns the raw response head and body.
async fn reqwest_like_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Signal messages larger than the WebSocket's read chunk (4 KiB) still arrive whole, up to the
/// 64 KiB limit; a larger one ends that session only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_signal_messages_arrive_whole() {
    let s = server().await;
    let mut ws = connect_ws(s.http, &mint("big", grants("large", false)))
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, next_response(&mut ws))
        .await
        .unwrap();
    assert!(matches!(first, Some(signal_response::Message::Join(_))));
    // A ping request padded with an unknown protobuf field (number 1000, bytes), which
    // decoders skip: the reply proves the whole frame was read and decoded.
    let padded = |pad: usize, ts: i64| {
        let mut bytes = lk::SignalRequest {
            message: Some(signal_request::Message::PingReq(lk::Ping {
                timestamp: ts,
                rtt: 0,
            })),
        }
        .encode_to_vec();
        prost::encoding::encode_key(1000, prost::encoding::WireType::LengthDelimited, &mut bytes);
        prost::encoding::encode_varint(pad as u64, &mut bytes);
        bytes.extend(std::iter::repeat_n(b'x', pad));
        bytes
    };
    let big = padded(40 * 1024, 4242);
    assert!(big.len() > 10 * 4096);
    ws.send(WsMessage::Binary(big.into())).await.unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match next_response(&mut ws).await {
                Some(signal_response::Message::PongResp(p)) => return Some(p),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .unwrap()
    .expect("a pong for the padded ping");
    assert_eq!(pong.last_ping_timestamp, 4242);

    // Over the limit: the session ends; the server goes on serving others.
    let huge = padded(80 * 1024, 1);
    let _ = ws.send(WsMessage::Binary(huge.into())).await;
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if next_response(&mut ws).await.is_none() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an oversized frame ends the session");
    let other = Client::join(s.http, &mint("other", grants("large", false))).await;
    assert!(!other.sid().is_empty());
}
