//! Certificates by ACME, against a real ACME server: Debian's `pebble`, started by the test on
//! 127.0.0.1 with `pebble-challtestsrv` as its DNS server (every name resolves to 127.0.0.1), so
//! pebble's validation authority reaches Stoa's HTTPS port for TLS-ALPN-01 (its `tlsPort`).
//!
//! - A fresh `stoa serve` with `[http] acme_domains` makes an account key, obtains a certificate
//!   and serves it for HTTPS, WSS and TURN over TLS; clients trust it through pebble's root.
//! - With the ACME server down, Stoa keeps serving its cached certificate and says why in one
//!   log line.
//! - A cached certificate that is due is renewed while Stoa runs: the same process serves the
//!   old certificate, then pebble's, without a restart.
//!
//! Needs `pebble` (Debian package pebble; ./test.sh installs it). Every wait is bounded; pebble,
//! its DNS server and Stoa are killed when a test ends.

#![allow(
    clippy::disallowed_methods,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use stoa_signaling::token::{self, Claims};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use support::{Killed, Stoa, scratch_dir};

const DOMAIN: &str = "rooms.stoa.test";

/// Bound on obtaining a certificate (pebble validates at once with PEBBLE_VA_NOSLEEP).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(60);

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free tcp port")
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free udp port")
        .port()
}

/// Two consecutive free UDP ports below the ephemeral range, for TURN relay ports; each call
/// looks further on, so tests running at once never pick the same ones.
fn relay_ports() -> (u16, u16) {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let first = 21_000 + (std::process::id() % 500) as u16 * 10;
    loop {
        let start = first + NEXT.fetch_add(2, Ordering::Relaxed);
        assert!(start < 29_000, "no free relay ports");
        if UdpSocket::bind(("127.0.0.1", start)).is_ok()
            && UdpSocket::bind(("127.0.0.1", start + 1)).is_ok()
        {
            return (start, start + 1);
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A CA made here, and a certificate it signs.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `names`, valid from `days_before` days ago to
    /// `days_after` days from now.
    fn leaf(&self, names: &[&str], days_before: i64, days_after: i64) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("leaf params");
        let now = time_now();
        params.not_before = now - time::Duration::days(days_before);
        params.not_after = now + time::Duration::days(days_after);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    }

    fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("ca der")
    }
}

fn time_now() -> time::OffsetDateTime {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).expect("secs"))
        .expect("timestamp")
}

/// pebble and its DNS server, killed on drop.
struct Pebble {
    _dns: Killed,
    _pebble: Killed,
    /// The directory URL.
    directory: String,
    /// pebble's own HTTPS CA (for `acme_ca_file`).
    ca_file: PathBuf,
    ca: TestCa,
    management: SocketAddr,
    log: PathBuf,
}

impl Pebble {
    /// Starts pebble validating TLS-ALPN-01 on `tls_port` of 127.0.0.1, on `listen`.
    fn start(dir: &Path, listen: u16, tls_port: u16) -> Pebble {
        let ca = TestCa::new("pebble API test CA");
        let (cert, key) = ca.leaf(&["127.0.0.1", "localhost"], 1, 30);
        let ca_file = dir.join("pebble-api-ca.pem");
        write(&ca_file, &ca.pem);
        write(&dir.join("pebble-api.pem"), &cert);
        write(&dir.join("pebble-api.key"), &key);
        let management = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let config = dir.join("pebble.json");
        write(
            &config,
            &format!(
                r#"{{"pebble": {{
                    "listenAddress": "127.0.0.1:{listen}",
                    "managementListenAddress": "{management}",
                    "certificate": "{}",
                    "privateKey": "{}",
                    "httpPort": {},
                    "tlsPort": {tls_port},
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false
                }}}}"#,
                dir.join("pebble-api.pem").display(),
                dir.join("pebble-api.key").display(),
                free_tcp_port(),
            ),
        );
        let dns_port = free_udp_port();
        let dns_log = std::fs::File::create(dir.join("challtestsrv.log")).expect("log");
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{}", free_tcp_port()),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdin(Stdio::null())
            .stdout(dns_log.try_clone().expect("log"))
            .stderr(dns_log)
            .spawn()
            .expect("spawn pebble-challtestsrv (Debian package pebble)");
        let log = dir.join("pebble.log");
        let out = std::fs::File::create(&log).expect("log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // Validate at once, accept every nonce: the test is about Stoa, not about pebble's
            // client robustness checks.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn pebble (Debian package pebble)");
        let pebble = Pebble {
            _dns: Killed(dns),
            _pebble: Killed(pebble),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_file,
            ca,
            management,
            log,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], listen));
        wait_until("pebble to listen", Duration::from_secs(20), || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        pebble
    }

    /// The root pebble issues certificates under (made anew at each start).
    fn issuing_root(&self) -> CertificateDer<'static> {
        let (status, body, _) =
            https_get(self.management, "127.0.0.1", &[self.ca.der()], "/roots/0")
                .unwrap_or_else(|e| panic!("pebble /roots/0: {e}\n{}", self.log_text()));
        assert_eq!(status, 200, "{body}");
        CertificateDer::from_pem_slice(body.as_bytes()).expect("pebble root PEM")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A verified TLS connection to `addr` for `name`; the error text if the handshake fails.
