//! The room's promises tried as a hostile user would: `stoa serve` processes, the REST API over
//! real HTTP, `/api/events` over a real WebSocket and plain LiveKit signaling sessions on `/rtc`.
//! Each attempt must be refused with a clear error and change nothing for anyone else.
//! docs/SECURITY.md lists the attempts and the tests that prove them. Every wait is bounded;
//! servers are killed when a test ends.
#![allow(
    clippy::disallowed_methods,
    clippy::unwrap_used,
    reason = "tests bound real waits with the wall clock"
)]

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use serde_json::{Value, json};
use stoa_control::auth::Keys;
use stoa_control::model::UserId;
use support::api::{call as api, create_room, join_live, ok, refused};
use support::{SignalClient, Stoa, request, scratch_dir};

const KEY: &str = "hostilekey";
const SECRET: &str = "a-long-enough-hostile-test-secret-0123";

fn keys() -> Keys {
    Keys::new(vec![(KEY.into(), SECRET.into())]).unwrap()
}

fn user_token(id: &str, name: &str) -> String {
    keys()
        .user_token(&UserId::parse(id).unwrap(), name, Duration::from_secs(3600))
        .unwrap()
}

fn server_token() -> String {
    keys().server_token(Duration::from_secs(3600)).unwrap()
}

/// Writes a config with the test keys and `[control]` settings.
fn config(dir: &Path, control: &str) -> PathBuf {
    support::api::config(dir, KEY, SECRET, control)
}

fn start(name: &str) -> (Stoa, PathBuf) {
    let dir = scratch_dir(name);
    let stoa = Stoa::start(
        &config(&dir, ""),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    (stoa, dir)
}

fn permission(p: &lk::ParticipantInfo) -> lk::ParticipantPermission {
    p.permission.clone().unwrap_or_default()
}

fn attr<'a>(p: &'a lk::ParticipantInfo, key: &str) -> &'a str {
    p.attributes.get(key).map_or("", String::as_str)
}

#[test]
fn leaving_ends_the_media_session_and_bans_still_reach_the_leaver() {
    let (stoa, _dir) = start("hostile-leave");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    // An open room: everyone who joins may publish.
    let id = create_room(addr, &host, json!({"title": "Open mic", "kind": "open"}));
    let (mut host_session, _, _) = join_live(addr, &id, &host);
    let ann = user_token("ann", "Ann");
    let (mut ann_session, ann_join, ann_media) = join_live(addr, &id, &ann);
    assert!(permission(ann_join.participant.as_ref().unwrap()).can_publish);
    host_session.wait_participant("ann", "ann connected", |p| {
        p.state == lk::participant_info::State::Active as i32
            || p.state == lk::participant_info::State::Joined as i32
    });

    // Ann leaves through the API but keeps her media session open: the server ends it.
    ok(addr, "POST", &format!("/api/rooms/{id}/leave"), &ann, None);
    let leave = ann_session.wait_for("the server ending the session", |m| match m {
        lk::signal_response::Message::Leave(l) => Some(l.clone()),
        _ => None,
    });
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    host_session.wait_participant("ann", "ann gone from the room", |p| {
        p.state == lk::participant_info::State::Disconnected as i32
    });
    // Her media token no longer opens a session: she must join (and face moderation) again.
    let (status, why) = SignalClient::connect(addr, &ann_media)
        .err()
        .expect("the old media token is refused");
    assert_eq!(status, 403, "{why}");
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["members"], 1, "{room}");

    // A ban after the leave holds: no token, no media session.
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/ann/ban"),
        &host,
        None,
    );
    refused(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &ann,
        403,
        "banned",
    );
    let (status, why) = SignalClient::connect(addr, &ann_media)
        .err()
        .expect("the banned user's media token is refused");
    assert_eq!(status, 403, "{why}");
    assert!(why.contains("banned"), "{why}");
    // The host was untouched throughout: a member, and her session still answered.
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["members"], 1, "{room}");
    assert_eq!(room["state"], "live");
    host_session.ping();
}

/// Every event `stream` delivers until the room's `room_ended`.
fn events_until_end(stream: &mut SignalClient, room: &str) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "no room_ended; saw {seen:?}");
        let text = stream.next_text().expect("an event");
        let event: Value = serde_json::from_str(&text).unwrap();
        let end = event["type"] == "room_ended" && event["room"] == room;
        seen.push(event);
        if end {
            return seen;
        }
    }
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let user = e["user"]
                .as_str()
                .map_or(String::new(), |u| format!(":{u}"));
            format!("{}{user}", e["type"].as_str().unwrap_or("?"))
        })
        .collect()
}

