//! TTL-based presence: members connected through an instance that dies (or a node that
//! restarts) stop counting as present once its heartbeat expires.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use stoa_control::auth::{Keys, Principal};
use stoa_control::media::NoMedia;
use stoa_control::model::{RoomDoc, RoomId, RoomKind, SpeakerMode, UserId};
use stoa_control::service::NewRoom;
use stoa_control::store::Store;
use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;
use stoa_control::{Control, ControlConfig};

fn start(store: Arc<dyn Store>) -> Control {
    let config = ControlConfig {
        presence_ttl: 1,
        ..ControlConfig::default()
    };
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    Control::start(store, Arc::new(NoMedia), keys, config)
}

/// A live room with `lee` connected through `control`.
async fn room_with_lee(control: &Control) -> RoomId {
    let host = UserId::parse("hana").unwrap();
    let doc = control
        .create_room(
            &Principal::User {
                id: host,
                name: "Hana".into(),
            },
            NewRoom {
                title: "Presence".into(),
                topic: String::new(),
                description: String::new(),
                kind: RoomKind::Stage,
                speaker_mode: SpeakerMode::Everyone,
                max_participants: None,
                scheduled_for: None,
                host: None,
                schedule: Default::default(),
                private: false,
                listener_data: false,
                recording: false,
                idle: Default::default(),
            },
        )
        .await
        .unwrap();
    let id = doc.room.id;
    let lee = UserId::parse("lee").unwrap();
    control.join(&lee, "Lee", &id).await.unwrap();
    control.presence(id.as_str(), "lee", true).await;
    let doc = control.room(&id).await.unwrap();
    assert!(doc.members[&lee].present);
    assert_eq!(
        doc.members[&lee].instance.as_deref(),
        Some(control.instance())
    );
    id
}

async fn wait_gone(read: impl AsyncFn() -> RoomDoc) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = read().await;
        if doc.present().next().is_none() {
            assert!(doc.room.empty_since.is_some());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still present: {:?}",
            doc.members
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_dead_instance_are_gone_for_the_others() {
    let redis = RedisServer::start();
    let a = start(Arc::new(
        RedisStore::connect(&redis.url, "p:").await.unwrap(),
    ));
    let b = start(Arc::new(
        RedisStore::connect(&redis.url, "p:").await.unwrap(),
    ));
    let id = room_with_lee(&a).await;
    // While instance a lives, b leaves its member alone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(b.room(&id).await.unwrap().present().count(), 1);
    drop(a);
    wait_gone(async || b.room(&id).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_forgets_sessions_it_no_longer_has() {
    let dir = std::env::temp_dir().join(format!("stoa-presence-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("control.redb");
    let id = {
        let control = start(Arc::new(EmbeddedStore::open(&path).unwrap()));
        room_with_lee(&control).await
    };
    // The old instance's tasks let go of the store file within a sweep.
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = loop {
        match EmbeddedStore::open(&path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "store still locked: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let control = start(Arc::new(store));
    wait_gone(async || control.room(&id).await.unwrap()).await;
}

/// A burst of media-plane events is applied with one store update per room: everyone's
/// presence is recorded, one audience event says the final count, and no event carries a
/// member list (events are small whatever the room's size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_presence_is_one_update_and_one_small_event() {
    use stoa_control::events::Event;
    use stoa_control::service::MediaEvent;
    let dir = std::env::temp_dir().join(format!("stoa-burst-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let control = start(Arc::new(
        EmbeddedStore::open(&dir.join("control.redb")).unwrap(),
    ));
    let id = room_with_lee(&control).await;
    let users: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    for u in &users {
        control
            .join(&UserId::parse(u).unwrap(), u, &id)
            .await
            .unwrap();
    }
    let mut events = control.events();
    let mut burst: Vec<(String, String, MediaEvent)> = users
        .iter()
        .map(|u| (id.to_string(), u.clone(), MediaEvent::Connected))
        .collect();
    burst.push((id.to_string(), "m0".into(), MediaEvent::SpeakingStarted));
    burst.push(("not-a-room".into(), "m1".into(), MediaEvent::Connected));
    control.media_events(burst).await;
    let doc = control.room(&id).await.unwrap();
    assert_eq!(doc.present().count(), 301);
    assert_eq!(doc.counts().present, 301);
    assert!(
        doc.members[&UserId::parse("m0").unwrap()]
            .speaking_since
            .is_some()
    );
    let mut audience = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(e)) = tokio::time::timeout_at(deadline.into(), events.recv()).await {
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.len() < 200, "{json}");
        if let Event::Audience { present, .. } = e {
            audience.push(present);
        }
    }
    assert_eq!(audience, [301], "one coalesced audience event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_room_closed_under_a_live_room_leaves_nobody_counted_there() {
    let dir = std::env::temp_dir().join(format!("stoa-finished-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let control = start(Arc::new(
        EmbeddedStore::open(&dir.join("control.redb")).unwrap(),
    ));
    let id = room_with_lee(&control).await;
    // Another room's end changes nothing here; this room's does.
    control.media_room_finished("someotherroom0000").await;
    assert_eq!(control.room(&id).await.unwrap().present().count(), 1);
    control.media_room_finished(id.as_str()).await;
    let doc = control.room(&id).await.unwrap();
    assert_eq!(doc.present().count(), 0, "{:?}", doc.members);
    assert!(doc.room.empty_since.is_some());
    // The room lives on: the control plane owns its lifetime.
    assert_eq!(doc.room.state, stoa_control::model::RoomState::Live);
    let _ = std::fs::remove_dir_all(&dir);
}
