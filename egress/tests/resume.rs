//! A recorder that crashes and comes back: the files it left (torn mid-page) are continued as
//! the same streams, on the original timeline, and play whole, in this crate's reader and in
//! libopusfile's `opusdec`.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::time::{Duration, Instant};

use common::*;
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressError, EgressEvent, EgressKind, EgressState, MixConfig,
    OpusStream, TrackFiles, decode, speaking,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn config() -> EgressConfig {
    EgressConfig {
        egress_id: "EG_resume".into(),
        room: "hall".into(),
        kind: EgressKind::RoomComposite {
            track_files: TrackFiles::PerParticipant,
        },
        mix: MixConfig::default(),
        serial: 40,
    }
}

fn pcm(bytes: &[u8]) -> Vec<f32> {
    decode(&OpusStream::parse(bytes).unwrap()).unwrap().samples
}

/// Crash at 7.3 s, the files torn; the recorder is back at 8.0 s (a new process: new
/// instants) and records until 10 s.
#[test]
fn a_crashed_recorder_resumes_its_files_on_the_original_timeline() {
    let t0 = Instant::now();
    let mut rng = Rng::new(41);
    let events = two_speaker_room(&mut rng);
    let mut first = Egress::new(t0, config()).unwrap();
    let (_, crashed) = run(t0, &mut first, &events, None, Some(secs(7.3)));
    let mut torn = crashed.unwrap();
    // The crash tore the last write of every file.
    for (artifact, bytes) in &mut torn.files {
        let cut = if *artifact == Artifact::Speaking {
            9
        } else {
            50
        };
        bytes.truncate(bytes.len() - cut);
    }
    torn.events.clear();

    let t1 = Instant::now() + secs(100.0);
    let back = 8.0;
    let mut second = Egress::resume(t1, config(), secs(back), &torn.files).unwrap();
    assert_eq!(second.state(), EgressState::Active);
    let later: Vec<(Duration, Event)> = events
        .iter()
        .filter(|(t, _)| t.as_secs_f64() >= back)
        .map(|(t, e)| (*t - secs(back), e.clone()))
        .collect();
    let (c, _) = run_from(torn.clone(), t1, &mut second, &later, Some(secs(2.0)), None);

    let Some(EgressEvent::Ended(info)) = c.events.last() else {
        panic!("{:?}", c.events);
    };
    assert_eq!(info.state, EgressState::Complete);
    assert_eq!(info.duration, secs(10.0));

    let mix = pcm(c.file(&Artifact::Mix));
    assert!(
        (seconds(mix.len()) - 10.0).abs() <= 0.1,
        "{}",
        seconds(mix.len())
    );
    assert!(
        tone(window(&mix, 0.3, 2.9), 440.0) > 0.25,
        "before the crash"
    );
    assert!(tone(window(&mix, 7.35, 7.95), 440.0) < 0.03, "down");
    assert!(tone(window(&mix, 7.35, 7.95), 880.0) < 0.03, "down");
    assert!(tone(window(&mix, 8.3, 9.9), 440.0) > 0.25, "after");
    assert!(tone(window(&mix, 8.3, 9.9), 880.0) > 0.25, "after");
    let back_at = onset(&mix, 440.0, 7.4, 0.2).unwrap();
    assert!((back_at - 8.0).abs() < 0.08, "resumed at {back_at}");

    for (who, freq) in [("alice", 440.0), ("bob", 880.0)] {
        let file = pcm(c.file(&Artifact::Participant(who.into())));
        assert!((seconds(file.len()) - 10.0).abs() <= 0.1, "{who}");
        assert!(tone(window(&file, 7.35, 7.95), freq) < 0.03, "{who} down");
        assert!(tone(window(&file, 8.2, 9.9), freq) > 0.25, "{who} after");
        let back_at = onset(&file, freq, 7.4, 0.2).unwrap();
        assert!((back_at - 8.0).abs() < 0.06, "{who} resumed at {back_at}");
    }
    let stream = OpusStream::parse(c.file(&Artifact::Mix)).unwrap();
    // End trimming cuts into the last packet only: the resumed timeline lines up with the
    // frames written before the crash.
    let last = stream.packets.last().unwrap();
    assert!(stream.end_granule.unwrap() > last.start);

    // The sidecar lost its torn line only.
    let text = String::from_utf8(c.file(&Artifact::Speaking).to_vec()).unwrap();
    assert!(text.ends_with('\n'));
    assert!(
        speaking::spans(&text, 10_000)
            .iter()
            .any(|s| s.participant == "alice" && s.start_ms == 0)
    );

    // A finished egress does not resume.
    let done = Egress::resume(t1, config(), secs(11.0), &c.files);
    assert!(matches!(done, Err(EgressError::Finished(_))), "{done:?}");
}

/// Files that are not recordings are started anew, on the original timeline.
#[test]
fn unreadable_files_start_anew() {
    let t1 = Instant::now();
    let mut files = std::collections::BTreeMap::new();
    files.insert(Artifact::Mix, b"garbage".to_vec());
    files.insert(Artifact::Participant("zed".into()), vec![0u8; 100]);
    let mut egress = Egress::resume(t1, config(), secs(3.0), &files).unwrap();
    let c0 = Collected {
        files: files.clone(),
        events: Vec::new(),
    };
    let (c, _) = run_from(c0, t1, &mut egress, &[], Some(secs(1.0)), None);
    let mix = OpusStream::parse(c.file(&Artifact::Mix)).unwrap();
    assert_eq!(mix.playback_samples(), 4 * 48_000);
    let zed = OpusStream::parse(c.file(&Artifact::Participant("zed".into()))).unwrap();
    assert!((zed.playback_samples() as i64 - 4 * 48_000).abs() <= 120);
}
