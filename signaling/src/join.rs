//! Join requests: the query string a client connects with on the legacy `/rtc` path or on
//! `/rtc/v1`, and the decision whether to admit it.
//!
//! On `/rtc/v1` (LiveKit's single-connection protocol, which livekit-client 2.17+ and the SDKs
//! on LiveKit's Rust core try first) the query carries the token and `join_request`: URL-safe
//! base64 of a `WrappedJoinRequest`, whose `join_request` bytes are a `JoinRequest`, gzipped
//! when `compression` is `GZIP`. [`parse_v1_request`] reads it into the same [`JoinParams`]
//! (client details, connection settings, resume fields, the publisher offer sent along); a
//! `join_request` that is missing or cannot be read is refused with 400 and says which step
//! failed.
//!
//! livekit-client 2.x sends `access_token`, `auto_subscribe`, `sdk`, `version`, `protocol` and
//! `client_protocol` on every connection, `reconnect=1` and `sid` on a resume, and optionally
//! `adaptive_stream`, `reconnect_reason`, `subscriber_allow_pause`, `disable_ice_lite`,
//! `device_model`, `os`, `os_version`, `browser`, `browser_version` and `network` (reference
//! `livekit-protocol.md` §1, "Query on the legacy path `/rtc`"). [`parse_query`] reads them as
//! LiveKit's `validateInternal` (`pkg/service/rtcservice.go`) does:
//!
//! - values are form-urlencoded (`%XX`, `+` for space); a parameter given twice counts once, the
//!   first time, and unknown parameters are ignored;
//! - an empty value counts as absent;
//! - a boolean is true when it is `1` or `true` and false otherwise (LiveKit's `boolValue`), so
//!   no client is refused over a spelling;
//! - an integer that does not parse is refused (400) rather than read as 0 as LiveKit does:
//!   `protocol=0` would silently select the oldest protocol behaviour.
//!
//! `publish` (a second, publish-only connection for an existing participant) and `attributes`
//! are not supported and are ignored like any unknown parameter; livekit-client 2.x sends neither.
//!
//! The access token comes from the `Authorization: Bearer <token>` header or, when there is no
//! such header, from the `access_token` parameter: LiveKit's server accepts both
//! (`pkg/service/auth.go`), livekit-client sends the parameter (a browser cannot set headers on
//! a WebSocket) and the SDKs built on LiveKit's Rust core (Python `livekit`, `@livekit/rtc-node`,
//! Unity, the mobile and desktop SDKs) send the header. As in LiveKit, a header that is present
//! wins over the parameter, and a header that is not a bearer token is refused (401) rather than
//! ignored.
//!
//! [`validate`] adds the token: verify it, then check it admits its holder to the room, and answer
//! with the HTTP status and plain-text message LiveKit would (livekit-client shows the body of a
//! 401 or 403 to the user as a `NotAllowed` error). The token's source changes nothing else: the
//! same token is refused with the same status and message either way.

use std::borrow::Cow;
use std::fmt;

use livekit_protocol::ClientInfo;
use livekit_protocol::client_info::Sdk;

use crate::token::{self, ApiKeys, Claims, JoinRefusal, TokenError};

/// What a client asked for in the `/rtc` query string.
///
/// Its `Debug` output hides the access token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinParams {
    /// The JWT, not yet verified: from the `Authorization: Bearer` header, else `access_token`.
    pub access_token: String,
    /// `room`: the room to join when the token grants `roomJoin` without naming one. LiveKit
    /// accepts it; livekit-client 2.x never sends it (the room is in the token).
    pub room: Option<String>,
    /// `reconnect=1`: the client resumes an existing session instead of joining afresh.
    pub reconnect: bool,
    /// `reconnect_reason`: a `livekit.ReconnectReason` value; 0 (unknown) when absent.
    pub reconnect_reason: i32,
    /// `sid`: the participant SID being resumed; only kept on a reconnect, as LiveKit does.
    pub participant_sid: Option<String>,
    /// `auto_subscribe`: subscribe to every track automatically (default true).
    pub auto_subscribe: bool,
    /// `adaptive_stream=1`: the client adapts video layers to its view (default false).
    pub adaptive_stream: bool,
    /// `subscriber_allow_pause`: whether the subscriber stream may be paused; `None` when absent.
    pub subscriber_allow_pause: Option<bool>,
    /// `disable_ice_lite=1`: the client asks the server not to use ICE-lite.
    pub disable_ice_lite: bool,
    /// `sdk`: which client SDK (`js`, `reactnative`, `swift`, …); `Unknown` when absent or new.
    pub sdk: Sdk,
    /// `version`: the SDK's version, e.g. `2.23.0`.
    pub version: String,
    /// `protocol`: the signalling protocol level (17 for livekit-client 2.23); 0 when absent, as
    /// LiveKit reads it.
    pub protocol: i32,
    /// `client_protocol`: client-to-client features (2 = data streams v2); 0 when absent.
    pub client_protocol: i32,
    /// `device_model`, `os`, `os_version`, `browser`, `browser_version`, `network`: descriptive
    /// client details, empty when absent.
    pub device: DeviceInfo,
    /// The client's IP address, as the HTTP layer saw the connection (not from the query);
    /// logged only as [`ClientIp`](crate::redact::ClientIp).
    pub client: Option<std::net::IpAddr>,
    /// The client joined on `/rtc/v1`: one peer connection, which it offers.
    pub single_pc: bool,
    /// The publisher offer a `/rtc/v1` client sent inside its `join_request`, if any.
    pub publisher_offer: Option<InitialOffer>,
}

