//! The room state machine: one command applied to one [`RoomDoc`], deterministic and free of
//! I/O. It checks the permission matrix and the room's rules, changes the document, and says
//! what must happen elsewhere ([`Effects`]): media-plane changes, events, released claims.

use std::collections::BTreeMap;

use crate::error::ControlError;
use crate::events::Event;
use crate::media::MediaCommand;
use crate::model::{
    IdleRules, Member, Role, RoomDoc, RoomKind, RoomState, Scope, SpeakerMode, UserId,
};
use crate::permission::{Action, allowed, may_target};
use crate::schedule::Schedule;

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in user.
    User(UserId),
    /// The server itself or an app backend with the API secret: may moderate and run the
    /// lifecycle of any room, but takes no place in it.
    System,
}

/// One thing to do to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Join, with a display name.
    Join {
        /// Display name.
        name: String,
    },
    /// An action on oneself (leave, hands, mute, step down).
    Own(Action),
    /// A reaction.
    React {
        /// The reaction, e.g. an emoji.
        emoji: String,
    },
    /// A moderation or role action on another member.
    Target(Action, UserId),
    /// Take the room live.
    Start,
    /// Start (`true`) or stop recording the live room (host and co-hosts).
    Record(bool),
    /// The media plane could not record the room (an unwritable directory, a full disk):
    /// the room is no longer recorded, and everyone is told why (system only).
    RecordingFailed(String),
    /// End the room.
    End,
    /// Archive an ended room once its live state is cleaned up.
    Archive,
    /// The media plane of `instance` saw the user connect.
    Connected(UserId, String),
    /// The media plane detected the user starting (`true`) or stopping speaking.
    Speaking(UserId, bool),
    /// The media plane of `instance` saw the user disconnect, or `instance` died. Ignored when
    /// the user is connected through another instance by now.
    Disconnected(UserId, String),
    /// The user's client left the media room of `instance` on purpose (not a lost
    /// connection): as [`Command::Disconnected`], and their seat is free at once (no grace;
    /// [`Command::ReleaseSeats`] gives it to the next person a full room admits).
    Left(UserId, String),
    /// Change the room's description, limits or schedule (host and co-hosts).
    Edit(Edit),
    /// Mark the reminder of a scheduled room as sent (once per scheduled time).
    Remind,
    /// Give `user` a role whenever they join (co-host or speaker), or take it back (`None`):
    /// the line-up (host only).
    LineUp(UserId, Option<Role>),
    /// The media plane saw the user's track muted (`true`) or unmuted, whoever did it (their
    /// client through any SDK, or a server through the RoomService API).
    MediaMuted(UserId, bool),
    /// Give up the seats of those of these members who hold none any more (see
    /// [`Member::is_ghost`]): never connected, or dropped, for the seat grace.
    ReleaseSeats(Vec<UserId>),
    /// Apply the room's idle rules to these members at `now` (the server's sweep, from
    /// [`idle_due`]): mute whoever on stage has not spoken for `mute_after`, and move speakers
    /// silent for `audience_after` back to the audience.
    Idle(Vec<UserId>),
    /// The member's own state as their client reports it: away (page hidden) and deafened;
    /// `None` leaves a field as it is.
    Presence {
        /// Away.
        away: Option<bool>,
        /// Deafened.
        deafened: Option<bool>,
    },
}

/// A change to a room's description, limits or schedule; `None` leaves a field as it is.
/// Text fields arrive validated ([`crate::service`] checks them as at creation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    /// Title.
    pub title: Option<String>,
    /// Topic.
    pub topic: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Stage or open (before the room goes live only).
    pub kind: Option<RoomKind>,
    /// Who may raise a hand.
    pub speaker_mode: Option<SpeakerMode>,
    /// Member limit (not below the members in the room now).
    pub max_participants: Option<u32>,
    /// Unix ms the room is scheduled for (scheduled rooms only).
    pub scheduled_for: Option<u64>,
    /// Auto-start and recurrence (scheduled rooms only).
    pub schedule: Option<Schedule>,
    /// Listeners may send data packets (applies at once to connected listeners).
    pub listener_data: Option<bool>,
    /// Seconds without speaking before someone on stage is muted (0: never).
    pub idle_mute_after: Option<u32>,
    /// Seconds without speaking before a speaker goes back to the audience (0: never).
    pub idle_audience_after: Option<u32>,
    /// Show away listeners.
    pub show_away: Option<bool>,
}

/// Inputs other than the document and command.
#[derive(Debug, Clone)]
pub struct Context {
    /// Unix ms.
    pub now: u64,
    /// Whether the acting user follows the room's host (speaker mode "followers").
    pub follows_host: bool,
    /// How long a kicked user stays out (ms).
    pub kick_cooldown_ms: u64,
    /// How long before its scheduled time the host may start a room (ms).
    pub open_window_ms: u64,
    /// How long a seat is held without a media connection (ms).
    pub seat_grace_ms: u64,
}

/// What a command requires of the world outside the document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// Changes to live media sessions.
    pub media: Vec<MediaCommand>,
    /// Events for the event stream.
    pub events: Vec<Event>,
    /// Users no longer in this room (their one-active-room claim ends).
    pub released: Vec<UserId>,
}

