//! LiveKit's Egress API end to end: a `stoa serve` child process, a speaker sending a 440 Hz
//! tone through real WebRTC (stoa-bench's str0m peer, ICE, DTLS and SRTP on loopback), the
//! unmodified server SDKs — npm `livekit-server-sdk`'s `EgressClient`
//! (`tests/sdk/egress_sdk.mjs`) and PyPI `livekit-api` (`tests/python/livekit_egress_test.py`)
//! — starting, listing and stopping audio-only room composite egresses, the files they name
//! decoded and the tone found (each where its `filepath` put it, templates filled in; paths
//! that leave the recording directory refused), the `egress_*` webhooks verified with a
//! LiveKit receiver (`StopEgress` answers `EGRESS_ENDING`, told as `egress_updated` before
//! `egress_ended`), and a recording that cannot be written failing as it should. Every wait is
//! bounded.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use serde_json::{Value, json};
use stoa_bench::client::{ClientHandle, Command};
use stoa_control::auth::Keys;
use stoa_control::model::UserId;
use stoa_egress::{OpusStream, decode};
use support::api::call as api;
use support::hooks::HookReceiver;
use support::tones::{Speakers, tone_levels};
use support::{Stoa, scratch_dir};

const KEY: &str = "egresskey";
const SECRET: &str = "a-long-enough-egress-test-secret-0123456789";
const TONE_HZ: u32 = 440;

fn user_token(id: &str) -> String {
    Keys::new(vec![(KEY.into(), SECRET.into())])
        .unwrap()
        .user_token(&UserId::parse(id).unwrap(), id, Duration::from_secs(3600))
        .unwrap()
}

/// A server token with `grants` (as a server SDK mints it).
fn server_token(grants: stoa_signaling::token::VideoGrants) -> String {
    stoa_signaling::token::mint(
        KEY,
        SECRET,
        "server",
        None,
        grants,
        Duration::from_secs(600),
        support::unix_now(),
    )
    .unwrap()
}

fn record_token() -> String {
    server_token(stoa_signaling::token::VideoGrants {
        room_record: true,
        ..Default::default()
    })
}

/// One Twirp `livekit.Egress` call with a JSON body: (status, JSON).
fn twirp(addr: SocketAddr, method: &str, token: &str, body: &Value) -> (u16, Value) {
    api(
        addr,
        "POST",
        &format!("/twirp/livekit.Egress/{method}"),
        token,
        Some(body.clone()),
    )
}

/// A speaker sending a tone (stoa-bench's str0m peer), joined through the control plane.
struct Speaker {
    speakers: Speakers,
    client: ClientHandle,
}

impl Speaker {
    fn join(addr: SocketAddr, room: &str, identity: &str) -> Speaker {
        let speakers = Speakers::new(addr, room, (KEY, SECRET));
        let client = speakers.join(identity, TONE_HZ);
        Speaker { speakers, client }
    }

    /// Waits (bounded) until `n` more packets were sent.
    fn wait_sent(&self, n: u64) {
        self.speakers.wait_sent(n);
    }

    fn leave(self) {
        self.client.command(Command::Leave);
    }
}

impl HookReceiver {
    /// Every LiveKit event so far, as a LiveKit server SDK's receiver checks and parses it.
    fn events(&self) -> Vec<lk::WebhookEvent> {
        let receiver = livekit_api::webhooks::WebhookReceiver::new(
            livekit_api::access_token::TokenVerifier::with_api_key(KEY, SECRET),
        );
        let got = self.requests();
        got.iter()
            .filter(|(_, body)| !body.contains("\"control.")) // the control plane's own
            .map(|(auth, body)| {
                receiver
                    .receive(body, auth)
                    .unwrap_or_else(|e| panic!("signature or body of {body}: {e}"))
            })
            .collect()
    }

