//! The egresses of one node: started, stopped and listed by id (LiveKit's `StartRoomCompositeEgress`,
//! `StartTrackEgress`, `StopEgress`, `ListEgress`), fed by room. Sans-IO like [`Egress`]: the
//! node's recorder task calls it and writes what it polls.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::egress::{
    Artifact, Egress, EgressConfig, EgressError, EgressEvent, EgressInfo, EgressState, Input,
    Output,
};

/// Bounds of one node's recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecorderLimits {
    /// Egresses running at once; more are refused.
    pub max_active: usize,
    /// Ended egresses kept for `ListEgress`; the oldest are forgotten beyond.
    pub max_ended: usize,
}

impl Default for RecorderLimits {
    fn default() -> Self {
        RecorderLimits {
            max_active: 64,
            max_ended: 1_000,
        }
    }
}

/// Why a recorder request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// An egress with this id exists (running or ended).
    #[error("egress {0} already exists")]
    AlreadyExists(String),
    /// No egress with this id (LiveKit answers `not_found`).
    #[error("egress {0} not found")]
    NotFound(String),
    /// The egress has ended already (LiveKit answers `failed_precondition`).
    #[error("egress {id} has ended ({state:?})")]
    Ended {
        /// The egress.
        id: String,
        /// How it ended.
        state: EgressState,
    },
    /// As many egresses as allowed are running (LiveKit answers `resource_exhausted`).
    #[error("{0} egresses are running, the most this node takes")]
    TooMany(usize),
    /// The egress could not start.
    #[error(transparent)]
    Egress(#[from] EgressError),
}

/// A node's egresses.
///
/// Run loop as [`Egress`]'s: inputs with `now` ([`handle_input`](Self::handle_input) for what
/// happens in a room, [`start`](Self::start) / [`stop`](Self::stop) for API calls),
/// [`handle_timeout`](Self::handle_timeout) at [`poll_timeout`](Self::poll_timeout), then
/// [`poll_output`](Self::poll_output) until `None`: each output names its egress.
#[derive(Debug)]
pub struct Recorder {
    limits: RecorderLimits,
    active: BTreeMap<String, Egress>,
    /// Room → ids of its running egresses.
    rooms: BTreeMap<String, BTreeSet<String>>,
    /// Ended egresses' last state, and their order of ending (oldest first).
    ended: BTreeMap<String, EgressInfo>,
    ended_order: VecDeque<String>,
    outputs: VecDeque<(String, Output)>,
}

impl Recorder {
    /// A recorder with nothing running.
    pub fn new(limits: RecorderLimits) -> Recorder {
        Recorder {
            limits,
            active: BTreeMap::new(),
            rooms: BTreeMap::new(),
            ended: BTreeMap::new(),
            ended_order: VecDeque::new(),
            outputs: VecDeque::new(),
        }
    }

    /// Starts an egress (`StartRoomCompositeEgress`, `StartTrackEgress`).
    pub fn start(&mut self, now: Instant, config: EgressConfig) -> Result<(), RecorderError> {
        self.admit(&config.egress_id)?;
        let egress = Egress::new(now, config)?;
        self.insert(egress);
        Ok(())
    }

    /// Resumes an egress after the node restarted (see [`Egress::resume`]).
    pub fn resume(
        &mut self,
        now: Instant,
        config: EgressConfig,
        elapsed: Duration,
        files: &BTreeMap<Artifact, Vec<u8>>,
    ) -> Result<(), RecorderError> {
        self.admit(&config.egress_id)?;
        let egress = Egress::resume(now, config, elapsed, files)?;
        self.insert(egress);
        Ok(())
    }

    /// Stops an egress (`StopEgress`); its files are finished and its `Ended` event queued.
    /// Returns its final state.
    pub fn stop(&mut self, now: Instant, id: &str) -> Result<EgressInfo, RecorderError> {
        if let Some(info) = self.ended.get(id) {
            return Err(RecorderError::Ended {
                id: id.to_owned(),
                state: info.state,
            });
        }
        let egress = self
            .active
            .get_mut(id)
            .ok_or_else(|| RecorderError::NotFound(id.to_owned()))?;
        egress.handle_input(now, Input::Stop);
        let info = egress.info();
        self.collect(id);
        Ok(info)
    }

