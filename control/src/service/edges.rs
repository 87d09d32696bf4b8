//! Rooms larger than a node: listeners of a room whose origin (its node) is full are sent to
//! an edge ([`crate::placement::edge_for`] decides, the store remembers the room's edges so
//! that every instance sends them alike), and a node admitting someone into a room whose
//! origin is another node relays the room from there.

use crate::clock::now_ms;
use crate::error::ControlError;
use crate::model::{Role, RoomDoc};
use crate::placement;

use super::Control;

impl Control {
    /// Where a member of room `doc` with `role` connects: the room's origin
    /// ([`Control::media_url_of`]), or for a listener who may not publish while the origin is
    /// full, an edge with headroom, recorded as one of the room's edges.
    pub(super) async fn media_url_for(
        &self,
        doc: &RoomDoc,
        role: Role,
        can_publish: bool,
    ) -> Result<Option<String>, ControlError> {
        let origin = self.media_url_of(doc).await?;
        // Whoever may publish publishes on the origin: an edge relays one way only.
        if role.on_stage() || can_publish || self.inner.config.public_url.is_empty() {
            return Ok(origin);
        }
        let Some(at) = origin.as_deref() else {
            return Ok(origin);
        };
        let nodes = self.living().await?;
        let (capacity, now) = (self.inner.config.node_capacity, now_ms());
        // The edges are read only when the origin is full and another node has headroom.
        if placement::edge_for(at, &[], &nodes, capacity, now).is_none() {
            return Ok(origin);
        }
        let id = &doc.room.id;
        let edges = self.inner.store.room_edges(id).await?;
        let Some(edge) = placement::edge_for(at, &edges, &nodes, capacity, now) else {
            return Ok(origin);
        };
        if !edges.contains(&edge.public_url) {
            self.inner.store.add_room_edge(id, &edge.public_url).await?;
            tracing::info!(room = %id, edge = %edge.id, "room spills over to an edge node");
        }
        metrics::counter!(crate::telemetry::EDGE_LISTENERS).increment(1);
        Ok(Some(edge.public_url.clone()))
    }

    /// After admitting someone into room `doc` on this node: when the room's origin is another
    /// node, this node is one of its edges and relays the room from there (once: the media
    /// plane keeps a running link, and makes it again after it ended).
    pub(super) async fn relay_if_edge(&self, doc: &RoomDoc) {
        let own = &self.inner.config.public_url;
        let Some(origin) = doc.room.media_url.as_deref() else {
            return;
        };
        if own.is_empty() || origin == own {
            return;
        }
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
}
