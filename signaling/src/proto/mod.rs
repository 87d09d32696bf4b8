//! The signaling core: every media-side room and participant session of a node as one
//! deterministic state machine, in the style of str0m and quinn-proto.
//!
//! # Run loop
//!
//! ```text
//! loop {
//!     match server.poll_output() {
//!         Output::Send(session, msg)  => put msg in the session's outbox (a full outbox:
//!                                        server.handle_client_overflow),
//!         Output::Close(session, why) => close the session's WebSocket,
//!         Output::Engine(command)     => hand to the media engine (undelivered:
//!                                        server.handle_undelivered),
//!         Output::Webhook(event)      => to the webhook notifier and the observer,
//!         Output::Observe(event)      => to the observer only,
//!         Output::JoinLatency(d)      => into the join-latency histogram,
//!         Output::Relay(r)            => open, feed or close a relay link's WebSocket,
//!         Output::Timeout(t)          => wait for a client request, an engine event, an
//!                                        administrative call or t; feed it with its `now`,
//!     }
//! }
//! ```
//!
//! Inputs are a client's join ([`Server::connect`]) and requests ([`Server::handle_request`]),
//! a closed connection, an engine event ([`Server::handle_engine_event`]), an administrative
//! call ([`Server::handle_admin`]) and the timer ([`Server::handle_timeout`]); each takes
//! `now`. Nothing in here waits, reads a clock or draws randomness other than from the seed
//! in [`ServerConfig`]: wall-clock times (protocol timestamps, room timeouts) are derived from
//! the `now` passed in and the one wall-clock reading given to [`Server::new`]. So a test with
//! simulated time and a fixed seed is reproducible, and no input waits for another: a reaction
//! in a room of thousands or a new speaker there costs one engine command, never a round trip,
//! and joins in other rooms are not held up behind it.
//!
//! The engine is driven with [`EngineCommand`]s. The core chooses its peers' ids, shard
//! included (a room's peers kept together on as few shards as its size allows, rooms apart:
//! `placement`), so a peer is filed before the engine has seen it, and answers, offers and
//! refusals arrive as events about that id.
//!
//! # Errors versus bugs
//!
//! Nothing a client sends panics: malformed SDP, unknown tracks and requests out of order are
//! answered with a `RequestResponse` error or ignored, and concern only that session.

mod admin;
mod engine;
mod feed;
mod placement;
mod recording;
mod relay;
mod requests;
mod resume;
mod roster;
mod session;
mod updates;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use stoa_sfu::{EngineCommand, PeerId};

use crate::room::{Room, RoomLimits};
pub use admin::{AdminOp, AdminReply, ParticipantUpdate, SendData};
pub use feed::{FEED_RETRY, NODE_URL_ATTRIBUTE};
pub use placement::ROOM_PEERS_PER_SHARD;
pub use recording::TapChange;
pub use relay::{RELAY_IDENTITY_PREFIX, RelayOutput};
pub use roster::{ROSTER_BATCH, ROSTER_PACKETS_PER_TICK, ROSTER_TOPIC};
use session::{Pc, Session};
pub use updates::{FLUSH_SLICE, JOIN_PARTICIPANTS, UPDATE_PARTICIPANTS};

/// The LiveKit server version advertised in `ServerInfo.version`. livekit-client gates features
/// on it (RPC needs ≥ 1.8.0); this is the feature level Stoa's signaling implements.
pub const ADVERTISED_LIVEKIT_VERSION: &str = "1.9.0";

/// How often pending participant updates are flushed (batched per client).
pub const TICK: Duration = Duration::from_millis(100);

/// Every this many ticks, `RoomUpdate`s are sent and pings and room timeouts checked.
const SLOW_TICKS: u64 = 5;

/// At most one audience-size `RoomUpdate` per room this often (metadata and recording changes
/// go out at once). LiveKit's server batches its room updates too (every few seconds).
pub const ROOM_UPDATE_EVERY: Duration = Duration::from_secs(1);

