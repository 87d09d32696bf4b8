//! Access tokens: the LiveKit-format JWTs that admit a participant to a room.
//!
//! A token is a JWS in compact form, signed with HS256 by an API secret (reference
//! `livekit-protocol.md` §4). Its claims are LiveKit's: `iss` is the API key that names the
//! secret, `sub` the participant identity, `nbf`/`exp` the validity window and `video` the
//! grants. The claim and grant types are `livekit-api`'s ([`Claims`], [`VideoGrants`]), so their
//! JSON shape and defaults are exactly what the official SDKs produce and expect.
//!
//! # Time
//!
//! Nothing here reads a clock: [`ApiKeys::verify`] and [`mint`] take `now` in Unix seconds. That is
//! why the JWS itself is encoded and checked here (with the `hmac` and `sha2` crates that
//! `livekit-api` uses) rather than through `livekit-api`'s `AccessToken`/`TokenVerifier`: both read
//! `SystemTime::now` and cannot be given a time. Using `jsonwebtoken` directly was the other
//! option; it needs a process-global crypto provider that `livekit-api` installs only as a side
//! effect of its own calls, and panics when none is installed.
//!
//! # What is checked, in LiveKit's order
//!
//! 1. The token is three base64url parts, the header names `HS256` (nothing else is accepted,
//!    in particular not `none`), and the payload is a JSON object.
//! 2. `iss` names a configured API key ([`TokenError::UnknownKey`] otherwise).
//! 3. The signature is that key's HMAC-SHA256, compared in constant time.
//! 4. `exp` is present and not passed, `nbf` (if present) is reached, both with
//!    [`CLOCK_LEEWAY_SECS`] of tolerance.
//!
//! Only then are the claims parsed into [`Claims`]. Whether the claims allow what the caller
//! wants (joining a room, administering one) is a separate question: [`can_join`] for `/rtc`.
//!
//! Every failure is an error value whose `Display` text is what the client is shown; nothing
//! here panics on any input.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use livekit_protocol::{ParticipantPermission, TrackSource};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Sha256;

/// The claims of a LiveKit access token (`livekit-api`'s type, re-exported).
///
/// `exp` and `nbf` are Unix seconds; `sub` is the participant identity.
pub use livekit_api::access_token::Claims;
/// The `video` grant of a LiveKit access token (`livekit-api`'s type, re-exported).
///
/// Absent optional grants take LiveKit's defaults through its methods: [`VideoGrants::can_publish`]
/// and [`VideoGrants::can_subscribe`] are `true`, [`VideoGrants::can_publish_data`] follows
/// `can_publish`, [`VideoGrants::can_update_own_metadata`] is `false`, and an empty
/// `can_publish_sources` allows every source.
pub use livekit_api::access_token::VideoGrants;

/// Tolerance for clock skew between whoever minted a token and this server, in seconds: a token is
/// accepted up to this long after its `exp` and this long before its `nbf`.
///
/// One minute, as LiveKit (`tokenLeeway` in `livekit/protocol` `auth/verifier.go`, "matches
/// go-jose's previous DefaultLeeway"), so a token one LiveKit server accepts is accepted here.
pub const CLOCK_LEEWAY_SECS: u64 = 60;

/// The only signing algorithm LiveKit accepts (`allowedSigningMethods` in `auth/verifier.go`).
const ALGORITHM: &str = "HS256";

/// The JOSE header of every token [`mint`] produces, as the official SDKs write it.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Longest client-supplied text (an API key, an algorithm name) repeated in an error message.
const MAX_ECHO_CHARS: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// The configured API keys and their secrets, which sign and verify access tokens.
///
/// Its `Debug` output lists the keys and never the secrets, so it may be logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    secrets: BTreeMap<String, String>,
}

