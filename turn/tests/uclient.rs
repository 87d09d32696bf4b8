//! Stoa's relay against coturn's own test client, `turnutils_uclient` (Debian package `coturn`),
//! over real loopback sockets: REST credentials (`-W secret`), client-to-client relaying
//! (`-y`: each client allocates, and they send to each other's relayed address) over UDP, TCP
//! and TLS with no loss; a wrong secret refused; peers outside the policy refused.
//!
//! Everything binds and targets 127.0.0.1 only. Run alone with
//! `cargo test -p stoa-turn --test uclient -- --nocapture`.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "test helpers unwrap; the test bounds real waits with the wall clock"
)]

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use stoa_turn::proto::{Config, PeerPolicy, PeerRule, PublicPeers, Quotas, RateLimit, Secret};
use stoa_turn::shell::{Relay, RelayConfig, TlsCertificates, TlsConfig};

const SECRET: &str = "uclient-secret";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Outer bound on one uclient run.
const UCLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// `count` consecutive UDP ports free on 127.0.0.1 right now, searched from a per-process base
/// so that parallel test binaries rarely collide. Tests of this binary run side by side, so each
/// call takes its candidates from a block no other call of this process gets (they would probe
/// the same ports, find them free, and then share them). Bounded: gives up after 200 candidates.
fn free_udp_range(count: u16) -> RangeInclusive<u16> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() as u16 % 100) * 200;
    for _ in 0..200 {
        let offset = NEXT.fetch_add(count, std::sync::atomic::Ordering::Relaxed) % 10_000;
        let start = base + offset;
        let all_free =
            (start..start + count).all(|port| UdpSocket::bind((LOCALHOST, port)).is_ok());
        if all_free {
            return start..=start + count - 1;
        }
    }
    panic!("no {count} consecutive free UDP ports on 127.0.0.1");
}

fn core(relay_ports: RangeInclusive<u16>, allow: &[&str]) -> Config {
    Config {
        realm: "stoa.test".into(),
        secret: Secret::new(SECRET),
        relay_ip: LOCALHOST,
        relay_ports,
        policy: PeerPolicy {
            allow: allow
                .iter()
                .map(|r| r.parse::<PeerRule>().unwrap())
                .collect(),
            public: PublicPeers::Refuse,
        },
        quotas: Quotas {
            per_user: 16,
            total: 16,
        },
        rate_limit: RateLimit::default(),
        max_lifetime: Duration::from_secs(3600),
        nonce_key: [1; 16],
    }
}

