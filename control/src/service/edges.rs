//! Rooms larger than a node: members of a room whose origin (its node) is full are sent to an
//! edge ([`crate::placement::edge_for`] decides, the store remembers the room's edges so that
//! every instance sends them alike), and a node admitting someone into a room whose origin is
//! another node relays the room from there. A speaker on an edge is heard on the origin, and
//! through it on the other edges, by a feed the origin opens from the edge (signaling's
//! `proto::feed`).

use crate::clock::now_ms;
use crate::error::ControlError;
use crate::model::{Role, RoomDoc, RoomId, RoomState, Scope, UserId};
use crate::nodes::Node;
use crate::placement;

use super::Control;

impl Control {
    /// Where a member of room `doc` with `role` connects: the room's origin
    /// ([`Control::media_url_of`]), or while the origin is full, an edge with headroom
    /// (preferring the room's edges), recorded as one of the room's edges. Hosts and co-hosts
    /// always join on the origin, where the whole audience is shown to them.
    pub(super) async fn media_url_for(
        &self,
        doc: &RoomDoc,
        user: &UserId,
        role: Role,
        can_publish: bool,
    ) -> Result<Option<String>, ControlError> {
        self.uncount(user.as_str());
        let url = self.media_url_chosen(doc, role, can_publish).await?;
        if let Some(url) = &url {
            self.count_joining(url, user.as_str());
        }
        Ok(url)
    }

    async fn media_url_chosen(
        &self,
        doc: &RoomDoc,
        role: Role,
        can_publish: bool,
    ) -> Result<Option<String>, ControlError> {
        let origin = self.media_url_of(doc).await?;
        // Speakers join where the room's speakers are, the origin, unless it is full past its
        // stage reserve: on an edge the origin hears them through a feed. Moderators stay on
        // the origin, where the room's moderation is.
        if role.moderates() || self.inner.config.public_url.is_empty() {
            return Ok(origin);
        }
        let Some(at) = origin.as_deref() else {
            return Ok(origin);
        };
        let nodes: Vec<Node> = self.living().await?.to_vec();
        let node = self.inner.config.node_capacity;
        let speaks = role.on_stage() || can_publish;
        // The origin keeps a stage reserve for those who may speak: its listeners receive
        // their streams wherever they join, so on the origin they cost it little.
        let capacity = placement::Capacity {
            node,
            origin: if speaks {
                node.saturating_add(self.inner.config.stage_reserve)
            } else {
                node
            },
        };
        let now = now_ms();
        // The edges are read only when the origin is full and another node has headroom.
        if placement::edge_for(at, &[], &nodes, capacity, now).is_none() {
            return Ok(origin);
        }
        let id = &doc.room.id;
        let edges = self.inner.store.room_edges(id).await?;
        // Any number of rooms may spill from one origin to one edge: each relay link has a
        // socket of its own on the edge, so the engines tell the links apart.
        let Some(edge) = placement::edge_for(at, &edges, &nodes, capacity, now) else {
            return Ok(origin);
        };
        let url = edge.public_url.clone();
        if !edges.contains(&url) {
            self.inner.store.add_room_edge(id, &url).await?;
            tracing::info!(room = %id, edge = %edge.id, "room spills over to an edge node");
        }
        metrics::counter!(if speaks {
            crate::telemetry::EDGE_SPEAKERS
        } else {
            crate::telemetry::EDGE_LISTENERS
        })
        .increment(1);
        Ok(Some(url))
    }

    /// For the sweep: every live room with members connected through this node while its
    /// origin is another node is relayed from that origin. The media plane keeps a running
    /// link, so this only acts when a link ended (the origin died or a network cut) or the room
    /// moved to a new origin: the edge's listeners, still connected, hear the room again
    /// within one sweep, without rejoining.
    ///
    /// A node an operator drained starts no links here: its members are moving, and a room it
    /// was the origin of may have moved to a node that relays it from here, where a link back
    /// would make one link each way for one room (the drain relays the room from its new
    /// origin itself when that is not so, `service/drain.rs`).
    pub(super) async fn keep_relays(&self, rooms: &[RoomDoc]) {
        if self.drained() {
            return;
        }
        let own = &self.inner.instance;
        for doc in rooms {
            if doc.counts().instances.get(own).is_some_and(|n| *n > 0) {
                self.relay_if_edge(doc).await;
            }
        }
    }

