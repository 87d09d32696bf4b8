//! Two rooms on one node: does a busy room slow down joins in another?
//!
//! Room A holds a crowd of listeners and one speaking speaker for the whole run. Room B takes
//! join storms, one after another, each in a fresh room; between storms room A alternates
//! between *idle* (only its audio) and *busy*: a data message to the whole room every
//! `reaction_every` (sent as the control plane sends reactions, through the Twirp
//! `RoomService.SendData`) and the floor passing to the next speaker every `rotate_every` (a
//! mute and an unmute, each announced to every participant of the room). Each storm reports its
//! join-to-first-audio percentiles; the verdict is the ratio of room B's p95 with room A busy
//! to the same with room A idle, measured alternately in one run. Every run is bounded in
//! clients and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol as lk;
use prost::Message as _;
use serde::Serialize;

use crate::client::{Command, Depth, Role};
use crate::clock::Clock;
use crate::report::{StepQuantiles, join_steps};
use crate::scenario::{Crowd, MAX_CLIENTS, ScenarioError, Target, percentile};
use crate::threads::{ThreadSample, ThreadTime, summary};

/// Longest a storm's listeners wait for audio after the last of them joined.
const STORM_PLAY: Duration = Duration::from_secs(4);

/// With room B's clients on their own thread, how many nice steps below them the rest of the
/// harness runs ([`room_b_runtime`]).
pub const ROOM_A_NICE: i32 = 10;

/// The name of room B's clients' thread ([`room_b_runtime`]).
pub const ROOM_B_THREAD: &str = "room-b-clients";

/// The name of room B's listeners' socket reader thread.
pub const ROOM_B_SINK: &str = "room-b-sink";

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct TwoRoomsParams {
    /// Room A's listeners.
    pub a_listeners: usize,
    /// Room A's speakers (one speaks at a time).
    pub a_speakers: usize,
    /// Room A's listener joins per second.
    pub a_join_rate: f64,
    /// Busy room A: a data message to the room this often.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub reaction_every: Duration,
    /// Busy room A: the floor passes this often.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub rotate_every: Duration,
    /// Listeners per room-B storm.
    pub b_listeners: usize,
    /// Their joins per second.
    pub b_join_rate: f64,
    /// Storm pairs (idle, busy), alternating.
    pub rounds: usize,
    /// Room B's clients (and their socket reader) run on a harness thread of their own (a
    /// runtime the caller gives [`run`]) rather than beside room A's. As on separate devices,
    /// a room B client's handshake then does not wait behind room A's clients' work in the
    /// harness (a reaction reaches all of room A's clients at once): with
    /// [`room_b_runtime`] the rest of the harness runs [`ROOM_A_NICE`] steps below room B's
    /// thread.
    pub b_own_thread: bool,
}

impl TwoRoomsParams {
    /// Check the bounds every run must respect.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: &str| Err(ScenarioError::Invalid(m.to_owned()));
        let clients = self.a_listeners + self.a_speakers + self.rounds * 2 * (self.b_listeners + 1);
        if clients > MAX_CLIENTS {
            return invalid("too many clients");
        }
        if self.a_speakers == 0 || self.b_listeners == 0 || self.rounds == 0 || self.rounds > 20 {
            return invalid("need a speaker in A, listeners in B, 1-20 rounds");
        }
        for rate in [self.a_join_rate, self.b_join_rate] {
            if !(rate > 0.0 && rate <= 10_000.0) {
                return invalid("join rates must be in (0, 10000] per second");
            }
        }
        if self.reaction_every < Duration::from_millis(10)
            || self.rotate_every < Duration::from_millis(100)
        {
            return invalid("reactions at most every 10 ms, rotations every 100 ms");
        }
        Ok(())
    }

    /// Upper bound on the wall time of the run.
    pub fn bound(&self) -> Duration {
        let a = Duration::from_secs_f64(self.a_listeners as f64 / self.a_join_rate);
        let storm = Duration::from_secs_f64(self.b_listeners as f64 / self.b_join_rate)
            + STORM_PLAY
            + Duration::from_secs(15);
        a + Duration::from_secs(30) + storm * (2 * self.rounds) as u32
    }
}

