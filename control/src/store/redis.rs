//! The shared store: Redis, for several instances.
//!
//! Key schema (`{p}` is the configured prefix, `stoa:` by default; ids are checked before they
//! reach a key, see [`crate::model`]):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}room:{id}` | string | the room's header (JSON: `room`: title, kind, state, host, times; `counts`: members, on stage, present, listeners, hands, present per instance) |
//! | `{p}room:{id}:participants` | hash | user → member (JSON: name, role, mute, presence), one field per member |
//! | `{p}room:{id}:stage` | sorted set | members on stage (score 0: ordered by user id) |
//! | `{p}room:{id}:audience` | sorted set | members not on stage (score 0: by user id, for cursor pages) |
//! | `{p}room:{id}:requests` | sorted set | raised hands, scored by the unix ms they were raised |
//! | `{p}room:{id}:bans` | set | banned users |
//! | `{p}room:{id}:kicks` | hash | user → unix ms until which they may not rejoin |
//! | `{p}room:{id}:invited` | set | users invited to speak |
//! | `{p}room:{id}:lineup` | hash | user → role given in advance (JSON: `"co_host"`, `"speaker"`) |
//! | `{p}room:{id}:audit` | list | the room's audit log: moderation and lifecycle actions (JSON: at, actor, action, target), the newest 200 |
//! | `{p}room:{id}:stats` | string | statistics (JSON, with the names of the host, whoever was on stage and whoever was removed) |
//! | `{p}rooms:{state}` | set | room ids by state (`scheduled`, `live`, `ended`, `archived`) |
//! | `{p}user:{id}:room` | string | the one room the user is in |
//! | `{p}user:{id}:follows` | set | `user:{id}` and `room:{id}` the user follows |
//! | `{p}followers:{what}` | sorted set | users following `what` (`user:{id}`, `room:{id}`; score 0: by user id, for pages) |
//! | `{p}user:{id}:notifications` | list | the user's feed, newest first (JSON), at most 200 |
//! | `{p}user:{id}:notifications:read` | string | unix ms up to which the feed is read |
//! | `{p}user:{id}:profile` | string | the user's profile (JSON: bio, small avatar) |
//! | `{p}invite:{token}` | string | an invitation link (JSON: room, role, limits, revoked), kept a week past its expiry so that it is refused as expired |
//! | `{p}invite:{token}:uses` | string | how many accepted it (`INCR`), expiring with it |
//! | `{p}room:{id}:invites` | set | the room's invitation tokens (expiring with the latest) |
//! | `{p}room:{id}:recordings` | hash | recording id → recording (JSON: files, times, size, state) |
//! | `{p}clip:{id}` | string | a clip (JSON: room, recording, range, file, speakers) |
//! | `{p}room:{id}:clips` | sorted set | the room's clip ids, scored by the unix ms they were cut |
//! | `{p}presence:{instance}` | string | an instance's heartbeat; expires when it stops (TTL) |
//! | `{p}node:{id}` | string | a node's record (JSON: public URL, rooms, participants, listeners, streams, CPU, draining, times); expires with its heartbeat (TTL) |
//! | `{p}nodes` | sorted set | node ids, scored by the unix ms their record expires (an index; a record whose key expired is dead) |
//! | `{p}nodes:draining` | set | node ids an operator drained (forgotten with the node) |
//! | `{p}lock:room:{id}` | string | who is changing the room now; expires after 5 s |
//! | `{p}bus` | pub/sub channel | each command's media changes and events, for every instance |
//!
//! A room changes atomically: writers take turns through the room's lock, then its keys are
//! `WATCH`ed, the header and the records the command names are read (`HMGET`, `ZMSCORE`,
//! `SMISMEMBER` of those users only), changed in memory, and only what changed is written back
//! in one `MULTI`/`EXEC` with the new header (retried if they changed anyway, e.g. after a lock
//! expired). So concurrent approvals and lowered hands never lose an update, a busy room does
//! not starve its writers, and a join costs the same few commands whatever the room's size.

mod edges;
mod nodes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::sync::broadcast;

use super::{
    AudiencePage, BUS_CAPACITY, Changes, Follow, Header, Invite, MAX_FEED, Mutation, Notification,
    Profile, Store, json, parse,
};
use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{Role, RoomDoc, RoomId, RoomState, RoomStats, STAGE_LOADED, Scope, UserId};
use crate::replay::{Clip, ClipId, Recording};
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
    /// Writers of one room on this instance queue here before one of them takes the room's
    /// Redis lock, so that they wait in turn instead of polling Redis.
    local: Mutex<HashMap<RoomId, Arc<tokio::sync::Mutex<()>>>>,
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

/// Why a room's records could not be loaded.
enum Loading {
    /// It is kept in the earlier layout.
    Earlier,
    Failed(ControlError),
}

