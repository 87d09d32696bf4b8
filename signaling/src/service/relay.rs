//! Relay links, the IO side (see `proto::relay`): one task per relayed room holding a
//! WebSocket to the origin's `/rtc/v1`, as a client would. It joins with a relay token and the
//! relay peer's first offer in the join request, hands every message of the origin to its core
//! ([`Msg::RelayResponse`]), sends the core's requests (later offers) and a ping every
//! `ping_interval` (the origin's, from its JoinResponse), and reports its end ([`Msg::RelayClosed`]). Its queue from the core is
//! bounded ([`LINK_QUEUE`]); a link whose queue is full is closed (the core is told, and its
//! mirrors leave), as a client too slow for its outbox would be.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::Msg;
use crate::cluster::NodeDirectory;

/// Requests waiting for one link's socket.
pub const LINK_QUEUE: usize = 64;

/// How long the origin may take to accept the link's WebSocket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How the edge authenticates its relay links: its own id (the relay identity is
/// `node:{node}`) and the cluster's API key and secret, which every node shares.
#[derive(Clone)]
pub struct RelayAuth {
    /// This node's id.
    pub node: String,
    /// The API key tokens are signed with.
    pub api_key: String,
    /// Its secret.
    pub secret: String,
    /// How long a relay token is valid (it is used once, to join).
    pub ttl: Duration,
    /// This node's base URL, which its relay tokens carry so that the origin can open a feed
    /// of this node's speakers back to it (`proto::NODE_URL_ATTRIBUTE`); `None`: its
    /// speakers are heard only here.
    pub url: Option<String>,
    /// Whom `wss://` origins' certificates must chain to; `None`: the system's trust store
    /// (`SSL_CERT_FILE` or `SSL_CERT_DIR` add a private CA), as for every node-to-node call.
    pub tls: Option<Arc<ClientConfig>>,
    /// The nodes a feed may be opened from: an edge's URL, as its relay token names it, must
    /// be a living node's (unbound: any).
    pub nodes: NodeDirectory,
}

impl std::fmt::Debug for RelayAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayAuth")
            .field("node", &self.node)
            .field("api_key", &self.api_key)
            .finish_non_exhaustive()
    }
}

/// What the core's shell sends a link task.
#[derive(Debug)]
pub(super) enum LinkCmd {
    Request(Box<signal_request::Message>),
    Close,
}

/// A running link as the core's shell knows it.
#[derive(Debug)]
pub(super) struct Link {
    /// Tells this link's messages from those of a link it replaced.
    pub id: u64,
    pub tx: mpsc::Sender<LinkCmd>,
}

/// The URL of `origin`'s `/rtc/v1` with `token` and `join`.
fn link_url(origin: &str, token: &str, join: &lk::JoinRequest) -> String {
    let base = origin.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_owned()
    };
    format!(
        "{base}/rtc/v1?access_token={token}&join_request={}",
        crate::join::encode_join_request(join)
    )
}

/// Opens the WebSocket at `url` (`ws://`, or `wss://` with the origin's certificate verified
/// against `tls`).
async fn open(
    url: &str,
    tls: &Result<Arc<ClientConfig>, String>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<Box<dyn crate::cluster::NodeIo>>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    String,
> {
    let http = if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        return Err(format!(
            "the origin's URL is not ws:// or wss:// ({})",
            origin_of(url)
        ));
    };
    let target = crate::webhook::split_url(&http)?;
    let stream = crate::cluster::dial(&target, tls).await?;
    tokio_tungstenite::client_async(url, stream)
        .await
        .map_err(|e| format!("cannot reach the origin: {e}"))
}

/// `url` without its path and query (which carry the token), for messages.
fn origin_of(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    url[start..].find('/').map_or(url, |i| &url[..start + i])
}

/// Mints the relay token for `room` with `auth`.
pub(super) fn relay_token(auth: &RelayAuth, room: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = crate::token::relay_claims(&auth.node, room, auth.url.as_deref());
    crate::token::sign(&auth.api_key, &auth.secret, &claims, auth.ttl, now)
        .map_err(|e| e.to_string())
}

