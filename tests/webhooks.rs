//! Webhooks to `https://` receivers, from a real `stoa serve --dev` to local HTTPS servers on
//! 127.0.0.1 (rustls, certificates made here with rcgen):
//!
//! - a receiver whose certificate a private CA issued gets signed events once that CA is trusted,
//!   through `[webhook] ca_file` or through the system's trust store (`SSL_CERT_FILE`);
//! - a receiver with a self-signed certificate, and one whose certificate (from the trusted CA)
//!   names another host, never get a request: Stoa refuses their certificates, does not retry,
//!   and counts each event in `signaling_webhook_events_total{outcome="certificate_refused"}`.
//!
//! Every wait is bounded; servers and receivers stop when a test ends.

#![allow(
    clippy::disallowed_methods,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use stoa_signaling::token::ApiKeys;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig, ServerConnection, StreamOwned};

use support::{Stoa, join_room, request, scratch_dir, unix_now};

/// `stoa serve --dev`'s key and secret.
const KEY: &str = "devkey";
const SECRET: &str = "secret";

/// A certificate (chain of one) and its key, as rustls and PEM files want them.
struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

/// A private CA: its PEM certificate and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Stoa webhook test CA");
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate for `names` (IP addresses or DNS names), signed by `ca` or self-signed.
fn leaf(names: &[&str], ca: Option<&Ca>) -> Identity {
    let params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = match ca {
        Some(ca) => params.signed_by(&key, &ca.issuer),
        None => params.self_signed(&key),
    }
    .expect("leaf cert");
    Identity {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }
}

/// One webhook request as the receiver read it.
#[derive(Debug, Clone)]
struct Received {
    authorization: String,
    body: String,
}

