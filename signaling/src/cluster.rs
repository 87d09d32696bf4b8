//! A room spread over several nodes (an origin and its edges, docs/ARCHITECTURE.md "Rooms
//! across nodes"), as the Twirp `RoomService` sees it: one room. A call that concerns people
//! ([`crate::twirp`]) is answered from every node of the room: this node asks the others the
//! same call, with the caller's own token and body, marked [`SCOPE_HEADER`] so that each
//! answers for itself only (its own sessions, never its mirrors of another node's
//! participants) and forwards nothing further.
//!
//! Which nodes serve a room is not the media plane's knowledge: the binary tells it through
//! [`RoomNodes`] (the control plane's store: the room's origin and recorded edges). Nothing
//! new is trusted: a forwarded call carries the caller's token, which the other node verifies
//! as any; the header only narrows what it answers.

// The HTTP shell bounds each forwarded call with the clock.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::webhook::{Scheme, Target, split_url};

/// Marks a call forwarded by another node of the room: answer for this node only.
pub const SCOPE_HEADER: &str = "x-stoa-scope";

/// The value of [`SCOPE_HEADER`].
pub const SCOPE_NODE: &str = "node";

/// How long another node may take to answer a forwarded call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from another node (a listing of a full node's listeners fits).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// The future [`RoomNodes::nodes`] returns.
pub type NodesFuture<'a> = Pin<Box<dyn Future<Output = Vec<String>> + Send + 'a>>;

/// Which other nodes serve a room: implemented by the binary (the control plane knows each
/// room's origin and edges).
pub trait RoomNodes: Send + Sync {
    /// The public base URLs (`http(s)://` or `ws(s)://`) of the nodes other than this one
    /// that may hold participants of `room`; empty for a room on this node alone.
    fn nodes<'a>(&'a self, room: &'a str) -> NodesFuture<'a>;

    /// The public base URLs of every living node other than this one (for `ListRooms`, which
    /// lists rooms on any node).
    fn every_other(&self) -> NodesFuture<'_>;
}

/// The cluster's living nodes, bound once the control plane is up (it is started after the
/// media plane, which it drives): what an origin checks an edge's URL against before it opens
/// a feed from it. A relay token names the node it came from (`stoa.node_url`), and any holder
/// of an API key can mint one; bound, the directory makes the origin dial only nodes of its
/// own registry, never a URL a token made up. Unbound (a media plane without a control plane),
/// nothing is checked.
#[derive(Clone, Default)]
pub struct NodeDirectory(Arc<std::sync::OnceLock<Arc<dyn RoomNodes>>>);

impl std::fmt::Debug for NodeDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeDirectory")
            .field("bound", &self.0.get().is_some())
            .finish()
    }
}

impl NodeDirectory {
    /// Binds the directory to `nodes`; a second call is ignored.
    pub fn bind(&self, nodes: Arc<dyn RoomNodes>) {
        let _ = self.0.set(nodes);
    }

    /// Whether `url` may be dialled as another node: `true` when it is the public URL of a
    /// living node other than this one (a trailing `/` aside), or when the directory is not
    /// bound.
    pub async fn admits(&self, url: &str) -> bool {
        let Some(nodes) = self.0.get() else {
            return true;
        };
        let url = url.trim_end_matches('/');
        nodes
            .every_other()
            .await
            .iter()
            .any(|n| n.trim_end_matches('/') == url)
    }
}

/// What another node answered a forwarded call.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Its `Content-Type`.
    pub content_type: String,
    /// The body.
    pub body: Bytes,
}

/// Forwards RoomService calls to the other nodes of a room.
#[derive(Clone)]
pub struct Forwarder {
    nodes: Arc<dyn RoomNodes>,
    tls: Result<Arc<ClientConfig>, String>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder asking `nodes` where a room is; `https://` nodes are verified with the
    /// system's trust store.
    pub fn new(nodes: Arc<dyn RoomNodes>) -> Forwarder {
        Forwarder {
            nodes,
            tls: node_tls().clone(),
        }
    }

