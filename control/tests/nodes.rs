//! The node registry in both stores, and placement through the service: two control planes on
//! one real redis-server, each with its own URL and a load it reports.
#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::service::{host, new_room, now, uid};
use stoa_control::auth::Keys;
use stoa_control::media::NoMedia;
use stoa_control::model::RoomKind;
use stoa_control::nodes::{LoadSource, Node, NodeLoad};
use stoa_control::service::NewRoom;
use stoa_control::store::Store;
use stoa_control::store::embedded::EmbeddedStore;
use stoa_control::store::redis::RedisStore;
use stoa_control::{Control, ControlConfig};

fn node(id: &str, seen_at: u64) -> Node {
    Node {
        id: id.into(),
        public_url: format!("ws://{id}.example:7880"),
        load: NodeLoad {
            participants: 7,
            ..NodeLoad::default()
        },
        draining: false,
        seen_at,
        expires_at: 0,
    }
}

fn ids(nodes: &[Node]) -> Vec<(&str, bool)> {
    nodes.iter().map(|n| (n.id.as_str(), n.draining)).collect()
}

/// Records expire with their TTL; a drain shows on the record and is forgotten with the node.
async fn registry(store: &dyn Store, expired: impl AsyncFn(&dyn Store, u64) -> Vec<Node>) {
    let t = now();
    store.put_node(&node("aaa", t), 60_000).await.unwrap();
    store.put_node(&node("bbb", t), 300).await.unwrap();
    let listed = store.nodes(t).await.unwrap();
    assert_eq!(ids(&listed), [("aaa", false), ("bbb", false)]);
    assert_eq!(listed[0].load.participants, 7);
    assert_eq!(listed[0].public_url, "ws://aaa.example:7880");
    assert!(listed[0].expires_at > t);

    store.drain_node("aaa", true).await.unwrap();
    store.drain_node("bbb", true).await.unwrap();
    assert_eq!(
        ids(&store.nodes(t).await.unwrap()),
        [("aaa", true), ("bbb", true)]
    );
    store.drain_node("aaa", false).await.unwrap();

    // bbb stops writing: gone, and its drain with it.
    let left = expired(store, t + 301).await;
    assert_eq!(ids(&left), [("aaa", false)]);
    store.put_node(&node("bbb", now()), 60_000).await.unwrap();
    assert_eq!(
        ids(&store.nodes(now()).await.unwrap()),
        [("aaa", false), ("bbb", false)],
        "a drain does not outlive its node"
    );
}

