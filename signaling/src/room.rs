//! Media-side rooms: who is in a room, what they publish, what they may do, and who may see
//! whom. Plain data with no I/O; the session service owns and mutates it.
//!
//! # Visibility in large rooms
//!
//! In an audio room with thousands of listeners, announcing every listener to every other
//! listener would make signaling O(N²). The rule:
//!
//! - a participant who may publish (host, speaker) is visible to everyone;
//! - a participant who may not publish (listener) is visible only to itself, to participants who
//!   may publish and to room admins;
//! - a participant whose token has the `hidden` grant is visible to nobody but itself.
//!
//! Everyone learns the audience size from `Room.num_participants` in `RoomUpdate`s, which are
//! coalesced (at most one per room per tick). When a listener becomes a speaker it becomes
//! visible to all, and is then announced to everyone in one update.
//!
//! So that a listener's join costs O(speakers), not O(room), a room indexes its participants by
//! identity and keeps the set of those who may publish or are admins (the only ones a listener
//! sees or is seen by). Participants therefore join and leave through [`Room::insert`] and
//! [`Room::remove`], and a permission change is followed by [`Room::reindex`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use stoa_sfu::TrackId;

/// A published track and the engine track that carries it, once media arrived.
#[derive(Debug, Clone)]
pub struct PublishedTrack {
    /// What clients see.
    pub info: lk::TrackInfo,
    /// The client's id for the track (`AddTrackRequest.cid`, the msid track id in its SDP).
    pub cid: String,
    /// The engine track, once the publisher's m-line was negotiated.
    pub engine: Option<TrackId>,
}

/// One participant of a room.
#[derive(Debug, Clone)]
pub struct Participant {
    /// `PA_…`.
    pub sid: String,
    /// From the token's `sub`.
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Free-form metadata.
    pub metadata: String,
    /// Key/value attributes.
    pub attributes: HashMap<String, String>,
    /// What the participant may do; changes at run time.
    pub permission: lk::ParticipantPermission,
    /// The `roomAdmin` grant: sees every participant.
    pub admin: bool,
    /// LiveKit participant state.
    pub state: State,
    /// Bumped on every change so updates never go backwards.
    pub version: u32,
    /// Published tracks, by track sid.
    pub tracks: BTreeMap<String, PublishedTrack>,
    /// Join time, Unix milliseconds.
    pub joined_at_ms: i64,
    /// The client's protocol version (`protocol=` on the join URL).
    pub protocol: i32,
}

impl Participant {
    /// A participant without a session, as another node describes it (an origin's speaker on
    /// an edge, an edge's listener on the origin), with `tracks` filed here.
    pub(crate) fn mirror_of(
        info: lk::ParticipantInfo,
        tracks: BTreeMap<String, PublishedTrack>,
    ) -> Participant {
        Participant {
            state: State::try_from(info.state).unwrap_or(State::Active),
            sid: info.sid,
            identity: info.identity,
            name: info.name,
            metadata: info.metadata,
            attributes: info.attributes,
            permission: info.permission.unwrap_or_default(),
            admin: false,
            version: info.version,
            tracks,
            joined_at_ms: info.joined_at_ms,
            protocol: 0,
        }
    }

    /// Whether this participant may publish audio.
    pub fn can_publish(&self) -> bool {
        self.permission.can_publish
            && (self.permission.can_publish_sources.is_empty()
                || self
                    .permission
                    .can_publish_sources
                    .contains(&(lk::TrackSource::Microphone as i32)))
    }

    /// Whether the room counts this participant as `ACTIVE` (relay links never).
    fn counts_active(&self) -> bool {
        self.state == State::Active && !self.is_relay()
    }

    /// Whether this is another node's relay link (a hidden participant with a relay
    /// identity, see `proto::relay`): not shown, counted or reported as a participant.
    pub fn is_relay(&self) -> bool {
        self.permission.hidden
            && self
                .identity
                .starts_with(crate::proto::RELAY_IDENTITY_PREFIX)
    }

