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

#[test]
fn chromium_and_stoa_bench_listeners_on_two_edges_hear_a_speaker_on_the_origin() {
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
    let logs = support::scratch_dir("relay-browser");
    let cluster = Cluster::start(
        Path::new(env!("CARGO_BIN_EXE_stoa")),
        None,
        &params,
        Some(&logs),
    )
    .expect("Redis and three nodes in their namespaces");
    let nodes = cluster.nodes();
    let node_logs = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(logs.join(format!("node-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let mut browser = Browser::start(&logs.join("edge.mjs.log"));
    let ready = browser.next(Duration::from_secs(40));
    assert_eq!(ready["ready"], true, "{ready}\n{}", browser.log_text());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _enter = runtime.enter();
    let api = nodes[0].http;
    let server = stoa_bench::product::server_token(KEY, SECRET).unwrap();
    let clock = stoa_bench::clock::Clock::start();
    let registered = runtime.block_on(wait_records(api, &server, clock, |records| {
        nodes
            .iter()
            .all(|n| stoa_bench::relay::record(records, n.http).is_some())
    }));
    assert!(registered, "every node registered\n{}", node_logs());
    let target = Target {
        http: api,
        protocol: Protocol::Livekit,
        key: KEY.into(),
        secret: SECRET.into(),
        room: "relay-browser".into(),
        pid: None,
        path: JoinPath::Product,
        api: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut crowd = runtime
        .block_on(Crowd::open(target, deadline, 0, Depth::Header))
        .expect("the room, created through /api");
    crowd.set_local_ip(HUB);
    let room = crowd.product_room().expect("a product room").to_owned();

    // Waits (bounded) for `ok`, polling every 100 ms.
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let until = Instant::now() + WAIT;
        while !ok() {
            assert!(
                Instant::now() < until,
                "{what} within {WAIT:?}\n{}",
                node_logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Joins `n` stoa-bench listeners and waits until every listener so far heard the speaker.
    let join_listeners = |crowd: &mut Crowd, n: usize| {
        for _ in 0..n {
            crowd.join(Role::Listener).expect("a listener");
        }
        wait("every stoa-bench listener hears the speaker", &|| {
            let heard = crowd.listeners_heard();
            heard.iter().all(|h| *h) && crowd.listener_servers().iter().all(Option::is_some)
        });
    };
    let full = |node: usize, count: usize| {
        let ok = runtime.block_on(wait_full(
            api,
            &server,
            clock,
            Some(nodes[node].http),
            count,
        ));
        assert!(
            ok,
            "node {node}'s record shows {count} participants\n{}",
            node_logs()
        );
    };

    // The speaker hosts the room; its node is the origin.
    crowd.join(Role::Speaker).expect("the speaker");
    crowd.speaker(0, Say::Speak);
    wait("the speaker placed and sending", &|| {
        crowd.speaker_servers().first().copied().flatten().is_some()
    });
    let origin = crowd.speaker_servers()[0]
        .and_then(|a| nodes.iter().position(|n| n.http == a))
        .expect("the speaker on one of the nodes");
    join_listeners(&mut crowd, CAPACITY - 1);
    full(origin, CAPACITY);

    // Each edge: a Chromium page first (it opens the room there), then stoa-bench listeners.
    let mut edges = Vec::new();
    for name in ["edge-b", "edge-c"] {
        let identity = format!("chromium-{name}");
        let user_token =
            stoa_bench::product::user_token(KEY, SECRET, &identity, &identity).unwrap();
        let joined = browser.ask(json!({
            "cmd": "join",
            "name": name,
            "api": format!("http://{api}"),
            "room": room,
            "userToken": user_token,
            "speaker": HOST,
        }));
        eprintln!("{name} joined: {joined}");
        let url = joined["url"].as_str().expect("a media URL");
        let edge = node_of(&nodes, url).expect("the URL of one of the nodes");
        assert!(
            edge != origin && !edges.contains(&edge),
            "{name} placed on node {edge} ({url}); origin {origin}, edges so far {edges:?}"
        );
        assert_eq!(joined["identity"], identity.as_str());
        assert_eq!(joined["canPublish"], false, "a listener's grant: {joined}");
        edges.push(edge);
        full(edge, 1);
        let before = crowd.listeners();
        join_listeners(&mut crowd, BENCH_PER_EDGE);
        let servers = crowd.listener_servers();
        assert!(
            servers[before..]
                .iter()
                .all(|s| *s == Some(nodes[edge].http)),
            "stoa-bench listeners after {name} on its edge {}: {servers:?}",
            nodes[edge].http
        );
        full(edge, CAPACITY);
    }

    // Everyone in: each node's stoa-bench listeners keep receiving, and each page hears the
    // tone over a window.
    let _ = crowd.windows_by_server();
    let mut heard = Vec::new();
    for (name, &edge) in ["edge-b", "edge-c"].iter().zip(&edges) {
        let listened =
            browser.ask(json!({"cmd": "listen", "name": name, "speaker": HOST, "ms": 3000}));
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
            remote.starts_with(&format!("{}:", nodes[edge].http.ip())),
            "{name}'s ICE pair {pair:?} does not end at its edge {}",
            nodes[edge].http.ip()
        );
        heard.push(listened);
    }
    let windows = crowd.windows_by_server();
    for node in [origin, edges[0], edges[1]] {
        let received = windows
            .iter()
            .find(|(s, _)| *s == Some(nodes[node].http))
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
    let per_node: Vec<usize> = (0..nodes.len())
        .map(|i| {
            crowd
                .listener_servers()
                .iter()
                .filter(|s| **s == Some(nodes[i].http))
                .count()
        })
        .collect();
    assert_eq!(per_node[origin], CAPACITY - 1, "{per_node:?}");
    assert_eq!(per_node[edges[0]], BENCH_PER_EDGE, "{per_node:?}");
    assert_eq!(per_node[edges[1]], BENCH_PER_EDGE, "{per_node:?}");
    assert!(crowd.listeners_heard().iter().all(|h| *h));
    // One link per edge, shared by its Chromium page and its stoa-bench listeners; none from
    // the origin (a node that never started one has no such series).
    let relays: Vec<Option<f64>> = nodes
        .iter()
        .map(|n| scrape_metric(n.http, "control_relays_started_total"))
        .collect();
    assert_eq!(relays[edges[0]], Some(1.0), "{relays:?}");
    assert_eq!(relays[edges[1]], Some(1.0), "{relays:?}");
    assert!(relays[origin].is_none_or(|v| v == 0.0), "{relays:?}");
    assert_eq!(
        runtime.block_on(crowd.finish()).0.len(),
        CAPACITY - 1 + 2 * BENCH_PER_EDGE
    );
    eprintln!(
        "origin {} (speaker + {} stoa-bench), edges {} and {} (Chromium + {BENCH_PER_EDGE} \
         stoa-bench each); pages heard {heard:?}",
        nodes[origin].http,
        CAPACITY - 1,
        nodes[edges[0]].http,
        nodes[edges[1]].http
    );
    drop(browser);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&logs);
}