impl ApiKeys {
    /// The keys from `(api key, secret)` pairs; a key given twice keeps its last secret.
    ///
    /// A key with an empty secret never verifies a token (LiveKit's `ErrKeysMissing`); the
    /// configuration is expected to have refused it already.
    pub fn new<I, K, S>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, S)>,
        K: Into<String>,
        S: Into<String>,
    {
        Self {
            secrets: pairs
                .into_iter()
                .map(|(key, secret)| (key.into(), secret.into()))
                .collect(),
        }
    }

    /// Checks `token` against these keys at time `now_unix` (Unix seconds) and returns its claims.
    ///
    /// Call it on every request that carries a token (`/rtc`, `/rtc/validate`, Twirp), before
    /// acting on anything else in the request. It does not check what the claims allow: a valid
    /// token for the server API has no identity and no `roomJoin`; see [`can_join`].
    ///
    /// If `sub` is absent, `jti` is taken as the identity, as LiveKit does.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header_part), Some(payload_part), Some(signature_part), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("not a JWT (expected three dot-separated parts)"));
        };
        // What the signature covers: `header.payload`.
        let signing_input = token
            .get(..header_part.len() + 1 + payload_part.len())
            .ok_or_else(|| malformed("not a JWT"))?;

        let header: Header = serde_json::from_slice(&decode_part(header_part, "header")?)
            .map_err(|_| malformed("the header is not a JOSE header"))?;
        if header.alg != ALGORITHM {
            return Err(TokenError::UnsupportedAlgorithm {
                alg: clip(&header.alg),
            });
        }
        if header.crit.is_some() {
            return Err(malformed("critical header extensions are not supported"));
        }

        // The payload is read before the signature is checked only to learn which key signed it.
        let mut payload: Map<String, Value> =
            serde_json::from_slice(&decode_part(payload_part, "payload")?)
                .map_err(|_| malformed("the payload is not a JSON object"))?;
        let api_key = match payload.get("iss") {
            Some(Value::String(key)) if !key.is_empty() => key.as_str(),
            Some(Value::String(_)) | None => {
                return Err(malformed("it names no API key (iss)"));
            }
            Some(_) => return Err(malformed("the API key (iss) is not a string")),
        };
        let secret = match self.secrets.get(api_key) {
            Some(secret) if !secret.is_empty() => secret,
            _ => {
                return Err(TokenError::UnknownKey { key: clip(api_key) });
            }
        };

        let signature = decode_part(signature_part, "signature")?;
        let mut mac = hmac_for(secret).ok_or(TokenError::BadSignature)?;
        mac.update(signing_input.as_bytes());
        // `verify_slice` compares in constant time.
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;

        // From here on the payload is the key holder's.
        let exp = take_numeric_date(&mut payload, "exp")?.ok_or(TokenError::MissingExpiry)?;
        let nbf = take_numeric_date(&mut payload, "nbf")?;
        if now_unix > exp.saturating_add(CLOCK_LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = nbf
            && now_unix.saturating_add(CLOCK_LEEWAY_SECS) < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        let jti = match payload.get("jti") {
            Some(Value::String(jti)) => Some(jti.clone()),
            _ => None,
        };

        let mut claims: Claims = serde_json::from_value(Value::Object(payload)).map_err(|err| {
            TokenError::Malformed {
                reason: format!("the claims are not LiveKit claims: {err}"),
            }
        })?;
        claims.exp = usize::try_from(exp).unwrap_or(usize::MAX);
        claims.nbf = nbf.map_or(0, |nbf| usize::try_from(nbf).unwrap_or(usize::MAX));
        if claims.sub.is_empty()
            && let Some(jti) = jti
        {
            claims.sub = jti;
        }
        Ok(claims)
    }

    /// The configured key names, which are not secret.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.secrets.keys().map(String::as_str)
    }

    /// The secret of `api_key`, for signing (webhooks, tokens); never for logs or clients.
    pub fn secret(&self, api_key: &str) -> Option<&str> {
        self.secrets.get(api_key).map(String::as_str)
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

impl<K: Into<String>, S: Into<String>> FromIterator<(K, S)> for ApiKeys {
    fn from_iter<I: IntoIterator<Item = (K, S)>>(pairs: I) -> Self {
        Self::new(pairs)
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a token was refused. The `Display` text is what the client is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a JWT, not JSON, or claims of the wrong shape.
    #[error("invalid token: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// Signed with something other than HS256 (including `none`).
    #[error("invalid token: signing method {alg} is not supported, only HS256")]
    UnsupportedAlgorithm {
        /// The header's `alg`, clipped.
        alg: String,
    },
    /// `iss` names no configured API key (LiveKit's wording).
    #[error("invalid API key: {key}")]
    UnknownKey {
        /// The key the token names, clipped.
        key: String,
    },
    /// The signature is not that key's.
    #[error("invalid token: signature is invalid")]
    BadSignature,
    /// There is no `exp`; LiveKit's verifiers require one.
    #[error("invalid token: token has no expiry (exp)")]
    MissingExpiry,
    /// `exp` has passed, beyond [`CLOCK_LEEWAY_SECS`].
    #[error("invalid token: token is expired")]
    Expired,
    /// `nbf` is still ahead, beyond [`CLOCK_LEEWAY_SECS`].
    #[error("invalid token: token is not valid yet")]
    NotYetValid,
}

impl TokenError {
    /// The HTTP status to answer with: 401 for every token problem, as LiveKit's auth middleware
    /// (`pkg/service/auth.go`). livekit-client shows the body of a 401 as a `NotAllowed` error.
    pub fn http_status(&self) -> u16 {
        401
    }
}

/// Why [`mint`] could not produce a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The API key is empty.
    #[error("the API key is empty")]
    EmptyApiKey,
    /// The secret is empty.
    #[error("the API secret is empty")]
    EmptySecret,
    /// `roomJoin` is granted without an identity, which no server admits.
    #[error("a token that grants roomJoin needs an identity")]
    MissingIdentity,
    /// `roomJoin` is granted without a room.
    #[error("a token that grants roomJoin needs a room")]
    MissingRoom,
    /// The validity is shorter than a second.
    #[error("the validity must be at least one second")]
    ZeroTtl,
    /// `now + ttl` does not fit a timestamp.
    #[error("the validity is too long")]
    TtlTooLong,
    /// The claims could not be serialized (a bug, if it ever happens).
    #[error("cannot encode the claims: {0}")]
    Encode(String),
}

/// Signs a token for `identity` with `grants`, valid from `now_unix` for `ttl`, the way the
/// official server SDKs do (`nbf` = now, `exp` = now + ttl, HS256 with `secret`, `iss` = `api_key`).
///
/// Call it where a clock is owned (the `stoa token` command, tests) and pass the time in.
pub fn mint(
    api_key: &str,
    secret: &str,
    identity: &str,
    name: Option<&str>,
    grants: VideoGrants,
    ttl: Duration,
    now_unix: u64,
) -> Result<String, MintError> {
    if api_key.is_empty() {
        return Err(MintError::EmptyApiKey);
    }
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    // The same rule as `livekit-api`'s `AccessToken::to_jwt`.
    if grants.room_join && identity.is_empty() {
        return Err(MintError::MissingIdentity);
    }
    if grants.room_join && grants.room.is_empty() {
        return Err(MintError::MissingRoom);
    }
    if ttl.as_secs() == 0 {
        return Err(MintError::ZeroTtl);
    }
    let claims = Claims {
        sub: identity.to_owned(),
        name: name.unwrap_or_default().to_owned(),
        video: grants,
        ..Claims::default()
    };
    sign(api_key, secret, &claims, ttl, now_unix)
}

/// Signs `claims` with `api_key` and `secret`, valid from `now_unix` for `ttl` (their `iss`,
/// `nbf` and `exp` are set here). Deterministic: the same inputs give the same token.
pub fn sign(
    api_key: &str,
    secret: &str,
    claims: &Claims,
    ttl: Duration,
    now_unix: u64,
) -> Result<String, MintError> {
    if api_key.is_empty() {
        return Err(MintError::EmptyApiKey);
    }
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if ttl.as_secs() == 0 {
        return Err(MintError::ZeroTtl);
    }
    let exp = now_unix
        .checked_add(ttl.as_secs())
        .and_then(|exp| usize::try_from(exp).ok())
        .ok_or(MintError::TtlTooLong)?;
    let nbf = usize::try_from(now_unix).map_err(|_| MintError::TtlTooLong)?;
    let claims = Claims {
        exp,
        iss: api_key.to_owned(),
        nbf,
        ..claims.clone()
    };
    let payload = serde_json::to_vec(&claims).map_err(|err| MintError::Encode(err.to_string()))?;

    let mut token = URL_SAFE_NO_PAD.encode(HEADER_JSON);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let mut mac =
        hmac_for(secret).ok_or_else(|| MintError::Encode("HMAC rejected the key".to_owned()))?;
    mac.update(token.as_bytes());
    let signature = mac.finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// The claims of a relay link (issue 21): the node `node` subscribing to `room` on another
/// node (an edge on its origin; an origin on an edge, for a feed of the edge's speakers), with
/// its own base URL `url` in the attribute [`crate::proto::NODE_URL_ATTRIBUTE`]. Identity `node:{node}` ([`crate::proto::RELAY_IDENTITY_PREFIX`]), hidden, may
/// subscribe, may neither publish nor send data. Signed with the cluster's API key and secret
/// ([`sign`], a short TTL), it is verified on the origin as any token: no client can mint one
/// without the secret. On the origin the participant is not shown, counted or reported.
pub fn relay_claims(node: &str, room: &str, url: Option<&str>) -> Claims {
    let attributes = url
        .map(|u| {
            let key = crate::proto::NODE_URL_ATTRIBUTE.to_owned();
            std::iter::once((key, u.to_owned())).collect()
        })
        .unwrap_or_default();
    Claims {
        attributes,
        sub: format!("{}{node}", crate::proto::RELAY_IDENTITY_PREFIX),
        name: format!("relay to {node}"),
        video: VideoGrants {
            room_join: true,
            room: room.to_owned(),
            can_subscribe: Some(true),
            can_publish: Some(false),
            can_publish_data: Some(false),
            can_publish_sources: Vec::new(),
            hidden: true,
            ..VideoGrants::default()
        },
        ..Claims::default()
    }
}

/// `grants` with the permissions of `permission` (the inverse of [`permission`]): what a token
/// minted for a participant now should grant.
// `recorder` and `agent` are deprecated in the protocol, but LiveKit still fills them in.
#[allow(deprecated)]
pub fn grants_with(grants: &VideoGrants, permission: &ParticipantPermission) -> VideoGrants {
    VideoGrants {
        can_subscribe: Some(permission.can_subscribe),
        can_publish: Some(permission.can_publish),
        can_publish_data: Some(permission.can_publish_data),
        can_publish_sources: permission
            .can_publish_sources
            .iter()
            .filter_map(|s| grant_from_source(TrackSource::try_from(*s).ok()?))
            .map(str::to_owned)
            .collect(),
        hidden: permission.hidden,
        recorder: permission.recorder,
        can_update_own_metadata: Some(permission.can_update_metadata),
        agent: permission.agent,
        ..grants.clone()
    }
}

/// Checks that `claims` admit their holder to `room`, as LiveKit's `EnsureJoinPermission` and
/// `ValidateConnectRequest` do, in their order.
///
/// A token that grants `roomJoin` with an empty `room` admits to any room (LiveKit then takes the
/// room from the request); otherwise the rooms must match exactly.
pub fn can_join(claims: &Claims, room: &str) -> Result<(), JoinRefusal> {
    if !claims.video.room_join {
        return Err(JoinRefusal::NoJoinGrant);
    }
    if claims.sub.is_empty() {
        return Err(JoinRefusal::MissingIdentity);
    }
    if room.is_empty() {
        return Err(JoinRefusal::MissingRoom);
    }
    if !claims.video.room.is_empty() && claims.video.room != room {
        return Err(JoinRefusal::WrongRoom {
            granted: claims.video.room.clone(),
            requested: room.to_owned(),
        });
    }
    Ok(())
}

/// Whether `grants` allow publishing a track from `source` (LiveKit's `GetCanPublishSource`):
/// `canPublish` must hold, and `canPublishSources`, when not empty, must list the source.
pub fn can_publish_source(grants: &VideoGrants, source: TrackSource) -> bool {
    if !grants.can_publish() {
        return false;
    }
    grants.can_publish_sources.is_empty()
        || grants
            .can_publish_sources
            .iter()
            .any(|allowed| source_from_grant(allowed) == source)
}

/// The participant permission that `grants` give (LiveKit's `VideoGrant.ToPermission`), as sent to
/// clients in `ParticipantInfo.permission`.
// `recorder` and `agent` are deprecated in the protocol, but LiveKit still fills them in.
#[allow(deprecated)]
pub fn permission(grants: &VideoGrants) -> ParticipantPermission {
    ParticipantPermission {
        can_subscribe: grants.can_subscribe(),
        can_publish: grants.can_publish(),
        can_publish_data: grants.can_publish_data(),
        can_publish_sources: grants
            .can_publish_sources
            .iter()
            .map(|source| source_from_grant(source) as i32)
            .collect(),
        hidden: grants.hidden,
        recorder: grants.recorder,
        can_update_metadata: grants.can_update_own_metadata(),
        agent: grants.agent,
        // Not representable in livekit-api's grants (reference §4); LiveKit's default is false.
        can_subscribe_metrics: false,
        can_manage_agent_session: false,
    }
}

/// Why valid claims do not admit their holder to a room. The `Display` text is what the client is
/// shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// The token does not grant `roomJoin`.
    #[error("permission denied: the token does not allow joining rooms (roomJoin)")]
    NoJoinGrant,
    /// The token grants another room.
    #[error("permission denied: the token is for room `{granted}`, not `{requested}`")]
    WrongRoom {
        /// The room in the token.
        granted: String,
        /// The room asked for.
        requested: String,
    },
    /// The token has no identity (`sub`, or `jti`); LiveKit's `ErrIdentityEmpty`.
    #[error("identity cannot be empty")]
    MissingIdentity,
    /// Neither the token nor the request names a room; LiveKit's `ErrNoRoomName`.
    #[error("no room name")]
    MissingRoom,
}

impl JoinRefusal {
    /// The HTTP status LiveKit answers with: 401 for a permission problem, 400 for a missing
    /// identity or room (`ValidateConnectRequest` in `pkg/service/utils.go`).
    pub fn http_status(&self) -> u16 {
        match self {
            JoinRefusal::NoJoinGrant | JoinRefusal::WrongRoom { .. } => 401,
            JoinRefusal::MissingIdentity | JoinRefusal::MissingRoom => 400,
        }
    }
}

/// The parts of a JOSE header that matter here; others (`typ`, `kid`) are ignored.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<Value>,
}

