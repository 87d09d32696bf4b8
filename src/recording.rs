//! The node's recorder: a thread that owns `stoa-egress`'s [`Recorder`], fed with the engine's
//! tapped packets ([`stoa_sfu::Tapped`]) and with signaling's names for them
//! ([`TapChange`]), writing each room recording's files under `[recording] dir`.
//!
//! Who records what is decided elsewhere: the control plane's `MediaCommand::Record` (a host
//! through `/api`, or a room created recorded) reaches [`crate::media_plane::LocalMedia`],
//! which starts or stops the room's egress here and tells signaling to tap the room's tracks
//! (signaling also sets `Room.active_recording`, so every participant sees it). Every queue
//! into this thread is bounded; the engine's tap drops what does not fit (counted as
//! `sfu_queue_dropped_total{queue="tap"}`) and the recording conceals it like a lost packet.
//!
//! LiveKit's `Egress` API ([`crate::egress_service`]) starts, stops and lists the same
//! egresses: the recorder is where egress ids, states and files are known (its [`Recorder`]
//! is the one truth; [`Recordings::list`] asks it), and each egress's life goes out as the
//! `egress_started`, `egress_updated` and `egress_ended` webhooks.
//!
//! Files: `<dir>/<room>/<egress id>/room.ogg` (the mix), `speaking.jsonl` and, with
//! `track_files`, `participant-<identity>.ogg`; a track egress writes `track-<sid>.ogg`. Each
//! write is whole Ogg pages, so a file cut by a crash plays up to its last page; files are
//! synced to disk every few seconds and at the end. An egress request's `filepath` places the
//! main file elsewhere under `<dir>` ([`file_path`]). A room recorded again after a crash of
//! this node continues the recording the crash cut short ([`Recordings::record_again`]).

// The shell owns the clock: it reads it and hands `now` to the core.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use livekit_protocol as lk;
use stoa_egress::shell::FileSink;
use stoa_egress::{
    Artifact, EgressConfig, EgressEvent, EgressInfo, EgressKind, EgressState, Input, MixConfig,
    Output, Recorder, RecorderError, RecorderLimits, RtpPacket, Ssrc, TrackFiles,
};
use stoa_sfu::shell::SfuHandle;
use stoa_sfu::{Tapped, TrackId};
use stoa_signaling::service::TapChange;
use stoa_signaling::webhook::Notifier;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::RecordingSettings;

/// Tapped packets waiting for the recorder (about 80 s of one speaker, 4 s of 20).
const PACKET_QUEUE: usize = 4_096;
/// Tap changes waiting for the recorder.
const TAP_QUEUE: usize = 1_024;
/// Start and stop requests waiting for the recorder.
const COMMAND_QUEUE: usize = 256;
/// Rooms whose recording failed, waiting to be reported.
const FAILURE_QUEUE: usize = 64;
/// How often open files are synced to disk.
const SYNC_EVERY: Duration = Duration::from_secs(5);
/// How long an answered request waits for room in the recorder's queue.
const ASK_WAIT: Duration = Duration::from_secs(2);
/// A recording cut short by a crash goes on when its room is back within this long (its
/// mix last written this long ago at most); after longer, a new recording starts.
pub const RESUME_WITHIN: Duration = Duration::from_secs(600);

fn stopped() -> EgressRefused {
    EgressRefused::Unavailable("the recorder stopped".into())
}

/// Recording starts and ends waiting to be kept by the control plane.
const REPORT_QUEUE: usize = 256;

/// Starts and stops room recordings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recordings {
    commands: mpsc::Sender<Command>,
    /// The recordings' starts and ends, until someone takes them ([`Recordings::take_reports`]).
    reports: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<Report>>>>,
    /// The `filepath` the next recording of a room is to be written to (an Egress API start
    /// that goes through the control plane), by room.
    placed: std::sync::Arc<std::sync::Mutex<HashMap<String, String>>>,
}

/// A room recording started or ended, for the control plane's records (replays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The room.
    pub room: String,
    /// The egress id (the recording's id).
    pub egress_id: String,
    /// Its directory, relative to the recording directory.
    pub dir: String,
    /// The mix, relative to the recording directory: `room.ogg` in `dir`, or where the
    /// egress request's `filepath` put it.
    pub file: String,
    /// Unix ms of the start or end.
    pub at: u64,
    /// How it ended, for an end.
    pub ended: Option<Ended>,
}

/// How a recording ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// It failed (a write error); its files play up to it.
    pub failed: bool,
    /// The mix's audio length.
    pub duration: Duration,
    /// The mix's size (bytes).
    pub size: u64,
}

/// A recording that could not start or failed, or a track egress that ended (the room it
/// tapped may need untapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFailure {
    /// The room.
    pub room: String,
    /// The egress.
    pub egress_id: String,
    /// What went wrong (empty: a track egress that ended normally).
    pub error: String,
    /// The room's recording (a room composite); else a track egress.
    pub composite: bool,
}

/// Which egresses [`Recordings::list`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressQuery {
    /// Only this room's.
    pub room: Option<String>,
    /// Only this one.
    pub egress_id: Option<String>,
    /// Only the running ones.
    pub active: bool,
}

/// Why [`Recordings::stop_egress`] or [`Recordings::start_track`] did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressRefused {
    /// No such egress.
    NotFound(String),
    /// It has ended already.
    Ended(String),
    /// The recorder refused (too many running, stopped).
    Unavailable(String),
}

