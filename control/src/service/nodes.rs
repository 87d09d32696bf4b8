//! This node in the registry (its record, written with every heartbeat), operators' drain, and
//! the placement of rooms on nodes ([`crate::placement`] decides; this carries it out).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::clock::now_ms;
use crate::error::ControlError;
use crate::events::BusMessage;
use crate::model::{RoomDoc, RoomId, Scope};
use crate::nodes::{LoadSource, Node, NodeLoad};
use crate::placement;
use crate::room::Effects;

use super::Control;

/// How long a token request reuses the node list another one read (ms): placement needs no
/// fresher view than the heartbeats give, and a join storm reads it once a second, not per join.
const CACHE_MS: u64 = 1_000;

/// This node's part of the registry.
#[derive(Default)]
pub(super) struct NodeState {
    /// Set by [`Control::set_draining`] (the binary's shutdown): no new rooms come here.
    draining: AtomicBool,
    /// The media plane's load, when the binary gave one.
    source: OnceLock<Arc<dyn LoadSource>>,
    /// The living nodes as last read, and the unix ms they were read.
    cache: Mutex<Option<(u64, Arc<Vec<Node>>)>>,
    /// The members counted in the cached records since they were read, and the node URL each
    /// was counted on ([`Control::count_joining`]): each once, however often they ask.
    counted: Mutex<std::collections::HashMap<String, String>>,
    /// The media plane's load as last read: what the record says (a reading that is late
    /// lands here when it completes, for a later write).
    load: Arc<Mutex<NodeLoad>>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Starts the control plane on `store`, driving `media`, as node `instance` (its id in the
    /// registry and in members' presence: [`crate::nodes::valid_id`], unique to this process
    /// start). The binary chooses it, so that its relay links carry the same id.
    pub fn start_as(
        store: Arc<dyn crate::store::Store>,
        media: Arc<dyn crate::media::MediaPlane>,
        keys: crate::auth::Keys,
        config: crate::config::ControlConfig,
        instance: String,
    ) -> Control {
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let fanout = crate::notify::spawn(store.clone(), instance.clone());
        let inner = Arc::new(super::Inner {
            store,
            media,
            keys,
            config,
            instance,
            events,
            limits: Mutex::new(std::collections::HashMap::new()),
            fanout,
            streams: crate::notify::Streams::default(),
            hooks: OnceLock::new(),
            archive: OnceLock::new(),
            node: NodeState::default(),
        });
        tokio::spawn(super::consume(
            Arc::downgrade(&inner),
            inner.store.subscribe(),
        ));
        tokio::spawn(super::sweep(Arc::downgrade(&inner)));
        tokio::spawn(keep_record(Arc::downgrade(&inner)));
        tokio::spawn(super::drain::run(Arc::downgrade(&inner)));
        Control { inner }
    }

    /// Takes this node's load for its record from `source` from now on (once).
    pub fn set_load_source(&self, source: Arc<dyn LoadSource>) {
        let _ = self.inner.node.source.set(source);
    }

    /// Marks this node as draining (it takes no new rooms), or not, and says so in its record
    /// at once.
    pub async fn set_draining(&self, on: bool) {
        self.inner.node.draining.store(on, Ordering::Relaxed);
        if let Err(e) = self.beat().await {
            tracing::warn!(error = %e, "node record not written");
        }
        self.count_nodes().await;
    }

    /// Whether this node is stopping by itself ([`Control::set_draining`]).
    pub(super) fn shutting_down(&self) -> bool {
        self.inner.node.draining.load(Ordering::Relaxed)
    }

    /// The living nodes sharing this store, read now.
    pub async fn nodes(&self) -> Result<Vec<Node>, ControlError> {
        let now = now_ms();
        let nodes = self.inner.store.nodes(now).await?;
        self.remember(now, &nodes);
        Ok(nodes)
    }

    /// Drains node `id` (`on`: it takes no new rooms) or lifts it; its record afterwards.
    /// 404 when no such node lives.
    pub async fn drain_node(&self, id: &str, on: bool) -> Result<Node, ControlError> {
        let missing = || ControlError::not_found("living node", id);
        if !crate::nodes::valid_id(id) || !self.nodes().await?.iter().any(|n| n.id == id) {
            return Err(missing());
        }
        self.inner.store.drain_node(id, on).await?;
        tracing::info!(
            node = id,
            draining = on,
            "node drain changed by an operator"
        );
        let node = self.nodes().await?.into_iter().find(|n| n.id == id);
        node.ok_or_else(missing)
    }

    /// Writes this node's record, with its load as last read, for `[control] node_ttl`.
    pub(super) async fn beat(&self) -> Result<(), ControlError> {
        let ttl_ms = self.inner.config.node_ttl.saturating_mul(1000);
        let load = *self
            .inner
            .node
            .load
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = now_ms();
        let node = Node {
            id: self.inner.instance.clone(),
            public_url: self.inner.config.public_url.clone(),
            load,
            draining: self.inner.node.draining.load(Ordering::Relaxed),
            seen_at: now,
            expires_at: now.saturating_add(ttl_ms),
        };
        self.inner.store.put_node(&node, ttl_ms).await
    }

    /// Reads the living nodes for the node metrics (the sweep's pace, not the heartbeat's:
    /// every node reading every record each second would cost the registry N² reads).
    pub(super) async fn count_nodes(&self) {
        let nodes = match self.nodes().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nodes");
                return;
            }
        };
        let draining = nodes.iter().filter(|n| n.draining).count();
        crate::telemetry::nodes(nodes.len() - draining, draining);
        if let Some(me) = nodes.iter().find(|n| n.id == self.inner.instance) {
            crate::telemetry::node(
                me.draining,
                placement::load(me, self.inner.config.node_capacity),
            );
        }
    }

    /// Tells every instance that room `id` moved to the node at `to`: the nodes serving its
    /// listeners re-link to it at once ([`Control::relink`]) rather than at their next sweep.
    async fn announce_move(&self, id: &RoomId, to: &str) {
        let message = BusMessage {
            origin: self.inner.instance.clone(),
            media: Vec::new(),
            events: Vec::new(),
            notices: Vec::new(),
            moved: vec![(id.clone(), to.to_owned())],
            presence: Vec::new(),
        };
        if let Err(e) = self.inner.store.publish(&message).await {
            tracing::warn!(room = %id, error = %e, "room move not announced; edges re-link at their sweep");
        }
    }

    fn remember(&self, now: u64, nodes: &[Node]) {
        let node = &self.inner.node;
        let mut cache = node
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache = Some((now, Arc::new(nodes.to_vec())));
        // The records now count whoever had connected; those counted before are forgotten.
        node.counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The node records as last read (by the heartbeat or a token request), however long ago;
    /// `None` before the first reading.
    pub(super) fn last_read(&self) -> Option<Arc<Vec<Node>>> {
        self.inner
            .node
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, nodes)| nodes.clone())
    }

    /// The living nodes, as read at most [`CACHE_MS`] ago.
    pub(super) async fn living(&self) -> Result<Arc<Vec<Node>>, ControlError> {
        let now = now_ms();
        let cached = self
            .inner
            .node
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some((at, nodes)) = cached
            && now.saturating_sub(at) < CACHE_MS
        {
            return Ok(nodes);
        }
        Ok(Arc::new(self.nodes().await?))
    }

    /// Where a new room's media goes: the living, non-draining node with the most headroom,
    /// or this node when none is known yet; `None` when nodes have no URLs of their own
    /// (`public_url` unset: clients use the host they asked).
    pub(super) async fn place_new_room(&self) -> Option<String> {
        let own = &self.inner.config.public_url;
        if own.is_empty() {
            return None;
        }
        let chosen = match self.living().await {
            Ok(nodes) => placement::choose(&nodes, self.inner.config.node_capacity, now_ms())
                .map(|n| (n.id.clone(), n.public_url.clone())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the nodes; the room stays here");
                None
            }
        };
        let Some((id, url)) = chosen else {
            return Some(own.clone());
        };
        self.count_placed(&id);
        Some(url)
    }

    /// Counts a room just placed on node `id` in the cached records until the next reading,
    /// so that rooms created in a burst between two heartbeats spread over equal nodes.
    fn count_placed(&self, id: &str) {
        self.count_cached(|n| n.id == id, |n| n.load.rooms += 1);
    }

    /// Counts member `user`, just sent to the node at `url`, in the cached records until the
    /// next reading, so that a burst of token requests between two heartbeats fills a node to
    /// its capacity and then spills over to an edge, instead of all landing on it. A member
    /// counted before (asking again) is counted once, where last sent. (Someone already
    /// connected who asks again after a reading counts twice until the next one: a listener
    /// may spill a moment early, never late.)
    pub(super) fn count_joining(&self, url: &str, user: &str) {
        // The caller took them out before choosing; another request of theirs may have counted
        // them again meanwhile.
        self.uncount(user);
        self.inner
            .node
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(user.to_owned(), url.to_owned());
        self.count_cached(|n| n.public_url == url, |n| n.load.participants += 1);
    }

    /// Takes member `user` out of the cached counts, if [`Control::count_joining`] counted
    /// them since the last reading: their own earlier request does not fill a node for them.
    pub(super) fn uncount(&self, user: &str) {
        let was = self
            .inner
            .node
            .counted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(user);
        if let Some(url) = was {
            self.count_cached(
                |n| n.public_url == url,
                |n| n.load.participants = n.load.participants.saturating_sub(1),
            );
        }
    }

    fn count_cached(&self, pick: impl Fn(&Node) -> bool, change: impl FnOnce(&mut Node)) {
        let mut cache = self
            .inner
            .node
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, nodes)) = cache.as_mut() {
            let mut counted = nodes.to_vec();
            if let Some(n) = counted.iter_mut().find(|n| pick(n)) {
                change(n);
            }
            *nodes = Arc::new(counted);
        }
    }

    /// Where room `doc`'s clients connect now: its node (its origin), or, when that node is
    /// gone (its record expired: `node_ttl`), or is draining and the room has nobody connected
    /// there, or the room has none yet, the node with the most headroom, which the room then
    /// moves to. Only members connected to the origin while it lives keep the room there
    /// ([`placement::holding`]): not those on its edges, nor those still counted on a dead
    /// origin. The nodes serving the room hear of a move over the bus and re-link to the new
    /// origin ([`Control::relink`]).
    pub(super) async fn media_url_of(&self, doc: &RoomDoc) -> Result<Option<String>, ControlError> {
        let current = doc.room.media_url.clone();
        if self.inner.config.public_url.is_empty() {
            return Ok(current);
        }
        let review = |nodes: &[Node]| {
            let now = now_ms();
            let present =
                placement::holding(current.as_deref(), &doc.counts().instances, nodes, now);
            placement::review(
                current.as_deref(),
                present,
                nodes,
                self.inner.config.node_capacity,
                now,
            )
        };
        if review(&self.living().await?).is_none() {
            return Ok(current);
        }
        // The cached records may be older than the room's node (another instance placed it on
        // a node that registered since): a move is decided on a fresh reading only.
        let Some(to) = review(&self.nodes().await?) else {
            return Ok(current);
        };
        let mut placed = current.clone();
        self.inner
            .store
            .update_room(&doc.room.id, &Scope::header(), &mut |d| {
                // Another request may have moved it first: its choice stands.
                if d.room.media_url == current {
                    d.room.media_url = Some(to.clone());
                }
                placed.clone_from(&d.room.media_url);
                Ok(Effects::default())
            })
            .await?;
        if placed.as_deref() == Some(to.as_str()) {
            metrics::counter!(crate::telemetry::ROOMS_PLACED).increment(1);
            tracing::info!(room = %doc.room.id, from = ?current, to = %to, "room placed on another node");
            if current.is_some() {
                self.announce_move(&doc.room.id, &to).await;
            }
        }
        Ok(placed)
    }
}

