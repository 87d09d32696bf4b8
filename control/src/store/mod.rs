//! Where the control plane keeps its state: one trait, two implementations.
//!
//! - [`embedded::EmbeddedStore`]: a single file (redb) for one node, nothing lost on restart.
//! - [`redis::RedisStore`]: Redis, shared by several nodes, with pub/sub between them.
//!
//! Both keep a room as a small header (description, statistics, [`Counts`]) and one record per
//! member, hand, ban, kick and invitation. [`Store::update_room`] loads the header and the
//! records a [`Scope`] names into a [`RoomDoc`], runs the command on it, and writes back only
//! what changed ([`Changes`]) with the new header, atomically; so a join or a presence change
//! costs the same whatever the room's size. Both keep an index of rooms by state (the
//! directory and the sweeps read it, not every room ever stored), an index of the members on
//! stage and of the audience (for views and cursor pages), and carry each command's outcome
//! ([`BusMessage`]) to every instance's subscribers.

pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{Counts, Member, Role, RoomDoc, RoomId, RoomState, Scope, UserId};
use crate::notify::{MAX_FEED, Notification};
use crate::replay::{Clip, ClipId, Recording};
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
    /// The role it gives: `listener` (may raise a hand in an "invited" room), `speaker` or
    /// `co_host` (lined up: on stage whenever they join).
    #[serde(default = "listener")]
    pub role: Role,
    /// How many people may accept it (`None`: any number; 1: single-use).
    #[serde(default)]
    pub max_uses: Option<u32>,
    /// How many did ([`Store::use_invite`] counts them; the record written by
    /// [`Store::put_invite`] may lag behind in a shared store).
    #[serde(default)]
    pub uses: u32,
    /// Revoked by a moderator.
    #[serde(default)]
    pub revoked: bool,
    /// Unix ms it was made.
    #[serde(default)]
    pub created_at: u64,
}

fn listener() -> Role {
    Role::Listener
}

/// How long an expired invitation is kept, so that it is refused as expired rather than
/// unknown (ms).
pub const INVITE_GRACE_MS: u64 = 7 * 24 * 3600 * 1000;

/// What a user tells about themselves: shown on their profile sheet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// A short bio.
    pub bio: String,
    /// A small picture as a `data:image/...;base64,` URL, checked by the API.
    pub avatar: Option<String>,
}

/// One moderation or lifecycle action in a room's audit log: who did what to whom, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Unix ms.
    pub at: u64,
    /// Who acted; `None`: a server (or the server itself).
    pub actor: Option<UserId>,
    /// What they did.
    pub action: crate::permission::Action,
    /// To whom, for actions on a member.
    pub target: Option<UserId>,
}

/// Entries a room's audit log keeps (the newest).
pub const AUDIT_KEPT: usize = 200;

