//! What the API shows of rooms: who sees what depends on who asks. Every view stays small
//! whatever the room's size: counts instead of lists, the stage, the caller's own
//! membership, and for moderators the first raised hands, the first page of the audience
//! (more by cursor: `GET /api/rooms/{id}/audience`) and the first bans and kicks, by name.
//! Every member of a room may page through its audience too, and sees of each listener only
//! what a listener sees in the room: who is connected now, by name, with their profile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::events::Event;
use crate::model::{Role, RoomDoc, RoomKind, RoomState, RoomStats, SpeakerMode, UserId};
use crate::store::AudiencePage;

/// A member as others see them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// User id (LiveKit identity).
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Muted.
    pub muted: bool,
    /// Publishing revoked by a moderator.
    pub hard_muted: bool,
    /// Connected now.
    pub present: bool,
    /// Hand raised.
    pub hand_raised: bool,
    /// Their page is hidden (where the room shows away listeners).
    #[serde(default)]
    pub away: bool,
    /// They turned the room's sound off.
    #[serde(default)]
    pub deafened: bool,
}

/// A raised hand, in the order raised.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HandView {
    /// Whose.
    pub user: UserId,
    /// Their name.
    pub name: String,
    /// Unix ms raised.
    pub raised_at: u64,
}

/// Someone a moderator removed: kicked (out until `until`) or banned (until unbanned).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RemovedView {
    /// Whose.
    pub user: UserId,
    /// Their display name when it is known, else the user id.
    pub name: String,
    /// Banned (else kicked).
    pub banned: bool,
    /// Unix ms until which a kicked user may not rejoin.
    pub until: Option<u64>,
}

/// A room as the caller may see it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomView {
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Topic.
    pub topic: String,
    /// Description.
    pub description: String,
    /// Stage or open.
    pub kind: RoomKind,
    /// Who may raise a hand.
    pub speaker_mode: SpeakerMode,
    /// Member limit.
    pub max_participants: u32,
    /// Unlisted, joinable only by invitation.
    pub private: bool,
    /// Listeners may send data packets to the room.
    pub listener_data: bool,
    /// Host.
    pub host: UserId,
    /// The host's display name ("" when not known yet).
    pub host_name: String,
    /// Lifecycle state.
    pub state: RoomState,
    /// Unix ms.
    pub created_at: u64,
    /// Unix ms it is scheduled for.
    pub scheduled_for: Option<u64>,
    /// Auto-start and recurrence.
    pub schedule: crate::schedule::Schedule,
    /// The first room of its recurring series (later occurrences only).
    pub series: Option<String>,
    /// Lined up with this role (the caller's own entry of the line-up).
    pub your_lineup: Option<Role>,
    /// Unix ms it went live.
    pub started_at: Option<u64>,
    /// Unix ms it ended.
    pub ended_at: Option<u64>,
    /// Listeners connected.
    pub listeners: u32,
    /// Everyone connected.
    pub present: u32,
    /// Members (connected or not).
    pub members: u32,
    /// Raised hands.
    pub raised_hands: u32,
    /// Being recorded.
    pub recording: bool,
    /// Seconds without speaking after which someone on stage is muted (0: never).
    pub idle_mute_after: u32,
    /// Seconds without speaking after which a speaker goes back to the audience (0: never).
    pub idle_audience_after: u32,
    /// Listeners whose page is hidden show as away.
    pub show_away: bool,
    /// Host, co-hosts and speakers (the first 100 in an open room, where everyone is).
    pub stage: Vec<MemberView>,
    /// The caller's own membership.
    pub you: Option<MemberView>,
    /// The first raised hands, oldest first (hosts and co-hosts only; `raised_hands` counts
    /// them all).
    pub hands: Option<Vec<HandView>>,
    /// The first page of the audience, by user id (hosts and co-hosts only; every member reads
    /// it with `GET /api/rooms/{id}/audience`).
    pub audience: Option<Vec<AudienceMemberView>>,
    /// Cursor of the audience's next page (`GET /api/rooms/{id}/audience?after=…`), if any.
    pub audience_next: Option<UserId>,
    /// The first banned users (hosts and co-hosts only).
    pub banned: Option<Vec<UserId>>,
    /// The first banned, then kicked users with their names (hosts and co-hosts only).
    pub removed: Option<Vec<RemovedView>>,
}