#[test]
fn the_event_stream_shows_each_viewer_only_what_the_room_view_shows() {
    let (stoa, _dir) = start("hostile-events");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(addr, &host, json!({"title": "Watched"}));
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);
    let lee = user_token("lee", "Lee");
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &lee, None);
    let outsider = user_token("olga", "Olga");
    let mo = user_token("mo", "Mo");

    // A room that does not exist cannot be watched.
    let missing = SignalClient::open(
        addr,
        &format!("/api/events?room=RnotAroom&access_token={outsider}"),
    )
    .err()
    .expect("refused");
    assert!(matches!(missing.0, 400 | 404), "{missing:?}");

    let open = |token: &str, room: bool| {
        let filter = if room {
            format!("room={id}&")
        } else {
            String::new()
        };
        SignalClient::open(addr, &format!("/api/events?{filter}access_token={token}"))
            .expect("event stream")
    };
    let mut host_events = open(&host, true);
    let mut lee_events = open(&lee, true);
    let mut outsider_all = open(&outsider, false);
    let mut outsider_room = open(&outsider, true);
    let mut mo_events = open(&mo, true);
    // Each stream subscribed before its upgrade was answered: nothing below is missed.
    let mut server_events = open(&server_token(), false);

    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &mo, None);
    ok(addr, "POST", &format!("/api/rooms/{id}/hand"), &mo, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/mo/approve_hand"),
        &host,
        None,
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/reactions"),
        &lee,
        Some(json!({"emoji": "👏"})),
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/troll/ban"),
        &host,
        None,
    );
    ok(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);

    let host_saw = kinds(&events_until_end(&mut host_events, &id));
    let lee_saw = kinds(&events_until_end(&mut lee_events, &id));
    let outsider_saw = kinds(&events_until_end(&mut outsider_all, &id));
    let outsider_room_saw = kinds(&events_until_end(&mut outsider_room, &id));
    let mo_saw = kinds(&events_until_end(&mut mo_events, &id));
    let server_saw = kinds(&events_until_end(&mut server_events, &id));

    // The host sees what a moderator's room view shows: hands, roles, removals by user id.
    for want in ["hand:mo", "role:mo", "removed:troll", "reaction:lee"] {
        assert!(host_saw.iter().any(|k| k == want), "host: {host_saw:?}");
        assert!(
            server_saw.iter().any(|k| k == want),
            "server: {server_saw:?}"
        );
    }
    // Mo sees his own hand and role; a listener sees the room's reactions, nobody's hand,
    // role or removal.
    assert!(mo_saw.iter().any(|k| k == "hand:mo"), "mo: {mo_saw:?}");
    assert!(mo_saw.iter().any(|k| k == "role:mo"), "mo: {mo_saw:?}");
    assert!(
        !mo_saw.iter().any(|k| k == "removed:troll"),
        "mo: {mo_saw:?}"
    );
    assert!(
        lee_saw.iter().any(|k| k == "reaction:lee"),
        "lee: {lee_saw:?}"
    );
    for secret in ["hand:", "role:", "removed:"] {
        assert!(
            !lee_saw.iter().any(|k| k.starts_with(secret)),
            "a listener saw {secret} events: {lee_saw:?}"
        );
    }
    // Someone in no room sees the directory's facts only: the room ending, audience counts.
    for saw in [&outsider_saw, &outsider_room_saw] {
        assert!(
            saw.iter()
                .all(|k| k == "room_ended" || k == "audience" || k.starts_with("room_")),
            "an outsider saw {saw:?}"
        );
    }
}

