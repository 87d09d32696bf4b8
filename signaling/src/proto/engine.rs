//! Events from the media engine: answers, offers, refusals, connections, tracks, speakers,
//! data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use prost::Message;
use stoa_sfu::str0m::change::SdpAnswer;
use stoa_sfu::str0m::channel::ChannelId;
use stoa_sfu::{
    CommandKind, EngineCommand, Event, MediaLabel, PeerId, SfuError, TrackId, UnpublishReason,
};

use super::session::{Leave, Pc};
use super::{Output, Server, SessionId};
use crate::room::{Participant, PublishedTrack};

impl Server {
    /// An event of the media engine. Events about peers the core no longer knows (a session
    /// that ended meanwhile) are ignored.
    pub fn handle_engine_event(&mut self, now: Instant, event: Event) {
        self.advance(now);
        match event {
            Event::Answer {
                peer,
                answer,
                sending,
            } => self.engine_answer(peer, &answer, sending),
            Event::SectionsNeeded { peer, audios } => {
                let Some(&(session, _)) = self.by_peer.get(&peer) else {
                    return;
                };
                let m = lk::MediaSectionsRequirement {
                    num_audios: audios,
                    num_videos: 0,
                };
                self.send(
                    session,
                    signal_response::Message::MediaSectionsRequirement(m),
                );
            }
            Event::CommandFailed {
                peer,
                command,
                error,
            } => self.engine_refused(peer, command, &error),
            Event::Offer { peer, offer, .. } if self.relay_room(peer).is_some() => {
                self.relay_offer(peer, offer.to_sdp_string());
            }
            Event::Offer { peer, offer, .. } if self.feed_of(peer).is_some() => {
                self.feed_offer(peer, offer.to_sdp_string());
            }
            Event::Offer { peer, offer, slots } => {
                let Some(&(session, _)) = self.by_peer.get(&peer) else {
                    return;
                };
                // The client must know every track before it is offered.
                self.flush_updates(session);
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                let id = s.next_offer_id;
                s.next_offer_id += 1;
                let mid_to_track_id = slots
                    .into_iter()
                    .map(|(_, mid, label)| (mid.to_string(), label.track_id))
                    .collect();
                let sd = lk::SessionDescription {
                    r#type: "offer".into(),
                    sdp: offer.to_sdp_string(),
                    id,
                    mid_to_track_id,
                };
                self.send(session, signal_response::Message::Offer(sd));
            }
            Event::Connected(peer) => self.peer_connected(peer),
            Event::IceLost(peer) => {
                // The client's media path is gone. The peer stays: the client notices too and
                // resumes with an ICE restart (or its held session expires, which closes it).
                // Ending or holding the session here would race with that resume.
                if let Some(&(session, _)) = self.by_peer.get(&peer) {
                    self.in_span(session, || tracing::debug!(peer = %peer, "ICE lost"));
                }
            }
            Event::Disconnected(peer) if self.relay_room(peer).is_some() => {
                self.relay_peer_gone(peer);
            }
            Event::Disconnected(peer) if self.feed_of(peer).is_some() => {
                self.feed_peer_gone(peer);
            }
            Event::Disconnected(peer) => {
                if let Some((session, _)) = self.by_peer.remove(&peer) {
                    self.end_session(
                        session,
                        "media connection lost",
                        Leave::Rejoin(lk::DisconnectReason::ConnectionTimeout),
                    );
                }
            }
            Event::TrackPublished { track, label } => self.track_published(track, label),
            Event::TrackUnpublished { track, .. } if self.relay_room(track.peer).is_some() => {
                self.relay_track_unpublished(track);
            }
            Event::TrackUnpublished { track, .. } if self.feed_of(track.peer).is_some() => {
                self.feed_track_unpublished(track);
            }
            Event::TrackUnpublished { track, reason } => self.track_unpublished(track, reason),
            Event::SpeakersChanged(levels) => self.speakers_changed(levels),
            Event::ChannelOpen {
                peer,
                channel,
                label,
            } => {
                if self.relay_room(peer).is_some() {
                    self.relay_channel_open(peer, channel, label);
                } else if let Some(&(session, pc)) = self.by_peer.get(&peer)
                    && let Some(s) = self.sessions.get_mut(&session)
                {
                    // On one connection the client's own channels carry data both ways.
                    if pc == Pc::Subscriber || s.single {
                        s.subscriber_channels.insert(label.clone(), channel);
                    }
                    s.channels.insert((pc, channel), label);
                }
            }
            Event::ChannelData {
                peer,
                channel,
                data,
                ..
            } => {
                if self.relay_room(peer).is_some() {
                    self.relay_data(peer, channel, data);
                } else {
                    self.data_packet(peer, channel, &data);
                }
            }
            Event::RelayTrackPublished { track, label, .. }
                if self.feed_of(track.peer).is_some() =>
            {
                self.feed_track_published(track, label);
            }
            Event::RelayTrackPublished { track, label, .. } => {
                self.relay_track_published(track, label);
            }
            _ => {}
        }
    }

