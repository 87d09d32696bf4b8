//! Scheduled rooms through the service on both stores: editing, reminders, expiry, the next
//! occurrence of a recurring room with its line-up. The sweep is driven with a simulated `now`
//! (`Control::run_schedules`), so nothing waits for real time to pass.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use common::service::{host, new_room, now, start, uid};
use stoa_control::Control;
use stoa_control::events::Event;
use stoa_control::model::{Role, RoomId, RoomState};
use stoa_control::room::{Actor, Command, Edit};
use stoa_control::schedule::{Day, Recurrence, Schedule};
use stoa_control::service::NewInvite;
use stoa_control::service::NewRoom;

use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;

const MINUTE: u64 = 60_000;
const DAY: u64 = 24 * 60 * MINUTE;

/// Waits for the first event that `pick` recognises.
async fn next_event<T>(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    pick: impl Fn(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("event in time")
            .unwrap();
        if let Some(t) = pick(&e) {
            return t;
        }
    }
}

async fn schedules(control: Control) {
    let rules = control.schedule_rules();
    let mut events = control.events();
    // A one-off room in two days: edited, reminded, then expired unstarted.
    let at = now() + 2 * DAY;
    let doc = control
        .create_room(
            &host(),
            new_room("Weekly Rust", Some(at), Schedule::default()),
        )
        .await
        .unwrap();
    let id = doc.room.id.clone();
    // Nobody but its moderators edits it; bad values are refused as at creation.
    let rename = Edit {
        title: Some("  Rust, live  ".into()),
        ..Edit::default()
    };
    let err = control
        .edit(&Actor::User(uid("zed")), &id, rename.clone())
        .await
        .unwrap_err();
    assert_eq!(err.status, 403);
    let err = control
        .edit(
            &Actor::User(uid("hana")),
            &id,
            Edit {
                title: Some(String::new()),
                ..Edit::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_field");
    let edited = control
        .edit(&Actor::User(uid("hana")), &id, rename)
        .await
        .unwrap();
    assert_eq!(edited.room.title, "Rust, live");
    let title = next_event(&mut events, |e| match e {
        Event::RoomEdited { room, title, .. } if *room == id => Some(title.clone()),
        _ => None,
    })
    .await;
    assert_eq!(title, "Rust, live");
    // The directory shows the new title.
    let listed = control.rooms(&[RoomState::Scheduled]).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|d| d.room.id == id && d.room.title == "Rust, live")
    );
    // Too early for the host to open it.
    let err = control
        .act(&Actor::User(uid("hana")), &id, Command::Start)
        .await
        .unwrap_err();
    assert_eq!(err.code, "too_early");

    // The reminder, once.
    assert_eq!(
        control
            .run_schedules(at - rules.reminder_ms - 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        control.run_schedules(at - rules.reminder_ms).await.unwrap(),
        1
    );
    next_event(&mut events, |e| match e {
        Event::Reminder { room, .. } if *room == id => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(control.run_schedules(at - 1).await.unwrap(), 0);
    // Not started within the expiry: ended, archived, out of the directory.
    assert_eq!(
        control.run_schedules(at + rules.expiry_ms).await.unwrap(),
        1
    );
    let doc = control.room(&id).await.unwrap();
    assert_eq!(doc.room.state, RoomState::Archived);
    let listed = control
        .rooms(&[RoomState::Scheduled, RoomState::Live])
        .await
        .unwrap();
    assert!(listed.iter().all(|d| d.room.id != id));

    // A recurring room with auto-start and a line-up: every Monday 09:00 in New York.
    let weekly = Schedule {
        auto_start: true,
        repeat: Some(Recurrence {
            days: vec![Day::Mon],
            time: "09:00".into(),
            time_zone: "America/New_York".into(),
        }),
    };
    // Private: only its host, members and invitees see it, occurrence after occurrence.
    let mut private = new_room("Weekly Rust", None, weekly.clone());
    private.private = true;
    let doc = control.create_room(&host(), private).await.unwrap();
    let first = doc.room.id.clone();
    let link = NewInvite {
        role: Role::Listener,
        max_uses: None,
        expires_in: None,
    };
    let (token, _) = control.invite(&uid("hana"), &first, link).await.unwrap();
    control.accept(&uid("ivy"), &token, now()).await.unwrap();
    assert!(control.view(&first, Some(&uid("ivy"))).await.is_ok());
    let at = doc.room.scheduled_for.unwrap();
    assert!(at > now() && at <= now() + 7 * DAY + MINUTE);
    assert_eq!(doc.room.schedule, weekly);
    control
        .act(
            &Actor::User(uid("hana")),
            &first,
            Command::LineUp(uid("sam"), Some(Role::Speaker)),
        )
        .await
        .unwrap();
    // Auto-start at its time.
    assert_eq!(control.run_schedules(at).await.unwrap(), 1);
    assert_eq!(
        control.room(&first).await.unwrap().room.state,
        RoomState::Live
    );
    // The lined-up speaker lands on stage.
    let grant = control.join(&uid("sam"), "Sam", &first).await.unwrap();
    assert_eq!(grant.role, Role::Speaker);
    // Ending it schedules the next occurrence, a week later, with the same line-up.
    control
        .act(&Actor::User(uid("hana")), &first, Command::End)
        .await
        .unwrap();
    let next = control
        .rooms(&[RoomState::Scheduled])
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.room.series.as_ref() == Some(&first))
        .expect("next occurrence scheduled");
    let next_at = next.room.scheduled_for.unwrap();
    // One week later in New York, 167, 168 or 169 hours depending on the clocks.
    let gap = next_at - at;
    assert!(
        [167, 168, 169].contains(&(gap / (60 * MINUTE))) && gap % (60 * MINUTE) == 0,
        "{gap}"
    );
    assert_eq!(next.room.title, "Weekly Rust");
    assert_eq!(next.room.host, uid("hana"));
    let lineup = control.store().lineup(&next.room.id, 10).await.unwrap();
    assert_eq!(lineup, vec![(uid("sam"), Role::Speaker)]);
    // Still private, and still open to whoever was invited to the series; not to others.
    assert!(next.room.private);
    let invited = control.store().invited(&next.room.id, 10).await.unwrap();
    assert_eq!(invited, vec![uid("ivy")]);
    assert!(control.view(&next.room.id, Some(&uid("ivy"))).await.is_ok());
    let err = control
        .view(&next.room.id, Some(&uid("zed")))
        .await
        .unwrap_err();
    assert_eq!(err.status, 404, "{err:?}");
    // The next one expires in turn, and schedules the one after, in the same series.
    assert!(
        control
            .run_schedules(next_at + rules.expiry_ms)
            .await
            .unwrap()
            >= 1
    );
    let third = control
        .rooms(&[RoomState::Scheduled])
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.room.series.as_ref() == Some(&first) && d.room.id != next.room.id)
        .expect("third occurrence");
    assert!(third.room.scheduled_for.unwrap() > next_at);
    assert!(!next.room.recording && !third.room.recording);
    let _: RoomId = third.room.id;

    // A recurring room created recorded: each occurrence records from its start.
    let doc = control
        .create_room(
            &host(),
            NewRoom {
                recording: true,
                ..new_room("Weekly recorded", None, weekly.clone())
            },
        )
        .await
        .unwrap();
    let recorded = doc.room.id.clone();
    let at = doc.room.scheduled_for.unwrap();
    assert!(doc.room.recording && doc.room.record_from_start);
    assert!(control.run_schedules(at).await.unwrap() >= 1);
    let live = control.room(&recorded).await.unwrap();
    assert_eq!(live.room.state, RoomState::Live);
    assert!(live.room.recording);
    control
        .act(&Actor::User(uid("hana")), &recorded, Command::End)
        .await
        .unwrap();
    assert!(!control.room(&recorded).await.unwrap().room.recording);
    let following = control
        .rooms(&[RoomState::Scheduled])
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.room.series.as_ref() == Some(&recorded))
        .expect("next recorded occurrence");
    assert!(
        following.room.recording && following.room.record_from_start,
        "the next occurrence records from its start too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_schedules() {
    let dir = std::env::temp_dir().join(format!("stoa-schedules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    schedules(start(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_schedules() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "s:").await.unwrap();
    schedules(start(Arc::new(store))).await;
}
