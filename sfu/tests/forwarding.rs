//! Engine scenarios on simulated time and network (seeded, bounded).
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Sim, assert_rewrite_consistent};
use netem::{NetemConfig, Probability, RandomLoss};
use stoa_sfu::{FastPath, Publish, SfuError};

const SEC: Duration = Duration::from_secs(1);

/// One publisher, `n` subscribers, all connected and subscribed.
fn room(seed: u64, n: usize) -> (Sim, usize, Vec<usize>) {
    room_with(seed, n, FastPath::Enabled)
}

fn room_with(seed: u64, n: usize, fast_path: FastPath) -> (Sim, usize, Vec<usize>) {
    let mut sim = Sim::with_config(seed, 1, fast_path);
    let publisher = sim.join_publisher("alice", Publish::Allow).unwrap();
    let subs: Vec<usize> = (0..n)
        .map(|i| sim.join_subscriber(&format!("sub{i}")))
        .collect();
    sim.connect_all();
    let track = sim.track_of(publisher);
    for &s in &subs {
        sim.subscribe(s, track);
    }
    // Let the renegotiations settle.
    sim.run_for(SEC / 2, |_| {});
    (sim, publisher, subs)
}

#[test]
fn every_packet_reaches_every_subscriber_in_order() {
    let (mut sim, publisher, subs) = room(1, 3);
    sim.run_for(2 * SEC, |s| s.send_audio(publisher, 30));
    let sent = sim.clients[publisher].sent;
    assert_eq!(sent, 100);
    for &s in &subs {
        let heard = &sim.clients[s].heard;
        // Packets before the subscriber's m-line was negotiated are not owed; after that, all.
        let indexes: Vec<u32> = heard.iter().map(|h| h.index).collect();
        assert_eq!(
            indexes,
            (0..sent).collect::<Vec<_>>(),
            "subscriber {s} heard {indexes:?}"
        );
        assert_rewrite_consistent(heard);
        assert!(
            heard.iter().all(|h| h.audio_level == Some(-30)),
            "audio level not passed through"
        );
    }
    let stats = sim.sfu().stats();
    assert_eq!(stats.rtp_in, 100);
    assert_eq!(stats.rtp_forwarded, 300);
    assert_eq!(stats.rtp_lost, 0);
    // The str0m clients decrypted every packet: the engine's own sealing is right.
    assert_eq!(stats.rtp_forwarded_direct, 300, "fast path not used");
    assert_eq!(stats.rtp_dropped_duplicate, 0);
}

#[test]
fn fallback_path_delivers_the_same_stream() {
    let (mut sim, publisher, subs) = room_with(1, 3, FastPath::Disabled);
    sim.run_for(2 * SEC, |s| s.send_audio(publisher, 30));
    let sent = sim.clients[publisher].sent;
    for &s in &subs {
        let heard = &sim.clients[s].heard;
        let indexes: Vec<u32> = heard.iter().map(|h| h.index).collect();
        assert_eq!(indexes, (0..sent).collect::<Vec<_>>());
        assert_rewrite_consistent(heard);
        assert!(heard.iter().all(|h| h.audio_level == Some(-30)));
    }
    let stats = sim.sfu().stats();
    assert_eq!(stats.rtp_forwarded, 300);
    assert_eq!(
        stats.rtp_forwarded_direct, 0,
        "fallback must not seal directly"
    );
}

/// A long talk: str0m's own RTCP (sender reports for the slot's SSRC, receiver reports back)
/// runs beside the fast path for many report intervals without disturbing the stream.
#[test]
fn fast_path_stream_survives_rtcp_and_timers() {
    let (mut sim, publisher, subs) = room(11, 2);
    sim.run_for(20 * SEC, |s| s.send_audio(publisher, 20));
    let sent = sim.clients[publisher].sent;
    assert_eq!(sent, 1000);
    for &s in &subs {
        let heard = &sim.clients[s].heard;
        assert_eq!(heard.len(), 1000, "subscriber {s} lost packets");
        assert_rewrite_consistent(heard);
        assert!(heard.iter().all(|h| h.ssrc == heard[0].ssrc));
    }
    assert_eq!(sim.sfu().stats().rtp_forwarded_direct, 2000);
    assert!(sim.all_connected(), "a connection dropped");
}

#[test]
fn subscribers_get_their_own_ssrc_and_sequence_space() {
    let (mut sim, publisher, subs) = room(2, 2);
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let a = &sim.clients[subs[0]].heard[0];
    let b = &sim.clients[subs[1]].heard[0];
    assert_ne!(a.ssrc, b.ssrc, "SSRCs should be per subscriber");
    // Initial sequence numbers are below 2^15 so no ROC signalling is ever needed.
    assert!(a.seq_no < 32_768 && b.seq_no < 32_768);
}