#[test]
fn statistics_are_for_the_host_co_hosts_and_members_only() {
    let (stoa, _dir) = start("hostile-stats");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(addr, &host, json!({"title": "Counted"}));
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);
    let co = user_token("cody", "Cody");
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &co, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/cody/add_co_host"),
        &host,
        None,
    );
    let lee = user_token("lee", "Lee");
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &lee, None);
    let outsider = user_token("olga", "Olga");
    let stats = format!("/api/rooms/{id}/stats");

    for who in [&host, &co, &server_token()] {
        let s = ok(addr, "GET", &stats, who, None);
        assert!(s["stage_ms"]["cody"].as_u64().is_some(), "{s}");
        assert!(s["speaking_ms"].is_object(), "{s}");
    }
    // A member reads the room's summary, without per-user speaking time.
    let s = ok(addr, "GET", &stats, &lee, None);
    assert_eq!(s["speaking_ms"], json!({}), "{s}");
    assert!(s["total_joins"].as_u64().is_some_and(|n| n >= 3), "{s}");
    // Someone in no room gets nothing of a running room.
    refused(addr, "GET", &stats, &outsider, 403, "not_allowed");
    // A host's totals are the host's own.
    let hana_stats = "/api/users/hana/stats";
    assert_eq!(ok(addr, "GET", hana_stats, &host, None)["rooms"], 1);
    assert_eq!(
        ok(addr, "GET", hana_stats, &server_token(), None)["rooms"],
        1
    );
    for who in [&co, &lee, &outsider] {
        refused(addr, "GET", hana_stats, who, 403, "not_allowed");
    }
    // Once ended, the summary is the room's public record (the ended page shows it).
    ok(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    let s = ok(addr, "GET", &stats, &outsider, None);
    assert_eq!(s["speaking_ms"], json!({}), "{s}");
    assert!(s["stage_ms"]["hana"].as_u64().is_some(), "{s}");
}

#[test]
fn listeners_get_no_data_permission_until_they_are_on_stage() {
    let (stoa, _dir) = start("hostile-data");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(addr, &host, json!({"title": "Quiet please"}));
    let (_host_session, host_join, _) = join_live(addr, &id, &host);
    assert!(permission(host_join.participant.as_ref().unwrap()).can_publish_data);
    let lee = user_token("lee", "Lee");
    let (mut lee_session, lee_join, lee_media) = join_live(addr, &id, &lee);
    let me = permission(lee_join.participant.as_ref().unwrap());
    assert!(
        !me.can_publish && !me.can_publish_data,
        "a listener may send nothing to the room: {me:?}"
    );
    // The minted token itself grants no data either (whatever client presents it).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = stoa_signaling::token::ApiKeys::new([(KEY, SECRET)])
        .verify(&lee_media, now)
        .unwrap();
    assert_eq!(claims.video.can_publish_data, Some(false), "{claims:?}");

    // On stage: audio and data; back in the audience: neither, on the same session.
    ok(addr, "POST", &format!("/api/rooms/{id}/hand"), &lee, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/lee/approve_hand"),
        &host,
        None,
    );
    lee_session.wait_participant("lee", "publish and data permission", |p| {
        let x = permission(p);
        x.can_publish && x.can_publish_data && attr(p, "role") == "speaker"
    });
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/lee/move_to_audience"),
        &host,
        None,
    );
    lee_session.wait_participant("lee", "both revoked", |p| {
        let x = permission(p);
        !x.can_publish && !x.can_publish_data
    });
}

/// The room's choice: `listener_data` (at creation or by PATCH) gives listeners the data
/// permission in their token and on their live session, and takes it back, never audio. (Their
/// packets are rate-limited and stamped like anyone's: `data_abuse` in signaling.)
#[test]
fn a_room_may_let_listeners_send_data_and_take_it_back() {
    let (stoa, _dir) = start("hostile-listener-data");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(
        addr,
        &host,
        json!({"title": "Chatty", "listener_data": true}),
    );
    assert_eq!(
        ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None)["listener_data"],
        true
    );
    let (_host_session, _, _) = join_live(addr, &id, &host);
    let lee = user_token("lee", "Lee");
    let (mut lee_session, lee_join, lee_media) = join_live(addr, &id, &lee);
    let me = permission(lee_join.participant.as_ref().unwrap());
    assert!(!me.can_publish && me.can_publish_data, "{me:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = stoa_signaling::token::ApiKeys::new([(KEY, SECRET)])
        .verify(&lee_media, now)
        .unwrap();
    assert_eq!(claims.video.can_publish_data, Some(true), "{claims:?}");
    assert_eq!(claims.video.can_publish, Some(false), "{claims:?}");

    // Only a moderator changes it; the change reaches the live session at once.
    let room = format!("/api/rooms/{id}");
    let (status, v) = api(
        addr,
        "PATCH",
        &room,
        &lee,
        Some(json!({"listener_data": false})),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("not_allowed")),
        "{v}"
    );
    let edited = ok(
        addr,
        "PATCH",
        &room,
        &host,
        Some(json!({"listener_data": false})),
    );
    assert_eq!(edited["listener_data"], false);
    lee_session.wait_participant("lee", "data revoked", |p| {
        let x = permission(p);
        !x.can_publish && !x.can_publish_data
    });
    ok(
        addr,
        "PATCH",
        &room,
        &host,
        Some(json!({"listener_data": true})),
    );
    lee_session.wait_participant("lee", "data granted again", |p| {
        let x = permission(p);
        !x.can_publish && x.can_publish_data
    });
}