/// Topics of data packets only the server sends (`stoa.reaction`, the control plane's
/// reactions, stamped with the reacting user): a client's packet on one is dropped.
pub const RESERVED_TOPIC_PREFIX: &str = "stoa.";

/// How many data packets one participant may send: a token bucket refilled at `per_sec`,
/// holding at most `burst`. Packets beyond it are dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRate {
    /// Packets per second, sustained.
    pub per_sec: u32,
    /// Packets at once.
    pub burst: u32,
}

impl Default for DataRate {
    fn default() -> Self {
        // Generous for chat, RPC and small streams; far below what floods a room.
        DataRate {
            per_sec: 50,
            burst: 100,
        }
    }
}

/// Settings of the signaling core.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Defaults for rooms created on join.
    pub room_defaults: RoomLimits,
    /// Seconds between client pings (`JoinResponse.ping_interval`).
    pub ping_interval: u32,
    /// Seconds without a ping before the session is dropped.
    pub ping_timeout: u32,
    /// TURN servers put in every JoinResponse, with credentials minted per session.
    pub turn: Option<TurnServers>,
    /// Whether room and participant events are produced ([`Output::Webhook`],
    /// [`Output::Observe`]); off when nobody consumes them.
    pub events: bool,
    /// Number of engine shards; new peers are spread over them, rooms kept apart (see
    /// `placement`).
    pub engine_shards: u16,
    /// Peers a room puts on one engine shard before it spreads to another.
    pub room_peers_per_shard: u32,
    /// Seed for sids.
    pub seed: [u8; 32],
    /// Data packets each participant may send.
    pub data_rate: DataRate,
    /// Fresh access tokens pushed to clients ([`TokenRefresh`]); `None` for none.
    pub token_refresh: Option<TokenRefresh>,
    /// Which of the node's signaling cores this is: its session and peer ids are the ones
    /// [`Partition::of_session`] and [`Partition::of_peer`] map to it.
    pub partition: Partition,
}

/// Access tokens the core mints for connected clients (LiveKit's `refresh_token`): every
/// `every`, each session gets a token for its identity and room with the permissions it has
/// now, valid for `ttl`, signed with the key its own token was signed with. A client that
/// reconnects (resume or full rejoin) uses the newest one, so it is not locked out when the
/// token it joined with expires, and it cannot come back with permissions taken from it since.
#[derive(Clone)]
pub struct TokenRefresh {
    /// The keys tokens are signed with (a key no longer here means no refresh).
    pub keys: std::sync::Arc<crate::token::ApiKeys>,
    /// How often.
    pub every: Duration,
    /// How long each refreshed token is valid.
    pub ttl: Duration,
}

impl std::fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRefresh")
            .field("every", &self.every)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// One of `count` signaling cores that share a node's rooms (each room lives in one core),
/// numbered from 0. The ids a core hands out name it, so the shell can route a session's
/// requests and a peer's engine events without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// This core.
    pub index: u16,
    /// How many there are (at least 1).
    pub count: u16,
}

impl Default for Partition {
    fn default() -> Self {
        Partition { index: 0, count: 1 }
    }
}

impl Partition {
    /// The core, of `count`, that created `session`.
    pub fn of_session(count: usize, session: SessionId) -> usize {
        (session.0 % count.max(1) as u64) as usize
    }

    /// The core, of `count`, that created `peer`.
    pub fn of_peer(count: usize, peer: PeerId) -> usize {
        (peer.index() % count.max(1) as u64) as usize
    }

    /// The `local`-th id of this core (counted from 1).
    fn id(self, local: u64) -> u64 {
        local * u64::from(self.count.max(1)) + u64::from(self.index)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            room_defaults: RoomLimits::default(),
            ping_interval: 5,
            ping_timeout: 15,
            turn: None,
            events: false,
            engine_shards: 1,
            room_peers_per_shard: ROOM_PEERS_PER_SHARD,
            seed: [0; 32],
            data_rate: DataRate::default(),
            token_refresh: None,
            partition: Partition::default(),
        }
    }
}

