//! The control plane's data: rooms, their members, hands, moderation records and statistics.
//!
//! A [`RoomDoc`] is the unit of consistency: every change to a room reads its document,
//! applies one command ([`crate::room`]) and writes the difference back atomically, so two
//! hosts approving hands at once, or a hand lowered while it is approved, never lose an update.
//!
//! A document need not hold every member. The stores keep each member (and each hand, ban,
//! kick and invitation) as a record of its own and load only the ones a command names (a
//! [`Scope`]), with the room's small header: its description, statistics and [`Counts`]. The
//! counts of the members left out travel with the document, so a command sees the whole
//! room's numbers (members, present listeners, …) at the cost of the few it loaded, and a join
//! costs the same in a room of ten as in a room of ten thousand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ControlError;

/// Longest user id accepted (bytes).
pub const MAX_USER_ID: usize = 64;
/// Longest room title (characters).
pub const MAX_TITLE: usize = 120;
/// Longest room topic (characters).
pub const MAX_TOPIC: usize = 60;
/// Longest room description (characters).
pub const MAX_DESCRIPTION: usize = 2000;
/// Longest display name (characters).
pub const MAX_NAME: usize = 64;
/// Most entries of a room's line-up (pre-assigned co-hosts and speakers).
pub const MAX_LINEUP: usize = 200;
/// Most invitees a recurring room's next occurrence takes over from the one that ended.
pub const MAX_INVITED: usize = 10_000;
/// Largest room the control plane lets anyone create.
pub const MAX_PARTICIPANTS: u32 = 100_000;

/// A room id: 16 characters of `[a-z0-9]`, made by the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct RoomId(String);

impl RoomId {
    /// A fresh id from 80 random bits.
    pub fn random() -> RoomId {
        let mut bytes = [0u8; 10];
        // The OS random source failing is not recoverable; an all-zero id would collide.
        if getrandom::fill(&mut bytes).is_err() {
            tracing::error!("no OS randomness for a room id");
        }
        RoomId(base32(&bytes))
    }

    /// Checks a room id from a URL or a store key.
    pub fn parse(s: &str) -> Result<RoomId, ControlError> {
        let ok = s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(RoomId(s.to_owned()))
        } else {
            Err(ControlError::not_found("room", s))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase base32 (RFC 4648 alphabet, lowercased, no padding).
pub(crate) fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A user id (the LiveKit identity of the user's sessions): 1 to 64 bytes of
/// `[A-Za-z0-9_.@-]`, so that it can never reach another store key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    /// Checks a user id.
    pub fn parse(s: &str) -> Result<UserId, ControlError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_USER_ID
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
        if ok {
            Ok(UserId(s.to_owned()))
        } else {
            Err(ControlError::bad_request(
                "invalid_user",
                format!(
                    "a user id is 1 to {MAX_USER_ID} characters of letters, digits and _ . @ -"
                ),
            ))
        }
    }

    /// Whether this is a guest's id (`guest-…`, what `POST /api/session/guest` mints).
    pub fn is_guest(&self) -> bool {
        self.0.starts_with("guest-")
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = ControlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        UserId::parse(&s)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomKind {
    /// Host, co-hosts and speakers on stage; everyone else listens and may raise a hand.
    Stage,
    /// Everyone may speak.
    Open,
}

/// Who may raise a hand in a stage room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpeakerMode {
    /// Every listener.
    Everyone,
    /// Listeners who follow the host.
    Followers,
    /// Listeners the host or a co-host invited.
    Invited,
}

/// Where a room is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoomState {
    /// Created, not started.
    Scheduled,
    /// Started: the media room exists and the host is on stage.
    Live,
    /// Ended: everyone is being disconnected and live state cleaned up.
    Ended,
    /// Ended and cleaned up; kept with its statistics, not listed by default.
    Archived,
}

/// A member's role in a room.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Owns the room.
    Host,
    /// Moderates with the host.
    CoHost,
    /// On stage.
    Speaker,
    /// In the audience.
    Listener,
}