#[test]
fn seats_taken_and_never_used_go_to_the_next_person_after_the_grace() {
    let dir = scratch_dir("hostile-seats");
    let stoa = Stoa::start(
        &config(&dir, "seat_grace = 1"),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(
        addr,
        &host,
        json!({"title": "Two seats", "max_participants": 2}),
    );
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);
    // Lee takes a seat and never connects.
    let lee = user_token("lee", "Lee");
    let grant = ok(addr, "POST", &format!("/api/rooms/{id}/token"), &lee, None);
    let lee_media = grant["token"].as_str().unwrap().to_owned();
    let kim = user_token("kim", "Kim");
    refused(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &kim,
        422,
        "room_full",
    );
    // Past the grace the seat is Kim's; Lee's unused token no longer opens a session.
    std::thread::sleep(Duration::from_millis(1_200));
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &kim, None);
    let (status, why) = SignalClient::connect(addr, &lee_media)
        .err()
        .expect("the ghost's media token is refused");
    assert_eq!(status, 403, "{why}");
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &lee, None);
    assert!(room["you"].is_null(), "{room}");
    assert_eq!(room["members"], 2, "{room}");
    // The host's own seat is never given away, and a full room stays full.
    let mo = user_token("mo", "Mo");
    std::thread::sleep(Duration::from_millis(1_200));
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &mo, None);
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["you"]["role"], "host", "{room}");
    let (_, metrics) = request(addr, "GET", "/metrics", None, None);
    assert!(
        metrics.contains("control_seats_released_total 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("seats"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One Twirp RoomService call with a LiveKit server token; (status, JSON body).
fn twirp(addr: SocketAddr, method: &str, body: Value) -> (u16, Value) {
    let mut grants = stoa_signaling::token::Claims::default().video;
    grants.room_create = true;
    grants.room_list = true;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt =
        stoa_signaling::token::mint(KEY, SECRET, "", None, grants, Duration::from_secs(600), now)
            .unwrap();
    let (status, text) = request(
        addr,
        "POST",
        &format!("/twirp/livekit.RoomService/{method}"),
        Some(&jwt),
        Some(&body.to_string()),
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn media_room(addr: SocketAddr, id: &str) -> Option<Value> {
    let (status, list) = twirp(addr, "ListRooms", json!({"names": [id]}));
    assert_eq!(status, 200, "{list}");
    list["rooms"].as_array()?.first().cloned()
}

#[test]
fn the_control_plane_owns_the_room_lifetime_and_its_limits() {
    let (stoa, _dir) = start("hostile-lifetime");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let id = create_room(
        addr,
        &host,
        json!({"title": "Small", "max_participants": 3}),
    );
    let limit = |r: &Value| {
        r.get("maxParticipants")
            .or_else(|| r.get("max_participants"))
            .and_then(Value::as_u64)
    };
    assert_eq!(limit(&media_room(addr, &id).expect("media room")), Some(3));
    let (mut session, _, _) = join_live(addr, &id, &host);
    // A server SDK deletes the media room under the live room: everyone is disconnected...
    let (status, body) = twirp(addr, "DeleteRoom", json!({"room": id}));
    assert_eq!(status, 200, "{body}");
    session.wait_for("the room closing", |m| match m {
        lk::signal_response::Message::Leave(_) => Some(()),
        _ => None,
    });
    assert!(media_room(addr, &id).is_none());
    // ...but the room lives on in the control plane, and a rejoin brings the media room back
    // with the room's limits, not the server's defaults.
    let room = ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None);
    assert_eq!(room["state"], "live", "{room}");
    let (_session, _, _) = join_live(addr, &id, &host);
    assert_eq!(
        limit(&media_room(addr, &id).expect("media room again")),
        Some(3)
    );
}

fn guest(addr: SocketAddr) -> (u16, Value) {
    let body = json!({"name": "Gus"}).to_string();
    let (status, text) = request(addr, "POST", "/api/session/guest", None, Some(&body));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[test]
fn who_may_sign_in_and_create_rooms_is_the_operators_choice() {
    // Guests off: sign-in refused.
    let dir = scratch_dir("hostile-guests-off");
    let stoa = Stoa::start(
        &config(&dir, "guest_sign_in = false"),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let (status, v) = guest(stoa.addr);
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("guests_disabled")),
        "{v}"
    );
    drop(stoa);

    // Guests on, but only users create rooms, at most one live or scheduled each.
    let dir = scratch_dir("hostile-creators");
    let stoa = Stoa::start(
        &config(
            &dir,
            "guest_sign_in = true\nroom_creators = \"users\"\nmax_rooms_per_user = 1",
        ),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let addr = stoa.addr;
    let (status, g) = guest(addr);
    assert_eq!(status, 200, "{g}");
    let gus = g["token"].as_str().unwrap().to_owned();
    let (status, v) = api(
        addr,
        "POST",
        "/api/rooms",
        &gus,
        Some(json!({"title": "Mine"})),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("not_allowed")),
        "{v}"
    );
    let host = user_token("hana", "Hana");
    let first = create_room(addr, &host, json!({"title": "One"}));
    let (status, v) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Two"})),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("too_many_rooms")),
        "{v}"
    );
    let later = 4_102_444_800_000u64;
    let (status, v) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Later", "scheduled_for": later})),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("too_many_rooms")),
        "{v}"
    );
    // Ending the first frees the place; the guest can still listen.
    ok(addr, "GET", &format!("/api/rooms/{first}"), &gus, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{first}/end"),
        &host,
        None,
    );
    create_room(addr, &host, json!({"title": "Two"}));
    drop(stoa);

    // Servers only: users are refused, the app's backend creates rooms for them.
    let dir = scratch_dir("hostile-servers");
    let stoa = Stoa::start(
        &config(&dir, "room_creators = \"servers\""),
        &[("STOA_DATA_DIR", dir.to_str().unwrap())],
    );
    let addr = stoa.addr;
    let (status, v) = api(
        addr,
        "POST",
        "/api/rooms",
        &host,
        Some(json!({"title": "Mine"})),
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("not_allowed")),
        "{v}"
    );
    create_room(
        addr,
        &server_token(),
        json!({"title": "For Hana", "host": "hana"}),
    );
}

