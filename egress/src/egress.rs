//! One egress: a room composite (the mix, optionally one file per speaker, the speaking
//! sidecar) or a single track, as a sans-IO state machine.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::clock::{self, Clock};
use crate::mix::{MixConfig, MixError, MixStats, RoomMixer};
use crate::ogg_opus::{OggOpusWriter, ReadError};
use crate::packet::SAMPLE_RATE;
use crate::rtp::RtpPacket;
use crate::speaking::{Activity, Entry};
use crate::track::{TrackRecorder, TrackStats};

/// What an egress records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressKind {
    /// The room's mixed audio (LiveKit's `StartRoomCompositeEgress`, audio only), with the
    /// speaking sidecar.
    RoomComposite {
        /// Whether each speaker also gets a file of their own, without transcoding.
        track_files: TrackFiles,
    },
    /// One track's packets as received (LiveKit's `StartTrackEgress`). Ends when the track is
    /// unpublished.
    Track {
        /// The track's id (LiveKit track sid).
        track: String,
    },
}

/// Whether a room composite also writes one file per speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackFiles {
    /// The mix only.
    Off,
    /// One file per participant, following their audio track across unpublish, republish and
    /// rejoin (a new track id or SSRC continues the same file).
    PerParticipant,
}

/// Settings of one egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    /// The egress's id (LiveKit `EG_…`), written into each file's comments.
    pub egress_id: String,
    /// The room's name, written into each file's comments.
    pub room: String,
    /// What to record.
    pub kind: EgressKind,
    /// Room mix settings (room composite only).
    pub mix: MixConfig,
    /// Ogg serial number of the first stream; further files take the next numbers.
    pub serial: u32,
}

/// A file an egress writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Artifact {
    /// The room mix (Ogg/Opus).
    Mix,
    /// One participant's audio as received (Ogg/Opus), room composite with track files.
    Participant(String),
    /// One track as received (Ogg/Opus), track egress.
    Track(String),
    /// Who spoke when (JSON Lines).
    Speaking,
}

/// An event of the egress's life, for webhooks and `ListEgress`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EgressEvent {
    /// Created; files opened (`egress_started`, status starting).
    Started,
    /// The first audio arrived (`egress_updated`, status active).
    Active,
    /// Stopped, finished or failed (`egress_ended`); no output follows.
    Ended(Box<EgressInfo>),
}

/// Where an egress is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressState {
    /// Created, no audio yet.
    Starting,
    /// Recording.
    Active,
    /// Ended normally; every file is complete.
    Complete,
    /// Ended on an error (a file could not be written); files are playable up to it.
    Failed,
}

impl EgressState {
    /// The value of LiveKit's `livekit.EgressStatus` for this state (`EGRESS_STARTING` 0,
    /// `EGRESS_ACTIVE` 1, `EGRESS_COMPLETE` 3, `EGRESS_FAILED` 4), for `EgressInfo.status`.
    pub fn livekit_status(self) -> i32 {
        match self {
            EgressState::Starting => 0,
            EgressState::Active => 1,
            EgressState::Complete => 3,
            EgressState::Failed => 4,
        }
    }
}

/// One file's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Which file.
    pub artifact: Artifact,
    /// Bytes handed out for it.
    pub bytes: u64,
    /// Audio written to it (zero for the sidecar).
    pub duration: Duration,
}

/// The state of an egress, for `ListEgress` and `egress_ended`.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressInfo {
    /// Its id.
    pub egress_id: String,
    /// The room it records.
    pub room: String,
    /// What it records.
    pub kind: EgressKind,
    /// Where it is.
    pub state: EgressState,
    /// Time since it started (until it ended).
    pub duration: Duration,
    /// Why it failed.
    pub error: Option<String>,
    /// Its files.
    pub files: Vec<FileInfo>,
    /// Room mix counters (room composite).
    pub mix: Option<MixStats>,
    /// Per-file counters of the as-received files.
    pub tracks: Vec<(Artifact, TrackStats)>,
}

