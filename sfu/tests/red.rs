//! RED (RFC 2198) through the engine, with str0m peers on simulated time: a publisher that sends
//! RED around Opus is heard as RED by subscribers that negotiated it and as plain Opus (the
//! primary block) by those that did not, on the fast path and on str0m's own path.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Heard, Sim, assert_rewrite_consistent, red_payload};
use stoa_sfu::str0m::rtp::{RtpWrite, SeqNo};
use stoa_sfu::{FastPath, Publish};

const SEC: Duration = Duration::from_secs(1);

/// A publisher (`red_publisher`: offers and sends RED), one subscriber that accepts RED and one
/// that knows only Opus, connected and subscribed.
fn mixed_room(seed: u64, fast_path: FastPath, red_publisher: bool) -> (Sim, usize, usize, usize) {
    let mut sim = Sim::with_config(seed, 1, fast_path);
    sim.red = red_publisher;
    let publisher = sim.join_publisher("alice", Publish::Allow).unwrap();
    sim.red = true;
    let red_sub = sim.join_subscriber("red-listener");
    sim.red = false;
    let opus_sub = sim.join_subscriber("opus-listener");
    sim.connect_all();
    let track = sim.track_of(publisher);
    sim.subscribe(red_sub, track);
    sim.subscribe(opus_sub, track);
    sim.run_for(SEC / 2, |_| {});
    (sim, publisher, red_sub, opus_sub)
}

/// The Opus payload the harness sends as packet `index` of client `publisher_byte`.
fn opus_of(index: u32, publisher_byte: u8) -> Vec<u8> {
    let mut payload = vec![0u8; 60];
    payload[0..4].copy_from_slice(&index.to_be_bytes());
    payload[4] = publisher_byte;
    payload
}

fn indexes(heard: &[Heard]) -> Vec<u32> {
    heard.iter().map(|h| h.index).collect()
}

fn check_mixed(fast_path: FastPath, seed: u64) {
    let (mut sim, publisher, red_sub, opus_sub) = mixed_room(seed, fast_path, true);
    let (Some(_), Some(red_pt)) = sim.clients[publisher].pts() else {
        panic!("the engine did not accept the publisher's RED");
    };
    sim.run_for(2 * SEC, |s| s.send_audio(publisher, 30));
    let sent = sim.clients[publisher].sent;
    assert_eq!(sent, 100);
    let byte = sim.clients[publisher].publisher_byte;

    // The RED subscriber gets every packet as RED, under its own RED payload type, with the
    // previous frame as the redundant block.
    let (Some(_), Some(sub_red)) = sim.clients[red_sub].pts() else {
        panic!("the RED subscriber did not negotiate RED");
    };
    let heard = &sim.clients[red_sub].heard;
    assert_eq!(indexes(heard), (0..sent).collect::<Vec<_>>());
    assert_rewrite_consistent(heard);
    for h in heard {
        assert_eq!(h.pt, *sub_red, "{h:?}");
        assert_eq!(h.opus, opus_of(h.index, byte));
        let previous: Vec<Vec<u8>> = if h.index == 0 {
            vec![]
        } else {
            vec![opus_of(h.index - 1, byte)]
        };
        let previous: Vec<&[u8]> = previous.iter().map(Vec::as_slice).collect();
        let expected = red_payload(
            *sim.clients[red_sub].pts().0.unwrap(),
            960,
            &previous,
            &h.opus,
        );
        assert_eq!(h.red.as_deref(), Some(&expected[..]), "RED altered: {h:?}");
        assert_eq!(h.audio_level, Some(-30));
    }

    // The Opus-only subscriber gets the primary blocks as plain Opus.
    let (Some(sub_opus), None) = sim.clients[opus_sub].pts() else {
        panic!("the Opus subscriber negotiated RED");
    };
    let heard = &sim.clients[opus_sub].heard;
    assert_eq!(indexes(heard), (0..sent).collect::<Vec<_>>());
    assert_rewrite_consistent(heard);
    for h in heard {
        assert_eq!(h.pt, *sub_opus);
        assert!(h.red.is_none());
        assert_eq!(h.opus, opus_of(h.index, byte), "not the primary block");
        assert_eq!(h.audio_level, Some(-30));
    }

    let stats = sim.sfu().stats();
    assert_eq!(stats.rtp_in, 100);
    assert_eq!(stats.rtp_forwarded, 200);
    assert_eq!(stats.rtp_dropped_malformed, 0);
    let direct = if fast_path == FastPath::Enabled {
        200
    } else {
        0
    };
    assert_eq!(stats.rtp_forwarded_direct, direct);
    // The publisher's RED payload type is what it sent with.
    assert!(*red_pt >= 35);
}

#[test]
fn red_goes_to_red_subscribers_and_opus_to_the_others_on_the_fast_path() {
    check_mixed(FastPath::Enabled, 31);
}

