//! The session service: one task that owns every media-side room and session, speaks the
//! LiveKit protocol with clients and drives the media engine.
//!
//! Clients' WebSocket tasks ([`crate::ws`]) send it decoded requests; it answers through each
//! session's bounded outbox. Engine events (offers, published tracks, speakers, data) arrive on
//! the engine's event channel. Room and participant bookkeeping lives in [`crate::room`].
//!
//! Per-message work is O(visible participants) (see the visibility rule in [`crate::room`]);
//! the audience size reaches everyone through coalesced `RoomUpdate`s, once per tick.

// The service owns the clock: it reads wall time for protocol timestamps and expiries.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use stoa_sfu::shell::SfuHandle;
use stoa_sfu::str0m::channel::ChannelId;
use stoa_sfu::{Event, PeerId, Publish, TrackId};
use tokio::sync::{mpsc, oneshot};

use crate::join::JoinParams;

mod admin;
mod drain;
mod events;
mod requests;
mod stats;
use crate::room::{JoinRefusal, Participant, Room, RoomLimits};
pub use admin::{ParticipantUpdate, SendData};
pub use stats::SignalingStats;

/// The LiveKit server version advertised in `ServerInfo.version`. livekit-client gates features
/// on it (RPC needs ≥ 1.8.0); this is the feature level Stoa's signaling implements.
pub const ADVERTISED_LIVEKIT_VERSION: &str = "1.9.0";

/// How often pending participant updates are flushed (batched per client).
const TICK: Duration = Duration::from_millis(100);

/// Every this many ticks, `RoomUpdate`s are sent and pings and room timeouts checked.
const SLOW_TICKS: u64 = 5;

/// Capacity of a session's outbox. A client that falls this far behind is disconnected rather
/// than buffered without bound.
pub const OUTBOX: usize = 512;

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
    /// when it is full, events are dropped and logged, never waited for.
    pub observer: Option<mpsc::Sender<lk::WebhookEvent>>,
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

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            room_defaults: RoomLimits::default(),
            ping_interval: 5,
            ping_timeout: 15,
            webhooks: None,
            turn: None,
            observer: None,
        }
    }
}

/// Identifies one WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(u64);

/// What a session's writer task sends to its client.
#[derive(Debug)]
pub enum Outbound {
    /// A protocol message.
    Response(Box<lk::SignalResponse>),
    /// Close the WebSocket with this reason.
    Close(String),
}

/// A refused join, with the HTTP status and text the client shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Plain-text reason.
    pub message: String,
}

enum Msg {
    Admit {
        room: String,
        identity: String,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
    Connect {
        claims: Box<Claims>,
        params: JoinParams,
        out: mpsc::Sender<Outbound>,
        reply: oneshot::Sender<Result<SessionId, Refused>>,
    },
    Request(SessionId, Box<signal_request::Message>),
    Closed(SessionId, String),
    UpdatePermission {
        room: String,
        identity: String,
        permission: lk::ParticipantPermission,
        reply: oneshot::Sender<Result<lk::ParticipantInfo, ServiceError>>,
    },
    MuteTrack {
        room: String,
        identity: String,
        track_sid: String,
        muted: bool,
        reply: oneshot::Sender<Result<lk::TrackInfo, ServiceError>>,
    },
    CreateRoom {
        name: String,
        limits: RoomLimits,
        reply: oneshot::Sender<lk::Room>,
    },
    ListParticipants {
        room: String,
        reply: oneshot::Sender<Result<Vec<lk::ParticipantInfo>, ServiceError>>,
    },
    Admin {
        op: admin::AdminOp,
        reply: oneshot::Sender<Result<admin::AdminReply, ServiceError>>,
    },
    Stats {
        reply: oneshot::Sender<stats::SignalingStats>,
    },
    AskToLeave {
        reply: oneshot::Sender<usize>,
    },
    Drain {
        reply: oneshot::Sender<usize>,
    },
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
}

/// Handle to the session service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Signaling {
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

impl Signaling {
    /// Start the service over a running engine.
    pub fn start(
        config: ServiceConfig,
        sfu: SfuHandle,
        events: mpsc::UnboundedReceiver<Event>,
    ) -> Signaling {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut seed = [0u8; 32];
        // Sids only need to be unique and unguessable enough not to collide; a failure of the
        // OS generator leaves a time-derived seed.
        if getrandom::fill(&mut seed).is_err() {
            let t = now_ms().to_le_bytes();
            seed[..8].copy_from_slice(&t);
        }
        let service = Service {
            config,
            sfu,
            rng: ChaCha20Rng::from_seed(seed),
            rooms: HashMap::new(),
            sessions: HashMap::new(),
            by_peer: HashMap::new(),
            by_participant: HashMap::new(),
            pending_updates: HashMap::new(),
            join_latency: Default::default(),
            ticks: 0,
            next_session: 1,
        };
        tokio::spawn(service.run(rx, events));
        Signaling { tx }
    }

