//! Replays and clips end to end: a `stoa serve` child process records a private room in which
//! two speakers send different tones through real WebRTC (stoa-bench's str0m peers); the
//! ended room's recording is listed with who spoke when and served with HTTP range requests;
//! clips cut live and from the replay are decoded and their boundaries measured; a public
//! room's replay and clips are read signed out (as an embedded card does), a private room's
//! are not; and every refusal (not recorded, bad ranges, non-members, outsiders, signed out,
//! bad tokens) is checked. Every wait is bounded.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use stoa_bench::client::Command;
use stoa_egress::{OpusStream, Pcm, decode};
use support::api::{call, fetch, get_until, ok, refused};
use support::tones::{Speakers, tone_levels};
use support::{Stoa, scratch_dir};

const KEY: &str = "replaykey";
const SECRET: &str = "a-long-enough-replay-test-secret-0123456";
const HANA_HZ: u32 = 440;
const LEE_HZ: u32 = 880;
/// How far a clip's boundaries may be from those asked for (two 20 ms Opus packets).
const TOLERANCE_MS: f64 = 40.0;

fn token(id: &str) -> String {
    support::tones::user_token((KEY, SECRET), id)
}

/// Decodes an Ogg/Opus file as a player would.
fn pcm(bytes: &[u8]) -> Pcm {
    decode(&OpusStream::parse(bytes).unwrap()).unwrap()
}

fn seconds(pcm: &Pcm) -> f64 {
    pcm.samples.len() as f64 / 48_000.0
}

/// Where (ms of playback) the `hz` tone first reaches half its usual level, measured in
/// 10 ms windows.
fn onset_ms(pcm: &Pcm, hz: u32) -> f64 {
    // The shared Goertzel helper measures 100 ms windows; give it 10 ms at a time.
    let levels: Vec<f32> = pcm
        .samples
        .chunks(480)
        .map(|c| tone_levels(c, hz).first().copied().unwrap_or(0.0))
        .collect();
    let steady = {
        let mut sorted = levels.clone();
        sorted.sort_by(f32::total_cmp);
        sorted[sorted.len() * 9 / 10]
    };
    let first = levels
        .iter()
        .position(|l| *l > steady / 2.0)
        .unwrap_or_else(|| panic!("no {hz} Hz onset"));
    first as f64 * 10.0 + pcm.offset as f64 / 48.0
}

/// Waits (bounded) until the room's recordings say what `done` looks for.
fn recordings_until(
    addr: SocketAddr,
    room: &str,
    who: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    get_until(
        addr,
        &format!("/api/rooms/{room}/recordings"),
        &token(who),
        "recordings",
        done,
    )
}

/// The user `who` accepts a listener invitation to the private room `room` made by its host.
fn invite(addr: SocketAddr, room: &str, host: &str, who: &str) {
    let link = ok(
        addr,
        "POST",
        &format!("/api/rooms/{room}/invitations"),
        &token(host),
        None,
    );
    let t = link["token"].as_str().unwrap();
    ok(
        addr,
        "POST",
        &format!("/api/invitations/{t}/accept"),
        &token(who),
        None,
    );
}

