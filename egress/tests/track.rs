//! Track egress (packets as received, no transcoding) against what senders do to RTP: reorder,
//! duplicate, change SSRC, freeze or jump their timestamps, restart sequence numbers, send
//! garbage.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::time::{Duration, Instant};

use common::*;
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressEvent, EgressKind, EgressState, MixConfig, OpusStream,
    decode,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn track_egress(t0: Instant, track: &str) -> Egress {
    Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_track".into(),
            room: "hall".into(),
            kind: EgressKind::Track {
                track: track.into(),
            },
            mix: MixConfig::default(),
            serial: 5,
        },
    )
    .unwrap()
}

fn packet(s: &mut Speaker) -> Event {
    let (seq, ts, payload) = s.packet();
    Event::Packet {
        participant: s.participant.clone(),
        track: s.track.clone(),
        ssrc: s.ssrc,
        seq,
        ts,
        payload,
    }
}

/// One sender, 440 Hz, misbehaving in every way but losing nothing that matters to the check.
#[test]
fn a_track_survives_what_senders_do_to_rtp() {
    let t0 = Instant::now();
    let mut rng = Rng::new(3);
    let mut s = Schedule::default();
    let mut carol = Speaker::new("carol", "TR_carol", 440.0, 77, &mut rng);
    let mut other = Speaker::new("dave", "TR_dave", 880.0, 88, &mut rng);
    let mut garbage = Rng::new(99);
    for i in 0..600u32 {
        let t = f64::from(i) * 0.02;
        // Another track in the room is not recorded.
        s.send(secs(t), &mut other, &mut rng, Loss::None);
        match t {
            // Muted 2-4 s by a sender that stops its RTP clock meanwhile: its timestamps
            // resume where they stopped, 2 s behind the arrival clock.
            _ if (2.0..4.0).contains(&t) => continue,
            // 6 s: a new SSRC without any unpublish (a restarted sender).
            _ if (6.0..6.02).contains(&t) => carol.rejoin(78, "TR_carol", &mut rng),
            // 8 s: the timestamps jump 10 s ahead, same SSRC.
            _ if (8.0..8.02).contains(&t) => carol.skip(500),
            _ => {}
        }
        // 9 s: the sequence numbers restart, same SSRC.
        if (9.0..9.02).contains(&t) {
            carol.seq = carol.seq.wrapping_sub(20_000);
        }
        s.send(secs(t), &mut carol, &mut rng, Loss::None);
        // Garbage between the packets: not Opus, or Opus framing with nonsense inside.
        if i % 7 == 0 {
            let len = garbage.below(40) as usize;
            let mut payload: Vec<u8> = (0..len).map(|_| garbage.next_u64() as u8).collect();
            if i % 14 == 0 && !payload.is_empty() {
                payload[0] = 0xff; // code 3, count byte 0 or nonsense
            }
            s.at(
                secs(t + 0.001),
                Event::Packet {
                    participant: "carol".into(),
                    track: "TR_carol".into(),
                    ssrc: carol.ssrc,
                    seq: garbage.next_u64() as u16,
                    ts: garbage.next_u64() as u32,
                    payload,
                },
            );
        }
    }
    let events = s.into_sorted();
    let mut egress = track_egress(t0, "TR_carol");
    let (c, _) = run(t0, &mut egress, &events, Some(secs(12.0)), None);

    let file = c.file(&Artifact::Track("TR_carol".into()));
    assert!(c.files.len() == 1, "only the track's file");
    let stream = OpusStream::parse(file).unwrap();
    assert!(
        stream.end_granule.is_some(),
        "finished with an end-of-stream page"
    );
    let pcm = decode(&stream).unwrap().samples;
    assert!(
        (seconds(pcm.len()) - 12.0).abs() <= 0.1,
        "{}",
        seconds(pcm.len())
    );
    assert!(tone(window(&pcm, 0.3, 1.9), 440.0) > 0.3);
    assert!(
        tone(window(&pcm, 2.2, 3.9), 440.0) < 0.03,
        "mute kept as time"
    );
    let back = onset(&pcm, 440.0, 3.0, 0.2).unwrap();
    assert!((back - 4.0).abs() < 0.06, "back at {back}");
    assert!(
        tone(window(&pcm, 4.2, 11.9), 440.0) > 0.25,
        "no gap after 4 s"
    );
    assert!(
        tone(window(&pcm, 0.0, 12.0), 880.0) < 0.03,
        "nothing of dave"
    );

    let Some(EgressEvent::Ended(info)) = c.events.last() else {
        panic!("{:?}", c.events);
    };
    assert_eq!(info.state, EgressState::Complete);
    let (_, stats) = &info.tracks[0];
    assert!(stats.malformed > 0, "{stats:?}");
    assert!(stats.duplicates + stats.late > 0, "{stats:?}");
    // The first, then one each for the frozen clock, the new SSRC, the timestamp jump and the
    // sequence restart.
    assert_eq!(stats.sessions, 5, "{stats:?}");
    assert!(stats.out_of_window > 0, "{stats:?}");
}

#[test]
fn a_track_egress_ends_when_its_track_is_unpublished() {
    let t0 = Instant::now();
    let mut rng = Rng::new(4);
    let mut s = Schedule::default();
    let mut erin = Speaker::new("erin", "TR_erin", 440.0, 5, &mut rng);
    for i in 0..100u32 {
        let e = packet(&mut erin);
        s.at(secs(0.5 + f64::from(i) * 0.02), e);
    }
    s.at(
        secs(2.6),
        Event::Unpublished("erin".into(), "TR_erin".into()),
    );
    let e = packet(&mut erin);
    s.at(secs(2.7), e);
    let events = s.into_sorted();
    let mut egress = track_egress(t0, "TR_erin");
    let (c, _) = run(t0, &mut egress, &events, None, None);
    assert!(egress.is_ended());
    assert!(egress.poll_timeout().is_none());
    let Some(EgressEvent::Ended(info)) = c.events.last() else {
        panic!("{:?}", c.events);
    };
    assert_eq!(info.state, EgressState::Complete);
    assert_eq!(info.duration, secs(2.6));
    let stream = OpusStream::parse(c.file(&Artifact::Track("TR_erin".into()))).unwrap();
    let pcm = decode(&stream).unwrap().samples;
    assert!(
        (seconds(pcm.len()) - 2.6).abs() <= 0.05,
        "{}",
        seconds(pcm.len())
    );
    let start = onset(&pcm, 440.0, 0.0, 0.2).unwrap();
    assert!((start - 0.5).abs() < 0.03, "starts at {start}");
}