/// Keeps this node's record in the registry: written every `node_ttl / 3` on its own timer,
/// apart from the room sweep, so that the record of a node that died expires within `node_ttl`
/// and that of a living one never does (two writes may be missed). Each write waits for a fresh
/// reading of the load a sixth of `node_ttl` at most: a busy media plane must not make its node
/// look dead, so a late reading goes on by itself and a later write carries it.
async fn keep_record(inner: std::sync::Weak<super::Inner>) {
    let ttl_ms = match inner.upgrade() {
        Some(i) => i.config.node_ttl.saturating_mul(1000),
        None => return,
    };
    let period = std::time::Duration::from_millis((ttl_ms / 3).max(100));
    let wait = std::time::Duration::from_millis(ttl_ms / 6);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reading: Option<tokio::task::JoinHandle<()>> = None;
    let mut first = true;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let control = Control { inner };
        let node = &control.inner.node;
        let mut current = match reading.take() {
            Some(late) if !late.is_finished() => late,
            _ => {
                // The reading holds the source and the slot it fills, not the control plane,
                // which ends with its last handle.
                let (source, slot) = (node.source.get().cloned(), node.load.clone());
                tokio::spawn(async move {
                    if let Some(source) = source {
                        let load = source.load().await;
                        *slot
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = load;
                    }
                })
            }
        };
        if tokio::time::timeout(wait, &mut current).await.is_err() {
            tracing::debug!("node load late; the record says the last reading");
            reading = Some(current);
        }
        if let Err(e) = control.beat().await {
            tracing::warn!(error = %e, "node record not written");
        }
        if first {
            // The node metrics show this node from its first record, not at the next sweep.
            control.count_nodes().await;
            first = false;
        }
    }
}
