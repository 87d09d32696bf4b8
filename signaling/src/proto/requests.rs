//! Requests from clients: negotiation, publishing, mute, subscriptions, metadata.

use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use stoa_sfu::str0m::change::{SdpAnswer, SdpOffer};
use stoa_sfu::{EngineCommand, MediaLabel, Publish, TrackId};

use super::session::{Leave, Pc};
use super::{Server, SessionId};
use crate::room::Participant;

/// AddTrack requests of one session whose media has not arrived yet, at most (an audio room's
/// client announces one microphone at a time).
pub(super) const MAX_PENDING_TRACKS: usize = 8;

impl Server {
    /// A request from the client of `session`. Requests of unknown (ended) sessions are
    /// ignored.
    pub fn handle_request(
        &mut self,
        now: Instant,
        session: SessionId,
        message: signal_request::Message,
    ) {
        use signal_request::Message as M;
        self.advance(now);
        if !self.sessions.contains_key(&session) {
            return;
        }
        match message {
            M::Offer(sd) => self.publisher_offer(session, sd),
            M::Answer(sd) => self.subscriber_answer(session, sd),
            M::Trickle(_) => {
                // ICE-lite: client addresses are learned from its binding requests.
            }
            M::AddTrack(req) => self.add_track(session, req),
            M::Mute(req) => self.client_mute(session, &req.sid, req.muted),
            M::Subscription(update) => self.update_subscription(session, update),
            M::Leave(_) => self.end_session(session, "client left", Leave::Quietly),
            M::Ping(ts) => self.pong(session, signal_response::Message::Pong(ts)),
            M::PingReq(ping) => {
                let pong = lk::Pong {
                    last_ping_timestamp: ping.timestamp,
                    timestamp: self.now_ms(),
                };
                self.pong(session, signal_response::Message::PongResp(pong));
            }
            M::UpdateMetadata(update) => self.update_metadata(session, update),
            other => {
                tracing::debug!(request = ?std::mem::discriminant(&other), "unsupported request ignored");
            }
        }
    }