    /// Whether `viewer` is shown this participant (see the module docs).
    pub fn visible_to(&self, viewer: &Participant) -> bool {
        if self.sid == viewer.sid {
            return true;
        }
        if self.permission.hidden {
            return false;
        }
        self.can_publish() || viewer.can_publish() || viewer.admin
    }

    /// Record a change: the next snapshot carries a higher version.
    pub fn touch(&mut self) {
        self.version = self.version.wrapping_add(1);
    }

    /// Apply a name, metadata and attribute change with LiveKit's semantics: an empty name or
    /// metadata leaves it unchanged, an attribute with an empty value is removed. Bumps the
    /// version.
    pub fn apply_update(
        &mut self,
        name: String,
        metadata: String,
        attributes: HashMap<String, String>,
    ) {
        if !name.is_empty() {
            self.name = name;
        }
        if !metadata.is_empty() {
            self.metadata = metadata;
        }
        for (k, v) in attributes {
            if v.is_empty() {
                self.attributes.remove(&k);
            } else {
                self.attributes.insert(k, v);
            }
        }
        self.touch();
    }

    /// The snapshot clients receive.
    pub fn info(&self) -> lk::ParticipantInfo {
        lk::ParticipantInfo {
            sid: self.sid.clone(),
            identity: self.identity.clone(),
            state: self.state as i32,
            tracks: self.tracks.values().map(|t| t.info.clone()).collect(),
            metadata: self.metadata.clone(),
            joined_at: self.joined_at_ms / 1000,
            joined_at_ms: self.joined_at_ms,
            name: self.name.clone(),
            version: self.version,
            permission: Some(self.permission.clone()),
            is_publisher: !self.tracks.is_empty(),
            attributes: self.attributes.clone(),
            client_protocol: 0,
            ..Default::default()
        }
    }

    /// The track published with engine track `engine`.
    pub fn track_by_engine(&self, engine: TrackId) -> Option<&PublishedTrack> {
        self.tracks.values().find(|t| t.engine == Some(engine))
    }
}

/// Room settings as LiveKit's CreateRoom and config define them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomLimits {
    /// Seconds a room nobody ever joined stays open.
    pub empty_timeout: u32,
    /// Seconds a room stays open after the last participant left.
    pub departure_timeout: u32,
    /// Maximum participants; 0 for no limit.
    pub max_participants: u32,
}

impl Default for RoomLimits {
    fn default() -> Self {
        // LiveKit's defaults (reference/livekit-protocol.md §7).
        RoomLimits {
            empty_timeout: 300,
            departure_timeout: 20,
            max_participants: 0,
        }
    }
}

/// A media-side room.
#[derive(Debug, Clone)]
pub struct Room {
    /// `RM_…`.
    pub sid: String,
    /// The name clients and tokens use.
    pub name: String,
    /// Metadata.
    pub metadata: String,
    /// Limits.
    pub limits: RoomLimits,
    /// Creation time, Unix milliseconds.
    pub created_ms: i64,
    /// Participants by sid. Read freely; add and remove only with [`Room::insert`] and
    /// [`Room::remove`], which keep the indexes below.
    pub participants: BTreeMap<String, Participant>,
    /// Sid by identity.
    identities: HashMap<String, String>,
    /// Sids of participants who may publish or are admins.
    notable: BTreeSet<String>,
    /// How many participants are other nodes' relay links ([`Participant::is_relay`]): not
    /// counted as participants.
    relays: usize,
    /// How many participants (relay links not counted) are `ACTIVE`: connected, not only
    /// signaling (what the control plane's presence counts, `participant_joined`).
    active: usize,
    /// When the last participant left (Unix ms), if anyone ever joined.
    pub emptied_ms: Option<i64>,
    /// The audience size changed since the last `RoomUpdate`.
    pub dirty: bool,
    /// People connected to this room through other nodes (a relayed room's origin and edges),
    /// as the control plane last counted them (`AdminOp::PresentElsewhere`); `None` until it
    /// said, and for rooms it does not own: the snapshot then counts this node's participants
    /// and mirrors, as a room on one node.
    pub elsewhere: Option<u32>,
    /// When the last `RoomUpdate` went out (Unix ms), and the counts it carried
    /// (`num_participants`, `num_publishers`): audience changes reach clients at most once per
    /// [`crate::proto::ROOM_UPDATE_EVERY`], and not at all when the counts did not change.
    pub last_update: Option<(i64, u32, u32)>,
    /// Whether the room is being recorded (`Room.active_recording`).
    pub recording: bool,
    /// Who speaks now, by participant sid, as the engine last reported. `SpeakersChanged`
    /// carries only changes, so a participant who arrives while someone speaks steadily would
    /// otherwise not learn of it until the level moves.
    pub speakers: BTreeMap<String, lk::SpeakerInfo>,
}