fn malformed(reason: &str) -> TokenError {
    TokenError::Malformed {
        reason: reason.to_owned(),
    }
}

fn decode_part(part: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed {
            reason: format!("the {what} is not base64url"),
        })
}

fn hmac_for(secret: &str) -> Option<HmacSha256> {
    // HMAC takes keys of any length, so this never fails; it is an `Option` only because the
    // trait's signature is fallible.
    HmacSha256::new_from_slice(secret.as_bytes()).ok()
}

/// Removes the JWT NumericDate `name` from `payload`: Unix seconds, possibly fractional (RFC 7519
/// §2); `null` counts as absent.
fn take_numeric_date(
    payload: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<u64>, TokenError> {
    let invalid = || TokenError::Malformed {
        reason: format!("`{name}` is not a time in Unix seconds"),
    };
    match payload.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => {
            if let Some(seconds) = number.as_u64() {
                Ok(Some(seconds))
            } else if let Some(seconds) = number.as_f64()
                && seconds.is_finite()
                && seconds >= 0.0
            {
                // Truncation is the intent: whole seconds, saturating at u64::MAX.
                Ok(Some(seconds as u64))
            } else {
                Err(invalid())
            }
        }
        Some(_) => Err(invalid()),
    }
}

/// LiveKit's `sourceToProto`: lower-case enum names; anything else is `Unknown`.
fn grant_from_source(source: TrackSource) -> Option<&'static str> {
    match source {
        TrackSource::Camera => Some("camera"),
        TrackSource::Microphone => Some("microphone"),
        TrackSource::ScreenShare => Some("screen_share"),
        TrackSource::ScreenShareAudio => Some("screen_share_audio"),
        TrackSource::Unknown => None,
    }
}

