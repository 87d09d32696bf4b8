//! Room-wide participant lists (issue 21): the people an edge holds appear on the origin.
//!
//! An edge's listeners are participants of its own node; the origin's clients would not see
//! them. So an edge announces to the origin, over the room's relay link, the snapshots of the
//! participants it holds (joins, changes, leaves), and the origin keeps them as participants
//! without a session ("announced mirrors", as the edge keeps the origin's speakers): shown to
//! whoever may see them by the visibility rule (a listener: to the origin's publishers and
//! admins, so a host sees the whole audience), with the edge's sid, identity, name, metadata,
//! attributes, permission, state and version. The origin's relay sessions see everyone, as
//! admins do, so every other edge mirrors them too, for its own speakers (listeners see no
//! listeners anywhere); an edge's own people are never shown back to its relay.
//!
//! The path is the relay peer's `_reliable` data channel (authenticated and ordered: the link
//! is the relay token's session), with packets on the server-only topic [`ROSTER_TOPIC`]
//! carrying a `ParticipantUpdate`: a client's packet on it is refused by its node, and the
//! origin takes it only from a relay session. Cost: an edge keeps at most one pending snapshot
//! per participant it holds (a newer replaces an older: the queue is bounded by the room, and
//! nothing is dropped), and every tick sends them in packets of [`ROSTER_BATCH`], at most
//! [`ROSTER_PACKETS_PER_TICK`]; a link whose channel opens gets every held participant (a new
//! link, a new relay session: the origin dropped the old one's). Announced mirrors are not the
//! origin's: not in its held list, node load, counts or webhooks, and actions on them are
//! refused there (the edge holds them), like the edge's mirrors of the origin's speakers.

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use prost::Message as _;
use stoa_sfu::PeerId;

use super::{Server, SessionId};
use crate::room::Participant;

/// The data topic of participant announcements from an edge to its origin.
pub const ROSTER_TOPIC: &str = "stoa.relay.roster";

/// At most this many snapshots per announcement packet.
pub const ROSTER_BATCH: usize = 64;

/// At most this many announcement packets per tick, all rooms together (1,024 snapshots a
/// tick, about 10,000 a second).
pub const ROSTER_PACKETS_PER_TICK: usize = 16;

impl Server {
    /// On an edge: participant `psid` of relayed room `room` joined or changed; the origin is
    /// told at the next tick.
    pub(super) fn roster_changed(&mut self, room: &str, psid: &str) {
        if !self.relays.contains_key(room) || self.is_mirror(room, psid) {
            return;
        }
        let Some(p) = self.rooms.get(room).and_then(|r| r.participants.get(psid)) else {
            return;
        };
        if p.is_relay() {
            return;
        }
        let info = p.info();
        self.roster_out
            .entry(room.to_owned())
            .or_default()
            .insert(psid.to_owned(), info);
    }

    /// On an edge: a participant it held left (`info` in state `DISCONNECTED`).
    pub(super) fn roster_left(&mut self, room: &str, info: &lk::ParticipantInfo) {
        if !self.relays.contains_key(room) {
            return;
        }
        self.roster_out
            .entry(room.to_owned())
            .or_default()
            .insert(info.sid.clone(), info.clone());
    }

    /// On an edge: the link's reliable channel opened; the origin learns everyone held here.
    pub(super) fn roster_resync(&mut self, room: &str) {
        let held: Vec<String> = self
            .rooms
            .get(room)
            .map(|r| r.participants.keys().cloned().collect())
            .unwrap_or_default();
        for psid in held {
            self.roster_changed(room, &psid);
        }
    }

