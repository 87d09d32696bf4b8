//! Administrative calls on rooms and participants: what the Twirp `RoomService`
//! ([`crate::twirp`]), the control plane and the server's shutdown use. Each call is one
//! message to the service task ([`AdminOp`]), so it takes effect on live sessions at once.

use livekit_protocol as lk;

use super::{ParticipantUpdate, SendData, ServiceError, Signaling};
use crate::proto::{AdminOp, AdminReply};
use crate::room::RoomLimits;

/// An answer of an unexpected shape: a bug, reported as an internal failure.
fn mismatch() -> ServiceError {
    ServiceError::Stopped
}

impl Signaling {
    /// Relay `room`'s media from the node at `origin` (its public URL): this node's listeners
    /// of the room hear the origin's speakers, who appear here as participants. Needs
    /// [`ServiceConfig::relay`](super::ServiceConfig::relay). Replaces the room's link, if any.
    pub async fn relay_from(&self, room: &str, origin: &str) -> Result<(), ServiceError> {
        let op = AdminOp::RelayFrom {
            room: room.to_owned(),
            origin: origin.to_owned(),
        };
        self.admin(op).await.map(|_| ())
    }

    /// Relay `room` from `origin` unless a link to that origin runs already (idempotent while
    /// the link lives; a link that ended is made again). Returns whether it started a link.
    pub async fn ensure_relay(&self, room: &str, origin: &str) -> Result<bool, ServiceError> {
        let op = AdminOp::EnsureRelay {
            room: room.to_owned(),
            origin: origin.to_owned(),
        };
        match self.admin(op).await? {
            AdminReply::Count(n) => Ok(n > 0),
            _ => Err(mismatch()),
        }
    }

    /// The control plane counted `participants` people connected to `room` through other
    /// nodes: the room's clients here see the whole room's `num_participants` from their next
    /// `RoomUpdate`. Returns whether the room is open here (a room that is not keeps nothing).
    pub async fn present_elsewhere(
        &self,
        room: &str,
        participants: u32,
    ) -> Result<bool, ServiceError> {
        let op = AdminOp::PresentElsewhere {
            room: room.to_owned(),
            participants,
        };
        match self.admin(op).await? {
            AdminReply::Count(n) => Ok(n > 0),
            _ => Err(mismatch()),
        }
    }

    /// Stop relaying `room`: the origin's participants leave it here.
    pub async fn stop_relay(&self, room: &str) -> Result<(), ServiceError> {
        let op = AdminOp::StopRelay {
            room: room.to_owned(),
        };
        self.admin(op).await.map(|_| ())
    }

    /// Replace a participant's permissions on the live session (LiveKit `UpdateParticipant`).
    /// Revoking `can_publish` unpublishes its tracks at once.
    pub async fn update_permission(
        &self,
        room: &str,
        identity: &str,
        permission: lk::ParticipantPermission,
    ) -> Result<lk::ParticipantInfo, ServiceError> {
        let update = ParticipantUpdate {
            permission: Some(permission),
            ..Default::default()
        };
        self.update_participant(room, identity, update).await
    }

