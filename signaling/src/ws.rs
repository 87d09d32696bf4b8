//! HTTP side of signaling: the `/rtc` WebSocket and the paths livekit-client probes.
//!
//! - `GET /rtc?access_token=…` (or with `Authorization: Bearer …`, as the SDKs on LiveKit's Rust
//!   core send it): the token and room are checked **before** the upgrade, so a refused client
//!   gets an HTTP status and a plain-text reason, as LiveKit answers; then one binary protobuf
//!   `SignalRequest` / `SignalResponse` per WebSocket message.
//! - `GET /rtc/validate`: the same checks; `200 success`, or the status and reason.
//! - `GET /rtc/v1?access_token=…&join_request=…` (LiveKit's single-connection protocol, which
//!   livekit-client 2.17+ and the Rust-core SDKs try first): the token as on `/rtc`, the rest
//!   of the join from `join_request` (see [`join::parse_v1_request`]; unreadable → 400 with the
//!   reason); then the same WebSocket, on which the client's one peer connection is negotiated
//!   by its offers only. `GET /rtc/v1/validate`: the same checks as `/rtc/v1`.

// The WebSocket shell reads the clock for token expiry and rate limiting.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::SinkExt;
use livekit_protocol as lk;
use livekit_protocol::client_info::Sdk;
use prost::Message;
use tokio::sync::mpsc;

use crate::join;
use crate::service::{OUTBOX, Outbound, Refused, Signaling};
use crate::token::ApiKeys;
use livekit_api::access_token::Claims;

/// Largest signaling message accepted from a client. SDP offers of audio clients stay far below.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes a WebSocket reads (and keeps allocated) at a time.
const READ_CHUNK: usize = 4 * 1024;

/// How long after the join response the answer to a `/rtc/v1` join's offer is held for
/// livekit-client (the JS SDK). That client sets the offer it sent inside the join request as
/// its local description only when the answer arrives, and clears its "initial offer pending"
/// flag before that `setLocalDescription` resolves; its own debounced `negotiate()`, called
/// when the join response arrives and run 20 ms later, can fall into that window, create an
/// offer against the half-set state and fail to set it ("Transceiver not found based on
/// m-line index"), which leaves the connection unable to negotiate until the client
/// reconnects. On a busy machine the window is wide. With the answer arriving after that
/// `negotiate()` has run, the client sees its initial offer pending, defers, and offers again
/// once the answer is set: one more round, never a failure. Other SDKs get the answer at once.
pub const JS_FIRST_ANSWER_HOLD: std::time::Duration = std::time::Duration::from_millis(80);

/// Sustained signal requests per second a client may send, and the burst above it.
const RATE_PER_SEC: f64 = 50.0;
const RATE_BURST: f64 = 200.0;

#[derive(Clone)]
struct RtcState {
    signaling: Signaling,
    keys: Arc<ApiKeys>,
    admission: Option<Arc<dyn Admission>>,
}

/// The signaling routes, to merge into the server's router.
pub fn router(signaling: Signaling, keys: Arc<ApiKeys>) -> Router {
    router_with(signaling, keys, None)
}

/// The signaling routes with an application deciding who enters its rooms.
pub fn router_with(
    signaling: Signaling,
    keys: Arc<ApiKeys>,
    admission: Option<Arc<dyn Admission>>,
) -> Router {
    Router::new()
        .route("/rtc", get(rtc))
        .route("/rtc/validate", get(validate))
        .route("/rtc/v1", get(rtc_v1))
        .route("/rtc/v1/validate", get(validate_v1))
        .with_state(RtcState {
            signaling,
            keys,
            admission,
        })
}

/// What an application decides for a session about to join one of its rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Whether it may publish, whatever its token says.
    pub can_publish: bool,
    /// Whether it may send data packets, whatever its token says.
    pub can_publish_data: bool,
    /// Its participant attributes, replacing the token's.
    pub attributes: std::collections::HashMap<String, String>,
}

/// The future an [`Admission`] returns.
pub type AdmissionFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Admitted>, Refused>> + Send + 'a>,
>;

/// An application's say over joins (the control plane: bans, kicks, roles). Asked after the
/// token is verified and before the upgrade; `Ok(None)` leaves the token's grants as they are.
pub trait Admission: Send + Sync {
    /// Decides for `identity` joining `room`.
    fn admit<'a>(&'a self, room: &'a str, identity: &'a str) -> AdmissionFuture<'a>;
}

/// Whether `claims` are another node's relay link's (hidden, a relay identity: a token signed
/// with the cluster's secret), which is no member of the application's, so not its to admit;
/// if so, they are made to subscribe only, whatever the token says.
fn relay_only(claims: &mut Claims) -> bool {
    let relay = claims.video.hidden && claims.sub.starts_with(crate::proto::RELAY_IDENTITY_PREFIX);
    if relay {
        claims.video.can_publish = Some(false);
        claims.video.can_publish_data = Some(false);
    }
    relay
}

