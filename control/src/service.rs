//! The control plane's shell: runs commands against the store, carries their effects to the
//! media plane and the event stream of every instance, and keeps rooms tidy over time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::auth::{Keys, Principal};
use crate::clock::now_ms;
use crate::config::{ControlConfig, RoomCreators};
use crate::error::ControlError;
use crate::events::{BusMessage, Event};
use crate::media::{MediaCommand, MediaError, MediaPlane};
use crate::model::{self, Room, RoomDoc, RoomId, RoomKind, RoomState, Scope, SpeakerMode, UserId};
use crate::permission::Action;
use crate::room::{self, Actor, Command, Context, Effects};
use crate::schedule::Schedule;
use crate::store::{AudiencePage, AuditEntry, Follow, Store};
use crate::view::{self, RoomView};

mod audience;
mod drain;
mod edges;
mod invitations;
mod nodes;
mod replay;
mod schedules;
pub use invitations::{INVITES_SHOWN, MAX_INVITE_USES, NewInvite};
pub use replay::{CLIPS_SHOWN, NewClip, Replay};

/// How often live rooms are checked for the empty timeout.
const SWEEP: Duration = Duration::from_secs(5);

/// Raised hands a moderator's view of a room lists (the first raised).
pub const HANDS_SHOWN: usize = 40;
/// Members of the audience on the first page of a moderator's view (more by cursor).
pub const AUDIENCE_PAGE: usize = 40;
/// Banned users a moderator's view lists.
pub const BANS_SHOWN: usize = 40;
/// Largest audience page.
pub const MAX_AUDIENCE_PAGE: usize = 200;
/// Store pages a member's audience page reads at most, looking for members connected now.
pub const MEMBER_SCAN_PAGES: usize = 3;

/// Sweeps between two looks for ended rooms past their retention.
const PRUNE_EVERY: u64 = 12;

/// What the media plane saw of a participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// Connected to the media room.
    Connected,
    /// Its connection was lost (the seat is held for `[control] seat_grace`).
    Disconnected,
    /// Its client left on purpose (a `LeaveRequest`): the seat is free at once.
    Left,
    /// Started speaking (active-speaker detection).
    SpeakingStarted,
    /// Stopped speaking.
    SpeakingStopped,
    /// Their track was muted (by their client or a server).
    Muted,
    /// Their track was unmuted.
    Unmuted,
}

/// The control plane. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    media: Arc<dyn MediaPlane>,
    keys: Keys,
    config: ControlConfig,
    instance: String,
    events: broadcast::Sender<Event>,
    limits: Mutex<HashMap<(UserId, &'static str), Bucket>>,
    /// Notification fan-out (this instance's queue).
    fanout: crate::notify::Fanout,
    /// Users' notification streams connected here.
    streams: crate::notify::Streams,
    /// Signed webhooks to the app's backend, when configured.
    hooks: std::sync::OnceLock<crate::webhook::Webhooks>,
    /// The files of recordings and clips, when this instance has them.
    archive: std::sync::OnceLock<Arc<dyn crate::replay::Archive>>,
    /// This node's record in the node registry, and the nodes as last read.
    node: nodes::NodeState,
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: u64,
}

/// What a new room is made of.
#[derive(Debug, Clone)]
pub struct NewRoom {
    /// Title.
    pub title: String,
    /// Topic.
    pub topic: String,
    /// Description.
    pub description: String,
    /// Stage or open.
    pub kind: RoomKind,
    /// Who may raise hands.
    pub speaker_mode: SpeakerMode,
    /// Member limit (the configured maximum if `None`).
    pub max_participants: Option<u32>,
    /// Unix ms to schedule for; `None` starts at once.
    pub scheduled_for: Option<u64>,
    /// The host when a server creates the room for a user.
    pub host: Option<UserId>,
    /// Auto-start and recurrence.
    pub schedule: Schedule,
    /// Unlisted, joinable only by invitation (or membership).
    pub private: bool,
    /// Listeners may send data packets.
    pub listener_data: bool,
    /// Record it from the start.
    pub recording: bool,
    /// Idle speakers and away listeners.
    pub idle: model::IdleRules,
}

/// Checks a schedule and its time as creation and editing do; returns the time, computed from
/// the recurrence when it is not given.
fn check_schedule(
    at: Option<u64>,
    schedule: &Schedule,
    now: u64,
) -> Result<Option<u64>, ControlError> {
    if let Some(at) = at
        && at + 60_000 < now
    {
        return Err(ControlError::bad_request(
            "invalid_field",
            "scheduled_for is in the past",
        ));
    }
    let at = match (&schedule.repeat, at) {
        (Some(r), None) => {
            r.validate()?;
            Some(r.next(now)?)
        }
        (Some(r), at) => {
            r.validate()?;
            at
        }
        (None, at) => at,
    };
    if at.is_none() && schedule.auto_start {
        return Err(ControlError::bad_request(
            "invalid_schedule",
            "auto_start needs scheduled_for or a repeat",
        ));
    }
    Ok(at)
}

/// Checks a member limit against the configured maximum.
fn check_max(max: u32, limit: u32) -> Result<u32, ControlError> {
    if max == 0 || max > limit {
        return Err(ControlError::bad_request(
            "invalid_field",
            format!("max_participants must be 1 to {limit}"),
        ));
    }
    Ok(max)
}

/// A media token and where to use it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The LiveKit access token.
    pub token: String,
    /// The member's role.
    pub role: model::Role,
    /// The user id (LiveKit identity).
    pub identity: UserId,
    /// The media node of the room, if it has one of its own.
    pub media_url: Option<String>,
}

impl Control {
    /// Starts the control plane on `store`, driving `media`, with a random instance id.
    pub fn start(
        store: Arc<dyn Store>,
        media: Arc<dyn MediaPlane>,
        keys: Keys,
        config: ControlConfig,
    ) -> Control {
        Control::start_as(store, media, keys, config, crate::nodes::new_id())
    }

