//! A room recorded on simulated time: two publishers sending tones (440 Hz, 880 Hz) through a
//! lossy, reordering network, one muting and coming back, the other joining late and rejoining
//! with a new SSRC. The files are decoded back (this crate's Ogg reader and libopus) and
//! checked: both tones where they belong, durations, no gap after the mute, clip boundaries,
//! a file cut by a crash still decoding.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::time::{Duration, Instant};

use common::*;
use stoa_egress::clip::{self, ClipRange};
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressEvent, EgressKind, EgressState, MixConfig, OpusStream,
    TrackFiles, decode, speaking,
};

const STOP: f64 = 10.0;
/// Allowed error on tone onsets: one packet of network delay on the anchor packet (≤ 50 ms)
/// plus the detector's 2.5 ms step.
const ONSET_TOLERANCE: f64 = 0.06;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn composite(t0: Instant, track_files: TrackFiles) -> Egress {
    Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_test".into(),
            room: "hall".into(),
            kind: EgressKind::RoomComposite { track_files },
            mix: MixConfig::default(),
            serial: 100,
        },
    )
    .unwrap()
}

fn pcm(bytes: &[u8]) -> Vec<f32> {
    let stream = OpusStream::parse(bytes).unwrap();
    let pcm = decode(&stream).unwrap();
    assert_eq!(pcm.offset, 0);
    pcm.samples
}

fn assert_tone(samples: &[f32], freq: f64, from: f64, to: f64, what: &str) {
    // Every 100 ms window holds the tone: no dropout anywhere.
    let mut t = from;
    while t + 0.1 <= to {
        let a = tone(window(samples, t, t + 0.1), freq);
        assert!(a > 0.15, "{what}: {freq} Hz at {t:.2}s only {a:.3}");
        t += 0.1;
    }
}

fn assert_quiet(samples: &[f32], freq: f64, from: f64, to: f64, what: &str) {
    let a = tone(window(samples, from, to), freq);
    assert!(a < 0.03, "{what}: {freq} Hz in {from}-{to}s at {a:.3}");
}

fn assert_onset(samples: &[f32], freq: f64, from: f64, expected: f64, what: &str) {
    let got = onset(samples, freq, from, 0.2).unwrap_or(f64::INFINITY);
    assert!(
        (got - expected).abs() <= ONSET_TOLERANCE,
        "{what}: {freq} Hz starts at {got:.3}s, expected {expected}s"
    );
}