/// Runs both checks, applying the application's decision to the claims.
async fn admit(state: &RtcState, claims: &mut Claims) -> Result<(), Refused> {
    state
        .signaling
        .admit(&claims.video.room, &claims.sub)
        .await?;
    if relay_only(claims) {
        return Ok(());
    }
    if let Some(admission) = &state.admission
        && let Some(a) = admission.admit(&claims.video.room, &claims.sub).await?
    {
        claims.video.can_publish = Some(a.can_publish);
        claims.video.can_publish_data = Some(a.can_publish_data);
        claims.attributes = a.attributes;
    }
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A plain-text answer with the CORS header the browser needs to read it.
fn plain(status: u16, message: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = (status, message).into_response();
    r.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The `Authorization` header as [`join::parse_request`] takes it: `None` when absent, and a
/// value that is not text as one that is refused.
fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("(not text)"))
}

/// Which join protocol a request speaks.
#[derive(Clone, Copy)]
enum Path {
    /// `/rtc`: two peer connections.
    Legacy,
    /// `/rtc/v1`: one peer connection.
    V1,
}

impl Path {
    fn validate(
        self,
        keys: &ApiKeys,
        query: &str,
        headers: &HeaderMap,
    ) -> Result<(join::JoinParams, Claims), join::Refusal> {
        let auth = authorization(headers);
        match self {
            Path::Legacy => join::validate(keys, query, auth, now_unix()),
            Path::V1 => join::validate_v1(keys, query, auth, now_unix()),
        }
    }
}

async fn validate(state: State<RtcState>, headers: HeaderMap, query: RawQuery) -> Response {
    validate_on(Path::Legacy, state, headers, query).await
}

async fn validate_v1(state: State<RtcState>, headers: HeaderMap, query: RawQuery) -> Response {
    validate_on(Path::V1, state, headers, query).await
}

async fn validate_on(
    path: Path,
    State(state): State<RtcState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    match path.validate(&state.keys, &query, &headers) {
        Ok((_, mut claims)) => match admit(&state, &mut claims).await {
            Ok(()) => plain(200, "success".into()),
            Err(r) => plain(r.status, r.message),
        },
        Err(r) => plain(r.status, r.message),
    }
}

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;
type ClientAddr = Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>;

async fn rtc(
    state: State<RtcState>,
    client: ClientAddr,
    headers: HeaderMap,
    query: RawQuery,
    upgrade: Upgrade,
) -> Response {
    rtc_on(Path::Legacy, state, client, headers, query, upgrade).await
}

async fn rtc_v1(
    state: State<RtcState>,
    client: ClientAddr,
    headers: HeaderMap,
    query: RawQuery,
    upgrade: Upgrade,
) -> Response {
    rtc_on(Path::V1, state, client, headers, query, upgrade).await
}

async fn rtc_on(
    path: Path,
    State(state): State<RtcState>,
    client: ClientAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    upgrade: Upgrade,
) -> Response {
    let query = query.unwrap_or_default();
    let (mut params, mut claims) = match path.validate(&state.keys, &query, &headers) {
        Ok(ok) => ok,
        Err(r) => return plain(r.status, r.message),
    };
    params.client = client.map(|c| c.0.0.ip());
    if let Err(r) = admit(&state, &mut claims).await {
        return plain(r.status, r.message);
    }
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return plain(400, format!("expected a WebSocket upgrade: {e}")),
    };
    upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        // tungstenite's default reads in 128 KiB chunks, allocated per connection and zeroed
        // before every read: most of a listener's memory and a memset per ping. Signal
        // messages are small; larger ones still arrive, in more reads.
        .read_buffer_size(READ_CHUNK)
        .on_upgrade(move |socket| session(socket, state.signaling, params, claims))
}

