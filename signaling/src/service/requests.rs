//! Requests from clients: negotiation, publishing, mute, subscriptions, metadata.

use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use stoa_sfu::str0m::change::{SdpAnswer, SdpOffer};
use stoa_sfu::{MediaLabel, Publish, SfuError, TrackId};

use super::{Leave, Pc, Service, SessionId, now_ms, response};
use crate::room::Participant;

impl Service {
    // ------------------------------------------------------------------ client requests

    pub(super) async fn handle_request(
        &mut self,
        session: SessionId,
        message: signal_request::Message,
    ) {
        use signal_request::Message as M;
        if !self.sessions.contains_key(&session) {
            return;
        }
        match message {
            M::Offer(sd) => self.publisher_offer(session, sd).await,
            M::Answer(sd) => self.subscriber_answer(session, sd).await,
            M::Trickle(_) => {
                // ICE-lite: client addresses are learned from its binding requests.
            }
            M::AddTrack(req) => self.add_track(session, req),
            M::Mute(req) => self.client_mute(session, &req.sid, req.muted).await,
            M::Subscription(update) => self.update_subscription(session, update).await,
            M::Leave(_) => {
                self.end_session(session, "client left", Leave::Quietly)
                    .await
            }
            M::Ping(ts) => self.pong(session, signal_response::Message::Pong(ts)),
            M::PingReq(ping) => {
                let pong = lk::Pong {
                    last_ping_timestamp: ping.timestamp,
                    timestamp: now_ms(),
                };
                self.pong(session, signal_response::Message::PongResp(pong));
            }
            M::UpdateMetadata(update) => self.update_metadata(session, update),
            other => {
                tracing::debug!(request = ?std::mem::discriminant(&other), "unsupported request ignored");
            }
        }
    }