impl Role {
    /// Every role, for exhaustive tests.
    pub const ALL: [Role; 4] = [Role::Host, Role::CoHost, Role::Speaker, Role::Listener];

    /// The value of the `role` participant attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::CoHost => "co_host",
            Role::Speaker => "speaker",
            Role::Listener => "listener",
        }
    }

    /// On stage (may publish) in a stage room.
    pub fn on_stage(self) -> bool {
        !matches!(self, Role::Listener)
    }

    /// Host or co-host.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Host | Role::CoHost)
    }
}

/// A room's description and lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Room {
    /// Its id (also the media room's name).
    pub id: RoomId,
    /// Title shown in the directory.
    pub title: String,
    /// Short topic.
    pub topic: String,
    /// Longer description.
    pub description: String,
    /// Stage or open.
    pub kind: RoomKind,
    /// Who may raise a hand.
    pub speaker_mode: SpeakerMode,
    /// Most members at once.
    pub max_participants: u32,
    /// The current host.
    pub host: UserId,
    /// The user who created it.
    pub created_by: UserId,
    /// Lifecycle state.
    pub state: RoomState,
    /// Unix ms of creation.
    pub created_at: u64,
    /// Unix ms the room is scheduled for, if scheduled.
    pub scheduled_for: Option<u64>,
    /// Unix ms it went live.
    pub started_at: Option<u64>,
    /// Unix ms it ended.
    pub ended_at: Option<u64>,
    /// Unix ms since which no member has been connected (live rooms).
    pub empty_since: Option<u64>,
    /// Where its media lives: the `public_url` of the node that created it, when nodes have
    /// their own URLs, so that every client of the room meets on one media node.
    #[serde(default)]
    pub media_url: Option<String>,
    /// Auto-start and recurrence.
    #[serde(default)]
    pub schedule: crate::schedule::Schedule,
    /// The reminder for `scheduled_for` went out.
    #[serde(default)]
    pub reminded: bool,
    /// The first room of a recurring series, for its later occurrences.
    #[serde(default)]
    pub series: Option<RoomId>,
    /// Private: unlisted, seen and joined only by its host, its members, those invited and
    /// those lined up for the stage.
    #[serde(default)]
    pub private: bool,
    /// Listeners may send data packets to the room (still rate-limited per sender and stamped
    /// with their identity by the server); off by default, when only the stage sends data.
    #[serde(default)]
    pub listener_data: bool,
    /// Recorded: while live, the media plane records it and every participant sees so; set
    /// at creation, it records from the start.
    #[serde(default)]
    pub recording: bool,
    /// Created to be recorded from its start: kept when the room ends (where `recording`
    /// is cleared), so that the next occurrence of a recurring room records from its start
    /// too.
    #[serde(default)]
    pub record_from_start: bool,
    /// When idle speakers are muted and moved back, and whether away listeners show.
    #[serde(default)]
    pub idle: IdleRules,
}

/// Longest idle time a room may set (a day), in seconds.
pub const MAX_IDLE_SECS: u32 = 86_400;

/// A room's rules for idle speakers and away listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IdleRules {
    /// Seconds without speaking after which someone on stage is muted (0: never).
    pub mute_after: u32,
    /// Seconds without speaking after which a speaker goes back to the audience (0: never;
    /// else longer than `mute_after`). The host and co-hosts stay on stage.
    pub audience_after: u32,
    /// Show listeners whose page is hidden as away (off by default).
    pub show_away: bool,
}

impl Default for IdleRules {
    fn default() -> Self {
        IdleRules {
            mute_after: 600,
            audience_after: 1800,
            show_away: false,
        }
    }
}

impl IdleRules {
    /// Checks the limits: each at most a day, and the move to the audience after the mute.
    pub fn validate(&self) -> Result<(), ControlError> {
        if self.mute_after > MAX_IDLE_SECS || self.audience_after > MAX_IDLE_SECS {
            return Err(ControlError::bad_request(
                "invalid_field",
                format!("idle times are at most {MAX_IDLE_SECS} s (a day)"),
            ));
        }
        if self.mute_after > 0 && self.audience_after > 0 && self.audience_after <= self.mute_after
        {
            return Err(ControlError::bad_request(
                "invalid_field",
                "idle_audience_after must be longer than idle_mute_after (or 0: never)",
            ));
        }
        Ok(())
    }
}