/// An HTTPS server on 127.0.0.1 answering every POST with 200, recording requests and failed
/// handshakes. Stops (its accept loop ends) when dropped.
struct Receiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    handshake_failures: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(identity: Identity) -> Receiver {
        let config = ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert], PrivateKeyDer::Pkcs8(identity.key))
        .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("receiver addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, failures, stopped) =
            (requests.clone(), handshake_failures.clone(), stop.clone());
        thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Ok(connection) = ServerConnection::new(config.clone()) else {
                    continue;
                };
                let mut tls = StreamOwned::new(connection, stream);
                match read_request(&mut tls) {
                    Some(received) => {
                        let _ = tls.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        reqs.lock().expect("requests").push(received);
                    }
                    None if tls.conn.is_handshaking() => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {}
                }
            }
        });
        Receiver {
            addr,
            requests,
            handshake_failures,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Received> {
        self.requests.lock().expect("requests").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body); `None` if the handshake or the
/// read fails.
fn read_request(stream: &mut impl Read) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut authorization = String::new();
    let mut length = 0usize;
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    if !line.starts_with("POST /hook ") {
        return None;
    }
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        if name.eq_ignore_ascii_case("authorization") {
            authorization = value.trim().to_owned();
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        authorization,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The value of `series` on `/metrics`.
fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = request(addr, "GET", "/metrics", None, None);
    assert_eq!(status, 200, "{body}");
    body.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Waits (bounded) until `done` holds, then returns; panics with `what` otherwise.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + support::TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Checks that `received` carries a `room_started` for `room`, signed by the dev key over
/// exactly this body.
fn assert_signed_room_started(received: &[Received], room: &str) {
    let event = received
        .iter()
        .find(|r| r.body.contains("\"room_started\"") && r.body.contains(room))
        .unwrap_or_else(|| panic!("no room_started for {room} among {received:?}"));
    let keys = ApiKeys::new([(KEY, SECRET)]);
    let claims = keys.verify(&event.authorization, unix_now());
    assert!(claims.is_ok(), "signature: {claims:?}");
    let payload = event.authorization.split('.').nth(1).expect("JWT payload");
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let payload: serde_json::Value = serde_json::from_slice(&payload).expect("JSON payload");
    assert_eq!(
        payload["sha256"].as_str(),
        Some(stoa_signaling::webhook::body_hash(event.body.as_bytes()).as_str()),
        "the signature covers this body"
    );
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn https_receivers_get_signed_events_and_bad_certificates_are_refused_and_counted() {
    let dir = scratch_dir("webhooks-https");
    let ca = new_ca();
    let ca_file = dir.join("receiver-ca.pem");
    write(&ca_file, &ca.pem);

    let good = Receiver::start(leaf(&["127.0.0.1"], Some(&ca)));
    let self_signed = Receiver::start(leaf(&["127.0.0.1"], None));
    let wrong_name = Receiver::start(leaf(&["hooks.example.com"], Some(&ca)));

    let config = dir.join("stoa.toml");
    write(
        &config,
        &format!(
            "[webhook]\nurls = [\"{}\", \"{}\", \"{}\"]\nca_file = \"{}\"\n",
            good.url(),
            self_signed.url(),
            wrong_name.url(),
            ca_file.display()
        ),
    );
    // No system store for this server: only the CA file can make the good receiver trusted.
    let empty_store = dir.join("no-system-roots.pem");
    write(&empty_store, "");
    let data = dir.join("data");
    let stoa = Stoa::start(
        &config,
        &[
            ("SSL_CERT_FILE", empty_store.to_str().expect("utf-8 path")),
            ("STOA_DATA_DIR", data.to_str().expect("utf-8 path")),
        ],
    );

    let client = join_room(stoa.addr, (KEY, SECRET), "hooks-https", "alice");
    wait_until("room_started at the trusted receiver", || {
        good.requests()
            .iter()
            .any(|r| r.body.contains("\"room_started\""))
    });
    assert_signed_room_started(&good.requests(), "hooks-https");

    // room_started, at least, was refused at each bad receiver.
    let refused = "signaling_webhook_events_total{outcome=\"certificate_refused\"}";
    wait_until("certificate refusals on /metrics", || {
        metric(stoa.addr, refused).is_some_and(|n| n >= 2.0)
    });
    assert!(
        self_signed.requests().is_empty() && wrong_name.requests().is_empty(),
        "a receiver with a bad certificate got a request"
    );
    wait_until("stoa's handshakes at both bad receivers", || {
        self_signed.handshake_failures.load(Ordering::Relaxed) >= 1
            && wrong_name.handshake_failures.load(Ordering::Relaxed) >= 1
    });
    let delivered = metric(
        stoa.addr,
        "signaling_webhook_events_total{outcome=\"delivered\"}",
    )
    .expect("delivered series");
    assert!(delivered >= 1.0, "delivered {delivered}");
    // Refusals are not retried: each event is tried once per bad receiver (one handshake),
    // where a failure of another kind would be tried 4 times.
    let refused_count = metric(stoa.addr, refused).expect("refused series");
    let handshakes = self_signed.handshake_failures.load(Ordering::Relaxed)
        + wrong_name.handshake_failures.load(Ordering::Relaxed);
    assert!(
        (handshakes as f64) <= refused_count + 2.0,
        "{handshakes} handshakes for {refused_count} refused events: retried"
    );
    assert!(
        stoa.log_text()
            .contains("the receiver's certificate is not trusted"),
        "no log line names the refusal:\n{}",
        stoa.log_text()
    );
    client.close();
    stoa.stop();
}

#[test]
fn https_receivers_are_trusted_through_the_system_store() {
    let dir = scratch_dir("webhooks-system-roots");
    let ca = new_ca();
    // The system store as rustls-native-certs reads it: SSL_CERT_FILE replaces the
    // distribution's bundle, so this CA is the only one trusted.
    let store = dir.join("system-store.pem");
    write(&store, &ca.pem);
    let good = Receiver::start(leaf(&["127.0.0.1"], Some(&ca)));
    let config = dir.join("stoa.toml");
    write(
        &config,
        &format!("[webhook]\nurls = [\"{}\"]\n", good.url()),
    );
    let data = dir.join("data");
    let stoa = Stoa::start(
        &config,
        &[
            ("SSL_CERT_FILE", store.to_str().expect("utf-8 path")),
            ("STOA_DATA_DIR", data.to_str().expect("utf-8 path")),
        ],
    );
    let client = join_room(stoa.addr, (KEY, SECRET), "hooks-system", "bob");
    wait_until("room_started at the receiver", || {
        good.requests()
            .iter()
            .any(|r| r.body.contains("\"room_started\""))
    });
    assert_signed_room_started(&good.requests(), "hooks-system");
    assert_eq!(
        metric(
            stoa.addr,
            "signaling_webhook_events_total{outcome=\"certificate_refused\"}"
        ),
        Some(0.0)
    );
    client.close();
    stoa.stop();
}

#[test]
fn an_unreadable_ca_file_stops_start_up_with_one_line() {
    let dir = scratch_dir("webhooks-bad-ca");
    let config = dir.join("stoa.toml");
    let missing = dir.join("missing-ca.pem");
    write(
        &config,
        &format!(
            "[webhook]\nurls = [\"https://127.0.0.1:9/hook\"]\nca_file = \"{}\"\n",
            missing.display()
        ),
    );
    let data = dir.join("data");
    let mut stoa = Stoa::spawn(
        &config,
        &[("STOA_DATA_DIR", data.to_str().expect("utf-8 path"))],
    );
    wait_until("stoa to exit", || stoa.exited());
    let log = stoa.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("webhook.ca_file"))
        .unwrap_or_else(|| panic!("no error line names webhook.ca_file:\n{log}"));
    assert!(line.contains("missing-ca.pem"), "{line}");
}
