//! Session resume, as LiveKit clients use it: a client that lost its signaling connection (or
//! its media path) comes back with `reconnect=1&sid=PA_…` and carries on where it was.
//!
//! A session whose connection is lost without a leave is *held*: the participant stays in the
//! room with its sid, tracks and subscriptions, its engine peers stay up, and the others notice
//! nothing. Nothing is sent to a held session (the participant snapshot it is sent on resume
//! replaces what it missed). A resume within the room's departure timeout moves the session to
//! the new connection, which gets a `ReconnectResponse` first, then every participant it sees,
//! the room, and an ICE-restart offer on its subscriber connection; the client restarts ICE on
//! its publisher connection by itself (an ordinary re-offer, answered by the engine). A held
//! session not resumed in time ends, and only then do the others see the participant leave.
//!
//! A resume must carry a valid token (checked before the core sees it) for the identity and
//! room of the held participant; one for an unknown or ended participant is answered with
//! `leave{STATE_MISMATCH, action RECONNECT}`, and the client rejoins in full.

use std::time::{Duration, Instant};

use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use livekit_protocol::signal_response;
use stoa_sfu::EngineCommand;

use super::session::{Leave, Pc};
use super::{ADVERTISED_LIVEKIT_VERSION, Output, Refused, Server, SessionId};
use crate::join::JoinParams;

/// The `ClientConfiguration` of every join and resume: sessions are resumable.
pub(super) fn client_configuration() -> lk::ClientConfiguration {
    lk::ClientConfiguration {
        resume_connection: lk::ClientConfigSetting::Enabled as i32,
        ..Default::default()
    }
}

/// The `ServerInfo` of every join and resume.
pub(super) fn server_info() -> lk::ServerInfo {
    lk::ServerInfo {
        edition: lk::server_info::Edition::Standard as i32,
        version: ADVERTISED_LIVEKIT_VERSION.into(),
        protocol: 17,
        node_id: format!("stoa-{}", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    }
}

impl Server {
    /// Whether `session` is held (its connection lost, waiting for a resume).
    pub fn is_held(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.held_since.is_some())
    }

    /// The session lost its connection: hold it for a resume. The shell is told to close the
    /// connection (if it is still open, e.g. after a ping timeout).
    pub(super) fn hold_session(&mut self, session: SessionId, why: &str) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.held_since.is_some() {
            return;
        }
        if s.asked_to_leave {
            // Told to leave by a draining server: gone, not held (the drain waits for rooms
            // to empty).
            self.end_session(session, why, super::session::Leave::Quietly);
            return;
        }
        s.held_since = Some(now);
        self.pending_updates.remove(&session);
        self.outputs
            .push_back(Output::Close(session, why.to_owned()));
        self.in_span(session, || {
            tracing::info!(
                reason = why,
                "connection lost; participant held for a resume"
            );
        });
    }

    /// A resume (`reconnect=1`, `sid`) by a verified client. Refused (403) if the held
    /// participant has another identity; answered with a leave to rejoin if there is no such
    /// participant in the token's room.
    pub(super) fn resume(
        &mut self,
        claims: Claims,
        params: JoinParams,
        sid: &str,
    ) -> Result<SessionId, Refused> {
        let old = self.by_participant.get(sid).copied().filter(|old| {
            self.sessions
                .get(old)
                .is_some_and(|s| s.room == claims.video.room)
        });
        let session = self.new_session();
        let Some(old) = old else {
            tracing::info!(room = %claims.video.room, participant = %sid, "resume of an unknown participant; told to rejoin");
            let leave = lk::LeaveRequest {
                can_reconnect: true,
                reason: lk::DisconnectReason::StateMismatch as i32,
                action: lk::leave_request::Action::Reconnect as i32,
                ..Default::default()
            };
            self.send(session, signal_response::Message::Leave(leave));
            self.outputs
                .push_back(Output::Close(session, "unknown participant".into()));
            return Ok(session);
        };
        let Some(participant) = self.participant(old) else {
            return Err(Refused {
                status: 500,
                message: "participant vanished".into(),
            });
        };
        if participant.identity != claims.sub {
            self.in_span(old, || {
                tracing::warn!("resume refused: the token names another identity");
            });
            return Err(Refused {
                status: 403,
                message: format!("participant {sid} is not {}", claims.sub),
            });
        }
        let identity = participant.identity.clone();

        // Move the session to the new connection.
        let Some(mut s) = self.sessions.remove(&old) else {
            return Err(Refused {
                status: 500,
                message: "session vanished".into(),
            });
        };
        let was_held = s.held_since.take().is_some();
        s.last_ping = self.now;
        let room = s.room.clone();
        let subscriber = s.subscriber;
        self.pending_updates.remove(&old);
        // On one connection the client restarts ICE with its own offer; the engine offers
        // nothing.
        let subscriber = subscriber.filter(|_| !s.single);
        let peers = [
            (s.publisher, Pc::Publisher),
            (s.subscriber.filter(|_| !s.single), Pc::Subscriber),
        ];
        for (peer, pc) in peers {
            if let Some(peer) = peer {
                self.by_peer.insert(peer, (session, pc));
            }
        }
        self.by_participant.insert(sid.to_owned(), session);
        s.span.in_scope(|| {
            tracing::info!(
                held = was_held,
                reason = params.reconnect_reason,
                "participant resumed"
            );
        });
        self.sessions.insert(session, s);
        if !was_held {
            // The old connection is still open (the client gave up on it first).
            self.outputs
                .push_back(Output::Close(old, "resumed on a new connection".into()));
        }

        // ReconnectResponse first (a resuming client drops anything else before it), then
        // what it may have missed: everyone it sees, itself included, the room, and (with the
        // next flush) where every publisher it sees stands.
        let ice_servers = self
            .config
            .turn
            .as_ref()
            .map(|turn| turn.ice_servers(&identity))
            .unwrap_or_default();
        let reconnect = lk::ReconnectResponse {
            ice_servers,
            client_configuration: Some(client_configuration()),
            server_info: Some(server_info()),
            last_message_seq: 0,
        };
        self.send(session, signal_response::Message::Reconnect(reconnect));
        if let Some(r) = self.rooms.get(&room)
            && let Some(me) = r.participants.get(sid)
        {
            let mut participants = vec![me.info()];
            participants.extend(r.others_visible_to(me));
            let room_info = self.room_snapshot(&room);
            // In bounded messages, as every participant update (`flush_updates`).
            for chunk in participants.chunks(super::UPDATE_PARTICIPANTS) {
                let update = lk::ParticipantUpdate {
                    participants: chunk.to_vec(),
                };
                self.send(session, signal_response::Message::Update(update));
            }
            self.send(
                session,
                signal_response::Message::RoomUpdate(lk::RoomUpdate { room: room_info }),
            );
            self.send_speaker_states(session, &room, sid);
        }
        if let Some(peer) = subscriber {
            self.engine(EngineCommand::RestartIce { peer });
        }
        Ok(session)
    }

    /// End held sessions whose room's departure timeout passed (from the slow tick).
    pub(super) fn expire_held(&mut self, now: Instant) {
        let mut expired: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.held_since.is_some_and(|t| {
                    let timeout = self
                        .rooms
                        .get(&s.room)
                        .map_or(0, |r| r.limits.departure_timeout);
                    now.saturating_duration_since(t) >= Duration::from_secs(u64::from(timeout))
                })
            })
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        for id in expired {
            self.end_session(
                id,
                "not resumed within the departure timeout",
                Leave::Expire(lk::DisconnectReason::SignalClose),
            );
        }
    }
}
