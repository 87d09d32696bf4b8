//! Operator endpoints of a real `stoa serve --dev`: `/metrics` reflects a real WebSocket session
//! (up on join, down on leave), `/readyz` answers, and SIGTERM drains: connected clients get
//! `Leave { SERVER_SHUTDOWN }`, the server waits for their rooms to empty (or closes who is left
//! at the deadline; a second signal exits at once), and the process exits 0.
//! Plain TCP on 127.0.0.1; every wait is bounded and the server is killed when a test ends.

// These tests own a clock: they bound every wait on a real process.
#![allow(
    clippy::disallowed_methods,
    reason = "tests bound real waits with the wall clock"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use stoa_signaling::token::{self, Claims};

#[path = "../control/tests/common/redis_server.rs"]
mod redis_server;
mod support;

use support::{SignalClient, join_room, unix_now};

const TIMEOUT: Duration = Duration::from_secs(20);
const KEY: &str = "opskey";
const SECRET: &str = "a-long-enough-ops-test-secret-0123456789";

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(drain_seconds: u64) -> Server {
        Server::start_with(drain_seconds, &[])
    }

    /// Like [`Server::start`], with `STOA_*` settings of its own.
    fn start_with(drain_seconds: u64, env: &[(&str, &str)]) -> Server {
        let (http_port, rtc_port) = support::free_ports();
        let mut command = Command::new(env!("CARGO_BIN_EXE_stoa"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STOA_") {
                command.env_remove(name);
            }
        }
        let child = command
            .args(["serve", "--dev"])
            .env("STOA_DATA_DIR", support::scratch_dir("data"))
            .env("STOA_HTTP_PORT", http_port.to_string())
            .env("STOA_RTC_UDP_PORT", rtc_port.to_string())
            .env("STOA_KEYS", format!("{KEY}: {SECRET}"))
            .env("STOA_DRAIN_SECONDS", drain_seconds.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stoa");
        let server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
        };
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect_timeout(&server.addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "stoa did not listen");
            thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits (bounded by `within`) for the process to exit.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "stoa did not exit within {within:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 GET; the status code and the body, or `None` if the connection failed.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Parses Prometheus text: every sample line is `name{labels} value`; returns (series, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("value in {line:?}"));
            let name = series.split('{').next().unwrap_or_default();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name in {line:?}"
            );
            (series.to_owned(), value)
        })
        .collect()
}

fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = get(addr, "/metrics")?;
    assert_eq!(status, 200, "{body}");
    samples(&body)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