/// A publisher offer sent along with a `/rtc/v1` join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialOffer {
    /// The offer's SDP.
    pub sdp: String,
    /// The offer's id, echoed by the answer.
    pub id: u32,
}

/// Descriptive client details from the query, reported back in `ClientInfo`; never acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `device_model`.
    pub device_model: String,
    /// `os`.
    pub os: String,
    /// `os_version`.
    pub os_version: String,
    /// `browser`.
    pub browser: String,
    /// `browser_version`.
    pub browser_version: String,
    /// `network`: the connection type the browser reports (`wifi`, `cellular`, …).
    pub network: String,
}

impl JoinParams {
    /// The client as LiveKit describes it in `ParticipantInfo` and webhooks. `address` is left
    /// empty: the caller knows the peer's address, this query does not.
    pub fn client_info(&self) -> ClientInfo {
        ClientInfo {
            sdk: self.sdk as i32,
            version: self.version.clone(),
            protocol: self.protocol,
            client_protocol: self.client_protocol,
            os: self.device.os.clone(),
            os_version: self.device.os_version.clone(),
            device_model: self.device.device_model.clone(),
            browser: self.device.browser.clone(),
            browser_version: self.device.browser_version.clone(),
            network: self.device.network.clone(),
            ..ClientInfo::default()
        }
    }
}

impl fmt::Debug for JoinParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinParams")
            .field("access_token", &"<redacted>")
            .field("room", &self.room)
            .field("reconnect", &self.reconnect)
            .field("reconnect_reason", &self.reconnect_reason)
            .field("participant_sid", &self.participant_sid)
            .field("auto_subscribe", &self.auto_subscribe)
            .field("adaptive_stream", &self.adaptive_stream)
            .field("subscriber_allow_pause", &self.subscriber_allow_pause)
            .field("disable_ice_lite", &self.disable_ice_lite)
            .field("sdk", &self.sdk)
            .field("version", &self.version)
            .field("protocol", &self.protocol)
            .field("client_protocol", &self.client_protocol)
            .field("device", &self.device)
            .field("client", &self.client.map(crate::redact::ClientIp))
            .field("single_pc", &self.single_pc)
            .field(
                "publisher_offer",
                &self.publisher_offer.as_ref().map(|o| o.id),
            )
            .finish()
    }
}

/// Why a `/rtc` query string cannot be read. The `Display` text is the plain-text answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// There is neither an `Authorization: Bearer` header nor an `access_token` (or it is
    /// empty).
    #[error("no permissions to access the room: access_token is missing")]
    MissingToken,
    /// An `Authorization` header that is not `Bearer <token>` (LiveKit's wording).
    #[error("invalid authorization header. Must start with Bearer ")]
    BadAuthorization,
    /// `/rtc/v1` without a `join_request`.
    #[error("join_request is missing")]
    MissingJoinRequest,
    /// A `join_request` that cannot be read; `reason` says which step failed.
    #[error("invalid join_request: {0}")]
    BadJoinRequest(String),
    /// A parameter Stoa relies on has a value it cannot read.
    #[error("invalid query parameter `{name}`: {reason}")]
    InvalidParam {
        /// The parameter.
        name: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

impl JoinError {
    /// The HTTP status to answer with.
    ///
    /// A missing token is 401, as LiveKit answers a request without grants ("no permissions to
    /// access the room"); livekit-client shows a 401's body to the user, while any 400 becomes
    /// an opaque "unknown websocket error". An unreadable parameter is 400.
    pub fn http_status(&self) -> u16 {
        match self {
            JoinError::MissingToken | JoinError::BadAuthorization => 401,
            JoinError::InvalidParam { .. }
            | JoinError::MissingJoinRequest
            | JoinError::BadJoinRequest(_) => 400,
        }
    }
}

/// A refused join: the HTTP status and the plain-text body to answer with, before any WebSocket
/// upgrade (LiveKit's `HandleError`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status: 400 (bad request, missing identity or room) or 401 (token or permission).
    pub status: u16,
    /// The body, which the client shows; it never contains the token or a secret.
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Refusal {}

impl From<JoinError> for Refusal {
    fn from(err: JoinError) -> Self {
        Self {
            status: err.http_status(),
            message: err.to_string(),
        }
    }
}

impl From<TokenError> for Refusal {
    fn from(err: TokenError) -> Self {
        Self {
            status: err.http_status(),
            message: err.to_string(),
        }
    }
}

impl From<JoinRefusal> for Refusal {
    fn from(err: JoinRefusal) -> Self {
        Self {
            status: err.http_status(),
            message: err.to_string(),
        }
    }
}

/// Reads a `/rtc` query string (with or without its leading `?`) that carries the token as
/// `access_token`.
pub fn parse_query(query: &str) -> Result<JoinParams, JoinError> {
    parse_request(query, None)
}

/// Reads a `/rtc` request: its query string (with or without its leading `?`) and the value of
/// its `Authorization` header, if it has one (`None` when absent or empty; the caller passes a
/// header whose bytes are not text as such, and it is refused like any header that is not a
/// bearer token).
pub fn parse_request(query: &str, authorization: Option<&str>) -> Result<JoinParams, JoinError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut raw = RawParams::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        raw.offer(&name, value);
    }

    // An empty header counts as none (LiveKit's rule).
    let access_token = match authorization.filter(|h| !h.trim().is_empty()) {
        Some(header) => bearer_token(header)?,
        None => raw.access_token.ok_or(JoinError::MissingToken)?,
    };
    let reconnect = raw.reconnect.as_deref().is_some_and(bool_value);
    Ok(JoinParams {
        access_token,
        room: raw.room,
        reconnect,
        reconnect_reason: int_param("reconnect_reason", raw.reconnect_reason.as_deref())?,
        participant_sid: raw.sid.filter(|_| reconnect),
        auto_subscribe: raw.auto_subscribe.as_deref().is_none_or(bool_value),
        adaptive_stream: raw.adaptive_stream.as_deref().is_some_and(bool_value),
        subscriber_allow_pause: raw.subscriber_allow_pause.as_deref().map(bool_value),
        disable_ice_lite: raw.disable_ice_lite.as_deref().is_some_and(bool_value),
        sdk: raw.sdk.as_deref().map_or(Sdk::Unknown, sdk_from_param),
        version: raw.version.unwrap_or_default(),
        protocol: int_param("protocol", raw.protocol.as_deref())?,
        client_protocol: int_param("client_protocol", raw.client_protocol.as_deref())?,
        device: DeviceInfo {
            device_model: raw.device_model.unwrap_or_default(),
            os: raw.os.unwrap_or_default(),
            os_version: raw.os_version.unwrap_or_default(),
            browser: raw.browser.unwrap_or_default(),
            browser_version: raw.browser_version.unwrap_or_default(),
            network: raw.network.unwrap_or_default(),
        },
        client: None,
        single_pc: false,
        publisher_offer: None,
    })
}

