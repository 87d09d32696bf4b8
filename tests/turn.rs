//! `stoa turn`: the relay alone, configured from a file, answers coturn's `turnutils_uclient`
//! with REST credentials over UDP and TCP, and refuses to start without a secret. The relay
//! inside `stoa serve` shows what it relayed on `/metrics`.
//! Everything binds and targets 127.0.0.1. Needs `turnutils_uclient` (Debian `coturn`), which
//! ./test.sh installs.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "the test bounds real waits with the wall clock"
)]

use std::net::{TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

const SECRET: &str = "stoa-turn-cli-secret";

/// A free port for both UDP and TCP on 127.0.0.1, and `count` free UDP ports after a gap.
/// Bounded: 300 candidates. Tests running side by side in this process start at different
/// candidates, so two of them never probe, find free and then both bind the same ports.
fn free_ports(count: u16) -> (u16, u16) {
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
    // Below Linux's ephemeral ports (32768 and up), which uclient's own sockets take.
    let base = 21_000 + (std::process::id() as u16 % 20) * 500 + call * 50;
    for start in (0..300u16).map(|k| 21_000 + (base - 21_000 + k * 60) % 11_000) {
        let listener_free = UdpSocket::bind(("127.0.0.1", start)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", start)).is_ok();
        let relay = start + 10;
        let range_free = (relay..relay + count).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if listener_free && range_free {
            return (start, relay);
        }
    }
    panic!("no free ports on 127.0.0.1");
}

fn config_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("stoa-turn-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn uclient(args: &[&str]) -> Output {
    let mut child = Command::new("turnutils_uclient")
        .args(args)
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("turnutils_uclient (Debian package coturn; ./test.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

#[test]
fn stoa_turn_relays_for_uclient_over_udp_and_tcp() {
    // UDP allocations outlive their run, and each relay thread owns part of the range: room
    // for both runs' allocations on either thread.
    let (port, relay) = free_ports(24);
    let config = config_file(
        "relay",
        &format!(
            "[turn]\nudp_port = {port}\ntcp_port = {port}\nrelay_port_range_start = {relay}\n\
             relay_port_range_end = {}\nsecret = \"{SECRET}\"\nallowed_peers = [\"127.0.0.1\"]\n",
            relay + 23
        ),
    );
    let child = Command::new(env!("CARGO_BIN_EXE_stoa"))
        .args(["turn", "--dev", "--config"])
        .arg(&config)
        .env_remove("STOA_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _server = support::Killed(child);
    // Up once the TCP listener accepts (bounded: 10 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "stoa turn did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = port.to_string();
    for transport in [&[][..], &["-t"][..]] {
        let mut args = transport.to_vec();
        args.extend([
            "-y", "-c", "-n", "20", "-m", "2", "-l", "160", "-W", SECRET, "-u", "bob", "-p", &port,
        ]);
        let output = uclient(&args);
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "uclient {transport:?} failed:\n{text}"
        );
        assert!(
            text.contains("tot_send_msgs=40, tot_recv_msgs=40")
                && text.contains("Total lost packets 0 "),
            "uclient {transport:?} lost messages:\n{text}"
        );
    }
    let _ = std::fs::remove_file(config);
}

#[test]
fn stoa_turn_refuses_to_start_without_a_secret() {
    let config = config_file("nosecret", "[turn]\nudp_port = 0\ntcp_port = 0\n");
    let output = Command::new(env!("CARGO_BIN_EXE_stoa"))
        .args(["turn", "--dev", "--config"])
        .arg(&config)
        .env_remove("STOA_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[turn] secret"), "{stderr}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn serve_exports_turn_metrics() {
    let (port, relay) = free_ports(24);
    let config = config_file(
        "serve-metrics",
        &format!(
            "[turn]\nenabled = true\nudp_port = {port}\ntcp_port = {port}\n\
             relay_port_range_start = {relay}\nrelay_port_range_end = {}\nsecret = \"{SECRET}\"\n\
             allowed_peers = [\"127.0.0.1\"]\n",
            relay + 23
        ),
    );
    let stoa = support::Stoa::start(
        &config,
        &[(
            "STOA_DATA_DIR",
            support::scratch_dir("turn-metrics").to_str().unwrap(),
        )],
    );
    let port = port.to_string();
    let output = uclient(&[
        "-y", "-c", "-n", "20", "-m", "2", "-l", "160", "-W", SECRET, "-u", "bob", "-p", &port,
    ]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "uclient failed:\n{text}");

    // The relay exports once a second: poll (bounded) until the run shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = support::request(stoa.addr, "GET", "/metrics", None, None);
        assert_eq!(status, 200, "{body}");
        let value = |series: &str| {
            body.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        // Two clients, each with its allocation; 40 messages relayed each way.
        if value("turn_allocations_created_total") >= 2.0
            && value("turn_to_peer_packets_total") >= 40.0
            && value("turn_to_client_packets_total") >= 40.0
        {
            assert!(value("turn_to_peer_bytes_total") >= 40.0 * 160.0, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "TURN metrics did not show the run:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stoa.stop();
    let _ = std::fs::remove_file(config);
}
