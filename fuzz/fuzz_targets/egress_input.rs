//! Fuzzes the recording core with what publishers can send and with what a damaged recording
//! holds. The first byte chooses:
//!
//! - even: the rest is a sequence of steps fed to a room-composite `Egress` with a file per
//!   speaker, `[kind: u8][len: u8][len bytes]`: kind % 5 == 0 an RTP packet
//!   (`[participant][ssrc][seq: 2][ts: 4][payload…]`), 1 time passing (the first byte, in
//!   5 ms steps), 2 a track event (mute, unmute, unpublish, publish), 3 a speaking change,
//!   4 a write failure reported by the shell. It ends with a stop; every output file must then
//!   read back as Ogg/Opus, the mix exactly as long as the egress ran (to the frame).
//! - odd: the rest is a recording: it is parsed, decoded and cut.
//!
//! Nothing may panic.
#![no_main]
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stoa_egress::clip::{self, ClipRange};
use stoa_egress::{
    Artifact, Egress, EgressConfig, EgressEvent, EgressKind, EgressState, Input, MixConfig,
    Output, OpusStream, RtpPacket, Ssrc, TrackFiles, decode,
};

const WHO: [&str; 3] = ["alice", "bob", "carol"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 1 {
        read(rest);
    } else {
        feed(rest);
    }
});

fn read(bytes: &[u8]) {
    if let Ok(stream) = OpusStream::parse(bytes) {
        let _ = stream.playback_samples();
        // Decoding is libopus' own work: keep it to short streams.
        if stream.packets.len() < 64 {
            let _ = decode(&stream);
        }
    }
    let _ = clip::cut(bytes, ClipRange::Last(Duration::from_millis(500)), 1);
    let _ = clip::cut(
        bytes,
        ClipRange::Between {
            start: Duration::from_millis(20),
            end: Duration::from_millis(300),
        },
        1,
    );
}

fn feed(mut steps: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let Ok(mut egress) = Egress::new(
        t0,
        EgressConfig {
            egress_id: "EG_fuzz".into(),
            room: "fuzz".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            },
            mix: MixConfig::default(),
            serial: 1,
        },
    ) else {
        return;
    };
    let mut files: std::collections::BTreeMap<Artifact, Vec<u8>> = Default::default();
    let mut failed = false;
    let mut drain = |egress: &mut Egress, failed: &mut bool| {
        while let Some(out) = egress.poll_output() {
            match out {
                Output::Write { artifact, bytes } => {
                    files.entry(artifact).or_default().extend(bytes)
                }
                Output::Truncate { artifact, len } => files
                    .entry(artifact)
                    .or_default()
                    .truncate(usize::try_from(len).unwrap_or(usize::MAX)),
                Output::Event(EgressEvent::Ended(info)) => {
                    *failed |= info.state == EgressState::Failed
                }
                Output::Event(_) => {}
            }
        }
    };
    while let [kind, len, tail @ ..] = steps {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        steps = next;
        let who = WHO[usize::from(body.first().copied().unwrap_or(0)) % WHO.len()];
        match kind % 5 {
            0 if body.len() >= 8 => {
                let packet = RtpPacket {
                    ssrc: Ssrc(u32::from(body[1] % 4)),
                    sequence: u16::from_be_bytes([body[2], body[3]]),
                    timestamp: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                    marker: false,
                    payload: &body[8..],
                };
                egress.handle_input(
                    now,
                    Input::Packet {
                        participant: who,
                        track: who,
                        packet,
                    },
                );
            }
            1 => {
                let ms = 5 * u64::from(body.first().copied().unwrap_or(1));
                now += Duration::from_millis(ms);
                while let Some(t) = egress.poll_timeout().filter(|t| *t <= now) {
                    egress.handle_timeout(t);
                    drain(&mut egress, &mut failed);
                }
            }
            2 => {
                let input = match body.get(1).copied().unwrap_or(0) % 4 {
                    0 => Input::TrackMuted { participant: who, track: who },
                    1 => Input::TrackUnmuted { participant: who, track: who },
                    2 => Input::TrackUnpublished { participant: who, track: who },
                    _ => Input::TrackPublished { participant: who, track: who },
                };
                egress.handle_input(now, input);
            }
            3 => egress.handle_input(
                now,
                Input::Speaking {
                    participant: who,
                    speaking: body.len() % 2 == 0,
                },
            ),
            4 if body.len() == 1 => egress.handle_write_error(now, &Artifact::Mix, "fuzz"),
            _ => {}
        }
        drain(&mut egress, &mut failed);
    }
    egress.handle_input(now, Input::Stop);
    drain(&mut egress, &mut failed);
    for (artifact, bytes) in &files {
        if *artifact == Artifact::Speaking {
            continue;
        }
        let stream = OpusStream::parse(bytes).expect("the egress wrote unreadable Ogg/Opus");
        if *artifact == Artifact::Mix && !failed {
            let frames = now.duration_since(t0).as_micros() / 20_000;
            assert_eq!(u128::from(stream.playback_samples()), frames * 960);
        }
    }
}