/// Why a join is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinRefusal {
    /// `max_participants` reached.
    #[error("room {0} is full")]
    Full(String),
}

impl Room {
    /// A new empty room.
    pub fn new(sid: String, name: String, limits: RoomLimits, now_ms: i64) -> Self {
        Room {
            sid,
            name,
            metadata: String::new(),
            limits,
            created_ms: now_ms,
            participants: BTreeMap::new(),
            identities: HashMap::new(),
            notable: BTreeSet::new(),
            relays: 0,
            active: 0,
            emptied_ms: None,
            dirty: false,
            elsewhere: None,
            last_update: None,
            recording: false,
            speakers: BTreeMap::new(),
        }
    }

    /// Add a participant (replacing one with the same sid).
    pub fn insert(&mut self, p: Participant) {
        if let Some(old) = self.participants.get(&p.sid) {
            self.identities.remove(&old.identity);
            self.relays = self.relays.saturating_sub(usize::from(old.is_relay()));
            self.active = self.active.saturating_sub(usize::from(old.counts_active()));
        }
        self.relays += usize::from(p.is_relay());
        self.active += usize::from(p.counts_active());
        self.identities.insert(p.identity.clone(), p.sid.clone());
        let sid = p.sid.clone();
        self.participants.insert(sid.clone(), p);
        self.reindex(&sid);
    }

    /// Remove a participant.
    pub fn remove(&mut self, sid: &str) -> Option<Participant> {
        let p = self.participants.remove(sid)?;
        self.relays = self.relays.saturating_sub(usize::from(p.is_relay()));
        self.active = self.active.saturating_sub(usize::from(p.counts_active()));
        if self.identities.get(&p.identity).is_some_and(|s| s == sid) {
            self.identities.remove(&p.identity);
        }
        self.notable.remove(sid);
        Some(p)
    }

    /// After `sid`'s permissions changed: whether it may publish or is an admin.
    pub fn reindex(&mut self, sid: &str) {
        match self.participants.get(sid) {
            Some(p) if p.can_publish() || p.admin => {
                self.notable.insert(sid.to_owned());
            }
            _ => {
                self.notable.remove(sid);
            }
        }
    }

    /// Sids of those who see `p` (itself included), per the module docs.
    pub fn viewers_of(&self, p: &Participant) -> Vec<String> {
        let candidates: Box<dyn Iterator<Item = &Participant>> = if p.can_publish() {
            Box::new(self.participants.values())
        } else {
            Box::new(
                self.notable
                    .iter()
                    .filter(|sid| **sid != p.sid)
                    .filter_map(|sid| self.participants.get(sid))
                    .chain(self.participants.get(&p.sid)),
            )
        };
        candidates
            .filter(|v| p.visible_to(v))
            .map(|v| v.sid.clone())
            .collect()
    }

    /// Whether one more participant (not replacing `identity`) may join.
    pub fn admit(&self, identity: &str) -> Result<(), JoinRefusal> {
        let replacing = self.identities.contains_key(identity);
        let max = self.limits.max_participants as usize;
        if max > 0 && !replacing && self.len() >= max {
            return Err(JoinRefusal::Full(self.name.clone()));
        }
        Ok(())
    }

