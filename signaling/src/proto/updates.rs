//! Participant updates and speaker changes (batched per client and flushed every tick, a
//! slice of clients at a time), room updates, and the slow tick's checks (pings, room
//! timeouts).
//!
//! A floor change in a room of thousands is a message to each of them. Sent in one go, every
//! other room's join, offer and mute waits behind those thousands of writes (the shell's
//! writers run on the same runtime). So a tick's flush goes out [`FLUSH_SLICE`] clients at a
//! time: [`Server::poll_output`] asks for the next slice at once, and the shell lets the slice's
//! writers run before it, and whatever else arrived meanwhile races it (see the service's
//! loop). A client's queue keeps the newest snapshot of each participant and the latest change
//! of each speaker, so a slow flush never sends stale news; a flush not done by the next tick
//! keeps its order, the sessions with news since after it.
//!
//! Per-message work is O(visible participants) (see the visibility rule in [`crate::room`]);
//! the audience size reaches everyone through coalesced `RoomUpdate`s, at most one per room
//! per [`ROOM_UPDATE_EVERY`], counting the whole room when it spans nodes
//! ([`Server::room_snapshot`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::signal_response;

use super::{ROOM_UPDATE_EVERY, SLOW_TICKS, Server, SessionId};
use crate::room::Room;

/// At most this many other participants in a `JoinResponse`; the rest (listeners, an admin or
/// an edge's relay seeing a large audience) follow as `ParticipantUpdate`s. About 200 KB.
pub const JOIN_PARTICIPANTS: usize = 1_000;

/// At most this many snapshots in one `ParticipantUpdate`.
pub const UPDATE_PARTICIPANTS: usize = 1_000;

/// Clients whose waiting updates are sent per turn of a tick's flush.
pub const FLUSH_SLICE: usize = 64;

/// What waits for a session's next flush.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Participant snapshots, the newest of each participant.
    pub(super) participants: Vec<lk::ParticipantInfo>,
    /// Speaker changes, the latest of each speaker.
    pub(super) speakers: Vec<lk::SpeakerInfo>,
}

impl Server {
    /// Send participant `psid`'s snapshot to everyone in the room who may see it.
    pub(super) fn broadcast_participant(&mut self, room: &str, psid: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let Some(p) = r.participants.get(psid) else {
            return;
        };
        let mut viewers = r.viewers_of(p);
        let info = p.info();
        // An edge's participant, on its origin: never shown back to the edge's own relays.
        if let Some(&owner) = self.roster_in.get(room).and_then(|m| m.get(psid)) {
            viewers.retain(|v| {
                self.by_participant
                    .get(v)
                    .is_none_or(|s| !self.same_node(owner, *s))
            });
        }
        self.send_update(&viewers, vec![info]);
        // On an edge, the origin learns of it too.
        self.roster_changed(room, psid);
    }

    /// Queue snapshots for `viewers` (participant sids); a newer snapshot of the same
    /// participant replaces an older one still queued.
    pub(super) fn send_update(
        &mut self,
        viewers: &[String],
        participants: Vec<lk::ParticipantInfo>,
    ) {
        for viewer in viewers {
            let Some(&session) = self.by_participant.get(viewer) else {
                continue;
            };
            let queue = &mut self
                .pending_updates
                .entry(session)
                .or_default()
                .participants;
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

    /// Queue speaker changes for `sessions`; a later change of the same speaker replaces an
    /// earlier one still queued.
    pub(super) fn send_speakers(&mut self, sessions: &[SessionId], speakers: &[lk::SpeakerInfo]) {
        for &session in sessions {
            let queue = &mut self.pending_updates.entry(session).or_default().speakers;
            for speaker in speakers {
                match queue.iter_mut().find(|q| q.sid == speaker.sid) {
                    Some(q) => *q = speaker.clone(),
                    None => queue.push(speaker.clone()),
                }
            }
        }
    }

    /// Send a session's queued snapshots as one `ParticipantUpdate` between its queued
    /// speaker changes: those who stopped speaking before it (a participant who left is still
    /// known to the client then; livekit-client skips a change naming an unknown sid and
    /// would keep her among its active speakers), those who speak after it (so the client
    /// knows each of them by then).
    pub(super) fn flush_updates(&mut self, session: SessionId) {
        let Some(Pending {
            mut participants,
            speakers,
        }) = self.pending_updates.remove(&session)
        else {
            return;
        };
        if !self.sessions.contains_key(&session) {
            return;
        }
        let (active, stopped): (Vec<_>, Vec<_>) = speakers.into_iter().partition(|s| s.active);
        if !stopped.is_empty() {
            let msg = signal_response::Message::SpeakersChanged(lk::SpeakersChanged {
                speakers: stopped,
            });
            self.send(session, msg);
        }
        // In messages of at most UPDATE_PARTICIPANTS snapshots: a client's (or a relay link's)
        // WebSocket takes frames of bounded size.
        while !participants.is_empty() {
            let tail = participants.split_off(participants.len().min(UPDATE_PARTICIPANTS));
            let chunk = std::mem::replace(&mut participants, tail);
            let msg = signal_response::Message::Update(lk::ParticipantUpdate {
                participants: chunk,
            });
            self.send(session, msg);
        }
        if !active.is_empty() {
            let msg =
                signal_response::Message::SpeakersChanged(lk::SpeakersChanged { speakers: active });
            self.send(session, msg);
        }
    }

    /// Flush the next [`FLUSH_SLICE`] sessions of the tick's flush.
    pub(super) fn flush_slice(&mut self) {
        for _ in 0..FLUSH_SLICE {
            let Some(session) = self.flushing.pop_front() else {
                return;
            };
            self.flush_updates(session);
        }
    }

    /// After `psid`'s permissions changed: viewers who no longer see it get it as
    /// disconnected, and it gets everyone it newly sees or no longer sees. (Those who see it
    /// now already got its snapshot.)
    pub(super) fn visibility_changed(&mut self, room: &str, psid: &str, before: &Visibility) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let after = Visibility::of(r, psid);
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
            self.send_update(&lost_viewers, vec![gone]);
        }
        if !to_self.is_empty() {
            self.send_update(&[psid.to_owned()], to_self);
        }
    }

