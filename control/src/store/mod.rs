//! Where the control plane keeps its state: one trait, two implementations.
//!
//! - [`embedded::EmbeddedStore`]: a single file (redb) for one node, nothing lost on restart.
//! - [`redis::RedisStore`]: Redis, shared by several nodes, with pub/sub between them.
//!
//! Both keep a room as one [`RoomDoc`] changed atomically by [`Store::update_room`], and carry
//! each command's outcome ([`BusMessage`]) to every instance's subscribers.

pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{RoomDoc, RoomId, RoomState, UserId};
use crate::room::Effects;

/// A change to one room, run under the store's lock or transaction; it may run more than once
/// when another instance changed the room at the same time.
pub type Mutation<'a> = dyn FnMut(&mut RoomDoc) -> Result<Effects, ControlError> + Send + 'a;

/// What a user can follow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Follow {
    /// Another user (usually a host).
    User(UserId),
    /// A room ("remind me" for a scheduled room).
    Room(RoomId),
}

impl Follow {
    /// The store's text form: `user:{id}` or `room:{id}`.
    pub fn key(&self) -> String {
        match self {
            Follow::User(u) => format!("user:{u}"),
            Follow::Room(r) => format!("room:{r}"),
        }
    }

    /// Parses [`Follow::key`].
    pub fn from_key(s: &str) -> Option<Follow> {
        let (kind, id) = s.split_once(':')?;
        match kind {
            "user" => UserId::parse(id).ok().map(Follow::User),
            "room" => RoomId::parse(id).ok().map(Follow::Room),
            _ => None,
        }
    }
}

/// An invitation link's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// The room.
    pub room: RoomId,
    /// Who made the link.
    pub created_by: UserId,
    /// Unix ms after which the link no longer works.
    pub expires_at: u64,
}

/// What a user tells about themselves: shown on their profile sheet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// A short bio.
    pub bio: String,
    /// A small picture as a `data:image/...;base64,` URL, checked by the API.
    pub avatar: Option<String>,
}

/// The control plane's storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Adds a new room.
    async fn insert_room(&self, doc: &RoomDoc) -> Result<(), ControlError>;

    /// One room.
    async fn room(&self, id: &RoomId) -> Result<Option<RoomDoc>, ControlError>;

    /// Changes one room atomically; 404 if it does not exist.
    async fn update_room(&self, id: &RoomId, f: &mut Mutation<'_>)
    -> Result<Effects, ControlError>;

    /// The rooms in any of `states`.
    async fn rooms(&self, states: &[RoomState]) -> Result<Vec<RoomDoc>, ControlError>;

    /// Records that `user` is in `room` unless they are in another room, which is returned.
    async fn claim_active(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<Option<RoomId>, ControlError>;

    /// Ends `user`'s claim on `room` (not on another room).
    async fn release_active(&self, user: &UserId, room: &RoomId) -> Result<(), ControlError>;

    /// Starts or stops following.
    async fn set_follow(&self, user: &UserId, what: &Follow, on: bool) -> Result<(), ControlError>;

    /// What `user` follows.
    async fn follows(&self, user: &UserId) -> Result<Vec<Follow>, ControlError>;

    /// Sets `user`'s profile.
    async fn set_profile(&self, user: &UserId, profile: &Profile) -> Result<(), ControlError>;

    /// `user`'s profile, if they wrote one.
    async fn profile(&self, user: &UserId) -> Result<Option<Profile>, ControlError>;

    /// Stores an invitation under its opaque token.
    async fn put_invite(&self, token: &str, invite: &Invite) -> Result<(), ControlError>;

    /// Looks an invitation up.
    async fn invite(&self, token: &str) -> Result<Option<Invite>, ControlError>;

    /// Records that `instance` is alive for the next `ttl_ms`.
    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> Result<(), ControlError>;

    /// Whether `instance` sent a heartbeat that has not expired.
    async fn alive(&self, instance: &str) -> Result<bool, ControlError>;

    /// Sends a command's outcome to every instance (this one included).
    async fn publish(&self, message: &BusMessage) -> Result<(), ControlError>;

    /// Receives every instance's outcomes.
    fn subscribe(&self) -> broadcast::Receiver<BusMessage>;
}

fn json<T: Serialize>(value: &T) -> Result<String, ControlError> {
    serde_json::to_string(value)
        .map_err(|e| ControlError::unavailable(format!("cannot encode a store record: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(s)
        .map_err(|e| ControlError::unavailable(format!("corrupt {what} record in the store: {e}")))
}

/// Capacity of the local event fan-out.
const BUS_CAPACITY: usize = 4096;
