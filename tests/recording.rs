//! Room recording end to end: a `stoa serve` child process, rooms and recordings through the
//! REST API, speakers publishing real Opus (stoa-bench's str0m peers, through ICE, DTLS and
//! SRTP on loopback), and the files the recorder wrote decoded with stoa-egress's reader and
//! checked by opus-tools' `opusinfo`. Every wait is bounded.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use serde_json::json;
use stoa_bench::client::Command;
use stoa_egress::decode;
use support::api::call as api;
use support::tones::{Speakers, finished, tone_levels};
use support::{SignalClient, Stoa, scratch_dir};

const KEY: &str = "reckey";
const SECRET: &str = "a-long-enough-recording-test-secret-0123";

fn user_token(id: &str) -> String {
    support::tones::user_token((KEY, SECRET), id)
}

/// The tones: the host's and the other speaker's.
const HANA_HZ: u32 = 440;
const LEE_HZ: u32 = 880;

/// `stoa serve` with its data under `dir` and its recordings in `recordings` (each speaker's
/// track in its own file too with `track_files`).
fn serve(dir: &Path, recordings: &Path, track_files: bool) -> Stoa {
    let config = dir.join("stoa.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\n{KEY} = \"{SECRET}\"\n[control]\ndata_dir = \"{}\"\n\
             [recording]\ndir = \"{}\"\ntrack_files = {track_files}\n",
            dir.join("data").display(),
            recordings.display()
        ),
    )
    .unwrap();
    Stoa::start(&config, &[])
}

/// The one recording directory under `<dir>/<room>/` whose name is not in `seen`.
fn new_recording(dir: &Path, room: &str, seen: &[PathBuf]) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(room))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !seen.contains(p))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// Indexes of the 100 ms windows in `range` whose level is under `floor`.
fn quiet(levels: &[f32], range: std::ops::Range<usize>, floor: f32) -> Vec<usize> {
    range
        .filter(|i| levels.get(*i).is_some_and(|l| *l < floor))
        .collect()
}

/// `opusinfo` (opus-tools) reads the file without complaint; its reported length in seconds.
fn opusinfo(file: &Path) -> f64 {
    let out = std::process::Command::new("opusinfo")
        .arg(file)
        .output()
        .expect("opusinfo (opus-tools) is installed by test.sh");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "opusinfo failed:\n{text}");
    assert!(!text.contains("WARNING"), "opusinfo warns:\n{text}");
    // "Playback length: 6m:32.123s" or "Playback length: 0m:06.52s".
    let length = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Playback length:"))
        .unwrap_or_else(|| panic!("no length:\n{text}"))
        .trim();
    let (minutes, seconds) = length.split_once("m:").unwrap();
    let seconds: f64 = seconds.trim_end_matches('s').parse().unwrap();
    minutes.parse::<f64>().unwrap() * 60.0 + seconds
}

fn active_recording(m: &lk::signal_response::Message) -> Option<bool> {
    match m {
        lk::signal_response::Message::RoomUpdate(u) => u.room.as_ref().map(|r| r.active_recording),
        _ => None,
    }
}

/// A listener's session in the room, joined through the control plane: its JoinResponse.
fn listen(addr: SocketAddr, room: &str, who: &str) -> (SignalClient, lk::JoinResponse) {
    let (status, grant) = api(
        addr,
        "POST",
        &format!("/api/rooms/{room}/token"),
        &user_token(who),
        None,
    );
    assert_eq!(status, 200, "{grant}");
    SignalClient::join(addr, grant["token"].as_str().unwrap())
}