#[tokio::test]
async fn embedded_store_lists_living_nodes() {
    let dir = std::env::temp_dir().join(format!("stoa-nodes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("control.redb")).unwrap();
    // The embedded store reads expiry against the `now` it is given.
    registry(&store, async |s, at| s.nodes(at).await.unwrap()).await;
}

#[tokio::test]
async fn redis_store_lists_living_nodes() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url, "stoa:").await.unwrap();
    // Redis expires the record on its own clock: wait (bounded) until it did.
    registry(&store, async |s, _| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let nodes = s.nodes(now()).await.unwrap();
            if nodes.len() == 1 || Instant::now() > deadline {
                return nodes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A store on `redis`, as each control plane of a test has its own connection.
async fn store_at(redis: &RedisServer) -> Arc<dyn Store> {
    Arc::new(RedisStore::connect(&redis.url, "stoa:").await.unwrap())
}

/// A load the test sets.
#[derive(Debug, Default)]
struct Load(AtomicU64);

#[async_trait::async_trait]
impl LoadSource for Load {
    async fn load(&self) -> NodeLoad {
        NodeLoad {
            participants: self.0.load(Ordering::Relaxed),
            ..NodeLoad::default()
        }
    }
}

fn start(store: Arc<dyn Store>, url: &str, load: &Arc<Load>) -> Control {
    let config = ControlConfig {
        presence_ttl: 1,
        public_url: url.into(),
        node_capacity: 100,
        ..ControlConfig::default()
    };
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    let control = Control::start(store, Arc::new(NoMedia), keys, config);
    control.set_load_source(load.clone());
    control
}

/// Waits (bounded) until `control` lists nodes that satisfy `ok`.
async fn wait_nodes(control: &Control, what: &str, ok: impl Fn(&[Node]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = control.nodes().await.unwrap();
        if ok(&nodes) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_go_to_headroom_avoid_drained_nodes_and_leave_dead_ones() {
    let redis = RedisServer::start();
    let connect = async || store_at(&redis).await;
    let (busy, idle) = (Arc::new(Load::default()), Arc::new(Load::default()));
    busy.0.store(60, Ordering::Relaxed);
    let a = start(connect().await, "ws://a.example:7880", &busy);
    let b = start(connect().await, "ws://b.example:7880", &idle);
    let b_id = b.instance().to_owned();
    wait_nodes(&a, "both records", |n| {
        n.len() == 2 && n.iter().any(|n| n.load.participants == 60)
    })
    .await;

    // Created through the busy node, placed on the idle one; tokens from either send there.
    let first = a
        .create_room(&host(), new_room("First", None, Default::default()))
        .await
        .unwrap();
    let id = first.room.id.clone();
    assert_eq!(first.room.media_url.as_deref(), Some("ws://b.example:7880"));
    let grant = a.join(&uid("lee"), "Lee", &id).await.unwrap();
    assert_eq!(grant.media_url.as_deref(), Some("ws://b.example:7880"));

    // Drained, the idle node takes no new room: the busy one does.
    let drained = a.drain_node(&b_id, true).await.unwrap();
    assert!(drained.draining);
    assert!(
        a.drain_node("nosuchnode", true)
            .await
            .is_err_and(|e| e.status == 404)
    );
    // Every node reads the registry at most a second late.
    wait_nodes(&b, "the drain seen by the drained node", |n| {
        n.iter().any(|n| n.id == b_id && n.draining)
    })
    .await;
    let second = b
        .create_room(&host(), new_room("Second", None, Default::default()))
        .await
        .unwrap();
    assert_eq!(
        second.room.media_url.as_deref(),
        Some("ws://a.example:7880")
    );
    a.drain_node(&b_id, false).await.unwrap();

    // The idle node dies: its record expires, and the first room moves to a living node at
    // its next token request.
    drop(b);
    wait_nodes(&a, "the dead node's record expired", |n| {
        n.len() == 1 && n[0].id == a.instance()
    })
    .await;
    let grant = a.join(&uid("mo"), "Mo", &id).await.unwrap();
    assert_eq!(grant.media_url.as_deref(), Some("ws://a.example:7880"));
    let doc = a.room(&id).await.unwrap();
    assert_eq!(doc.room.media_url.as_deref(), Some("ws://a.example:7880"));
}

/// A node that registered after another instance last read the registry: that instance's
/// cached records do not show it, and a token request there must not take the room's node for
/// dead and move the room (it would split from its members on the new node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_a_node_newer_than_the_cached_records_stays_there() {
    let redis = RedisServer::start();
    let connect = async || store_at(&redis).await;
    let (busy, idle) = (Arc::new(Load::default()), Arc::new(Load::default()));
    busy.0.store(60, Ordering::Relaxed);
    let a = start(connect().await, "ws://a.example:7880", &busy);
    // A reads the registry: itself alone (and caches it).
    wait_nodes(&a, "a's record", |n| {
        n.len() == 1 && n[0].load.participants == 60
    })
    .await;
    let read_at = Instant::now();
    let b = start(connect().await, "ws://b.example:7880", &idle);
    let store = connect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.nodes(now()).await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "b's record");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Placed by B on itself (A is busier); a token request through A right after.
    let doc = b
        .create_room(&host(), new_room("Newer", None, Default::default()))
        .await
        .unwrap();
    assert_eq!(doc.room.media_url.as_deref(), Some("ws://b.example:7880"));
    let grant = a.join(&uid("lee"), "Lee", &doc.room.id).await.unwrap();
    assert!(
        read_at.elapsed() < Duration::from_secs(1),
        "the token request came after A's cached records expired: the case was not tested"
    );
    assert_eq!(grant.media_url.as_deref(), Some("ws://b.example:7880"));
    let doc = a.room(&doc.room.id).await.unwrap();
    assert_eq!(doc.room.media_url.as_deref(), Some("ws://b.example:7880"));
}

/// A burst of token requests between two heartbeats: the records still show the origin
/// empty, yet once as many listeners as its capacity were sent there, the next ones spill over
/// to the edge (each instance counts whom it sent where until its next reading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_listeners_fills_the_origin_then_spills_before_the_next_heartbeat() {
    let redis = RedisServer::start();
    let connect = async || store_at(&redis).await;
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    let start = async |url: &str, load: &Arc<Load>| {
        let config = ControlConfig {
            public_url: url.into(),
            node_capacity: 4,
            ..ControlConfig::default()
        };
        let control = Control::start(connect().await, Arc::new(NoMedia), keys.clone(), config);
        control.set_load_source(load.clone());
        control
    };
    // The edge a little busier, so that the room is placed on the other.
    let (a_load, b_load) = (Arc::new(Load::default()), Arc::new(Load::default()));
    b_load.0.store(1, Ordering::Relaxed);
    let a = start("ws://a.example:7880", &a_load).await;
    let _b = start("ws://b.example:7880", &b_load).await;
    wait_nodes(&a, "both records", |n| {
        n.len() == 2 && n.iter().any(|n| n.load.participants == 1)
    })
    .await;
    let doc = a
        .create_room(&host(), new_room("Burst", None, Default::default()))
        .await
        .unwrap();
    let origin = Some("ws://a.example:7880");
    assert_eq!(doc.room.media_url.as_deref(), origin);
    // A fresh reading (its records: nobody on either node), then the burst.
    a.nodes().await.unwrap();
    let read_at = Instant::now();
    let mut sent = Vec::new();
    // l1 asks twice: counted once.
    for user in ["l1", "l1", "l2", "l3", "l4", "l5", "l6"] {
        let grant = a.join(&uid(user), user, &doc.room.id).await.unwrap();
        sent.push(grant.media_url.unwrap_or_default());
    }
    assert!(
        read_at.elapsed() < Duration::from_secs(1),
        "the burst outlasted the cached reading: the case was not tested"
    );
    assert_eq!(
        sent,
        [
            "ws://a.example:7880",
            "ws://a.example:7880",
            "ws://a.example:7880",
            "ws://a.example:7880",
            "ws://a.example:7880",
            "ws://b.example:7880",
            "ws://b.example:7880",
        ],
        "four members to the origin (its capacity), then the edge"
    );
}

#[tokio::test]
async fn without_a_public_url_rooms_have_no_node() {
    let dir = std::env::temp_dir().join(format!("stoa-nodes-single-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&dir.join("control.redb")).unwrap());
    let control = common::service::start(store);
    let doc = control
        .create_room(&host(), new_room("Single", None, Default::default()))
        .await
        .unwrap();
    assert_eq!(doc.room.media_url, None);
    let grant = control
        .join(&uid("lee"), "Lee", &doc.room.id)
        .await
        .unwrap();
    assert_eq!(grant.media_url, None, "clients use the host they asked");
}

/// A media plane that records which rooms it was asked to relay, and from where.
#[derive(Debug, Default)]
struct Relays(std::sync::Mutex<Vec<(String, String)>>);

#[async_trait::async_trait]
impl stoa_control::media::MediaPlane for Relays {
    async fn apply(
        &self,
        _command: &stoa_control::media::MediaCommand,
    ) -> Result<(), stoa_control::media::MediaError> {
        Ok(())
    }

    async fn relay(
        &self,
        room: &stoa_control::model::RoomId,
        origin: &str,
    ) -> Result<bool, stoa_control::media::MediaError> {
        let mut asked = self.0.lock().unwrap();
        asked.push((room.to_string(), origin.to_owned()));
        Ok(asked.len() == 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_of_a_full_origin_go_to_an_edge_which_relays_the_room() {
    let redis = RedisServer::start();
    let connect = async || store_at(&redis).await;
    let (a_load, b_load) = (Arc::new(Load::default()), Arc::new(Load::default()));
    b_load.0.store(50, Ordering::Relaxed);
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    // The origin's members' presence outlives its record (the defaults: 30 s and 3 s).
    let a = Control::start(
        connect().await,
        Arc::new(NoMedia),
        keys.clone(),
        ControlConfig {
            public_url: "ws://a.example:7880".into(),
            node_capacity: 100,
            // No stage reserve: speakers spill over as soon as the origin is full.
            stage_reserve: 0,
            ..ControlConfig::default()
        },
    );
    a.set_load_source(a_load.clone());
    let media = Arc::new(Relays::default());
    let config = ControlConfig {
        presence_ttl: 1,
        public_url: "ws://b.example:7880".into(),
        node_capacity: 100,
        stage_reserve: 0,
        ..ControlConfig::default()
    };
    let b = Control::start(connect().await, media.clone(), keys, config);
    b.set_load_source(b_load.clone());
    wait_nodes(&a, "both records", |n| {
        n.len() == 2 && n.iter().any(|n| n.load.participants == 50)
    })
    .await;
    let origin = Some("ws://a.example:7880");
    let doc = a
        .create_room(&host(), new_room("Spills", None, Default::default()))
        .await
        .unwrap();
    let id = doc.room.id.clone();
    assert_eq!(doc.room.media_url.as_deref(), origin);
    // A second room on the same origin, an open one: everyone in it may speak.
    let other = a
        .create_room(
            &host(),
            NewRoom {
                kind: RoomKind::Open,
                ..new_room("Also here", None, Default::default())
            },
        )
        .await
        .unwrap();
    assert_eq!(other.room.media_url.as_deref(), origin);
    let grant = a.join(&uid("lee"), "Lee", &id).await.unwrap();
    assert_eq!(grant.media_url.as_deref(), origin, "the origin has room");

    // The origin fills up (its load at capacity); the other node has headroom.
    a_load.0.store(100, Ordering::Relaxed);
    b_load.0.store(0, Ordering::Relaxed);
    wait_nodes(&b, "the origin full", |n| {
        n.len() == 2 && n.iter().any(|n| n.load.participants == 100)
    })
    .await;
    wait_nodes(&a, "the origin full", |n| {
        n.iter().any(|n| n.load.participants == 100)
    })
    .await;
    let store = connect().await;
    assert!(store.room_edges(&id).await.unwrap().is_empty());
    let edge = Some("ws://b.example:7880");
    for (control, user) in [(&a, "mo"), (&b, "kim")] {
        let grant = control.join(&uid(user), user, &id).await.unwrap();
        assert_eq!(grant.media_url.as_deref(), edge, "{user} spills over");
        assert_eq!(grant.role, stoa_control::model::Role::Listener);
    }
    assert_eq!(
        store.room_edges(&id).await.unwrap(),
        ["ws://b.example:7880"],
        "recorded for every instance"
    );
    // The second room spills to the same edge too, its speakers as well (the origin hears
    // them through a feed): each relay link has a socket of its own on the edge, so two rooms
    // relayed from the origin to the edge are two links the engines tell apart.
    let grant = b.join(&uid("ola"), "Ola", &other.room.id).await.unwrap();
    assert_eq!(
        grant.media_url.as_deref(),
        edge,
        "the second room's speaker spills over to the same edge"
    );
    let (can_publish, _, _) = b
        .admit(other.room.id.as_str(), "ola")
        .await
        .unwrap()
        .unwrap();
    assert!(can_publish, "admitted on the edge as a speaker");
    // Which makes the edge relay that room from the origin (and the origin feed from it).
    let asked = std::mem::take(&mut *media.0.lock().unwrap());
    assert_eq!(
        asked,
        [(other.room.id.to_string(), "ws://a.example:7880".to_owned())]
    );
    assert_eq!(grant.role, stoa_control::model::Role::Speaker);
    assert_eq!(
        store.room_edges(&other.room.id).await.unwrap(),
        ["ws://b.example:7880"]
    );
    let grant = a.join(&uid("una"), "Una", &other.room.id).await.unwrap();
    assert_eq!(grant.media_url.as_deref(), edge, "through either instance");
    assert_eq!(
        store.room_edges(&id).await.unwrap(),
        ["ws://b.example:7880"]
    );

    // The host: always on the origin, where the whole audience is shown to her.
    let grant = b.join(&uid("hana"), "Hana", &id).await.unwrap();
    assert_eq!(grant.media_url.as_deref(), origin);
    // Should she come to the edge all the same (a stale URL, an SDK told another), the edge
    // refuses her: there she would see and moderate a part of the audience only.
    let refused = b.admit(id.as_str(), "hana").await.unwrap_err();
    assert_eq!((refused.status, refused.code), (409, "moderate_on_origin"));
    assert!(refused.message.contains("/token"), "{}", refused.message);
    assert!(a.admit(id.as_str(), "hana").await.unwrap().is_some());

    // Admitted on the edge, a listener makes it relay the room from the origin (the media
    // plane keeps one link: asked again, it says so); on the origin nothing is relayed.
    for user in ["mo", "kim"] {
        assert!(b.admit(id.as_str(), user).await.unwrap().is_some());
    }
    let asked = media.0.lock().unwrap().clone();
    let want = (id.to_string(), "ws://a.example:7880".to_owned());
    assert_eq!(asked, [want.clone(), want.clone()]);
    assert!(a.admit(id.as_str(), "lee").await.unwrap().is_some());

    // Connected: lee on the origin, mo and kim on the edge. The origin dies: once its record
    // expired, the room moves although the edge's listeners are connected and the origin's
    // member is still counted (her presence outlives the record); the host rejoins on the new
    // origin, a third node, and the edge re-links to it.
    a.presence(id.as_str(), "lee", true).await;
    b.presence(id.as_str(), "mo", true).await;
    b.presence(id.as_str(), "kim", true).await;
    assert_eq!(b.room(&id).await.unwrap().totals().present, 3);
    // With its listeners connected, the edge's sweep keeps asking for the relay (a link that
    // ended is made anew within a sweep, without anyone rejoining).
    let deadline = Instant::now() + Duration::from_secs(15);
    while media.0.lock().unwrap().len() < 4 {
        assert!(Instant::now() < deadline, "the sweep keeps the relay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(media.0.lock().unwrap().iter().all(|asked| *asked == want));
    let grant = b.join(&uid("hana"), "Hana", &id).await.unwrap();
    assert_eq!(
        grant.media_url.as_deref(),
        origin,
        "stays while the origin lives"
    );
    let c_load = Arc::new(Load::default());
    let c = start(connect().await, "ws://c.example:7880", &c_load);
    b_load.0.store(10, Ordering::Relaxed);
    wait_nodes(&b, "a third node, the edge busier", |n| {
        n.len() == 3 && n.iter().any(|n| n.load.participants == 10)
    })
    .await;
    drop(a);
    wait_nodes(&b, "the origin's record expired", |n| n.len() == 2).await;
    assert_eq!(
        b.room(&id).await.unwrap().totals().present,
        3,
        "lee counted"
    );
    let grant = b.join(&uid("hana"), "Hana", &id).await.unwrap();
    let moved = "ws://c.example:7880";
    assert_eq!(
        grant.media_url.as_deref(),
        Some(moved),
        "the room moved to the living node with the most headroom"
    );
    // The move is announced; the edge, serving mo and kim, relays the room from its new origin.
    let want = (id.to_string(), moved.to_owned());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !media.0.lock().unwrap().contains(&want) {
        assert!(
            Instant::now() < deadline,
            "the edge re-links to the new origin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(c);

    // The edge set goes with the room.
    store.remove_room(&id).await.unwrap();
    assert!(store.room_edges(&id).await.unwrap().is_empty());
}

/// A media plane too busy to say its load (its reading never ends).
#[derive(Debug)]
struct Late;

#[async_trait::async_trait]
impl LoadSource for Late {
    async fn load(&self) -> NodeLoad {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        NodeLoad::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_load_is_late_stays_living() {
    let redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url, "stoa:").await.unwrap());
    let config = ControlConfig {
        node_ttl: 1,
        public_url: "ws://a.example:7880".into(),
        ..ControlConfig::default()
    };
    let keys = Keys::new(vec![("k".into(), "s".into())]).unwrap();
    let control = Control::start(store.clone(), Arc::new(NoMedia), keys, config);
    control.set_load_source(Arc::new(Late));
    wait_nodes(&control, "its record", |n| n.len() == 1).await;
    // Its record is written on time although no reading of its load ever completes: listed
    // at every look over three of its lifetimes.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(store.nodes(now()).await.unwrap().len(), 1, "still living");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The reading still under way does not keep the control plane alive: dropped, its record
    // stops and expires.
    drop(control);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.nodes(now()).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the record expires");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
