//! Speakers on edges (issue 21): an edge's published tracks reach the origin through a *feed*,
//! a relay link the origin opens to the edge, the way an edge opens its own link to the origin
//! (`relay`).
//!
//! The edge already announces the participants it holds to the origin over its link
//! (`roster`); an announced participant with tracks is a speaker on that edge. The origin then
//! links *from* the edge for the room: an engine relay peer
//! (`EngineCommand::CreateRelayPeer`, recvonly audio, no data channels) joining the edge's
//! room over its `/rtc/v1` with a relay token of the origin's ([`RelayOutput::OpenFeed`]). On
//! the edge that join is one more relay session, subscribed to the tracks of the participants
//! the edge holds and to nothing it mirrors (so nothing goes back where it came from). Each
//! relayed track the engine reports on the feed (`Event::RelayTrackPublished`, labelled
//! `{participant sid}|{track sid}` by the edge) binds to the announced participant's track,
//! and the origin's auto-subscribing sessions receive it as a local publisher's: its own
//! listeners, and the relay sessions of its *other* edges, which mirror the speaker from the
//! origin's snapshots like the origin's own speakers. The announcing edge's relay session
//! gets neither the track nor the snapshot.
//!
//! One truth per fact: the participant, its tracks and their mute state come from the edge's
//! announcements alone; the feed carries media only (the edge's participant snapshots on it
//! are ignored). The feed's URL is the edge's own, carried in its relay token's
//! [`NODE_URL_ATTRIBUTE`] (signed with the cluster's key, as every relay token). A feed ends
//! [`FEED_RETRY`] after the last relay session of its edge in the room ended (unless the edge
//! linked again meanwhile: a link replacing another keeps the feed) or when the room closes;
//! one that
//! fails otherwise is opened again [`FEED_RETRY`] later while the edge has a speaker, and at
//! its next announcement of a speaker in any case. The edge's node reports its
//! speaker's speaking time and webhooks; the origin does not report them again.

use std::collections::BTreeMap;
use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use stoa_sfu::{EngineCommand, MediaLabel, PeerId, TrackId};

use super::relay::LinkPeer;
use super::{Output, Server, SessionId};
use crate::room::Participant;

/// The attribute of a relay token naming the base URL of the node that made it, where its
/// origin may open a feed back.
pub const NODE_URL_ATTRIBUTE: &str = "stoa.node_url";

/// How long after a feed failed it is opened again (while its edge has a speaker).
pub const FEED_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether an ended feed is opened again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// It failed: [`FEED_RETRY`] later, if its edge still has a speaker.
    Later,
    /// Its edge's link or the room ended: no.
    No,
}

/// A feed: the room and the edge's base URL.
pub(super) type FeedKey = (String, String);

/// One feed: the origin's relay peer joined to an edge's room, its tracks bound to announced
/// participants.
pub(super) type Feed = LinkPeer;

impl Server {
    /// The base URL an edge's relay session says its node has (its token's
    /// [`NODE_URL_ATTRIBUTE`]), if `session` is a relay session.
    pub(super) fn relay_node_url(&self, session: SessionId) -> Option<&str> {
        let p = self.participant(session).filter(|p| p.is_relay())?;
        p.attributes
            .get(NODE_URL_ATTRIBUTE)
            .map(String::as_str)
            .filter(|u| !u.is_empty())
    }

    /// On an origin: relay session `from` of `room` announced a participant with tracks, a
    /// speaker on its edge. A feed from that edge is opened unless one runs.
    pub(super) fn want_feed(&mut self, room: &str, from: SessionId) {
        let Some(url) = self.relay_node_url(from).map(str::to_owned) else {
            tracing::debug!(room = %room, "an edge's speaker, but its relay names no URL");
            return;
        };
        let key = (room.to_owned(), url);
        if self.feeds.contains_key(&key) {
            return;
        }
        let peer = self.new_peer(room);
        tracing::info!(room = %room, peer = %peer, "feed from an edge starting");
        self.feed_peers.insert(peer, key.clone());
        self.feeds.insert(key, Feed::new(peer));
        self.engine(EngineCommand::CreateRelayPeer {
            peer,
            audios: 1,
            channels: Vec::new(),
            local: None,
        });
    }