    /// Sends control-plane events to the app's backend as webhooks through `sink` from now on
    /// (once; later calls are ignored).
    pub fn set_webhooks(&self, sink: Arc<dyn crate::webhook::HookSink>) {
        let _ = self
            .inner
            .hooks
            .set(crate::webhook::Webhooks::new(sink, &self.inner.instance));
    }

    /// `user`'s notifications as they arrive on any instance (their `/api/events` stream).
    pub fn notification_stream(
        &self,
        user: &UserId,
    ) -> tokio::sync::mpsc::Receiver<crate::notify::Notification> {
        self.inner.streams.open(user)
    }

    /// `user`'s feed, newest first, and the unix ms up to which they read it.
    pub async fn notifications(
        &self,
        user: &UserId,
    ) -> Result<(Vec<crate::notify::Notification>, u64), ControlError> {
        self.inner.store.notifications(user).await
    }

    /// Marks `user`'s feed read up to `until` (unix ms).
    pub async fn mark_read(&self, user: &UserId, until: u64) -> Result<(), ControlError> {
        self.inner.store.mark_read(user, until).await
    }

    fn hook(&self, hook: &crate::webhook::Hook) {
        if let Some(h) = self.inner.hooks.get() {
            h.send(hook, now_ms());
        }
    }

    /// Webhooks and notification fan-outs that `events` call for (on the instance that ran
    /// the command only); `series` is the room's recurring series, whose followers hear of
    /// each occurrence.
    fn announce(&self, events: &[Event], series: Option<&RoomId>) {
        use crate::webhook::Hook;
        let now = now_ms();
        for e in events {
            if let Some((notification, mut audience)) = crate::notify::Notification::of(e, now) {
                audience.extend(series.cloned().map(Follow::Room));
                let except = Some(notification.host.clone());
                self.inner.fanout.queue(crate::notify::Job {
                    notification,
                    audience,
                    except,
                });
            }
            if self.inner.hooks.get().is_none() {
                continue;
            }
            let mut data = serde_json::Map::new();
            let (event, room, user) = match e {
                Event::RoomCreated {
                    room,
                    title,
                    scheduled_for,
                    ..
                } => {
                    data.insert("title".into(), title.clone().into());
                    data.insert("scheduled_for".into(), (*scheduled_for).into());
                    let name = if scheduled_for.is_some() {
                        "room_scheduled"
                    } else {
                        "room_created"
                    };
                    (name, room, None)
                }
                Event::RoomLive {
                    room, title, host, ..
                } => {
                    data.insert("title".into(), title.clone().into());
                    data.insert("host".into(), host.as_str().into());
                    ("room_started", room, None)
                }
                Event::RoomEnded { room, .. } => ("room_ended", room, None),
                Event::RoomEdited {
                    room,
                    title,
                    topic,
                    scheduled_for,
                } => {
                    data.insert("title".into(), title.clone().into());
                    data.insert("topic".into(), topic.clone().into());
                    data.insert("scheduled_for".into(), (*scheduled_for).into());
                    ("room_edited", room, None)
                }
                Event::Hand {
                    room,
                    user,
                    raised: true,
                } => ("hand_raised", room, Some(user)),
                Event::Role { room, user, role } => {
                    data.insert("role".into(), role.as_str().into());
                    ("role_changed", room, Some(user))
                }
                Event::Recording {
                    room,
                    recording,
                    error,
                } => {
                    data.insert("recording".into(), (*recording).into());
                    if let Some(error) = error {
                        data.insert("error".into(), error.clone().into());
                    }
                    ("recording", room, None)
                }
                _ => continue,
            };
            self.hook(&Hook {
                event,
                room: room.to_string(),
                user: user.map(ToString::to_string),
                actor: None,
                data,
            });
        }
    }

    /// Webhooks about who did what (joins, departures, moderation), after `command` by
    /// `actor` succeeded on room `id`.
    fn announce_command(&self, actor: &Actor, id: &RoomId, command: &Command) {
        use crate::webhook::Hook;
        if self.inner.hooks.get().is_none() {
            return;
        }
        let who = match actor {
            Actor::User(u) => Some(u.to_string()),
            Actor::System => None,
        };
        let mut data = serde_json::Map::new();
        let (event, user, actor) = match command {
            Command::Join { .. } => ("member_joined", who, None),
            Command::Own(Action::Leave) => ("member_left", who, None),
            Command::Target(action, target) => {
                data.insert("action".into(), action.as_str().into());
                ("moderation", Some(target.to_string()), who)
            }
            _ => return,
        };
        self.hook(&Hook {
            event,
            room: id.to_string(),
            user,
            actor,
            data,
        });
    }

    /// The webhook of an audit-log entry (`control.audit`): the entry as
    /// `GET /api/rooms/{id}/audit` shows it (`at`, `actor`, `action`, `user` = its target).
    fn announce_audit(&self, id: &RoomId, entry: &AuditEntry) {
        if self.inner.hooks.get().is_none() {
            return;
        }
        let mut data = serde_json::Map::new();
        data.insert("action".into(), entry.action.as_str().into());
        data.insert("at".into(), entry.at.into());
        self.hook(&crate::webhook::Hook {
            event: "audit",
            room: id.to_string(),
            user: entry.target.as_ref().map(ToString::to_string),
            actor: entry.actor.as_ref().map(ToString::to_string),
            data,
        });
    }