    /// The engine answered a publisher offer: to the client, with the offer's id and, on one
    /// connection, which track each m-line the server sends on carries.
    fn engine_answer(
        &mut self,
        peer: PeerId,
        answer: &SdpAnswer,
        sending: Vec<(stoa_sfu::str0m::media::Mid, MediaLabel)>,
    ) {
        let Some(&(session, Pc::Publisher)) = self.by_peer.get(&peer) else {
            return;
        };
        if !sending.is_empty() {
            // The client must know every track's publisher before its m-line is live.
            self.flush_updates(session);
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let id = s.offers.pop_front().unwrap_or_default();
        let sd = lk::SessionDescription {
            r#type: "answer".into(),
            sdp: answer.to_sdp_string(),
            id,
            mid_to_track_id: sending
                .into_iter()
                .map(|(mid, label)| (mid.to_string(), label.track_id))
                .collect(),
        };
        self.send(session, signal_response::Message::Answer(sd));
    }

    /// The engine refused a command: the client learns why; a subscriber connection that
    /// cannot be created ends the session.
    fn engine_refused(&mut self, peer: PeerId, command: CommandKind, error: &SfuError) {
        if let Some(room) = self.relay_room(peer) {
            tracing::warn!(room = %room, error = %error, command = ?command, "relay refused");
            self.relay_peer_gone(peer);
            return;
        }
        if let Some((room, _)) = self.feed_of(peer) {
            tracing::warn!(room = %room, error = %error, command = ?command, "feed refused");
            self.feed_peer_gone(peer);
            return;
        }
        let Some(&(session, _)) = self.by_peer.get(&peer) else {
            return;
        };
        use lk::request_response::Reason;
        match command {
            CommandKind::CreatePeer => {
                self.in_span(session, || {
                    tracing::warn!(error = %error, "cannot create subscriber connection");
                });
                self.end_session(
                    session,
                    "media engine unavailable",
                    Leave::Disconnect(lk::DisconnectReason::JoinFailure),
                );
            }
            CommandKind::AcceptOffer | CommandKind::HandleOffer => {
                let mut refused = 1;
                if let Some(s) = self.sessions.get_mut(&session) {
                    if command == CommandKind::AcceptOffer && s.publisher == Some(peer) {
                        // No connection was created: the next offer starts afresh, and offers
                        // sent meanwhile for this connection are refused with it.
                        s.publisher = None;
                        if s.single {
                            // Its subscriptions went nowhere: the next connection takes them.
                            s.subscriber = None;
                            s.subscribed.clear();
                        }
                        self.by_peer.remove(&peer);
                        self.placement.remove(peer);
                        refused = s.offers.len().max(1);
                        s.offers.clear();
                    } else {
                        s.offers.pop_front();
                    }
                }
                let reason = if matches!(error, SfuError::PublishNotAllowed) {
                    Reason::NotAllowed
                } else {
                    Reason::InvalidRequest
                };
                for _ in 0..refused {
                    self.request_error(session, reason, format!("offer refused: {error}"));
                }
            }
            CommandKind::HandleAnswer => {
                self.request_error(
                    session,
                    Reason::InvalidRequest,
                    format!("answer refused: {error}"),
                );
            }
            _ => {}
        }
    }

    fn peer_connected(&mut self, peer: PeerId) {
        let Some(&(session, pc)) = self.by_peer.get(&peer) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        // The primary connection: the subscriber's, or the only one.
        if pc != Pc::Subscriber && !s.single {
            return;
        }
        // The client has applied the first answer: what its AddTrack requests waited for.
        for published in s.published_held.take().unwrap_or_default() {
            self.send(session, signal_response::Message::TrackPublished(published));
        }
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let (room, psid) = (s.room.clone(), s.participant.clone());
        let joined_at = s.joined_at;
        let joined = self.rooms.get_mut(&room).and_then(|r| {
            let info = r.activate(&psid)?;
            // Counted in the room's snapshot from now on (docs: `Server::room_snapshot`).
            r.dirty = true;
            Some(info)
        });
        self.broadcast_participant(&room, &psid);
        if let Some(info) = joined {
            let latency = self.now.saturating_duration_since(joined_at);
            self.outputs.push_back(Output::JoinLatency(latency));
            self.send_current_speakers(session, &room);
            self.participant_webhook("participant_joined", &room, info, None);
        }
    }

    fn track_published(&mut self, track: TrackId, label: MediaLabel) {
        let Some(&(session, Pc::Publisher)) = self.by_peer.get(&track.peer) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        // Bind by the msid track id (= the client's cid), else the oldest pending track.
        let index = s
            .pending
            .iter()
            .position(|(cid, _)| *cid == label.track_id)
            .or(if s.pending.is_empty() { None } else { Some(0) });
        let Some(index) = index else {
            tracing::debug!(track = %track, "media without AddTrack; not published");
            return;
        };
        let (cid, mut info) = s.pending.remove(index);
        info.mid = track.mid.to_string();
        let (room, psid) = (s.room.clone(), s.participant.clone());
        let tsid = info.sid.clone();
        let muted = info.muted;
        let Some(p) = self.participant_mut(session) else {
            return;
        };
        p.tracks.insert(
            tsid.clone(),
            PublishedTrack {
                info,
                cid,
                engine: Some(track),
            },
        );
        p.touch();
        if muted {
            self.engine(EngineCommand::SetTrackMuted { track, muted: true });
        }
        if let Some(identity) = self.participant(session).map(|p| p.identity.clone()) {
            self.tap_if_recorded(&room, &identity, &tsid, track);
        }
        self.in_span(session, || tracing::info!(track = %tsid, "track published"));
        if let Some(p) = self.participant(session) {
            let who = lk::ParticipantInfo {
                sid: p.sid.clone(),
                identity: p.identity.clone(),
                ..Default::default()
            };
            let track = p.tracks.get(&tsid).map(|t| t.info.clone());
            self.participant_webhook("track_published", &room, who, track);
        }
        // Everyone learns of the track before its offer arrives.
        self.broadcast_participant(&room, &psid);
        self.subscribe_room(&room, track, &psid, &tsid, Some(session));
    }

    fn track_unpublished(&mut self, track: TrackId, reason: UnpublishReason) {
        let Some(&(session, _)) = self.by_peer.get(&track.peer) else {
            return;
        };
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let room = s.room.clone();
        let psid = s.participant.clone();
        for id in self.room_sessions(&room) {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.subscribed.retain(|t| *t != track);
            }
        }
        let Some(p) = self.participant_mut(session) else {
            return;
        };
        let Some(tsid) = p.track_by_engine(track).map(|t| t.info.sid.clone()) else {
            return;
        };
        let removed = p.tracks.remove(&tsid).map(|t| t.info);
        let who = lk::ParticipantInfo {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            ..Default::default()
        };
        p.touch();
        if reason == UnpublishReason::PermissionRevoked {
            let m = lk::TrackUnpublishedResponse {
                track_sid: tsid.clone(),
            };
            self.send(session, signal_response::Message::TrackUnpublished(m));
        }
        self.in_span(
            session,
            || tracing::info!(track = %tsid, "track unpublished"),
        );
        self.untap_if_recorded(&room, &who.identity, &tsid, track);
        self.participant_webhook("track_unpublished", &room, who, removed);
        self.broadcast_participant(&room, &psid);
    }

