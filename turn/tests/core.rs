//! The sans-IO relay core driven by a scripted client: allocation, permissions, channels,
//! relaying both ways, credentials, policy, quotas, rate limit, lifetimes, and garbage input.
//! Time is virtual; nothing here touches a socket.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "test helpers unwrap; tests pick an arbitrary start instant"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stoa_turn::proto::message::{
    Builder, ChannelData, Class, Fingerprint, Message, Method, TransactionId, attr,
    decode_xor_address,
};
use stoa_turn::proto::{
    Client, Command, Config, Credentials, Now, PeerPolicy, PeerRule, PublicPeers, Quotas,
    RateLimit, Secret, Server, Transport,
};

const UNIX: u64 = 1_800_000_000;
const REALM: &str = "stoa.test";

fn config() -> Config {
    Config {
        realm: REALM.into(),
        secret: Secret::new("s3cret"),
        relay_ip: "192.0.2.10".parse().unwrap(),
        relay_ports: 50100..=50103,
        policy: PeerPolicy {
            allow: vec!["192.0.2.10:7882".parse::<PeerRule>().unwrap()],
            public: PublicPeers::Refuse,
        },
        quotas: Quotas {
            per_user: 2,
            total: 3,
        },
        rate_limit: RateLimit {
            burst: 100,
            per_second: 100,
        },
        max_lifetime: Duration::from_secs(3600),
        nonce_key: [9; 16],
    }
}

/// A scripted TURN client against one server.
struct Harness {
    server: Server,
    start: Instant,
    elapsed: Duration,
    next_txid: u8,
}

struct Session {
    client: Client,
    username: String,
    password: String,
    nonce: Vec<u8>,
}

