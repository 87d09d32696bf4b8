//! Smoke runs of every `stoa-bench` scenario against a real `stoa serve --dev` child process:
//! a few clients for a few seconds each, asserting that audio flows end to end (real Opus
//! through ICE, DTLS and SRTP) and that the report is produced. Performance figures are never
//! asserted here; they belong in BENCHMARKS.md.
//!
//! These live in the root package because only it can name the built server binary
//! (`CARGO_BIN_EXE_stoa`); the bench library itself depends on no Stoa crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use stoa_bench::capacity::{self, CapacityParams};
use stoa_bench::client::{Depth, Protocol};
use stoa_bench::scenario::{self, JoinPath, Kind, Params, Quiet, Target};
use stoa_bench::server::ServerProcess;

mod support;

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;

/// The value of `series` (exact name and labels) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The runtime the harness runs on in these tests.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn params(kind: Kind) -> Params {
    Params {
        kind,
        speakers: 2,
        listeners: 3,
        join_rate: 20.0,
        duration: Duration::from_secs(3),
        churn_rate: 1.0,
        rotate_every: Duration::from_secs(1),
        decoders: 1,
        depth: Depth::Header,
    }
}

/// A `stoa serve --dev` child process and a target naming `room` on it, joined by `path`.
fn dev_server(room: &str, path: JoinPath) -> (ServerProcess, Target) {
    let process = ServerProcess::spawn(Path::new(env!("CARGO_BIN_EXE_stoa")), None, None)
        .expect("start stoa serve --dev");
    let target = target_on(&process, room, path);
    (process, target)
}

/// A target naming `room` on `process`, joined by `path`.
fn target_on(process: &ServerProcess, room: &str, path: JoinPath) -> Target {
    Target {
        http: process.http,
        protocol: Protocol::Livekit,
        key: "devkey".into(),
        secret: "secret".into(),
        room: room.into(),
        pid: Some(process.pid()),
        path,
        api: Vec::new(),
    }
}

/// Start a server, run `params` against it with direct tokens, check the report.
fn smoke(params: &Params) -> stoa_bench::report::Report {
    smoke_on(params, JoinPath::Direct)
}

/// Start a server, run `params` against it joining by `path`, check the report.
fn smoke_on(params: &Params, path: JoinPath) -> stoa_bench::report::Report {
    let (process, target) = dev_server("smoke", path);
    let runtime = runtime();
    let report = runtime
        .block_on(async {
            tokio::time::timeout(
                params.bound() + Duration::from_secs(20),
                scenario::run(target, params, &mut Quiet),
            )
            .await
        })
        .expect("the run ends by itself")
        .expect("the run completes");
    let table = report.table();
    eprintln!("{table}");

    assert_eq!(report.clients.failed, 0, "{:?}", report.clients.errors);
    assert_eq!(
        report.clients.heard, report.clients.listeners,
        "every listener hears audio:\n{table}"
    );
    assert!(report.sent > 0 && report.received > 0, "{table}");
    // Header-only listeners (all but the decoding one) had their sockets read by the run's
    // sink, from the clear RTP header: most packets were never decrypted.
    assert!(report.received > 2 * report.decrypted, "{table}");
    let j2a = report.join_to_first_audio_ms.as_ref().expect("join times");
    assert_eq!(j2a.count, report.clients.listeners);
    let latency = report.latency_ms.as_ref().expect("latency samples");
    assert!(latency.count > 0);
    // The decoding listener decodes real Opus: frames, none refused, the tone's level.
    let check = report.audio_checks.first().expect("one decoding listener");
    assert!(check.frames > 0 && check.errors == 0, "{check:?}");
    assert!(check.rms > 0.05, "{check:?}");
    // Server figures come from /proc and /metrics.
    let server = report.server.as_ref().expect("server figures");
    assert!(server.rss_kib_peak.unwrap_or(0) > 0);
    // Bytes through the media sockets, from its /metrics: more out than in (fan-out).
    let (kin, kout) = (
        server.in_kbps.unwrap_or(0.0),
        server.out_kbps.unwrap_or(0.0),
    );
    assert!(
        kin > 0.0 && kout > kin,
        "in {kin} kbit/s, out {kout} kbit/s"
    );
    assert!(!report.timeline.is_empty());
    // The charts render from it.
    for (_, chart) in stoa_bench::chart::run_charts(&report) {
        assert!(chart.svg().contains("<polyline"));
    }
    // The JSON has the same figures.
    let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
    assert_eq!(json["clients"]["heard"], report.clients.heard);
    assert_eq!(json["params"]["duration"], params.duration.as_secs_f64());

    // The server's own metrics saw the same run: traffic both ways, forwarding and join
    // latencies observed (one join per participant whose media connected).
    let (status, text) = support::request(process.http, "GET", "/metrics", None, None);
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    for series in [
        "sfu_datagrams_received_total",
        "sfu_bytes_received_total",
        "sfu_datagrams_sent_total",
        "sfu_bytes_sent_total",
        "sfu_forwarding_seconds_count",
    ] {
        assert!(value(series) > 0.0, "{series} = 0:\n{text}");
    }
    assert!(value("sfu_bytes_sent_total") > value("sfu_datagrams_sent_total") * 50.0);
    assert!(
        value("signaling_join_seconds_count") >= report.clients.listeners as f64,
        "{text}"
    );
    assert_eq!(
        value("signaling_join_seconds_bucket{le=\"+Inf\"}"),
        value("signaling_join_seconds_count")
    );
    report
}

