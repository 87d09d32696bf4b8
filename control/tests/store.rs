//! The two stores behave the same: every test runs against the embedded store and against a
//! real redis-server; the races run two Redis clients as two instances would.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis_server::RedisServer;
use stoa_control::ControlError;
use stoa_control::events::{BusMessage, Event};
use stoa_control::model::{
    Role, Room, RoomDoc, RoomId, RoomKind, RoomState, Scope, SpeakerMode, UserId,
};
use stoa_control::notify::{MAX_FEED, Notification, NotificationKind};
use stoa_control::permission::Action;
use stoa_control::replay::{Clip, ClipId, Recording, RecordingId, RecordingState, Speaker};
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
        schedule: Default::default(),
        reminded: false,
        series: None,
        private: false,
        listener_data: false,
        record_from_start: false,
        recording: false,
        idle: Default::default(),
    })
}

fn cx() -> Context {
    Context {
        now: 1_000,
        follows_host: false,
        kick_cooldown_ms: 300_000,
        open_window_ms: 0,
        seat_grace_ms: 60_000,
    }
}

/// Runs a command as the service does: loading only what it needs.
async fn act(
    store: &dyn Store,
    id: &RoomId,
    actor: Actor,
    command: Command,
) -> Result<(), ControlError> {
    let host = store.room(id, &Scope::header()).await?.map(|d| d.room.host);
    let scope = room::scope(&actor, &command, host.as_ref());
    store
        .update_room(id, &scope, &mut |doc| {
            room::apply(doc, &actor, command.clone(), &cx())
        })
        .await
        .map(|_| ())
}

/// The whole room.
async fn whole(store: &dyn Store, id: &RoomId) -> RoomDoc {
    store.room(id, &Scope::all()).await.unwrap().unwrap()
}

/// Everything the trait promises, on one store.
fn profile() -> Profile {
    Profile {
        bio: "Asks good questions.".into(),
        avatar: Some("data:image/png;base64,iVBORw0KGgo=".into()),
    }
}

async fn behaves(store: &dyn Store) {
    let mut doc = new_room(100);
    let id = doc.room.id.clone();
    assert!(store.room(&id, &Scope::all()).await.unwrap().is_none());
    assert_eq!(
        store
            .update_room(&id, &Scope::all(), &mut |_| Ok(Default::default()))
            .await
            .unwrap_err()
            .status,
        404
    );
    store.insert_room(&doc).await.unwrap();
    assert_eq!(whole(store, &id).await, doc);
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
    doc = whole(store, &id).await;
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
    assert_eq!(whole(store, &id).await, doc);

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

    notifications(store, &id).await;

    // Invitations.
    let invite = Invite {
        room: id.clone(),
        created_by: uid("host"),
        expires_at: u64::MAX / 2,
        role: Role::Speaker,
        max_uses: Some(2),
        uses: 0,
        revoked: false,
        created_at: 5,
    };
    store.put_invite("tok", &invite).await.unwrap();
    assert_eq!(store.invite("tok").await.unwrap(), Some(invite.clone()));
    assert_eq!(store.invite("nope").await.unwrap(), None);
    // Uses are counted atomically up to the limit, and read back with the link.
    assert!(store.use_invite("tok", Some(2)).await.unwrap());
    assert!(store.use_invite("tok", Some(2)).await.unwrap());
    assert!(!store.use_invite("tok", Some(2)).await.unwrap());
    assert!(!store.use_invite("nope", None).await.unwrap());
    assert_eq!(store.invite("tok").await.unwrap().unwrap().uses, 2);
    // A room lists its links, newest first; a revoked one stays listed (and keeps its uses).
    let newer = Invite {
        role: Role::Listener,
        max_uses: None,
        created_at: 9,
        ..invite.clone()
    };
    store.put_invite("tok2", &newer).await.unwrap();
    let mut revoked = store.invite("tok").await.unwrap().unwrap();
    revoked.revoked = true;
    store.put_invite("tok", &revoked).await.unwrap();
    let listed = store.room_invites(&id, 10).await.unwrap();
    let tokens: Vec<&str> = listed.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tokens, ["tok2", "tok"]);
    assert!(listed[1].1.revoked && listed[1].1.uses == 2, "{listed:?}");
    assert_eq!(store.room_invites(&id, 1).await.unwrap().len(), 1);
    let other = RoomId::parse("bbbbbbbbbbbbbbbb").unwrap();
    assert!(store.room_invites(&other, 10).await.unwrap().is_empty());

    // Profiles.
    assert_eq!(store.profile(&uid("bo")).await.unwrap(), None);
    let profile = profile();
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
        events: vec![Event::RoomEnded {
            room: id.clone(),
            private: false,
        }],
        notices: vec![],
        moved: vec![],
        presence: vec![],
    };
    store.publish(&message).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("bus message in time")
        .unwrap();
    assert_eq!(got, message);
}