    /// Whose speaking the engine's `track` is: (room, participant sid, held by another node).
    /// A track relayed from the origin is its speaker's (a mirror here); one fed from an edge
    /// is the edge's speaker's (announced here); any other is a local session's.
    fn speaker_of(&self, track: TrackId) -> Option<(String, String, bool)> {
        if let Some((psid, _)) = self.relayed_track(track) {
            let room = self.relay_room(track.peer)?;
            return Some((room.to_owned(), psid.clone(), true));
        }
        if let Some((psid, _)) = self.fed_track(track) {
            let (room, _) = self.feed_of(track.peer)?;
            return Some((room.clone(), psid.to_owned(), true));
        }
        let &(session, _) = self.by_peer.get(&track.peer)?;
        let s = self.sessions.get(&session)?;
        Some((s.room.clone(), s.participant.clone(), false))
    }

    fn speakers_changed(&mut self, levels: Vec<stoa_sfu::proto::speaker::SpeakerLevel<TrackId>>) {
        let mut by_room: BTreeMap<String, Vec<lk::SpeakerInfo>> = BTreeMap::new();
        // Speakers another node holds (the origin's, or an edge's): announced here, reported
        // to the observer by their own node only.
        let mut mirrored: Vec<String> = Vec::new();
        for level in levels {
            let Some((room, sid, elsewhere)) = self.speaker_of(level.key) else {
                continue;
            };
            if elsewhere {
                mirrored.push(sid.clone());
            }
            by_room.entry(room).or_default().push(lk::SpeakerInfo {
                sid,
                level: level.level,
                active: level.active,
            });
        }
        for (room, speakers) in by_room {
            let local: Vec<lk::SpeakerInfo> = speakers
                .iter()
                .filter(|s| !mirrored.contains(&s.sid))
                .cloned()
                .collect();
            self.observe_speakers(&room, &local);
            if let Some(r) = self.rooms.get_mut(&room) {
                for s in &speakers {
                    if s.active {
                        r.speakers.insert(s.sid.clone(), s.clone());
                    } else {
                        r.speakers.remove(&s.sid);
                    }
                }
            }
            let sessions = self.room_sessions(&room);
            self.send_speakers(&sessions, &speakers);
        }
    }