/// The host records a room through /api while speakers come, mute, leave and rejoin; every
/// participant is told; stopping finishes a playable file of the right length with sound all
/// along; a second recording ends with the room.
#[test]
fn a_host_records_a_room_and_everyone_knows() {
    let dir = scratch_dir("recording");
    let recordings = dir.join("recordings");
    let stoa = serve(&dir, &recordings, true);
    let addr = stoa.addr;
    let host = user_token("hana");

    // An open room: every member may speak.
    let (status, room) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Recorded", "kind": "open"})),
    );
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["recording"], false);
    let id = room["id"].as_str().unwrap().to_owned();
    let speakers = Speakers::new(addr, &id, (KEY, SECRET));
    let hana = speakers.join("hana", HANA_HZ);
    speakers.wait_sent(50);

    // A listener who is there before the recording starts.
    let (mut early, joined) = listen(addr, &id, "ann");
    assert!(!joined.room.unwrap().active_recording);

    // Only the host (or a co-host) records.
    let path = format!("/api/rooms/{id}/recording");
    let (status, err) = api(addr, "POST", &path, &user_token("ann"), None);
    assert_eq!(
        (status, err["code"].as_str()),
        (403, Some("not_allowed")),
        "{err}"
    );
    let (status, view) = api(addr, "POST", &path, &host, None);
    let started = Instant::now();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["recording"], true);
    // Everyone knows: the listener already in the room gets a RoomUpdate, one joining now
    // sees it in its JoinResponse.
    early.wait_for("active_recording", |m| active_recording(m).filter(|on| *on));
    let (late_listener, joined) = listen(addr, &id, "bo");
    assert!(joined.room.unwrap().active_recording);
    late_listener.close();

    // A speaker joining late, the host muting and unmuting, the late speaker leaving and
    // rejoining. Times are seconds since the recording started.
    let at = || started.elapsed().as_secs_f64();
    speakers.wait_sent(25);
    let lee = speakers.join("lee", LEE_HZ);
    speakers.wait_sent(150);
    let muted = at();
    hana.command(Command::Silence);
    std::thread::sleep(Duration::from_millis(1_500));
    let unmuted = at();
    hana.command(Command::Speak);
    speakers.wait_sent(60);
    let left = at();
    lee.command(Command::Leave);
    let lee_again = speakers.join("lee", LEE_HZ);
    speakers.wait_sent(150);

    let (status, view) = api(addr, "DELETE", &path, &host, None);
    let stopped = Instant::now();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["recording"], false);
    early.wait_for("active_recording off", |m| {
        active_recording(m).filter(|on| !*on)
    });

    let first = new_recording(&recordings, &id, &[]);
    let mix = finished(&first.join("room.ogg"));
    let pcm = decode(&mix).unwrap();
    let seconds = pcm.samples.len() as f64 / 48_000.0;
    let wall = stopped.duration_since(started).as_secs_f64();
    // The recorder starts and stops a few ms after the API answers.
    assert!(
        (seconds - wall).abs() < 0.3,
        "the mix lasts {seconds:.3} s, the recording {wall:.3} s"
    );
    // Both tones where their speakers spoke, on the recording's timeline: the host's from
    // the start to the mute and again after it (no gap: it comes back when she did), silence
    // of hers while muted; the late speaker's before leaving and again after rejoining.
    let window = |t: f64| (t * 10.0) as usize;
    let end = window(seconds);
    let hana_levels = tone_levels(&pcm.samples, HANA_HZ);
    let lee_levels = tone_levels(&pcm.samples, LEE_HZ);
    let report = || {
        format!(
            "440 Hz {hana_levels:.2?}\n880 Hz {lee_levels:.2?}\nmuted {muted:.2} unmuted {unmuted:.2} left {left:.2}"
        )
    };
    assert_eq!(
        quiet(&hana_levels, 3..window(muted), 0.05),
        Vec::<usize>::new(),
        "{}",
        report()
    );
    assert_eq!(
        quiet(&hana_levels, window(unmuted) + 5..end - 2, 0.05),
        Vec::<usize>::new(),
        "{}",
        report()
    );
    let mute_windows = window(muted) + 4..window(unmuted) - 1;
    assert!(mute_windows.len() >= 8, "{}", report());
    assert!(
        mute_windows.clone().all(|i| hana_levels[i] < 0.02),
        "{}",
        report()
    );
    // Lee's tone while the host was muted (joined, connected and heard), and after rejoining.
    assert!(
        mute_windows.clone().all(|i| lee_levels[i] > 0.05),
        "{}",
        report()
    );
    let rejoined = (window(left) + 2..end - 2)
        .filter(|i| lee_levels[*i] > 0.05)
        .count();
    assert!(
        rejoined >= 10,
        "{rejoined} windows of the rejoined speaker\n{}",
        report()
    );
    let length = opusinfo(&first.join("room.ogg"));
    assert!(
        (length - seconds).abs() < 0.05,
        "opusinfo {length} s, decoded {seconds} s"
    );
    // Each speaker's own file, their packets as received, on the same timeline.
    for who in ["hana", "lee"] {
        let file = first.join(format!("participant-{who}.ogg"));
        let stream = finished(&file);
        let pcm = decode(&stream).unwrap();
        let hz = if who == "hana" { HANA_HZ } else { LEE_HZ };
        let energy = tone_levels(&pcm.samples, hz)
            .iter()
            .filter(|l| **l > 0.05)
            .count();
        assert!(energy >= 10, "{who}: {energy} windows with sound");
        opusinfo(&file);
    }
    // Who spoke when, beside the mix: the server's active-speaker detection heard both.
    let speaking = std::fs::read_to_string(first.join("speaking.jsonl")).unwrap();
    for who in ["hana", "lee"] {
        assert!(
            speaking.contains(&format!(r#""participant":"{who}","activity":"speaking""#)),
            "{speaking}"
        );
    }

    // A second recording, ended by the end of the room.
    let (status, _) = api(addr, "POST", &path, &host, None);
    assert_eq!(status, 200);
    let again = Instant::now();
    speakers.wait_sent(100);
    let (status, view) = api(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    let ended = Instant::now();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["recording"], false);
    let second = new_recording(&recordings, &id, &[first]);
    let pcm = decode(&finished(&second.join("room.ogg"))).unwrap();
    let seconds = pcm.samples.len() as f64 / 48_000.0;
    let wall = ended.duration_since(again).as_secs_f64();
    assert!(
        (seconds - wall).abs() < 0.3,
        "{seconds:.3} s against {wall:.3} s"
    );
    assert!(tone_levels(&pcm.samples, HANA_HZ).iter().any(|l| *l > 0.05));
    assert!(tone_levels(&pcm.samples, LEE_HZ).iter().any(|l| *l > 0.05));

    // Stopping what is not recorded, or recording an ended room, is refused clearly.
    let (status, err) = api(addr, "POST", &path, &host, None);
    assert_eq!(
        (status, err["code"].as_str()),
        (409, Some("room_ended")),
        "{err}"
    );

    for c in [hana, lee_again] {
        c.command(Command::Leave);
    }
    early.close();
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A room created with recording on records from the moment it goes live, without anyone
/// asking, and its recording ends with the room.
#[test]
fn a_room_created_recorded_records_from_its_start() {
    let dir = scratch_dir("recording-auto");
    let recordings = dir.join("recordings");
    let stoa = serve(&dir, &recordings, false);
    let addr = stoa.addr;
    let host = user_token("hana");
    let (status, room) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Recorded from the start", "kind": "open", "recording": true})),
    );
    let created = Instant::now();
    assert_eq!(status, 201, "{room}");
    assert_eq!(room["recording"], true);
    let id = room["id"].as_str().unwrap().to_owned();
    let (mut listener, joined) = listen(addr, &id, "ann");
    assert!(joined.room.unwrap().active_recording);
    let speakers = Speakers::new(addr, &id, (KEY, SECRET));
    let hana = speakers.join("hana", HANA_HZ);
    speakers.wait_sent(100);
    let (status, _) = api(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    let ended = Instant::now();
    assert_eq!(status, 200);
    // The listener is told the room is gone.
    listener.wait_for("leave", |m| match m {
        lk::signal_response::Message::Leave(_) => Some(()),
        _ => None,
    });
    let recording = new_recording(&recordings, &id, &[]);
    let pcm = decode(&finished(&recording.join("room.ogg"))).unwrap();
    let seconds = pcm.samples.len() as f64 / 48_000.0;
    let wall = ended.duration_since(created).as_secs_f64();
    assert!(
        (seconds - wall).abs() < 0.3,
        "{seconds:.3} s against {wall:.3} s"
    );
    let heard = tone_levels(&pcm.samples, HANA_HZ)
        .iter()
        .filter(|l| **l > 0.05)
        .count();
    assert!(heard >= 15, "{heard} windows with the host's tone");
    // Without track_files, the mix and the sidecar only.
    let mut names: Vec<String> = std::fs::read_dir(&recording)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["room.ogg", "speaking.jsonl"]);
    hana.command(Command::Leave);

    // A recording running when the server stops (SIGTERM) is finished, not cut.
    let (status, room) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Recorded until shutdown", "kind": "open", "recording": true})),
    );
    assert_eq!(status, 201, "{room}");
    let id = room["id"].as_str().unwrap().to_owned();
    let speakers = Speakers::new(addr, &id, (KEY, SECRET));
    let hana = speakers.join("hana", HANA_HZ);
    speakers.wait_sent(50);
    stoa.stop();
    let recording = new_recording(&recordings, &id, &[]);
    let stream = finished(&recording.join("room.ogg"));
    assert!(stream.end_granule.is_some());
    opusinfo(&recording.join("room.ogg"));
    hana.command(Command::Leave);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording that cannot be written (the directory is a file) stops by itself: the room's
/// view and its participants stop saying it is recorded, the live room goes on, and the host
/// may try again (with the same result).
#[test]
fn a_recording_that_cannot_be_written_stops_and_says_so() {
    let dir = scratch_dir("recording-unwritable");
    let not_a_dir = dir.join("recordings");
    std::fs::write(&not_a_dir, "a file where the directory should be").unwrap();
    let stoa = serve(&dir, &not_a_dir, false);
    let addr = stoa.addr;
    let host = user_token("hana");
    let (status, room) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Not recordable", "kind": "open"})),
    );
    assert_eq!(status, 201, "{room}");
    let id = room["id"].as_str().unwrap().to_owned();
    let (mut listener, _) = listen(addr, &id, "ann");
    for attempt in 0..2 {
        let (status, view) = api(
            addr,
            "POST",
            &format!("/api/rooms/{id}/recording"),
            &host,
            None,
        );
        assert_eq!(status, 200, "attempt {attempt}: {view}");
        let deadline = Instant::now() + support::TIMEOUT;
        loop {
            let (status, view) = api(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
            assert_eq!(status, 200, "{view}");
            assert_eq!(view["state"], "live", "the room goes on");
            if view["recording"] == false {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the failed recording is still on: {view}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The participant was told, and then told it stopped.
        listener.wait_for("active_recording off", |m| {
            active_recording(m).filter(|on| !*on)
        });
    }
    assert!(
        stoa.log_text().contains("recording directory"),
        "{}",
        stoa.log_text()
    );
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
