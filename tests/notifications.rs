//! Notifications and control-plane webhooks end to end: two `stoa serve` processes sharing a
//! real redis-server, followers' notifications across instances over `/api/events` and
//! `/api/me/notifications`, and the signed `control.*` webhooks a local HTTP receiver checks.
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

use redis_server::RedisServer;
use serde_json::{Value, json};
use stoa_control::auth::Keys;
use stoa_control::model::UserId;
use support::api::{call as api, create_room, ok};
use support::hooks::HookReceiver;
use support::{SignalClient, Stoa, scratch_dir};

const KEY: &str = "ctlkey";
const SECRET: &str = "a-long-enough-control-test-secret-0123";

fn user_token(id: &str, name: &str) -> String {
    Keys::new(vec![(KEY.into(), SECRET.into())])
        .unwrap()
        .user_token(&UserId::parse(id).unwrap(), name, Duration::from_secs(3600))
        .unwrap()
}

/// Writes a config with the test keys and `[control]` settings.
fn config(dir: &Path, control: &str) -> PathBuf {
    support::api::config(dir, KEY, SECRET, control)
}

impl HookReceiver {
    /// The control-plane bodies whose signature a LiveKit server SDK's receiver accepts, as
    /// JSON; panics on any request it refuses.
    fn verified(&self) -> Vec<Value> {
        let receiver = livekit_api::webhooks::WebhookReceiver::new(
            livekit_api::access_token::TokenVerifier::with_api_key(KEY, SECRET),
        );
        let wrong = livekit_api::webhooks::WebhookReceiver::new(
            livekit_api::access_token::TokenVerifier::with_api_key(
                KEY,
                "another-secret-0123456789-abcdef",
            ),
        );
        let got = self.requests();
        got.iter()
            .map(|(auth, body)| {
                receiver
                    .receive(body, auth)
                    .unwrap_or_else(|e| panic!("signature of {body}: {e}"));
                assert!(wrong.receive(body, auth).is_err(), "only the secret signs");
                let tampered = format!("{body} ");
                assert!(
                    receiver.receive(&tampered, auth).is_err(),
                    "the body is covered"
                );
                serde_json::from_str::<Value>(body).unwrap()
            })
            .filter(|v| {
                v["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("control."))
            })
            .collect()
    }

    /// Waits (bounded) for a verified control-plane body matching `want`.
    fn wait(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = self.verified().into_iter().find(|v| want(v)) {
                return v;
            }
            assert!(Instant::now() < deadline, "no webhook: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Reads `stream` until a `notification` message arrives (bounded).
fn next_notification(stream: &mut SignalClient) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = stream.next_text().expect("a message");
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "notification" {
            return v["notification"].clone();
        }
        assert!(Instant::now() < deadline, "no notification");
    }
}

#[test]
fn followers_are_notified_across_instances_and_the_app_gets_signed_webhooks() {
    let redis = RedisServer::start();
    let receiver = HookReceiver::start(1);
    let dir = scratch_dir("control-notify");
    let cfg = config(
        &dir,
        &format!(
            "[webhook]\nurls = [\"http://{}/hook\"]\napi_key = \"{KEY}\"",
            receiver.addr
        ),
    );
    let redis_url = ("STOA_REDIS_URL", redis.url.as_str());
    let one = Stoa::start(&cfg, &[redis_url]);
    let two = Stoa::start(&cfg, &[redis_url]);
    let (hana, fay, lee) = (
        user_token("hana", "Hana"),
        user_token("fay", "Fay"),
        user_token("lee", "Lee"),
    );

    // Fay follows Hana through instance two and listens there.
    ok(two.addr, "PUT", "/api/follows/users/hana", &fay, None);
    let mut stream = SignalClient::open(two.addr, &format!("/api/events?access_token={fay}"))
        .expect("event stream");
    let mut bell = SignalClient::open(
        one.addr,
        &format!("/api/events?notifications_only=true&access_token={fay}"),
    )
    .expect("notification stream");
    let empty = ok(two.addr, "GET", "/api/me/notifications", &fay, None);
    assert_eq!(
        empty,
        json!({"notifications": [], "unread": 0, "next": null})
    );

    // Hana goes live through instance one.
    let id = create_room(one.addr, &hana, json!({"title": "Morning show"}));
    let live = next_notification(&mut stream);
    assert_eq!(live["kind"], "room_live");
    assert_eq!(live["room"], id.as_str());
    assert_eq!(live["host"], "hana");
    assert_eq!(live["title"], "Morning show");
    // The bell's stream carries nothing but the notification (no room_created, room_live).
    let only: Value = serde_json::from_str(&bell.next_text().expect("a message")).unwrap();
    assert_eq!(only, json!({"type": "notification", "notification": live}));
    let feed = ok(one.addr, "GET", "/api/me/notifications", &fay, None);
    assert_eq!(feed["unread"], 1);
    assert_eq!(feed["notifications"][0]["id"], live["id"]);
    assert_eq!(feed["notifications"][0]["read"], false);
    // Nobody else's feed, not the host's.
    let theirs = ok(one.addr, "GET", "/api/me/notifications", &hana, None);
    assert_eq!(theirs["notifications"], json!([]));

    // Two more rooms; pages of two, newest first.
    let mut ids = vec![id.clone()];
    for title in ["Noon show", "Evening show"] {
        ids.push(create_room(one.addr, &hana, json!({"title": title})));
        assert_eq!(
            next_notification(&mut stream)["room"],
            ids.last().unwrap().as_str()
        );
    }
    let page = ok(two.addr, "GET", "/api/me/notifications?limit=2", &fay, None);
    let rooms: Vec<&str> = page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(page["unread"], 3);
    let next = page["next"].as_str().unwrap();
    let rest = ok(
        two.addr,
        "GET",
        &format!("/api/me/notifications?limit=2&after={next}"),
        &fay,
        None,
    );
    assert_eq!(rest["notifications"][0]["room"], ids[0].as_str());
    assert_eq!(rest["next"], Value::Null);
    // Read up to the second: one stays unread.
    let second_at = page["notifications"][1]["at"].as_u64().unwrap();
    let (status, _) = api(
        one.addr,
        "POST",
        "/api/me/notifications/read",
        &fay,
        Some(json!({"until": second_at})),
    );
    assert_eq!(status, 204);
    let feed = ok(one.addr, "GET", "/api/me/notifications", &fay, None);
    assert_eq!(feed["unread"], 1);
    assert_eq!(feed["notifications"][0]["read"], false);
    assert_eq!(feed["notifications"][1]["read"], true);
    // Everything.
    let (status, _) = api(
        one.addr,
        "POST",
        "/api/me/notifications/read",
        &fay,
        Some(json!({})),
    );
    assert_eq!(status, 204);
    assert_eq!(
        ok(two.addr, "GET", "/api/me/notifications", &fay, None)["unread"],
        0
    );
    // Bad input: a clear 4xx.
    for (method, path, body, status, code) in [
        (
            "GET",
            "/api/me/notifications?limit=0",
            None,
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/me/notifications?limit=101",
            None,
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/api/me/notifications?page=2",
            None,
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/api/me/notifications/read",
            Some(json!({"until": "x"})),
            400,
            "invalid_json",
        ),
    ] {
        let (got, v) = api(one.addr, method, path, &fay, body);
        assert_eq!(
            (got, v["code"].as_str()),
            (status, Some(code)),
            "{path}: {v}"
        );
    }
    let (status, v) = api(one.addr, "GET", "/api/me/notifications", "nope", None);
    assert_eq!(status, 401, "{v}");
    let spec = ok(one.addr, "GET", "/api/openapi.json", &fay, None);
    assert!(spec["paths"]["/api/me/notifications"]["get"].is_object());
    assert!(spec["paths"]["/api/me/notifications/read"]["post"].is_object());
    let schemas = &spec["components"]["schemas"];
    assert!(schemas["NotificationsView"].is_object(), "{schemas}");
    assert!(
        schemas["Notification"]["properties"]["kind"].is_object(),
        "{schemas}"
    );

    // The app's backend hears of it, signed; the first attempt was refused and retried.
    let started = receiver.wait("room_started", |v| {
        v["event"] == "control.room_started" && v["control"]["room"] == id.as_str()
    });
    assert_eq!(started["control"]["host"], "hana");
    assert_eq!(started["control"]["title"], "Morning show");
    // (caller, path, the webhook it causes, what it says)
    for (who, path, event, (key, value)) in [
        (&lee, "token", "member_joined", ("user", "lee")),
        (&lee, "hand", "hand_raised", ("user", "lee")),
        (
            &hana,
            "members/lee/approve_hand",
            "role_changed",
            ("role", "speaker"),
        ),
    ] {
        ok(
            one.addr,
            "POST",
            &format!("/api/rooms/{id}/{path}"),
            who,
            None,
        );
        receiver.wait(event, |v| {
            v["event"] == format!("control.{event}") && v["control"][key] == value
        });
    }
    let moderation = receiver.wait("moderation", |v| v["event"] == "control.moderation");
    assert_eq!(moderation["control"]["action"], "approve_hand");
    assert_eq!(moderation["control"]["actor"], "hana");
    ok(
        one.addr,
        "POST",
        &format!("/api/rooms/{id}/end"),
        &hana,
        None,
    );
    receiver.wait("room_ended", |v| {
        v["event"] == "control.room_ended" && v["control"]["room"] == id.as_str()
    });
    // Every audit-log entry (start, approve_hand, end) is also a `control.audit` webhook
    // saying the same: when, who, what, to whom.
    let log = ok(
        one.addr,
        "GET",
        &format!("/api/rooms/{id}/audit"),
        &hana,
        None,
    );
    let entries = log["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "approve_hand", "end"], "{log}");
    for e in entries {
        receiver.wait(&format!("audit {e}"), |v| {
            let c = &v["control"];
            v["event"] == "control.audit"
                && c["room"] == id.as_str()
                && c["at"] == e["at"]
                && c["action"] == e["action"]
                && c["actor"] == e["actor"]
                && c["user"] == e["target"]
        });
    }
    let audits = receiver
        .verified()
        .into_iter()
        .filter(|v| v["event"] == "control.audit" && v["control"]["room"] == id.as_str())
        // A retried delivery carries the same body (and id).
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(audits, entries.len(), "one webhook per entry");
    let all = receiver.requests();
    let first = &all[0].1;
    assert!(
        all.iter().skip(1).any(|(_, b)| b == first),
        "the refused delivery was retried with the same body"
    );
}