/// The control plane's storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Adds a new room.
    async fn insert_room(&self, doc: &RoomDoc) -> Result<(), ControlError>;

    /// Appends to a room's audit log, which keeps the newest [`AUDIT_KEPT`] entries.
    async fn append_audit(&self, id: &RoomId, entry: &AuditEntry) -> Result<(), ControlError>;

    /// A room's audit log, oldest first.
    async fn audit(&self, id: &RoomId) -> Result<Vec<AuditEntry>, ControlError>;

    /// One room: its header and the records `scope` names.
    async fn room(&self, id: &RoomId, scope: &Scope) -> Result<Option<RoomDoc>, ControlError>;

    /// Changes one room atomically: loads what `scope` names, runs `f`, writes what changed;
    /// 404 if the room does not exist.
    async fn update_room(
        &self,
        id: &RoomId,
        scope: &Scope,
        f: &mut Mutation<'_>,
    ) -> Result<Effects, ControlError>;

    /// The rooms in any of `states`, from the state index: headers and members on stage.
    async fn rooms(&self, states: &[RoomState]) -> Result<Vec<RoomDoc>, ControlError>;

    /// A page of the audience (members not on stage) in user-id order, after `after`: at most
    /// `limit` members with whether their hand is raised, and the cursor of the next page.
    async fn audience(
        &self,
        id: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<AudiencePage, ControlError>;

    /// The first `limit` raised hands, in the order raised.
    async fn hands(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, u64)>, ControlError>;

    /// Up to `limit` banned users, in user-id order.
    async fn bans(&self, id: &RoomId, limit: usize) -> Result<Vec<UserId>, ControlError>;

    /// The first `limit` kicks of a room, by user id: who, and the unix ms until which they
    /// may not rejoin.
    async fn kicks(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, u64)>, ControlError>;

    /// The first `limit` entries of a room's line-up, by user id.
    async fn lineup(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, Role)>, ControlError>;

    /// The first `limit` users invited to a room (by a moderator or an invitation link), by
    /// user id.
    async fn invited(&self, id: &RoomId, limit: usize) -> Result<Vec<UserId>, ControlError>;

    /// Deletes a room and every record of it (ended rooms past their retention).
    async fn remove_room(&self, id: &RoomId) -> Result<(), ControlError>;

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

    /// A page of the users who follow `what`, in user-id order after `after`.
    async fn followers(
        &self,
        what: &Follow,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>, ControlError>;

    /// Adds `n` to each of `users`' feeds (each keeps its newest [`MAX_FEED`] entries).
    async fn push_notification(
        &self,
        users: &[UserId],
        n: &Notification,
    ) -> Result<(), ControlError>;

    /// `user`'s feed, newest first, and the unix ms up to which they read it.
    async fn notifications(&self, user: &UserId) -> Result<(Vec<Notification>, u64), ControlError>;

    /// Marks `user`'s feed read up to `until` (unix ms; never moves back).
    async fn mark_read(&self, user: &UserId, until: u64) -> Result<(), ControlError>;

    /// Sets `user`'s profile.
    async fn set_profile(&self, user: &UserId, profile: &Profile) -> Result<(), ControlError>;

    /// `user`'s profile, if they wrote one.
    async fn profile(&self, user: &UserId) -> Result<Option<Profile>, ControlError>;

    /// Stores an invitation under its opaque token.
    async fn put_invite(&self, token: &str, invite: &Invite) -> Result<(), ControlError>;

    /// Looks an invitation up, with its uses counted so far.
    async fn invite(&self, token: &str) -> Result<Option<Invite>, ControlError>;

    /// The invitations of room `id`, newest first, at most `limit`, with their tokens.
    async fn room_invites(
        &self,
        id: &RoomId,
        limit: usize,
    ) -> Result<Vec<(String, Invite)>, ControlError>;

    /// Counts one use of invitation `token` if it has one left (fewer than `max_uses`),
    /// atomically across instances; returns whether it did.
    async fn use_invite(&self, token: &str, max_uses: Option<u32>) -> Result<bool, ControlError>;

    /// Adds a recording of its room, or replaces the one with its id (its end reported); a
    /// room keeps its newest [`crate::replay::MAX_RECORDINGS`]. Nothing if the room is gone.
    async fn put_recording(&self, recording: &Recording) -> Result<(), ControlError>;

    /// A room's recordings, oldest first.
    async fn recordings(&self, id: &RoomId) -> Result<Vec<Recording>, ControlError>;

    /// One recording of a room (what an audio request reads: not the room's whole list with
    /// every timeline).
    async fn recording(
        &self,
        id: &RoomId,
        recording: &crate::replay::RecordingId,
    ) -> Result<Option<Recording>, ControlError>;

    /// Stores a clip (with its room: deleted with it).
    async fn put_clip(&self, clip: &Clip) -> Result<(), ControlError>;

    /// A clip by id.
    async fn clip(&self, id: &ClipId) -> Result<Option<Clip>, ControlError>;

    /// A room's clips, newest first, at most `limit`.
    async fn room_clips(&self, id: &RoomId, limit: usize) -> Result<Vec<Clip>, ControlError>;

    /// Records that `instance` is alive for the next `ttl_ms`.
    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> Result<(), ControlError>;

    /// Whether `instance` sent a heartbeat that has not expired.
    async fn alive(&self, instance: &str) -> Result<bool, ControlError>;

    /// Writes this node's record, kept for `ttl_ms` (its `expires_at`) unless written again.
    async fn put_node(&self, node: &crate::nodes::Node, ttl_ms: u64) -> Result<(), ControlError>;

    /// The records of the nodes living at `now` (unix ms), by id, with `draining` set for those
    /// an operator drained ([`Store::drain_node`]).
    async fn nodes(&self, now: u64) -> Result<Vec<crate::nodes::Node>, ControlError>;

    /// Marks node `id` as drained by an operator (`on`), or not: it takes no new rooms while it
    /// lives. Forgotten with the node.
    async fn drain_node(&self, id: &str, on: bool) -> Result<(), ControlError>;

    /// The public URLs of the nodes serving room `id` as edges (carrying listeners while its
    /// origin is full), as [`Store::add_room_edge`] recorded them, in any order. A store with
    /// one node has none.
    async fn room_edges(&self, _id: &RoomId) -> Result<Vec<String>, ControlError> {
        Ok(Vec::new())
    }

    /// Records that the node at `url` serves room `id` as an edge, so that every instance
    /// sends the room's next spilled listeners there too. Forgotten with the room.
    async fn add_room_edge(&self, _id: &RoomId, _url: &str) -> Result<(), ControlError> {
        Ok(())
    }

    /// Sends a command's outcome to every instance (this one included).
    async fn publish(&self, message: &BusMessage) -> Result<(), ControlError>;

    /// Receives every instance's outcomes.
    fn subscribe(&self) -> broadcast::Receiver<BusMessage>;
}

/// One page of a room's audience.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AudiencePage {
    /// Members, with whether their hand is raised.
    pub members: Vec<(UserId, Member, bool)>,
    /// Where the next page starts, if there is one.
    pub next: Option<UserId>,
}

