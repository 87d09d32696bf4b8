//! Administrative operations on rooms and participants: what the Twirp `RoomService`, the
//! control plane and the server's shutdown use. Each takes effect on live sessions at once.

use std::collections::HashMap;
use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use prost::Message as _;
use stoa_sfu::{EngineCommand, Publish};

use super::engine::ToRelays;
use super::session::Leave;
use super::updates::Visibility;
use super::{Server, ServiceError, SessionId};
use crate::room::{Participant, Room, RoomLimits};

/// An administrative operation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AdminOp {
    /// Create a room, or return the existing one unchanged (LiveKit `CreateRoom`).
    CreateRoom {
        /// Its name.
        name: String,
        /// Its limits.
        limits: RoomLimits,
        /// Its metadata.
        metadata: String,
    },
    /// The open rooms, all or only those named.
    ListRooms {
        /// Names; empty for all.
        names: Vec<String>,
    },
    /// Close a room: everyone is told to leave (`ROOM_DELETED`).
    DeleteRoom {
        /// The room.
        room: String,
    },
    /// Snapshots of a room's participants.
    ListParticipants {
        /// The room.
        room: String,
    },
    /// Snapshots of the room's participants this node holds (their sessions are here): no
    /// mirror of another node's participant, no relay. What a room-wide listing gathers from
    /// each node of the room (docs/ARCHITECTURE.md, "Room-wide views and actions").
    ListHeld {
        /// The room.
        room: String,
    },
    /// Disconnect a participant (`PARTICIPANT_REMOVED`).
    RemoveParticipant {
        /// The room.
        room: String,
        /// The participant.
        identity: String,
    },
    /// Change a participant's name, metadata, attributes and permissions.
    UpdateParticipant {
        /// The room.
        room: String,
        /// The participant.
        identity: String,
        /// The changes.
        update: Box<ParticipantUpdate>,
    },
    /// Force-mute (or unmute) a published track (LiveKit `MutePublishedTrack`).
    MuteTrack {
        /// The room.
        room: String,
        /// The publisher.
        identity: String,
        /// The track.
        track_sid: String,
        /// Muted or not.
        muted: bool,
    },
    /// Replace a room's metadata; its participants get a `RoomUpdate` at once.
    UpdateRoomMetadata {
        /// The room.
        room: String,
        /// The metadata.
        metadata: String,
    },
    /// Send data to a room's participants over their subscriber data channels.
    SendData {
        /// The room.
        room: String,
        /// What and to whom.
        data: Box<SendData>,
    },
    /// Subscribe a participant to (or unsubscribe it from) tracks.
    UpdateSubscriptions {
        /// The room.
        room: String,
        /// The participant.
        identity: String,
        /// Track sids.
        track_sids: Vec<String>,
        /// Subscribe or unsubscribe.
        subscribe: bool,
    },
    /// Record a room, or stop: its audio tracks are tapped for the recorder
    /// ([`super::Output::Tap`]) and its clients see `Room.active_recording`. Kept for a room
    /// not open yet (or closed while empty) until it stops or the room is deleted.
    SetRecording {
        /// The room.
        room: String,
        /// Recorded or not.
        recording: bool,
    },
    /// Relay the room's media from another node, its origin (issue 21, see `relay`): this
    /// node's listeners of the room hear the origin's speakers, who appear here as mirror
    /// participants. Replaces the room's link, if it had one.
    RelayFrom {
        /// The room (the same name on both nodes).
        room: String,
        /// The origin's base URL, as clients would connect to it (`ws(s)://` or `http(s)://`).
        origin: String,
    },
    /// Relay the room from `origin` unless it has a link to that origin already (what an
    /// admission on an edge asks, at every join: idempotent while the link lives; a link that
    /// ended, or one to another origin, is made anew). Answers `Count(1)` when it started a
    /// link, `Count(0)` when it kept the one it had.
    EnsureRelay {
        /// The room (the same name on both nodes).
        room: String,
        /// The origin's base URL (as for `RelayFrom`).
        origin: String,
    },
    /// Stop relaying the room: its mirror participants leave.
    StopRelay {
        /// The room.
        room: String,
    },
    /// Move up to `limit` of the room's participants connected here to another node (an
    /// operator drains this node): each is sent `Leave { reason: MIGRATION, action: DISCONNECT }`
    /// and its session ends, so that its client asks the application for a new token, which
    /// names a node that is not draining. Publishers go first (their room moves with them);
    /// relay links and mirrors are not participants of this node and stay, but once no member
    /// is left here the room's own relay link from its origin ends. Answers `Count(moved)`.
    Migrate {
        /// The room.
        room: String,
        /// At most this many.
        limit: usize,
    },
    /// The control plane counted `participants` people connected to the room through other
    /// nodes (its origin, its edges): the room's clients see the whole room's count
    /// (`Room.num_participants`, [`Server::room_snapshot`]). Answers `Count(1)` when the room
    /// is open here, `Count(0)` when it is not (nothing kept).
    PresentElsewhere {
        /// The room.
        room: String,
        /// People connected through other nodes.
        participants: u32,
    },
    /// Tell every client not told yet to leave (`SERVER_SHUTDOWN`), leaving sessions open.
    AskToLeave,
    /// End every session at once (`SERVER_SHUTDOWN`).
    Drain,
}

