//! Sessions: joining, leaving, and what ends a session from outside (a closed connection, a
//! client too slow to read, an engine that cannot take a command).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use stoa_sfu::str0m::channel::ChannelId;
use stoa_sfu::{EngineCommand, PeerId, Publish, TrackId};

use super::resume::{client_configuration, server_info};
use super::updates::JOIN_PARTICIPANTS;
use super::{
    ADVERTISED_LIVEKIT_VERSION, Output, RELAY_IDENTITY_PREFIX, Refused, Server, SessionId,
};
use crate::join::JoinParams;
use crate::room::Participant;

/// What a client is told when the server ends its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leave {
    /// Nothing: the client left (its `LeaveRequest`), or the server let it go.
    Quietly,
    /// A `LeaveRequest` to disconnect for good (removed, room closed, server shutting down).
    Disconnect(lk::DisconnectReason),
    /// A `LeaveRequest` to join again with a new session (`action = RECONNECT`): the session
    /// cannot go on (its media connection is gone), so LiveKit clients rejoin in full.
    Rejoin(lk::DisconnectReason),
    /// Nothing (there is no connection to tell): a held session was not resumed in time. The
    /// others see this reason.
    Expire(lk::DisconnectReason),
}

impl Leave {
    /// The disconnect reason participants and webhooks see.
    fn reason(self) -> Option<lk::DisconnectReason> {
        match self {
            Leave::Quietly => None,
            Leave::Disconnect(reason) | Leave::Rejoin(reason) | Leave::Expire(reason) => {
                Some(reason)
            }
        }
    }
}

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Pc {
    Publisher,
    Subscriber,
}

pub(super) struct Session {
    pub room: String,
    pub participant: String,
    /// One peer connection (`/rtc/v1`): `publisher` and `subscriber` are the same peer, which
    /// the client offers; it is filed in `by_peer` as [`Pc::Publisher`].
    pub single: bool,
    pub publisher: Option<PeerId>,
    pub subscriber: Option<PeerId>,
    pub auto_subscribe: bool,
    /// AddTrack requests waiting for their media: track sid by cid.
    pub pending: Vec<(String, lk::TrackInfo)>,
    /// `Some` while the responses to AddTrack requests wait for the session's connection to
    /// come up: livekit-client joined on `/rtc/v1` with its offer inside the join request. That
    /// client sets the offer as its local description only when the answer arrives, and clears
    /// its "initial offer pending" flag before that `setLocalDescription` resolves; the
    /// `negotiate()` a `TrackPublishedResponse` starts (20 ms later) can fall into that window,
    /// create an offer against the half-set state and fail to set it ("Transceiver not found
    /// based on m-line index"): the track is lost and the client rejoins. That is what happens
    /// when it republishes its tracks right after a full reconnect (a server restart). Once the
    /// connection is up the client has applied that answer, and its offer is safe. `None`
    /// from then on, and for every other session.
    pub published_held: Option<Vec<lk::TrackPublishedResponse>>,
    /// Ids of the client's publisher offers the engine has not answered yet, oldest first
    /// (the engine answers in order).
    pub offers: VecDeque<u32>,
    /// Data channels by label, per connection.
    pub channels: HashMap<(Pc, ChannelId), String>,
    pub subscriber_channels: HashMap<String, ChannelId>,
    /// Engine tracks this session receives.
    pub subscribed: Vec<TrackId>,
    pub next_offer_id: u32,
    pub last_ping: Instant,
    /// When the join was accepted.
    pub joined_at: Instant,
    /// Told to leave by a draining server.
    pub asked_to_leave: bool,
    /// Since when the session is held: its connection was lost, and the participant stays
    /// (same sid, tracks, subscriptions, engine peers) until it resumes or the room's departure
    /// timeout passes. Nothing is sent to a held session.
    pub held_since: Option<Instant>,
    /// The claims it joined with (for refreshed tokens) and when its token was last refreshed.
    pub claims: Box<Claims>,
    pub refreshed_at: Instant,
    /// The data-packet bucket: tokens left and when it was last refilled.
    pub data_tokens: (f64, Instant),
    /// `room{room}` → `participant{participant, identity, client}`: the context of every log
    /// line about this session.
    pub span: tracing::Span,
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

impl Server {
    /// Join a verified client (its token checked, the application's admission applied). The
    /// `JoinResponse` is the session's first [`Output::Send`]; a second session with the same
    /// identity replaces the first.
    pub fn connect(
        &mut self,
        now: Instant,
        claims: Claims,
        params: JoinParams,
    ) -> Result<SessionId, Refused> {
        self.advance(now);
        if params.reconnect
            && let Some(sid) = params.participant_sid.clone()
        {
            return self.resume(claims, params, &sid);
        }
        let room_name = claims.video.room.clone();
        let identity = claims.sub.clone();
        self.admit(&room_name, &identity)?;
        // Someone another node announced is here now (an edge's listener sent to the origin).
        if let Some(sid) = self
            .rooms
            .get(&room_name)
            .and_then(|r| r.by_identity(&identity))
            .map(|p| p.sid.clone())
            .filter(|sid| self.is_announced(&room_name, sid))
        {
            self.drop_announced(&room_name, &sid);
        }
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
            );
        }