    /// Something happened in `room` (a packet, a track or speaking change, the room closing
    /// with [`Input::Stop`]): every running egress of the room gets it.
    pub fn handle_input(&mut self, now: Instant, room: &str, input: Input<'_>) {
        let Some(ids) = self.rooms.get(room) else {
            return;
        };
        let ids: Vec<String> = ids.iter().cloned().collect();
        for id in ids {
            if let Some(egress) = self.active.get_mut(&id) {
                egress.handle_input(now, input);
            }
            self.collect(&id);
        }
    }

    /// Runs what is due at `now` in every egress.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<String> = self
            .active
            .iter()
            .filter(|(_, e)| e.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(egress) = self.active.get_mut(&id) {
                egress.handle_timeout(now);
            }
            self.collect(&id);
        }
    }

    /// A write of egress `id` failed: it ends as failed (see [`Egress::handle_write_error`]).
    pub fn handle_write_error(&mut self, now: Instant, id: &str, artifact: &Artifact, error: &str) {
        if let Some(egress) = self.active.get_mut(id) {
            egress.handle_write_error(now, artifact, error);
            self.collect(id);
        }
    }

    /// The earliest deadline of all running egresses.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.values().filter_map(Egress::poll_timeout).min()
    }

    /// The next output, with the id of the egress it belongs to.
    pub fn poll_output(&mut self) -> Option<(String, Output)> {
        self.outputs.pop_front()
    }

    /// Egresses for `ListEgress`, ordered by id: those of `room` (all rooms with `None`),
    /// running only with `active`.
    pub fn list(&self, room: Option<&str>, active: bool) -> Vec<EgressInfo> {
        let running = self.active.values().map(Egress::info);
        let ended = self.ended.values().filter(|_| !active).cloned();
        let mut out: Vec<EgressInfo> = running
            .chain(ended)
            .filter(|i| room.is_none_or(|r| i.room == r))
            .collect();
        out.sort_by(|a, b| a.egress_id.cmp(&b.egress_id));
        out
    }

    /// One egress's state, running or ended.
    pub fn info(&self, id: &str) -> Option<EgressInfo> {
        self.active
            .get(id)
            .map(Egress::info)
            .or_else(|| self.ended.get(id).cloned())
    }

    /// Whether `room` is being recorded (for the room attribute that tells participants).
    pub fn is_recording(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|ids| !ids.is_empty())
    }

    fn admit(&self, id: &str) -> Result<(), RecorderError> {
        if self.active.contains_key(id) || self.ended.contains_key(id) {
            return Err(RecorderError::AlreadyExists(id.to_owned()));
        }
        if self.active.len() >= self.limits.max_active {
            return Err(RecorderError::TooMany(self.limits.max_active));
        }
        Ok(())
    }

    fn insert(&mut self, egress: Egress) {
        let id = egress.id().to_owned();
        self.rooms
            .entry(egress.room().to_owned())
            .or_default()
            .insert(id.clone());
        self.active.insert(id.clone(), egress);
        self.collect(&id);
    }

    /// Moves egress `id`'s outputs to the queue; an ended egress leaves the running set.
    fn collect(&mut self, id: &str) {
        let Some(egress) = self.active.get_mut(id) else {
            return;
        };
        let mut ended = None;
        while let Some(output) = egress.poll_output() {
            if let Output::Event(EgressEvent::Ended(info)) = &output {
                ended = Some((**info).clone());
            }
            self.outputs.push_back((id.to_owned(), output));
        }
        let Some(info) = ended else {
            return;
        };
        self.active.remove(id);
        if let Some(ids) = self.rooms.get_mut(&info.room) {
            ids.remove(id);
            if ids.is_empty() {
                self.rooms.remove(&info.room);
            }
        }
        self.ended.insert(id.to_owned(), info);
        self.ended_order.push_back(id.to_owned());
        while self.ended_order.len() > self.limits.max_ended {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }
}