fn notice(at: u64, room: &RoomId) -> Notification {
    Notification {
        id: format!("{at}-{room}-live"),
        at,
        kind: NotificationKind::RoomLive,
        room: room.clone(),
        title: "T".into(),
        host: uid("host"),
        scheduled_for: None,
    }
}

/// Followers in pages, feeds (newest first, bounded), read marks that never move back.
async fn notifications(store: &dyn Store, id: &RoomId) {
    let host = Follow::User(uid("nhost"));
    for u in ["n3", "n1", "n2", "n4"] {
        store.set_follow(&uid(u), &host, true).await.unwrap();
    }
    store.set_follow(&uid("n4"), &host, false).await.unwrap();
    let first = store.followers(&host, None, 2).await.unwrap();
    assert_eq!(first, vec![uid("n1"), uid("n2")]);
    let rest = store.followers(&host, Some(&uid("n2")), 2).await.unwrap();
    assert_eq!(rest, vec![uid("n3")]);
    assert!(
        store
            .followers(&host, Some(&uid("n3")), 2)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .followers(&Follow::Room(id.clone()), None, 10)
            .await
            .unwrap()
            .iter()
            .all(|u| u.as_str() != "n1")
    );

    assert_eq!(store.notifications(&uid("n1")).await.unwrap(), (vec![], 0));
    for at in 1..=(MAX_FEED as u64 + 5) {
        let to: &[UserId] = if at % 2 == 0 {
            &[uid("n1"), uid("n2")][..]
        } else {
            &[uid("n1")][..]
        };
        store.push_notification(to, &notice(at, id)).await.unwrap();
    }
    let (feed, read) = store.notifications(&uid("n1")).await.unwrap();
    assert_eq!(read, 0);
    assert_eq!(feed.len(), MAX_FEED, "the oldest entries go");
    assert_eq!(feed[0], notice(MAX_FEED as u64 + 5, id), "newest first");
    assert_eq!(feed[MAX_FEED - 1].at, 6);
    let (feed2, _) = store.notifications(&uid("n2")).await.unwrap();
    assert_eq!(feed2.len(), (MAX_FEED + 5) / 2);
    assert!(feed2.iter().all(|n| n.at % 2 == 0));

    store.mark_read(&uid("n1"), 100).await.unwrap();
    store.mark_read(&uid("n1"), 50).await.unwrap();
    assert_eq!(store.notifications(&uid("n1")).await.unwrap().1, 100);
    assert_eq!(store.notifications(&uid("n2")).await.unwrap().1, 0);
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
        store.set_profile(&uid("a"), &profile()).await.unwrap();
        store
            .push_notification(&[uid("a")], &notice(7, &doc.room.id))
            .await
            .unwrap();
        store.mark_read(&uid("a"), 7).await.unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store.notifications(&uid("a")).await.unwrap(),
        (vec![notice(7, &doc.room.id)], 7)
    );
    assert_eq!(
        store
            .followers(&Follow::User(uid("b")), None, 10)
            .await
            .unwrap(),
        vec![uid("a")]
    );
    assert_eq!(whole(&store, &doc.room.id).await, doc);
    assert_eq!(
        store.follows(&uid("a")).await.unwrap(),
        vec![Follow::User(uid("b"))]
    );
    assert_eq!(store.profile(&uid("a")).await.unwrap(), Some(profile()));
    assert_eq!(store.profile(&uid("b")).await.unwrap(), None);
}