/// Someone in the audience. Every member of the room sees `user`, `name`, `role` and
/// `profile`; hosts and co-hosts also see the fields marked so, which are left out for others.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AudienceMemberView {
    /// User id (LiveKit identity).
    pub user: UserId,
    /// Display name.
    pub name: String,
    /// Role (`listener`: the audience is everyone not on stage).
    pub role: Role,
    /// Where their profile (bio, photo) is read: `/api/users/{user}/profile`.
    pub profile: String,
    /// Connected now (hosts and co-hosts only; others are shown only who is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Hand raised (hosts and co-hosts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_raised: Option<bool>,
    /// Muted (hosts and co-hosts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted: Option<bool>,
    /// Publishing revoked by a moderator (hosts and co-hosts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_muted: Option<bool>,
    /// Their page is hidden (where the room shows away listeners); left out when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub away: bool,
}

/// A page of a room's audience.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AudienceView {
    /// Members not on stage, by user id: for hosts and co-hosts every member, for other
    /// members those connected now (so a page may hold fewer than `limit` while `next` is set).
    pub members: Vec<AudienceMemberView>,
    /// Cursor of the next page, if any.
    pub next: Option<UserId>,
}

/// What a moderator's view adds, read apart from the room's document.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// The first raised hands.
    pub hands: Vec<(UserId, u64)>,
    /// The first page of the audience.
    pub audience: AudiencePage,
    /// The first bans.
    pub bans: Vec<UserId>,
    /// The first kicks: user and the unix ms until which they may not rejoin.
    pub kicks: Vec<(UserId, u64)>,
}

/// What anyone may see of a room, without signing in: for embeddable cards and shared links.
/// No user ids, no audience list, nothing about the caller.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoomCardView {
    /// Id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Topic.
    pub topic: String,
    /// Stage or open.
    pub kind: RoomKind,
    /// Lifecycle state.
    pub state: RoomState,
    /// Unix ms it is scheduled for.
    pub scheduled_for: Option<u64>,
    /// Unix ms it went live.
    pub started_at: Option<u64>,
    /// Unix ms it ended.
    pub ended_at: Option<u64>,
    /// Listeners connected.
    pub listeners: u32,
    /// Display names of the host, co-hosts and speakers, host first.
    pub speakers: Vec<String>,
    /// The host's display name ("" when not known yet).
    pub host_name: String,
}

/// A room's statistics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// Room id.
    pub room: String,
    /// Lifecycle state.
    pub state: RoomState,
    /// Most listeners connected at once.
    pub peak_listeners: u32,
    /// Joins, counting rejoins.
    pub total_joins: u64,
    /// Average connected time per session (ms), closed sessions only.
    pub average_listening_ms: u64,
    /// Time on stage per user (ms).
    pub stage_ms: BTreeMap<UserId, u64>,
    /// Time speaking per user (ms), from active-speaker detection.
    pub speaking_ms: BTreeMap<UserId, u64>,
    /// Display names of the users named above (and the host), by user id.
    pub names: BTreeMap<UserId, String>,
    /// Reactions.
    pub reactions: u64,
    /// Hands raised.
    pub hands_raised: u64,
    /// Minutes from start to end (or now).
    pub duration_ms: u64,
}

/// A host's totals across their rooms.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HostStatsView {
    /// The host.
    pub host: UserId,
    /// Rooms hosted (any state).
    pub rooms: u64,
    /// Rooms that went live.
    pub rooms_live_or_ended: u64,
    /// Sum of per-room peaks.
    pub peak_listeners_sum: u64,
    /// Largest single-room peak.
    pub peak_listeners_max: u32,
    /// Joins across rooms.
    pub total_joins: u64,
    /// Connected time across rooms (ms).
    pub listening_ms: u64,
    /// The host's own time on stage across rooms (ms).
    pub stage_ms: u64,
}

fn member(doc: &RoomDoc, user: &UserId) -> Option<MemberView> {
    let m = doc.members.get(user)?;
    let mut v = member_view(user, m, doc.hands.contains_key(user));
    v.away &= doc.room.idle.show_away;
    Some(v)
}

