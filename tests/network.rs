//! How a node meets the network without a proxy: HTTPS and WSS served directly from PEM files
//! (and TURN over TLS with the same certificate), and the public address discovered with STUN
//! against coturn's `turnserver` (`rtc.use_external_ip`). Real processes on 127.0.0.1 only;
//! certificates are made here with `openssl`, which ./test.sh installs with coturn.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "the test bounds real waits with the wall clock"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

mod support;

const TIMEOUT: Duration = Duration::from_secs(20);
const TURN_SECRET: &str = "network-test-turn-secret";

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// `count` consecutive free UDP ports on 127.0.0.1 (bounded: 200 candidates), below Linux's
/// ephemeral range (32768 and up), where the test's own clients would take ports from under the
/// relay.
fn free_udp_range(count: u16) -> u16 {
    let base = 21_000 + (std::process::id() % 100) as u16 * 100;
    (0..200)
        .map(|i| 21_000 + (base - 21_000 + i * 37) % 11_000)
        .find(|&start| (start..start + count).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()))
        .expect("free UDP ports on 127.0.0.1")
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

/// A self-signed certificate for 127.0.0.1 and its key, in `dir`.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("node.crt"), dir.join("node.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            // A leaf, not a CA: TLS clients refuse a CA certificate as the server's own.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl req failed");
    (crt, key)
}

/// A TLS connection to `addr` that trusts only `ca`.
fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    rustls::StreamOwned::new(connection, tcp)
}