    /// Tells a participant who has just become active who is speaking already, as one
    /// `SpeakersChanged` with its next flush (clients merge it like any other). Later changes
    /// follow as deltas.
    fn send_current_speakers(&mut self, session: SessionId, room: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let speakers = r.speakers.values().cloned().collect();
        self.queue_speakers(session, speakers);
    }

    /// Tells a resumed participant (`viewer`) where every publisher it sees stands: who
    /// speaks, and that the others do not. The changes sent while it was away went to its old
    /// connection, so its client may still hold a speaker who stopped as speaking.
    pub(super) fn send_speaker_states(&mut self, session: SessionId, room: &str, viewer: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let Some(viewer) = r.participants.get(viewer) else {
            return;
        };
        let mut speakers: Vec<lk::SpeakerInfo> = r.speakers.values().cloned().collect();
        speakers.extend(
            r.publishers_visible_to(viewer)
                .filter(|p| !r.speakers.contains_key(&p.sid))
                .map(|p| lk::SpeakerInfo {
                    sid: p.sid.clone(),
                    level: 0.0,
                    active: false,
                }),
        );
        self.queue_speakers(session, speakers);
    }

    /// Queues `speakers` for `session`, loudest first, with the changes that may wait for it
    /// (so none overtakes them).
    fn queue_speakers(&mut self, session: SessionId, mut speakers: Vec<lk::SpeakerInfo>) {
        if speakers.is_empty() {
            return;
        }
        speakers.sort_by(|a, b| b.level.total_cmp(&a.level).then_with(|| a.sid.cmp(&b.sid)));
        self.send_speakers(&[session], &speakers);
    }

