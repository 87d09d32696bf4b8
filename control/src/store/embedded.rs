//! The single-node store: the state in memory, every change to a room made durable in one
//! redb file before it is acknowledged.
//!
//! Reads are answered from memory. A change runs under one lock: the command's records are
//! copied out of memory ([`Scope`]), changed, and the difference ([`Changes`]) applied to
//! memory and queued, in order, for the writer thread, which owns the file and commits
//! whatever is queued in one transaction (one `fsync` for many changes: grouped commits); the
//! caller awaits that commit, so a change it was told about survives a crash, and no blocking
//! I/O runs on the async workers (one-active-room claims are queued without waiting: the
//! member record written next makes them durable with it). If a commit ever fails, memory is ahead of the file: the
//! store then refuses every further change (503) until the process restarts and reloads the
//! file.
//!
//! Records (redb tables, keys `{room}/{user}` for per-member records; ids cannot contain `/`):
//!
//! | table | key | value |
//! |---|---|---|
//! | `room_headers` | room | `{room, stats}` (JSON); counts are recomputed on load |
//! | `room_members` | room/user | member (JSON) |
//! | `room_hands` | room/user | unix ms raised |
//! | `room_bans` | room/user | empty |
//! | `room_kicks` | room/user | unix ms until which they may not rejoin |
//! | `room_invited` | room/user | empty |
//! | `room_lineup` | room/user | role given in advance (JSON: `"co_host"`, `"speaker"`) |
//! | `room_audit` | room | the room's audit log (JSON list, the newest 200) |
//! | `active_room` | user | the one room the user is in |
//! | `follows` | user | JSON list of `user:{id}` / `room:{id}` |
//! | `invites` | token | invitation (JSON) |
//! | `profiles` | user | profile (JSON: bio, small avatar) |
//! | `room_recordings` | room | the room's recordings (JSON list: id, files, times, size) |
//! | `clips` | clip | a clip (JSON: room, recording, range, file, speakers) |
//! | `notifications` | user/unix ms (16 digits)/id | a feed entry (JSON) |
//! | `notification_reads` | user | unix ms up to which the feed is read |
//!
//! A file written by the earlier layout (one `rooms` table of whole-room documents) is split
//! into these records when opened.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    AudiencePage, BUS_CAPACITY, Changes, Follow, Invite, MAX_FEED, Mutation, Notification, Profile,
    Store, json, parse,
};
use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{
    Counts, Role, Room, RoomDoc, RoomId, RoomState, RoomStats, STAGE_LOADED, Scope, UserId,
};
use crate::replay::{Clip, ClipId, Recording};
use crate::room::Effects;

const HEADERS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_headers");
const MEMBERS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_members");
const HANDS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_hands");
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_bans");
const KICKS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_kicks");
const INVITED: TableDefinition<&str, &[u8]> = TableDefinition::new("room_invited");
const LINEUP: TableDefinition<&str, &[u8]> = TableDefinition::new("room_lineup");
const ACTIVE: TableDefinition<&str, &[u8]> = TableDefinition::new("active_room");
const FOLLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("follows");
const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
const NOTIFICATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("notifications");
const READS: TableDefinition<&str, &[u8]> = TableDefinition::new("notification_reads");
const AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("room_audit");
const RECORDINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("room_recordings");
const CLIPS: TableDefinition<&str, &[u8]> = TableDefinition::new("clips");
/// The earlier layout: whole-room documents.
const LEGACY_ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
/// The earlier layout's claims (text values).
const LEGACY_ACTIVE: TableDefinition<&str, &str> = TableDefinition::new("active_room");

const TABLES: [TableDefinition<&str, &[u8]>; 15] = [
    HEADERS,
    MEMBERS,
    HANDS,
    BANS,
    KICKS,
    INVITED,
    LINEUP,
    FOLLOWS,
    INVITES,
    PROFILES,
    NOTIFICATIONS,
    READS,
    AUDIT,
    RECORDINGS,
    CLIPS,
];

/// Changes queued for the writer before callers wait for room.
const QUEUE: usize = 1024;
/// Most changes one commit takes.
const GROUP: usize = 512;

type Table = TableDefinition<'static, &'static str, &'static [u8]>;

/// One write of a record.
enum Op {
    Put(Table, String, Vec<u8>),
    Delete(Table, String),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put(t, k, _) => write!(f, "Put({}, {k})", t.name()),
            Op::Delete(t, k) => write!(f, "Delete({}, {k})", t.name()),
        }
    }
}

/// Writes queued by one change, and who waits for their commit.
#[derive(Debug)]
struct Batch {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A room's header as this store keeps it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    room: Room,
    stats: RoomStats,
}