    /// The other nodes of `room`.
    pub async fn nodes(&self, room: &str) -> Vec<String> {
        self.nodes.nodes(room).await
    }

    /// Every other living node.
    pub async fn every_other(&self) -> Vec<String> {
        self.nodes.every_other().await
    }

    /// `POST {node}/twirp/livekit.RoomService/{method}` with the caller's `authorization`,
    /// `content_type` and `body`, marked for this node only.
    pub async fn call(
        &self,
        node: &str,
        method: &str,
        authorization: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer, String> {
        let base = node.trim_end_matches('/');
        let base = if let Some(rest) = base.strip_prefix("ws://") {
            format!("http://{rest}")
        } else if let Some(rest) = base.strip_prefix("wss://") {
            format!("https://{rest}")
        } else {
            base.to_owned()
        };
        let url = format!("{base}/twirp/livekit.RoomService/{method}");
        let target = split_url(&url)?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nAuthorization: {authorization}\r\n{SCOPE_HEADER}: {SCOPE_NODE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            target.path,
            target.host,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let attempt = async {
            let stream = dial(&target, &self.tls).await?;
            exchange(stream, &request).await
        };
        tokio::time::timeout(FORWARD_TIMEOUT, attempt)
            .await
            .map_err(|_| "the node did not answer in time".to_owned())?
    }
}

/// A byte stream to another node: plain TCP or TLS over it.
pub(crate) trait NodeIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> NodeIo for T {}

/// The TLS client configuration for `https://` and `wss://` nodes: the system's trust store
/// (`SSL_CERT_FILE` or `SSL_CERT_DIR` add a private CA), read once, at the first call.
pub(crate) fn node_tls() -> &'static Result<Arc<ClientConfig>, String> {
    static TLS: std::sync::OnceLock<Result<Arc<ClientConfig>, String>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| crate::webhook::client_tls_config(None).map_err(|e| e.to_string()))
}

/// Connects to the node `target` names: TCP, and TLS over it for `https://` (the certificate
/// verified against `tls` for the target's host).
pub(crate) async fn dial(
    target: &Target,
    tls: &Result<Arc<ClientConfig>, String>,
) -> Result<Box<dyn NodeIo>, String> {
    let stream = TcpStream::connect(&target.addr)
        .await
        .map_err(|e| format!("cannot reach the node: {e}"))?;
    // Signaling messages are small and latency-bound, as on the server's side.
    let _ = stream.set_nodelay(true);
    match target.scheme {
        Scheme::Http => Ok(Box::new(stream)),
        Scheme::Https => {
            let config = tls.as_ref().map_err(|e| format!("no TLS: {e}"))?;
            let name = target
                .addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or_default();
            let name =
                ServerName::try_from(name.to_owned()).map_err(|e| format!("bad host name: {e}"))?;
            let stream = TlsConnector::from(config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            Ok(Box::new(stream))
        }
    }
}

/// Sends `request` and reads the whole answer (the connection closes after it).
async fn exchange<S>(mut stream: S, request: &[u8]) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| format!("socket error: {e}");
    stream.write_all(request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_ANSWER {
            return Err("the answer is too large".into());
        }
    }
    parse_answer(&raw)
}

/// An HTTP/1.1 answer with a `Content-Length` body (what axum sends for a full body).
fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no HTTP status")?;
    let mut content_type = String::new();
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            value.clone_into(&mut content_type);
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked answers are not read".into());
        }
    }
    let body = &raw[end + 4..];
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        Some(_) => return Err("the answer was cut short".into()),
        None => body,
    };
    Ok(Answer {
        status,
        content_type,
        body: Bytes::copy_from_slice(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_by_their_length() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 4\r\n\r\n{\"a\"}extra";
        let a = parse_answer(raw).unwrap();
        assert_eq!(a.status, 404);
        assert_eq!(a.content_type, "application/json");
        assert_eq!(&a.body[..], b"{\"a\"");
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(parse_answer(b"garbage").is_err());
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n")
                .is_err()
        );
    }
}