fn source_from_grant(name: &str) -> TrackSource {
    match name {
        "camera" => TrackSource::Camera,
        "microphone" => TrackSource::Microphone,
        "screen_share" => TrackSource::ScreenShare,
        "screen_share_audio" => TrackSource::ScreenShareAudio,
        _ => TrackSource::Unknown,
    }
}

/// Client-supplied text, shortened for an error message.
fn clip(text: &str) -> String {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "APIkey1";
    const SECRET: &str = "a-secret-that-is-long-enough-0123456789";
    const NOW: u64 = 1_800_000_000;
    const HOUR: Duration = Duration::from_secs(3600);

    fn keys() -> ApiKeys {
        ApiKeys::new([(KEY, SECRET), ("other", "other-secret")])
    }

    fn join_grants(room: &str) -> VideoGrants {
        VideoGrants {
            room_join: true,
            room: room.to_owned(),
            ..VideoGrants::default()
        }
    }

    fn token(grants: VideoGrants, now: u64) -> String {
        mint(KEY, SECRET, "alice", Some("Alice"), grants, HOUR, now).expect("mint")
    }

    /// Signs arbitrary header and payload JSON with `secret`.
    fn sign(header: &str, payload: &str, secret: &str) -> String {
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let mut mac = hmac_for(secret).expect("hmac");
        mac.update(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        token
    }

    #[test]
    fn minted_token_round_trips() {
        let grants = VideoGrants {
            can_publish: Some(false),
            can_publish_sources: vec!["microphone".to_owned()],
            ..join_grants("lobby")
        };
        let claims = keys()
            .verify(&token(grants.clone(), NOW), NOW)
            .expect("verify");
        assert_eq!(claims.iss, KEY);
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.name, "Alice");
        assert_eq!(claims.nbf, NOW as usize);
        assert_eq!(claims.exp, (NOW + 3600) as usize);
        assert_eq!(claims.video, grants);
        assert_eq!(can_join(&claims, "lobby"), Ok(()));
    }

    #[test]
    fn minted_token_has_the_sdk_shape() {
        let token = token(join_grants("lobby"), NOW);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = URL_SAFE_NO_PAD.decode(parts[0]).expect("header");
        assert_eq!(header, HEADER_JSON.as_bytes());
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("payload"))
                .expect("json");
        assert_eq!(payload["iss"], KEY);
        assert_eq!(payload["sub"], "alice");
        assert_eq!(payload["video"]["roomJoin"], true);
        assert_eq!(payload["video"]["room"], "lobby");
        // Unset grants are left out, so the SDK defaults apply.
        assert!(payload["video"].get("canPublish").is_none(), "{payload}");
    }

    #[test]
    fn token_from_livekit_api_verifies() {
        // livekit-api's own builder (which reads the clock) produces tokens we accept.
        #[allow(clippy::disallowed_methods, reason = "the test owns a clock")]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let token = livekit_api::access_token::AccessToken::with_api_key(KEY, SECRET)
            .with_identity("bob")
            .with_grants(join_grants("lobby"))
            .to_jwt()
            .expect("to_jwt");
        let claims = keys().verify(&token, now).expect("verify");
        assert_eq!(claims.sub, "bob");
        // And livekit-api's verifier accepts ours.
        let ours = mint(KEY, SECRET, "carol", None, join_grants("x"), HOUR, now).expect("mint");
        let claims = livekit_api::access_token::TokenVerifier::with_api_key(KEY, SECRET)
            .verify(&ours)
            .expect("livekit-api verifies");
        assert_eq!(claims.sub, "carol");
    }

    #[test]
    fn expiry_allows_the_leeway_and_no_more() {
        let token = token(join_grants("r"), NOW);
        let exp = NOW + 3600;
        assert!(keys().verify(&token, exp).is_ok());
        assert!(keys().verify(&token, exp + CLOCK_LEEWAY_SECS).is_ok());
        let err = keys()
            .verify(&token, exp + CLOCK_LEEWAY_SECS + 1)
            .expect_err("expired");
        assert_eq!(err, TokenError::Expired);
        assert_eq!(err.to_string(), "invalid token: token is expired");
        assert_eq!(err.http_status(), 401);
    }

    #[test]
    fn not_before_allows_the_leeway_and_no_more() {
        let token = token(join_grants("r"), NOW);
        assert!(keys().verify(&token, NOW - CLOCK_LEEWAY_SECS).is_ok());
        let err = keys()
            .verify(&token, NOW - CLOCK_LEEWAY_SECS - 1)
            .expect_err("not yet valid");
        assert_eq!(err, TokenError::NotYetValid);
        assert_eq!(err.to_string(), "invalid token: token is not valid yet");
    }

    #[test]
    fn forged_signatures_are_refused() {
        let forged =
            mint(KEY, "guessed", "mallory", None, join_grants("r"), HOUR, NOW).expect("mint");
        assert_eq!(keys().verify(&forged, NOW), Err(TokenError::BadSignature));

        // A payload swapped under a valid signature.
        let good = token(join_grants("r"), NOW);
        let other = token(join_grants("admin-room"), NOW);
        let good: Vec<&str> = good.split('.').collect();
        let other: Vec<&str> = other.split('.').collect();
        let spliced = format!("{}.{}.{}", good[0], other[1], good[2]);
        assert_eq!(keys().verify(&spliced, NOW), Err(TokenError::BadSignature));

        // Signed by another configured key while naming this one.
        let payload = format!(r#"{{"iss":"{KEY}","sub":"m","exp":{}}}"#, NOW + 60);
        let cross = sign(HEADER_JSON, &payload, "other-secret");
        assert_eq!(keys().verify(&cross, NOW), Err(TokenError::BadSignature));

        // Empty signature.
        let token = token(join_grants("r"), NOW);
        let unsigned = &token[..=token.rfind('.').expect("dot")];
        assert_eq!(keys().verify(unsigned, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn other_algorithms_are_refused() {
        let payload = format!(r#"{{"iss":"{KEY}","sub":"m","exp":{}}}"#, NOW + 60);
        for alg in ["none", "HS512", "RS256"] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            let token = sign(&header, &payload, SECRET);
            let err = keys().verify(&token, NOW).expect_err(alg);
            assert_eq!(
                err,
                TokenError::UnsupportedAlgorithm {
                    alg: alg.to_owned()
                }
            );
        }
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        assert!(matches!(
            keys().verify(&unsigned, NOW),
            Err(TokenError::UnsupportedAlgorithm { .. })
        ));
    }

    #[test]
    fn unknown_or_empty_keys_are_refused() {
        let token = mint("nobody", SECRET, "a", None, join_grants("r"), HOUR, NOW).expect("mint");
        let err = keys().verify(&token, NOW).expect_err("unknown key");
        assert_eq!(
            err,
            TokenError::UnknownKey {
                key: "nobody".to_owned()
            }
        );
        assert_eq!(err.to_string(), "invalid API key: nobody");

        // A key configured with an empty secret verifies nothing, not even empty-key HMACs.
        let blank = ApiKeys::new([("blank", "")]);
        let payload = format!(r#"{{"iss":"blank","sub":"m","exp":{}}}"#, NOW + 60);
        let token = sign(HEADER_JSON, &payload, "");
        assert!(matches!(
            blank.verify(&token, NOW),
            Err(TokenError::UnknownKey { .. })
        ));

        // A very long key name is clipped in the message.
        let long = "k".repeat(1000);
        let token = mint(&long, SECRET, "a", None, join_grants("r"), HOUR, NOW).expect("mint");
        let message = keys().verify(&token, NOW).expect_err("unknown").to_string();
        assert!(message.len() < 100, "{message}");
    }

    #[test]
    fn exp_is_required_and_times_may_be_fractional() {
        let payload = format!(r#"{{"iss":"{KEY}","sub":"m","nbf":{NOW}}}"#);
        let token = sign(HEADER_JSON, &payload, SECRET);
        assert_eq!(keys().verify(&token, NOW), Err(TokenError::MissingExpiry));

        let payload = format!(r#"{{"iss":"{KEY}","sub":"m","exp":{}.5}}"#, NOW + 10);
        let claims = keys()
            .verify(&sign(HEADER_JSON, &payload, SECRET), NOW)
            .expect("fractional exp");
        assert_eq!(claims.exp, (NOW + 10) as usize);
        assert_eq!(claims.nbf, 0);

        for bad in [r#""soon""#, "-5", "1e400"] {
            let payload = format!(r#"{{"iss":"{KEY}","sub":"m","exp":{bad}}}"#);
            let result = keys().verify(&sign(HEADER_JSON, &payload, SECRET), NOW);
            assert!(
                matches!(result, Err(TokenError::Malformed { .. })),
                "{bad}: {result:?}"
            );
        }
    }

    #[test]
    fn jti_stands_in_for_a_missing_identity() {
        let payload = format!(r#"{{"iss":"{KEY}","jti":"from-jti","exp":{}}}"#, NOW + 60);
        let claims = keys()
            .verify(&sign(HEADER_JSON, &payload, SECRET), NOW)
            .expect("verify");
        assert_eq!(claims.sub, "from-jti");
    }

    #[test]
    fn garbage_is_malformed_and_never_panics() {
        let cases = [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!!.???.***",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9..",
            "e30.e30.e30",
            "bnVsbA.bnVsbA.",
            "\u{1F600}.\u{1F600}.\u{1F600}",
        ];
        for case in cases {
            let result = keys().verify(case, NOW);
            assert!(
                matches!(
                    result,
                    Err(TokenError::Malformed { .. } | TokenError::BadSignature)
                ),
                "{case:?}: {result:?}"
            );
        }
        // Valid JSON, no issuer.
        let token = sign(HEADER_JSON, r#"{"sub":"x","exp":1}"#, SECRET);
        let err = keys().verify(&token, NOW).expect_err("no iss");
        assert_eq!(err.to_string(), "invalid token: it names no API key (iss)");
        // Signed, but the grants have the wrong types.
        let payload = format!(
            r#"{{"iss":"{KEY}","sub":"m","exp":{},"video":{{"roomJoin":"yes"}}}}"#,
            NOW + 60
        );
        let err = keys()
            .verify(&sign(HEADER_JSON, &payload, SECRET), NOW)
            .expect_err("bad grants");
        assert!(matches!(err, TokenError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn can_join_checks_grant_identity_and_room() {
        let mut claims = keys()
            .verify(&token(join_grants("lobby"), NOW), NOW)
            .expect("verify");
        assert_eq!(can_join(&claims, "lobby"), Ok(()));

        let err = can_join(&claims, "vip").expect_err("wrong room");
        assert_eq!(
            err.to_string(),
            "permission denied: the token is for room `lobby`, not `vip`"
        );
        assert_eq!(err.http_status(), 401);

        claims.video.room.clear();
        assert_eq!(can_join(&claims, "anywhere"), Ok(()));
        assert_eq!(can_join(&claims, ""), Err(JoinRefusal::MissingRoom));
        assert_eq!(JoinRefusal::MissingRoom.http_status(), 400);

        claims.sub.clear();
        assert_eq!(
            can_join(&claims, "anywhere"),
            Err(JoinRefusal::MissingIdentity)
        );
        assert_eq!(JoinRefusal::MissingIdentity.http_status(), 400);

        claims.video.room_join = false;
        let err = can_join(&claims, "lobby").expect_err("no roomJoin");
        assert_eq!(err, JoinRefusal::NoJoinGrant);
        assert!(err.to_string().starts_with("permission denied: "), "{err}");
        assert_eq!(err.http_status(), 401);
    }

    #[test]
    fn server_api_tokens_verify_without_identity() {
        let grants = VideoGrants {
            room_create: true,
            room_list: true,
            ..VideoGrants::default()
        };
        let token = mint(KEY, SECRET, "", None, grants, HOUR, NOW).expect("mint");
        let claims = keys().verify(&token, NOW).expect("verify");
        assert!(claims.sub.is_empty());
        assert!(claims.video.room_create && claims.video.room_list);
        assert_eq!(can_join(&claims, "r"), Err(JoinRefusal::NoJoinGrant));
    }

    #[test]
    fn absent_grants_take_livekit_defaults() {
        let payload = format!(
            r#"{{"iss":"{KEY}","sub":"m","exp":{},"video":{{"roomJoin":true,"room":"r"}}}}"#,
            NOW + 60
        );
        let claims = keys()
            .verify(&sign(HEADER_JSON, &payload, SECRET), NOW)
            .expect("verify");
        let video = &claims.video;
        assert!(video.can_publish());
        assert!(video.can_subscribe());
        assert!(video.can_publish_data());
        assert!(!video.can_update_own_metadata());
        assert!(!video.hidden && !video.room_admin && !video.room_create && !video.room_list);
        assert!(can_publish_source(video, TrackSource::Microphone));
        assert!(can_publish_source(video, TrackSource::Camera));

        let permission = permission(video);
        assert!(permission.can_publish && permission.can_subscribe && permission.can_publish_data);
        assert!(permission.can_publish_sources.is_empty());
        assert!(!permission.can_update_metadata && !permission.hidden);
    }

    #[test]
    fn explicit_grants_are_read() {
        let payload = format!(
            r#"{{"iss":"{KEY}","sub":"m","exp":{},"video":{{
                "roomJoin":true,"room":"r","roomAdmin":true,"roomCreate":true,"roomList":true,
                "canPublish":true,"canSubscribe":false,"canPublishSources":["microphone"],
                "canUpdateOwnMetadata":true,"hidden":true,"someFutureGrant":1}}}}"#,
            NOW + 60
        );
        let claims = keys()
            .verify(&sign(HEADER_JSON, &payload, SECRET), NOW)
            .expect("verify");
        let video = &claims.video;
        assert!(video.room_admin && video.room_create && video.room_list && video.hidden);
        assert!(!video.can_subscribe());
        // canPublishData follows canPublish when absent.
        assert!(video.can_publish_data());
        assert!(video.can_update_own_metadata());
        assert!(can_publish_source(video, TrackSource::Microphone));
        assert!(!can_publish_source(video, TrackSource::Camera));
        assert_eq!(
            permission(video).can_publish_sources,
            [TrackSource::Microphone as i32]
        );

        let listener = VideoGrants {
            can_publish: Some(false),
            ..join_grants("r")
        };
        assert!(!listener.can_publish_data());
        assert!(!can_publish_source(&listener, TrackSource::Microphone));
    }

    #[test]
    fn mint_refuses_what_no_server_admits() {
        let mint = |key: &str, secret: &str, identity: &str, grants: VideoGrants, ttl: Duration| {
            mint(key, secret, identity, None, grants, ttl, NOW)
        };
        assert_eq!(
            mint("", SECRET, "a", join_grants("r"), HOUR),
            Err(MintError::EmptyApiKey)
        );
        assert_eq!(
            mint(KEY, "", "a", join_grants("r"), HOUR),
            Err(MintError::EmptySecret)
        );
        assert_eq!(
            mint(KEY, SECRET, "", join_grants("r"), HOUR),
            Err(MintError::MissingIdentity)
        );
        assert_eq!(
            mint(KEY, SECRET, "a", join_grants(""), HOUR),
            Err(MintError::MissingRoom)
        );
        assert_eq!(
            mint(
                KEY,
                SECRET,
                "a",
                join_grants("r"),
                Duration::from_millis(999)
            ),
            Err(MintError::ZeroTtl)
        );
        assert_eq!(
            mint(KEY, SECRET, "a", join_grants("r"), Duration::MAX),
            Err(MintError::TtlTooLong)
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let debug = format!("{:?}", keys());
        assert!(debug.contains(KEY), "{debug}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("other-secret"), "{debug}");
    }

    #[test]
    fn keys_collect_from_pairs() {
        let keys: ApiKeys = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
        ]
        .into_iter()
        .collect();
        assert_eq!(keys.ids().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(keys.secret("b"), Some("2"));
        assert_eq!(keys.secret("c"), None);
        assert!(!keys.is_empty());
        assert!(ApiKeys::default().is_empty());
    }
}
