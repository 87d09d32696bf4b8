//! The file shell: an egress written to disk through `FileSink`, read back by this crate and by
//! libopusfile's `opusdec` (the reference Ogg/Opus reader, Debian opus-tools); and what happens
//! when the disk is full or a file cannot be opened.
#![cfg(feature = "fs")]
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use stoa_egress::clip::{self, ClipRange};
use stoa_egress::shell::FileSink;
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressEvent, EgressKind, EgressState, Input, MixConfig,
    OpusStream, RtpPacket, Ssrc, TrackFiles, decode,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn composite(t0: Instant) -> Egress {
    Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_files".into(),
            room: "hall".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            },
            mix: MixConfig::default(),
            serial: 1,
        },
    )
    .unwrap()
}

/// Drives `egress` through `events` into `sink` until `stop` (or, without it, until the last
/// event), returning the events.
fn drive(
    t0: Instant,
    egress: &mut Egress,
    sink: &mut FileSink,
    events: &[(Duration, Event)],
    stop: Option<Duration>,
) -> Vec<EgressEvent> {
    let mut out = sink.drive(t0, egress);
    let advance = |to: Instant, egress: &mut Egress, sink: &mut FileSink, out: &mut Vec<_>| {
        for _ in 0..1_000_000 {
            match egress.poll_timeout() {
                Some(t) if t <= to => {
                    egress.handle_timeout(t);
                    out.extend(sink.drive(t, egress));
                }
                _ => return,
            }
        }
        panic!("timeouts never settle");
    };
    for (t, e) in events {
        let now = t0 + *t;
        advance(now, egress, sink, &mut out);
        if let Event::Packet {
            participant,
            track,
            ssrc,
            seq,
            ts,
            payload,
        } = e
        {
            egress.handle_input(
                now,
                Input::Packet {
                    participant,
                    track,
                    packet: RtpPacket {
                        ssrc: Ssrc(*ssrc),
                        sequence: *seq,
                        timestamp: *ts,
                        marker: false,
                        payload,
                    },
                },
            );
        }
        out.extend(sink.drive(now, egress));
    }
    if let Some(stop) = stop {
        advance(t0 + stop, egress, sink, &mut out);
        egress.handle_input(t0 + stop, Input::Stop);
        out.extend(sink.drive(t0 + stop, egress));
    }
    out
}

/// Decodes `file` with opusdec to 48 kHz 16-bit PCM.
fn opusdec(file: &Path) -> Vec<f32> {
    let wav = file.with_extension("wav");
    let status = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000", "--force-wav"])
        .arg(file)
        .arg(&wav)
        .status()
        .expect("opusdec (Debian opus-tools, installed by test.sh)");
    assert!(status.success(), "opusdec failed on {}", file.display());
    let bytes = std::fs::read(&wav).unwrap();
    // The samples are the "data" chunk's.
    let at = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    bytes[at..]
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0)
        .collect()
}

#[test]
fn a_room_on_disk_plays_in_opusdec() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::create(dir.path().join("hall").join("EG_files")).unwrap();
    let mut rng = Rng::new(31);
    let events = two_speaker_room(&mut rng);
    let mut egress = composite(t0);
    let ended = drive(t0, &mut egress, &mut sink, &events, Some(secs(10.0)));
    let Some(EgressEvent::Ended(info)) = ended.last() else {
        panic!("{ended:?}");
    };
    assert_eq!(info.state, EgressState::Complete);

    let room = sink.path(&Artifact::Mix);
    let alice = sink.path(&Artifact::Participant("alice".into()));
    assert!(room.ends_with("hall/EG_files/room.ogg"));
    assert!(sink.path(&Artifact::Speaking).exists());
    for path in [&room, &alice] {
        let ours = decode(&OpusStream::parse(&std::fs::read(path).unwrap()).unwrap())
            .unwrap()
            .samples;
        let theirs = opusdec(path);
        // Same length to the sample: opusdec honours pre-skip and end trimming as we do.
        assert_eq!(theirs.len(), ours.len(), "{}", path.display());
        assert!((seconds(theirs.len()) - 10.0).abs() <= 0.1);
        assert!(tone(window(&theirs, 0.3, 2.9), 440.0) > 0.25);
        assert!(tone(window(&theirs, 3.3, 4.9), 440.0) < 0.03);
        assert!(tone(window(&theirs, 5.2, 9.9), 440.0) > 0.25);
    }
    let mix = opusdec(&room);
    assert!(tone(window(&mix, 2.2, 5.9), 880.0) > 0.25);
    assert!(tone(window(&mix, 0.0, 1.9), 880.0) < 0.03);

    // A clip plays in opusdec at its exact length.
    let cut = clip::cut(
        &std::fs::read(&room).unwrap(),
        ClipRange::Between {
            start: secs(4.5),
            end: secs(6.0),
        },
        2,
    )
    .unwrap();
    let clip_path = dir.path().join("clip.ogg");
    std::fs::write(&clip_path, &cut.bytes).unwrap();
    assert_eq!(opusdec(&clip_path).len(), 72_000);

    // The mix cut by a crash (mid-page) still plays up to its last page.
    let bytes = std::fs::read(&room).unwrap();
    let torn = dir.path().join("torn.ogg");
    std::fs::write(&torn, &bytes[..bytes.len() * 2 / 3 + 17]).unwrap();
    let played = seconds(opusdec(&torn).len());
    assert!((5.0..7.0).contains(&played), "{played}");
}

