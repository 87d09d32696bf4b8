//! The shared store: Redis, for several instances.
//!
//! Key schema (`{p}` is the configured prefix, `stoa:` by default; ids are checked before they
//! reach a key, see [`crate::model`]):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}room:{id}` | string | the room (JSON: title, kind, state, host, times) |
//! | `{p}room:{id}:participants` | hash | user → member (JSON: name, role, mute, presence) |
//! | `{p}room:{id}:requests` | hash | user → unix ms the hand was raised |
//! | `{p}room:{id}:bans` | set | banned users |
//! | `{p}room:{id}:kicks` | hash | user → unix ms until which they may not rejoin |
//! | `{p}room:{id}:invited` | set | users invited to speak |
//! | `{p}room:{id}:stats` | string | statistics (JSON) |
//! | `{p}rooms:{state}` | set | room ids by state (`scheduled`, `live`, `ended`, `archived`) |
//! | `{p}user:{id}:room` | string | the one room the user is in |
//! | `{p}user:{id}:follows` | set | `user:{id}` and `room:{id}` the user follows |
//! | `{p}user:{id}:profile` | string | the user's profile (JSON: bio, small avatar) |
//! | `{p}invite:{token}` | string | an invitation link (JSON), expiring with it |
//! | `{p}presence:{instance}` | string | an instance's heartbeat; expires when it stops (TTL) |
//! | `{p}lock:room:{id}` | string | who is changing the room now; expires after 5 s |
//! | `{p}bus` | pub/sub channel | each command's media changes and events, for every instance |
//!
//! A room changes atomically: writers take turns through the room's lock, then its keys are
//! `WATCH`ed, read, changed in memory and written back in one `MULTI`/`EXEC` (retried if they
//! changed anyway, e.g. after a lock expired), so concurrent approvals and lowered hands never
//! lose an update and a busy room does not starve its writers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::broadcast;

use super::{BUS_CAPACITY, Follow, Invite, Mutation, Profile, Store, json, parse};
use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{Member, Room, RoomDoc, RoomId, RoomState, RoomStats, UserId};
use crate::room::Effects;

/// Attempts of one room update before giving up under contention.
const ATTEMPTS: usize = 64;

/// Attempts to take a room's lock (1 to 4 ms apart: about 5 s in all).
const LOCK_ATTEMPTS: u64 = 2000;

/// How long a room's lock lasts if its holder never releases it.
const LOCK_MS: u64 = 5000;

/// Idle dedicated connections kept for transactions.
const POOL: usize = 8;

/// The Redis store.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    /// Shared connection for plain commands.
    shared: MultiplexedConnection,
    /// Dedicated connections for `WATCH` transactions (a `WATCH` belongs to its connection).
    pool: Mutex<Vec<MultiplexedConnection>>,
    bus: broadcast::Sender<BusMessage>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn redis_err(e: redis::RedisError) -> ControlError {
    ControlError::unavailable(format!("redis: {e}"))
}

fn state_name(state: RoomState) -> &'static str {
    match state {
        RoomState::Scheduled => "scheduled",
        RoomState::Live => "live",
        RoomState::Ended => "ended",
        RoomState::Archived => "archived",
    }
}