impl std::fmt::Display for EgressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EgressRefused::NotFound(id) => write!(f, "no egress {id}"),
            EgressRefused::Ended(id) => write!(f, "egress {id} has ended already"),
            EgressRefused::Unavailable(why) => f.write_str(why),
        }
    }
}

#[derive(Debug)]
enum Command {
    Start {
        room: String,
        room_sid: String,
        egress_id: String,
        /// The request's `filepath` template, if any.
        filepath: Option<String>,
        /// Continue the room's recording that a crash of this node cut short moments ago,
        /// if there is one (the room's media room is made again after a restart).
        resume: bool,
    },
    Stop {
        room: String,
    },
    StartTrack {
        room: String,
        room_sid: String,
        track: String,
        request: Box<lk::TrackEgressRequest>,
        reply: oneshot::Sender<Result<lk::EgressInfo, EgressRefused>>,
    },
    StopEgress {
        egress_id: String,
        reply: oneshot::Sender<Result<lk::EgressInfo, EgressRefused>>,
    },
    List {
        query: EgressQuery,
        reply: oneshot::Sender<Vec<lk::EgressInfo>>,
    },
    Speaking {
        room: String,
        participant: String,
        speaking: bool,
    },
    /// Finish every recording and stop the thread; answered when done.
    Shutdown {
        done: tokio::sync::oneshot::Sender<()>,
    },
}

