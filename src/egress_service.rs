//! LiveKit's `Egress` API on this node: signaling's Twirp service
//! ([`stoa_signaling::egress`]) backed by the node's recorder and its control plane.
//!
//! One truth: a room's recording (a room composite) is decided by the control plane, whether
//! a host asked through `/api` or a server through `StartRoomCompositeEgress`. So the Egress
//! API starts and stops it with the control plane's `Record` command (as the system), which
//! sets the room's `recording` and reaches the recorder through [`crate::media_plane`]; the
//! room's view, its participants (`Room.active_recording`) and `ListEgress` then all say the
//! same, and stopping through either path ends it. Rooms the control plane does not know
//! (made through the RoomService API) are recorded directly. Egress ids, states and files are
//! the recorder's ([`Recordings::list`]). Track egresses are the recorder's alone: they tap
//! the room like a recording (participants see `active_recording`), and the room's
//! `recording` stays the room composite's.

use livekit_protocol as lk;
use stoa_control::Control;
use stoa_control::model::RoomId;
use stoa_control::room::{Actor, Command};
use stoa_signaling::egress::{EgressBackend, EgressFilter, EgressFuture, EgressRequest};
use stoa_signaling::service::{ServiceError, Signaling};
use stoa_signaling::twirp::TwirpError;

use crate::media_plane::untap_if_idle;
use crate::recording::{EgressQuery, EgressRefused, Recordings};

/// The `Egress` API of this node.
#[derive(Debug, Clone)]
pub struct LocalEgress {
    /// The signaling service (rooms, tracks, the tap).
    pub signaling: Signaling,
    /// The node's recorder.
    pub recordings: Recordings,
    /// The control plane, which decides whether its rooms are recorded.
    pub control: Control,
}

fn refused(e: EgressRefused) -> TwirpError {
    match e {
        EgressRefused::NotFound(_) => TwirpError::new("not_found", e.to_string()),
        EgressRefused::Ended(_) => TwirpError::new("failed_precondition", e.to_string()),
        EgressRefused::Unavailable(_) => TwirpError::new("unavailable", e.to_string()),
    }
}

fn service(e: ServiceError) -> TwirpError {
    TwirpError::from(e)
}

/// What the control plane says about recording `room`: `None` when it does not know the room.
async fn control_record(control: &Control, room: &str, on: bool) -> Result<Option<()>, TwirpError> {
    let Ok(id) = RoomId::parse(room) else {
        return Ok(None);
    };
    match control.act(&Actor::System, &id, Command::Record(on)).await {
        Ok(_) => Ok(Some(())),
        Err(e) if e.status == 404 => Ok(None),
        Err(e) if e.status == 409 => Err(TwirpError::new("failed_precondition", e.message)),
        Err(e) => Err(TwirpError::new("internal", e.message)),
    }
}

/// How long a call waits for the recorder to carry out what the control plane decided.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);
/// How often it looks meanwhile.
const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Starting or recording.
fn running(info: &lk::EgressInfo) -> bool {
    [
        lk::EgressStatus::EgressStarting as i32,
        lk::EgressStatus::EgressActive as i32,
        lk::EgressStatus::EgressEnding as i32,
    ]
    .contains(&info.status)
}

