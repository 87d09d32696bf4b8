//! A node's recorder: egresses started, stopped and listed by id as LiveKit's Egress API does,
//! room events reaching the egresses of that room only.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)] // a test: its epoch is the one clock read

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use stoa_egress::{
    Artifact, EgressConfig, EgressEvent, EgressKind, EgressState, Input, MixConfig, OpusStream,
    Output, Recorder, RecorderError, RecorderLimits, RtpPacket, Ssrc, TrackFiles, decode,
};

fn config(id: &str, room: &str, kind: EgressKind) -> EgressConfig {
    EgressConfig {
        egress_id: id.into(),
        room: room.into(),
        kind,
        mix: MixConfig::default(),
        serial: 1,
    }
}

fn composite() -> EgressKind {
    EgressKind::RoomComposite {
        track_files: TrackFiles::Off,
    }
}

#[derive(Default)]
struct Node {
    files: BTreeMap<(String, Artifact), Vec<u8>>,
    events: Vec<(String, EgressEvent)>,
}

impl Node {
    fn drain(&mut self, r: &mut Recorder) {
        while let Some((id, out)) = r.poll_output() {
            match out {
                Output::Write { artifact, bytes } => {
                    self.files.entry((id, artifact)).or_default().extend(bytes)
                }
                Output::Truncate { artifact, len } => self
                    .files
                    .entry((id, artifact))
                    .or_default()
                    .truncate(len as usize),
                Output::Event(e) => self.events.push((id, e)),
            }
        }
    }

    fn ended(&self, id: &str) -> Option<EgressState> {
        self.events.iter().find_map(|(i, e)| match e {
            EgressEvent::Ended(info) if i == id => Some(info.state),
            _ => None,
        })
    }
}

#[test]
fn egresses_by_id_and_room() {
    let t0 = Instant::now();
    let mut r = Recorder::new(RecorderLimits {
        max_active: 3,
        max_ended: 2,
    });
    let mut node = Node::default();
    r.start(t0, config("EG_a", "hall", composite())).unwrap();
    r.start(
        t0,
        config(
            "EG_t",
            "hall",
            EgressKind::Track {
                track: "TR_alice".into(),
            },
        ),
    )
    .unwrap();
    r.start(t0, config("EG_b", "lobby", composite())).unwrap();
    node.drain(&mut r);
    assert!(r.is_recording("hall") && r.is_recording("lobby") && !r.is_recording("attic"));
    assert!(matches!(
        r.start(t0, config("EG_a", "hall", composite())),
        Err(RecorderError::AlreadyExists(_))
    ));
    assert!(matches!(
        r.start(t0, config("EG_c", "attic", composite())),
        Err(RecorderError::TooMany(3))
    ));

    // Alice speaks in the hall for 2 s.
    let mut rng = Rng::new(2);
    let mut alice = Speaker::new("alice", "TR_alice", 440.0, 9, &mut rng);
    for i in 1..=100u32 {
        let now = t0 + Duration::from_millis(20 * u64::from(i));
        while let Some(t) = r.poll_timeout().filter(|t| *t <= now) {
            r.handle_timeout(t);
            node.drain(&mut r);
        }
        let (seq, ts, payload) = alice.packet();
        r.handle_input(
            now,
            "hall",
            Input::Packet {
                participant: "alice",
                track: "TR_alice",
                packet: RtpPacket {
                    ssrc: Ssrc(9),
                    sequence: seq,
                    timestamp: ts,
                    marker: false,
                    payload: &payload,
                },
            },
        );
        node.drain(&mut r);
    }
    let two = t0 + Duration::from_secs(2);

    // StopEgress on one, ListEgress, StopEgress again.
    assert_eq!(
        r.info("EG_t").unwrap().state.livekit_status(),
        1,
        "EGRESS_ACTIVE"
    );
    let info = r.stop(two, "EG_t").unwrap();
    assert_eq!(info.state, EgressState::Complete);
    assert_eq!(info.state.livekit_status(), 3, "EGRESS_COMPLETE");
    node.drain(&mut r);
    assert_eq!(node.ended("EG_t"), Some(EgressState::Complete));
    assert!(matches!(
        r.stop(two, "EG_t"),
        Err(RecorderError::Ended {
            state: EgressState::Complete,
            ..
        })
    ));
    assert!(matches!(
        r.stop(two, "EG_zz"),
        Err(RecorderError::NotFound(_))
    ));
    let ids = |list: Vec<stoa_egress::EgressInfo>| -> Vec<String> {
        list.into_iter().map(|i| i.egress_id).collect()
    };
    assert_eq!(ids(r.list(Some("hall"), false)), ["EG_a", "EG_t"]);
    assert_eq!(ids(r.list(Some("hall"), true)), ["EG_a"]);
    assert_eq!(ids(r.list(None, true)), ["EG_a", "EG_b"]);
    assert_eq!(r.info("EG_t").unwrap().state, EgressState::Complete);

    // The hall closes: its egresses end; the lobby's runs on.
    r.handle_input(two, "hall", Input::Stop);
    node.drain(&mut r);
    assert_eq!(node.ended("EG_a"), Some(EgressState::Complete));
    assert!(!r.is_recording("hall") && r.is_recording("lobby"));
    r.stop(two, "EG_b").unwrap();
    node.drain(&mut r);

    // Alice's tone is in the hall's files, not in the lobby's.
    let decode_file = |id: &str, artifact: Artifact| {
        let bytes = &node.files[&(id.to_string(), artifact)];
        decode(&OpusStream::parse(bytes).unwrap()).unwrap().samples
    };
    let hall = decode_file("EG_a", Artifact::Mix);
    let track = decode_file("EG_t", Artifact::Track("TR_alice".into()));
    let lobby = decode_file("EG_b", Artifact::Mix);
    assert!(tone(window(&hall, 0.5, 1.8), 440.0) > 0.25);
    assert!(tone(window(&track, 0.3, 1.9), 440.0) > 0.25);
    assert!(tone(&lobby, 440.0) < 0.01);
    assert_eq!(lobby.len(), 96_000, "2 s, silent");
    assert!(lobby.iter().all(|s| s.abs() < 1e-3));
    // The idle lobby wrote lost frames after 200 ms of encoded silence.
    let lobby_stats = r.info("EG_b").unwrap().mix.unwrap();
    assert!(lobby_stats.skipped >= 85, "{lobby_stats:?}");

    // Only the last two ended egresses are remembered.
    assert_eq!(ids(r.list(None, false)), ["EG_a", "EG_b"]);
    assert!(matches!(
        r.stop(two, "EG_t"),
        Err(RecorderError::NotFound(_))
    ));
    assert!(r.poll_timeout().is_none());
}
