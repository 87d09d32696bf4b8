//! A relay link to a `wss://` origin, over real sockets on 127.0.0.1: the origin's signaling
//! service sits behind a TLS front (as behind a TLS-terminating proxy or Stoa's own HTTPS
//! listener) whose certificate a private CA issued for 127.0.0.1. An edge that trusts the CA
//! links to `wss://` and its listener hears the origin's speaker through the relay; an edge
//! without the CA (the system's store only) does not accept the certificate and relays
//! nothing. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, dead_code, deprecated)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use livekit_protocol::signal_response;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use stoa_signaling::service::{RelayAuth, ServiceConfig};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

mod common;
use common::*;

/// A private CA's certificate, and a server certificate it issued for 127.0.0.1 with its key.
fn certificates() -> (
    CertificateDer<'static>,
    CertificateDer<'static>,
    PrivateKeyDer<'static>,
) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (
        ca_cert.der().clone(),
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS listener on 127.0.0.1 that passes every connection's bytes on to `to`.
async fn tls_front(
    to: SocketAddr,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> SocketAddr {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn edge_config(node: &str, tls: Option<Arc<ClientConfig>>) -> ServiceConfig {
    ServiceConfig {
        relay: Some(RelayAuth {
            node: node.into(),
            api_key: KEY.into(),
            secret: SECRET.into(),
            ttl: Duration::from_secs(60),
            tls,
            url: None,
            nodes: Default::default(),
        }),
        ..ServiceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_relays_from_a_wss_origin_whose_certificate_it_trusts() {
    let (ca, cert, key) = certificates();
    let origin = server_seeded(ServiceConfig::default(), [7; 32]).await;
    let front = tls_front(origin.http, cert, key).await;
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let trusting = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let edge = server_seeded(edge_config("edge-tls", Some(Arc::new(trusting))), [8; 32]).await;
    // Trusting only the system's store: the private CA's certificate is refused.
    let doubting = server_seeded(edge_config("edge-doubt", None), [9; 32]).await;
    let room = "secure";

    let mut alice = Client::join(origin.http, &mint("alice", grants(room, true))).await;
    alice.publish().await;
    eventually("alice's publisher connection", || {
        alice.publisher.lock().unwrap().connected
    })
    .await;
    let mut bob = Client::join(edge.http, &mint("bob", grants(room, false))).await;
    let mut carl = Client::join(doubting.http, &mint("carl", grants(room, false))).await;
    eventually("the listeners' connections", || {
        bob.subscriber.lock().unwrap().connected && carl.subscriber.lock().unwrap().connected
    })
    .await;

    let url = format!("wss://{front}");
    edge.signaling.relay_from(room, &url).await.unwrap();
    doubting.signaling.relay_from(room, &url).await.unwrap();

    bob.wait_for("alice mirrored on the edge, through wss", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .find(|p| p.identity == "alice" && !p.tracks.is_empty())
            .map(|_| ()),
        _ => None,
    })
    .await;
    bob.drain_for(Duration::from_millis(300)).await;
    let before = alice.publisher.lock().unwrap().sent;
    send_audio(&alice, 100).await;
    eventually("bob hears alice through the relay", || {
        bob.heard().iter().filter(|h| h.1 >= before).count() >= 90
    })
    .await;

    // The edge that does not trust the CA never saw alice, and carl heard nothing.
    carl.drain_for(Duration::from_millis(500)).await;
    assert!(
        !carl.saw_participant(&alice.sid()),
        "an untrusted certificate must not carry the link"
    );
    assert!(carl.heard().is_empty());
}