    /// Check, before the WebSocket upgrade, that `identity` may join `room` now.
    pub async fn admit(&self, room: &str, identity: &str) -> Result<(), Refused> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::Admit {
            room: room.to_owned(),
            identity: identity.to_owned(),
            reply,
        };
        self.tx.send(msg).map_err(|_| stopped())?;
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
        let msg = Msg::Connect {
            claims: Box::new(claims),
            params,
            out,
            reply,
        };
        self.tx.send(msg).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// A request from the client of `session`.
    pub fn request(&self, session: SessionId, message: signal_request::Message) {
        let _ = self.tx.send(Msg::Request(session, Box::new(message)));
    }

    /// The client's WebSocket closed (or was closed for `reason`).
    pub fn closed(&self, session: SessionId, reason: &str) {
        let _ = self.tx.send(Msg::Closed(session, reason.to_owned()));
    }

    /// Replace a participant's permissions on the live session (LiveKit `UpdateParticipant`).
    /// Revoking `can_publish` unpublishes its tracks at once.
    pub async fn update_permission(
        &self,
        room: &str,
        identity: &str,
        permission: lk::ParticipantPermission,
    ) -> Result<lk::ParticipantInfo, ServiceError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::UpdatePermission {
            room: room.to_owned(),
            identity: identity.to_owned(),
            permission,
            reply,
        };
        self.tx.send(msg).map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
    }

    /// Force-mute (or unmute) a published track (LiveKit `MutePublishedTrack`). The engine
    /// stops forwarding it whatever the client does.
    pub async fn mute_published_track(
        &self,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<lk::TrackInfo, ServiceError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::MuteTrack {
            room: room.to_owned(),
            identity: identity.to_owned(),
            track_sid: track_sid.to_owned(),
            muted,
            reply,
        };
        self.tx.send(msg).map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
    }

    /// Create a room ahead of the first join (LiveKit `CreateRoom`); idempotent: an existing
    /// room is returned unchanged.
    pub async fn create_room(
        &self,
        name: &str,
        limits: RoomLimits,
    ) -> Result<lk::Room, ServiceError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::CreateRoom {
            name: name.to_owned(),
            limits,
            reply,
        };
        self.tx.send(msg).map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }

    /// Snapshots of a room's participants.
    pub async fn list_participants(
        &self,
        room: &str,
    ) -> Result<Vec<lk::ParticipantInfo>, ServiceError> {
        let (reply, rx) = oneshot::channel();
        let msg = Msg::ListParticipants {
            room: room.to_owned(),
            reply,
        };
        self.tx.send(msg).map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)?
    }
}

fn stopped() -> Refused {
    Refused {
        status: 503,
        message: "signaling service is not running".into(),
    }
}

/// What a client is told when the server ends its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    /// Nothing: the client left, or its signaling connection is already gone.
    Quietly,
    /// A `LeaveRequest` to disconnect for good (removed, room closed, server shutting down).
    Disconnect(lk::DisconnectReason),
    /// A `LeaveRequest` to join again with a new session: the connection was lost, not the place
    /// in the room. Sessions are never resumed, so LiveKit clients rejoin in full
    /// (`action = RECONNECT`), as they would after a network change.
    Rejoin(lk::DisconnectReason),
}

impl Leave {
    /// The disconnect reason participants and webhooks see.
    fn reason(self) -> Option<lk::DisconnectReason> {
        match self {
            Leave::Quietly => None,
            Leave::Disconnect(reason) | Leave::Rejoin(reason) => Some(reason),
        }
    }
}

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pc {
    Publisher,
    Subscriber,
}