/// One storm in room B.
#[derive(Debug, Clone, Serialize)]
pub struct Storm {
    /// Whether room A was busy.
    pub busy: bool,
    /// Listeners that heard audio / started.
    pub heard: usize,
    /// Listeners started.
    pub listeners: usize,
    /// Join to first audio, ms: p50, p95, p99.
    pub join_to_audio_ms: Option<[u32; 3]>,
    /// Reactions sent to room A during the storm (and refused).
    pub reactions: u64,
    /// Reactions the server refused or did not answer.
    pub reactions_failed: u64,
    /// Floor changes in room A during the storm.
    pub rotations: u64,
    /// Room B's join→first audio along the join's steps (see [`Report::join_steps_ms`]).
    ///
    /// [`Report::join_steps_ms`]: crate::report::Report::join_steps_ms
    pub join_steps_ms: Vec<StepQuantiles>,
    /// Live peers of each media engine shard at the storm's end, room B's listeners still
    /// connected (empty when the server did not say).
    pub shard_peers: Vec<u64>,
    /// The server's threads over the storm, run and run-queue wait: those of the process
    /// `target.pid` names (none when it is unknown or could not be read).
    pub server_threads: Vec<ThreadTime>,
    /// The harness's threads over the storm (room B's socket reader is [`ROOM_B_SINK`]).
    pub harness_threads: Vec<ThreadTime>,
    /// Every listener's join to first audio, ms, sorted.
    #[serde(skip)]
    pub samples: Vec<u32>,
}

/// The run's result.
#[derive(Debug, Clone, Serialize)]
pub struct TwoRoomsReport {
    /// What ran.
    pub params: TwoRoomsParams,
    /// Room A's clients (speakers hear each other too) that heard audio once it settled.
    pub a_heard: usize,
    /// Time for every room-A speaker to publish once (before the storms).
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub warm_up: Duration,
    /// Live peers of each media engine shard with room A alone, before the storms (empty
    /// when the server did not say).
    pub a_shard_peers: Vec<u64>,
    /// Every storm, in order.
    pub storms: Vec<Storm>,
    /// Room B's p95 with A busy ÷ with A idle, over all storms of each kind (pooled samples).
    pub busy_over_idle_p95: Option<f64>,
    /// Pooled p95 (ms) with A idle and busy.
    pub p95_idle_busy_ms: [Option<u32>; 2],
    /// The nice values the harness ran at: the storm driver and room A's clients, and room
    /// B's clients.
    pub harness_nice: [Option<i32>; 2],
}

impl TwoRoomsReport {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| storm | room A | heard | join→first audio p50 / p95 / p99 | reactions (failed) | rotations |\n|---:|---|---:|---|---:|---:|\n",
        );
        for (i, s) in self.storms.iter().enumerate() {
            let j = s
                .join_to_audio_ms
                .map_or("-".to_owned(), |[a, b, c]| format!("{a} / {b} / {c} ms"));
            out.push_str(&format!(
                "| {} | {} | {}/{} | {} | {} ({}) | {} |\n",
                i + 1,
                if s.busy { "busy" } else { "idle" },
                s.heard,
                s.listeners,
                j,
                s.reactions,
                s.reactions_failed,
                s.rotations
            ));
        }
        out.push_str("\nroom B's join steps, p50 / p95 ms (time since the step before):\n");
        for (i, s) in self.storms.iter().enumerate() {
            let steps: Vec<String> = s
                .join_steps_ms
                .iter()
                .map(|q| {
                    let t = &q.since_previous_ms;
                    format!("{} {:.1} / {:.1}", q.step, t.p50, t.p95)
                })
                .collect();
            out.push_str(&format!(
                "storm {} ({}): {}\n",
                i + 1,
                if s.busy { "busy" } else { "idle" },
                steps.join(", ")
            ));
        }
        out.push_str("\nthreads over each storm, run / waiting for a CPU, ms:\n");
        for (i, s) in self.storms.iter().enumerate() {
            out.push_str(&format!(
                "storm {} ({}): server: {}; harness: {}\n",
                i + 1,
                if s.busy { "busy" } else { "idle" },
                summary(&s.server_threads),
                summary(&s.harness_threads),
            ));
        }
        let peers = |p: &[u64]| {
            if p.is_empty() {
                "-".to_owned()
            } else {
                p.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ")
            }
        };
        out.push_str(&format!(
            "peers per engine shard: room A alone {}",
            peers(&self.a_shard_peers)
        ));
        for (i, s) in self.storms.iter().enumerate() {
            out.push_str(&format!(
                ", end of storm {} {}",
                i + 1,
                peers(&s.shard_peers)
            ));
        }
        out.push('\n');
        let [a_nice, b_nice] = self
            .harness_nice
            .map(|n| n.map_or("-".into(), |n| n.to_string()));
        out.push_str(&format!(
            "harness priority (nice): room A's clients and the driver {a_nice}, room B's clients {b_nice}\n"
        ));
        let [idle, busy] = self.p95_idle_busy_ms;
        out.push_str(&format!(
            "\nroom A: {} of {} clients heard audio; room B pooled p95: idle {} ms, busy {} ms; busy ÷ idle = {}\n",
            self.a_heard,
            self.params.a_listeners + self.params.a_speakers,
            idle.map_or("-".into(), |v| v.to_string()),
            busy.map_or("-".into(), |v| v.to_string()),
            self.busy_over_idle_p95
                .map_or("-".into(), |r| format!("{r:.2}")),
        ));
        out
    }
}

