//! Relayed media, the edge's side (issue 21, docs/ARCHITECTURE.md "Rooms across nodes"): a
//! room whose speakers publish on another node (the *origin*) is heard here through one relay
//! link, an engine relay peer that joins the origin's room as a hidden subscriber.
//!
//! [`AdminOp::RelayFrom`](super::AdminOp::RelayFrom) starts a link: the core creates the relay
//! peer (`EngineCommand::CreateRelayPeer`) and, with the engine's offer, asks the shell to open
//! the origin's `/rtc/v1` ([`RelayOutput::Open`]). What the origin sends comes back through
//! [`Server::handle_relay_response`]: its answer goes to the engine, its
//! `MediaSectionsRequirement` becomes `EngineCommand::OfferRelaySections` and the new offer an
//! `Offer` request ([`RelayOutput::Send`]). The origin's participants (the JoinResponse's
//! `other_participants`, later `ParticipantUpdate`s) become *mirror participants* of the edge's
//! room: same sid, identity, name, metadata, attributes, permissions and track sids, with no
//! session. When the engine reports a relayed track (`Event::RelayTrackPublished`), its label
//! (`{participant sid}|{track sid}`, as the origin's signaling labels every track it sends)
//! binds it to the mirror's track, and the edge's auto-subscribing sessions receive it as they
//! would a local publisher's. A mirror leaves when the origin says so (state `DISCONNECTED`)
//! or when the link ends ([`Server::handle_relay_closed`], or the relay peer failing); its
//! tracks are then unsubscribed on the edge.
//!
//! The relay's identity on the origin ([`RELAY_IDENTITY_PREFIX`], a hidden token without
//! publish rights, see [`crate::token::relay_claims`]) is neither shown, nor counted, nor
//! reported in webhooks there ([`crate::room::Participant::is_relay`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use stoa_sfu::str0m::change::SdpAnswer;
use stoa_sfu::str0m::channel::ChannelId;
use stoa_sfu::{EngineCommand, MediaLabel, PeerId, TrackId};

use super::engine::ToRelays;
use super::{Output, Server, ServiceError};
use crate::room::{Participant, PublishedTrack, Room};

/// Identities of relay participants start with this (`node:{edge id}`).
pub const RELAY_IDENTITY_PREFIX: &str = "node:";

/// The relay peer's data channels: the labels LiveKit clients' subscriber channels have, on
/// which the origin forwards its clients' data packets (as to any subscriber).
const RELAY_CHANNELS: [&str; 2] = ["_reliable", "_lossy"];

/// What the core asks of the shell about relay links (IO: a WebSocket to the origin).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RelayOutput {
    /// Open the origin's `/rtc/v1` for `room` with a relay token, carrying `offer` in the
    /// join request. Replaces any link the shell still has for the room.
    Open {
        /// The room (on both nodes).
        room: String,
        /// The origin's base URL (`ws://`, `wss://`, `http://` or `https://`).
        origin: String,
        /// The relay peer's first offer.
        offer: lk::SessionDescription,
    },
    /// Send this request on the room's link.
    Send {
        /// The room.
        room: String,
        /// The request.
        request: Box<signal_request::Message>,
    },
    /// Close the room's link (a `Leave` first, if it is open).
    Close {
        /// The room.
        room: String,
    },
    /// On an origin: open `edge`'s `/rtc/v1` for `room` with a relay token, carrying `offer`
    /// in the join request: a feed of the edge's speakers (see `feed`). Replaces any feed the
    /// shell still has for the room and edge.
    OpenFeed {
        /// The room (on both nodes).
        room: String,
        /// The edge's base URL.
        edge: String,
        /// The feed's relay peer's first offer.
        offer: lk::SessionDescription,
    },
    /// Send this request on the feed of `room` from `edge`.
    SendFeed {
        /// The room.
        room: String,
        /// The edge's base URL.
        edge: String,
        /// The request.
        request: Box<signal_request::Message>,
    },
    /// Close the feed of `room` from `edge` (a `Leave` first, if it is open).
    CloseFeed {
        /// The room.
        room: String,
        /// The edge's base URL.
        edge: String,
    },
}