const STATES: [RoomState; 4] = [
    RoomState::Scheduled,
    RoomState::Live,
    RoomState::Ended,
    RoomState::Archived,
];

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`), keys under `prefix`, and starts relaying the
    /// bus channel to local subscribers.
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisStore, ControlError> {
        let client = redis::Client::open(url)
            .map_err(|e| ControlError::unavailable(format!("bad Redis URL: {e}")))?;
        let shared = client
            .get_multiplexed_async_connection()
            .await
            .map_err(redis_err)?;
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        let store = RedisStore {
            client: client.clone(),
            prefix: prefix.to_owned(),
            shared,
            pool: Mutex::new(Vec::new()),
            bus: bus.clone(),
        };
        // Subscribe before returning, so nothing published after connect is missed.
        let pubsub = subscribe(&client, &store.key("bus")).await?;
        tokio::spawn(relay(client, store.key("bus"), pubsub, bus));
        Ok(store)
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn room_keys(&self, id: &RoomId) -> [String; 7] {
        let base = self.key(&format!("room:{id}"));
        [
            base.clone(),
            format!("{base}:participants"),
            format!("{base}:requests"),
            format!("{base}:bans"),
            format!("{base}:kicks"),
            format!("{base}:invited"),
            format!("{base}:stats"),
        ]
    }

    async fn dedicated(&self) -> Result<MultiplexedConnection, ControlError> {
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match pooled {
            Some(c) => Ok(c),
            None => self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(redis_err),
        }
    }

    fn give_back(&self, con: MultiplexedConnection) {
        let mut pool = self
            .pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < POOL {
            pool.push(con);
        }
    }

    async fn load(
        &self,
        con: &mut MultiplexedConnection,
        id: &RoomId,
    ) -> Result<Option<RoomDoc>, ControlError> {
        let [room, participants, requests, bans, kicks, invited, stats] = self.room_keys(id);
        type Loaded = (
            Option<String>,
            HashMap<String, String>,
            HashMap<String, u64>,
            Vec<String>,
            HashMap<String, u64>,
            Vec<String>,
            Option<String>,
        );
        let (room, participants, requests, bans, kicks, invited, stats): Loaded = redis::pipe()
            .get(&room)
            .hgetall(&participants)
            .hgetall(&requests)
            .smembers(&bans)
            .hgetall(&kicks)
            .smembers(&invited)
            .get(&stats)
            .query_async(con)
            .await
            .map_err(redis_err)?;
        let Some(room) = room else {
            return Ok(None);
        };
        let room: Room = parse("room", room.as_bytes())?;
        let user = |s: &str| {
            UserId::parse(s)
                .map_err(|_| ControlError::unavailable(format!("corrupt user id in room {id}")))
        };
        let mut members = BTreeMap::new();
        for (u, m) in participants {
            let m: Member = parse("member", m.as_bytes())?;
            members.insert(user(&u)?, m);
        }
        let mut hands = BTreeMap::new();
        for (u, t) in requests {
            hands.insert(user(&u)?, t);
        }
        let mut kicked = BTreeMap::new();
        for (u, t) in kicks {
            kicked.insert(user(&u)?, t);
        }
        let bans = bans
            .iter()
            .map(|u| user(u))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let invited = invited
            .iter()
            .map(|u| user(u))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let stats: RoomStats = match stats {
            Some(s) => parse("stats", s.as_bytes())?,
            None => RoomStats::default(),
        };
        Ok(Some(RoomDoc {
            room,
            members,
            hands,
            bans,
            kicks: kicked,
            invited,
            stats,
        }))
    }

    /// One optimistic transaction on a room's keys, retried when they change under it.
    async fn transact(&self, id: &RoomId, f: &mut Mutation<'_>) -> Result<Effects, ControlError> {
        let keys = self.room_keys(id);
        let mut con = self.dedicated().await?;
        for _ in 0..ATTEMPTS {
            redis::cmd("WATCH")
                .arg(&keys)
                .query_async::<()>(&mut con)
                .await
                .map_err(redis_err)?;
            let Some(mut doc) = self.load(&mut con, id).await? else {
                redis::cmd("UNWATCH")
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(redis_err)?;
                self.give_back(con);
                return Err(ControlError::not_found("room", id.as_str()));
            };
            let before = doc.clone();
            let effects = match f(&mut doc) {
                Ok(e) => e,
                Err(e) => {
                    redis::cmd("UNWATCH")
                        .query_async::<()>(&mut con)
                        .await
                        .map_err(redis_err)?;
                    self.give_back(con);
                    return Err(e);
                }
            };
            if doc == before {
                redis::cmd("UNWATCH")
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(redis_err)?;
                self.give_back(con);
                return Ok(effects);
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            self.write(&mut pipe, &doc)?;
            let done: Option<()> = pipe.query_async(&mut con).await.map_err(redis_err)?;
            if done.is_some() {
                self.give_back(con);
                return Ok(effects);
            }
            // Another instance changed the room between WATCH and EXEC: run again.
        }
        Err(ControlError::unavailable(format!(
            "room {id} is changing too fast; try again"
        )))
    }

    /// Adds the writes of `doc` to an atomic pipeline.
    fn write(&self, pipe: &mut redis::Pipeline, doc: &RoomDoc) -> Result<(), ControlError> {
        let id = &doc.room.id;
        let [room, participants, requests, bans, kicks, invited, stats] = self.room_keys(id);
        pipe.set(&room, json(&doc.room)?).ignore();
        pipe.set(&stats, json(&doc.stats)?).ignore();
        pipe.del(&[&participants, &requests, &bans, &kicks, &invited])
            .ignore();
        if !doc.members.is_empty() {
            let items = doc
                .members
                .iter()
                .map(|(u, m)| Ok((u.as_str().to_owned(), json(m)?)))
                .collect::<Result<Vec<_>, ControlError>>()?;
            pipe.hset_multiple(&participants, &items).ignore();
        }
        if !doc.hands.is_empty() {
            let items: Vec<(&str, u64)> = doc.hands.iter().map(|(u, t)| (u.as_str(), *t)).collect();
            pipe.hset_multiple(&requests, &items).ignore();
        }
        if !doc.kicks.is_empty() {
            let items: Vec<(&str, u64)> = doc.kicks.iter().map(|(u, t)| (u.as_str(), *t)).collect();
            pipe.hset_multiple(&kicks, &items).ignore();
        }
        if !doc.bans.is_empty() {
            let items: Vec<&str> = doc.bans.iter().map(UserId::as_str).collect();
            pipe.sadd(&bans, items).ignore();
        }
        if !doc.invited.is_empty() {
            let items: Vec<&str> = doc.invited.iter().map(UserId::as_str).collect();
            pipe.sadd(&invited, items).ignore();
        }
        for state in STATES {
            let set = self.key(&format!("rooms:{}", state_name(state)));
            if state == doc.room.state {
                pipe.sadd(set, id.as_str()).ignore();
            } else {
                pipe.srem(set, id.as_str()).ignore();
            }
        }
        Ok(())
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> Result<redis::aio::PubSub, ControlError> {
    let mut pubsub = client.get_async_pubsub().await.map_err(redis_err)?;
    pubsub.subscribe(channel).await.map_err(redis_err)?;
    Ok(pubsub)
}

/// Forwards the bus channel to local subscribers, reconnecting when Redis goes away.
async fn relay(
    client: redis::Client,
    channel: String,
    mut pubsub: redis::aio::PubSub,
    bus: broadcast::Sender<BusMessage>,
) {
    loop {
        {
            let mut messages = pubsub.on_message();
            while let Some(msg) = messages.next().await {
                let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                match serde_json::from_slice::<BusMessage>(&payload) {
                    Ok(m) => {
                        let _ = bus.send(m);
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable bus message ignored"),
                }
            }
        }
        tracing::warn!("Redis subscription lost; reconnecting");
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(p) = subscribe(&client, &channel).await {
                pubsub = p;
                break;
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn insert_room(&self, doc: &RoomDoc) -> Result<(), ControlError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.write(&mut pipe, doc)?;
        let mut con = self.shared.clone();
        pipe.query_async::<()>(&mut con).await.map_err(redis_err)
    }

    async fn room(&self, id: &RoomId) -> Result<Option<RoomDoc>, ControlError> {
        let mut con = self.shared.clone();
        self.load(&mut con, id).await
    }

    async fn update_room(
        &self,
        id: &RoomId,
        f: &mut Mutation<'_>,
    ) -> Result<Effects, ControlError> {
        // Writers of one room take turns (a lock with an expiry, so a crashed holder cannot
        // block the room); WATCH below still guards against a holder whose lock expired.
        let lock = self.key(&format!("lock:room:{id}"));
        let mut token = [0u8; 10];
        getrandom::fill(&mut token)
            .map_err(|_| ControlError::unavailable("no randomness for a lock token"))?;
        let token = crate::model::base32(&token);
        let mut shared = self.shared.clone();
        let mut acquired = false;
        for attempt in 0..LOCK_ATTEMPTS {
            let got: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_MS)
                .query_async(&mut shared)
                .await
                .map_err(redis_err)?;
            if got.is_some() {
                acquired = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1 + attempt % 4)).await;
        }
        if !acquired {
            return Err(ControlError::unavailable(format!(
                "room {id} is busy; try again"
            )));
        }
        let result = self.transact(id, f).await;
        let release = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        if let Err(e) = release
            .key(&lock)
            .arg(&token)
            .invoke_async::<i64>(&mut shared)
            .await
        {
            tracing::warn!(error = %e, "room lock not released; it expires by itself");
        }
        result
    }

    async fn rooms(&self, states: &[RoomState]) -> Result<Vec<RoomDoc>, ControlError> {
        let mut con = self.shared.clone();
        let mut out = Vec::new();
        for &state in states {
            let ids: Vec<String> = con
                .smembers(self.key(&format!("rooms:{}", state_name(state))))
                .await
                .map_err(redis_err)?;
            for id in ids {
                let Ok(id) = RoomId::parse(&id) else {
                    continue;
                };
                if let Some(doc) = self.load(&mut con, &id).await?
                    && doc.room.state == state
                {
                    out.push(doc);
                }
            }
        }
        Ok(out)
    }

    async fn claim_active(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<Option<RoomId>, ControlError> {
        let mut con = self.shared.clone();
        let key = self.key(&format!("user:{user}:room"));
        let set: bool = con.set_nx(&key, room.as_str()).await.map_err(redis_err)?;
        if set {
            return Ok(None);
        }
        let current: Option<String> = con.get(&key).await.map_err(redis_err)?;
        match current {
            Some(c) if c != room.as_str() => Ok(RoomId::parse(&c).ok()),
            Some(_) => Ok(None),
            // Released in between: try once more.
            None => {
                let set: bool = con.set_nx(&key, room.as_str()).await.map_err(redis_err)?;
                if set {
                    Ok(None)
                } else {
                    let c: Option<String> = con.get(&key).await.map_err(redis_err)?;
                    Ok(c.and_then(|c| RoomId::parse(&c).ok()).filter(|c| c != room))
                }
            }
        }
    }

    async fn release_active(&self, user: &UserId, room: &RoomId) -> Result<(), ControlError> {
        // Delete only if it still names this room.
        let script = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        );
        let mut con = self.shared.clone();
        script
            .key(self.key(&format!("user:{user}:room")))
            .arg(room.as_str())
            .invoke_async::<i64>(&mut con)
            .await
            .map(|_| ())
            .map_err(redis_err)
    }

    async fn set_follow(&self, user: &UserId, what: &Follow, on: bool) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        let key = self.key(&format!("user:{user}:follows"));
        if on {
            con.sadd::<_, _, ()>(key, what.key()).await
        } else {
            con.srem::<_, _, ()>(key, what.key()).await
        }
        .map_err(redis_err)
    }

    async fn follows(&self, user: &UserId) -> Result<Vec<Follow>, ControlError> {
        let mut con = self.shared.clone();
        let keys: Vec<String> = con
            .smembers(self.key(&format!("user:{user}:follows")))
            .await
            .map_err(redis_err)?;
        Ok(keys.iter().filter_map(|k| Follow::from_key(k)).collect())
    }

    async fn set_profile(&self, user: &UserId, profile: &Profile) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        con.set::<_, _, ()>(self.key(&format!("user:{user}:profile")), json(profile)?)
            .await
            .map_err(redis_err)
    }

    async fn profile(&self, user: &UserId) -> Result<Option<Profile>, ControlError> {
        let mut con = self.shared.clone();
        let raw: Option<String> = con
            .get(self.key(&format!("user:{user}:profile")))
            .await
            .map_err(redis_err)?;
        raw.map(|r| parse("profile", r.as_bytes())).transpose()
    }

    async fn put_invite(&self, token: &str, invite: &Invite) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        // Redis refuses expiries past the end of its clock; a year is plenty for a link.
        const MAX_TTL_MS: u64 = 366 * 24 * 3600 * 1000;
        let ttl_ms = invite
            .expires_at
            .saturating_sub(crate::clock::now_ms())
            .clamp(1, MAX_TTL_MS);
        con.pset_ex::<_, _, ()>(self.key(&format!("invite:{token}")), json(invite)?, ttl_ms)
            .await
            .map_err(redis_err)
    }

    async fn invite(&self, token: &str) -> Result<Option<Invite>, ControlError> {
        let mut con = self.shared.clone();
        let raw: Option<String> = con
            .get(self.key(&format!("invite:{token}")))
            .await
            .map_err(redis_err)?;
        raw.map(|r| parse("invite", r.as_bytes())).transpose()
    }

    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        con.pset_ex::<_, _, ()>(self.key(&format!("presence:{instance}")), 1, ttl_ms.max(1))
            .await
            .map_err(redis_err)
    }

    async fn alive(&self, instance: &str) -> Result<bool, ControlError> {
        let mut con = self.shared.clone();
        con.exists(self.key(&format!("presence:{instance}")))
            .await
            .map_err(redis_err)
    }

    async fn publish(&self, message: &BusMessage) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        con.publish::<_, _, ()>(self.key("bus"), json(message)?)
            .await
            .map_err(redis_err)
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.bus.subscribe()
    }
}
