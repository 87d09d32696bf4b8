//! Bounded queues over real sockets: a client that stops reading is disconnected once its
//! outbox is full, counted, and nobody else is held up. Bounded in messages and time.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{connect_ws, grants, mint, server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_counted() {
    let s = server().await;
    // A reader that reads nothing after the upgrade.
    let _stalled = connect_ws(s.http, &mint("stalled", grants("bp", false)))
        .await
        .unwrap();
    let mut reader = common::Client::join(s.http, &mint("reader", grants("bp", true))).await;
    // Every metadata change is a RoomUpdate to every participant. 8 KiB each: the stalled
    // client's socket buffers and its 512-message outbox fill within a few thousand.
    let metadata = "m".repeat(8 * 1024);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0;
    loop {
        s.signaling
            .update_room_metadata("bp", &format!("{sent}{metadata}"))
            .await
            .unwrap();
        sent += 1;
        if sent % 100 == 0 {
            let stats = s.signaling.stats().await.unwrap();
            if stats.clients_overflowed >= 1 {
                break;
            }
            // The reader keeps up: nothing it needs is held back.
            reader.drain_for(Duration::from_millis(1)).await;
        }
        assert!(
            Instant::now() < deadline && sent < 20_000,
            "the stalled client was never disconnected ({sent} updates)"
        );
    }
    let stats = s.signaling.stats().await.unwrap();
    assert_eq!(stats.clients_overflowed, 1, "only the stalled client");
    assert_eq!(stats.sessions, 1, "the reader stays");
    let names: Vec<String> = s
        .signaling
        .list_participants("bp")
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.identity)
        .collect();
    assert_eq!(names, vec!["reader".to_owned()]);
}