struct Session {
    room: String,
    participant: String,
    out: mpsc::Sender<Outbound>,
    publisher: Option<PeerId>,
    subscriber: Option<PeerId>,
    auto_subscribe: bool,
    /// AddTrack requests waiting for their media: track sid by cid.
    pending: Vec<(String, lk::TrackInfo)>,
    /// Data channels by label, per connection.
    channels: HashMap<(Pc, ChannelId), String>,
    subscriber_channels: HashMap<String, ChannelId>,
    /// Engine tracks this session receives.
    subscribed: Vec<TrackId>,
    next_offer_id: u32,
    last_ping: Instant,
    /// When the join was accepted.
    joined_at: Instant,
    /// Told to leave by a draining server.
    asked_to_leave: bool,
    /// `room{room}` → `participant{participant, identity, client}`: the context of every log
    /// line about this session.
    span: tracing::Span,
}

/// The tracing span of a participant inside the span of its room. The client's address appears
/// only as its network ([`ClientIp`](crate::redact::ClientIp)).
fn participant_span(
    room: &str,
    participant: &str,
    identity: &str,
    client: Option<std::net::IpAddr>,
) -> tracing::Span {
    let room = tracing::info_span!("room", room = %room);
    let client = client.map(crate::redact::ClientIp);
    tracing::info_span!(
        parent: &room,
        "participant",
        participant = %participant,
        identity = %identity,
        client = client.map(tracing::field::display),
    )
}