/// One room in memory: its whole document, counts and indexes.
#[derive(Debug)]
struct Entry {
    doc: RoomDoc,
    counts: Counts,
    stage: BTreeSet<UserId>,
    audience: BTreeSet<UserId>,
    hands_by_time: BTreeSet<(u64, UserId)>,
}

impl Entry {
    fn new(doc: RoomDoc) -> Entry {
        let mut counts = Counts::of(doc.members.values(), doc.hands.len());
        counts.lineup = u32::try_from(doc.lineup.len()).unwrap_or(u32::MAX);
        let (stage, audience): (Vec<_>, Vec<_>) =
            doc.members.iter().partition(|(_, m)| m.role.on_stage());
        Entry {
            stage: stage.into_iter().map(|(u, _)| u.clone()).collect(),
            audience: audience.into_iter().map(|(u, _)| u.clone()).collect(),
            hands_by_time: doc.hands.iter().map(|(u, t)| (*t, u.clone())).collect(),
            counts,
            doc,
        }
    }

    /// The header and the records `scope` names.
    fn partial(&self, scope: &Scope) -> RoomDoc {
        if scope.all {
            return self.doc.clone();
        }
        let mut d = RoomDoc::new(self.doc.room.clone());
        d.stats = self.doc.stats.clone();
        let stage = if scope.stage {
            self.stage.iter().take(STAGE_LOADED).collect()
        } else {
            Vec::new()
        };
        for u in scope.users.iter().chain(stage) {
            let full = &self.doc;
            if let Some(m) = full.members.get(u) {
                d.members.insert(u.clone(), m.clone());
            }
            if let Some(t) = full.hands.get(u) {
                d.hands.insert(u.clone(), *t);
            }
            if full.bans.contains(u) {
                d.bans.insert(u.clone());
            }
            if let Some(t) = full.kicks.get(u) {
                d.kicks.insert(u.clone(), *t);
            }
            if full.invited.contains(u) {
                d.invited.insert(u.clone());
            }
            if let Some(r) = full.lineup.get(u) {
                d.lineup.insert(u.clone(), *r);
            }
        }
        d.set_total(&self.counts);
        d
    }

    /// Applies `c` (made on a partial copy that is now `after`) and returns the writes.
    fn apply(&mut self, after: &RoomDoc, c: &Changes) -> Result<Vec<Op>, ControlError> {
        let id = self.doc.room.id.clone();
        let key = |u: &UserId| format!("{id}/{u}");
        let mut ops = Vec::new();
        if c.room || c.stats {
            self.doc.room = after.room.clone();
            self.doc.stats = after.stats.clone();
            let stored = Stored {
                room: after.room.clone(),
                stats: after.stats.clone(),
            };
            ops.push(Op::Put(
                HEADERS,
                id.to_string(),
                json(&stored)?.into_bytes(),
            ));
        }
        for (u, m) in &c.members {
            match m {
                Some(m) => {
                    ops.push(Op::Put(MEMBERS, key(u), json(m)?.into_bytes()));
                    self.doc.members.insert(u.clone(), m.clone());
                }
                None => {
                    ops.push(Op::Delete(MEMBERS, key(u)));
                    self.doc.members.remove(u);
                }
            }
        }
        for (u, on) in &c.stage {
            toggle(&mut self.stage, u, *on);
        }
        for (u, on) in &c.audience {
            toggle(&mut self.audience, u, *on);
        }
        for (u, t) in &c.hands {
            if let Some(old) = self.doc.hands.remove(u) {
                self.hands_by_time.remove(&(old, u.clone()));
            }
            match t {
                Some(t) => {
                    self.doc.hands.insert(u.clone(), *t);
                    self.hands_by_time.insert((*t, u.clone()));
                    ops.push(Op::Put(HANDS, key(u), t.to_be_bytes().to_vec()));
                }
                None => ops.push(Op::Delete(HANDS, key(u))),
            }
        }
        for (u, t) in &c.kicks {
            match t {
                Some(t) => {
                    self.doc.kicks.insert(u.clone(), *t);
                    ops.push(Op::Put(KICKS, key(u), t.to_be_bytes().to_vec()));
                }
                None => {
                    self.doc.kicks.remove(u);
                    ops.push(Op::Delete(KICKS, key(u)));
                }
            }
        }
        for (table, set, changes) in [
            (BANS, &mut self.doc.bans, &c.bans),
            (INVITED, &mut self.doc.invited, &c.invited),
        ] {
            for (u, on) in changes {
                toggle(set, u, *on);
                ops.push(if *on {
                    Op::Put(table, key(u), Vec::new())
                } else {
                    Op::Delete(table, key(u))
                });
            }
        }
        for (u, r) in &c.lineup {
            match r {
                Some(r) => {
                    self.doc.lineup.insert(u.clone(), *r);
                    ops.push(Op::Put(LINEUP, key(u), json(r)?.into_bytes()));
                }
                None => {
                    self.doc.lineup.remove(u);
                    ops.push(Op::Delete(LINEUP, key(u)));
                }
            }
        }
        self.counts = c.total.clone();
        Ok(ops)
    }
}

