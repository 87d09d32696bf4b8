//! Rooms spread over several signaling cores (`ServiceConfig::cores`): each room lives in one
//! core, a session's requests and its peers' engine events reach that core, active-speaker
//! changes are split among the cores, and the operations on every room (listing, statistics,
//! shutdown) add up all cores. Real WebSockets and str0m clients on 127.0.0.1; every wait is
//! bounded.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::time::Duration;

use livekit_protocol::signal_response;
use stoa_signaling::service::ServiceConfig;

mod common;
use common::*;

/// Peers per engine shard, once the engine holds `total` (waited for, bounded).
async fn shard_peers(s: &Server, total: u64) -> Vec<u64> {
    let mut peers = Vec::new();
    for _ in 0..100 {
        peers = s
            .sfu
            .stats()
            .await
            .unwrap()
            .iter()
            .map(|st| st.peers)
            .collect();
        if peers.iter().sum::<u64>() == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    peers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_different_cores_take_different_shards() {
    // Four cores, two shards: cores 0 and 2 both prefer shard 0 for their first room. The
    // second core sees the first core's peers there and takes shard 1.
    let s = server_with(ServiceConfig {
        cores: 4,
        ..ServiceConfig::default()
    })
    .await;
    let name_on = |core: usize| {
        (0..10_000)
            .map(|n| format!("room-{n}"))
            .find(|name| s.signaling.core_of(name) == core)
            .unwrap()
    };
    let (first, second) = (name_on(0), name_on(2));
    let a = Client::join(s.http, &mint("a", grants(&first, false))).await;
    let b = Client::join(s.http, &mint("b", grants(&first, false))).await;
    assert_eq!(
        shard_peers(&s, 2).await,
        [2, 0],
        "the first room together on shard 0"
    );
    let c = Client::join(s.http, &mint("c", grants(&second, false))).await;
    assert_eq!(
        shard_peers(&s, 3).await,
        [2, 1],
        "the second room on the other shard"
    );
    drop((a, b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_different_cores_each_work_alone_and_add_up() {
    let s = server_with(ServiceConfig {
        cores: 3,
        ..ServiceConfig::default()
    })
    .await;
    assert_eq!(s.signaling.cores(), 3);
    // One room per core.
    let mut rooms: Vec<String> = Vec::new();
    let mut taken = BTreeSet::new();
    for n in 0..1000 {
        let name = format!("room-{n}");
        if taken.insert(s.signaling.core_of(&name)) {
            rooms.push(name);
        }
        if rooms.len() == 3 {
            break;
        }
    }
    assert_eq!(rooms.len(), 3, "three names on three cores");

    // In each room a speaker publishes and a listener hears her, and only her.
    let mut pairs = Vec::new();
    for room in &rooms {
        let mut speaker = Client::join(
            s.http,
            &mint(&format!("{room}-speaker"), grants(room, true)),
        )
        .await;
        speaker.publish().await;
        eventually("the speaker's connections", || {
            speaker.publisher.lock().unwrap().connected
                && speaker.subscriber.lock().unwrap().connected
        })
        .await;
        let mut listener = Client::join(
            s.http,
            &mint(&format!("{room}-listener"), grants(room, false)),
        )
        .await;
        listener
            .wait_for("the speaker's track offered", |m| match m {
                signal_response::Message::Offer(sd) if sd.sdp.contains("a=msid:") => Some(()),
                _ => None,
            })
            .await;
        eventually("the listener's connection", || {
            listener.subscriber.lock().unwrap().connected
        })
        .await;
        pairs.push((speaker, listener));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (speaker, listener) in &pairs {
        send_audio(speaker, 60).await;
        eventually("the listener hears its room's speaker", || {
            listener.heard().len() >= 55
        })
        .await;
    }
    // Active speakers reach each room from its own core, never another room's.
    for (speaker, listener) in &mut pairs {
        let sid = speaker.sid();
        let tone = speaker.publisher.clone();
        let sending = tokio::spawn(async move {
            for _ in 0..300 {
                tone.lock().unwrap().send_audio();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let named = listener
            .wait_for("its speaker active", |m| match m {
                signal_response::Message::SpeakersChanged(c) => c
                    .speakers
                    .iter()
                    .find(|sp| sp.sid == sid && sp.active)
                    .map(|_| c.speakers.clone()),
                _ => None,
            })
            .await;
        sending.abort();
        let others: Vec<String> = named.iter().map(|sp| sp.sid.clone()).collect();
        assert_eq!(others, vec![sid], "only the room's own speaker");
    }

    // Listing and statistics cover every core.
    let listed: BTreeSet<String> = s
        .signaling
        .list_rooms(&[])
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(listed, rooms.iter().cloned().collect::<BTreeSet<_>>());
    let stats = s.signaling.stats().await.unwrap();
    assert_eq!((stats.rooms, stats.sessions), (3, 6), "{stats:?}");
    assert_eq!((stats.publishers, stats.listeners), (3, 3), "{stats:?}");
    assert_eq!(stats.joins.count(), 6, "{stats:?}");

    // Deleting one room ends its sessions only.
    s.signaling.delete_room(&rooms[0]).await.unwrap();
    let (_, gone) = &mut pairs[0];
    gone.wait_for("the deleted room's leave", |m| {
        matches!(m, signal_response::Message::Leave(_)).then_some(())
    })
    .await;
    let stats = s.signaling.stats().await.unwrap();
    assert_eq!((stats.rooms, stats.sessions), (2, 4), "{stats:?}");
    // Shutdown reaches every core: each remaining session is asked to leave.
    assert_eq!(s.signaling.ask_to_leave().await.unwrap(), 4);
}