impl Recordings {
    /// Starts the recorder thread; the engine's tap is pointed at it. Returns the handle, the
    /// sender signaling names tapped tracks on ([`stoa_signaling::service::ServiceConfig`]),
    /// and the rooms whose recording could not start or failed (a directory that cannot be
    /// written, a full disk): the caller stops their recording where it was decided, so that
    /// nobody is told a room is recorded when it is not.
    /// Egress events go out as webhooks through `webhooks`.
    pub fn start(
        settings: &RecordingSettings,
        sfu: &SfuHandle,
        webhooks: Option<Notifier>,
    ) -> Result<(
        Recordings,
        mpsc::Sender<TapChange>,
        mpsc::Receiver<RecordingFailure>,
    )> {
        let (packets_tx, packets) = mpsc::channel(PACKET_QUEUE);
        let (failures_tx, failures) = mpsc::channel(FAILURE_QUEUE);
        let (taps_tx, taps) = mpsc::channel(TAP_QUEUE);
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let (reports_tx, reports) = mpsc::channel(REPORT_QUEUE);
        // Made now, so an unwritable directory is reported at start-up rather than at the
        // first recording (which would fail then with the same reason).
        if let Err(e) = std::fs::create_dir_all(&settings.dir) {
            warn!(dir = %settings.dir.display(), error = %e, "the recording directory cannot be created; recordings will fail");
        }
        if !sfu.set_tap(packets_tx) {
            anyhow::bail!("the media engine's tap is taken already");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("cannot start the recorder's runtime")?;
        let shell = Shell {
            dir: settings.dir.clone(),
            track_files: if settings.track_files {
                TrackFiles::PerParticipant
            } else {
                TrackFiles::Off
            },
            recorder: Recorder::new(RecorderLimits::default()),
            names: HashMap::new(),
            rooms: HashMap::new(),
            sinks: HashMap::new(),
            meta: HashMap::new(),
            failures: failures_tx,
            webhooks,
            reports: reports_tx,
            speaking: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || runtime.block_on(shell.run(commands, taps, packets)))
            .context("cannot start the recorder thread")?;
        info!(dir = %settings.dir.display(), "recorder ready");
        Ok((
            Recordings {
                commands: commands_tx,
                reports: std::sync::Arc::new(std::sync::Mutex::new(Some(reports))),
                placed: std::sync::Arc::default(),
            },
            taps_tx,
            failures,
        ))
    }

    /// The recordings' starts and ends from now on (once: later calls get `None`). Dropped,
    /// and logged, when nobody reads them fast enough.
    pub fn take_reports(&self) -> Option<mpsc::Receiver<Report>> {
        self.reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Starts recording `room`, whose LiveKit sid is `room_sid` (for `EgressInfo.room_id`);
    /// nothing if it is being recorded already. Returns the id the egress gets if it starts.
    /// The mix goes where [`Recordings::place_next`] said, if it did.
    pub fn record_in(&self, room: &str, room_sid: &str) -> String {
        self.start_in(room, room_sid, false)
    }

    /// As [`Recordings::record_in`], for a recorded room whose media room is made again (the
    /// node restarted): the room's recording that a crash of this node cut short within
    /// [`RESUME_WITHIN`] goes on under its id, in its files, the time the node was down
    /// silent in the mix ([`stoa_egress::Egress::resume`]); else a new one starts.
    pub fn record_again(&self, room: &str, room_sid: &str) -> String {
        self.start_in(room, room_sid, true)
    }

    fn start_in(&self, room: &str, room_sid: &str, resume: bool) -> String {
        let egress_id = egress_id();
        let filepath = self
            .placed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(room);
        self.send(Command::Start {
            room: room.to_owned(),
            room_sid: room_sid.to_owned(),
            egress_id: egress_id.clone(),
            filepath,
            resume,
        });
        egress_id
    }

    /// The next recording of `room` writes its mix to `filepath` (a `StartRoomCompositeEgress`
    /// file output's template, relative to the recording directory; see [`file_path`]).
    pub fn place_next(&self, room: &str, filepath: &str) {
        let mut placed = self
            .placed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if filepath.is_empty() {
            placed.remove(room);
        } else {
            placed.insert(room.to_owned(), filepath.to_owned());
        }
    }

    /// Starts recording one track of `room` as received (LiveKit's `StartTrackEgress`). The
    /// track must be tapped (the room recorded in signaling) for packets to arrive.
    pub async fn start_track(
        &self,
        room: &str,
        room_sid: &str,
        track: &str,
        request: lk::TrackEgressRequest,
    ) -> Result<lk::EgressInfo, EgressRefused> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::StartTrack {
            room: room.to_owned(),
            room_sid: room_sid.to_owned(),
            track: track.to_owned(),
            request: Box::new(request),
            reply,
        })
        .await?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops one egress (LiveKit's `StopEgress`); answers its final state.
    pub async fn stop_egress(&self, egress_id: &str) -> Result<lk::EgressInfo, EgressRefused> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::StopEgress {
            egress_id: egress_id.to_owned(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| stopped())?
    }

    /// The egresses `query` selects, running and recently ended, oldest first (LiveKit's
    /// `ListEgress`). Requests sent before it (a start, a stop) are seen done.
    pub async fn list(&self, query: EgressQuery) -> Result<Vec<lk::EgressInfo>, EgressRefused> {
        let (reply, answer) = oneshot::channel();
        self.ask(Command::List { query, reply }).await?;
        answer.await.map_err(|_| stopped())
    }

    /// Sends a request that is answered, waiting a little for room in the queue.
    async fn ask(&self, command: Command) -> Result<(), EgressRefused> {
        self.commands
            .send_timeout(command, ASK_WAIT)
            .await
            .map_err(|_| EgressRefused::Unavailable("the recorder is busy or stopped".into()))
    }

    /// Stops recording `room` (nothing if it is not being recorded); its files are finished.
    pub fn stop(&self, room: &str) {
        self.send(Command::Stop {
            room: room.to_owned(),
        });
    }

    /// Finishes every running recording (their files get their end) and stops the recorder,
    /// waiting at most `limit`. For the server's shutdown; recording requests after it are
    /// dropped.
    pub async fn shutdown(&self, limit: Duration) {
        let (done, finished) = tokio::sync::oneshot::channel();
        let sent = self
            .commands
            .send_timeout(Command::Shutdown { done }, limit)
            .await;
        if sent.is_err() || tokio::time::timeout(limit, finished).await.is_err() {
            warn!("the recorder did not finish its recordings in time");
        }
    }

    /// `participant` started or stopped speaking in `room` (signaling's active-speaker
    /// events), for the recording's who-spoke-when file. Dropped when the recorder is busy.
    pub fn speaking(&self, room: &str, participant: &str, speaking: bool) {
        let _ = self.commands.try_send(Command::Speaking {
            room: room.to_owned(),
            participant: participant.to_owned(),
            speaking,
        });
    }

    fn send(&self, command: Command) {
        if self.commands.try_send(command).is_err() {
            warn!("recorder busy or stopped; recording request dropped");
        }
    }
}

/// A tapped track's names.
#[derive(Debug)]
struct Named {
    room: String,
    participant: String,
    track_sid: String,
}

struct Shell {
    dir: PathBuf,
    track_files: TrackFiles,
    recorder: Recorder,
    /// Tapped tracks by engine id.
    names: HashMap<TrackId, Named>,
    /// The running egress of each recorded room.
    rooms: HashMap<String, String>,
    /// Files by egress id.
    sinks: HashMap<String, FileSink>,
    /// What LiveKit's `EgressInfo` says beyond the recorder's state, by egress id (as many
    /// as the recorder keeps).
    meta: HashMap<String, Meta>,
    /// Where failed recordings are reported.
    failures: mpsc::Sender<RecordingFailure>,
    /// Where egress events go as webhooks.
    webhooks: Option<Notifier>,
    /// Where room recordings' starts and ends are reported.
    reports: mpsc::Sender<Report>,
    /// Who speaks now, by room (recorded or not), so that a recording starting while someone
    /// speaks has them speaking from its first moment.
    speaking: HashMap<String, std::collections::BTreeSet<String>>,
}

/// An egress's LiveKit facts that the sans-IO recorder does not keep.
#[derive(Debug)]
struct Meta {
    room_sid: String,
    /// Unix ns.
    started_at: i64,
    ended_at: i64,
    updated_at: i64,
    request: lk::egress_info::Request,
    /// Its files' directory.
    dir: PathBuf,
    /// Its main file (the mix, or the track) where the request's `filepath` put it, if it did.
    placed: Option<(Artifact, PathBuf)>,
}

impl Shell {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut taps: mpsc::Receiver<TapChange>,
        mut packets: mpsc::Receiver<Tapped>,
    ) {
        let mut next_sync = Instant::now() + SYNC_EVERY;
        loop {
            let now = Instant::now();
            if now >= next_sync {
                self.sync();
                next_sync = now + SYNC_EVERY;
            }
            let wake = self
                .recorder
                .poll_timeout()
                .map_or(next_sync, |t| t.min(next_sync));
            // Commands before names before packets: a recording exists before its tracks are
            // named, and a track is named before its packets (each is sent in that order).
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(Command::Shutdown { done }) => {
                        self.finish_all();
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                    None => break,
                },
                Some(change) = taps.recv() => self.tap_change(change),
                Some(tapped) = packets.recv() => self.packet(&tapped),
                () = tokio::time::sleep_until(wake.into()) => {
                    self.recorder.handle_timeout(Instant::now());
                }
            }
            self.drain();
        }
        self.finish_all();
    }