#[test]
fn private_rooms_are_unlisted_and_joined_only_by_invitation() {
    let (stoa, _dir) = start("hostile-private");
    let addr = stoa.addr;
    let host = user_token("hana", "Hana");
    let outsider = user_token("olga", "Olga");
    let mut outsider_events =
        SignalClient::open(addr, &format!("/api/events?access_token={outsider}"))
            .expect("event stream");
    let id = create_room(
        addr,
        &host,
        json!({"title": "Inner circle", "private": true}),
    );
    assert_eq!(
        ok(addr, "GET", &format!("/api/rooms/{id}"), &host, None)["private"],
        true
    );
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);

    // To anyone else it does not exist.
    let directory = ok(addr, "GET", "/api/rooms", &outsider, None);
    assert!(!directory.to_string().contains(&id), "{directory}");
    assert!(
        ok(addr, "GET", "/api/rooms", &host, None)
            .to_string()
            .contains(&id)
    );
    for path in [
        format!("/api/rooms/{id}"),
        format!("/api/rooms/{id}/stats"),
        format!("/api/rooms/{id}/audience"),
    ] {
        refused(addr, "GET", &path, &outsider, 404, "not_found");
    }
    // Nor can it be followed (a follow would bring its go-live notification).
    refused(
        addr,
        "PUT",
        &format!("/api/follows/rooms/{id}"),
        &outsider,
        404,
        "not_found",
    );
    let (status, _) = request(addr, "GET", &format!("/api/rooms/{id}/card"), None, None);
    assert_eq!(status, 404);
    let watch = SignalClient::open(
        addr,
        &format!("/api/events?room={id}&access_token={outsider}"),
    )
    .err()
    .expect("refused");
    assert_eq!(watch.0, 404, "{watch:?}");
    refused(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &outsider,
        403,
        "private_room",
    );

    // An invitation lets her see it, then join.
    let invitation = ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/invitations"),
        &host,
        None,
    );
    let token = invitation["token"].as_str().unwrap();
    let seen = ok(
        addr,
        "GET",
        &format!("/api/invitations/{token}"),
        &outsider,
        None,
    );
    assert_eq!(seen["room"]["title"], "Inner circle");
    ok(
        addr,
        "POST",
        &format!("/api/invitations/{token}/accept"),
        &outsider,
        None,
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/token"),
        &outsider,
        None,
    );
    assert_eq!(
        ok(addr, "GET", &format!("/api/rooms/{id}"), &outsider, None)["you"]["user"],
        "olga"
    );

    // Someone else's event stream never names the private room; a public room's events
    // still arrive.
    let public = create_room(
        addr,
        &user_token("pia", "Pia"),
        json!({"title": "Open to all"}),
    );
    ok(addr, "POST", &format!("/api/rooms/{id}/end"), &host, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{public}/end"),
        &user_token("pia", "Pia"),
        None,
    );
    let mut stranger = SignalClient::open(
        addr,
        &format!("/api/events?access_token={}", user_token("sam", "Sam")),
    )
    .expect("event stream");
    let public2 = create_room(addr, &user_token("pia", "Pia"), json!({"title": "Again"}));
    let secret2 = create_room(
        addr,
        &host,
        json!({"title": "Inner again", "private": true}),
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{secret2}/end"),
        &host,
        None,
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{public2}/end"),
        &user_token("pia", "Pia"),
        None,
    );
    let seen = events_until_end(&mut stranger, &public2);
    assert!(
        !seen.iter().any(|e| e["room"] == secret2.as_str()),
        "a stranger saw a private room: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["type"] == "room_live" && e["room"] == public2.as_str())
    );
    // Olga, a member of the first private room, saw it end.
    let olga_saw = events_until_end(&mut outsider_events, &public);
    assert!(
        olga_saw
            .iter()
            .any(|e| e["type"] == "room_ended" && e["room"] == id.as_str()),
        "{olga_saw:?}"
    );
}