/// One participant's TURN server entry in a JoinResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    /// `turn:` and `turns:` URLs.
    pub urls: Vec<String>,
    /// Time-limited username.
    pub username: String,
    /// Its password.
    pub credential: String,
}

/// Mints [`TurnCredentials`] for a participant identity.
pub type MintTurnCredentials = dyn Fn(&str) -> TurnCredentials + Send + Sync;

/// The TURN servers of every JoinResponse: signaling calls the minter once per join (the
/// binary provides it, from the relay's shared secret).
#[derive(Clone)]
pub struct TurnServers(pub Arc<MintTurnCredentials>);

impl std::fmt::Debug for TurnServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnServers(..)")
    }
}

impl TurnServers {
    fn ice_servers(&self, identity: &str) -> Vec<lk::IceServer> {
        let minted = (self.0)(identity);
        vec![lk::IceServer {
            urls: minted.urls,
            username: minted.username,
            credential: minted.credential,
        }]
    }
}

/// Identifies one WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

impl SessionId {
    /// The raw value (for logs and tests).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A refused join, with the HTTP status and text the client shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Plain-text reason.
    pub message: String,
}

/// Errors of administrative calls.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No such room.
    #[error("room {0} not found")]
    RoomNotFound(String),
    /// No such participant.
    #[error("participant {0} not found")]
    ParticipantNotFound(String),
    /// No such track.
    #[error("track {0} not found")]
    TrackNotFound(String),
    /// The service stopped.
    #[error("signaling service is not running")]
    Stopped,
    /// An argument is not usable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

/// What the core asks of its shell. See the [module documentation](self).
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// A protocol message for a session's client.
    Send(SessionId, Box<lk::SignalResponse>),
    /// Close a session's connection with this reason (after the messages sent before it).
    Close(SessionId, String),
    /// A command for the media engine.
    Engine(EngineCommand),
    /// A LiveKit webhook event, for the webhook notifier and the in-process observer.
    Webhook(Box<lk::WebhookEvent>),
    /// An event for the in-process observer only (not a LiveKit webhook).
    Observe(Box<lk::WebhookEvent>),
    /// A participant's media connection came up this long after its join.
    JoinLatency(Duration),
    /// A track of a recorded room is tapped from now on, or no more: for the recorder,
    /// before the engine's first tapped packet of it.
    Tap(TapChange),
    /// Open, use or close a relay link to another node (see `relay`).
    Relay(RelayOutput),
    /// Nothing more to do before this instant (or before the next input).
    Timeout(Instant),
}

/// Sizes of the core's state at one instant. Plain data; no room or user ids.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreStats {
    /// Rooms that exist (including empty ones waiting for their timeout).
    pub rooms: u64,
    /// Sessions with a connection.
    pub sessions: u64,
    /// Sessions held for a resume (their connection lost; see `resume`).
    pub held: u64,
    /// Participants allowed to publish.
    pub publishers: u64,
    /// Participants that may only listen.
    pub listeners: u64,
    /// Published tracks, over every room.
    pub tracks: u64,
    /// Sessions ended because their client could not keep up with its outbox.
    pub clients_overflowed: u64,
    /// Sessions ended because an engine command about them could not be delivered.
    pub engine_undelivered: u64,
    /// Client data packets dropped: over the sender's rate, without permission to send data,
    /// on a reserved topic, or undecodable.
    pub data_dropped: u64,
    /// Joins on `/rtc/v1`, one peer connection (not resumes).
    pub joins_single: u64,
    /// Joins on the legacy `/rtc`, two peer connections (not resumes).
    pub joins_legacy: u64,
}