    /// Stops every recording and writes what that leaves (the server is stopping).
    fn finish_all(&mut self) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.command(Command::Stop { room });
        }
        self.drain();
        self.sync();
    }

    fn command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Start {
                room,
                room_sid,
                egress_id: id,
                filepath,
                resume,
            } => {
                if self.rooms.contains_key(&room) {
                    return;
                }
                let resumed = (resume && filepath.is_none())
                    .then(|| self.resume_in(now, &room, &room_sid))
                    .flatten();
                if let Some(id) = resumed {
                    info!(room = %room, egress = %id, "recording resumed after a restart");
                    self.report(&room, &id, None);
                    self.recording_in(now, &room, id);
                    return;
                }
                let dir = self.dir.join(dir_name(&room)).join(&id);
                let placed = filepath.as_deref().map(|f| {
                    let at = file_path(f, &room, &room_sid, None, SystemTime::now());
                    (Artifact::Mix, self.dir.join(at))
                });
                let request = lk::egress_info::Request::RoomComposite(room_composite_request(
                    &room,
                    filepath.as_deref().unwrap_or_default(),
                ));
                let config = EgressConfig {
                    egress_id: id.clone(),
                    room: room.clone(),
                    kind: EgressKind::RoomComposite {
                        track_files: self.track_files,
                    },
                    mix: MixConfig::default(),
                    serial: serial(),
                };
                match self.open(now, config, &room_sid, request, dir, placed) {
                    Ok(()) => {
                        info!(room = %room, egress = %id, "recording started");
                        self.recording_in(now, &room, id);
                    }
                    Err(e) => {
                        warn!(room = %room, error = %e, "cannot record");
                        self.failed(RecordingFailure {
                            room,
                            egress_id: id,
                            error: e.to_string(),
                            composite: true,
                        });
                    }
                }
            }
            Command::StartTrack {
                room,
                room_sid,
                track,
                request,
                reply,
            } => {
                let id = egress_id();
                let dir = self.dir.join(dir_name(&room)).join(&id);
                let config = EgressConfig {
                    egress_id: id.clone(),
                    room: room.clone(),
                    kind: EgressKind::Track {
                        track: track.clone(),
                    },
                    mix: MixConfig::default(),
                    serial: serial(),
                };
                let placed = match &request.output {
                    Some(lk::track_egress_request::Output::File(f)) if !f.filepath.is_empty() => {
                        let at = file_path(
                            &f.filepath,
                            &room,
                            &room_sid,
                            Some(&track),
                            SystemTime::now(),
                        );
                        Some((Artifact::Track(track.clone()), self.dir.join(at)))
                    }
                    _ => None,
                };
                let request = lk::egress_info::Request::Track(*request);
                let answer = match self.open(now, config, &room_sid, request, dir, placed) {
                    Ok(()) => {
                        info!(room = %room, egress = %id, track = %track, "track recording started");
                        // The track, if it is tapped already.
                        let named = self
                            .names
                            .values()
                            .find(|n| n.room == room && n.track_sid == track)
                            .map(|n| n.participant.clone());
                        if let Some(participant) = named {
                            let input = Input::TrackPublished {
                                participant: &participant,
                                track: &track,
                            };
                            self.recorder.handle_input(now, &room, input);
                        }
                        self.drain();
                        Ok(self.livekit_info(&id).unwrap_or_default())
                    }
                    Err(e) => Err(EgressRefused::Unavailable(e.to_string())),
                };
                let _ = reply.send(answer);
            }
            Command::StopEgress { egress_id, reply } => {
                // As LiveKit: the reply and an `egress_updated` say EGRESS_ENDING, then
                // `egress_ended` says how it ended.
                let ending = self.ending(&egress_id);
                let answer = match self.recorder.stop(now, &egress_id) {
                    Ok(_) => {
                        self.rooms.retain(|_, id| *id != egress_id);
                        self.drain();
                        Ok(ending
                            .or_else(|| self.livekit_info(&egress_id))
                            .unwrap_or_default())
                    }
                    Err(RecorderError::Ended { .. }) => Err(EgressRefused::Ended(egress_id)),
                    Err(RecorderError::NotFound(_)) => Err(EgressRefused::NotFound(egress_id)),
                    Err(e) => Err(EgressRefused::Unavailable(e.to_string())),
                };
                let _ = reply.send(answer);
            }
            Command::List { query, reply } => {
                let _ = reply.send(self.list(&query));
            }
            Command::Shutdown { done } => {
                self.finish_all();
                let _ = done.send(());
            }
            Command::Speaking {
                room,
                participant,
                speaking,
            } => {
                let input = Input::Speaking {
                    participant: &participant,
                    speaking,
                };
                self.recorder.handle_input(now, &room, input);
                let now_speaking = self.speaking.entry(room.clone()).or_default();
                if speaking {
                    now_speaking.insert(participant);
                } else {
                    now_speaking.remove(&participant);
                    if now_speaking.is_empty() {
                        self.speaking.remove(&room);
                    }
                }
            }
            Command::Stop { room } => {
                // The room ended or stopped recording: who speaks there is asked again at the
                // next start (and a room that closed leaves nothing behind here).
                self.speaking.remove(&room);
                let Some(id) = self.rooms.remove(&room) else {
                    return;
                };
                self.ending(&id);
                if let Err(e) = self.recorder.stop(now, &id) {
                    warn!(room = %room, egress = %id, error = %e, "recording did not stop cleanly");
                }
                self.drain();
            }
        }
    }

    /// `room` is recorded by egress `id` from now: the room's tracks tapped before (a
    /// recording restarted) are fed to it, with who speaks already.
    fn recording_in(&mut self, now: Instant, room: &str, id: String) {
        self.rooms.insert(room.to_owned(), id);
        let tracks: Vec<(String, String)> = self
            .names
            .values()
            .filter(|n| n.room == room)
            .map(|n| (n.participant.clone(), n.track_sid.clone()))
            .collect();
        for (participant, track) in tracks {
            let input = Input::TrackPublished {
                participant: &participant,
                track: &track,
            };
            self.recorder.handle_input(now, room, input);
            self.speaking_already(now, room, &participant);
        }
    }

    /// The room's recording cut short by a crash of this node (its newest egress directory,
    /// whose mix is unfinished and was last written within [`RESUME_WITHIN`]), continued under
    /// its id: `Egress::resume` cuts each file to its last whole page and goes on, the time
    /// since the last page silent. `None` when there is none to continue.
    fn resume_in(&mut self, now: Instant, room: &str, room_sid: &str) -> Option<String> {
        let (id, dir, written) = std::fs::read_dir(self.dir.join(dir_name(room)))
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let id = e.file_name().into_string().ok()?;
                let mix = std::fs::metadata(e.path().join("room.ogg")).ok()?;
                id.starts_with("EG_")
                    .then(|| (id, e.path(), mix.modified().ok()))
            })
            .filter_map(|(id, dir, m)| Some((id, dir, m?)))
            .max_by_key(|(_, _, m)| *m)?;
        if self.recorder.info(&id).is_some() {
            return None; // this run's own
        }
        let gap = SystemTime::now()
            .duration_since(written)
            .unwrap_or_default();
        if gap > RESUME_WITHIN {
            return None;
        }
        let sink = FileSink::create(&dir).ok()?;
        let files = sink.existing().ok()?;
        let recorded = files
            .get(&Artifact::Mix)
            .and_then(|b| stoa_egress::OpusStream::parse(b).ok())
            .map_or(0, |s| s.playback_samples());
        let elapsed = Duration::from_micros(recorded * 1_000 / 48) + gap;
        let config = EgressConfig {
            egress_id: id.clone(),
            room: room.to_owned(),
            kind: EgressKind::RoomComposite {
                track_files: self.track_files,
            },
            mix: MixConfig::default(),
            serial: serial(),
        };
        if let Err(e) = self.recorder.resume(now, config, elapsed, &files) {
            info!(room = %room, egress = %id, error = %e, "the last recording does not go on; a new one starts");
            return None;
        }
        self.sinks.insert(id.clone(), sink);
        let at = unix_ns();
        let started_at = at.saturating_sub(i64::try_from(elapsed.as_nanos()).unwrap_or(0));
        self.meta.insert(
            id.clone(),
            Meta {
                room_sid: room_sid.to_owned(),
                started_at,
                ended_at: 0,
                updated_at: at,
                request: lk::egress_info::Request::RoomComposite(room_composite_request(room, "")),
                dir,
                placed: None,
            },
        );
        Some(id)
    }

    /// A recorded track of `participant` who is speaking already (they started before the
    /// recording did): the recording has them speaking from now.
    fn speaking_already(&mut self, now: Instant, room: &str, participant: &str) {
        if self
            .speaking
            .get(room)
            .is_some_and(|s| s.contains(participant))
        {
            let input = Input::Speaking {
                participant,
                speaking: true,
            };
            self.recorder.handle_input(now, room, input);
        }
    }

    /// Opens an egress's files and starts it. A directory that cannot be made still starts
    /// the egress, which then fails at once with the reason: its `egress_ended` and
    /// `ListEgress` say why, as for a disk that fills up later.
    fn open(
        &mut self,
        now: Instant,
        config: EgressConfig,
        room_sid: &str,
        request: lk::egress_info::Request,
        dir: PathBuf,
        placed: Option<(Artifact, PathBuf)>,
    ) -> Result<(), RecorderError> {
        let id = config.egress_id.clone();
        // The sink first: starting queues the files' headers.
        let failed = match FileSink::create(&dir) {
            Ok(mut sink) => {
                let place = match &placed {
                    Some((artifact, path)) => sink.place(artifact.clone(), path.clone()),
                    None => Ok(()),
                };
                self.sinks.insert(id.clone(), sink);
                match place {
                    Ok(()) => None,
                    Err(e) => {
                        warn!(egress = %id, error = %e, "cannot record to the requested filepath");
                        Some(format!("the requested filepath cannot be written: {e}"))
                    }
                }
            }
            Err(e) => {
                warn!(egress = %id, dir = %dir.display(), error = %e, "cannot record: the recording directory is not writable");
                Some(format!("the recording directory cannot be written: {e}"))
            }
        };
        if let Err(e) = self.recorder.start(now, config) {
            self.sinks.remove(&id);
            return Err(e);
        }
        let at = unix_ns();
        self.meta.insert(
            id.clone(),
            Meta {
                room_sid: room_sid.to_owned(),
                started_at: at,
                ended_at: 0,
                updated_at: at,
                request,
                dir,
                placed,
            },
        );
        if let Some(error) = failed {
            self.recorder
                .handle_write_error(now, &id, &Artifact::Mix, &error);
        }
        Ok(())
    }

    /// The egresses `query` selects, in LiveKit's terms, oldest first.
    fn list(&self, query: &EgressQuery) -> Vec<lk::EgressInfo> {
        let infos = match &query.egress_id {
            Some(id) => self
                .recorder
                .info(id)
                .into_iter()
                .filter(|i| query.room.as_ref().is_none_or(|r| *r == i.room))
                .filter(|i| {
                    !query.active || !matches!(i.state, EgressState::Complete | EgressState::Failed)
                })
                .collect(),
            None => self.recorder.list(query.room.as_deref(), query.active),
        };
        let mut out: Vec<lk::EgressInfo> = infos
            .iter()
            .filter_map(|i| Some(livekit_info(i, self.meta.get(&i.egress_id)?, &self.dir)))
            .collect();
        out.sort_by(|a, b| (a.started_at, &a.egress_id).cmp(&(b.started_at, &b.egress_id)));
        out
    }

    fn livekit_info(&self, id: &str) -> Option<lk::EgressInfo> {
        let info = self.recorder.info(id)?;
        Some(livekit_info(&info, self.meta.get(id)?, &self.dir))
    }

    /// Egress `id` as it stops, if it runs: EGRESS_ENDING, told as `egress_updated` (as
    /// LiveKit does before `egress_ended`).
    fn ending(&mut self, id: &str) -> Option<lk::EgressInfo> {
        let mut info = self.livekit_info(id)?;
        let running = [
            lk::EgressStatus::EgressStarting as i32,
            lk::EgressStatus::EgressActive as i32,
        ];
        if !running.contains(&info.status) {
            return None;
        }
        let at = unix_ns();
        if let Some(meta) = self.meta.get_mut(id) {
            meta.updated_at = at;
        }
        info.status = lk::EgressStatus::EgressEnding as i32;
        info.updated_at = at;
        self.webhook("egress_updated", info.clone());
        Some(info)
    }

    /// Sends an egress event as a webhook (`egress_started`, `egress_updated`,
    /// `egress_ended`) with its `EgressInfo`.
    fn webhook(&self, event: &str, info: lk::EgressInfo) {
        let Some(hooks) = &self.webhooks else {
            return;
        };
        hooks.notify(lk::WebhookEvent {
            event: event.to_owned(),
            egress_info: Some(info),
            id: format!("EV_{}", &egress_id()[3..]),
            created_at: unix_ns() / 1_000_000_000,
            ..Default::default()
        });
    }

    fn tap_change(&mut self, change: TapChange) {
        let now = Instant::now();
        let (participant, track) = (&change.participant, &change.track_sid);
        if change.tapped {
            let input = Input::TrackPublished { participant, track };
            self.recorder.handle_input(now, &change.room, input);
            self.speaking_already(now, &change.room, participant);
            self.names.insert(
                change.track,
                Named {
                    room: change.room.clone(),
                    participant: change.participant.clone(),
                    track_sid: change.track_sid.clone(),
                },
            );
        } else {
            let input = Input::TrackUnpublished { participant, track };
            self.recorder.handle_input(now, &change.room, input);
            self.names.remove(&change.track);
        }
    }

    fn packet(&mut self, tapped: &Tapped) {
        let Some(named) = self.names.get(&tapped.track) else {
            return;
        };
        let p = &tapped.packet;
        let packet = RtpPacket {
            ssrc: Ssrc(p.ssrc),
            // The engine extends sequence numbers; RTP's are its low 16 bits.
            sequence: p.seq_no as u16,
            timestamp: p.timestamp,
            marker: p.marker,
            payload: p.opus(),
        };
        let input = Input::Packet {
            participant: &named.participant,
            track: &named.track_sid,
            packet,
        };
        self.recorder
            .handle_input(Instant::now(), &named.room, input);
    }

    /// Carries out the recorder's outputs: writes, truncations, events.
    fn drain(&mut self) {
        while let Some((id, output)) = self.recorder.poll_output() {
            match output {
                Output::Write { artifact, bytes } => {
                    let result = match self.sinks.get_mut(&id) {
                        Some(sink) => sink.write(&artifact, &bytes),
                        None => continue,
                    };
                    if let Err(e) = result {
                        warn!(egress = %id, error = %e, "recording write failed; the recording stops");
                        self.recorder.handle_write_error(
                            Instant::now(),
                            &id,
                            &artifact,
                            &e.to_string(),
                        );
                    }
                }
                Output::Truncate { artifact, len } => {
                    if let Some(sink) = self.sinks.get_mut(&id)
                        && let Err(e) = sink.truncate(&artifact, len)
                    {
                        self.recorder.handle_write_error(
                            Instant::now(),
                            &id,
                            &artifact,
                            &e.to_string(),
                        );
                    }
                }
                Output::Event(EgressEvent::Ended(info)) => {
                    // Replays are of room recordings (the mix), not of single tracks.
                    if let Some(mix) = info.files.iter().find(|f| f.artifact == Artifact::Mix) {
                        let ended = Ended {
                            failed: info.state == EgressState::Failed,
                            duration: mix.duration,
                            size: mix.bytes,
                        };
                        self.report(&info.room, &id, Some(ended));
                    }
                    let at = unix_ns();
                    if let Some(meta) = self.meta.get_mut(&id) {
                        meta.ended_at = at;
                        meta.updated_at = at;
                    }
                    if let Some(mut sink) = self.sinks.remove(&id) {
                        if let Err(e) = sink.sync() {
                            warn!(egress = %id, error = %e, "cannot sync the recording");
                        }
                        info!(
                            room = %info.room,
                            egress = %id,
                            state = ?info.state,
                            seconds = info.duration.as_secs_f64(),
                            dir = %sink.dir().display(),
                            "recording ended"
                        );
                    }
                    let composite = matches!(info.kind, EgressKind::RoomComposite { .. });
                    if self.rooms.get(&info.room) == Some(&id) {
                        self.rooms.remove(&info.room);
                    }
                    if let Some(meta) = self.meta.get(&id) {
                        self.webhook("egress_ended", livekit_info(&info, meta, &self.dir));
                    }
                    // A failure is reported; so is a track egress that ended by itself (its
                    // track was unpublished), whose room may need untapping.
                    let failed = info.state == EgressState::Failed;
                    if failed || !composite {
                        let error = info.error.clone().unwrap_or_default();
                        if failed {
                            warn!(room = %info.room, egress = %id, error = %error, "recording failed; it stops");
                        }
                        self.failed(RecordingFailure {
                            room: info.room.clone(),
                            egress_id: id.clone(),
                            error,
                            composite,
                        });
                    }
                    // LiveKit facts are kept as long as the recorder keeps the egress.
                    let recorder = &self.recorder;
                    self.meta.retain(|id, _| recorder.info(id).is_some());
                }
                Output::Event(event) => {
                    tracing::debug!(egress = %id, event = ?event, "recording event");
                    if matches!(event, EgressEvent::Started)
                        && let Some(room) = self
                            .rooms
                            .iter()
                            .find_map(|(room, egress)| (*egress == id).then(|| room.clone()))
                    {
                        self.report(&room, &id, None);
                    }
                    let name = match event {
                        EgressEvent::Started => "egress_started",
                        EgressEvent::Active => "egress_updated",
                        _ => continue,
                    };
                    if let Some(meta) = self.meta.get_mut(&id) {
                        meta.updated_at = unix_ns();
                    }
                    if let Some(info) = self.livekit_info(&id) {
                        self.webhook(name, info);
                    }
                }
            }
        }
    }

    /// Reports a room recording's start or end to whoever keeps the records.
    fn report(&self, room: &str, egress_id: &str, ended: Option<Ended>) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let dir = format!("{}/{egress_id}", dir_name(room));
        let file = self
            .meta
            .get(egress_id)
            .and_then(|m| m.placed.as_ref())
            .filter(|(artifact, _)| *artifact == Artifact::Mix)
            .and_then(|(_, path)| path.strip_prefix(&self.dir).ok())
            .map_or_else(|| format!("{dir}/room.ogg"), |p| p.display().to_string());
        let report = Report {
            room: room.to_owned(),
            egress_id: egress_id.to_owned(),
            dir,
            file,
            at,
            ended,
        };
        if self.reports.try_send(report).is_err() {
            warn!(room = %room, egress = %egress_id, "recording report dropped: queue full");
        }
    }

    /// Reports a recording that could not start or failed.
    fn failed(&self, failure: RecordingFailure) {
        let room = failure.room.clone();
        if self.failures.try_send(failure).is_err() {
            warn!(room = %room, "recording failure not reported: queue full");
        }
    }

    fn sync(&mut self) {
        for (id, sink) in &mut self.sinks {
            if let Err(e) = sink.sync() {
                warn!(egress = %id, error = %e, "cannot sync the recording");
            }
        }
    }
}