impl AdminOp {
    /// The room the operation is about; `None` for those about every room.
    pub fn room(&self) -> Option<&str> {
        match self {
            AdminOp::CreateRoom { name: room, .. }
            | AdminOp::DeleteRoom { room }
            | AdminOp::ListParticipants { room }
            | AdminOp::ListHeld { room }
            | AdminOp::RemoveParticipant { room, .. }
            | AdminOp::UpdateParticipant { room, .. }
            | AdminOp::MuteTrack { room, .. }
            | AdminOp::UpdateRoomMetadata { room, .. }
            | AdminOp::SendData { room, .. }
            | AdminOp::UpdateSubscriptions { room, .. }
            | AdminOp::SetRecording { room, .. }
            | AdminOp::RelayFrom { room, .. }
            | AdminOp::EnsureRelay { room, .. }
            | AdminOp::Migrate { room, .. }
            | AdminOp::PresentElsewhere { room, .. }
            | AdminOp::StopRelay { room } => Some(room),
            AdminOp::ListRooms { .. } | AdminOp::AskToLeave | AdminOp::Drain => None,
        }
    }
}

/// What an administrative operation answers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AdminReply {
    /// A room.
    Room(Box<lk::Room>),
    /// Rooms.
    Rooms(Vec<lk::Room>),
    /// A participant.
    Participant(Box<lk::ParticipantInfo>),
    /// Participants.
    Participants(Vec<lk::ParticipantInfo>),
    /// A track.
    Track(Box<lk::TrackInfo>),
    /// A number of sessions affected.
    Count(usize),
    /// Done.
    Done,
}

/// Changes to a participant (LiveKit `UpdateParticipantRequest`): empty strings leave the
/// name and metadata unchanged; an attribute with an empty value is removed.
#[derive(Debug, Clone, Default)]
pub struct ParticipantUpdate {
    /// New display name, if not empty.
    pub name: String,
    /// New metadata, if not empty.
    pub metadata: String,
    /// Attributes to set (or remove, with an empty value).
    pub attributes: HashMap<String, String>,
    /// New permissions, effective at once.
    pub permission: Option<lk::ParticipantPermission>,
}

/// A server-originated data message (LiveKit `SendDataRequest`).
#[derive(Debug, Clone, Default)]
pub struct SendData {
    /// Payload.
    pub payload: Vec<u8>,
    /// Reliable (`_reliable` channel) or lossy.
    pub reliable: bool,
    /// Only these participant sids (with `destination_identities`: either matches).
    pub destination_sids: Vec<String>,
    /// Only these identities; both empty: everyone.
    pub destination_identities: Vec<String>,
    /// Topic.
    pub topic: Option<String>,
    /// Nonce.
    pub nonce: Vec<u8>,
    /// The participant the server sends this on behalf of (its identity and, when connected,
    /// sid are stamped on the packet); `None`: from the server itself.
    pub sender_identity: Option<String>,
}

