//! How `/rtc`, `/rtc/validate`, `/rtc/v1` and `/rtc/v1/validate` take the access token: as the
//! `access_token` parameter (livekit-client) or as an `Authorization: Bearer` header (the SDKs on
//! LiveKit's Rust core: Python `livekit`, `@livekit/rtc-node`, Unity, mobile), with the same
//! answers either way, over real HTTP and WebSocket connections.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::SocketAddr;

use livekit_protocol::signal_response;
use stoa_signaling::token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

mod common;
use common::*;

/// The query the Rust-core SDKs put on `/rtc` after `/rtc/v1` answered 404: no token in it.
const RUST_CORE_QUERY: &str = "sdk=python&os=linux&os_version=6.1&device_model=&protocol=17\
    &client_protocol=1&auto_subscribe=1&adaptive_stream=0&version=1.2.1\
    &capabilities=CAP_PACKET_TRAILER%2CCAP_COMPRESSION_DEFLATE_RAW";

/// A `join_request` for `/rtc/v1` as the Rust-core SDKs send it (uncompressed, URL-safe base64).
fn join_request() -> String {
    use base64::Engine as _;
    use prost::Message as _;
    let join = livekit_protocol::JoinRequest {
        client_info: Some(livekit_protocol::ClientInfo {
            sdk: livekit_protocol::client_info::Sdk::Python as i32,
            version: "1.2.1".into(),
            protocol: 17,
            ..Default::default()
        }),
        connection_settings: Some(livekit_protocol::ConnectionSettings {
            auto_subscribe: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let wrapped = livekit_protocol::WrappedJoinRequest {
        compression: 0,
        join_request: join.encode_to_vec(),
    };
    base64::engine::general_purpose::URL_SAFE.encode(wrapped.encode_to_vec())
}

/// Status, lower-cased headers and body of `GET path` with `headers`.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    // Bodies are small: a chunked one is one chunk, so drop its size lines.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines().nth(1).unwrap_or("").to_owned()
    } else {
        body.to_owned()
    };
    (status, head.to_ascii_lowercase(), body)
}

/// Opens a WebSocket on `path` with `Authorization: <auth>`; the first message, or the HTTP
/// refusal.
async fn ws_with_header(
    http: SocketAddr,
    path: &str,
    auth: &str,
) -> Result<signal_response::Message, (u16, String)> {
    let mut req = format!("ws://{http}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", HeaderValue::from_str(auth).unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => Ok(tokio::time::timeout(WAIT, next_response(&mut ws))
            .await
            .unwrap()
            .unwrap()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((r.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_header_joins_like_the_query_parameter() {
    let s = server().await;
    let token = mint("py-alice", grants("auth-room", true));

    // The Rust-core SDK's first try: /rtc/v1 with the token in the header.
    let first = ws_with_header(
        s.http,
        &format!("/rtc/v1?join_request={}", join_request()),
        &format!("Bearer {token}"),
    )
    .await
    .unwrap();
    let signal_response::Message::Join(join) = first else {
        panic!("expected the join response, got {first:?}");
    };
    assert!(
        !join.subscriber_primary,
        "one connection: the client offers"
    );
    assert_eq!(join.participant.unwrap().identity, "py-alice");
    // A join_request that cannot be read is refused before the upgrade, saying why.
    let refused = ws_with_header(
        s.http,
        "/rtc/v1?join_request=AA",
        &format!("Bearer {token}"),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.0, 400, "{refused:?}");
    assert!(
        refused.1.starts_with("invalid join_request: "),
        "{refused:?}"
    );
    // The legacy path admits the same header.
    let first = ws_with_header(
        s.http,
        &format!("/rtc?{RUST_CORE_QUERY}"),
        &format!("Bearer {token}"),
    )
    .await
    .unwrap();
    let signal_response::Message::Join(join) = first else {
        panic!("expected the join response, got {first:?}");
    };
    let me = join.participant.unwrap();
    assert_eq!(me.identity, "py-alice");
    assert!(me.permission.unwrap().can_publish);
    assert_eq!(join.room.unwrap().name, "auth-room");

    // A bad header is refused before the upgrade, with LiveKit's status and reason.
    let (status, body) = ws_with_header(s.http, "/rtc", "Basic dXNlcjpwYXNz")
        .await
        .unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(
        body,
        "invalid authorization header. Must start with Bearer "
    );
    // A header wins over the parameter: a good parameter does not rescue a forged header.
    let forged = token::mint(
        KEY,
        "not-the-secret",
        "x",
        None,
        grants("auth-room", true),
        std::time::Duration::from_secs(600),
        now_unix(),
    )
    .unwrap();
    let (status, _) = ws_with_header(
        s.http,
        &format!("/rtc?access_token={token}"),
        &format!("Bearer {forged}"),
    )
    .await
    .unwrap_err();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_answers_header_and_parameter_alike() {
    let s = server().await;
    let good = mint("v", grants("auth-room", false));
    let no_join = {
        let mut g = grants("auth-room", false);
        g.room_join = false;
        mint("v", g)
    };
    let expired = token::mint(
        KEY,
        SECRET,
        "x",
        None,
        grants("auth-room", true),
        std::time::Duration::from_secs(60),
        now_unix() - 3600,
    )
    .unwrap();

    for (token, rtc_status) in [
        (good.as_str(), 200),
        (no_join.as_str(), 401),
        (expired.as_str(), 401),
        ("garbage", 401),
    ] {
        let join = format!("join_request={}", join_request());
        for (path, query, want) in [
            ("/rtc/validate", "", rtc_status),
            // The single-connection paths judge the token as /rtc does; a good one without a
            // join_request is a bad request, and /rtc/v1 wants a WebSocket upgrade.
            ("/rtc/v1/validate", join.as_str(), rtc_status),
            (
                "/rtc/v1/validate",
                "",
                if rtc_status == 200 { 400 } else { 401 },
            ),
            (
                "/rtc/v1",
                join.as_str(),
                if rtc_status == 200 { 400 } else { 401 },
            ),
        ] {
            let by_param = get(s.http, &format!("{path}?access_token={token}&{query}"), &[]).await;
            let bearer = format!("Bearer {token}");
            let by_header = get(
                s.http,
                &format!("{path}?{query}"),
                &[("Authorization", &bearer)],
            )
            .await;
            assert_eq!(by_param.0, want, "{path} {token}: {by_param:?}");
            assert_eq!(
                (by_param.0, &by_param.2),
                (by_header.0, &by_header.2),
                "{path} {token}"
            );
            // Browsers read these answers cross-origin (livekit-client's validate fetch).
            assert!(
                by_header.1.contains("access-control-allow-origin: *"),
                "{path}: {}",
                by_header.1
            );
            assert!(!by_header.2.contains(token) || token == "garbage");
            if want == 400 && query.is_empty() {
                assert_eq!(by_header.2, "join_request is missing", "{path}");
            }
        }
    }

    // No token at all: 401 everywhere, an empty header counting as none.
    for path in ["/rtc/validate", "/rtc/v1/validate", "/rtc"] {
        let (status, _, body) = get(s.http, path, &[]).await;
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("access_token is missing"), "{path}: {body}");
        let (status, _, _) = get(s.http, path, &[("Authorization", "")]).await;
        assert_eq!(status, 401, "{path}");
    }
    let (status, _, body) = get(s.http, "/rtc/validate", &[("Authorization", "Token abc")]).await;
    assert_eq!(
        (status, body.as_str()),
        (401, "invalid authorization header. Must start with Bearer ")
    );
    // Bytes that are not text in the header are refused, not a crash.
    let (status, _, _) = get(
        s.http,
        "/rtc/validate",
        &[("Authorization", "Bearer \u{e9}")],
    )
    .await;
    assert_eq!(status, 401);
}