/// Every room and session of a node. See the [module documentation](self).
pub struct Server {
    config: ServerConfig,
    rng: ChaCha20Rng,
    /// The latest `now` passed in.
    now: Instant,
    /// A wall-clock reading (Unix ms) at `epoch`, from which every protocol time is derived.
    epoch: (Instant, i64),
    rooms: HashMap<String, Room>,
    /// Rooms being recorded (also while their media room is closed, see
    /// [`Server::set_recording`]).
    recorded: HashSet<String>,
    sessions: HashMap<SessionId, Session>,
    by_peer: HashMap<PeerId, (SessionId, Pc)>,
    /// Session of each participant (participant sids are unique across rooms).
    by_participant: HashMap<String, SessionId>,
    /// Participant snapshots and speaker changes waiting to be sent, per session; flushed
    /// every tick and before any offer (a client must know a track before it is offered).
    pending_updates: HashMap<SessionId, updates::Pending>,
    /// Sessions the current tick's flush has yet to reach, in order ([`updates::FLUSH_SLICE`]
    /// a turn).
    flushing: VecDeque<SessionId>,
    /// Relay links, by room (see `relay`).
    relays: HashMap<String, relay::RelayLink>,
    /// The room of each relay peer.
    relay_peers: HashMap<PeerId, String>,
    /// On an origin: feeds of edges' speakers, by room and edge URL (see `feed`).
    feeds: HashMap<feed::FeedKey, feed::Feed>,
    /// The feed of each feed's relay peer.
    feed_peers: HashMap<PeerId, feed::FeedKey>,
    /// Feeds that failed, to open again at the time given (see `feed`).
    feed_retry: BTreeMap<feed::FeedKey, Instant>,
    /// Feeds whose edge's relay session ended, to end at the time given unless the edge links
    /// again meanwhile (see `feed`).
    feed_orphans: BTreeMap<feed::FeedKey, Instant>,
    /// On an edge: snapshots of this node's participants of relayed rooms not yet announced
    /// to the origin, by room and sid (see `roster`).
    roster_out: BTreeMap<String, BTreeMap<String, lk::ParticipantInfo>>,
    /// On an origin: participants other nodes announced (their sessions are there), by room
    /// and sid, with the relay session that announced each (see `roster`).
    roster_in: HashMap<String, BTreeMap<String, SessionId>>,
    /// Rooms a relay link opened on this node (an edge): their origin reports their start and
    /// end, so they send no `room_started` / `room_finished` here.
    quiet_rooms: HashSet<String>,
    outputs: VecDeque<Output>,
    next_tick: Instant,
    ticks: u64,
    next_session: u64,
    next_peer: u64,
    /// The engine shard of each peer, by room.
    placement: placement::Placement,
    stats: CoreStats,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("rooms", &self.rooms.len())
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

/// Wrap a protocol message as a response.
fn response(message: signal_response::Message) -> Box<lk::SignalResponse> {
    Box::new(lk::SignalResponse {
        message: Some(message),
    })
}

impl Server {
    /// A node with no rooms at `now`, when the wall clock read `unix_ms`.
    pub fn new(config: ServerConfig, now: Instant, unix_ms: i64) -> Self {
        Server {
            rng: ChaCha20Rng::from_seed(config.seed),
            placement: placement::Placement::new(
                config.engine_shards,
                config.partition.index,
                config.room_peers_per_shard,
            ),
            config,
            now,
            epoch: (now, unix_ms),
            rooms: HashMap::new(),
            recorded: HashSet::new(),
            sessions: HashMap::new(),
            by_peer: HashMap::new(),
            by_participant: HashMap::new(),
            pending_updates: HashMap::new(),
            flushing: VecDeque::new(),
            relays: HashMap::new(),
            relay_peers: HashMap::new(),
            feeds: HashMap::new(),
            feed_peers: HashMap::new(),
            feed_retry: BTreeMap::new(),
            feed_orphans: BTreeMap::new(),
            roster_out: BTreeMap::new(),
            roster_in: HashMap::new(),
            quiet_rooms: HashSet::new(),
            outputs: VecDeque::new(),
            next_tick: now + TICK,
            ticks: 0,
            next_session: 1,
            next_peer: 1,
            stats: CoreStats::default(),
        }
    }