#[test]
fn room_mix_and_speaker_files_keep_the_timeline() {
    let t0 = Instant::now();
    let mut rng = Rng::new(19);
    let events = two_speaker_room(&mut rng);
    let mut egress = composite(t0, TrackFiles::PerParticipant);
    let (c, _) = run(t0, &mut egress, &events, Some(secs(STOP)), None);

    // The mix: as long as the room was recorded, both tones where they were sent.
    let mix = pcm(c.file(&Artifact::Mix));
    assert!(
        (seconds(mix.len()) - STOP).abs() <= 0.1,
        "mix lasts {}",
        seconds(mix.len())
    );
    assert_tone(&mix, 440.0, 0.3, 2.9, "mix");
    assert_quiet(&mix, 440.0, 3.3, 4.9, "mix, alice muted");
    assert_onset(&mix, 440.0, 4.0, 5.0, "mix, alice back");
    assert_tone(&mix, 440.0, 5.2, 9.9, "mix");
    assert_quiet(&mix, 880.0, 0.0, 1.9, "mix, before bob joined");
    assert_onset(&mix, 880.0, 1.0, 2.0, "mix, bob joins");
    assert_tone(&mix, 880.0, 2.2, 5.9, "mix");
    assert_quiet(&mix, 880.0, 6.2, 6.45, "mix, bob away");
    assert_onset(&mix, 880.0, 6.1, 6.5, "mix, bob rejoined");
    assert_tone(&mix, 880.0, 6.7, 9.9, "mix");
    assert!(mix.iter().all(|s| s.abs() <= 1.0));

    // Alice's own file: her packets as received, the mute kept as time.
    let alice = pcm(c.file(&Artifact::Participant("alice".into())));
    assert!((seconds(alice.len()) - STOP).abs() <= 0.1);
    assert_tone(&alice, 440.0, 0.3, 2.9, "alice");
    assert_quiet(&alice, 440.0, 3.3, 4.9, "alice muted");
    assert_onset(&alice, 440.0, 4.0, 5.0, "alice back");
    assert_tone(&alice, 440.0, 5.2, 9.9, "alice");
    assert_quiet(&alice, 880.0, 0.3, 9.9, "alice's file");

    // Bob's: time 0 is the egress start; the rejoin (new SSRC, new track) continues the file.
    let bob = pcm(c.file(&Artifact::Participant("bob".into())));
    assert!((seconds(bob.len()) - STOP).abs() <= 0.1);
    assert_quiet(&bob, 880.0, 0.0, 1.9, "bob before joining");
    assert_onset(&bob, 880.0, 1.0, 2.0, "bob joins");
    assert_tone(&bob, 880.0, 2.2, 5.9, "bob");
    assert_quiet(&bob, 880.0, 6.2, 6.45, "bob away");
    assert_onset(&bob, 880.0, 6.1, 6.5, "bob rejoined");
    assert_tone(&bob, 880.0, 6.7, 9.9, "bob");

    // Events and counters.
    assert!(matches!(c.events[0], EgressEvent::Started));
    assert!(matches!(c.events[1], EgressEvent::Active));
    let Some(EgressEvent::Ended(info)) = c.events.last() else {
        panic!("no end event: {:?}", c.events);
    };
    assert_eq!(info.state, EgressState::Complete);
    assert_eq!(info.duration, secs(STOP));
    let mix_stats = info.mix.unwrap();
    assert_eq!(mix_stats.sources, 3);
    assert!(mix_stats.duplicates > 0, "{mix_stats:?}");
    assert_eq!(mix_stats.malformed, 0);
    let mix_file = info
        .files
        .iter()
        .find(|f| f.artifact == Artifact::Mix)
        .unwrap();
    assert_eq!(mix_file.bytes, c.file(&Artifact::Mix).len() as u64);
    assert_eq!(mix_file.duration, secs(STOP));
    assert!(
        info.tracks
            .iter()
            .any(|(a, s)| *a == Artifact::Participant("bob".into()) && s.sessions == 2)
    );

    // Who spoke when, from the sidecar.
    let text = String::from_utf8(c.file(&Artifact::Speaking).to_vec()).unwrap();
    let spans = speaking::spans(&text, 10_000);
    let of = |p: &str| -> Vec<(u64, u64)> {
        spans
            .iter()
            .filter(|s| s.participant == p)
            .map(|s| (s.start_ms, s.end_ms))
            .collect()
    };
    assert_eq!(of("alice"), vec![(0, 3_000), (5_000, 10_000)]);
    assert_eq!(of("bob"), vec![(2_000, 6_000), (6_500, 10_000)]);
}

#[test]
fn a_file_cut_by_a_crash_decodes_up_to_its_last_page() {
    let t0 = Instant::now();
    let mut rng = Rng::new(7);
    let events = two_speaker_room(&mut rng);
    let mut egress = composite(t0, TrackFiles::PerParticipant);
    let crash = 7.3;
    let (_, snapshot) = run(t0, &mut egress, &events, None, Some(secs(crash)));
    let snapshot = snapshot.unwrap();
    for artifact in [Artifact::Mix, Artifact::Participant("alice".into())] {
        let file = snapshot.file(&artifact);
        let whole = pcm(file);
        // Pages close every second of audio; the mix runs 200 ms behind.
        let length = seconds(whole.len());
        assert!(
            length >= crash - 1.3 && length <= crash,
            "{artifact:?}: {length}s"
        );
        assert_tone(&whole, 440.0, 0.3, 2.9, "crashed file");
        // Cut anywhere, even mid-page: a prefix decodes, never an error.
        let mut previous = 0;
        for cut in (0..=file.len()).step_by(97).chain([file.len() - 1]) {
            let Ok(stream) = OpusStream::parse(&file[..cut]) else {
                assert!(cut < 200, "headers unreadable at {cut}");
                continue;
            };
            let decoded = decode(&stream).unwrap();
            assert!(decoded.samples.len() >= previous || cut == file.len() - 1);
            previous = decoded.samples.len();
        }
    }
}

