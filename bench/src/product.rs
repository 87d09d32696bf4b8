//! The product path: how a real audience joins a Stoa room, through the control plane.
//!
//! A host (or the app backend, with a server token) creates and starts a room through `/api`;
//! each listener then does what the web app does: it holds a user token (minted here, as an
//! embedding app's backend would), calls `POST /api/rooms/{id}/token`, and opens `/rtc` with the
//! media token and URL it got back, where the control plane's admission, presence and speaking
//! bookkeeping run. [`Http`] is a minimal HTTP/1.1 client with keep-alive for those calls (the
//! harness depends on no HTTP stack).
//!
//! Everything here talks only to loopback addresses, and every wait is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use livekit_api::access_token::{AccessToken, VideoGrants};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest wait for one HTTP exchange.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read.
const MAX_BODY: usize = 4 << 20;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The connection failed or closed early.
    #[error("http: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("http: no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered something this client cannot read.
    #[error("http: {0}")]
    Protocol(String),
    /// The server refused the call.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        /// Method.
        method: &'static str,
        /// Path (no query).
        path: String,
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(String),
}

/// One keep-alive HTTP/1.1 connection to the server.
#[derive(Debug)]
pub struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Http {
    /// A client of `addr` (loopback only, or a node in the namespaces the harness made, see
    /// [`crate::netns`]); connects on first use.
    pub fn new(addr: SocketAddr) -> Result<Http, ApiError> {
        if !crate::netns::reachable(addr.ip()) {
            return Err(ApiError::Protocol(format!(
                "{addr} is not a loopback address"
            )));
        }
        Ok(Http { addr, conn: None })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// One request; reconnects once if a kept-alive connection was closed by the server.
    pub async fn request(
        &mut self,
        method: &'static str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&str>,
    ) -> Result<Answer, ApiError> {
        let reused = self.conn.is_some();
        match self.exchange(method, path, bearer, json).await {
            Err(ApiError::Io(_)) if reused => {
                self.conn = None;
                self.exchange(method, path, bearer, json).await
            }
            r => r,
        }
    }

    /// Like [`Http::request`], and a status other than 2xx is an error.
    pub async fn call(
        &mut self,
        method: &'static str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&str>,
    ) -> Result<Vec<u8>, ApiError> {
        let a = self.request(method, path, bearer, json).await?;
        if (200..300).contains(&a.status) {
            Ok(a.body)
        } else {
            Err(ApiError::Status {
                method,
                path: path.split('?').next().unwrap_or_default().to_owned(),
                status: a.status,
                body: String::from_utf8_lossy(&a.body).chars().take(300).collect(),
            })
        }
    }

    async fn exchange(
        &mut self,
        method: &'static str,
        path: &str,
        bearer: Option<&str>,
        json: Option<&str>,
    ) -> Result<Answer, ApiError> {
        let fut = async {
            if self.conn.is_none() {
                let s = TcpStream::connect(self.addr).await?;
                s.set_nodelay(true)?;
                self.conn = Some(BufReader::new(s));
            }
            let Some(conn) = self.conn.as_mut() else {
                return Err(ApiError::Protocol("no connection".into()));
            };
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: keep-alive\r\n",
                self.addr
            );
            if let Some(t) = bearer {
                head.push_str(&format!("Authorization: Bearer {t}\r\n"));
            }
            let body = json.unwrap_or("");
            if json.is_some() {
                head.push_str("Content-Type: application/json\r\n");
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            head.push_str(body);
            conn.get_mut().write_all(head.as_bytes()).await?;
            read_response(conn).await
        };
        let r = tokio::time::timeout(HTTP_TIMEOUT, fut)
            .await
            .map_err(|_| ApiError::Timeout(HTTP_TIMEOUT))
            .and_then(|r| r);
        match &r {
            Ok(a) if a.keep_alive => {}
            _ => self.conn = None,
        }
        r.map(|a| Answer {
            status: a.status,
            body: a.body,
        })
    }
}

struct Raw {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

async fn read_response(conn: &mut BufReader<TcpStream>) -> Result<Raw, ApiError> {
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(ApiError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::Protocol(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(ApiError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| ApiError::Protocol("bad chunk size".into()))?;
            if body.len() + size > MAX_BODY {
                return Err(ApiError::Protocol("response too large".into()));
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..]).await?;
            line.clear();
            conn.read_line(&mut line).await?;
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(ApiError::Protocol("response too large".into()));
        }
        body.resize(n, 0);
        conn.read_exact(&mut body).await?;
    } else if status != 204 && status != 304 {
        keep_alive = false;
        conn.take(MAX_BODY as u64).read_to_end(&mut body).await?;
    }
    Ok(Raw {
        status,
        body,
        keep_alive,
    })
}

/// A user token for the control API (`sub` = identity, `name`, no room grants), as an
/// embedding app's backend mints it.
pub fn user_token(key: &str, secret: &str, identity: &str, name: &str) -> Result<String, ApiError> {
    AccessToken::with_api_key(key, secret)
        .with_identity(identity)
        .with_name(name)
        .with_ttl(Duration::from_secs(6 * 3600))
        .to_jwt()
        .map_err(|e| ApiError::Token(e.to_string()))
}

/// A server token (the `roomCreate` grant): an app backend acting for everyone.
pub fn server_token(key: &str, secret: &str) -> Result<String, ApiError> {
    let grants = VideoGrants {
        room_create: true,
        ..Default::default()
    };
    AccessToken::with_api_key(key, secret)
        .with_identity("stoa-bench")
        .with_grants(grants)
        .with_ttl(Duration::from_secs(6 * 3600))
        .to_jwt()
        .map_err(|e| ApiError::Token(e.to_string()))
}

/// What a client needs to join a room through the control plane.
#[derive(Debug, Clone)]
pub struct ProductJoin {
    /// The server's HTTP address (`/api`).
    pub api: SocketAddr,
    /// The control plane's room id.
    pub room: String,
    /// The user's token for `/api`.
    pub user_token: String,
    /// A server token, to put a speaker on stage before it connects (`None` for listeners
    /// and for the host, who is on stage already).
    pub stage_with: Option<String>,
}

/// The media token and WebSocket address that `POST /api/rooms/{id}/token` returned.
#[derive(Debug, Clone)]
pub struct MediaGrant {
    /// The LiveKit access token.
    pub token: String,
    /// The address of the `ws://host:port` URL it named.
    pub rtc: SocketAddr,
}

/// `POST /api/rooms/{room}/token` as `user_token`.
pub async fn media_token(
    http: &mut Http,
    room: &str,
    user_token: &str,
) -> Result<MediaGrant, ApiError> {
    let body = http
        .call(
            "POST",
            &format!("/api/rooms/{room}/token"),
            Some(user_token),
            None,
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Protocol(format!("token answer: {e}")))?;
    let token = v["token"]
        .as_str()
        .ok_or_else(|| ApiError::Protocol("token answer without a token".into()))?
        .to_owned();
    let url = v["url"]
        .as_str()
        .ok_or_else(|| ApiError::Protocol("token answer without a url".into()))?;
    let host = url
        .strip_prefix("ws://")
        .ok_or_else(|| ApiError::Protocol(format!("media URL {url:?} is not ws://")))?
        .trim_end_matches('/');
    let rtc: SocketAddr = host
        .parse()
        .map_err(|_| ApiError::Protocol(format!("media URL {url:?} is not host:port")))?;
    if !crate::netns::reachable(rtc.ip()) {
        return Err(ApiError::Protocol(format!(
            "media URL {url:?} is not on loopback"
        )));
    }
    Ok(MediaGrant { token, rtc })
}

/// The whole product join of one client: the media token (after being put on stage when
/// `join.stage_with` says so).
pub async fn join(join: &ProductJoin, identity: &str) -> Result<MediaGrant, ApiError> {
    let mut http = Http::new(join.api)?;
    let grant = media_token(&mut http, &join.room, &join.user_token).await?;
    let Some(server) = &join.stage_with else {
        return Ok(grant);
    };
    http.call(
        "POST",
        &format!(
            "/api/rooms/{}/members/{identity}/invite_to_speak",
            join.room
        ),
        Some(server),
        None,
    )
    .await?;
    // A fresh token carries the speaker's grants.
    media_token(&mut http, &join.room, &join.user_token).await
}

/// Creates a live stage room through `/api` with a server token, hosted by `host`; returns
/// its id.
pub async fn create_room(
    http: &mut Http,
    server_token: &str,
    host: &str,
    title: &str,
    max_participants: Option<u32>,
) -> Result<String, ApiError> {
    let mut body = serde_json::json!({ "title": title, "kind": "stage", "host": host });
    if let Some(m) = max_participants {
        body["max_participants"] = m.into();
    }
    let answer = http
        .call(
            "POST",
            "/api/rooms",
            Some(server_token),
            Some(&body.to_string()),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .map_err(|e| ApiError::Protocol(format!("room answer: {e}")))?;
    let id = v["id"]
        .as_str()
        .ok_or_else(|| ApiError::Protocol("room answer without an id".into()))?;
    if v["state"] != "live" {
        return Err(ApiError::Protocol(format!("room {id} is not live")));
    }
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_identity_and_grants() {
        let t = user_token("k", "s", "ann", "Ann").unwrap_or_default();
        let claims = livekit_api::access_token::TokenVerifier::with_api_key("k", "s")
            .verify(&t)
            .ok();
        let claims = claims.as_ref();
        assert_eq!(claims.map(|c| c.sub.as_str()), Some("ann"));
        assert_eq!(claims.map(|c| c.name.as_str()), Some("Ann"));
        assert_eq!(claims.map(|c| c.video.room_join), Some(false));
        let s = server_token("k", "s").unwrap_or_default();
        let claims = livekit_api::access_token::TokenVerifier::with_api_key("k", "s")
            .verify(&s)
            .ok();
        assert_eq!(claims.map(|c| c.video.room_create), Some(true));
    }

    #[test]
    fn refuses_addresses_off_loopback() {
        assert!(Http::new("10.0.0.1:80".parse().unwrap_or(([127, 0, 0, 1], 1).into())).is_err());
        assert!(Http::new(([127, 0, 0, 1], 1).into()).is_ok());
    }
}
