//! A speaker on an edge, over real sockets on 127.0.0.1: three signaling services (an origin
//! and two edges), each over its own engine (real UDP), in one process. Both edges relay the
//! room from the origin. A speaker publishes Opus on edge A; the origin, told of her by edge
//! A's announcements, opens a feed from edge A (its own relay peer joining edge A's room) and
//! its listener hears her, under her edge sid and track sid; edge B's listener hears her
//! through the origin; edge A's own listener hears her once (nothing comes back over the
//! links); she is shown the whole audience. Her mute reaches the origin and edge B; her leave
//! removes her everywhere. The clients are the str0m clients of `rtc.rs`. Every wait is
//! bounded.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::too_many_lines,
    dead_code,
    deprecated
)]

use std::sync::Arc;
use std::time::Duration;

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use stoa_signaling::cluster::{NodeDirectory, NodesFuture, RoomNodes};
use stoa_signaling::service::{RelayAuth, ServiceConfig};

mod common;
use common::*;

/// A node's config: relay credentials under `node`, naming its own `url`, checking the URLs
/// of feeds against `nodes`.
fn node(node: &str, url: String, nodes: NodeDirectory) -> ServiceConfig {
    ServiceConfig {
        relay: Some(RelayAuth {
            node: node.into(),
            api_key: KEY.into(),
            secret: SECRET.into(),
            ttl: Duration::from_secs(60),
            tls: None,
            url: Some(url),
            nodes,
        }),
        ..ServiceConfig::default()
    }
}

/// A registry of fixed URLs, as the control plane's would list the living nodes.
struct Registry(Vec<String>);

impl RoomNodes for Registry {
    fn nodes<'a>(&'a self, _room: &'a str) -> NodesFuture<'a> {
        Box::pin(async { self.0.clone() })
    }

    fn every_other(&self) -> NodesFuture<'_> {
        Box::pin(async { self.0.clone() })
    }
}

/// The packets (publisher's indexes) `c` heard from `since` on.
fn heard_since(c: &Client, since: u32) -> Vec<u32> {
    c.heard()
        .iter()
        .map(|h| h.1)
        .filter(|i| *i >= since)
        .collect()
}