fn recording(room: &RoomId, id: &str, started_at: u64, ended: bool) -> Recording {
    Recording {
        id: RecordingId::parse(id).unwrap(),
        room: room.clone(),
        file: format!("{room}/{id}/room.ogg"),
        speaking_file: Some(format!("{room}/{id}/speaking.jsonl")),
        started_at,
        ended_at: ended.then_some(started_at + 60_000),
        duration_ms: ended.then_some(60_000),
        size: ended.then_some(240_000),
        state: if ended {
            RecordingState::Complete
        } else {
            RecordingState::Recording
        },
        instance: "node-a".into(),
        node: None,
        timeline: vec![],
    }
}

fn clip(room: &RoomId, id: &str, created_at: u64) -> Clip {
    Clip {
        id: ClipId::parse(id).unwrap(),
        room: room.clone(),
        recording: RecordingId::parse("EG_first0000001").unwrap(),
        title: "A moment".into(),
        created_by: Some(uid("ann")),
        created_at,
        start_ms: 1_000,
        end_ms: 31_000,
        file: format!("{room}/clips/{id}.ogg"),
        size: 120_000,
        speakers: vec![Speaker {
            user: "host".into(),
            name: "Host".into(),
        }],
    }
}

/// Recordings and clips are kept with their room: a recording's end replaces its start, a
/// room lists its own, clips are found by id and listed newest first, and both go with the
/// room.
async fn recordings_and_clips(store: &dyn Store) -> RoomId {
    let doc = new_room(10);
    let id = doc.room.id.clone();
    store.insert_room(&doc).await.unwrap();
    let other = new_room(10);
    store.insert_room(&other).await.unwrap();
    store
        .put_recording(&recording(&id, "EG_second000002", 5_000, false))
        .await
        .unwrap();
    store
        .put_recording(&recording(&id, "EG_first0000001", 1_000, false))
        .await
        .unwrap();
    store
        .put_recording(&recording(&id, "EG_first0000001", 1_000, true))
        .await
        .unwrap();
    store
        .put_recording(&recording(&other.room.id, "EG_other0000003", 1_000, true))
        .await
        .unwrap();
    // A room that is gone keeps nothing.
    let gone = RoomId::random();
    store
        .put_recording(&recording(&gone, "EG_gone00000004", 1_000, true))
        .await
        .unwrap();
    assert!(store.recordings(&gone).await.unwrap().is_empty());
    assert_eq!(
        store.recordings(&id).await.unwrap(),
        vec![
            recording(&id, "EG_first0000001", 1_000, true),
            recording(&id, "EG_second000002", 5_000, false)
        ]
    );
    // One read by id, as an audio request does; none for another room's id or an unknown one.
    let second = RecordingId::parse("EG_second000002").unwrap();
    assert_eq!(
        store.recording(&id, &second).await.unwrap(),
        Some(recording(&id, "EG_second000002", 5_000, false))
    );
    assert_eq!(
        store.recording(&other.room.id, &second).await.unwrap(),
        None
    );
    let unknown = RecordingId::parse("EG_unknown00009").unwrap();
    assert_eq!(store.recording(&id, &unknown).await.unwrap(), None);
    store
        .put_clip(&clip(&id, "aaaaaaaaaaaaaaa1", 10))
        .await
        .unwrap();
    store
        .put_clip(&clip(&id, "aaaaaaaaaaaaaaa2", 20))
        .await
        .unwrap();
    store
        .put_clip(&clip(&other.room.id, "aaaaaaaaaaaaaaa3", 30))
        .await
        .unwrap();
    let c1 = ClipId::parse("aaaaaaaaaaaaaaa1").unwrap();
    assert_eq!(
        store.clip(&c1).await.unwrap(),
        Some(clip(&id, "aaaaaaaaaaaaaaa1", 10))
    );
    let listed: Vec<String> = store
        .room_clips(&id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(listed, ["aaaaaaaaaaaaaaa2", "aaaaaaaaaaaaaaa1"]);
    assert_eq!(store.room_clips(&id, 1).await.unwrap().len(), 1);
    store.remove_room(&other.room.id).await.unwrap();
    assert!(store.recordings(&other.room.id).await.unwrap().is_empty());
    let c3 = ClipId::parse("aaaaaaaaaaaaaaa3").unwrap();
    assert_eq!(store.clip(&c3).await.unwrap(), None);
    assert_eq!(store.recordings(&id).await.unwrap().len(), 2);
    id
}

#[tokio::test]
async fn embedded_store_keeps_recordings_and_clips() {
    let dir = scratch("replays");
    let path = dir.join("control.redb");
    let id = {
        let store = EmbeddedStore::open(&path).unwrap();
        recordings_and_clips(&store).await
    };
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.recordings(&id).await.unwrap().len(), 2);
    assert_eq!(store.room_clips(&id, 10).await.unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn redis_store_keeps_recordings_and_clips() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "rec:").await.unwrap();
    recordings_and_clips(&store).await;
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
    act(
        &store,
        &id,
        Actor::User(uid("host")),
        Command::Join {
            name: "Host".into(),
        },
    )
    .await
    .unwrap();
    act(
        &store,
        &id,
        Actor::User(uid("bo")),
        Command::Join { name: "Bo".into() },
    )
    .await
    .unwrap();
    act(
        &store,
        &id,
        Actor::System,
        Command::Target(Action::Kick, uid("bo")),
    )
    .await
    .unwrap();
    store.set_profile(&uid("ann"), &profile()).await.unwrap();
    let invite = Invite {
        room: id.clone(),
        created_by: uid("host"),
        expires_at: 4_000_000_000_000,
        role: Role::Speaker,
        max_uses: Some(1),
        uses: 0,
        revoked: false,
        created_at: 1,
    };
    store.put_invite("tok", &invite).await.unwrap();
    assert!(store.use_invite("tok", Some(1)).await.unwrap());
    store
        .put_recording(&recording(&id, "EG_first0000001", 1_000, true))
        .await
        .unwrap();
    store
        .put_clip(&clip(&id, "aaaaaaaaaaaaaaa1", 10))
        .await
        .unwrap();
    let node = stoa_control::nodes::Node {
        id: "node1".into(),
        public_url: "ws://127.0.0.1:7880".into(),
        load: Default::default(),
        draining: false,
        seen_at: 1_000,
        expires_at: 0,
    };
    store.put_node(&node, 60_000).await.unwrap();
    store.drain_node("node1", true).await.unwrap();
    store
        .add_room_edge(&id, "ws://127.0.0.1:7890")
        .await
        .unwrap();
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
        format!("stoa:room:{id}:stage"),
        format!("stoa:room:{id}:audience"),
        format!("stoa:room:{id}:requests"),
        format!("stoa:room:{id}:bans"),
        format!("stoa:room:{id}:kicks"),
        format!("stoa:room:{id}:stats"),
        "stoa:rooms:live".to_owned(),
        "stoa:user:ann:room".to_owned(),
        "stoa:user:ann:profile".to_owned(),
        "stoa:invite:tok".to_owned(),
        "stoa:invite:tok:uses".to_owned(),
        format!("stoa:room:{id}:invites"),
        format!("stoa:room:{id}:recordings"),
        format!("stoa:room:{id}:clips"),
        format!("stoa:room:{id}:edges"),
        "stoa:clip:aaaaaaaaaaaaaaa1".to_owned(),
        "stoa:node:node1".to_owned(),
        "stoa:nodes".to_owned(),
        "stoa:nodes:draining".to_owned(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    let hand: Option<u64> = redis::cmd("ZSCORE")
        .arg(format!("stoa:room:{id}:requests"))
        .arg("ann")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(hand, Some(1_000));
    // One field per member; the stage and audience indexes name them.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("stoa:room:{id}:participants"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(fields.len(), 2, "{fields:?}");
    let stage: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("stoa:room:{id}:stage"))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(stage, ["host"]);
    let audience: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("stoa:room:{id}:audience"))
        .arg(0)
        .arg(-1)
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(audience, ["ann"]);
    // The header carries the counts.
    let header: String = redis::cmd("GET")
        .arg(format!("stoa:room:{id}"))
        .query_async(&mut con)
        .await
        .unwrap();
    let header: serde_json::Value = serde_json::from_str(&header).unwrap();
    assert_eq!(header["counts"]["members"], 2);
    assert_eq!(header["counts"]["stage"], 1);
    assert_eq!(header["counts"]["hands"], 1);
    assert_eq!(header["room"]["state"], "live");
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
    let doc = whole(&*a, &id).await;
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
        let doc = whole(&*a, &id).await;
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
    let doc = whole(&*a, &id).await;
    assert!(doc.hands.is_empty(), "every hand was approved or lowered");
    // The header's counts, kept by scoped updates, match a recount of the whole room.
    let mut recount = stoa_control::model::Counts::of(doc.members.values(), doc.hands.len());
    // Approved speakers are kept in the line-up.
    recount.lineup = doc.lineup.len() as u32;
    assert_eq!(doc.counts(), recount);
    let partial = a.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert_eq!(partial.counts(), doc.counts());
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
            private: false,
        }],
        notices: vec![],
        // A room's move travels with it (edges re-link on it).
        moved: vec![(RoomId::random(), "ws://127.0.0.1:7881".into())],
        presence: vec![],
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

