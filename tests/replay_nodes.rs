//! Replays across nodes: two `stoa serve` processes share a real redis-server, each with its own
//! recording directory and `public_url`. A room whose media lives on one node is recorded there
//! only (the other node records no silent copy of its empty media room), and listed by both; the
//! other node answers requests for its audio (and a clip's cut and audio) with a 307 to the
//! node whose disk holds the file, after checking who may read it (a private room stays 404 to
//! outsiders, signed out or not, whatever node they ask); the other node's Egress API names the
//! recording node. Every wait is bounded; servers and
//! Redis are killed when the test ends.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use redis_server::RedisServer;
use serde_json::{Value, json};
use stoa_bench::client::Command;
use support::api::{Fetched, call, create_room, fetch, get_until, ok, send};
use support::tones::Speakers;
use support::{Stoa, free_ports, scratch_dir};

const KEY: &str = "nodeskey";
const SECRET: &str = "a-long-enough-replay-nodes-secret-012345";

fn token(id: &str) -> String {
    support::tones::user_token((KEY, SECRET), id)
}

/// A node on its own port, advertising `ws://127.0.0.1:<port>`, recording into its own
/// directory, on the shared Redis.
fn node(dir: &Path, name: &str, redis: &RedisServer) -> Stoa {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[keys]\n{KEY} = \"{SECRET}\"\n[control]\ndata_dir = \"{}\"\n\
             [recording]\ndir = \"{}\"\n",
            dir.join(name).join("data").display(),
            dir.join(name).join("recordings").display()
        ),
    )
    .unwrap();
    let (port, _) = free_ports();
    let port = port.to_string();
    let url = format!("ws://127.0.0.1:{port}");
    Stoa::start(
        &config,
        &[
            ("STOA_REDIS_URL", redis.url.as_str()),
            ("STOA_HTTP_PORT", port.as_str()),
            ("STOA_PUBLIC_URL", url.as_str()),
        ],
    )
}

/// Waits (bounded) until the room's recordings, read through `addr`, are all complete.
fn completed(addr: SocketAddr, room: &str, who: &str) -> Value {
    get_until(
        addr,
        &format!("/api/rooms/{room}/recordings"),
        &token(who),
        "recordings",
        |list| list["recordings"][0]["state"] == "complete",
    )
}

/// The request a 307 points to, on `origin` (`http://127.0.0.1:<port>`).
fn follow(redirect: &Fetched, origin: SocketAddr) -> String {
    assert_eq!(redirect.status, 307, "{:?}", redirect.headers);
    assert_eq!(redirect.json()["code"], "on_another_node");
    let location = redirect.header("location").unwrap();
    location
        .strip_prefix(&format!("http://{origin}"))
        .unwrap_or_else(|| panic!("{location} is not on {origin}"))
        .to_owned()
}

