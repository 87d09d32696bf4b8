//! Several `stoa serve` nodes on one real redis-server, and WebRTC clients (stoa-bench's)
//! joined through the product path: what the multi-node tests (tests/nodes.rs, tests/edges.rs,
//! tests/failover.rs, tests/drain.rs, tests/roomwide.rs) share.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;
use stoa_bench::client::{self, ClientHandle, ClientSpec, Command, Depth, Protocol, Role, Shared};
use stoa_bench::product::ProductJoin;

use super::api::get_until;
use super::tones::user_token;
use super::{Stoa, free_ports};

/// An API key and its secret, shared by every node of a test.
pub type Keys = (&'static str, &'static str);

/// A server token (operators' calls: `/api/nodes`, drain) signed with `keys`.
pub fn server_token(keys: Keys) -> String {
    stoa_control::auth::Keys::new(vec![(keys.0.into(), keys.1.into())])
        .expect("keys")
        .server_token(Duration::from_secs(3600))
        .expect("server token")
}

/// `POST /api/rooms/{room}/token` through `api` as user `identity` (a user token signed with
/// `keys`): the grant's JSON (`url`, `token`, …).
pub fn grant(keys: Keys, api: SocketAddr, room: &str, identity: &str) -> Value {
    super::api::ok(
        api,
        "POST",
        &format!("/api/rooms/{room}/token"),
        &user_token(keys, identity),
        None,
    )
}

/// The media URL [`grant`] names for `identity`.
pub fn media_url(keys: Keys, api: SocketAddr, room: &str, identity: &str) -> String {
    grant(keys, api, room, identity)["url"]
        .as_str()
        .expect("a media URL")
        .to_owned()
}

/// One `stoa serve` node and the URL it advertises.
pub struct Node {
    /// The process.
    pub stoa: Stoa,
    /// Its `public_url`.
    pub url: String,
}

/// Starts a node with `config` on the Redis at `redis`, its own HTTP port and public URL, and
/// `env` besides.
pub fn start_node(config: &Path, redis: &str, env: &[(&str, &str)]) -> Node {
    let (http, _) = free_ports();
    let (port, url) = (http.to_string(), format!("ws://127.0.0.1:{http}"));
    let mut all = vec![
        ("STOA_REDIS_URL", redis),
        ("STOA_HTTP_PORT", port.as_str()),
        ("STOA_PUBLIC_URL", url.as_str()),
    ];
    all.extend_from_slice(env);
    let stoa = Stoa::start(config, &all);
    Node { stoa, url }
}

/// `GET /api/nodes` through `api`, waited for (bounded) until `ok_when` holds.
pub fn wait_nodes(
    api: SocketAddr,
    keys: Keys,
    what: &str,
    ok_when: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let nodes = |v: &Value| v["nodes"].as_array().cloned().unwrap_or_default();
    let v = get_until(api, "/api/nodes", &server_token(keys), what, |v| {
        ok_when(&nodes(v))
    });
    nodes(&v)
}

/// The node record with public URL `url`.
pub fn by_url<'a>(nodes: &'a [Value], url: &str) -> &'a Value {
    nodes
        .iter()
        .find(|n| n["public_url"] == url)
        .unwrap_or_else(|| panic!("no node {url} in {nodes:?}"))
}

/// WebRTC clients joined through the product path (`POST /api/rooms/{id}/token`, then `/rtc`
/// at the URL it names), counting what each hears.
pub struct Clients {
    keys: Keys,
    runtime: tokio::runtime::Runtime,
    shared: Shared,
    handles: Vec<(String, ClientHandle)>,
    /// Clients expected to have failed (their node was killed).
    pub lost: u64,
}

impl Clients {
    /// No clients yet; users' tokens are signed with `keys`.
    pub fn new(keys: Keys) -> Clients {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("client runtime");
        let shared = Shared {
            clock: stoa_bench::clock::Clock::start(),
            tone: Arc::new(stoa_bench::audio::ToneLoop::encode_tone(440).expect("tone")),
            counters: Arc::default(),
            dtls_cert: Arc::new(client::dtls_cert().expect("DTLS certificate")),
            sink: None,
        };
        Clients {
            keys,
            runtime,
            shared,
            handles: Vec::new(),
            lost: 0,
        }
    }