impl Harness {
    fn new(config: Config) -> Self {
        Self {
            server: Server::new(config),
            start: Instant::now(),
            elapsed: Duration::ZERO,
            next_txid: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            instant: self.start + self.elapsed,
            unix_secs: UNIX + self.elapsed.as_secs(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.elapsed += by;
        let now = self.now().instant;
        self.server.handle_timeout(now);
    }

    fn txid(&mut self) -> TransactionId {
        self.next_txid += 1;
        TransactionId([self.next_txid; 12])
    }

    /// Feeds bytes from `client`; returns everything the server wants sent.
    fn input(&mut self, client: Client, bytes: &[u8]) -> Vec<Command> {
        let now = self.now();
        self.server.handle_client_input(now, client, bytes);
        std::iter::from_fn(|| self.server.poll_command()).collect()
    }

    /// Feeds bytes and expects exactly one reply to the client.
    fn request(&mut self, client: Client, bytes: &[u8]) -> Vec<u8> {
        match self.input(client, bytes).as_slice() {
            [Command::SendToClient { to, payload }] if *to == client => payload.clone(),
            other => panic!("expected one reply, got {other:?}"),
        }
    }

    fn session(&mut self, client: Client, identity: &str, expires: u64) -> Session {
        let creds = Credentials::mint(&Secret::new("s3cret"), identity, expires);
        self.session_with(client, creds)
    }

    /// Learns the nonce with an unauthenticated Allocate.
    fn session_with(&mut self, client: Client, creds: Credentials) -> Session {
        let txid = self.txid();
        let request = Builder::new(Method::Allocate, Class::Request, txid)
            .attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .finish(None, Fingerprint::Add);
        let reply = self.request(client, &request);
        let reply = Message::parse(&reply).unwrap();
        assert_eq!(error_code(&reply), Some(401));
        assert_eq!(reply.attribute(attr::REALM), Some(REALM.as_bytes()));
        Session {
            client,
            username: creds.username,
            password: creds.password,
            nonce: reply.attribute(attr::NONCE).unwrap().to_vec(),
        }
    }

    /// Sends an authenticated request with `attrs`; returns the parsed reply bytes.
    fn authed(&mut self, s: &Session, method: Method, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let txid = self.txid();
        let bytes = signed(s, method, txid, attrs);
        self.request(s.client, &bytes)
    }
}

fn signed(s: &Session, method: Method, txid: TransactionId, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let key = stoa_turn::proto::credentials::long_term_key(&s.username, REALM, &s.password);
    let mut builder = Builder::new(method, Class::Request, txid);
    for (kind, value) in attrs {
        builder = builder.attribute(*kind, value);
    }
    builder
        .attribute(attr::USERNAME, s.username.as_bytes())
        .attribute(attr::REALM, REALM.as_bytes())
        .attribute(attr::NONCE, &s.nonce)
        .finish(Some(&key), Fingerprint::Add)
}

fn key(s: &Session) -> [u8; 16] {
    stoa_turn::proto::credentials::long_term_key(&s.username, REALM, &s.password)
}

fn error_code(message: &Message<'_>) -> Option<u16> {
    let value = message.attribute(attr::ERROR_CODE)?;
    Some(u16::from(value[2]) * 100 + u16::from(value[3]))
}

/// The XOR-PEER-ADDRESS value for `addr` (built through a message to reuse the encoder).
fn xor_peer(addr: SocketAddr, txid: TransactionId) -> Vec<u8> {
    let bytes = Builder::new(Method::Send, Class::Indication, txid)
        .xor_address(attr::XOR_PEER_ADDRESS, addr)
        .finish(None, Fingerprint::Omit);
    Message::parse(&bytes)
        .unwrap()
        .attribute(attr::XOR_PEER_ADDRESS)
        .unwrap()
        .to_vec()
}

fn udp(addr: &str) -> Client {
    Client {
        transport: Transport::Udp,
        addr: addr.parse().unwrap(),
    }
}

fn allocate(h: &mut Harness, s: &Session) -> Vec<u8> {
    h.authed(
        s,
        Method::Allocate,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    )
}

/// Allocates and returns the relayed address.
fn allocated(h: &mut Harness, s: &Session) -> SocketAddr {
    let reply = allocate(h, s);
    let reply = Message::parse(&reply).unwrap();
    assert_eq!(reply.class, Class::Success, "{:?}", error_code(&reply));
    assert!(reply.verify_integrity(&key(s)));
    decode_xor_address(
        reply.attribute(attr::XOR_RELAYED_ADDRESS).unwrap(),
        &reply.transaction,
    )
    .unwrap()
}

/// Sends a request whose peer attribute is encoded with the request's own transaction id.
fn with_peer(
    h: &mut Harness,
    s: &Session,
    method: Method,
    peer: SocketAddr,
    extra: &[(u16, Vec<u8>)],
) -> u16 {
    let txid = h.txid();
    let mut attrs = extra.to_vec();
    attrs.push((attr::XOR_PEER_ADDRESS, xor_peer(peer, txid)));
    let bytes = signed(s, method, txid, &attrs);
    let reply = h.request(s.client, &bytes);
    let reply = Message::parse(&reply).unwrap();
    assert!(reply.verify_integrity(&key(s)));
    error_code(&reply).unwrap_or(200)
}

#[test]
fn relays_both_ways_through_permissions_and_channels() {
    let mut h = Harness::new(config());
    let s = h.session(udp("198.51.100.1:40000"), "alice", UNIX + 600);
    let relayed = allocated(&mut h, &s);
    assert_eq!(relayed.ip().to_string(), "192.0.2.10");
    assert!((50100..=50103).contains(&relayed.port()));

    let sfu: SocketAddr = "192.0.2.10:7882".parse().unwrap();
    // Data from the SFU before a permission exists is dropped.
    h.server
        .handle_peer_input(h.now().instant, relayed.port(), sfu, b"early");
    assert_eq!(h.server.poll_command(), None);

    assert_eq!(
        with_peer(&mut h, &s, Method::CreatePermission, sfu, &[]),
        200
    );
    // Send indication → datagram to the SFU from the relay port.
    let txid = h.txid();
    let send = Builder::new(Method::Send, Class::Indication, txid)
        .attribute(attr::XOR_PEER_ADDRESS, &xor_peer(sfu, txid))
        .attribute(attr::DATA, b"hello sfu")
        .finish(None, Fingerprint::Omit);
    assert_eq!(
        h.input(s.client, &send),
        [Command::SendToPeer {
            relay_port: relayed.port(),
            peer: sfu,
            payload: b"hello sfu".to_vec()
        }]
    );
    // The SFU answers → Data indication.
    h.server
        .handle_peer_input(h.now().instant, relayed.port(), sfu, b"hello client");
    let Some(Command::SendToClient { to, payload }) = h.server.poll_command() else {
        panic!("no data indication");
    };
    assert_eq!(to, s.client);
    let data = Message::parse(&payload).unwrap();
    assert_eq!((data.method, data.class), (Method::Data, Class::Indication));
    assert_eq!(data.attribute(attr::DATA), Some(&b"hello client"[..]));

    // A channel: ChannelData both ways.
    assert_eq!(
        with_peer(
            &mut h,
            &s,
            Method::ChannelBind,
            sfu,
            &[(attr::CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0])]
        ),
        200
    );
    let frame = ChannelData::encode(0x4000, b"rtp", stoa_turn::proto::message::Padding::Datagram);
    assert_eq!(
        h.input(s.client, &frame),
        [Command::SendToPeer {
            relay_port: relayed.port(),
            peer: sfu,
            payload: b"rtp".to_vec()
        }]
    );
    h.server
        .handle_peer_input(h.now().instant, relayed.port(), sfu, b"back");
    assert_eq!(
        h.server.poll_command(),
        Some(Command::SendToClient {
            to: s.client,
            payload: ChannelData::encode(
                0x4000,
                b"back",
                stoa_turn::proto::message::Padding::Datagram
            )
        })
    );
    // Another client on the same relay port cannot use this allocation's channel.
    assert_eq!(h.input(udp("198.51.100.9:1"), &frame), []);
    assert_eq!(h.server.stats().allocations_created, 1);
}

#[test]
fn wrong_expired_and_garbled_credentials_are_refused() {
    let mut h = Harness::new(config());
    let wrong = Credentials {
        username: format!("{}:mallory", UNIX + 600),
        password: "guess".into(),
    };
    let s = h.session_with(udp("198.51.100.1:1"), wrong);
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &s)).unwrap()),
        Some(401)
    );

    let expired = h.session(udp("198.51.100.1:2"), "alice", UNIX - 1);
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &expired)).unwrap()),
        Some(401)
    );

    let other_secret = Credentials::mint(&Secret::new("other"), "alice", UNIX + 600);
    let s = h.session_with(udp("198.51.100.1:3"), other_secret);
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &s)).unwrap()),
        Some(401)
    );

    let not_rest = Credentials {
        username: "alice".into(),
        password: "x".into(),
    };
    let s = h.session_with(udp("198.51.100.1:4"), not_rest);
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &s)).unwrap()),
        Some(401)
    );

    // A nonce minted for another IP is stale here.
    let mut s = h.session(udp("198.51.100.1:5"), "alice", UNIX + 600);
    let theirs = h.session(udp("203.0.113.1:5"), "alice", UNIX + 600);
    s.nonce = theirs.nonce;
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &s)).unwrap()),
        Some(438)
    );

    assert_eq!(h.server.num_allocations(), 0);
    assert_eq!(h.server.stats().auth_failures, 4);
}

