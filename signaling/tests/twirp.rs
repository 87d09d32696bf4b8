//! The Twirp `RoomService` and webhooks over real HTTP on 127.0.0.1: both encodings, grants,
//! Twirp errors, effects on a live WebSocket session, and signed webhooks verified with
//! `livekit-api`'s `WebhookReceiver`. Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::too_many_lines
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use livekit_api::access_token::{TokenVerifier, VideoGrants};
use livekit_api::webhooks::WebhookReceiver;
use livekit_protocol as lk;
use livekit_protocol::signal_response;
use prost::Message as _;
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_signaling::service::{ServiceConfig, Signaling};
use stoa_signaling::token::{self, ApiKeys};
use stoa_signaling::webhook::{Notifier, WebhookConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const KEY: &str = "devkey";
const SECRET: &str = "secret";
const WAIT: Duration = Duration::from_secs(10);

mod common;
use common::receiver;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Server {
    http: SocketAddr,
    _engine: SfuRuntime,
}

async fn server(webhooks: Option<Notifier>) -> Server {
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(0),
        shards: 1,
    };
    let (engine, sfu, events) = SfuRuntime::start(&settings, [2; 32]).unwrap();
    let config = ServiceConfig {
        webhooks,
        ..ServiceConfig::default()
    };
    let signaling = Signaling::start(config, sfu, events);
    let keys = Arc::new(ApiKeys::new([(KEY.to_owned(), SECRET.to_owned())]));
    let app = stoa_signaling::ws::router(signaling.clone(), keys.clone())
        .merge(stoa_signaling::twirp::router(signaling, keys));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        http,
        _engine: engine,
    }
}

fn mint(identity: &str, grants: VideoGrants) -> String {
    token::mint(
        KEY,
        SECRET,
        identity,
        None,
        grants,
        Duration::from_secs(600),
        now_unix(),
    )
    .unwrap()
}

fn admin_token(room: &str) -> String {
    mint(
        "",
        VideoGrants {
            room_create: true,
            room_list: true,
            room_admin: true,
            room: room.into(),
            ..Default::default()
        },
    )
}

