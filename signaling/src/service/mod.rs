//! The tokio shell around the signaling cores ([`crate::proto::Server`]): one task per core,
//! each owning the rooms that hash to it ([`ServiceConfig::cores`], one per CPU by default),
//! moving bytes and timers and nothing else.
//!
//! Clients' WebSocket tasks ([`crate::ws`]) send a core decoded requests; it feeds them to the
//! core with the time of day, and carries the core's outputs out: protocol messages into each
//! session's bounded outbox, engine commands to the engine's shards, events to the webhook
//! notifier and the in-process observer. No input waits for the engine or for a client, and
//! rooms on different cores run in parallel, so no room's work queues behind another room's.
//! A session's requests go to the core that made its id, a peer's engine events to the core
//! that made the peer's id ([`Partition`]); one router task splits the engine's events.
//!
//! Every queue is bounded and what does not fit is counted ([`SignalingStats`]):
//!
//! - requests from clients ([`REQUESTS`] per core): a client whose request does not fit is
//!   closed with a reason ([`Signaling::request`] fails and the WebSocket task closes it);
//! - engine events, per core ([`EVENTS`]): the router waits for room (the engine's own queue
//!   is bounded), so only a core that falls behind slows the events of others;
//! - each session's outbox ([`OUTBOX`]): a client that falls this far behind is disconnected;
//! - engine commands (the shards' inboxes): the sessions concerned are told to rejoin;
//! - the observer: its events are dropped and counted; webhooks count their own drops;
//! - a relay link's requests ([`LINK_QUEUE`]): a link whose queue is full is closed (its
//!   mirror participants leave);
//! - the recorder's tap changes ([`ServiceConfig::recorder`]): dropped and counted (the
//!   recorder then cannot name that track's packets and leaves them out).

// The shell owns the clock: it reads it and hands `now` to the core.
#![allow(clippy::disallowed_methods)]

mod api;
mod loads;
mod relay;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use livekit_protocol::signal_request;
use stoa_sfu::Event;
use stoa_sfu::shell::SfuHandle;
use stoa_sfu::shell::traffic::{Histogram, HistogramSnapshot};
use tokio::sync::{mpsc, oneshot};

use crate::join::JoinParams;
pub use crate::proto::{
    ADVERTISED_LIVEKIT_VERSION, MintTurnCredentials, ParticipantUpdate, Refused, SendData,
    ServiceError, SessionId, TapChange, TokenRefresh, TurnCredentials, TurnServers,
};
use crate::proto::{AdminOp, AdminReply, Output, Partition, RelayOutput, Server, ServerConfig};
use crate::room::RoomLimits;
pub use relay::{LINK_QUEUE, RelayAuth};

/// Capacity of a session's outbox. A client that falls this far behind is disconnected rather
/// than buffered without bound.
pub const OUTBOX: usize = 512;

/// Capacity of the queue from all clients and callers to one signaling core.
pub const REQUESTS: usize = 8_192;

/// Capacity of the queue of engine events to one signaling core.
pub const EVENTS: usize = 8_192;