#[test]
fn peers_outside_the_policy_are_refused() {
    let mut h = Harness::new(config());
    let s = h.session(udp("198.51.100.1:40000"), "alice", UNIX + 600);
    allocated(&mut h, &s);
    for peer in [
        "127.0.0.1:7882",
        "10.0.0.1:7882",
        "169.254.169.254:80",
        "8.8.8.8:53",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(
            with_peer(&mut h, &s, Method::CreatePermission, peer, &[]),
            403,
            "{peer}"
        );
    }
    // The SFU's address but another port: a permission (IP only) is fine, a channel is not.
    let other_port: SocketAddr = "192.0.2.10:22".parse().unwrap();
    assert_eq!(
        with_peer(&mut h, &s, Method::CreatePermission, other_port, &[]),
        200
    );
    assert_eq!(
        with_peer(
            &mut h,
            &s,
            Method::ChannelBind,
            other_port,
            &[(attr::CHANNEL_NUMBER, vec![0x40, 1, 0, 0])]
        ),
        403
    );
    // …and Send to it is dropped.
    let txid = h.txid();
    let send = Builder::new(Method::Send, Class::Indication, txid)
        .attribute(attr::XOR_PEER_ADDRESS, &xor_peer(other_port, txid))
        .attribute(attr::DATA, b"ssh?")
        .finish(None, Fingerprint::Omit);
    assert_eq!(h.input(s.client, &send), []);
    assert_eq!(h.server.stats().policy_refusals, 6);
}