struct HttpResponse {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// One HTTP/1.1 POST with `Connection: close`.
async fn post(
    http: SocketAddr,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> HttpResponse {
    let exchange = async {
        let mut stream = TcpStream::connect(http).await.unwrap();
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {http}\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(WAIT, exchange).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    HttpResponse {
        status,
        content_type,
        body,
    }
}

async fn twirp_json(
    http: SocketAddr,
    method: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = post(
        http,
        &format!("/twirp/livekit.RoomService/{method}"),
        Some(token),
        "application/json;charset=UTF-8",
        body.to_string().as_bytes(),
    )
    .await;
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

async fn twirp_proto<Req: prost::Message, Resp: prost::Message + Default>(
    http: SocketAddr,
    method: &str,
    token: &str,
    req: &Req,
) -> Resp {
    let r = post(
        http,
        &format!("/twirp/livekit.RoomService/{method}"),
        Some(token),
        "application/protobuf",
        &req.encode_to_vec(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.content_type, "application/protobuf");
    Resp::decode(r.body.as_slice()).unwrap()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn join(http: SocketAddr, room: &str, identity: &str) -> Ws {
    let token = mint(
        identity,
        VideoGrants {
            room_join: true,
            room: room.into(),
            can_publish: Some(false),
            can_subscribe: Some(true),
            ..Default::default()
        },
    );
    let url = format!("ws://{http}/rtc?access_token={token}&auto_subscribe=1&sdk=js&protocol=17");
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    let first = next(&mut ws).await;
    assert!(matches!(first, Some(signal_response::Message::Join(_))));
    ws
}

/// The next signal response, or `None` once the socket closed.
async fn next(ws: &mut Ws) -> Option<signal_response::Message> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match msg {
            Some(Ok(WsMessage::Binary(b))) => {
                return lk::SignalResponse::decode(b.as_ref()).unwrap().message;
            }
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Skips messages until one matches.
async fn wait_for<T>(ws: &mut Ws, f: impl Fn(&signal_response::Message) -> Option<T>) -> T {
    loop {
        let m = next(ws).await.expect("socket closed while waiting");
        if let Some(t) = f(&m) {
            return t;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_service_over_json() {
    let s = server(None).await;
    let token = admin_token("stage");

    // CreateRoom (idempotent), with settings.
    let (status, room) = twirp_json(
        s.http,
        "CreateRoom",
        &token,
        serde_json::json!({"name": "stage", "emptyTimeout": 60, "maxParticipants": 5, "metadata": "m1"}),
    )
    .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["name"], "stage");
    assert_eq!(room["emptyTimeout"], 60);
    assert_eq!(room["maxParticipants"], 5);
    assert_eq!(room["metadata"], "m1");
    let sid = room["sid"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("RM_"));
    let (_, again) = twirp_json(
        s.http,
        "CreateRoom",
        &token,
        serde_json::json!({"name": "stage"}),
    )
    .await;
    assert_eq!(again["sid"], sid.as_str());
    assert_eq!(again["maxParticipants"], 5);

    // ListRooms: all, and by name.
    twirp_json(
        s.http,
        "CreateRoom",
        &token,
        serde_json::json!({"name": "other"}),
    )
    .await;
    let (_, all) = twirp_json(s.http, "ListRooms", &token, serde_json::json!({})).await;
    assert_eq!(all["rooms"].as_array().unwrap().len(), 2);
    let (_, some) = twirp_json(
        s.http,
        "ListRooms",
        &token,
        serde_json::json!({"names": ["stage"]}),
    )
    .await;
    assert_eq!(some["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(some["rooms"][0]["name"], "stage");

    // A live participant.
    let mut ws = join(s.http, "stage", "alice").await;
    let (_, list) = twirp_json(
        s.http,
        "ListParticipants",
        &token,
        serde_json::json!({"room": "stage"}),
    )
    .await;
    assert_eq!(list["participants"][0]["identity"], "alice");
    let (status, p) = twirp_json(
        s.http,
        "GetParticipant",
        &token,
        serde_json::json!({"room": "stage", "identity": "alice"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(p["sid"].as_str().unwrap().starts_with("PA_"));

    // UpdateParticipant: effective on the live session.
    let (status, p) = twirp_json(
        s.http,
        "UpdateParticipant",
        &token,
        serde_json::json!({
            "room": "stage", "identity": "alice", "metadata": "speaker", "name": "Alice",
            "attributes": {"role": "speaker"},
            "permission": {"canPublish": true, "canSubscribe": true, "canPublishData": true}
        }),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["metadata"], "speaker");
    assert_eq!(p["name"], "Alice");
    assert_eq!(p["attributes"]["role"], "speaker");
    assert_eq!(p["permission"]["canPublish"], true);
    let seen = wait_for(&mut ws, |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .find(|p| p.identity == "alice" && p.metadata == "speaker")
            .cloned(),
        _ => None,
    })
    .await;
    assert!(seen.permission.unwrap().can_publish);

    // UpdateRoomMetadata reaches the client.
    let (status, room) = twirp_json(
        s.http,
        "UpdateRoomMetadata",
        &token,
        serde_json::json!({"room": "stage", "metadata": "m2"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(room["metadata"], "m2");
    wait_for(&mut ws, |m| match m {
        signal_response::Message::RoomUpdate(u) => {
            (u.room.as_ref()?.metadata == "m2").then_some(())
        }
        _ => None,
    })
    .await;

    // SendData and UpdateSubscriptions succeed (no media connection here to carry them).
    let (status, _) = twirp_json(
        s.http,
        "SendData",
        &token,
        serde_json::json!({"room": "stage", "data": "aGVsbG8=", "kind": "RELIABLE", "topic": "t"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = twirp_json(
        s.http,
        "UpdateSubscriptions",
        &token,
        serde_json::json!({"room": "stage", "identity": "alice", "trackSids": ["TR_x"], "subscribe": true}),
    )
    .await;
    assert_eq!(status, 200);

    // Remote unmute is refused, as LiveKit does without `enable_remote_unmute`.
    let (status, err) = twirp_json(
        s.http,
        "MutePublishedTrack",
        &token,
        serde_json::json!({"room": "stage", "identity": "alice", "trackSid": "TR_nope", "muted": false}),
    )
    .await;
    assert_eq!(status, 412);
    assert_eq!(err["code"], "failed_precondition");

    // MutePublishedTrack of an unknown track.
    let (status, err) = twirp_json(
        s.http,
        "MutePublishedTrack",
        &token,
        serde_json::json!({"room": "stage", "identity": "alice", "trackSid": "TR_nope", "muted": true}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["code"], "not_found");

    // RemoveParticipant: told to leave, then closed.
    let (status, _) = twirp_json(
        s.http,
        "RemoveParticipant",
        &token,
        serde_json::json!({"room": "stage", "identity": "alice"}),
    )
    .await;
    assert_eq!(status, 200);
    let leave = wait_for(&mut ws, |m| match m {
        signal_response::Message::Leave(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        leave.reason,
        lk::DisconnectReason::ParticipantRemoved as i32
    );
    let (status, err) = twirp_json(
        s.http,
        "GetParticipant",
        &token,
        serde_json::json!({"room": "stage", "identity": "alice"}),
    )
    .await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));

    // DeleteRoom disconnects everyone with ROOM_DELETED.
    let mut bob = join(s.http, "stage", "bob").await;
    let (status, _) = twirp_json(
        s.http,
        "DeleteRoom",
        &token,
        serde_json::json!({"room": "stage"}),
    )
    .await;
    assert_eq!(status, 200);
    let leave = wait_for(&mut bob, |m| match m {
        signal_response::Message::Leave(l) => Some(l.clone()),
        _ => None,
    })
    .await;
    assert_eq!(leave.reason, lk::DisconnectReason::RoomDeleted as i32);
    let (status, err) = twirp_json(
        s.http,
        "DeleteRoom",
        &token,
        serde_json::json!({"room": "stage"}),
    )
    .await;
    assert_eq!((status, err["code"].as_str()), (404, Some("not_found")));
    let (_, all) = twirp_json(s.http, "ListRooms", &token, serde_json::json!({})).await;
    assert_eq!(all["rooms"][0]["name"], "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_service_over_protobuf() {
    let s = server(None).await;
    let token = admin_token("pb");
    let room: lk::Room = twirp_proto(
        s.http,
        "CreateRoom",
        &token,
        &lk::CreateRoomRequest {
            name: "pb".into(),
            departure_timeout: 7,
            metadata: "x".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((room.name.as_str(), room.departure_timeout), ("pb", 7));
    let rooms: lk::ListRoomsResponse = twirp_proto(
        s.http,
        "ListRooms",
        &token,
        &lk::ListRoomsRequest::default(),
    )
    .await;
    assert_eq!(rooms.rooms.len(), 1);
    let _ws = join(s.http, "pb", "carol").await;
    let list: lk::ListParticipantsResponse = twirp_proto(
        s.http,
        "ListParticipants",
        &token,
        &lk::ListParticipantsRequest { room: "pb".into() },
    )
    .await;
    assert_eq!(list.participants[0].identity, "carol");
    let p: lk::ParticipantInfo = twirp_proto(
        s.http,
        "UpdateParticipant",
        &token,
        &lk::UpdateParticipantRequest {
            room: "pb".into(),
            identity: "carol".into(),
            metadata: "meta".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(p.metadata, "meta");
    let _: lk::DeleteRoomResponse = twirp_proto(
        s.http,
        "DeleteRoom",
        &token,
        &lk::DeleteRoomRequest { room: "pb".into() },
    )
    .await;
    let rooms: lk::ListRoomsResponse = twirp_proto(
        s.http,
        "ListRooms",
        &token,
        &lk::ListRoomsRequest::default(),
    )
    .await;
    assert!(rooms.rooms.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_service_errors() {
    let s = server(None).await;
    let path = "/twirp/livekit.RoomService/ListRooms";

    // No token, a bad token.
    let r = post(s.http, path, None, "application/json", b"{}").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.content_type, "application/json");
    let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(e["code"], "unauthenticated");
    assert!(e["msg"].is_string() && e["meta"].is_object());
    let r = post(s.http, path, Some("not.a.jwt"), "application/json", b"{}").await;
    assert_eq!(r.status, 401);
    let wrong_secret = token::mint(
        KEY,
        "other",
        "",
        None,
        VideoGrants {
            room_list: true,
            ..Default::default()
        },
        Duration::from_secs(60),
        now_unix(),
    )
    .unwrap();
    let r = post(s.http, path, Some(&wrong_secret), "application/json", b"{}").await;
    assert_eq!(r.status, 401);

    // Valid tokens without the grant.
    let join_only = mint(
        "x",
        VideoGrants {
            room_join: true,
            room: "r".into(),
            ..Default::default()
        },
    );
    for method in ["ListRooms", "CreateRoom", "DeleteRoom", "ListParticipants"] {
        let (status, e) = twirp_json(
            s.http,
            method,
            &join_only,
            serde_json::json!({"name": "r", "room": "r"}),
        )
        .await;
        assert_eq!(
            (status, e["code"].as_str()),
            (403, Some("permission_denied")),
            "{method}"
        );
    }
    // roomAdmin for another room.
    let admin_a = admin_token("a");
    let (status, e) = twirp_json(
        s.http,
        "ListParticipants",
        &admin_a,
        serde_json::json!({"room": "b"}),
    )
    .await;
    assert_eq!(
        (status, e["code"].as_str()),
        (403, Some("permission_denied"))
    );

    // Malformed bodies, in both encodings.
    let r = post(
        s.http,
        "/twirp/livekit.RoomService/CreateRoom",
        Some(&admin_a),
        "application/json",
        b"{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    let e: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(e["code"], "malformed");
    let r = post(
        s.http,
        "/twirp/livekit.RoomService/CreateRoom",
        Some(&admin_a),
        "application/protobuf",
        &[0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.content_type, "application/json");
    let r = post(
        s.http,
        "/twirp/livekit.RoomService/CreateRoom",
        Some(&admin_a),
        "text/plain",
        b"hi",
    )
    .await;
    assert_eq!(r.status, 400);
    // Missing name.
    let (status, e) = twirp_json(s.http, "CreateRoom", &admin_a, serde_json::json!({})).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (400, Some("invalid_argument"))
    );

    // Unknown rooms and participants.
    let (status, e) = twirp_json(
        s.http,
        "ListParticipants",
        &admin_a,
        serde_json::json!({"room": "a"}),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (404, Some("not_found")));
    let (status, e) = twirp_json(
        s.http,
        "UpdateRoomMetadata",
        &admin_a,
        serde_json::json!({"room": "a", "metadata": "x"}),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (404, Some("not_found")));

    // Unknown method.
    let (status, e) = twirp_json(
        s.http,
        "ForwardParticipant",
        &admin_a,
        serde_json::json!({}),
    )
    .await;
    assert_eq!((status, e["code"].as_str()), (501, Some("unimplemented")));

    // A body over the limit.
    let big = vec![b' '; stoa_signaling::twirp::MAX_BODY + 10];
    let r = post(
        s.http,
        "/twirp/livekit.RoomService/ListRooms",
        Some(&admin_a),
        "application/json",
        &big,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.content_type, "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_and_verified() {
    let (url, mut hooks) = receiver().await;
    let notifier = Notifier::start(WebhookConfig {
        urls: vec![url],
        api_key: KEY.into(),
        api_secret: SECRET.into(),
    });
    let s = server(Some(notifier.clone())).await;
    let token = admin_token("hooked");
    twirp_json(
        s.http,
        "CreateRoom",
        &token,
        serde_json::json!({"name": "hooked"}),
    )
    .await;
    let ws = join(s.http, "hooked", "dave").await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    twirp_json(
        s.http,
        "DeleteRoom",
        &token,
        serde_json::json!({"room": "hooked"}),
    )
    .await;

    let receiver = WebhookReceiver::new(TokenVerifier::with_api_key(KEY, SECRET));
    let mut events = Vec::new();
    while events.len() < 3 {
        let (auth, body) = tokio::time::timeout(WAIT, hooks.recv())
            .await
            .expect("webhook in time")
            .unwrap();
        assert!(!auth.starts_with("Bearer"), "no Bearer prefix");
        let event = receiver.receive(&body, &auth).expect("valid signature");
        assert!(event.id.starts_with("EV_"), "{}", event.id);
        assert!(event.created_at > 0);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json.get("createdAt").is_some(), "camelCase: {body}");
        // A tampered body is rejected.
        let tampered = body.replace("hooked", "hacked");
        assert!(receiver.receive(&tampered, &auth).is_err());
        events.push(event);
    }
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    // Dave never became ACTIVE (no media connection): LiveKit reports an aborted connection.
    assert_eq!(
        names,
        [
            "room_started",
            "participant_connection_aborted",
            "room_finished"
        ]
    );
    assert_eq!(events[0].room.as_ref().unwrap().name, "hooked");
    assert_eq!(events[1].participant.as_ref().unwrap().identity, "dave");
    assert_eq!(
        notifier
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// `tests/browser` in the workspace, where `npm ci` installed `livekit-server-sdk`.
fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("browser")
}

/// Runs `program args…` under `timeout` (bounded), returning (success, stdout + stderr).
async fn run_bounded(program: &str, args: Vec<String>) -> (bool, String) {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("timeout")
            .args(["--kill-after=5", "90", &program])
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

/// Collects a live session's messages until it closes.
fn record(mut ws: Ws) -> mpsc::UnboundedReceiver<signal_response::Message> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
                Ok(Some(Ok(WsMessage::Binary(b)))) => {
                    if let Ok(r) = lk::SignalResponse::decode(b.as_ref())
                        && let Some(m) = r.message
                        && tx.send(m).is_err()
                    {
                        return;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_server_sdk() {
    let script = browser_dir().join("server_sdk.mjs");
    let sdk = browser_dir().join("node_modules/livekit-server-sdk/package.json");
    assert!(
        sdk.exists(),
        "{} is missing: run ./test.sh (it runs npm ci in tests/browser)",
        sdk.display()
    );
    let (url, mut hooks) = receiver().await;
    let notifier = Notifier::start(WebhookConfig {
        urls: vec![url],
        api_key: KEY.into(),
        api_secret: SECRET.into(),
    });
    let s = server(Some(notifier)).await;
    let mut alice = record(join(s.http, "sdk-room", "alice").await);

    let (ok, out) = run_bounded(
        "node",
        vec![
            script.display().to_string(),
            "rooms".into(),
            format!("http://{}", s.http),
            KEY.into(),
            SECRET.into(),
            "sdk-room".into(),
            "alice".into(),
        ],
    )
    .await;
    eprintln!("{out}");
    assert!(
        ok,
        "livekit-server-sdk RoomServiceClient run failed:\n{out}"
    );

    // The effects on the live session, in order.
    let mut speaker = false;
    let mut room_meta = false;
    let leave = loop {
        let m = tokio::time::timeout(WAIT, alice.recv())
            .await
            .unwrap()
            .expect("session closed before its leave");
        match m {
            signal_response::Message::Update(u) => {
                speaker |= u.participants.iter().any(|p| {
                    p.identity == "alice"
                        && p.metadata == "speaker"
                        && p.permission.as_ref().is_some_and(|x| x.can_publish)
                });
            }
            signal_response::Message::RoomUpdate(u) => {
                room_meta |= u.room.is_some_and(|r| r.metadata == "room-meta");
            }
            signal_response::Message::Leave(l) => break l,
            _ => {}
        }
    };
    assert!(speaker, "UpdateParticipant reached the live session");
    assert!(room_meta, "UpdateRoomMetadata reached the live session");
    assert_eq!(
        leave.reason,
        lk::DisconnectReason::ParticipantRemoved as i32
    );

    // Every webhook sent is accepted by the npm WebhookReceiver.
    let mut received: Vec<(String, String)> = Vec::new();
    let mut finished = 0;
    while finished < 2 {
        let (auth, body) = tokio::time::timeout(WAIT, hooks.recv())
            .await
            .expect("webhooks in time")
            .unwrap();
        finished += usize::from(body.contains("room_finished"));
        received.push((auth, body));
    }
    let file = std::env::temp_dir().join(format!("stoa-webhooks-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec(&received).unwrap()).unwrap();
    let (ok, out) = run_bounded(
        "node",
        vec![
            script.display().to_string(),
            "webhooks".into(),
            file.display().to_string(),
            KEY.into(),
            SECRET.into(),
        ],
    )
    .await;
    let _ = std::fs::remove_file(&file);
    eprintln!("{out}");
    assert!(ok, "livekit-server-sdk WebhookReceiver run failed:\n{out}");
    for name in [
        "room_started",
        "participant_connection_aborted",
        "room_finished",
    ] {
        assert!(out.contains(&format!("\"{name}\"")), "no {name} in {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pypi_livekit_api() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("python");
    let python = dir.join(".venv").join("bin").join("python");
    assert!(
        python.exists(),
        "{} is missing: run ./test.sh (it installs tests/python/requirements.txt there)",
        python.display()
    );
    let s = server(None).await;
    let mut bob = record(join(s.http, "py-live", "bob").await);
    let (ok, out) = run_bounded(
        &python.display().to_string(),
        vec![
            dir.join("livekit_api_test.py").display().to_string(),
            format!("http://{}", s.http),
            KEY.into(),
            SECRET.into(),
            "py-live".into(),
            "bob".into(),
        ],
    )
    .await;
    eprintln!("{out}");
    assert!(ok, "livekit-api (PyPI) run failed:\n{out}");
    let leave = loop {
        let m = tokio::time::timeout(WAIT, bob.recv())
            .await
            .unwrap()
            .expect("session closed before its leave");
        if let signal_response::Message::Leave(l) = m {
            break l;
        }
    };
    assert_eq!(
        leave.reason,
        lk::DisconnectReason::ParticipantRemoved as i32
    );
}
