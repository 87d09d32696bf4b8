//! Idle speakers and away listeners through the service on both stores. The idle sweep is
//! driven with a simulated `now` (`Control::run_idle`), so nothing waits for real time.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::redis_server::RedisServer;
use common::service::{host, new_room, now, start, uid};
use stoa_control::Control;
use stoa_control::events::Event;
use stoa_control::model::{IdleRules, Role, RoomState};
use stoa_control::permission::Action;
use stoa_control::room::{Actor, Command, Edit};
use stoa_control::schedule::Schedule;
use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;

const SECOND: u64 = 1000;

async fn idle(control: Control) {
    let mut events = control.events();
    let mut new = new_room("Quiet hour", None, Schedule::default());
    new.idle = IdleRules {
        mute_after: 60,
        audience_after: 180,
        show_away: true,
    };
    // The move to the audience comes after the mute, or never.
    let mut bad = new.clone();
    bad.idle.audience_after = 60;
    let err = control.create_room(&host(), bad).await.unwrap_err();
    assert_eq!(err.code, "invalid_field");
    let id = control.create_room(&host(), new).await.unwrap().room.id;
    let name = id.to_string();
    for (u, n) in [("hana", "Hana"), ("lee", "Lee"), ("kim", "Kim")] {
        control.join(&uid(u), n, &id).await.unwrap();
        control.presence(&name, u, true).await;
    }
    let hana = Actor::User(uid("hana"));
    control
        .act(
            &hana,
            &id,
            Command::Target(Action::InviteToSpeak, uid("lee")),
        )
        .await
        .unwrap();
    control
        .act(
            &Actor::User(uid("lee")),
            &id,
            Command::Own(Action::UnmuteSelf),
        )
        .await
        .unwrap();
    // Lee speaks, then falls silent: the idle rules count from here.
    control.speaking(&name, "lee", true).await;
    let t = now();
    // Speaking now: never idle, however long.
    assert_eq!(control.run_idle(t + 3600 * SECOND).await.unwrap(), 0);
    control.speaking(&name, "lee", false).await;
    let t = now();
    // The host arrived muted and stays on stage: the rules leave them be.
    assert_eq!(control.run_idle(t + 50 * SECOND).await.unwrap(), 0);
    assert_eq!(control.run_idle(t + 61 * SECOND).await.unwrap(), 1);
    let v = control.view(&id, Some(&uid("hana"))).await.unwrap();
    let lee = v.stage.iter().find(|m| m.user == uid("lee")).unwrap();
    assert!(lee.muted && lee.role == Role::Speaker, "{lee:?}");
    let muted = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if let Event::Idle { user, moved, .. } = events.recv().await.unwrap()
                && user == uid("lee")
            {
                break moved;
            }
        }
    })
    .await
    .expect("the idle event in time");
    assert!(!muted);
    // Once muted, nothing more until the longer time has passed.
    assert_eq!(control.run_idle(t + 120 * SECOND).await.unwrap(), 0);
    assert_eq!(control.run_idle(t + 181 * SECOND).await.unwrap(), 1);
    let v = control.view(&id, Some(&uid("lee"))).await.unwrap();
    assert_eq!(v.you.as_ref().unwrap().role, Role::Listener);
    assert!(v.stage.iter().all(|m| m.user != uid("lee")));
    // The line-up still holds Lee: they come back on stage when they rejoin.
    assert_eq!(v.your_lineup, Some(Role::Speaker));

    // Away and deafened: the member's own word, shown in the views.
    let kim = uid("kim");
    let err = control
        .presence_state(&uid("zed"), &id, Some(true), None)
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_a_member");
    control
        .presence_state(&kim, &id, Some(true), Some(true))
        .await
        .unwrap();
    let v = control.view(&id, Some(&kim)).await.unwrap();
    let you = v.you.unwrap();
    assert!(you.away && you.deafened, "{you:?}");
    let (page, _) = control
        .audience(&id, Some(&uid("hana")), None, 10)
        .await
        .unwrap();
    let seen = page.members.iter().find(|(u, _, _)| *u == kim).unwrap();
    assert!(seen.1.away);
    // The host turns the away display off: away no longer shows, deafened still does.
    let off = Edit {
        show_away: Some(false),
        ..Edit::default()
    };
    control.edit(&hana, &id, off).await.unwrap();
    let v = control.view(&id, Some(&kim)).await.unwrap();
    assert!(!v.show_away);
    let you = v.you.unwrap();
    assert!(!you.away && you.deafened, "{you:?}");
    let (page, _) = control
        .audience(&id, Some(&uid("hana")), None, 10)
        .await
        .unwrap();
    assert!(page.members.iter().all(|(_, m, _)| !m.away));
    // Editing checks the rules as creation does; 0 turns a rule off.
    let err = control
        .edit(
            &hana,
            &id,
            Edit {
                idle_audience_after: Some(30),
                ..Edit::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, "invalid_field");
    let never = Edit {
        idle_mute_after: Some(0),
        idle_audience_after: Some(0),
        ..Edit::default()
    };
    let doc = control.edit(&hana, &id, never).await.unwrap();
    assert_eq!(
        (doc.room.idle.mute_after, doc.room.idle.audience_after),
        (0, 0)
    );
    control
        .act(&hana, &id, Command::Target(Action::InviteToSpeak, kim))
        .await
        .unwrap();
    assert_eq!(control.run_idle(now() + 86_400 * SECOND).await.unwrap(), 0);
    control.act(&hana, &id, Command::End).await.unwrap();
    let doc = control.rooms(&[RoomState::Live]).await.unwrap();
    assert!(doc.iter().all(|d| d.room.id != id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_idle() {
    let dir = std::env::temp_dir().join(format!("stoa-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    idle(start(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_idle() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "i:").await.unwrap();
    idle(start(Arc::new(store))).await;
}
