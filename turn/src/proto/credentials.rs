//! TURN REST-style credentials: time-limited, derived from a secret shared by whoever mints them
//! (Stoa's signaling, per session) and the relay, so the relay keeps no user table.
//!
//! `username = "<expiry unix seconds>:<identity>"`,
//! `password = base64(HMAC-SHA1(secret, username))`
//! (draft-uberti-behave-turn-rest, as coturn's `use-auth-secret`). The relay derives the
//! password again from the username, then the RFC 8489 long-term key
//! `MD5(username ":" realm ":" password)` that MESSAGE-INTEGRITY is keyed with.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The shared secret credentials are derived from. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps the secret's bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    /// Whether the secret is empty (which configuration refuses).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A username and password a client presents to the relay.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `expiry:identity`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Mints credentials for `identity` valid until `expires_unix` (seconds since the epoch).
    /// A `:` in `identity` is kept: the username splits at the first one only.
    pub fn mint(secret: &Secret, identity: &str, expires_unix: u64) -> Self {
        let username = format!("{expires_unix}:{identity}");
        let password = password(secret, &username);
        Self { username, password }
    }
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn password(secret: &Secret, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(&secret.0)
        // INVARIANT: HMAC accepts keys of any length.
        .expect("HMAC takes any key length");
    mac.update(username.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The RFC 8489 long-term key, `MD5(username:realm:password)`.
/// <https://www.rfc-editor.org/rfc/rfc8489#section-9.2.2>
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(username.as_bytes());
    md5.update(b":");
    md5.update(realm.as_bytes());
    md5.update(b":");
    md5.update(password.as_bytes());
    md5.finalize().into()
}

/// A REST username split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestUsername<'a> {
    /// Expiry, seconds since the epoch.
    pub expires_unix: u64,
    /// Who it was minted for (empty for a bare `expiry` username).
    pub identity: &'a str,
}

impl<'a> RestUsername<'a> {
    /// Parses `expiry:identity` (or a bare `expiry`). `None` when the expiry is not a number.
    pub fn parse(username: &'a str) -> Option<Self> {
        let (expiry, identity) = username.split_once(':').unwrap_or((username, ""));
        let expires_unix = expiry.parse().ok()?;
        Some(Self {
            expires_unix,
            identity,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_coturn_rest_scheme() {
        // base64(HMAC-SHA1("s3cret", "1700000000:alice")), computed independently with
        // `printf %s 1700000000:alice | openssl dgst -sha1 -hmac s3cret -binary | base64`.
        let secret = Secret::new("s3cret");
        let creds = Credentials::mint(&secret, "alice", 1_700_000_000);
        assert_eq!(creds.username, "1700000000:alice");
        assert_eq!(creds.password, "TtElzSjT0GdnTQ9xdcRNxx96yQs=");
        assert!(!format!("{secret:?}{creds:?}").contains("s3cret"));
    }

    #[test]
    fn usernames_parse_and_garbage_does_not() {
        assert_eq!(
            RestUsername::parse("12:a:b"),
            Some(RestUsername {
                expires_unix: 12,
                identity: "a:b"
            })
        );
        assert_eq!(RestUsername::parse("12").map(|u| u.identity), Some(""));
        assert_eq!(RestUsername::parse("alice"), None);
        assert_eq!(RestUsername::parse(":alice"), None);
    }

    #[test]
    fn long_term_key_is_md5_of_the_triple() {
        // `printf %s user:realm:pass | md5sum`.
        let key = long_term_key("user", "realm", "pass");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "8493fbc53ba582fb4c044c456bdc40eb");
    }
}