async fn session(
    mut socket: WebSocket,
    signaling: Signaling,
    params: join::JoinParams,
    claims: livekit_api::access_token::Claims,
) {
    let (out_tx, mut out_rx) = mpsc::channel(OUTBOX);
    let hold_answer = params.publisher_offer.is_some() && params.sdk == Sdk::Js;
    let id = match signaling.connect(claims, params, out_tx).await {
        Ok(id) => id,
        Err(r) => {
            let _ = socket.send(close(&r.message)).await;
            return;
        }
    };
    let mut bucket = TokenBucket::new(Instant::now());
    // The join response is queued by now; see [`JS_FIRST_ANSWER_HOLD`].
    let mut answer_held_until = hold_answer.then(|| Instant::now() + JS_FIRST_ANSWER_HOLD);
    let reason = loop {
        tokio::select! {
            out = out_rx.recv() => {
                let Some(first) = out else { return };
                match write_queued(&mut socket, first, &mut out_rx, &mut answer_held_until).await {
                    Ok(()) => {}
                    Err(Ended::Lost) => break "connection lost".to_owned(),
                    Err(Ended::Closed) => return,
                }
            }
            incoming = socket.recv() => {
                let request = match incoming {
                    Some(Ok(WsMessage::Binary(bytes))) => lk::SignalRequest::decode(bytes.as_ref()).map_err(|e| e.to_string()),
                    Some(Ok(WsMessage::Text(text))) => serde_json::from_str::<lk::SignalRequest>(text.as_str()).map_err(|e| e.to_string()),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                    Some(Ok(WsMessage::Close(_))) | None => break "client closed the connection".to_owned(),
                    Some(Err(e)) => break format!("connection error: {e}"),
                };
                if !bucket.take(Instant::now()) {
                    let reason = "too many signal requests";
                    let _ = socket.send(close(reason)).await;
                    break reason.to_owned();
                }
                match request {
                    Ok(lk::SignalRequest { message: Some(m) }) => {
                        if signaling.request(id, m).is_err() {
                            let reason = "server overloaded";
                            let _ = socket.send(close(reason)).await;
                            break reason.to_owned();
                        }
                    }
                    Ok(lk::SignalRequest { message: None }) => {}
                    Err(e) => {
                        let reason = format!("malformed signal request: {e}");
                        let _ = socket.send(close(&reason)).await;
                        break reason;
                    }
                }
            }
        }
    };
    signaling.closed(id, &reason);
}

/// Most responses written to one connection before a flush.
const WRITE_BATCH: usize = 64;

/// Why a session's writes ended.
enum Ended {
    /// The connection failed.
    Lost,
    /// The server closed it (the close frame was sent).
    Closed,
}

/// Write `first` and whatever else is already queued for the client (up to [`WRITE_BATCH`]),
/// then flush once: a burst of responses (a join response and an offer, a floor change's
/// updates) leaves in one write instead of one per message. Connections set `TCP_NODELAY`, so
/// this batching is what keeps bursts to few segments; nothing queued is ever held back.
async fn write_queued(
    socket: &mut WebSocket,
    first: Outbound,
    queue: &mut mpsc::Receiver<Outbound>,
    answer_held_until: &mut Option<Instant>,
) -> Result<(), Ended> {
    let mut next = Some(first);
    let mut written = 0;
    while let Some(out) = next.take() {
        match out {
            Outbound::Response(r) => {
                if let Some(until) = *answer_held_until
                    && matches!(r.message, Some(lk::signal_response::Message::Answer(_)))
                {
                    *answer_held_until = None;
                    socket.flush().await.map_err(|_| Ended::Lost)?;
                    tokio::time::sleep_until(until.into()).await;
                }
                let frame = WsMessage::Binary(r.encode_to_vec().into());
                socket.feed(frame).await.map_err(|_| Ended::Lost)?;
                written += 1;
            }
            Outbound::Close(reason) => {
                // `send` flushes what was fed before the close frame.
                let _ = socket.send(close(&reason)).await;
                return Err(Ended::Closed);
            }
        }
        if written < WRITE_BATCH {
            next = queue.try_recv().ok();
        }
    }
    socket.flush().await.map_err(|_| Ended::Lost)
}

fn close(reason: &str) -> WsMessage {
    // Close reasons are limited to 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    WsMessage::Close(Some(CloseFrame {
        code: axum::extract::ws::close_code::POLICY,
        reason: reason.into(),
    }))
}

/// A token bucket limiting a client's request rate.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(now: Instant) -> Self {
        TokenBucket {
            tokens: RATE_BURST,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * RATE_PER_SEC).min(RATE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn relay_links_skip_the_application_and_only_subscribe() {
        let mut relay = crate::token::relay_claims("abc123", "room", None);
        relay.video.can_publish = Some(true);
        relay.video.can_publish_data = Some(true);
        assert!(relay_only(&mut relay));
        assert_eq!(relay.video.can_publish, Some(false));
        assert_eq!(relay.video.can_publish_data, Some(false));
        assert_eq!(relay.video.can_subscribe, Some(true));
        // A relay identity that is not hidden, or a hidden member, goes to the application.
        let mut shown = crate::token::relay_claims("abc123", "room", None);
        shown.video.hidden = false;
        shown.video.can_publish = Some(true);
        assert!(!relay_only(&mut shown));
        assert_eq!(shown.video.can_publish, Some(true));
        let mut hidden = crate::token::relay_claims("abc123", "room", None);
        hidden.sub = "ann".into();
        assert!(!relay_only(&mut hidden));
    }

    #[test]
    fn bucket_allows_bursts_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        for _ in 0..200 {
            assert!(b.take(t0));
        }
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(40)),
            "50/s refills one token in 20 ms"
        );
    }
}