impl From<ControlError> for Loading {
    fn from(e: ControlError) -> Self {
        Loading::Failed(e)
    }
}

/// A Redis error while loading; `WRONGTYPE` means a key of the earlier layout (hands in a hash).
fn loading_err(e: redis::RedisError) -> Loading {
    if e.code() == Some("WRONGTYPE") {
        Loading::Earlier
    } else {
        Loading::Failed(redis_err(e))
    }
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
            local: Mutex::new(HashMap::new()),
        };
        store.migrate().await?;
        // Subscribe before returning, so nothing published after connect is missed.
        let pubsub = subscribe(&client, &store.key("bus")).await?;
        tokio::spawn(relay(client, store.key("bus"), pubsub, bus));
        Ok(store)
    }

    /// Rewrites rooms kept in the earlier layout (a header without counts, hands in a hash,
    /// no stage or audience index) into this one. Run at connect; a room already in this
    /// layout costs one `GET` and one `TYPE`. A room that an instance of an earlier release
    /// writes again later (during a rolling upgrade) is rewritten when it is next loaded.
    async fn migrate(&self) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        let mut migrated = 0usize;
        for state in STATES {
            let ids: Vec<String> = con
                .smembers(self.key(&format!("rooms:{}", state_name(state))))
                .await
                .map_err(redis_err)?;
            for id in ids {
                let Ok(id) = RoomId::parse(&id) else {
                    continue;
                };
                if self.convert(&id).await? {
                    migrated += 1;
                }
            }
        }
        if migrated > 0 {
            tracing::info!(
                rooms = migrated,
                "rooms rewritten into the per-member layout"
            );
        }
        Ok(())
    }

    /// Rewrites one room from the earlier layout into this one, atomically against other
    /// writers (its keys are watched; the rewrite is retried if they change). Whether it was
    /// in the earlier layout.
    async fn convert(&self, id: &RoomId) -> Result<bool, ControlError> {
        let [room_key, participants, requests, ..] = self.room_keys(id);
        let (stage, audience) = (self.index_key(id, "stage"), self.index_key(id, "audience"));
        let mut con = self.dedicated().await?;
        for _ in 0..ATTEMPTS {
            redis::cmd("WATCH")
                .arg(&[&room_key, &participants, &requests, &stage, &audience])
                .query_async::<()>(&mut con)
                .await
                .map_err(redis_err)?;
            let rewrite = self.rewrite_earlier(&mut con, id).await;
            let pipe = match rewrite {
                Ok(Some(pipe)) => pipe,
                other => {
                    redis::cmd("UNWATCH")
                        .query_async::<()>(&mut con)
                        .await
                        .map_err(redis_err)?;
                    self.give_back(con);
                    return other.map(|_| false);
                }
            };
            let done: Option<()> = pipe.query_async(&mut con).await.map_err(redis_err)?;
            if done.is_some() {
                self.give_back(con);
                return Ok(true);
            }
        }
        Err(ControlError::unavailable(format!(
            "room {id} is changing too fast to convert; try again"
        )))
    }

    /// The atomic pipeline that rewrites room `id` from the earlier layout, or `None` when it
    /// is in this layout (or gone).
    async fn rewrite_earlier(
        &self,
        con: &mut MultiplexedConnection,
        id: &RoomId,
    ) -> Result<Option<redis::Pipeline>, ControlError> {
        let [room_key, participants, requests, ..] = self.room_keys(id);
        let (raw, kind): (Option<String>, String) = redis::pipe()
            .get(&room_key)
            .cmd("TYPE")
            .arg(&requests)
            .query_async(con)
            .await
            .map_err(redis_err)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let current = serde_json::from_str::<Header>(&raw).ok();
        if current.is_some() && kind != "hash" {
            return Ok(None);
        }
        let room = match current {
            Some(h) => h.room,
            None => parse::<crate::model::Room>("room", raw.as_bytes())?,
        };
        let members: HashMap<String, String> =
            con.hgetall(&participants).await.map_err(redis_err)?;
        let hands: HashMap<String, u64> = if kind == "hash" {
            con.hgetall(&requests).await.map_err(redis_err)?
        } else {
            let z: Vec<(String, f64)> = con
                .zrange_withscores(&requests, 0, -1)
                .await
                .map_err(redis_err)?;
            z.into_iter().map(|(u, t)| (u, t as u64)).collect()
        };
        let mut doc = RoomDoc::new(room);
        for (u, m) in &members {
            if let Ok(u) = UserId::parse(u) {
                doc.members.insert(u, parse("member", m.as_bytes())?);
            }
        }
        for (u, t) in &hands {
            if let Ok(u) = UserId::parse(u) {
                doc.hands.insert(u, *t);
            }
        }
        let (stage, audience) = (self.index_key(id, "stage"), self.index_key(id, "audience"));
        let mut pipe = redis::pipe();
        pipe.atomic();
        let header = Header {
            room: doc.room.clone(),
            counts: doc.counts(),
        };
        pipe.set(&room_key, json(&header)?).ignore();
        pipe.del(&[&requests, &stage, &audience]).ignore();
        for (u, t) in &doc.hands {
            pipe.zadd(&requests, u.as_str(), *t).ignore();
        }
        for (u, m) in &doc.members {
            let index = if m.role.on_stage() { &stage } else { &audience };
            pipe.zadd(index, u.as_str(), 0).ignore();
        }
        Ok(Some(pipe))
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The keys a transaction on the room watches (the indexes follow the records).
    fn room_keys(&self, id: &RoomId) -> [String; 8] {
        let base = self.key(&format!("room:{id}"));
        [
            base.clone(),
            format!("{base}:participants"),
            format!("{base}:requests"),
            format!("{base}:bans"),
            format!("{base}:kicks"),
            format!("{base}:invited"),
            format!("{base}:stats"),
            format!("{base}:lineup"),
        ]
    }

    fn index_key(&self, id: &RoomId, which: &str) -> String {
        self.key(&format!("room:{id}:{which}"))
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

    /// The header and the records `scope` names. A room found in the earlier layout (written
    /// by an instance of an earlier release during a rolling upgrade) is rewritten first.
    async fn load(
        &self,
        con: &mut MultiplexedConnection,
        id: &RoomId,
        scope: &Scope,
    ) -> Result<Option<RoomDoc>, ControlError> {
        match self.load_records(con, id, scope).await {
            Err(Loading::Earlier) => {}
            Err(Loading::Failed(e)) => return Err(e),
            Ok(doc) => return Ok(doc),
        }
        self.convert(id).await?;
        match self.load_records(con, id, scope).await {
            Ok(doc) => Ok(doc),
            Err(Loading::Failed(e)) => Err(e),
            Err(Loading::Earlier) => Err(ControlError::unavailable(format!(
                "room {id} keeps being written in the earlier layout; try again"
            ))),
        }
    }

    /// [`Self::load`] without the rewrite.
    async fn load_records(
        &self,
        con: &mut MultiplexedConnection,
        id: &RoomId,
        scope: &Scope,
    ) -> Result<Option<RoomDoc>, Loading> {
        let [
            room,
            participants,
            requests,
            bans,
            kicks,
            invited,
            stats,
            lineup,
        ] = self.room_keys(id);
        let user = |s: &str| {
            UserId::parse(s)
                .map_err(|_| ControlError::unavailable(format!("corrupt user id in room {id}")))
        };
        let mut pipe = redis::pipe();
        pipe.get(&room).get(&stats);
        let stage_limit = isize::try_from(STAGE_LOADED).unwrap_or(isize::MAX) - 1;
        // An empty range (1..0) when the stage is not wanted keeps the pipeline's shape.
        let (from, to) = if scope.stage {
            (0, stage_limit)
        } else {
            (1, 0)
        };
        pipe.zrange(self.index_key(id, "stage"), from, to);
        if scope.all {
            pipe.hgetall(&participants)
                .zrange_withscores(&requests, 0, -1)
                .smembers(&bans)
                .hgetall(&kicks)
                .smembers(&invited)
                .hgetall(&lineup);
        }
        type Head = (Option<String>, Option<String>, Vec<String>);
        let (header, stats_json, stage, all) = if scope.all {
            type All = (
                Option<String>,
                Option<String>,
                Vec<String>,
                HashMap<String, String>,
                Vec<(String, f64)>,
                Vec<String>,
                HashMap<String, u64>,
                Vec<String>,
                HashMap<String, String>,
            );
            let (h, st, stage, m, r, b, k, i, l): All =
                pipe.query_async(con).await.map_err(loading_err)?;
            (h, st, stage, Some((m, r, b, k, i, l)))
        } else {
            let (h, st, stage): Head = pipe.query_async(con).await.map_err(loading_err)?;
            (h, st, stage, None)
        };
        let Some(header) = header else {
            return Ok(None);
        };
        if serde_json::from_str::<Header>(&header).is_err()
            && serde_json::from_str::<crate::model::Room>(&header).is_ok()
        {
            return Err(Loading::Earlier);
        }
        let header: Header = parse("room", header.as_bytes())?;
        let mut doc = RoomDoc::new(header.room);
        if let Some(st) = stats_json {
            doc.stats = parse::<RoomStats>("stats", st.as_bytes())?;
        }
        if let Some((m, r, b, k, i, l)) = all {
            for (u, m) in m {
                doc.members
                    .insert(user(&u)?, parse("member", m.as_bytes())?);
            }
            for (u, t) in r {
                doc.hands.insert(user(&u)?, t as u64);
            }
            for u in b {
                doc.bans.insert(user(&u)?);
            }
            for (u, t) in k {
                doc.kicks.insert(user(&u)?, t);
            }
            for u in i {
                doc.invited.insert(user(&u)?);
            }
            for (u, r) in l {
                doc.lineup.insert(user(&u)?, parse("lineup", r.as_bytes())?);
            }
            // Every record is loaded: the header's counts are not needed.
            return Ok(Some(doc));
        }
        let mut users: Vec<String> = scope.users.iter().map(|u| u.to_string()).collect();
        if scope.stage {
            users.extend(stage);
        }
        users.sort();
        users.dedup();
        if !users.is_empty() {
            type Records = (
                Vec<Option<String>>,
                Vec<Option<f64>>,
                Vec<bool>,
                Vec<Option<u64>>,
                Vec<bool>,
                Vec<Option<String>>,
            );
            let (m, r, b, k, i, l): Records = redis::pipe()
                .cmd("HMGET")
                .arg(&participants)
                .arg(&users)
                .cmd("ZMSCORE")
                .arg(&requests)
                .arg(&users)
                .cmd("SMISMEMBER")
                .arg(&bans)
                .arg(&users)
                .cmd("HMGET")
                .arg(&kicks)
                .arg(&users)
                .cmd("SMISMEMBER")
                .arg(&invited)
                .arg(&users)
                .cmd("HMGET")
                .arg(&lineup)
                .arg(&users)
                .query_async(con)
                .await
                .map_err(loading_err)?;
            for (n, u) in users.iter().enumerate() {
                let uid = user(u)?;
                if let Some(Some(m)) = m.get(n) {
                    doc.members
                        .insert(uid.clone(), parse("member", m.as_bytes())?);
                }
                if let Some(Some(t)) = r.get(n) {
                    doc.hands.insert(uid.clone(), *t as u64);
                }
                if b.get(n) == Some(&true) {
                    doc.bans.insert(uid.clone());
                }
                if let Some(Some(t)) = k.get(n) {
                    doc.kicks.insert(uid.clone(), *t);
                }
                if let Some(Some(r)) = l.get(n) {
                    doc.lineup
                        .insert(uid.clone(), parse("lineup", r.as_bytes())?);
                }
                if i.get(n) == Some(&true) {
                    doc.invited.insert(uid);
                }
            }
        }
        doc.set_total(&header.counts);
        Ok(Some(doc))
    }

    /// One optimistic transaction on a room's keys, retried when they change under it.
    async fn transact(
        &self,
        id: &RoomId,
        scope: &Scope,
        f: &mut Mutation<'_>,
    ) -> Result<Effects, ControlError> {
        let keys = self.room_keys(id);
        let mut con = self.dedicated().await?;
        for _ in 0..ATTEMPTS {
            redis::cmd("WATCH")
                .arg(&keys)
                .query_async::<()>(&mut con)
                .await
                .map_err(redis_err)?;
            let loaded = self.load(&mut con, id, scope).await;
            let unwatch = async |con: &mut MultiplexedConnection| {
                redis::cmd("UNWATCH")
                    .query_async::<()>(con)
                    .await
                    .map_err(redis_err)
            };
            let mut doc = match loaded {
                Ok(Some(d)) => d,
                Ok(None) => {
                    unwatch(&mut con).await?;
                    self.give_back(con);
                    return Err(ControlError::not_found("room", id.as_str()));
                }
                Err(e) => {
                    unwatch(&mut con).await?;
                    self.give_back(con);
                    return Err(e);
                }
            };
            let before = doc.clone();
            let effects = match f(&mut doc) {
                Ok(e) => e,
                Err(e) => {
                    unwatch(&mut con).await?;
                    self.give_back(con);
                    return Err(e);
                }
            };
            let changes = Changes::between(&before, &doc);
            if changes.is_empty() {
                unwatch(&mut con).await?;
                self.give_back(con);
                return Ok(effects);
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            self.write(&mut pipe, &before, &doc, &changes)?;
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

    /// Adds what `changes` says (from `before` to `after`) to an atomic pipeline.
    fn write(
        &self,
        pipe: &mut redis::Pipeline,
        before: &RoomDoc,
        after: &RoomDoc,
        c: &Changes,
    ) -> Result<(), ControlError> {
        let id = &after.room.id;
        let [
            room,
            participants,
            requests,
            bans,
            kicks,
            invited,
            stats,
            lineup,
        ] = self.room_keys(id);
        let (stage, audience) = (self.index_key(id, "stage"), self.index_key(id, "audience"));
        if c.room || c.counts {
            let header = Header {
                room: after.room.clone(),
                counts: c.total.clone(),
            };
            pipe.set(&room, json(&header)?).ignore();
        }
        if c.stats {
            pipe.set(&stats, json(&after.stats)?).ignore();
        }
        for (u, m) in &c.members {
            match m {
                Some(m) => pipe.hset(&participants, u.as_str(), json(m)?).ignore(),
                None => pipe.hdel(&participants, u.as_str()).ignore(),
            };
        }
        for (key, changes) in [(&stage, &c.stage), (&audience, &c.audience)] {
            for (u, on) in changes {
                if *on {
                    pipe.zadd(key, u.as_str(), 0).ignore();
                } else {
                    pipe.zrem(key, u.as_str()).ignore();
                }
            }
        }
        for (u, t) in &c.hands {
            match t {
                Some(t) => pipe.zadd(&requests, u.as_str(), *t).ignore(),
                None => pipe.zrem(&requests, u.as_str()).ignore(),
            };
        }
        for (u, t) in &c.kicks {
            match t {
                Some(t) => pipe.hset(&kicks, u.as_str(), *t).ignore(),
                None => pipe.hdel(&kicks, u.as_str()).ignore(),
            };
        }
        for (key, changes) in [(&bans, &c.bans), (&invited, &c.invited)] {
            for (u, on) in changes {
                if *on {
                    pipe.sadd(key, u.as_str()).ignore();
                } else {
                    pipe.srem(key, u.as_str()).ignore();
                }
            }
        }
        for (u, r) in &c.lineup {
            match r {
                Some(r) => pipe.hset(&lineup, u.as_str(), json(r)?).ignore(),
                None => pipe.hdel(&lineup, u.as_str()).ignore(),
            };
        }
        if before.room.state != after.room.state {
            pipe.srem(
                self.key(&format!("rooms:{}", state_name(before.room.state))),
                id.as_str(),
            )
            .ignore();
        }
        pipe.sadd(
            self.key(&format!("rooms:{}", state_name(after.room.state))),
            id.as_str(),
        )
        .ignore();
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
        let empty = RoomDoc::new(doc.room.clone());
        let mut changes = Changes::between(&empty, doc);
        changes.room = true;
        changes.stats = true;
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.write(&mut pipe, doc, doc, &changes)?;
        let mut con = self.shared.clone();
        pipe.query_async::<()>(&mut con).await.map_err(redis_err)
    }

    async fn room(&self, id: &RoomId, scope: &Scope) -> Result<Option<RoomDoc>, ControlError> {
        let mut con = self.shared.clone();
        self.load(&mut con, id, scope).await
    }

    async fn update_room(
        &self,
        id: &RoomId,
        scope: &Scope,
        f: &mut Mutation<'_>,
    ) -> Result<Effects, ControlError> {
        // This instance's writers of the room take turns locally first.
        let turn = {
            let mut local = self
                .local
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if local.len() > 1024 {
                local.retain(|_, m| Arc::strong_count(m) > 1);
            }
            local.entry(id.clone()).or_default().clone()
        };
        let _turn = turn.lock().await;
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
        let result = self.transact(id, scope, f).await;
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
        let scope = Scope::header().with_stage();
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
                if let Some(doc) = self.load(&mut con, &id, &scope).await?
                    && doc.room.state == state
                {
                    out.push(doc);
                }
            }
        }
        Ok(out)
    }

    async fn audience(
        &self,
        id: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<AudiencePage, ControlError> {
        let mut con = self.shared.clone();
        let [room, participants, requests, ..] = self.room_keys(id);
        let min = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let (exists, users): (bool, Vec<String>) = redis::pipe()
            .exists(&room)
            .zrangebylex_limit(
                self.index_key(id, "audience"),
                min,
                "+",
                0,
                isize::try_from(limit.saturating_add(1)).unwrap_or(isize::MAX),
            )
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        if !exists {
            return Err(ControlError::not_found("room", id.as_str()));
        }
        let mut page = AudiencePage::default();
        let more = users.len() > limit;
        let users: Vec<String> = users.into_iter().take(limit).collect();
        if users.is_empty() {
            return Ok(page);
        }
        let (members, hands): (Vec<Option<String>>, Vec<Option<f64>>) = redis::pipe()
            .cmd("HMGET")
            .arg(&participants)
            .arg(&users)
            .cmd("ZMSCORE")
            .arg(&requests)
            .arg(&users)
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        for (n, u) in users.iter().enumerate() {
            let (Ok(uid), Some(Some(m))) = (UserId::parse(u), members.get(n)) else {
                continue;
            };
            let hand = matches!(hands.get(n), Some(Some(_)));
            page.members
                .push((uid, parse("member", m.as_bytes())?, hand));
        }
        if more {
            page.next = users.last().and_then(|u| UserId::parse(u).ok());
        }
        Ok(page)
    }

    async fn hands(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, u64)>, ControlError> {
        let mut con = self.shared.clone();
        let end = isize::try_from(limit).unwrap_or(isize::MAX) - 1;
        if end < 0 {
            return Ok(Vec::new());
        }
        let raised: Vec<(String, f64)> = con
            .zrange_withscores(self.index_key(id, "requests"), 0, end)
            .await
            .map_err(redis_err)?;
        Ok(raised
            .into_iter()
            .filter_map(|(u, t)| Some((UserId::parse(&u).ok()?, t as u64)))
            .collect())
    }

    async fn bans(&self, id: &RoomId, limit: usize) -> Result<Vec<UserId>, ControlError> {
        let mut con = self.shared.clone();
        let all: Vec<String> = con
            .smembers(self.index_key(id, "bans"))
            .await
            .map_err(redis_err)?;
        let mut bans: Vec<UserId> = all.iter().filter_map(|u| UserId::parse(u).ok()).collect();
        bans.sort();
        bans.truncate(limit);
        Ok(bans)
    }

    async fn kicks(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, u64)>, ControlError> {
        let mut con = self.shared.clone();
        let all: HashMap<String, u64> = con
            .hgetall(self.index_key(id, "kicks"))
            .await
            .map_err(redis_err)?;
        let mut kicks: Vec<(UserId, u64)> = all
            .iter()
            .filter_map(|(u, t)| Some((UserId::parse(u).ok()?, *t)))
            .collect();
        kicks.sort();
        kicks.truncate(limit);
        Ok(kicks)
    }

    async fn lineup(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, Role)>, ControlError> {
        let mut con = self.shared.clone();
        let all: HashMap<String, String> = con
            .hgetall(self.index_key(id, "lineup"))
            .await
            .map_err(redis_err)?;
        let mut out = Vec::new();
        for (u, r) in all {
            if let Ok(u) = UserId::parse(&u) {
                out.push((u, parse::<Role>("lineup", r.as_bytes())?));
            }
        }
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    async fn invited(&self, id: &RoomId, limit: usize) -> Result<Vec<UserId>, ControlError> {
        let mut con = self.shared.clone();
        let all: Vec<String> = con
            .smembers(self.index_key(id, "invited"))
            .await
            .map_err(redis_err)?;
        let mut out: Vec<UserId> = all.iter().filter_map(|u| UserId::parse(u).ok()).collect();
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    async fn remove_room(&self, id: &RoomId) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&self.room_keys(id)[..]).ignore();
        pipe.del(self.key(&format!("room:{id}:audit"))).ignore();
        pipe.del(self.key(&format!("room:{id}:recordings")))
            .ignore();
        let clips: Vec<String> = con
            .zrange(self.key(&format!("room:{id}:clips")), 0, -1)
            .await
            .map_err(redis_err)?;
        for c in clips {
            pipe.del(self.key(&format!("clip:{c}"))).ignore();
        }
        pipe.del(self.key(&format!("room:{id}:clips"))).ignore();
        pipe.del(edges::key(self, id)).ignore();
        pipe.del(&[self.index_key(id, "stage"), self.index_key(id, "audience")])
            .ignore();
        for state in STATES {
            pipe.srem(
                self.key(&format!("rooms:{}", state_name(state))),
                id.as_str(),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut con).await.map_err(redis_err)
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
        let followers = self.key(&format!("followers:{}", what.key()));
        let mut pipe = redis::pipe();
        pipe.atomic();
        if on {
            pipe.sadd(key, what.key())
                .ignore()
                .zadd(followers, user.as_str(), 0)
                .ignore();
        } else {
            pipe.srem(key, what.key())
                .ignore()
                .zrem(followers, user.as_str())
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await.map_err(redis_err)
    }

    async fn follows(&self, user: &UserId) -> Result<Vec<Follow>, ControlError> {
        let mut con = self.shared.clone();
        let keys: Vec<String> = con
            .smembers(self.key(&format!("user:{user}:follows")))
            .await
            .map_err(redis_err)?;
        Ok(keys.iter().filter_map(|k| Follow::from_key(k)).collect())
    }

    async fn followers(
        &self,
        what: &Follow,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>, ControlError> {
        let mut con = self.shared.clone();
        let min = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let users: Vec<String> = con
            .zrangebylex_limit(
                self.key(&format!("followers:{}", what.key())),
                min,
                "+",
                0,
                isize::try_from(limit).unwrap_or(isize::MAX),
            )
            .await
            .map_err(redis_err)?;
        Ok(users.iter().filter_map(|u| UserId::parse(u).ok()).collect())
    }

    async fn push_notification(
        &self,
        users: &[UserId],
        n: &Notification,
    ) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        let value = json(n)?;
        let keep = isize::try_from(MAX_FEED).unwrap_or(isize::MAX) - 1;
        let mut pipe = redis::pipe();
        for u in users {
            let key = self.key(&format!("user:{u}:notifications"));
            pipe.lpush(&key, &value)
                .ignore()
                .ltrim(&key, 0, keep)
                .ignore();
        }
        pipe.query_async::<()>(&mut con).await.map_err(redis_err)
    }

    async fn notifications(&self, user: &UserId) -> Result<(Vec<Notification>, u64), ControlError> {
        let mut con = self.shared.clone();
        let key = self.key(&format!("user:{user}:notifications"));
        let (raw, read): (Vec<String>, Option<u64>) = redis::pipe()
            .lrange(&key, 0, -1)
            .get(format!("{key}:read"))
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        let feed = raw
            .iter()
            .map(|r| parse("notification", r.as_bytes()))
            .collect::<Result<Vec<Notification>, _>>()?;
        Ok((feed, read.unwrap_or(0)))
    }

    async fn mark_read(&self, user: &UserId, until: u64) -> Result<(), ControlError> {
        // Never moves back: a later mark from another tab wins.
        let script = redis::Script::new(
            "local c = tonumber(redis.call('GET', KEYS[1]) or '0') if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end return 0",
        );
        let mut con = self.shared.clone();
        script
            .key(self.key(&format!("user:{user}:notifications:read")))
            .arg(until)
            .invoke_async::<i64>(&mut con)
            .await
            .map(|_| ())
            .map_err(redis_err)
    }

    async fn append_audit(
        &self,
        id: &RoomId,
        entry: &super::AuditEntry,
    ) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        let key = self.key(&format!("room:{id}:audit"));
        let kept = super::AUDIT_KEPT as isize;
        redis::pipe()
            .atomic()
            .rpush(&key, json(entry)?)
            .ignore()
            .ltrim(&key, -kept, -1)
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_err)
    }

    async fn audit(&self, id: &RoomId) -> Result<Vec<super::AuditEntry>, ControlError> {
        let mut con = self.shared.clone();
        let raw: Vec<String> = con
            .lrange(self.key(&format!("room:{id}:audit")), 0, -1)
            .await
            .map_err(redis_err)?;
        raw.iter()
            .map(|r| parse("audit entry", r.as_bytes()))
            .collect()
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
        let ttl_ms = invite_ttl_ms(invite);
        let set = self.key(&format!("room:{}:invites", invite.room));
        let set_ttl: i64 = con.pttl(&set).await.map_err(redis_err)?;
        let longest = u64::try_from(set_ttl).unwrap_or(0).max(ttl_ms);
        redis::pipe()
            .atomic()
            .pset_ex(self.key(&format!("invite:{token}")), json(invite)?, ttl_ms)
            .ignore()
            .sadd(&set, token)
            .ignore()
            .pexpire(&set, i64::try_from(longest).unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_err)
    }

    async fn invite(&self, token: &str) -> Result<Option<Invite>, ControlError> {
        let mut con = self.shared.clone();
        let (raw, uses): (Option<String>, Option<u32>) = redis::pipe()
            .get(self.key(&format!("invite:{token}")))
            .get(self.key(&format!("invite:{token}:uses")))
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let mut invite: Invite = parse("invite", raw.as_bytes())?;
        invite.uses = uses.unwrap_or(0);
        Ok(Some(invite))
    }

    async fn room_invites(
        &self,
        id: &RoomId,
        limit: usize,
    ) -> Result<Vec<(String, Invite)>, ControlError> {
        let mut con = self.shared.clone();
        let set = self.key(&format!("room:{id}:invites"));
        let mut tokens: Vec<String> = con.smembers(&set).await.map_err(redis_err)?;
        tokens.sort();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for token in tokens {
            match self.invite(&token).await? {
                Some(i) => out.push((token, i)),
                None => gone.push(token),
            }
        }
        if !gone.is_empty() {
            con.srem::<_, _, ()>(&set, gone).await.map_err(redis_err)?;
        }
        out.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then(a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }

    async fn use_invite(&self, token: &str, max_uses: Option<u32>) -> Result<bool, ControlError> {
        let mut con = self.shared.clone();
        let key = self.key(&format!("invite:{token}"));
        let uses = self.key(&format!("invite:{token}:uses"));
        // Each accept takes a number; those past the limit give theirs back.
        let (n, ttl): (u64, i64) = redis::pipe()
            .atomic()
            .incr(&uses, 1)
            .pttl(&key)
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        if ttl > 0 {
            con.pexpire::<_, ()>(&uses, ttl).await.map_err(redis_err)?;
        }
        if ttl == -2 {
            // No such invitation (any more): no counter either.
            con.del::<_, ()>(&uses).await.map_err(redis_err)?;
            return Ok(false);
        }
        if max_uses.is_some_and(|m| n > u64::from(m)) {
            con.decr::<_, _, ()>(&uses, 1).await.map_err(redis_err)?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn put_recording(&self, recording: &Recording) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        let exists: bool = con
            .exists(self.key(&format!("room:{}", recording.room)))
            .await
            .map_err(redis_err)?;
        if !exists {
            return Ok(());
        }
        let key = self.key(&format!("room:{}:recordings", recording.room));
        con.hset::<_, _, _, ()>(&key, recording.id.as_str(), json(recording)?)
            .await
            .map_err(redis_err)?;
        // Keep the newest: drop the oldest past the limit.
        let mut all = self.recordings(&recording.room).await?;
        if all.len() > crate::replay::MAX_RECORDINGS {
            let extra = all.len() - crate::replay::MAX_RECORDINGS;
            let old: Vec<String> = all.drain(..extra).map(|r| r.id.to_string()).collect();
            con.hdel::<_, _, ()>(&key, old).await.map_err(redis_err)?;
        }
        Ok(())
    }

    async fn recordings(&self, id: &RoomId) -> Result<Vec<Recording>, ControlError> {
        let mut con = self.shared.clone();
        let raw: HashMap<String, String> = con
            .hgetall(self.key(&format!("room:{id}:recordings")))
            .await
            .map_err(redis_err)?;
        let mut out = Vec::with_capacity(raw.len());
        for v in raw.values() {
            super::merge_recording(&mut out, &parse("recording", v.as_bytes())?);
        }
        Ok(out)
    }

    async fn recording(
        &self,
        id: &RoomId,
        recording: &crate::replay::RecordingId,
    ) -> Result<Option<Recording>, ControlError> {
        let mut con = self.shared.clone();
        let raw: Option<String> = con
            .hget(
                self.key(&format!("room:{id}:recordings")),
                recording.as_str(),
            )
            .await
            .map_err(redis_err)?;
        raw.map(|v| parse("recording", v.as_bytes())).transpose()
    }

    async fn put_clip(&self, clip: &Clip) -> Result<(), ControlError> {
        let mut con = self.shared.clone();
        redis::pipe()
            .atomic()
            .set(self.key(&format!("clip:{}", clip.id)), json(clip)?)
            .ignore()
            .zadd(
                self.key(&format!("room:{}:clips", clip.room)),
                clip.id.as_str(),
                clip.created_at,
            )
            .ignore()
            .query_async::<()>(&mut con)
            .await
            .map_err(redis_err)
    }

    async fn clip(&self, id: &ClipId) -> Result<Option<Clip>, ControlError> {
        let mut con = self.shared.clone();
        let raw: Option<String> = con
            .get(self.key(&format!("clip:{id}")))
            .await
            .map_err(redis_err)?;
        raw.map(|r| parse("clip", r.as_bytes())).transpose()
    }

    async fn room_clips(&self, id: &RoomId, limit: usize) -> Result<Vec<Clip>, ControlError> {
        let mut con = self.shared.clone();
        let stop = isize::try_from(limit)
            .unwrap_or(isize::MAX)
            .saturating_sub(1);
        let ids: Vec<String> = con
            .zrevrange(self.key(&format!("room:{id}:clips")), 0, stop)
            .await
            .map_err(redis_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for c in ids {
            if let Some(clip) = self.clip(&ClipId::parse(&c)?).await? {
                out.push(clip);
            }
        }
        Ok(out)
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

    async fn put_node(&self, node: &crate::nodes::Node, ttl_ms: u64) -> Result<(), ControlError> {
        nodes::put(self, node, ttl_ms).await
    }

    async fn nodes(&self, now: u64) -> Result<Vec<crate::nodes::Node>, ControlError> {
        nodes::living(self, now).await
    }

    async fn drain_node(&self, id: &str, on: bool) -> Result<(), ControlError> {
        nodes::drain(self, id, on).await
    }

    async fn room_edges(&self, id: &RoomId) -> Result<Vec<String>, ControlError> {
        edges::read(self, id).await
    }

    async fn add_room_edge(&self, id: &RoomId, url: &str) -> Result<(), ControlError> {
        edges::add(self, id, url).await
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

/// How long Redis keeps an invitation: a week past its expiry (so that it is refused as
/// expired, not unknown), within what Redis accepts.
fn invite_ttl_ms(invite: &Invite) -> u64 {
    // Redis refuses expiries past the end of its clock; a year is plenty for a link.
    const MAX_TTL_MS: u64 = 366 * 24 * 3600 * 1000;
    invite
        .expires_at
        .saturating_add(super::INVITE_GRACE_MS)
        .saturating_sub(crate::clock::now_ms())
        .clamp(1, MAX_TTL_MS)
}