fn toggle(set: &mut BTreeSet<UserId>, u: &UserId, on: bool) {
    if on {
        set.insert(u.clone());
    } else {
        set.remove(u);
    }
}

/// Everything the store holds.
#[derive(Debug, Default)]
struct Mem {
    rooms: HashMap<RoomId, Entry>,
    by_state: HashMap<RoomState, BTreeSet<RoomId>>,
    active: HashMap<UserId, RoomId>,
    follows: HashMap<UserId, BTreeSet<String>>,
    invites: HashMap<String, Invite>,
    profiles: HashMap<UserId, Profile>,
    /// Who follows what (`user:{id}` / `room:{id}` → followers), derived from `follows`.
    followers: HashMap<String, BTreeSet<UserId>>,
    /// Feeds, oldest first.
    feeds: HashMap<UserId, std::collections::VecDeque<Notification>>,
    reads: HashMap<UserId, u64>,
    audit: HashMap<RoomId, Vec<super::AuditEntry>>,
    recordings: HashMap<RoomId, Vec<Recording>>,
    clips: HashMap<ClipId, Clip>,
}

fn feed_key(u: &UserId, n: &Notification) -> String {
    format!("{u}/{:016}/{}", n.at, n.id)
}

impl Mem {
    fn index(&mut self, id: &RoomId, old: Option<RoomState>, new: Option<RoomState>) {
        if old == new {
            return;
        }
        if let Some(s) = old
            && let Some(set) = self.by_state.get_mut(&s)
        {
            set.remove(id);
        }
        if let Some(s) = new {
            self.by_state.entry(s).or_default().insert(id.clone());
        }
    }
}