#[test]
fn quotas_per_user_and_in_total() {
    let mut h = Harness::new(config());
    for port in 1..=2 {
        let s = h.session(udp(&format!("198.51.100.1:{port}")), "alice", UNIX + 600);
        allocated(&mut h, &s);
    }
    let third = h.session(udp("198.51.100.1:3"), "alice", UNIX + 600);
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &third)).unwrap()),
        Some(486)
    );
    let bob = h.session(udp("198.51.100.2:1"), "bob", UNIX + 600);
    allocated(&mut h, &bob);
    let carol = h.session(udp("198.51.100.3:1"), "carol", UNIX + 600);
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &carol)).unwrap()),
        Some(508)
    );
    assert_eq!(h.server.num_allocations(), 3);

    // Refresh with lifetime 0 frees a slot.
    let reply = h.authed(&bob, Method::Refresh, &[(attr::LIFETIME, vec![0, 0, 0, 0])]);
    assert_eq!(Message::parse(&reply).unwrap().class, Class::Success);
    allocated(&mut h, &carol);
}

#[test]
fn allocations_expire_unless_refreshed_and_retransmits_are_idempotent() {
    let mut h = Harness::new(config());
    let s = h.session(udp("198.51.100.1:1"), "alice", UNIX + 7200);
    // A retransmitted Allocate (same transaction) gets the same success.
    let txid = h.txid();
    let request = signed(
        &s,
        Method::Allocate,
        txid,
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    );
    let first = h.request(s.client, &request);
    let again = h.request(s.client, &request);
    assert_eq!(first, again);
    // A new Allocate on the same five-tuple is a mismatch.
    assert_eq!(
        error_code(&Message::parse(&allocate(&mut h, &s)).unwrap()),
        Some(437)
    );

    h.advance(Duration::from_secs(590));
    let reply = h.authed(
        &s,
        Method::Refresh,
        &[(attr::LIFETIME, vec![0, 0, 0x02, 0x58])],
    );
    assert_eq!(Message::parse(&reply).unwrap().class, Class::Success);
    h.advance(Duration::from_secs(590));
    assert_eq!(h.server.num_allocations(), 1);
    h.advance(Duration::from_secs(20));
    assert_eq!(h.server.num_allocations(), 0);
    let reply = h.authed(&s, Method::Refresh, &[]);
    assert_eq!(error_code(&Message::parse(&reply).unwrap()), Some(437));
}