/// Settings of the session service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Defaults for rooms created on join.
    pub room_defaults: RoomLimits,
    /// Seconds between client pings (`JoinResponse.ping_interval`).
    pub ping_interval: u32,
    /// Seconds without a ping before the session is dropped.
    pub ping_timeout: u32,
    /// Where room and participant events go as webhooks, if anywhere.
    pub webhooks: Option<crate::webhook::Notifier>,
    /// TURN servers put in every JoinResponse, with credentials minted per session; `None`
    /// for none.
    pub turn: Option<TurnServers>,
    /// An in-process receiver of the same events (the control plane's presence). Bounded:
    /// when it is full, events are dropped and counted, never waited for.
    pub observer: Option<mpsc::Sender<lk::WebhookEvent>>,
    /// Where the tracks of recorded rooms are named as they are tapped and untapped
    /// ([`Signaling::set_recording`]): the recorder, which receives the engine's tapped
    /// packets. Bounded: changes that do not fit are dropped and counted.
    pub recorder: Option<mpsc::Sender<TapChange>>,
    /// Signaling cores, each a task owning the rooms that hash to it; 0 for one per CPU.
    pub cores: usize,
    /// Peers a room puts on one engine shard before it spreads to another.
    pub room_peers_per_shard: u32,
    /// Fresh access tokens pushed to connected clients; `None` for none.
    pub token_refresh: Option<TokenRefresh>,
    /// How this node authenticates relay links to other nodes ([`Signaling::relay_from`]);
    /// `None`: it relays no room.
    pub relay: Option<RelayAuth>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            room_defaults: RoomLimits::default(),
            ping_interval: 5,
            ping_timeout: 15,
            webhooks: None,
            turn: None,
            observer: None,
            recorder: None,
            cores: 0,
            room_peers_per_shard: crate::proto::ROOM_PEERS_PER_SHARD,
            token_refresh: None,
            relay: None,
        }
    }
}

/// What a session's writer task sends to its client.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message.
    Response(Box<lk::SignalResponse>),
    /// Close the WebSocket with this reason.
    Close(String),
}

/// The client's request did not fit in the signaling queue; the client should be closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("signaling is overloaded")]
pub struct Overloaded;

/// Sizes of the session service's state at one instant, and what its queues dropped. Plain
/// data; no room or user ids.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SignalingStats {
    /// Rooms that exist (including empty ones waiting for their timeout).
    pub rooms: u64,
    /// Open WebSocket sessions.
    pub sessions: u64,
    /// Sessions held for a resume: their connection was lost, their participant stays until the
    /// room's departure timeout.
    pub held: u64,
    /// Participants allowed to publish.
    pub publishers: u64,
    /// Participants that may only listen.
    pub listeners: u64,
    /// Published tracks, over every room.
    pub tracks: u64,
    /// Join latency: from a session's join (WebSocket accepted, token checked) to its media
    /// connection being up (ICE and DTLS connected), one observation per participant.
    pub joins: HistogramSnapshot,
    /// Client requests that did not fit in the signaling queue (each closed its client).
    pub requests_dropped: u64,
    /// Sessions disconnected because their outbox was full.
    pub clients_overflowed: u64,
    /// Sessions told to rejoin because an engine command about them could not be delivered.
    pub engine_undelivered: u64,
    /// Events the in-process observer had no room for.
    pub observer_dropped: u64,
    /// Client data packets dropped (over the sender's rate, without permission, on a
    /// server-only topic, undecodable).
    pub data_dropped: u64,
    /// Tap changes the recorder had no room for.
    pub recorder_dropped: u64,
    /// Requests a relay link's queue had no room for (each closed its link).
    pub relay_dropped: u64,
    /// Joins on `/rtc/v1` (one peer connection).
    pub joins_single: u64,
    /// Joins on the legacy `/rtc` (two peer connections).
    pub joins_legacy: u64,
}

enum Msg {
    Admit {
        room: String,
        identity: String,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
    Connect {
        claims: Box<Claims>,
        params: Box<JoinParams>,
        out: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<SessionId, Refused>>,
    },
    Request(SessionId, Box<signal_request::Message>),
    Closed(SessionId, String),
    Admin {
        op: AdminOp,
        reply: oneshot::Sender<Result<AdminReply, ServiceError>>,
    },
    Stats {
        reply: oneshot::Sender<SignalingStats>,
    },
    /// A message of the other node on a relay link (the origin's on a room's link; an
    /// edge's on a feed, `feed` naming the edge).
    RelayResponse {
        room: String,
        feed: Option<String>,
        link: u64,
        message: Box<lk::signal_response::Message>,
    },
    /// A relay link ended.
    RelayClosed {
        room: String,
        feed: Option<String>,
        link: u64,
    },
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Counters the handle and the task share.
#[derive(Debug, Default)]
struct Counters {
    requests_dropped: AtomicU64,
    observer_dropped: AtomicU64,
    recorder_dropped: AtomicU64,
    relay_dropped: AtomicU64,
}

/// Handle to the session service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Signaling {
    /// Each core's queue, by core index.
    cores: Arc<[mpsc::Sender<Msg>]>,
    counters: Arc<Counters>,
    join_latency: Arc<Histogram>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The core, of `count`, that owns room `name`: FNV-1a of the name, so the same on every run.
fn room_core(name: &str, count: usize) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % count.max(1) as u64) as usize
}