/// Everything a link task needs.
pub(super) struct LinkTask {
    pub id: u64,
    pub room: String,
    /// A feed (the edge's URL, which `origin` is then) rather than the room's own link.
    pub feed: Option<String>,
    /// The node the link joins.
    pub origin: String,
    pub token: String,
    pub offer: lk::SessionDescription,
    pub ping_interval: Duration,
    pub to_core: mpsc::Sender<Msg>,
    /// For a `wss://` origin.
    pub tls: Result<Arc<ClientConfig>, String>,
    /// For a feed: the registry the edge's URL must be in before it is dialled.
    pub nodes: Option<NodeDirectory>,
}

impl LinkTask {
    /// Runs the link until either side closes it, then tells the core.
    pub(super) async fn run(self, cmds: mpsc::Receiver<LinkCmd>) {
        let (room, feed, id, to_core) = (
            self.room.clone(),
            self.feed.clone(),
            self.id,
            self.to_core.clone(),
        );
        if let Err(why) = self.serve(cmds).await {
            // Debug-formatted: a refused feed's reason carries a URL taken from a token.
            tracing::warn!(room = %room, feed = feed.is_some(), reason = ?why, "relay link ended");
        }
        let msg = Msg::RelayClosed {
            room,
            feed,
            link: id,
        };
        let _ = to_core.send(msg).await;
    }

    async fn serve(self, mut cmds: mpsc::Receiver<LinkCmd>) -> Result<(), String> {
        let join = lk::JoinRequest {
            client_info: Some(lk::ClientInfo {
                sdk: lk::client_info::Sdk::Rust as i32,
                protocol: 16,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }),
            connection_settings: Some(lk::ConnectionSettings {
                auto_subscribe: true,
                ..Default::default()
            }),
            publisher_offer: Some(self.offer),
            ..Default::default()
        };
        if let Some(nodes) = &self.nodes
            && !nodes.admits(&self.origin).await
        {
            return Err(format!(
                "{} is not a living node of this cluster; its feed is not opened",
                self.origin
            ));
        }
        let url = link_url(&self.origin, &self.token, &join);
        let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, open(&url, &self.tls))
            .await
            .map_err(|_| "origin did not answer in time".to_owned())??;
        tracing::info!(room = %self.room, "relay link open");
        let mut ping = tokio::time::interval(self.ping_interval.max(Duration::from_secs(1)));
        loop {
            tokio::select! {
                frame = ws.next() => {
                    let bytes = match frame {
                        Some(Ok(WsMessage::Binary(b))) => b,
                        Some(Ok(WsMessage::Close(_))) | None => return Err("origin closed".into()),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(format!("socket error: {e}")),
                    };
                    let Ok(response) = lk::SignalResponse::decode(bytes.as_ref()) else {
                        tracing::debug!(room = %self.room, "undecodable message from the origin");
                        continue;
                    };
                    let Some(message) = response.message else { continue };
                    if let signal_response::Message::Join(join) = &message
                        && let Ok(secs @ 1..) = u64::try_from(join.ping_interval)
                    {
                        // The origin's own pace, as a client follows it.
                        ping = tokio::time::interval(Duration::from_secs(secs));
                        ping.reset();
                    }
                    let leave = matches!(message, signal_response::Message::Leave(_));
                    let msg = Msg::RelayResponse {
                        room: self.room.clone(),
                        feed: self.feed.clone(),
                        link: self.id,
                        message: Box::new(message),
                    };
                    if self.to_core.send(msg).await.is_err() || leave {
                        return Ok(());
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(LinkCmd::Request(message)) => send(&mut ws, *message).await?,
                    Some(LinkCmd::Close) | None => {
                        let leave = signal_request::Message::Leave(lk::LeaveRequest::default());
                        let _ = send(&mut ws, leave).await;
                        let _ = ws.close(None).await;
                        return Ok(());
                    }
                },
                _ = ping.tick() => {
                    let ms = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64);
                    send(&mut ws, signal_request::Message::Ping(ms)).await?;
                }
            }
        }
    }
}

async fn send<S>(ws: &mut S, message: signal_request::Message) -> Result<(), String>
where
    S: futures_util::Sink<WsMessage> + Unpin,
    S::Error: std::fmt::Display,
{
    let bytes = lk::SignalRequest {
        message: Some(message),
    }
    .encode_to_vec();
    ws.send(WsMessage::Binary(bytes.into()))
        .await
        .map_err(|e| format!("socket error: {e}"))
}
