//! Signed LiveKit webhooks.
//!
//! The session service hands events to a [`Notifier`], which queues them (bounded: when the
//! queue is full the event is dropped and counted, so a slow receiver never blocks signaling or
//! media) and delivers them from its own task: `POST <url>` with
//! `Content-Type: application/webhook+json`, the protobuf-JSON `WebhookEvent` as body and
//! `Authorization: <JWT>` (no `Bearer`), an HS256 token with `iss` = API key, a 5-minute
//! expiry and claim `sha256` = standard padded base64 of the SHA-256 of the exact body, as
//! LiveKit's `WebhookReceiver`s verify. Failed deliveries are retried with backoff.
//!
//! The service emits `room_started`, `room_finished`, `participant_joined` (when the participant
//! becomes ACTIVE), `participant_left` (or `participant_connection_aborted` for one that never
//! became active, as LiveKit does), `track_published` and `track_unpublished`, each with an
//! `EV_…` id and `createdAt`. Other parts of the server (the control plane) hand it JSON
//! bodies of their own ([`Notifier::notify_json`]): the same queue, signature and retries.
//!
//! `http://` and `https://` URLs are delivered (HTTP/1.1). `https://` receivers are verified
//! with rustls against the system's trust store (`/etc/ssl/certs`, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR`) plus any extra CA certificates the operator configures
//! ([`client_tls_config`]); a receiver whose certificate does not verify is refused without
//! retrying and counted in [`WebhookStats::refused_certificate`].

// The delivery task owns the clock: it stamps each signature.
#![allow(clippy::disallowed_methods)]

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// Events waiting for delivery; more are dropped and counted.
pub const QUEUE: usize = 1024;

/// Attempts per event and URL.
const ATTEMPTS: u32 = 4;

/// Delay before the first retry; doubled for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Bound on one HTTP attempt (connect, send, read the status line).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Validity of the signature.
const SIGNATURE_TTL: u64 = 300;

/// Where and how to send webhooks.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http://` or `https://` `host[:port][/path]` URLs; every event goes to each.
    pub urls: Vec<String>,
    /// The API key whose secret signs (`iss`).
    pub api_key: String,
    /// Its secret.
    pub api_secret: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("urls", &self.urls)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

/// Counters of the notifier.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Deliveries that succeeded (2xx).
    pub delivered: AtomicU64,
    /// Deliveries that failed after every retry.
    pub failed: AtomicU64,
    /// Deliveries refused because the `https://` receiver's certificate did not verify
    /// (unknown issuer, wrong name, expired, …); not retried, and not counted in `failed`.
    pub refused_certificate: AtomicU64,
}

/// Queues events for delivery. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Outgoing>,
    stats: Arc<WebhookStats>,
}

/// One queued delivery: the event's name (for logs) and the exact body that is signed.
#[derive(Debug)]
struct Outgoing {
    event: String,
    body: Vec<u8>,
}

impl Notifier {
    /// Start the delivery task (needs a tokio runtime). `https://` receivers are verified
    /// against the system's trust store; if it cannot be read, they are refused (and counted as
    /// failed) with the reason in the log.
    pub fn start(config: WebhookConfig) -> Notifier {
        let tls = client_tls_config(None).map_err(|e| e.to_string());
        Notifier::spawn(config, tls)
    }

    /// Start the delivery task with `tls` for `https://` receivers (see
    /// [`client_tls_config`]).
    pub fn start_with_tls(config: WebhookConfig, tls: Arc<ClientConfig>) -> Notifier {
        Notifier::spawn(config, Ok(tls))
    }

    fn spawn(config: WebhookConfig, tls: Result<Arc<ClientConfig>, String>) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        tokio::spawn(deliver(config, tls, rx, stats.clone()));
        Notifier { tx, stats }
    }

    /// Queue an event; never waits. A full queue drops it (counted in [`WebhookStats`]).
    pub fn notify(&self, event: lk::WebhookEvent) {
        match serde_json::to_vec(&event) {
            Ok(body) => self.notify_json(event.event, body),
            Err(e) => tracing::warn!(error = %e, "cannot encode webhook event"),
        }
    }

    /// Queue `body`, a JSON document named `event`, to be signed and delivered like the
    /// LiveKit events; never waits. A full queue drops it (counted in [`WebhookStats`]).
    pub fn notify_json(&self, event: String, body: Vec<u8>) {
        if self.tx.try_send(Outgoing { event, body }).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("webhook queue full; event dropped");
        }
    }

    /// Delivery counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }
}

