//! The JoinResponse carries the TURN servers the embedding binary configured, with credentials
//! minted for the joining participant's identity; without them it carries none.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::sync::Arc;

use livekit_protocol::signal_response;
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_signaling::service::{ServiceConfig, Signaling, TurnCredentials, TurnServers};
use stoa_signaling::token::ApiKeys;

mod common;
use common::{KEY, SECRET, connect_ws, grants, mint, next_response};

/// `/rtc` on 127.0.0.1 with `config`; returns the HTTP address (the engine lives as long as
/// the returned guard).
async fn serve(config: ServiceConfig) -> (std::net::SocketAddr, SfuRuntime) {
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(0),
        shards: 1,
    };
    let (engine, sfu, events) = SfuRuntime::start(&settings, [3; 32]).unwrap();
    let signaling = Signaling::start(config, sfu, events);
    let keys = Arc::new(ApiKeys::new([(KEY.to_owned(), SECRET.to_owned())]));
    let app = stoa_signaling::ws::router(signaling, keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (http, engine)
}

async fn join_ice_servers(
    http: std::net::SocketAddr,
    identity: &str,
) -> Vec<livekit_protocol::IceServer> {
    let mut ws = connect_ws(http, &mint(identity, grants("room", false)))
        .await
        .unwrap();
    match next_response(&mut ws).await {
        Some(signal_response::Message::Join(join)) => join.ice_servers,
        other => panic!("expected a JoinResponse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_response_carries_minted_turn_credentials() {
    let turn = TurnServers(Arc::new(|identity: &str| TurnCredentials {
        urls: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        username: format!("1800000000:{identity}"),
        credential: format!("password-of-{identity}"),
    }));
    let (http, _engine) = serve(ServiceConfig {
        turn: Some(turn),
        ..ServiceConfig::default()
    })
    .await;
    let servers = join_ice_servers(http, "alice").await;
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].urls, ["turn:127.0.0.1:3478?transport=udp"]);
    assert_eq!(servers[0].username, "1800000000:alice");
    assert_eq!(servers[0].credential, "password-of-alice");

    let (http, _engine) = serve(ServiceConfig::default()).await;
    assert!(join_ice_servers(http, "bob").await.is_empty());
}
