//! The two stores behave the same: every test runs against the embedded store and against a
//! real redis-server; the races run two Redis clients as two instances would.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use stoa_control::ControlError;
use stoa_control::events::{BusMessage, Event};
use stoa_control::model::{Role, Room, RoomDoc, RoomId, RoomKind, RoomState, SpeakerMode, UserId};
use stoa_control::permission::Action;
use stoa_control::room::{self, Actor, Command, Context};
use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;
use stoa_control::store::{Follow, Invite, Profile, Store};

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stoa-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn new_room(max: u32) -> RoomDoc {
    RoomDoc::new(Room {
        id: RoomId::random(),
        title: "Rust audio".into(),
        topic: String::new(),
        description: String::new(),
        kind: RoomKind::Stage,
        speaker_mode: SpeakerMode::Everyone,
        max_participants: max,
        host: uid("host"),
        created_by: uid("host"),
        state: RoomState::Scheduled,
        created_at: 1,
        scheduled_for: None,
        started_at: None,
        ended_at: None,
        empty_since: None,
        media_url: None,
    })
}

fn cx() -> Context {
    Context {
        now: 1_000,
        follows_host: false,
        kick_cooldown_ms: 300_000,
    }
}

async fn act(
    store: &dyn Store,
    id: &RoomId,
    actor: Actor,
    command: Command,
) -> Result<(), ControlError> {
    store
        .update_room(id, &mut |doc| {
            room::apply(doc, &actor, command.clone(), &cx())
        })
        .await
        .map(|_| ())
}

/// Everything the trait promises, on one store.
async fn behaves(store: &dyn Store) {
    let mut doc = new_room(100);
    let id = doc.room.id.clone();
    assert!(store.room(&id).await.unwrap().is_none());
    assert_eq!(
        store
            .update_room(&id, &mut |_| Ok(Default::default()))
            .await
            .unwrap_err()
            .status,
        404
    );
    store.insert_room(&doc).await.unwrap();
    assert_eq!(store.room(&id).await.unwrap().unwrap(), doc);
    assert!(store.rooms(&[RoomState::Live]).await.unwrap().is_empty());

    act(store, &id, Actor::System, Command::Start)
        .await
        .unwrap();
    act(
        store,
        &id,
        Actor::User(uid("ann")),
        Command::Join { name: "Ann".into() },
    )
    .await
    .unwrap();
    act(
        store,
        &id,
        Actor::User(uid("ann")),
        Command::Own(Action::RaiseHand),
    )
    .await
    .unwrap();
    act(
        store,
        &id,
        Actor::System,
        Command::Target(Action::Ban, uid("troll")),
    )
    .await
    .unwrap();
    act(
        store,
        &id,
        Actor::System,
        Command::Target(Action::Kick, uid("ann")),
    )
    .await
    .unwrap();
    doc = store.room(&id).await.unwrap().unwrap();
    assert_eq!(doc.room.state, RoomState::Live);
    assert!(doc.bans.contains(&uid("troll")));
    assert_eq!(doc.kicks[&uid("ann")], 301_000);
    assert!(doc.hands.is_empty() && doc.members.is_empty());
    let live = store.rooms(&[RoomState::Live]).await.unwrap();
    assert_eq!(live.len(), 1);
    assert!(
        store
            .rooms(&[RoomState::Scheduled])
            .await
            .unwrap()
            .is_empty()
    );

    // A failed command changes nothing.
    let err = act(
        store,
        &id,
        Actor::User(uid("troll")),
        Command::Join { name: "T".into() },
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "banned");
    assert_eq!(store.room(&id).await.unwrap().unwrap(), doc);

    // One active room per user.
    let other = RoomId::random();
    assert_eq!(store.claim_active(&uid("bo"), &id).await.unwrap(), None);
    assert_eq!(store.claim_active(&uid("bo"), &id).await.unwrap(), None);
    assert_eq!(
        store.claim_active(&uid("bo"), &other).await.unwrap(),
        Some(id.clone())
    );
    store.release_active(&uid("bo"), &other).await.unwrap();
    assert_eq!(
        store.claim_active(&uid("bo"), &other).await.unwrap(),
        Some(id.clone())
    );
    store.release_active(&uid("bo"), &id).await.unwrap();
    assert_eq!(store.claim_active(&uid("bo"), &other).await.unwrap(), None);

    // Follows.
    let host = Follow::User(uid("host"));
    let room = Follow::Room(id.clone());
    store.set_follow(&uid("bo"), &host, true).await.unwrap();
    store.set_follow(&uid("bo"), &room, true).await.unwrap();
    store.set_follow(&uid("bo"), &host, true).await.unwrap();
    let mut follows = store.follows(&uid("bo")).await.unwrap();
    follows.sort();
    assert_eq!(follows, vec![host.clone(), room.clone()]);
    store.set_follow(&uid("bo"), &host, false).await.unwrap();
    assert_eq!(store.follows(&uid("bo")).await.unwrap(), vec![room]);

    // Invitations.
    let invite = Invite {
        room: id.clone(),
        created_by: uid("host"),
        expires_at: u64::MAX / 2,
    };
    store.put_invite("tok", &invite).await.unwrap();
    assert_eq!(store.invite("tok").await.unwrap(), Some(invite));
    assert_eq!(store.invite("nope").await.unwrap(), None);

    // Profiles.
    assert_eq!(store.profile(&uid("bo")).await.unwrap(), None);
    let profile = Profile {
        bio: "Asks good questions.".into(),
        avatar: Some("data:image/png;base64,iVBORw0KGgo=".into()),
    };
    store.set_profile(&uid("bo"), &profile).await.unwrap();
    assert_eq!(store.profile(&uid("bo")).await.unwrap(), Some(profile));
    store
        .set_profile(&uid("bo"), &Profile::default())
        .await
        .unwrap();
    assert_eq!(
        store.profile(&uid("bo")).await.unwrap(),
        Some(Profile::default())
    );

    // The bus reaches subscribers.
    let mut rx = store.subscribe();
    let message = BusMessage {
        origin: "a".into(),
        media: vec![],
        events: vec![Event::RoomEnded { room: id.clone() }],
    };
    store.publish(&message).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("bus message in time")
        .unwrap();
    assert_eq!(got, message);
}