/// Why [`client_tls_config`] could not build a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("CA file {path}: {reason}")]
    Certificates {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither the system's trust store nor a CA file gave a single certificate.
    #[error("no trusted CA certificates: the system store is empty or unreadable ({0})")]
    NoRoots(String),
}

/// The TLS client configuration for `https://` receivers: the system's trust store (as
/// `rustls-native-certs` finds it: `SSL_CERT_FILE`, `SSL_CERT_DIR`, or the distribution's
/// bundle) plus every certificate of the PEM file `ca_file`, for receivers whose certificate a
/// private CA issued. Call it once at start-up: it reads files.
pub fn client_tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(system.certs);
    let system_errors = system
        .errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| TlsConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsConfigError::Certificates {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsConfigError::Certificates {
                path: shown,
                reason: "no PEM certificate in it".to_owned(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| TlsConfigError::Certificates {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        }
    } else if added == 0 {
        return Err(TlsConfigError::NoRoots(system_errors));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsConfigError::Certificates {
        path: String::new(),
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn deliver(
    config: WebhookConfig,
    tls: Result<Arc<ClientConfig>, String>,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<WebhookStats>,
) {
    if let Err(e) = &tls
        && config.urls.iter().any(|u| u.starts_with("https://"))
    {
        tracing::warn!(error = %e, "no TLS trust store; https:// webhooks will fail");
    }
    while let Some(Outgoing { event, body }) = rx.recv().await {
        for url in &config.urls {
            let mut backoff = FIRST_BACKOFF;
            let mut outcome = Err(PostError::Other(String::new()));
            for attempt in 1..=ATTEMPTS {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                outcome = match sign(&config.api_key, &config.api_secret, &body, now) {
                    Some(token) => post(url, tls.as_ref(), &token, &body).await,
                    None => Err(PostError::Other("cannot sign".to_owned())),
                };
                match &outcome {
                    Ok(()) => break,
                    // The certificate will not change in the next second: no retry.
                    Err(PostError::Certificate(_)) => break,
                    Err(PostError::Other(e)) => {
                        tracing::debug!(url = %url, attempt, error = %e, event = %event, "webhook delivery failed");
                        if attempt < ATTEMPTS {
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                    }
                }
            }
            match outcome {
                Ok(()) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(PostError::Certificate(e)) => {
                    stats.refused_certificate.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %url, event = %event, error = %e, "webhook not delivered: the receiver's certificate is not trusted");
                }
                Err(PostError::Other(e)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %url, event = %event, error = %e, "webhook not delivered");
                }
            }
        }
    }
}

/// The base64 (standard, padded) SHA-256 of `body`: the `sha256` claim.
pub fn body_hash(body: &[u8]) -> String {
    STANDARD.encode(Sha256::digest(body))
}

/// The `Authorization` value for `body`: an HS256 JWT by `api_key`, valid from `now_unix` for
/// five minutes, carrying the body's hash. `None` for an empty secret.
pub fn sign(api_key: &str, secret: &str, body: &[u8], now_unix: u64) -> Option<String> {
    if secret.is_empty() {
        return None;
    }
    let claims = Claims {
        iss: api_key.to_owned(),
        nbf: usize::try_from(now_unix).ok()?,
        exp: usize::try_from(now_unix.checked_add(SIGNATURE_TTL)?).ok()?,
        sha256: body_hash(body),
        ..Claims::default()
    };
    let payload = serde_json::to_vec(&claims).ok()?;
    let mut token = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    Some(token)
}

/// Whether a URL is delivered over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// A receiver's URL taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) scheme: Scheme,
    /// `host:port` to connect to (IPv6 hosts in brackets).
    pub(crate) addr: String,
    /// The host as the `Host` header and TLS server name want it (no default port).
    pub(crate) host: String,
    /// Path and query, at least `/`.
    pub(crate) path: String,
}

/// `http[s]://host[:port][/path]` split into what a request needs.
pub(crate) fn split_url(url: &str) -> Result<Target, String> {
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest, 443)
    } else {
        return Err(format!("unsupported URL {url} (only http:// and https://)"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("no host in {url}"));
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    Ok(Target {
        scheme,
        addr,
        host: authority.to_owned(),
        path: path.to_owned(),
    })
}

/// Why one attempt failed.
#[derive(Debug)]
enum PostError {
    /// The receiver's certificate did not verify.
    Certificate(String),
    /// Anything else (connection, timeout, status): worth a retry.
    Other(String),
}

fn other(e: impl std::fmt::Display) -> PostError {
    PostError::Other(e.to_string())
}

async fn post(
    url: &str,
    tls: Result<&Arc<ClientConfig>, &String>,
    token: &str,
    body: &[u8],
) -> Result<(), PostError> {
    let target = split_url(url).map_err(PostError::Other)?;
    let attempt = async {
        let stream = TcpStream::connect(&target.addr).await.map_err(other)?;
        match target.scheme {
            Scheme::Http => exchange(stream, &target, token, body).await,
            Scheme::Https => {
                let config =
                    tls.map_err(|e| PostError::Other(format!("no TLS trust store: {e}")))?;
                let name = target
                    .addr
                    .rsplit_once(':')
                    .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
                    .unwrap_or_default();
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| PostError::Other(format!("bad host name: {e}")))?;
                let stream = TlsConnector::from(config.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| match certificate_error(&e) {
                        Some(reason) => PostError::Certificate(reason),
                        None => other(e),
                    })?;
                exchange(stream, &target, token, body).await
            }
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| PostError::Other("timed out".to_owned()))?
}

/// The reason, if a TLS handshake failed because the server's certificate did not verify.
fn certificate_error(e: &io::Error) -> Option<String> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType => Some(tls.to_string()),
        _ => None,
    }
}