impl Server {
    /// Run an administrative operation.
    pub fn handle_admin(&mut self, now: Instant, op: AdminOp) -> Result<AdminReply, ServiceError> {
        self.advance(now);
        match op {
            AdminOp::CreateRoom {
                name,
                limits,
                metadata,
            } => {
                if !self.rooms.contains_key(&name) {
                    self.ensure_room_with(&name, limits, metadata);
                }
                let r = self
                    .rooms
                    .get(&name)
                    .ok_or(ServiceError::RoomNotFound(name))?;
                Ok(AdminReply::Room(Box::new(r.info())))
            }
            AdminOp::ListRooms { names } => {
                let mut rooms: Vec<lk::Room> = self
                    .rooms
                    .values()
                    .filter(|r| names.is_empty() || names.contains(&r.name))
                    .map(Room::info)
                    .collect();
                rooms.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(AdminReply::Rooms(rooms))
            }
            AdminOp::DeleteRoom { room } => {
                if !self.rooms.contains_key(&room) {
                    return Err(ServiceError::RoomNotFound(room));
                }
                for id in self.room_sessions(&room) {
                    self.end_session(
                        id,
                        "room deleted",
                        Leave::Disconnect(lk::DisconnectReason::RoomDeleted),
                    );
                }
                self.end_relay(&room, "room deleted");
                self.set_recording(&room, false);
                self.close_room(&room);
                Ok(AdminReply::Done)
            }
            AdminOp::ListParticipants { room } => self
                .rooms
                .get(&room)
                .map(|r| {
                    AdminReply::Participants(
                        r.participants
                            .values()
                            .filter(|p| !p.is_relay())
                            .map(Participant::info)
                            .collect(),
                    )
                })
                .ok_or(ServiceError::RoomNotFound(room)),
            AdminOp::ListHeld { room } => {
                let r = self
                    .rooms
                    .get(&room)
                    .ok_or_else(|| ServiceError::RoomNotFound(room.clone()))?;
                Ok(AdminReply::Participants(
                    r.participants
                        .values()
                        .filter(|p| !p.is_relay() && !self.is_mirror(&room, &p.sid))
                        .map(Participant::info)
                        .collect(),
                ))
            }
            AdminOp::RemoveParticipant { room, identity } => {
                let id = self.session_of(&room, &identity)?;
                self.end_session(
                    id,
                    "removed",
                    Leave::Disconnect(lk::DisconnectReason::ParticipantRemoved),
                );
                Ok(AdminReply::Done)
            }
            AdminOp::UpdateParticipant {
                room,
                identity,
                update,
            } => self.admin_update_participant(&room, &identity, *update),
            AdminOp::MuteTrack {
                room,
                identity,
                track_sid,
                muted,
            } => self
                .force_mute(&room, &identity, &track_sid, muted)
                .map(|t| AdminReply::Track(Box::new(t))),
            AdminOp::UpdateRoomMetadata { room, metadata } => {
                let r = self
                    .rooms
                    .get_mut(&room)
                    .ok_or_else(|| ServiceError::RoomNotFound(room.clone()))?;
                r.metadata = metadata;
                let info = r.info();
                self.send_room_update(&room);
                Ok(AdminReply::Room(Box::new(info)))
            }
            AdminOp::SendData { room, data } => {
                self.admin_send_data(&room, *data)?;
                Ok(AdminReply::Done)
            }
            AdminOp::UpdateSubscriptions {
                room,
                identity,
                track_sids,
                subscribe,
            } => {
                let id = self.session_of(&room, &identity)?;
                let update = lk::UpdateSubscription {
                    track_sids,
                    subscribe,
                    participant_tracks: vec![],
                };
                self.update_subscription(id, update);
                Ok(AdminReply::Done)
            }
            AdminOp::SetRecording { room, recording } => {
                let open = self.set_recording(&room, recording);
                Ok(AdminReply::Count(usize::from(open)))
            }
            AdminOp::RelayFrom { room, origin } => {
                self.relay_from(&room, origin)?;
                Ok(AdminReply::Done)
            }
            AdminOp::EnsureRelay { room, origin } => {
                let started = self.ensure_relay(&room, origin)?;
                Ok(AdminReply::Count(usize::from(started)))
            }
            AdminOp::StopRelay { room } => {
                if !self.relayed_rooms().any(|r| r == room) {
                    return Err(ServiceError::RoomNotFound(room));
                }
                self.end_relay(&room, "stopped");
                Ok(AdminReply::Done)
            }
            AdminOp::Migrate { room, limit } => Ok(AdminReply::Count(self.migrate(&room, limit))),
            AdminOp::PresentElsewhere { room, participants } => Ok(AdminReply::Count(usize::from(
                self.present_elsewhere(&room, participants),
            ))),
            AdminOp::AskToLeave => Ok(AdminReply::Count(self.ask_to_leave())),
            AdminOp::Drain => Ok(AdminReply::Count(self.drain())),
        }
    }

