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
//! Files: `<dir>/<room>/<egress id>/room.ogg` (the mix), `speaking.jsonl` and, with
//! `track_files`, `participant-<identity>.ogg`. Each write is whole Ogg pages, so a file cut
//! by a crash plays up to its last page; files are synced to disk every few seconds and at
//! the end.

// The shell owns the clock: it reads it and hands `now` to the core.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use stoa_egress::shell::FileSink;
use stoa_egress::{
    Artifact, EgressConfig, EgressEvent, EgressKind, EgressState, Input, MixConfig, Output,
    Recorder, RecorderLimits, RtpPacket, Ssrc, TrackFiles,
};
use stoa_sfu::shell::SfuHandle;
use stoa_sfu::{Tapped, TrackId};
use stoa_signaling::service::TapChange;
use tokio::sync::mpsc;
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

/// Recording starts and ends waiting to be kept by the control plane.
const REPORT_QUEUE: usize = 256;

/// Starts and stops room recordings. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Recordings {
    commands: mpsc::Sender<Command>,
    /// The recordings' starts and ends, until someone takes them ([`Recordings::take_reports`]).
    reports: std::sync::Arc<std::sync::Mutex<Option<mpsc::Receiver<Report>>>>,
}

/// A recording started or ended, for the control plane's records (replays).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The room.
    pub room: String,
    /// The egress id (the recording's id).
    pub egress_id: String,
    /// Its directory, relative to the recording directory.
    pub dir: String,
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

#[derive(Debug)]
enum Command {
    Start {
        room: String,
    },
    Stop {
        room: String,
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
    pub fn start(
        settings: &RecordingSettings,
        sfu: &SfuHandle,
    ) -> Result<(Recordings, mpsc::Sender<TapChange>, mpsc::Receiver<String>)> {
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
            failures: failures_tx,
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

    /// Starts recording `room` (nothing if it is being recorded already).
    pub fn record(&self, room: &str) {
        self.send(Command::Start {
            room: room.to_owned(),
        });
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
    /// Where failed rooms are reported.
    failures: mpsc::Sender<String>,
    /// Where recordings' starts and ends are reported.
    reports: mpsc::Sender<Report>,
    /// Who speaks now, by room (recorded or not), so that a recording starting while someone
    /// speaks has them speaking from its first moment.
    speaking: HashMap<String, std::collections::BTreeSet<String>>,
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
            Command::Start { room } => {
                if self.rooms.contains_key(&room) {
                    return;
                }
                let id = egress_id();
                let dir = self.dir.join(dir_name(&room)).join(&id);
                let sink = match FileSink::create(&dir) {
                    Ok(sink) => sink,
                    Err(e) => {
                        warn!(room = %room, dir = %dir.display(), error = %e, "cannot record: the recording directory is not writable");
                        self.failed(&room);
                        return;
                    }
                };
                let config = EgressConfig {
                    egress_id: id.clone(),
                    room: room.clone(),
                    kind: EgressKind::RoomComposite {
                        track_files: self.track_files,
                    },
                    mix: MixConfig::default(),
                    serial: serial(),
                };
                // The sink first: starting queues the files' headers.
                self.sinks.insert(id.clone(), sink);
                match self.recorder.start(now, config) {
                    Ok(()) => {
                        info!(room = %room, egress = %id, "recording started");
                        self.rooms.insert(room.clone(), id);
                        // Tracks of the room tapped before (a recording restarted).
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
                            self.recorder.handle_input(now, &room, input);
                            self.speaking_already(now, &room, &participant);
                        }
                    }
                    Err(e) => {
                        self.sinks.remove(&id);
                        warn!(room = %room, error = %e, "cannot record");
                        self.failed(&room);
                    }
                }
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
                if let Err(e) = self.recorder.stop(now, &id) {
                    warn!(room = %room, egress = %id, error = %e, "recording did not stop cleanly");
                }
            }
        }
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
                Output::Event(EgressEvent::Started) => {
                    if let Some(room) = self
                        .rooms
                        .iter()
                        .find_map(|(room, egress)| (*egress == id).then(|| room.clone()))
                    {
                        self.report(&room, &id, None);
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
                    if self.rooms.get(&info.room) == Some(&id) {
                        self.rooms.remove(&info.room);
                    }
                    if info.state == EgressState::Failed {
                        warn!(room = %info.room, egress = %id, error = info.error.as_deref().unwrap_or(""), "recording failed; it stops");
                        self.failed(&info.room);
                    }
                }
                Output::Event(event) => {
                    tracing::debug!(egress = %id, event = ?event, "recording event");
                }
            }
        }
    }

    /// Reports a recording's start or end to whoever keeps the records.
    fn report(&self, room: &str, egress_id: &str, ended: Option<Ended>) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let report = Report {
            room: room.to_owned(),
            egress_id: egress_id.to_owned(),
            dir: format!("{}/{egress_id}", dir_name(room)),
            at,
            ended,
        };
        if self.reports.try_send(report).is_err() {
            warn!(room = %room, egress = %egress_id, "recording report dropped: queue full");
        }
    }

    /// Reports that `room`'s recording could not start or failed.
    fn failed(&self, room: &str) {
        if self.failures.try_send(room.to_owned()).is_err() {
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
}