    /// The room snapshot clients receive (`JoinResponse.room`, `RoomUpdate`). When the
    /// control plane counted the room's people on other nodes ([`Room::elsewhere`]),
    /// `num_participants` is the whole room's, by the control plane's one rule of presence (a
    /// person counts once their client connected, `participant_joined`, on whichever node):
    /// those this node holds that are `ACTIVE` (its sessions; no mirror, whose person another
    /// node holds, no relay link) plus those elsewhere. Otherwise (a room on this node only,
    /// not the control plane's) it counts the node's participants, as LiveKit does.
    /// `num_publishers` then counts the `ACTIVE` ones who may publish, this node's and its
    /// mirrors: a relayed room's publishers are each on one node (the origin, or an edge past
    /// the origin's stage reserve), and every other node mirrors each of them once (an
    /// identity held here is not mirrored).
    pub fn room_snapshot(&self, room: &str) -> Option<lk::Room> {
        let r = self.rooms.get(room)?;
        let mut info = r.info();
        if let Some(elsewhere) = r.elsewhere {
            let mirrors = self.active_mirrors_in(r);
            let held = u32::try_from(r.active().saturating_sub(mirrors)).unwrap_or(u32::MAX);
            info.num_participants = held.saturating_add(elsewhere);
            info.num_publishers = r.active_publishers();
        }
        Some(info)
    }