#[test]
fn audio_room() {
    smoke(&params(Kind::Room));
}

#[test]
fn join_storm() {
    let p = Params {
        listeners: 6,
        join_rate: 50.0,
        speakers: 1,
        ..params(Kind::JoinStorm)
    };
    smoke(&p);
}

/// The product path: the room is created through /api, the host speaks, a second speaker is
/// put on stage by the app backend, and every listener turns a user token into a media token
/// with `POST /api/rooms/{id}/token` before `/rtc`; audio flows as with direct tokens.
#[test]
fn join_storm_through_the_product_path() {
    let p = Params {
        listeners: 5,
        join_rate: 50.0,
        speakers: 2,
        ..params(Kind::JoinStorm)
    };
    let report = smoke_on(&p, JoinPath::Product);
    // Both speakers were heard: the invited one got publish rights through the control plane.
    assert_eq!(report.clients.min_streams_heard, 2, "{}", report.table());
}

/// The product path on two nodes sharing one Redis: listeners call the two nodes' /api in
/// turn, and every one is sent to the node where the room lives, whose media they hear.
#[test]
fn join_storm_through_two_instances_sharing_redis() {
    let redis = redis_server::RedisServer::start();
    let bin = Path::new(env!("CARGO_BIN_EXE_stoa"));
    let a = ServerProcess::spawn_node(bin, None, &redis.url).expect("first node");
    let b = ServerProcess::spawn_node(bin, None, &redis.url).expect("second node");
    let target = Target {
        http: a.http,
        protocol: Protocol::Livekit,
        key: "devkey".into(),
        secret: "secret".into(),
        room: "two nodes".into(),
        pid: Some(a.pid()),
        path: JoinPath::Product,
        api: vec![a.http, b.http],
    };
    let p = Params {
        listeners: 4,
        join_rate: 50.0,
        speakers: 1,
        ..params(Kind::JoinStorm)
    };
    let report = runtime()
        .block_on(async {
            tokio::time::timeout(
                p.bound() + Duration::from_secs(20),
                scenario::run(target, &p, &mut Quiet),
            )
            .await
        })
        .expect("the run ends by itself")
        .expect("the run completes");
    let table = report.table();
    eprintln!("{table}");
    assert_eq!(report.clients.failed, 0, "{:?}", report.clients.errors);
    assert_eq!(report.clients.heard, report.clients.listeners, "{table}");
    // Both nodes answered token calls: the second one's /metrics counted them.
    let (status, text) = support::request(b.http, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let tokens = text
        .lines()
        .filter(|l| l.starts_with("control_api_requests_total") && l.contains("/token"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(tokens >= 2.0, "{text}");
}

/// The control plane alone, small: members join through the token call and the /rtc
/// admission check; the host's view of the room stays small.
#[test]
fn api_load_on_the_embedded_store() {
    let server = ServerProcess::spawn(Path::new(env!("CARGO_BIN_EXE_stoa")), None, None)
        .expect("start stoa serve --dev");
    let nodes = [stoa_bench::apiload::Node {
        http: server.http,
        pid: Some(server.pid()),
    }];
    api_load(&nodes, 60);
}

/// The same through two instances sharing one Redis: users alternate between them.
#[test]
fn api_load_on_two_instances_sharing_redis() {
    let redis = redis_server::RedisServer::start();
    let env = [("STOA_REDIS_URL", redis.url.as_str())];
    let bin = Path::new(env!("CARGO_BIN_EXE_stoa"));
    let a = ServerProcess::spawn_with(bin, None, None, &env).expect("first instance");
    let b = ServerProcess::spawn_with(bin, None, None, &env).expect("second instance");
    let nodes = [a.http, b.http].map(|http| stoa_bench::apiload::Node { http, pid: None });
    api_load(&nodes, 40);
}

fn api_load(nodes: &[stoa_bench::apiload::Node], members: usize) {
    let params = stoa_bench::apiload::ApiLoadParams {
        members,
        step: members / 2,
        concurrency: 4,
        admission: true,
        key: "devkey".into(),
        secret: "secret".into(),
        bound: Duration::from_secs(60),
    };
    let report = runtime()
        .block_on(stoa_bench::apiload::run(nodes, &params))
        .expect("the ramp completes");
    let table = report.table();
    eprintln!("{table}");
    assert!(report.errors.is_empty(), "{table}");
    assert_eq!(report.steps.len(), 2, "{table}");
    for st in &report.steps {
        assert_eq!((st.joins, st.failures), (members / 2, 0), "{table}");
        assert_eq!(st.token_ms.as_ref().map(|q| q.count), Some(members / 2));
        assert_eq!(st.admission_ms.as_ref().map(|q| q.count), Some(members / 2));
        assert!(st.room_view_bytes.is_some_and(|b| b > 0), "{table}");
    }
    assert!(report.throughput_ratio.is_some() && report.token_p95_ratio.is_some());
}

#[test]
fn churn() {
    let p = Params {
        duration: Duration::from_secs(4),
        ..params(Kind::Churn)
    };
    let report = smoke(&p);
    assert!(report.churned >= 1, "listeners were replaced");
    assert!(report.clients.listeners > p.listeners);
}

#[test]
fn speaker_rotation() {
    // Two seconds per turn: time for the second speaker's first publish even on a busy machine.
    let p = Params {
        duration: Duration::from_secs(5),
        rotate_every: Duration::from_secs(2),
        ..params(Kind::Rotation)
    };
    let report = smoke(&p);
    assert!(report.rotations >= 2, "the floor passed on and back");
    // Every listener heard both speakers in turn.
    assert_eq!(report.clients.min_streams_heard, 2, "{}", report.table());
}

/// `stoa-bench two-rooms` small, room B's clients on a runtime of their own: room A's
/// listeners hear their speaker, every storm's listeners hear room B's speaker, the busy
/// storm carries reactions (none refused) and floor changes and the idle one neither, and the
/// ratio is reported; room B's clients ran on the runtime given for them. A run asking for room
/// B's own thread without giving it one is refused.
#[test]
fn two_rooms_with_room_b_on_a_thread_of_its_own() {
    use stoa_bench::two_rooms::{self, TwoRoomsParams};
    // Two engine shards, each on its own port, as --server-shards 2 starts the server.
    let bin = Path::new(env!("CARGO_BIN_EXE_stoa"));
    let process = ServerProcess::spawn_sharded(bin, None, None, &[], 2).expect("start stoa");
    let target = target_on(&process, "rooms", JoinPath::Direct);
    let params = TwoRoomsParams {
        a_listeners: 10,
        a_speakers: 2,
        a_join_rate: 50.0,
        reaction_every: Duration::from_millis(100),
        rotate_every: Duration::from_secs(1),
        b_listeners: 5,
        b_join_rate: 20.0,
        rounds: 1,
        b_own_thread: true,
    };
    // As the command does: the server first, then room B's runtime, then this thread (and the
    // harness's runtime it builds) below room B's.
    let base = stoa_bench::affinity::priority().expect("read nice");
    assert!(
        base < 19,
        "the tests run at the lowest priority: nothing is lower"
    );
    let (room_b, lowered) = two_rooms::room_b_runtime().expect("room B's runtime");
    assert_eq!(lowered, (base + two_rooms::ROOM_A_NICE).min(19));
    let runtime = runtime();
    let refused = runtime.block_on(two_rooms::run(target.clone(), &params, None));
    assert!(refused.is_err(), "no runtime given for room B");
    // The most tasks room B's runtime held at once: its clients' while a storm lasts.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = {
        let (peak, b) = (peak.clone(), room_b.handle().clone());
        runtime.spawn(async move {
            loop {
                let alive = b.metrics().num_alive_tasks();
                peak.fetch_max(alive, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let report = runtime
        .block_on(async {
            tokio::time::timeout(
                params.bound(),
                two_rooms::run(target, &params, Some(room_b.handle().clone())),
            )
            .await
        })
        .expect("the run ends by itself")
        .expect("the run completes");
    watch.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        peak > params.b_listeners,
        "room B's speaker and listeners ran on its runtime: at most {peak} tasks there"
    );
    eprintln!("{}", report.table());
    assert!(report.a_heard >= 10, "{report:?}");
    let [idle, busy] = report.storms.as_slice() else {
        panic!("two storms: {report:?}");
    };
    for storm in [idle, busy] {
        assert_eq!((storm.heard, storm.listeners), (5, 5), "{storm:?}");
        assert!(storm.join_to_audio_ms.is_some(), "{storm:?}");
    }
    assert!(!idle.busy && busy.busy);
    assert_eq!((idle.reactions, idle.rotations), (0, 0), "{idle:?}");
    assert!(busy.reactions > 0 && busy.reactions_failed == 0, "{busy:?}");
    assert!(busy.rotations > 0, "{busy:?}");
    assert!(report.busy_over_idle_p95.is_some(), "{report:?}");
    // Room A's peers together on one shard; each storm's room B on the other, room A's
    // shard unchanged.
    let a = &report.a_shard_peers;
    assert_eq!(a.len(), 2, "{report:?}");
    let a_shard = usize::from(a[0] == 0);
    assert!(a[a_shard] >= 12 && a[1 - a_shard] == 0, "{a:?}");
    for storm in [idle, busy] {
        let p = &storm.shard_peers;
        assert_eq!(p.len(), 2, "{storm:?}");
        assert_eq!(p[a_shard], a[a_shard], "room A's shard: {storm:?}");
        assert!(
            p[1 - a_shard] >= 6,
            "room B's speaker and listeners: {storm:?}"
        );
    }
    // Room A's side ran below room B's clients; the server kept its own priority.
    assert_eq!(
        report.harness_nice,
        [Some(lowered), Some(base)],
        "{report:?}"
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", process.pid())).expect("stat");
    let server_nice = stoa_bench::server::stat_field(&stat, 19).and_then(|n| n.parse::<i32>().ok());
    assert_eq!(server_nice, Some(base), "{stat}");
    // Both storms show the server's media engine, and room B's clients and socket reader,
    // at work.
    for storm in [idle, busy] {
        let ran = |threads: &[stoa_bench::threads::ThreadTime], group: &str| {
            threads.iter().any(|t| t.group == group && t.run_ms > 0)
        };
        assert!(ran(&storm.server_threads, "sfu-shard"), "{storm:?}");
        assert!(
            ran(&storm.harness_threads, two_rooms::ROOM_B_THREAD),
            "{storm:?}"
        );
        // Its socket reader reads five listeners: a thread that ran, if less than 1 ms.
        let read = |group: &str| storm.harness_threads.iter().any(|t| t.group == group);
        assert!(read(two_rooms::ROOM_B_SINK), "{storm:?}");
    }
    drop(runtime);
    drop(room_b);
    drop(process);
}

#[test]
fn capacity_ramp() {
    // The ramp's clients join through the control plane, as the web app's do.
    let (_server, target) = dev_server("ramp", JoinPath::Product);
    // Limits no small step can miss on loopback: the ramp must run to its cap.
    let params = CapacityParams {
        speakers: 1,
        start: 2,
        step: 2,
        max_listeners: 4,
        join_rate: 20.0,
        hold: Duration::from_secs(1),
        loss_limit: 0.5,
        p99_limit_ms: 5_000.0,
        depth: Depth::Header,
        server_cores: None,
        bench_cores: None,
    };
    let runtime = runtime();
    let report = runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                capacity::search(target, &params, &mut Quiet),
            )
            .await
        })
        .expect("the ramp ends by itself")
        .expect("the ramp completes");
    eprintln!("{}", report.table());
    assert_eq!(report.steps.len(), 2, "{}", report.table());
    assert!(report.steps.iter().all(|s| s.pass && s.rx_pps > 0.0));
    assert_eq!(report.max_streams, 4);
    assert!(report.steps[1].server_cpu_cores.is_some());
    for (_, chart) in stoa_bench::chart::capacity_charts(&report) {
        assert!(chart.svg().contains("<polyline"));
    }
}

/// The comparison end to end, small: the kernel baseline, then the same ramp and join storm
/// against Stoa and a real Janus videoroom (Debian `janus`) driven through the adapter, all in
/// a private network namespace made by this test's thread (namespaces are per thread: the
/// runtime's threads and the child processes started below inherit it; other tests do not).
#[test]
fn comparison_with_janus() {
    stoa_bench::compare::isolate().expect("a private network namespace (run as root)");
    let (_, veth) = stoa_bench::janus::veth_loopback_address().expect("the veth address");
    assert!(veth.is_loopback());
    let params = stoa_bench::compare::CompareParams {
        stoa: env!("CARGO_BIN_EXE_stoa").into(),
        server_cpus: None,
        bench_cpus: None,
        capacity: CapacityParams {
            speakers: 1,
            start: 2,
            step: 2,
            max_listeners: 4,
            join_rate: 20.0,
            hold: Duration::from_secs(2),
            // Limits no small step can miss on loopback: both ramps must run to their cap.
            loss_limit: 0.5,
            p99_limit_ms: 5_000.0,
            depth: Depth::Header,
            server_cores: None,
            bench_cores: None,
        },
        storm_listeners: 4,
        storm_rate: 20.0,
        storm_play: Duration::from_secs(2),
        janus_event_loops: 1,
        baseline: Duration::from_millis(200),
        path: JoinPath::Direct,
    };
    let runtime = runtime();
    let report = runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(180),
                stoa_bench::compare::run(&params, &mut Quiet),
            )
            .await
        })
        .expect("the comparison ends by itself")
        .expect("the comparison completes");
    let markdown = report.markdown();
    eprintln!("{markdown}");
    assert!(report.baseline.packets > 0 && report.baseline.pps_per_core > 0.0);
    // The fan-out floor ran at the size Stoa reached.
    assert_eq!(report.fanout.destinations, 4);
    assert!(report.fanout.packets > 0 && report.fanout.pps_per_core > 0.0);
    let names: Vec<&str> = report.servers.iter().map(|s| s.name).collect();
    assert_eq!(names, ["Stoa", "Janus"]);
    for server in &report.servers {
        let name = server.name;
        // The ramp reached its cap with every listener hearing audio, on both servers.
        assert_eq!(server.capacity.max_streams, 4, "{name}:\n{markdown}");
        assert!(
            server
                .capacity
                .steps
                .iter()
                .all(|s| s.pass && s.rx_pps > 0.0)
        );
        assert!(server.capacity.streams_per_server_core.is_some(), "{name}");
        assert!(server.rss_kib_per_listener.is_some(), "{name}");
        // The storm: every listener heard, nobody failed, and the decoding listener decoded
        // the tone itself (real Opus through the server's SRTP).
        let storm = &server.storm;
        assert_eq!(
            storm.clients.failed, 0,
            "{name}: {:?}",
            storm.clients.errors
        );
        assert_eq!(storm.clients.heard, 4, "{name}:\n{markdown}");
        assert_eq!(
            storm.join_to_first_audio_ms.as_ref().map(|q| q.count),
            Some(4)
        );
        let check = storm.audio_checks.first().expect("one decoding listener");
        assert!(
            check.frames > 0 && check.errors == 0 && check.rms > 0.05,
            "{name}: {check:?}"
        );
        let cpu = storm.server.as_ref().map(|f| f.cpu_cores_mean);
        assert!(
            cpu.is_some_and(|c| c > 0.0),
            "{name}: the server's CPU was read"
        );
        assert!(markdown.contains(&format!("| {name} |")), "{markdown}");
    }
    let charts = report.charts();
    assert_eq!(charts.len(), 4);
    let fonts = stoa_bench::chart::Fonts::system();
    for (_, chart) in charts {
        assert_eq!(chart.series.len(), 2);
        assert!(chart.svg().contains("<polyline"));
        // And as PNG, rasterised from it.
        let png = chart.png(&fonts).expect("a PNG");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000);
    }
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["servers"][1]["name"], "Janus");
}