fn member_view(user: &UserId, m: &crate::model::Member, hand: bool) -> MemberView {
    MemberView {
        away: m.away,
        deafened: m.deafened,
        user: user.clone(),
        name: m.name.clone(),
        role: m.role,
        muted: m.muted,
        hard_muted: m.hard_muted,
        present: m.present,
        hand_raised: hand,
    }
}

/// One member of the audience as `sight` shows them.
fn audience_member(
    user: &UserId,
    m: &crate::model::Member,
    hand: bool,
    sight: Sight,
) -> AudienceMemberView {
    let moderator = sight == Sight::Moderator;
    AudienceMemberView {
        away: m.away,
        user: user.clone(),
        name: m.name.clone(),
        role: m.role,
        profile: format!("/api/users/{user}/profile"),
        present: moderator.then_some(m.present),
        hand_raised: moderator.then_some(hand),
        muted: moderator.then_some(m.muted),
        hard_muted: moderator.then_some(m.hard_muted),
    }
}

/// A page of the audience as `sight` shows it. The page is the store's: a member's page holds
/// only members connected now, which [`crate::Control::audience`] picks.
pub fn audience(page: &AudiencePage, sight: Sight) -> AudienceView {
    AudienceView {
        members: page
            .members
            .iter()
            .filter(|(_, m, _)| sight == Sight::Moderator || m.present)
            .map(|(u, m, hand)| audience_member(u, m, *hand, sight))
            .collect(),
        next: page.next.clone(),
    }
}

/// Whether `viewer` (a user, or `None` for a server) moderates the room: the host, a co-host
/// (needs the viewer's record loaded), or a server.
pub fn moderates(doc: &RoomDoc, viewer: Option<&UserId>) -> bool {
    sight(doc, viewer) == Sight::Moderator
}

/// How much of a room a viewer sees: the one rule behind the room view, the statistics and
/// the event stream (`/api/events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sight {
    /// Signed in, not in the room: what the directory shows (header, counts, stage).
    Outsider,
    /// A member: also their own membership and what happens in the room (reactions, mutes).
    Member,
    /// The host, a co-host or a server: also raised hands, the audience, removals and roles
    /// by user id.
    Moderator,
}

/// What `viewer` (a user, or `None` for a server) sees of the room, from a document holding
/// at least the viewer's record.
pub fn sight(doc: &RoomDoc, viewer: Option<&UserId>) -> Sight {
    let Some(u) = viewer else {
        return Sight::Moderator;
    };
    match doc.members.get(u) {
        Some(m) if m.role.moderates() => Sight::Moderator,
        _ if doc.room.host == *u => Sight::Moderator,
        Some(_) => Sight::Member,
        None => Sight::Outsider,
    }
}

/// Who reads what a room shows to the public (its card, a public room's replays and clips):
/// someone not signed in, a user, or a server. An anonymous reader is not a server: it sees a
/// public room's replay and nothing of a private room (which does not exist to it: 404).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// No token: a page embedding a card, a shared link opened signed out.
    Anonymous,
    /// A signed-in user.
    User(&'a UserId),
    /// A server token.
    Server,
}

impl<'a> Viewer<'a> {
    /// The user, if a user reads.
    pub fn user(self) -> Option<&'a UserId> {
        match self {
            Viewer::User(u) => Some(u),
            Viewer::Anonymous | Viewer::Server => None,
        }
    }
}

/// Whether `viewer` may read the room's replays and clips: anyone, signed in or not, a public
/// room's; a private room's only those who may see it ([`may_see`]) and servers.
pub fn may_read(doc: &RoomDoc, viewer: Viewer<'_>) -> bool {
    match viewer {
        Viewer::Anonymous => !doc.room.private,
        Viewer::User(u) => may_see(doc, Some(u)),
        Viewer::Server => true,
    }
}

/// Whether `viewer` may know of the room at all: any room but a private one, which only its
/// host, members, those invited or lined up for the stage, and servers see (to anyone else it
/// does not exist: 404).
pub fn may_see(doc: &RoomDoc, viewer: Option<&UserId>) -> bool {
    !doc.room.private
        || sight(doc, viewer) > Sight::Outsider
        || viewer.is_some_and(|u| doc.invited.contains(u) || doc.lineup.contains_key(u))
}

