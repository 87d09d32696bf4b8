//! Notifications and webhooks through the service, on both stores: a room going live reaches
//! its followers and its host's followers (once each, never the host), in their feeds and on
//! their open streams; a reminder reaches those who asked, at the configured time before the
//! start, driven with a simulated `now` (`Control::run_schedules`); read marks; and every
//! control-plane event an app needs reaches the webhook sink as a JSON body.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis_server::RedisServer;
use common::service::{host, new_room, now, start, uid};
use serde_json::Value;
use stoa_control::Control;
use stoa_control::notify::{Notification, NotificationKind};
use stoa_control::permission::Action;
use stoa_control::room::{Actor, Command, Edit};
use stoa_control::schedule::Schedule;

use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;
use stoa_control::store::{Follow, Store};
use stoa_control::webhook::HookSink;

const DAY: u64 = 24 * 3600 * 1000;

/// Keeps every body handed to it.
#[derive(Debug, Default)]
struct Sink(Mutex<Vec<(String, Value)>>);

impl HookSink for Sink {
    fn deliver(&self, event: String, body: Vec<u8>) {
        let body = serde_json::from_slice(&body).unwrap();
        self.0.lock().unwrap().push((event, body));
    }
}

impl Sink {
    fn events(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    fn find(&self, event: &str) -> Value {
        let all = self.0.lock().unwrap();
        all.iter()
            .find(|(e, _)| e == event)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("no {event} among {:?}", self.events()))
    }
}