/// Sends the request on `stream` and reads the status line.
async fn exchange<S>(
    mut stream: S,
    target: &Target,
    token: &str,
    body: &[u8],
) -> Result<(), PostError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/webhook+json\r\nAuthorization: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.host,
        body.len()
    );
    // One write, so that a TLS stream sends it in as few records as it can.
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.map_err(other)?;
    stream.flush().await.map_err(other)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await.map_err(other)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| PostError::Other("no HTTP status".to_owned()))?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(PostError::Other(format!("HTTP {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9/hook?x=1"),
            Ok(Target {
                scheme: Scheme::Http,
                addr: "127.0.0.1:9".into(),
                host: "127.0.0.1:9".into(),
                path: "/hook?x=1".into()
            })
        );
        assert_eq!(
            split_url("http://example.com"),
            Ok(Target {
                scheme: Scheme::Http,
                addr: "example.com:80".into(),
                host: "example.com".into(),
                path: "/".into()
            })
        );
        assert_eq!(
            split_url("https://hooks.example.com/in"),
            Ok(Target {
                scheme: Scheme::Https,
                addr: "hooks.example.com:443".into(),
                host: "hooks.example.com".into(),
                path: "/in".into()
            })
        );
        assert_eq!(
            split_url("https://[::1]:8443").map(|t| t.addr),
            Ok("[::1]:8443".to_owned())
        );
        assert!(split_url("ftp://example.com/").is_err());
        assert!(split_url("https:///x").is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A receiver that takes the connection and never answers: the one delivery in flight
        // waits out its attempt while the queue fills.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", silent.local_addr().expect("addr"));
        let notifier = Notifier::start(WebhookConfig {
            urls: vec![url],
            api_key: "key".into(),
            api_secret: "secret".into(),
        });
        let extra = 50;
        for i in 0..QUEUE + extra {
            notifier.notify_json(
                "control.room_started".into(),
                format!("{{\"n\":{i}}}").into_bytes(),
            );
        }
        let dropped = notifier.stats().dropped.load(Ordering::Relaxed) as usize;
        // The delivery task may have taken one event out of the queue meanwhile.
        assert!(dropped == extra || dropped == extra - 1, "{dropped}");
        assert_eq!(notifier.stats().delivered.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn signature_verifies_with_livekit_receiver() {
        let body = br#"{"event":"room_started"}"#;
        #[allow(clippy::disallowed_methods)]
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let token = sign("key", "secret", body, now).expect("signed");
        let verifier = livekit_api::access_token::TokenVerifier::with_api_key("key", "secret");
        let receiver = livekit_api::webhooks::WebhookReceiver::new(verifier);
        let event = receiver
            .receive(std::str::from_utf8(body).expect("utf8"), &token)
            .expect("accepted");
        assert_eq!(event.event, "room_started");
        assert!(
            receiver
                .receive(r#"{"event":"room_finished"}"#, &token)
                .is_err(),
            "a tampered body is rejected"
        );
    }
}