    /// `identity` joins `room` through the API at `api`; a speaker starts sending. A client of
    /// the same identity that ran before (its node died) is replaced.
    pub fn join(&mut self, api: SocketAddr, room: &str, identity: &str, role: Role) {
        let _entered = self.runtime.enter();
        let spec = ClientSpec {
            http: api,
            protocol: Protocol::Livekit,
            identity: identity.to_owned(),
            local_ip: Ipv4Addr::LOCALHOST,
            token: String::new(),
            product: Some(ProductJoin {
                api,
                room: room.to_owned(),
                user_token: user_token(self.keys, identity),
                stage_with: None,
            }),
            role,
            depth: Depth::Decrypt,
            deadline: Instant::now() + Duration::from_secs(120),
        };
        let client = ClientHandle::spawn(spec, self.shared.clone());
        if role == Role::Speaker {
            client.command(Command::Speak);
        }
        self.handles.retain(|(id, _)| id != identity);
        self.handles.push((identity.to_owned(), client));
    }

    /// Waits (bounded by `wait`) until the clients named in `who` ended: they noticed that
    /// their node is gone (its connections closed).
    pub fn wait_ended(&self, who: &[&str], wait: Duration, what: &str) {
        let deadline = Instant::now() + wait;
        let running = || -> Vec<String> {
            self.handles
                .iter()
                .filter(|(id, h)| who.contains(&id.as_str()) && !h.is_finished())
                .map(|(id, _)| id.clone())
                .collect()
        };
        loop {
            let left = running();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {left:?} still connected"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `identity`'s client ended (the server told it to leave, or it failed).
    pub fn finished(&self, identity: &str) -> bool {
        self.handles
            .iter()
            .find(|(id, _)| id == identity)
            .is_some_and(|(_, h)| h.is_finished())
    }

    /// Clients that failed so far (a client told to leave ends without failing).
    pub fn failed(&self) -> u64 {
        self.shared.counters.failed.load(Ordering::Relaxed)
    }

    /// RTP packets `identity`'s client received so far.
    pub fn packets(&self, identity: &str) -> u64 {
        self.handles
            .iter()
            .find(|(id, _)| id == identity)
            .map(|(_, h)| client::lock(&h.reception).packets())
            .expect("a client of that identity")
    }

    /// Waits (bounded by `wait`) until every client named in `who` received `packets` RTP
    /// packets; fails early if more clients failed than [`Clients::lost`].
    pub fn wait_heard(&self, who: &[&str], packets: u64, wait: Duration, what: &str) {
        let deadline = Instant::now() + wait;
        loop {
            let counts: Vec<(String, u64)> = self
                .handles
                .iter()
                .filter(|(id, _)| who.contains(&id.as_str()))
                .map(|(id, h)| (id.clone(), client::lock(&h.reception).packets()))
                .collect();
            assert_eq!(counts.len(), who.len(), "{what}: unknown clients");
            if counts.iter().all(|(_, n)| *n >= packets) {
                return;
            }
            let counters = &self.shared.counters;
            assert!(
                counters.failed.load(Ordering::Relaxed) <= self.lost,
                "{what}: a client failed"
            );
            assert!(
                Instant::now() < deadline,
                "{what}: packets heard {counts:?}, sent {}",
                counters.rtp_sent.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Redis and three `stoa serve` nodes, each in a network namespace of its own (stoa-bench's
/// relay cluster, for `params`), their logs in a fresh scratch directory named after `name`,
/// which is returned with them.
pub fn relay_nodes(
    name: &str,
    params: &stoa_bench::relay::RelayParams,
) -> (stoa_bench::relay::Cluster, PathBuf) {
    let logs = super::scratch_dir(name);
    let cluster = stoa_bench::relay::Cluster::start(
        Path::new(env!("CARGO_BIN_EXE_stoa")),
        None,
        params,
        Some(&logs),
    )
    .expect("Redis and three nodes in their namespaces");
    (cluster, logs)
}