/// Largest `join_request` accepted, before and after decompression. livekit-client's, with a
/// publisher offer for 3 audio and 3 video sections, is a few kilobytes.
const MAX_JOIN_REQUEST: usize = 64 * 1024;

/// Reads a `/rtc/v1` request: the token as on `/rtc` ([`parse_request`]), the rest from
/// `join_request`.
pub fn parse_v1_request(query: &str, authorization: Option<&str>) -> Result<JoinParams, JoinError> {
    v1_params(query, parse_request(query, authorization)?)
}

/// The `/rtc/v1` parameters: the token and room of `legacy` (the query read as on `/rtc`), the
/// rest from `join_request`.
fn v1_params(query: &str, legacy: JoinParams) -> Result<JoinParams, JoinError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let encoded = form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name == "join_request" && !value.is_empty())
        .map(|(_, value)| value.into_owned())
        .ok_or(JoinError::MissingJoinRequest)?;
    let join = decode_join_request(&encoded)?;
    let info = join.client_info.unwrap_or_default();
    let settings = join.connection_settings;
    let sdk = Sdk::try_from(info.sdk).unwrap_or(Sdk::Unknown);
    Ok(JoinParams {
        access_token: legacy.access_token,
        room: legacy.room,
        reconnect: join.reconnect,
        reconnect_reason: join.reconnect_reason,
        participant_sid: Some(join.participant_sid).filter(|sid| join.reconnect && !sid.is_empty()),
        // Without connection settings, LiveKit's defaults.
        auto_subscribe: settings.as_ref().is_none_or(|s| s.auto_subscribe),
        adaptive_stream: settings.as_ref().is_some_and(|s| s.adaptive_stream),
        subscriber_allow_pause: settings.as_ref().and_then(|s| s.subscriber_allow_pause),
        disable_ice_lite: settings.as_ref().is_some_and(|s| s.disable_ice_lite),
        sdk,
        version: info.version,
        protocol: info.protocol,
        client_protocol: info.client_protocol,
        device: DeviceInfo {
            device_model: info.device_model,
            os: info.os,
            os_version: info.os_version,
            browser: info.browser,
            browser_version: info.browser_version,
            network: info.network,
        },
        client: None,
        single_pc: true,
        publisher_offer: join
            .publisher_offer
            .filter(|o| !o.sdp.is_empty())
            .map(|o| InitialOffer {
                sdp: o.sdp,
                id: o.id,
            }),
    })
}

/// Decodes a `join_request` value: URL-safe base64 (padded or not; the standard alphabet
/// too, as a proxy may have rewritten it) of a `WrappedJoinRequest`, its payload gzipped or
/// not.
pub fn decode_join_request(encoded: &str) -> Result<livekit_protocol::JoinRequest, JoinError> {
    use base64::Engine as _;
    use base64::engine::DecodePaddingMode;
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use livekit_protocol::wrapped_join_request::Compression;
    use prost::Message as _;
    use std::io::Read as _;

    let bad = |why: String| JoinError::BadJoinRequest(why);
    if encoded.len() > MAX_JOIN_REQUEST * 4 / 3 + 4 {
        return Err(bad("too long".into()));
    }
    let lenient =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let url_safe = GeneralPurpose::new(&base64::alphabet::URL_SAFE, lenient);
    let standard = GeneralPurpose::new(&base64::alphabet::STANDARD, lenient);
    let bytes = url_safe
        .decode(encoded)
        .or_else(|_| standard.decode(encoded))
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let wrapped = livekit_protocol::WrappedJoinRequest::decode(bytes.as_slice())
        .map_err(|e| bad(format!("not a WrappedJoinRequest: {e}")))?;
    let inner = match Compression::try_from(wrapped.compression) {
        Ok(Compression::None) => wrapped.join_request,
        Ok(Compression::Gzip) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(wrapped.join_request.as_slice())
                .take(MAX_JOIN_REQUEST as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("not gzip: {e}")))?;
            if out.len() > MAX_JOIN_REQUEST {
                return Err(bad("too long once decompressed".into()));
            }
            out
        }
        Err(_) => {
            return Err(bad(format!("unknown compression {}", wrapped.compression)));
        }
    };
    livekit_protocol::JoinRequest::decode(inner.as_slice())
        .map_err(|e| bad(format!("not a JoinRequest: {e}")))
}