/// Waits (bounded) until `user`'s feed has `n` entries; returns it.
async fn feed(control: &Control, user: &str, n: usize) -> (Vec<Notification>, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = control.notifications(&uid(user)).await.unwrap();
        if got.0.len() >= n {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user}'s feed has {} entries, not {n}",
            got.0.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn notifies(store: Arc<dyn Store>) {
    let control = start(store);
    let sink = Arc::new(Sink::default());
    control.set_webhooks(sink.clone());
    let rules = control.schedule_rules();
    assert!(rules.reminder_ms > 0);

    // A scheduled room: "remind me" from rita; ollie follows the host.
    let at = now() + 2 * DAY;
    let doc = control
        .create_room(&host(), new_room("Later", Some(at), Schedule::default()))
        .await
        .unwrap();
    let later = doc.room.id.clone();
    control
        .follow(&uid("rita"), &Follow::Room(later.clone()), true)
        .await
        .unwrap();
    control
        .follow(&uid("ollie"), &Follow::User(uid("hana")), true)
        .await
        .unwrap();
    // Both follow: notified once.
    for what in [Follow::User(uid("hana")), Follow::Room(later.clone())] {
        control.follow(&uid("bea"), &what, true).await.unwrap();
    }
    let mut rita_stream = control.notification_stream(&uid("rita"));
    let mut ollie_stream = control.notification_stream(&uid("ollie"));

    // Not a millisecond before its time, then once: (simulated now, rooms acted on).
    let remind_at = at - rules.reminder_ms;
    for (now, acted) in [(remind_at - 1, 0), (remind_at, 1), (remind_at + 1, 0)] {
        assert_eq!(control.run_schedules(now).await.unwrap(), acted, "at {now}");
    }
    let (rita, read) = feed(&control, "rita", 1).await;
    assert_eq!(read, 0);
    assert_eq!(rita.len(), 1);
    assert_eq!(rita[0].kind, NotificationKind::Reminder);
    assert_eq!(rita[0].room, later);
    assert_eq!(rita[0].scheduled_for, Some(at));
    assert_eq!(rita[0].title, "Later");
    let streamed = tokio::time::timeout(Duration::from_secs(5), rita_stream.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(streamed, rita[0]);
    // A reminder is for those who asked, not the host's followers.
    assert_eq!(feed(&control, "bea", 1).await.0.len(), 1);

    // The host goes live with another room: the host's followers hear of it.
    let live = control
        .create_room(&host(), new_room("Now", None, Schedule::default()))
        .await
        .unwrap()
        .room
        .id;
    let (ollie, _) = feed(&control, "ollie", 1).await;
    assert_eq!(ollie.len(), 1);
    assert_eq!(ollie[0].kind, NotificationKind::RoomLive);
    assert_eq!(ollie[0].room, live);
    assert_eq!(ollie[0].host, uid("hana"));
    let streamed = tokio::time::timeout(Duration::from_secs(5), ollie_stream.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(streamed, ollie[0]);
    // The scheduled room starts: its followers and the host's followers, once each.
    control
        .act(&Actor::System, &later, Command::Start)
        .await
        .unwrap();
    let (bea, _) = feed(&control, "bea", 3).await;
    assert_eq!(
        bea.iter().map(|n| n.kind).collect::<Vec<_>>(),
        [
            NotificationKind::RoomLive,
            NotificationKind::RoomLive,
            NotificationKind::Reminder
        ]
    );
    assert_eq!(bea[0].room, later, "newest first");
    assert_eq!(feed(&control, "rita", 2).await.0.len(), 2);
    assert_eq!(feed(&control, "ollie", 2).await.0.len(), 2);
    // The host is not told of their own room.
    assert!(
        control
            .notifications(&uid("hana"))
            .await
            .unwrap()
            .0
            .is_empty()
    );
    // Nobody else was told twice.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(control.notifications(&uid("bea")).await.unwrap().0.len(), 3);

    // Read marks.
    control.mark_read(&uid("bea"), bea[1].at).await.unwrap();
    let (_, read) = control.notifications(&uid("bea")).await.unwrap();
    assert_eq!(read, bea[1].at);

    // Webhooks for the app's backend.
    control.join(&uid("sam"), "Sam", &live).await.unwrap();
    for (actor, command) in [
        ("sam", Command::Own(Action::RaiseHand)),
        ("hana", Command::Target(Action::ApproveHand, uid("sam"))),
        ("hana", Command::Target(Action::Kick, uid("sam"))),
    ] {
        control
            .act(&Actor::User(uid(actor)), &live, command)
            .await
            .unwrap();
    }
    control.join(&uid("lee"), "Lee", &live).await.unwrap();
    control
        .act(&Actor::User(uid("lee")), &live, Command::Own(Action::Leave))
        .await
        .unwrap();
    control
        .edit(
            &Actor::User(uid("hana")),
            &live,
            Edit {
                title: Some("Now, renamed".into()),
                ..Edit::default()
            },
        )
        .await
        .unwrap();
    control
        .act(&Actor::User(uid("hana")), &live, Command::End)
        .await
        .unwrap();
    let events = sink.events();
    for name in [
        "control.room_scheduled",
        "control.room_created",
        "control.room_started",
        "control.room_ended",
        "control.room_edited",
        "control.member_joined",
        "control.member_left",
        "control.hand_raised",
        "control.role_changed",
        "control.moderation",
    ] {
        assert!(events.iter().any(|e| e == name), "{name} in {events:?}");
    }
    let scheduled = sink.find("control.room_scheduled");
    assert_eq!(scheduled["event"], "control.room_scheduled");
    assert_eq!(scheduled["control"]["room"], later.as_str());
    assert_eq!(scheduled["control"]["scheduled_for"], at);
    assert!(scheduled["id"].as_str().unwrap().starts_with("CW_"));
    let started = sink.find("control.room_started");
    assert_eq!(started["control"]["host"], "hana");
    let hand = sink.find("control.hand_raised");
    assert_eq!(hand["control"]["user"], "sam");
    let role = sink.find("control.role_changed");
    assert_eq!(role["control"]["user"], "sam");
    assert_eq!(role["control"]["role"], "speaker");
    let kicked = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|(e, b)| e == "control.moderation" && b["control"]["action"] == "kick")
        .map(|(_, b)| b.clone())
        .expect("a kick");
    assert_eq!(kicked["control"]["user"], "sam");
    assert_eq!(kicked["control"]["actor"], "hana");
    let left = sink.find("control.member_left");
    assert_eq!(left["control"]["user"], "lee");
    let edited = sink.find("control.room_edited");
    assert_eq!(edited["control"]["title"], "Now, renamed");
    // Ids are unique.
    let mut ids: Vec<String> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b["id"].as_str().unwrap().to_owned())
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_notifications_and_webhooks() {
    let dir = std::env::temp_dir().join(format!("stoa-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    notifies(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_notifications_and_webhooks() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "n:").await.unwrap();
    notifies(Arc::new(store)).await;
}

/// A member whose seat is given up (took a token, never connected, past the seat grace) has left
/// as far as the app is concerned: `control.member_left` with `reason = "seat_released"`.
async fn released_seats_are_members_leaving(store: Arc<dyn Store>) {
    let keys = stoa_control::auth::Keys::new(vec![("k".into(), "s".into())]).unwrap();
    let config = stoa_control::ControlConfig {
        seat_grace: 0,
        ..Default::default()
    };
    let control = Control::start(store, Arc::new(stoa_control::media::NoMedia), keys, config);
    let sink = Arc::new(Sink::default());
    control.set_webhooks(sink.clone());
    let mut two = new_room("Two seats", None, Schedule::default());
    two.max_participants = Some(2);
    let id = control.create_room(&host(), two).await.unwrap().room.id;
    control.join(&uid("hana"), "Hana", &id).await.unwrap();
    control.join(&uid("lee"), "Lee", &id).await.unwrap();
    assert!(!sink.events().contains(&"control.member_left".to_owned()));
    // Lee never connected: past the grace (0 s) his seat is Kim's.
    control.join(&uid("kim"), "Kim", &id).await.unwrap();
    let left = sink.find("control.member_left");
    assert_eq!(left["control"]["user"], "lee", "{left}");
    assert_eq!(left["control"]["reason"], "seat_released", "{left}");
    assert_eq!(left["control"]["room"], id.as_str(), "{left}");
}

#[tokio::test]
async fn embedded_released_seats_are_members_leaving() {
    let dir = std::env::temp_dir().join(format!("stoa-notify-seats-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    released_seats_are_members_leaving(Arc::new(store)).await;
}

#[tokio::test]
async fn redis_released_seats_are_members_leaving() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "s:").await.unwrap();
    released_seats_are_members_leaving(Arc::new(store)).await;
}
