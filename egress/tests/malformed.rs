//! Bad input never panics and never costs the good input: garbage payloads and forged RTP
//! fields in a recorded room, and random or damaged bytes where a recording is read (clips,
//! replays). Deterministic: seeded generators, bounded loops.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::time::{Duration, Instant};

use common::*;
use stoa_egress::clip::{self, ClipRange};
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressEvent, EgressKind, EgressState, Input, MixConfig,
    OpusStream, RtpPacket, Ssrc, TrackFiles, decode, speaking,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn random_bytes(rng: &mut Rng, max: u64) -> Vec<u8> {
    let len = rng.below(max) as usize;
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

/// A room where one publisher speaks properly and another sends garbage: random payloads,
/// Opus-framed nonsense, random SSRCs, sequence numbers and timestamps.
#[test]
fn garbage_in_a_room_costs_only_the_garbage() {
    let t0 = Instant::now();
    let mut rng = Rng::new(11);
    let mut noise = Rng::new(12);
    let mut s = Schedule::default();
    let mut good = Speaker::new("good", "TR_good", 440.0, 1, &mut rng);
    // A valid Opus packet of silence, for the flood of forged SSRCs.
    let mut silent = Speaker::new("evil", "TR_evil", 440.0, 0, &mut rng);
    silent.set_amplitude(0.0);
    for i in 0..300u32 {
        let t = f64::from(i) * 0.02;
        s.send(secs(t), &mut good, &mut rng, Loss::None);
        let (_, _, silence) = silent.packet();
        for k in 0..3 {
            let mut payload = random_bytes(&mut noise, 1_400);
            if k == 1 && !payload.is_empty() {
                // Valid framing (code 0, CELT 20 ms), random content.
                payload[0] = 31 << 3;
            }
            if k == 2 {
                // A forged SSRC each time: valid silence, or framing that is not Opus (a new
                // source whose noise would be its publisher's own audio is not the point).
                payload = if i % 2 == 0 {
                    silence.clone()
                } else {
                    vec![(31 << 3) | 3, 0]
                };
            }
            let (participant, track, ssrc) = match k {
                // The good publisher's own SSRC, forged fields.
                0 => ("good", "TR_good", 1),
                1 => ("evil", "TR_evil", 2),
                _ => ("evil", "TR_evil", noise.next_u64() as u32),
            };
            s.at(
                secs(t + 0.005),
                Event::Packet {
                    participant: participant.into(),
                    track: track.into(),
                    ssrc,
                    seq: noise.next_u64() as u16,
                    ts: noise.next_u64() as u32,
                    payload,
                },
            );
        }
        if i % 50 == 0 {
            s.at(
                secs(t),
                Event::Speaking("evil\u{0}/../".into(), i % 100 == 0),
            );
        }
    }
    let events = s.into_sorted();
    let mut egress = Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_bad".into(),
            room: "hall".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            },
            mix: MixConfig::default(),
            serial: 1,
        },
    )
    .unwrap();
    let (c, _) = run(t0, &mut egress, &events, Some(secs(6.0)), None);

    let Some(EgressEvent::Ended(info)) = c.events.last() else {
        panic!("{:?}", c.events);
    };
    let mix_stats = info.mix.unwrap();
    assert!(mix_stats.malformed > 0, "{mix_stats:?}");
    assert!(mix_stats.out_of_window > 0, "{mix_stats:?}");
    // Each forged SSRC retired the one before on the same track, which lives on only until
    // its buffered packet is played out (the 200 ms playout delay): about ten at 50 forged
    // SSRCs a second, not hundreds.
    assert!(mix_stats.sources > 100, "{mix_stats:?}");
    assert!(mix_stats.live_sources <= 16, "{mix_stats:?}");

    // The good speaker is whole in the mix and in their file, garbage or not.
    for artifact in [Artifact::Mix, Artifact::Participant("good".into())] {
        let stream = OpusStream::parse(c.file(&artifact)).unwrap();
        let pcm = decode(&stream).unwrap().samples;
        assert!((seconds(pcm.len()) - 6.0).abs() <= 0.1);
        let mut t = 0.3;
        while t + 0.2 <= 5.9 {
            let a = tone(window(&pcm, t, t + 0.2), 440.0);
            assert!(
                a > 0.2,
                "{artifact:?}: 440 Hz at {t:.1}s only {a:.3}; {:?}",
                info.tracks
            );
            t += 0.2;
        }
    }
    // The sidecar holds the odd identity as data.
    let text = String::from_utf8(c.file(&Artifact::Speaking).to_vec()).unwrap();
    assert!(
        speaking::spans(&text, 6_000)
            .iter()
            .any(|s| s.participant == "evil\u{0}/../")
    );
}