/// An input from the media engine or the API.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Input<'a> {
    /// A received audio packet of `track`, published by `participant`.
    Packet {
        /// Publisher identity.
        participant: &'a str,
        /// Track id.
        track: &'a str,
        /// The packet.
        packet: RtpPacket<'a>,
    },
    /// `participant` published the audio track `track` (also after a rejoin).
    TrackPublished {
        /// Publisher identity.
        participant: &'a str,
        /// Track id.
        track: &'a str,
    },
    /// The track was muted.
    TrackMuted {
        /// Publisher identity.
        participant: &'a str,
        /// Track id.
        track: &'a str,
    },
    /// The track was unmuted.
    TrackUnmuted {
        /// Publisher identity.
        participant: &'a str,
        /// Track id.
        track: &'a str,
    },
    /// The track was unpublished, or its publisher left.
    TrackUnpublished {
        /// Publisher identity.
        participant: &'a str,
        /// Track id.
        track: &'a str,
    },
    /// The participant started or stopped speaking (active speaker changes).
    Speaking {
        /// Identity.
        participant: &'a str,
        /// Whether they speak now.
        speaking: bool,
    },
    /// Stop: finish every file (`StopEgress`, the room ended).
    Stop,
}

/// What the egress asks its shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Append `bytes` to the file of `artifact` (creating it on first write). Each write ends
    /// on a page or line boundary, so a file is valid after every write.
    Write {
        /// Which file.
        artifact: Artifact,
        /// What to append.
        bytes: Vec<u8>,
    },
    /// Cut the file of `artifact` to `len` bytes (before the writes that follow): a resumed
    /// egress drops what a crash left torn at the end of its files.
    Truncate {
        /// Which file.
        artifact: Artifact,
        /// Its valid length.
        len: u64,
    },
    /// Something to report.
    Event(EgressEvent),
}

/// Why an egress could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// libopus could not be set up for the mix.
    #[error(transparent)]
    Mix(#[from] MixError),
    /// The egress to resume had finished (its files are complete).
    #[error("the egress had finished: {0:?} is complete")]
    Finished(Artifact),
}

#[derive(Debug)]
struct ParticipantFile {
    recorder: TrackRecorder,
    /// The track the file follows; `None` once it was unpublished (the next one is taken).
    track: Option<String>,
}