        self.ensure_room(&room_name, self.config.room_defaults);
        let now_ms = self.now_ms();
        let sid = self.new_sid("PA_");
        let permission = crate::token::permission(&claims.video);
        // An edge's relay on the room's origin sees everyone, listeners too, as an admin
        // does: whoever may see them on its edge (speakers there) sees the room's whole
        // audience, wherever each listener is. On an edge, an origin's feed sees only the
        // publishers (it carries media only).
        let relay_of_an_edge = permission.hidden
            && identity.starts_with(RELAY_IDENTITY_PREFIX)
            && !self.relays.contains_key(&room_name);
        // What its node announced is not shown back to it (a link replacing another).
        let its_own = claims
            .attributes
            .get(super::NODE_URL_ATTRIBUTE)
            .filter(|_| relay_of_an_edge)
            .map(|url| self.announced_by_node(&room_name, url))
            .unwrap_or_default();
        let participant = Participant {
            sid: sid.clone(),
            identity,
            name: claims.name.clone(),
            metadata: claims.metadata.clone(),
            attributes: claims.attributes.clone(),
            permission,
            admin: claims.video.room_admin || relay_of_an_edge,
            state: State::Joined,
            version: 1,
            tracks: Default::default(),
            joined_at_ms: now_ms,
            protocol: params.protocol,
        };
        let ice_servers = self
            .config
            .turn
            .as_ref()
            .map(|turn| turn.ice_servers(&participant.identity))
            .unwrap_or_default();
        let Some(room) = self.rooms.get_mut(&room_name) else {
            return Err(Refused {
                status: 500,
                message: "room vanished".into(),
            });
        };
        let mut others = room.others_visible_to(&participant);
        others.retain(|p| !its_own.contains(&p.sid));
        // A large room's snapshot does not go in one message (an admin's, or an edge's relay
        // on the origin, sees everyone): publishers first, the rest as updates.
        let rest = if others.len() > JOIN_PARTICIPANTS {
            others.sort_by_key(|p| {
                let publishes = p.permission.as_ref().is_some_and(|m| m.can_publish);
                (p.tracks.is_empty(), !publishes)
            });
            others.split_off(JOIN_PARTICIPANTS)
        } else {
            Vec::new()
        };
        let info = participant.info();
        room.insert(participant);
        room.emptied_ms = None;
        room.dirty = true;
        let single = params.single_pc;
        let hold_published = single
            && params.publisher_offer.is_some()
            && params.sdk == livekit_protocol::client_info::Sdk::Js;
        let mut join = lk::JoinResponse {
            participant: Some(info.clone()),
            other_participants: others,
            server_version: ADVERTISED_LIVEKIT_VERSION.into(),
            ice_servers,
            // On `/rtc/v1` the client's connection is the only one and it offers first.
            subscriber_primary: !single,
            client_configuration: Some(client_configuration()),
            ping_timeout: self.config.ping_timeout as i32,
            ping_interval: self.config.ping_interval as i32,
            server_info: Some(server_info()),
            ..Default::default()
        };
        join.room = self.room_snapshot(&room_name);
        let session_id = self.new_session();
        self.send(session_id, signal_response::Message::Join(join));
        if !rest.is_empty() {
            self.pending_updates.insert(
                session_id,
                super::updates::Pending {
                    participants: rest,
                    ..Default::default()
                },
            );
        }
        self.by_participant.insert(sid.clone(), session_id);
        // Legacy: the subscriber connection is primary, and the engine offers it with the data
        // channels. Its id is filed now, so its offer finds the session whatever else happens
        // meanwhile. Single connection: created by the client's first offer.
        let subscriber = (!single).then(|| self.new_peer(&room_name));
        if let Some(subscriber) = subscriber {
            self.by_peer
                .insert(subscriber, (session_id, Pc::Subscriber));
        }
        self.sessions.insert(
            session_id,
            Session {
                room: room_name.clone(),
                participant: sid.clone(),
                single,
                publisher: None,
                subscriber,
                auto_subscribe: params.auto_subscribe,
                pending: Vec::new(),
                published_held: hold_published.then(Vec::new),
                offers: VecDeque::new(),
                channels: HashMap::new(),
                subscriber_channels: HashMap::new(),
                subscribed: Vec::new(),
                next_offer_id: 1,
                last_ping: now,
                joined_at: now,
                asked_to_leave: false,
                held_since: None,
                data_tokens: (f64::from(self.config.data_rate.burst), now),
                claims: Box::new(claims),
                refreshed_at: now,
                span: participant_span(&room_name, &sid, &info.identity, params.client),
            },
        );
        let path = if single { "v1" } else { "legacy" };
        self.in_span(session_id, || tracing::info!(path, "participant joined"));
        if single {
            self.stats.joins_single += 1;
        } else {
            self.stats.joins_legacy += 1;
        }
        self.broadcast_participant(&room_name, &sid);
        match subscriber {
            Some(subscriber) => {
                self.engine(EngineCommand::CreatePeer {
                    peer: subscriber,
                    publish: Publish::Deny,
                    channels: vec!["_reliable".to_owned(), "_lossy".to_owned()],
                });
                self.subscribe_existing(session_id);
            }
            None => {
                if let Some(offer) = params.publisher_offer {
                    let sd = lk::SessionDescription {
                        r#type: "offer".into(),
                        sdp: offer.sdp,
                        id: offer.id,
                        ..Default::default()
                    };
                    // Creates the connection and subscribes to what the room publishes.
                    self.handle_request(now, session_id, signal_request::Message::Offer(sd));
                }
            }
        }
        Ok(session_id)
    }

    /// Subscribes an auto-subscribing session to every track published in its room (at join,
    /// on the legacy path's subscriber connection).
    pub(super) fn subscribe_existing(&mut self, session: SessionId) {
        for (track, psid, tsid) in self.published_for(session) {
            self.subscribe(session, track, &psid, &tsid);
        }
    }

    /// What an auto-subscribing session starts with: every track published in its room by
    /// someone else, as (track, publisher sid, track sid). Empty for a session that does not
    /// auto-subscribe.
    pub(super) fn published_for(&self, session: SessionId) -> Vec<(TrackId, String, String)> {
        let Some(s) = self.sessions.get(&session) else {
            return Vec::new();
        };
        if !s.auto_subscribe {
            return Vec::new();
        }
        let Some(room) = self.rooms.get(&s.room) else {
            return Vec::new();
        };
        let sid = &s.participant;
        room.participants
            .values()
            // Listeners publish nothing: skip them before comparing sids.
            .filter(|p| !p.tracks.is_empty() && p.sid != *sid)
            // A relay gets nothing that came from its own node.
            .filter(|p| !self.feeds_back(&s.room, session, &p.sid))
            .flat_map(|p| {
                p.tracks
                    .values()
                    .filter_map(|t| Some((t.engine?, p.sid.clone(), t.info.sid.clone())))
            })
            .collect()
    }

    /// The client's connection closed (or was closed for `reason`) without a leave: the
    /// session is held for the room's departure timeout, so that its client can resume it
    /// (see [`Server::connect`] with `reconnect=1`). Nobody else notices unless it expires.
    pub fn handle_closed(&mut self, now: Instant, session: SessionId, reason: &str) {
        self.advance(now);
        self.hold_session(session, reason);
    }

    /// The session's outbox is full: its client reads too slowly. The session ends (the
    /// shell closes the connection; nothing more can be queued for it).
    pub fn handle_client_overflow(&mut self, now: Instant, session: SessionId) {
        self.advance(now);
        if self.sessions.contains_key(&session) {
            self.stats.clients_overflowed += 1;
            self.in_span(session, || tracing::warn!("client too slow; disconnected"));
            self.pending_updates.remove(&session);
            self.end_session(session, "too slow to keep up", Leave::Quietly);
        }
    }

    /// Engine commands about `peers` could not be delivered (the engine is overloaded or
    /// stopped): their sessions are told to rejoin rather than left waiting for an answer.
    pub fn handle_undelivered(&mut self, now: Instant, peers: &[PeerId]) {
        self.advance(now);
        for peer in peers {
            if let Some(&(session, _)) = self.by_peer.get(peer) {
                self.stats.engine_undelivered += 1;
                self.end_session(
                    session,
                    "media engine unavailable",
                    Leave::Rejoin(lk::DisconnectReason::JoinFailure),
                );
            }
        }
    }

    /// End a session: close its connections, remove the participant, tell the others. Unless
    /// `leave` is [`Leave::Quietly`], the client is first told what to do next.
    pub(super) fn end_session(&mut self, session: SessionId, why: &str, leave: Leave) {
        // Updates still queued for the tick reach the client before its leave.
        self.flush_updates(session);
        let Some(s) = self.sessions.remove(&session) else {
            return;
        };
        self.by_participant.remove(&s.participant);
        self.pending_updates.remove(&session);
        let reason = leave.reason();
        let connected = s.held_since.is_none();
        if let Some(reason) = reason.filter(|_| connected && !matches!(leave, Leave::Expire(_))) {
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
            self.send(session, signal_response::Message::Leave(leave));
        }
        if connected {
            self.outputs
                .push_back(Output::Close(session, why.to_owned()));
        }
        let subscriber = s.subscriber.filter(|p| Some(*p) != s.publisher);
        for peer in [s.publisher, subscriber].into_iter().flatten() {
            self.by_peer.remove(&peer);
            self.engine(EngineCommand::ClosePeer { peer });
        }
        s.span
            .in_scope(|| tracing::info!(reason = why, "participant left"));
        // A relay session's announced participants (an edge's) leave with it.
        let relay = self
            .rooms
            .get(&s.room)
            .and_then(|r| r.participants.get(&s.participant))
            .filter(|p| p.is_relay());
        if let Some(p) = relay {
            // And, unless its node links again meanwhile, that node's feed.
            let url = p.attributes.get(super::NODE_URL_ATTRIBUTE).cloned();
            self.drop_roster_of(&s.room, session);
            self.relay_session_ended(&s.room, url);
        }
        self.remove_participant(&s.room, &s.participant, reason);
    }

    /// Runs `log` inside `session`'s room → participant span (or none, if it is gone).
    pub(super) fn in_span(&self, session: SessionId, log: impl FnOnce()) {
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
        let now_ms = self.now_ms();
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(mut gone) = room.remove(sid) else {
            return;
        };
        let tapped: Vec<(String, TrackId)> = match room.recording {
            true => gone
                .tracks
                .values()
                .filter_map(|t| Some((t.info.sid.clone(), t.engine?)))
                .collect(),
            false => Vec::new(),
        };
        room.speakers.remove(sid);
        if room.participants.is_empty() {
            room.emptied_ms = Some(now_ms);
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
        self.send_update(&viewers, vec![info.clone()]);
        if !gone.is_relay() {
            self.roster_left(room_name, &info);
        }
        for (track_sid, track) in tapped {
            self.untap_if_recorded(room_name, &gone.identity, &track_sid, track);
        }
        self.participant_webhook(event, room_name, info, None);
    }

    /// The participant of a session.
    pub(super) fn participant(&self, session: SessionId) -> Option<&Participant> {
        let s = self.sessions.get(&session)?;
        self.rooms.get(&s.room)?.participants.get(&s.participant)
    }

    pub(super) fn participant_mut(&mut self, session: SessionId) -> Option<&mut Participant> {
        let s = self.sessions.get(&session)?;
        self.rooms
            .get_mut(&s.room)?
            .participants
            .get_mut(&s.participant)
    }

    /// Sessions of the participants of `room`.
    pub(super) fn room_sessions(&self, room: &str) -> Vec<SessionId> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.participants
                .keys()
                .filter_map(|sid| self.by_participant.get(sid).copied())
                .collect()
        })
    }
}
