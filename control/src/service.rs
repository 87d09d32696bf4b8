//! The control plane's shell: runs commands against the store, carries their effects to the
//! media plane and the event stream of every instance, and keeps rooms tidy over time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::auth::{Keys, Principal};
use crate::clock::now_ms;
use crate::config::ControlConfig;
use crate::error::ControlError;
use crate::events::{BusMessage, Event};
use crate::media::{MediaError, MediaPlane};
use crate::model::{self, Room, RoomDoc, RoomId, RoomKind, RoomState, SpeakerMode, UserId};
use crate::permission::Action;
use crate::room::{self, Actor, Command, Context, Effects};
use crate::store::{Follow, Invite, Store};

/// How often live rooms are checked for the empty timeout.
const SWEEP: Duration = Duration::from_secs(5);

/// A newly joined member who has not connected to the media room yet keeps their
/// one-active-room claim this long.
const CONNECT_GRACE_MS: u64 = 60_000;

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
    /// Starts the control plane on `store`, driving `media`.
    pub fn start(
        store: Arc<dyn Store>,
        media: Arc<dyn MediaPlane>,
        keys: Keys,
        config: ControlConfig,
    ) -> Control {
        let mut id = [0u8; 5];
        let _ = getrandom::fill(&mut id);
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner {
            store,
            media,
            keys,
            config,
            instance: model::base32(&id),
            events,
            limits: Mutex::new(HashMap::new()),
        });
        tokio::spawn(consume(Arc::downgrade(&inner), inner.store.subscribe()));
        tokio::spawn(sweep(Arc::downgrade(&inner)));
        Control { inner }
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
            self.rate_limit(id, "room creation", 0.2, 5.0)?;
        }
        let limit = self.inner.config.max_participants;
        let max = new.max_participants.unwrap_or(limit);
        if max == 0 || max > limit {
            return Err(ControlError::bad_request(
                "invalid_field",
                format!("max_participants must be 1 to {limit}"),
            ));
        }
        let now = now_ms();
        if let Some(at) = new.scheduled_for
            && at + 60_000 < now
        {
            return Err(ControlError::bad_request(
                "invalid_field",
                "scheduled_for is in the past",
            ));
        }
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
            scheduled_for: new.scheduled_for,
            started_at: None,
            ended_at: None,
            empty_since: None,
            media_url: (!self.inner.config.public_url.is_empty())
                .then(|| self.inner.config.public_url.clone()),
        });
        // The host's name, for cards and previews before they join.
        if let Principal::User { id, name } = who
            && *id == host
        {
            doc.stats.names.insert(host.clone(), name.clone());
        }
        self.inner.store.insert_room(&doc).await?;
        let id = doc.room.id.clone();
        self.publish(Effects {
            events: vec![Event::RoomCreated {
                room: id.clone(),
                title: doc.room.title.clone(),
                scheduled_for: doc.room.scheduled_for,
            }],
            ..Default::default()
        })
        .await?;
        tracing::info!(room = %id, "room created");
        if new.scheduled_for.is_none() {
            return self.act(&Actor::System, &id, Command::Start).await;
        }
        Ok(doc)
    }

    /// One room.
    pub async fn room(&self, id: &RoomId) -> Result<RoomDoc, ControlError> {
        self.inner
            .store
            .room(id)
            .await?
            .ok_or_else(|| ControlError::not_found("room", id.as_str()))
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
        let follows_host = match (&command, actor) {
            (Command::Own(Action::RaiseHand), Actor::User(u)) => {
                let doc = self.room(id).await?;
                self.inner
                    .store
                    .follows(u)
                    .await?
                    .contains(&Follow::User(doc.room.host.clone()))
            }
            _ => false,
        };
        let archive = matches!(command, Command::End);
        let cx = Context {
            now: now_ms(),
            follows_host,
            kick_cooldown_ms: self.inner.config.kick_cooldown * 1000,
        };
        let mut after = None;
        let effects = self
            .inner
            .store
            .update_room(id, &mut |doc| {
                let fx = room::apply(doc, actor, command.clone(), &cx)?;
                after = Some(doc.clone());
                Ok(fx)
            })
            .await?;
        for user in &effects.released {
            self.inner.store.release_active(user, id).await?;
        }
        self.publish(effects).await?;
        if archive {
            self.inner
                .store
                .update_room(id, &mut |doc| {
                    let fx = room::apply(doc, &Actor::System, Command::Archive, &cx)?;
                    after = Some(doc.clone());
                    Ok(fx)
                })
                .await?;
            tracing::info!(room = %id, "room ended");
        }
        after.ok_or_else(|| ControlError::unavailable("the store returned no room"))
    }

    async fn publish(&self, effects: Effects) -> Result<(), ControlError> {
        if effects.media.is_empty() && effects.events.is_empty() {
            return Ok(());
        }
        self.inner
            .store
            .publish(&BusMessage {
                origin: self.inner.instance.clone(),
                media: effects.media,
                events: effects.events,
            })
            .await
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
                return Err(ControlError::conflict(
                    "already_in_room",
                    format!("you are in room {other}; leave it first"),
                ));
            }
            if let Some(again) = self.inner.store.claim_active(user, id).await? {
                return Err(ControlError::conflict(
                    "already_in_room",
                    format!("you are in room {again}; leave it first"),
                ));
            }
        }
        let joined = self
            .act(
                &Actor::User(user.clone()),
                id,
                Command::Join { name: name.clone() },
            )
            .await;
        let doc = match joined {
            Ok(d) => d,
            Err(e) => {
                self.inner.store.release_active(user, id).await?;
                return Err(e);
            }
        };
        let (can_publish, attributes) = room::participant_view(&doc, user)
            .ok_or_else(|| ControlError::unavailable("joined member vanished"))?;
        let role = doc
            .members
            .get(user)
            .map_or(model::Role::Listener, |m| m.role);
        let token = self.inner.keys.media_token(
            id,
            user,
            &name,
            can_publish,
            &attributes,
            Duration::from_secs(self.inner.config.token_ttl),
        )?;
        Ok(Grant {
            token,
            role,
            identity: user.clone(),
            media_url: doc.room.media_url.clone(),
        })
    }

    /// Ends `user`'s membership of `other` if they have left it in all but name: not
    /// connected, and not just joined. Returns whether the claim is gone.
    async fn release_stale(&self, user: &UserId, other: &RoomId) -> Result<bool, ControlError> {
        let doc = self.inner.store.room(other).await?;
        let stale = match &doc {
            None => true,
            Some(d) if matches!(d.room.state, RoomState::Ended | RoomState::Archived) => true,
            Some(d) => match d.members.get(user) {
                None => true,
                Some(m) => !m.present && now_ms().saturating_sub(m.joined_at) > CONNECT_GRACE_MS,
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
    ) -> Result<Option<(bool, std::collections::BTreeMap<String, String>)>, ControlError> {
        let Ok(id) = RoomId::parse(name) else {
            return Ok(None);
        };
        let Some(doc) = self.inner.store.room(&id).await? else {
            return Ok(None);
        };
        let user = UserId::parse(identity)
            .map_err(|_| ControlError::forbidden("not_a_member", "not a member of this room"))?;
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
        match room::participant_view(&doc, &user) {
            Some(view) => Ok(Some(view)),
            None => Err(ControlError::forbidden(
                "not_a_member",
                "join the room through the API first",
            )),
        }
    }

    /// The media plane saw `identity` connect to or leave room `name`.
    pub async fn presence(&self, name: &str, identity: &str, connected: bool) {
        let (Ok(id), Ok(user)) = (RoomId::parse(name), UserId::parse(identity)) else {
            return;
        };
        let instance = self.inner.instance.clone();
        let command = if connected {
            Command::Connected(user, instance)
        } else {
            Command::Disconnected(user, instance)
        };
        match self.act(&Actor::System, &id, command).await {
            Ok(_) => {}
            Err(e) if e.status == 404 => {}
            Err(e) => tracing::warn!(room = %id, error = %e, "presence not recorded"),
        }
    }

    /// The media plane detected `identity` starting or stopping speaking in room `name`.
    pub async fn speaking(&self, name: &str, identity: &str, on: bool) {
        let (Ok(id), Ok(user)) = (RoomId::parse(name), UserId::parse(identity)) else {
            return;
        };
        match self
            .act(&Actor::System, &id, Command::Speaking(user, on))
            .await
        {
            Ok(_) => {}
            Err(e) if e.status == 404 => {}
            Err(e) => tracing::warn!(room = %id, error = %e, "speaking time not recorded"),
        }
    }

    /// Starts or stops following a user or room.
    pub async fn follow(&self, user: &UserId, what: &Follow, on: bool) -> Result<(), ControlError> {
        if let Follow::Room(r) = what {
            self.room(r).await?;
        }
        if *what == Follow::User(user.clone()) {
            return Err(ControlError::bad_request(
                "invalid_follow",
                "you cannot follow yourself",
            ));
        }
        self.inner.store.set_follow(user, what, on).await
    }

    /// Makes an invitation link for room `id` (host or co-host).
    pub async fn invite(
        &self,
        who: &UserId,
        id: &RoomId,
    ) -> Result<(String, Invite), ControlError> {
        let doc = self.room(id).await?;
        let moderator =
            doc.members.get(who).is_some_and(|m| m.role.moderates()) || doc.room.host == *who;
        if !moderator {
            return Err(ControlError::forbidden(
                "not_allowed",
                "only the host or a co-host may invite",
            ));
        }
        let mut bytes = [0u8; 20];
        getrandom::fill(&mut bytes)
            .map_err(|_| ControlError::unavailable("no randomness for an invitation"))?;
        let token = model::base32(&bytes);
        let invite = Invite {
            room: id.clone(),
            created_by: who.clone(),
            expires_at: now_ms() + self.inner.config.invite_ttl * 1000,
        };
        self.inner.store.put_invite(&token, &invite).await?;
        Ok((token, invite))
    }

    /// Looks up a live invitation.
    pub async fn invitation(&self, token: &str) -> Result<Invite, ControlError> {
        let valid = token.len() == 32 && token.bytes().all(|b| b.is_ascii_alphanumeric());
        let invite = if valid {
            self.inner.store.invite(token).await?
        } else {
            None
        };
        match invite {
            Some(i) if i.expires_at > now_ms() => Ok(i),
            _ => Err(ControlError::not_found("invitation", token)),
        }
    }

    /// Accepts an invitation: the user may raise a hand in "invited" rooms.
    pub async fn accept(&self, user: &UserId, token: &str) -> Result<RoomDoc, ControlError> {
        let invite = self.invitation(token).await?;
        let user = user.clone();
        let mut after = None;
        self.inner
            .store
            .update_room(&invite.room, &mut |doc| {
                doc.invited.insert(user.clone());
                after = Some(doc.clone());
                Ok(Effects::default())
            })
            .await?;
        after.ok_or_else(|| ControlError::unavailable("the store returned no room"))
    }
}

impl Control {
    /// Marks members connected through instances that stopped their heartbeat as gone.
    async fn forget_dead_instances(&self, doc: &RoomDoc) {
        let mut verdicts: HashMap<&str, bool> = HashMap::new();
        for (user, m) in doc.present() {
            let Some(instance) = m.instance.as_deref() else {
                continue;
            };
            let alive = match verdicts.get(instance) {
                Some(&a) => a,
                None => {
                    let a = instance == self.inner.instance
                        || self.inner.store.alive(instance).await.unwrap_or(true);
                    verdicts.insert(instance, a);
                    a
                }
            };
            if !alive {
                tracing::info!(room = %doc.room.id, "member's instance is gone");
                let command = Command::Disconnected(user.clone(), instance.to_owned());
                if let Err(e) = self.act(&Actor::System, &doc.room.id, command).await {
                    tracing::warn!(room = %doc.room.id, error = %e, "cannot record departure");
                }
            }
        }
    }

    /// This instance's id (its heartbeat key and members' `instance`).
    pub fn instance(&self) -> &str {
        &self.inner.instance
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
            match inner.media.apply(command).await {
                Ok(()) | Err(MediaError::NotFound) => {}
                Err(e) => tracing::warn!(error = %e, "media command failed"),
            }
        }
        for event in message.events {
            let _ = inner.events.send(event);
        }
    }
}

/// Keeps this instance's heartbeat, marks members of dead instances as gone, and ends live
/// rooms that stayed empty past the timeout.
async fn sweep(inner: std::sync::Weak<Inner>) {
    let ttl_ms = match inner.upgrade() {
        Some(i) => i.config.presence_ttl * 1000,
        None => return,
    };
    // Three heartbeats per lifetime, and rooms checked at least every SWEEP.
    let period = SWEEP.min(Duration::from_millis(ttl_ms / 3).max(Duration::from_millis(100)));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
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
        let present = rooms.iter().map(|d| d.present().count()).sum();
        crate::telemetry::rooms(rooms.len(), None, present);
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