/// Sends `request` over TLS and reads the response head (and what came with it).
fn tls_exchange(addr: SocketAddr, ca: &Path, request: &str) -> String {
    let mut stream = tls_connect(addr, ca);
    stream.write_all(request.as_bytes()).unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head is complete (a WebSocket stays open after it).
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    // For a plain response, the rest of the body too.
    if let Ok(n) = stream.read(&mut buf) {
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[test]
fn https_wss_and_turns_share_one_certificate() {
    let dir = support::scratch_dir("network-tls");
    let (crt, key) = certificate(&dir);
    let turns_port = free_tcp_port();
    let relay = free_udp_range(16);
    let config = dir.join("stoa.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\n\
             [turn]\nenabled = true\nudp_port = 0\ntcp_port = 0\ntls_port = {turns_port}\n\
             secret = \"{TURN_SECRET}\"\nallowed_peers = [\"127.0.0.1\"]\n\
             relay_port_range_start = {relay}\nrelay_port_range_end = {}\n",
            crt.display(),
            key.display(),
            relay + 15,
        ),
    )
    .unwrap();

    let stoa = start_tls(&config, &dir);
    let addr = stoa.addr;

    // HTTPS: the health check and the web app's API answer over TLS.
    let response = tls_exchange(
        addr,
        &crt,
        &format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    // WSS: a LiveKit signaling upgrade over the same TLS listener.
    let jwt = dev_token("wss-room", "alice");
    let response = tls_exchange(
        addr,
        &crt,
        &format!(
            "GET /rtc?access_token={jwt}&protocol=16 HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    );
    assert!(
        response.starts_with("HTTP/1.1 101"),
        "no WebSocket upgrade over TLS: {response}"
    );

    // Plain HTTP is not served on the TLS port.
    let plain = support::try_request(addr, "GET", "/healthz", None, None);
    assert!(
        !matches!(plain, Some((200, _))),
        "plain HTTP answered on the HTTPS port: {plain:?}"
    );

    // TURN over TLS with the HTTPS certificate: coturn's client relays through it.
    let output = Command::new("turnutils_uclient")
        .args(["-t", "-S", "-y", "-c", "-n", "10", "-m", "1", "-l", "120"])
        .args([
            "-W",
            TURN_SECRET,
            "-u",
            "bob",
            "-p",
            &turns_port.to_string(),
        ])
        .arg("127.0.0.1")
        .stdin(Stdio::null())
        .output()
        .expect("run turnutils_uclient");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "uclient over TLS failed:\n{text}");
    // The summary line counts both clients of the pair: 10 messages each, all delivered.
    assert!(
        text.contains("tot_send_msgs=20, tot_recv_msgs=20")
            && text.contains("Total lost packets 0 "),
        "uclient over TLS lost messages:\n{text}"
    );
    stoa.stop();
}

#[test]
fn a_bad_certificate_fails_start_up_with_one_line() {
    let dir = support::scratch_dir("network-bad-tls");
    let (crt, _key) = certificate(&dir);
    let config = dir.join("stoa.toml");
    // The certificate file given as the key: no private key in it.
    std::fs::write(
        &config,
        format!(
            "[http]\ntls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
            crt.display(),
            crt.display()
        ),
    )
    .unwrap();
    let (stderr, line) = refused(&config, &dir);
    assert!(
        line.contains("http.tls_private_key") && line.contains("node.crt"),
        "{stderr}"
    );

    // Only one of the two files: refused while reading the config.
    std::fs::write(
        &config,
        format!("[http]\ntls_certificate = \"{}\"\n", crt.display()),
    )
    .unwrap();
    let (stderr, _) = refused(&config, &dir);
    assert!(
        stderr.contains("set both http.tls_certificate and http.tls_private_key"),
        "{stderr}"
    );
}

#[test]
fn the_public_address_is_discovered_with_stun() {
    let dir = support::scratch_dir("network-stun");
    let stun_port = free_udp_port();
    let coturn = support::Killed(
        Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={stun_port}"))
            // UDP only: the port is free for UDP, and a TCP listener on it could find the
            // port taken by another test's connection (coturn then retries the bind forever).
            .args([
                "--stun-only",
                "--no-tcp",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-stdout-log",
            ])
            .arg(format!(
                "--pidfile={}",
                dir.join("turnserver.pid").display()
            ))
            .arg(format!("--log-file={}", dir.join("coturn.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run turnserver"),
    );
    let config = dir.join("stoa.toml");
    std::fs::write(
        &config,
        format!("[rtc]\nuse_external_ip = true\nstun_servers = [\"127.0.0.1:{stun_port}\"]\n"),
    )
    .unwrap();
    // coturn may take a moment to listen: the discovery retries, and so does this (bounded).
    let deadline = Instant::now() + TIMEOUT;
    let stoa = loop {
        let output_or_stoa = try_start(&config, &dir);
        match output_or_stoa {
            Ok(stoa) => break stoa,
            Err(log) => {
                assert!(Instant::now() < deadline, "stoa never started:\n{log}");
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    };
    let log = stoa.log_text();
    assert!(
        log.contains("public address discovered with STUN"),
        "no discovery in the log:\n{log}"
    );
    // The node serves with the discovered address: a client joins.
    let jwt = dev_token("stun-room", "alice");
    let (client, join) = support::SignalClient::join(stoa.addr, &jwt);
    assert!(join.room.is_some());
    client.close();
    stoa.stop();
    drop(coturn);

    // No STUN server answers: one clear line, non-zero exit.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::fs::write(
        &config,
        format!("[rtc]\nuse_external_ip = true\nstun_servers = [\"127.0.0.1:{silent_port}\"]\n"),
    )
    .unwrap();
    let (stderr, line) = refused(&config, &dir);
    assert!(
        line.contains("rtc.use_external_ip: no STUN server")
            && line.contains(&format!("127.0.0.1:{silent_port}")),
        "{stderr}"
    );
}

/// A dev-key token for `room`.
fn dev_token(room: &str, identity: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stoa"))
        .args(["token", "--dev", "--room", room, "--identity", identity])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Starts `stoa serve --dev --config CONFIG`, waiting (bounded) until it answers over TLS.
fn start_tls(config: &Path, dir: &Path) -> support::Stoa {
    let stoa = support::Stoa::spawn(
        config,
        &[("STOA_DATA_DIR", dir.join("data").to_str().unwrap())],
    );
    let deadline = Instant::now() + TIMEOUT;
    while TcpStream::connect_timeout(&stoa.addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "stoa did not listen:\n{}",
            stoa.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stoa
}

/// Starts `stoa serve --dev --config CONFIG` over plain HTTP; its log if it exited instead.
fn try_start(config: &Path, dir: &Path) -> Result<support::Stoa, String> {
    let mut stoa = support::Stoa::spawn(
        config,
        &[("STOA_DATA_DIR", dir.join("data").to_str().unwrap())],
    );
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some((200, _)) = support::try_request(stoa.addr, "GET", "/healthz", None, None) {
            return Ok(stoa);
        }
        if stoa.exited() {
            return Err(stoa.log_text());
        }
        assert!(Instant::now() < deadline, "stoa hung:\n{}", stoa.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `stoa serve --dev --config CONFIG`, which must fail: its stderr and last line.
fn refused(config: &Path, dir: &Path) -> (String, String) {
    let output = serve_once(config, dir);
    assert!(!output.status.success(), "stoa serve started");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    (stderr, line)
}

/// Runs `stoa serve --dev --config CONFIG` expecting it to stop by itself (bounded).
fn serve_once(config: &Path, dir: &Path) -> std::process::Output {
    let (http, rtc) = support::free_ports();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stoa"))
        .args(["serve", "--dev", "--config"])
        .arg(config)
        .env_remove("STOA_CONFIG")
        .env("STOA_DATA_DIR", dir.join("data"))
        .env("STOA_HTTP_PORT", http.to_string())
        .env("STOA_RTC_UDP_PORT", rtc.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("stoa serve kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
