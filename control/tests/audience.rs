//! Who sees the audience: every member of a room pages through who of the audience is
//! connected now (name and profile, nothing moderators-only); hosts and co-hosts see every
//! member with presence, hands and mute state; whoever is not a member (never joined, left,
//! kicked, banned) is refused. Run on both stores; the Redis one on a real redis-server.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::redis_server::RedisServer;
use serde_json::Value;
use stoa_control::auth::{Keys, Principal};
use stoa_control::media::NoMedia;
use stoa_control::model::{RoomId, RoomKind, SpeakerMode, UserId};
use stoa_control::permission::Action;
use stoa_control::room::{Actor, Command};
use stoa_control::service::NewRoom;
use stoa_control::store::Store;
use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;
use stoa_control::view::{self, Sight};
use stoa_control::{Control, ControlConfig};

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn start(store: Arc<dyn Store>) -> Control {
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    Control::start(store, Arc::new(NoMedia), keys, ControlConfig::default())
}

/// Joins `user` and, if `connected`, has the media plane see them connect.
async fn join(control: &Control, id: &RoomId, user: &str, connected: bool) {
    control
        .join(&uid(user), &format!("Name of {user}"), id)
        .await
        .unwrap();
    if connected {
        control.presence(id.as_str(), user, true).await;
    }
}

/// Every page after `after` as `viewer` sees them, at `limit` a page (bounded).
async fn pages(
    control: &Control,
    id: &RoomId,
    viewer: &str,
    limit: usize,
) -> Vec<view::AudienceView> {
    let mut out = Vec::new();
    let mut after: Option<UserId> = None;
    for _ in 0..200 {
        let (page, sight) = control
            .audience(id, Some(&uid(viewer)), after.as_ref(), limit)
            .await
            .unwrap();
        let v = view::audience(&page, sight);
        after = v.next.clone();
        out.push(v);
        if after.is_none() {
            return out;
        }
    }
    panic!("more than 200 pages");
}

fn users(pages: &[view::AudienceView]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p.members.iter().map(|m| m.user.to_string()))
        .collect()
}