    fn pong(&mut self, session: SessionId, message: signal_response::Message) {
        let now = self.now;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_ping = now;
            self.send(session, message);
        }
    }

    /// Tell the session's client about a request it made that cannot be served.
    pub(super) fn request_error(
        &mut self,
        session: SessionId,
        reason: lk::request_response::Reason,
        message: String,
    ) {
        if self.sessions.contains_key(&session) {
            let r = lk::RequestResponse {
                request_id: 0,
                reason: reason as i32,
                message,
                ..Default::default()
            };
            self.send(session, signal_response::Message::RequestResponse(r));
        }
    }

    /// The client's offer on its publisher connection: the first creates the connection,
    /// later ones renegotiate it. The engine's answer (or refusal) arrives as an event.
    fn publisher_offer(&mut self, session: SessionId, sd: lk::SessionDescription) {
        let Some(p) = self.participant(session) else {
            return;
        };
        let publish = if p.can_publish() {
            Publish::Allow
        } else {
            Publish::Deny
        };
        let offer = match SdpOffer::from_sdp_string(&sd.sdp) {
            Ok(o) => o,
            Err(e) => {
                self.request_error(
                    session,
                    lk::request_response::Reason::InvalidRequest,
                    format!("malformed SDP offer: {e}"),
                );
                return;
            }
        };
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (existing, single) = (s.publisher, s.single);
        let command = match existing {
            Some(peer) => EngineCommand::HandleOffer { peer, offer },
            None => {
                let room = s.room.clone();
                let peer = self.new_peer(&room);
                self.by_peer.insert(peer, (session, Pc::Publisher));
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.publisher = Some(peer);
                    if single {
                        // The one connection also receives what the session subscribes to.
                        s.subscriber = Some(peer);
                    }
                }
                // On one connection, what the room publishes is bound to the offer's
                // recvonly m-lines before the first answer is written.
                let subscribe = if single {
                    self.published_for(session)
                        .into_iter()
                        .filter(|(track, _, _)| self.claim_subscription(session, *track).is_some())
                        .map(|(track, psid, tsid)| (track, Self::track_label(&psid, &tsid)))
                        .collect()
                } else {
                    Vec::new()
                };
                EngineCommand::AcceptOffer {
                    peer,
                    publish,
                    offer,
                    single,
                    subscribe,
                    relay: self.participant(session).is_some_and(Participant::is_relay),
                }
            }
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            s.offers.push_back(sd.id);
        }
        self.engine(command);
    }

    fn subscriber_answer(&mut self, session: SessionId, sd: lk::SessionDescription) {
        // On one connection the server never offers, so there is nothing to answer.
        let Some(peer) = self
            .sessions
            .get(&session)
            .filter(|s| !s.single)
            .and_then(|s| s.subscriber)
        else {
            return;
        };
        match SdpAnswer::from_sdp_string(&sd.sdp) {
            Ok(answer) => self.engine(EngineCommand::HandleAnswer { peer, answer }),
            Err(e) => self.request_error(
                session,
                lk::request_response::Reason::InvalidRequest,
                format!("malformed SDP answer: {e}"),
            ),
        }
    }

    fn add_track(&mut self, session: SessionId, req: lk::AddTrackRequest) {
        let Some(p) = self.participant(session) else {
            return;
        };
        let audio = req.r#type == lk::TrackType::Audio as i32;
        let source_ok = p.permission.can_publish_sources.is_empty()
            || p.permission.can_publish_sources.contains(&req.source);
        if !p.permission.can_publish || !source_ok || !audio {
            let why = if audio {
                "not allowed to publish"
            } else {
                "only audio can be published"
            };
            self.request_error(
                session,
                lk::request_response::Reason::NotAllowed,
                why.into(),
            );
            return;
        }
        if self
            .sessions
            .get(&session)
            .is_some_and(|s| s.pending.len() >= MAX_PENDING_TRACKS)
        {
            // Announced tracks that never arrive would otherwise pile up for the session's
            // lifetime (and their held responses with them).
            self.request_error(
                session,
                lk::request_response::Reason::LimitExceeded,
                format!("at most {MAX_PENDING_TRACKS} tracks may wait for their media"),
            );
            return;
        }
        let sid = self.new_sid("TR_AM");
        let info = lk::TrackInfo {
            sid: sid.clone(),
            r#type: lk::TrackType::Audio as i32,
            name: req.name,
            muted: req.muted,
            source: req.source,
            disable_red: req.disable_red,
            mime_type: "audio/opus".into(),
            stream: req.stream,
            audio_features: req.audio_features,
            ..Default::default()
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.pending.push((req.cid.clone(), info.clone()));
        let published = lk::TrackPublishedResponse {
            cid: req.cid,
            track: Some(info),
        };
        // Until its connection is up, see `Session::published_held`.
        if let Some(held) = s.published_held.as_mut() {
            held.push(published);
            return;
        }
        self.send(session, signal_response::Message::TrackPublished(published));
    }

    fn client_mute(&mut self, session: SessionId, track_sid: &str, muted: bool) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (room, psid) = (s.room.clone(), s.participant.clone());
        self.set_muted(&room, &psid, track_sid, muted);
    }

    /// Mute state of a track: recorded, announced, enforced by the engine, and told to the
    /// in-process observer (`track_muted`, `track_unmuted`: not LiveKit webhook events), so
    /// that an application's view follows a mute made through any SDK or the Twirp API.
    pub(super) fn set_muted(
        &mut self,
        room: &str,
        psid: &str,
        track_sid: &str,
        muted: bool,
    ) -> Option<lk::TrackInfo> {
        let p = self.rooms.get_mut(room)?.participants.get_mut(psid)?;
        let track = p.tracks.get_mut(track_sid)?;
        let changed = track.info.muted != muted;
        track.info.muted = muted;
        let info = track.info.clone();
        let engine = track.engine;
        let identity = p.identity.clone();
        p.touch();
        if let Some(track) = engine {
            self.engine(EngineCommand::SetTrackMuted { track, muted });
        }
        self.broadcast_participant(room, psid);
        if changed && self.config.events {
            let event = lk::WebhookEvent {
                event: if muted {
                    "track_muted"
                } else {
                    "track_unmuted"
                }
                .to_owned(),
                room: Some(lk::Room {
                    name: room.to_owned(),
                    ..Default::default()
                }),
                participant: Some(lk::ParticipantInfo {
                    sid: psid.to_owned(),
                    identity,
                    ..Default::default()
                }),
                track: Some(info.clone()),
                created_at: self.now_ms() / 1000,
                ..Default::default()
            };
            self.outputs
                .push_back(super::Output::Observe(Box::new(event)));
        }
        Some(info)
    }

    pub(super) fn update_subscription(
        &mut self,
        session: SessionId,
        update: lk::UpdateSubscription,
    ) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let room = s.room.clone();
        let mut sids = update.track_sids;
        sids.extend(
            update
                .participant_tracks
                .into_iter()
                .flat_map(|pt| pt.track_sids),
        );
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        let targets: Vec<(TrackId, String, String)> = r
            .participants
            .values()
            .flat_map(|p| {
                p.tracks
                    .values()
                    .filter(|t| sids.contains(&t.info.sid))
                    .filter_map(|t| Some((t.engine?, p.sid.clone(), t.info.sid.clone())))
            })
            .collect();
        for (track, psid, tsid) in targets {
            if update.subscribe {
                self.subscribe(session, track, &psid, &tsid);
            } else {
                self.unsubscribe(session, track);
            }
        }
    }

    fn update_metadata(&mut self, session: SessionId, update: lk::UpdateParticipantMetadata) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (room, psid) = (s.room.clone(), s.participant.clone());
        let Some(p) = self.participant_mut(session) else {
            return;
        };
        if !p.permission.can_update_metadata {
            self.request_error(
                session,
                lk::request_response::Reason::NotAllowed,
                "not allowed to update metadata".into(),
            );
            return;
        }
        p.apply_update(update.name, update.metadata, update.attributes);
        self.broadcast_participant(&room, &psid);
    }

    // ------------------------------------------------------------------ subscriptions

    /// The label a subscriber's m-line for a track carries (`PA_…|TR_…`, `TR_…`), as
    /// livekit-client expects.
    pub(super) fn track_label(publisher_sid: &str, track_sid: &str) -> MediaLabel {
        MediaLabel {
            stream_id: format!("{publisher_sid}|{track_sid}"),
            track_id: track_sid.to_owned(),
        }
    }

    /// Whether `session` may and should start receiving `track` (it has a subscriber
    /// connection, may subscribe and does not receive it yet); if so, it is recorded as
    /// receiving it and its subscriber peer is returned.
    pub(super) fn claim_subscription(
        &mut self,
        session: SessionId,
        track: TrackId,
    ) -> Option<stoa_sfu::PeerId> {
        let can_subscribe = self
            .participant(session)
            .is_some_and(|p| p.permission.can_subscribe);
        let s = self.sessions.get_mut(&session)?;
        let peer = s.subscriber?;
        if !can_subscribe || s.subscribed.contains(&track) {
            return None;
        }
        s.subscribed.push(track);
        Some(peer)
    }

    pub(super) fn subscribe(
        &mut self,
        session: SessionId,
        track: TrackId,
        publisher_sid: &str,
        track_sid: &str,
    ) {
        if let Some(peer) = self.claim_subscription(session, track) {
            self.engine(EngineCommand::Subscribe {
                track,
                label: Self::track_label(publisher_sid, track_sid),
                peers: vec![peer],
            });
        }
    }

    /// Subscribes every auto-subscribing session of `room` but `except` (its publisher) to
    /// `track`, published by `publisher_sid` as `track_sid`: one engine command for all of them.
    pub(super) fn subscribe_room(
        &mut self,
        room: &str,
        track: TrackId,
        publisher_sid: &str,
        track_sid: &str,
        except: Option<SessionId>,
    ) {
        let sessions: Vec<SessionId> = self
            .room_sessions(room)
            .into_iter()
            .filter(|id| {
                Some(*id) != except
                    && self.sessions.get(id).is_some_and(|s| s.auto_subscribe)
                    && !self.feeds_back(room, *id, publisher_sid)
            })
            .collect();
        let peers: Vec<stoa_sfu::PeerId> = sessions
            .into_iter()
            .filter_map(|s| self.claim_subscription(s, track))
            .collect();
        if !peers.is_empty() {
            self.engine(EngineCommand::Subscribe {
                track,
                label: Self::track_label(publisher_sid, track_sid),
                peers,
            });
        }
    }

    pub(super) fn unsubscribe(&mut self, session: SessionId, track: TrackId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let Some(peer) = s.subscriber else {
            return;
        };
        s.subscribed.retain(|t| *t != track);
        self.engine(EngineCommand::Unsubscribe { peer, track });
    }
}
