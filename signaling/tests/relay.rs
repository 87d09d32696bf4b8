//! A room across two nodes over real sockets on 127.0.0.1: two signaling services, each over
//! its own engine (real UDP), in one process. A speaker publishes Opus on the origin; a
//! listener joins the same room on the edge; `relay_from` on the edge opens its relay link (a
//! WebSocket to the origin's `/rtc/v1` with a relay token, the engine's relay peer, ICE and
//! DTLS between the two engines) and the listener sees the speaker and hears its packets,
//! in order, through the edge's engine, with the edge's speaker detection naming it; the
//! relay is not seen or counted on the origin; the link stopped by the edge, made again, and
//! ended by the origin closing the room. The clients are the str0m clients of `rtc.rs`.
//! Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::too_many_lines,
    dead_code,
    deprecated
)]

use std::time::Duration;

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use stoa_signaling::service::{RelayAuth, SendData, ServiceConfig};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_listener_hears_the_origins_speaker_through_the_relay() {
    let origin = server_seeded(ServiceConfig::default(), [1; 32]).await;
    let edge = server_seeded(
        ServiceConfig {
            relay: Some(RelayAuth {
                node: "edge-1".into(),
                api_key: KEY.into(),
                secret: SECRET.into(),
                ttl: Duration::from_secs(60),
                tls: None,
                url: None,
                nodes: Default::default(),
            }),
            ..ServiceConfig::default()
        },
        [2; 32],
    )
    .await;
    let room = "spread";

    // The speaker publishes on the origin.
    let mut alice = Client::join(origin.http, &mint("alice", grants(room, true))).await;
    let track_sid = alice.publish().await;
    eventually("alice's connections", || {
        alice.publisher.lock().unwrap().connected && alice.subscriber.lock().unwrap().connected
    })
    .await;

    // A listener joins the room on the edge: nobody speaks there yet.
    let mut bob = Client::join(edge.http, &mint("bob", grants(room, false))).await;
    assert!(bob.join.other_participants.is_empty());
    eventually("bob's subscriber connection", || {
        bob.subscriber.lock().unwrap().connected
    })
    .await;

    // The edge relays the room from the origin.
    edge.signaling
        .relay_from(room, &format!("http://{}", origin.http))
        .await
        .unwrap();

    // Bob sees alice as on the origin: same sid, identity and track sid.
    let mirrored = bob
        .wait_for("alice mirrored on the edge", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.identity == "alice" && !p.tracks.is_empty())
                .cloned(),
            _ => None,
        })
        .await;
    assert_eq!(mirrored.sid, alice.sid());
    assert_eq!(mirrored.tracks[0].sid, track_sid);
    // And is offered her track under the origin's sids.
    let offer = bob
        .wait_for("offer with alice's relayed track", |m| match m {
            signal_response::Message::Offer(sd) if sd.sdp.contains("a=msid:") => Some(sd.clone()),
            _ => None,
        })
        .await;
    assert!(
        offer.sdp.contains(&format!(
            "a=msid:{}|{} {}",
            alice.sid(),
            track_sid,
            track_sid
        )),
        "{}",
        offer.sdp
    );
    bob.drain_for(Duration::from_millis(300)).await;

    // Bob hears alice through the relay, each packet once and in order (loopback: nothing
    // lost; a few packets sent before the link's m-line was live may be missing at the start).
    let before = alice.publisher.lock().unwrap().sent;
    send_audio(&alice, 100).await;
    eventually("bob hears alice through the relay", || {
        bob.heard().iter().filter(|h| h.1 >= before).count() >= 90
    })
    .await;
    let heard: Vec<u32> = bob
        .heard()
        .iter()
        .map(|h| h.1)
        .filter(|i| *i >= before)
        .collect();
    assert!(
        heard.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {heard:?}"
    );
    assert!(heard.iter().all(|i| *i < before + 100));

    // The edge's engine hears her speak: announced under her sid.
    bob.wait_for("alice speaking, announced on the edge", |m| match m {
        signal_response::Message::SpeakersChanged(c) => c
            .speakers
            .iter()
            .find(|s| s.sid == alice.sid() && s.active)
            .map(|_| ()),
        _ => None,
    })
    .await;

    // Alice's data packet (a chat line, a reaction of her client) reaches bob through the
    // relay's data channel, as hers.
    let packet = |payload: &[u8], topic: &str| {
        lk::DataPacket {
            kind: lk::data_packet::Kind::Reliable as i32,
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload: payload.to_vec(),
                topic: Some(topic.into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec()
    };
    {
        let mut pc = alice.publisher.lock().unwrap();
        let id = *pc.channels.get("_reliable").expect("alice's data channel");
        let mut channel = pc.rtc.channel(id).expect("open");
        channel.write(true, &packet(b"hello edge", "chat")).unwrap();
        pc.drain();
    }
    let received = |bob: &Client, payload: &[u8]| -> Vec<lk::DataPacket> {
        bob.subscriber
            .lock()
            .unwrap()
            .channel_data
            .iter()
            .filter_map(|d| lk::DataPacket::decode(d.as_slice()).ok())
            .filter(|p| {
                matches!(&p.value, Some(lk::data_packet::Value::User(u)) if u.payload == payload)
            })
            .collect()
    };
    eventually("bob receives alice's data through the relay", || {
        !received(&bob, b"hello edge").is_empty()
    })
    .await;
    let got = received(&bob, b"hello edge");
    assert_eq!(got.len(), 1, "once");
    assert_eq!(got[0].participant_identity, "alice");
    assert_eq!(got[0].participant_sid, alice.sid());

    // The server's own data (RoomService SendData) is sent by each node to its own sessions:
    // the origin's does not also cross the relay, so bob gets the edge's copy only, once.
    let server_data = |payload: &[u8]| SendData {
        payload: payload.to_vec(),
        reliable: true,
        ..Default::default()
    };
    origin
        .signaling
        .send_data(room, server_data(b"from the server"))
        .await
        .unwrap();
    edge.signaling
        .send_data(room, server_data(b"from the server"))
        .await
        .unwrap();
    eventually("bob receives the server's data", || {
        !received(&bob, b"from the server").is_empty()
    })
    .await;
    // A relayed copy would arrive after the origin's send; alice's next packet, sent after
    // it, marks that everything before it crossed.
    {
        let mut pc = alice.publisher.lock().unwrap();
        let id = *pc.channels.get("_reliable").expect("alice's data channel");
        let mut channel = pc.rtc.channel(id).expect("open");
        channel.write(true, &packet(b"marker", "chat")).unwrap();
        pc.drain();
    }
    eventually("alice's marker", || !received(&bob, b"marker").is_empty()).await;
    assert_eq!(received(&bob, b"from the server").len(), 1, "once");

    // Bob's own data (his client opens a data-only publisher connection, as listeners'
    // clients do) reaches alice on the origin through the relay, as his.
    let offer = {
        let mut pc = bob.publisher.lock().unwrap();
        let mut api = pc.rtc.sdp_api();
        api.add_channel("_reliable".into());
        let (offer, pending) = api.apply().unwrap();
        bob.pending_pub = Some(pending);
        offer
    };
    bob.offer_id += 1;
    bob.send(signal_request::Message::Offer(lk::SessionDescription {
        r#type: "offer".into(),
        sdp: offer.to_sdp_string(),
        id: bob.offer_id,
        ..Default::default()
    }))
    .await;
    let answer = bob.wait_for_answer().await;
    {
        let pending = bob.pending_pub.take().unwrap();
        let mut pc = bob.publisher.lock().unwrap();
        pc.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        pc.drain();
    }
    eventually("bob's data channel", || {
        bob.publisher
            .lock()
            .unwrap()
            .channels
            .contains_key("_reliable")
    })
    .await;
    {
        let mut pc = bob.publisher.lock().unwrap();
        let id = *pc.channels.get("_reliable").unwrap();
        let mut channel = pc.rtc.channel(id).expect("open");
        channel
            .write(true, &packet(b"hello origin", "chat"))
            .unwrap();
        pc.drain();
    }
    eventually("alice receives bob's data through the relay", || {
        !received(&alice, b"hello origin").is_empty()
    })
    .await;
    let got = received(&alice, b"hello origin");
    assert_eq!(got.len(), 1, "once");
    assert_eq!(got[0].participant_identity, "bob");
    assert_eq!(got[0].participant_sid, bob.sid());
    // Not echoed back to the edge.
    {
        let mut pc = alice.publisher.lock().unwrap();
        let id = *pc.channels.get("_reliable").unwrap();
        let mut channel = pc.rtc.channel(id).expect("open");
        channel
            .write(true, &packet(b"second marker", "chat"))
            .unwrap();
        pc.drain();
    }
    eventually("alice's second marker", || {
        !received(&bob, b"second marker").is_empty()
    })
    .await;
    assert!(received(&bob, b"hello origin").is_empty(), "no echo");

    // The edge announces bob to the origin over the link: alice, a speaker, sees him as a
    // participant of the room (the edge's sid, identity and permission), as she would a
    // listener of her own node.
    let announced = alice
        .wait_for("bob announced on the origin", |m| match m {
            signal_response::Message::Update(u) => {
                u.participants.iter().find(|p| p.identity == "bob").cloned()
            }
            _ => None,
        })
        .await;
    assert_eq!(announced.sid, bob.sid());
    assert!(!announced.permission.unwrap().can_publish);

    // On the origin the relay is nobody: not listed, not shown to alice; bob is listed as
    // the room's (a mirror: the origin does not hold him).
    let listed = origin.signaling.list_participants(room).await.unwrap();
    let mut identities: Vec<&str> = listed.iter().map(|p| p.identity.as_str()).collect();
    identities.sort_unstable();
    assert_eq!(identities, vec!["alice", "bob"]);
    let held = origin.signaling.list_held(room).await.unwrap();
    let identities: Vec<&str> = held.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(identities, vec!["alice"], "bob is held by the edge");
    alice.drain_for(Duration::from_millis(200)).await;
    assert!(!alice.log.iter().any(|m| match m {
        signal_response::Message::Update(u) => {
            u.participants
                .iter()
                .any(|p| p.identity.starts_with("node:"))
        }
        _ => false,
    }));
    let rooms = origin
        .signaling
        .list_rooms(&[room.to_owned()])
        .await
        .unwrap();
    assert_eq!(rooms[0].num_participants, 2, "alice and the edge's bob");
    // On the edge, the mirror is listed beside the local listener.
    let listed = edge.signaling.list_participants(room).await.unwrap();
    assert_eq!(listed.len(), 2);

    // The edge stops relaying: alice leaves the edge's room, and its stream stops; bob
    // leaves the origin's room with the link.
    alice.log.clear();
    edge.signaling.stop_relay(room).await.unwrap();
    alice
        .wait_for("bob gone from the origin with the link", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.sid == bob.sid() && p.state == State::Disconnected as i32)
                .map(|_| ()),
            _ => None,
        })
        .await;
    bob.wait_for("alice gone from the edge", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .find(|p| p.sid == alice.sid() && p.state == State::Disconnected as i32)
            .map(|_| ()),
        _ => None,
    })
    .await;
    let heard_then = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bob.heard().len(),
        heard_then,
        "nothing relayed after the link ended"
    );

    // Linked again; then the origin closes the room: the link ends from the origin's side and
    // alice leaves the edge again.
    bob.log.clear();
    edge.signaling
        .relay_from(room, &format!("ws://{}", origin.http))
        .await
        .unwrap();
    let again = bob
        .wait_for("alice mirrored again", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.sid == alice.sid() && p.state != State::Disconnected as i32)
                .cloned(),
            _ => None,
        })
        .await;
    assert_eq!(again.tracks[0].sid, track_sid);
    // The new link announces bob again.
    alice
        .wait_for("bob announced again", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.sid == bob.sid() && p.state != State::Disconnected as i32)
                .map(|_| ()),
            _ => None,
        })
        .await;
    // Heard again over the new link (a new relay peer, a new subscription at the edge).
    bob.drain_for(Duration::from_millis(300)).await;
    let before = alice.publisher.lock().unwrap().sent;
    send_audio(&alice, 60).await;
    eventually("bob hears alice over the new link", || {
        bob.heard().iter().filter(|h| h.1 >= before).count() >= 50
    })
    .await;
    bob.log.clear();
    origin.signaling.delete_room(room).await.unwrap();
    bob.wait_for("alice gone after the origin closed the room", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .find(|p| p.sid == alice.sid() && p.state == State::Disconnected as i32)
            .map(|_| ()),
        _ => None,
    })
    .await;
    let listed = edge.signaling.list_participants(room).await.unwrap();
    let identities: Vec<&str> = listed.iter().map(|p| p.identity.as_str()).collect();
    assert_eq!(identities, vec!["bob"]);
}