async fn scenario(control: Control) {
    let host = Principal::User {
        id: uid("hana"),
        name: "Hana".into(),
    };
    let id = control
        .create_room(
            &host,
            NewRoom {
                title: "Audience".into(),
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
        .unwrap()
        .room
        .id;
    join(&control, &id, "hana", true).await;
    // l00..l19, every other one connected; then q0..q3 joined, none connected; then r0.
    let mut connected = BTreeSet::new();
    for i in 0..20 {
        let user = format!("l{i:02}");
        join(&control, &id, &user, i % 2 == 0).await;
        if i % 2 == 0 {
            connected.insert(user);
        }
    }
    for q in ["q0", "q1", "q2", "q3"] {
        join(&control, &id, q, false).await;
    }
    join(&control, &id, "r0", true).await;
    connected.insert("r0".to_owned());
    control
        .act(
            &Actor::User(uid("l02")),
            &id,
            Command::Own(Action::RaiseHand),
        )
        .await
        .unwrap();

    // A listener pages through who is connected, each once, in user-id order, and sees of
    // each only what a listener may: id, name, role, profile. Not the hand of l02.
    let expected: Vec<String> = connected.iter().cloned().collect();
    for limit in [1, 4, 50] {
        let seen = pages(&control, &id, "l00", limit).await;
        assert_eq!(users(&seen), expected, "limit {limit}");
        assert!(seen.iter().all(|p| p.members.len() <= limit));
        for m in seen.iter().flat_map(|p| &p.members) {
            let json = serde_json::to_value(m).unwrap();
            let keys: Vec<&str> = json
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["name", "profile", "role", "user"], "{json}");
            assert_eq!(json["role"], "listener");
            assert_eq!(json["name"], format!("Name of {}", m.user));
            assert_eq!(json["profile"], format!("/api/users/{}/profile", m.user));
        }
    }
    // Past the four absent q's at one a page, a page comes back empty with a cursor: the
    // scan per call is bounded, not the room.
    let one = pages(&control, &id, "l00", 1).await;
    assert!(
        one.iter().any(|p| p.members.is_empty() && p.next.is_some()),
        "{:?}",
        one.iter()
            .map(|p| (p.members.len(), p.next.clone()))
            .collect::<Vec<_>>()
    );
    // A listener who is not connected (joined, media not up yet) reads it too.
    assert_eq!(users(&pages(&control, &id, "q0", 50).await), expected);

    // The host sees every member, connected or not, with hands and presence.
    let all = pages(&control, &id, "hana", 7).await;
    let members: Vec<&view::AudienceMemberView> = all.iter().flat_map(|p| &p.members).collect();
    assert_eq!(members.len(), 25);
    for m in &members {
        let user = m.user.to_string();
        assert_eq!(m.present, Some(connected.contains(&user)), "{user}");
        assert_eq!(m.hand_raised, Some(user == "l02"), "{user}");
        assert_eq!(m.muted, Some(false));
    }
    let (_, sight) = control.audience(&id, None, None, 5).await.unwrap();
    assert_eq!(sight, Sight::Moderator, "a server sees what a host sees");

    // Pages stay stable and complete while people come and go: someone joins ahead of the
    // cursor (seen), someone behind it (not: they sort before the cursor), someone ahead leaves
    // (not seen); everyone else connected throughout comes exactly once.
    let (first, _) = control
        .audience(&id, Some(&uid("l00")), None, 3)
        .await
        .unwrap();
    let first = view::audience(&first, Sight::Member);
    assert_eq!(users(std::slice::from_ref(&first)), ["l00", "l02", "l04"]);
    join(&control, &id, "a00", true).await;
    join(&control, &id, "l07b", true).await;
    control
        .act(&Actor::User(uid("l12")), &id, Command::Own(Action::Leave))
        .await
        .unwrap();
    let mut seen = users(std::slice::from_ref(&first));
    let mut after = first.next.clone();
    for _ in 0..50 {
        let Some(cursor) = after.take() else { break };
        let (page, sight) = control
            .audience(&id, Some(&uid("l00")), Some(&cursor), 3)
            .await
            .unwrap();
        let page = view::audience(&page, sight);
        seen.extend(users(std::slice::from_ref(&page)));
        after = page.next;
    }
    let mut expected: Vec<String> = connected
        .iter()
        .filter(|u| *u != "l12")
        .cloned()
        .chain(["l07b".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(seen, expected);

    // Not a member: never joined, left, kicked, banned. All are refused alike, with a reason.
    control
        .act(
            &Actor::User(uid("hana")),
            &id,
            Command::Target(Action::Kick, uid("l14")),
        )
        .await
        .unwrap();
    control
        .act(
            &Actor::User(uid("hana")),
            &id,
            Command::Target(Action::Ban, uid("l16")),
        )
        .await
        .unwrap();
    for outsider in ["nina", "l12", "l14", "l16"] {
        let err = control
            .audience(&id, Some(&uid(outsider)), None, 10)
            .await
            .unwrap_err();
        assert_eq!((err.status, err.code), (403, "not_a_member"), "{outsider}");
        assert!(!err.message.is_empty());
    }
    // An unknown room is a 404, whoever asks.
    let err = control
        .audience(&RoomId::random(), Some(&uid("l00")), None, 10)
        .await
        .unwrap_err();
    assert_eq!(err.status, 404);

    // The host's view carries the same entries, moderators' fields included.
    let room = control.view(&id, Some(&uid("hana"))).await.unwrap();
    let json: Value = serde_json::to_value(&room).unwrap();
    assert_eq!(json["audience"][0]["user"], "a00");
    assert_eq!(json["audience"][0]["present"], true);
    assert_eq!(json["audience"][0]["profile"], "/api/users/a00/profile");
    // A listener's view still carries none of it.
    let room = control.view(&id, Some(&uid("l00"))).await.unwrap();
    assert!(room.audience.is_none() && room.hands.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_who_is_connected_on_the_embedded_store() {
    let dir = std::env::temp_dir().join(format!("stoa-audience-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    scenario(start(Arc::new(store))).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_who_is_connected_on_redis() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "a:").await.unwrap();
    scenario(start(Arc::new(store))).await;
}