/// The part of the room `command` by `actor` reads and changes: the users it names (and the
/// host, whom a transfer demotes), or everyone when it ends the room or changes what listeners
/// may send.
pub fn scope(actor: &Actor, command: &Command, host: Option<&UserId>) -> Scope {
    let mut users = Vec::new();
    if let Actor::User(u) = actor {
        users.push(u.clone());
    }
    match command {
        Command::End => return Scope::all(),
        // Letting listeners send data, or not, changes every connected member's permission.
        Command::Edit(edit) if edit.listener_data.is_some() => return Scope::all(),
        Command::Target(action, target) => {
            users.push(target.clone());
            if *action == Action::TransferHost {
                users.extend(host.cloned());
            }
        }
        Command::Connected(u, _)
        | Command::Disconnected(u, _)
        | Command::Left(u, _)
        | Command::Speaking(u, _)
        | Command::LineUp(u, _)
        | Command::MediaMuted(u, _) => {
            users.push(u.clone());
        }
        Command::ReleaseSeats(us) => users.extend(us.iter().cloned()),
        Command::Idle(us) => users.extend(us.iter().cloned()),
        Command::Join { .. }
        | Command::Own(_)
        | Command::React { .. }
        | Command::Start
        | Command::Archive
        | Command::Edit(_)
        | Command::Remind
        | Command::Record(_)
        | Command::RecordingFailed(_)
        | Command::Presence { .. } => {}
    }
    users.sort();
    users.dedup();
    Scope::users(users)
}

/// The participant permissions (publish, publish data) and attributes that the media plane
/// shows for a member. Data follows the publish permission, unless the room lets listeners
/// send data ([`crate::model::Room::listener_data`]); a hard mute takes both.
pub fn participant_view(
    doc: &RoomDoc,
    user: &UserId,
) -> Option<(bool, bool, BTreeMap<String, String>)> {
    let m = doc.members.get(user)?;
    let can_publish = (m.role.on_stage() || doc.room.kind == RoomKind::Open) && !m.hard_muted;
    let can_publish_data = can_publish || (doc.room.listener_data && !m.hard_muted);
    let mut attributes = BTreeMap::new();
    attributes.insert("role".to_owned(), m.role.as_str().to_owned());
    let hand = if doc.hands.contains_key(user) {
        "raised"
    } else {
        ""
    };
    attributes.insert("hand".to_owned(), hand.to_owned());
    let away = doc.room.idle.show_away && m.away;
    attributes.insert("away".to_owned(), if away { "yes" } else { "" }.to_owned());
    let deafened = if m.deafened { "yes" } else { "" };
    attributes.insert("deafened".to_owned(), deafened.to_owned());
    Some((can_publish, can_publish_data, attributes))
}

/// Applies `command` by `actor` to `doc`.
pub fn apply(
    doc: &mut RoomDoc,
    actor: &Actor,
    command: Command,
    cx: &Context,
) -> Result<Effects, ControlError> {
    let mut fx = Effects::default();
    match command {
        Command::Join { name } => join(doc, user(actor)?, name, cx, &mut fx)?,
        Command::Own(action) => own(doc, user(actor)?, action, cx, &mut fx)?,
        Command::React { emoji } => {
            let u = user(actor)?;
            check(doc, actor, Action::React)?;
            live(doc)?;
            doc.stats.reactions += 1;
            fx.media.push(MediaCommand::Reaction {
                room: doc.room.id.clone(),
                user: u.clone(),
                emoji: emoji.clone(),
            });
            fx.events.push(Event::Reaction {
                room: doc.room.id.clone(),
                user: u.clone(),
                emoji,
            });
        }
        Command::Target(action, target) => moderate(doc, actor, action, target, cx, &mut fx)?,
        Command::Start => start(doc, actor, cx, &mut fx)?,
        Command::Record(on) => record(doc, actor, on, None, &mut fx)?,
        Command::RecordingFailed(error) => {
            if let Actor::User(_) = actor {
                return Err(ControlError::forbidden(
                    "not_allowed",
                    "only the server reports a failed recording",
                ));
            }
            record(doc, actor, false, Some(error), &mut fx)?;
        }
        Command::End => {
            check(doc, actor, Action::End)?;
            end(doc, cx, &mut fx)?;
        }
        Command::Archive => {
            if doc.room.state == RoomState::Ended {
                doc.room.state = RoomState::Archived;
            }
        }
        Command::Speaking(u, on) => speaking(doc, &u, on, cx),
        Command::Connected(u, instance) => connected(doc, &u, instance, cx, &mut fx),
        Command::Disconnected(u, instance) => disconnected(doc, &u, &instance, cx, &mut fx),
        Command::Left(u, instance) => {
            disconnected(doc, &u, &instance, cx, &mut fx);
            // The seat is free at once: the grace is over. The membership (and a role) stays
            // until someone needs the seat, so that a client that leaves and comes straight
            // back (a rejoin, a new tab) keeps them; its new token holds the seat again.
            if let Some(m) = doc.members.get_mut(&u)
                && !m.present
                && m.absent_since == Some(cx.now)
            {
                m.absent_since = Some(cx.now.saturating_sub(cx.seat_grace_ms));
            }
        }
        Command::Edit(edit) => {
            check(doc, actor, Action::Edit)?;
            self::edit(doc, edit, &mut fx)?;
        }
        Command::Remind => {
            if doc.room.state == RoomState::Scheduled && !doc.room.reminded {
                doc.room.reminded = true;
                fx.events.push(Event::Reminder {
                    room: doc.room.id.clone(),
                    title: doc.room.title.clone(),
                    host: doc.room.host.clone(),
                    scheduled_for: doc.room.scheduled_for,
                });
            }
        }
        Command::LineUp(u, role) => line_up(doc, actor, u, role, cx, &mut fx)?,
        Command::MediaMuted(u, muted) => {
            if let Some(m) = doc.members.get_mut(&u)
                && m.muted != muted
            {
                m.muted = muted;
                fx.events.push(Event::Muted {
                    room: doc.room.id.clone(),
                    user: u,
                    muted,
                    hard: false,
                });
            }
        }
        Command::ReleaseSeats(users) => {
            for u in users {
                if doc
                    .members
                    .get(&u)
                    .is_some_and(|m| m.is_ghost(cx.now, cx.seat_grace_ms))
                {
                    leave(doc, &u, cx, &mut fx);
                    // Should a session exist that the books missed, it goes too.
                    fx.media.push(MediaCommand::Remove {
                        room: doc.room.id.clone(),
                        user: u,
                    });
                }
            }
        }
        Command::Idle(users) => {
            if matches!(actor, Actor::System) && doc.room.state == RoomState::Live {
                for u in users {
                    idle(doc, &u, cx, &mut fx);
                }
            }
        }
        Command::Presence { away, deafened } => {
            let u = user(actor)?;
            presence(doc, u, away, deafened, &mut fx)?;
        }
    }
    Ok(fx)
}