/// Waits until `c` is shown `sid` with a track, answering offers meanwhile; returns the track.
async fn sees_with_track(c: &mut Client, sid: &str, what: &str) -> lk::TrackInfo {
    c.wait_for(what, |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .find(|p| p.sid == sid && !p.tracks.is_empty())
            .map(|p| p.tracks[0].clone()),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_on_an_edge_is_heard_on_the_origin_and_the_other_edges() {
    let registry = NodeDirectory::default();
    let origin = server_knowing_url(|url| node("origin", url, registry.clone()), [1; 32]).await;
    let edge_a =
        server_knowing_url(|url| node("edge-a", url, NodeDirectory::default()), [2; 32]).await;
    let edge_b =
        server_knowing_url(|url| node("edge-b", url, NodeDirectory::default()), [3; 32]).await;
    // The origin dials edges of its registry only; both edges are in it.
    registry.bind(Arc::new(Registry(vec![
        // A registry entry with a trailing slash matches a token's URL without one.
        format!("http://{}/", edge_a.http),
        format!("http://{}", edge_b.http),
    ])));
    let room = "wide";

    // A listener on each node.
    let mut alice = Client::join(origin.http, &mint("alice", grants(room, false))).await;
    let mut bob = Client::join(edge_a.http, &mint("bob", grants(room, false))).await;
    let mut erin = Client::join(edge_b.http, &mint("erin", grants(room, false))).await;
    for c in [&alice, &bob, &erin] {
        eventually("a listener's subscriber connection", || {
            c.subscriber.lock().unwrap().connected
        })
        .await;
    }
    for edge in [&edge_a, &edge_b] {
        edge.signaling
            .relay_from(room, &format!("http://{}", origin.http))
            .await
            .unwrap();
    }

    // Carol speaks on edge A.
    let mut carol = Client::join(edge_a.http, &mint("carol", grants(room, true))).await;
    let track_sid = carol.publish().await;
    eventually("carol's connections", || {
        carol.publisher.lock().unwrap().connected && carol.subscriber.lock().unwrap().connected
    })
    .await;

    // The origin's listener is shown her with her edge sid and track sid, and offered her
    // track under them; so is edge B's, through the origin.
    for (c, what) in [
        (&mut alice, "carol shown on the origin"),
        (&mut erin, "carol shown on edge B"),
    ] {
        let track = sees_with_track(c, &carol.sid(), what).await;
        assert_eq!(track.sid, track_sid);
        let msid = format!("a=msid:{}|{} {}", carol.sid(), track_sid, track_sid);
        c.wait_for("an offer with carol's track", |m| match m {
            signal_response::Message::Offer(sd) if sd.sdp.contains(&msid) => Some(()),
            _ => None,
        })
        .await;
    }
    bob.answer_next_offer().await;
    for c in [&mut alice, &mut bob, &mut erin] {
        c.drain_for(Duration::from_millis(300)).await;
    }

    // Everyone hears her: each packet once, in order.
    let before = carol.publisher.lock().unwrap().sent;
    send_audio(&carol, 100).await;
    for (c, what) in [
        (&alice, "alice hears carol through the feed"),
        (&bob, "bob hears carol on her node"),
        (&erin, "erin hears carol through the origin"),
    ] {
        eventually(what, || heard_since(c, before).len() >= 90).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (c, who) in [(&alice, "alice"), (&bob, "bob"), (&erin, "erin")] {
        let heard = heard_since(c, before);
        assert!(
            heard.windows(2).all(|w| w[0] < w[1]),
            "{who} hears each packet once, in order: {heard:?}"
        );
        assert!(heard.iter().all(|i| *i < before + 100), "{who}: {heard:?}");
    }

    // Edge A holds bob, carol and the origin's feed (its relay peer's session).
    let stats = edge_a.signaling.stats().await.unwrap();
    assert_eq!(stats.sessions, 3, "edge A's sessions: {stats:?}");

    // She sees the whole audience, wherever each listener is (the origin shows its edges'
    // relays everyone); her edge's listener sees no listener, as anywhere.
    for (sid, what) in [
        (alice.sid(), "alice, on the origin, shown to carol"),
        (erin.sid(), "erin, on edge B, shown to carol"),
    ] {
        carol
            .wait_for(what, |m| match m {
                signal_response::Message::Update(u) => {
                    u.participants.iter().find(|p| p.sid == sid).map(|_| ())
                }
                _ => None,
            })
            .await;
    }
    bob.drain_for(Duration::from_millis(200)).await;
    assert!(!bob.saw_participant(&alice.sid()) && !bob.saw_participant(&erin.sid()));

    // The origin's engine hears her speak through the feed: announced under her sid.
    alice
        .wait_for("carol speaking, announced on the origin", |m| match m {
            signal_response::Message::SpeakersChanged(c) => c
                .speakers
                .iter()
                .find(|s| s.sid == carol.sid() && s.active)
                .map(|_| ()),
            _ => None,
        })
        .await;

    // Her mute reaches the origin's listener and edge B's, from edge A's announcement.
    carol
        .send(signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: true,
        }))
        .await;
    for (c, what) in [
        (&mut alice, "carol muted on the origin"),
        (&mut erin, "carol muted on edge B"),
    ] {
        c.wait_for(what, |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.sid == carol.sid() && p.tracks.first().is_some_and(|t| t.muted))
                .map(|_| ()),
            _ => None,
        })
        .await;
    }

    // She leaves: gone everywhere.
    let carol_sid = carol.sid();
    carol
        .send(signal_request::Message::Leave(lk::LeaveRequest::default()))
        .await;
    for (c, what) in [
        (&mut alice, "carol gone from the origin"),
        (&mut erin, "carol gone from edge B"),
    ] {
        c.wait_for(what, |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.sid == carol_sid && p.state == State::Disconnected as i32)
                .map(|_| ()),
            _ => None,
        })
        .await;
    }
    let listed = origin.signaling.list_participants(room).await.unwrap();
    assert!(listed.iter().all(|p| p.identity != "carol"), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_feed_is_opened_from_a_url_outside_the_registry() {
    // The origin's registry knows edge B only; a relay token of edge A names edge A's URL,
    // which the origin does not dial. (A token can name any URL: an API-key holder mints it.)
    let registry = NodeDirectory::default();
    let origin = server_knowing_url(|url| node("origin", url, registry.clone()), [4; 32]).await;
    let edge_a =
        server_knowing_url(|url| node("edge-a", url, NodeDirectory::default()), [5; 32]).await;
    registry.bind(Arc::new(Registry(vec!["http://127.0.0.1:9/".to_owned()])));
    let room = "fenced";

    let mut alice = Client::join(origin.http, &mint("alice", grants(room, false))).await;
    let mut bob = Client::join(edge_a.http, &mint("bob", grants(room, false))).await;
    for c in [&alice, &bob] {
        eventually("a listener's subscriber connection", || {
            c.subscriber.lock().unwrap().connected
        })
        .await;
    }
    edge_a
        .signaling
        .relay_from(room, &format!("http://{}", origin.http))
        .await
        .unwrap();

    let mut carol = Client::join(edge_a.http, &mint("carol", grants(room, true))).await;
    carol.publish().await;
    eventually("carol's connections", || {
        carol.publisher.lock().unwrap().connected && carol.subscriber.lock().unwrap().connected
    })
    .await;
    bob.answer_next_offer().await;
    bob.drain_for(Duration::from_millis(300)).await;
    // The origin knows her and her track from edge A's announcements: it would open a feed
    // if it could.
    sees_with_track(&mut alice, &carol.sid(), "carol shown on the origin").await;
    // The origin's listener answers whatever it is offered, across two of the origin's
    // retries (one every 2 s).
    alice.drain_for(Duration::from_secs(5)).await;

    // Her edge's listener hears her; the origin's hears nothing, and the edge saw no relay
    // session of the origin.
    let before = carol.publisher.lock().unwrap().sent;
    send_audio(&carol, 100).await;
    eventually("bob hears carol on her node", || {
        heard_since(&bob, before).len() >= 90
    })
    .await;
    alice.drain_for(Duration::from_secs(1)).await;
    assert!(
        alice.heard().is_empty(),
        "the origin's listener heard a feed it must not have opened: {:?}",
        alice.heard().len()
    );
    // Edge A holds bob and carol only: no session of the origin's relay peer.
    let stats = edge_a.signaling.stats().await.unwrap();
    assert_eq!(stats.sessions, 2, "edge A's sessions: {stats:?}");
}