#[test]
fn server_mute_and_unmute_keep_the_stream_continuous() {
    let (mut sim, publisher, subs) = room(3, 1);
    let track = sim.track_of(publisher);
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    sim.sfu().set_track_muted(track, true).unwrap();
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let during: usize = sim.clients[subs[0]].heard.len();
    sim.sfu().set_track_muted(track, false).unwrap();
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));

    assert!(
        sim.sfu().stats().rtp_dropped_muted >= 45,
        "muted packets not dropped"
    );
    let stats = sim.sfu().stats();
    assert_eq!(stats.rtp_forwarded_direct, stats.rtp_forwarded);
    let heard = &sim.clients[subs[0]].heard;
    assert!(
        heard.len() < 160 && heard.len() > during,
        "heard {} packets",
        heard.len()
    );
    // Continuous sequence across the pause, timestamps jump by about the pause length.
    for w in heard.windows(2) {
        assert_eq!(w[1].seq_no, w[0].seq_no + 1, "gap across mute: {:?}", w);
    }
    let gap = heard
        .windows(2)
        .find(|w| w[1].index != w[0].index + 1)
        .unwrap();
    let dt = gap[1].timestamp.wrapping_sub(gap[0].timestamp);
    assert!(
        (40_000..=60_000).contains(&dt),
        "timestamp jump {dt} should match ~1 s"
    );
}

#[test]
fn publisher_rejoin_continues_the_subscriber_stream() {
    let (mut sim, publisher, subs) = room(4, 1);
    let slot = {
        let peer = sim.peer(subs[0]);
        // The only slot of this subscriber.
        let _ = peer;
        stoa_sfu::SlotId(0)
    };
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let first_part = sim.clients[subs[0]].heard.len();
    // The publisher disappears and comes back as a new connection.
    let old_peer = sim.peer(publisher);
    let now = sim.now;
    sim.sfu().close_peer(now, old_peer).unwrap();
    sim.kill(publisher);
    sim.pump_events();
    assert!(sim.seen.unpublished.iter().any(|t| t.peer == old_peer));
    let again = sim.join_publisher("alice-again", Publish::Allow).unwrap();
    sim.connect_all();
    let new_track = sim.track_of(again);
    let sub_peer = sim.peer(subs[0]);
    let now = sim.now;
    sim.sfu()
        .set_slot_source(now, sub_peer, slot, Some(new_track))
        .unwrap();
    sim.run_for(SEC, |s| s.send_audio(again, 30));

    let heard = &sim.clients[subs[0]].heard;
    assert!(heard.len() > first_part + 40, "new publisher not heard");
    assert!(heard.iter().all(|h| h.ssrc == heard[0].ssrc));
    for w in heard.windows(2) {
        assert_eq!(w[1].seq_no, w[0].seq_no + 1, "gap across rejoin");
    }
    assert!(
        heard[first_part..]
            .iter()
            .all(|h| h.publisher == again as u8)
    );
    let stats = sim.sfu().stats();
    assert_eq!(stats.rtp_forwarded_direct, stats.rtp_forwarded);
}

#[test]
fn unsubscribe_stops_forwarding_and_resubscribe_resumes() {
    let (mut sim, publisher, subs) = room(5, 2);
    let track = sim.track_of(publisher);
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let peer = sim.peer(subs[0]);
    let now = sim.now;
    sim.sfu().unsubscribe(now, peer, track).unwrap();
    assert_eq!(sim.sfu().subscriber_count(track), 1);
    let before = sim.clients[subs[0]].heard.len();
    let forwarded = sim.sfu().stats().rtp_forwarded;
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    // Allow for packets already in flight on the link.
    assert!(sim.clients[subs[0]].heard.len() <= before + 1);
    assert_eq!(
        sim.sfu().stats().rtp_forwarded - forwarded,
        50,
        "only the other subscriber is served"
    );

    let now = sim.now;
    sim.sfu()
        .set_slot_source(now, peer, stoa_sfu::SlotId(0), Some(track))
        .unwrap();
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let heard = &sim.clients[subs[0]].heard;
    assert!(heard.len() >= before + 48);
    for w in heard.windows(2) {
        assert_eq!(w[1].seq_no, w[0].seq_no + 1);
    }
}

