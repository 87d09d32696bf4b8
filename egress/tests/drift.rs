//! Senders whose clocks run off ours (0.5 % fast and 0.5 % slow, a hundred times what real
//! clocks do, so a minute shows it): their talk spurts stay where they happened, in the mix
//! and in their own files, instead of drifting by 300 ms over the minute.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::time::{Duration, Instant};

use common::*;
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressEvent, EgressKind, MixConfig, OpusStream, TrackFiles,
    decode,
};

const MINUTE: f64 = 60.0;
const SPURT: f64 = 1.5;
const PERIOD: f64 = 2.0;

/// Spurts of 1.5 s every 2 s of the sender's own time; its clock runs `rate` times ours.
fn sender(s: &mut Schedule, speaker: &mut Speaker, rate: f64, rng: &mut Rng) -> Vec<f64> {
    let mut onsets = Vec::new();
    let packets = (MINUTE / 0.02) as u32 - 100;
    for i in 0..packets {
        let own = f64::from(i) * 0.02;
        if own % PERIOD >= SPURT {
            speaker.skip(1);
            continue;
        }
        let wall = own / rate;
        if own % PERIOD < 0.01 {
            onsets.push(wall);
        }
        let loss = if own % PERIOD < 0.2 {
            Loss::None
        } else {
            Loss::Some
        };
        s.send(Duration::from_secs_f64(wall), speaker, rng, loss);
    }
    onsets
}

#[test]
fn drifting_senders_stay_on_the_timeline() {
    let t0 = Instant::now();
    let mut rng = Rng::new(8);
    let mut s = Schedule::default();
    let mut fast = Speaker::new("fast", "TR_fast", 440.0, 1, &mut rng);
    let mut slow = Speaker::new("slow", "TR_slow", 880.0, 2, &mut rng);
    let fast_onsets = sender(&mut s, &mut fast, 1.005, &mut rng);
    let slow_onsets = sender(&mut s, &mut slow, 0.995, &mut rng);
    let events = s.into_sorted();
    let mut egress = Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_drift".into(),
            room: "r".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            },
            mix: MixConfig::default(),
            serial: 1,
        },
    )
    .unwrap();
    let (c, _) = run(
        t0,
        &mut egress,
        &events,
        Some(Duration::from_secs_f64(MINUTE)),
        None,
    );
    let Some(EgressEvent::Ended(info)) = c.events.last() else {
        panic!()
    };
    assert!(info.mix.unwrap().resyncs > 0);

    let mix = decode(&OpusStream::parse(c.file(&Artifact::Mix)).unwrap())
        .unwrap()
        .samples;
    assert!((seconds(mix.len()) - MINUTE).abs() <= 0.1);
    let check = |pcm: &[f32], freq: f64, onsets: &[f64], what: &str| {
        let mut worst = 0.0f64;
        for &t in onsets.iter().skip(1) {
            let got = onset(pcm, freq, t - 0.3, 0.2).unwrap_or(f64::INFINITY);
            worst = worst.max((got - t).abs());
            // No dropout inside the spurt.
            let a = tone(window(pcm, t + 0.1, t + 1.4), freq);
            assert!(a > 0.2, "{what}: spurt at {t:.2}s only {a:.3}");
        }
        assert!(worst <= 0.06, "{what}: a spurt is {worst:.3}s off");
    };
    check(&mix, 440.0, &fast_onsets, "mix, fast sender");
    check(&mix, 880.0, &slow_onsets, "mix, slow sender");
    for (who, freq, onsets) in [("fast", 440.0, &fast_onsets), ("slow", 880.0, &slow_onsets)] {
        let file = decode(&OpusStream::parse(c.file(&Artifact::Participant(who.into()))).unwrap())
            .unwrap()
            .samples;
        assert!((seconds(file.len()) - MINUTE).abs() <= 0.1, "{who}");
        check(&file, freq, onsets, who);
    }
}