/// Random bytes and damaged recordings where a file is read: parse, decode and cut return
/// values or errors, never panic.
#[test]
fn damaged_recordings_read_without_panics() {
    let t0 = Instant::now();
    let mut rng = Rng::new(5);
    let mut s = Schedule::default();
    let mut speaker = Speaker::new("a", "TR_a", 440.0, 1, &mut rng);
    for i in 0..150u32 {
        s.send(
            secs(f64::from(i) * 0.02),
            &mut speaker,
            &mut rng,
            Loss::Some,
        );
    }
    let events = s.into_sorted();
    let mut egress = Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_x".into(),
            room: "r".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::Off,
            },
            mix: MixConfig::default(),
            serial: 1,
        },
    )
    .unwrap();
    let (c, _) = run(t0, &mut egress, &events, Some(secs(3.0)), None);
    let good = c.file(&Artifact::Mix).to_vec();
    assert!(OpusStream::parse(&good).is_ok());

    let mut noise = Rng::new(6);
    let try_all = |bytes: &[u8]| {
        if let Ok(stream) = OpusStream::parse(bytes) {
            let _ = decode(&stream);
            let _ = stream.playback_samples();
        }
        let _ = clip::cut(bytes, ClipRange::Last(secs(1.0)), 1);
        let _ = clip::cut(
            bytes,
            ClipRange::Between {
                start: secs(0.5),
                end: secs(2.0),
            },
            1,
        );
    };
    for _ in 0..300 {
        // Pure noise, sometimes behind a capture pattern.
        let mut bytes = random_bytes(&mut noise, 2_000);
        if noise.below(2) == 0 {
            bytes.splice(0..0, b"OggS\0".iter().copied());
        }
        try_all(&bytes);
        // The good file with a few bytes flipped, cut, or spliced.
        let mut damaged = good.clone();
        for _ in 0..1 + noise.below(8) {
            let at = noise.below(damaged.len() as u64) as usize;
            damaged[at] ^= noise.next_u64() as u8 | 1;
        }
        let cut = noise.below(damaged.len() as u64) as usize;
        try_all(&damaged);
        try_all(&damaged[..cut]);
        try_all(&damaged[cut..]);
    }
}

/// Packets in bursts: 700 ms of audio arriving at once as the egress starts (its first packet
/// was the most delayed, sent before the egress began), then again in the middle. Nothing panics (debug builds check
/// every subtraction), the speaker is heard after the burst, the files decode.
#[test]
fn bursts_of_packets() {
    let t0 = Instant::now();
    let mut rng = Rng::new(21);
    let mut s = Schedule::default();
    let mut a = Speaker::new("a", "TR_a", 440.0, 1, &mut rng);
    let packet = |a: &mut Speaker| {
        let (seq, ts, payload) = a.packet();
        Event::Packet {
            participant: "a".into(),
            track: "TR_a".into(),
            ssrc: 1,
            seq,
            ts,
            payload,
        }
    };
    for i in 0..275u32 {
        // The speaker started half a second before the egress: egress time = sent - 0.5 s.
        let sent = f64::from(i) * 0.02 - 0.5;
        // What was sent up to 0.2 s arrives at once at 0.2 s (a jam as the egress starts), and
        // 3.0-3.5 s at 3.5 s.
        let at = if sent < 0.2 {
            0.2
        } else if (3.0..3.5).contains(&sent) {
            3.5
        } else {
            sent + 0.01
        };
        let e = packet(&mut a);
        s.at(secs(at), e);
    }
    let events = s.into_sorted();
    let mut egress = Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_burst".into(),
            room: "r".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            },
            mix: MixConfig::default(),
            serial: 1,
        },
    )
    .unwrap();
    let (c, _) = run(t0, &mut egress, &events, Some(secs(5.0)), None);
    for artifact in [Artifact::Mix, Artifact::Participant("a".into())] {
        let pcm = decode(&OpusStream::parse(c.file(&artifact)).unwrap())
            .unwrap()
            .samples;
        assert!((seconds(pcm.len()) - 5.0).abs() <= 0.1, "{artifact:?}");
        assert!(tone(window(&pcm, 0.5, 2.8), 440.0) > 0.25, "{artifact:?}");
        assert!(tone(window(&pcm, 3.7, 4.9), 440.0) > 0.25, "{artifact:?}");
    }
}