#[test]
fn a_recordings_audio_is_reached_through_any_node() {
    let redis = RedisServer::start();
    let dir = scratch_dir("replay-nodes");
    let one = node(&dir, "one", &redis);
    let two = node(&dir, "two", &redis);

    // A public and a private room, created and recorded on node one.
    let open = create_room(
        one.addr,
        &token("kim"),
        json!({"title": "Recorded on one", "kind": "open", "recording": true}),
    );
    let private = create_room(
        one.addr,
        &token("hana"),
        json!({"title": "Private on one", "kind": "open", "private": true, "recording": true}),
    );
    let speakers = Speakers::new(one.addr, &open, (KEY, SECRET));
    let kim = speakers.join("kim", 440);
    let hidden = Speakers::new(one.addr, &private, (KEY, SECRET));
    let hana = hidden.join("hana", 880);
    speakers.wait_sent(100);
    hidden.wait_sent(100);
    // The Egress API of node two says which node records the room, at once.
    let (status, refused) = call(
        two.addr,
        "POST",
        "/twirp/livekit.Egress/StartRoomCompositeEgress",
        &record_token(),
        Some(json!({"roomName": open, "audioOnly": true, "fileOutputs": [{"fileType": "OGG"}]})),
    );
    assert_eq!(
        (status, refused["code"].as_str()),
        (412, Some("failed_precondition")),
        "{refused}"
    );
    assert!(
        refused["msg"]
            .as_str()
            .unwrap()
            .contains(&format!("ws://{}", one.addr)),
        "{refused}"
    );
    ok(
        one.addr,
        "POST",
        &format!("/api/rooms/{open}/end"),
        &token("kim"),
        None,
    );
    ok(
        one.addr,
        "POST",
        &format!("/api/rooms/{private}/end"),
        &token("hana"),
        None,
    );
    kim.command(Command::Leave);
    hana.command(Command::Leave);

    // Both nodes list the recording (the store is shared); only node one, where the room's
    // media lives, recorded it: one recording, one file.
    let listed = completed(two.addr, &open, "zed");
    assert_eq!(
        listed["recordings"].as_array().unwrap().len(),
        1,
        "{listed}"
    );
    // Who spoke when, though node two has not the sidecar: kept with the record.
    assert!(
        listed["recordings"][0]["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["user"] == "kim" && s["end_ms"].as_u64() > s["start_ms"].as_u64()),
        "{listed}"
    );
    let recording = &listed["recordings"][0];
    let rid = recording["id"].as_str().unwrap();
    let file = dir
        .join("one")
        .join("recordings")
        .join(&open)
        .join(rid)
        .join("room.ogg");
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 1_000, "{} bytes", bytes.len());
    assert!(!dir.join("two").join("recordings").join(&open).exists());
    let url = recording["audio_url"].as_str().unwrap();

    // Node one serves it; node two sends the player there, the range and token kept.
    let here = fetch(one.addr, "GET", url, "", &[("Range", "bytes=0-99")]);
    assert_eq!((here.status, here.body.as_slice()), (206, &bytes[..100]));
    for (who, path) in [
        ("", url.to_owned()),
        ("zed", url.to_owned()),
        ("", format!("{url}?access_token={}", token("zed"))),
    ] {
        let redirect = fetch(two.addr, "GET", &path, &token_or_none(who), &[]);
        let there = follow(&redirect, one.addr);
        assert_eq!(there, path, "the same request, on node one");
        let n = bytes.len();
        let range = format!("bytes={}-{}", n / 2, n - 1);
        let part = fetch(
            one.addr,
            "GET",
            &there,
            &token_or_none(who),
            &[("Range", &range)],
        );
        assert_eq!(part.status, 206, "{who} {path}");
        assert_eq!(part.body, bytes[n / 2..], "{who} {path}");
    }
    // HEAD too.
    let head = fetch(two.addr, "HEAD", url, "", &[]);
    assert_eq!(head.status, 307);

    // A private room's recording: node two checks who may hear it before sending anyone on.
    let secret = completed(one.addr, &private, "hana");
    let secret_url = secret["recordings"][0]["audio_url"].as_str().unwrap();
    for who in ["", "zed"] {
        let refused = fetch(two.addr, "GET", secret_url, &token_or_none(who), &[]);
        assert_eq!(
            (refused.status, refused.json()["code"].as_str()),
            (404, Some("not_found")),
            "{who}"
        );
        assert_eq!(refused.header("location"), None);
    }
    let host = fetch(two.addr, "GET", secret_url, &token("hana"), &[]);
    let there = follow(&host, one.addr);
    let whole = fetch(one.addr, "GET", &there, &token("hana"), &[]);
    assert_eq!(whole.status, 200);
    assert_eq!(&whole.body[..4], b"OggS");

    // A clip asked of node two is cut by node one (the 307 keeps the method and body), and
    // its audio, asked of node two, is sent there too; its card is anyone's, anywhere.
    let clips = format!("/api/rooms/{open}/clips");
    let body = r#"{"last_seconds": 1}"#;
    let cut = post_json(two.addr, &clips, &token("zed"), body);
    let there = follow(&cut, one.addr);
    assert_eq!(there, clips);
    let clip = post_json(one.addr, &there, &token("zed"), body);
    assert_eq!(clip.status, 201, "{}", String::from_utf8_lossy(&clip.body));
    let clip = clip.json();
    let cid = clip["id"].as_str().unwrap();
    let card = fetch(two.addr, "GET", &format!("/api/clips/{cid}"), "", &[]);
    assert_eq!(card.status, 200);
    let audio = fetch(
        two.addr,
        "GET",
        clip["audio_url"].as_str().unwrap(),
        "",
        &[],
    );
    let there = follow(&audio, one.addr);
    let played = fetch(one.addr, "GET", &there, "", &[("Range", "bytes=0-3")]);
    assert_eq!(
        (played.status, played.body.as_slice()),
        (206, b"OggS".as_slice())
    );
    // An unknown recording is 404 on either node, never a redirect.
    let (status, _) = call(
        two.addr,
        "GET",
        &format!("/api/rooms/{open}/recordings/EG_nosuchone123/audio"),
        &token("zed"),
        None,
    );
    assert_eq!(status, 404);

    one.stop();
    two.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server token with the `roomRecord` grant (as a server SDK mints it).
fn record_token() -> String {
    stoa_signaling::token::mint(
        KEY,
        SECRET,
        "server",
        None,
        stoa_signaling::token::VideoGrants {
            room_record: true,
            ..Default::default()
        },
        Duration::from_secs(600),
        support::unix_now(),
    )
    .unwrap()
}

/// `who`'s token, or none for "".
fn token_or_none(who: &str) -> String {
    if who.is_empty() {
        String::new()
    } else {
        token(who)
    }
}

/// A JSON POST through the raw client (so that a 307 is seen, not followed).
fn post_json(addr: SocketAddr, path: &str, bearer: &str, body: &str) -> Fetched {
    send(
        addr,
        "POST",
        path,
        bearer,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}
