//! Events for lobbies and app backends (`/api/events`), and the bus that carries them and the
//! media commands between instances.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::media::MediaCommand;
use crate::model::{Role, RoomId, UserId};

/// Something that happened in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A room was created (scheduled or about to go live).
    RoomCreated {
        /// Room.
        room: RoomId,
        /// Title.
        title: String,
        /// Unix ms it is scheduled for.
        scheduled_for: Option<u64>,
        /// A private room (only its members, host and servers are told).
        #[serde(default, skip_serializing_if = "is_false")]
        private: bool,
    },
    /// A room went live.
    RoomLive {
        /// Room.
        room: RoomId,
        /// Title.
        title: String,
        /// Host.
        host: UserId,
        /// A private room (only its members, host and servers are told).
        #[serde(default, skip_serializing_if = "is_false")]
        private: bool,
    },
    /// A room ended.
    RoomEnded {
        /// Room.
        room: RoomId,
        /// A private room (only its members, host and servers are told).
        #[serde(default, skip_serializing_if = "is_false")]
        private: bool,
    },
    /// The audience changed.
    Audience {
        /// Room.
        room: RoomId,
        /// Listeners connected.
        listeners: u32,
        /// Everyone connected.
        present: u32,
        /// A private room (only its members, host and servers are told).
        #[serde(default, skip_serializing_if = "is_false")]
        private: bool,
    },
    /// A hand went up or down.
    Hand {
        /// Room.
        room: RoomId,
        /// Whose.
        user: UserId,
        /// Up.
        raised: bool,
    },
    /// A member's role changed.
    Role {
        /// Room.
        room: RoomId,
        /// Whose.
        user: UserId,
        /// The new role.
        role: Role,
    },
    /// A member was muted or unmuted.
    Muted {
        /// Room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// Muted now.
        muted: bool,
        /// Hard mute (publishing revoked) or its restoration.
        hard: bool,
    },
    /// A member was kicked or banned.
    Removed {
        /// Room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// Banned (else kicked).
        banned: bool,
    },
    /// A room's title, description, limits or schedule changed.
    RoomEdited {
        /// Room.
        room: RoomId,
        /// Title.
        title: String,
        /// Topic.
        topic: String,
        /// Unix ms it is scheduled for.
        scheduled_for: Option<u64>,
    },
    /// A scheduled room starts soon: those who asked are reminded.
    Reminder {
        /// Room.
        room: RoomId,
        /// Title.
        title: String,
        /// Host.
        host: UserId,
        /// Unix ms it is scheduled for.
        scheduled_for: Option<u64>,
    },
    /// The host lined someone up (a role they get whenever they join) or took it back.
    LineUp {
        /// Room.
        room: RoomId,
        /// Whose.
        user: UserId,
        /// Co-host or speaker; `None`: taken back.
        role: Option<Role>,
    },
    /// Someone on stage was idle past the room's rules: muted, or moved to the audience.
    Idle {
        /// Room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// Moved to the audience (else muted).
        moved: bool,
    },
    /// A member's own state changed: away (page hidden) or deafened.
    Presence {
        /// Room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// Away (shown only where the room shows away listeners).
        away: bool,
        /// Deafened.
        deafened: bool,
    },
    /// The room started or stopped being recorded; `error` says why a recording stopped by
    /// itself (the recording directory cannot be written, the disk is full).
    Recording {
        /// Room.
        room: RoomId,
        /// Recorded now.
        recording: bool,
        /// Why the recording failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A reaction.
    Reaction {
        /// Room.
        room: RoomId,
        /// Who reacted.
        user: UserId,
        /// The reaction.
        emoji: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Event {
    /// Whether the event is about a private room.
    pub fn private(&self) -> bool {
        match self {
            Event::RoomCreated { private, .. }
            | Event::RoomLive { private, .. }
            | Event::RoomEnded { private, .. }
            | Event::Audience { private, .. } => *private,
            _ => false,
        }
    }
}

/// What travels between instances: the outcome of one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusMessage {
    /// The instance that ran the command.
    pub origin: String,
    /// Media commands every instance applies to the sessions it hosts.
    pub media: Vec<MediaCommand>,
    /// Events for every instance's event-stream subscribers.
    pub events: Vec<Event>,
    /// Notifications for these users' own streams, wherever they are connected.
    #[serde(default)]
    pub notices: Vec<(Vec<crate::model::UserId>, crate::notify::Notification)>,
    /// Rooms that moved to another node, with their new origin's media URL: the nodes serving
    /// their listeners re-link to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<(crate::model::RoomId, String)>,
    /// Rooms whose presence changed, with their members connected now per instance: every
    /// node tells its media plane how many are connected elsewhere, so that clients' room
    /// snapshots count the whole room (`service/audience.rs`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presence: Vec<RoomPresence>,
}

/// A room's members connected now, by the instance whose media plane holds them (the
/// header's `Counts::instances`), after a change of presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomPresence {
    /// The room.
    pub room: RoomId,
    /// Members connected now, by instance.
    pub instances: std::collections::BTreeMap<String, u32>,
}
