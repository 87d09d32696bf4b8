//! Fuzzes the TURN relay core with what clients and peers can send. Each input is a sequence of
//! steps fed to one `Server` that already holds an allocation with a channel to a permitted
//! peer, so the fuzzer reaches the data paths at once. Steps are `[kind: u8][len: u8][len bytes]`:
//!
//! - kind % 5 == 0: raw bytes from the allocation's client (STUN, ChannelData or garbage);
//! - 1: raw bytes from another client;
//! - 2: a datagram from a peer to the relay port (permitted or not, by the first byte);
//! - 3: an authenticated request: the bytes choose the method and attributes
//!   (`[type: u16][len: u8][value]…`), and the harness adds valid credentials, since no fuzzer
//!   forges an HMAC;
//! - 4: time passes (the byte count, in seconds).
//!
//! The core must never panic, and its tables must stay within their bounds.
#![no_main]

#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stoa_turn::proto::credentials::long_term_key;
use stoa_turn::proto::message::{attr, Builder, Class, Fingerprint, Message, Method, TransactionId};
use stoa_turn::proto::{
    Client, Config, Credentials, Now, PeerPolicy, PeerRule, PublicPeers, Quotas, RateLimit,
    Secret, Server, Transport,
};

const UNIX: u64 = 1_800_000_000;
const REALM: &str = "fuzz";

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn config() -> Config {
    Config {
        realm: REALM.into(),
        secret: Secret::new("fuzz-secret"),
        relay_ip: "192.0.2.10".parse().expect("ip"),
        relay_ports: 50100..=50103,
        policy: PeerPolicy {
            allow: vec!["192.0.2.10:7882".parse::<PeerRule>().expect("rule")],
            public: PublicPeers::Refuse,
        },
        quotas: Quotas { per_user: 2, total: 3 },
        rate_limit: RateLimit { burst: 8, per_second: 4 },
        max_lifetime: Duration::from_secs(3600),
        nonce_key: [5; 16],
    }
}

struct Session {
    creds: Credentials,
    nonce: Vec<u8>,
    key: [u8; 16],
}

fn signed(s: &Session, method: Method, txid: TransactionId, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut builder = Builder::new(method, Class::Request, txid);
    for (kind, value) in attrs {
        builder = builder.attribute(*kind, value);
    }
    builder
        .attribute(attr::USERNAME, s.creds.username.as_bytes())
        .attribute(attr::REALM, REALM.as_bytes())
        .attribute(attr::NONCE, &s.nonce)
        .finish(Some(&s.key), Fingerprint::Add)
}

fn drain(server: &mut Server) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(command) = server.poll_command() {
        if let stoa_turn::proto::Command::SendToClient { payload, .. } = command {
            out.push(payload);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut now = Now { instant: start(), unix_secs: UNIX };
    let mut server = Server::new(config());
    let client = Client { transport: Transport::Udp, addr: "198.51.100.1:4000".parse().expect("addr") };
    let creds = Credentials::mint(&Secret::new("fuzz-secret"), "alice", UNIX + 600);
    let key = long_term_key(&creds.username, REALM, &creds.password);

    // Learn the nonce, allocate, bind a channel to the permitted peer.
    let hello = Builder::new(Method::Allocate, Class::Request, TransactionId([1; 12]))
        .attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .finish(None, Fingerprint::Omit);
    server.handle_client_input(now, client, &hello);
    let challenge = drain(&mut server).pop().expect("a 401");
    let nonce = Message::parse(&challenge).expect("parses").attribute(attr::NONCE).expect("nonce").to_vec();
    let session = Session { creds, nonce, key };
    let allocate = signed(&session, Method::Allocate, TransactionId([2; 12]), &[(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])]);
    server.handle_client_input(now, client, &allocate);
    drain(&mut server);
    let sfu: SocketAddr = "192.0.2.10:7882".parse().expect("addr");
    let txid = TransactionId([3; 12]);
    let peer = Builder::new(Method::Send, Class::Indication, txid)
        .xor_address(attr::XOR_PEER_ADDRESS, sfu)
        .finish(None, Fingerprint::Omit);
    let peer_value = Message::parse(&peer).expect("parses").attribute(attr::XOR_PEER_ADDRESS).expect("peer").to_vec();
    let bind = signed(&session, Method::ChannelBind, txid, &[(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0]), (attr::XOR_PEER_ADDRESS, &peer_value)]);
    server.handle_client_input(now, client, &bind);
    drain(&mut server);
    assert_eq!(server.num_allocations(), 1);

    let mut rest = data;
    let mut txid_counter = 10u8;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        match kind % 5 {
            0 => server.handle_client_input(now, client, bytes),
            1 => {
                let other = Client { transport: Transport::Tcp, addr: "198.51.100.2:1".parse().expect("addr") };
                server.handle_client_input(now, other, bytes);
            }
            2 => {
                let from = if bytes.first().is_some_and(|b| b % 2 == 0) { sfu } else { "203.0.113.5:9".parse().expect("addr") };
                server.handle_peer_input(now.instant, 50100, from, bytes);
            }
            3 => {
                let method = match bytes.first().map(|b| b % 4) {
                    Some(0) => Method::Allocate,
                    Some(1) => Method::Refresh,
                    Some(2) => Method::CreatePermission,
                    _ => Method::ChannelBind,
                };
                let mut attrs = Vec::new();
                let mut body = bytes.get(1..).unwrap_or_default();
                while let [t0, t1, l, more @ ..] = body {
                    let l = usize::from(*l).min(more.len());
                    attrs.push((u16::from_be_bytes([*t0, *t1]), &more[..l]));
                    body = &more[l..];
                }
                txid_counter = txid_counter.wrapping_add(1);
                let request = signed(&session, method, TransactionId([txid_counter; 12]), &attrs);
                server.handle_client_input(now, client, &request);
            }
            _ => {
                let seconds = u64::try_from(bytes.len()).unwrap_or(0) * 10;
                now.instant += Duration::from_secs(seconds);
                now.unix_secs += seconds;
                server.handle_timeout(now.instant);
            }
        }
        drain(&mut server);
        assert!(server.num_allocations() <= 3);
    }
});