/// A room's directory name: the name itself when it is plain (control-plane room ids are),
/// else `room-` and its bytes in hex, so no name can reach outside the recording directory.
fn dir_name(room: &str) -> String {
    let plain = !room.is_empty()
        && room.len() <= 64
        && !room.starts_with('.')
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        return room.to_owned();
    }
    let hex: String = room.bytes().take(64).map(|b| format!("{b:02x}")).collect();
    format!("room-{hex}")
}

/// Where an egress request's `filepath` puts its file, relative to the recording directory
/// (which signaling checked it stays in: relative, no `..`). LiveKit's templates are filled in
/// — `{room_name}`, `{room_id}`, `{track_id}` (a track egress) and `{time}` (UTC,
/// `2006-01-02T150405`) — with names that cannot leave a directory ([`dir_name`]); a path
/// ending in `/` is a directory, where the file is named `{room_name}-{time}`; `.ogg` is added
/// when the name has no extension. Empty and `.` components are dropped.
pub fn file_path(
    template: &str,
    room: &str,
    room_sid: &str,
    track: Option<&str>,
    now: SystemTime,
) -> String {
    let time = jiff::Timestamp::try_from(now)
        .map(|t| t.strftime("%Y-%m-%dT%H%M%S").to_string())
        .unwrap_or_default();
    let mut template = template.to_owned();
    if template.is_empty() || template.ends_with('/') {
        template.push_str("{room_name}-{time}");
    }
    let filled = template
        .replace("{room_name}", &dir_name(room))
        .replace("{room_id}", &dir_name(room_sid))
        .replace("{track_id}", &dir_name(track.unwrap_or("track")))
        .replace("{time}", &time);
    let mut parts: Vec<&str> = filled
        .split('/')
        .filter(|c| !c.is_empty() && *c != "." && *c != "..")
        .collect();
    if parts.is_empty() {
        parts.push("recording");
    }
    let mut path = parts.join("/");
    let named = parts
        .last()
        .and_then(|n| n.rsplit_once('.'))
        .is_some_and(|(stem, _)| !stem.is_empty());
    if !named {
        path.push_str(".ogg");
    }
    path
}