async fn act_at(
    store: &dyn Store,
    id: &RoomId,
    actor: Actor,
    command: Command,
    now: u64,
) -> Result<(), ControlError> {
    let scope = room::scope(&actor, &command, None);
    let cx = Context { now, ..cx() };
    store
        .update_room(id, &scope, &mut |doc| {
            room::apply(doc, &actor, command.clone(), &cx)
        })
        .await
        .map(|_| ())
}

/// Views read pages and indexes: the audience by cursor, hands oldest first, bans; counts
/// from the header; a removed room is gone from every index.
async fn pages_and_indexes(store: &dyn Store) {
    let doc = new_room(1_000);
    let id = doc.room.id.clone();
    store.insert_room(&doc).await.unwrap();
    act_at(store, &id, Actor::System, Command::Start, 1)
        .await
        .unwrap();
    let join = |u: String| Command::Join {
        name: u.to_uppercase(),
    };
    act_at(store, &id, Actor::User(uid("host")), join("host".into()), 2)
        .await
        .unwrap();
    let users: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
    for (i, u) in users.iter().enumerate() {
        act_at(
            store,
            &id,
            Actor::User(uid(u)),
            join(u.clone()),
            10 + i as u64,
        )
        .await
        .unwrap();
    }
    // Hands raised in reverse order of ids.
    for (i, u) in users.iter().rev().take(5).enumerate() {
        act_at(
            store,
            &id,
            Actor::User(uid(u)),
            Command::Own(Action::RaiseHand),
            100 + i as u64,
        )
        .await
        .unwrap();
    }
    for u in ["x1", "x2", "x3"] {
        act_at(
            store,
            &id,
            Actor::System,
            Command::Target(Action::Ban, uid(u)),
            200,
        )
        .await
        .unwrap();
    }
    let header = store.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert!(header.members.is_empty(), "a header read loads no member");
    let counts = header.counts();
    assert_eq!((counts.members, counts.stage, counts.hands), (26, 1, 5));

    let mut seen = Vec::new();
    let mut after: Option<UserId> = None;
    for _ in 0..10 {
        let page = store.audience(&id, after.as_ref(), 10).await.unwrap();
        assert!(page.members.len() <= 10);
        for (u, m, hand) in &page.members {
            assert_eq!(m.role, Role::Listener);
            assert_eq!(*hand, u.as_str() >= "u20", "{u}");
            seen.push(u.to_string());
        }
        after = page.next;
        if after.is_none() {
            break;
        }
    }
    assert_eq!(seen, users, "every listener once, in id order");

    let hands = store.hands(&id, 3).await.unwrap();
    let first: Vec<&str> = hands.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(first, ["u24", "u23", "u22"]);
    assert_eq!(hands[0].1, 100);
    assert_eq!(store.bans(&id, 2).await.unwrap(), [uid("x1"), uid("x2")]);

    // Kicks are listed apart from the members (who are gone), and the header keeps the
    // removed people's names for the moderators' list.
    for u in ["u02", "u00", "u01"] {
        act_at(
            store,
            &id,
            Actor::System,
            Command::Target(Action::Kick, uid(u)),
            300,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        store.kicks(&id, 2).await.unwrap(),
        [(uid("u00"), 300_300), (uid("u01"), 300_300)]
    );
    let header = store.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert!(header.members.is_empty());
    assert_eq!(header.name_of(&uid("u02")), Some("U02"));
    assert_eq!(header.name_of(&uid("host")), Some("HOST"), "on stage");
    assert_eq!(header.name_of(&uid("u10")), None, "not the audience");
    assert_eq!(header.counts().members, 23);

    // The stage scope loads the stage only.
    let staged = store
        .room(&id, &Scope::header().with_stage())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(staged.members.keys().collect::<Vec<_>>(), [&uid("host")]);
    assert_eq!(store.rooms(&[RoomState::Live]).await.unwrap().len(), 1);

    store.remove_room(&id).await.unwrap();
    assert!(store.room(&id, &Scope::all()).await.unwrap().is_none());
    assert!(store.rooms(&[RoomState::Live]).await.unwrap().is_empty());
    assert!(store.audience(&id, None, 10).await.is_err());
}

#[tokio::test]
async fn embedded_store_pages_and_indexes() {
    let dir = scratch("pages");
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    pages_and_indexes(&store).await;
}

#[tokio::test]
async fn redis_store_pages_and_indexes() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "pages:").await.unwrap();
    pages_and_indexes(&store).await;
}