/// What both kinds of relay link share (a room's link to its origin, and an origin's feed
/// from an edge, `feed`): the relay peer, the numbering of its offers, and the tracks relayed
/// on it, waiting for their participant or bound to one.
#[derive(Debug)]
pub(super) struct LinkPeer {
    pub(super) peer: PeerId,
    /// The first offer went out (it opened the link).
    opened: bool,
    next_offer_id: u32,
    /// Relayed tracks not bound yet (their participant or its track not known yet).
    pub(super) unbound: Vec<(TrackId, MediaLabel)>,
    /// Bound tracks: (participant sid, track sid).
    pub(super) bound: HashMap<TrackId, (String, String)>,
}

impl LinkPeer {
    /// A link of relay peer `peer`, nothing offered yet.
    pub(super) fn new(peer: PeerId) -> LinkPeer {
        LinkPeer {
            peer,
            opened: false,
            next_offer_id: 1,
            unbound: Vec::new(),
            bound: HashMap::new(),
        }
    }

    /// The engine's next offer on the link, with its id; `true` for the first, which opens
    /// the link (later ones are sent on it).
    pub(super) fn offer(&mut self, sdp: String) -> (lk::SessionDescription, bool) {
        let id = self.next_offer_id;
        self.next_offer_id += 1;
        let offer = lk::SessionDescription {
            r#type: "offer".into(),
            sdp,
            id,
            ..Default::default()
        };
        let first = !std::mem::replace(&mut self.opened, true);
        (offer, first)
    }

    /// The engine filed `track`, relayed on the link: it waits for its participant.
    pub(super) fn file(&mut self, track: TrackId, label: MediaLabel) {
        self.unbound.retain(|(t, _)| *t != track);
        self.unbound.push((track, label));
    }

    /// A bound track goes back to waiting: the engine keeps an m-line labelled once bound, so
    /// if the participant or track is told of again, it binds again. Returns what it was
    /// bound to.
    pub(super) fn unbind(&mut self, track: TrackId) -> Option<(String, String)> {
        let (psid, tsid) = self.bound.remove(&track)?;
        let label = MediaLabel {
            stream_id: format!("{psid}|{tsid}"),
            track_id: tsid.clone(),
        };
        self.unbound.push((track, label));
        Some((psid, tsid))
    }

    /// Tracks bound to participant `psid`.
    pub(super) fn bound_to(&self, psid: &str) -> Vec<TrackId> {
        self.bound
            .iter()
            .filter(|(_, (p, _))| p == psid)
            .map(|(t, _)| *t)
            .collect()
    }
}

/// One relay link: a room of this node fed by an origin node.
#[derive(Debug)]
pub(super) struct RelayLink {
    origin: String,
    media: LinkPeer,
    /// The relay's own participant sid on the origin (not mirrored).
    own_sid: Option<String>,
    /// Mirror participants' sids.
    mirrors: BTreeSet<String>,
    /// The relay peer's open data channels and their labels (`_reliable`, `_lossy`).
    channels: HashMap<ChannelId, String>,
}

impl RelayLink {
    /// Whether `psid` is one of this link's mirrors (a participant of the origin's).
    pub(super) fn has_mirror(&self, psid: &str) -> bool {
        self.mirrors.contains(psid)
    }

    /// Every track bound to mirror `psid` goes back to waiting.
    fn unbind_participant(&mut self, psid: &str) {
        for track in self.media.bound_to(psid) {
            self.media.unbind(track);
        }
    }
}

/// A mirror's tracks from another node's snapshot, each keeping the engine track it was bound
/// to in `old` (the mirror before this snapshot).
pub(super) fn mirror_tracks(
    old: Option<&Participant>,
    infos: Vec<lk::TrackInfo>,
) -> std::collections::BTreeMap<String, PublishedTrack> {
    infos
        .into_iter()
        .map(|t| {
            let engine = old
                .and_then(|o| o.tracks.get(&t.sid))
                .and_then(|o| o.engine);
            let track = PublishedTrack {
                cid: t.sid.clone(),
                info: t,
                engine,
            };
            (track.info.sid.clone(), track)
        })
        .collect()
}