/// Whether a viewer who sees the event's room with `sight` (and who `knows` of it, see
/// [`may_see`]) receives `event` on `/api/events`:
/// the room view's rule applied to deltas. Lifecycle and audience counts are directory facts
/// (anyone, but a private room's only to those who know of it); reactions, mutes and away or
/// deafened changes happen in front of the members; hands, role changes, line-up changes, idle
/// actions and removals name people the way only a moderator's view does, and the person
/// concerned.
pub fn sees(sight: Sight, knows: bool, viewer: Option<&UserId>, event: &Event) -> bool {
    match event {
        Event::RoomCreated { private, .. }
        | Event::RoomLive { private, .. }
        | Event::RoomEnded { private, .. }
        | Event::Audience { private, .. } => !private || knows,
        // Directory facts too, for a room that may be private (they do not say): looked up.
        Event::RoomEdited { .. } | Event::Reminder { .. } | Event::Recording { .. } => knows,
        Event::Reaction { .. } | Event::Muted { .. } | Event::Presence { .. } => {
            sight >= Sight::Member
        }
        Event::Hand { user, .. }
        | Event::Role { user, .. }
        | Event::Removed { user, .. }
        | Event::LineUp { user, .. }
        | Event::Idle { user, .. } => sight == Sight::Moderator || viewer == Some(user),
    }
}

/// Whether `event` can need more than the directory's sight (a membership lookup).
pub fn in_room(event: &Event) -> bool {
    !sees(Sight::Outsider, false, None, event)
}

/// The room as `viewer` (a user id, or `None` for a server) sees it, from a document holding
/// at least the stage and the viewer (and the owners of `extras.hands`, for their names).
/// Without `extras` (a listener, or a directory entry) no hands, audience or bans are shown.
pub fn room(doc: &RoomDoc, viewer: Option<&UserId>, extras: Option<&Extras>) -> RoomView {
    let r = &doc.room;
    let counts = doc.counts();
    let mut stage: Vec<MemberView> = doc
        .members
        .iter()
        .filter(|(_, m)| m.role.on_stage())
        .filter_map(|(u, _)| member(doc, u))
        .collect();
    stage.sort_by(|a, b| a.role.cmp(&b.role).then_with(|| a.name.cmp(&b.name)));
    stage.truncate(crate::model::STAGE_LOADED);
    let hands = extras.map(|x| {
        x.hands
            .iter()
            .map(|(u, t)| HandView {
                user: u.clone(),
                name: doc.name_of(u).map_or_else(|| u.to_string(), str::to_owned),
                raised_at: *t,
            })
            .collect()
    });
    RoomView {
        id: r.id.to_string(),
        title: r.title.clone(),
        topic: r.topic.clone(),
        description: r.description.clone(),
        kind: r.kind,
        speaker_mode: r.speaker_mode,
        max_participants: r.max_participants,
        private: r.private,
        listener_data: r.listener_data,
        host: r.host.clone(),
        host_name: doc.name_of(&r.host).unwrap_or_default().to_owned(),
        state: r.state,
        created_at: r.created_at,
        scheduled_for: r.scheduled_for,
        schedule: r.schedule.clone(),
        series: r.series.as_ref().map(ToString::to_string),
        your_lineup: viewer.and_then(|u| doc.lineup.get(u).copied()),
        started_at: r.started_at,
        ended_at: r.ended_at,
        listeners: counts.listeners,
        present: counts.present,
        members: counts.members,
        raised_hands: counts.hands,
        recording: r.recording,
        idle_mute_after: r.idle.mute_after,
        idle_audience_after: r.idle.audience_after,
        show_away: r.idle.show_away,
        stage,
        you: viewer.and_then(|u| member(doc, u)),
        hands,
        audience: extras.map(|x| {
            let mut members = audience(&x.audience, Sight::Moderator).members;
            for m in &mut members {
                m.away &= r.idle.show_away;
            }
            members
        }),
        audience_next: extras.and_then(|x| x.audience.next.clone()),
        banned: extras.map(|x| x.bans.clone()),
        removed: extras.map(|x| removed(doc, x)),
    }
}