/// Polls `series` until it equals `want` (bounded).
fn wait_metric(addr: SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = metric(addr, series);
        if value == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {value:?}, expected {want}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_follow_a_session_and_readyz_answers() {
    let server = Server::start(5);
    let addr = server.addr;

    assert_eq!(
        get(addr, "/healthz").expect("healthz"),
        (200, "ok".to_owned())
    );
    assert_eq!(
        get(addr, "/readyz").expect("readyz"),
        (200, "ready".to_owned())
    );

    let (status, body) = get(addr, "/metrics").expect("metrics");
    assert_eq!(status, 200, "{body}");
    let all = samples(&body);
    for name in [
        "signaling_rooms",
        "signaling_sessions",
        "signaling_sessions_held",
        "signaling_tracks",
        "signaling_participants{role=\"publisher\"}",
        "signaling_participants{role=\"listener\"}",
        "signaling_webhook_events_total{outcome=\"delivered\"}",
        "sfu_peers",
        "sfu_tracks",
        "sfu_rtp_packets_received_total",
        "sfu_rtp_packets_forwarded_total",
        "sfu_rtp_packets_dropped_total{reason=\"unauthorized\"}",
        "sfu_rtp_packets_dropped_total{reason=\"muted\"}",
        "sfu_rtp_packets_lost_total",
        "sfu_datagrams_received_total",
        "sfu_bytes_received_total",
        "sfu_datagrams_sent_total",
        "sfu_bytes_sent_total",
        "sfu_forwarding_seconds_bucket{le=\"0.001\"}",
        "sfu_forwarding_seconds_bucket{le=\"+Inf\"}",
        "sfu_forwarding_seconds_count",
        "signaling_join_seconds_bucket{le=\"+Inf\"}",
        "signaling_join_seconds_sum",
        "signaling_join_seconds_count",
        "stoa_draining",
    ] {
        assert!(
            all.iter().any(|(series, _)| series == name),
            "{name} missing from:\n{body}"
        );
    }
    assert!(body.contains("# TYPE sfu_rtp_packets_forwarded_total counter"));
    assert!(body.contains("# TYPE signaling_join_seconds histogram"));
    assert_eq!(metric(addr, "signaling_sessions"), Some(0.0));

    let client = join_room(addr, (KEY, SECRET), "metrics-room", "alice");
    wait_metric(addr, "signaling_sessions", 1.0);
    wait_metric(addr, "signaling_rooms", 1.0);
    wait_metric(addr, "signaling_participants{role=\"publisher\"}", 1.0);
    client.close();
    wait_metric(addr, "signaling_sessions", 0.0);
    wait_metric(addr, "signaling_participants{role=\"publisher\"}", 0.0);
}

#[test]
fn each_room_keeps_to_one_engine_shard() {
    // Two shards (from the environment). Round robin would put the busy room's three peers
    // on both shards (2 and 1, then the quiet room's peer 2 and 2); kept together, the busy
    // room fills one shard and the quiet room takes the other.
    let server = Server::start_with(5, &[("STOA_RTC_SHARDS", "2")]);
    let addr = server.addr;
    wait_metric(addr, "sfu_shards", 2.0);
    let busy: Vec<SignalClient> = (0..3)
        .map(|i| join_room(addr, (KEY, SECRET), "busy-room", &format!("b{i}")))
        .collect();
    wait_metric(addr, "sfu_peers", 3.0);
    let quiet = join_room(addr, (KEY, SECRET), "quiet-room", "q");
    wait_metric(addr, "sfu_peers", 4.0);
    let per_shard: Vec<f64> = [0, 1]
        .iter()
        .map(|s| {
            metric(addr, &format!("sfu_shard_peers{{shard=\"{s}\"}}")).expect("sfu_shard_peers")
        })
        .collect();
    assert!(
        per_shard == [3.0, 1.0] || per_shard == [1.0, 3.0],
        "{per_shard:?}"
    );
    quiet.close();
    for c in busy {
        c.close();
    }
    wait_metric(addr, "sfu_peers", 0.0);
}

/// Reads until the `Leave` a draining server sends; checks it asks the client to leave for good.
fn expect_shutdown_leave(client: &mut SignalClient) {
    let leave = client.wait_for("a Leave", |m| match m {
        lk::signal_response::Message::Leave(l) => Some(l.clone()),
        _ => None,
    });
    assert_eq!(leave.reason, lk::DisconnectReason::ServerShutdown as i32);
    assert_eq!(leave.action, lk::leave_request::Action::Disconnect as i32);
    assert!(!leave.can_reconnect);
}

#[test]
fn sigterm_waits_for_rooms_to_empty_then_exits() {
    let mut server = Server::start(30);
    let addr = server.addr;
    let mut alice = join_room(addr, (KEY, SECRET), "drain-room", "alice");
    let mut bob = join_room(addr, (KEY, SECRET), "drain-room", "bob");
    server.terminate();
    expect_shutdown_leave(&mut alice);
    expect_shutdown_leave(&mut bob);

    // Joins and readiness are refused from then on ...
    let (status, body) = get(addr, "/readyz").expect("readyz while draining");
    assert_eq!(status, 503, "{body}");
    let (status, body) = get(addr, "/rtc?access_token=x").expect("rtc while draining");
    assert_eq!(status, 503, "{body}");
    // ... but the server waits for the room to empty: nobody is cut off mid-sentence.
    thread::sleep(Duration::from_secs(1));
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "stoa exited with a room still occupied"
    );
    alice.close();
    thread::sleep(Duration::from_millis(500));
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "stoa exited with bob still in the room"
    );
    wait_metric(addr, "signaling_sessions", 1.0);

    // The last one leaves: the server exits long before its 30 s deadline.
    let left = Instant::now();
    bob.close();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}");
    assert!(left.elapsed() < Duration::from_secs(10));
}

