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
//! `EV_…` id and `createdAt`.
//!
//! Only `http://` URLs are delivered (plain HTTP/1.1); put a TLS proxy in front for `https`.

// The delivery task owns the clock: it stamps each signature.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

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
    /// `http://host:port/path` URLs; every event goes to each.
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
}

/// Queues events for delivery. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<lk::WebhookEvent>,
    stats: Arc<WebhookStats>,
}

impl Notifier {
    /// Start the delivery task (needs a tokio runtime).
    pub fn start(config: WebhookConfig) -> Notifier {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        tokio::spawn(deliver(config, rx, stats.clone()));
        Notifier { tx, stats }
    }

    /// Queue an event; never waits. A full queue drops it (counted in [`WebhookStats`]).
    pub fn notify(&self, event: lk::WebhookEvent) {
        if self.tx.try_send(event).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("webhook queue full; event dropped");
        }
    }

    /// Delivery counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }
}

async fn deliver(
    config: WebhookConfig,
    mut rx: mpsc::Receiver<lk::WebhookEvent>,
    stats: Arc<WebhookStats>,
) {
    while let Some(event) = rx.recv().await {
        let body = match serde_json::to_vec(&event) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode webhook event");
                continue;
            }
        };
        for url in &config.urls {
            let mut backoff = FIRST_BACKOFF;
            let mut ok = false;
            for attempt in 1..=ATTEMPTS {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let result = match sign(&config.api_key, &config.api_secret, &body, now) {
                    Some(token) => post(url, &token, &body).await,
                    None => Err("cannot sign".to_owned()),
                };
                match result {
                    Ok(()) => {
                        ok = true;
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(url = %url, attempt, error = %e, event = %event.event, "webhook delivery failed");
                        if attempt < ATTEMPTS {
                            tokio::time::sleep(backoff).await;
                            backoff *= 2;
                        }
                    }
                }
            }
            if ok {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %url, event = %event.event, "webhook not delivered");
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

/// `http://host[:port][/path]` split into `host:port` and the path.
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported URL {url} (only http://)"))?;
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
    let host = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((host, path.to_owned()))
}

async fn post(url: &str, token: &str, body: &[u8]) -> Result<(), String> {
    let (addr, path) = split_url(url)?;
    let host = addr.trim_end_matches(":80");
    let attempt = async {
        let mut stream = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/webhook+json\r\nAuthorization: {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(body).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.contains(&b'\n') && buf.len() < 4096 {
            let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
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
            .ok_or_else(|| "no HTTP status".to_owned())?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9/hook?x=1"),
            Ok(("127.0.0.1:9".into(), "/hook?x=1".into()))
        );
        assert_eq!(
            split_url("http://example.com"),
            Ok(("example.com:80".into(), "/".into()))
        );
        assert!(split_url("https://example.com/").is_err());
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