impl Server {
    /// Start (or restart) relaying `room` from the node at `origin`.
    pub(super) fn relay_from(&mut self, room: &str, origin: String) -> Result<(), ServiceError> {
        if origin.is_empty() {
            return Err(ServiceError::InvalidArgument("empty origin URL".into()));
        }
        if self.relays.contains_key(room) {
            self.end_relay(room, "relinked");
        }
        if !self.rooms.contains_key(room) {
            // The origin reports the room's start and end (one room_started per room).
            self.open_room_quietly(room, self.config.room_defaults);
        }
        let peer = self.new_peer(room);
        self.relay_peers.insert(peer, room.to_owned());
        self.relays.insert(
            room.to_owned(),
            RelayLink {
                origin,
                media: LinkPeer::new(peer),
                own_sid: None,
                mirrors: BTreeSet::new(),
                channels: HashMap::new(),
            },
        );
        tracing::info!(room = %room, peer = %peer, "relay link starting");
        // The origin sends its clients' data on the channels its own clients use.
        self.engine(EngineCommand::CreateRelayPeer {
            peer,
            audios: 1,
            channels: RELAY_CHANNELS.iter().map(|c| (*c).to_owned()).collect(),
            // The engine's shell binds the link a socket of its own.
            local: None,
        });
        Ok(())
    }

    /// Relays `room` from `origin` unless a link to that origin is running: returns whether it
    /// started one.
    pub(super) fn ensure_relay(
        &mut self,
        room: &str,
        origin: String,
    ) -> Result<bool, ServiceError> {
        if self.relays.get(room).is_some_and(|l| l.origin == origin) {
            return Ok(false);
        }
        self.relay_from(room, origin)?;
        Ok(true)
    }

    /// Whether `psid` is a mirror in `room`: a participant another node holds (of the room's
    /// origin, on an edge; announced by an edge, on the origin: `roster`).
    pub(super) fn is_mirror(&self, room: &str, psid: &str) -> bool {
        self.relays
            .get(room)
            .is_some_and(|l| l.mirrors.contains(psid))
            || self.is_announced(room, psid)
    }

    /// How many of `room`'s `ACTIVE` participants are mirrors of another node's (the
    /// origin's, on an edge; announced by edges, on the origin).
    pub(super) fn active_mirrors_in(&self, room: &Room) -> usize {
        let mirrors = self.relays.get(&room.name).map(|link| link.mirrors.iter());
        let announced = self.roster_in.get(&room.name).map(|m| m.keys());
        mirrors
            .into_iter()
            .flatten()
            .chain(announced.into_iter().flatten())
            .filter_map(|sid| room.participants.get(sid))
            .filter(|p| p.state == State::Active)
            .count()
    }

    /// The room a relay peer feeds, if `peer` is one.
    pub(super) fn relay_room(&self, peer: PeerId) -> Option<&str> {
        self.relay_peers.get(&peer).map(String::as_str)
    }