/// Encodes a `join_request` value as a client sends it on `/rtc/v1` (uncompressed, URL-safe
/// base64 without padding); [`decode_join_request`] reads it back. The edge's relay link uses it.
pub fn encode_join_request(join: &livekit_protocol::JoinRequest) -> String {
    use base64::Engine as _;
    use prost::Message as _;
    let wrapped = livekit_protocol::WrappedJoinRequest {
        compression: livekit_protocol::wrapped_join_request::Compression::None as i32,
        join_request: join.encode_to_vec(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(wrapped.encode_to_vec())
}

/// Decides a `/rtc` (or `/rtc/validate`) request at `now_unix`: reads the query and the
/// `Authorization` header (see [`parse_request`]), verifies the token with `keys`, and checks that
/// it admits its holder to the room.
///
/// The room is the token's, or when the token grants `roomJoin` without naming one, the `room`
/// parameter (LiveKit's rule); the returned claims carry it in `video.room`, so callers read the
/// room from there. Whether the room has space or the identity is already present is for the
/// room registry to decide afterwards.
pub fn validate(
    keys: &ApiKeys,
    query: &str,
    authorization: Option<&str>,
    now_unix: u64,
) -> Result<(JoinParams, Claims), Refusal> {
    admit_params(keys, parse_request(query, authorization)?, now_unix)
}

/// [`validate`] for `/rtc/v1` and `/rtc/v1/validate`: the token is judged exactly as on `/rtc`,
/// then the rest of the query is read as [`parse_v1_request`] does.
pub fn validate_v1(
    keys: &ApiKeys,
    query: &str,
    authorization: Option<&str>,
    now_unix: u64,
) -> Result<(JoinParams, Claims), Refusal> {
    // The token first: a token `/rtc` refuses is refused here with the same status and reason,
    // whatever the `join_request`.
    let (legacy, claims) = admit_params(keys, parse_request(query, authorization)?, now_unix)?;
    Ok((v1_params(query, legacy)?, claims))
}

fn admit_params(
    keys: &ApiKeys,
    params: JoinParams,
    now_unix: u64,
) -> Result<(JoinParams, Claims), Refusal> {
    let mut claims = keys.verify(&params.access_token, now_unix)?;
    let room = if claims.video.room.is_empty() {
        params.room.clone().unwrap_or_default()
    } else {
        claims.video.room.clone()
    };
    token::can_join(&claims, &room)?;
    claims.video.room = room;
    Ok((params, claims))
}

/// The first non-empty value of every parameter Stoa reads.
#[derive(Default)]
struct RawParams {
    access_token: Option<String>,
    room: Option<String>,
    reconnect: Option<String>,
    reconnect_reason: Option<String>,
    sid: Option<String>,
    auto_subscribe: Option<String>,
    adaptive_stream: Option<String>,
    subscriber_allow_pause: Option<String>,
    disable_ice_lite: Option<String>,
    sdk: Option<String>,
    version: Option<String>,
    protocol: Option<String>,
    client_protocol: Option<String>,
    device_model: Option<String>,
    os: Option<String>,
    os_version: Option<String>,
    browser: Option<String>,
    browser_version: Option<String>,
    network: Option<String>,
}

impl RawParams {
    fn offer(&mut self, name: &str, value: Cow<'_, str>) {
        let slot = match name {
            "access_token" => &mut self.access_token,
            "room" => &mut self.room,
            "reconnect" => &mut self.reconnect,
            "reconnect_reason" => &mut self.reconnect_reason,
            "sid" => &mut self.sid,
            "auto_subscribe" => &mut self.auto_subscribe,
            "adaptive_stream" => &mut self.adaptive_stream,
            "subscriber_allow_pause" => &mut self.subscriber_allow_pause,
            "disable_ice_lite" => &mut self.disable_ice_lite,
            "sdk" => &mut self.sdk,
            "version" => &mut self.version,
            "protocol" => &mut self.protocol,
            "client_protocol" => &mut self.client_protocol,
            "device_model" => &mut self.device_model,
            "os" => &mut self.os,
            "os_version" => &mut self.os_version,
            "browser" => &mut self.browser,
            "browser_version" => &mut self.browser_version,
            "network" => &mut self.network,
            _ => return,
        };
        // Go's `FormValue` takes the first value; an empty one counts as absent.
        if slot.is_none() && !value.is_empty() {
            *slot = Some(value.into_owned());
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is matched without regard
/// to case (RFC 9110 §11.1; LiveKit wants exactly `Bearer `) and surrounding blanks are ignored.
/// An empty token counts as none.
fn bearer_token(header: &str) -> Result<String, JoinError> {
    let header = header.trim();
    let (scheme, token) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(JoinError::BadAuthorization);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(JoinError::MissingToken);
    }
    Ok(token.to_owned())
}

/// LiveKit's `boolValue`.
fn bool_value(value: &str) -> bool {
    value == "1" || value == "true"
}

fn int_param(name: &'static str, value: Option<&str>) -> Result<i32, JoinError> {
    let Some(value) = value else { return Ok(0) };
    value.parse().map_err(|_| JoinError::InvalidParam {
        name,
        reason: format!("`{}` is not an integer", clip(value)),
    })
}

/// LiveKit's `ParseClientInfo` table; names it does not know are `Unknown`.
fn sdk_from_param(name: &str) -> Sdk {
    match name {
        "js" => Sdk::Js,
        "ios" | "swift" => Sdk::Swift,
        "android" => Sdk::Android,
        "flutter" => Sdk::Flutter,
        "go" => Sdk::Go,
        "unity" => Sdk::Unity,
        "reactnative" => Sdk::ReactNative,
        "rust" => Sdk::Rust,
        "python" => Sdk::Python,
        "cpp" => Sdk::Cpp,
        "unityweb" => Sdk::UnityWeb,
        "node" => Sdk::Node,
        _ => Sdk::Unknown,
    }
}

/// Client-supplied text, shortened for an error message.
fn clip(text: &str) -> Cow<'_, str> {
    const MAX_CHARS: usize = 32;
    match text.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
        None => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::token::{VideoGrants, mint};

    const NOW: u64 = 1_800_000_000;

    fn keys() -> ApiKeys {
        ApiKeys::new([("devkey", "secret")])
    }

    fn token_for(identity: &str, room: &str, room_join: bool) -> String {
        let grants = VideoGrants {
            room_join,
            room: room.to_owned(),
            ..VideoGrants::default()
        };
        mint(
            "devkey",
            "secret",
            identity,
            None,
            grants,
            Duration::from_secs(600),
            NOW,
        )
        .expect("mint")
    }

    /// The query livekit-client 2.23 builds (`createConnectionParams`), via `URLSearchParams`.
    fn client_query(token: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("access_token", token)
            .append_pair("auto_subscribe", "1")
            .append_pair("sdk", "js")
            .append_pair("version", "2.23.0")
            .append_pair("protocol", "17")
            .append_pair("client_protocol", "2")
            .append_pair("os", "Mac OS")
            .append_pair("browser", "Chrome")
            .append_pair("browser_version", "140.0.0")
            .append_pair("adaptive_stream", "1")
            .append_pair("network", "wifi")
            .finish()
    }

    #[test]
    fn livekit_client_query_parses() {
        let params = parse_query(&client_query("tok.en.sig")).expect("parse");
        assert_eq!(params.access_token, "tok.en.sig");
        assert!(!params.reconnect);
        assert_eq!(params.participant_sid, None);
        assert!(params.auto_subscribe);
        assert!(params.adaptive_stream);
        assert_eq!(params.sdk, Sdk::Js);
        assert_eq!(params.version, "2.23.0");
        assert_eq!(params.protocol, 17);
        assert_eq!(params.client_protocol, 2);
        assert_eq!(params.subscriber_allow_pause, None);
        assert_eq!(params.device.os, "Mac OS");
        assert_eq!(params.device.network, "wifi");

        let info = params.client_info();
        assert_eq!(info.sdk, Sdk::Js as i32);
        assert_eq!(info.protocol, 17);
        assert_eq!(info.client_protocol, 2);
        assert_eq!(info.browser, "Chrome");
    }

    #[test]
    fn reconnect_query_parses() {
        let query = "?access_token=t&reconnect=1&sid=PA_abc123&auto_subscribe=0&sdk=reactnative\
                     &version=2.23.0&protocol=17&client_protocol=2&reconnect_reason=1\
                     &subscriber_allow_pause=0&disable_ice_lite=true";
        let params = parse_query(query).expect("parse");
        assert!(params.reconnect);
        assert_eq!(params.participant_sid.as_deref(), Some("PA_abc123"));
        assert!(!params.auto_subscribe);
        assert!(!params.adaptive_stream);
        assert_eq!(params.sdk, Sdk::ReactNative);
        assert_eq!(params.reconnect_reason, 1);
        assert_eq!(params.subscriber_allow_pause, Some(false));
        assert!(params.disable_ice_lite);
    }

    #[test]
    fn sid_without_reconnect_is_dropped() {
        let params = parse_query("access_token=t&sid=PA_x&reconnect=0").expect("parse");
        assert!(!params.reconnect);
        assert_eq!(params.participant_sid, None);
    }

    #[test]
    fn defaults_apply_when_only_the_token_is_given() {
        let params = parse_query("access_token=t").expect("parse");
        assert!(params.auto_subscribe);
        assert!(!params.adaptive_stream && !params.reconnect && !params.disable_ice_lite);
        assert_eq!(params.sdk, Sdk::Unknown);
        assert_eq!((params.protocol, params.client_protocol), (0, 0));
        assert_eq!(params.room, None);
        assert_eq!(params.version, "");
    }

    #[test]
    fn values_are_percent_decoded() {
        let params = parse_query(
            "access_token=a%2Eb%2Ec&room=caf%C3%A9+lounge&os=Mac%20OS&browser=Chrome+Mobile",
        )
        .expect("parse");
        assert_eq!(params.access_token, "a.b.c");
        assert_eq!(params.room.as_deref(), Some("café lounge"));
        assert_eq!(params.device.os, "Mac OS");
        assert_eq!(params.device.browser, "Chrome Mobile");
    }

    #[test]
    fn first_value_wins_and_empty_counts_as_absent() {
        let params =
            parse_query("access_token=&access_token=second&access_token=third&auto_subscribe=")
                .expect("parse");
        assert_eq!(params.access_token, "second");
        assert!(params.auto_subscribe, "an empty value keeps the default");
    }

    #[test]
    fn booleans_follow_livekit() {
        for (value, expected) in [("1", true), ("true", true), ("0", false), ("false", false)] {
            let params =
                parse_query(&format!("access_token=t&auto_subscribe={value}")).expect("parse");
            assert_eq!(params.auto_subscribe, expected, "{value}");
        }
        // Anything else is false, as in LiveKit, rather than a refusal.
        let params = parse_query("access_token=t&auto_subscribe=yes").expect("parse");
        assert!(!params.auto_subscribe);
    }

    #[test]
    fn missing_token_is_refused_with_401() {
        for query in [
            "",
            "?",
            "auto_subscribe=1&sdk=js",
            "access_token=",
            "access_token",
        ] {
            let err = parse_query(query).expect_err(query);
            assert_eq!(err, JoinError::MissingToken, "{query:?}");
            assert_eq!(err.http_status(), 401);
        }
    }

    #[test]
    fn bad_integers_are_refused_with_400() {
        let err = parse_query("access_token=t&protocol=seventeen").expect_err("protocol");
        assert_eq!(err.http_status(), 400);
        assert_eq!(
            err.to_string(),
            "invalid query parameter `protocol`: `seventeen` is not an integer"
        );
        let long = "9".repeat(500);
        let err = parse_query(&format!("access_token=t&client_protocol={long}")).expect_err("long");
        assert!(err.to_string().len() < 120, "{err}");
        assert!(parse_query("access_token=t&reconnect_reason=x").is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let cases = [
            "%",
            "%%%%",
            "access_token=%ZZ",
            "access_token=%FF%FE",
            "&&&=&=",
            "==access_token==",
            "access_token=t&\u{0}=\u{0}",
            "access_token=t&protocol=%F0%9F%98%80",
            "access_token=t&protocol=99999999999999999999",
        ];
        for case in cases {
            // Whatever the outcome, it is a value, not a panic.
            let _ = parse_query(case);
            let _ = validate(&keys(), case, None, NOW);
        }
        // Invalid escapes are kept literally, so the token is just wrong, not a crash.
        let params = parse_query("access_token=%ZZ").expect("parse");
        assert_eq!(params.access_token, "%ZZ");
        let refusal = validate(&keys(), "access_token=%ZZ", None, NOW).expect_err("bad token");
        assert_eq!(refusal.status, 401);
    }

    #[test]
    fn validate_admits_a_good_token() {
        let token = token_for("alice", "lobby", true);
        let (params, claims) = validate(&keys(), &client_query(&token), None, NOW).expect("admit");
        assert_eq!(params.protocol, 17);
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.video.room, "lobby");
    }

    #[test]
    fn validate_takes_the_tokens_room_over_the_query() {
        let token = token_for("alice", "lobby", true);
        let query = format!("{}&room=elsewhere", client_query(&token));
        let (_, claims) = validate(&keys(), &query, None, NOW).expect("admit");
        assert_eq!(claims.video.room, "lobby");
    }

    #[test]
    fn validate_takes_the_query_room_when_the_token_has_none() {
        // Such tokens come from LiveKit's Go SDK, which allows them; ours refuses to mint them.
        let payload = format!(
            r#"{{"iss":"devkey","sub":"bob","exp":{},"video":{{"roomJoin":true}}}}"#,
            NOW + 60
        );
        let token = sign(&payload);
        let (_, claims) = validate(
            &keys(),
            &format!("access_token={token}&room=open"),
            None,
            NOW,
        )
        .expect("admit");
        assert_eq!(claims.video.room, "open");

        let refusal =
            validate(&keys(), &format!("access_token={token}"), None, NOW).expect_err("room");
        assert_eq!(
            refusal,
            Refusal {
                status: 400,
                message: "no room name".to_owned()
            }
        );
    }

    #[test]
    fn validate_refuses_with_livekit_statuses() {
        let refusal = validate(&keys(), "sdk=js", None, NOW).expect_err("no token");
        assert_eq!(refusal.status, 401);

        let expired = token_for("alice", "lobby", true);
        let refusal =
            validate(&keys(), &client_query(&expired), None, NOW + 3600).expect_err("expired");
        assert_eq!(
            refusal,
            Refusal {
                status: 401,
                message: "invalid token: token is expired".to_owned()
            }
        );

        let no_join = token_for("alice", "lobby", false);
        let refusal =
            validate(&keys(), &client_query(&no_join), None, NOW).expect_err("no roomJoin");
        assert_eq!(refusal.status, 401);
        assert!(
            refusal.message.starts_with("permission denied"),
            "{refusal}"
        );

        let payload = format!(
            r#"{{"iss":"devkey","exp":{},"video":{{"roomJoin":true,"room":"r"}}}}"#,
            NOW + 60
        );
        let refusal =
            validate(&keys(), &client_query(&sign(&payload)), None, NOW).expect_err("no identity");
        assert_eq!(refusal.status, 400);
        assert_eq!(refusal.message, "identity cannot be empty");

        let other_keys = ApiKeys::new([("prodkey", "prodsecret")]);
        let token = token_for("alice", "lobby", true);
        let refusal = validate(&other_keys, &client_query(&token), None, NOW).expect_err("unknown");
        assert_eq!(refusal.status, 401);
        assert_eq!(refusal.message, "invalid API key: devkey");
        assert!(!refusal.message.contains(&token));
    }

    /// The query the SDKs on LiveKit's Rust core send on `/rtc` (their token is in the header).
    fn rust_core_query() -> &'static str {
        "sdk=python&os=linux&os_version=6.1&device_model=&protocol=17&client_protocol=1\
         &auto_subscribe=1&adaptive_stream=0&version=1.2.1\
         &capabilities=CAP_PACKET_TRAILER%2CCAP_COMPRESSION_DEFLATE_RAW"
    }

    #[test]
    fn bearer_header_carries_the_token() {
        let token = token_for("alice", "lobby", true);
        let header = format!("Bearer {token}");
        let params = parse_request(rust_core_query(), Some(&header)).expect("parse");
        assert_eq!(params.access_token, token);
        assert_eq!(params.sdk, Sdk::Python);
        assert_eq!(params.protocol, 17);
        let (_, claims) = validate(&keys(), rust_core_query(), Some(&header), NOW).expect("admit");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.video.room, "lobby");
        // The scheme's case and surrounding blanks do not matter.
        for header in [format!("bearer {token}"), format!("  BEARER   {token} ")] {
            let params = parse_request("", Some(&header)).expect(&header);
            assert_eq!(params.access_token, token);
        }
    }

    #[test]
    fn header_wins_over_the_query_parameter() {
        let good = token_for("alice", "lobby", true);
        let other = token_for("bob", "lobby", true);
        let query = format!("access_token={other}");
        let header = format!("Bearer {good}");
        let (_, claims) = validate(&keys(), &query, Some(&header), NOW).expect("admit");
        assert_eq!(claims.sub, "alice");
        // A broken header is not rescued by a good parameter, as in LiveKit.
        let query = format!("access_token={good}");
        let refusal = validate(&keys(), &query, Some("Bearer garbage"), NOW).expect_err("bad");
        assert_eq!(refusal.status, 401);
        // An empty header counts as none.
        let (_, claims) = validate(&keys(), &query, Some(" "), NOW).expect("admit");
        assert_eq!(claims.sub, "alice");
    }

    #[test]
    fn header_that_is_not_a_bearer_token_is_refused_with_401() {
        let token = token_for("alice", "lobby", true);
        for header in [
            format!("Basic {token}"),
            token.clone(),
            "Bearer\u{e9}x".to_owned(),
            "Bearerx y".to_owned(),
            "\u{e9}\u{e9}\u{e9}\u{e9}".to_owned(),
        ] {
            let err = parse_request("", Some(&header)).expect_err(&header);
            assert_eq!(err, JoinError::BadAuthorization, "{header:?}");
            assert_eq!(err.http_status(), 401);
            assert_eq!(
                err.to_string(),
                "invalid authorization header. Must start with Bearer "
            );
        }
        for header in ["Bearer", "Bearer ", "bearer    "] {
            assert_eq!(
                parse_request("", Some(header)),
                Err(JoinError::MissingToken),
                "{header:?}"
            );
        }
    }

    #[test]
    fn header_and_parameter_are_refused_alike() {
        let expired = token_for("alice", "lobby", true);
        let no_join = token_for("alice", "lobby", false);
        let other_keys = ApiKeys::new([("prodkey", "prodsecret")]);
        for (keys, token, now) in [
            (keys(), expired.as_str(), NOW + 3600),
            (keys(), no_join.as_str(), NOW),
            (other_keys, expired.as_str(), NOW),
            (keys(), "not.a.jwt", NOW),
        ] {
            let by_param = validate(&keys, &format!("access_token={token}"), None, now)
                .expect_err("param refused");
            let by_header = validate(&keys, "", Some(&format!("Bearer {token}")), now)
                .expect_err("header refused");
            assert_eq!(by_param, by_header, "{token}");
            assert!(!by_header.message.contains(token), "{by_header}");
        }
        let by_param = validate(&keys(), "", None, NOW).expect_err("none");
        let by_header = validate(&keys(), "", Some("Bearer "), NOW).expect_err("empty");
        assert_eq!(by_param, by_header);
    }

    #[test]
    fn debug_hides_the_token() {
        let token = token_for("alice", "lobby", true);
        let params = parse_query(&client_query(&token)).expect("parse");
        let debug = format!("{params:?}");
        assert!(!debug.contains(&token), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    /// A `join_request` value as livekit-client 2.23 builds it (`createJoinRequestConnectionParams`):
    /// gzip, then URL-safe base64 with its padding.
    fn join_request_param(join: &livekit_protocol::JoinRequest, gzip: bool) -> String {
        use base64::Engine as _;
        use livekit_protocol::wrapped_join_request::Compression;
        use prost::Message as _;
        use std::io::Write as _;

        let mut bytes = join.encode_to_vec();
        if gzip {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&bytes).expect("gzip");
            bytes = z.finish().expect("gzip");
        }
        let wrapped = livekit_protocol::WrappedJoinRequest {
            compression: if gzip {
                Compression::Gzip
            } else {
                Compression::None
            } as i32,
            join_request: bytes,
        };
        base64::engine::general_purpose::URL_SAFE.encode(wrapped.encode_to_vec())
    }

    fn livekit_client_join() -> livekit_protocol::JoinRequest {
        livekit_protocol::JoinRequest {
            client_info: Some(ClientInfo {
                sdk: Sdk::Js as i32,
                version: "2.23.0".into(),
                protocol: 17,
                client_protocol: 2,
                browser: "Chrome".into(),
                os: "Linux".into(),
                ..ClientInfo::default()
            }),
            connection_settings: Some(livekit_protocol::ConnectionSettings {
                auto_subscribe: true,
                adaptive_stream: true,
                ..Default::default()
            }),
            publisher_offer: Some(livekit_protocol::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0\r\n".into(),
                id: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn v1_join_request_parses_gzipped_or_not() {
        for gzip in [true, false] {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("access_token", "tok")
                .append_pair(
                    "join_request",
                    &join_request_param(&livekit_client_join(), gzip),
                )
                .finish();
            let params = parse_v1_request(&query, None).expect("parse");
            assert!(params.single_pc);
            assert_eq!(params.access_token, "tok");
            assert_eq!(params.sdk, Sdk::Js);
            assert_eq!((params.protocol, params.client_protocol), (17, 2));
            assert_eq!(params.version, "2.23.0");
            assert_eq!(params.device.browser, "Chrome");
            assert!(params.auto_subscribe && params.adaptive_stream && !params.reconnect);
            assert_eq!(params.participant_sid, None);
            assert_eq!(
                params.publisher_offer,
                Some(InitialOffer {
                    sdp: "v=0\r\n".into(),
                    id: 1
                })
            );
        }
        // A resume carries the sid; without `reconnect` the sid is dropped, as on /rtc.
        let mut join = livekit_client_join();
        join.reconnect = true;
        join.participant_sid = "PA_x".into();
        join.reconnect_reason = 2;
        join.publisher_offer = None;
        let query = format!(
            "access_token=t&join_request={}",
            join_request_param(&join, true)
        );
        let params = parse_v1_request(&query, None).expect("parse");
        assert!(params.reconnect);
        assert_eq!(params.participant_sid.as_deref(), Some("PA_x"));
        assert_eq!(params.reconnect_reason, 2);
        assert_eq!(params.publisher_offer, None);
        join.reconnect = false;
        let query = format!(
            "access_token=t&join_request={}",
            join_request_param(&join, false)
        );
        assert_eq!(
            parse_v1_request(&query, None)
                .expect("parse")
                .participant_sid,
            None
        );
        // No connection settings: LiveKit's defaults.
        let bare = livekit_protocol::JoinRequest {
            metadata: "m".into(),
            ..Default::default()
        };
        let query = format!(
            "access_token=t&join_request={}",
            join_request_param(&bare, false)
        );
        let params = parse_v1_request(&query, None).expect("parse");
        assert!(params.auto_subscribe);
        assert_eq!(params.sdk, Sdk::Unknown);
    }

    #[test]
    fn bad_join_requests_are_refused_with_400_and_say_why() {
        use base64::Engine as _;
        use prost::Message as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(bytes);
        let gzip_garbage = livekit_protocol::WrappedJoinRequest {
            compression: 1,
            join_request: b"not gzip at all".to_vec(),
        };
        let not_a_join = livekit_protocol::WrappedJoinRequest {
            compression: 0,
            join_request: vec![0xff, 0xff, 0xff],
        };
        let odd_compression = livekit_protocol::WrappedJoinRequest {
            compression: 7,
            join_request: Vec::new(),
        };
        let cases = [
            ("access_token=t".to_owned(), "join_request is missing"),
            (
                "access_token=t&join_request=".to_owned(),
                "join_request is missing",
            ),
            (
                "access_token=t&join_request=%%%".to_owned(),
                "invalid join_request: not base64",
            ),
            (
                "access_token=t&join_request=not*base64!".to_owned(),
                "invalid join_request: not base64",
            ),
            (
                format!(
                    "access_token=t&join_request={}",
                    b64(&[0xff, 0xff, 0xff, 0xff])
                ),
                "invalid join_request: not a WrappedJoinRequest",
            ),
            (
                format!(
                    "access_token=t&join_request={}",
                    b64(&gzip_garbage.encode_to_vec())
                ),
                "invalid join_request: not gzip",
            ),
            (
                format!(
                    "access_token=t&join_request={}",
                    b64(&not_a_join.encode_to_vec())
                ),
                "invalid join_request: not a JoinRequest",
            ),
            (
                format!(
                    "access_token=t&join_request={}",
                    b64(&odd_compression.encode_to_vec())
                ),
                "invalid join_request: unknown compression 7",
            ),
            (
                format!("access_token=t&join_request={}", "A".repeat(200_000)),
                "invalid join_request: too long",
            ),
        ];
        for (query, want) in cases {
            let err = parse_v1_request(&query, None).expect_err(&query);
            assert_eq!(err.http_status(), 400, "{query}");
            assert!(err.to_string().starts_with(want), "{query}: {err}");
            assert!(err.to_string().len() < 200, "{err}");
        }
        // A gzip bomb stops at the limit.
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, &vec![0u8; 4 * MAX_JOIN_REQUEST]).expect("gzip");
        let bomb = livekit_protocol::WrappedJoinRequest {
            compression: 1,
            join_request: z.finish().expect("gzip"),
        };
        let query = format!("access_token=t&join_request={}", b64(&bomb.encode_to_vec()));
        let err = parse_v1_request(&query, None).expect_err("bomb");
        assert_eq!(
            err.to_string(),
            "invalid join_request: too long once decompressed"
        );
    }

    #[test]
    fn v1_judges_the_token_first_and_as_on_rtc() {
        let good = token_for("alice", "lobby", true);
        let join = join_request_param(&livekit_client_join(), true);
        let (params, claims) = validate_v1(
            &keys(),
            &format!("access_token={good}&join_request={join}"),
            None,
            NOW,
        )
        .expect("admit");
        assert!(params.single_pc);
        assert_eq!(claims.video.room, "lobby");
        // The header works as on /rtc.
        let (_, claims) = validate_v1(
            &keys(),
            &format!("join_request={join}"),
            Some(&format!("Bearer {good}")),
            NOW,
        )
        .expect("admit");
        assert_eq!(claims.sub, "alice");
        // A bad token is a 401 whatever the join_request, with /rtc's reason.
        let expired = validate(&keys(), &format!("access_token={good}"), None, NOW + 3600)
            .expect_err("expired");
        for join in ["", "&join_request=%%%", &format!("&join_request={join}")] {
            let refusal = validate_v1(
                &keys(),
                &format!("access_token={good}{join}"),
                None,
                NOW + 3600,
            )
            .expect_err("expired");
            assert_eq!(refusal, expired, "{join}");
        }
        let refusal =
            validate_v1(&keys(), &format!("access_token={good}"), None, NOW).expect_err("missing");
        assert_eq!(
            refusal,
            Refusal {
                status: 400,
                message: "join_request is missing".into()
            }
        );
    }

    /// Signs `payload` with the dev secret, bypassing `mint`'s checks.
    fn sign(payload: &str) -> String {
        use base64::Engine as _;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use hmac::{Hmac, Mac};

        let mut token = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"secret").expect("hmac");
        mac.update(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        token
    }
}