    /// Marks participant `sid` `ACTIVE` (its client connected). Returns its snapshot if it
    /// was not already.
    pub fn activate(&mut self, sid: &str) -> Option<lk::ParticipantInfo> {
        let p = self.participants.get_mut(sid)?;
        if p.state == State::Active {
            return None;
        }
        p.state = State::Active;
        p.touch();
        let info = p.info();
        self.active += usize::from(!p.is_relay());
        Some(info)
    }

    /// How many participants are `ACTIVE`, relay links not counted (mirrors are: they are
    /// their origin's snapshots).
    pub fn active(&self) -> usize {
        self.active
    }

    /// The room's publishers (who may publish and has a track) that `viewer` sees:
    /// O(publishers and admins).
    pub fn publishers_visible_to<'a>(
        &'a self,
        viewer: &'a Participant,
    ) -> impl Iterator<Item = &'a Participant> + 'a {
        self.notable
            .iter()
            .filter_map(|sid| self.participants.get(sid))
            .filter(move |p| !p.tracks.is_empty() && p.visible_to(viewer))
    }

    /// How many `ACTIVE` participants may publish (mirrors of another node's publishers
    /// included, relay links never): O(publishers and admins).
    pub fn active_publishers(&self) -> u32 {
        let n = self
            .notable
            .iter()
            .filter_map(|sid| self.participants.get(sid))
            .filter(|p| p.counts_active() && p.can_publish())
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// How many participants the room has, other nodes' relay links not counted.
    pub fn len(&self) -> usize {
        self.participants.len().saturating_sub(self.relays)
    }

    /// Whether the room has no participants (relay links not counted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The participant with `identity`.
    pub fn by_identity(&self, identity: &str) -> Option<&Participant> {
        self.participants.get(self.identities.get(identity)?)
    }

    /// Number of participants who publish or may publish.
    pub fn num_publishers(&self) -> u32 {
        self.participants
            .values()
            .filter(|p| p.can_publish() || !p.tracks.is_empty())
            .count() as u32
    }

    /// The room's snapshot as this node alone sees it: its participants and mirrors counted
    /// (relay links not). Clients receive [`crate::proto::Server::room_snapshot`], which
    /// counts the whole room when the room spans nodes.
    pub fn info(&self) -> lk::Room {
        lk::Room {
            sid: self.sid.clone(),
            name: self.name.clone(),
            empty_timeout: self.limits.empty_timeout,
            departure_timeout: self.limits.departure_timeout,
            max_participants: self.limits.max_participants,
            creation_time: self.created_ms / 1000,
            creation_time_ms: self.created_ms,
            metadata: self.metadata.clone(),
            num_participants: self.len() as u32,
            num_publishers: self.num_publishers(),
            active_recording: self.recording,
            ..Default::default()
        }
    }

    /// Whether the room should close at `now_ms` (LiveKit semantics: `empty_timeout` from
    /// creation if nobody ever joined, `departure_timeout` after the last one left).
    pub fn should_close(&self, now_ms: i64) -> bool {
        if !self.participants.is_empty() {
            return false;
        }
        match self.emptied_ms {
            None => now_ms - self.created_ms >= i64::from(self.limits.empty_timeout) * 1000,
            Some(t) => now_ms - t >= i64::from(self.limits.departure_timeout) * 1000,
        }
    }

    /// Snapshots of the participants `viewer` may see, except the viewer itself.
    pub fn others_visible_to(&self, viewer: &Participant) -> Vec<lk::ParticipantInfo> {
        // Who may publish or is an admin sees everyone; the others see only the notable.
        let candidates: Box<dyn Iterator<Item = &Participant>> =
            if viewer.can_publish() || viewer.admin {
                Box::new(self.participants.values())
            } else {
                Box::new(
                    self.notable
                        .iter()
                        .filter_map(|sid| self.participants.get(sid)),
                )
            };
        candidates
            .filter(|p| p.sid != viewer.sid && p.visible_to(viewer))
            .map(Participant::info)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn participant(sid: &str, publish: bool) -> Participant {
        Participant {
            sid: sid.into(),
            identity: format!("id-{sid}"),
            name: String::new(),
            metadata: String::new(),
            attributes: HashMap::new(),
            permission: lk::ParticipantPermission {
                can_publish: publish,
                can_subscribe: true,
                can_publish_data: true,
                ..Default::default()
            },
            admin: false,
            state: State::Joined,
            version: 0,
            tracks: BTreeMap::new(),
            joined_at_ms: 0,
            protocol: 17,
        }
    }

    #[test]
    fn listeners_do_not_see_each_other_but_speakers_see_all() {
        let speaker = participant("PA_s", true);
        let a = participant("PA_a", false);
        let b = participant("PA_b", false);
        assert!(!a.visible_to(&b));
        assert!(a.visible_to(&a));
        assert!(speaker.visible_to(&a));
        assert!(a.visible_to(&speaker));
        let mut admin = participant("PA_admin", false);
        admin.admin = true;
        assert!(a.visible_to(&admin));
        let mut hidden = participant("PA_h", true);
        hidden.permission.hidden = true;
        assert!(!hidden.visible_to(&speaker));
        assert!(!hidden.visible_to(&admin));
    }

    #[test]
    fn indexes_follow_joins_leaves_and_permissions() {
        let mut room = Room::new("RM_1".into(), "r".into(), RoomLimits::default(), 0);
        let mut speaker = participant("PA_s", true);
        speaker.identity = "sam".into();
        let mut a = participant("PA_a", false);
        a.identity = "ann".into();
        let mut b = participant("PA_b", false);
        b.identity = "bob".into();
        let mut admin = participant("PA_m", false);
        admin.identity = "meg".into();
        admin.admin = true;
        for p in [speaker, a, b, admin] {
            room.insert(p);
        }
        assert_eq!(
            room.by_identity("ann").map(|p| p.sid.as_str()),
            Some("PA_a")
        );
        assert!(room.by_identity("nobody").is_none());
        let sids = |v: Vec<lk::ParticipantInfo>| -> Vec<String> {
            let mut s: Vec<String> = v.into_iter().map(|p| p.sid).collect();
            s.sort();
            s
        };
        // A listener sees the speaker only (admins are visible only if they may publish);
        // the speaker and the admin see everyone.
        let ann = room.participants["PA_a"].clone();
        assert_eq!(sids(room.others_visible_to(&ann)), ["PA_s"]);
        let sam = room.participants["PA_s"].clone();
        assert_eq!(sids(room.others_visible_to(&sam)), ["PA_a", "PA_b", "PA_m"]);
        // A listener is seen by itself, the speaker and the admin; the speaker by all.
        let mut v = room.viewers_of(&ann);
        v.sort();
        assert_eq!(v, ["PA_a", "PA_m", "PA_s"]);
        assert_eq!(room.viewers_of(&sam).len(), 4);
        // The same answers as the rule applied to everyone, for every pair.
        for viewer in room.participants.values() {
            let expected: Vec<String> = room
                .participants
                .values()
                .filter(|p| p.sid != viewer.sid && p.visible_to(viewer))
                .map(|p| p.sid.clone())
                .collect();
            assert_eq!(
                sids(room.others_visible_to(viewer)),
                expected,
                "{}",
                viewer.sid
            );
        }
        // Bob is promoted: after reindexing, listeners see him and he sees them.
        if let Some(p) = room.participants.get_mut("PA_b") {
            p.permission.can_publish = true;
        }
        room.reindex("PA_b");
        assert_eq!(sids(room.others_visible_to(&ann)), ["PA_b", "PA_s"]);
        // Leaving drops the indexes; the identity can join again.
        assert!(room.remove("PA_a").is_some());
        assert!(room.by_identity("ann").is_none());
        assert!(room.remove("PA_a").is_none());
        let sam = room.participants["PA_s"].clone();
        assert_eq!(sids(room.others_visible_to(&sam)), ["PA_b", "PA_m"]);
        room.remove("PA_b");
        assert_eq!(room.viewers_of(&sam), ["PA_m", "PA_s"]);
    }

    #[test]
    fn publish_sources_restrict_publishing() {
        let mut p = participant("PA_x", true);
        p.permission.can_publish_sources = vec![lk::TrackSource::Camera as i32];
        assert!(!p.can_publish());
        p.permission
            .can_publish_sources
            .push(lk::TrackSource::Microphone as i32);
        assert!(p.can_publish());
    }

    #[test]
    fn room_closes_per_livekit_timeouts() {
        let mut room = Room::new("RM_1".into(), "r".into(), RoomLimits::default(), 0);
        assert!(!room.should_close(299_000));
        assert!(room.should_close(300_000));
        room.insert(participant("PA_a", false));
        assert!(!room.should_close(1_000_000));
        room.remove("PA_a");
        room.emptied_ms = Some(1_000_000);
        assert!(!room.should_close(1_019_000));
        assert!(room.should_close(1_020_000));
    }

    #[test]
    fn max_participants_admits_replacements() {
        let limits = RoomLimits {
            max_participants: 1,
            ..Default::default()
        };
        let mut room = Room::new("RM_1".into(), "r".into(), limits, 0);
        assert!(room.admit("id-PA_a").is_ok());
        room.insert(participant("PA_a", false));
        assert_eq!(room.admit("someone"), Err(JoinRefusal::Full("r".into())));
        assert!(
            room.admit("id-PA_a").is_ok(),
            "a duplicate identity replaces, it does not add"
        );
    }

    #[test]
    fn updates_follow_livekit_semantics() {
        let mut p = participant("PA_a", false);
        p.attributes.insert("role".into(), "listener".into());
        p.attributes.insert("hand".into(), "up".into());
        let v = p.version;
        p.apply_update(
            "Ann".into(),
            String::new(),
            HashMap::from([
                ("hand".into(), String::new()),
                ("role".into(), "speaker".into()),
            ]),
        );
        assert_eq!(p.name, "Ann");
        assert_eq!(
            p.attributes.get("role").map(String::as_str),
            Some("speaker")
        );
        assert!(!p.attributes.contains_key("hand"));
        assert!(p.version > v);
        p.metadata = "m".into();
        p.apply_update(String::new(), String::new(), HashMap::new());
        assert_eq!((p.name.as_str(), p.metadata.as_str()), ("Ann", "m"));
    }

    #[test]
    fn versions_only_go_forward_and_info_reflects_tracks() {
        let mut p = participant("PA_a", true);
        let v0 = p.info().version;
        p.touch();
        assert!(p.info().version > v0);
        assert!(!p.info().is_publisher);
        p.tracks.insert(
            "TR_1".into(),
            PublishedTrack {
                info: lk::TrackInfo {
                    sid: "TR_1".into(),
                    ..Default::default()
                },
                cid: "c".into(),
                engine: None,
            },
        );
        assert!(p.info().is_publisher);
        assert_eq!(p.info().tracks[0].sid, "TR_1");
    }

    #[test]
    fn relay_links_are_not_counted() {
        let limits = RoomLimits {
            max_participants: 2,
            ..RoomLimits::default()
        };
        let mut room = Room::new("RM_1".into(), "r".into(), limits, 0);
        room.insert(participant("PA_a", true));
        let mut relay = participant("PA_r", false);
        relay.identity = "node:edge".into();
        relay.permission.hidden = true;
        assert!(relay.is_relay());
        room.insert(relay.clone());
        // Replacing it (same sid) counts it once.
        room.insert(relay);
        assert_eq!((room.participants.len(), room.len()), (2, 1));
        assert_eq!(room.info().num_participants, 1);
        assert!(room.admit("someone").is_ok(), "the relay takes no place");
        room.insert(participant("PA_b", false));
        assert!(room.admit("someone").is_err());
        room.remove("PA_r");
        room.remove("PA_a");
        room.remove("PA_b");
        assert!(room.is_empty());
        // A hidden participant without a relay identity, or a relay identity not hidden, is
        // an ordinary participant.
        let mut hidden = participant("PA_h", false);
        hidden.permission.hidden = true;
        assert!(!hidden.is_relay());
        let mut named = participant("PA_n", false);
        named.identity = "node:x".into();
        assert!(!named.is_relay());
    }
}
