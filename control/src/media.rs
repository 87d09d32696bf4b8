//! The control plane's view of the media plane: a LiveKit `RoomService`-shaped interface.
//!
//! `stoa serve` implements [`MediaPlane`] with direct calls into its own signaling service; a
//! split deployment could implement it over Twirp against any LiveKit-compatible server. Every
//! role or hand change reaches live sessions through it as a permission and attribute update,
//! so clients see it as a LiveKit participant update without reconnecting.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{RoomId, UserId};

/// A change to the media plane that a command requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MediaCommand {
    /// Create the media room.
    CreateRoom {
        /// Room.
        room: RoomId,
        /// Participant limit enforced by the media plane.
        max_participants: u32,
        /// Recorded: a media room (re)created while the room is recorded — after a restart
        /// of the media plane, or after it closed the empty room — is recorded again, into a
        /// new egress (a new file part).
        #[serde(default)]
        recording: bool,
    },
    /// Close the media room, disconnecting everyone.
    DeleteRoom {
        /// Room.
        room: RoomId,
    },
    /// Set a live participant's publish permission and attributes.
    Update {
        /// Room.
        room: RoomId,
        /// Participant identity.
        user: UserId,
        /// May publish audio.
        can_publish: bool,
        /// May send data packets.
        can_publish_data: bool,
        /// `role`, `hand`.
        attributes: BTreeMap<String, String>,
    },
    /// Mute the participant's published audio.
    Mute {
        /// Room.
        room: RoomId,
        /// Participant identity.
        user: UserId,
    },
    /// Disconnect the participant.
    Remove {
        /// Room.
        room: RoomId,
        /// Participant identity.
        user: UserId,
    },
    /// Replace the media room's metadata (JSON: title, topic, description, kind, speaker mode,
    /// limit), which every participant receives as a room update.
    RoomMetadata {
        /// Room.
        room: RoomId,
        /// The metadata.
        metadata: String,
    },
    /// Record the room, or stop: its audio goes to the recorder and every participant sees
    /// the room as recorded (LiveKit `Room.active_recording`).
    Record {
        /// Room.
        room: RoomId,
        /// Recorded or not.
        recording: bool,
    },
    /// Show a reaction to the room's participants (a data message, topic `stoa.reaction`).
    Reaction {
        /// Room.
        room: RoomId,
        /// Who reacted.
        user: UserId,
        /// The reaction.
        emoji: String,
    },
}

/// A media-plane failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The room or participant is not on this media plane (not connected here).
    #[error("not found")]
    NotFound,
    /// The media plane failed.
    #[error("media plane: {0}")]
    Failed(String),
}

/// What the control plane asks of the media plane.
#[async_trait::async_trait]
pub trait MediaPlane: Send + Sync + std::fmt::Debug {
    /// Carries out one command. `NotFound` means the participant or room is not on this
    /// media plane, which is normal when several instances share a store.
    async fn apply(&self, command: &MediaCommand) -> Result<(), MediaError>;

    /// Relays `room`'s media from its origin, the node at `origin` (its public URL): this node
    /// is an edge of the room. Idempotent while the link lives; a link that ended is made
    /// again. Returns whether a link was started. A media plane that cannot relay ignores it.
    async fn relay(&self, _room: &RoomId, _origin: &str) -> Result<bool, MediaError> {
        Ok(false)
    }

    /// `participants` members of `room` are connected through other nodes (the room spans
    /// nodes: an origin and edges): the room's clients here count them with this node's own
    /// in their room snapshot (LiveKit `Room.num_participants`). Returns whether the room is
    /// open here; a media plane that cannot tell its clients ignores it.
    async fn present_elsewhere(
        &self,
        _room: &RoomId,
        _participants: u32,
    ) -> Result<bool, MediaError> {
        Ok(false)
    }

    /// Moves up to `limit` of `room`'s members connected to this node elsewhere: each is told
    /// to leave (LiveKit's `MIGRATION` reason, publishers first) and asks for a new token.
    /// Returns how many were told; a media plane that cannot tell them moves nobody.
    async fn migrate(&self, _room: &RoomId, _limit: u32) -> Result<usize, MediaError> {
        Ok(0)
    }
}

/// A media plane that does nothing (a control plane without media, e.g. in store tests).
#[derive(Debug, Default)]
pub struct NoMedia;

#[async_trait::async_trait]
impl MediaPlane for NoMedia {
    async fn apply(&self, _command: &MediaCommand) -> Result<(), MediaError> {
        Ok(())
    }
}