#[test]
fn listener_cannot_publish() {
    let mut sim = Sim::new(6);
    // An offer with a send section from a peer that may not publish is refused outright.
    let refused = sim.join_publisher("mallory", Publish::Deny);
    assert!(
        matches!(refused, Err(SfuError::PublishNotAllowed)),
        "{:?}",
        refused.err()
    );
    // A data-only connection is fine, but adding a microphone later is refused too.
    let listener = sim.join_data_only("listener", Publish::Deny);
    sim.connect_all();
    assert!(matches!(
        sim.client_reoffer_send(listener),
        Err(SfuError::PublishNotAllowed)
    ));
    assert_eq!(sim.sfu().stats().offers_refused, 2);
    assert!(sim.seen.published.is_empty());
}

#[test]
fn revoked_publisher_is_unpublished_and_its_rtp_dropped() {
    let (mut sim, publisher, subs) = room(7, 1);
    let track = sim.track_of(publisher);
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let heard = sim.clients[subs[0]].heard.len();
    let peer = sim.peer(publisher);
    let now = sim.now;
    sim.sfu().set_publish(now, peer, Publish::Deny).unwrap();
    sim.pump_events();
    assert_eq!(sim.seen.unpublished, vec![track]);
    // The client ignores the revocation and keeps sending.
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    assert!(sim.clients[subs[0]].heard.len() <= heard + 1);
    assert!(
        sim.sfu().stats().rtp_dropped_unauthorized >= 45,
        "{:?}",
        sim.sfu().stats()
    );

    // Granted again: the existing m-line is published as a new track.
    let now = sim.now;
    sim.sfu().set_publish(now, peer, Publish::Allow).unwrap();
    sim.pump_events();
    assert_eq!(sim.seen.published.len(), 2);
}

#[test]
fn loss_and_jitter_keep_the_rewrite_correct() {
    let mut sim = Sim::new(8);
    sim.link = NetemConfig::new()
        .latency(Duration::from_millis(30))
        .jitter(Duration::from_millis(15))
        .loss(RandomLoss::new(Probability::new(0.05)));
    let publisher = sim.join_publisher("alice", Publish::Allow).unwrap();
    let sub = sim.join_subscriber("bob");
    sim.connect_all();
    let track = sim.track_of(publisher);
    sim.subscribe(sub, track);
    sim.run_for(2 * SEC, |_| {});
    sim.run_for(10 * SEC, |s| s.send_audio(publisher, 30));
    sim.run_for(SEC, |_| {});
    let heard = &sim.clients[sub].heard;
    // Two lossy links of 5 % each: about 90 % arrive.
    let sent = sim.clients[publisher].sent as usize;
    assert_eq!(sent, 500);
    assert!(
        heard.len() > sent * 80 / 100 && heard.len() < sent * 97 / 100,
        "heard {} of {sent}",
        heard.len()
    );
    assert_rewrite_consistent(heard);
    // What the publisher's link lost is counted as ingress loss: every sent packet either
    // arrived or is counted lost (except a loss at the very end, which no later packet reveals).
    let stats = sim.sfu().stats();
    assert!(stats.rtp_lost > 0, "{stats:?}");
    let accounted = stats.rtp_in + stats.rtp_lost;
    assert!(
        (495..=500).contains(&accounted),
        "received {} + lost {} of 500",
        stats.rtp_in,
        stats.rtp_lost
    );
}

#[test]
fn speaker_detection_reports_loud_publisher() {
    let mut sim = Sim::new(9);
    let loud = sim.join_publisher("loud", Publish::Allow).unwrap();
    let quiet = sim.join_publisher("quiet", Publish::Allow).unwrap();
    sim.connect_all();
    let (lt, qt) = (sim.track_of(loud), sim.track_of(quiet));
    sim.run_for(2 * SEC, |s| {
        s.send_audio(loud, 20);
        s.send_audio(quiet, 80);
    });
    assert!(sim.seen.speakers.contains(&(lt, true)));
    assert!(!sim.seen.speakers.iter().any(|(t, _)| *t == qt));
    // Loud goes silent (stops sending): reported inactive.
    sim.run_for(2 * SEC, |s| s.send_audio(quiet, 80));
    assert_eq!(
        sim.seen.speakers.iter().rev().find(|(t, _)| *t == lt),
        Some(&(lt, false))
    );
}