/// The busy-room driver's counters.
#[derive(Debug, Default)]
struct Busy {
    on: AtomicBool,
    reactions: AtomicU64,
    failed: AtomicU64,
    rotations: AtomicU64,
}

/// Run the two-room benchmark against `target` (its room name is the prefix of both rooms).
/// `b_clients`: where room B's clients run, when `params.b_own_thread` (the current runtime
/// otherwise). Each storm reports the server's threads when `target.pid` is known.
pub async fn run(
    target: Target,
    params: &TwoRoomsParams,
    b_clients: Option<tokio::runtime::Handle>,
) -> Result<TwoRoomsReport, ScenarioError> {
    let server_pid = target.pid;
    params.validate()?;
    if params.b_own_thread != b_clients.is_some() {
        return Err(ScenarioError::Invalid(
            "room B's own thread needs a runtime for its clients".into(),
        ));
    }
    // Starts a room B client where room B's clients run.
    let b_join = |b: &mut Crowd, role: Role| -> Result<(), ScenarioError> {
        let _entered = b_clients.as_ref().map(tokio::runtime::Handle::enter);
        b.join(role)
    };
    // The priorities the two sides run at, as the report's record.
    let a_nice = crate::affinity::priority().ok();
    let b_nice = match &b_clients {
        Some(h) => h
            .spawn(async { crate::affinity::priority().ok() })
            .await
            .ok()
            .flatten(),
        None => a_nice,
    };
    let harness_nice = [a_nice, b_nice];
    let clock = Clock::start();
    let began = clock.now();
    let deadline = began + params.bound();
    let room_a = format!("{}-a", target.room);
    let mut a = Crowd::new(
        Target {
            room: room_a.clone(),
            ..target.clone()
        },
        deadline,
        0,
        Depth::Header,
    )?;
    for _ in 0..params.a_speakers {
        a.join(Role::Speaker)?;
    }
    a.speaker(0, Command::Speak);
    let gap = Duration::from_secs_f64(1.0 / params.a_join_rate);
    let mut next = clock.now();
    for _ in 0..params.a_listeners {
        sleep_until(next).await;
        a.join(Role::Listener)?;
        next += gap;
    }
    // Let room A settle: every listener connected and hearing.
    let settle = clock.now() + Duration::from_secs(20);
    while a.counters().heard.load(Ordering::Relaxed) < params.a_listeners as u64
        && clock.now() < settle
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_heard = a.counters().heard.load(Ordering::Relaxed) as usize;
    // Every speaker of room A publishes once before the storms, so that passing the floor
    // during them is a mute and an unmute, as in a live room; a first publication is a
    // renegotiation of every listener's connection, measured apart (`warm_up`).
    let warm = clock.now();
    for i in 1..params.a_speakers {
        a.speaker(i - 1, Command::Silence);
        a.speaker(i, Command::Speak);
        tokio::time::sleep(params.rotate_every).await;
    }
    if params.a_speakers > 1 {
        a.speaker(params.a_speakers - 1, Command::Silence);
        a.speaker(0, Command::Speak);
        tokio::time::sleep(params.rotate_every).await;
    }
    let warm_up = clock.now().saturating_duration_since(warm);
    let a_shard_peers = shard_peers(target.http).await;

    // Room A's busy driver: reactions through the server API, floor changes through clients.
    let busy = Arc::new(Busy::default());
    let admin = admin_token(&target, &room_a)?;
    let reactions = {
        let busy = busy.clone();
        let (http, room, every) = (target.http, room_a.clone(), params.reaction_every);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while clock.now() < deadline {
                tick.tick().await;
                if !busy.on.load(Ordering::Relaxed) {
                    continue;
                }
                let (room, admin) = (room.clone(), admin.clone());
                let ok = tokio::task::spawn_blocking(move || send_reaction(http, &room, &admin))
                    .await
                    .unwrap_or(false);
                busy.reactions.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    busy.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let mut storms = Vec::new();
    let mut floor = 0usize;
    for round in 0..params.rounds * 2 {
        let is_busy = round % 2 == 1;
        busy.on.store(is_busy, Ordering::Relaxed);
        let before = (
            busy.reactions.load(Ordering::Relaxed),
            busy.failed.load(Ordering::Relaxed),
            busy.rotations.load(Ordering::Relaxed),
        );
        let threads_before = sample_threads(server_pid);
        let b_target = Target {
            room: format!("{}-b{round}", target.room),
            ..target.clone()
        };
        // Made where room B's clients run: the crowd's socket reader thread starts there,
        // with that thread's priority.
        let mut b = match &b_clients {
            Some(h) => h
                .spawn(async move {
                    Crowd::new_named(b_target, deadline, 0, Depth::Header, ROOM_B_SINK)
                })
                .await
                .map_err(|e| ScenarioError::Invalid(format!("room B's runtime: {e}")))??,
            None => Crowd::new_named(b_target, deadline, 0, Depth::Header, ROOM_B_SINK)?,
        };
        b_join(&mut b, Role::Speaker)?;
        b.speaker(0, Command::Speak);
        let audio = clock.now() + Duration::from_secs(10);
        while b.counters().rtp_sent.load(Ordering::Relaxed) == 0 && clock.now() < audio {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gap = Duration::from_secs_f64(1.0 / params.b_join_rate);
        let mut next = clock.now();
        let mut next_rotation = clock.now() + params.rotate_every;
        // With one speaker in room A there is no floor to pass.
        let rotating = is_busy && params.a_speakers > 1;
        let end_joins =
            clock.now() + Duration::from_secs_f64(params.b_listeners as f64 / params.b_join_rate);
        let mut joined = 0;
        let end = end_joins + STORM_PLAY;
        while clock.now() < end {
            let now = clock.now();
            if joined < params.b_listeners && now >= next {
                b_join(&mut b, Role::Listener)?;
                joined += 1;
                next += gap;
            }
            if rotating && now >= next_rotation {
                a.speaker(floor, Command::Silence);
                floor = (floor + 1) % params.a_speakers;
                a.speaker(floor, Command::Speak);
                busy.rotations.fetch_add(1, Ordering::Relaxed);
                next_rotation += params.rotate_every;
            }
            let wake = storm_wake(
                (joined < params.b_listeners).then_some(next),
                rotating.then_some(next_rotation),
                end,
            );
            sleep_until(wake).await;
        }
        busy.on.store(false, Ordering::Relaxed);
        let threads_after = sample_threads(server_pid);
        let shard_peers = shard_peers(target.http).await;
        let (listeners, _) = b.finish().await;
        let mut ms: Vec<u32> = listeners
            .iter()
            .filter_map(|(t, _)| t.first_audio)
            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
            .collect();
        ms.sort_unstable();
        let q = |p| percentile(&ms, p);
        storms.push(Storm {
            busy: is_busy,
            heard: ms.len(),
            listeners: listeners.len(),
            join_to_audio_ms: q(0.5)
                .zip(q(0.95))
                .zip(q(0.99))
                .map(|((a, b), c)| [a, b, c]),
            reactions: busy.reactions.load(Ordering::Relaxed) - before.0,
            reactions_failed: busy.failed.load(Ordering::Relaxed) - before.1,
            rotations: busy.rotations.load(Ordering::Relaxed) - before.2,
            join_steps_ms: join_steps(listeners.iter().map(|(t, _)| t)),
            shard_peers,
            server_threads: phase(&threads_before.0, &threads_after.0),
            harness_threads: phase(&threads_before.1, &threads_after.1),
            samples: ms,
        });
        // Let the room B storm's leaves drain before the next.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    reactions.abort();
    let _ = a.finish().await;
    let pooled = |busy: bool| {
        let mut all: Vec<u32> = storms
            .iter()
            .filter(|s| s.busy == busy)
            .flat_map(|s| s.samples.iter().copied())
            .collect();
        all.sort_unstable();
        percentile(&all, 0.95)
    };
    let (idle, busy_p95) = (pooled(false), pooled(true));
    let ratio = idle
        .zip(busy_p95)
        .filter(|(i, _)| *i > 0)
        .map(|(i, b)| f64::from(b) / f64::from(i));
    Ok(TwoRoomsReport {
        params: params.clone(),
        a_heard,
        warm_up,
        a_shard_peers,
        storms,
        busy_over_idle_p95: ratio,
        p95_idle_busy_ms: [idle, busy_p95],
        harness_nice,
    })
}

/// A token that may administer `room` (for `SendData`).
fn admin_token(target: &Target, room: &str) -> Result<String, ScenarioError> {
    let grants = VideoGrants {
        room_admin: true,
        room: room.to_owned(),
        ..Default::default()
    };
    AccessToken::with_api_key(&target.key, &target.secret)
        .with_identity("bench-admin")
        .with_grants(grants)
        .with_ttl(Duration::from_secs(3600))
        .to_jwt()
        .map_err(|e| ScenarioError::Invalid(format!("admin token: {e}")))
}

/// One reaction to `room` through Twirp `SendData` (protobuf); whether the server said 200.
fn send_reaction(http: SocketAddr, room: &str, token: &str) -> bool {
    let body = lk::SendDataRequest {
        room: room.to_owned(),
        data: b"{\"reaction\":\"clap\"}".to_vec(),
        kind: lk::data_packet::Kind::Reliable as i32,
        ..Default::default()
    }
    .encode_to_vec();
    let timeout = Duration::from_secs(2);
    let Ok(mut stream) = TcpStream::connect_timeout(&http, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let head = format!(
        "POST /twirp/livekit.RoomService/SendData HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
        return false;
    }
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).is_ok() && status.ends_with(b"200")
}

/// When the storm driver wakes next: the next join (while joins are left), the next floor
/// change (while room A is busy with more than one speaker), at the latest the storm's end.
fn storm_wake(join: Option<Instant>, rotation: Option<Instant>, end: Instant) -> Instant {
    [join, rotation]
        .into_iter()
        .flatten()
        .fold(end, Instant::min)
}

/// Live peers of each engine shard of the server at `http` (empty when it did not say).
async fn shard_peers(http: SocketAddr) -> Vec<u64> {
    tokio::task::spawn_blocking(move || crate::server::scrape_shard_peers(http))
        .await
        .unwrap_or_default()
}

/// The server's threads (when its pid is known and readable) and this harness's.
fn sample_threads(server_pid: Option<u32>) -> (Option<ThreadSample>, Option<ThreadSample>) {
    let server = server_pid.and_then(|pid| ThreadSample::read(&pid.to_string()).ok());
    (server, ThreadSample::read("self").ok())
}

/// Each thread group's time between two samples; nothing unless both were read.
fn phase(before: &Option<ThreadSample>, after: &Option<ThreadSample>) -> Vec<ThreadTime> {
    match (before, after) {
        (Some(before), Some(after)) => after.since(before),
        _ => Vec::new(),
    }
}

/// Room B's clients' runtime, ahead of the rest of the harness: a one-thread runtime whose
/// thread keeps the calling thread's priority, after which the calling thread's priority is
/// lowered by [`ROOM_A_NICE`], and every thread it starts from then on inherits that (the
/// harness's main runtime, room A's clients and their socket reader). Call it after the
/// server is spawned (which must not inherit it), after pinning the harness's CPUs, and
/// before building the main runtime. Returns the runtime and the calling thread's new nice.
pub fn room_b_runtime() -> Result<(tokio::runtime::Runtime, i32), ScenarioError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(ROOM_B_THREAD)
        .enable_all()
        .build()
        .map_err(crate::client::ClientError::Io)?;
    let nice = crate::affinity::lower_priority(ROOM_A_NICE)?;
    Ok((runtime, nice))
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_storm_driver_wakes_for_what_is_left_only() {
        let t0 = crate::clock::Clock::start().now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(storm_wake(Some(at(10)), Some(at(5)), at(100)), at(5));
        assert_eq!(storm_wake(Some(at(10)), None, at(100)), at(10));
        // Joins done, no floor to pass: the end, not a floor change long past (which would
        // wake it at once, over and over).
        assert_eq!(storm_wake(None, None, at(100)), at(100));
        assert_eq!(storm_wake(None, Some(at(200)), at(100)), at(100));
    }
}