fn user(actor: &Actor) -> Result<&UserId, ControlError> {
    match actor {
        Actor::User(u) => Ok(u),
        Actor::System => Err(ControlError::bad_request(
            "needs_user",
            "this action is taken by a user, with a user token",
        )),
    }
}

/// The actor's role, checked against the matrix. The system may do everything.
fn check(doc: &RoomDoc, actor: &Actor, action: Action) -> Result<Option<Role>, ControlError> {
    let Actor::User(u) = actor else {
        return Ok(None);
    };
    // The host owns the room whether or not they are in it (e.g. moderating from a dashboard).
    let role = match doc.members.get(u) {
        Some(member) => member.role,
        None if *u == doc.room.host => Role::Host,
        None => {
            return Err(ControlError::forbidden(
                "not_a_member",
                "join the room first",
            ));
        }
    };
    if !allowed(action, role, doc.room.kind) {
        return Err(ControlError::forbidden(
            "not_allowed",
            format!(
                "a {} may not {} in a {} room",
                role.as_str(),
                action.as_str(),
                kind_name(doc.room.kind)
            ),
        ));
    }
    Ok(Some(role))
}

fn kind_name(kind: RoomKind) -> &'static str {
    match kind {
        RoomKind::Stage => "stage",
        RoomKind::Open => "open",
    }
}

fn live(doc: &RoomDoc) -> Result<(), ControlError> {
    match doc.room.state {
        RoomState::Live => Ok(()),
        RoomState::Scheduled => Err(ControlError::conflict(
            "room_not_live",
            "the room has not started",
        )),
        RoomState::Ended | RoomState::Archived => {
            Err(ControlError::conflict("room_ended", "the room has ended"))
        }
    }
}

/// Pushes the member's current permission and attributes to the media plane.
fn sync(doc: &RoomDoc, user: &UserId, fx: &mut Effects) {
    if let Some((can_publish, can_publish_data, attributes)) = participant_view(doc, user) {
        fx.media.push(MediaCommand::Update {
            room: doc.room.id.clone(),
            user: user.clone(),
            can_publish,
            can_publish_data,
            attributes,
        });
    }
}

fn audience_event(doc: &RoomDoc, fx: &mut Effects) {
    fx.events.push(Event::Audience {
        room: doc.room.id.clone(),
        listeners: doc.audience(),
        present: doc.totals().present,
        private: doc.room.private,
    });
}

fn join(
    doc: &mut RoomDoc,
    u: &UserId,
    name: String,
    cx: &Context,
    _fx: &mut Effects,
) -> Result<(), ControlError> {
    if doc.bans.contains(u) {
        return Err(ControlError::forbidden(
            "banned",
            "you are banned from this room",
        ));
    }
    if let Some(&until) = doc.kicks.get(u) {
        if until > cx.now {
            let secs = (until - cx.now).div_ceil(1000);
            return Err(ControlError::forbidden(
                "kicked",
                format!("you were removed from this room; you may rejoin in {secs} s"),
            )
            .retry_after(secs));
        }
        doc.kicks.remove(u);
    }
    let is_host = *u == doc.room.host;
    // The host may join a scheduled room before starting it; nobody joins an ended one.
    let ended = matches!(doc.room.state, RoomState::Ended | RoomState::Archived);
    if !is_host || ended {
        live(doc)?;
    }
    if is_host {
        doc.stats.names.insert(u.clone(), name.clone());
    }
    // Invited: by a link or a moderator, or lined up for the stage by the host.
    let invited = doc.invited.contains(u) || doc.lineup.contains_key(u);
    if doc.room.private && !is_host && !doc.members.contains_key(u) && !invited {
        return Err(ControlError::forbidden(
            "private_room",
            "this room is by invitation only",
        ));
    }
    if let Some(member) = doc.members.get_mut(u) {
        member.name = name;
        if !member.present {
            // A new token: the seat is held for them again.
            member.absent_since = Some(cx.now);
        }
        return Ok(());
    }
    if doc.totals().members >= doc.room.max_participants {
        return Err(ControlError::unprocessable(
            "room_full",
            format!(
                "the room is full ({} participants)",
                doc.room.max_participants
            ),
        ));
    }
    let role = if is_host {
        Role::Host
    } else if let Some(&r) = doc.lineup.get(u) {
        // Lined up by the host: on stage from the start.
        r
    } else if doc.room.kind == RoomKind::Open {
        Role::Speaker
    } else {
        Role::Listener
    };
    doc.members.insert(
        u.clone(),
        Member {
            name,
            role,
            // Whoever arrives on stage arrives muted: unmuting is their own deliberate act.
            muted: role.on_stage(),
            hard_muted: false,
            joined_at: cx.now,
            present: false,
            present_since: None,
            on_stage_since: role.on_stage().then_some(cx.now),
            instance: None,
            speaking_since: None,
            absent_since: None,
            active_at: None,
            away: false,
            deafened: false,
        },
    );
    doc.stats.total_joins += 1;
    Ok(())
}

