//! Room-wide counts for clients' room snapshots: two control planes on one real redis-server
//! (two nodes of one room), each with a media plane that records what it is told. Every
//! presence change recorded by either reaches both media planes over the bus as the number of
//! members connected through the *other* instances; admission tells it before a session
//! joins; the sweep repeats it.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::service::{host, new_room, uid};
use stoa_control::auth::Keys;
use stoa_control::media::{MediaCommand, MediaError, MediaPlane};
use stoa_control::model::RoomId;
use stoa_control::store::redis::RedisStore;
use stoa_control::{Control, ControlConfig};

/// A media plane that records the counts it is told, per room (the last one) and in all.
#[derive(Debug, Default)]
struct Counted(Mutex<Vec<(String, u32)>>);

impl Counted {
    fn last(&self, room: &RoomId) -> Option<u32> {
        let told = self.0.lock().unwrap();
        told.iter()
            .rev()
            .find(|(r, _)| r == room.as_str())
            .map(|(_, n)| *n)
    }

    fn times(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl MediaPlane for Counted {
    async fn apply(&self, _command: &MediaCommand) -> Result<(), MediaError> {
        Ok(())
    }

    async fn present_elsewhere(&self, room: &RoomId, n: u32) -> Result<bool, MediaError> {
        self.0.lock().unwrap().push((room.to_string(), n));
        Ok(true)
    }
}

/// Waits (bounded) until `media` was last told `want` for `room`.
async fn wait_told(media: &Counted, room: &RoomId, want: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while media.last(room) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "{what}: last told {:?}",
            media.last(room)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_is_told_who_is_connected_through_the_others() {
    let redis = RedisServer::start();
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    let node = async |media: Arc<Counted>| {
        let store = Arc::new(RedisStore::connect(&redis.url, "stoa:").await.unwrap());
        let config = ControlConfig {
            presence_ttl: 3,
            ..ControlConfig::default()
        };
        Control::start(store, media, keys.clone(), config)
    };
    let (a_media, b_media) = (Arc::new(Counted::default()), Arc::new(Counted::default()));
    let a = node(a_media.clone()).await;
    let b = node(b_media.clone()).await;
    let id = a
        .create_room(&host(), new_room("Two nodes", None, Default::default()))
        .await
        .unwrap()
        .room
        .id;
    for user in ["hana", "lee", "mo", "kim"] {
        a.join(&uid(user), user, &id).await.unwrap();
    }

    // Connected: hana and lee through a, mo and kim through b.
    a.presence(id.as_str(), "hana", true).await;
    a.presence(id.as_str(), "lee", true).await;
    wait_told(&b_media, &id, 2, "b: hana and lee elsewhere").await;
    wait_told(&a_media, &id, 0, "a: nobody elsewhere yet").await;
    b.presence(id.as_str(), "mo", true).await;
    b.presence(id.as_str(), "kim", true).await;
    wait_told(&a_media, &id, 2, "a: mo and kim elsewhere").await;
    wait_told(&b_media, &id, 2, "b: still hana and lee").await;

    // kim leaves b: a is told; lee moves from a to b (connected there before a says she left).
    b.presence(id.as_str(), "kim", false).await;
    wait_told(&a_media, &id, 1, "a: mo alone elsewhere").await;
    b.presence(id.as_str(), "lee", true).await;
    wait_told(&a_media, &id, 2, "a: mo and lee elsewhere").await;
    wait_told(&b_media, &id, 1, "b: hana alone elsewhere").await;

    // Admission tells the node before the session joins, from the header it read.
    a.join(&uid("ola"), "ola", &id).await.unwrap();
    let before = a_media.times();
    assert!(a.admit(id.as_str(), "ola").await.unwrap().is_some());
    assert!(a_media.times() > before, "told at admission");
    assert_eq!(a_media.last(&id), Some(2));

    // The sweep repeats it (a lost bus message is made good): wait for more tellings with
    // nothing changing.
    let told = b_media.times();
    let deadline = Instant::now() + Duration::from_secs(15);
    while b_media.times() == told {
        assert!(Instant::now() < deadline, "the sweep tells again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b_media.last(&id), Some(1));
}
