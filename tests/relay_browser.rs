//! One room across three nodes, heard by Chromium on the edges: three `stoa serve` nodes, each
//! in its own network namespace joined to this test thread's own (the hub) by a veth pair
//! (`stoa_bench::netns`, as `stoa-bench relay` makes them), on one redis-server. Every node
//! counts itself full at three participants (`[control] node_capacity`), so the product path
//! places people deterministically: a stoa-bench speaker (the room's host, sending a 1 kHz
//! Opus tone) and two stoa-bench listeners fill the origin; then a headless Chromium page of
//! the unmodified livekit-client asks `POST /api/rooms/{id}/token` for a grant, is sent to an
//! edge and connects there, and two stoa-bench listeners follow it onto that edge; then a
//! second Chromium page and two more stoa-bench listeners fill the other edge. Each edge links
//! itself to the origin once and fans the speaker out to its listeners.
//!
//! Asserted: each listener's grant named the node expected of it (the pages' media URLs; their
//! ICE pairs end at that node's address); every stoa-bench listener heard the speaker and each
//! node's listeners keep receiving at the end; each Chromium page hears it (inbound-rtp packets
//! and audio energy growing over a window, and WebAudio's analyser finds the 1 kHz tone in what
//! it decodes); each edge started exactly one relay link and the origin none.
//!
//! Chromium (through `tests/browser/edge.mjs`, driven over a line protocol on its stdin and
//! stdout) runs in the hub namespace: it reaches the nodes' 10.77.N.2 addresses through the
//! veth links and nothing else (the hub has no other interface and no default route). The
//! namespaces vanish with their holders; the script caps itself and is killed with its process
//! group when the test ends.
//!
//! Needs root (network namespaces), Debian's `chromium` and `redis-server`, Node.js and
//! `tests/browser/node_modules`: `./test.sh` installs them. Run it alone with
//! `cargo test -p stoa --test relay_browser -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use stoa_bench::client::{Command as Say, Depth, Protocol, Role};
use stoa_bench::netns::HUB;
use stoa_bench::relay::{Cluster, KEY, Node, RelayParams, SECRET, wait_full, wait_records};
use stoa_bench::scenario::{Crowd, HOST, JoinPath, Target};
use stoa_bench::server::scrape_metric;
use support::chromium::{self, missing_prerequisites};

/// Participants per node.
const CAPACITY: usize = 3;
/// stoa-bench listeners on each edge, after its Chromium page.
const BENCH_PER_EDGE: usize = CAPACITY - 1;
/// Longest wait for one answer of the browser script (a join includes hearing the speaker).
const ANSWER: Duration = Duration::from_secs(60);
/// Longest wait for stoa-bench listeners to hear, or for the speaker to be placed.
const WAIT: Duration = Duration::from_secs(30);
/// The speaker's tone (stoa_bench::audio).
const TONE_HZ: f64 = 1_000.0;

/// `tests/browser/edge.mjs` under its own cap, in a process group of its own.
struct Browser {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl Browser {
    fn start(log: &Path) -> Browser {
        let dir = chromium::test_dir("browser");
        let stderr = std::fs::File::create(log).expect("browser log");
        let mut child = Command::new("timeout")
            .args(["--kill-after=5", "150", "node"])
            .arg(dir.join("edge.mjs"))
            .env("EDGE_TIMEOUT_MS", "140000")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn node tests/browser/edge.mjs");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Browser {
            child,
            stdin,
            lines,
            log: log.to_path_buf(),
        }
    }