/// Seeded random step machines (the fuzz target's steps, in a debug build where every
/// arithmetic overflow panics): plausible and implausible RTP from three publishers, track and
/// speaking events, time jumps, write failures, crashes and resumptions. Every file must read
/// back as Ogg/Opus, and an egress that ended normally has a mix as long as it ran.
#[test]
fn random_step_machines_never_panic() {
    let mut pool_rng = Rng::new(1);
    let mut pool_speaker = Speaker::new("p", "p", 500.0, 1, &mut pool_rng);
    let pool: Vec<Vec<u8>> = (0..20).map(|_| pool_speaker.packet().2).collect();
    for seed in 0..40u64 {
        let mut rng = Rng::new(1_000 + seed);
        let t0 = Instant::now();
        let mut now = t0;
        let kind = if seed % 3 == 0 {
            EgressKind::Track { track: "t1".into() }
        } else {
            EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            }
        };
        let config = EgressConfig {
            egress_id: format!("EG_{seed}"),
            room: "r".into(),
            kind,
            mix: MixConfig::default(),
            serial: 1,
        };
        let mut egress = Egress::new(t0, config.clone()).unwrap();
        let mut c = Collected::default();
        let mut seqs = [0u16; 3];
        let mut tss = [0u32; 3];
        for step in 0..300 {
            let who = rng.below(3) as usize;
            let name = ["a", "b", "c"][who];
            let track = ["t1", "t2", "t3"][who];
            match rng.below(10) {
                0..=5 => {
                    // Mostly the next packet; sometimes reordered, repeated or far off.
                    let (seq, ts) = match rng.below(20) {
                        0 => (rng.next_u64() as u16, rng.next_u64() as u32),
                        1 => (seqs[who].wrapping_sub(3), tss[who].wrapping_sub(2_880)),
                        2 => (seqs[who], tss[who].wrapping_add(48_000 * 5)),
                        _ => (seqs[who], tss[who]),
                    };
                    seqs[who] = seq.wrapping_add(1);
                    tss[who] = ts.wrapping_add(960);
                    let payload = match rng.below(8) {
                        0 => random_bytes(&mut rng, 60),
                        1 => vec![31 << 3],
                        _ => pool[rng.below(pool.len() as u64) as usize].clone(),
                    };
                    let ssrc = if rng.below(30) == 0 {
                        rng.below(5) as u32
                    } else {
                        who as u32
                    };
                    egress.handle_input(
                        now,
                        Input::Packet {
                            participant: name,
                            track,
                            packet: RtpPacket {
                                ssrc: Ssrc(ssrc),
                                sequence: seq,
                                timestamp: ts,
                                marker: false,
                                payload: &payload,
                            },
                        },
                    );
                }
                6 => {
                    let ms = if rng.below(20) == 0 {
                        5_000
                    } else {
                        rng.below(60)
                    };
                    now += Duration::from_millis(ms);
                    while let Some(t) = egress.poll_timeout().filter(|t| *t <= now) {
                        egress.handle_timeout(t);
                        c.drain(&mut egress);
                    }
                }
                7 => {
                    let input = match rng.below(4) {
                        0 => Input::TrackMuted {
                            participant: name,
                            track,
                        },
                        1 => Input::TrackUnmuted {
                            participant: name,
                            track,
                        },
                        2 => Input::TrackUnpublished {
                            participant: name,
                            track,
                        },
                        _ => Input::TrackPublished {
                            participant: name,
                            track,
                        },
                    };
                    egress.handle_input(now, input);
                }
                8 => egress.handle_input(
                    now,
                    Input::Speaking {
                        participant: name,
                        speaking: rng.below(2) == 0,
                    },
                ),
                _ => {
                    if rng.below(40) == 0 {
                        egress.handle_write_error(now, &Artifact::Mix, "test");
                    } else if rng.below(15) == 0 && !egress.is_ended() {
                        // A crash, the files torn, and a resumption a little later.
                        c.drain(&mut egress);
                        for bytes in c.files.values_mut() {
                            let cut = rng.below(bytes.len() as u64 / 4 + 1) as usize;
                            bytes.truncate(bytes.len() - cut);
                        }
                        let elapsed = now.duration_since(t0) + Duration::from_millis(300);
                        now += Duration::from_millis(300);
                        match Egress::resume(now, config.clone(), elapsed, &c.files) {
                            Ok(e) => egress = e,
                            Err(e) => panic!("seed {seed} step {step}: {e}"),
                        }
                    }
                }
            }
            c.drain(&mut egress);
        }
        egress.handle_input(now, Input::Stop);
        c.drain(&mut egress);
        let failed = c
            .events
            .iter()
            .any(|e| matches!(e, EgressEvent::Ended(i) if i.state == EgressState::Failed));
        for (artifact, bytes) in &c.files {
            if *artifact == Artifact::Speaking {
                continue;
            }
            let stream = OpusStream::parse(bytes)
                .unwrap_or_else(|e| panic!("seed {seed}: {artifact:?} unreadable: {e}"));
            let _ = decode(&stream);
            if *artifact == Artifact::Mix && !failed {
                let frames = now.duration_since(t0).as_micros() / 20_000;
                assert_eq!(
                    u128::from(stream.playback_samples()),
                    frames * 960,
                    "seed {seed}: mix length"
                );
            }
        }
    }
}