/// What a command changed in a room: the records to write or delete, and the header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The room's description changed.
    pub room: bool,
    /// Its statistics changed.
    pub stats: bool,
    /// Its counts changed.
    pub counts: bool,
    /// The whole room's counts afterwards.
    pub total: Counts,
    /// Members written (`Some`) or deleted.
    pub members: Vec<(UserId, Option<Member>)>,
    /// Hands raised (`Some(unix ms)`) or lowered.
    pub hands: Vec<(UserId, Option<u64>)>,
    /// Bans added (`true`) or lifted.
    pub bans: Vec<(UserId, bool)>,
    /// Kicks recorded (`Some(until)`) or cleared.
    pub kicks: Vec<(UserId, Option<u64>)>,
    /// Invitations to speak added or removed.
    pub invited: Vec<(UserId, bool)>,
    /// Line-up entries set (`Some(role)`) or removed.
    pub lineup: Vec<(UserId, Option<Role>)>,
    /// Stage index: members now on stage (`true`) or no longer.
    pub stage: Vec<(UserId, bool)>,
    /// Audience index: members now in the audience (`true`) or no longer.
    pub audience: Vec<(UserId, bool)>,
}

impl Changes {
    /// What turned `before` into `after` (both loaded with the same scope).
    pub fn between(before: &RoomDoc, after: &RoomDoc) -> Changes {
        fn map<V: Clone + PartialEq>(
            a: &std::collections::BTreeMap<UserId, V>,
            b: &std::collections::BTreeMap<UserId, V>,
        ) -> Vec<(UserId, Option<V>)> {
            let mut out = Vec::new();
            for (k, v) in b {
                if a.get(k) != Some(v) {
                    out.push((k.clone(), Some(v.clone())));
                }
            }
            for k in a.keys() {
                if !b.contains_key(k) {
                    out.push((k.clone(), None));
                }
            }
            out
        }
        fn set(
            a: &std::collections::BTreeSet<UserId>,
            b: &std::collections::BTreeSet<UserId>,
        ) -> Vec<(UserId, bool)> {
            b.difference(a)
                .map(|u| (u.clone(), true))
                .chain(a.difference(b).map(|u| (u.clone(), false)))
                .collect()
        }
        let members = map(&before.members, &after.members);
        let place = |m: Option<&Member>| m.map(|m| m.role.on_stage());
        let mut stage = Vec::new();
        let mut audience = Vec::new();
        for (u, _) in &members {
            let (was, is) = (place(before.members.get(u)), place(after.members.get(u)));
            if was == is {
                continue;
            }
            if was == Some(true) || is == Some(true) {
                stage.push((u.clone(), is == Some(true)));
            }
            if was == Some(false) || is == Some(false) {
                audience.push((u.clone(), is == Some(false)));
            }
        }
        let total = after.counts();
        Changes {
            room: before.room != after.room,
            stats: before.stats != after.stats,
            counts: before.counts() != total,
            total,
            members,
            hands: map(&before.hands, &after.hands),
            bans: set(&before.bans, &after.bans),
            kicks: map(&before.kicks, &after.kicks),
            invited: set(&before.invited, &after.invited),
            lineup: map(&before.lineup, &after.lineup),
            stage,
            audience,
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        !self.room
            && !self.stats
            && !self.counts
            && self.members.is_empty()
            && self.hands.is_empty()
            && self.bans.is_empty()
            && self.kicks.is_empty()
            && self.invited.is_empty()
            && self.lineup.is_empty()
    }
}

/// A room's header as stored: description and counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Header {
    pub(crate) room: crate::model::Room,
    #[serde(default)]
    pub(crate) counts: Counts,
}

fn json<T: Serialize>(value: &T) -> Result<String, ControlError> {
    serde_json::to_string(value)
        .map_err(|e| ControlError::unavailable(format!("cannot encode a store record: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, s: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(s)
        .map_err(|e| ControlError::unavailable(format!("corrupt {what} record in the store: {e}")))
}

/// `recordings` with `recording` in place of the one with its id (or added), ordered by start,
/// the newest [`crate::replay::MAX_RECORDINGS`] kept.
fn merge_recording(recordings: &mut Vec<Recording>, recording: &Recording) {
    match recordings.iter_mut().find(|r| r.id == recording.id) {
        Some(r) => *r = recording.clone(),
        None => recordings.push(recording.clone()),
    }
    recordings.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    if recordings.len() > crate::replay::MAX_RECORDINGS {
        let extra = recordings.len() - crate::replay::MAX_RECORDINGS;
        recordings.drain(..extra);
    }
}

/// Capacity of the local event fan-out.
const BUS_CAPACITY: usize = 4096;