#[test]
fn allocate_attempts_are_rate_limited_per_ip() {
    let mut c = config();
    c.rate_limit = RateLimit {
        burst: 3,
        per_second: 1,
    };
    let mut h = Harness::new(c);
    let client = udp("198.51.100.1:1");
    let request = Builder::new(Method::Allocate, Class::Request, TransactionId([1; 12]))
        .attribute(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .finish(None, Fingerprint::Omit);
    for _ in 0..3 {
        assert_eq!(h.input(client, &request).len(), 1);
    }
    assert_eq!(h.input(client, &request), []);
    // Another address is unaffected; time refills.
    assert_eq!(h.input(udp("198.51.100.2:1"), &request).len(), 1);
    h.advance(Duration::from_secs(1));
    assert_eq!(h.input(client, &request).len(), 1);
    assert_eq!(h.server.stats().rate_limited, 1);
}

#[test]
fn unknown_required_attributes_get_420_and_tcp_allocations_442() {
    let mut h = Harness::new(config());
    let s = h.session(udp("198.51.100.1:1"), "alice", UNIX + 600);
    let reply = h.authed(
        &s,
        Method::Allocate,
        &[(attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
    );
    assert_eq!(error_code(&Message::parse(&reply).unwrap()), Some(442));
    let reply = h.authed(
        &s,
        Method::Allocate,
        &[
            (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]),
            (0x7777, vec![1, 2, 3, 4]),
        ],
    );
    let reply = Message::parse(&reply).unwrap();
    assert_eq!(error_code(&reply), Some(420));
    assert_eq!(
        reply.attribute(attr::UNKNOWN_ATTRIBUTES),
        Some(&[0x77, 0x77][..])
    );
}

#[test]
fn stream_clients_get_padded_channel_data_and_lose_allocations_on_close() {
    let mut h = Harness::new(config());
    let tcp = Client {
        transport: Transport::Tcp,
        addr: "198.51.100.1:5000".parse().unwrap(),
    };
    let s = h.session(tcp, "alice", UNIX + 600);
    let relayed = allocated(&mut h, &s);
    let sfu: SocketAddr = "192.0.2.10:7882".parse().unwrap();
    assert_eq!(
        with_peer(
            &mut h,
            &s,
            Method::ChannelBind,
            sfu,
            &[(attr::CHANNEL_NUMBER, vec![0x40, 2, 0, 0])]
        ),
        200
    );
    h.server
        .handle_peer_input(h.now().instant, relayed.port(), sfu, b"12345");
    let Some(Command::SendToClient { payload, .. }) = h.server.poll_command() else {
        panic!("nothing relayed");
    };
    assert_eq!(payload.len(), 12);
    h.server.handle_client_closed(tcp);
    assert_eq!(h.server.num_allocations(), 0);
}

/// Seeded mutations of valid messages never panic, and the tables stay bounded.
#[test]
fn mutated_input_never_panics() {
    let mut h = Harness::new(config());
    let s = h.session(udp("198.51.100.1:1"), "alice", UNIX + 600);
    allocated(&mut h, &s);
    let txid = TransactionId([3; 12]);
    let seeds = [
        signed(
            &s,
            Method::ChannelBind,
            txid,
            &[
                (attr::CHANNEL_NUMBER, vec![0x40, 0, 0, 0]),
                (
                    attr::XOR_PEER_ADDRESS,
                    xor_peer("192.0.2.10:7882".parse().unwrap(), txid),
                ),
            ],
        ),
        signed(
            &s,
            Method::CreatePermission,
            txid,
            &[(attr::XOR_PEER_ADDRESS, vec![0, 2, 0, 0])],
        ),
        ChannelData::encode(0x4000, b"abc", stoa_turn::proto::message::Padding::Stream),
    ];
    let mut state: u64 = 0x5EED;
    let mut next = || {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        if next() % 8 == 0 {
            bytes.truncate((next() as usize) % bytes.len());
        }
        h.input(s.client, &bytes);
        h.input(
            udp(&format!("203.0.113.{}:{}", next() % 250, next() % 60000)),
            &bytes,
        );
    }
    assert!(h.server.num_allocations() <= 3);
}