fn leave(doc: &mut RoomDoc, u: &UserId, cx: &Context, fx: &mut Effects) {
    if let Some(mut m) = doc.members.remove(u) {
        account(&mut doc.stats, u, &mut m, cx.now);
    }
    if doc.hands.remove(u).is_some() {
        fx.events.push(Event::Hand {
            room: doc.room.id.clone(),
            user: u.clone(),
            raised: false,
        });
    }
    fx.released.push(u.clone());
    audience_event(doc, fx);
}

/// Closes a member's open listening and stage periods into the statistics.
fn account(stats: &mut crate::model::RoomStats, u: &UserId, m: &mut Member, now: u64) {
    if let Some(since) = m.present_since.take()
        && m.present
    {
        stats.listening_ms += now.saturating_sub(since);
        stats.listening_sessions += 1;
    }
    m.present = false;
    m.instance = None;
    stop_speaking(stats, u, m, now);
    if let Some(since) = m.on_stage_since.take() {
        *stats.stage_ms.entry(u.clone()).or_default() += now.saturating_sub(since);
        stats.names.insert(u.clone(), m.name.clone());
    }
}

fn set_role(doc: &mut RoomDoc, u: &UserId, role: Role, cx: &Context, fx: &mut Effects) {
    let room = doc.room.id.clone();
    let Some(m) = doc.members.get_mut(u) else {
        return;
    };
    let was_on_stage = m.role.on_stage();
    m.role = role;
    if role.on_stage() && !was_on_stage {
        m.on_stage_since = Some(cx.now);
        // A new speaker comes up muted and unmutes when ready.
        m.muted = true;
    } else if !role.on_stage()
        && was_on_stage
        && let Some(since) = m.on_stage_since.take()
    {
        *doc.stats.stage_ms.entry(u.clone()).or_default() += cx.now.saturating_sub(since);
    }
    if role.on_stage() {
        doc.stats.names.insert(u.clone(), m.name.clone());
    }
    if doc.hands.remove(u).is_some() {
        fx.events.push(Event::Hand {
            room: room.clone(),
            user: u.clone(),
            raised: false,
        });
    }
    fx.events.push(Event::Role {
        room,
        user: u.clone(),
        role,
    });
    sync(doc, u, fx);
}

fn own(
    doc: &mut RoomDoc,
    u: &UserId,
    action: Action,
    cx: &Context,
    fx: &mut Effects,
) -> Result<(), ControlError> {
    let actor = Actor::User(u.clone());
    check(doc, &actor, action)?;
    let room = doc.room.id.clone();
    match action {
        Action::Leave => {
            leave(doc, u, cx, fx);
            // Leaving ends the media session too: nobody stays connected (and publishing)
            // without a membership the moderators can act on.
            fx.media.push(MediaCommand::Remove {
                room,
                user: u.clone(),
            });
        }
        Action::RaiseHand => {
            live(doc)?;
            let mode_ok = match doc.room.speaker_mode {
                SpeakerMode::Everyone => true,
                SpeakerMode::Followers => cx.follows_host || doc.invited.contains(u),
                SpeakerMode::Invited => doc.invited.contains(u),
            };
            if !mode_ok {
                let why = match doc.room.speaker_mode {
                    SpeakerMode::Followers => "only followers of the host may raise a hand here",
                    _ => "only invited listeners may raise a hand here",
                };
                return Err(ControlError::forbidden("speaker_mode", why));
            }
            if doc.hands.contains_key(u) {
                return Ok(());
            }
            doc.hands.insert(u.clone(), cx.now);
            doc.stats.hands_raised += 1;
            fx.events.push(Event::Hand {
                room,
                user: u.clone(),
                raised: true,
            });
            sync(doc, u, fx);
        }
        Action::LowerHand => {
            if doc.hands.remove(u).is_some() {
                fx.events.push(Event::Hand {
                    room,
                    user: u.clone(),
                    raised: false,
                });
                sync(doc, u, fx);
            }
        }
        Action::MuteSelf | Action::UnmuteSelf => {
            let muted = action == Action::MuteSelf;
            let Some(m) = doc.members.get_mut(u) else {
                return Ok(());
            };
            if !muted && m.hard_muted {
                return Err(ControlError::forbidden(
                    "hard_muted",
                    "a moderator revoked your microphone",
                ));
            }
            m.muted = muted;
            if !muted {
                // Unmuting is a sign of life: the idle rules count from here.
                m.active_at = Some(cx.now);
            }
            if muted {
                fx.media.push(MediaCommand::Mute {
                    room: room.clone(),
                    user: u.clone(),
                });
            }
            fx.events.push(Event::Muted {
                room,
                user: u.clone(),
                muted,
                hard: false,
            });
        }
        Action::StepDown => {
            set_role(doc, u, Role::Listener, cx, fx);
            remember(doc, u, None);
        }
        _ => {
            return Err(ControlError::bad_request(
                "invalid_action",
                format!("{} names another member", action.as_str()),
            ));
        }
    }
    Ok(())
}