/// The request a room composite is described with in `EgressInfo.request` (whether it was
/// started through `/api`, for a room created recorded, or through the Egress API): audio
/// only, one Ogg file.
fn room_composite_request(room: &str, filepath: &str) -> lk::RoomCompositeEgressRequest {
    lk::RoomCompositeEgressRequest {
        room_name: room.to_owned(),
        audio_only: true,
        file_outputs: vec![lk::EncodedFileOutput {
            file_type: lk::EncodedFileType::Ogg as i32,
            filepath: filepath.to_owned(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The recorder's state of an egress in LiveKit's terms. Files are named by their path under
/// the recording directory (`filename`) and their absolute path (`location`).
fn livekit_info(info: &EgressInfo, meta: &Meta, base: &Path) -> lk::EgressInfo {
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let file_results: Vec<lk::FileInfo> = info
        .files
        .iter()
        .filter(|f| f.artifact != Artifact::Speaking)
        .map(|f| {
            let path = match &meta.placed {
                Some((artifact, path)) if *artifact == f.artifact => path.clone(),
                _ => meta.dir.join(stoa_egress::shell::file_name(&f.artifact)),
            };
            let relative = path.strip_prefix(base).unwrap_or(&path);
            lk::FileInfo {
                filename: relative.display().to_string(),
                started_at: meta.started_at,
                ended_at: meta.ended_at,
                duration: ns(f.duration),
                size: i64::try_from(f.bytes).unwrap_or(i64::MAX),
                location: path.display().to_string(),
            }
        })
        .collect();
    #[allow(deprecated)]
    let result = file_results
        .first()
        .cloned()
        .map(lk::egress_info::Result::File);
    #[allow(deprecated)]
    lk::EgressInfo {
        egress_id: info.egress_id.clone(),
        room_id: meta.room_sid.clone(),
        room_name: info.room.clone(),
        source_type: lk::EgressSourceType::Sdk as i32,
        status: info.state.livekit_status(),
        started_at: meta.started_at,
        ended_at: meta.ended_at,
        updated_at: meta.updated_at,
        error: info.error.clone().unwrap_or_default(),
        details: String::new(),
        file_results,
        result,
        request: Some(meta.request.clone()),
        ..Default::default()
    }
}

/// Now as Unix nanoseconds (LiveKit's `EgressInfo` times).
fn unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A fresh egress id, LiveKit style (`EG_` and 12 characters).
fn egress_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let tail: String = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect();
    format!("EG_{tail}")
}

/// A random Ogg serial number for a recording's first stream.
fn serial() -> u32 {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_directories_stay_inside_the_recording_directory() {
        assert_eq!(dir_name("abcdefgh01234567"), "abcdefgh01234567");
        assert_eq!(dir_name("../etc"), "room-2e2e2f657463");
        assert_eq!(dir_name(".."), "room-2e2e");
        assert_eq!(dir_name("a/b"), "room-612f62");
        assert_eq!(dir_name(""), "room-");
        assert!(egress_id().starts_with("EG_") && egress_id().len() == 15);
    }

    #[test]
    fn filepath_templates_are_filled_in_and_stay_inside() {
        // 2026-12-06 14:03:05 UTC.
        let at = UNIX_EPOCH + Duration::from_secs(1_796_565_785);
        let path = |t: &str, track| file_path(t, "abc123", "RM_x", track, at);
        assert_eq!(
            path("rec/{room_name}-{time}.ogg", None),
            "rec/abc123-2026-12-06T140305.ogg"
        );
        assert_eq!(path("{room_id}/a", None), "RM_x/a.ogg");
        assert_eq!(path("dir/", None), "dir/abc123-2026-12-06T140305.ogg");
        assert_eq!(path("", None), "abc123-2026-12-06T140305.ogg");
        assert_eq!(path("{track_id}.ogg", Some("TR_a")), "TR_a.ogg");
        assert_eq!(path("a//./b.OGG", None), "a/b.OGG");
        // Names filled in never climb out, whatever the room is called.
        assert_eq!(
            file_path("{room_name}/x", "../..", "RM_x", None, at),
            "room-2e2e2f2e2e/x.ogg"
        );
        assert_eq!(file_path("../a", "r", "RM_x", None, at), "a.ogg");
    }
}
