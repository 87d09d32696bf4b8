//! The two planes joined in one process: the control plane drives this process's signaling
//! service through [`MediaPlane`], asks nothing of it but what LiveKit's `RoomService` offers,
//! and decides who enters its rooms through the signaling [`Admission`] hook; signaling's
//! participant events come back as presence.

use std::collections::HashMap;
use std::sync::Arc;

use livekit_protocol as lk;
use stoa_control::Control;
use stoa_control::media::{MediaCommand, MediaError, MediaPlane};
use stoa_control::service::MediaEvent;
use stoa_signaling::room::RoomLimits;
use stoa_signaling::service::{ParticipantUpdate, SendData, ServiceError, Signaling};
use stoa_signaling::ws::{Admission, AdmissionFuture, Admitted};
use tokio::sync::mpsc;

use crate::recording::{EgressQuery, RecordingFailure, Recordings};

/// Events queued from signaling to the control plane before they are dropped.
pub const PRESENCE_QUEUE: usize = 4096;

/// This process's signaling service as the control plane's media plane.
#[derive(Debug, Clone)]
pub struct LocalMedia {
    /// The signaling service.
    pub signaling: Signaling,
    /// Limits of media rooms created for control-plane rooms.
    pub limits: RoomLimits,
    /// The node's recorder.
    pub recordings: crate::recording::Recordings,
}

fn media_err(e: ServiceError) -> MediaError {
    match e {
        ServiceError::RoomNotFound(_)
        | ServiceError::ParticipantNotFound(_)
        | ServiceError::TrackNotFound(_) => MediaError::NotFound,
        e => MediaError::Failed(e.to_string()),
    }
}

#[async_trait::async_trait]
impl MediaPlane for LocalMedia {
    async fn apply(&self, command: &MediaCommand) -> Result<(), MediaError> {
        let s = &self.signaling;
        match command {
            MediaCommand::CreateRoom {
                room,
                max_participants,
                recording,
            } => {
                let limits = RoomLimits {
                    max_participants: *max_participants,
                    ..self.limits
                };
                let created = s
                    .create_room(room.as_str(), limits)
                    .await
                    .map_err(media_err)?;
                // A recorded room whose media room is new (the node restarted, or it closed
                // the empty room) is recorded again: the recording a crash cut short moments
                // ago goes on, else a new egress starts.
                if *recording && !created.active_recording {
                    self.recordings.record_again(room.as_str(), &created.sid);
                    s.set_recording(room.as_str(), true)
                        .await
                        .map_err(media_err)?;
                }
                Ok(())
            }
            MediaCommand::DeleteRoom { room } => {
                // The recording ends with the room (its files are finished).
                self.recordings.stop(room.as_str());
                s.delete_room(room.as_str()).await.map_err(media_err)
            }
            MediaCommand::Record {
                room,
                recording: true,
            } => {
                let sid = s
                    .list_rooms(&[room.to_string()])
                    .await
                    .map_err(media_err)?
                    .pop()
                    .map(|r| r.sid)
                    .ok_or(MediaError::NotFound)?;
                // The egress exists before signaling names the room's tracks to it.
                self.recordings.record_in(room.as_str(), &sid);
                s.set_recording(room.as_str(), true)
                    .await
                    .map(|_| ())
                    .map_err(media_err)
            }
            MediaCommand::Record {
                room,
                recording: false,
            } => {
                self.recordings.stop(room.as_str());
                untap_if_idle(s, &self.recordings, room.as_str())
                    .await
                    .map_err(media_err)
            }
            MediaCommand::Update {
                room,
                user,
                can_publish,
                can_publish_data,
                attributes,
            } => {
                let current = s
                    .get_participant(room.as_str(), user.as_str())
                    .await
                    .map_err(media_err)?;
                let mut permission = current.permission.unwrap_or_default();
                permission.can_publish = *can_publish;
                permission.can_publish_data = *can_publish_data;
                let update = ParticipantUpdate {
                    attributes: attributes
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect::<HashMap<_, _>>(),
                    permission: Some(permission),
                    ..Default::default()
                };
                s.update_participant(room.as_str(), user.as_str(), update)
                    .await
                    .map(|_| ())
                    .map_err(media_err)
            }
            MediaCommand::Mute { room, user } => {
                let p = s
                    .get_participant(room.as_str(), user.as_str())
                    .await
                    .map_err(media_err)?;
                for track in p.tracks.iter().filter(|t| !t.muted) {
                    s.mute_published_track(room.as_str(), user.as_str(), &track.sid, true)
                        .await
                        .map_err(media_err)?;
                }
                Ok(())
            }
            MediaCommand::Remove { room, user } => s
                .remove_participant(room.as_str(), user.as_str())
                .await
                .map_err(media_err),
            MediaCommand::RoomMetadata { room, metadata } => s
                .update_room_metadata(room.as_str(), metadata)
                .await
                .map(|_| ())
                .map_err(media_err),
            MediaCommand::Reaction { room, user, emoji } => {
                let payload = serde_json::json!({ "user": user, "emoji": emoji });
                let data = SendData {
                    payload: payload.to_string().into_bytes(),
                    reliable: true,
                    topic: Some(
                        stoa_signaling::proto::RESERVED_TOPIC_PREFIX.to_owned() + "reaction",
                    ),
                    // The server vouches for the sender: clients read it from the packet.
                    sender_identity: Some(user.to_string()),
                    ..Default::default()
                };
                s.send_data(room.as_str(), data).await.map_err(media_err)
            }
        }
    }