/// The embedded store.
pub struct EmbeddedStore {
    mem: tokio::sync::Mutex<Mem>,
    /// The writer thread's queue (taken on drop, which ends the thread).
    writer: Option<mpsc::Sender<Batch>>,
    /// The writer thread, joined on drop so that the file is closed when the store is gone.
    thread: Option<std::thread::JoinHandle<()>>,
    /// A commit failed: memory is ahead of the file.
    broken: AtomicBool,
    bus: broadcast::Sender<BusMessage>,
    /// Instance heartbeats: instance → unix ms of expiry. In memory: after a restart every
    /// earlier instance is dead, as its sessions are.
    alive: Mutex<HashMap<String, u64>>,
    /// Node records (in memory, like the heartbeats) and the ids an operator drained.
    nodes: Mutex<(HashMap<String, crate::nodes::Node>, BTreeSet<String>)>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn db_err(e: impl std::fmt::Display) -> ControlError {
    ControlError::unavailable(format!("embedded store: {e}"))
}

fn user_of(key: &str) -> Option<(RoomId, UserId)> {
    let (room, user) = key.split_once('/')?;
    Some((RoomId::parse(room).ok()?, UserId::parse(user).ok()?))
}

fn ms(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or_default()
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`, creating its directory, loads it into
    /// memory and starts its writer thread.
    pub fn open(path: &Path) -> Result<EmbeddedStore, ControlError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                ControlError::unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(path).map_err(|e| {
            ControlError::unavailable(format!("cannot open {}: {e}", path.display()))
        })?;
        migrate(&db)?;
        let mem = load(&db)?;
        let (writer, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("control-store".into())
            .spawn(move || write_loop(db, rx))
            .map_err(|e| ControlError::unavailable(format!("no writer thread: {e}")))?;
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        Ok(EmbeddedStore {
            mem: tokio::sync::Mutex::new(mem),
            writer: Some(writer),
            thread: Some(thread),
            broken: AtomicBool::new(false),
            bus,
            alive: Mutex::new(HashMap::new()),
            nodes: Mutex::default(),
        })
    }

    fn usable(&self) -> Result<(), ControlError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(ControlError::unavailable(
                "embedded store: an earlier commit failed; restart the server",
            ));
        }
        Ok(())
    }

    /// Queues `ops` (call while holding the memory lock, so commits keep its order); the
    /// returned receiver answers once they are durable.
    async fn queue(
        &self,
        ops: Vec<Op>,
    ) -> Result<oneshot::Receiver<Result<(), String>>, ControlError> {
        let (done, rx) = oneshot::channel();
        let Some(writer) = &self.writer else {
            return Err(ControlError::unavailable("embedded store: closed"));
        };
        writer
            .send(Batch { ops, done })
            .await
            .map_err(|_| ControlError::unavailable("embedded store: the writer stopped"))?;
        Ok(rx)
    }

    async fn durable(&self, rx: oneshot::Receiver<Result<(), String>>) -> Result<(), ControlError> {
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken.store(true, Ordering::Relaxed);
                tracing::error!(error = %e, "embedded store commit failed");
                Err(db_err(e))
            }
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                Err(ControlError::unavailable(
                    "embedded store: the writer stopped",
                ))
            }
        }
    }

    /// Queues `ops` in order with other changes without waiting for their commit: for the
    /// one-active-room claims, which the member record written next makes durable with it
    /// (commits keep the queue's order). A claim lost to a crash only lets its user hold two
    /// rooms until the stale one is released, as a claim without a connection is anyway.
    async fn queue_only(
        &self,
        mem: tokio::sync::MutexGuard<'_, Mem>,
        ops: Vec<Op>,
    ) -> Result<(), ControlError> {
        let _unawaited = self.queue(ops).await?;
        drop(mem);
        Ok(())
    }

    /// Writes `ops` in order with other changes and waits until they are durable.
    async fn write(
        &self,
        mem: tokio::sync::MutexGuard<'_, Mem>,
        ops: Vec<Op>,
    ) -> Result<(), ControlError> {
        let rx = self.queue(ops).await?;
        drop(mem);
        self.durable(rx).await
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after what is queued; waiting for it closes the
        // file, so that it can be opened again at once.
        self.writer.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Splits whole-room documents of the earlier layout into records.
fn migrate(db: &Database) -> Result<(), ControlError> {
    let txn = db.begin_write().map_err(db_err)?;
    let legacy = txn
        .list_tables()
        .map_err(db_err)?
        .any(|t| t.name() == LEGACY_ROOMS.name());
    if legacy {
        let mut docs = Vec::new();
        {
            let t = txn.open_table(LEGACY_ROOMS).map_err(db_err)?;
            for entry in t.iter().map_err(db_err)? {
                let (_, v) = entry.map_err(db_err)?;
                docs.push(parse::<RoomDoc>("room", v.value())?);
            }
        }
        let mut claims = Vec::new();
        if let Ok(t) = txn.open_table(LEGACY_ACTIVE) {
            for entry in t.iter().map_err(db_err)? {
                let (k, v) = entry.map_err(db_err)?;
                claims.push((k.value().to_owned(), v.value().to_owned()));
            }
        }
        txn.delete_table(LEGACY_ROOMS).map_err(db_err)?;
        txn.delete_table(LEGACY_ACTIVE).map_err(db_err)?;
        for doc in &docs {
            let mut entry = Entry::new(RoomDoc::new(doc.room.clone()));
            let before = entry.partial(&Scope::all());
            let ops = entry.apply(doc, &Changes::between(&before, doc))?;
            let mut ops = ops;
            ops.push(Op::Put(
                HEADERS,
                doc.room.id.to_string(),
                json(&Stored {
                    room: doc.room.clone(),
                    stats: doc.stats.clone(),
                })?
                .into_bytes(),
            ));
            apply_ops(&txn, &ops)?;
        }
        let mut t = txn.open_table(ACTIVE).map_err(db_err)?;
        for (u, r) in claims {
            t.insert(u.as_str(), r.as_bytes()).map_err(db_err)?;
        }
        drop(t);
        tracing::info!(
            rooms = docs.len(),
            "embedded store split into per-member records"
        );
    }
    for table in TABLES.iter().chain([&ACTIVE]) {
        txn.open_table(*table).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// Reads the whole file into memory.
fn load(db: &Database) -> Result<Mem, ControlError> {
    let txn = db.begin_read().map_err(db_err)?;
    let mut docs: HashMap<RoomId, RoomDoc> = HashMap::new();
    for entry in txn
        .open_table(HEADERS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (_, v) = entry.map_err(db_err)?;
        let s: Stored = parse("room", v.value())?;
        let mut doc = RoomDoc::new(s.room);
        doc.stats = s.stats;
        docs.insert(doc.room.id.clone(), doc);
    }
    for (table, what) in [
        (MEMBERS, "member"),
        (HANDS, "hand"),
        (BANS, "ban"),
        (KICKS, "kick"),
        (INVITED, "invitation"),
        (LINEUP, "lineup"),
    ] {
        for entry in txn
            .open_table(table)
            .map_err(db_err)?
            .iter()
            .map_err(db_err)?
        {
            let (k, v) = entry.map_err(db_err)?;
            let Some((room, user)) = user_of(k.value()) else {
                tracing::warn!(what, "unreadable record key skipped");
                continue;
            };
            let Some(doc) = docs.get_mut(&room) else {
                continue;
            };
            match what {
                "member" => {
                    doc.members.insert(user, parse("member", v.value())?);
                }
                "hand" => {
                    doc.hands.insert(user, ms(v.value()));
                }
                "ban" => {
                    doc.bans.insert(user);
                }
                "kick" => {
                    doc.kicks.insert(user, ms(v.value()));
                }
                "lineup" => {
                    doc.lineup.insert(user, parse("lineup", v.value())?);
                }
                _ => {
                    doc.invited.insert(user);
                }
            }
        }
    }
    let mut mem = Mem::default();
    for (id, doc) in docs {
        let state = doc.room.state;
        mem.rooms.insert(id.clone(), Entry::new(doc));
        mem.index(&id, None, Some(state));
    }
    for entry in txn
        .open_table(ACTIVE)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        let room = std::str::from_utf8(v.value())
            .ok()
            .and_then(|r| RoomId::parse(r).ok());
        if let (Ok(u), Some(r)) = (UserId::parse(k.value()), room) {
            mem.active.insert(u, r);
        }
    }
    for entry in txn
        .open_table(FOLLOWS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        if let Ok(u) = UserId::parse(k.value()) {
            let set: BTreeSet<String> = parse("follows", v.value())?;
            for what in &set {
                mem.followers
                    .entry(what.clone())
                    .or_default()
                    .insert(u.clone());
            }
            mem.follows.insert(u, set);
        }
    }
    for entry in txn
        .open_table(PROFILES)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        if let Ok(u) = UserId::parse(k.value()) {
            mem.profiles.insert(u, parse("profile", v.value())?);
        }
    }
    for entry in txn
        .open_table(NOTIFICATIONS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        let user = k
            .value()
            .split('/')
            .next()
            .and_then(|u| UserId::parse(u).ok());
        if let Some(u) = user {
            let n: Notification = parse("notification", v.value())?;
            mem.feeds.entry(u).or_default().push_back(n);
        }
    }
    for entry in txn
        .open_table(READS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        if let Ok(u) = UserId::parse(k.value()) {
            mem.reads.insert(u, ms(v.value()));
        }
    }
    for entry in txn
        .open_table(AUDIT)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        if let Ok(r) = RoomId::parse(k.value()) {
            mem.audit.insert(r, parse("audit log", v.value())?);
        }
    }
    for entry in txn
        .open_table(RECORDINGS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        if let Ok(r) = RoomId::parse(k.value()) {
            mem.recordings.insert(r, parse("recordings", v.value())?);
        }
    }
    for entry in txn
        .open_table(CLIPS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (_, v) = entry.map_err(db_err)?;
        let clip: Clip = parse("clip", v.value())?;
        mem.clips.insert(clip.id.clone(), clip);
    }
    let now = crate::clock::now_ms();
    for entry in txn
        .open_table(INVITES)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = entry.map_err(db_err)?;
        let invite: Invite = parse("invite", v.value())?;
        if invite.expires_at.saturating_add(super::INVITE_GRACE_MS) > now {
            mem.invites.insert(k.value().to_owned(), invite);
        }
    }
    Ok(mem)
}

fn apply_ops(txn: &redb::WriteTransaction, ops: &[Op]) -> Result<(), ControlError> {
    for op in ops {
        match op {
            Op::Put(table, k, v) => {
                txn.open_table(*table)
                    .map_err(db_err)?
                    .insert(k.as_str(), v.as_slice())
                    .map_err(db_err)?;
            }
            Op::Delete(table, k) => {
                txn.open_table(*table)
                    .map_err(db_err)?
                    .remove(k.as_str())
                    .map_err(db_err)?;
            }
        }
    }
    Ok(())
}

/// The writer thread: commits whatever is queued, in order, one transaction per group.
fn write_loop(db: Database, mut rx: mpsc::Receiver<Batch>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP {
            match rx.try_recv() {
                Ok(b) => group.push(b),
                Err(_) => break,
            }
        }
        let result = (|| {
            let txn = db.begin_write().map_err(db_err)?;
            for b in &group {
                apply_ops(&txn, &b.ops)?;
            }
            txn.commit().map_err(db_err)
        })()
        .map_err(|e| e.message);
        metrics::histogram!(crate::telemetry::STORE_GROUP).record(group.len() as f64);
        for b in group {
            let _ = b.done.send(result.clone());
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn insert_room(&self, doc: &RoomDoc) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let id = doc.room.id.clone();
        let mut entry = Entry::new(RoomDoc::new(doc.room.clone()));
        let before = entry.partial(&Scope::all());
        let mut ops = entry.apply(doc, &Changes::between(&before, doc))?;
        ops.push(Op::Put(
            HEADERS,
            id.to_string(),
            json(&Stored {
                room: doc.room.clone(),
                stats: doc.stats.clone(),
            })?
            .into_bytes(),
        ));
        let state = doc.room.state;
        let old = mem
            .rooms
            .insert(id.clone(), entry)
            .map(|e| e.doc.room.state);
        mem.index(&id, old, Some(state));
        self.write(mem, ops).await
    }

    async fn room(&self, id: &RoomId, scope: &Scope) -> Result<Option<RoomDoc>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.rooms.get(id).map(|e| e.partial(scope)))
    }

    async fn update_room(
        &self,
        id: &RoomId,
        scope: &Scope,
        f: &mut Mutation<'_>,
    ) -> Result<Effects, ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let Some(entry) = mem.rooms.get_mut(id) else {
            return Err(ControlError::not_found("room", id.as_str()));
        };
        let mut doc = entry.partial(scope);
        let before = doc.clone();
        let effects = f(&mut doc)?;
        let changes = Changes::between(&before, &doc);
        if changes.is_empty() {
            return Ok(effects);
        }
        let ops = entry.apply(&doc, &changes)?;
        let (old, new) = (before.room.state, doc.room.state);
        mem.index(id, Some(old), Some(new));
        self.write(mem, ops).await?;
        Ok(effects)
    }

    async fn rooms(&self, states: &[RoomState]) -> Result<Vec<RoomDoc>, ControlError> {
        let mem = self.mem.lock().await;
        let scope = Scope::header().with_stage();
        Ok(states
            .iter()
            .filter_map(|s| mem.by_state.get(s))
            .flatten()
            .filter_map(|id| mem.rooms.get(id))
            .map(|e| e.partial(&scope))
            .collect())
    }

    async fn audience(
        &self,
        id: &RoomId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<AudiencePage, ControlError> {
        let mem = self.mem.lock().await;
        let Some(e) = mem.rooms.get(id) else {
            return Err(ControlError::not_found("room", id.as_str()));
        };
        let range = match after {
            Some(a) => e
                .audience
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => e.audience.range::<UserId, _>(..),
        };
        let mut page = AudiencePage::default();
        for u in range.take(limit.saturating_add(1)) {
            if page.members.len() == limit {
                page.next = page.members.last().map(|(u, _, _)| u.clone());
                break;
            }
            if let Some(m) = e.doc.members.get(u) {
                page.members
                    .push((u.clone(), m.clone(), e.doc.hands.contains_key(u)));
            }
        }
        Ok(page)
    }

    async fn hands(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, u64)>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.rooms.get(id).map_or_else(Vec::new, |e| {
            e.hands_by_time
                .iter()
                .take(limit)
                .map(|(t, u)| (u.clone(), *t))
                .collect()
        }))
    }

    async fn bans(&self, id: &RoomId, limit: usize) -> Result<Vec<UserId>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.rooms.get(id).map_or_else(Vec::new, |e| {
            e.doc.bans.iter().take(limit).cloned().collect()
        }))
    }

    async fn kicks(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, u64)>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.rooms.get(id).map_or_else(Vec::new, |e| {
            e.doc
                .kicks
                .iter()
                .take(limit)
                .map(|(u, t)| (u.clone(), *t))
                .collect()
        }))
    }

    async fn lineup(&self, id: &RoomId, limit: usize) -> Result<Vec<(UserId, Role)>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.rooms.get(id).map_or_else(Vec::new, |e| {
            e.doc
                .lineup
                .iter()
                .take(limit)
                .map(|(u, r)| (u.clone(), *r))
                .collect()
        }))
    }

    async fn invited(&self, id: &RoomId, limit: usize) -> Result<Vec<UserId>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.rooms.get(id).map_or_else(Vec::new, |e| {
            e.doc.invited.iter().take(limit).cloned().collect()
        }))
    }

    async fn remove_room(&self, id: &RoomId) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let Some(entry) = mem.rooms.remove(id) else {
            return Ok(());
        };
        mem.index(id, Some(entry.doc.room.state), None);
        let d = &entry.doc;
        let key = |u: &UserId| format!("{id}/{u}");
        let mut ops = vec![Op::Delete(HEADERS, id.to_string())];
        ops.extend(d.members.keys().map(|u| Op::Delete(MEMBERS, key(u))));
        ops.extend(d.hands.keys().map(|u| Op::Delete(HANDS, key(u))));
        ops.extend(d.bans.iter().map(|u| Op::Delete(BANS, key(u))));
        ops.extend(d.kicks.keys().map(|u| Op::Delete(KICKS, key(u))));
        ops.extend(d.invited.iter().map(|u| Op::Delete(INVITED, key(u))));
        ops.extend(d.lineup.keys().map(|u| Op::Delete(LINEUP, key(u))));
        if mem.audit.remove(id).is_some() {
            ops.push(Op::Delete(AUDIT, id.to_string()));
        }
        if mem.recordings.remove(id).is_some() {
            ops.push(Op::Delete(RECORDINGS, id.to_string()));
        }
        let clips: Vec<ClipId> = mem
            .clips
            .values()
            .filter(|c| c.room == *id)
            .map(|c| c.id.clone())
            .collect();
        for c in clips {
            mem.clips.remove(&c);
            ops.push(Op::Delete(CLIPS, c.to_string()));
        }
        self.write(mem, ops).await
    }

    async fn claim_active(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<Option<RoomId>, ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        match mem.active.get(user) {
            Some(other) if other != room => return Ok(Some(other.clone())),
            Some(_) => return Ok(None),
            None => {}
        }
        mem.active.insert(user.clone(), room.clone());
        let op = Op::Put(ACTIVE, user.to_string(), room.as_str().as_bytes().to_vec());
        self.queue_only(mem, vec![op]).await?;
        Ok(None)
    }

    async fn release_active(&self, user: &UserId, room: &RoomId) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        if mem.active.get(user) != Some(room) {
            return Ok(());
        }
        mem.active.remove(user);
        self.queue_only(mem, vec![Op::Delete(ACTIVE, user.to_string())])
            .await
    }

    async fn set_follow(&self, user: &UserId, what: &Follow, on: bool) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let set = mem.follows.entry(user.clone()).or_default();
        let changed = if on {
            set.insert(what.key())
        } else {
            set.remove(&what.key())
        };
        if !changed {
            return Ok(());
        }
        let op = Op::Put(FOLLOWS, user.to_string(), json(&*set)?.into_bytes());
        let followers = mem.followers.entry(what.key()).or_default();
        if on {
            followers.insert(user.clone());
        } else {
            followers.remove(user);
        }
        self.write(mem, vec![op]).await
    }

    async fn follows(&self, user: &UserId) -> Result<Vec<Follow>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.follows.get(user).map_or_else(Vec::new, |set| {
            set.iter().filter_map(|k| Follow::from_key(k)).collect()
        }))
    }

    async fn followers(
        &self,
        what: &Follow,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<UserId>, ControlError> {
        let mem = self.mem.lock().await;
        let Some(set) = mem.followers.get(&what.key()) else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(a) => set.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => set.range::<UserId, _>(..),
        };
        Ok(range.take(limit).cloned().collect())
    }

    async fn push_notification(
        &self,
        users: &[UserId],
        n: &Notification,
    ) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let mut ops = Vec::with_capacity(users.len());
        let value = json(n)?.into_bytes();
        for u in users {
            let feed = mem.feeds.entry(u.clone()).or_default();
            feed.push_back(n.clone());
            ops.push(Op::Put(NOTIFICATIONS, feed_key(u, n), value.clone()));
            while feed.len() > MAX_FEED {
                if let Some(old) = feed.pop_front() {
                    ops.push(Op::Delete(NOTIFICATIONS, feed_key(u, &old)));
                }
            }
        }
        self.write(mem, ops).await
    }

    async fn notifications(&self, user: &UserId) -> Result<(Vec<Notification>, u64), ControlError> {
        let mem = self.mem.lock().await;
        let feed = mem
            .feeds
            .get(user)
            .map_or_else(Vec::new, |f| f.iter().rev().cloned().collect());
        Ok((feed, mem.reads.get(user).copied().unwrap_or(0)))
    }

    async fn mark_read(&self, user: &UserId, until: u64) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let current = mem.reads.entry(user.clone()).or_default();
        if until <= *current {
            return Ok(());
        }
        *current = until;
        let op = Op::Put(READS, user.to_string(), until.to_be_bytes().to_vec());
        self.write(mem, vec![op]).await
    }

    async fn append_audit(
        &self,
        id: &RoomId,
        entry: &super::AuditEntry,
    ) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let log = mem.audit.entry(id.clone()).or_default();
        log.push(entry.clone());
        if log.len() > super::AUDIT_KEPT {
            let extra = log.len() - super::AUDIT_KEPT;
            log.drain(..extra);
        }
        let op = Op::Put(AUDIT, id.to_string(), json(log)?.into_bytes());
        self.write(mem, vec![op]).await
    }

    async fn audit(&self, id: &RoomId) -> Result<Vec<super::AuditEntry>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.audit.get(id).cloned().unwrap_or_default())
    }

    async fn set_profile(&self, user: &UserId, profile: &Profile) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        mem.profiles.insert(user.clone(), profile.clone());
        let op = Op::Put(PROFILES, user.to_string(), json(profile)?.into_bytes());
        self.write(mem, vec![op]).await
    }

    async fn profile(&self, user: &UserId) -> Result<Option<Profile>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.profiles.get(user).cloned())
    }

    async fn put_invite(&self, token: &str, invite: &Invite) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        mem.invites.insert(token.to_owned(), invite.clone());
        let op = Op::Put(INVITES, token.to_owned(), json(invite)?.into_bytes());
        self.write(mem, vec![op]).await
    }

    async fn invite(&self, token: &str) -> Result<Option<Invite>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.invites.get(token).cloned())
    }

    async fn room_invites(
        &self,
        id: &RoomId,
        limit: usize,
    ) -> Result<Vec<(String, Invite)>, ControlError> {
        let mem = self.mem.lock().await;
        let mut out: Vec<(String, Invite)> = mem
            .invites
            .iter()
            .filter(|(_, i)| i.room == *id)
            .map(|(t, i)| (t.clone(), i.clone()))
            .collect();
        out.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then(a.0.cmp(&b.0)));
        out.truncate(limit);
        Ok(out)
    }

    async fn use_invite(&self, token: &str, max_uses: Option<u32>) -> Result<bool, ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        let Some(invite) = mem.invites.get_mut(token) else {
            return Ok(false);
        };
        if max_uses.is_some_and(|m| invite.uses >= m) {
            return Ok(false);
        }
        invite.uses += 1;
        let op = Op::Put(INVITES, token.to_owned(), json(&*invite)?.into_bytes());
        self.write(mem, vec![op]).await?;
        Ok(true)
    }

    async fn put_recording(&self, recording: &Recording) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        if !mem.rooms.contains_key(&recording.room) {
            return Ok(());
        }
        let list = mem.recordings.entry(recording.room.clone()).or_default();
        super::merge_recording(list, recording);
        let op = Op::Put(
            RECORDINGS,
            recording.room.to_string(),
            json(list)?.into_bytes(),
        );
        self.write(mem, vec![op]).await
    }

    async fn recordings(&self, id: &RoomId) -> Result<Vec<Recording>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.recordings.get(id).cloned().unwrap_or_default())
    }

    async fn recording(
        &self,
        id: &RoomId,
        recording: &crate::replay::RecordingId,
    ) -> Result<Option<Recording>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem
            .recordings
            .get(id)
            .and_then(|list| list.iter().find(|r| r.id == *recording))
            .cloned())
    }

    async fn put_clip(&self, clip: &Clip) -> Result<(), ControlError> {
        self.usable()?;
        let mut mem = self.mem.lock().await;
        if !mem.rooms.contains_key(&clip.room) {
            return Err(ControlError::not_found("room", clip.room.as_str()));
        }
        mem.clips.insert(clip.id.clone(), clip.clone());
        let op = Op::Put(CLIPS, clip.id.to_string(), json(clip)?.into_bytes());
        self.write(mem, vec![op]).await
    }

    async fn clip(&self, id: &ClipId) -> Result<Option<Clip>, ControlError> {
        let mem = self.mem.lock().await;
        Ok(mem.clips.get(id).cloned())
    }

    async fn room_clips(&self, id: &RoomId, limit: usize) -> Result<Vec<Clip>, ControlError> {
        let mem = self.mem.lock().await;
        let mut out: Vec<Clip> = mem
            .clips
            .values()
            .filter(|c| c.room == *id)
            .cloned()
            .collect();
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        out.truncate(limit);
        Ok(out)
    }

    async fn heartbeat(&self, instance: &str, ttl_ms: u64) -> Result<(), ControlError> {
        let until = crate::clock::now_ms().saturating_add(ttl_ms);
        self.alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(instance.to_owned(), until);
        Ok(())
    }

    async fn alive(&self, instance: &str) -> Result<bool, ControlError> {
        let now = crate::clock::now_ms();
        Ok(self
            .alive
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(instance)
            .is_some_and(|&until| until > now))
    }

    async fn put_node(&self, node: &crate::nodes::Node, ttl_ms: u64) -> Result<(), ControlError> {
        let mut node = node.clone();
        node.expires_at = node.seen_at.saturating_add(ttl_ms);
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.0.insert(node.id.clone(), node);
        Ok(())
    }

    async fn nodes(&self, now: u64) -> Result<Vec<crate::nodes::Node>, ControlError> {
        let mut guard = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (records, drained) = &mut *guard;
        records.retain(|_, n| n.expires_at > now);
        drained.retain(|id| records.contains_key(id));
        let mut out: Vec<crate::nodes::Node> = records.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        for n in &mut out {
            n.draining |= drained.contains(&n.id);
        }
        Ok(out)
    }

    async fn drain_node(&self, id: &str, on: bool) -> Result<(), ControlError> {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if on {
            nodes.1.insert(id.to_owned());
        } else {
            nodes.1.remove(id);
        }
        Ok(())
    }

    async fn publish(&self, message: &BusMessage) -> Result<(), ControlError> {
        // No subscriber is not an error.
        let _ = self.bus.send(message.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.bus.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_name_room_and_user() {
        let (r, u) = user_of("aaaaaaaaaaaaaaaa/ann@x.org").unwrap_or_else(|| panic!("parsed"));
        assert_eq!((r.as_str(), u.as_str()), ("aaaaaaaaaaaaaaaa", "ann@x.org"));
        assert!(user_of("nope").is_none());
        assert_eq!(ms(&42u64.to_be_bytes()), 42);
    }
}