fn moderate(
    doc: &mut RoomDoc,
    actor: &Actor,
    action: Action,
    target: UserId,
    cx: &Context,
    fx: &mut Effects,
) -> Result<(), ControlError> {
    if !action.has_target() {
        return Err(ControlError::bad_request(
            "invalid_action",
            format!("{} takes no target", action.as_str()),
        ));
    }
    let actor_role = check(doc, actor, action)?;
    let target_role = doc.members.get(&target).map(|m| m.role);
    if let (Actor::User(u), Some(role)) = (actor, actor_role) {
        if !may_target(action, role, target_role, *u == target) {
            return Err(match target_role {
                None => ControlError::not_found("member", target.as_str()),
                Some(t) => ControlError::forbidden(
                    "not_allowed",
                    format!(
                        "a {} may not {} a {}",
                        role.as_str(),
                        action.as_str(),
                        t.as_str()
                    ),
                ),
            });
        }
    } else if target_role.is_none() && !matches!(action, Action::Ban | Action::Unban) {
        return Err(ControlError::not_found("member", target.as_str()));
    }
    if target_role == Some(Role::Host) && matches!(action, Action::Kick | Action::Ban) {
        return Err(ControlError::forbidden(
            "not_allowed",
            "the host cannot be removed; hand the host role over first",
        ));
    }
    let room = doc.room.id.clone();
    let stage = |r: Option<Role>| r.is_some_and(Role::on_stage);
    match action {
        Action::ApproveHand | Action::DenyHand => {
            if !doc.hands.contains_key(&target) {
                return Err(ControlError::conflict(
                    "no_raised_hand",
                    format!("{target} has no raised hand"),
                ));
            }
            if action == Action::ApproveHand {
                set_role(doc, &target, Role::Speaker, cx, fx);
                remember(doc, &target, Some(Role::Speaker));
            } else {
                doc.hands.remove(&target);
                fx.events.push(Event::Hand {
                    room,
                    user: target.clone(),
                    raised: false,
                });
                sync(doc, &target, fx);
            }
        }
        Action::InviteToSpeak => {
            if target_role != Some(Role::Listener) {
                return Err(ControlError::conflict(
                    "not_a_listener",
                    format!("{target} is already on stage"),
                ));
            }
            doc.invited.insert(target.clone());
            set_role(doc, &target, Role::Speaker, cx, fx);
            remember(doc, &target, Some(Role::Speaker));
        }
        Action::MoveToAudience => {
            if !stage(target_role) {
                return Err(ControlError::conflict(
                    "not_on_stage",
                    format!("{target} is not on stage"),
                ));
            }
            set_role(doc, &target, Role::Listener, cx, fx);
            remember(doc, &target, None);
        }
        Action::ForceMute | Action::HardMute | Action::Restore => {
            let hard = action != Action::ForceMute;
            if let Some(m) = doc.members.get_mut(&target) {
                match action {
                    Action::ForceMute => m.muted = true,
                    Action::HardMute => {
                        m.muted = true;
                        m.hard_muted = true;
                    }
                    _ => m.hard_muted = false,
                }
            }
            let muted = action != Action::Restore;
            if action == Action::ForceMute {
                fx.media.push(MediaCommand::Mute {
                    room: room.clone(),
                    user: target.clone(),
                });
            }
            fx.events.push(Event::Muted {
                room,
                user: target.clone(),
                muted,
                hard,
            });
            if hard {
                sync(doc, &target, fx);
            }
        }
        Action::Kick | Action::Ban => {
            if let Some(m) = doc.members.get(&target) {
                doc.stats.names.insert(target.clone(), m.name.clone());
            }
            if action == Action::Kick {
                doc.kicks
                    .insert(target.clone(), cx.now.saturating_add(cx.kick_cooldown_ms));
            } else {
                doc.bans.insert(target.clone());
            }
            remember(doc, &target, None);
            leave(doc, &target, cx, fx);
            // Whoever is connected under that identity goes, member or not (the media plane
            // is the source of presence; the books may be behind it).
            fx.media.push(MediaCommand::Remove {
                room: room.clone(),
                user: target.clone(),
            });
            fx.events.push(Event::Removed {
                room,
                user: target,
                banned: action == Action::Ban,
            });
        }
        Action::Unban => {
            let was = doc.bans.remove(&target) | doc.kicks.remove(&target).is_some();
            if !was {
                return Err(ControlError::conflict(
                    "not_banned",
                    format!("{target} is not banned"),
                ));
            }
        }
        Action::AddCoHost => {
            if target_role == Some(Role::CoHost) {
                return Ok(());
            }
            set_role(doc, &target, Role::CoHost, cx, fx);
            remember(doc, &target, Some(Role::CoHost));
        }
        Action::RemoveCoHost => {
            if target_role != Some(Role::CoHost) {
                return Err(ControlError::conflict(
                    "not_a_co_host",
                    format!("{target} is not a co-host"),
                ));
            }
            set_role(doc, &target, Role::Speaker, cx, fx);
            remember(doc, &target, Some(Role::Speaker));
        }
        Action::TransferHost => {
            let old = doc.room.host.clone();
            doc.room.host = target.clone();
            set_role(doc, &target, Role::Host, cx, fx);
            remember(doc, &target, None);
            if doc.members.contains_key(&old) {
                set_role(doc, &old, Role::CoHost, cx, fx);
            }
            remember(doc, &old, Some(Role::CoHost));
        }
        _ => {
            return Err(ControlError::bad_request(
                "invalid_action",
                format!("{} takes no target", action.as_str()),
            ));
        }
    }
    Ok(())
}