fn tls_connect(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    let connection =
        ClientConnection::new(client_config(roots, alpn), name).map_err(|e| e.to_string())?;
    let mut stream = StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| e.to_string())?;
    }
    Ok(stream)
}

/// The leaf certificate `addr` presents for `name`, if it verifies against `roots`.
fn served_leaf(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
) -> Result<CertificateDer<'static>, String> {
    let stream = tls_connect(addr, name, roots, &[b"http/1.1"])?;
    stream
        .conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no certificate".to_owned())
}

/// GET `path` over verified TLS: (status, body, the head).
fn https_get(
    addr: SocketAddr,
    name: &str,
    roots: &[CertificateDer<'static>],
    path: &str,
) -> Result<(u16, String, String), String> {
    let mut stream = tls_connect(addr, name, roots, &[b"http/1.1"])?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    // A server may close without close_notify; what was read counts.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status: {head}"))?;
    Ok((status, body.to_owned(), head.to_owned()))
}

/// Stoa's config for ACME from `directory` (pebble's CA file `ca_file`) into `cache`, with
/// TURN over TLS on `turns_port`.
fn stoa_config(
    dir: &Path,
    directory: &str,
    ca_file: &Path,
    cache: &Path,
    turns_port: u16,
) -> PathBuf {
    let (relay_start, relay_end) = relay_ports();
    let config = dir.join("stoa.toml");
    write(
        &config,
        &format!(
            "[http]\nacme_domains = [\"{DOMAIN}\"]\nacme_email = \"ops@stoa.test\"\n\
             acme_directory = \"{directory}\"\nacme_ca_file = \"{}\"\nacme_cache_dir = \"{}\"\n\
             [turn]\nenabled = true\nudp_port = 0\ntcp_port = 0\ntls_port = {turns_port}\n\
             threads = 1\nrelay_port_range_start = {relay_start}\nrelay_port_range_end = {relay_end}\n",
            ca_file.display(),
            cache.display()
        ),
    );
    config
}

fn spawn_stoa(dir: &Path, config: &Path, https_port: u16) -> Stoa {
    let data = dir.join("data");
    Stoa::spawn(
        config,
        &[
            ("STOA_HTTP_PORT", &https_port.to_string()),
            ("STOA_DATA_DIR", data.to_str().expect("utf-8")),
            ("STOA_LOG_LEVEL", "info,stoa=debug"),
        ],
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn a_fresh_node_obtains_a_certificate_and_serves_https_wss_and_turns() {
    let dir = scratch_dir("acme-fresh");
    let https_port = free_tcp_port();
    let pebble = Pebble::start(&dir, free_tcp_port(), https_port);
    let cache = dir.join("acme-cache");
    let turns_port = free_tcp_port();
    let config = stoa_config(&dir, &pebble.directory, &pebble.ca_file, &cache, turns_port);
    let mut stoa = spawn_stoa(&dir, &config, https_port);
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let root = pebble.issuing_root();

    let deadline = Instant::now() + ISSUE_TIMEOUT;
    let leaf = loop {
        match served_leaf(https, DOMAIN, std::slice::from_ref(&root)) {
            Ok(leaf) => break leaf,
            Err(e) => {
                assert!(!stoa.exited(), "stoa exited:\n{}", stoa.log_text());
                assert!(
                    Instant::now() < deadline,
                    "no certificate from pebble within {ISSUE_TIMEOUT:?} (last: {e}).\n\
                     stoa:\n{}\npebble:\n{}",
                    stoa.log_text(),
                    pebble.log_text()
                );
                thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(
        stoa.log_text().contains("ACME: certificate obtained"),
        "{}",
        stoa.log_text()
    );

    // HTTPS.
    let (status, body, _) =
        https_get(https, DOMAIN, std::slice::from_ref(&root), "/healthz").expect("https");
    assert_eq!((status, body.as_str()), (200, "ok"));

    // WSS: a WebSocket upgrade of /rtc over the same certificate.
    let mut claims = Claims::default();
    claims.video.room_join = true;
    claims.video.room = "acme-room".to_owned();
    let jwt = token::mint(
        "devkey",
        "secret",
        "alice",
        None,
        claims.video,
        Duration::from_secs(600),
        unix_now(),
    )
    .expect("mint");
    let mut wss = tls_connect(https, DOMAIN, std::slice::from_ref(&root), &[b"http/1.1"])
        .expect("wss handshake");
    write!(
        wss,
        "GET /rtc?access_token={jwt}&protocol=16 HTTP/1.1\r\nHost: {DOMAIN}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .expect("upgrade request");
    let mut head = [0u8; 12];
    wss.read_exact(&mut head).expect("upgrade response");
    assert_eq!(&head, b"HTTP/1.1 101", "WSS upgrade refused");
    drop(wss);

    // TURN over TLS: the same certificate on the relay's TLS port.
    let turns = SocketAddr::from(([127, 0, 0, 1], turns_port));
    let turns_leaf = served_leaf(turns, DOMAIN, std::slice::from_ref(&root)).expect("turns");
    assert_eq!(
        turns_leaf, leaf,
        "TURN over TLS serves the ACME certificate"
    );

    // The account key and the certificate are kept, readable by the owner only.
    use std::os::unix::fs::PermissionsExt as _;
    for file in ["account-key.pem", "private-key.pem", "certificate.pem"] {
        let path = cache.join(file);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", path.display());
    }
    stoa.stop();
}

#[test]
fn a_down_acme_server_leaves_the_cached_certificate_in_use_and_says_why_once() {
    let dir = scratch_dir("acme-down");
    let cache = dir.join("acme-cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    // A certificate that is due (1 day left of 11), from an earlier run.
    let earlier = TestCa::new("earlier CA");
    let (cert, key) = earlier.leaf(&[DOMAIN], 10, 1);
    write(&cache.join("certificate.pem"), &cert);
    write(&cache.join("private-key.pem"), &key);
    // Nothing listens on the directory's port.
    let dead = free_tcp_port();
    let ca = TestCa::new("unused");
    let ca_file = dir.join("ca.pem");
    write(&ca_file, &ca.pem);
    let https_port = free_tcp_port();
    let config = stoa_config(
        &dir,
        &format!("https://127.0.0.1:{dead}/dir"),
        &ca_file,
        &cache,
        free_tcp_port(),
    );
    let mut stoa = spawn_stoa(&dir, &config, https_port);
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));

    wait_until("the ACME failure in the log", ISSUE_TIMEOUT, || {
        assert!(!stoa.exited(), "stoa exited:\n{}", stoa.log_text());
        stoa.log_text().contains("ACME: no certificate")
    });
    // The cached certificate is served all along.
    let (status, body, _) = https_get(https, DOMAIN, &[earlier.der()], "/healthz")
        .expect("https with the cached certificate");
    assert_eq!((status, body.as_str()), (200, "ok"));
    let log = stoa.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ACME: no certificate"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per failed attempt:\n{log}");
    let line = lines[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&format!("127.0.0.1:{dead}"))
            && line.contains("keeping the current certificate"),
        "the line names the server and what happens: {line}"
    );
    assert!(
        line.to_lowercase().contains("connect") || line.contains("refused"),
        "the line says why: {line}"
    );
    stoa.stop();
}

#[test]
fn a_due_certificate_is_renewed_without_a_restart() {
    let dir = scratch_dir("acme-renew");
    let cache = dir.join("acme-cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    let earlier = TestCa::new("earlier CA");
    let (cert, key) = earlier.leaf(&[DOMAIN], 10, 1);
    write(&cache.join("certificate.pem"), &cert);
    write(&cache.join("private-key.pem"), &key);
    let https_port = free_tcp_port();
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));

    // Stoa serves the cached certificate from its start (the log says so) ...
    let pebble_dir = dir.join("pebble");
    std::fs::create_dir_all(&pebble_dir).expect("pebble dir");
    let pebble = Pebble::start(&pebble_dir, free_tcp_port(), https_port);
    let config = stoa_config(
        &dir,
        &pebble.directory,
        &pebble.ca_file,
        &cache,
        free_tcp_port(),
    );
    let mut stoa = spawn_stoa(&dir, &config, https_port);
    let root = pebble.issuing_root();
    let roots = [earlier.der(), root];
    wait_until("stoa to serve HTTPS", Duration::from_secs(20), || {
        served_leaf(https, DOMAIN, &roots).is_ok()
    });
    let old = CertificateDer::from_pem_slice(cert.as_bytes()).expect("old der");

    // ... and replaces it with pebble's within the same process.
    let deadline = Instant::now() + ISSUE_TIMEOUT;
    while !served_leaf(https, DOMAIN, &roots).is_ok_and(|leaf| leaf != old) {
        assert!(!stoa.exited(), "stoa exited:\n{}", stoa.log_text());
        assert!(
            Instant::now() < deadline,
            "no renewed certificate within {ISSUE_TIMEOUT:?}.\nstoa:\n{}\npebble:\n{}",
            stoa.log_text(),
            pebble.log_text()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let log = stoa.log_text();
    assert!(
        log.contains("ACME: serving the cached certificate"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("ACME: certificate obtained") && l.contains("renewal=true")),
        "{log}"
    );
    assert_eq!(
        log.matches(" starting ").count(),
        1,
        "one process, no restart:\n{log}"
    );
    // The renewed certificate verifies against pebble's root alone.
    let (status, _, _) = https_get(https, DOMAIN, &roots[1..], "/healthz").expect("renewed");
    assert_eq!(status, 200);
    stoa.stop();
    let _ = pebble.log_text();
}