    /// Tells the in-process observer who started or stopped speaking (`speaking_started`,
    /// `speaking_stopped`: not LiveKit webhook events, so never sent as webhooks).
    fn observe_speakers(&mut self, room: &str, speakers: &[lk::SpeakerInfo]) {
        if !self.config.events {
            return;
        }
        let created_at = self.now_ms() / 1000;
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut events = Vec::new();
        for s in speakers {
            let Some(p) = r.participants.get(&s.sid) else {
                continue;
            };
            events.push(lk::WebhookEvent {
                event: if s.active {
                    "speaking_started"
                } else {
                    "speaking_stopped"
                }
                .to_owned(),
                room: Some(lk::Room {
                    name: room.to_owned(),
                    ..Default::default()
                }),
                participant: Some(lk::ParticipantInfo {
                    sid: p.sid.clone(),
                    identity: p.identity.clone(),
                    ..Default::default()
                }),
                created_at,
                ..Default::default()
            });
        }
        self.outputs
            .extend(events.into_iter().map(|e| Output::Observe(Box::new(e))));
    }

    /// A data packet from a client's publisher connection: within the sender's rate, stamped
    /// with the sender's identity (never trusted from the client) and forwarded to the room on
    /// the same kind of channel. Packets of senders without the data permission, over their
    /// rate, on a server-only topic or undecodable are dropped and counted.
    fn data_packet(&mut self, peer: PeerId, channel: ChannelId, data: &[u8]) {
        if self.is_relay_session(peer) {
            // An edge's participants (`roster`), or its clients' data, each sender admitted
            // and rate-limited there.
            if self.roster_packet(peer, data) {
                return;
            }
            if !self.forward_relayed_data(peer, channel, data) {
                self.stats.data_dropped += 1;
            }
            return;
        }
        if !(self.admit_data(peer) && self.forward_client_data(peer, channel, data)) {
            self.stats.data_dropped += 1;
        }
    }

    /// Whether `peer` is the connection of a relay (an edge node relaying this room).
    fn is_relay_session(&self, peer: PeerId) -> bool {
        self.by_peer
            .get(&peer)
            .and_then(|(session, _)| self.participant(*session))
            .is_some_and(Participant::is_relay)
    }

    /// A data packet an edge relayed from one of its clients (sender stamped there; the edge
    /// is authenticated by the cluster's key): to this node's sessions it is addressed to and
    /// to the room's other edges. Server-only topics are refused as from any client.
    fn forward_relayed_data(&mut self, peer: PeerId, channel: ChannelId, data: &[u8]) -> bool {
        let Some(&(session, pc)) = self.by_peer.get(&peer) else {
            return false;
        };
        let Some(s) = self.sessions.get(&session) else {
            return false;
        };
        let Some(label) = s.channels.get(&(pc, channel)).cloned() else {
            return false;
        };
        let room = s.room.clone();
        let Ok(packet) = lk::DataPacket::decode(data) else {
            return false;
        };
        if reserved_topic(&packet) || packet.participant_identity.is_empty() {
            return false;
        }
        let destinations = destinations(&packet);
        self.forward_data(
            &room,
            Some(session),
            &label,
            &destinations,
            data.to_vec(),
            ToRelays::Send,
        );
        true
    }

    /// Spends one token of the sending session's data bucket; false when it is empty (or the
    /// peer is no publisher connection).
    fn admit_data(&mut self, peer: PeerId) -> bool {
        let Some(&(session, Pc::Publisher)) = self.by_peer.get(&peer) else {
            return false;
        };
        let now = self.now;
        let rate = self.config.data_rate;
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        let (tokens, at) = s.data_tokens;
        let refill = now.saturating_duration_since(at).as_secs_f64() * f64::from(rate.per_sec);
        let tokens = (tokens + refill).min(f64::from(rate.burst));
        if tokens < 1.0 {
            s.data_tokens = (tokens, now);
            return false;
        }
        s.data_tokens = (tokens - 1.0, now);
        true
    }