/// One user in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Muted (by themselves or a moderator).
    pub muted: bool,
    /// Publishing revoked by a moderator until restored.
    pub hard_muted: bool,
    /// Unix ms of joining.
    pub joined_at: u64,
    /// Connected to the media room now.
    pub present: bool,
    /// Unix ms of the last time they connected to the media room.
    pub present_since: Option<u64>,
    /// Unix ms they went on stage (for speaking statistics).
    pub on_stage_since: Option<u64>,
    /// The instance whose media plane hosts their session, while present.
    #[serde(default)]
    pub instance: Option<String>,
    /// Unix ms they started speaking (the media plane's active-speaker detection), while they
    /// speak.
    #[serde(default)]
    pub speaking_since: Option<u64>,
    /// Unix ms from which their seat's grace runs while they are not connected: their media
    /// session ended without a `/leave`, or they took a new token.
    #[serde(default)]
    pub absent_since: Option<u64>,
    /// Unix ms they last spoke (started or stopped) or unmuted themselves: the idle rules count
    /// from here, or from their arrival on stage if later.
    #[serde(default)]
    pub active_at: Option<u64>,
    /// Their page is hidden (they said so): shown as away where the room shows that.
    #[serde(default)]
    pub away: bool,
    /// They turned the room's sound off (deafened).
    #[serde(default)]
    pub deafened: bool,
}

impl Member {
    /// Whether the member holds no seat at `now`: not connected, and not for `grace_ms`
    /// since they took their token (never connected) or since their session dropped. The
    /// host's seat is never given away.
    pub fn is_ghost(&self, now: u64, grace_ms: u64) -> bool {
        self.role != Role::Host
            && !self.present
            && now.saturating_sub(self.absent_since.unwrap_or(self.joined_at)) >= grace_ms
    }
}

/// A room's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoomStats {
    /// Most listeners present at once.
    pub peak_listeners: u32,
    /// Joins, counting rejoins.
    pub total_joins: u64,
    /// Sum of all members' connected time (ms).
    pub listening_ms: u64,
    /// Completed connected periods (for the average).
    pub listening_sessions: u64,
    /// Time on stage per user (ms).
    pub stage_ms: BTreeMap<UserId, u64>,
    /// Time actually speaking per user (ms), from the media plane's active-speaker detection.
    #[serde(default)]
    pub speaking_ms: BTreeMap<UserId, u64>,
    /// Reactions sent.
    pub reactions: u64,
    /// Hands raised.
    pub hands_raised: u64,
    /// Display names of the people these records name (the host, whoever had time on stage,
    /// whoever was kicked or banned), kept after they leave, so that summaries and moderation
    /// lists show names rather than user ids. Bounded by the stage and the removals, not the
    /// audience.
    #[serde(default)]
    pub names: BTreeMap<UserId, String>,
}

/// What a room counts, kept in its header so that nobody has to count its members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Counts {
    /// Members.
    pub members: u32,
    /// Members on stage (host, co-hosts, speakers).
    pub stage: u32,
    /// Members connected now.
    pub present: u32,
    /// Listeners (members not on stage) connected now.
    pub listeners: u32,
    /// Raised hands.
    pub hands: u32,
    /// Entries of the line-up.
    pub lineup: u32,
    /// Members connected now, by the instance whose media plane hosts them.
    pub instances: BTreeMap<String, u32>,
}

impl Counts {
    /// What one member (and their hand) adds.
    fn add(&mut self, m: &Member) {
        self.members += 1;
        if m.role.on_stage() {
            self.stage += 1;
        }
        if m.present {
            self.present += 1;
            if !m.role.on_stage() {
                self.listeners += 1;
            }
            if let Some(i) = &m.instance {
                *self.instances.entry(i.clone()).or_default() += 1;
            }
        }
    }