/// `stoa-bench relay` small: Redis and three `stoa serve` nodes, each in its own network
/// namespace linked to this test thread's own (the hub) by a veth pair, counting themselves
/// full at four participants; one speaker and three listeners on the room's origin, four
/// listeners on each edge (which does not count the speaker it mirrors), placed by the product
/// path. Every listener hears the speaker, each
/// phase is measured on every node, and the report carries latency per node and the costs;
/// their values are not asserted (they belong in BENCHMARKS.md). Then one round of the
/// alternated listener cost: a listener of the origin and one of the first edge leave and
/// come back, placed on the same nodes.
#[test]
fn relay_across_three_nodes_in_their_own_namespaces() {
    use stoa_bench::relay::Stage;
    let (report, table) = relay_run(Stage::Origin, true);
    let [Some(origin), Some(edge1), Some(edge2)] = report.roles else {
        unreachable!("checked by relay_run");
    };
    assert_eq!(report.speakers_on_origin, 1);
    // Placement put three listeners beside the speaker, then four on each edge, and every one
    // of them heard the speaker (on the edges through the relay).
    assert_eq!(report.heard[origin], (3, 3), "{table}");
    assert_eq!(report.heard[edge1], (4, 4), "{table}");
    assert_eq!(report.heard[edge2], (4, 4), "{table}");
    let counts = counts(&report);
    assert_eq!(
        counts,
        [
            [0, 0, 0],
            [0, 0, 0],
            [3, 0, 0],
            [3, 1, 0],
            [3, 4, 0],
            [3, 4, 1],
            [3, 4, 4]
        ],
        "{table}"
    );
    assert!(report.costs.listener_single.is_some(), "{table}");
    assert!(table.contains("wake-up floor"), "{table}");
    assert!(table.contains("edge 2 full"), "{table}");
    // One alternated round: one listener of the origin's three and one of the first edge's
    // four left, were measured without, and came back to the same nodes.
    let [round] = report.rounds.as_slice() else {
        panic!("one round\n{table}");
    };
    assert_eq!(
        [round.fewer.listeners[origin], round.fewer.listeners[edge1]],
        [2, 3],
        "{table}"
    );
    assert_eq!(
        [
            round.back.listeners[origin],
            round.back.listeners[edge1],
            round.back.listeners[edge2]
        ],
        [3, 4, 4],
        "{table}"
    );
    assert!(round.fewer.placed && round.back.placed, "{table}");
    assert!(round.listener.iter().all(Option::is_some), "{table}");
    assert!(table.contains("alternated rounds pooled"), "{table}");
}

