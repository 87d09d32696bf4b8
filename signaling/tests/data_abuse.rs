//! Client data packets from a hostile client, in the signaling core without sockets: real str0m
//! clients in memory on a virtual clock (`stoa_signaling::sim`) send data channel packets as a
//! listener, on a server-only topic, claiming another identity, and as a flood. Seeded,
//! bounded, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, deprecated)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use stoa_signaling::proto::{AdminOp, DataRate, SendData, ServerConfig};
use stoa_signaling::sim::Sim;

const SECOND: Duration = Duration::from_secs(1);

fn world(seed: u64, rate: DataRate) -> Sim {
    let config = ServerConfig {
        data_rate: rate,
        ..ServerConfig::default()
    };
    Sim::new(Instant::now(), seed, 2, config)
}

/// Runs until client `c`'s publisher data channel is open.
fn data_channel(sim: &mut Sim, c: usize) {
    let ok = sim.run_until(10 * SECOND, |s| {
        s.clients[c].publisher.channels.contains_key("_reliable")
            && s.clients
                .iter()
                .filter(|c| c.is_open())
                .all(|c| c.subscriber.connected)
    });
    assert!(ok, "publisher data channel of client {c} did not open");
}

fn user_packet(payload: &[u8], topic: Option<&str>, claimed: &str) -> lk::DataPacket {
    lk::DataPacket {
        kind: lk::data_packet::Kind::Reliable as i32,
        participant_identity: claimed.into(),
        value: Some(lk::data_packet::Value::User(lk::UserPacket {
            payload: payload.to_vec(),
            topic: topic.map(str::to_owned),
            participant_identity: claimed.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn received(sim: &Sim, c: usize) -> Vec<lk::DataPacket> {
    sim.clients[c]
        .data
        .iter()
        .map(|b| <lk::DataPacket as prost::Message>::decode(&b[..]).unwrap())
        .collect()
}

#[test]
fn a_listener_without_data_permission_reaches_nobody() {
    let mut sim = world(21, DataRate::default());
    let speaker = sim.join("r", "speaker", true);
    let mut grants = Sim::grants("r", false);
    grants.can_publish_data = Some(false);
    let listener = sim.join_with("listener", grants).unwrap();
    // The listener's client opens a publisher connection for data anyway.
    sim.offer_publisher(listener, None);
    data_channel(&mut sim, listener);
    let dropped = sim.server.stats().data_dropped;
    for i in 0..5u8 {
        assert!(sim.send_data(listener, &[i]));
    }
    sim.run_for(SECOND);
    assert!(
        received(&sim, speaker).is_empty(),
        "nothing reached the room"
    );
    assert_eq!(
        sim.server.stats().data_dropped - dropped,
        5,
        "each drop counted"
    );
}

#[test]
fn spoofed_identities_are_overwritten_and_server_topics_are_refused() {
    let mut sim = world(22, DataRate::default());
    let alice = sim.join("r", "alice", true);
    let bob = sim.join("r", "bob", true);
    sim.offer_publisher(alice, None);
    data_channel(&mut sim, alice);
    // Claiming to be bob: the server stamps alice.
    assert!(sim.send_packet(alice, &user_packet(b"hi", Some("chat"), "bob")));
    sim.run_for(SECOND);
    let got = received(&sim, bob);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].participant_identity, "alice");
    match &got[0].value {
        Some(lk::data_packet::Value::User(u)) => assert_eq!(u.participant_identity, "alice"),
        v => panic!("{v:?}"),
    }
    // A forged reaction on the server's topic never arrives.
    let dropped = sim.server.stats().data_dropped;
    let forged = br#"{"user":"bob","emoji":"x"}"#;
    assert!(sim.send_packet(alice, &user_packet(forged, Some("stoa.reaction"), "bob")));
    sim.run_for(SECOND);
    assert_eq!(
        received(&sim, bob).len(),
        1,
        "the forged reaction was dropped"
    );
    assert_eq!(sim.server.stats().data_dropped - dropped, 1);
    // Nor does a data stream (livekit-client's sendText/streamText) opened on that topic; one
    // on an ordinary topic does, stamped.
    for topic in ["stoa.reaction", "chat"] {
        let header = lk::DataPacket {
            kind: lk::data_packet::Kind::Reliable as i32,
            participant_identity: "bob".into(),
            value: Some(lk::data_packet::Value::StreamHeader(
                lk::data_stream::Header {
                    stream_id: format!("s-{topic}"),
                    topic: topic.into(),
                    mime_type: "text/plain".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert!(sim.send_packet(alice, &header));
    }
    sim.run_for(SECOND);
    let got = received(&sim, bob);
    assert_eq!(got.len(), 2, "only the stream on an ordinary topic arrived");
    match &got[1].value {
        Some(lk::data_packet::Value::StreamHeader(h)) => assert_eq!(h.topic, "chat"),
        v => panic!("{v:?}"),
    }
    assert_eq!(got[1].participant_identity, "alice");
    assert_eq!(sim.server.stats().data_dropped - dropped, 2);
    // The server's own reaction on that topic carries the identity it vouches for.
    sim.admin(AdminOp::SendData {
        room: "r".into(),
        data: Box::new(SendData {
            payload: br#"{"user":"alice","emoji":"x"}"#.to_vec(),
            reliable: true,
            topic: Some("stoa.reaction".into()),
            sender_identity: Some("alice".into()),
            ..Default::default()
        }),
    })
    .unwrap();
    sim.run_for(SECOND);
    let got = received(&sim, bob);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].participant_identity, "alice");
    assert!(got[2].participant_sid.starts_with("PA_"), "{:?}", got[1]);
}

#[test]
fn a_flood_is_cut_to_the_senders_rate_and_counted() {
    let rate = DataRate {
        per_sec: 10,
        burst: 20,
    };
    let mut sim = world(23, rate);
    let flooder = sim.join("r", "flooder", true);
    let other = sim.join("r", "other", true);
    let victim = sim.join("r", "victim", false);
    sim.offer_publisher(flooder, None);
    sim.offer_publisher(other, None);
    data_channel(&mut sim, flooder);
    data_channel(&mut sim, other);
    let dropped = sim.server.stats().data_dropped;
    // 200 packets at one instant: only the burst gets through.
    let mut sent = 0;
    for i in 0..200u32 {
        if sim.send_data(flooder, &i.to_be_bytes()) {
            sent += 1;
        }
    }
    assert_eq!(sent, 200);
    sim.run_for(SECOND / 10);
    let through = received(&sim, victim).len();
    assert!(
        (20..=22).contains(&through),
        "the burst and at most a refill tick got through: {through}"
    );
    let counted = sim.server.stats().data_dropped - dropped;
    assert_eq!(
        counted as usize + through,
        200,
        "every refused packet counted"
    );
    // The flooder's limit is its own: another participant still gets through at once.
    assert!(sim.send_data(other, b"still here"));
    sim.run_for(SECOND / 10);
    let last = received(&sim, victim).pop().unwrap();
    assert_eq!(last.participant_identity, "other");
    // After a pause the flooder's bucket has refilled.
    sim.run_for(3 * SECOND);
    let before = received(&sim, victim).len();
    for i in 0..5u32 {
        assert!(sim.send_data(flooder, &i.to_be_bytes()));
    }
    sim.run_for(SECOND / 10);
    assert_eq!(received(&sim, victim).len() - before, 5);
}