/// Now as Unix nanoseconds (as `EgressInfo.started_at`).
fn unix_ns() -> i64 {
    // The shell reads the clock; egress times are wall-clock times.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl LocalEgress {
    async fn room_sid(&self, room: &str) -> Result<String, TwirpError> {
        self.signaling
            .list_rooms(&[room.to_owned()])
            .await
            .map_err(service)?
            .pop()
            .map(|r| r.sid)
            .ok_or_else(|| TwirpError::new("not_found", format!("room {room} does not exist")))
    }

    async fn list_of(&self, query: EgressQuery) -> Result<Vec<lk::EgressInfo>, TwirpError> {
        self.recordings.list(query).await.map_err(refused)
    }

    /// The room's recording once the recorder has it: the running room composite, or one
    /// started since `since` (Unix ns) that has already failed. The control plane's commands
    /// reach the recorder through its bus, so this waits for it (bounded).
    async fn composite_of(&self, room: &str, since: i64) -> Result<lk::EgressInfo, TwirpError> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let all = self
                .list_of(EgressQuery {
                    room: Some(room.to_owned()),
                    ..EgressQuery::default()
                })
                .await?;
            let found = all.into_iter().rev().find(|i| {
                matches!(i.request, Some(lk::egress_info::Request::RoomComposite(_)))
                    && (running(i) || i.started_at >= since)
            });
            if let Some(info) = found {
                return Ok(info);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TwirpError::new(
                    "unavailable",
                    "the recording did not start in time",
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Egress `id` once it has ended (bounded wait, as for [`Self::composite_of`]).
    async fn ended(&self, id: &str) -> Result<lk::EgressInfo, TwirpError> {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let info = self
                .list_of(EgressQuery {
                    egress_id: Some(id.to_owned()),
                    ..EgressQuery::default()
                })
                .await?
                .pop()
                .ok_or_else(|| TwirpError::new("not_found", format!("no egress {id}")))?;
            if !running(&info) || tokio::time::Instant::now() >= deadline {
                return Ok(info);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn start_room_composite(
        &self,
        room: &str,
        filepath: &str,
    ) -> Result<lk::EgressInfo, TwirpError> {
        // Only the node a room's media lives on records it: this one would wait in vain.
        if let Ok(id) = RoomId::parse(room)
            && let Some(node) = self.control.recorded_elsewhere(&id).await
        {
            return Err(TwirpError::new(
                "failed_precondition",
                format!(
                    "room {room} is recorded by the node its media lives on, {node}: call livekit.Egress there"
                ),
            ));
        }
        let sid = self.room_sid(room).await?;
        let since = unix_ns();
        // The recording the control plane starts (or this) writes its mix there.
        self.recordings.place_next(room, filepath);
        let started = self.start_composite(room, &sid, since).await;
        // A recording running already took none of it.
        self.recordings.place_next(room, "");
        started
    }

    async fn start_composite(
        &self,
        room: &str,
        sid: &str,
        since: i64,
    ) -> Result<lk::EgressInfo, TwirpError> {
        if control_record(&self.control, room, true).await?.is_none() {
            self.recordings.record_in(room, sid);
            self.signaling
                .set_recording(room, true)
                .await
                .map_err(service)?;
        }
        self.composite_of(room, since).await
    }

    async fn start_track(
        &self,
        room: &str,
        track: &str,
        request: lk::TrackEgressRequest,
    ) -> Result<lk::EgressInfo, TwirpError> {
        let sid = self.room_sid(room).await?;
        let participants = self
            .signaling
            .list_participants(room)
            .await
            .map_err(service)?;
        let info = participants
            .iter()
            .flat_map(|p| p.tracks.iter())
            .find(|t| t.sid == track)
            .ok_or_else(|| {
                TwirpError::new(
                    "not_found",
                    format!("track {track} is not published in {room}"),
                )
            })?;
        if info.r#type != lk::TrackType::Audio as i32 {
            return Err(TwirpError::new(
                "invalid_argument",
                format!("track {track} is not audio: only audio tracks are recorded"),
            ));
        }
        let started = self
            .recordings
            .start_track(room, &sid, track, request)
            .await
            .map_err(refused)?;
        // Tap the room's tracks (participants are told it is recorded).
        self.signaling
            .set_recording(room, true)
            .await
            .map_err(service)?;
        Ok(started)
    }

    async fn stop(&self, egress_id: &str) -> Result<lk::EgressInfo, TwirpError> {
        let found = self
            .list_of(EgressQuery {
                egress_id: Some(egress_id.to_owned()),
                ..EgressQuery::default()
            })
            .await?
            .pop()
            .ok_or_else(|| TwirpError::new("not_found", format!("no egress {egress_id}")))?;
        if !running(&found) {
            return Err(TwirpError::new(
                "failed_precondition",
                format!("egress {egress_id} has ended already"),
            ));
        }
        let room = found.room_name.clone();
        let composite = matches!(
            found.request,
            Some(lk::egress_info::Request::RoomComposite(_))
        );
        if composite && control_record(&self.control, &room, false).await?.is_some() {
            // The control plane stops it (and untaps the room if nothing else records it).
            // The reply is the egress as the stop found it, ending (as LiveKit answers); the
            // recorder said so in `egress_updated` before `egress_ended`.
            let info = self.ended(egress_id).await?;
            if !running(&info) {
                return Ok(lk::EgressInfo {
                    status: lk::EgressStatus::EgressEnding as i32,
                    updated_at: info.updated_at.max(found.updated_at),
                    ..found
                });
            }
            // Still running: not the one the control plane knew of; stopped directly.
        }
        let info = self
            .recordings
            .stop_egress(egress_id)
            .await
            .map_err(refused)?;
        if let Err(e) = untap_if_idle(&self.signaling, &self.recordings, &room).await {
            tracing::debug!(room = %room, error = %e, "room not untapped");
        }
        Ok(info)
    }
}

impl EgressBackend for LocalEgress {
    fn start(&self, request: EgressRequest) -> EgressFuture<'_, lk::EgressInfo> {
        Box::pin(async move {
            match request {
                EgressRequest::RoomComposite { room, request } => {
                    let filepath = stoa_signaling::egress::composite_filepath(&request);
                    self.start_room_composite(&room, filepath).await
                }
                EgressRequest::Track {
                    room,
                    track,
                    request,
                } => self.start_track(&room, &track, *request).await,
            }
        })
    }

    fn stop<'a>(&'a self, egress_id: &'a str) -> EgressFuture<'a, lk::EgressInfo> {
        Box::pin(self.stop(egress_id))
    }

    fn list(&self, filter: EgressFilter) -> EgressFuture<'_, Vec<lk::EgressInfo>> {
        Box::pin(async move {
            self.list_of(EgressQuery {
                room: filter.room,
                egress_id: filter.egress_id,
                active: filter.active,
            })
            .await
        })
    }
}