/// Many joins at once are committed in groups, every one durable: all of them are in the
/// file when it is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_groups_commits_and_loses_none() {
    let dir = scratch("groups");
    let path = dir.join("control.redb");
    let doc = new_room(1_000);
    let id = doc.room.id.clone();
    {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&path).unwrap());
        store.insert_room(&doc).await.unwrap();
        act(&*store, &id, Actor::System, Command::Start)
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..300 {
            let (store, id) = (store.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let u = uid(&format!("m{i}"));
                act(
                    &*store,
                    &id,
                    Actor::User(u),
                    Command::Join { name: "M".into() },
                )
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    // The writer thread lets go of the file once the store is dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = loop {
        match EmbeddedStore::open(&path) {
            Ok(s) => break s,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let doc = whole(&store, &id).await;
    assert_eq!(doc.members.len(), 300);
    let header = store.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert_eq!(header.counts().members, 300);
}

/// A file of the earlier layout (whole-room documents) is split into records when opened.
#[tokio::test]
async fn embedded_store_reads_the_earlier_layout() {
    let dir = scratch("legacy");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("control.redb");
    let mut doc = new_room(10);
    room::apply(&mut doc, &Actor::System, Command::Start, &cx()).unwrap();
    for u in ["ann", "bo"] {
        let c = Command::Join { name: u.into() };
        room::apply(&mut doc, &Actor::User(uid(u)), c, &cx()).unwrap();
    }
    room::apply(
        &mut doc,
        &Actor::User(uid("ann")),
        Command::Own(Action::RaiseHand),
        &cx(),
    )
    .unwrap();
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let rooms: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("rooms");
            let active: redb::TableDefinition<&str, &str> =
                redb::TableDefinition::new("active_room");
            let json = serde_json::to_vec(&doc).unwrap();
            txn.open_table(rooms)
                .unwrap()
                .insert(doc.room.id.as_str(), json.as_slice())
                .unwrap();
            txn.open_table(active)
                .unwrap()
                .insert("ann", doc.room.id.as_str())
                .unwrap();
            // Profiles were already one record per user.
            let profiles: redb::TableDefinition<&str, &[u8]> =
                redb::TableDefinition::new("profiles");
            let json = serde_json::to_vec(&profile()).unwrap();
            txn.open_table(profiles)
                .unwrap()
                .insert("bo", json.as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let loaded = whole(&store, &doc.room.id).await;
    assert_eq!(loaded, doc);
    assert_eq!(store.profile(&uid("bo")).await.unwrap(), Some(profile()));
    assert_eq!(store.rooms(&[RoomState::Live]).await.unwrap().len(), 1);
    assert_eq!(
        store
            .claim_active(&uid("ann"), &RoomId::random())
            .await
            .unwrap(),
        Some(doc.room.id.clone())
    );
}

/// Rooms written by the earlier Redis layout (a header without counts, hands in a hash, no
/// stage or audience index) are rewritten when a store connects, again when an instance of the
/// earlier release writes them later (a rolling upgrade), and then behave.
#[tokio::test]
async fn redis_store_rewrites_the_earlier_layout() {
    let redis = RedisServer::start();
    let mut doc = new_room(10);
    room::apply(&mut doc, &Actor::System, Command::Start, &cx()).unwrap();
    for u in ["host", "ann", "bo"] {
        let c = Command::Join { name: u.into() };
        room::apply(&mut doc, &Actor::User(uid(u)), c, &cx()).unwrap();
    }
    let hand = Command::Own(Action::RaiseHand);
    room::apply(&mut doc, &Actor::User(uid("ann")), hand, &cx()).unwrap();
    let id = doc.room.id.clone();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut pipe = redis::pipe();
    pipe.set(
        format!("old:room:{id}"),
        serde_json::to_string(&doc.room).unwrap(),
    );
    for (u, m) in &doc.members {
        pipe.hset(
            format!("old:room:{id}:participants"),
            u.as_str(),
            serde_json::to_string(m).unwrap(),
        );
    }
    pipe.hset(format!("old:room:{id}:requests"), "ann", 1_000u64);
    pipe.sadd("old:rooms:live", id.as_str());
    pipe.query_async::<()>(&mut con).await.unwrap();

    let store = RedisStore::connect(&redis.url, "old:").await.unwrap();
    let loaded = whole(&store, &id).await;
    assert_eq!(loaded.members, doc.members);
    assert_eq!(loaded.hands, doc.hands);
    let header = store.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert_eq!(header.counts(), doc.counts());
    let page = store.audience(&id, None, 10).await.unwrap();
    let names: Vec<&str> = page.members.iter().map(|(u, _, _)| u.as_str()).collect();
    assert_eq!(names, ["ann", "bo"]);
    assert!(page.members[0].2, "ann's hand");
    assert_eq!(store.hands(&id, 5).await.unwrap(), [(uid("ann"), 1_000)]);
    // And it keeps working: a join after the rewrite.
    act(
        &store,
        &id,
        Actor::User(uid("cy")),
        Command::Join { name: "Cy".into() },
    )
    .await
    .unwrap();
    let header = store.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert_eq!(header.counts().members, 4);
    // Connecting again changes nothing.
    let again = RedisStore::connect(&redis.url, "old:").await.unwrap();
    assert_eq!(whole(&again, &id).await, whole(&store, &id).await);

    // During a rolling upgrade an instance of the earlier release still runs and writes the
    // room its way again (the whole room: a header without counts, hands in a hash, indexes
    // untouched), here with dee joining and bo raising a hand. The running store reads it.
    let mut earlier = whole(&store, &id).await;
    let c = Command::Join { name: "Dee".into() };
    room::apply(&mut earlier, &Actor::User(uid("dee")), c, &cx()).unwrap();
    let hand = Command::Own(Action::RaiseHand);
    room::apply(&mut earlier, &Actor::User(uid("bo")), hand, &cx()).unwrap();
    let mut pipe = redis::pipe();
    pipe.atomic();
    pipe.set(
        format!("old:room:{id}"),
        serde_json::to_string(&earlier.room).unwrap(),
    );
    pipe.del(format!("old:room:{id}:participants"));
    for (u, m) in &earlier.members {
        pipe.hset(
            format!("old:room:{id}:participants"),
            u.as_str(),
            serde_json::to_string(m).unwrap(),
        );
    }
    pipe.del(format!("old:room:{id}:requests"));
    for (u, t) in &earlier.hands {
        pipe.hset(format!("old:room:{id}:requests"), u.as_str(), *t);
    }
    pipe.query_async::<()>(&mut con).await.unwrap();
    // Read only (a header, then the audience pages), then written, then whole.
    let header = store.room(&id, &Scope::header()).await.unwrap().unwrap();
    assert_eq!(header.counts(), earlier.counts());
    assert_eq!(header.counts().members, 5);
    let page = store.audience(&id, None, 10).await.unwrap();
    let names: Vec<&str> = page.members.iter().map(|(u, _, _)| u.as_str()).collect();
    assert_eq!(names, ["ann", "bo", "cy", "dee"]);
    let mut hands = store.hands(&id, 5).await.unwrap();
    hands.sort();
    assert_eq!(hands.len(), 2, "{hands:?}");
    act(
        &store,
        &id,
        Actor::User(uid("eve")),
        Command::Join { name: "Eve".into() },
    )
    .await
    .unwrap();
    let now = whole(&store, &id).await;
    assert_eq!(now.members.len(), 6);
    assert_eq!(now.hands, earlier.hands);
}