fn uclient_installed() -> bool {
    Command::new("turnutils_uclient")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Runs `turnutils_uclient ARGS 127.0.0.1` with a bounded wait.
fn uclient(args: &[&str]) -> Output {
    assert!(
        uclient_installed(),
        "turnutils_uclient is missing: ./test.sh installs it (Debian package coturn)"
    );
    let mut child = Command::new("turnutils_uclient")
        .args(args)
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn turnutils_uclient");
    let deadline = Instant::now() + UCLIENT_TIMEOUT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("uclient output");
    eprintln!(
        "turnutils_uclient {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// uclient's closing statistics: `(sent, received, lost)` messages.
fn totals(output: &Output) -> (u64, u64, u64) {
    let text = text(output);
    let number_after = |label: &str| -> u64 {
        let line = text
            .lines()
            .rev()
            .find(|line| line.contains(label))
            .unwrap_or_else(|| panic!("no {label:?} in uclient output"));
        let after = &line[line.find(label).unwrap() + label.len()..];
        after
            .split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (
        number_after("tot_send_msgs="),
        number_after("tot_recv_msgs="),
        number_after("Total lost packets"),
    )
}

/// A self-signed certificate for 127.0.0.1 made with the openssl CLI, in a fresh directory.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(
        status.success(),
        "openssl could not make a test certificate"
    );
    (cert, key)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stoa-turn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn start(core: Config, tls: Option<TlsConfig>) -> Relay {
    Relay::start(RelayConfig {
        bind_ip: LOCALHOST,
        udp_port: Some(0),
        tcp_port: Some(0),
        tls,
        max_connections: 64,
        // Two shards, so clients and their relay ports are spread over both.
        shards: 2,
        core,
    })
    .await
    .expect("relay starts")
}

/// Runs uclient on a blocking thread so the relay keeps running on the runtime.
async fn run_uclient(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        uclient(&args)
    })
    .await
    .unwrap()
}

fn args(port: u16, extra: &[&str], secret: &str) -> Vec<String> {
    let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    // -y: client-to-client through both relays; -c: no RTCP allocations; 4 clients, 50
    // messages of 160 bytes each (an Opus packet's size).
    for arg in [
        "-y", "-c", "-n", "50", "-m", "4", "-l", "160", "-W", secret, "-u", "alice",
    ] {
        args.push(arg.to_owned());
    }
    args.push("-p".into());
    args.push(port.to_string());
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_relays_over_udp_tcp_and_tls_without_loss() {
    let dir = temp_dir("uclient");
    let (certificate, private_key) = certificate(&dir);
    // Three runs of 8 allocations each; UDP allocations outlive their run until they expire,
    // and each shard owns half of the range: room for all of them on either shard.
    let relay = start(
        core(free_udp_range(48), &["127.0.0.1"]),
        Some(TlsConfig {
            port: 0,
            certificates: TlsCertificates::Files {
                certificate,
                private_key,
            },
        }),
    )
    .await;
    let runs = [
        ("udp", relay.udp_addr().unwrap().port(), vec![]),
        ("tcp", relay.tcp_addr().unwrap().port(), vec!["-t"]),
        ("tls", relay.tls_addr().unwrap().port(), vec!["-t", "-S"]),
    ];
    for (name, port, extra) in runs {
        let output = run_uclient(args(port, &extra, SECRET)).await;
        assert!(
            output.status.success(),
            "{name}: uclient failed:\n{}",
            text(&output)
        );
        // 4 clients x 50 messages, every one relayed: sent, received, none lost.
        assert_eq!(totals(&output), (200, 200, 0), "{name}: messages lost");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_with_a_wrong_secret_is_refused() {
    let relay = start(core(free_udp_range(4), &["127.0.0.1"]), None).await;
    let port = relay.udp_addr().unwrap().port();
    let output = run_uclient(args(port, &[], "not-the-secret")).await;
    assert!(!output.status.success(), "a wrong secret was accepted");
    assert!(text(&output).contains("Cannot complete Allocation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_peers_outside_the_policy_are_refused() {
    // Only the (pretend) SFU at 127.0.0.1:7882 is allowed; uclient's peers are the relayed
    // addresses 127.0.0.1:<relay port>, which the policy refuses. Ports for all 8 allocations
    // on either shard, so that the refusal cannot come from a lack of ports instead.
    let relay = start(core(free_udp_range(20), &["127.0.0.1:7882"]), None).await;
    let port = relay.udp_addr().unwrap().port();
    let output = run_uclient(args(port, &[], SECRET)).await;
    assert!(!output.status.success(), "a refused peer was accepted");
    assert!(
        text(&output).contains("403"),
        "no 403 Forbidden from the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_quota_holds_across_shards() {
    // uclient's 8 allocations all belong to "alice"; the two shards each see some of them.
    // With a relay-wide quota of 5 some must be refused, although neither shard alone would
    // exceed 5. Ports for all 8 on either shard (each shard owns half of the range), so that the
    // refusal cannot come from a lack of ports.
    let mut config = core(free_udp_range(20), &["127.0.0.1"]);
    config.quotas.per_user = 5;
    let relay = start(config, None).await;
    let port = relay.udp_addr().unwrap().port();
    let output = run_uclient(args(port, &[], SECRET)).await;
    assert!(!output.status.success(), "the quota was not enforced");
    assert!(
        text(&output).contains("486"),
        "no 486 Allocation Quota Reached from the relay: {}",
        text(&output)
    );
}