/// The first banned users, then the first kicked ones, each by name: the names the room's
/// statistics keep for whoever was removed (no member records needed).
fn removed(doc: &RoomDoc, extras: &Extras) -> Vec<RemovedView> {
    let named = |u: &UserId| doc.name_of(u).map_or_else(|| u.to_string(), str::to_owned);
    let banned = extras.bans.iter().map(|u| RemovedView {
        user: u.clone(),
        name: named(u),
        banned: true,
        until: None,
    });
    let kicked = extras
        .kicks
        .iter()
        .filter(|(u, _)| !extras.bans.contains(u))
        .map(|(u, until)| RemovedView {
            user: u.clone(),
            name: named(u),
            banned: false,
            until: Some(*until),
        });
    banned.chain(kicked).collect()
}

/// The public card of a room.
pub fn card(doc: &RoomDoc) -> RoomCardView {
    let r = &doc.room;
    let mut stage: Vec<(Role, &str)> = doc
        .members
        .values()
        .filter(|m| m.role.on_stage())
        .map(|m| (m.role, m.name.as_str()))
        .collect();
    stage.sort();
    RoomCardView {
        id: r.id.to_string(),
        title: r.title.clone(),
        topic: r.topic.clone(),
        kind: r.kind,
        state: r.state,
        scheduled_for: r.scheduled_for,
        started_at: r.started_at,
        ended_at: r.ended_at,
        listeners: doc.audience(),
        speakers: stage.into_iter().map(|(_, name)| name.to_owned()).collect(),
        host_name: doc.name_of(&r.host).unwrap_or_default().to_owned(),
    }
}

/// A room's statistics at `now`.
pub fn stats(doc: &RoomDoc, now: u64) -> StatsView {
    let s: &RoomStats = &doc.stats;
    // Open periods count up to now.
    let mut stage_ms = s.stage_ms.clone();
    for (u, m) in &doc.members {
        if let Some(since) = m.on_stage_since {
            *stage_ms.entry(u.clone()).or_default() += now.saturating_sub(since);
        }
    }
    let mut speaking_ms = s.speaking_ms.clone();
    for (u, m) in &doc.members {
        if let Some(since) = m.speaking_since {
            *speaking_ms.entry(u.clone()).or_default() += now.saturating_sub(since);
        }
    }
    let duration_ms = match (doc.room.started_at, doc.room.ended_at) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        (Some(a), None) => now.saturating_sub(a),
        _ => 0,
    };
    let names = stage_ms
        .keys()
        .chain(speaking_ms.keys())
        .chain(std::iter::once(&doc.room.host))
        .filter_map(|u| Some((u.clone(), doc.name_of(u)?.to_owned())))
        .collect();
    StatsView {
        room: doc.room.id.to_string(),
        state: doc.room.state,
        peak_listeners: s.peak_listeners,
        total_joins: s.total_joins,
        average_listening_ms: s
            .listening_ms
            .checked_div(s.listening_sessions)
            .unwrap_or(0),
        stage_ms,
        speaking_ms,
        names,
        reactions: s.reactions,
        hands_raised: s.hands_raised,
        duration_ms,
    }
}

/// What a member (or anyone, once the room has ended) sees of a room's statistics: the totals
/// and who was on stage for how long (the stage is public), without per-user speaking time.
pub fn stats_summary(doc: &RoomDoc, now: u64) -> StatsView {
    let mut s = stats(doc, now);
    s.speaking_ms.clear();
    let stage = &s.stage_ms;
    let host = &doc.room.host;
    s.names.retain(|u, _| stage.contains_key(u) || u == host);
    s
}

/// A host's totals over `rooms` (those they host).
pub fn host_stats(host: &UserId, rooms: &[RoomDoc], now: u64) -> HostStatsView {
    let mut v = HostStatsView {
        host: host.clone(),
        rooms: 0,
        rooms_live_or_ended: 0,
        peak_listeners_sum: 0,
        peak_listeners_max: 0,
        total_joins: 0,
        listening_ms: 0,
        stage_ms: 0,
    };
    for doc in rooms.iter().filter(|d| d.room.host == *host) {
        let s = stats(doc, now);
        v.rooms += 1;
        if doc.room.started_at.is_some() {
            v.rooms_live_or_ended += 1;
        }
        v.peak_listeners_sum += u64::from(s.peak_listeners);
        v.peak_listeners_max = v.peak_listeners_max.max(s.peak_listeners);
        v.total_joins += s.total_joins;
        v.listening_ms += doc.stats.listening_ms;
        v.stage_ms += s.stage_ms.get(host).copied().unwrap_or(0);
    }
    v
}