/// One egress as a sans-IO state machine.
///
/// Run loop: feed [`handle_input`](Self::handle_input) with every input as it happens, call
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout) (about
/// every 20 ms while a mix runs), and after each of those drain
/// [`poll_output`](Self::poll_output) until `None`, appending writes to files in order. If a
/// write fails, report it with [`handle_write_error`](Self::handle_write_error): the egress
/// ends as failed. Nothing here reads a clock or touches a file.
///
/// Errors versus bugs: malformed packets, duplicates and late packets are counted in
/// [`info`](Self::info) and dropped; nothing a peer sends can make this panic.
#[derive(Debug)]
pub struct Egress {
    config: EgressConfig,
    clock: Clock,
    state: EgressState,
    ended_at: Option<Instant>,
    error: Option<String>,
    mixer: Option<RoomMixer>,
    track: Option<TrackRecorder>,
    participants: BTreeMap<String, ParticipantFile>,
    next_serial: u32,
    bytes: BTreeMap<Artifact, u64>,
    outputs: VecDeque<Output>,
    scratch: Vec<u8>,
}

impl Egress {
    /// Starts an egress at `now` (its files' time 0); their headers are ready to poll.
    pub fn new(now: Instant, config: EgressConfig) -> Result<Egress, EgressError> {
        let mut egress = Egress {
            clock: Clock::new(now),
            state: EgressState::Starting,
            ended_at: None,
            error: None,
            mixer: None,
            track: None,
            participants: BTreeMap::new(),
            next_serial: config.serial,
            bytes: BTreeMap::new(),
            outputs: VecDeque::new(),
            scratch: Vec::new(),
            config,
        };
        match egress.config.kind.clone() {
            EgressKind::RoomComposite { .. } => {
                let comments = egress.comments(&[]);
                let serial = egress.serial();
                let mut out = Vec::new();
                egress.mixer = Some(RoomMixer::new(
                    now,
                    egress.config.mix,
                    serial,
                    &comments,
                    &mut out,
                )?);
                egress.emit(Artifact::Mix, out);
                // The sidecar exists from the start, even if nobody speaks.
                egress.emit_always(Artifact::Speaking, Vec::new());
            }
            EgressKind::Track { track } => {
                let comments = egress.comments(&[format!("STOA_TRACK={track}")]);
                let serial = egress.serial();
                let mut out = Vec::new();
                egress.track = Some(TrackRecorder::new(now, serial, &comments, &mut out));
                egress.emit(Artifact::Track(track), out);
            }
        }
        egress
            .outputs
            .push_back(Output::Event(EgressEvent::Started));
        Ok(egress)
    }

    /// Continues an egress after its recorder restarted (a crash, a redeploy) at `now`,
    /// `elapsed` after the egress's original start. `files` are what it had written, as found
    /// on disk. Each Ogg/Opus file is cut to its last complete page (an [`Output::Truncate`]
    /// comes first) and continued as the same stream; a file that cannot be read is started
    /// anew; the sidecar is cut to its last complete line. The time the recorder was down is
    /// silence in the mix and a gap in the track files, so the timeline stays the original
    /// one. Fails if a file was already finished (the egress had ended).
    pub fn resume(
        now: Instant,
        config: EgressConfig,
        elapsed: Duration,
        files: &BTreeMap<Artifact, Vec<u8>>,
    ) -> Result<Egress, EgressError> {
        let clock = Clock::resumed(now, elapsed);
        let mut egress = Egress {
            clock,
            state: EgressState::Active,
            ended_at: None,
            error: None,
            mixer: None,
            track: None,
            participants: BTreeMap::new(),
            next_serial: config.serial,
            bytes: BTreeMap::new(),
            outputs: VecDeque::new(),
            scratch: Vec::new(),
            config,
        };
        // Serial numbers of new streams come after every stream already written.
        for bytes in files.values() {
            if let Ok((_, r)) = OggOpusWriter::resume(bytes) {
                egress.next_serial = egress.next_serial.max(r.serial.wrapping_add(1));
            }
        }
        let finished = |artifact: &Artifact, bytes: &[u8]| {
            matches!(OggOpusWriter::resume(bytes), Err(ReadError::Finished))
                .then(|| EgressError::Finished(artifact.clone()))
        };
        for (artifact, bytes) in files {
            if *artifact != Artifact::Speaking
                && let Some(e) = finished(artifact, bytes)
            {
                return Err(e);
            }
        }
        let mut out = Vec::new();
        match egress.config.kind.clone() {
            EgressKind::RoomComposite { .. } => {
                let mixer = match files
                    .get(&Artifact::Mix)
                    .map(|b| RoomMixer::resume_with(clock, now, egress.config.mix, b, &mut out))
                {
                    Some(Ok((mixer, r))) => {
                        egress.truncate(Artifact::Mix, r.valid_len);
                        mixer
                    }
                    _ => {
                        out.clear();
                        egress.truncate(Artifact::Mix, 0);
                        let comments = egress.comments(&[]);
                        let serial = egress.serial();
                        RoomMixer::restart_with(
                            clock,
                            now,
                            egress.config.mix,
                            serial,
                            &comments,
                            &mut out,
                        )?
                    }
                };
                egress.mixer = Some(mixer);
                egress.emit(Artifact::Mix, std::mem::take(&mut out));
                let speaking = files.get(&Artifact::Speaking).map_or(0, |b| {
                    b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1)
                });
                egress.truncate(Artifact::Speaking, speaking);
                for (artifact, bytes) in files {
                    let Artifact::Participant(name) = artifact else {
                        continue;
                    };
                    let tag = format!("STOA_PARTICIPANT={name}");
                    let recorder = egress.resume_track(artifact.clone(), bytes, tag);
                    egress.participants.insert(
                        name.clone(),
                        ParticipantFile {
                            recorder,
                            track: None,
                        },
                    );
                }
            }
            EgressKind::Track { track } => {
                let artifact = Artifact::Track(track.clone());
                let bytes = files.get(&artifact).map_or(&[][..], Vec::as_slice);
                let recorder = egress.resume_track(artifact, bytes, format!("STOA_TRACK={track}"));
                egress.track = Some(recorder);
            }
        }
        egress.outputs.push_back(Output::Event(EgressEvent::Active));
        Ok(egress)
    }

    /// A track file continued from `bytes`, or started anew (cut to nothing) if unreadable.
    fn resume_track(&mut self, artifact: Artifact, bytes: &[u8], tag: String) -> TrackRecorder {
        match TrackRecorder::resume_with(self.clock, bytes) {
            Ok((recorder, r)) => {
                self.truncate(artifact, r.valid_len);
                recorder
            }
            Err(_) => {
                self.truncate(artifact.clone(), 0);
                let comments = self.comments(&[tag]);
                let serial = self.serial();
                let mut out = Vec::new();
                let recorder = TrackRecorder::with_clock(self.clock, serial, &comments, &mut out);
                self.emit(artifact, out);
                recorder
            }
        }
    }

    fn truncate(&mut self, artifact: Artifact, len: usize) {
        self.bytes.insert(artifact.clone(), len as u64);
        self.outputs.push_back(Output::Truncate {
            artifact,
            len: len as u64,
        });
    }

    /// The egress's id.
    pub fn id(&self) -> &str {
        &self.config.egress_id
    }

    /// The room it records.
    pub fn room(&self) -> &str {
        &self.config.room
    }

    /// Where it is.
    pub fn state(&self) -> EgressState {
        self.state
    }

    /// Whether it has ended (no more output but what is queued).
    pub fn is_ended(&self) -> bool {
        matches!(self.state, EgressState::Complete | EgressState::Failed)
    }

    /// Feeds one input at `now`.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if self.is_ended() {
            return;
        }
        match input {
            Input::Packet {
                participant,
                track,
                packet,
            } => self.packet(now, participant, track, &packet),
            Input::TrackPublished { participant, track } => {
                if let Some(file) = self.participants.get_mut(participant) {
                    file.track.get_or_insert_with(|| track.to_owned());
                }
                self.log(now, participant, Activity::Published);
            }
            Input::TrackMuted { participant, track } => {
                self.drain_track(participant, track);
                self.log(now, participant, Activity::Muted);
            }
            Input::TrackUnmuted { participant, .. } => {
                self.log(now, participant, Activity::Unmuted);
            }
            Input::TrackUnpublished { participant, track } => {
                self.drain_track(participant, track);
                if let Some(mixer) = self.mixer.as_mut() {
                    mixer.remove_track(track);
                }
                if let Some(file) = self.participants.get_mut(participant)
                    && file.track.as_deref() == Some(track)
                {
                    file.track = None;
                }
                self.log(now, participant, Activity::Unpublished);
                if matches!(&self.config.kind, EgressKind::Track { track: t } if t == track) {
                    self.finish(now);
                }
            }
            Input::Speaking {
                participant,
                speaking,
            } => {
                let activity = if speaking {
                    Activity::Speaking
                } else {
                    Activity::Silent
                };
                self.log(now, participant, activity);
            }
            Input::Stop => self.finish(now),
        }
    }

    /// Runs what is due at `now`: mixes frames, writes packets past the reordering window,
    /// flushes pages open too long.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_ended() {
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        if let Some(mixer) = self.mixer.as_mut() {
            mixer.handle_timeout(now, &mut out);
            self.emit(Artifact::Mix, std::mem::take(&mut out));
        }
        if let Some(recorder) = self.track.as_mut() {
            recorder.handle_timeout(now, &mut out);
            let artifact = self.track_artifact();
            self.emit(artifact, std::mem::take(&mut out));
        }
        let names: Vec<String> = self.participants.keys().cloned().collect();
        for name in names {
            if let Some(file) = self.participants.get_mut(&name) {
                file.recorder.handle_timeout(now, &mut out);
            }
            self.emit(Artifact::Participant(name), std::mem::take(&mut out));
        }
        self.scratch = out;
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next; `None` once ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_ended() {
            return None;
        }
        let mix = self.mixer.as_ref().and_then(RoomMixer::poll_timeout);
        let track = self.track.as_ref().and_then(TrackRecorder::poll_timeout);
        let files = self
            .participants
            .values()
            .filter_map(|f| f.recorder.poll_timeout());
        [mix, track].into_iter().flatten().chain(files).min()
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A write to `artifact` failed (disk full, directory unwritable): the egress ends as
    /// failed with `error`, and its files stay playable up to their last complete page.
    pub fn handle_write_error(&mut self, now: Instant, artifact: &Artifact, error: &str) {
        if self.is_ended() {
            return;
        }
        self.state = EgressState::Failed;
        self.ended_at = Some(now);
        self.error = Some(format!("writing {artifact:?}: {error}"));
        tracing::warn!(egress = %self.config.egress_id, ?artifact, error, "egress failed");
        self.outputs
            .push_back(Output::Event(EgressEvent::Ended(Box::new(self.info()))));
    }

    /// The egress's state and files, for `ListEgress`.
    pub fn info(&self) -> EgressInfo {
        let duration =
            |samples: u64| Duration::from_nanos(samples * 1_000_000_000 / u64::from(SAMPLE_RATE));
        let mut files = Vec::new();
        let mut tracks = Vec::new();
        for (artifact, &bytes) in &self.bytes {
            let samples = match artifact {
                Artifact::Mix => self.mixer.as_ref().map_or(0, RoomMixer::mixed_samples),
                Artifact::Track(_) => self
                    .track
                    .as_ref()
                    .map_or(0, TrackRecorder::written_samples),
                Artifact::Participant(name) => self
                    .participants
                    .get(name)
                    .map_or(0, |f| f.recorder.written_samples()),
                Artifact::Speaking => 0,
            };
            files.push(FileInfo {
                artifact: artifact.clone(),
                bytes,
                duration: duration(samples),
            });
        }
        if let Some(recorder) = &self.track {
            tracks.push((self.track_artifact(), recorder.stats()));
        }
        for (name, file) in &self.participants {
            tracks.push((Artifact::Participant(name.clone()), file.recorder.stats()));
        }
        EgressInfo {
            egress_id: self.config.egress_id.clone(),
            room: self.config.room.clone(),
            kind: self.config.kind.clone(),
            state: self.state,
            duration: self
                .ended_at
                .map_or(Duration::ZERO, |t| self.clock.elapsed(t)),
            error: self.error.clone(),
            files,
            mix: self.mixer.as_ref().map(RoomMixer::stats),
            tracks,
        }
    }

    fn packet(&mut self, now: Instant, participant: &str, track: &str, packet: &RtpPacket<'_>) {
        let mut out = std::mem::take(&mut self.scratch);
        let mut touched = false;
        if let Some(mixer) = self.mixer.as_mut() {
            mixer.handle_packet(now, track, packet);
            touched = true;
        }
        if let EgressKind::Track { track: wanted } = &self.config.kind
            && wanted == track
            && let Some(recorder) = self.track.as_mut()
        {
            recorder.handle_packet(now, packet, &mut out);
            let artifact = self.track_artifact();
            self.emit(artifact, std::mem::take(&mut out));
            touched = true;
        }
        if matches!(
            self.config.kind,
            EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant
            }
        ) {
            if !self.participants.contains_key(participant) {
                let comments = self.comments(&[format!("STOA_PARTICIPANT={participant}")]);
                let serial = self.serial();
                let recorder = TrackRecorder::with_clock(self.clock, serial, &comments, &mut out);
                self.participants.insert(
                    participant.to_owned(),
                    ParticipantFile {
                        recorder,
                        track: None,
                    },
                );
            }
            if let Some(file) = self.participants.get_mut(participant) {
                let current = file.track.get_or_insert_with(|| track.to_owned());
                // Another audio track of the same participant while the followed one is
                // published (a second microphone, screen-share audio) is not theirs to mix in.
                if current == track {
                    file.recorder.handle_packet(now, packet, &mut out);
                }
            }
            self.emit(
                Artifact::Participant(participant.to_owned()),
                std::mem::take(&mut out),
            );
        }
        self.scratch = out;
        if touched && self.state == EgressState::Starting {
            self.state = EgressState::Active;
            self.outputs.push_back(Output::Event(EgressEvent::Active));
        }
    }

    fn drain_track(&mut self, participant: &str, track: &str) {
        let mut out = std::mem::take(&mut self.scratch);
        if matches!(&self.config.kind, EgressKind::Track { track: t } if t == track)
            && let Some(recorder) = self.track.as_mut()
        {
            recorder.drain(&mut out);
            let artifact = self.track_artifact();
            self.emit(artifact, std::mem::take(&mut out));
        }
        if let Some(file) = self.participants.get_mut(participant) {
            file.recorder.drain(&mut out);
            self.emit(
                Artifact::Participant(participant.to_owned()),
                std::mem::take(&mut out),
            );
        }
        self.scratch = out;
    }

    fn finish(&mut self, now: Instant) {
        let mut out = Vec::new();
        let mut error = None;
        if let Some(mixer) = self.mixer.as_mut() {
            mixer.handle_timeout(now, &mut out);
            if let Err(e) = mixer.finish(now, &mut out) {
                error = Some(e.to_string());
            }
            self.emit(Artifact::Mix, std::mem::take(&mut out));
        }
        if let Some(recorder) = self.track.as_mut() {
            recorder.finish(now, &mut out);
            let artifact = self.track_artifact();
            self.emit(artifact, std::mem::take(&mut out));
        }
        let names: Vec<String> = self.participants.keys().cloned().collect();
        for name in names {
            if let Some(file) = self.participants.get_mut(&name) {
                file.recorder.finish(now, &mut out);
            }
            self.emit(Artifact::Participant(name), std::mem::take(&mut out));
        }
        self.ended_at = Some(now);
        self.state = if error.is_some() {
            EgressState::Failed
        } else {
            EgressState::Complete
        };
        self.error = error;
        self.outputs
            .push_back(Output::Event(EgressEvent::Ended(Box::new(self.info()))));
    }

    fn log(&mut self, now: Instant, participant: &str, activity: Activity) {
        if self.mixer.is_none() {
            return;
        }
        let entry = Entry {
            t_ms: clock::samples_to_ms(self.clock.samples_at(now)),
            participant: participant.to_owned(),
            activity,
        };
        self.emit(Artifact::Speaking, entry.to_line());
    }

    fn track_artifact(&self) -> Artifact {
        match &self.config.kind {
            EgressKind::Track { track } => Artifact::Track(track.clone()),
            EgressKind::RoomComposite { .. } => Artifact::Mix,
        }
    }

    fn serial(&mut self) -> u32 {
        let s = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        s
    }

    fn comments(&self, extra: &[String]) -> Vec<String> {
        let mut c = vec![
            format!("STOA_EGRESS_ID={}", self.config.egress_id),
            format!("STOA_ROOM={}", self.config.room),
        ];
        c.extend_from_slice(extra);
        c
    }

    fn emit(&mut self, artifact: Artifact, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.emit_always(artifact, bytes);
        }
    }

    fn emit_always(&mut self, artifact: Artifact, bytes: Vec<u8>) {
        *self.bytes.entry(artifact.clone()).or_insert(0) += bytes.len() as u64;
        self.outputs.push_back(Output::Write { artifact, bytes });
    }
}