    /// Forwards an admitted client data packet; false when it is refused.
    fn forward_client_data(&mut self, peer: PeerId, channel: ChannelId, data: &[u8]) -> bool {
        let Some(&(session, Pc::Publisher)) = self.by_peer.get(&peer) else {
            return false;
        };
        let Some(s) = self.sessions.get(&session) else {
            return false;
        };
        let Some(label) = s.channels.get(&(Pc::Publisher, channel)).cloned() else {
            return false;
        };
        let room = s.room.clone();
        let Some(sender) = self.participant(session) else {
            return false;
        };
        if !sender.permission.can_publish_data {
            tracing::debug!("data packet of a participant without the data permission dropped");
            return false;
        }
        let Ok(mut packet) = lk::DataPacket::decode(data) else {
            tracing::debug!("undecodable data packet dropped");
            return false;
        };
        if reserved_topic(&packet) {
            tracing::debug!("data packet on a server-only topic dropped");
            return false;
        }
        packet.participant_identity = sender.identity.clone();
        packet.participant_sid = sender.sid.clone();
        let destinations = destinations(&packet);
        // Older clients read the sender from the deprecated per-packet fields.
        #[allow(deprecated)]
        if let Some(lk::data_packet::Value::User(user)) = &mut packet.value {
            user.participant_identity = sender.identity.clone();
            user.participant_sid = sender.sid.clone();
        }
        let bytes = packet.encode_to_vec();
        // A client's packet also goes to the room's edges, whose listeners may be addressed,
        // and, on an edge, to the origin.
        self.relay_to_origin(&room, &label, &bytes);
        self.forward_data(
            &room,
            Some(session),
            &label,
            &destinations,
            bytes,
            ToRelays::Send,
        );
        true
    }

    /// Send an encoded data packet on the subscriber channel `label` of every session in
    /// `room` (but `except`), only to `destinations` (identities) unless that is empty: one
    /// engine command, whatever the room's size. Relays (other nodes relaying the room) get
    /// it whatever its destinations when `relays` says so; their node picks the destinations
    /// among its own sessions.
    pub(super) fn forward_data(
        &mut self,
        room: &str,
        except: Option<SessionId>,
        label: &str,
        destinations: &[String],
        bytes: Vec<u8>,
        relays: ToRelays,
    ) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let targets: Vec<(PeerId, ChannelId)> = r
            .participants
            .values()
            .filter(|p| {
                if p.is_relay() {
                    relays == ToRelays::Send
                } else {
                    destinations.is_empty() || destinations.contains(&p.identity)
                }
            })
            .filter_map(|p| self.by_participant.get(&p.sid))
            .filter(|id| Some(**id) != except)
            .filter_map(|id| self.sessions.get(id))
            .filter_map(|t| Some((t.subscriber?, *t.subscriber_channels.get(label)?)))
            .collect();
        if targets.is_empty() {
            return;
        }
        self.engine(EngineCommand::SendData {
            targets,
            binary: true,
            data: Arc::from(bytes),
        });
    }
}

/// Whether a data packet also goes to the room's relays (the nodes relaying it as edges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ToRelays {
    /// A client's packet: every edge gets it and delivers it to its own sessions.
    Send,
    /// The server's own (RoomService `SendData`, reactions through the API): every node of the
    /// room is asked to send it to its own sessions, so relays are skipped.
    Skip,
}

/// The identities a data packet is addressed to (none: everyone), from the packet and from its
/// deprecated user-packet field, which older clients still fill.
pub(super) fn destinations(packet: &lk::DataPacket) -> Vec<String> {
    let mut destinations = packet.destination_identities.clone();
    #[allow(deprecated)]
    if let Some(lk::data_packet::Value::User(user)) = &packet.value {
        destinations.extend(user.destination_identities.iter().cloned());
    }
    destinations
}

/// Whether a client's packet names a server-only topic. A topic is named by user packets and
/// by the header opening a data stream (`sendText`, `streamText`, `sendFile`); the stream's
/// chunks only follow a header.
fn reserved_topic(packet: &lk::DataPacket) -> bool {
    #[allow(deprecated)]
    match &packet.value {
        Some(lk::data_packet::Value::User(user)) => user
            .topic
            .as_deref()
            .is_some_and(|t| t.starts_with(super::RESERVED_TOPIC_PREFIX)),
        Some(lk::data_packet::Value::StreamHeader(header)) => {
            header.topic.starts_with(super::RESERVED_TOPIC_PREFIX)
        }
        _ => false,
    }
}