    async fn relay(
        &self,
        room: &stoa_control::model::RoomId,
        origin: &str,
    ) -> Result<bool, MediaError> {
        self.signaling
            .ensure_relay(room.as_str(), origin)
            .await
            .map_err(media_err)
    }

    async fn present_elsewhere(
        &self,
        room: &stoa_control::model::RoomId,
        participants: u32,
    ) -> Result<bool, MediaError> {
        self.signaling
            .present_elsewhere(room.as_str(), participants)
            .await
            .map_err(media_err)
    }

    async fn migrate(
        &self,
        room: &stoa_control::model::RoomId,
        limit: u32,
    ) -> Result<usize, MediaError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.signaling
            .migrate(room.as_str(), limit)
            .await
            .map_err(media_err)
    }
}

/// The control plane deciding who enters its rooms, with which permission.
pub struct ControlAdmission(pub Control);

impl Admission for ControlAdmission {
    fn admit<'a>(&'a self, room: &'a str, identity: &'a str) -> AdmissionFuture<'a> {
        Box::pin(async move {
            match self.0.admit(room, identity).await {
                Ok(None) => Ok(None),
                Ok(Some((can_publish, can_publish_data, attributes))) => Ok(Some(Admitted {
                    can_publish,
                    // Listeners send data only where the room allows it (reactions go through
                    // the API).
                    can_publish_data,
                    attributes: attributes.into_iter().collect(),
                })),
                Err(e) => Err(stoa_signaling::service::Refused {
                    status: e.status,
                    message: e.message,
                }),
            }
        })
    }
}

/// Most media-plane events handed to the control plane at once.
const PRESENCE_BATCH: usize = 256;

/// Feeds signaling's participant and speaker events to the control plane (presence and
/// speaking time) and speaker events to the recorder (who spoke when), in batches of whatever queued up meanwhile: the control plane applies a
/// batch with one store update per room.
pub fn spawn_presence(
    control: Control,
    recordings: crate::recording::Recordings,
    mut events: mpsc::Receiver<lk::WebhookEvent>,
) {
    tokio::spawn(async move {
        let mut queued = Vec::with_capacity(PRESENCE_BATCH);
        while events.recv_many(&mut queued, PRESENCE_BATCH).await > 0 {
            let finished: Vec<String> = queued
                .iter()
                .filter(|e| e.event == "room_finished")
                .filter_map(|e| Some(e.room.as_ref()?.name.clone()))
                .collect();
            let batch: Vec<(String, String, MediaEvent)> = queued
                .drain(..)
                .filter_map(|event| {
                    let (Some(room), Some(p)) = (&event.room, &event.participant) else {
                        return None;
                    };
                    let kind = match event.event.as_str() {
                        "participant_joined" => MediaEvent::Connected,
                        // A client's own LeaveRequest frees its seat at once; a lost
                        // connection (SIGNAL_CLOSE, timeouts) keeps it for the seat grace.
                        "participant_left"
                            if p.disconnect_reason
                                == lk::DisconnectReason::ClientInitiated as i32 =>
                        {
                            MediaEvent::Left
                        }
                        "participant_left" | "participant_connection_aborted" => {
                            MediaEvent::Disconnected
                        }
                        "speaking_started" => MediaEvent::SpeakingStarted,
                        "speaking_stopped" => MediaEvent::SpeakingStopped,
                        "track_muted" => MediaEvent::Muted,
                        "track_unmuted" => MediaEvent::Unmuted,
                        _ => return None,
                    };
                    if let MediaEvent::SpeakingStarted | MediaEvent::SpeakingStopped = kind {
                        let on = matches!(kind, MediaEvent::SpeakingStarted);
                        recordings.speaking(&room.name, &p.identity, on);
                    }
                    Some((room.name.clone(), p.identity.clone(), kind))
                })
                .collect();
            if !batch.is_empty() {
                control.media_events(batch).await;
            }
            for room in finished {
                control.media_room_finished(&room).await;
            }
        }
    });
}