    /// Every [`FEED_RETRY`] at most, feeds that failed are opened again, each if a relay of its
    /// edge still announces a speaker in the room (else it is forgotten).
    pub(super) fn retry_feeds(&mut self) {
        self.end_orphaned_feeds();
        for key in take_due(&mut self.feed_retry, self.now) {
            let (room, edge) = &key;
            let speaker = self.roster_in.get(room).and_then(|announced| {
                announced.iter().find_map(|(psid, from)| {
                    let speaks = self
                        .rooms
                        .get(room)
                        .and_then(|r| r.participants.get(psid))
                        .is_some_and(|p| !p.tracks.is_empty());
                    (speaks && self.relay_node_url(*from) == Some(edge.as_str())).then_some(*from)
                })
            });
            if let Some(from) = speaker {
                self.want_feed(room, from);
            }
        }
    }

    /// The feed a relay peer belongs to, if `peer` is one.
    pub(super) fn feed_of(&self, peer: PeerId) -> Option<&FeedKey> {
        self.feed_peers.get(&peer)
    }

    /// The engine offered on a feed's relay peer: the first offer opens the feed, later ones
    /// are sent on it.
    pub(super) fn feed_offer(&mut self, peer: PeerId, sdp: String) {
        let Some((room, edge)) = self.feed_peers.get(&peer).cloned() else {
            return;
        };
        let Some(feed) = self.feeds.get_mut(&(room.clone(), edge.clone())) else {
            return;
        };
        let out = match feed.offer(sdp) {
            (offer, true) => super::RelayOutput::OpenFeed { room, edge, offer },
            (offer, false) => super::RelayOutput::SendFeed {
                room,
                edge,
                request: Box::new(lk::signal_request::Message::Offer(offer)),
            },
        };
        self.outputs.push_back(Output::Relay(out));
    }

    /// A message of the edge on the feed of `room` from `edge`. Only what negotiates the media
    /// counts: who is in the room comes from the edge's announcements (`roster`).
    pub fn handle_feed_response(
        &mut self,
        now: Instant,
        room: &str,
        edge: &str,
        message: signal_response::Message,
    ) {
        self.advance(now);
        let key = (room.to_owned(), edge.to_owned());
        let Some(feed) = self.feeds.get(&key) else {
            return;
        };
        let peer = feed.peer;
        if matches!(message, signal_response::Message::Leave(_)) {
            self.end_feed(&key, "edge said leave", Retry::Later);
        } else if let Err(e) = self.negotiate(peer, message) {
            tracing::warn!(room = %room, error = %e, "edge's feed answer unreadable");
            self.end_feed(&key, "unreadable answer", Retry::Later);
        }
    }

    /// The feed of `room` from `edge` closed (or could not open). The edge's next
    /// announcement of a speaker opens it again.
    pub fn handle_feed_closed(&mut self, now: Instant, room: &str, edge: &str) {
        self.advance(now);
        self.end_feed(
            &(room.to_owned(), edge.to_owned()),
            "link closed",
            Retry::Later,
        );
    }

    /// Ends a feed: its tracks stop for everyone, its relay peer closes, the shell closes the
    /// socket. A feed that failed while its edge still relays the room is opened again
    /// [`FEED_RETRY`] later if the edge still has a speaker.
    pub(super) fn end_feed(&mut self, key: &FeedKey, why: &str, retry: Retry) {
        let Some(feed) = self.feeds.remove(key) else {
            return;
        };
        if retry == Retry::Later {
            self.feed_retry.insert(key.clone(), self.now + FEED_RETRY);
        }
        let (room, edge) = key;
        tracing::info!(room = %room, reason = why, "feed from an edge ended");
        self.feed_peers.remove(&feed.peer);
        for (track, (psid, tsid)) in feed.bound {
            self.fed_track_gone(room, &psid, &tsid, track);
        }
        self.engine(EngineCommand::ClosePeer { peer: feed.peer });
        self.outputs
            .push_back(Output::Relay(super::RelayOutput::CloseFeed {
                room: room.clone(),
                edge: edge.clone(),
            }));
    }

    /// Every feed of `room` ends (the room closes).
    pub(super) fn end_feeds_of(&mut self, room: &str) {
        self.feed_retry.retain(|(r, _), _| r != room);
        self.feed_orphans.retain(|(r, _), _| r != room);
        for key in self.feeds_of(room) {
            self.end_feed(&key, "room closed", Retry::No);
        }
    }

    /// The feeds of `room`.
    pub(super) fn feeds_of(&self, room: &str) -> Vec<FeedKey> {
        self.feeds
            .keys()
            .filter(|(r, _)| r == room)
            .cloned()
            .collect()
    }