#[tokio::test]
async fn embedded_store_behaves() {
    let dir = scratch("behaves");
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    behaves(&store).await;
}

#[tokio::test]
async fn redis_store_behaves() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "t1:").await.unwrap();
    behaves(&store).await;
}

#[tokio::test]
async fn embedded_store_survives_reopening() {
    let dir = scratch("reopen");
    let path = dir.join("control.redb");
    let doc = new_room(10);
    {
        let store = EmbeddedStore::open(&path).unwrap();
        store.insert_room(&doc).await.unwrap();
        store
            .set_follow(&uid("a"), &Follow::User(uid("b")), true)
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.room(&doc.room.id).await.unwrap().unwrap(), doc);
    assert_eq!(
        store.follows(&uid("a")).await.unwrap(),
        vec![Follow::User(uid("b"))]
    );
}

#[tokio::test]
async fn redis_keys_follow_the_documented_schema() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "stoa:").await.unwrap();
    let doc = new_room(10);
    let id = doc.room.id.clone();
    store.insert_room(&doc).await.unwrap();
    act(&store, &id, Actor::System, Command::Start)
        .await
        .unwrap();
    act(
        &store,
        &id,
        Actor::User(uid("ann")),
        Command::Join { name: "Ann".into() },
    )
    .await
    .unwrap();
    act(
        &store,
        &id,
        Actor::User(uid("ann")),
        Command::Own(Action::RaiseHand),
    )
    .await
    .unwrap();
    act(
        &store,
        &id,
        Actor::System,
        Command::Target(Action::Ban, uid("troll")),
    )
    .await
    .unwrap();
    store.claim_active(&uid("ann"), &id).await.unwrap();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut con)
        .await
        .unwrap();
    keys.sort();
    let mut expected = vec![
        format!("stoa:room:{id}"),
        format!("stoa:room:{id}:participants"),
        format!("stoa:room:{id}:requests"),
        format!("stoa:room:{id}:bans"),
        format!("stoa:room:{id}:stats"),
        "stoa:rooms:live".to_owned(),
        "stoa:user:ann:room".to_owned(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    let hand: Option<u64> = redis::cmd("HGET")
        .arg(format!("stoa:room:{id}:requests"))
        .arg("ann")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(hand, Some(1_000));
}

/// Forty listeners raise hands at once through two instances; none is lost. Then the host
/// approves each hand while its owner lowers it: for every listener exactly one side wins,
/// and the room ends consistent.
async fn races(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    const N: usize = 40;
    let doc = new_room(1_000);
    let id = doc.room.id.clone();
    a.insert_room(&doc).await.unwrap();
    act(&*a, &id, Actor::System, Command::Start).await.unwrap();
    let users: Vec<UserId> = (0..N).map(|i| uid(&format!("u{i}"))).collect();
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (u, id) = (u.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            act(
                &*store,
                &id,
                Actor::User(u.clone()),
                Command::Join {
                    name: u.to_string(),
                },
            )
            .await?;
            act(
                &*store,
                &id,
                Actor::User(u),
                Command::Own(Action::RaiseHand),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let doc = a.room(&id).await.unwrap().unwrap();
    assert_eq!(doc.hands.len(), N, "a raised hand was lost");
    assert_eq!(doc.members.len(), N);

    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (host_side, user_side) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        let (u1, u2, id1, id2) = (u.clone(), u.clone(), id.clone(), id.clone());
        let approve = tokio::spawn(async move {
            act(
                &*host_side,
                &id1,
                Actor::System,
                Command::Target(Action::ApproveHand, u1),
            )
            .await
        });
        let lower = tokio::spawn(async move {
            act(
                &*user_side,
                &id2,
                Actor::User(u2),
                Command::Own(Action::LowerHand),
            )
            .await
        });
        tasks.push((u.clone(), approve, lower));
    }
    let mut approved = 0;
    for (u, approve, lower) in tasks {
        let approve = approve.await.unwrap();
        let lower = lower.await.unwrap();
        // Exactly one side wins: a lowered hand cannot be approved, and a speaker has no hand
        // left to lower.
        assert_ne!(
            approve.is_ok(),
            lower.is_ok(),
            "{u}: {approve:?} / {lower:?}"
        );
        if let Err(e) = &lower {
            assert_eq!(e.code, "not_allowed", "{u}: {e}");
        }
        let doc = a.room(&id).await.unwrap().unwrap();
        let role = doc.members[&u].role;
        match approve {
            Ok(()) => {
                approved += 1;
                assert_eq!(role, Role::Speaker, "{u} approved but not on stage");
            }
            Err(e) => {
                assert_eq!(e.code, "no_raised_hand", "{u}: {e}");
                assert_eq!(role, Role::Listener, "{u} refused but on stage");
            }
        }
    }
    let doc = a.room(&id).await.unwrap().unwrap();
    assert!(doc.hands.is_empty(), "every hand was approved or lowered");
    let speakers = doc
        .members
        .values()
        .filter(|m| m.role == Role::Speaker)
        .count();
    assert_eq!(speakers, approved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_approvals_race_lowered_hands_across_instances() {
    let redis = RedisServer::start();
    let a: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url, "race:").await.unwrap());
    let b: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url, "race:").await.unwrap());
    races(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_approvals_race_lowered_hands() {
    let dir = scratch("race");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.join("control.redb")).unwrap());
    races(store.clone(), store).await;
}

#[tokio::test]
async fn redis_bus_reaches_the_other_instance() {
    let redis = RedisServer::start();
    let a = RedisStore::connect(&redis.url, "bus:").await.unwrap();
    let b = RedisStore::connect(&redis.url, "bus:").await.unwrap();
    let other_prefix = RedisStore::connect(&redis.url, "elsewhere:").await.unwrap();
    let mut rx_b = b.subscribe();
    let mut rx_other = other_prefix.subscribe();
    let message = BusMessage {
        origin: "a".into(),
        media: vec![],
        events: vec![Event::RoomEnded {
            room: RoomId::random(),
        }],
    };
    a.publish(&message).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx_b.recv())
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(got, message);
    // Deployments with other prefixes on the same Redis do not hear it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx_other.recv())
            .await
            .is_err()
    );
}