#[test]
fn drain_deadline_closes_the_sessions_left() {
    let mut server = Server::start(2);
    let addr = server.addr;
    let mut client = join_room(addr, (KEY, SECRET), "stubborn-room", "carol");
    let started = Instant::now();
    server.terminate();
    expect_shutdown_leave(&mut client);

    // The client ignores the Leave; at the deadline the server closes it and exits.
    while client.next_response().is_some() {}
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(1500),
        "closed after {closed:?}, before the 2 s deadline"
    );
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit {status}");
    assert!(started.elapsed() < TIMEOUT);
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(60);
    let addr = server.addr;
    let mut client = join_room(addr, (KEY, SECRET), "second-signal-room", "dave");
    let started = Instant::now();
    server.terminate();
    expect_shutdown_leave(&mut client);
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn livekit_config_is_read_and_ignored_keys_warned_once() {
    // LiveKit's redis.address becomes the control plane's Redis store.
    let redis = redis_server::RedisServer::start();
    let (http_port, rtc_port) = support::free_ports();
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-livekit.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "port: {http_port}\nrtc:\n  udp_port: {rtc_port}\n  tcp_port: 7881\nredis:\n  address: 127.0.0.1:{}\nkeys:\n  {KEY}: {SECRET}\n",
            redis.port
        ),
    )
    .expect("write livekit config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_stoa"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STOA_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["serve", "--dev", "--livekit-config"])
        .arg(&path)
        .env("STOA_DATA_DIR", support::scratch_dir("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stoa");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], http_port)),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("listening")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(err) => panic!("no `listening` line ({err}): {lines:#?}"),
        }
    }
    let listening = lines.last().cloned().unwrap_or_default();
    assert!(
        listening.contains(&format!("http=127.0.0.1:{http_port}"))
            && listening.contains(&format!("rtc_udp=127.0.0.1:{rtc_port}")),
        "{listening}"
    );
    assert!(
        lines.iter().any(|l| l.contains("store=Redis")),
        "the LiveKit redis section was not used: {lines:#?}"
    );
    let key = "`rtc.tcp_port`";
    let warned = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains(key))
        .count();
    assert_eq!(warned, 1, "{key} warned {warned} times: {lines:#?}");
    assert!(!lines.iter().any(|l| l.contains(SECRET)), "{lines:#?}");
    assert_eq!(
        get(server.addr, "/readyz").expect("readyz"),
        (200, "ready".to_owned())
    );
    server.terminate();
    let status = server.wait_exit(TIMEOUT);
    assert!(status.success(), "exit {status}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn info_logs_name_room_and_participant_but_no_ip_or_token() {
    let dir = support::scratch_dir("ops-logs");
    let config = dir.join("stoa.toml");
    std::fs::write(&config, "[logging]\njson = true\nlevel = \"info\"\n").expect("write config");
    let stoa = support::Stoa::start(
        &config,
        &[
            ("STOA_DATA_DIR", dir.join("data").to_str().expect("utf-8")),
            ("STOA_KEYS", &format!("{KEY}: {SECRET}")),
        ],
    );
    let mut claims = Claims::default();
    claims.video.room_join = true;
    claims.video.room = "log-room".to_owned();
    let jwt = token::mint(
        KEY,
        SECRET,
        "log-alice",
        None,
        claims.video,
        Duration::from_secs(600),
        unix_now(),
    )
    .expect("mint");
    let (client, _) = SignalClient::join(stoa.addr, &jwt);
    client.close();

    // Bounded wait for both lines of the session.
    let deadline = Instant::now() + TIMEOUT;
    let (joined, left) = loop {
        let log = stoa.log_text();
        let line = |message: &str| {
            log.lines()
                .find(|l| l.contains(&format!("\"message\":\"{message}\"")))
                .map(str::to_owned)
        };
        if let (Some(j), Some(l)) = (line("participant joined"), line("participant left")) {
            break (j, l);
        }
        assert!(Instant::now() < deadline, "no join/leave lines in:\n{log}");
        thread::sleep(Duration::from_millis(50));
    };
    for line in [&joined, &left] {
        let json: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        let spans = json["spans"].as_array().expect("spans");
        // room → participant, outermost first.
        assert_eq!(spans[0]["name"], "room", "{line}");
        assert_eq!(spans[0]["room"], "log-room", "{line}");
        assert_eq!(spans[1]["name"], "participant", "{line}");
        assert_eq!(spans[1]["identity"], "log-alice", "{line}");
        assert!(
            spans[1]["participant"]
                .as_str()
                .is_some_and(|p| p.starts_with("PA_")),
            "{line}"
        );
        // The client's address is its network only.
        assert_eq!(spans[1]["client"], "127.0.0.x", "{line}");
    }
    let log = stoa.log_text();
    assert!(!log.contains(&jwt), "the token was logged:\n{log}");
    let signature = jwt.rsplit('.').next().expect("jwt signature");
    assert!(!log.contains(signature), "the token's signature was logged");
    for line in log.lines().filter(|l| l.contains("participant")) {
        assert!(!line.contains("127.0.0.1"), "a client IP in: {line}");
    }
    stoa.stop();
}