    /// On an edge, every tick: pending snapshots go to the origins whose link's reliable
    /// channel is open, in packets of [`ROSTER_BATCH`], at most [`ROSTER_PACKETS_PER_TICK`]
    /// packets a tick in all (a link opening on a node of thousands spreads its first
    /// announcement over a few ticks rather than flooding the engine's queue). Others wait.
    pub(super) fn flush_roster(&mut self) {
        let rooms: Vec<String> = self
            .roster_out
            .keys()
            .filter(|room| self.relay_channel(room, "_reliable"))
            .cloned()
            .collect();
        let mut budget = ROSTER_PACKETS_PER_TICK;
        for room in rooms {
            while budget > 0 {
                let Some(pending) = self.roster_out.get_mut(&room) else {
                    break;
                };
                let mut participants = Vec::with_capacity(ROSTER_BATCH.min(pending.len()));
                while participants.len() < ROSTER_BATCH
                    && let Some((_, info)) = pending.pop_first()
                {
                    participants.push(info);
                }
                if pending.is_empty() {
                    self.roster_out.remove(&room);
                }
                if participants.is_empty() {
                    break;
                }
                let update = lk::ParticipantUpdate { participants };
                let packet = lk::DataPacket {
                    value: Some(lk::data_packet::Value::User(lk::UserPacket {
                        payload: update.encode_to_vec(),
                        topic: Some(ROSTER_TOPIC.to_owned()),
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                self.relay_to_origin(&room, "_reliable", &packet.encode_to_vec());
                budget -= 1;
            }
        }
    }

    /// On an origin: whether `data`, from relay peer `peer`, is an edge's announcement (then
    /// applied, or dropped and counted if unreadable).
    pub(super) fn roster_packet(&mut self, peer: PeerId, data: &[u8]) -> bool {
        let Ok(packet) = lk::DataPacket::decode(data) else {
            return false;
        };
        let Some(lk::data_packet::Value::User(user)) = packet.value else {
            return false;
        };
        if user.topic.as_deref() != Some(ROSTER_TOPIC) {
            return false;
        }
        let Some(&(session, _)) = self.by_peer.get(&peer) else {
            return true;
        };
        let Some(room) = self.sessions.get(&session).map(|s| s.room.clone()) else {
            return true;
        };
        let Ok(update) = lk::ParticipantUpdate::decode(user.payload.as_slice()) else {
            tracing::debug!(room = %room, "unreadable roster announcement dropped");
            self.stats.data_dropped += 1;
            return true;
        };
        for info in update.participants {
            self.announced(&room, session, info);
        }
        true
    }

    /// On an origin: one participant an edge (relay session `from`) holds joined, changed or
    /// left.
    fn announced(&mut self, room: &str, from: SessionId, info: lk::ParticipantInfo) {
        let hidden = info.permission.as_ref().is_some_and(|p| p.hidden);
        if info.sid.is_empty() || hidden {
            return;
        }
        let ours =
            |s: &Server, sid: &str| s.roster_in.get(room).is_some_and(|m| m.contains_key(sid));
        if info.state == State::Disconnected as i32 {
            if ours(self, &info.sid) {
                self.drop_announced(room, &info.sid);
            }
            return;
        }
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        if let Some(old) = r.participants.get(&info.sid) {
            if !ours(self, &info.sid) {
                return;
            }
            if old.version > info.version {
                // An older snapshot; the newer link owns it now.
                if let Some(owners) = self.roster_in.get_mut(room) {
                    owners.insert(info.sid, from);
                }
                return;
            }
        } else if let Some(holder) = r.by_identity(&info.identity) {
            let (holder, joined) = (holder.sid.clone(), holder.joined_at_ms);
            if ours(self, &holder) {
                // Rejoined on the edge under a new sid: the old one goes first.
                self.drop_announced(room, &holder);
            } else if let Some(&local) = self.by_participant.get(&holder)
                && info.joined_at_ms > joined
            {
                // Joined on the edge after her session here (held for a resume after her
                // connection dropped, say): the newer one wins, as for a duplicate identity on
                // one node.
                self.end_session(
                    local,
                    "joined on another node",
                    super::session::Leave::Disconnect(lk::DisconnectReason::DuplicateIdentity),
                );
            } else {
                // Someone of this node, who joined after, holds the identity.
                return;
            }
        }
        // A speaker on the edge: her tracks, each bound to its feed's engine track once that
        // runs (`feed`).
        let mut info = info;
        let old = self
            .rooms
            .get(room)
            .and_then(|r| r.participants.get(&info.sid));
        let tracks = super::relay::mirror_tracks(old, std::mem::take(&mut info.tracks));
        let kept: Vec<String> = tracks.keys().cloned().collect();
        let speaking = !tracks.is_empty();
        let mirror = Participant::mirror_of(info, tracks);
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let psid = mirror.sid.clone();
        r.insert(mirror);
        r.emptied_ms = None;
        r.dirty = true;
        self.roster_in
            .entry(room.to_owned())
            .or_default()
            .insert(psid.clone(), from);
        let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
        self.unbind_announced(room, &psid, &kept);
        self.broadcast_participant(room, &psid);
        if speaking {
            self.want_feed(room, from);
            // Her tracks come on her edge's feed, which may have filed them already.
            if let Some(url) = self.relay_node_url(from).map(str::to_owned) {
                self.bind_feed(&(room.to_owned(), url));
            }
        }
    }

    /// On an origin: an announced participant leaves; whoever saw it sees it disconnected.
    pub(super) fn drop_announced(&mut self, room: &str, psid: &str) {
        self.unbind_announced(room, psid, &[]);
        self.stopped_speaking(room, psid);
        if let Some(owners) = self.roster_in.get_mut(room) {
            owners.remove(psid);
            if owners.is_empty() {
                self.roster_in.remove(room);
            }
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(p) = r.participants.get(psid) else {
            return;
        };
        let viewers = r.viewers_of(p);
        let Some(mut gone) = r.remove(psid) else {
            return;
        };
        r.dirty = true;
        gone.state = State::Disconnected;
        gone.touch();
        self.send_update(&viewers, vec![gone.info()]);
    }

    /// On an origin: relay session `session` of `room` ended; whatever it announced leaves.
    pub(super) fn drop_roster_of(&mut self, room: &str, session: SessionId) {
        let gone: Vec<String> = self
            .roster_in
            .get(room)
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| **s == session)
                    .map(|(sid, _)| sid.clone())
                    .collect()
            })
            .unwrap_or_default();
        for psid in gone {
            self.drop_announced(room, &psid);
        }
    }

    /// Whether `psid` is a participant another node announced (held there).
    pub(super) fn is_announced(&self, room: &str, psid: &str) -> bool {
        self.roster_in
            .get(room)
            .is_some_and(|m| m.contains_key(psid))
    }
}