impl Signaling {
    /// Start the service over a running engine.
    pub fn start(
        config: ServiceConfig,
        sfu: SfuHandle,
        events: mpsc::Receiver<Event>,
    ) -> Signaling {
        let count = match config.cores {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
        .clamp(1, 256);
        let mut seed = [0u8; 32];
        // Sids only need to be unique and unguessable enough not to collide; a failure of the
        // OS generator leaves a time-derived seed.
        if getrandom::fill(&mut seed).is_err() {
            let t = now_ms().to_le_bytes();
            seed[..8].copy_from_slice(&t);
        }
        let counters = Arc::new(Counters::default());
        let join_latency = Arc::new(Histogram::default());
        let mut cores = Vec::with_capacity(count);
        let mut routes = Vec::with_capacity(count);
        let loads = Arc::new(loads::ShardLoads::new(count, sfu.shard_count()));
        for index in 0..count {
            let (tx, rx) = mpsc::channel(REQUESTS);
            let (events_tx, events_rx) = mpsc::channel(EVENTS);
            // Each core its own sid stream.
            let mut core_seed = seed;
            core_seed[31] ^= index as u8;
            let core = ServerConfig {
                room_defaults: config.room_defaults,
                ping_interval: config.ping_interval,
                ping_timeout: config.ping_timeout,
                turn: config.turn.clone(),
                events: config.webhooks.is_some() || config.observer.is_some(),
                engine_shards: u16::try_from(sfu.shard_count()).unwrap_or(u16::MAX),
                room_peers_per_shard: config.room_peers_per_shard,
                seed: core_seed,
                data_rate: crate::proto::DataRate::default(),
                token_refresh: config.token_refresh.clone(),
                partition: Partition {
                    index: index as u16,
                    count: count as u16,
                },
            };
            let shell = Shell {
                core: Server::new(core, Instant::now(), now_ms()),
                sfu: sfu.clone(),
                outboxes: HashMap::new(),
                webhooks: config.webhooks.clone(),
                observer: config.observer.clone(),
                recorder: config.recorder.clone(),
                join_latency: join_latency.clone(),
                counters: counters.clone(),
                relay: config.relay.clone(),
                relays: HashMap::new(),
                next_link: 0,
                me: tx.downgrade(),
                ping_interval: std::time::Duration::from_secs(u64::from(config.ping_interval)),
                index,
                loads: loads.clone(),
                elsewhere: Vec::new(),
            };
            tokio::spawn(shell.run(rx, events_rx));
            cores.push(tx);
            routes.push(events_tx);
        }
        tokio::spawn(route_events(events, routes));
        Signaling {
            cores: cores.into(),
            counters,
            join_latency,
        }
    }

    /// How many signaling cores there are.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The core that owns room `name` (0 to [`Signaling::cores`] - 1).
    pub fn core_of(&self, name: &str) -> usize {
        room_core(name, self.cores.len())
    }

    /// The queue of the core that owns room `name`.
    fn room(&self, name: &str) -> &mpsc::Sender<Msg> {
        &self.cores[room_core(name, self.cores.len())]
    }

    /// The queue of the core that made `session`.
    fn session(&self, session: SessionId) -> &mpsc::Sender<Msg> {
        &self.cores[Partition::of_session(self.cores.len(), session)]
    }

    /// Check, before the WebSocket upgrade, that `identity` may join `room` now.
    pub async fn admit(&self, room: &str, identity: &str) -> Result<(), Refused> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Admit {
            room: room.to_owned(),
            identity: identity.to_owned(),
            reply,
        };
        self.room(room).send(msg).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Join a verified client; its responses go to `out`.
    pub async fn connect(
        &self,
        claims: Claims,
        params: JoinParams,
        out: mpsc::Sender<Outbound>,
    ) -> Result<SessionId, Refused> {
        let (reply, rx) = oneshot::channel();
        let core = self.room(&claims.video.room).clone();
        let msg = Msg::Connect {
            claims: Box::new(claims),
            params: Box::new(params),
            out,
            reply,
        };
        core.send(msg).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// A request from the client of `session`; never waits. If the queue is full the request
    /// is dropped and counted, and the caller closes the client.
    pub fn request(
        &self,
        session: SessionId,
        message: signal_request::Message,
    ) -> Result<(), Overloaded> {
        match self
            .session(session)
            .try_send(Msg::Request(session, Box::new(message)))
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters
                    .requests_dropped
                    .fetch_add(1, Ordering::Relaxed);
                Err(Overloaded)
            }
        }
    }