#[test]
fn clips_cut_exact_ranges_and_the_last_seconds() {
    let t0 = Instant::now();
    let mut rng = Rng::new(23);
    let events = two_speaker_room(&mut rng);
    let mut egress = composite(t0, TrackFiles::Off);
    let (c, _) = run(t0, &mut egress, &events, Some(secs(STOP)), None);
    assert_eq!(
        c.files.keys().collect::<Vec<_>>(),
        [&Artifact::Mix, &Artifact::Speaking],
        "no speaker files unless asked"
    );
    let recording = c.file(&Artifact::Mix);
    let mix = pcm(recording);

    // [4.5 s, 6.0 s): alice comes back at 5.0 s inside it.
    let cut = clip::cut(
        recording,
        ClipRange::Between {
            start: secs(4.5),
            end: secs(6.0),
        },
        9,
    )
    .unwrap();
    assert_eq!((cut.start, cut.end), (secs(4.5), secs(6.0)));
    let samples = pcm(&cut.bytes);
    assert_eq!(samples.len(), 72_000, "1.5 s to the sample");
    // Where the clip sits in the recording: the lag that best aligns it (after the first
    // 100 ms, where the decoder converges from the pre-roll) is 0 within 40 ms.
    let lag = best_lag(&mix, &samples, 4.5, 1_920);
    assert!(lag.abs() <= 48, "clip is {lag} samples off");
    assert_onset(&samples, 440.0, 0.0, 0.5, "clip");

    // The last 3 seconds.
    let last = clip::cut(recording, ClipRange::Last(secs(3.0)), 10).unwrap();
    assert_eq!((last.start, last.end), (secs(7.0), secs(10.0)));
    let samples = pcm(&last.bytes);
    assert_eq!(samples.len(), 144_000);
    assert!(best_lag(&mix, &samples, 7.0, 1_920).abs() <= 48);

    // Bad ranges are errors, not panics.
    let past = clip::cut(
        recording,
        ClipRange::Between {
            start: secs(11.0),
            end: secs(12.0),
        },
        1,
    );
    assert!(
        matches!(past, Err(clip::ClipError::PastEnd { .. })),
        "{past:?}"
    );
    let empty = clip::cut(
        recording,
        ClipRange::Between {
            start: secs(2.0),
            end: secs(2.0),
        },
        1,
    );
    assert!(matches!(empty, Err(clip::ClipError::Empty)));
    // A range running past the end is cut at the end.
    let tail = clip::cut(
        recording,
        ClipRange::Between {
            start: secs(9.0),
            end: secs(60.0),
        },
        1,
    )
    .unwrap();
    assert_eq!(pcm(&tail.bytes).len(), 48_000);
    assert!(matches!(
        clip::cut(b"not a recording", ClipRange::Last(secs(1.0)), 1),
        Err(clip::ClipError::Read(_))
    ));
}