    /// The control plane counted `elsewhere` people connected to `room` through other nodes:
    /// the room's clients get the whole room's count in their next `RoomUpdate` (coalesced
    /// with local joins and leaves, at most one per [`ROOM_UPDATE_EVERY`]) if it changed.
    /// Returns whether the room is open here.
    pub(super) fn present_elsewhere(&mut self, room: &str, elsewhere: u32) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        if r.elsewhere != Some(elsewhere) {
            r.elsewhere = Some(elsewhere);
            r.dirty = true;
        }
        true
    }

    /// Send a `RoomUpdate` to every participant of `room`.
    pub(super) fn send_room_update(&mut self, room: &str) {
        if let Some(info) = self.room_snapshot(room) {
            self.send_snapshot(room, info);
        }
    }

    /// Send `info`, `room`'s snapshot just taken, to every participant of `room`.
    fn send_snapshot(&mut self, room: &str, info: lk::Room) {
        let now_ms = self.now_ms();
        if let Some(r) = self.rooms.get_mut(room) {
            r.dirty = false;
            r.last_update = Some((now_ms, info.num_participants, info.num_publishers));
        }
        let msg = signal_response::Message::RoomUpdate(lk::RoomUpdate { room: Some(info) });
        for id in self.room_sessions(room) {
            self.send(id, msg.clone());
        }
    }

    /// Send `room` its coalesced audience update if its counts changed since the last
    /// `RoomUpdate` and that one is [`ROOM_UPDATE_EVERY`] old; a change within that stays
    /// pending (the room stays dirty) for a later slow tick. A join storm of thousands thus
    /// costs each client one `RoomUpdate` a second, not one per join.
    fn audience_update(&mut self, room: &str) {
        let Some(info) = self.room_snapshot(room) else {
            return;
        };
        let now_ms = self.now_ms();
        let every = i64::try_from(ROOM_UPDATE_EVERY.as_millis()).unwrap_or(i64::MAX);
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        match r.last_update {
            Some((_, n, p)) if n == info.num_participants && p == info.num_publishers => {
                r.dirty = false;
            }
            Some((at, _, _)) if now_ms.saturating_sub(at) < every => {}
            _ => self.send_snapshot(room, info),
        }
    }

    /// One tick: start flushing what waits (the first slice now, the rest on the next
    /// turns); every [`SLOW_TICKS`], room updates, ping timeouts and room timeouts.
    pub(super) fn tick(&mut self) {
        // Sessions the last tick's flush has not reached yet keep their turn, first; those
        // with news since follow (so on a core too busy to finish a flush in a tick, every
        // session still gets its turn).
        let waiting: HashSet<SessionId> = self.flushing.iter().copied().collect();
        let mut sessions: Vec<SessionId> = self
            .pending_updates
            .keys()
            .filter(|s| !waiting.contains(s))
            .copied()
            .collect();
        // Hash order is not reproducible across runs; output order must be.
        sessions.sort_unstable();
        self.flushing.extend(sessions);
        self.flush_slice();
        self.flush_roster();
        self.ticks += 1;
        if !self.ticks.is_multiple_of(SLOW_TICKS) {
            return;
        }
        self.retry_feeds();
        let now = self.now;
        let now_ms = self.now_ms();
        // Coalesced audience-size updates.
        let mut dirty: Vec<String> = self
            .rooms
            .values()
            .filter(|r| r.dirty)
            .map(|r| r.name.clone())
            .collect();
        dirty.sort_unstable();
        for room in dirty {
            self.audience_update(&room);
        }
        // Sessions that stopped pinging lost their connection: held for a resume.
        let timeout = Duration::from_secs(u64::from(self.config.ping_timeout));
        let mut dead: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.held_since.is_none() && now.saturating_duration_since(s.last_ping) > timeout
            })
            .map(|(id, _)| *id)
            .collect();
        dead.sort_unstable();
        for id in dead {
            self.hold_session(id, "ping timeout");
        }
        // Held sessions not resumed in time.
        self.expire_held(now);
        self.refresh_tokens(now);
        // Rooms past their timeouts.
        let mut closing: Vec<String> = self
            .rooms
            .values()
            .filter(|r| r.should_close(now_ms))
            .map(|r| r.name.clone())
            .collect();
        closing.sort_unstable();
        for room in closing {
            self.close_room(&room);
        }
    }
}

impl Server {
    /// Sends every connected session whose token was refreshed `every` ago or longer a new one
    /// ([`super::TokenRefresh`]), with the permissions, name, metadata and attributes it has
    /// now. Sessions whose key is gone from the configuration get none.
    fn refresh_tokens(&mut self, now: Instant) {
        let Some(refresh) = self.config.token_refresh.clone() else {
            return;
        };
        let mut due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.held_since.is_none()
                    && now.saturating_duration_since(s.refreshed_at) >= refresh.every
            })
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        let now_unix = u64::try_from(self.now_ms() / 1000).unwrap_or(0);
        for id in due {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            s.refreshed_at = now;
            let Some(p) = self
                .rooms
                .get(&s.room)
                .and_then(|r| r.participants.get(&s.participant))
            else {
                continue;
            };
            let Some(secret) = refresh.keys.secret(&s.claims.iss) else {
                continue;
            };
            let claims = crate::token::Claims {
                name: p.name.clone(),
                metadata: p.metadata.clone(),
                attributes: p.attributes.clone(),
                video: crate::token::grants_with(&s.claims.video, &p.permission),
                ..(*s.claims).clone()
            };
            match crate::token::sign(&s.claims.iss, secret, &claims, refresh.ttl, now_unix) {
                Ok(token) => self.send(id, signal_response::Message::RefreshToken(token)),
                Err(e) => {
                    self.in_span(id, || tracing::warn!(error = %e, "token not refreshed"));
                }
            }
        }
    }
}

/// Who sees a participant and whom it sees (other than itself).
pub(super) struct Visibility {
    viewers: Vec<String>,
    seen: Vec<String>,
}

impl Visibility {
    /// `psid`'s visibility in `room` now.
    pub(super) fn of(room: &Room, psid: &str) -> Visibility {
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
}