    /// Rooms with a relay link.
    pub fn relayed_rooms(&self) -> impl Iterator<Item = &str> + '_ {
        self.relays.keys().map(String::as_str)
    }

    /// The engine offered on a relay peer: the link's first offer opens it, later ones are
    /// sent on it.
    pub(super) fn relay_offer(&mut self, peer: PeerId, sdp: String) {
        let Some(room) = self.relay_peers.get(&peer).cloned() else {
            return;
        };
        let Some(link) = self.relays.get_mut(&room) else {
            return;
        };
        let out = match link.media.offer(sdp) {
            (offer, true) => RelayOutput::Open {
                room,
                origin: link.origin.clone(),
                offer,
            },
            (offer, false) => RelayOutput::Send {
                room,
                request: Box::new(signal_request::Message::Offer(offer)),
            },
        };
        self.outputs.push_back(Output::Relay(out));
    }

    /// A message from the origin on `room`'s link.
    pub fn handle_relay_response(
        &mut self,
        now: Instant,
        room: &str,
        message: signal_response::Message,
    ) {
        self.advance(now);
        let Some(link) = self.relays.get_mut(room) else {
            return;
        };
        let peer = link.media.peer;
        match message {
            signal_response::Message::Join(join) => {
                link.own_sid = join.participant.map(|p| p.sid);
                for info in join.other_participants {
                    self.mirror(room, info);
                }
            }
            signal_response::Message::Update(update) => {
                for info in update.participants {
                    self.mirror(room, info);
                }
            }
            signal_response::Message::Leave(_) => self.end_relay(room, "origin said leave"),
            other => {
                if let Err(e) = self.negotiate(peer, other) {
                    tracing::warn!(room = %room, error = %e, "origin's answer unreadable");
                    self.end_relay(room, "unreadable answer");
                }
            }
        }
    }

    /// The media half of a message on a relay link, alike on both kinds (`LinkPeer`): the
    /// other node's answer goes to the engine, its request for more sections becomes a new
    /// offer of the relay peer; anything else is not about media. An answer that cannot be
    /// read is an error (the link should end).
    pub(super) fn negotiate(
        &mut self,
        peer: PeerId,
        message: signal_response::Message,
    ) -> Result<(), String> {
        match message {
            signal_response::Message::Answer(sd) => {
                let answer = SdpAnswer::from_sdp_string(&sd.sdp).map_err(|e| e.to_string())?;
                self.engine(EngineCommand::HandleAnswer { peer, answer });
            }
            signal_response::Message::MediaSectionsRequirement(m) => {
                self.engine(EngineCommand::OfferRelaySections {
                    peer,
                    audios: m.num_audios,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// `room`'s link to its origin closed (or could not open): its mirrors leave and the relay
    /// peer closes. A new [`AdminOp::RelayFrom`](super::AdminOp::RelayFrom) links it again.
    pub fn handle_relay_closed(&mut self, now: Instant, room: &str) {
        self.advance(now);
        if self.relays.contains_key(room) {
            self.end_relay(room, "link closed");
        }
    }

    /// Ends `room`'s link: mirrors leave, the relay peer closes, the shell closes the socket.
    pub(super) fn end_relay(&mut self, room: &str, why: &str) {
        let Some(link) = self.relays.remove(room) else {
            return;
        };
        tracing::info!(room = %room, reason = why, "relay link ended");
        self.relay_peers.remove(&link.media.peer);
        // A next link announces everyone again (`roster`).
        self.roster_out.remove(room);
        for psid in &link.mirrors {
            self.remove_mirror(room, psid, &link.media.bound);
        }
        self.engine(EngineCommand::ClosePeer {
            peer: link.media.peer,
        });
        self.outputs.push_back(Output::Relay(RelayOutput::Close {
            room: room.to_owned(),
        }));
    }

    /// An origin participant's snapshot: a mirror appears, changes or leaves.
    fn mirror(&mut self, room: &str, mut info: lk::ParticipantInfo) {
        let Some(link) = self.relays.get(room) else {
            return;
        };
        let hidden = info.permission.as_ref().is_some_and(|p| p.hidden);
        if link.own_sid.as_deref() == Some(info.sid.as_str()) || hidden || info.sid.is_empty() {
            return;
        }
        if info.state == State::Disconnected as i32 {
            if let Some(mut link) = self.relays.remove(room) {
                if link.mirrors.remove(&info.sid) {
                    self.remove_mirror(room, &info.sid, &link.media.bound);
                    link.unbind_participant(&info.sid);
                }
                self.relays.insert(room.to_owned(), link);
            }
            return;
        }
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let old = r.participants.get(&info.sid);
        if old.is_some() && !link.mirrors.contains(&info.sid) {
            // This node holds it (the origin shows an edge's speaker to every relay of the
            // room): the local participant is the truth.
            return;
        }
        if old.is_some_and(|o| o.version > info.version) {
            return;
        }
        let holder = old
            .is_none()
            .then(|| r.by_identity(&info.identity).map(|p| p.sid.clone()))
            .flatten();
        if let Some(holder) = holder {
            if !link.mirrors.contains(&holder) {
                // Someone of this node holds the identity: the local session wins.
                tracing::debug!(room = %room, "origin participant with a local identity not mirrored");
                return;
            }
            // The origin's participant rejoined under a new sid: the old mirror goes first.
            if let Some(mut link) = self.relays.remove(room) {
                link.mirrors.remove(&holder);
                self.remove_mirror(room, &holder, &link.media.bound);
                link.unbind_participant(&holder);
                self.relays.insert(room.to_owned(), link);
            }
            return self.mirror(room, info);
        }
        let tracks = mirror_tracks(old, std::mem::take(&mut info.tracks));
        let dropped: Vec<TrackId> = old
            .map(|o| {
                o.tracks
                    .iter()
                    .filter(|(sid, _)| !tracks.contains_key(*sid))
                    .filter_map(|(_, t)| t.engine)
                    .collect()
            })
            .unwrap_or_default();
        let mirror = Participant::mirror_of(info, tracks);
        let psid = mirror.sid.clone();
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.insert(mirror);
        r.emptied_ms = None;
        r.dirty = true;
        if let Some(link) = self.relays.get_mut(room) {
            link.mirrors.insert(psid.clone());
            for track in &dropped {
                link.media.unbind(*track);
            }
        }
        for track in dropped {
            self.unsubscribe_everyone(room, track);
        }
        self.broadcast_participant(room, &psid);
        self.bind_waiting(room);
    }

    /// The engine filed a track relayed from the origin: bound to its mirror's track now, or
    /// once the origin has told of it.
    pub(super) fn relay_track_published(&mut self, track: TrackId, label: MediaLabel) {
        let Some(room) = self.relay_peers.get(&track.peer).cloned() else {
            return;
        };
        if let Some(link) = self.relays.get_mut(&room) {
            link.media.file(track, label);
        }
        self.bind_waiting(&room);
    }

    /// The engine unpublished a relayed track (the origin stopped sending on its m-line, or
    /// the relay peer closed).
    pub(super) fn relay_track_unpublished(&mut self, track: TrackId) {
        let Some(room) = self.relay_peers.get(&track.peer).cloned() else {
            return;
        };
        let Some(link) = self.relays.get_mut(&room) else {
            return;
        };
        link.media.unbound.retain(|(t, _)| *t != track);
        let Some((psid, tsid)) = link.media.bound.remove(&track) else {
            return;
        };
        if let Some(t) = self
            .rooms
            .get_mut(&room)
            .and_then(|r| r.participants.get_mut(&psid))
            .and_then(|p| p.tracks.get_mut(&tsid))
        {
            t.engine = None;
        }
        self.unsubscribe_everyone(&room, track);
    }

    /// A data channel of a relay peer opened.
    pub(super) fn relay_channel_open(&mut self, peer: PeerId, channel: ChannelId, label: String) {
        let Some(room) = self.relay_peers.get(&peer).cloned() else {
            return;
        };
        let reliable = label == "_reliable";
        if let Some(link) = self.relays.get_mut(&room) {
            link.channels.insert(channel, label);
        }
        if reliable {
            // A new link (a new relay session on the origin): the origin learns everyone.
            self.roster_resync(&room);
        }
    }

    /// Whether `room`'s link has its data channel `label` open.
    pub(super) fn relay_channel(&self, room: &str, label: &str) -> bool {
        self.relays
            .get(room)
            .is_some_and(|l| l.channels.values().any(|l| l == label))
    }

    /// A data packet the origin relayed (one of its clients' packets, sender stamped there,
    /// that sender a mirror here): to this node's sessions it is addressed to, on the same
    /// channel. An undecodable packet is dropped and counted.
    pub(super) fn relay_data(&mut self, peer: PeerId, channel: ChannelId, data: Vec<u8>) {
        let Some(room) = self.relay_peers.get(&peer).cloned() else {
            return;
        };
        let Some(label) = self
            .relays
            .get(&room)
            .and_then(|l| l.channels.get(&channel))
            .cloned()
        else {
            return;
        };
        let Ok(packet) = lk::DataPacket::decode(data.as_slice()) else {
            tracing::debug!(room = %room, "undecodable relayed data packet dropped");
            self.stats.data_dropped += 1;
            return;
        };
        let destinations = super::engine::destinations(&packet);
        self.forward_data(&room, None, &label, &destinations, data, ToRelays::Skip);
    }

    /// A client's data packet on this node, an edge of `room`: to the origin too, on the
    /// relay's channel of the same label (the origin passes it to its sessions and its other
    /// edges). Nothing when the room has no link or the channel is not open yet.
    pub(super) fn relay_to_origin(&mut self, room: &str, label: &str, bytes: &[u8]) {
        let Some(link) = self.relays.get(room) else {
            return;
        };
        let Some((&channel, _)) = link.channels.iter().find(|(_, l)| l.as_str() == label) else {
            return;
        };
        let peer = link.media.peer;
        self.engine(EngineCommand::SendData {
            targets: vec![(peer, channel)],
            binary: true,
            data: std::sync::Arc::from(bytes),
        });
    }

    /// The relay peer is gone (failed, or refused by the engine): the link ends.
    pub(super) fn relay_peer_gone(&mut self, peer: PeerId) {
        if let Some(room) = self.relay_peers.get(&peer).cloned() {
            self.end_relay(&room, "relay peer gone");
        }
    }

    /// Binds every waiting relayed track whose mirror track is known, and subscribes the
    /// room's auto-subscribing sessions to it.
    fn bind_waiting(&mut self, room: &str) {
        let Some(link) = self.relays.get_mut(room) else {
            return;
        };
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let mut ready = Vec::new();
        link.media.unbound.retain(|(track, label)| {
            let Some((psid, _)) = label.stream_id.split_once('|') else {
                return true;
            };
            let tsid = &label.track_id;
            let known = link.mirrors.contains(psid)
                && r.participants
                    .get_mut(psid)
                    .and_then(|p| p.tracks.get_mut(tsid))
                    .map(|t| t.engine = Some(*track))
                    .is_some();
            if known {
                ready.push((*track, psid.to_owned(), tsid.clone()));
            }
            !known
        });
        for (track, psid, tsid) in &ready {
            link.media
                .bound
                .insert(*track, (psid.clone(), tsid.clone()));
        }
        for (track, psid, tsid) in ready {
            tracing::info!(room = %room, track = %tsid, "relayed track bound");
            self.subscribe_room(room, track, &psid, &tsid, None);
        }
    }

    /// A mirror leaves the room: its tracks are unsubscribed, its viewers see it gone.
    fn remove_mirror(
        &mut self,
        room: &str,
        psid: &str,
        bound: &HashMap<TrackId, (String, String)>,
    ) {
        let tracks: Vec<TrackId> = bound
            .iter()
            .filter(|(_, (p, _))| p == psid)
            .map(|(t, _)| *t)
            .collect();
        for track in tracks {
            self.unsubscribe_everyone(room, track);
        }
        // A mirror that was speaking is told quiet first: clients keep a departed speaker
        // among their active speakers otherwise.
        self.stopped_speaking(room, psid);
        let now_ms = self.now_ms();
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(mut gone) = r.remove(psid) else {
            return;
        };
        r.dirty = true;
        if r.participants.is_empty() {
            r.emptied_ms = Some(now_ms);
        }
        gone.state = State::Disconnected;
        gone.touch();
        let viewers: Vec<String> = r
            .participants
            .values()
            .filter(|v| gone.visible_to(v))
            .map(|v| v.sid.clone())
            .collect();
        self.send_update(&viewers, vec![gone.info()]);
    }

    /// Every session of `room` receiving `track` stops.
    pub(super) fn unsubscribe_everyone(&mut self, room: &str, track: TrackId) {
        for id in self.room_sessions(room) {
            if self
                .sessions
                .get(&id)
                .is_some_and(|s| s.subscribed.contains(&track))
            {
                self.unsubscribe(id, track);
            }
        }
    }

    /// The mirror sid and track sid a relayed engine track is bound to.
    pub(super) fn relayed_track(&self, track: TrackId) -> Option<&(String, String)> {
        let room = self.relay_peers.get(&track.peer)?;
        self.relays.get(room)?.media.bound.get(&track)
    }
}
