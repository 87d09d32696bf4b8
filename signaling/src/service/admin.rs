//! Administrative calls on rooms and participants: what the Twirp `RoomService`
//! ([`crate::twirp`]) and the control plane use. Each call is one message to the service task,
//! so it takes effect on live sessions at once.

use std::collections::HashMap;

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use prost::Message as _;
use tokio::sync::oneshot;

use super::{Leave, Msg, Service, ServiceError, SessionId, Signaling, now_ms, response};
use crate::room::{Room, RoomLimits};

/// An administrative operation, run inside the service task.
pub(super) enum AdminOp {
    CreateRoom {
        name: String,
        limits: RoomLimits,
        metadata: String,
    },
    ListRooms {
        names: Vec<String>,
    },
    DeleteRoom {
        room: String,
    },
    RemoveParticipant {
        room: String,
        identity: String,
    },
    UpdateParticipant {
        room: String,
        identity: String,
        update: ParticipantUpdate,
    },
    UpdateRoomMetadata {
        room: String,
        metadata: String,
    },
    SendData {
        room: String,
        data: Box<SendData>,
    },
    UpdateSubscriptions {
        room: String,
        identity: String,
        track_sids: Vec<String>,
        subscribe: bool,
    },
}

/// What an administrative operation answers.
pub(super) enum AdminReply {
    Room(Box<lk::Room>),
    Rooms(Vec<lk::Room>),
    Participant(Box<lk::ParticipantInfo>),
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
}

impl Signaling {
    async fn admin(&self, op: AdminOp) -> Result<AdminReply, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Admin { op, reply })
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
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
            _ => Err(ServiceError::Stopped),
        }
    }

    /// The open rooms, all or only those named.
    pub async fn list_rooms(&self, names: &[String]) -> Result<Vec<lk::Room>, ServiceError> {
        let op = AdminOp::ListRooms {
            names: names.to_vec(),
        };
        match self.admin(op).await? {
            AdminReply::Rooms(r) => Ok(r),
            _ => Err(ServiceError::Stopped),
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
            update,
        };
        match self.admin(op).await? {
            AdminReply::Participant(p) => Ok(*p),
            _ => Err(ServiceError::Stopped),
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
            _ => Err(ServiceError::Stopped),
        }
    }

    /// Send data to a room's participants over their subscriber data channels.
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
}

impl Service {
    pub(super) async fn handle_admin(&mut self, op: AdminOp) -> Result<AdminReply, ServiceError> {
        match op {
            AdminOp::CreateRoom {
                name,
                limits,
                metadata,
            } => {
                if !self.rooms.contains_key(&name) {
                    let sid = self.new_sid("RM_");
                    let mut room = Room::new(sid, name.clone(), limits, now_ms());
                    room.metadata = metadata;
                    self.rooms.insert(name.clone(), room);
                    self.room_started(&name);
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
                    )
                    .await;
                }
                self.close_room(&room);
                Ok(AdminReply::Done)
            }
            AdminOp::RemoveParticipant { room, identity } => {
                let id = self.session_of(&room, &identity)?;
                self.end_session(
                    id,
                    "removed",
                    Leave::Disconnect(lk::DisconnectReason::ParticipantRemoved),
                )
                .await;
                Ok(AdminReply::Done)
            }
            AdminOp::UpdateParticipant {
                room,
                identity,
                update,
            } => {
                self.admin_update_participant(&room, &identity, update)
                    .await
            }
            AdminOp::UpdateRoomMetadata { room, metadata } => {
                let r = self
                    .rooms
                    .get_mut(&room)
                    .ok_or_else(|| ServiceError::RoomNotFound(room.clone()))?;
                r.metadata = metadata;
                let info = r.info();
                let msg = signal_response::Message::RoomUpdate(lk::RoomUpdate {
                    room: Some(info.clone()),
                });
                for id in self.room_sessions(&room) {
                    if let Some(s) = self.sessions.get(&id) {
                        let _ = s.out.try_send(response(msg.clone()));
                    }
                }
                Ok(AdminReply::Room(Box::new(info)))
            }
            AdminOp::SendData { room, data } => {
                self.admin_send_data(&room, *data).await?;
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
                self.update_subscription(id, update).await;
                Ok(AdminReply::Done)
            }
        }
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

    async fn admin_update_participant(
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
        let p = r
            .participants
            .get_mut(&psid)
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.to_owned()))?;
        p.apply_update(update.name, update.metadata, update.attributes);
        let info = match update.permission {
            // Broadcasts the new snapshot, and publishes or unpublishes as needed.
            Some(permission) => self.update_permission(room, identity, permission).await?,
            None => {
                let info = p.info();
                self.broadcast_participant(room, &psid);
                info
            }
        };
        Ok(AdminReply::Participant(Box::new(info)))
    }

    async fn admin_send_data(&mut self, room: &str, data: SendData) -> Result<(), ServiceError> {
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
        let label = if data.reliable { "_reliable" } else { "_lossy" };
        self.forward_data(room, None, label, &destinations, packet.encode_to_vec())
            .await;
        Ok(())
    }

    /// Remove a room that has no sessions left.
    pub(super) fn close_room(&mut self, room: &str) {
        if let Some(r) = self.rooms.remove(room) {
            tracing::info!(room = %room, "room closed");
            self.webhook("room_finished", Some(r.info()), None, None);
        }
    }
}