/// Moderates a room, then reads its audit log as each kind of caller.
fn audit_scenario(addr: SocketAddr) {
    let host = user_token("hana", "Hana");
    let id = create_room(addr, &host, json!({"title": "Watched closely"}));
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &host, None);
    let co = user_token("cody", "Cody");
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &co, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/cody/add_co_host"),
        &host,
        None,
    );
    let lee = user_token("lee", "Lee");
    ok(addr, "POST", &format!("/api/rooms/{id}/token"), &lee, None);
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/lee/kick"),
        &co,
        None,
    );
    ok(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/troll/ban"),
        &server_token(),
        None,
    );
    let path = format!("/api/rooms/{id}/audit");
    let log = ok(addr, "GET", &path, &host, None);
    let entries: Vec<(Value, String, Value)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["at"].as_u64().is_some_and(|t| t > 0), "{e}");
            (
                e["actor"].clone(),
                e["action"].as_str().unwrap().to_owned(),
                e["target"].clone(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            (Value::Null, "start".to_owned(), Value::Null),
            (json!("hana"), "add_co_host".to_owned(), json!("cody")),
            (json!("cody"), "kick".to_owned(), json!("lee")),
            (Value::Null, "ban".to_owned(), json!("troll")),
        ],
        "{log}"
    );
    assert_eq!(ok(addr, "GET", &path, &server_token(), None), log);
    // A co-host moderates but does not read the log; a member or a stranger neither.
    for who in [&co, &user_token("olga", "Olga")] {
        refused(addr, "GET", &path, who, 403, "not_allowed");
    }
    // A failed attempt is not an action: nothing is logged.
    let (status, _) = api(
        addr,
        "POST",
        &format!("/api/rooms/{id}/members/hana/kick"),
        &co,
        None,
    );
    assert_eq!(status, 403);
    let again = ok(addr, "GET", &path, &host, None);
    assert_eq!(again["entries"].as_array().unwrap().len(), 4, "{again}");
}

#[test]
fn the_audit_log_names_who_did_what_to_whom_for_the_host_only() {
    let (stoa, _dir) = start("hostile-audit");
    audit_scenario(stoa.addr);
    // The same on the Redis store.
    let redis = redis_server::RedisServer::start();
    let dir = scratch_dir("hostile-audit-redis");
    let stoa = Stoa::start(&config(&dir, ""), &[("STOA_REDIS_URL", redis.url.as_str())]);
    audit_scenario(stoa.addr);
}