fn start(
    doc: &mut RoomDoc,
    actor: &Actor,
    cx: &Context,
    fx: &mut Effects,
) -> Result<(), ControlError> {
    // The host need not have joined a scheduled room yet.
    if let Actor::User(u) = actor
        && *u != doc.room.host
    {
        return Err(ControlError::forbidden(
            "not_allowed",
            "only the host may start the room",
        ));
    }
    match doc.room.state {
        RoomState::Scheduled => {}
        RoomState::Live => return Ok(()),
        RoomState::Ended | RoomState::Archived => {
            return Err(ControlError::conflict("room_ended", "the room has ended"));
        }
    }
    if let (Actor::User(_), Some(at)) = (actor, doc.room.scheduled_for) {
        let opens = at.saturating_sub(cx.open_window_ms);
        if cx.now < opens {
            let secs = (opens - cx.now).div_ceil(1000);
            return Err(ControlError::conflict(
                "too_early",
                format!("the room opens {secs} s from now, shortly before its scheduled time"),
            )
            .retry_after(secs));
        }
    }
    doc.room.state = RoomState::Live;
    doc.room.started_at = Some(cx.now);
    doc.room.empty_since = Some(cx.now);
    fx.media.push(MediaCommand::CreateRoom {
        room: doc.room.id.clone(),
        max_participants: doc.room.max_participants,
        recording: false,
    });
    fx.media.push(metadata(doc));
    if doc.room.recording {
        fx.media.push(MediaCommand::Record {
            room: doc.room.id.clone(),
            recording: true,
        });
    }
    fx.events.push(Event::RoomLive {
        room: doc.room.id.clone(),
        title: doc.room.title.clone(),
        host: doc.room.host.clone(),
        private: doc.room.private,
    });
    Ok(())
}

/// Keeps (or forgets) the role a moderator gave `u`, so that they have it again when they
/// rejoin and in the room's next occurrence. A full line-up keeps what it has.
fn remember(doc: &mut RoomDoc, u: &UserId, role: Option<Role>) {
    match role {
        Some(r) if r == Role::CoHost || r == Role::Speaker => {
            let full = doc.totals().lineup as usize >= crate::model::MAX_LINEUP;
            if doc.lineup.contains_key(u) || !full {
                doc.lineup.insert(u.clone(), r);
            }
        }
        _ => {
            doc.lineup.remove(u);
        }
    }
}

fn line_up(
    doc: &mut RoomDoc,
    actor: &Actor,
    u: UserId,
    role: Option<Role>,
    cx: &Context,
    fx: &mut Effects,
) -> Result<(), ControlError> {
    check(doc, actor, Action::LineUp)?;
    if matches!(doc.room.state, RoomState::Ended | RoomState::Archived) {
        return Err(ControlError::conflict("room_ended", "the room has ended"));
    }
    if matches!(role, Some(Role::Host | Role::Listener)) {
        return Err(ControlError::bad_request(
            "invalid_role",
            "the line-up holds co-hosts and speakers; transfer_host hands the room over",
        ));
    }
    if u == doc.room.host {
        return Err(ControlError::conflict(
            "is_host",
            "the host is always on stage",
        ));
    }
    if let Some(r) = role {
        if !doc.lineup.contains_key(&u) && doc.totals().lineup as usize >= crate::model::MAX_LINEUP
        {
            return Err(ControlError::unprocessable(
                "lineup_full",
                format!(
                    "the line-up holds at most {} people",
                    crate::model::MAX_LINEUP
                ),
            ));
        }
        doc.lineup.insert(u.clone(), r);
    } else {
        doc.lineup.remove(&u);
    }
    // Someone in the room now takes the role at once.
    let base = if doc.room.kind == RoomKind::Open {
        Role::Speaker
    } else {
        Role::Listener
    };
    let now_role = role.unwrap_or(base);
    if doc.members.get(&u).is_some_and(|m| m.role != now_role) {
        set_role(doc, &u, now_role, cx, fx);
    }
    fx.events.push(Event::LineUp {
        room: doc.room.id.clone(),
        user: u,
        role,
    });
    Ok(())
}

