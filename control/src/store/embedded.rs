//! The single-node store: one redb file, every write durable when it returns.
//!
//! Writes are serialised by redb's single writer, so [`Store::update_room`] is atomic. The
//! bus is an in-process broadcast channel.

use std::path::Path;
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::{BUS_CAPACITY, Follow, Invite, Mutation, Profile, Store, json, parse};
use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{RoomDoc, RoomId, RoomState, UserId};
use crate::room::Effects;

const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const ACTIVE: TableDefinition<&str, &str> = TableDefinition::new("active_room");
const FOLLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("follows");
const INVITES: TableDefinition<&str, &[u8]> = TableDefinition::new("invites");
const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");

/// The embedded store.
pub struct EmbeddedStore {
    db: Database,
    /// Serialises read-modify-write sequences (redb has one writer; this keeps the closure out
    /// of redb's lock so a slow closure cannot deadlock it).
    lock: Mutex<()>,
    bus: broadcast::Sender<BusMessage>,
    /// Instance heartbeats: instance → unix ms of expiry. In memory: after a restart every
    /// earlier instance is dead, as its sessions are.
    alive: Mutex<std::collections::HashMap<String, u64>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

fn db_err(e: impl std::fmt::Display) -> ControlError {
    ControlError::unavailable(format!("embedded store: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`, creating its directory.
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
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(ROOMS).map_err(db_err)?;
            txn.open_table(ACTIVE).map_err(db_err)?;
            txn.open_table(FOLLOWS).map_err(db_err)?;
            txn.open_table(INVITES).map_err(db_err)?;
            txn.open_table(PROFILES).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let (bus, _) = broadcast::channel(BUS_CAPACITY);
        Ok(EmbeddedStore {
            db,
            lock: Mutex::new(()),
            bus,
            alive: Mutex::new(Default::default()),
        })
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get_bytes(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, ControlError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(table).map_err(db_err)?;
        Ok(t.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    fn put_bytes(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), ControlError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(table).map_err(db_err)?;
            t.insert(key, value).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn insert_room(&self, doc: &RoomDoc) -> Result<(), ControlError> {
        let _g = self.guard();
        self.put_bytes(ROOMS, doc.room.id.as_str(), json(doc)?.as_bytes())
    }

    async fn room(&self, id: &RoomId) -> Result<Option<RoomDoc>, ControlError> {
        self.get_bytes(ROOMS, id.as_str())?
            .map(|b| parse("room", &b))
            .transpose()
    }

    async fn update_room(
        &self,
        id: &RoomId,
        f: &mut Mutation<'_>,
    ) -> Result<Effects, ControlError> {
        let _g = self.guard();
        let Some(bytes) = self.get_bytes(ROOMS, id.as_str())? else {
            return Err(ControlError::not_found("room", id.as_str()));
        };
        let mut doc: RoomDoc = parse("room", &bytes)?;
        let before = doc.clone();
        let effects = f(&mut doc)?;
        if doc != before {
            self.put_bytes(ROOMS, id.as_str(), json(&doc)?.as_bytes())?;
        }
        Ok(effects)
    }

    async fn rooms(&self, states: &[RoomState]) -> Result<Vec<RoomDoc>, ControlError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(ROOMS).map_err(db_err)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(db_err)? {
            let (_, v) = entry.map_err(db_err)?;
            let doc: RoomDoc = parse("room", v.value())?;
            if states.contains(&doc.room.state) {
                out.push(doc);
            }
        }
        Ok(out)
    }

    async fn claim_active(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<Option<RoomId>, ControlError> {
        let _g = self.guard();
        let txn = self.db.begin_write().map_err(db_err)?;
        let existing = {
            let mut t = txn.open_table(ACTIVE).map_err(db_err)?;
            let existing = t
                .get(user.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_owned());
            match existing {
                Some(other) if other != room.as_str() => Some(other),
                _ => {
                    t.insert(user.as_str(), room.as_str()).map_err(db_err)?;
                    None
                }
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(existing.and_then(|s| RoomId::parse(&s).ok()))
    }

    async fn release_active(&self, user: &UserId, room: &RoomId) -> Result<(), ControlError> {
        let _g = self.guard();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = txn.open_table(ACTIVE).map_err(db_err)?;
            let current = t
                .get(user.as_str())
                .map_err(db_err)?
                .map(|v| v.value().to_owned());
            if current.as_deref() == Some(room.as_str()) {
                t.remove(user.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    async fn set_follow(&self, user: &UserId, what: &Follow, on: bool) -> Result<(), ControlError> {
        let _g = self.guard();
        let mut set: std::collections::BTreeSet<String> =
            match self.get_bytes(FOLLOWS, user.as_str())? {
                Some(b) => parse("follows", &b)?,
                None => Default::default(),
            };
        if on {
            set.insert(what.key());
        } else {
            set.remove(&what.key());
        }
        self.put_bytes(FOLLOWS, user.as_str(), json(&set)?.as_bytes())
    }

    async fn follows(&self, user: &UserId) -> Result<Vec<Follow>, ControlError> {
        let set: Vec<String> = match self.get_bytes(FOLLOWS, user.as_str())? {
            Some(b) => parse("follows", &b)?,
            None => Vec::new(),
        };
        Ok(set.iter().filter_map(|k| Follow::from_key(k)).collect())
    }

    async fn set_profile(&self, user: &UserId, profile: &Profile) -> Result<(), ControlError> {
        let _g = self.guard();
        self.put_bytes(PROFILES, user.as_str(), json(profile)?.as_bytes())
    }

    async fn profile(&self, user: &UserId) -> Result<Option<Profile>, ControlError> {
        self.get_bytes(PROFILES, user.as_str())?
            .map(|b| parse("profile", &b))
            .transpose()
    }

    async fn put_invite(&self, token: &str, invite: &Invite) -> Result<(), ControlError> {
        let _g = self.guard();
        self.put_bytes(INVITES, token, json(invite)?.as_bytes())
    }

    async fn invite(&self, token: &str) -> Result<Option<Invite>, ControlError> {
        self.get_bytes(INVITES, token)?
            .map(|b| parse("invite", &b))
            .transpose()
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

    async fn publish(&self, message: &BusMessage) -> Result<(), ControlError> {
        // No subscriber is not an error.
        let _ = self.bus.send(message.clone());
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.bus.subscribe()
    }
}