/// The same with the speaker on an edge: four listeners fill the origin, the first edge takes
/// one, then the speaker, whom the product path places on that edge (the origin is full and
/// the nodes keep no stage reserve); the origin opens a feed from the edge. Two more listeners
/// fill the edge, four the second edge. Every listener hears her: on the origin through its
/// feed (one hop), on the second edge through the feed and that edge's link (two hops).
#[test]
fn relay_from_a_speaker_on_an_edge() {
    use stoa_bench::relay::Stage;
    let (report, table) = relay_run(Stage::Edge, false);
    let [Some(origin), Some(edge1), Some(edge2)] = report.roles else {
        unreachable!("checked by relay_run");
    };
    assert_eq!(report.speakers_on_origin, 0, "{table}");
    assert_eq!(
        report.speakers_placed, 1,
        "her grant named the first edge\n{table}"
    );
    assert_eq!(report.heard[origin], (4, 4), "{table}");
    assert_eq!(report.heard[edge1], (3, 3), "{table}");
    assert_eq!(report.heard[edge2], (4, 4), "{table}");
    assert_eq!(
        counts(&report),
        [
            [0, 0, 0],
            [4, 0, 0],
            [4, 1, 0],
            [4, 1, 0],
            [4, 3, 0],
            [4, 3, 1],
            [4, 3, 4]
        ],
        "{table}"
    );
    assert!(table.contains("speakers on edge 1"), "{table}");
}