    /// The client's WebSocket closed (or was closed for `reason`). Never lost: if the queue is
    /// full, it is delivered as soon as there is room.
    pub fn closed(&self, session: SessionId, reason: &str) {
        let msg = Msg::Closed(session, reason.to_owned());
        let core = self.session(session);
        if let Err(mpsc::error::TrySendError::Full(msg)) = core.try_send(msg) {
            let tx = core.clone();
            tokio::spawn(async move {
                let _ = tx.send(msg).await;
            });
        }
    }

    /// Counts of rooms, sessions, participants by role and tracks, and queue drops, over every
    /// core.
    pub async fn stats(&self) -> Result<SignalingStats, ServiceError> {
        let mut total = SignalingStats::default();
        for core in self.cores.iter() {
            let (reply, rx) = oneshot::channel();
            core.send(Msg::Stats { reply })
                .await
                .map_err(|_| ServiceError::Stopped)?;
            let one = rx.await.map_err(|_| ServiceError::Stopped)?;
            total.rooms += one.rooms;
            total.sessions += one.sessions;
            total.held += one.held;
            total.publishers += one.publishers;
            total.listeners += one.listeners;
            total.tracks += one.tracks;
            total.clients_overflowed += one.clients_overflowed;
            total.engine_undelivered += one.engine_undelivered;
            total.data_dropped += one.data_dropped;
            total.joins_single += one.joins_single;
            total.joins_legacy += one.joins_legacy;
        }
        let counters = &self.counters;
        total.joins = self.join_latency.snapshot();
        total.requests_dropped = counters.requests_dropped.load(Ordering::Relaxed);
        total.observer_dropped = counters.observer_dropped.load(Ordering::Relaxed);
        total.recorder_dropped = counters.recorder_dropped.load(Ordering::Relaxed);
        total.relay_dropped = counters.relay_dropped.load(Ordering::Relaxed);
        Ok(total)
    }

    /// Runs `op` on the core that owns its room, or, for an operation on every room, on every
    /// core, adding up what they answer.
    async fn admin(&self, op: AdminOp) -> Result<AdminReply, ServiceError> {
        if let Some(room) = op.room() {
            let index = room_core(room, self.cores.len());
            return self.admin_on(index, op).await;
        }
        let (mut rooms, mut count) = (Vec::new(), 0);
        for index in 0..self.cores.len() {
            match self.admin_on(index, op.clone()).await? {
                AdminReply::Rooms(r) => rooms.extend(r),
                AdminReply::Count(n) => count += n,
                _ => {}
            }
        }
        Ok(match op {
            AdminOp::ListRooms { .. } => AdminReply::Rooms(rooms),
            _ => AdminReply::Count(count),
        })
    }

