//! Room recording as the media side sees it: which rooms are recorded, the engine tap on each
//! of their published audio tracks, and the room flag (`Room.active_recording`) that tells
//! every client, as LiveKit's SDKs read it (`room.isRecording` in livekit-client).
//!
//! The recording itself (decoding, mixing, files) is not here: the shell hands each tap
//! change ([`Output::Tap`]) to a recorder, which receives the engine's tapped packets.

use stoa_sfu::{EngineCommand, TrackId};

use super::{Output, Server};

/// A track of a recorded room started or stopped being tapped: what a recorder needs to name
/// the engine's tapped packets ([`stoa_sfu::Tapped`] carries only the engine's track id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapChange {
    /// The room.
    pub room: String,
    /// The publisher's identity.
    pub participant: String,
    /// The track's sid.
    pub track_sid: String,
    /// The engine's id of the track.
    pub track: TrackId,
    /// Tapped from now on, or no more (unpublished, the publisher left, recording stopped).
    pub tapped: bool,
}

impl Server {
    /// Record `room` (or stop): every published audio track of the room, now and later, is
    /// tapped, and the room's clients see `active_recording`. The rule outlives the media
    /// room: a room closed while empty and opened again by the next join is still recorded,
    /// until recording stops or the room is deleted. Returns whether the room exists now.
    pub(super) fn set_recording(&mut self, room: &str, recording: bool) -> bool {
        let changed = if recording {
            self.recorded.insert(room.to_owned())
        } else {
            self.recorded.remove(room)
        };
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        if !changed && r.recording == recording {
            return true;
        }
        r.recording = recording;
        let tracks: Vec<(String, String, TrackId)> = r
            .participants
            .values()
            .flat_map(|p| {
                p.tracks.values().filter_map(|t| {
                    let engine = t.engine?;
                    (t.info.r#type == livekit_protocol::TrackType::Audio as i32)
                        .then(|| (p.identity.clone(), t.info.sid.clone(), engine))
                })
            })
            .collect();
        for (participant, track_sid, track) in tracks {
            self.tap(room, participant, track_sid, track, recording);
        }
        self.send_room_update(room);
        true
    }

    /// Whether `room` is recorded (for a room being created).
    pub(super) fn is_recorded(&self, room: &str) -> bool {
        self.recorded.contains(room)
    }

    /// A track was published in `room`: tap it if the room is recorded.
    pub(super) fn tap_if_recorded(
        &mut self,
        room: &str,
        participant: &str,
        track_sid: &str,
        track: TrackId,
    ) {
        if self.rooms.get(room).is_some_and(|r| r.recording) {
            self.tap(
                room,
                participant.to_owned(),
                track_sid.to_owned(),
                track,
                true,
            );
        }
    }

    /// A track of `room` is gone: its recorder is told (the engine's tap went with it).
    pub(super) fn untap_if_recorded(
        &mut self,
        room: &str,
        participant: &str,
        track_sid: &str,
        track: TrackId,
    ) {
        if self.rooms.get(room).is_some_and(|r| r.recording) {
            self.outputs.push_back(Output::Tap(TapChange {
                room: room.to_owned(),
                participant: participant.to_owned(),
                track_sid: track_sid.to_owned(),
                track,
                tapped: false,
            }));
        }
    }

    fn tap(
        &mut self,
        room: &str,
        participant: String,
        track_sid: String,
        track: TrackId,
        tapped: bool,
    ) {
        // The recorder learns the track's name before its first packet can arrive.
        self.outputs.push_back(Output::Tap(TapChange {
            room: room.to_owned(),
            participant,
            track_sid,
            track,
            tapped,
        }));
        self.engine(EngineCommand::SetTap { track, tapped });
    }
}
