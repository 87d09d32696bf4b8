//! Who is calling, and the tokens the control plane mints.
//!
//! Callers present `Authorization: Bearer <JWT>`, an HS256 token in LiveKit's format signed with
//! one of the server's API secrets (`iss` = API key):
//! - a **user token** (`sub` = user id, `name` = display name, no room grants), minted by the
//!   embedding app's backend with any LiveKit server SDK, by `stoa token --user`, or by the web
//!   app's guest sign-in;
//! - a **server token** with the `roomCreate` grant (or `roomAdmin` for no particular room),
//!   what LiveKit server SDKs send for `RoomService`: an app backend acting for everyone.
//!
//! Media tokens minted for a room carry exactly the grants of the member's role.

use std::collections::BTreeMap;
use std::time::Duration;

use livekit_api::access_token::{
    AccessToken, AccessTokenError, Claims, TokenVerifier, VideoGrants,
};

use crate::error::ControlError;
use crate::model::{RoomId, UserId};

/// The API keys and secrets; the first signs what the control plane mints.
#[derive(Clone)]
pub struct Keys {
    keys: Vec<(String, String)>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Keys")
            .field("ids", &ids)
            .finish_non_exhaustive()
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user.
    User {
        /// Their id.
        id: UserId,
        /// Their display name.
        name: String,
    },
    /// An app backend holding an API secret.
    Server,
}

impl Keys {
    /// `keys` as (API key, secret); at least one.
    pub fn new(keys: Vec<(String, String)>) -> Result<Keys, ControlError> {
        if keys.is_empty() || keys.iter().any(|(k, s)| k.is_empty() || s.is_empty()) {
            return Err(ControlError::unavailable(
                "the control plane needs an API key",
            ));
        }
        Ok(Keys { keys })
    }

    fn signer(&self) -> (&str, &str) {
        let (k, s) = &self.keys[0];
        (k, s)
    }

    /// Checks a bearer token.
    pub fn verify(&self, token: &str) -> Result<Principal, ControlError> {
        let unverified = Claims::from_unverified(token)
            .map_err(|_| ControlError::unauthorized("the bearer token is not a valid JWT"))?;
        let Some((key, secret)) = self.keys.iter().find(|(k, _)| *k == unverified.iss) else {
            return Err(ControlError::unauthorized(
                "the token's issuer is not a known API key",
            ));
        };
        let claims = TokenVerifier::with_api_key(key, secret)
            .verify(token)
            .map_err(|_: AccessTokenError| {
                let now = crate::clock::now_ms() / 1000;
                if u64::try_from(unverified.exp).unwrap_or(0) < now {
                    ControlError::unauthorized("the token has expired")
                } else {
                    ControlError::unauthorized("the token's signature or claims are invalid")
                }
            })?;
        let server =
            claims.video.room_create || (claims.video.room_admin && claims.video.room.is_empty());
        if server {
            return Ok(Principal::Server);
        }
        let id = UserId::parse(&claims.sub).map_err(|e| {
            ControlError::unauthorized(format!(
                "the token's subject is not a user id: {}",
                e.message
            ))
        })?;
        let name = if claims.name.trim().is_empty() {
            id.to_string()
        } else {
            claims.name.chars().take(crate::model::MAX_NAME).collect()
        };
        Ok(Principal::User { id, name })
    }

    /// A user token.
    pub fn user_token(
        &self,
        id: &UserId,
        name: &str,
        ttl: Duration,
    ) -> Result<String, ControlError> {
        let (key, secret) = self.signer();
        AccessToken::with_api_key(key, secret)
            .with_identity(id.as_str())
            .with_name(name)
            .with_ttl(ttl)
            .to_jwt()
            .map_err(|e| ControlError::unavailable(format!("cannot sign a token: {e}")))
    }

    /// A media token for `room` with the grants of the member's role: publishing audio when
    /// `can_publish`, data when `can_publish_data`.
    pub fn media_token(
        &self,
        room: &RoomId,
        id: &UserId,
        name: &str,
        (can_publish, can_publish_data): (bool, bool),
        attributes: &BTreeMap<String, String>,
        ttl: Duration,
    ) -> Result<String, ControlError> {
        let (key, secret) = self.signer();
        let grants = VideoGrants {
            room_join: true,
            room: room.to_string(),
            can_publish: Some(can_publish),
            can_subscribe: Some(true),
            // Listeners send data only where the room allows it (`Room::listener_data`).
            can_publish_data: Some(can_publish_data),
            can_publish_sources: vec!["microphone".to_owned()],
            can_update_own_metadata: Some(false),
            ..Default::default()
        };
        AccessToken::with_api_key(key, secret)
            .with_identity(id.as_str())
            .with_name(name)
            .with_grants(grants)
            .with_attributes(attributes.clone())
            .with_ttl(ttl)
            .to_jwt()
            .map_err(|e| ControlError::unavailable(format!("cannot sign a token: {e}")))
    }

    /// A server token (for tests and tools).
    pub fn server_token(&self, ttl: Duration) -> Result<String, ControlError> {
        let (key, secret) = self.signer();
        AccessToken::with_api_key(key, secret)
            .with_grants(VideoGrants {
                room_create: true,
                room_admin: true,
                ..Default::default()
            })
            .with_ttl(ttl)
            .to_jwt()
            .map_err(|e| ControlError::unavailable(format!("cannot sign a token: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(vec![("devkey".into(), "secret".into())]).unwrap()
    }

    #[test]
    fn user_and_server_tokens_round_trip() {
        let k = keys();
        let alice = UserId::parse("alice").unwrap();
        let t = k
            .user_token(&alice, "Alice", Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            k.verify(&t).unwrap(),
            Principal::User {
                id: alice,
                name: "Alice".into()
            }
        );
        let s = k.server_token(Duration::from_secs(60)).unwrap();
        assert_eq!(k.verify(&s).unwrap(), Principal::Server);
    }

    #[test]
    fn forged_unknown_and_malformed_tokens_are_refused() {
        let k = keys();
        let other = Keys::new(vec![("devkey".into(), "other".into())]).unwrap();
        let alice = UserId::parse("alice").unwrap();
        let forged = other
            .user_token(&alice, "A", Duration::from_secs(60))
            .unwrap();
        assert_eq!(k.verify(&forged).unwrap_err().status, 401);
        let unknown = Keys::new(vec![("nokey".into(), "secret".into())]).unwrap();
        let t = unknown
            .user_token(&alice, "A", Duration::from_secs(60))
            .unwrap();
        assert!(k.verify(&t).unwrap_err().message.contains("issuer"));
        assert_eq!(k.verify("not a jwt").unwrap_err().status, 401);
        let bad_sub = AccessToken::with_api_key("devkey", "secret")
            .with_identity("a:b")
            .to_jwt()
            .unwrap();
        assert!(k.verify(&bad_sub).unwrap_err().message.contains("subject"));
    }
}