    /// Room `id` moved to the node at `to` (another instance's token request moved it, and
    /// said so over the bus): when this node serves members of the room and is not its new
    /// origin, it relays the room from there now, so that its listeners, still connected,
    /// hear the room's speakers again as soon as they publish there. The sweep does the same
    /// ([`Control::keep_relays`]) should the message be lost.
    pub(super) async fn relink(&self, id: &RoomId, to: &str) {
        let own = &self.inner.config.public_url;
        if own.is_empty() || to == own {
            return;
        }
        let doc = match self.inner.store.room(id, &Scope::header()).await {
            Ok(Some(d)) if d.room.state == RoomState::Live => d,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(room = %id, error = %e, "cannot read a moved room; its edges re-link at their sweep");
                return;
            }
        };
        if doc
            .counts()
            .instances
            .get(&self.inner.instance)
            .is_some_and(|n| *n > 0)
        {
            self.relay_if_edge(&doc).await;
        }
    }

    /// Whether this node is an edge of room `doc`: the room's origin is another node.
    pub(super) fn is_edge_of(&self, doc: &RoomDoc) -> bool {
        let own = &self.inner.config.public_url;
        doc.room
            .media_url
            .as_deref()
            .is_some_and(|origin| !own.is_empty() && origin != own)
    }

    /// After admitting someone into room `doc` on this node: when the room's origin is another
    /// node, this node is one of its edges and relays the room from there (once: the media
    /// plane keeps a running link, and makes it again after it ended).
    pub(super) async fn relay_if_edge(&self, doc: &RoomDoc) {
        let Some(origin) = doc
            .room
            .media_url
            .as_deref()
            .filter(|_| self.is_edge_of(doc))
        else {
            return;
        };
        match self.inner.media.relay(&doc.room.id, origin).await {
            Ok(true) => {
                metrics::counter!(crate::telemetry::RELAYS_STARTED).increment(1);
                tracing::info!(room = %doc.room.id, "relaying the room from its origin");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(room = %doc.room.id, error = %e, "cannot relay the room from its origin");
            }
        }
    }

    /// The public URLs of the living nodes other than this one that may hold people of room
    /// `room` (the media plane's name for it): its origin and its recorded edges. What makes
    /// the RoomService API answer for the whole room on any of its nodes (signaling's
    /// `cluster`); empty for a room this control plane does not know, or on a node without a
    /// public URL. One header read and one edge-set read, plus the cached registry.
    pub async fn room_nodes(&self, room: &str) -> Vec<String> {
        let own = &self.inner.config.public_url;
        let Ok(id) = RoomId::parse(room) else {
            return Vec::new();
        };
        if own.is_empty() {
            return Vec::new();
        }
        let doc = match self.inner.store.room(&id, &Scope::header()).await {
            Ok(Some(doc)) => doc,
            Ok(None) => return Vec::new(),
            Err(e) => {
                tracing::warn!(room = %id, error = %e, "cannot read the room's nodes");
                return Vec::new();
            }
        };
        let mut urls: Vec<String> = doc.room.media_url.into_iter().collect();
        match self.inner.store.room_edges(&id).await {
            Ok(edges) => urls.extend(edges),
            Err(e) => tracing::warn!(room = %id, error = %e, "cannot read the room's edges"),
        }
        let living = match self.living().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node registry");
                return Vec::new();
            }
        };
        urls.retain(|u| u != own && living.iter().any(|n| n.public_url == *u));
        urls.sort();
        urls.dedup();
        urls
    }

    /// The public URLs of every living node other than this one (the RoomService's room
    /// listing asks each); empty on a node without a public URL.
    pub async fn other_nodes(&self) -> Vec<String> {
        let own = &self.inner.config.public_url;
        if own.is_empty() {
            return Vec::new();
        }
        match self.living().await {
            Ok(nodes) => {
                let mut urls: Vec<String> = nodes
                    .iter()
                    .map(|n| n.public_url.clone())
                    .filter(|u| !u.is_empty() && u != own)
                    .collect();
                urls.sort();
                urls.dedup();
                urls
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the node registry");
                Vec::new()
            }
        }
    }
}