    /// The next output. Drain until [`Output::Timeout`] after every input.
    /// While a tick's flush is under way the timeout is the latest `now`: the next slice is
    /// due at once, after whatever input the shell has meanwhile.
    pub fn poll_output(&mut self) -> Output {
        self.outputs.pop_front().unwrap_or_else(|| {
            Output::Timeout(if self.flushing.is_empty() {
                self.next_tick
            } else {
                self.now.min(self.next_tick)
            })
        })
    }

    /// Drive the timers: flush batched participant updates and speaker changes every
    /// [`TICK`] (a slice of sessions per call, see `updates`); send coalesced `RoomUpdate`s,
    /// drop sessions that stopped pinging and close rooms past their timeouts every few ticks.
    /// Call when the last [`Output::Timeout`] passed (earlier is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if now < self.next_tick {
            self.flush_slice();
            return;
        }
        self.next_tick = now + TICK;
        self.tick();
    }

    /// Counts of rooms, sessions, participants by role and tracks.
    pub fn stats(&self) -> CoreStats {
        let mut stats = CoreStats {
            rooms: self.rooms.len() as u64,
            sessions: self
                .sessions
                .values()
                .filter(|s| s.held_since.is_none())
                .count() as u64,
            held: self
                .sessions
                .values()
                .filter(|s| s.held_since.is_some())
                .count() as u64,
            ..self.stats
        };
        // Mirrors are counted by the node holding them (an edge's load is its own people).
        let participants = self.rooms.values().flat_map(|r| {
            r.participants
                .values()
                .filter(|p| !p.is_relay() && !self.is_mirror(&r.name, &p.sid))
        });
        for participant in participants {
            if participant.can_publish() {
                stats.publishers += 1;
            } else {
                stats.listeners += 1;
            }
            stats.tracks += participant.tracks.len() as u64;
        }
        stats
    }

    /// Whether `identity` may join `room` now (checked before the WebSocket upgrade).
    pub fn admit(&self, room: &str, identity: &str) -> Result<(), Refused> {
        // Another node's relay link is no participant: a full room still takes it (an edge
        // mirrors the whole room, so its count is the room's).
        if identity.starts_with(RELAY_IDENTITY_PREFIX) {
            return Ok(());
        }
        match self.rooms.get(room) {
            Some(r) => r.admit(identity).map_err(|e| Refused {
                status: 403,
                message: e.to_string(),
            }),
            None => Ok(()),
        }
    }

    // ------------------------------------------------------------------ read-only views

    /// The rooms, for tests and invariant checks.
    pub fn rooms(&self) -> impl Iterator<Item = &Room> + '_ {
        self.rooms.values()
    }

    /// The engine peers of a session: (publisher, subscriber).
    pub fn session_peers(&self, session: SessionId) -> Option<(Option<PeerId>, Option<PeerId>)> {
        self.sessions
            .get(&session)
            .map(|s| (s.publisher, s.subscriber))
    }

    /// This core's engine peers per shard (see `placement`), for the other cores of the node.
    pub fn shard_loads(&self) -> &[u32] {
        self.placement.loads()
    }

    /// The peers the node's other signaling cores have on each engine shard: a new room goes
    /// to the shard least loaded by all of them together.
    pub fn set_shard_loads_elsewhere(&mut self, loads: &[u32]) {
        self.placement.set_elsewhere(loads);
    }

    /// The room of a session (for the `sim` invariants).
    #[cfg(feature = "sim")]
    pub(crate) fn session_room(&self, session: SessionId) -> Option<&str> {
        self.sessions.get(&session).map(|s| s.room.as_str())
    }

    /// Every engine peer this core created and has not closed, with its room: where each
    /// peer's shard was chosen (see `placement`).
    pub fn placed_peers(&self) -> impl Iterator<Item = (PeerId, &str)> + '_ {
        self.placement.peers()
    }

    /// The session of participant `sid`, if connected.
    pub fn session_of_participant(&self, sid: &str) -> Option<SessionId> {
        self.by_participant.get(sid).copied()
    }

    /// Every open session.
    pub fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.keys().copied()
    }

    // ------------------------------------------------------------------ internals

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// Wall-clock time of the latest `now`, Unix milliseconds.
    fn now_ms(&self) -> i64 {
        let since = self.now.saturating_duration_since(self.epoch.0);
        self.epoch.1 + since.as_millis() as i64
    }

    fn new_sid(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let tail: String = (0..12)
            .map(|_| ALPHABET[(self.rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        format!("{prefix}{tail}")
    }

    /// A fresh engine peer id for `room`, in this core's partition, on the shard `placement`
    /// chooses.
    fn new_peer(&mut self, room: &str) -> PeerId {
        let local = self.next_peer;
        self.next_peer += 1;
        let index = self.config.partition.id(local);
        let peer = PeerId::new(self.placement.shard_for(room), index);
        self.placement.add(peer, room);
        peer
    }

    /// A fresh session id, in this core's partition.
    fn new_session(&mut self) -> SessionId {
        let local = self.next_session;
        self.next_session += 1;
        SessionId(self.config.partition.id(local))
    }

    /// Queue a message for a session's client (dropped while the session is held: it has no
    /// connection, and a resume brings it up to date).
    fn send(&mut self, session: SessionId, message: signal_response::Message) {
        if self.is_held(session) {
            return;
        }
        self.outputs
            .push_back(Output::Send(session, response(message)));
    }

    fn engine(&mut self, command: EngineCommand) {
        if let EngineCommand::ClosePeer { peer } = command {
            self.placement.remove(peer);
        }
        self.outputs.push_back(Output::Engine(command));
    }

    /// Queue a webhook event (with a fresh id), if events are on.
    fn webhook(
        &mut self,
        event: &str,
        room: Option<lk::Room>,
        participant: Option<lk::ParticipantInfo>,
        track: Option<lk::TrackInfo>,
    ) {
        if !self.config.events {
            return;
        }
        let id = self.new_sid("EV_");
        let event = lk::WebhookEvent {
            event: event.to_owned(),
            room,
            participant,
            track,
            id,
            created_at: self.now_ms() / 1000,
            ..Default::default()
        };
        self.outputs.push_back(Output::Webhook(Box::new(event)));
    }

    /// `room_started` for a room just created.
    fn room_started(&mut self, room: &str) {
        let info = self.rooms.get(room).map(Room::info);
        self.webhook("room_started", info, None, None);
    }

    /// A participant event with the room's snapshot.
    fn participant_webhook(
        &mut self,
        event: &str,
        room: &str,
        participant: lk::ParticipantInfo,
        track: Option<lk::TrackInfo>,
    ) {
        // A relay link from another node is no participant of the room's.
        let hidden = participant.permission.as_ref().is_some_and(|p| p.hidden);
        if hidden && participant.identity.starts_with(RELAY_IDENTITY_PREFIX) {
            return;
        }
        let info = self.rooms.get(room).map(Room::info);
        self.webhook(event, info, Some(participant), track);
    }

    /// Create a room if it does not exist.
    fn ensure_room(&mut self, name: &str, limits: RoomLimits) {
        if !self.rooms.contains_key(name) {
            self.open_room_quietly(name, limits);
            self.quiet_rooms.remove(name);
            self.room_started(name);
        }
    }

    /// Create a room without telling webhooks: a room a relay link opens (its origin reports
    /// it), which stays quiet until it closes.
    fn open_room_quietly(&mut self, name: &str, limits: RoomLimits) {
        let sid = self.new_sid("RM_");
        let now = self.now_ms();
        let mut room = Room::new(sid, name.to_owned(), limits, now);
        room.recording = self.is_recorded(name);
        self.rooms.insert(name.to_owned(), room);
        self.quiet_rooms.insert(name.to_owned());
    }

    /// Remove a room (its sessions are already gone).
    fn close_room(&mut self, room: &str) {
        self.end_feeds_of(room);
        if let Some(r) = self.rooms.remove(room) {
            tracing::info!(room = %room, "room closed");
            if !self.quiet_rooms.remove(room) {
                self.webhook("room_finished", Some(r.info()), None, None);
            }
        }
    }
}