#[test]
fn red_goes_to_red_subscribers_and_opus_to_the_others_on_the_str0m_path() {
    check_mixed(FastPath::Disabled, 32);
}

/// A publisher that sends plain Opus is heard as plain Opus by everyone, RED subscribers too.
#[test]
fn plain_opus_stays_opus_for_red_subscribers() {
    let (mut sim, publisher, red_sub, opus_sub) = mixed_room(33, FastPath::Enabled, false);
    assert_eq!(sim.clients[publisher].pts().1, None);
    sim.run_for(SEC, |s| s.send_audio(publisher, 20));
    let sent = sim.clients[publisher].sent;
    for sub in [red_sub, opus_sub] {
        let opus_pt = *sim.clients[sub].pts().0.unwrap();
        let heard = &sim.clients[sub].heard;
        assert_eq!(indexes(heard), (0..sent).collect::<Vec<_>>());
        assert!(heard.iter().all(|h| h.pt == opus_pt && h.red.is_none()));
    }
}

/// A RED packet that cannot be read (or wraps something other than Opus) is dropped and
/// counted; the stream around it, and every subscriber, carry on.
#[test]
fn malformed_red_is_dropped_and_counted() {
    let (mut sim, publisher, red_sub, opus_sub) = mixed_room(34, FastPath::Enabled, true);
    sim.run_for(SEC / 5, |s| s.send_audio(publisher, 30));
    let (mid, _) = sim.clients[publisher].send.unwrap();
    let (Some(opus_pt), Some(red_pt)) = sim.clients[publisher].pts() else {
        panic!("no RED");
    };
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x80 | *opus_pt],
        vec![0x80 | *opus_pt, 0, 0, 200, *opus_pt, 1, 2],
        red_payload(13, 960, &[], b"comfort noise"),
        std::iter::repeat_n([0x80 | *opus_pt, 0, 0, 0], 40)
            .flatten()
            .collect(),
    ];
    let now = sim.now;
    let first = sim.clients[publisher].sent;
    for (i, payload) in bad.iter().enumerate() {
        let index = first + i as u32;
        let client = &mut sim.clients[publisher];
        let mut api = client.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).unwrap();
        let ts = index * 960;
        tx.write_rtp(RtpWrite::new(
            red_pt,
            SeqNo::from(u64::from(index) + 1),
            ts,
            now,
            payload.clone(),
        ));
        client.sent += 1;
        client.last_opus = None;
        client.drain(now);
    }
    sim.run_for(SEC / 2, |s| s.send_audio(publisher, 30));
    assert_eq!(sim.sfu().stats().rtp_dropped_malformed, bad.len() as u64);
    let sent = sim.clients[publisher].sent;
    let expected: Vec<u32> = (0..sent)
        .filter(|i| !(first..first + bad.len() as u32).contains(i))
        .collect();
    for sub in [red_sub, opus_sub] {
        assert_eq!(indexes(&sim.clients[sub].heard), expected, "client {sub}");
    }
    assert!(sim.all_connected());
}

/// Packets the publisher's link loses are rebuilt from the next RED packet's redundant block
/// and forwarded in their place, with their own sequence number, timestamp and payload.
#[test]
fn lost_packets_are_rebuilt_from_red_for_every_subscriber() {
    use netem::{Netem, NetemConfig, Probability, RandomLoss};

    let (mut sim, publisher, red_sub, opus_sub) = mixed_room(35, FastPath::Enabled, true);
    // Only the publisher's uplink loses packets, from now on.
    sim.clients[publisher].up = Netem::new(
        NetemConfig::new()
            .latency(Duration::from_millis(10))
            .loss(RandomLoss::new(Probability::new(0.1)))
            .seed(35),
    );
    sim.run_for(10 * SEC, |s| s.send_audio(publisher, 30));
    sim.run_for(SEC / 2, |_| {});
    let stats = sim.sfu().stats();
    assert!(stats.rtp_lost > 10, "the link lost too little: {stats:?}");
    assert!(
        stats.rtp_recovered > stats.rtp_lost / 2,
        "isolated losses must be rebuilt: {stats:?}"
    );
    assert!(stats.rtp_recovered <= stats.rtp_lost);
    let byte = sim.clients[publisher].publisher_byte;
    for sub in [opus_sub, red_sub] {
        let heard = &sim.clients[sub].heard;
        assert_eq!(
            heard.len() as u64,
            stats.rtp_in + stats.rtp_recovered,
            "client {sub}: every received and every rebuilt packet"
        );
        // Right data at the right sequence number and timestamp, none twice.
        assert_rewrite_consistent(heard);
        for h in heard {
            assert_eq!(h.opus, opus_of(h.index, byte), "{h:?}");
        }
    }
    // The Opus-only listener heard more than what arrived.
    assert!(sim.clients[opus_sub].heard.len() as u64 > stats.rtp_in);
}