#[test]
fn a_muted_speaker_stops_speaking_with_the_mute() {
    let mut sim = Sim::new(10);
    let loud = sim.join_publisher("loud", Publish::Allow).unwrap();
    sim.connect_all();
    let lt = sim.track_of(loud);
    sim.run_for(2 * SEC, |s| s.send_audio(loud, 20));
    assert_eq!(sim.seen.speakers.last(), Some(&(lt, true)));
    // The mute is reported at once: no window has to close on the missing packets.
    sim.sfu().set_track_muted(lt, true).unwrap();
    sim.pump_events();
    assert_eq!(sim.seen.speakers.last(), Some(&(lt, false)));
    // Nothing more while muted, even though the publisher keeps sending.
    let reported = sim.seen.speakers.len();
    sim.run_for(2 * SEC, |s| s.send_audio(loud, 20));
    assert_eq!(sim.seen.speakers.len(), reported, "{:?}", sim.seen.speakers);
    // Unmuted, it speaks again.
    sim.sfu().set_track_muted(lt, false).unwrap();
    sim.run_for(2 * SEC, |s| s.send_audio(loud, 20));
    assert_eq!(sim.seen.speakers.last(), Some(&(lt, true)));
}

#[test]
fn dead_peer_times_out_and_its_track_ends() {
    let (mut sim, publisher, subs) = room(10, 1);
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    let peer = sim.peer(publisher);
    sim.kill(publisher);
    sim.run_until(Duration::from_secs(60), "ICE-lite timeout", |s| {
        s.seen.disconnected.contains(&peer)
    });
    assert!(sim.seen.unpublished.iter().any(|t| t.peer == peer));
    let sub = sim.peer(subs[0]);
    assert!(sim.sfu().is_connected(sub));
}

#[test]
fn one_publisher_two_hundred_subscribers() {
    let (mut sim, publisher, subs) = room(11, 200);
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    for &s in &subs {
        let heard = &sim.clients[s].heard;
        assert_eq!(heard.len(), 50, "subscriber {s} heard {}", heard.len());
        assert_rewrite_consistent(heard);
    }
    assert_eq!(sim.sfu().stats().rtp_forwarded, 50 * 200);
}

#[test]
fn shards_relay_to_each_other() {
    let mut sim = Sim::with_shards(12, 2);
    let publisher = sim.join_publisher("alice", Publish::Allow).unwrap(); // shard 0
    let subs: Vec<usize> = (0..4)
        .map(|i| sim.join_subscriber(&format!("s{i}")))
        .collect(); // 1,0,1,0
    sim.connect_all();
    let track = sim.track_of(publisher);
    for &s in &subs {
        sim.subscribe(s, track);
    }
    sim.run_for(SEC / 2, |_| {});
    sim.run_for(SEC, |s| s.send_audio(publisher, 30));
    for &s in &subs {
        let heard = &sim.clients[s].heard;
        assert_eq!(
            heard.len(),
            50,
            "subscriber {s} on shard {:?}",
            sim.peer(s).shard()
        );
        assert_rewrite_consistent(heard);
    }
    assert_eq!(sim.shards[0].stats().rtp_forwarded, 100);
    assert_eq!(sim.shards[1].stats().rtp_forwarded, 100);
    // Publisher leaves: the remote shard's slots are cleared too.
    let now = sim.now;
    let p = sim.peer(publisher);
    sim.shards[0].close_peer(now, p).unwrap();
    sim.pump_events();
    assert_eq!(sim.shards[1].subscriber_count(track), 0);
}

/// The subscriber's sequence numbers cross 2^16, so the SRTP rollover counter becomes 1
/// (RFC 3711 §3.3.1): the fast path's IV must carry it, or the listener stops decrypting.
/// The publisher sends bursts to reach the wrap in about a minute of simulated time.
#[test]
fn fast_path_crosses_the_sequence_number_wrap() {
    let (mut sim, publisher, subs) = room(12, 1);
    let listener = subs[0];
    // Any initial sequence number is below 2^15, so at most 2^16 + 2^15 packets are needed.
    for _ in 0..4_000 {
        let crossed = sim.clients[listener]
            .heard
            .last()
            .is_some_and(|h| h.seq_no > 65_536 + 100);
        if crossed {
            break;
        }
        sim.run_for(Duration::from_millis(20), |s| {
            for _ in 0..25 {
                s.send_audio(publisher, 30);
            }
        });
    }
    let heard = &sim.clients[listener].heard;
    let last = heard.last().unwrap();
    assert!(
        last.seq_no > 65_536 + 100,
        "did not cross the wrap: {last:?}"
    );
    for w in heard.windows(2) {
        assert_eq!(w[1].seq_no, w[0].seq_no + 1, "gap at {:?}", w[1]);
        assert_eq!(w[1].index, w[0].index + 1);
    }
    let stats = sim.sfu().stats();
    assert_eq!(stats.rtp_forwarded_direct, stats.rtp_forwarded);
}