    /// The next JSON line, within `timeout`.
    fn next(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with('{') => {
                    return serde_json::from_str(&line).expect("a JSON answer");
                }
                Ok(_) => {}
                Err(e) => panic!(
                    "no answer from edge.mjs within {timeout:?} ({e})\n{}",
                    self.log_text()
                ),
            }
        }
    }

    /// Sends `command` and returns its answer, which must be `ok`.
    fn ask(&mut self, command: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write to edge.mjs");
        stdin.flush().expect("flush");
        let answer = self.next(ANSWER);
        assert_eq!(
            answer["ok"],
            true,
            "{} {}: {answer}\n{}",
            command["cmd"],
            command["name"],
            self.log_text()
        );
        answer
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End of stdin: the script closes Chromium and exits; its whole group is killed if it
        // has not within 10 s.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The group this test started (its leader is the child): Chromium too, should the
        // script have left it behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// The index of the node whose public URL is `url` (`ws://host:port`).
fn node_of(nodes: &[Node], url: &str) -> Option<usize> {
    let addr: SocketAddr = url
        .strip_prefix("ws://")?
        .trim_end_matches('/')
        .parse()
        .ok()?;
    nodes.iter().position(|n| n.http == addr)
}

/// Three nodes in their namespaces on one Redis, the browser script, a harness runtime and a
/// room created through `/api`: what each test starts from.
struct Setup {
    // Dropped in this order: the pages, then the nodes.
    browser: Browser,
    cluster: Cluster,
    nodes: Vec<Node>,
    logs: std::path::PathBuf,
    runtime: tokio::runtime::Runtime,
    /// The first node's address, whose `/api` every call goes to.
    api: SocketAddr,
    /// A server token for it.
    server: String,
    clock: stoa_bench::clock::Clock,
    crowd: Crowd,
    /// The control plane's room id.
    room: String,
}

impl Setup {
    /// Starts everything for a room named `name`; logs go to a scratch directory of that name.
    fn start(name: &str) -> Setup {
        let missing = missing_prerequisites(
            &chromium::test_dir("browser"),
            &["playwright-core", "livekit-client"],
        );
        assert!(
            missing.is_empty(),
            "the relay browser test cannot run; missing: {}.\nRun ./test.sh first.",
            missing.join(", ")
        );
        stoa_bench::netns::isolate().expect("network namespaces (run as root)");
        // The stage doesn't matter here: only the nodes are started from these (each full at
        // CAPACITY, no stage reserve).
        let params = RelayParams {
            speakers: 1,
            stage: stoa_bench::relay::Stage::Origin,
            listeners: CAPACITY,
            join_rate: 10.0,
            window: Duration::from_secs(2),
            depth: Depth::Header,
            rounds: 0,
        };
        params.validate().expect("valid parameters");
        let (cluster, logs) = support::cluster::relay_nodes(name, &params);
        let nodes = cluster.nodes();
        let browser = Browser::start(&logs.join("edge.mjs.log"));
        let ready = browser.next(Duration::from_secs(40));
        assert_eq!(ready["ready"], true, "{ready}\n{}", browser.log_text());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let api = nodes[0].http;
        let server = stoa_bench::product::server_token(KEY, SECRET).unwrap();
        let clock = stoa_bench::clock::Clock::start();
        let registered = runtime.block_on(wait_records(api, &server, clock, |records| {
            nodes
                .iter()
                .all(|n| stoa_bench::relay::record(records, n.http).is_some())
        }));
        assert!(registered, "every node registered");
        let target = Target {
            http: api,
            protocol: Protocol::Livekit,
            key: KEY.into(),
            secret: SECRET.into(),
            room: name.into(),
            pid: None,
            path: JoinPath::Product,
            api: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        let mut crowd = {
            let _enter = runtime.enter();
            runtime
                .block_on(Crowd::open(target, deadline, 0, Depth::Header))
                .expect("the room, created through /api")
        };
        crowd.set_local_ip(HUB);
        let room = crowd.product_room().expect("a product room").to_owned();
        Setup {
            browser,
            cluster,
            nodes,
            logs,
            runtime,
            api,
            server,
            clock,
            crowd,
            room,
        }
    }

    /// Every node's log.
    fn node_logs(&self) -> String {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(self.logs.join(format!("node-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Waits until node `node`'s record shows `count` participants.
    fn full(&self, node: usize, count: usize) {
        let ok = self.runtime.block_on(wait_full(
            self.api,
            &self.server,
            self.clock,
            Some(self.nodes[node].http),
            count,
        ));
        assert!(
            ok,
            "node {node}'s record shows {count} participants\n{}",
            self.node_logs()
        );
    }

    /// The index of the node at `addr`.
    fn node_at(&self, addr: Option<SocketAddr>) -> Option<usize> {
        addr.and_then(|a| self.nodes.iter().position(|n| n.http == a))
    }

    /// `count` stoa-bench listeners join; waits (bounded) until every listener so far has
    /// opened `/rtc` and, with `hear`, heard.
    fn join_listeners(&mut self, count: usize, hear: bool) {
        let _enter = self.runtime.enter();
        for _ in 0..count {
            self.crowd.join(Role::Listener).expect("a listener");
        }
        let what = if hear {
            "every stoa-bench listener hears the speaker"
        } else {
            "every stoa-bench listener placed"
        };
        let until = Instant::now() + WAIT;
        loop {
            let placed = self.crowd.listener_servers().iter().all(Option::is_some);
            if placed && (!hear || self.crowd.listeners_heard().iter().all(|h| *h)) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{what} within {WAIT:?}\n{}",
                self.node_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Each present listener's node, in join order.
    fn listener_nodes(&self) -> Vec<Option<usize>> {
        self.crowd
            .listener_servers()
            .into_iter()
            .map(|s| self.node_at(s))
            .collect()
    }

    /// Asserts that the stoa-bench listeners of each of `nodes` received audio since the
    /// previous window (the last call of this, or of `windows_by_server`), after a 2 s window.
    fn each_node_receives(&mut self, nodes: &[usize]) {
        let _ = self.crowd.windows_by_server();
        std::thread::sleep(Duration::from_secs(2));
        let windows = self.crowd.windows_by_server();
        for &node in nodes {
            let received = windows
                .iter()
                .find(|(s, _)| *s == Some(self.nodes[node].http))
                .map_or(0, |(_, w)| w.received);
            assert!(
                received > 0,
                "node {node}'s stoa-bench listeners received nothing at the end: {:?}",
                windows
                    .iter()
                    .map(|(s, w)| (s, w.received))
                    .collect::<Vec<_>>()
            );
        }
    }

    /// Present stoa-bench listeners per node.
    fn listeners_per_node(&self) -> Vec<usize> {
        let placed = self.listener_nodes();
        (0..self.nodes.len())
            .map(|i| placed.iter().filter(|n| **n == Some(i)).count())
            .collect()
    }

    /// Every stoa-bench client leaves (`listeners` of them listeners, checked); the pages close,
    /// the nodes stop, the logs go.
    fn finish(self, listeners: usize) {
        let Setup {
            browser,
            cluster,
            logs,
            runtime,
            crowd,
            ..
        } = self;
        assert_eq!(runtime.block_on(crowd.finish()).0.len(), listeners);
        drop(browser);
        drop(cluster);
        let _ = std::fs::remove_dir_all(&logs);
    }

    /// The relay links each node started.
    fn relays(&self) -> Vec<Option<f64>> {
        self.nodes
            .iter()
            .map(|n| scrape_metric(n.http, "control_relays_started_total"))
            .collect()
    }
}

#[test]
fn chromium_and_stoa_bench_listeners_on_two_edges_hear_a_speaker_on_the_origin() {
    let mut setup = Setup::start("relay-browser");
    let s = &mut setup;
    // The speaker hosts the room; its node is the origin.
    {
        let _enter = s.runtime.enter();
        s.crowd.join(Role::Speaker).expect("the speaker");
    }
    s.crowd.speaker(0, Say::Speak);
    let until = Instant::now() + WAIT;
    while s
        .crowd
        .speaker_servers()
        .first()
        .copied()
        .flatten()
        .is_none()
    {
        assert!(
            Instant::now() < until,
            "the speaker placed\n{}",
            s.node_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let origin = s
        .node_at(s.crowd.speaker_servers()[0])
        .expect("the speaker on one of the nodes");
    s.join_listeners(CAPACITY - 1, true);
    s.full(origin, CAPACITY);

    // Each edge: a Chromium page first (it opens the room there), then stoa-bench listeners.
    let mut edges = Vec::new();
    for name in ["edge-b", "edge-c"] {
        let identity = format!("chromium-{name}");
        let user_token =
            stoa_bench::product::user_token(KEY, SECRET, &identity, &identity).unwrap();
        let joined = s.browser.ask(json!({
            "cmd": "join",
            "name": name,
            "api": format!("http://{}", s.api),
            "room": s.room,
            "userToken": user_token,
            "speaker": HOST,
        }));
        eprintln!("{name} joined: {joined}");
        let url = joined["url"].as_str().expect("a media URL");
        let edge = node_of(&s.nodes, url).expect("the URL of one of the nodes");
        assert!(
            edge != origin && !edges.contains(&edge),
            "{name} placed on node {edge} ({url}); origin {origin}, edges so far {edges:?}"
        );
        assert_eq!(joined["identity"], identity.as_str());
        assert_eq!(joined["canPublish"], false, "a listener's grant: {joined}");
        edges.push(edge);
        s.full(edge, 1);
        let before = s.crowd.listeners();
        s.join_listeners(BENCH_PER_EDGE, true);
        let placed = s.listener_nodes();
        assert!(
            placed[before..].iter().all(|n| *n == Some(edge)),
            "stoa-bench listeners after {name} on its edge {edge}: {placed:?}"
        );
        s.full(edge, CAPACITY);
    }

    // Everyone in: each node's stoa-bench listeners keep receiving, and each page hears the
    // tone over a window.
    let _ = s.crowd.windows_by_server();
    let mut heard = Vec::new();
    for (name, &edge) in ["edge-b", "edge-c"].iter().zip(&edges) {
        let listened = s
            .browser
            .ask(json!({"cmd": "listen", "name": name, "speaker": HOST, "ms": 3000}));
        eprintln!("{name} listened: {listened}");
        let packets = listened["packets"].as_u64().unwrap_or(0);
        let energy = listened["energy"].as_f64().unwrap_or(0.0);
        let hz = listened["hz"].as_f64().unwrap_or(0.0);
        assert!(
            packets >= 50,
            "{name}: {packets} packets in 3 s: {listened}"
        );
        assert!(energy > 0.0, "{name}: no audio energy in 3 s: {listened}");
        assert!(
            (hz - TONE_HZ).abs() < 30.0,
            "{name}: decodes {hz} Hz, not the tone: {listened}"
        );
        assert_eq!(listened["codec"], "audio/opus", "{listened}");
        // The media path ends at the edge itself: "local:port -> remote:port udp".
        let pair = listened["pair"].as_str().unwrap_or("");
        let (local, remote) = pair.split_once(" -> ").unwrap_or(("", ""));
        // Chromium runs in the hub: its side of the pair is the hub's end of that edge's link.
        assert!(local.starts_with("10.77."), "{name}'s ICE pair {pair:?}");
        assert!(
            remote.starts_with(&format!("{}:", s.nodes[edge].http.ip())),
            "{name}'s ICE pair {pair:?} does not end at its edge {}",
            s.nodes[edge].http.ip()
        );
        heard.push(listened);
    }
    s.each_node_receives(&[origin, edges[0], edges[1]]);
    let per_node = s.listeners_per_node();
    assert_eq!(per_node[origin], CAPACITY - 1, "{per_node:?}");
    assert_eq!(per_node[edges[0]], BENCH_PER_EDGE, "{per_node:?}");
    assert_eq!(per_node[edges[1]], BENCH_PER_EDGE, "{per_node:?}");
    assert!(s.crowd.listeners_heard().iter().all(|h| *h));
    // One link per edge, shared by its Chromium page and its stoa-bench listeners; none from
    // the origin (a node that never started one has no such series).
    let relays = s.relays();
    assert_eq!(relays[edges[0]], Some(1.0), "{relays:?}");
    assert_eq!(relays[edges[1]], Some(1.0), "{relays:?}");
    assert!(relays[origin].is_none_or(|v| v == 0.0), "{relays:?}");
    eprintln!(
        "origin {} (speaker + {} stoa-bench), edges {} and {} (Chromium + {BENCH_PER_EDGE} \
         stoa-bench each); pages heard {heard:?}",
        s.nodes[origin].http,
        CAPACITY - 1,
        s.nodes[edges[0]].http,
        s.nodes[edges[1]].http
    );
    setup.finish(CAPACITY - 1 + 2 * BENCH_PER_EDGE);
}

/// A Chromium page speaking from an edge: three stoa-bench listeners fill the room's origin (no
/// stage reserve), one more goes to an edge, which links itself to the origin; then a member
/// invited to speak joins as a Chromium page of the unmodified livekit-client. Her grant names
/// that edge (the origin is full), she publishes her microphone there (a 1 kHz tone), and the
/// origin opens its feed from the edge. Everyone hears her: the origin's listeners through the
/// feed, her edge's on her node, and listeners placed on the other edge after her through the
/// feed and that edge's link.
#[test]
fn a_chromium_speaker_on_an_edge_is_heard_on_the_origin_and_the_other_edge() {
    let mut setup = Setup::start("relay-browser-speaker");
    let s = &mut setup;
    // Nobody speaks yet: the origin's listeners are only placed.
    s.join_listeners(CAPACITY, false);
    let placed = s.listener_nodes();
    let origin = placed[0].expect("the first listener on a node");
    assert!(placed.iter().all(|n| *n == Some(origin)), "{placed:?}");
    s.full(origin, CAPACITY);
    s.join_listeners(1, false);
    let edge = s.listener_nodes()[CAPACITY].expect("a node");
    assert_ne!(edge, origin, "the origin is full");
    s.full(edge, 1);

    let identity = "chromium-speaker";
    let user_token = stoa_bench::product::user_token(KEY, SECRET, identity, identity).unwrap();
    let spoke = s.browser.ask(json!({
        "cmd": "speak",
        "name": "speaker",
        "api": format!("http://{}", s.api),
        "room": s.room,
        "identity": identity,
        "userToken": user_token,
        "serverToken": s.server,
    }));
    eprintln!("the speaker: {spoke}");
    assert_eq!(spoke["canPublish"], true, "a speaker's grant: {spoke}");
    assert!(spoke["trackSid"].as_str().is_some_and(|t| !t.is_empty()));
    let url = spoke["url"].as_str().expect("a media URL");
    assert_eq!(
        node_of(&s.nodes, url),
        Some(edge),
        "her grant names the room's edge ({url})"
    );

    // The origin's listeners hear her through the feed, the edge's on her node.
    let until = Instant::now() + WAIT;
    while !s.crowd.listeners_heard().iter().all(|h| *h) {
        assert!(
            Instant::now() < until,
            "every listener hears the Chromium speaker: {:?}\n{}\n{}",
            s.crowd.listeners_heard(),
            s.browser.log_text(),
            s.node_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Her edge takes one more listener; the next go to the other edge, which links itself to
    // the origin and hears her two hops away.
    s.join_listeners(1, true);
    s.full(edge, CAPACITY);
    s.join_listeners(2, true);
    let placed = s.listener_nodes();
    let other = placed[CAPACITY + 2].expect("a node");
    assert!(other != origin && other != edge, "{placed:?}");
    assert_eq!(placed[CAPACITY + 3], Some(other), "{placed:?}");
    s.each_node_receives(&[origin, edge, other]);
    let per_node = s.listeners_per_node();
    assert_eq!(per_node[origin], CAPACITY, "{per_node:?}");
    assert_eq!(per_node[edge], 2, "{per_node:?}");
    assert_eq!(per_node[other], 2, "{per_node:?}");
    let relays = s.relays();
    assert_eq!(relays[edge], Some(1.0), "{relays:?}");
    assert_eq!(relays[other], Some(1.0), "{relays:?}");
    assert!(relays[origin].is_none_or(|v| v == 0.0), "{relays:?}");
    setup.finish(CAPACITY + 4);
}
