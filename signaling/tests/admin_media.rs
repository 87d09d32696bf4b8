//! Server API effects on live media sessions, with str0m clients on real UDP sockets on
//! 127.0.0.1 (the client code is the one of `rtc.rs`): a listener made a speaker through Twirp
//! `UpdateParticipant` publishes at once, the npm `livekit-server-sdk`'s `mutePublishedTrack`
//! mutes it (remote unmute is refused), revoking unpublishes it, and every webhook (`room_started`, `participant_joined` once ACTIVE, `track_published`,
//! `track_unpublished`, `participant_left`, `room_finished`) arrives signed and verifies with
//! `livekit-api`'s `WebhookReceiver` and the npm one. Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::too_many_lines,
    dead_code,
    deprecated
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use livekit_api::access_token::{TokenVerifier, VideoGrants};
use livekit_api::webhooks::WebhookReceiver;
use livekit_protocol as lk;
use livekit_protocol::signal_response;
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_signaling::service::{ServiceConfig, Signaling};
use stoa_signaling::token::ApiKeys;
use stoa_signaling::webhook::{Notifier, WebhookConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::*;

/// One Twirp call in protobuf JSON; the status and the parsed answer.
async fn twirp(
    http: SocketAddr,
    method: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let exchange = async {
        let mut stream = TcpStream::connect(http).await.unwrap();
        let body = body.to_string();
        let head = format!(
            "POST /twirp/livekit.RoomService/{method} HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&raw[..split])
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, serde_json::from_slice(&raw[split + 4..]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_drives_live_media_and_webhooks() {
    let (url, mut hooks) = receiver().await;
    let notifier = Notifier::start(WebhookConfig {
        urls: vec![url],
        api_key: KEY.into(),
        api_secret: SECRET.into(),
    });
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(0),
        shards: 1,
    };
    let (_engine, sfu, events) = SfuRuntime::start(&settings, [3; 32]).unwrap();
    let config = ServiceConfig {
        webhooks: Some(notifier),
        ..ServiceConfig::default()
    };
    let signaling = Signaling::start(config, sfu, events);
    let keys = Arc::new(ApiKeys::new([(KEY.to_owned(), SECRET.to_owned())]));
    let app = stoa_signaling::ws::router(signaling.clone(), keys.clone())
        .merge(stoa_signaling::twirp::router(signaling, keys));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let admin = mint(
        "",
        VideoGrants {
            room_create: true,
            room_admin: true,
            room: "live".into(),
            ..Default::default()
        },
    );
    // A listener: may not publish.
    let listener_grants = VideoGrants {
        room_join: true,
        room: "live".into(),
        can_publish: Some(false),
        can_subscribe: Some(true),
        can_publish_data: Some(true),
        ..Default::default()
    };
    let mut a = Client::join(http, &mint("alice", listener_grants)).await;
    eventually("alice connected", || a.subscriber.lock().unwrap().connected).await;

    // Made a speaker through the server API: publishes at once, without reconnecting.
    let (status, p) = twirp(
        http,
        "UpdateParticipant",
        &admin,
        serde_json::json!({"room": "live", "identity": "alice",
            "permission": {"canPublish": true, "canSubscribe": true, "canPublishData": true}}),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    let track = a.publish().await;
    eventually("alice's media published", || {
        a.publisher.lock().unwrap().connected
    })
    .await;
    send_audio(&a, 20).await;
    let (_, list) = twirp(
        http,
        "ListParticipants",
        &admin,
        serde_json::json!({"room": "live"}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    let mut published = list["participants"][0]["tracks"][0]["sid"] == track.as_str();
    while !published && Instant::now() < deadline {
        send_audio(&a, 5).await;
        let (_, list) = twirp(
            http,
            "ListParticipants",
            &admin,
            serde_json::json!({"room": "live"}),
        )
        .await;
        published = list["participants"][0]["tracks"][0]["sid"] == track.as_str();
    }
    assert!(published, "the new speaker's track is published");

    // The npm RoomServiceClient mutes it (and may not unmute it); the client is told.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("browser");
    assert!(
        dir.join("node_modules/livekit-server-sdk").exists(),
        "tests/browser/node_modules is missing: run ./test.sh (it runs npm ci there)"
    );
    let args = vec![
        "mute".to_owned(),
        format!("http://{http}"),
        KEY.into(),
        SECRET.into(),
        "live".into(),
        "alice".into(),
        track.clone(),
    ];
    let (ok, text) = node(dir.join("server_sdk.mjs"), args).await;
    assert!(ok, "npm RoomServiceClient mute failed:\n{text}");
    let (_, p) = twirp(
        http,
        "GetParticipant",
        &admin,
        serde_json::json!({"room": "live", "identity": "alice"}),
    )
    .await;
    assert_eq!(p["tracks"][0]["muted"], true, "{p}");
    a.wait_for("mute request", |m| match m {
        signal_response::Message::Mute(m) => (m.muted && m.sid == track).then_some(()),
        _ => None,
    })
    .await;

    // Revoked: the track is unpublished.
    let (status, _) = twirp(
        http,
        "UpdateParticipant",
        &admin,
        serde_json::json!({"room": "live", "identity": "alice",
            "permission": {"canPublish": false, "canSubscribe": true}}),
    )
    .await;
    assert_eq!(status, 200);
    a.wait_for("track unpublished", |m| match m {
        signal_response::Message::TrackUnpublished(t) => (t.track_sid == track).then_some(()),
        _ => None,
    })
    .await;

    // RemoveParticipant disconnects; DeleteRoom closes the room.
    let (status, _) = twirp(
        http,
        "RemoveParticipant",
        &admin,
        serde_json::json!({"room": "live", "identity": "alice"}),
    )
    .await;
    assert_eq!(status, 200);
    let leave = a
        .wait_for("leave", |m| match m {
            signal_response::Message::Leave(l) => Some(l.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        leave.reason,
        lk::DisconnectReason::ParticipantRemoved as i32
    );
    let (status, _) = twirp(
        http,
        "DeleteRoom",
        &admin,
        serde_json::json!({"room": "live"}),
    )
    .await;
    assert_eq!(status, 200);

    let receiver = WebhookReceiver::new(TokenVerifier::with_api_key(KEY, SECRET));
    let mut names = Vec::new();
    let mut received: Vec<(String, String)> = Vec::new();
    while names.last().map(String::as_str) != Some("room_finished") {
        let (auth, body) = tokio::time::timeout(WAIT, hooks.recv())
            .await
            .unwrap_or_else(|_| panic!("webhooks so far: {names:?}"))
            .unwrap();
        let event = receiver.receive(&body, &auth).expect("signed webhook");
        received.push((auth.clone(), body.clone()));
        assert!(event.id.starts_with("EV_"));
        assert_eq!(event.room.as_ref().unwrap().name, "live");
        match event.event.as_str() {
            "participant_joined" => {
                let p = event.participant.as_ref().unwrap();
                assert_eq!(p.identity, "alice");
                assert_eq!(p.state, lk::participant_info::State::Active as i32);
            }
            "track_published" | "track_unpublished" => {
                assert_eq!(event.track.as_ref().unwrap().sid, track);
                assert_eq!(event.participant.as_ref().unwrap().identity, "alice");
            }
            _ => {}
        }
        names.push(event.event);
    }
    assert_eq!(
        names,
        [
            "room_started",
            "participant_joined",
            "track_published",
            "track_unpublished",
            "participant_left",
            "room_finished"
        ]
    );

    // The npm WebhookReceiver accepts every one of them too.
    let file =
        std::env::temp_dir().join(format!("stoa-media-webhooks-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(&received).unwrap()).unwrap();
    let args = vec![
        "webhooks".to_owned(),
        file.display().to_string(),
        KEY.into(),
        SECRET.into(),
    ];
    let (ok, text) = node(dir.join("server_sdk.mjs"), args).await;
    let _ = std::fs::remove_file(&file);
    assert!(ok, "npm WebhookReceiver refused a webhook:\n{text}");
    assert!(
        text.contains("participant_joined") && text.contains("track_unpublished"),
        "{text}"
    );
}

/// `node SCRIPT ARGS…`, bounded; success and the output.
async fn node(script: std::path::PathBuf, args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .args(["--kill-after=5", "60", "node"])
            .arg(script)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    })
    .await
    .unwrap()
}
