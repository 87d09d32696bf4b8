//! The control plane end to end: `stoa serve` processes, the REST API over real HTTP, real
//! LiveKit signaling sessions on `/rtc`, the embedded store on disk and a real redis-server.
//! Every wait is bounded; servers are killed when a test ends.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use redis_server::RedisServer;
use serde_json::{Value, json};
use stoa_control::auth::Keys;
use stoa_control::model::UserId;
use support::api::{call as api, create_room, join_live, ok};
use support::{SignalClient, Stoa, request, scratch_dir};

const KEY: &str = "ctlkey";
const SECRET: &str = "a-long-enough-control-test-secret-0123";

fn keys() -> Keys {
    Keys::new(vec![(KEY.into(), SECRET.into())]).unwrap()
}

fn user_token(id: &str, name: &str) -> String {
    keys()
        .user_token(&UserId::parse(id).unwrap(), name, Duration::from_secs(3600))
        .unwrap()
}

/// Writes a config with the test keys and `[control]` settings.
fn config(dir: &Path, control: &str) -> PathBuf {
    support::api::config(dir, KEY, SECRET, control)
}

fn attr<'a>(p: &'a lk::ParticipantInfo, key: &str) -> &'a str {
    p.attributes.get(key).map_or("", String::as_str)
}

fn can_publish(p: &lk::ParticipantInfo) -> bool {
    p.permission.as_ref().is_some_and(|x| x.can_publish)
}

