//! Room-wide counts in clients' room snapshots. A room spread over nodes (an origin and its
//! edges) has one presence, the store's: each member's presence names the instance whose
//! media plane holds the session, and the room's header counts them per instance. Every node
//! tells its media plane how many are connected through the others, and the media plane adds
//! the people it holds itself (LiveKit `Room.num_participants`). The count travels with each
//! presence change on the bus ([`crate::events::RoomPresence`]); the sweep repeats it for the
//! rooms this node serves, should a message be lost (pub/sub is fire-and-forget).

use std::collections::BTreeMap;

use crate::error::ControlError;
use crate::events::{BusMessage, RoomPresence};
use crate::media::MediaError;
use crate::model::{RoomDoc, RoomId};
use crate::room::Effects;

use super::Control;

impl Control {
    /// Puts a command's effects on the bus, with the presence per instance of the rooms whose
    /// presence it changed.
    pub(super) async fn publish_with(
        &self,
        effects: Effects,
        presence: Vec<RoomPresence>,
    ) -> Result<(), ControlError> {
        if effects.media.is_empty() && effects.events.is_empty() && presence.is_empty() {
            return Ok(());
        }
        self.inner
            .store
            .publish(&BusMessage {
                origin: self.inner.instance.clone(),
                media: effects.media,
                events: effects.events,
                notices: Vec::new(),
                moved: Vec::new(),
                presence,
            })
            .await
    }

    /// Tells the media plane how many of room `id`'s members are connected through instances
    /// other than this one (`instances`: members connected now, per instance).
    pub(super) async fn present_elsewhere(&self, id: &RoomId, instances: &BTreeMap<String, u32>) {
        let own = &self.inner.instance;
        let elsewhere = instances
            .iter()
            .filter(|(i, _)| *i != own)
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n));
        match self.inner.media.present_elsewhere(id, elsewhere).await {
            Ok(_) | Err(MediaError::NotFound) => {}
            Err(e) => tracing::warn!(room = %id, error = %e, "room-wide count not told"),
        }
    }

    /// Presence changed in these rooms (a bus message of any instance).
    pub(super) async fn tell_presence(&self, presence: &[RoomPresence]) {
        for p in presence {
            self.present_elsewhere(&p.room, &p.instances).await;
        }
    }

    /// The sweep's repetition: for every live room with members connected through this node.
    pub(super) async fn keep_presence(&self, rooms: &[RoomDoc]) {
        let own = &self.inner.instance;
        for doc in rooms {
            let instances = doc.counts().instances;
            if instances.get(own).is_some_and(|n| *n > 0) {
                self.present_elsewhere(&doc.room.id, &instances).await;
            }
        }
    }
}