/// The members on stage in `doc` whom the room's idle rules act on at `now`: those to mute,
/// and speakers to move to the audience. Only members loaded in `doc` are looked at (the
/// sweep loads the stage).
pub fn idle_due(doc: &RoomDoc, now: u64) -> Vec<UserId> {
    if doc.room.state != RoomState::Live {
        return Vec::new();
    }
    doc.members
        .iter()
        .filter(|(_, m)| idle_step(&doc.room.idle, m, now).is_some())
        .map(|(u, _)| u.clone())
        .collect()
}

/// What the idle rules do to `m` at `now`: `Some(true)` move to the audience, `Some(false)`
/// mute, `None` nothing.
fn idle_step(rules: &IdleRules, m: &Member, now: u64) -> Option<bool> {
    if !m.role.on_stage() || m.speaking_since.is_some() {
        return None;
    }
    let since = m.active_at.max(m.on_stage_since).unwrap_or(m.joined_at);
    let quiet = now.saturating_sub(since);
    let past = |secs: u32| secs > 0 && quiet >= u64::from(secs) * 1000;
    if m.role == Role::Speaker && past(rules.audience_after) {
        Some(true)
    } else if !m.muted && past(rules.mute_after) {
        Some(false)
    } else {
        None
    }
}

fn idle(doc: &mut RoomDoc, u: &UserId, cx: &Context, fx: &mut Effects) {
    let rules = doc.room.idle;
    let Some(m) = doc.members.get_mut(u) else {
        return;
    };
    let Some(moved) = idle_step(&rules, m, cx.now) else {
        return;
    };
    let room = doc.room.id.clone();
    if moved {
        // Back to the audience; the line-up keeps them (they come back on stage when they
        // rejoin, as the host arranged).
        set_role(doc, u, Role::Listener, cx, fx);
    } else {
        m.muted = true;
        fx.media.push(MediaCommand::Mute {
            room: room.clone(),
            user: u.clone(),
        });
        fx.events.push(Event::Muted {
            room: room.clone(),
            user: u.clone(),
            muted: true,
            hard: false,
        });
    }
    fx.events.push(Event::Idle {
        room,
        user: u.clone(),
        moved,
    });
}

fn presence(
    doc: &mut RoomDoc,
    u: &UserId,
    away: Option<bool>,
    deafened: Option<bool>,
    fx: &mut Effects,
) -> Result<(), ControlError> {
    let Some(m) = doc.members.get_mut(u) else {
        return Err(ControlError::forbidden(
            "not_a_member",
            "join the room first",
        ));
    };
    let before = (m.away, m.deafened);
    m.away = away.unwrap_or(m.away);
    m.deafened = deafened.unwrap_or(m.deafened);
    let after = (m.away, m.deafened);
    if before == after {
        return Ok(());
    }
    fx.events.push(Event::Presence {
        room: doc.room.id.clone(),
        user: u.clone(),
        away: after.0 && doc.room.idle.show_away,
        deafened: after.1,
    });
    sync(doc, u, fx);
    Ok(())
}

/// The media room's metadata: what live participants see of the room (JSON).
pub fn metadata(doc: &RoomDoc) -> MediaCommand {
    let r = &doc.room;
    let metadata = serde_json::json!({
        "title": r.title,
        "topic": r.topic,
        "description": r.description,
        "kind": r.kind,
        "speaker_mode": r.speaker_mode,
        "max_participants": r.max_participants,
    });
    MediaCommand::RoomMetadata {
        room: r.id.clone(),
        metadata: metadata.to_string(),
    }
}

fn edit(doc: &mut RoomDoc, e: Edit, fx: &mut Effects) -> Result<(), ControlError> {
    let state = doc.room.state;
    if matches!(state, RoomState::Ended | RoomState::Archived) {
        return Err(ControlError::conflict("room_ended", "the room has ended"));
    }
    let scheduled = state == RoomState::Scheduled;
    if !scheduled && (e.scheduled_for.is_some() || e.schedule.is_some()) {
        return Err(ControlError::conflict(
            "room_live",
            "the schedule of a room that has started cannot change",
        ));
    }
    if let Some(kind) = e.kind
        && kind != doc.room.kind
        && !scheduled
    {
        return Err(ControlError::conflict(
            "room_live",
            "a live room cannot change between stage and open; end it and start another",
        ));
    }
    let idle = IdleRules {
        mute_after: e.idle_mute_after.unwrap_or(doc.room.idle.mute_after),
        audience_after: e
            .idle_audience_after
            .unwrap_or(doc.room.idle.audience_after),
        show_away: e.show_away.unwrap_or(doc.room.idle.show_away),
    };
    idle.validate()?;
    if let Some(max) = e.max_participants {
        let members = doc.totals().members;
        if max < members {
            return Err(ControlError::unprocessable(
                "below_members",
                format!("max_participants cannot go below the {members} members in the room"),
            ));
        }
    }
    let before = doc.room.clone();
    let r = &mut doc.room;
    if let Some(v) = e.title {
        r.title = v;
    }
    if let Some(v) = e.topic {
        r.topic = v;
    }
    if let Some(v) = e.description {
        r.description = v;
    }
    if let Some(v) = e.kind {
        r.kind = v;
    }
    if let Some(v) = e.speaker_mode {
        r.speaker_mode = v;
    }
    if let Some(v) = e.max_participants {
        r.max_participants = v;
    }
    if let Some(v) = e.schedule {
        r.schedule = v;
    }
    let data_changed = e.listener_data.is_some_and(|v| v != r.listener_data);
    if let Some(v) = e.listener_data {
        r.listener_data = v;
    }
    r.idle = idle;
    if let Some(v) = e.scheduled_for
        && r.scheduled_for != Some(v)
    {
        r.scheduled_for = Some(v);
        // A new time earns a new reminder.
        r.reminded = false;
    }
    if doc.room == before {
        return Ok(());
    }
    fx.events.push(Event::RoomEdited {
        room: doc.room.id.clone(),
        title: doc.room.title.clone(),
        topic: doc.room.topic.clone(),
        scheduled_for: doc.room.scheduled_for,
    });
    if state == RoomState::Live {
        fx.media.push(metadata(doc));
        if data_changed {
            // Connected listeners gain or lose the data permission on their live sessions.
            let users: Vec<UserId> = doc.members.keys().cloned().collect();
            for u in &users {
                sync(doc, u, fx);
            }
        }
    }
    Ok(())
}