    fn ensure_room_with(&mut self, name: &str, limits: RoomLimits, metadata: String) {
        let sid = self.new_sid("RM_");
        let mut room = Room::new(sid, name.to_owned(), limits, self.now_ms());
        room.metadata = metadata;
        room.recording = self.is_recorded(name);
        self.rooms.insert(name.to_owned(), room);
        self.room_started(name);
    }

    /// The session of `identity` in `room`.
    fn session_of(&self, room: &str, identity: &str) -> Result<SessionId, ServiceError> {
        let r = self
            .rooms
            .get(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.to_owned()))?;
        r.by_identity(identity)
            .and_then(|p| self.by_participant.get(&p.sid).copied())
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.to_owned()))
    }

    fn admin_update_participant(
        &mut self,
        room: &str,
        identity: &str,
        update: ParticipantUpdate,
    ) -> Result<AdminReply, ServiceError> {
        let r = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.to_owned()))?;
        let psid = r
            .by_identity(identity)
            .map(|p| p.sid.clone())
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.to_owned()))?;
        if self.is_mirror(room, &psid) {
            // The origin holds it (and sends its changes back over the link).
            return Err(ServiceError::ParticipantNotFound(identity.to_owned()));
        }
        let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.participants.get_mut(&psid))
        else {
            return Err(ServiceError::ParticipantNotFound(identity.to_owned()));
        };
        p.apply_update(update.name, update.metadata, update.attributes);
        let info = match update.permission {
            // Broadcasts the new snapshot, and publishes or unpublishes as needed.
            Some(permission) => self.update_permission(room, identity, permission)?,
            None => {
                let info = p.info();
                self.broadcast_participant(room, &psid);
                info
            }
        };
        Ok(AdminReply::Participant(Box::new(info)))
    }

    /// Replace a participant's permissions on the live session (LiveKit `UpdateParticipant`).
    /// Revoking `can_publish` unpublishes its tracks at once.
    fn update_permission(
        &mut self,
        room: &str,
        identity: &str,
        permission: lk::ParticipantPermission,
    ) -> Result<lk::ParticipantInfo, ServiceError> {
        let r = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let psid = r
            .by_identity(identity)
            .map(|p| p.sid.clone())
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))?;
        let before = Visibility::of(r, &psid);
        let Some(p) = r.participants.get_mut(&psid) else {
            return Err(ServiceError::ParticipantNotFound(identity.into()));
        };
        let could_publish = p.can_publish();
        p.permission = permission;
        p.touch();
        let can_publish = p.can_publish();
        r.reindex(&psid);
        let session = self.by_participant.get(&psid).copied();
        if let Some(session) =
            session.filter(|_| !could_publish && can_publish && self.relays.contains_key(room))
        {
            // This node is an edge of the room: it relays one way, from the origin, so whoever
            // may speak speaks there. The client is told to leave; the token it asks for next
            // names the origin (the control plane places whoever may publish there).
            let info = r
                .participants
                .get(&psid)
                .map(Participant::info)
                .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))?;
            self.end_session(
                session,
                "may publish: moves to the origin",
                Leave::Disconnect(lk::DisconnectReason::Migration),
            );
            return Ok(info);
        }
        if could_publish != can_publish {
            r.dirty = true;
            let publisher = self
                .by_participant
                .get(&psid)
                .and_then(|id| self.sessions.get(id))
                .and_then(|s| s.publisher);
            if let Some(peer) = publisher {
                let publish = if can_publish {
                    Publish::Allow
                } else {
                    Publish::Deny
                };
                // Revoking unpublishes in the engine; its TrackUnpublished events then reach
                // the publisher as `track_unpublished` and everyone else as an update.
                self.engine(EngineCommand::SetPublish { peer, publish });
            }
        }
        self.broadcast_participant(room, &psid);
        self.visibility_changed(room, &psid, &before);
        self.rooms
            .get(room)
            .and_then(|r| r.participants.get(&psid))
            .map(Participant::info)
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))
    }

    fn force_mute(
        &mut self,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<lk::TrackInfo, ServiceError> {
        let r = self
            .rooms
            .get(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let p = r
            .by_identity(identity)
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))?;
        let psid = p.sid.clone();
        if self.is_mirror(room, &psid) {
            // The origin holds the track: muting its relayed copy here would outlive the
            // origin's unmute. The origin's mute reaches this node in its snapshots.
            return Err(ServiceError::ParticipantNotFound(identity.into()));
        }
        let info = self
            .set_muted(room, &psid, track_sid, muted)
            .ok_or_else(|| ServiceError::TrackNotFound(track_sid.into()))?;
        // Tell the publisher's client, which mutes its microphone and echoes the state.
        if let Some(&session) = self.by_participant.get(&psid) {
            let m = lk::MuteTrackRequest {
                sid: track_sid.into(),
                muted,
            };
            self.send(session, signal_response::Message::Mute(m));
        }
        Ok(info)
    }

    fn admin_send_data(&mut self, room: &str, data: SendData) -> Result<(), ServiceError> {
        let r = self
            .rooms
            .get(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.to_owned()))?;
        let mut destinations = data.destination_identities.clone();
        destinations.extend(
            data.destination_sids
                .iter()
                .filter_map(|sid| r.participants.get(sid))
                .map(|p| p.identity.clone()),
        );
        if destinations.is_empty()
            && !(data.destination_sids.is_empty() && data.destination_identities.is_empty())
        {
            // Addressed to nobody present.
            return Ok(());
        }
        let kind = if data.reliable {
            lk::data_packet::Kind::Reliable
        } else {
            lk::data_packet::Kind::Lossy
        };
        #[allow(deprecated)]
        let packet = lk::DataPacket {
            kind: kind as i32,
            destination_identities: data.destination_identities.clone(),
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload: data.payload,
                destination_sids: data.destination_sids,
                destination_identities: data.destination_identities,
                topic: data.topic,
                nonce: data.nonce,
                ..Default::default()
            })),
            ..Default::default()
        };
        let (participant_sid, participant_identity) = match data.sender_identity {
            Some(identity) => (
                r.by_identity(&identity)
                    .map(|p| p.sid.clone())
                    .unwrap_or_default(),
                identity,
            ),
            None => (String::new(), String::new()),
        };
        #[allow(deprecated)]
        let packet = lk::DataPacket {
            participant_sid: participant_sid.clone(),
            participant_identity: participant_identity.clone(),
            value: match packet.value {
                Some(lk::data_packet::Value::User(user)) => {
                    Some(lk::data_packet::Value::User(lk::UserPacket {
                        participant_sid,
                        participant_identity,
                        ..user
                    }))
                }
                other => other,
            },
            ..packet
        };
        let label = if data.reliable { "_reliable" } else { "_lossy" };
        // Every node of the room is asked to send it (the control bus, the RoomService's
        // forwarding), so it does not also go over the relay links.
        let bytes = packet.encode_to_vec();
        self.forward_data(room, None, label, &destinations, bytes, ToRelays::Skip);
        Ok(())
    }

    /// Ends up to `limit` sessions of `room` with `Leave { MIGRATION, DISCONNECT }`: those
    /// that publish or may publish first, then the others, each group by join time (oldest
    /// first) then sid, so that every call moves the same ones from the same state. A
    /// LiveKit client reports `Disconnected(MIGRATION)` and does not retry the same URL by
    /// itself (a `RECONNECT` action would bring it straight back here). Once none is left,
    /// the room's relay link from its origin ends. Returns how many.
    fn migrate(&mut self, room: &str, limit: usize) -> usize {
        let Some(r) = self.rooms.get(room) else {
            return 0;
        };
        let mut chosen: Vec<(bool, i64, String, SessionId)> = r
            .participants
            .values()
            .filter(|p| !p.is_relay())
            .filter_map(|p| {
                let session = *self.by_participant.get(&p.sid)?;
                let publishes = p.can_publish() || !p.tracks.is_empty();
                Some((!publishes, p.joined_at_ms, p.sid.clone(), session))
            })
            .collect();
        chosen.sort();
        chosen.truncate(limit);
        for (_, _, _, session) in &chosen {
            self.end_session(
                *session,
                "moved to another node",
                Leave::Disconnect(lk::DisconnectReason::Migration),
            );
        }
        // Nobody of the room left here to hear it: this node's relay link for it ends (other
        // nodes' links to this one stay until they re-link elsewhere).
        let members_left = self.rooms.get(room).is_some_and(|r| {
            r.participants
                .values()
                .any(|p| !p.is_relay() && self.by_participant.contains_key(&p.sid))
        });
        if !members_left {
            self.end_relay(room, "its members moved to another node");
        }
        chosen.len()
    }

    /// Sends `Leave { reason: SERVER_SHUTDOWN, action: DISCONNECT }` to every client not told
    /// yet and leaves its session open, so that the client closes it itself and its room
    /// empties in order. Returns how many clients were told now.
    fn ask_to_leave(&mut self) -> usize {
        let mut told: Vec<SessionId> = self
            .sessions
            .iter_mut()
            .filter(|(_, s)| !s.asked_to_leave)
            .map(|(id, s)| {
                s.asked_to_leave = true;
                *id
            })
            .collect();
        told.sort_unstable();
        // Held sessions cannot be told and cannot resume (joins are refused while draining):
        // they end now.
        let (held, told): (Vec<SessionId>, Vec<SessionId>) =
            told.into_iter().partition(|s| self.is_held(*s));
        for &session in &held {
            self.end_session(
                session,
                "server shutting down",
                Leave::Expire(lk::DisconnectReason::ServerShutdown),
            );
        }
        for &session in &told {
            let leave = lk::LeaveRequest {
                can_reconnect: false,
                reason: lk::DisconnectReason::ServerShutdown as i32,
                action: lk::leave_request::Action::Disconnect as i32,
                ..Default::default()
            };
            self.send(session, signal_response::Message::Leave(leave));
        }
        told.len() + held.len()
    }

    /// Ends every session at once; returns how many.
    fn drain(&mut self) -> usize {
        let mut sessions: Vec<SessionId> = self.sessions.keys().copied().collect();
        sessions.sort_unstable();
        for &session in &sessions {
            self.end_session(
                session,
                "server shutting down",
                Leave::Disconnect(lk::DisconnectReason::ServerShutdown),
            );
        }
        let mut relayed: Vec<String> = self.relayed_rooms().map(str::to_owned).collect();
        relayed.sort_unstable();
        for room in relayed {
            self.end_relay(&room, "server shutting down");
        }
        sessions.len()
    }
}