/// The lag (in samples, within ±`search`) at which `clip` (from 100 ms on) best matches
/// `whole` around `start` seconds: normalised cross-correlation.
fn best_lag(whole: &[f32], clip: &[f32], start: f64, search: i64) -> i64 {
    let skip = 4_800usize;
    let part = &clip[skip..(skip + 24_000).min(clip.len())];
    let base = (start * f64::from(RATE)) as i64 + skip as i64;
    let mut best = (f64::MIN, 0i64);
    let coarse = (-search..=search).step_by(4);
    let fine = |centre: i64| (centre - 3)..=(centre + 3);
    let mut lags: Vec<i64> = coarse.collect();
    let mut refined = false;
    while let Some(lag) = lags.pop() {
        let from = base + lag;
        if from < 0 || from as usize + part.len() > whole.len() {
            continue;
        }
        let w = &whole[from as usize..from as usize + part.len()];
        let dot: f64 = w.iter().zip(part).map(|(a, b)| f64::from(*a * *b)).sum();
        let norm: f64 = w.iter().map(|a| f64::from(*a * *a)).sum::<f64>().sqrt()
            * part.iter().map(|b| f64::from(*b * *b)).sum::<f64>().sqrt();
        let score = dot / norm.max(1e-9);
        if score > best.0 {
            best = (score, lag);
        }
        if lags.is_empty() && !refined {
            refined = true;
            lags = fine(best.1).collect();
        }
    }
    assert!(best.0 > 0.9, "clip does not match the recording: {best:?}");
    best.1
}

#[test]
fn a_clip_of_a_live_recording_ends_at_its_last_page() {
    let t0 = Instant::now();
    let mut rng = Rng::new(29);
    let events = two_speaker_room(&mut rng);
    let mut egress = composite(t0, TrackFiles::Off);
    let (_, live) = run(t0, &mut egress, &events, None, Some(secs(6.5)));
    let live = live.unwrap();
    let file = live.file(&Artifact::Mix);
    let length = OpusStream::parse(file).unwrap().playback_samples();
    assert!(length > 4 * 48_000, "{length}");
    let last = clip::cut(file, ClipRange::Last(secs(2.0)), 3).unwrap();
    let samples = pcm(&last.bytes);
    assert_eq!(samples.len(), 96_000);
    assert_eq!(
        last.end.as_nanos() * 48_000 / 1_000_000_000,
        u128::from(length)
    );
    assert!(tone(&samples, 880.0) > 0.2, "bob was speaking");
}

/// Two loud speakers (each at 0.8 of full scale, 1.6 together): the mix never clips, both
/// tones come through, and the distortion stays far below what clipping the sum would make.
#[test]
fn loud_speakers_are_limited_not_clipped() {
    let t0 = Instant::now();
    let mut rng = Rng::new(5);
    let mut s = Schedule::default();
    let mut a = Speaker::new("a", "TR_a", 440.0, 1, &mut rng);
    let mut b = Speaker::new("b", "TR_b", 700.0, 2, &mut rng);
    a.set_amplitude(0.8);
    b.set_amplitude(0.8);
    for i in 0..150u32 {
        let t = secs(f64::from(i) * 0.02);
        s.send(t, &mut a, &mut rng, Loss::None);
        s.send(t, &mut b, &mut rng, Loss::None);
    }
    let events = s.into_sorted();
    let mut egress = composite(t0, TrackFiles::Off);
    let (c, _) = run(t0, &mut egress, &events, Some(secs(3.0)), None);
    let mix = pcm(c.file(&Artifact::Mix));
    let steady = window(&mix, 1.0, 2.8);
    let peak = steady.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(peak < 0.97, "peak {peak}");
    let residual = |x: &[f32]| {
        let power = x.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>() / x.len() as f64;
        let (p, q) = (tone(x, 440.0), tone(x, 700.0));
        (power - (p * p + q * q) / 2.0).max(0.0) / power
    };
    let (p, q) = (tone(steady, 440.0), tone(steady, 700.0));
    assert!(p > 0.4 && q > 0.4 && (p / q - 1.0).abs() < 0.2, "{p} {q}");
    // The same sum clipped at the limiter's ceiling, as a hard limiter would.
    let clipped: Vec<f32> = (0..steady.len())
        .map(|i| {
            let t = i as f64 / 48_000.0;
            let x = 0.8 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + 0.8 * (2.0 * std::f64::consts::PI * 700.0 * t).sin();
            x.clamp(-0.891, 0.891) as f32
        })
        .collect();
    let (ours, hard) = (residual(steady), residual(&clipped));
    assert!(
        ours < hard / 20.0,
        "distortion {ours:.4} against clipping's {hard:.4}"
    );
}