/// Starts or stops recording: the host and co-hosts of a live room (or the system).
fn record(
    doc: &mut RoomDoc,
    actor: &Actor,
    on: bool,
    error: Option<String>,
    fx: &mut Effects,
) -> Result<(), ControlError> {
    if let Actor::User(u) = actor {
        let role = match doc.members.get(u) {
            Some(m) => Some(m.role),
            None => (*u == doc.room.host).then_some(Role::Host),
        };
        if !role.is_some_and(|r| matches!(r, Role::Host | Role::CoHost)) {
            return Err(ControlError::forbidden(
                "not_allowed",
                "only the host and co-hosts may start or stop a recording",
            ));
        }
    }
    live(doc)?;
    if doc.room.recording == on {
        return Ok(());
    }
    doc.room.recording = on;
    fx.media.push(MediaCommand::Record {
        room: doc.room.id.clone(),
        recording: on,
    });
    fx.events.push(Event::Recording {
        room: doc.room.id.clone(),
        recording: on,
        error,
    });
    Ok(())
}

fn end(doc: &mut RoomDoc, cx: &Context, fx: &mut Effects) -> Result<(), ControlError> {
    if matches!(doc.room.state, RoomState::Ended | RoomState::Archived) {
        return Ok(());
    }
    let was_live = doc.room.state == RoomState::Live;
    doc.room.state = RoomState::Ended;
    doc.room.ended_at = Some(cx.now);
    doc.room.empty_since = None;
    let members = std::mem::take(&mut doc.members);
    for (u, mut m) in members {
        account(&mut doc.stats, &u, &mut m, cx.now);
        fx.released.push(u);
    }
    doc.hands.clear();
    if was_live && doc.room.recording {
        fx.media.push(MediaCommand::Record {
            room: doc.room.id.clone(),
            recording: false,
        });
    }
    doc.room.recording = false;
    if was_live {
        fx.media.push(MediaCommand::DeleteRoom {
            room: doc.room.id.clone(),
        });
    }
    fx.events.push(Event::RoomEnded {
        room: doc.room.id.clone(),
        private: doc.room.private,
    });
    Ok(())
}

fn speaking(doc: &mut RoomDoc, u: &UserId, on: bool, cx: &Context) {
    let Some(m) = doc.members.get_mut(u) else {
        return;
    };
    m.active_at = Some(cx.now);
    if on {
        if m.present && m.speaking_since.is_none() {
            m.speaking_since = Some(cx.now);
        }
    } else {
        stop_speaking(&mut doc.stats, u, m, cx.now);
    }
}

/// Closes a member's speaking period into the statistics.
fn stop_speaking(stats: &mut crate::model::RoomStats, u: &UserId, m: &mut Member, now: u64) {
    if let Some(since) = m.speaking_since.take() {
        *stats.speaking_ms.entry(u.clone()).or_default() += now.saturating_sub(since);
    }
}

fn connected(doc: &mut RoomDoc, u: &UserId, instance: String, cx: &Context, fx: &mut Effects) {
    let Some(m) = doc.members.get_mut(u) else {
        return;
    };
    m.instance = Some(instance);
    m.absent_since = None;
    if m.present {
        return;
    }
    m.present = true;
    m.present_since = Some(cx.now);
    doc.room.empty_since = None;
    let listeners = doc.audience();
    doc.stats.peak_listeners = doc.stats.peak_listeners.max(listeners);
    audience_event(doc, fx);
}

fn disconnected(doc: &mut RoomDoc, u: &UserId, instance: &str, cx: &Context, fx: &mut Effects) {
    let Some(m) = doc.members.get_mut(u) else {
        return;
    };
    if !m.present || m.instance.as_deref().is_some_and(|i| i != instance) {
        return;
    }
    m.instance = None;
    stop_speaking(&mut doc.stats, u, m, cx.now);
    if let Some(since) = m.present_since {
        doc.stats.listening_ms += cx.now.saturating_sub(since);
        doc.stats.listening_sessions += 1;
    }
    m.present = false;
    m.present_since = None;
    m.absent_since = Some(cx.now);
    if doc.totals().present == 0 && doc.room.state == RoomState::Live {
        doc.room.empty_since = Some(cx.now);
    }
    audience_event(doc, fx);
}

#[cfg(test)]
#[path = "room_tests.rs"]
mod tests;