    /// The keys that sign and check tokens.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// The configuration.
    pub fn config(&self) -> &ControlConfig {
        &self.inner.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// Events from every instance.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Spends one token of `user`'s `what` bucket (`per_sec` refill, `burst` size).
    pub fn rate_limit(
        &self,
        user: &UserId,
        what: &'static str,
        per_sec: f64,
        burst: f64,
    ) -> Result<(), ControlError> {
        let now = now_ms();
        let mut limits = self
            .inner
            .limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if limits.len() > 100_000 {
            // Bounded: forget idle buckets (full again after a minute anyway).
            limits.retain(|_, b| now.saturating_sub(b.at) < 60_000);
        }
        let b = limits.entry((user.clone(), what)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_sub(b.at) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * per_sec).min(burst);
        b.at = now;
        if b.tokens < 1.0 {
            return Err(ControlError::too_many(format!(
                "too many {what} requests; slow down"
            )));
        }
        b.tokens -= 1.0;
        Ok(())
    }

    /// Creates a room; it goes live at once unless scheduled.
    pub async fn create_room(
        &self,
        who: &Principal,
        new: NewRoom,
    ) -> Result<RoomDoc, ControlError> {
        let host = match (who, new.host) {
            (Principal::User { id, .. }, None) => id.clone(),
            (Principal::User { id, .. }, Some(h)) if h == *id => h,
            (Principal::User { .. }, Some(_)) => {
                return Err(ControlError::forbidden(
                    "not_allowed",
                    "only a server token may create a room for another host",
                ));
            }
            (Principal::Server, Some(h)) => h,
            (Principal::Server, None) => {
                return Err(ControlError::bad_request(
                    "missing_host",
                    "a server creating a room names its host",
                ));
            }
        };
        if let Principal::User { id, .. } = who {
            let creators = self.inner.config.creators();
            let refused = match creators {
                RoomCreators::Everyone => None,
                RoomCreators::Users if id.is_guest() => {
                    Some("guests may not create rooms here; sign in with an account")
                }
                RoomCreators::Users => None,
                RoomCreators::Servers => Some("rooms here are created by the app, not by users"),
            };
            if let Some(why) = refused {
                return Err(ControlError::forbidden("not_allowed", why));
            }
            self.rate_limit(id, "room creation", 0.2, 5.0)?;
        }
        let cap = self.inner.config.max_rooms_per_user;
        if cap > 0 && matches!(who, Principal::User { .. }) {
            let open = self
                .inner
                .store
                .rooms(&[RoomState::Live, RoomState::Scheduled])
                .await?
                .iter()
                .filter(|d| d.room.host == host)
                .count();
            if open >= cap as usize {
                return Err(ControlError::conflict(
                    "too_many_rooms",
                    format!(
                        "{host} already has {open} live or scheduled rooms (at most {cap}); end one first"
                    ),
                ));
            }
        }
        let limit = self.inner.config.max_participants;
        let max = check_max(new.max_participants.unwrap_or(limit), limit)?;
        let now = now_ms();
        let scheduled_for = check_schedule(new.scheduled_for, &new.schedule, now)?;
        new.idle.validate()?;
        let mut doc = RoomDoc::new(Room {
            id: RoomId::random(),
            title: model::text("title", &new.title, 1, model::MAX_TITLE)?,
            topic: model::text("topic", &new.topic, 0, model::MAX_TOPIC)?,
            description: model::text("description", &new.description, 0, model::MAX_DESCRIPTION)?,
            kind: new.kind,
            speaker_mode: new.speaker_mode,
            max_participants: max,
            host: host.clone(),
            created_by: match who {
                Principal::User { id, .. } => id.clone(),
                Principal::Server => host.clone(),
            },
            state: RoomState::Scheduled,
            created_at: now,
            scheduled_for,
            started_at: None,
            ended_at: None,
            empty_since: None,
            media_url: self.place_new_room().await,
            schedule: new.schedule.clone(),
            reminded: false,
            series: None,
            private: new.private,
            listener_data: new.listener_data,
            recording: new.recording,
            record_from_start: new.recording,
            idle: new.idle,
        });
        // The host's name, for cards and previews before they join.
        if let Principal::User { id, name } = who
            && *id == host
        {
            doc.stats.names.insert(host.clone(), name.clone());
        }
        self.inner.store.insert_room(&doc).await?;
        let id = doc.room.id.clone();
        let events = vec![Event::RoomCreated {
            room: id.clone(),
            title: doc.room.title.clone(),
            scheduled_for: doc.room.scheduled_for,
            private: doc.room.private,
        }];
        self.announce(&events, None);
        self.publish(Effects {
            events,
            ..Default::default()
        })
        .await?;
        tracing::info!(room = %id, "room created");
        if scheduled_for.is_none() {
            return self.act(&Actor::System, &id, Command::Start).await;
        }
        Ok(doc)
    }

    /// One whole room, every member loaded (tools and tests; views read less, see
    /// [`Control::view`]).
    pub async fn room(&self, id: &RoomId) -> Result<RoomDoc, ControlError> {
        self.room_in(id, &Scope::all()).await
    }

    /// One room's header and the records `scope` names.
    pub async fn room_in(&self, id: &RoomId, scope: &Scope) -> Result<RoomDoc, ControlError> {
        self.inner
            .store
            .room(id, scope)
            .await?
            .ok_or_else(|| ControlError::not_found("room", id.as_str()))
    }

    /// The room as `viewer` (a user, or `None` for a server) sees it: header, counts, stage,
    /// their own membership, and for moderators the first raised hands, the first page of the
    /// audience and the first bans and kicks (named from the room's statistics, which keep the
    /// names of whoever was removed).
    pub async fn view(
        &self,
        id: &RoomId,
        viewer: Option<&UserId>,
    ) -> Result<RoomView, ControlError> {
        self.view_with(id, viewer, false).await
    }

    /// The room as [`Control::view`] shows it, to the holder of a live invitation to it (who
    /// may see a private room before accepting).
    pub async fn invited_view(
        &self,
        id: &RoomId,
        viewer: Option<&UserId>,
    ) -> Result<RoomView, ControlError> {
        self.view_with(id, viewer, true).await
    }

    async fn view_with(
        &self,
        id: &RoomId,
        viewer: Option<&UserId>,
        invited: bool,
    ) -> Result<RoomView, ControlError> {
        let store = &self.inner.store;
        let scope = Scope::users(viewer.cloned()).with_stage();
        let doc = self.room_in(id, &scope).await?;
        if !invited && !view::may_see(&doc, viewer) {
            return Err(ControlError::not_found("room", id.as_str()));
        }
        if !view::moderates(&doc, viewer) {
            return Ok(view::room(&doc, viewer, None));
        }
        let hands = store.hands(id, HANDS_SHOWN).await?;
        let audience = store.audience(id, None, AUDIENCE_PAGE).await?;
        let bans = store.bans(id, BANS_SHOWN).await?;
        let kicks = store.kicks(id, BANS_SHOWN).await?;
        // Names of the hands' owners.
        let doc = if hands.is_empty() {
            doc
        } else {
            let users = viewer
                .cloned()
                .into_iter()
                .chain(hands.iter().map(|(u, _)| u.clone()));
            self.room_in(id, &Scope::users(users).with_stage()).await?
        };
        let extras = view::Extras {
            hands,
            audience,
            bans,
            kicks,
        };
        Ok(view::room(&doc, viewer, Some(&extras)))
    }

    /// A page of the audience, by user id after `after`, as `viewer` (a user, or `None` for a
    /// server) may see it.
    ///
    /// Hosts, co-hosts and servers see every member not on stage, with presence, hands and
    /// mute state ([`view::Sight::Moderator`]). Any other member of the room sees who of the
    /// audience is connected now, by name ([`view::Sight::Member`]), as people in a room see
    /// each other. Whoever is not a member (never joined, left, kicked or banned: all of them
    /// have no member record) is refused with 403 `not_a_member`, so that leaving a room or
    /// being removed from it also ends seeing who is in it.
    ///
    /// A member's page skips members not connected now; to keep a page useful in a room of
    /// many absent members it reads at most [`MEMBER_SCAN_PAGES`] store pages of `limit`, and
    /// may then end short of `limit` with a cursor. Either way the cost of a call is bounded by
    /// `limit`, never by the room's size.
    pub async fn audience(
        &self,
        id: &RoomId,
        viewer: Option<&UserId>,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(AudiencePage, view::Sight), ControlError> {
        let doc = self.room_in(id, &Scope::users(viewer.cloned())).await?;
        let (mut page, sight) = self.audience_of(&doc, viewer, after, limit).await?;
        if !doc.room.idle.show_away {
            for (_, m, _) in &mut page.members {
                m.away = false;
            }
        }
        Ok((page, sight))
    }

    async fn audience_of(
        &self,
        doc: &RoomDoc,
        viewer: Option<&UserId>,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(AudiencePage, view::Sight), ControlError> {
        let store = &self.inner.store;
        let id = &doc.room.id;
        let limit = limit.clamp(1, MAX_AUDIENCE_PAGE);
        match view::sight(doc, viewer) {
            view::Sight::Moderator => {
                let page = store.audience(id, after, limit).await?;
                return Ok((page, view::Sight::Moderator));
            }
            view::Sight::Member => {}
            // A private room does not exist for whoever may not know of it.
            view::Sight::Outsider if !view::may_see(doc, viewer) => {
                return Err(ControlError::not_found("room", id.as_str()));
            }
            view::Sight::Outsider => {
                return Err(ControlError::forbidden(
                    "not_a_member",
                    "join the room to see who is in it",
                ));
            }
        }
        let mut out = AudiencePage::default();
        let mut cursor = after.cloned();
        for _ in 0..MEMBER_SCAN_PAGES {
            let page = store.audience(id, cursor.as_ref(), limit).await?;
            let mut scanned = page.members.into_iter();
            for (u, m, hand) in scanned.by_ref() {
                cursor = Some(u.clone());
                if m.present {
                    out.members.push((u, m, hand));
                    if out.members.len() == limit {
                        break;
                    }
                }
            }
            let more = scanned.len() > 0 || page.next.is_some();
            if !more {
                return Ok((out, view::Sight::Member));
            }
            if out.members.len() == limit {
                break;
            }
            // Where the store's page ended (its last member may have lost its record).
            if page.next.is_some() {
                cursor = page.next;
            }
        }
        out.next = cursor;
        Ok((out, view::Sight::Member))
    }

    /// A room's audit log (who did what to whom, when), for its host and servers only.
    pub async fn audit(
        &self,
        id: &RoomId,
        viewer: Option<&UserId>,
    ) -> Result<Vec<AuditEntry>, ControlError> {
        let doc = self.room_in(id, &Scope::users(viewer.cloned())).await?;
        if !view::may_see(&doc, viewer) {
            return Err(ControlError::not_found("room", id.as_str()));
        }
        if viewer.is_some_and(|u| *u != doc.room.host) {
            return Err(ControlError::forbidden(
                "not_allowed",
                "only the room's host reads its audit log",
            ));
        }
        self.inner.store.audit(id).await
    }

    /// Rooms in `states`.
    pub async fn rooms(&self, states: &[RoomState]) -> Result<Vec<RoomDoc>, ControlError> {
        self.inner.store.rooms(states).await
    }

    /// Runs `command` on room `id` and carries out its effects. Returns the room afterwards.
    pub async fn act(
        &self,
        actor: &Actor,
        id: &RoomId,
        command: Command,
    ) -> Result<RoomDoc, ControlError> {
        self.act_at(actor, id, command, now_ms()).await
    }

    /// [`Control::act`] at `now` (unix ms): for the sweeps, and for tests with simulated time.
    pub async fn act_at(
        &self,
        actor: &Actor,
        id: &RoomId,
        command: Command,
        now: u64,
    ) -> Result<RoomDoc, ControlError> {
        let follows_host = match (&command, actor) {
            (Command::Own(Action::RaiseHand), Actor::User(u)) => {
                let doc = self.room_in(id, &Scope::header()).await?;
                self.inner
                    .store
                    .follows(u)
                    .await?
                    .contains(&Follow::User(doc.room.host.clone()))
            }
            _ => false,
        };
        // A transfer demotes the current host: their record is needed too.
        let host = match &command {
            Command::Target(Action::TransferHost, _) => {
                Some(self.room_in(id, &Scope::header()).await?.room.host)
            }
            _ => None,
        };
        let scope = room::scope(actor, &command, host.as_ref());
        let archive = matches!(command, Command::End);
        let cx = Context {
            now,
            follows_host,
            kick_cooldown_ms: self.inner.config.kick_cooldown * 1000,
            open_window_ms: self.inner.config.schedule_open_window * 1000,
            seat_grace_ms: self.inner.config.seat_grace * 1000,
        };
        let mut after = None;
        let effects = self
            .inner
            .store
            .update_room(id, &scope, &mut |doc| {
                let fx = room::apply(doc, actor, command.clone(), &cx)?;
                after = Some(doc.clone());
                Ok(fx)
            })
            .await?;
        self.release_all(id, &effects.released).await?;
        let series = after.as_ref().and_then(|d| d.room.series.clone());
        self.announce(&effects.events, series.as_ref());
        self.announce_command(actor, id, &command);
        let ended = archive
            && effects
                .events
                .iter()
                .any(|e| matches!(e, Event::RoomEnded { .. }));
        self.publish(effects).await?;
        if let Some(action) = audited(&command) {
            let entry = AuditEntry {
                at: cx.now,
                actor: match actor {
                    Actor::User(u) => Some(u.clone()),
                    Actor::System => None,
                },
                action,
                target: match &command {
                    Command::Target(_, t) => Some(t.clone()),
                    _ => None,
                },
            };
            if let Err(e) = self.inner.store.append_audit(id, &entry).await {
                tracing::warn!(room = %id, error = %e, "audit entry not recorded");
            }
            self.announce_audit(id, &entry);
        }
        if archive {
            self.inner
                .store
                .update_room(id, &Scope::header(), &mut |doc| {
                    let fx = room::apply(doc, &Actor::System, Command::Archive, &cx)?;
                    after = Some(doc.clone());
                    Ok(fx)
                })
                .await?;
            tracing::info!(room = %id, "room ended");
        }
        let after = after.ok_or_else(|| ControlError::unavailable("the store returned no room"))?;
        if ended && after.room.schedule.repeat.is_some() {
            // Only the command that ended it gets here: one next occurrence per occurrence.
            if let Err(e) = self.schedule_next(&after).await {
                tracing::warn!(room = %id, error = %e, "next occurrence not scheduled");
            }
        }
        Ok(after)
    }

    /// Changes a room's description, limits or schedule (host or co-host; a server may too),
    /// checked as at creation.
    pub async fn edit(
        &self,
        actor: &Actor,
        id: &RoomId,
        changes: room::Edit,
    ) -> Result<RoomDoc, ControlError> {
        let text = |field, v: Option<String>, min, max| {
            v.map(|v| model::text(field, &v, min, max)).transpose()
        };
        let limit = self.inner.config.max_participants;
        let now = now_ms();
        let (scheduled_for, schedule) =
            if changes.scheduled_for.is_some() || changes.schedule.is_some() {
                let current = self.room_in(id, &Scope::header()).await?.room;
                let schedule = changes.schedule.clone().unwrap_or(current.schedule);
                let at = check_schedule(
                    changes.scheduled_for.or(current.scheduled_for),
                    &schedule,
                    now,
                )?;
                (at, changes.schedule)
            } else {
                (None, None)
            };
        let edit = room::Edit {
            title: text("title", changes.title, 1, model::MAX_TITLE)?,
            topic: text("topic", changes.topic, 0, model::MAX_TOPIC)?,
            description: text(
                "description",
                changes.description,
                0,
                model::MAX_DESCRIPTION,
            )?,
            max_participants: changes
                .max_participants
                .map(|m| check_max(m, limit))
                .transpose()?,
            scheduled_for,
            schedule,
            ..changes
        };
        self.act(actor, id, Command::Edit(edit)).await
    }

    /// The member's own state as their client reports it: away (page hidden), deafened.
    pub async fn presence_state(
        &self,
        user: &UserId,
        id: &RoomId,
        away: Option<bool>,
        deafened: Option<bool>,
    ) -> Result<RoomDoc, ControlError> {
        self.act(
            &Actor::User(user.clone()),
            id,
            Command::Presence { away, deafened },
        )
        .await
    }

    async fn publish(&self, effects: Effects) -> Result<(), ControlError> {
        self.publish_with(effects, Vec::new()).await
    }

    /// Joins `user` to room `id` (one active room per user) and mints their media token.
    pub async fn join(
        &self,
        user: &UserId,
        name: &str,
        id: &RoomId,
    ) -> Result<Grant, ControlError> {
        let name = model::text("name", name, 1, model::MAX_NAME)?;
        if let Some(other) = self.inner.store.claim_active(user, id).await? {
            if !self.release_stale(user, &other).await? {
                return Err(self.already_in(&other).await);
            }
            if let Some(again) = self.inner.store.claim_active(user, id).await? {
                return Err(self.already_in(&again).await);
            }
        }
        let join = Command::Join { name: name.clone() };
        let mut joined = self.act(&Actor::User(user.clone()), id, join.clone()).await;
        if joined.as_ref().is_err_and(|e| e.code == "room_full") && self.release_seats(id).await? {
            joined = self.act(&Actor::User(user.clone()), id, join).await;
        }
        let doc = match joined {
            Ok(d) => d,
            Err(e) => {
                self.inner.store.release_active(user, id).await?;
                return Err(e);
            }
        };
        let (can_publish, can_publish_data, attributes) = room::participant_view(&doc, user)
            .ok_or_else(|| ControlError::unavailable("joined member vanished"))?;
        let role = doc
            .members
            .get(user)
            .map_or(model::Role::Listener, |m| m.role);
        let token = self.inner.keys.media_token(
            id,
            user,
            &name,
            (can_publish, can_publish_data),
            &attributes,
            Duration::from_secs(self.inner.config.token_ttl),
        )?;
        Ok(Grant {
            token,
            role,
            identity: user.clone(),
            media_url: self.media_url_for(&doc, user, role, can_publish).await?,
        })
    }

    /// Frees the seats of a full room's members who hold none any more: not connected for the
    /// seat grace since they took their token or their session dropped. Reads the whole room,
    /// which only a join into a full room does. Returns whether any seat was freed.
    async fn release_seats(&self, id: &RoomId) -> Result<bool, ControlError> {
        let now = now_ms();
        let grace = self.inner.config.seat_grace * 1000;
        let ghosts: Vec<UserId> = self
            .room(id)
            .await?
            .members
            .iter()
            .filter(|(_, m)| m.is_ghost(now, grace))
            .map(|(u, _)| u.clone())
            .collect();
        if ghosts.is_empty() {
            return Ok(false);
        }
        let count = ghosts.len();
        self.apply_all(id, &[Command::ReleaseSeats(ghosts)]).await?;
        metrics::counter!(crate::telemetry::SEATS_RELEASED).increment(count as u64);
        tracing::info!(room = %id, seats = count, "seats of members who never came or dropped released");
        Ok(true)
    }

    /// The 409 for a user still in room `other`, naming it (id and title) so that a client can
    /// offer to leave it and join the new one.
    async fn already_in(&self, other: &RoomId) -> ControlError {
        let title = match self.inner.store.room(other, &Scope::header()).await {
            Ok(Some(doc)) => doc.room.title,
            _ => String::new(),
        };
        let named = if title.is_empty() {
            format!("room {other}")
        } else {
            format!("{title:?} ({other})")
        };
        ControlError::conflict(
            "already_in_room",
            format!("you are in {named}; leave it first"),
        )
        .about_room(other.as_str(), title)
    }

    /// Ends `user`'s membership of `other` if they have left it in all but name: not
    /// connected for the seat grace. Returns whether the claim is gone.
    async fn release_stale(&self, user: &UserId, other: &RoomId) -> Result<bool, ControlError> {
        let doc = self
            .inner
            .store
            .room(other, &Scope::users([user.clone()]))
            .await?;
        let stale = match &doc {
            None => true,
            Some(d) if matches!(d.room.state, RoomState::Ended | RoomState::Archived) => true,
            Some(d) => match d.members.get(user) {
                None => true,
                Some(m) => m.is_ghost(now_ms(), self.inner.config.seat_grace * 1000),
            },
        };
        if !stale {
            return Ok(false);
        }
        if doc.as_ref().is_some_and(|d| d.members.contains_key(user)) {
            self.act(
                &Actor::User(user.clone()),
                other,
                Command::Own(Action::Leave),
            )
            .await?;
        }
        self.inner.store.release_active(user, other).await?;
        Ok(true)
    }

    /// The media plane's question before a session joins: may `identity` enter room `name`,
    /// and with which permission and attributes? `Ok(None)` for rooms the control plane does
    /// not own (plain LiveKit rooms).
    pub async fn admit(
        &self,
        name: &str,
        identity: &str,
    ) -> Result<Option<(bool, bool, std::collections::BTreeMap<String, String>)>, ControlError>
    {
        let Ok(id) = RoomId::parse(name) else {
            return Ok(None);
        };
        let user = UserId::parse(identity)
            .map_err(|_| ControlError::forbidden("not_a_member", "not a member of this room"))?;
        let Some(doc) = self
            .inner
            .store
            .room(&id, &Scope::users([user.clone()]))
            .await?
        else {
            return Ok(None);
        };
        if doc.bans.contains(&user) {
            return Err(ControlError::forbidden("banned", "banned from this room"));
        }
        if doc.kicks.get(&user).is_some_and(|&until| until > now_ms()) {
            return Err(ControlError::forbidden(
                "kicked",
                "removed from this room; the cooldown has not passed",
            ));
        }
        if doc.room.state != RoomState::Live {
            return Err(ControlError::conflict(
                "room_not_live",
                "the room is not live",
            ));
        }
        let view = room::participant_view(&doc, &user);
        let moderates = doc.members.get(&user).is_some_and(|m| m.role.moderates());
        if moderates && self.is_edge_of(&doc) {
            // Hosts and co-hosts join on the origin, whose clients see every node's listeners
            // (an edge's see its own); a stale URL or a token minted for another node must not
            // put them where they would moderate a part of the audience only.
            return Err(ControlError::conflict(
                "moderate_on_origin",
                "this room's hosts join on its origin node: ask POST /api/rooms/{id}/token where to connect",
            ));
        }
        if view.is_some() {
            // On an edge, the relay link opens the media room first, as the origin's: the
            // origin alone reports the room's start and end to webhooks.
            self.relay_if_edge(&doc).await;
            // The control plane owns the room's lifetime: should the media room have closed
            // (empty past its timeout, or deleted through the RoomService API) while the room
            // is live, it comes back with the room's limits, never the defaults.
            let create = MediaCommand::CreateRoom {
                room: id.clone(),
                max_participants: doc.room.max_participants,
                recording: doc.room.recording,
            };
            if let Some(create) = replay::for_this_node(&self.inner, &create).await
                && let Err(e) = self.inner.media.apply(&create).await
            {
                tracing::warn!(room = %id, error = %e, "media room not created");
            }
            // The joining client's snapshot counts those connected through other nodes.
            self.present_elsewhere(&id, &doc.counts().instances).await;
        }
        match view {
            Some(view) => Ok(Some(view)),
            None => Err(ControlError::forbidden(
                "not_a_member",
                "join the room through the API first",
            )),
        }
    }

    /// The media plane closed room `name` (empty past its timeout, or deleted through the
    /// RoomService API): whoever the books still show connected to it through this instance is
    /// recorded as gone. The room itself lives on until the control plane ends it; the next
    /// admission recreates the media room.
    pub async fn media_room_finished(&self, name: &str) {
        let Ok(id) = RoomId::parse(name) else {
            return;
        };
        let doc = match self.room(&id).await {
            Ok(d) => d,
            Err(e) => {
                if e.status != 404 {
                    tracing::warn!(room = %id, error = %e, "cannot read the room");
                }
                return;
            }
        };
        let instance = &self.inner.instance;
        let commands: Vec<Command> = doc
            .present()
            .filter(|(_, m)| m.instance.as_ref() == Some(instance))
            .map(|(u, _)| Command::Disconnected(u.clone(), instance.clone()))
            .collect();
        for chunk in commands.chunks(256) {
            if let Err(e) = self.apply_all(&id, chunk).await {
                tracing::warn!(room = %id, error = %e, "cannot record departures");
            }
        }
    }

    /// The media plane saw `identity` connect to or leave room `name`.
    pub async fn presence(&self, name: &str, identity: &str, connected: bool) {
        let event = if connected {
            MediaEvent::Connected
        } else {
            MediaEvent::Disconnected
        };
        self.media_events(vec![(name.to_owned(), identity.to_owned(), event)])
            .await;
    }

    /// The media plane detected `identity` starting or stopping speaking in room `name`.
    pub async fn speaking(&self, name: &str, identity: &str, on: bool) {
        let event = if on {
            MediaEvent::SpeakingStarted
        } else {
            MediaEvent::SpeakingStopped
        };
        self.media_events(vec![(name.to_owned(), identity.to_owned(), event)])
            .await;
    }

    /// Records what the media plane saw (room name, identity, event), coalesced: one store
    /// update per room for the whole batch, touching only the members it names, and one
    /// audience event per room. Rooms the control plane does not own are ignored.
    pub async fn media_events(&self, events: Vec<(String, String, MediaEvent)>) {
        let instance = &self.inner.instance;
        let mut by_room: BTreeMap<RoomId, Vec<Command>> = BTreeMap::new();
        for (name, identity, event) in events {
            let (Ok(id), Ok(user)) = (RoomId::parse(&name), UserId::parse(&identity)) else {
                continue;
            };
            let command = match event {
                MediaEvent::Connected => Command::Connected(user, instance.clone()),
                MediaEvent::Disconnected => Command::Disconnected(user, instance.clone()),
                MediaEvent::Left => Command::Left(user, instance.clone()),
                MediaEvent::SpeakingStarted => Command::Speaking(user, true),
                MediaEvent::SpeakingStopped => Command::Speaking(user, false),
                MediaEvent::Muted => Command::MediaMuted(user, true),
                MediaEvent::Unmuted => Command::MediaMuted(user, false),
            };
            by_room.entry(id).or_default().push(command);
        }
        for (id, commands) in by_room {
            if let Err(e) = self.apply_all(&id, &commands).await
                && e.status != 404
            {
                tracing::warn!(room = %id, error = %e, "presence not recorded");
            }
        }
    }

    /// Runs system `commands` on one room in one store update; their audience events are
    /// coalesced into the last one.
    async fn apply_all(&self, id: &RoomId, commands: &[Command]) -> Result<(), ControlError> {
        let mut users: Vec<UserId> = Vec::new();
        for c in commands {
            users.extend(room::scope(&Actor::System, c, None).users);
        }
        users.sort();
        users.dedup();
        let cx = Context {
            now: now_ms(),
            follows_host: false,
            kick_cooldown_ms: self.inner.config.kick_cooldown * 1000,
            open_window_ms: self.inner.config.schedule_open_window * 1000,
            seat_grace_ms: self.inner.config.seat_grace * 1000,
        };
        metrics::histogram!(crate::telemetry::MEDIA_EVENTS_GROUP).record(commands.len() as f64);
        let mut present = None;
        let mut effects = self
            .inner
            .store
            .update_room(id, &Scope::users(users), &mut |doc| {
                let mut all = Effects::default();
                for c in commands {
                    let fx = room::apply(doc, &Actor::System, c.clone(), &cx)?;
                    all.media.extend(fx.media);
                    all.events.extend(fx.events);
                    all.released.extend(fx.released);
                }
                // Presence changed: every node's clients learn the room-wide count.
                present = all
                    .events
                    .iter()
                    .any(|e| matches!(e, Event::Audience { .. }))
                    .then(|| doc.counts().instances);
                Ok(all)
            })
            .await?;
        // Only the last audience count of the batch matters.
        let last = effects
            .events
            .iter()
            .rposition(|e| matches!(e, Event::Audience { .. }));
        let mut i = 0;
        effects.events.retain(|e| {
            let keep = !matches!(e, Event::Audience { .. }) || Some(i) == last;
            i += 1;
            keep
        });
        self.release_all(id, &effects.released).await?;
        // Presence changes release nobody; a seat given up (`ReleaseSeats`) is a member leaving.
        for u in &effects.released {
            let mut data = serde_json::Map::new();
            data.insert("reason".into(), "seat_released".into());
            self.hook(&crate::webhook::Hook {
                event: "member_left",
                room: id.to_string(),
                user: Some(u.to_string()),
                actor: None,
                data,
            });
        }
        let presence = present
            .map(|instances| crate::events::RoomPresence {
                room: id.clone(),
                instances,
            })
            .into_iter()
            .collect();
        self.publish_with(effects, presence).await
    }

    /// Ends the one-active-room claims of `users` on room `id`, many at once (ending a big
    /// room releases every member: the store groups them).
    async fn release_all(&self, id: &RoomId, users: &[UserId]) -> Result<(), ControlError> {
        let store = &self.inner.store;
        for chunk in users.chunks(64) {
            let releases = chunk.iter().map(|u| store.release_active(u, id));
            for result in futures_util::future::join_all(releases).await {
                result?;
            }
        }
        Ok(())
    }

    /// Starts or stops following a user or room.
    /// Following an occurrence of a recurring room follows its series (its first room), so
    /// that the reminders of every later occurrence reach the follower.
    pub async fn follow(&self, user: &UserId, what: &Follow, on: bool) -> Result<(), ControlError> {
        let series;
        let what = match what {
            Follow::Room(r) => {
                let doc = self.room_in(r, &Scope::users([user.clone()])).await?;
                // A private room does not exist for whoever may not know of it.
                if !view::may_see(&doc, Some(user)) {
                    return Err(ControlError::not_found("room", r.as_str()));
                }
                series = doc.room.series.map(Follow::Room);
                series.as_ref().unwrap_or(what)
            }
            Follow::User(_) => what,
        };
        if *what == Follow::User(user.clone()) {
            return Err(ControlError::bad_request(
                "invalid_follow",
                "you cannot follow yourself",
            ));
        }
        self.inner.store.set_follow(user, what, on).await
    }
}

impl Control {
    /// Marks members connected through instances that stopped their heartbeat as gone. The
    /// room's header counts its members per instance, so only a room with members of a dead
    /// instance is read whole.
    async fn forget_dead_instances(&self, doc: &RoomDoc) {
        let mut dead = Vec::new();
        for instance in doc.counts().instances.keys() {
            let alive = *instance == self.inner.instance
                || self.inner.store.alive(instance).await.unwrap_or(true);
            if !alive {
                dead.push(instance.clone());
            }
        }
        if dead.is_empty() {
            return;
        }
        let id = &doc.room.id;
        let whole = match self.room(id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(room = %id, error = %e, "cannot read the room");
                return;
            }
        };
        let commands: Vec<Command> = whole
            .present()
            .filter_map(|(u, m)| {
                let i = m.instance.as_ref().filter(|i| dead.contains(i))?;
                Some(Command::Disconnected(u.clone(), i.clone()))
            })
            .collect();
        tracing::info!(room = %id, members = commands.len(), "members' instance is gone");
        for chunk in commands.chunks(256) {
            if let Err(e) = self.apply_all(id, chunk).await {
                tracing::warn!(room = %id, error = %e, "cannot record departures");
            }
        }
    }

    /// Deletes ended rooms whose retention has passed.
    async fn prune(&self) -> Result<usize, ControlError> {
        let retention = self.inner.config.ended_room_retention;
        if retention == 0 {
            return Ok(0);
        }
        let cutoff = now_ms().saturating_sub(retention.saturating_mul(1000));
        let ended = self
            .inner
            .store
            .rooms(&[RoomState::Ended, RoomState::Archived])
            .await?;
        let mut pruned = 0;
        for doc in ended {
            if doc.room.ended_at.is_some_and(|t| t < cutoff) {
                self.forget_files(&doc.room.id).await?;
                self.inner.store.remove_room(&doc.room.id).await?;
                pruned += 1;
            }
        }
        if pruned > 0 {
            metrics::counter!(crate::telemetry::ROOMS_PRUNED).increment(pruned as u64);
            tracing::info!(rooms = pruned, "ended rooms past their retention deleted");
        }
        Ok(pruned)
    }

    /// This instance's id (its heartbeat key and members' `instance`).
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }
}

/// The action a command puts in the room's audit log: moderation of a member, and the
/// room's start and end.
fn audited(command: &Command) -> Option<Action> {
    match command {
        Command::Target(action, _) => Some(*action),
        Command::Start => Some(Action::Start),
        Command::End => Some(Action::End),
        _ => None,
    }
}

/// Applies every instance's media commands to the local media plane and fans events out.
async fn consume(inner: std::sync::Weak<Inner>, mut rx: broadcast::Receiver<BusMessage>) {
    loop {
        let message = match rx.recv().await {
            Ok(m) => m,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "control bus lagged");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        for command in &message.media {
            let Some(command) = replay::for_this_node(&inner, command).await else {
                continue;
            };
            match inner.media.apply(&command).await {
                Ok(()) | Err(MediaError::NotFound) => {}
                Err(e) => tracing::warn!(error = %e, "media command failed"),
            }
        }
        for event in message.events {
            let _ = inner.events.send(event);
        }
        for (users, notification) in &message.notices {
            inner.streams.deliver(users, notification);
        }
        if !message.presence.is_empty() {
            Control {
                inner: inner.clone(),
            }
            .tell_presence(&message.presence)
            .await;
        }
        for (room, to) in message.moved {
            let control = Control {
                inner: inner.clone(),
            };
            // Off the bus's loop: a link is made while the next messages are delivered.
            tokio::spawn(async move { control.relink(&room, &to).await });
        }
    }
}

/// Keeps this instance's heartbeat, marks members of dead instances as gone, keeps the relays
/// of rooms this node serves as an edge, and ends live rooms that stayed empty past the timeout.
async fn sweep(inner: std::sync::Weak<Inner>) {
    let ttl_ms = match inner.upgrade() {
        Some(i) => i.config.presence_ttl * 1000,
        None => return,
    };
    // Three heartbeats per lifetime, and rooms checked at least every SWEEP.
    let period = SWEEP.min(Duration::from_millis(ttl_ms / 3).max(Duration::from_millis(100)));
    let mut tick = tokio::time::interval(period);
    let mut sweeps: u64 = 0;
    loop {
        tick.tick().await;
        sweeps += 1;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let control = Control { inner };
        if let Err(e) = control
            .inner
            .store
            .heartbeat(&control.inner.instance, ttl_ms)
            .await
        {
            tracing::warn!(error = %e, "heartbeat not recorded");
        }
        // The node's record has its own, faster heartbeat (`service/nodes.rs`); the metrics
        // of the registry are read here.
        control.count_nodes().await;
        let timeout = control.inner.config.empty_timeout * 1000;
        let rooms = match control.rooms(&[RoomState::Live]).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list live rooms");
                continue;
            }
        };
        let now = now_ms();
        for doc in &rooms {
            control.forget_dead_instances(doc).await;
        }
        control.keep_relays(&rooms).await;
        control.keep_presence(&rooms).await;
        let present = rooms.iter().map(|d| d.counts().present as usize).sum();
        crate::telemetry::rooms(rooms.len(), None, present);
        control.idle_rooms(&rooms, now).await;
        if let Err(e) = control.run_schedules(now).await {
            tracing::warn!(error = %e, "cannot run schedules");
        }
        if sweeps % PRUNE_EVERY == 1
            && let Err(e) = control.prune().await
        {
            tracing::warn!(error = %e, "cannot prune ended rooms");
        }
        for doc in rooms {
            if doc
                .room
                .empty_since
                .is_some_and(|t| now.saturating_sub(t) >= timeout)
            {
                tracing::info!(room = %doc.room.id, "room empty past its timeout");
                if let Err(e) = control
                    .act(&Actor::System, &doc.room.id, Command::End)
                    .await
                {
                    tracing::warn!(room = %doc.room.id, error = %e, "cannot end empty room");
                }
            }
        }
    }
}
