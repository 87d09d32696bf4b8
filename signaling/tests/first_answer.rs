//! The answer to the offer inside a `/rtc/v1` join request, over a real WebSocket: held for
//! livekit-client until its own first `negotiate()` has run (see
//! `stoa_signaling::ws::JS_FIRST_ANSWER_HOLD`), sent at once to the other SDKs; either way
//! after the join response.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Instant;

use base64::Engine as _;
use livekit_protocol as lk;
use livekit_protocol::client_info::Sdk;
use livekit_protocol::signal_response;
use prost::Message as _;
use stoa_sfu::str0m::media::{Direction, MediaKind};
use stoa_signaling::ws::JS_FIRST_ANSWER_HOLD;

mod common;
use common::*;

/// A `join_request` from `sdk` carrying a str0m offer with one receiving audio m-line.
fn join_request(sdk: Sdk) -> String {
    let mut pc = Pc::new();
    let mut api = pc.rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.add_channel("_reliable".into());
    let (offer, _pending) = api.apply().unwrap();
    let join = lk::JoinRequest {
        client_info: Some(lk::ClientInfo {
            sdk: sdk as i32,
            version: "2.23.0".into(),
            protocol: 17,
            ..Default::default()
        }),
        connection_settings: Some(lk::ConnectionSettings {
            auto_subscribe: true,
            ..Default::default()
        }),
        publisher_offer: Some(lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: 1,
            ..Default::default()
        }),
        ..Default::default()
    };
    let wrapped = lk::WrappedJoinRequest {
        compression: 0,
        join_request: join.encode_to_vec(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(wrapped.encode_to_vec())
}

/// Joins `/rtc/v1` as `sdk`; returns the time from the start of the connection to the answer.
async fn answer_after(s: &Server, identity: &str, sdk: Sdk) -> std::time::Duration {
    let token = mint(identity, grants("first-answer", false));
    let url = format!(
        "ws://{}/rtc/v1?access_token={token}&join_request={}",
        s.http,
        join_request(sdk)
    );
    let start = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut joined = false;
    loop {
        let m = tokio::time::timeout(WAIT, next_response(&mut ws))
            .await
            .expect("no answer in time")
            .expect("connection closed before the answer");
        match m {
            signal_response::Message::Join(_) => joined = true,
            signal_response::Message::Answer(a) => {
                assert!(joined, "the answer came before the join response");
                assert_eq!(a.id, 1, "the answer names the join request's offer");
                return start.elapsed();
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livekit_client_gets_the_first_answer_after_its_own_negotiate_has_run() {
    let s = server().await;
    let js = answer_after(&s, "js", Sdk::Js).await;
    assert!(js >= JS_FIRST_ANSWER_HOLD, "answered after {js:?}");
    // The SDKs on LiveKit's Rust core do not defer their first offer: no hold for them (only
    // that they are answered; their time is not asserted).
    answer_after(&s, "py", Sdk::Python).await;
}