/// /dev/full as the mix's file: every write fails with "no space left on device".
#[test]
fn a_full_disk_ends_the_egress_as_failed() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::create(dir.path()).unwrap();
    std::os::unix::fs::symlink("/dev/full", sink.path(&Artifact::Mix)).unwrap();
    let mut rng = Rng::new(1);
    let events = two_speaker_room(&mut rng);
    let mut egress = composite(t0);
    let out = drive(t0, &mut egress, &mut sink, &events[..50], None);
    let Some(EgressEvent::Ended(info)) = out.last() else {
        panic!("{out:?}");
    };
    assert_eq!(info.state, EgressState::Failed);
    let error = info.error.as_deref().unwrap();
    assert!(error.contains("Mix") && error.contains("space"), "{error}");
    assert!(egress.is_ended() && egress.poll_timeout().is_none());
    // Later input changes nothing and writes nothing.
    egress.handle_input(t0 + secs(1.0), Input::Stop);
    assert!(sink.drive(t0 + secs(1.0), &mut egress).is_empty());
}

/// A file that cannot be opened (a directory in its place), and a directory that cannot be
/// created.
#[test]
fn an_unwritable_file_ends_the_egress_as_failed() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut sink = FileSink::create(dir.path()).unwrap();
    std::fs::create_dir(sink.path(&Artifact::Speaking)).unwrap();
    let mut egress = composite(t0);
    let out = sink.drive(t0, &mut egress);
    let Some(EgressEvent::Ended(info)) = out.last() else {
        panic!("{out:?}");
    };
    assert_eq!(info.state, EgressState::Failed);
    assert!(info.error.as_deref().unwrap().contains("Speaking"));

    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(FileSink::create(file.join("sub")).is_err());
}

/// A recorder killed mid-write and started again on the same directory: `FileSink::existing`
/// finds the files, `Egress::resume` continues them, and opusdec plays each whole.
#[test]
fn a_restarted_recorder_continues_its_files_on_disk() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("EG_files");
    let mut rng = Rng::new(43);
    let events = two_speaker_room(&mut rng);
    let crash = events
        .iter()
        .position(|(t, _)| t.as_secs_f64() > 6.3)
        .unwrap();
    {
        let mut sink = FileSink::create(&path).unwrap();
        let mut egress = composite(t0);
        drive(t0, &mut egress, &mut sink, &events[..crash], None);
        // Killed mid-write: half a page at the end of the mix.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(sink.path(&Artifact::Mix))
            .unwrap();
        std::io::Write::write_all(&mut f, b"OggS\0\0\0\0\0\0").unwrap();
    }
    let t1 = Instant::now() + secs(50.0);
    let mut sink = FileSink::create(&path).unwrap();
    let existing = sink.existing().unwrap();
    assert!(existing.contains_key(&Artifact::Participant("bob".into())));
    let config = EgressConfig {
        egress_id: "EG_files".into(),
        room: "hall".into(),
        kind: EgressKind::RoomComposite {
            track_files: TrackFiles::PerParticipant,
        },
        mix: MixConfig::default(),
        serial: 1,
    };
    let mut egress = Egress::resume(t1, config, secs(7.0), &existing).unwrap();
    let later: Vec<(Duration, Event)> = events
        .iter()
        .filter(|(t, _)| t.as_secs_f64() >= 7.0)
        .map(|(t, e)| (*t - secs(7.0), e.clone()))
        .collect();
    let ended = drive(t1, &mut egress, &mut sink, &later, Some(secs(3.0)));
    assert!(
        matches!(ended.last(), Some(EgressEvent::Ended(i)) if i.state == EgressState::Complete)
    );
    for artifact in [
        Artifact::Mix,
        Artifact::Participant("alice".into()),
        Artifact::Participant("bob".into()),
    ] {
        let file = sink.path(&artifact);
        let ours = decode(&OpusStream::parse(&std::fs::read(&file).unwrap()).unwrap())
            .unwrap()
            .samples;
        let theirs = opusdec(&file);
        assert_eq!(theirs.len(), ours.len(), "{artifact:?}");
        assert!((seconds(theirs.len()) - 10.0).abs() <= 0.1, "{artifact:?}");
        assert!(tone(window(&theirs, 8.0, 9.9), 440.0) > 0.2 || artifact != Artifact::Mix);
    }
}