    pub(super) fn pong(&mut self, session: SessionId, message: signal_response::Message) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_ping = Instant::now();
            let _ = s.out.try_send(response(message));
        }
    }

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

    /// Tell the session's client about a request it made that cannot be served.
    pub(super) fn request_error(
        &self,
        session: SessionId,
        reason: lk::request_response::Reason,
        message: String,
    ) {
        if let Some(s) = self.sessions.get(&session) {
            let r = lk::RequestResponse {
                request_id: 0,
                reason: reason as i32,
                message,
                ..Default::default()
            };
            let _ = s
                .out
                .try_send(response(signal_response::Message::RequestResponse(r)));
        }
    }

    pub(super) async fn publisher_offer(&mut self, session: SessionId, sd: lk::SessionDescription) {
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
        let existing = self.sessions.get(&session).and_then(|s| s.publisher);
        let result: Result<SdpAnswer, String> = match existing {
            None => match self.sfu.accept_offer(publish, offer).await {
                Ok((peer, answer)) => {
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.publisher = Some(peer);
                        self.by_peer.insert(peer, (session, Pc::Publisher));
                    }
                    Ok(answer)
                }
                Err(e) => Err(e.to_string()),
            },
            Some(peer) => self
                .sfu
                .with_peer(peer, move |sfu, now| sfu.handle_offer(now, peer, offer))
                .await
                .map_err(|e| e.to_string()),
        };
        match result {
            Ok(answer) => {
                let sd = lk::SessionDescription {
                    r#type: "answer".into(),
                    sdp: answer.to_sdp_string(),
                    id: sd.id,
                    ..Default::default()
                };
                if let Some(s) = self.sessions.get(&session) {
                    let _ = s
                        .out
                        .try_send(response(signal_response::Message::Answer(sd)));
                }
            }
            Err(e) => {
                let reason = if e.contains(&SfuError::PublishNotAllowed.to_string()) {
                    lk::request_response::Reason::NotAllowed
                } else {
                    lk::request_response::Reason::InvalidRequest
                };
                self.request_error(session, reason, format!("offer refused: {e}"));
            }
        }
    }

    pub(super) async fn subscriber_answer(
        &mut self,
        session: SessionId,
        sd: lk::SessionDescription,
    ) {
        let Some(peer) = self.sessions.get(&session).and_then(|s| s.subscriber) else {
            return;
        };
        let answer = match SdpAnswer::from_sdp_string(&sd.sdp) {
            Ok(a) => a,
            Err(e) => {
                self.request_error(
                    session,
                    lk::request_response::Reason::InvalidRequest,
                    format!("malformed SDP answer: {e}"),
                );
                return;
            }
        };
        if let Err(e) = self
            .sfu
            .with_peer(peer, move |sfu, now| sfu.handle_answer(now, peer, answer))
            .await
        {
            self.request_error(
                session,
                lk::request_response::Reason::InvalidRequest,
                format!("answer refused: {e}"),
            );
        }
    }

    pub(super) fn add_track(&mut self, session: SessionId, req: lk::AddTrackRequest) {
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
        let _ = s
            .out
            .try_send(response(signal_response::Message::TrackPublished(
                published,
            )));
    }

    pub(super) async fn client_mute(&mut self, session: SessionId, track_sid: &str, muted: bool) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (room, psid) = (s.room.clone(), s.participant.clone());
        self.set_muted(&room, &psid, track_sid, muted).await;
    }

    /// Mute state of a track: recorded, announced, enforced by the engine.
    pub(super) async fn set_muted(
        &mut self,
        room: &str,
        psid: &str,
        track_sid: &str,
        muted: bool,
    ) -> Option<lk::TrackInfo> {
        let p = self.rooms.get_mut(room)?.participants.get_mut(psid)?;
        let track = p.tracks.get_mut(track_sid)?;
        track.info.muted = muted;
        let info = track.info.clone();
        let engine = track.engine;
        p.touch();
        if let Some(engine) = engine {
            let _ = self
                .sfu
                .call(engine.shard(), move |sfu, _, _| {
                    sfu.set_track_muted(engine, muted)
                })
                .await;
        }
        self.broadcast_participant(room, psid);
        Some(info)
    }

    pub(super) async fn update_subscription(
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
                self.subscribe(session, track, &psid, &tsid).await;
            } else {
                self.unsubscribe(session, track).await;
            }
        }
    }

    pub(super) fn update_metadata(
        &mut self,
        session: SessionId,
        update: lk::UpdateParticipantMetadata,
    ) {
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

    pub(super) async fn subscribe(
        &mut self,
        session: SessionId,
        track: TrackId,
        publisher_sid: &str,
        track_sid: &str,
    ) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let Some(peer) = s.subscriber else {
            return;
        };
        if s.subscribed.contains(&track) {
            return;
        }
        let can_subscribe = self
            .participant(session)
            .is_some_and(|p| p.permission.can_subscribe);
        if !can_subscribe {
            return;
        }
        let label = MediaLabel {
            stream_id: format!("{publisher_sid}|{track_sid}"),
            track_id: track_sid.to_owned(),
        };
        // A slot that carried this track before is fed again; otherwise a new m-line.
        let result = self
            .sfu
            .with_peer(peer, move |sfu, now| match sfu.find_slot(peer, &label) {
                Some(slot) => sfu.set_slot_source(now, peer, slot, Some(track)),
                None => sfu.subscribe(now, peer, track, label).map(|_| ()),
            })
            .await;
        match result {
            Ok(()) => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.subscribed.push(track);
                }
            }
            Err(e) => tracing::debug!(error = %e, "subscribe failed"),
        }
    }

    pub(super) async fn unsubscribe(&mut self, session: SessionId, track: TrackId) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let Some(peer) = s.subscriber else {
            return;
        };
        s.subscribed.retain(|t| *t != track);
        let _ = self
            .sfu
            .with_peer(peer, move |sfu, now| sfu.unsubscribe(now, peer, track))
            .await;
    }
}