/// Stops tapping `room`'s tracks (and telling its participants it is recorded) when no egress
/// records it any more: a track egress may outlive the room's recording, and the other way
/// round.
pub async fn untap_if_idle(
    signaling: &Signaling,
    recordings: &Recordings,
    room: &str,
) -> Result<(), ServiceError> {
    let query = EgressQuery {
        room: Some(room.to_owned()),
        active: true,
        ..EgressQuery::default()
    };
    match recordings.list(query).await {
        Ok(running) if !running.is_empty() => Ok(()),
        _ => signaling.set_recording(room, false).await.map(|_| ()),
    }
}

/// Stops, where it was decided (the control plane), the recording of each room whose
/// recording could not start or failed: the room's view and every participant then say it
/// is not recorded, the room's event stream says why (`recording` with `error`), and the
/// host may try again. A room the control plane does not know (made through the
/// RoomService API) and a failed or finished track egress only stop being tapped (when
/// nothing else records the room). The live room is not
/// otherwise touched.
pub fn spawn_recording_failures(
    control: Control,
    signaling: Signaling,
    recordings: Recordings,
    mut failures: mpsc::Receiver<RecordingFailure>,
) {
    tokio::spawn(async move {
        while let Some(failure) = failures.recv().await {
            let room = &failure.room;
            if failure.composite
                && let Ok(id) = stoa_control::model::RoomId::parse(room)
            {
                let stop = stoa_control::room::Command::RecordingFailed(failure.error.clone());
                match control
                    .act(&stoa_control::room::Actor::System, &id, stop)
                    .await
                {
                    Ok(_) => continue,
                    Err(e) if e.status == 404 => {}
                    Err(e) => {
                        tracing::warn!(room = %room, error = %e.message, "cannot mark the failed recording stopped");
                        continue;
                    }
                }
            }
            if let Err(e) = untap_if_idle(&signaling, &recordings, room).await {
                tracing::debug!(room = %room, error = %e, "room not untapped");
            }
        }
    });
}

/// Which nodes serve a room, for the RoomService API's room-wide answers: the control plane
/// knows each room's origin and edges.
pub struct ControlRoomNodes(pub Control);

impl stoa_signaling::cluster::RoomNodes for ControlRoomNodes {
    fn nodes<'a>(&'a self, room: &'a str) -> stoa_signaling::cluster::NodesFuture<'a> {
        Box::pin(self.0.room_nodes(room))
    }

    fn every_other(&self) -> stoa_signaling::cluster::NodesFuture<'_> {
        Box::pin(self.0.other_nodes())
    }
}

/// Shares the admission hook with the router.
pub fn admission(control: &Control) -> Arc<dyn Admission> {
    Arc::new(ControlAdmission(control.clone()))
}

/// The control plane's webhooks go out through the media plane's notifier: one bounded queue,
/// one signer, one set of receivers (`[webhook]`) for both planes.
#[derive(Debug)]
pub struct ControlHooks(pub stoa_signaling::webhook::Notifier);

impl stoa_control::webhook::HookSink for ControlHooks {
    fn deliver(&self, event: String, body: Vec<u8>) {
        self.0.notify_json(event, body);
    }
}