    /// The control plane's webhook bodies so far.
    fn control(&self) -> Vec<Value> {
        let got = self.requests();
        got.iter()
            .filter_map(|(_, body)| serde_json::from_str::<Value>(body).ok())
            .filter(|v| {
                v["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("control."))
            })
            .collect()
    }

    /// Waits (bounded) for an `event` about egress `id` matching `want`.
    fn wait_egress(
        &self,
        event: &str,
        id: &str,
        want: impl Fn(&lk::EgressInfo) -> bool,
    ) -> lk::EgressInfo {
        let deadline = Instant::now() + support::TIMEOUT;
        loop {
            let found = self.events().into_iter().find_map(|e| {
                let info = e.egress_info.filter(|i| i.egress_id == id)?;
                (e.event == event && want(&info)).then_some(info)
            });
            if let Some(info) = found {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "no {event} for {id}: {:?}",
                self.events()
                    .iter()
                    .map(|e| e.event.clone())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An SDK script run as a child: its stdout lines as they come, its stdin to let it go on.
struct Script {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Script {
    fn start(mut command: std::process::Command) -> Script {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Script {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The value of the next line holding `key` (bounded); fails on a `failed` line.
    fn wait(&mut self, key: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "no {key:?} from the script; it said:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            assert!(
                v.get("failed").is_none(),
                "the script failed:\n{}",
                self.seen.join("\n")
            );
            if let Some(found) = v.get(key) {
                return found.clone();
            }
        }
    }

    fn go_on(&mut self) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + support::TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "script: {status}\n{}",
                    self.seen.join("\n")
                );
                return;
            }
            assert!(Instant::now() < deadline, "the script did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The finished Ogg/Opus file at `path`, decoded: its seconds, and the share of its 100 ms
/// windows in which the tone sounds.
fn tone_in(path: &Path) -> (f64, f64) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stream = OpusStream::parse(&bytes).unwrap();
    assert!(
        stream.end_granule.is_some(),
        "{} is finished",
        path.display()
    );
    let pcm = decode(&stream).unwrap();
    let levels = tone_levels(&pcm.samples, TONE_HZ);
    let loud = levels.iter().filter(|l| **l > 0.05).count();
    (
        pcm.samples.len() as f64 / 48_000.0,
        loud as f64 / levels.len().max(1) as f64,
    )
}

/// `ListEgress` with `filter` until its items satisfy `done` (bounded); the answer.
fn list_until(
    addr: SocketAddr,
    token: &str,
    filter: &Value,
    done: impl Fn(&[Value]) -> bool,
) -> Value {
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let (status, list) = twirp(addr, "ListEgress", token, filter);
        assert_eq!(status, 200, "{list}");
        // Protobuf JSON leaves an empty list out.
        let items = list["items"].as_array().cloned().unwrap_or_default();
        if done(&items) {
            return json!({ "items": items });
        }
        assert!(Instant::now() < deadline, "ListEgress {filter}: {list}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn room_view(addr: SocketAddr, id: &str, host: &str) -> Value {
    let (status, view) = api(addr, "GET", &format!("/api/rooms/{id}"), host, None);
    assert_eq!(status, 200, "{view}");
    view
}

fn write_config(dir: &Path, recordings: &Path, hooks: &HookReceiver) -> PathBuf {
    let config = dir.join("stoa.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\n{KEY} = \"{SECRET}\"\n[control]\ndata_dir = \"{}\"\n\
             [recording]\ndir = \"{}\"\n[webhook]\napi_key = \"{KEY}\"\nurls = [\"{}\"]\n",
            dir.join("data").display(),
            recordings.display(),
            hooks.url(),
        ),
    )
    .unwrap();
    config
}

/// Checks what one SDK run recorded: the file it was told of holds the tone for about as
/// long as the egress ran, and the three webhooks came with its `EgressInfo`.
fn check_recorded(hooks: &HookReceiver, done: &Value, seconds_at_least: f64) -> String {
    let id = done["egress_id"].as_str().unwrap().to_owned();
    let location = PathBuf::from(done["location"].as_str().unwrap());
    let (seconds, loud) = tone_in(&location);
    assert!(
        seconds >= seconds_at_least && seconds < 60.0,
        "{seconds:.2} s in {}",
        location.display()
    );
    assert!(loud > 0.8, "the tone in {:.0} % of the file", loud * 100.0);
    hooks.wait_egress("egress_started", &id, |i| {
        i.status == lk::EgressStatus::EgressStarting as i32 && i.started_at > 0
    });
    hooks.wait_egress("egress_updated", &id, |i| {
        i.status == lk::EgressStatus::EgressActive as i32
    });
    let ended = hooks.wait_egress("egress_ended", &id, |i| {
        i.status == lk::EgressStatus::EgressComplete as i32
    });
    ended_after_ending(hooks, &id);
    assert!(ended.ended_at >= ended.started_at && ended.updated_at >= ended.started_at);
    assert!(ended.error.is_empty(), "{}", ended.error);
    let file = &ended.file_results[0];
    assert_eq!(Path::new(&file.location), location);
    assert!(file.size > 0 && file.size as u64 <= std::fs::metadata(&location).unwrap().len());
    assert!(
        ((file.duration as f64 / 1e9) - seconds).abs() < 0.2,
        "{} ns against {seconds} s",
        file.duration
    );
    id
}

/// Stopping told `egress_updated` with EGRESS_ENDING before `egress_ended`, as LiveKit does.
fn ended_after_ending(hooks: &HookReceiver, id: &str) {
    let ending = lk::EgressStatus::EgressEnding as i32;
    hooks.wait_egress("egress_updated", id, |i| i.status == ending);
    let events: Vec<(String, i32)> = hooks
        .events()
        .into_iter()
        .filter_map(|e| {
            let info = e.egress_info.filter(|i| i.egress_id == id)?;
            Some((e.event, info.status))
        })
        .collect();
    let at = |event: &str, status: Option<i32>| {
        events
            .iter()
            .position(|(e, s)| e == event && status.is_none_or(|st| st == *s))
    };
    let (Some(ending_at), Some(ended_at)) =
        (at("egress_updated", Some(ending)), at("egress_ended", None))
    else {
        panic!("{id}: {events:?}");
    };
    assert!(ending_at < ended_at, "{id}: {events:?}");
}

/// The SDKs from npm and PyPI record a live room through `livekit.Egress`, each a file with
/// the speaker's tone; the room's view says recorded meanwhile (one truth with `/api`), and a
/// recording started through `/api` is listed and stopped through the Egress API.
#[test]
fn egress_sdks_record_a_live_room_and_webhooks_tell() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let node_sdk = root.join("tests/sdk/node_modules/livekit-server-sdk/package.json");
    let python = root.join("tests/python/.venv/bin/python");
    for needed in [&node_sdk, &python] {
        assert!(
            needed.exists(),
            "{} is missing. Run ./test.sh first: it runs `npm ci` in tests/sdk and installs \
             tests/python/requirements.txt into tests/python/.venv.",
            needed.display()
        );
    }
    let dir = scratch_dir("egress-sdk");
    let recordings = dir.join("recordings");
    let hooks = HookReceiver::start(0);
    let stoa = Stoa::start(&write_config(&dir, &recordings, &hooks), &[]);
    let addr = stoa.addr;
    let host = user_token("hana");
    let id = support::api::create_room(addr, &host, json!({"title": "Egress", "kind": "open"}));
    let speaker = Speaker::join(addr, &id, "hana");
    speaker.wait_sent(50);
    let url = format!("http://{addr}");

    // Without the roomRecord grant: permission_denied, as LiveKit answers.
    let admin = server_token(stoa_signaling::token::VideoGrants {
        room_admin: true,
        room_list: true,
        room: id.clone(),
        ..Default::default()
    });
    let (status, err) = twirp(addr, "ListEgress", &admin, &json!({}));
    assert_eq!(
        (status, err["code"].as_str()),
        (403, Some("permission_denied")),
        "{err}"
    );

    // npm livekit-server-sdk.
    let mut node = std::process::Command::new("node");
    node.arg(root.join("tests/sdk/egress_sdk.mjs"))
        .args([&url, KEY, SECRET, &id]);
    let mut script = Script::start(node);
    let egress = script.wait("started");
    let view = room_view(addr, &id, &host);
    assert_eq!(view["recording"], true, "the room's view says so: {view}");
    speaker.wait_sent(150);
    script.go_on();
    let done = script.wait("done");
    script.finish();
    assert_eq!(done["egress_id"], egress);
    assert_eq!(room_view(addr, &id, &host)["recording"], false);
    check_recorded(&hooks, &done, 2.5);

    // PyPI livekit-api.
    let mut py = std::process::Command::new(&python);
    py.arg(root.join("tests/python/livekit_egress_test.py"))
        .args([&url, KEY, SECRET, &id]);
    let mut script = Script::start(py);
    script.wait("started");
    assert_eq!(room_view(addr, &id, &host)["recording"], true);
    speaker.wait_sent(150);
    script.go_on();
    let done = script.wait("done");
    script.finish();
    assert_eq!(room_view(addr, &id, &host)["recording"], false);
    check_recorded(&hooks, &done, 2.5);

    // One truth: a recording the host starts through /api is the room's egress, and stopping
    // it through the Egress API stops the room's recording.
    let view = support::api::ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/recording"),
        &host,
        None,
    );
    assert_eq!(view["recording"], true);
    let rec = record_token();
    // The recorder hears of it through the control plane's bus, a moment later.
    let list = list_until(
        addr,
        &rec,
        &json!({"roomName": id, "active": true}),
        |items| !items.is_empty(),
    );
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    let api_egress = items[0]["egressId"].as_str().unwrap().to_owned();
    assert!(items[0]["roomComposite"]["audioOnly"] == true, "{list}");
    // Starting again answers the running one (a room has one recording).
    let (status, again) = twirp(
        addr,
        "StartRoomCompositeEgress",
        &rec,
        &json!({"roomName": id, "audioOnly": true, "fileOutputs": [{"fileType": "OGG"}]}),
    );
    assert_eq!(
        (status, again["egressId"].as_str()),
        (200, Some(api_egress.as_str())),
        "{again}"
    );
    speaker.wait_sent(50);
    let (status, stopped) = twirp(addr, "StopEgress", &rec, &json!({"egressId": api_egress}));
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "EGRESS_ENDING", "{stopped}");
    assert_eq!(room_view(addr, &id, &host)["recording"], false);
    hooks.wait_egress("egress_ended", &api_egress, |i| {
        i.status == lk::EgressStatus::EgressComplete as i32
    });
    ended_after_ending(&hooks, &api_egress);
    // A filepath outside the recording directory is refused, saying why.
    for (filepath, why) in [("/tmp/out.ogg", "absolute"), ("../out.ogg", "..")] {
        let (status, err) = twirp(
            addr,
            "StartRoomCompositeEgress",
            &rec,
            &json!({"roomName": id, "audioOnly": true, "fileOutputs": [{"fileType": "OGG", "filepath": filepath}]}),
        );
        assert_eq!(
            (status, err["code"].as_str()),
            (400, Some("invalid_argument")),
            "{err}"
        );
        assert!(err["msg"].as_str().unwrap().contains(why), "{err}");
    }
    // And the other way round: started through the Egress API, stopped by the host.
    let (status, started) = twirp(
        addr,
        "StartRoomCompositeEgress",
        &rec,
        &json!({"roomName": id, "audioOnly": true, "file": {"fileType": "OGG", "filepath": "a.ogg"}}),
    );
    assert_eq!(status, 200, "{started}");
    let twirp_egress = started["egressId"].as_str().unwrap().to_owned();
    speaker.wait_sent(50);
    let view = support::api::ok(
        addr,
        "DELETE",
        &format!("/api/rooms/{id}/recording"),
        &host,
        None,
    );
    assert_eq!(view["recording"], false);
    let list = list_until(addr, &rec, &json!({"egressId": twirp_egress}), |items| {
        items.len() == 1 && items[0]["status"] == "EGRESS_COMPLETE"
    });
    // Its mix is where its filepath said (relative to the recording directory), and the
    // room's replay plays that file.
    let placed = recordings.join("a.ogg");
    assert_eq!(
        list["items"][0]["fileResults"][0]["location"].as_str(),
        Some(placed.to_str().unwrap()),
        "{list}"
    );
    let (seconds, _) = tone_in(&placed);
    assert!(seconds > 0.0, "{seconds} s in {}", placed.display());
    let deadline = Instant::now() + support::TIMEOUT;
    let replay = loop {
        let replays = support::api::ok(
            addr,
            "GET",
            &format!("/api/rooms/{id}/recordings"),
            &host,
            None,
        );
        let found = replays["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == twirp_egress.as_str() && r["state"] == "complete")
            .cloned();
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "{replays}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let audio = support::api::fetch(
        addr,
        "GET",
        replay["audio_url"].as_str().unwrap(),
        &host,
        &[],
    );
    assert_eq!(audio.status, 200);
    assert_eq!(audio.body, std::fs::read(&placed).unwrap());
    // The control plane told the app each time (8 starts and stops).
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let told = hooks
            .control()
            .iter()
            .filter(|v| v["event"] == "control.recording" && v["control"]["room"] == id.as_str())
            .count();
        if told >= 8 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{told} control.recording webhooks"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    speaker.leave();
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A recording directory that cannot be made (its parent is a regular file, which fails for
/// root too): the egress ends FAILED with the reason, `egress_ended` and the control plane's
/// `recording` event say so, the room's view stops saying recorded, and the live room and its
/// media go on. A track egress of an unknown track and refused requests get clear errors.
#[test]
fn an_unwritable_recording_directory_fails_the_egress_not_the_room() {
    let dir = scratch_dir("egress-unwritable");
    let file = dir.join("not-a-directory");
    std::fs::write(&file, "a file where a directory should be").unwrap();
    let hooks = HookReceiver::start(0);
    let stoa = Stoa::start(&write_config(&dir, &file.join("sub"), &hooks), &[]);
    let addr = stoa.addr;
    let host = user_token("hana");
    let id = support::api::create_room(addr, &host, json!({"title": "Full", "kind": "open"}));
    let speaker = Speaker::join(addr, &id, "hana");
    speaker.wait_sent(50);
    let (mut listener, _, _) = support::api::join_live(addr, &id, &user_token("ann"));
    let rec = record_token();

    let (status, started) = twirp(
        addr,
        "StartRoomCompositeEgress",
        &rec,
        &json!({"roomName": id, "audioOnly": true, "fileOutputs": [{"fileType": "OGG"}]}),
    );
    assert_eq!(status, 200, "{started}");
    let egress = started["egressId"].as_str().unwrap().to_owned();
    let failed = hooks.wait_egress("egress_ended", &egress, |i| {
        i.status == lk::EgressStatus::EgressFailed as i32
    });
    assert!(
        failed.error.contains("cannot be written"),
        "{}",
        failed.error
    );
    let (_, list) = twirp(addr, "ListEgress", &rec, &json!({"egressId": egress}));
    assert_eq!(list["items"][0]["status"], "EGRESS_FAILED", "{list}");
    // The room's recording stopped, with an event that says why.
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let said = hooks.control().into_iter().find(|v| {
            v["event"] == "control.recording"
                && v["control"]["recording"] == false
                && v["control"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("cannot be written"))
        });
        if said.is_some() && room_view(addr, &id, &host)["recording"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed recording event: {:?}",
            hooks.control()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The live room and its media are untouched: the speaker still sends and the listener's
    // session answers.
    assert_eq!(room_view(addr, &id, &host)["state"], "live");
    speaker.wait_sent(50);
    listener.ping();

    // Clear refusals.
    let (status, err) = twirp(
        addr,
        "StartTrackEgress",
        &rec,
        &json!({"roomName": id, "trackId": "TR_none", "file": {"filepath": "t.ogg"}}),
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("not_found")),
        "{err}"
    );
    let (status, err) = twirp(
        addr,
        "StartWebEgress",
        &rec,
        &json!({"url": "http://127.0.0.1/"}),
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (501, Some("unimplemented")),
        "{err}"
    );
    let (status, err) = twirp(addr, "StopEgress", &rec, &json!({}));
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_argument")),
        "{err}"
    );
    let (status, err) = api(
        addr,
        "POST",
        "/twirp/livekit.Egress/ListEgress",
        "not-a-token",
        Some(json!({})),
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (401, Some("unauthenticated")),
        "{err}"
    );

    speaker.leave();
    listener.close();
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sid of `identity`'s published audio track (Twirp `RoomService.ListParticipants`).
fn track_of(addr: SocketAddr, room: &str, identity: &str) -> String {
    let admin = server_token(stoa_signaling::token::VideoGrants {
        room_admin: true,
        room: room.to_owned(),
        ..Default::default()
    });
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let (status, list) = api(
            addr,
            "POST",
            "/twirp/livekit.RoomService/ListParticipants",
            &admin,
            Some(json!({ "room": room })),
        );
        assert_eq!(status, 200, "{list}");
        let sid = list["participants"].as_array().and_then(|ps| {
            let p = ps.iter().find(|p| p["identity"] == identity)?;
            p["tracks"][0]["sid"].as_str().map(str::to_owned)
        });
        if let Some(sid) = sid {
            return sid;
        }
        assert!(
            Instant::now() < deadline,
            "{identity} publishes no track: {list}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A recorded room whose server crashed (SIGKILL) is still recorded when it comes back: the
/// file cut by the crash plays up to it, and when the first speaker is back the same egress
/// goes on in the same file (`Egress::resume`: the time the node was down is silence), so the
/// room keeps one recording — no stale "recording" with nothing recorded. Meanwhile a track
/// egress records the speaker's track as received, and stopping it leaves the room's recording
/// running.
#[test]
fn a_recorded_room_records_again_after_a_crash_and_a_track_egress_records_one_track() {
    let dir = scratch_dir("egress-restart");
    let recordings = dir.join("recordings");
    let hooks = HookReceiver::start(0);
    let config = write_config(&dir, &recordings, &hooks);
    let stoa = Stoa::start(&config, &[]);
    let addr = stoa.addr;
    let host = user_token("hana");
    let id = support::api::create_room(addr, &host, json!({"title": "Crash", "kind": "open"}));
    let speaker = Speaker::join(addr, &id, "hana");
    speaker.wait_sent(25);
    support::api::ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/recording"),
        &host,
        None,
    );
    let rec = record_token();
    let list = list_until(
        addr,
        &rec,
        &json!({"roomName": id, "active": true}),
        |items| items.len() == 1 && items[0]["status"] == "EGRESS_ACTIVE",
    );
    let first = list["items"][0]["egressId"].as_str().unwrap().to_owned();
    let first_file = PathBuf::from(
        list["items"][0]["fileResults"][0]["location"]
            .as_str()
            .unwrap(),
    );
    // Long enough for pages to reach the disk (a page at least every second).
    speaker.wait_sent(150);
    std::thread::sleep(Duration::from_millis(1_200));
    drop(stoa); // SIGKILL
    speaker.leave();

    // The file cut by the crash plays up to it.
    let bytes = std::fs::read(&first_file).unwrap();
    let stream = OpusStream::parse(&bytes).unwrap();
    let pcm = decode(&stream).unwrap();
    let loud = tone_levels(&pcm.samples, TONE_HZ)
        .iter()
        .filter(|l| **l > 0.05)
        .count();
    assert!(loud >= 10, "{loud} windows of the tone before the crash");

    let stoa = Stoa::start(&config, &[]);
    let addr = stoa.addr;
    // The room's record still says recorded, and the first one back is recorded again.
    assert_eq!(room_view(addr, &id, &host)["recording"], true);
    let speaker = Speaker::join(addr, &id, "hana");
    speaker.wait_sent(25);
    let list = list_until(
        addr,
        &rec,
        &json!({"roomName": id, "active": true}),
        |items| items.len() == 1 && items[0]["status"] == "EGRESS_ACTIVE",
    );
    let second = list["items"][0]["egressId"].as_str().unwrap().to_owned();
    assert_eq!(second, first, "the same recording goes on");
    let before_crash = pcm.samples.len() / 4_800; // 100 ms windows

    // A track egress of the speaker's track, its Opus as received.
    let track = track_of(addr, &id, "hana");
    let (status, started) = twirp(
        addr,
        "StartTrackEgress",
        &rec,
        &json!({"roomName": id, "trackId": track, "file": {"filepath": "{track_id}.ogg"}}),
    );
    assert_eq!(status, 200, "{started}");
    assert_eq!(started["track"]["trackId"], track.as_str(), "{started}");
    let track_egress = started["egressId"].as_str().unwrap().to_owned();
    speaker.wait_sent(150);
    let (status, stopped) = twirp(addr, "StopEgress", &rec, &json!({"egressId": track_egress}));
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["status"], "EGRESS_ENDING", "{stopped}");
    let location = stopped["fileResults"][0]["location"].as_str().unwrap();
    assert_eq!(
        Path::new(location),
        recordings.join(format!("{track}.ogg")),
        "the filepath template, filled in"
    );
    let (seconds, loud) = tone_in(Path::new(location));
    assert!(
        seconds > 2.0 && loud > 0.8,
        "{seconds:.2} s, {loud:.2} with the tone"
    );
    hooks.wait_egress("egress_ended", &track_egress, |i| {
        i.status == lk::EgressStatus::EgressComplete as i32
    });
    // The same filepath again: the file exists, so that egress fails at once, saying why,
    // and the file stays as it was.
    let kept = std::fs::read(location).unwrap();
    let (status, again) = twirp(
        addr,
        "StartTrackEgress",
        &rec,
        &json!({"roomName": id, "trackId": track, "file": {"filepath": "{track_id}.ogg"}}),
    );
    assert_eq!(status, 200, "{again}");
    let again_id = again["egressId"].as_str().unwrap().to_owned();
    let failed = hooks.wait_egress("egress_ended", &again_id, |i| {
        i.status == lk::EgressStatus::EgressFailed as i32
    });
    assert!(failed.error.contains("exists"), "{}", failed.error);
    assert_eq!(std::fs::read(location).unwrap(), kept);
    // The room's recording goes on.
    assert_eq!(room_view(addr, &id, &host)["recording"], true);
    list_until(addr, &rec, &json!({"egressId": second}), |items| {
        items.len() == 1 && items[0]["status"] == "EGRESS_ACTIVE"
    });

    support::api::ok(
        addr,
        "DELETE",
        &format!("/api/rooms/{id}/recording"),
        &host,
        None,
    );
    let list = list_until(addr, &rec, &json!({"egressId": second}), |items| {
        items.len() == 1 && items[0]["status"] == "EGRESS_COMPLETE"
    });
    let file = list["items"][0]["fileResults"][0]["location"]
        .as_str()
        .unwrap();
    assert_eq!(Path::new(file), first_file);
    // One file, finished: the tone before the crash, silence while the node was down, the
    // tone again after.
    let (seconds, _) = tone_in(Path::new(file));
    let pcm = decode(&OpusStream::parse(&std::fs::read(file).unwrap()).unwrap()).unwrap();
    let levels = tone_levels(&pcm.samples, TONE_HZ);
    let loud = |w: &[f32]| w.iter().filter(|l| **l > 0.05).count();
    let (before, after) = levels.split_at(before_crash.min(levels.len()));
    assert!(
        loud(before) >= 10 && loud(after) >= 20 && seconds > before_crash as f64 / 10.0 + 2.0,
        "{seconds:.2} s: {} loud windows before the crash, {} after",
        loud(before),
        loud(after)
    );
    // And the room's replay lists that one recording.
    let replays = support::api::ok(
        addr,
        "GET",
        &format!("/api/rooms/{id}/recordings"),
        &host,
        None,
    );
    let ids: Vec<&str> = replays["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str()], "{replays}");

    speaker.leave();
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A disk that fills up while recording (a 16 KiB tmpfs mounted on the recording directory in
/// a mount namespace of the server's own): the write fails, the egress ends FAILED with the
/// reason after having been active, `egress_ended` and the control plane's `recording` event
/// say so, the room's view stops saying recorded, and the live room and its media go on.
#[test]
fn a_full_disk_stops_the_recording_not_the_room() {
    let dir = scratch_dir("egress-full");
    let recordings = dir.join("recordings");
    std::fs::create_dir_all(&recordings).unwrap();
    let hooks = HookReceiver::start(0);
    let config = write_config(&dir, &recordings, &hooks);
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    // Root gets a mount namespace; anyone else a user namespace mapped to root as well.
    let flags = if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        "-m"
    } else {
        "-rm"
    };
    let recordings_arg = recordings.to_str().unwrap();
    let wrapper = [
        "unshare",
        flags,
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=16k stoa-full "$0" && exec "$@""#,
        recordings_arg,
    ];
    let stoa = Stoa::start_wrapped(&config, &[], &wrapper);
    let addr = stoa.addr;
    let host = user_token("hana");
    let id = support::api::create_room(addr, &host, json!({"title": "Full disk", "kind": "open"}));
    let speaker = Speaker::join(addr, &id, "hana");
    speaker.wait_sent(25);
    let (mut listener, _, _) = support::api::join_live(addr, &id, &user_token("ann"));
    support::api::ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/recording"),
        &host,
        None,
    );
    let rec = record_token();
    let list = list_until(addr, &rec, &json!({"roomName": id}), |items| {
        !items.is_empty()
    });
    let egress = list["items"][0]["egressId"].as_str().unwrap().to_owned();
    hooks.wait_egress("egress_updated", &egress, |i| {
        i.status == lk::EgressStatus::EgressActive as i32
    });
    let failed = hooks.wait_egress("egress_ended", &egress, |i| {
        i.status == lk::EgressStatus::EgressFailed as i32
    });
    assert!(
        failed.error.contains("No space left on device"),
        "{}",
        failed.error
    );
    assert!(
        failed.file_results[0].size > 0,
        "it wrote until the disk was full"
    );
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let said = hooks.control().into_iter().any(|v| {
            v["event"] == "control.recording"
                && v["control"]["recording"] == false
                && v["control"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("No space left"))
        });
        if said && room_view(addr, &id, &host)["recording"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed recording event: {:?}",
            hooks.control()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(room_view(addr, &id, &host)["state"], "live");
    speaker.wait_sent(50);
    listener.ping();
    speaker.leave();
    listener.close();
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