/// Listeners per phase, in role order (origin, first edge, second edge).
fn counts(report: &stoa_bench::relay::RelayReport) -> Vec<Vec<usize>> {
    let [Some(origin), Some(edge1), Some(edge2)] = report.roles else {
        return Vec::new();
    };
    report
        .phases
        .iter()
        .map(|p| vec![p.listeners[origin], p.listeners[edge1], p.listeners[edge2]])
        .collect()
}

/// One small `stoa-bench relay` run with the speaker on `stage` (and the wake-up floor beside
/// it with `floor`); checks what both stages share and returns the report and its table.
fn relay_run(
    stage: stoa_bench::relay::Stage,
    floor: bool,
) -> (stoa_bench::relay::RelayReport, String) {
    use stoa_bench::relay::{RelayParams, Stage};
    stoa_bench::netns::isolate().expect("network namespaces (run as root)");
    let params = RelayParams {
        speakers: 1,
        stage,
        listeners: 4,
        join_rate: 20.0,
        window: Duration::from_secs(2),
        depth: Depth::Header,
        rounds: usize::from(stage == Stage::Origin),
    };
    let (cluster, logs) = support::cluster::relay_nodes("relay-bench", &params);
    let nodes = cluster.nodes();
    assert!(
        nodes
            .iter()
            .all(|n| n.http.ip().to_string().starts_with("10.77.")),
        "{nodes:?}"
    );
    let runtime = runtime();
    let report = runtime
        .block_on(async {
            tokio::time::timeout(
                params.bound(),
                stoa_bench::relay::run(&nodes, Some(cluster.redis_pid()), &params),
            )
            .await
        })
        .expect("the run ends by itself")
        .expect("the run completes");
    let mut report = report;
    if floor {
        // The wake-up floor beside the run: one speaker's 50 datagrams a second from the
        // first node's namespace through the hub to a forwarder in the second's, each
        // forwarded.
        let floor = cluster
            .wakeup_floor(None, 1, Duration::from_secs(1))
            .expect("the wake-up floor");
        assert!(
            (45..=51).contains(&floor.packets),
            "about a second of one stream forwarded: {floor:?}"
        );
        assert!(floor.ns_per_packet > 0.0, "{floor:?}");
        report.floor = Some(floor);
    }
    let table = report.table();
    eprintln!("{table}");
    let logs_text = || {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(logs.join(format!("node-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    // Three distinct roles: the room's node, then the node of each edge's first listener.
    let [Some(origin), Some(edge1), Some(edge2)] = report.roles else {
        panic!("roles {:?}\n{table}\n{}", report.roles, logs_text());
    };
    assert!(origin != edge1 && edge1 != edge2 && origin != edge2);
    assert_eq!(report.failed, 0, "{table}");
    assert_eq!(report.phases.len(), 7, "{table}");
    for p in &report.phases {
        assert!(
            p.placed,
            "{}: the node records never showed it full\n{table}",
            p.name
        );
        assert!(p.cpu_cores.iter().all(Option::is_some), "{}", p.name);
        assert!(p.redis_cpu_cores.is_some());
    }
    // In the last window every node's listeners measured latency, and the other nodes'
    // over the speakers' node's is known.
    let last = report.phases.last().unwrap();
    for i in [origin, edge1, edge2] {
        assert!(last.latency[i].is_some_and(|l| l.samples > 0), "{table}");
    }
    assert!(report.added_ms.iter().all(Option::is_some), "{table}");
    // Each edge linked itself to the origin once; the origin linked itself to nothing (a node
    // that never started a link has no such series; the origin's feed is not counted there).
    assert_eq!(report.relays_started[edge1], Some(1.0), "{table}");
    assert_eq!(report.relays_started[edge2], Some(1.0), "{table}");
    assert!(
        report.relays_started[origin].is_none_or(|v| v == 0.0),
        "{table}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["phases"].as_array().map(Vec::len), Some(7));
    drop(cluster);
    (report, table)
}

#[test]
fn failover_of_an_edge_and_of_the_origin() {
    use stoa_bench::failover::{self, Params, Victim};
    let runtime = runtime();
    for victim in [Victim::Edge, Victim::Origin] {
        // The origin holds the speaker and three listeners; three more spill over to an edge.
        let params = Params {
            listeners: 6,
            join_rate: 10.0,
            capacity: 4,
            victim,
            give_up: Duration::from_secs(40),
            namespaces: false,
        };
        let report = runtime
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(150),
                    failover::run(Path::new(env!("CARGO_BIN_EXE_stoa")), None, None, &params),
                )
                .await
            })
            .expect("bounded")
            .expect("failover run");
        eprintln!("{}", report.table());
        assert_eq!(report.heard_before, 6, "{victim:?}: {report:?}");
        let edges = report.placed.iter().filter(|(_, n)| *n > 0).count();
        assert!(
            edges >= 2,
            "listeners on the origin and an edge: {report:?}"
        );
        assert!(
            report.affected >= 1,
            "{victim:?}: the kill stopped audio: {report:?}"
        );
        assert_eq!(
            report.recovered, report.affected,
            "{victim:?}: every affected listener heard audio again: {report:?}"
        );
        if victim == Victim::Origin {
            assert_eq!(
                report.affected, 6,
                "every listener lost the speaker: {report:?}"
            );
            assert!(report.speaker_rejoined_ms.is_some(), "{report:?}");
        }
    }
}