#[test]
fn a_listener_goes_on_stage_and_back_without_reconnecting_then_is_kicked() {
    let dir = scratch_dir("control-flow");
    // Guests sign in here (on with --dev anyway; off by default outside it).
    let stoa = Stoa::start(
        &config(&dir, "guest_sign_in = true"),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");

    // The host schedules a stage room; listeners cannot join before the host starts it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // Within the window before its time in which the host may open it.
    let soon = now + 5 * 60_000;
    let id = create_room(
        addr,
        &host,
        json!({"title": "Rust audio", "topic": "sfu", "scheduled_for": soon}),
    );
    let early = user_token("early", "Early");
    let (status, err) = api(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &early,
        None,
    );
    assert_eq!((status, err["code"].as_str()), (409, Some("room_not_live")));
    let live = ok(addr, "POST", &format!("/api/rooms/{id}/start"), &host, None);
    assert_eq!(live["state"], "live");
    let (mut host_session, host_join, _) = join_live(addr, &id, &host);
    let me = host_join.participant.unwrap();
    assert!(can_publish(&me));
    assert_eq!(attr(&me, "role"), "host");

    // The host edits the live room: its participants get the new description as room
    // metadata, the directory the new title; a bad title changes nothing.
    let (status, err) = api(
        addr,
        "PATCH",
        &format!("/api/rooms/{id}"),
        &host,
        Some(json!({"title": ""})),
    );
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_field")));
    let edited = ok(
        addr,
        "PATCH",
        &format!("/api/rooms/{id}"),
        &host,
        Some(json!({"title": "Rust audio, live", "topic": "str0m"})),
    );
    assert_eq!(edited["title"], "Rust audio, live");
    let metadata = host_session.wait_for("the room's new metadata", |m| match m {
        lk::signal_response::Message::RoomUpdate(u) => u
            .room
            .as_ref()
            .filter(|r| r.metadata.contains("Rust audio, live"))
            .map(|r| r.metadata.clone()),
        _ => None,
    });
    let metadata: Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(metadata["topic"], "str0m");

    // A guest signs in, finds the room in the directory and joins as a listener.
    let guest = ok(
        addr,
        "POST",
        "/api/session/guest",
        "",
        Some(json!({"name": "Lee"})),
    );
    let listener = guest["token"].as_str().unwrap().to_owned();
    let lee = guest["user"].as_str().unwrap().to_owned();
    let directory = ok(addr, "GET", "/api/rooms", &listener, None);
    assert_eq!(directory["live"][0]["id"], id.as_str());
    assert_eq!(directory["live"][0]["title"], "Rust audio, live");
    assert_eq!(directory["live"][0]["stage"][0]["name"], "Hana");
    let (mut lee_session, lee_join, lee_media_token) = join_live(addr, &id, &listener);
    let me = lee_join.participant.unwrap();
    assert!(
        !can_publish(&me),
        "a listener's token must not allow publishing"
    );
    assert_eq!(attr(&me, "role"), "listener");

    // Raising a hand shows up for the host, in the API and on the live session.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/hand"),
        &listener,
        None,
    );
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["hands"][0]["user"], lee.as_str());
    host_session.wait_participant(&lee, "the raised hand", |p| attr(p, "hand") == "raised");

    // Approval: the listener's own session gains publish permission, no reconnect.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/{lee}/approve_hand"),
        &host,
        None,
    );
    let p = lee_session.wait_participant(&lee, "publish permission", |p| {
        can_publish(p) && attr(p, "role") == "speaker"
    });
    assert_eq!(attr(&p, "hand"), "");

    // Moved back: permission revoked on the same session.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/{lee}/move_to_audience"),
        &host,
        None,
    );
    lee_session.wait_participant(&lee, "permission revoked", |p| {
        !can_publish(p) && attr(p, "role") == "listener"
    });

    // A listener cannot moderate.
    let (status, err) = api(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/hana/kick"),
        &listener,
        None,
    );
    assert_eq!((status, err["code"].as_str()), (403, Some("not_allowed")));

    // Kicked: the session ends, and both a new token and the old media token are refused.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/{lee}/kick"),
        &host,
        None,
    );
    lee_session.wait_for("the kick", |m| match m {
        lk::signal_response::Message::Leave(_) => Some(()),
        _ => None,
    });
    let (status, err) = api(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &listener,
        None,
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (403, Some("kicked")),
        "{err}"
    );
    let retry = err["retry_after"].as_u64().expect("retry_after seconds");
    assert!((1..=300).contains(&retry), "{err}");
    // The host's view lists the kicked listener by name, from the room's header (the member
    // record is gone).
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    let removed = room["removed"].as_array().expect("removed for the host");
    assert_eq!(removed.len(), 1, "{room}");
    assert_eq!(removed[0]["user"], lee.as_str());
    assert_eq!(removed[0]["name"], "Lee");
    assert_eq!(removed[0]["banned"], false);
    assert!(removed[0]["until"].as_u64().is_some(), "{room}");
    let refused = SignalClient::connect(addr, &lee_media_token)
        .err()
        .expect("refused at /rtc");
    assert_eq!(refused.0, 403, "{refused:?}");
    assert!(refused.1.contains("cooldown"), "{refused:?}");

    // The API is measured by route template, never by id.
    let (_, metrics) = request(addr, "GET", "/metrics", None, None);
    let hand = metrics
        .lines()
        .find(|l| {
            l.starts_with("control_api_requests_total")
                && l.contains(r#"route="/api/rooms/{id}/hand""#)
                && l.contains(r#"status="200""#)
        })
        .unwrap_or_else(|| panic!("no hand requests counted:\n{metrics}"));
    assert!(hand.ends_with(" 1"), "{hand}");
    assert!(!metrics.contains(&id), "a room id leaked into a label");

    // Statistics, then the end: sessions close and the room is archived, out of the directory.
    let stats = ok(addr, "GET", &format!("/api/rooms/{id}/stats"), &host, None);
    assert_eq!(stats["total_joins"], 2);
    assert_eq!(stats["hands_raised"], 1);
    ok(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    host_session.wait_for("the end", |m| match m {
        lk::signal_response::Message::Leave(_) => Some(()),
        _ => None,
    });
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["state"], "archived");
    let directory = ok(addr, "GET", "/api/rooms", &host, None);
    assert!(directory["live"].as_array().unwrap().is_empty());
    let directory = ok(addr, "GET", "/api/rooms?archived=true", &host, None);
    assert_eq!(directory["archived"][0]["id"], id.as_str());
    let totals = ok(addr, "GET", "/api/users/hana/stats", &host, None);
    assert_eq!(totals["rooms"], 1);
}

#[test]
fn one_room_at_a_time_full_rooms_and_speaker_modes() {
    let dir = scratch_dir("control-rules");
    let stoa = Stoa::start(
        &config(&dir, ""),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let addr = stoa.addr;
    let (hana, omar, lee, kim) = (
        user_token("hana", "Hana"),
        user_token("omar", "Omar"),
        user_token("lee", "Lee"),
        user_token("kim", "Kim"),
    );
    // `stoa token --user` mints user tokens with the server's keys.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stoa"))
        .args([
            "token",
            "--user",
            "--identity",
            "hana",
            "--name",
            "Hana",
            "--config",
        ])
        .arg(dir.join("stoa.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_token = String::from_utf8(out.stdout).unwrap();
    let me = ok(addr, "GET", "/api/me", cli_token.trim(), None);
    assert_eq!(me, json!({"user": "hana", "name": "Hana"}));
    let a = create_room(addr, &hana, json!({"title": "A", "max_participants": 2}));
    let b = create_room(
        addr,
        &omar,
        json!({"title": "B", "speaker_mode": "followers"}),
    );
    ok(addr, "POST", &format!("/api/rooms/{a}/token"), &lee, None);
    let (status, err) = api(addr, "POST", &format!("/api/rooms/{b}/token"), &lee, None);
    assert_eq!(status, 409, "{err}");
    assert!(err["message"].as_str().unwrap().contains(&a), "{err}");
    // The 409 names the room Lee is in, so that a client can offer to leave it.
    assert_eq!(err["code"], "already_in_room", "{err}");
    assert_eq!(err["room"], json!({"id": a, "title": "A"}), "{err}");
    // Room A holds two: the third is refused with 422.
    ok(addr, "POST", &format!("/api/rooms/{a}/token"), &hana, None);
    let (status, err) = api(addr, "POST", &format!("/api/rooms/{a}/token"), &kim, None);
    assert_eq!((status, err["code"].as_str()), (422, Some("room_full")));
    // After leaving A, B is open to Lee; its hands need a follow of the host.
    ok(addr, "POST", &format!("/api/rooms/{a}/leave"), &lee, None);
    ok(addr, "POST", &format!("/api/rooms/{b}/token"), &lee, None);
    let (status, err) = api(addr, "POST", &format!("/api/rooms/{b}/hand"), &lee, None);
    assert_eq!((status, err["code"].as_str()), (403, Some("speaker_mode")));
    let (status, _) = api(addr, "PUT", "/api/follows/users/omar", &lee, None);
    assert_eq!(status, 204);
    ok(addr, "POST", &format!("/api/rooms/{b}/hand"), &lee, None);
    // Away and deafened are the member's own word; away shows where the room's show_away is on.
    let seen = ok(
        addr,
        "POST",
        &format!("/api/rooms/{b}/presence"),
        &lee,
        Some(json!({"away": true, "deafened": true})),
    );
    assert_eq!(
        (
            &seen["you"]["away"],
            &seen["you"]["deafened"],
            &seen["show_away"]
        ),
        (&json!(false), &json!(true), &json!(false)),
        "{seen}"
    );
    let (status, err) = api(
        addr,
        "POST",
        &format!("/api/rooms/{b}/presence"),
        &lee,
        Some(json!({"gone": true})),
    );
    assert_eq!(status, 400, "{err}");
    let (status, err) = api(
        addr,
        "POST",
        &format!("/api/rooms/{a}/presence"),
        &kim,
        Some(json!({"away": true})),
    );
    assert_eq!((status, err["code"].as_str()), (403, Some("not_a_member")));
    let (status, err) = api(
        addr,
        "PATCH",
        &format!("/api/rooms/{b}"),
        &omar,
        Some(json!({"idle_mute_after": 120, "idle_audience_after": 60})),
    );
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_field")));
    let edited = ok(
        addr,
        "PATCH",
        &format!("/api/rooms/{b}"),
        &omar,
        Some(json!({"show_away": true, "idle_mute_after": 0})),
    );
    assert_eq!(
        (
            &edited["show_away"],
            &edited["idle_mute_after"],
            &edited["idle_audience_after"]
        ),
        (&json!(true), &json!(0), &json!(1800))
    );
    let seen = ok(addr, "GET", &format!("/api/rooms/{b}"), &lee, None);
    assert_eq!(seen["you"]["away"], true, "{seen}");
    let follows = ok(addr, "GET", "/api/follows", &lee, None);
    assert_eq!(follows["follows"][0], json!({"kind": "user", "id": "omar"}));
    // Invitation links: only moderators make them; accepting one lets a listener raise a hand
    // in an "invited" room.
    let c = create_room(
        addr,
        &hana,
        json!({"title": "C", "speaker_mode": "invited"}),
    );
    let (status, _) = api(
        addr,
        "POST",
        &format!("/api/rooms/{c}/invitations"),
        &kim,
        None,
    );
    assert_eq!(status, 403);
    let (status, link) = api(
        addr,
        "POST",
        &format!("/api/rooms/{c}/invitations"),
        &hana,
        None,
    );
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["requires_confirmation"], true);
    let token = link["token"].as_str().unwrap();
    let seen = ok(
        addr,
        "GET",
        &format!("/api/invitations/{token}"),
        &kim,
        None,
    );
    assert_eq!(seen["room"]["id"], c.as_str());
    ok(addr, "POST", &format!("/api/rooms/{c}/token"), &kim, None);
    let (status, _) = api(addr, "POST", &format!("/api/rooms/{c}/hand"), &kim, None);
    assert_eq!(status, 403);
    ok(
        addr,
        "POST",
        &format!("/api/invitations/{token}/accept"),
        &kim,
        None,
    );
    ok(addr, "POST", &format!("/api/rooms/{c}/hand"), &kim, None);
    // A single-use speaker link: Lee accepts and is lined up; Omar finds it used up.
    let (status, once) = api(
        addr,
        "POST",
        &format!("/api/rooms/{c}/invitations"),
        &hana,
        Some(json!({"role": "speaker", "max_uses": 1, "expires_in": 600})),
    );
    assert_eq!(status, 201, "{once}");
    assert_eq!(
        (&once["role"], &once["max_uses"]),
        (&json!("speaker"), &json!(1))
    );
    let once = once["token"].as_str().unwrap();
    let seen = ok(
        addr,
        "POST",
        &format!("/api/invitations/{once}/accept"),
        &lee,
        None,
    );
    assert_eq!(seen["your_lineup"], "speaker", "{seen}");
    let (status, err) = api(
        addr,
        "POST",
        &format!("/api/invitations/{once}/accept"),
        &omar,
        None,
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (410, Some("invitation_used_up"))
    );
    for (body, code) in [
        (json!({"role": "host"}), "invalid_role"),
        (json!({"max_uses": 0}), "invalid_field"),
        (json!({"uses": 3}), "invalid_json"),
    ] {
        let (status, err) = api(
            addr,
            "POST",
            &format!("/api/rooms/{c}/invitations"),
            &hana,
            Some(body),
        );
        assert_eq!((status, err["code"].as_str()), (400, Some(code)), "{err}");
    }
    // The host lists the links (newest first) and revokes the listener link.
    let listed = ok(
        addr,
        "GET",
        &format!("/api/rooms/{c}/invitations"),
        &hana,
        None,
    );
    let entries = listed["invitations"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed}");
    assert_eq!(
        (
            &entries[0]["token"],
            &entries[0]["uses"],
            &entries[0]["usable"]
        ),
        (&json!(once), &json!(1), &json!(false))
    );
    assert_eq!(entries[1]["token"], token);
    let (status, _) = api(
        addr,
        "GET",
        &format!("/api/rooms/{c}/invitations"),
        &kim,
        None,
    );
    assert_eq!(status, 403);
    let (status, _) = api(
        addr,
        "DELETE",
        &format!("/api/rooms/{c}/invitations/{token}"),
        &hana,
        None,
    );
    assert_eq!(status, 204);
    let (status, err) = api(
        addr,
        "GET",
        &format!("/api/invitations/{token}"),
        &omar,
        None,
    );
    assert_eq!(
        (status, err["code"].as_str()),
        (410, Some("invitation_revoked"))
    );

    // Reactions are rate-limited.
    let mut limited = false;
    for _ in 0..30 {
        let (status, _) = api(
            addr,
            "POST",
            &format!("/api/rooms/{b}/reactions"),
            &lee,
            Some(json!({"emoji": "👏"})),
        );
        if status == 429 {
            limited = true;
            break;
        }
        assert_eq!(status, 204);
    }
    assert!(limited, "30 reactions at once were all accepted");
}

#[test]
fn an_empty_room_ends_itself() {
    let dir = scratch_dir("control-empty");
    let stoa = Stoa::start(
        &config(&dir, "empty_timeout = 1"),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let host = user_token("hana", "Hana");
    let id = create_room(stoa.addr, &host, json!({"title": "Nobody comes"}));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let room = ok(stoa.addr, "GET", &format!("/api/rooms/{id}"), &host, None);
        if room["state"] == "archived" {
            break;
        }
        assert!(Instant::now() < deadline, "room still {}", room["state"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ended rooms are deleted once `ended_room_retention` has passed: the room then answers 404,
/// and its recording's files are gone.
#[test]
fn ended_rooms_are_deleted_after_their_retention() {
    let dir = scratch_dir("control-retention");
    let stoa = Stoa::start(
        &config(&dir, "ended_room_retention = 1\npresence_ttl = 1"),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let host = user_token("hana", "Hana");
    let id = create_room(
        stoa.addr,
        &host,
        json!({"title": "Short-lived", "recording": true}),
    );
    let kept = create_room(stoa.addr, &host, json!({"title": "Still live"}));
    let files = dir.join("recordings").join(&id);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, list) = api(
            stoa.addr,
            "GET",
            &format!("/api/rooms/{id}/recordings"),
            &host,
            None,
        );
        assert_eq!(status, 200, "{list}");
        if list["recordings"][0]["size"].as_u64() > Some(1_000) && files.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "no recording: {list}");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(
        stoa.addr,
        "POST",
        &format!("/api/rooms/{id}/end"),
        &host,
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = api(stoa.addr, "GET", &format!("/api/rooms/{id}"), &host, None);
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "ended room still kept");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!files.exists(), "{} is still there", files.display());
    // A live room is never pruned.
    let room = ok(stoa.addr, "GET", &format!("/api/rooms/{kept}"), &host, None);
    assert_eq!(room["state"], "live");
}

/// A big audience is seen a page at a time: the room's view carries counts and the first page
/// (for moderators only), the rest comes by cursor, each member once; every member may page
/// through who is connected, nobody else.
#[test]
fn a_large_audience_is_seen_a_page_at_a_time() {
    let dir = scratch_dir("control-pages");
    let stoa = Stoa::start(
        &config(&dir, ""),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let host = user_token("hana", "Hana");
    let id = create_room(stoa.addr, &host, json!({"title": "Big room"}));
    let n = 130;
    let mut listeners = Vec::new();
    for i in 0..n {
        let user = format!("l{i:03}");
        let token = user_token(&user, &format!("Listener {i}"));
        ok(
            stoa.addr,
            "POST",
            &format!("/api/rooms/{id}/token"),
            &token,
            None,
        );
        listeners.push((user, token));
    }
    ok(
        stoa.addr,
        "POST",
        &format!("/api/rooms/{id}/hand"),
        &listeners[7].1,
        None,
    );
    let room = ok(stoa.addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["members"], n);
    assert_eq!(room["raised_hands"], 1);
    assert_eq!(room["hands"][0]["user"], "l007");
    assert_eq!(room["hands"][0]["name"], "Listener 7");
    let first = room["audience"].as_array().unwrap();
    assert_eq!(first.len(), 40);
    assert_eq!(first[0]["user"], "l000");
    assert_eq!(room["audience_next"], "l039");

    let mut seen: Vec<String> = Vec::new();
    let mut path = format!("/api/rooms/{id}/audience?limit=50");
    for _ in 0..10 {
        let page = ok(stoa.addr, "GET", &path, &host, None);
        for m in page["members"].as_array().unwrap() {
            assert_eq!(m["role"], "listener");
            assert_eq!(m["hand_raised"], m["user"] == "l007");
            seen.push(m["user"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/rooms/{id}/audience?limit=50&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = listeners.iter().map(|(u, _)| u.clone()).collect();
    assert_eq!(seen, expected);

    // Moderators' entries carry presence and the profile's address.
    assert_eq!(first[0]["present"], false);
    assert_eq!(first[0]["profile"], "/api/users/l000/profile");

    // A listener's view carries counts, not the audience; the audience pages show a listener
    // who of it is connected now (nobody here: these members have no media session), without
    // anything moderators-only.
    let (_, token) = &listeners[0];
    let room = ok(stoa.addr, "GET", &format!("/api/rooms/{id}"), token, None);
    assert!(room["audience"].is_null() && room["hands"].is_null());
    assert_eq!(room["listeners"], 0);
    assert_eq!(room["you"]["user"], "l000");
    let page = ok(
        stoa.addr,
        "GET",
        &format!("/api/rooms/{id}/audience?limit=200"),
        token,
        None,
    );
    assert_eq!(page["members"], json!([]), "{page}");
    assert!(page["next"].is_null(), "{page}");
    // Whoever is not a member may not read it: never joined, left, kicked or banned.
    let outsider = user_token("nina", "Nina");
    ok(
        stoa.addr,
        "POST",
        &format!("/api/rooms/{id}/leave"),
        &listeners[1].1,
        None,
    );
    ok(
        stoa.addr,
        "POST",
        &format!("/api/rooms/{id}/members/l002/kick"),
        &host,
        None,
    );
    ok(
        stoa.addr,
        "POST",
        &format!("/api/rooms/{id}/members/l003/ban"),
        &host,
        None,
    );
    for token in [&outsider, &listeners[1].1, &listeners[2].1, &listeners[3].1] {
        let (status, err) = api(
            stoa.addr,
            "GET",
            &format!("/api/rooms/{id}/audience"),
            token,
            None,
        );
        assert_eq!((status, err["code"].as_str()), (403, Some("not_a_member")));
        assert!(!err["message"].as_str().unwrap_or("").is_empty(), "{err}");
    }
    for bad in ["limit=0", "limit=1000", "after=a:b"] {
        let (status, err) = api(
            stoa.addr,
            "GET",
            &format!("/api/rooms/{id}/audience?{bad}"),
            &host,
            None,
        );
        assert_eq!(status, 400, "{bad}: {err}");
    }
}

/// `GET /api/rooms/{id}/card` answers without a token, with public fields only, through a
/// room's life; unknown ids get a JSON 404; no other room read opens up.
#[test]
fn a_room_card_is_public_and_shows_only_public_fields() {
    let dir = scratch_dir("control-card");
    let stoa = Stoa::start(
        &config(&dir, ""),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let addr = stoa.addr;
    let host = user_token("hana", "Hana Host");
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        // Within the 15 minutes before its time in which the host may start it.
        + 600_000;
    let id = create_room(
        addr,
        &host,
        json!({"title": "Card", "topic": "Public bits", "description": "Not on the card", "scheduled_for": later}),
    );
    let card = |id: &str| {
        let (status, text) = request(addr, "GET", &format!("/api/rooms/{id}/card"), None, None);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(status, 200, "{v}");
        v
    };

    let c = card(&id);
    let keys: Vec<&str> = c.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "ended_at",
            "host_name",
            "id",
            "kind",
            "listeners",
            "scheduled_for",
            "speakers",
            "started_at",
            "state",
            "title",
            "topic"
        ],
        "{c}"
    );
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["title"], "Card");
    assert_eq!(c["topic"], "Public bits");
    assert_eq!(c["kind"], "stage");
    assert_eq!(c["state"], "scheduled");
    assert_eq!(c["scheduled_for"], later);
    assert_eq!(c["listeners"], 0);
    // The host's name, kept from creation: cards and link previews name who hosts.
    assert_eq!(c["host_name"], "Hana Host");

    ok(addr, "POST", &format!("/api/rooms/{id}/start"), &host, None);
    // The host takes the stage by joining.
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);
    let c = card(&id);
    assert_eq!(c["state"], "live", "{c}");
    assert!(c["started_at"].is_u64(), "{c}");
    assert_eq!(c["speakers"], json!(["Hana Host"]));
    // Names, never user ids.
    assert!(!c.to_string().contains("\"hana\""), "{c}");

    ok(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    let c = card(&id);
    assert!(c["state"] == "ended" || c["state"] == "archived", "{c}");
    assert!(c["ended_at"].is_u64(), "{c}");

    for path in [
        "/api/rooms/zzzzzzzzzzzzzzzz/card".to_owned(),
        "/api/rooms/not-a-room-id/card".to_owned(),
    ] {
        let (status, text) = request(addr, "GET", &path, None, None);
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
        assert_eq!(
            (status, v["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{path}: {v}"
        );
    }
    // The card is the only public read.
    for path in [
        format!("/api/rooms/{id}"),
        format!("/api/rooms/{id}/stats"),
        "/api/rooms".to_owned(),
    ] {
        let (status, _) = request(addr, "GET", &path, None, None);
        assert_eq!(status, 401, "{path}");
    }
    let spec = ok(addr, "GET", "/api/openapi.json", &host, None);
    assert!(spec["paths"]["/api/rooms/{id}/card"]["get"].is_object());
    assert!(spec["components"]["schemas"]["RoomCardView"].is_object());
    // The calls of idle/away, invitation links and the 409 that names the other room.
    assert!(spec["paths"]["/api/rooms/{id}/presence"]["post"].is_object());
    assert!(spec["paths"]["/api/rooms/{id}/invitations"]["get"].is_object());
    assert!(spec["paths"]["/api/rooms/{id}/invitations/{token}"]["delete"].is_object());
    assert!(
        spec["components"]["schemas"]["RoomRef"].is_object(),
        "{}",
        spec["components"]
    );
}

/// Rooms, roles, hands and bans survive a restart of `stoa serve`.
fn survives_restart(dir: &Path, env: &[(&str, &str)]) {
    let cfg = config(dir, "");
    let (hana, lee, kim) = (
        user_token("hana", "Hana"),
        user_token("lee", "Lee"),
        user_token("kim", "Kim"),
    );
    let stoa = Stoa::start(&cfg, env);
    let addr = stoa.addr;
    let id = create_room(addr, &hana, json!({"title": "Durable"}));
    for t in [&hana, &lee, &kim] {
        ok(addr, "POST", &format!("/api/rooms/{id}/token"), t, None);
    }
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/kim/add_co_host"),
        &hana,
        None,
    );
    ok(addr, "POST", &format!("/api/rooms/{id}/hand"), &lee, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/troll/ban"),
        &hana,
        None,
    );
    let scheduled = create_room(
        addr,
        &kim,
        json!({"title": "Later", "scheduled_for": 4_102_444_800_000u64}),
    );
    let before = ok(addr, "GET", &format!("/api/rooms/{id}"), &hana, None);
    stoa.stop();

    let stoa = Stoa::start(&cfg, env);
    let addr = stoa.addr;
    let after = ok(addr, "GET", &format!("/api/rooms/{id}"), &hana, None);
    for field in ["state", "stage", "hands", "audience", "banned", "title"] {
        assert_eq!(after[field], before[field], "{field} after restart");
    }
    assert_eq!(after["hands"][0]["user"], "lee");
    assert_eq!(after["banned"][0], "troll");
    assert_eq!(after["stage"][1]["role"], "co_host");
    let directory = ok(addr, "GET", "/api/rooms", &hana, None);
    assert_eq!(directory["scheduled"][0]["id"], scheduled.as_str());
    // And the room still works.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/lee/approve_hand"),
        &kim,
        None,
    );
    let troll = user_token("troll", "T");
    let (status, _) = api(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &troll,
        None,
    );
    assert_eq!(status, 403);
}

#[test]
fn embedded_store_survives_restart() {
    let dir = scratch_dir("control-restart");
    survives_restart(&dir, &[("STOA_DATA_DIR", dir.to_str().unwrap())]);
}

#[test]
fn redis_store_survives_restart() {
    let redis = RedisServer::start();
    let dir = scratch_dir("control-restart-redis");
    survives_restart(&dir, &[("STOA_REDIS_URL", redis.url.as_str())]);
}

#[test]
fn two_instances_on_one_redis_share_rooms_and_reach_each_others_sessions() {
    let redis = RedisServer::start();
    let dir = scratch_dir("control-two");
    let cfg = config(&dir, "");
    let redis_url = ("STOA_REDIS_URL", redis.url.as_str());
    let one = Stoa::start(
        &cfg,
        &[redis_url, ("STOA_PUBLIC_URL", "ws://one.example:7880")],
    );
    let two = Stoa::start(
        &cfg,
        &[redis_url, ("STOA_PUBLIC_URL", "ws://two.example:7880")],
    );
    let (hana, lee) = (user_token("hana", "Hana"), user_token("lee", "Lee"));

    // Created through instance one, listed by instance two.
    let id = create_room(one.addr, &hana, json!({"title": "Shared"}));
    let directory = ok(two.addr, "GET", "/api/rooms", &lee, None);
    assert_eq!(directory["live"][0]["id"], id.as_str());

    // Tokens from either instance send clients to the room's media node (placed on one of
    // the two: tests/nodes.rs checks where).
    let host_grant = ok(
        one.addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &hana,
        None,
    );
    let grant = ok(
        two.addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &lee,
        None,
    );
    assert_eq!(grant["url"], host_grant["url"]);
    assert!(
        ["ws://one.example:7880", "ws://two.example:7880"]
            .contains(&grant["url"].as_str().unwrap()),
        "{grant}"
    );

    // A session on the room's node is reached by the host acting through the other instance
    // (a node that is not the room's would relay it as an edge, and send a listener allowed
    // to speak to the room's node: tests/roomwide.rs).
    let (media, other) = if grant["url"] == "ws://one.example:7880" {
        (one.addr, two.addr)
    } else {
        (two.addr, one.addr)
    };
    let (mut session, join) = SignalClient::join(media, grant["token"].as_str().unwrap());
    assert!(!can_publish(join.participant.as_ref().unwrap()));
    ok(media, "POST", &format!("/api/rooms/{id}/hand"), &lee, None);
    ok(
        other,
        "POST",
        &format!("/api/rooms/{id}/members/lee/approve_hand"),
        &hana,
        None,
    );
    session.wait_participant("lee", "permission from the other instance", |p| {
        can_publish(p) && attr(p, "role") == "speaker"
    });

    // Events taken on one instance reach event-stream clients of the other.
    let mut events =
        SignalClient::open(media, &format!("/api/events?room={id}&access_token={hana}"))
            .expect("event stream");
    ok(
        other,
        "POST",
        &format!("/api/rooms/{id}/members/lee/move_to_audience"),
        &hana,
        None,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = events.next_text().expect("an event");
        let event: Value = serde_json::from_str(&text).unwrap();
        if event["type"] == "role" && event["role"] == "listener" {
            assert_eq!(event["user"], "lee");
            break;
        }
        assert!(Instant::now() < deadline, "no role event");
    }
    session.wait_participant("lee", "revocation from the other instance", |p| {
        !can_publish(p)
    });
}

#[test]
fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let redis = RedisServer::start();
    let dir = scratch_dir("control-bad");
    let stoa = Stoa::start(&config(&dir, ""), &[("STOA_REDIS_URL", redis.url.as_str())]);
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(addr, &host, json!({"title": "Target"}));
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);
    let before = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let mut keys_before: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys_before.sort();

    let long = "x".repeat(121);
    // (method, path, bearer, body, status, code)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<String>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some("{not json".into()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some(r#"{"title":"a","evil":1}"#.into()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some(r#"{"title":"   "}"#.into()),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some(format!(r#"{{"title":"{long}"}}"#)),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some("{\"title\":\"a\u{202e}b\"}".into()),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some(r#"{"title":"a","kind":"party"}"#.into()),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some(&host),
            Some(r#"{"title":"a","max_participants":0}"#.into()),
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/api/rooms".into(),
            None,
            Some(r#"{"title":"a"}"#.into()),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/api/rooms".into(),
            Some("bogus.token.here"),
            Some(r#"{"title":"a"}"#.into()),
            401,
            "unauthorized",
        ),
        (
            "GET",
            "/api/rooms/stoa:room:x:participants".into(),
            Some(&host),
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/rooms/{id}%2A"),
            Some(&host),
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/rooms/{id}/members/a:b/kick"),
            Some(&host),
            None,
            400,
            "invalid_user",
        ),
        (
            "POST",
            format!("/api/rooms/{id}/members/stoa%3Aroom/ban"),
            Some(&host),
            None,
            400,
            "invalid_user",
        ),
        (
            "POST",
            format!("/api/rooms/{id}/members/lee/explode"),
            Some(&host),
            None,
            400,
            "invalid_action",
        ),
        (
            "POST",
            format!("/api/rooms/{id}/members/lee/kick"),
            Some(&host),
            None,
            404,
            "not_found",
        ),
        (
            "POST",
            format!("/api/rooms/{id}/reactions"),
            Some(&host),
            Some(r#"{"emoji":""}"#.into()),
            400,
            "invalid_field",
        ),
        (
            "PUT",
            "/api/follows/users/hana".into(),
            Some(&host),
            None,
            400,
            "invalid_follow",
        ),
        (
            "PUT",
            "/api/follows/planets/mars".into(),
            Some(&host),
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/invitations/not-a-token".into(),
            Some(&host),
            None,
            404,
            "not_found",
        ),
        (
            "GET",
            "/api/nothing/here".into(),
            Some(&host),
            None,
            404,
            "not_found",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let (got, text) = request(addr, method, &path, token, body.as_deref());
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
        assert!(
            !v["message"].as_str().unwrap_or("").is_empty(),
            "{method} {path}: no message"
        );
    }
    // A body too large for the API.
    let huge = format!(r#"{{"title":"{}"}}"#, "x".repeat(64 * 1024));
    let (status, _) = request(addr, "POST", "/api/rooms", Some(&host), Some(&huge));
    assert_eq!(status, 413);

    let after = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(after, before);
    let mut keys_after: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys_after.sort();
    assert_eq!(keys_after, keys_before);
    let spec = ok(addr, "GET", "/api/openapi.json", &host, None);
    assert!(spec["paths"]["/api/rooms/{id}/members/{user}/{action}"]["post"].is_object());
    assert!(spec["paths"]["/api/rooms/{id}/audience"]["get"].is_object());
    assert!(spec["components"]["schemas"]["AudienceView"].is_object());
    let entry = &spec["components"]["schemas"]["AudienceMemberView"];
    assert_eq!(
        entry["required"],
        json!(["user", "name", "role", "profile"]),
        "{entry}"
    );
    let audience = &spec["paths"]["/api/rooms/{id}/audience"]["get"];
    assert!(
        audience["summary"]
            .as_str()
            .is_some_and(|d| d.contains("every member")),
        "{audience}"
    );
    assert!(
        audience["description"]
            .as_str()
            .is_some_and(|d| d.contains("not_a_member")),
        "{audience}"
    );
}