    /// The counts of `members` and `hands`.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a Member>, hands: usize) -> Counts {
        let mut c = Counts::default();
        for m in members {
            c.add(m);
        }
        c.hands = u32::try_from(hands).unwrap_or(u32::MAX);
        c
    }

    fn plus(&self, other: &Counts) -> Counts {
        let mut instances = self.instances.clone();
        for (i, n) in &other.instances {
            *instances.entry(i.clone()).or_default() += n;
        }
        instances.retain(|_, n| *n > 0);
        Counts {
            members: self.members.saturating_add(other.members),
            stage: self.stage.saturating_add(other.stage),
            present: self.present.saturating_add(other.present),
            listeners: self.listeners.saturating_add(other.listeners),
            hands: self.hands.saturating_add(other.hands),
            lineup: self.lineup.saturating_add(other.lineup),
            instances,
        }
    }

    fn minus(&self, other: &Counts) -> Counts {
        let mut instances = self.instances.clone();
        for (i, n) in &other.instances {
            if let Some(v) = instances.get_mut(i) {
                *v = v.saturating_sub(*n);
            }
        }
        instances.retain(|_, n| *n > 0);
        Counts {
            members: self.members.saturating_sub(other.members),
            stage: self.stage.saturating_sub(other.stage),
            present: self.present.saturating_sub(other.present),
            listeners: self.listeners.saturating_sub(other.listeners),
            hands: self.hands.saturating_sub(other.hands),
            lineup: self.lineup.saturating_sub(other.lineup),
            instances,
        }
    }
}

/// Which part of a room a read or a command needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Every member and record: for commands that act on everyone (ending a room).
    pub all: bool,
    /// These users' member, hand, ban, kick and invitation records.
    pub users: Vec<UserId>,
    /// The members on stage (at most [`STAGE_LOADED`]), for views.
    pub stage: bool,
}

/// Most members on stage a view loads (an open room may have everyone on stage).
pub const STAGE_LOADED: usize = 100;

impl Scope {
    /// Everything.
    pub fn all() -> Scope {
        Scope {
            all: true,
            ..Scope::default()
        }
    }

    /// The header and these users.
    pub fn users(users: impl IntoIterator<Item = UserId>) -> Scope {
        Scope {
            users: users.into_iter().collect(),
            ..Scope::default()
        }
    }

    /// The header only.
    pub fn header() -> Scope {
        Scope::default()
    }

    /// Also the members on stage.
    pub fn with_stage(mut self) -> Scope {
        self.stage = true;
        self
    }
}

/// A room, or the part of it a command needs, read and written as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomDoc {
    /// Description and lifecycle.
    pub room: Room,
    /// Current members (the loaded ones; see [`Scope`]).
    pub members: BTreeMap<UserId, Member>,
    /// Raised hands: user → unix ms raised, in the order raised.
    pub hands: BTreeMap<UserId, u64>,
    /// Banned users.
    pub bans: BTreeSet<UserId>,
    /// Kicked users: user → unix ms until which they may not rejoin.
    pub kicks: BTreeMap<UserId, u64>,
    /// Users invited to speak (speaker mode "invited").
    pub invited: BTreeSet<UserId>,
    /// The line-up: roles the host gave (co-host, speaker) that a user has whenever they
    /// join, kept across leaving and rejoining and carried to a recurring room's next
    /// occurrence.
    #[serde(default)]
    pub lineup: BTreeMap<UserId, Role>,
    /// Statistics.
    pub stats: RoomStats,
    /// The counts of the members and hands that were not loaded.
    #[serde(skip)]
    pub rest: Counts,
}

impl RoomDoc {
    /// A new room with nobody in it.
    pub fn new(room: Room) -> RoomDoc {
        RoomDoc {
            room,
            members: BTreeMap::new(),
            hands: BTreeMap::new(),
            bans: BTreeSet::new(),
            kicks: BTreeMap::new(),
            invited: BTreeSet::new(),
            lineup: BTreeMap::new(),
            stats: RoomStats::default(),
            rest: Counts::default(),
        }
    }