struct Service {
    config: ServiceConfig,
    sfu: SfuHandle,
    rng: ChaCha20Rng,
    rooms: HashMap<String, Room>,
    sessions: HashMap<SessionId, Session>,
    by_peer: HashMap<PeerId, (SessionId, Pc)>,
    /// Session of each participant (participant sids are unique across rooms).
    by_participant: HashMap<String, SessionId>,
    /// Participant snapshots waiting to be sent, per session; flushed every tick and before
    /// any offer (a client must know a track before it is offered).
    pending_updates: HashMap<SessionId, Vec<lk::ParticipantInfo>>,
    /// Join to media-connected, per participant.
    join_latency: stoa_sfu::shell::traffic::Histogram,
    ticks: u64,
    next_session: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn response(message: signal_response::Message) -> Outbound {
    Outbound::Response(Box::new(lk::SignalResponse {
        message: Some(message),
    }))
}

impl Service {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle_msg(msg).await,
                    None => return,
                },
                event = events.recv() => match event {
                    Some(event) => self.handle_event(event).await,
                    None => return,
                },
                _ = tick.tick() => self.handle_tick().await,
            }
        }
    }

    fn new_sid(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let tail: String = (0..12)
            .map(|_| ALPHABET[(self.rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
            .collect();
        format!("{prefix}{tail}")
    }

    async fn handle_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Admit {
                room,
                identity,
                reply,
            } => {
                let result = match self.rooms.get(&room) {
                    Some(r) => r.admit(&identity).map_err(refusal),
                    None => Ok(()),
                };
                let _ = reply.send(result);
            }
            Msg::Connect {
                claims,
                params,
                out,
                reply,
            } => {
                let result = self.connect(*claims, params, out).await;
                let _ = reply.send(result);
            }
            Msg::Request(session, message) => self.handle_request(session, *message).await,
            Msg::Closed(session, reason) => {
                self.end_session(session, &reason, Leave::Quietly).await;
            }
            Msg::UpdatePermission {
                room,
                identity,
                permission,
                reply,
            } => {
                let r = self.update_permission(&room, &identity, permission).await;
                let _ = reply.send(r);
            }
            Msg::MuteTrack {
                room,
                identity,
                track_sid,
                muted,
                reply,
            } => {
                let r = self.force_mute(&room, &identity, &track_sid, muted).await;
                let _ = reply.send(r);
            }
            Msg::CreateRoom {
                name,
                limits,
                reply,
            } => {
                if !self.rooms.contains_key(&name) {
                    let sid = self.new_sid("RM_");
                    self.rooms
                        .insert(name.clone(), Room::new(sid, name.clone(), limits, now_ms()));
                    self.room_started(&name);
                }
                if let Some(r) = self.rooms.get(&name) {
                    let _ = reply.send(r.info());
                }
            }
            Msg::ListParticipants { room, reply } => {
                let r = self
                    .rooms
                    .get(&room)
                    .map(|r| r.participants.values().map(Participant::info).collect())
                    .ok_or(ServiceError::RoomNotFound(room));
                let _ = reply.send(r);
            }
            Msg::Admin { op, reply } => {
                let r = self.handle_admin(op).await;
                let _ = reply.send(r);
            }
            Msg::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Msg::AskToLeave { reply } => {
                let _ = reply.send(self.ask_to_leave());
            }
            Msg::Drain { reply } => {
                let ended = self.drain().await;
                let _ = reply.send(ended);
            }
        }
    }

    // ------------------------------------------------------------------ webhooks

    /// Queue a webhook event, if webhooks are configured; never waits.
    fn webhook(
        &mut self,
        event: &str,
        room: Option<lk::Room>,
        participant: Option<lk::ParticipantInfo>,
        track: Option<lk::TrackInfo>,
    ) {
        if self.config.webhooks.is_none() && self.config.observer.is_none() {
            return;
        }
        let id = self.new_sid("EV_");
        let event = lk::WebhookEvent {
            event: event.to_owned(),
            room,
            participant,
            track,
            id,
            created_at: now_ms() / 1000,
            ..Default::default()
        };
        if let Some(observer) = &self.config.observer
            && observer.try_send(event.clone()).is_err()
        {
            tracing::warn!(event = %event.event, "event observer full; event dropped");
        }
        if let Some(notifier) = &self.config.webhooks {
            notifier.notify(event);
        }
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
        let info = self.rooms.get(room).map(Room::info);
        self.webhook(event, info, Some(participant), track);
    }

    // ------------------------------------------------------------------ joining and leaving

    async fn connect(
        &mut self,
        claims: Claims,
        params: JoinParams,
        out: mpsc::Sender<Outbound>,
    ) -> Result<SessionId, Refused> {
        let room_name = claims.video.room.clone();
        let identity = claims.sub.clone();
        if let Some(room) = self.rooms.get(&room_name) {
            room.admit(&identity).map_err(refusal)?;
        }
        // A second session with the same identity replaces the first.
        let duplicate = self
            .rooms
            .get(&room_name)
            .and_then(|r| r.by_identity(&identity))
            .and_then(|p| self.by_participant.get(&p.sid).copied());
        if let Some(old) = duplicate {
            self.end_session(
                old,
                "replaced by a new connection",
                Leave::Disconnect(lk::DisconnectReason::DuplicateIdentity),
            )
            .await;
        }

        let now = now_ms();
        if !self.rooms.contains_key(&room_name) {
            let sid = self.new_sid("RM_");
            self.rooms.insert(
                room_name.clone(),
                Room::new(sid, room_name.clone(), self.config.room_defaults, now),
            );
            self.room_started(&room_name);
        }
        let sid = self.new_sid("PA_");
        let permission = crate::token::permission(&claims.video);
        let participant = Participant {
            sid: sid.clone(),
            identity,
            name: claims.name.clone(),
            metadata: claims.metadata.clone(),
            attributes: claims.attributes.clone(),
            permission,
            admin: claims.video.room_admin,
            state: State::Joined,
            version: 1,
            tracks: Default::default(),
            joined_at_ms: now,
            protocol: params.protocol,
        };
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return Err(stopped());
        };
        let others = room.others_visible_to(&participant);
        let info = participant.info();
        room.insert(participant);
        room.emptied_ms = None;
        room.dirty = true;
        let join = lk::JoinResponse {
            room: Some(room.info()),
            participant: Some(info.clone()),
            other_participants: others,
            server_version: ADVERTISED_LIVEKIT_VERSION.into(),
            ice_servers: self
                .config
                .turn
                .as_ref()
                .map(|turn| turn.ice_servers(&info.identity))
                .unwrap_or_default(),
            subscriber_primary: true,
            client_configuration: Some(lk::ClientConfiguration {
                // Full rejoin instead of resume: sessions are not kept across reconnects.
                resume_connection: lk::ClientConfigSetting::Disabled as i32,
                ..Default::default()
            }),
            ping_timeout: self.config.ping_timeout as i32,
            ping_interval: self.config.ping_interval as i32,
            server_info: Some(lk::ServerInfo {
                edition: lk::server_info::Edition::Standard as i32,
                version: ADVERTISED_LIVEKIT_VERSION.into(),
                protocol: 17,
                node_id: format!("stoa-{}", env!("CARGO_PKG_VERSION")),
                ..Default::default()
            }),
            ..Default::default()
        };
        let session_id = SessionId(self.next_session);
        self.next_session += 1;
        if out
            .try_send(response(signal_response::Message::Join(join)))
            .is_err()
        {
            self.remove_participant(&room_name, &sid, None);
            return Err(stopped());
        }
        self.by_participant.insert(sid.clone(), session_id);
        self.sessions.insert(
            session_id,
            Session {
                room: room_name.clone(),
                participant: sid.clone(),
                out,
                publisher: None,
                subscriber: None,
                auto_subscribe: params.auto_subscribe,
                pending: Vec::new(),
                channels: HashMap::new(),
                subscriber_channels: HashMap::new(),
                subscribed: Vec::new(),
                next_offer_id: 1,
                last_ping: Instant::now(),
                joined_at: Instant::now(),
                asked_to_leave: false,
                span: participant_span(&room_name, &sid, &info.identity, params.client),
            },
        );
        self.in_span(session_id, || tracing::info!("participant joined"));
        self.broadcast_participant(&room_name, &sid);

        // The subscriber connection is primary: the engine offers it with the data channels.
        let channels = vec!["_reliable".to_owned(), "_lossy".to_owned()];
        match self.sfu.create_peer(Publish::Deny, channels).await {
            Ok(peer) => {
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    s.subscriber = Some(peer);
                    self.by_peer.insert(peer, (session_id, Pc::Subscriber));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create subscriber connection");
                self.end_session(
                    session_id,
                    "media engine unavailable",
                    Leave::Disconnect(lk::DisconnectReason::JoinFailure),
                )
                .await;
                return Ok(session_id);
            }
        }
        if params.auto_subscribe {
            let tracks: Vec<(TrackId, String, String)> = self.rooms[&room_name]
                .participants
                .values()
                // Listeners publish nothing: skip them before comparing sids.
                .filter(|p| !p.tracks.is_empty() && p.sid != sid)
                .flat_map(|p| {
                    p.tracks
                        .values()
                        .filter_map(|t| Some((t.engine?, p.sid.clone(), t.info.sid.clone())))
                })
                .collect();
            for (track, psid, tsid) in tracks {
                self.subscribe(session_id, track, &psid, &tsid).await;
            }
        }
        Ok(session_id)
    }

    /// End a session: close its connections, remove the participant, tell the others. Unless
    /// `leave` is [`Leave::Quietly`], the client is first told what to do next.
    async fn end_session(&mut self, session: SessionId, why: &str, leave: Leave) {
        // Updates still queued for the tick reach the client before its leave.
        self.flush_updates(session);
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        self.by_participant.remove(&s.participant);
        self.pending_updates.remove(&session);
        let reason = leave.reason();
        if let Some(reason) = reason {
            let rejoin = matches!(leave, Leave::Rejoin(_));
            let action = if rejoin {
                lk::leave_request::Action::Reconnect
            } else {
                lk::leave_request::Action::Disconnect
            };
            let leave = lk::LeaveRequest {
                can_reconnect: rejoin,
                reason: reason as i32,
                action: action as i32,
                ..Default::default()
            };
            let _ = s
                .out
                .try_send(response(signal_response::Message::Leave(leave)));
        }
        let _ = s.out.try_send(Outbound::Close(why.to_owned()));
        for peer in [s.publisher, s.subscriber].into_iter().flatten() {
            self.by_peer.remove(&peer);
            let _ = self
                .sfu
                .with_peer(peer, move |sfu, now| sfu.close_peer(now, peer))
                .await;
        }
        s.span
            .in_scope(|| tracing::info!(reason = why, "participant left"));
        self.remove_participant(&s.room, &s.participant, reason);
    }

    /// Runs `log` inside `session`'s room → participant span (or none, if it is gone).
    fn in_span(&self, session: SessionId, log: impl FnOnce()) {
        match self.sessions.get(&session) {
            Some(s) => s.span.in_scope(log),
            None => log(),
        }
    }

    fn remove_participant(
        &mut self,
        room_name: &str,
        sid: &str,
        reason: Option<lk::DisconnectReason>,
    ) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(mut gone) = room.remove(sid) else {
            return;
        };
        room.speakers.remove(sid);
        if room.participants.is_empty() {
            room.emptied_ms = Some(now_ms());
        }
        room.dirty = true;
        // LiveKit: `participant_left` for one who became ACTIVE, else the connection aborted.
        let event = if gone.state == State::Active {
            "participant_left"
        } else {
            "participant_connection_aborted"
        };
        gone.state = State::Disconnected;
        gone.touch();
        let mut info = gone.info();
        info.disconnect_reason = reason.unwrap_or(lk::DisconnectReason::ClientInitiated) as i32;
        let viewers: Vec<String> = room
            .participants
            .values()
            .filter(|v| gone.visible_to(v))
            .map(|v| v.sid.clone())
            .collect();
        self.send_update(room_name, &viewers, vec![info.clone()]);
        self.participant_webhook(event, room_name, info, None);
    }

    // ------------------------------------------------------------------ administration

    async fn update_permission(
        &mut self,
        room: &str,
        identity: &str,
        permission: lk::ParticipantPermission,
    ) -> Result<lk::ParticipantInfo, ServiceError> {
        let r = self
            .rooms
            .get_mut(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let psid = r
            .by_identity(identity)
            .map(|p| p.sid.clone())
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))?;
        let before = visibility(r, &psid);
        let Some(p) = r.participants.get_mut(&psid) else {
            return Err(ServiceError::ParticipantNotFound(identity.into()));
        };
        let could_publish = p.can_publish();
        p.permission = permission;
        p.touch();
        let can_publish = p.can_publish();
        r.reindex(&psid);
        if could_publish != can_publish {
            r.dirty = true;
            let publisher = self
                .by_participant
                .get(&psid)
                .and_then(|id| self.sessions.get(id))
                .and_then(|s| s.publisher);
            if let Some(peer) = publisher {
                let publish = if can_publish {
                    Publish::Allow
                } else {
                    Publish::Deny
                };
                // Revoking unpublishes in the engine; its TrackUnpublished events then reach
                // the publisher as `track_unpublished` and everyone else as an update.
                let _ = self
                    .sfu
                    .with_peer(peer, move |sfu, now| sfu.set_publish(now, peer, publish))
                    .await;
            }
        }
        self.broadcast_participant(room, &psid);
        self.visibility_changed(room, &psid, &before);
        self.rooms
            .get(room)
            .and_then(|r| r.participants.get(&psid))
            .map(Participant::info)
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))
    }

    /// After `psid`'s permissions changed: viewers who no longer see it get it as
    /// disconnected, and it gets everyone it newly sees or no longer sees. (Those who see it
    /// now already got its snapshot.)
    fn visibility_changed(&mut self, room: &str, psid: &str, before: &Visibility) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let after = visibility(r, psid);
        let Some(p) = r.participants.get(psid) else {
            return;
        };
        let lost_viewers: Vec<String> = before
            .viewers
            .iter()
            .filter(|v| !after.viewers.contains(v))
            .cloned()
            .collect();
        let mut gone = p.info();
        gone.state = State::Disconnected as i32;
        let mut to_self: Vec<lk::ParticipantInfo> = Vec::new();
        for sid in after.seen.iter().filter(|s| !before.seen.contains(s)) {
            if let Some(o) = r.participants.get(sid) {
                to_self.push(o.info());
            }
        }
        for sid in before.seen.iter().filter(|s| !after.seen.contains(s)) {
            if let Some(o) = r.participants.get(sid) {
                let mut info = o.info();
                info.state = State::Disconnected as i32;
                to_self.push(info);
            }
        }
        if !lost_viewers.is_empty() {
            self.send_update(room, &lost_viewers, vec![gone]);
        }
        if !to_self.is_empty() {
            self.send_update(room, &[psid.to_owned()], to_self);
        }
    }

    async fn force_mute(
        &mut self,
        room: &str,
        identity: &str,
        track_sid: &str,
        muted: bool,
    ) -> Result<lk::TrackInfo, ServiceError> {
        let r = self
            .rooms
            .get(room)
            .ok_or_else(|| ServiceError::RoomNotFound(room.into()))?;
        let p = r
            .by_identity(identity)
            .ok_or_else(|| ServiceError::ParticipantNotFound(identity.into()))?;
        let psid = p.sid.clone();
        let info = self
            .set_muted(room, &psid, track_sid, muted)
            .await
            .ok_or_else(|| ServiceError::TrackNotFound(track_sid.into()))?;
        // Tell the publisher's client, which mutes its microphone and echoes the state.
        if let Some(s) = self
            .by_participant
            .get(&psid)
            .and_then(|id| self.sessions.get(id))
        {
            let m = lk::MuteTrackRequest {
                sid: track_sid.into(),
                muted,
            };
            let _ = s.out.try_send(response(signal_response::Message::Mute(m)));
        }
        Ok(info)
    }

    // ------------------------------------------------------------------ updates

    /// Send participant `psid`'s snapshot to everyone in the room who may see it.
    fn broadcast_participant(&mut self, room: &str, psid: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let Some(p) = r.participants.get(psid) else {
            return;
        };
        let viewers = r.viewers_of(p);
        let info = p.info();
        self.send_update(room, &viewers, vec![info]);
    }

    /// Queue snapshots for `viewers` (participant sids); a newer snapshot of the same
    /// participant replaces an older one still queued.
    fn send_update(
        &mut self,
        _room: &str,
        viewers: &[String],
        participants: Vec<lk::ParticipantInfo>,
    ) {
        for viewer in viewers {
            let Some(&session) = self.by_participant.get(viewer) else {
                continue;
            };
            let queue = self.pending_updates.entry(session).or_default();
            for info in &participants {
                match queue.iter_mut().find(|q| q.sid == info.sid) {
                    Some(q)
                        if q.version <= info.version
                            || info.state == State::Disconnected as i32 =>
                    {
                        *q = info.clone()
                    }
                    Some(_) => {}
                    None => queue.push(info.clone()),
                }
            }
        }
    }

    /// Send a session's queued snapshots as one `ParticipantUpdate`.
    fn flush_updates(&mut self, session: SessionId) {
        let Some(participants) = self.pending_updates.remove(&session) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let msg = signal_response::Message::Update(lk::ParticipantUpdate { participants });
        if s.out.try_send(response(msg)).is_err() {
            // Too slow to keep up: dropped on the next slow tick (ending it here would recurse).
            s.last_ping = Instant::now() - Duration::from_secs(3600);
        }
    }

    /// Sessions of the participants of `room`.
    fn room_sessions(&self, room: &str) -> Vec<SessionId> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.participants
                .keys()
                .filter_map(|sid| self.by_participant.get(sid).copied())
                .collect()
        })
    }

    async fn handle_tick(&mut self) {
        let sessions: Vec<SessionId> = self.pending_updates.keys().copied().collect();
        for session in sessions {
            self.flush_updates(session);
        }
        self.ticks += 1;
        if !self.ticks.is_multiple_of(SLOW_TICKS) {
            return;
        }
        let now = now_ms();
        // Coalesced audience-size updates.
        let dirty: Vec<String> = self
            .rooms
            .values_mut()
            .filter(|r| r.dirty)
            .map(|r| {
                r.dirty = false;
                r.name.clone()
            })
            .collect();
        for room in dirty {
            let Some(info) = self.rooms.get(&room).map(Room::info) else {
                continue;
            };
            let msg = signal_response::Message::RoomUpdate(lk::RoomUpdate { room: Some(info) });
            for id in self.room_sessions(&room) {
                if let Some(s) = self.sessions.get(&id) {
                    let _ = s.out.try_send(response(msg.clone()));
                }
            }
        }
        // Sessions that stopped pinging (or could not keep up).
        let timeout = Duration::from_secs(u64::from(self.config.ping_timeout));
        let dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.last_ping.elapsed() > timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.end_session(
                id,
                "ping timeout",
                Leave::Rejoin(lk::DisconnectReason::ConnectionTimeout),
            )
            .await;
        }
        // Rooms past their timeouts.
        let closing: Vec<String> = self
            .rooms
            .values()
            .filter(|r| r.should_close(now))
            .map(|r| r.name.clone())
            .collect();
        for room in closing {
            self.close_room(&room);
        }
    }
}

/// Who sees a participant and whom it sees (other than itself).
struct Visibility {
    viewers: Vec<String>,
    seen: Vec<String>,
}

fn visibility(room: &Room, psid: &str) -> Visibility {
    let Some(p) = room.participants.get(psid) else {
        return Visibility {
            viewers: vec![],
            seen: vec![],
        };
    };
    let others = room.participants.values().filter(|o| o.sid != psid);
    Visibility {
        viewers: others
            .clone()
            .filter(|v| p.visible_to(v))
            .map(|v| v.sid.clone())
            .collect(),
        seen: others
            .filter(|o| o.visible_to(p))
            .map(|o| o.sid.clone())
            .collect(),
    }
}

fn refusal(e: JoinRefusal) -> Refused {
    match e {
        JoinRefusal::Full(_) => Refused {
            status: 403,
            message: e.to_string(),
        },
    }
}