    /// On an origin: a relay session of `room`, of the node at `url`, ended (it is gone from
    /// the sessions). That node's feed ends [`FEED_RETRY`] later unless a relay session of the
    /// same node is in the room by then: a link that replaces another ends the old session
    /// before its own joins (one identity per room), and its feed, carrying media, need not
    /// be made again.
    pub(super) fn relay_session_ended(&mut self, room: &str, url: Option<String>) {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return;
        };
        let key = (room.to_owned(), url);
        if self.feeds.contains_key(&key) || self.feed_retry.contains_key(&key) {
            self.feed_orphans.insert(key, self.now + FEED_RETRY);
        }
    }

    /// Feeds whose edge's last relay session ended [`FEED_RETRY`] ago or more end now unless
    /// a relay session of that edge is in the room again.
    fn end_orphaned_feeds(&mut self) {
        for key in take_due(&mut self.feed_orphans, self.now) {
            let (room, url) = &key;
            let linked = self
                .room_sessions(room)
                .into_iter()
                .any(|s| self.relay_node_url(s) == Some(url.as_str()));
            if !linked {
                self.feed_retry.remove(&key);
                self.end_feed(&key, "its edge's link ended", Retry::No);
            }
        }
    }

    /// The engine filed a track relayed on a feed: bound to its announced participant's track
    /// now, or once the edge has announced it.
    pub(super) fn feed_track_published(&mut self, track: TrackId, label: MediaLabel) {
        let Some(key) = self.feed_peers.get(&track.peer).cloned() else {
            return;
        };
        if let Some(feed) = self.feeds.get_mut(&key) {
            feed.file(track, label);
        }
        self.bind_feed(&key);
    }

    /// The engine unpublished a track relayed on a feed (the edge's speaker stopped, or the
    /// relay peer closed).
    pub(super) fn feed_track_unpublished(&mut self, track: TrackId) {
        let Some((room, edge)) = self.feed_peers.get(&track.peer).cloned() else {
            return;
        };
        let Some(feed) = self.feeds.get_mut(&(room.clone(), edge)) else {
            return;
        };
        feed.unbound.retain(|(t, _)| *t != track);
        let Some((psid, tsid)) = feed.bound.remove(&track) else {
            return;
        };
        self.fed_track_gone(&room, &psid, &tsid, track);
    }

    /// The feed's relay peer is gone (failed, or refused by the engine): the feed ends.
    pub(super) fn feed_peer_gone(&mut self, peer: PeerId) {
        if let Some(key) = self.feed_peers.get(&peer).cloned() {
            self.end_feed(&key, "relay peer gone", Retry::Later);
        }
    }

    /// The announced participant's sid and track sid a feed's engine track is bound to.
    pub(super) fn fed_track(&self, track: TrackId) -> Option<(&str, &str)> {
        let key = self.feed_peers.get(&track.peer)?;
        let (psid, tsid) = self.feeds.get(key)?.bound.get(&track)?;
        Some((psid, tsid))
    }

    /// Binds every waiting track of feed `key` whose announced participant (announced by a
    /// relay session of the feed's edge) and track are known, and subscribes the room's
    /// auto-subscribing sessions to it.
    pub(super) fn bind_feed(&mut self, key: &FeedKey) {
        let (room, edge) = key;
        let Some(feed) = self.feeds.get(key) else {
            return;
        };
        let mut ready = Vec::new();
        for (track, label) in &feed.unbound {
            let Some((psid, _)) = label.stream_id.split_once('|') else {
                continue;
            };
            let from_edge = self
                .roster_in
                .get(room)
                .and_then(|m| m.get(psid))
                .is_some_and(|s| self.relay_node_url(*s) == Some(edge.as_str()));
            let known = from_edge
                && self
                    .rooms
                    .get(room)
                    .and_then(|r| r.participants.get(psid))
                    .is_some_and(|p| p.tracks.contains_key(&label.track_id));
            if known {
                ready.push((*track, psid.to_owned(), label.track_id.clone()));
            }
        }
        if ready.is_empty() {
            return;
        }
        let Some(feed) = self.feeds.get_mut(key) else {
            return;
        };
        feed.unbound
            .retain(|(t, _)| !ready.iter().any(|(r, _, _)| r == t));
        for (track, psid, tsid) in &ready {
            feed.bound.insert(*track, (psid.clone(), tsid.clone()));
        }
        for (track, psid, tsid) in ready {
            let Some(p) = self
                .rooms
                .get_mut(room)
                .and_then(|r| r.participants.get_mut(&psid))
            else {
                continue;
            };
            let identity = p.identity.clone();
            if let Some(t) = p.tracks.get_mut(&tsid) {
                t.engine = Some(track);
            }
            tracing::info!(room = %room, track = %tsid, "edge's track bound");
            self.subscribe_room(room, track, &psid, &tsid, None);
            // The origin records the room, its edges' speakers too.
            self.tap_if_recorded(room, &identity, &tsid, track);
        }
    }

    /// On an origin: the tracks of announced participant `psid` that are not in `kept` any
    /// more (the edge's speaker unpublished them, or left) go back to waiting and stop for
    /// everyone.
    pub(super) fn unbind_announced(&mut self, room: &str, psid: &str, kept: &[&str]) {
        let mut gone = Vec::new();
        for (_, feed) in self.feeds.iter_mut().filter(|((r, _), _)| r == room) {
            for track in feed.bound_to(psid) {
                if feed
                    .bound
                    .get(&track)
                    .is_some_and(|(_, t)| kept.contains(&t.as_str()))
                {
                    continue;
                }
                if let Some((_, tsid)) = feed.unbind(track) {
                    gone.push((tsid, track));
                }
            }
        }
        for (tsid, track) in gone {
            self.fed_track_gone(room, psid, &tsid, track);
        }
    }

    /// Whether relay session `session` must not receive `publisher`'s tracks: it is a relay
    /// and they came from its own node (announced by it) or from the node this room is
    /// relayed from (a mirror of the origin's, on an edge).
    pub(super) fn feeds_back(&self, room: &str, session: SessionId, publisher: &str) -> bool {
        if !self.participant(session).is_some_and(Participant::is_relay) {
            return false;
        }
        let upstream = self
            .relays
            .get(room)
            .is_some_and(|l| l.has_mirror(publisher));
        let own = self
            .roster_in
            .get(room)
            .and_then(|m| m.get(publisher))
            .is_some_and(|owner| self.same_node(*owner, session));
        upstream || own
    }

    /// Whether relay sessions `a` and `b` are the same one, or two of the same node (a link
    /// that replaces another, while the old one is held).
    pub(super) fn same_node(&self, a: SessionId, b: SessionId) -> bool {
        a == b
            || self
                .relay_node_url(a)
                .is_some_and(|u| self.relay_node_url(b) == Some(u))
    }

    /// Sids of `room`'s participants that the node at `url` announced (nothing of them goes
    /// back to it).
    pub(super) fn announced_by_node(&self, room: &str, url: &str) -> Vec<String> {
        self.roster_in
            .get(room)
            .map(|m| {
                m.iter()
                    .filter(|(_, owner)| self.relay_node_url(**owner) == Some(url))
                    .map(|(psid, _)| psid.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A fed track stopped (unbound, unpublished, or its feed ended): the announced
    /// participant's track has no engine track any more, nobody receives it, and a recorder
    /// taking it is told.
    fn fed_track_gone(&mut self, room: &str, psid: &str, tsid: &str, track: TrackId) {
        let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.participants.get_mut(psid))
        else {
            self.unsubscribe_everyone(room, track);
            return;
        };
        let identity = p.identity.clone();
        if let Some(t) = p.tracks.get_mut(tsid) {
            t.engine = None;
        }
        self.unsubscribe_everyone(room, track);
        self.untap_if_recorded(room, &identity, tsid, track);
        // The engine's last level for the track may come after it is unbound, and would name
        // nobody.
        self.stopped_speaking(room, psid);
    }

    /// `psid` no longer speaks in `room` (her track stopped, or she left): if she was
    /// speaking, the room's clients are told.
    pub(super) fn stopped_speaking(&mut self, room: &str, psid: &str) {
        let was = self
            .rooms
            .get_mut(room)
            .is_some_and(|r| r.speakers.remove(psid).is_some());
        if was {
            let quiet = lk::SpeakerInfo {
                sid: psid.to_owned(),
                level: 0.0,
                active: false,
            };
            let sessions = self.room_sessions(room);
            self.send_speakers(&sessions, &[quiet]);
        }
    }
}

/// The keys of `timers` due at `now`, in key order, taken out of it.
fn take_due(timers: &mut BTreeMap<FeedKey, Instant>, now: Instant) -> Vec<FeedKey> {
    let due: Vec<FeedKey> = timers
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(key, _)| key.clone())
        .collect();
    for key in &due {
        timers.remove(key);
    }
    due
}