    async fn admin_on(&self, core: usize, op: AdminOp) -> Result<AdminReply, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.cores[core]
            .send(Msg::Admin { op, reply })
            .await
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
    }
}

/// Hands each engine event to the core that owns its peer; active-speaker changes, which name
/// tracks of many peers, are split among the cores (each gets its peers' changes, as deltas).
/// Ends when the engine or every core has stopped.
async fn route_events(mut events: mpsc::Receiver<Event>, cores: Vec<mpsc::Sender<Event>>) {
    let count = cores.len();
    while let Some(event) = events.recv().await {
        let delivered = match event {
            Event::SpeakersChanged(levels) if count > 1 => {
                let mut split: Vec<Vec<_>> = (0..count).map(|_| Vec::new()).collect();
                for level in levels {
                    split[Partition::of_peer(count, level.key.peer)].push(level);
                }
                let mut any = false;
                for (core, levels) in cores.iter().zip(split) {
                    if !levels.is_empty() {
                        any |= core.send(Event::SpeakersChanged(levels)).await.is_ok();
                    }
                }
                any || cores.iter().any(|c| !c.is_closed())
            }
            event => {
                let index = event.peer().map_or(0, |p| Partition::of_peer(count, p));
                cores[index].send(event).await.is_ok()
            }
        };
        if !delivered && cores.iter().all(mpsc::Sender::is_closed) {
            return;
        }
    }
}

fn stopped() -> Refused {
    Refused {
        status: 503,
        message: "signaling service is not running".into(),
    }
}

/// The task: the core, the sessions' outboxes, and where events go.
struct Shell {
    core: Server,
    sfu: SfuHandle,
    outboxes: HashMap<SessionId, mpsc::Sender<Outbound>>,
    webhooks: Option<crate::webhook::Notifier>,
    observer: Option<mpsc::Sender<lk::WebhookEvent>>,
    recorder: Option<mpsc::Sender<TapChange>>,
    join_latency: Arc<Histogram>,
    counters: Arc<Counters>,
    relay: Option<RelayAuth>,
    /// Running relay links, by room and, for a feed, the edge's URL (`None`: the room's
    /// link to its origin).
    relays: HashMap<(String, Option<String>), relay::Link>,
    next_link: u64,
    /// This core's own queue, for its relay links' tasks (weak: the core stops when every
    /// handle is gone).
    me: mpsc::WeakSender<Msg>,
    ping_interval: std::time::Duration,
    /// Which core this is.
    index: usize,
    /// Every core's peers per engine shard (see `loads`).
    loads: Arc<loads::ShardLoads>,
    /// The other cores' peers per shard, as last read.
    elsewhere: Vec<u32>,
}