/// A private recorded room: the live clip, the ended room's replay with ranges and a
/// timeline, clips from it with measured boundaries, and who may see and cut what; then a
/// public one, whose ended replay anyone (and a server) may clip; and a restart that forgets
/// nothing.
#[test]
fn an_ended_rooms_replay_plays_in_ranges_and_clips_keep_their_bounds() {
    let dir = scratch_dir("replay");
    let recordings = dir.join("recordings");
    let config = dir.join("stoa.toml");
    std::fs::write(
        &config,
        format!(
            "[keys]\n{KEY} = \"{SECRET}\"\n[control]\ndata_dir = \"{}\"\n\
             [recording]\ndir = \"{}\"\n",
            dir.join("data").display(),
            recordings.display()
        ),
    )
    .unwrap();
    let stoa = Stoa::start(&config, &[]);
    let addr = stoa.addr;
    let host = token("hana");

    // A room nobody records: no clip.
    let plain = support::api::create_room(
        addr,
        &token("kim"),
        json!({"title": "Not recorded", "kind": "open"}),
    );
    refused(
        addr,
        "POST",
        &format!("/api/rooms/{plain}/clips"),
        &token("kim"),
        409,
        "not_recorded",
    );

    let id = support::api::create_room(
        addr,
        &host,
        json!({"title": "Recorded and private", "kind": "open", "private": true, "recording": true}),
    );
    invite(addr, &id, "hana", "lee");
    invite(addr, &id, "hana", "ann");
    let speakers = Speakers::new(addr, &id, (KEY, SECRET));
    let hana = speakers.join("hana", HANA_HZ);
    speakers.wait_sent(100);
    let lee = speakers.join("lee", LEE_HZ);
    speakers.wait_sent(200);
    recordings_until(addr, &id, "hana", |l| {
        l["recordings"][0]["state"] == "recording"
    });

    // While live: a member cuts the last 2 s; someone invited who never joined may not; an
    // outsider of the private room does not see it.
    let clips = format!("/api/rooms/{id}/clips");
    refused(addr, "POST", &clips, &token("ann"), 403, "not_a_member");
    refused(addr, "POST", &clips, &token("zed"), 404, "not_found");
    let (status, live_clip) = call(
        addr,
        "POST",
        &clips,
        &host,
        Some(json!({"last_seconds": 2})),
    );
    assert_eq!(status, 201, "{live_clip}");
    assert_eq!(live_clip["title"], "Recorded and private");
    let audio = fetch(
        addr,
        "GET",
        live_clip["audio_url"].as_str().unwrap(),
        &host,
        &[],
    );
    assert_eq!(audio.status, 200);
    let got = seconds(&pcm(&audio.body));
    assert!(
        (got - 2.0).abs() * 1000.0 <= TOLERANCE_MS,
        "the last 2 s clip lasts {got:.3} s"
    );

    speakers.wait_sent(100);
    ok(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    for c in [hana, lee] {
        c.command(Command::Leave);
    }
    let list = recordings_until(addr, &id, "hana", |l| {
        l["recordings"][0]["state"] == "complete"
    });
    let recording = &list["recordings"][0];
    assert_eq!(list["recordings"].as_array().unwrap().len(), 1, "{list}");
    let rid = recording["id"].as_str().unwrap().to_owned();
    let file = recordings.join(&id).join(&rid).join("room.ogg");
    let on_disk = std::fs::read(&file).unwrap();
    assert_eq!(recording["size"], on_disk.len() as u64, "{recording}");
    let whole = pcm(&on_disk);
    let length_ms = seconds(&whole) * 1000.0;
    let listed = recording["duration_ms"].as_f64().unwrap();
    assert!(
        (listed - length_ms).abs() < 100.0,
        "{listed} ms listed, {length_ms} ms decoded"
    );
    // Who spoke when, by name, on the recording's timeline.
    let timeline = recording["timeline"].as_array().unwrap();
    for who in ["hana", "lee"] {
        let span = timeline
            .iter()
            .find(|s| s["user"] == who)
            .unwrap_or_else(|| panic!("{who} not in {timeline:?}"));
        assert_eq!(span["name"], who);
        assert!(span["start_ms"].as_u64().unwrap() < span["end_ms"].as_u64().unwrap());
        assert!(
            span["end_ms"].as_f64().unwrap() <= length_ms + 100.0,
            "{span}"
        );
    }
    let lee_span = timeline.iter().find(|s| s["user"] == "lee").unwrap();
    let hana_span = timeline.iter().find(|s| s["user"] == "hana").unwrap();
    assert!(hana_span["start_ms"].as_u64() < lee_span["start_ms"].as_u64());

    // The audio, whole and in ranges, as a browser's player asks for it.
    let url = recording["audio_url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("/api/rooms/{id}/recordings/{rid}/audio"));
    let len = on_disk.len();
    let whole_get = fetch(addr, "GET", &url, &host, &[]);
    assert_eq!(whole_get.status, 200);
    assert_eq!(whole_get.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole_get.header("content-type"), Some("audio/ogg"));
    assert_eq!(whole_get.body, on_disk);
    let head = fetch(addr, "HEAD", &url, &host, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(len.to_string().as_str())
    );
    assert!(head.body.is_empty());
    for (range, from, to) in [
        ("bytes=0-99".to_owned(), 0, 99),
        (
            format!("bytes={}-{}", len / 2, len / 2 + 999),
            len / 2,
            len / 2 + 999,
        ),
        ("bytes=-500".to_owned(), len - 500, len - 1),
        (format!("bytes={}-", len - 10), len - 10, len - 1),
    ] {
        let part = fetch(addr, "GET", &url, &host, &[("Range", &range)]);
        assert_eq!(part.status, 206, "{range}");
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes {from}-{to}/{len}").as_str()),
            "{range}"
        );
        assert_eq!(part.body, on_disk[from..=to], "{range}");
    }
    assert_eq!(&on_disk[..4], b"OggS");
    let past = fetch(
        addr,
        "GET",
        &url,
        &host,
        &[("Range", &format!("bytes={len}-"))],
    );
    assert_eq!(past.status, 416);
    assert_eq!(
        past.header("content-range"),
        Some(format!("bytes */{len}").as_str())
    );
    assert_eq!(past.json()["code"], "range_not_satisfiable");
    assert!(
        past.json()["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );

    // Who may see the replay: exactly who may see the room (a private room's invited, its
    // host) — an outsider gets 404 everywhere, as from the room's view, and so does someone
    // signed out (the private room's card is 404 too); a bad token is 401, never anonymous.
    for path in [
        format!("/api/rooms/{id}/card"),
        format!("/api/rooms/{id}/recordings"),
        url.clone(),
        format!("/api/rooms/{id}/clips"),
        format!("/api/clips/{}", live_clip["id"].as_str().unwrap()),
        format!("/api/clips/{}/audio", live_clip["id"].as_str().unwrap()),
    ] {
        let signed_out = fetch(addr, "GET", &path, "", &[("Range", "bytes=0-9")]);
        assert_eq!(
            (signed_out.status, signed_out.json()["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
        if path.ends_with("/card") {
            continue; // the card reads no token
        }
        let forged = fetch(addr, "GET", &path, "not.a.token", &[]);
        assert_eq!(forged.status, 401, "{path}");
        let forged = fetch(addr, "GET", &format!("{path}?access_token=nope"), "", &[]);
        assert_eq!(forged.status, 401, "{path}");
    }
    for who in ["hana", "ann", "lee", "zed"] {
        let (view, _) = call(addr, "GET", &format!("/api/rooms/{id}"), &token(who), None);
        let (listing, _) = call(
            addr,
            "GET",
            &format!("/api/rooms/{id}/recordings"),
            &token(who),
            None,
        );
        let audio = fetch(addr, "GET", &url, &token(who), &[("Range", "bytes=0-9")]);
        let expected = if who == "zed" { 404 } else { 200 };
        assert_eq!(view, expected, "{who}");
        assert_eq!(
            (listing, audio.status),
            (view, if view == 200 { 206 } else { 404 }),
            "{who}"
        );
    }

    // A clip from the replay around the moment the second speaker came in: its length and
    // where that moment falls in it are within 40 ms of the request.
    let lee_in = onset_ms(&whole, LEE_HZ);
    let start_ms = (lee_in - 1_000.0).max(0.0).round() as u64;
    let end_ms = start_ms + 2_500;
    let (status, clip) = call(
        addr,
        "POST",
        &clips,
        &token("ann"),
        Some(json!({"start_ms": start_ms, "end_ms": end_ms, "title": "Lee comes in"})),
    );
    assert_eq!(status, 201, "{clip}");
    assert_eq!(clip["title"], "Lee comes in");
    assert_eq!(clip["room"]["title"], "Recorded and private");
    assert_eq!(clip["recording"], rid.as_str());
    assert_eq!(
        (clip["start_ms"].as_u64(), clip["end_ms"].as_u64()),
        (Some(start_ms), Some(end_ms))
    );
    let speakers_in: Vec<&str> = clip["speakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["user"].as_str().unwrap())
        .collect();
    assert!(
        speakers_in.contains(&"hana") && speakers_in.contains(&"lee"),
        "{clip}"
    );
    let cid = clip["id"].as_str().unwrap().to_owned();
    assert_eq!(clip["link"], format!("/clips/{cid}"));
    let audio = fetch(addr, "GET", &format!("/api/clips/{cid}/audio"), &host, &[]);
    assert_eq!(audio.status, 200);
    let stream = OpusStream::parse(&audio.body).unwrap();
    assert_eq!(stream.packets[0].start, 0, "the clip's granules start at 0");
    let cut = decode(&stream).unwrap();
    let got_ms = seconds(&cut) * 1000.0;
    assert!(
        (got_ms - 2_500.0).abs() <= TOLERANCE_MS,
        "the clip lasts {got_ms:.1} ms"
    );
    let lee_in_clip = onset_ms(&cut, LEE_HZ);
    let expected = lee_in - start_ms as f64;
    assert!(
        (lee_in_clip - expected).abs() <= TOLERANCE_MS,
        "the second speaker comes in at {lee_in_clip} ms of the clip, {expected} ms expected"
    );
    let part = fetch(
        addr,
        "GET",
        &format!("/api/clips/{cid}/audio"),
        &host,
        &[("Range", "bytes=0-3")],
    );
    assert_eq!(
        (part.status, part.body.as_slice()),
        (206, b"OggS".as_slice())
    );
    // The clip's card, to whoever may see the room; to anyone else it does not exist.
    let card = ok(
        addr,
        "GET",
        &format!("/api/clips/{cid}"),
        &token("lee"),
        None,
    );
    assert_eq!(card["id"], cid.as_str());
    refused(
        addr,
        "GET",
        &format!("/api/clips/{cid}"),
        &token("zed"),
        404,
        "not_found",
    );
    let hidden = fetch(
        addr,
        "GET",
        &format!("/api/clips/{cid}/audio"),
        &token("zed"),
        &[],
    );
    assert_eq!(
        (hidden.status, hidden.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    let listed = ok(addr, "GET", &clips, &host, None);
    assert_eq!(listed["clips"].as_array().unwrap().len(), 2, "{listed}");

    // Bad ranges, each refused with a clear error; nothing is cut.
    let length = length_ms as u64;
    for (body, status, code) in [
        (
            json!({"start_ms": 2_000, "end_ms": 2_000}),
            400,
            "invalid_range",
        ),
        (
            json!({"start_ms": 3_000, "end_ms": 1_000}),
            400,
            "invalid_range",
        ),
        (
            json!({"start_ms": length + 1_000, "end_ms": length + 2_000}),
            416,
            "past_end",
        ),
        (json!({"last_seconds": 0}), 400, "invalid_range"),
        (json!({"last_seconds": 601}), 400, "invalid_range"),
        (
            json!({"last_seconds": 5, "start_ms": 0}),
            400,
            "invalid_range",
        ),
        (json!({"recording": "EG_nosuchone123"}), 404, "not_found"),
        (json!({"title": ""}), 400, "invalid_field"),
        (json!({"nonsense": true}), 400, "invalid_json"),
    ] {
        let (got, err) = call(addr, "POST", &clips, &host, Some(body.clone()));
        assert_eq!(
            (got, err["code"].as_str()),
            (status, Some(code)),
            "{body}: {err}"
        );
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{err}"
        );
    }
    let listed = ok(addr, "GET", &clips, &host, None);
    assert_eq!(listed["clips"].as_array().unwrap().len(), 2);
    // Unknown and malformed ids.
    refused(
        addr,
        "GET",
        &format!("/api/rooms/{id}/recordings/EG_nosuchone123/audio"),
        &host,
        404,
        "not_found",
    );
    refused(
        addr,
        "GET",
        &format!("/api/rooms/{id}/recordings/..%2F..%2Fetc/audio"),
        &host,
        404,
        "not_found",
    );
    refused(
        addr,
        "GET",
        "/api/clips/nosuchclip000000",
        &host,
        404,
        "not_found",
    );

    // A public room: while it is live, only its members cut clips; once it ended, its replay is
    // anyone's to listen to and clip, and a server's too.
    let open = support::api::create_room(
        addr,
        &token("kim"),
        json!({"title": "Open replay", "kind": "open", "recording": true}),
    );
    let voices = Speakers::new(addr, &open, (KEY, SECRET));
    let kim = voices.join("kim", HANA_HZ);
    voices.wait_sent(100);
    let open_clips = format!("/api/rooms/{open}/clips");
    refused(
        addr,
        "POST",
        &open_clips,
        &token("zed"),
        403,
        "not_a_member",
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{open}/end"),
        &token("kim"),
        None,
    );
    kim.command(Command::Leave);
    recordings_until(addr, &open, "zed", |l| {
        l["recordings"][0]["state"] == "complete"
    });
    let (status, by_anyone) = call(
        addr,
        "POST",
        &open_clips,
        &token("zed"),
        Some(json!({"last_seconds": 1})),
    );
    assert_eq!(status, 201, "{by_anyone}");
    assert_eq!(by_anyone["created_by"], "zed");
    let server = stoa_control::auth::Keys::new(vec![(KEY.into(), SECRET.into())])
        .unwrap()
        .server_token(Duration::from_secs(600))
        .unwrap();
    let (status, by_server) = call(addr, "POST", &open_clips, &server, None);
    assert_eq!(status, 201, "{by_server}");
    assert_eq!(by_server["created_by"], Value::Null);
    // Its replay is public: signed out (an embedded card), the recording is listed with who
    // spoke when by name (user ids left out, as on the card), its audio plays in ranges, and
    // its clips' cards and audio too; a listing with a token still names ids.
    let anonymous = fetch(
        addr,
        "GET",
        &format!("/api/rooms/{open}/recordings"),
        "",
        &[],
    );
    assert_eq!(anonymous.status, 200);
    let anonymous = anonymous.json();
    let replay = &anonymous["recordings"][0];
    assert_eq!(replay["state"], "complete", "{anonymous}");
    let spans = replay["timeline"].as_array().unwrap();
    assert!(
        spans.iter().any(|s| s["name"] == "kim") && spans.iter().all(|s| s["user"] == ""),
        "{anonymous}"
    );
    let signed_in = ok(
        addr,
        "GET",
        &format!("/api/rooms/{open}/recordings"),
        &token("zed"),
        None,
    );
    assert_eq!(signed_in["recordings"][0]["timeline"][0]["user"], "kim");
    let open_url = replay["audio_url"].as_str().unwrap();
    let open_file = recordings
        .join(&open)
        .join(replay["id"].as_str().unwrap())
        .join("room.ogg");
    let open_bytes = std::fs::read(&open_file).unwrap();
    let n = open_bytes.len();
    assert!(n > 1_000, "{n} bytes");
    let whole_anon = fetch(addr, "GET", open_url, "", &[]);
    assert_eq!(
        (whole_anon.status, whole_anon.header("accept-ranges")),
        (200, Some("bytes"))
    );
    assert_eq!(whole_anon.body, open_bytes);
    let part = fetch(
        addr,
        "GET",
        open_url,
        "",
        &[("Range", &format!("bytes={}-{}", n / 2, n / 2 + 99))],
    );
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes {}-{}/{n}", n / 2, n / 2 + 99).as_str())
    );
    assert_eq!(part.body, open_bytes[n / 2..n / 2 + 100]);
    let beyond = fetch(
        addr,
        "GET",
        open_url,
        "",
        &[("Range", &format!("bytes={n}-"))],
    );
    assert_eq!(
        (beyond.status, beyond.json()["code"].as_str()),
        (416, Some("range_not_satisfiable"))
    );
    let open_clip = by_anyone["id"].as_str().unwrap();
    let card = fetch(addr, "GET", &format!("/api/clips/{open_clip}"), "", &[]);
    assert_eq!(card.status, 200);
    let card = card.json();
    assert_eq!(
        (card["room"]["title"].as_str(), &card["created_by"]),
        (Some("Open replay"), &Value::Null),
        "{card}"
    );
    assert!(
        card["speakers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["user"] == "" && s["name"] == "kim"),
        "{card}"
    );
    let clip_audio = fetch(
        addr,
        "GET",
        &format!("/api/clips/{open_clip}/audio"),
        "",
        &[("Range", "bytes=0-3")],
    );
    assert_eq!(
        (clip_audio.status, clip_audio.body.as_slice()),
        (206, b"OggS".as_slice())
    );
    let listed = fetch(addr, "GET", &open_clips, "", &[]);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["clips"].as_array().unwrap().len(), 2);
    // Signed out, nobody cuts a clip.
    let cut = fetch(addr, "POST", &open_clips, "", &[("Content-Length", "0")]);
    assert_eq!(cut.status, 401);

    // The clip of a room that is not recorded stays refused once it ended too.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{plain}/end"),
        &token("kim"),
        None,
    );
    refused(
        addr,
        "POST",
        &format!("/api/rooms/{plain}/clips"),
        &token("kim"),
        409,
        "not_recorded",
    );

    // The OpenAPI document describes the calls.
    let spec = ok(addr, "GET", "/api/openapi.json", &host, None);
    for (path, method) in [
        ("/api/rooms/{id}/recordings", "get"),
        ("/api/rooms/{id}/recordings/{recording}/audio", "get"),
        ("/api/rooms/{id}/clips", "post"),
        ("/api/rooms/{id}/clips", "get"),
        ("/api/clips/{clip}", "get"),
        ("/api/clips/{clip}/audio", "get"),
    ] {
        assert!(spec["paths"][path][method].is_object(), "{method} {path}");
    }
    assert!(spec["components"]["schemas"]["ClipView"].is_object());

    // Restarted, the server still knows the recording and the clips (the store keeps them).
    stoa.stop();
    let stoa = Stoa::start(&config, &[]);
    let addr = stoa.addr;
    let list = ok(
        addr,
        "GET",
        &format!("/api/rooms/{id}/recordings"),
        &host,
        None,
    );
    assert_eq!(list["recordings"][0]["id"], rid.as_str());
    let again = fetch(addr, "GET", &url, &host, &[("Range", "bytes=0-99")]);
    assert_eq!(
        (again.status, again.body.as_slice()),
        (206, &on_disk[..100])
    );
    ok(addr, "GET", &format!("/api/clips/{cid}"), &host, None);

    // A recording cut short by a crash (SIGKILL: no end reported) is listed as failed once its
    // node is gone, with the length its file holds, and plays up to the crash.
    let crashed = support::api::create_room(
        addr,
        &token("kim"),
        json!({"title": "Cut short", "kind": "open", "recording": true}),
    );
    let voices = Speakers::new(addr, &crashed, (KEY, SECRET));
    let kim = voices.join("kim", HANA_HZ);
    voices.wait_sent(150);
    let running = recordings_until(addr, &crashed, "kim", |l| {
        l["recordings"][0]["size"].as_u64() > Some(5_000)
    });
    let cut_short = running["recordings"][0]["id"].as_str().unwrap().to_owned();
    drop(stoa);
    kim.command(Command::Leave);
    let stoa = Stoa::start(&config, &[]);
    let addr = stoa.addr;
    let list = recordings_until(addr, &crashed, "kim", |l| {
        l["recordings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == cut_short.as_str() && r["state"] == "failed")
    });
    let r = list["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == cut_short.as_str())
        .unwrap();
    let file = recordings.join(&crashed).join(&cut_short).join("room.ogg");
    let played = seconds(&pcm(&std::fs::read(&file).unwrap())) * 1000.0;
    let listed = r["duration_ms"].as_f64().unwrap();
    assert!(
        played > 1_000.0 && (listed - played).abs() < 50.0,
        "{r}: {played} ms in the file"
    );
    let part = fetch(
        addr,
        "GET",
        r["audio_url"].as_str().unwrap(),
        &token("kim"),
        &[("Range", "bytes=0-3")],
    );
    assert_eq!(
        (part.status, part.body.as_slice()),
        (206, b"OggS".as_slice())
    );
    stoa.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