    /// Force-mute (or unmute) a published track (LiveKit `MutePublishedTrack`). The engine
    /// stops forwarding it whatever the client does.
    pub async fn mute_published_track(
        &self,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<lk::TrackInfo, ServiceError> {
        let op = AdminOp::MuteTrack {
            room: room.to_owned(),
            identity: identity.to_owned(),
            track_sid: track_sid.to_owned(),
            muted,
        };
        match self.admin(op).await? {
            AdminReply::Track(t) => Ok(*t),
            _ => Err(mismatch()),
        }
    }

    /// Create a room ahead of the first join (LiveKit `CreateRoom`); idempotent: an existing
    /// room is returned unchanged.
    pub async fn create_room(
        &self,
        name: &str,
        limits: RoomLimits,
    ) -> Result<lk::Room, ServiceError> {
        self.create_room_with(name, limits, "").await
    }

    /// Create a room, or return the existing one unchanged (LiveKit `CreateRoom`).
    pub async fn create_room_with(
        &self,
        name: &str,
        limits: RoomLimits,
        metadata: &str,
    ) -> Result<lk::Room, ServiceError> {
        let op = AdminOp::CreateRoom {
            name: name.to_owned(),
            limits,
            metadata: metadata.to_owned(),
        };
        match self.admin(op).await? {
            AdminReply::Room(r) => Ok(*r),
            _ => Err(mismatch()),
        }
    }

    /// Snapshots of a room's participants.
    pub async fn list_participants(
        &self,
        room: &str,
    ) -> Result<Vec<lk::ParticipantInfo>, ServiceError> {
        let op = AdminOp::ListParticipants {
            room: room.to_owned(),
        };
        match self.admin(op).await? {
            AdminReply::Participants(p) => Ok(p),
            _ => Err(mismatch()),
        }
    }

    /// Snapshots of the room's participants held by this node (not the mirrors of another
    /// node's participants, nor relays): this node's share of a room-wide listing.
    pub async fn list_held(&self, room: &str) -> Result<Vec<lk::ParticipantInfo>, ServiceError> {
        let op = AdminOp::ListHeld {
            room: room.to_owned(),
        };
        match self.admin(op).await? {
            AdminReply::Participants(p) => Ok(p),
            _ => Err(mismatch()),
        }
    }

    /// The open rooms, all or only those named.
    pub async fn list_rooms(&self, names: &[String]) -> Result<Vec<lk::Room>, ServiceError> {
        let op = AdminOp::ListRooms {
            names: names.to_vec(),
        };
        match self.admin(op).await? {
            AdminReply::Rooms(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    /// Close a room: everyone is told to leave (`ROOM_DELETED`) and disconnected.
    pub async fn delete_room(&self, room: &str) -> Result<(), ServiceError> {
        let op = AdminOp::DeleteRoom {
            room: room.to_owned(),
        };
        self.admin(op).await.map(|_| ())
    }

    /// A participant's snapshot.
    pub async fn get_participant(
        &self,
        room: &str,
        identity: &str,
    ) -> Result<lk::ParticipantInfo, ServiceError> {
        self.list_participants(room)
            .await?
            .into_iter()
            .find(|p| p.identity == identity)
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.to_owned()))
    }

    /// Disconnect a participant (`PARTICIPANT_REMOVED`).
    pub async fn remove_participant(&self, room: &str, identity: &str) -> Result<(), ServiceError> {
        let op = AdminOp::RemoveParticipant {
            room: room.to_owned(),
            identity: identity.to_owned(),
        };
        self.admin(op).await.map(|_| ())
    }

    /// Change a participant's name, metadata, attributes and permissions on the live session.
    pub async fn update_participant(
        &self,
        room: &str,
        identity: &str,
        update: ParticipantUpdate,
    ) -> Result<lk::ParticipantInfo, ServiceError> {
        let op = AdminOp::UpdateParticipant {
            room: room.to_owned(),
            identity: identity.to_owned(),
            update: Box::new(update),
        };
        match self.admin(op).await? {
            AdminReply::Participant(p) => Ok(*p),
            _ => Err(mismatch()),
        }
    }

    /// Replace a room's metadata; its participants get a `RoomUpdate` at once.
    pub async fn update_room_metadata(
        &self,
        room: &str,
        metadata: &str,
    ) -> Result<lk::Room, ServiceError> {
        let op = AdminOp::UpdateRoomMetadata {
            room: room.to_owned(),
            metadata: metadata.to_owned(),
        };
        match self.admin(op).await? {
            AdminReply::Room(r) => Ok(*r),
            _ => Err(mismatch()),
        }
    }

    /// Record `room`, or stop: its audio tracks are tapped (each named to
    /// [`ServiceConfig::recorder`](super::ServiceConfig::recorder)) and its participants get a
    /// `RoomUpdate` with `active_recording`. Applies to a room not open yet too (when it
    /// opens), until stopped or the room is deleted. Returns whether the room is open now.
    pub async fn set_recording(&self, room: &str, recording: bool) -> Result<bool, ServiceError> {
        let op = AdminOp::SetRecording {
            room: room.to_owned(),
            recording,
        };
        match self.admin(op).await? {
            AdminReply::Count(open) => Ok(open > 0),
            _ => Err(mismatch()),
        }
    }

    /// Send data to a room's participants over their subscriber data channels: one engine
    /// command, whatever the room's size.
    pub async fn send_data(&self, room: &str, data: SendData) -> Result<(), ServiceError> {
        let op = AdminOp::SendData {
            room: room.to_owned(),
            data: Box::new(data),
        };
        self.admin(op).await.map(|_| ())
    }

    /// Subscribe a participant to (or unsubscribe it from) tracks.
    pub async fn update_subscriptions(
        &self,
        room: &str,
        identity: &str,
        track_sids: Vec<String>,
        subscribe: bool,
    ) -> Result<(), ServiceError> {
        let op = AdminOp::UpdateSubscriptions {
            room: room.to_owned(),
            identity: identity.to_owned(),
            track_sids,
            subscribe,
        };
        self.admin(op).await.map(|_| ())
    }

    /// Sends `Leave { reason: SERVER_SHUTDOWN, action: DISCONNECT }` to every connected client
    /// that has not been told yet and leaves its session open, so that the client closes it
    /// itself and its room empties in order. Returns how many clients were told now. New joins
    /// are not refused here; the HTTP layer stops accepting them before calling this.
    pub async fn ask_to_leave(&self) -> Result<usize, ServiceError> {
        match self.admin(AdminOp::AskToLeave).await? {
            AdminReply::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    /// Moves up to `limit` of `room`'s participants connected here to another node
    /// (`Leave { MIGRATION, DISCONNECT }`, publishers first): what an operator's drain does,
    /// a batch at a time. Returns how many were told; 0 for a room not open here.
    pub async fn migrate(&self, room: &str, limit: usize) -> Result<usize, ServiceError> {
        let op = AdminOp::Migrate {
            room: room.to_owned(),
            limit,
        };
        match self.admin(op).await? {
            AdminReply::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }

    /// Ends every session at once (`Leave { SERVER_SHUTDOWN, DISCONNECT }`, then close): what is
    /// left when the drain deadline passes. Returns how many sessions were ended.
    pub async fn drain(&self) -> Result<usize, ServiceError> {
        match self.admin(AdminOp::Drain).await? {
            AdminReply::Count(n) => Ok(n),
            _ => Err(mismatch()),
        }
    }
}