impl Shell {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut events: mpsc::Receiver<Event>) {
        loop {
            let deadline = self.drain();
            self.publish_loads();
            if deadline <= Instant::now() {
                // More of a flush is due at once (the core sends a tick's updates a slice of
                // clients at a time): first let the writers this slice woke, and every other
                // task, run; then inputs that arrived meanwhile race the next slice.
                tokio::task::yield_now().await;
            }
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        self.read_loads();
                        self.handle_msg(msg);
                    }
                    None => return,
                },
                event = events.recv() => match event {
                    Some(event) => {
                        self.read_loads();
                        self.core.handle_engine_event(Instant::now(), event);
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    self.read_loads();
                    self.core.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Publish this core's peers per shard for the other cores (when there is anything to
    /// share, see `loads`).
    fn publish_loads(&self) {
        if self.loads.shared() {
            self.loads.publish(self.index, self.core.shard_loads());
        }
    }

    /// Tell the core the other cores' peers per shard as they are now, before an input (when
    /// there is anything to share).
    fn read_loads(&mut self) {
        if self.loads.shared() {
            self.loads.others(self.index, &mut self.elsewhere);
            self.core.set_shard_loads_elsewhere(&self.elsewhere);
        }
    }

    fn handle_msg(&mut self, msg: Msg) {
        let now = Instant::now();
        match msg {
            Msg::Admit {
                room,
                identity,
                reply,
            } => {
                let _ = reply.send(self.core.admit(&room, &identity));
            }
            Msg::Connect {
                claims,
                params,
                out,
                reply,
            } => {
                let result = self.core.connect(now, *claims, *params);
                if let Ok(session) = result {
                    self.outboxes.insert(session, out);
                }
                if let Err(Ok(session)) = reply.send(result) {
                    // The client went away while joining.
                    self.outboxes.remove(&session);
                    self.core.handle_closed(now, session, "client went away");
                }
            }
            Msg::Request(session, message) => self.core.handle_request(now, session, *message),
            Msg::Closed(session, reason) => {
                self.outboxes.remove(&session);
                self.core.handle_closed(now, session, &reason);
            }
            Msg::Admin { op, reply } => {
                let _ = reply.send(self.core.handle_admin(now, op));
            }
            Msg::RelayResponse {
                room,
                feed,
                link,
                message,
            } => {
                let key = (room, feed);
                if self.relays.get(&key).is_some_and(|l| l.id == link) {
                    match &key.1 {
                        None => self.core.handle_relay_response(now, &key.0, *message),
                        Some(edge) => self.core.handle_feed_response(now, &key.0, edge, *message),
                    }
                }
            }
            Msg::RelayClosed { room, feed, link } => {
                let key = (room, feed);
                if self.relays.get(&key).is_some_and(|l| l.id == link) {
                    self.relays.remove(&key);
                    self.link_closed(&key);
                }
            }
            Msg::Stats { reply } => {
                // This core's part; the shared counters are read by the handle.
                let core = self.core.stats();
                let stats = SignalingStats {
                    rooms: core.rooms,
                    sessions: core.sessions,
                    held: core.held,
                    publishers: core.publishers,
                    listeners: core.listeners,
                    tracks: core.tracks,
                    clients_overflowed: core.clients_overflowed,
                    engine_undelivered: core.engine_undelivered,
                    data_dropped: core.data_dropped,
                    joins_single: core.joins_single,
                    joins_legacy: core.joins_legacy,
                    ..SignalingStats::default()
                };
                let _ = reply.send(stats);
            }
        }
    }

    /// Carry out every output of the core; returns when to wake it next.
    fn drain(&mut self) -> Instant {
        loop {
            match self.core.poll_output() {
                Output::Send(session, message) => {
                    let Some(out) = self.outboxes.get(&session) else {
                        continue;
                    };
                    if let Err(e) = out.try_send(Outbound::Response(message)) {
                        self.outboxes.remove(&session);
                        if matches!(e, mpsc::error::TrySendError::Full(_)) {
                            // Dropping the outbox's sender ends its writer task, which closes
                            // the connection.
                            self.core.handle_client_overflow(Instant::now(), session);
                        }
                    }
                }
                Output::Close(session, reason) => {
                    if let Some(out) = self.outboxes.remove(&session) {
                        let _ = out.try_send(Outbound::Close(reason));
                    }
                }
                Output::Engine(command) => {
                    if let Err(e) = self.sfu.send(command) {
                        tracing::warn!(error = %e, "engine command not delivered");
                        self.core.handle_undelivered(Instant::now(), &e.peers);
                    }
                }
                Output::Webhook(event) => {
                    self.observe(&event);
                    if let Some(notifier) = &self.webhooks {
                        notifier.notify(*event);
                    }
                }
                Output::Observe(event) => self.observe(&event),
                Output::JoinLatency(latency) => self.join_latency.observe(latency),
                Output::Tap(change) => {
                    if let Some(recorder) = &self.recorder
                        && recorder.try_send(change).is_err()
                    {
                        self.counters
                            .recorder_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("recorder full; tap change dropped");
                    }
                }
                Output::Relay(out) => self.relay_output(out),
                Output::Timeout(t) => return t,
            }
        }
    }

    /// Opens, feeds or closes a relay link's task.
    fn relay_output(&mut self, out: RelayOutput) {
        match out {
            RelayOutput::Open {
                room,
                origin,
                offer,
            } => self.open_link((room, None), origin, offer),
            RelayOutput::OpenFeed { room, edge, offer } => {
                self.open_link((room, Some(edge.clone())), edge, offer);
            }
            RelayOutput::Send { room, request } => self.send_link((room, None), request),
            RelayOutput::SendFeed {
                room,
                edge,
                request,
            } => self.send_link((room, Some(edge)), request),
            RelayOutput::Close { room } => self.close_link(&(room, None)),
            RelayOutput::CloseFeed { room, edge } => self.close_link(&(room, Some(edge))),
        }
    }

    /// Starts the task of link `key` to the node at `url`, replacing any it still has.
    fn open_link(
        &mut self,
        key: (String, Option<String>),
        url: String,
        offer: lk::SessionDescription,
    ) {
        self.close_link(&key);
        let room = key.0.clone();
        let token = match self
            .relay
            .as_ref()
            .map(|auth| relay::relay_token(auth, &room))
        {
            Some(Ok(token)) => token,
            failed => {
                let why = match failed {
                    Some(Err(e)) => e,
                    _ => "no relay credentials configured".to_owned(),
                };
                tracing::warn!(room = %room, reason = %why, "relay link not opened");
                self.link_closed(&key);
                return;
            }
        };
        let Some(to_core) = self.me.upgrade() else {
            return;
        };
        self.next_link += 1;
        let (tx, rx) = mpsc::channel(relay::LINK_QUEUE);
        let task = relay::LinkTask {
            id: self.next_link,
            room,
            feed: key.1.clone(),
            origin: url,
            token,
            offer,
            ping_interval: self.ping_interval,
            to_core,
            nodes: key
                .1
                .as_ref()
                .and(self.relay.as_ref())
                .map(|a| a.nodes.clone()),
            tls: match self.relay.as_ref().and_then(|a| a.tls.clone()) {
                Some(tls) => Ok(tls),
                None => crate::cluster::node_tls().clone(),
            },
        };
        tokio::spawn(task.run(rx));
        self.relays.insert(
            key,
            relay::Link {
                id: self.next_link,
                tx,
            },
        );
    }

    /// Queues `request` on link `key`; a full queue closes the link.
    fn send_link(
        &mut self,
        key: (String, Option<String>),
        request: Box<lk::signal_request::Message>,
    ) {
        let Some(link) = self.relays.get(&key) else {
            return;
        };
        if link.tx.try_send(relay::LinkCmd::Request(request)).is_err() {
            self.counters.relay_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(room = %key.0, "relay link queue full; link closed");
            self.close_link(&key);
            self.link_closed(&key);
        }
    }

    /// Tells link `key`'s task to close.
    fn close_link(&mut self, key: &(String, Option<String>)) {
        if let Some(link) = self.relays.remove(key) {
            let _ = link.tx.try_send(relay::LinkCmd::Close);
        }
    }

    /// Tells the core that link `key` ended.
    fn link_closed(&mut self, key: &(String, Option<String>)) {
        match &key.1 {
            None => self.core.handle_relay_closed(Instant::now(), &key.0),
            Some(edge) => self.core.handle_feed_closed(Instant::now(), &key.0, edge),
        }
    }

    fn observe(&self, event: &lk::WebhookEvent) {
        if let Some(observer) = &self.observer
            && observer.try_send(event.clone()).is_err()
        {
            self.counters
                .observer_dropped
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = %event.event, "event observer full; event dropped");
        }
    }
}