    /// Sets [`RoomDoc::rest`] from the whole room's `counts`, once the loaded records are in.
    pub fn set_total(&mut self, counts: &Counts) {
        self.rest = counts.minus(&self.loaded_counts());
    }

    fn loaded_counts(&self) -> Counts {
        let mut c = Counts::of(self.members.values(), self.hands.len());
        c.lineup = u32::try_from(self.lineup.len()).unwrap_or(u32::MAX);
        c
    }

    /// The whole room's counts: the records left out, plus the loaded ones as they are now.
    pub fn counts(&self) -> Counts {
        self.rest.plus(&self.loaded_counts())
    }

    /// Like [`RoomDoc::counts`] without the per-instance split, and without allocating: what
    /// commands read, once per command (a batch of presence changes loads many members).
    pub fn totals(&self) -> Counts {
        let mut c = Counts {
            instances: BTreeMap::new(),
            hands: self
                .rest
                .hands
                .saturating_add(u32::try_from(self.hands.len()).unwrap_or(u32::MAX)),
            lineup: self
                .rest
                .lineup
                .saturating_add(u32::try_from(self.lineup.len()).unwrap_or(u32::MAX)),
            ..self.rest
        };
        for m in self.members.values() {
            c.members += 1;
            if m.role.on_stage() {
                c.stage += 1;
            }
            if m.present {
                c.present += 1;
                if !m.role.on_stage() {
                    c.listeners += 1;
                }
            }
        }
        c
    }

    /// Loaded members connected now.
    pub fn present(&self) -> impl Iterator<Item = (&UserId, &Member)> {
        self.members.iter().filter(|(_, m)| m.present)
    }

    /// Listeners connected now (the whole room).
    pub fn audience(&self) -> u32 {
        self.totals().listeners
    }

    /// The display name of `user`: a member's current name, else the one the records kept.
    pub fn name_of(&self, user: &UserId) -> Option<&str> {
        self.members
            .get(user)
            .map(|m| m.name.as_str())
            .or_else(|| self.stats.names.get(user).map(String::as_str))
    }
}

/// Validates a free-text field: trimmed length, and no control characters.
pub fn text(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<String, ControlError> {
    let value = value.trim();
    let len = value.chars().count();
    if len < min || len > max {
        return Err(ControlError::bad_request(
            "invalid_field",
            format!("{field} must be {min} to {max} characters (got {len})"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' || is_invisible(c))
    {
        return Err(ControlError::bad_request(
            "invalid_field",
            format!("{field} contains control or invisible formatting characters"),
        ));
    }
    Ok(value.to_owned())
}

/// Characters that change how text around them is shown (bidi overrides, zero-width joiners
/// used to spoof names) and are refused in titles and names.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_16_base32_characters() {
        let id = RoomId::random();
        assert_eq!(id.as_str().len(), 16);
        assert!(RoomId::parse(id.as_str()).is_ok());
        assert_ne!(RoomId::random(), id);
        for bad in [
            "",
            "abc",
            "ABCDEFGHIJKLMNOP",
            "room:1:participa",
            "aaaaaaaaaaaaaaa*",
        ] {
            assert!(RoomId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_cannot_name_other_keys() {
        assert!(UserId::parse("alice@example.com").is_ok());
        for bad in ["", "a:b", "a b", "x}", "room:1", "é", &"a".repeat(65)] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_fields_refuse_empty_long_and_invisible() {
        assert_eq!(text("title", "  Hi  ", 1, 10).unwrap(), "Hi");
        assert!(text("title", "   ", 1, 10).is_err());
        assert!(text("title", &"x".repeat(11), 1, 10).is_err());
        assert!(text("title", "a\u{202E}b", 1, 10).is_err());
        assert!(text("title", "a\u{0007}b", 1, 10).is_err());
        assert_eq!(text("title", "日本語 🎙️", 1, 10).unwrap(), "日本語 🎙️");
    }
}
