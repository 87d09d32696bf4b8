//! An operator's drain carried out: a node in `{p}nodes:draining` moves its members to other
//! nodes, paced, in the order [`crate::drain`] gives (rooms whose origin it is re-homed first,
//! then members told to leave with LiveKit's `MIGRATION` reason, a batch at a time). Only the
//! drained node can do it (its sessions are its own): every node runs this loop and acts when
//! its own record says it is drained. A node stopping (SIGTERM) does not: its shutdown asks
//! everyone to leave at once.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use crate::clock::now_ms;
use crate::drain::{Held, MOVES_PER_SECOND, Pacer, Step, TICK_MS, new_origin, order};
use crate::error::ControlError;
use crate::model::{RoomDoc, RoomState, Scope};
use crate::nodes::Node;
use crate::room::Effects;

use super::{Control, Inner};

/// Ticks a drained node with nothing to do waits before looking again (a second).
const IDLE_TICKS: u64 = 1000 / TICK_MS - 1;

/// Runs the drain of this node while an operator has it drained; ends with the control plane.
pub(super) async fn run(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pacer = Pacer::new(MOVES_PER_SECOND);
    // The rooms whose origin this node was when the drain began: their members go first.
    let mut origins: BTreeSet<String> = BTreeSet::new();
    // Ticks to skip: a drained node with nothing to do (empty, or nowhere to move a room)
    // looks again a second later rather than listing the rooms every tick.
    let mut rest = 0u64;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let control = Control { inner };
        if !control.drained() {
            pacer.reset();
            origins.clear();
            rest = 0;
            continue;
        }
        if rest > 0 {
            rest -= 1;
            continue;
        }
        match control.drain_step(&mut pacer, &mut origins).await {
            Ok(true) => {}
            Ok(false) => rest = IDLE_TICKS,
            Err(e) => {
                tracing::warn!(error = %e, "drain step failed");
                rest = IDLE_TICKS;
            }
        }
    }
}

impl Control {
    /// Whether an operator drained this node, as the node records last read say (the
    /// heartbeat reads them every `presence_ttl / 3`, token requests at most every second):
    /// this reads nothing from the store, so that idle nodes polling it cost Redis nothing.
    /// Not while it stops by itself.
    pub(super) fn drained(&self) -> bool {
        if self.inner.config.public_url.is_empty() || self.shutting_down() {
            return false;
        }
        let own = &self.inner.instance;
        self.last_read()
            .is_some_and(|nodes| nodes.iter().any(|n| &n.id == own && n.draining))
    }

    /// One tick of the drain: re-homes the rooms whose origin is here, then moves members as
    /// the pacer allows. Whether it did anything (a room re-homed, a member moved) or may
    /// have more to do at once (the tick's budget spent).
    async fn drain_step(
        &self,
        pacer: &mut Pacer,
        origins: &mut BTreeSet<String>,
    ) -> Result<bool, ControlError> {
        let own_url = &self.inner.config.public_url;
        let own = &self.inner.instance;
        let rooms = self.rooms(&[RoomState::Live]).await?;
        let held: Vec<Held> = rooms
            .iter()
            .map(|d| {
                let room = d.room.id.to_string();
                let origin_here = d.room.media_url.as_deref() == Some(own_url.as_str());
                if origin_here {
                    origins.insert(room.clone());
                }
                Held {
                    was_origin: origins.contains(&room),
                    room,
                    origin_here,
                    here: d.counts().instances.get(own).copied().unwrap_or(0),
                }
            })
            .collect();
        let steps = order(&held);
        if steps.is_empty() {
            return Ok(false);
        }
        // The cached records said drained; with work to do, the registry is read afresh, so
        // that a drain lifted (or another node drained) a moment ago is seen before anyone
        // moves or a room goes to a node that drains too.
        let nodes = self.nodes().await?;
        if !nodes.iter().any(|n| &n.id == own && n.draining) {
            return Ok(false);
        }
        let mut budget = pacer.allowed(now_ms());
        let mut worked = budget == 0;
        // Rooms that could not be re-homed (no other node takes rooms): their members stay.
        let mut stuck: Vec<String> = Vec::new();
        for step in steps {
            match step {
                Step::Rehome(id) => {
                    let Some(doc) = rooms.iter().find(|d| d.room.id.as_str() == id) else {
                        continue;
                    };
                    if self.rehome(doc, &nodes).await? {
                        worked = true;
                    } else {
                        stuck.push(id);
                    }
                }
                Step::Move(id) => {
                    if budget == 0 || stuck.contains(&id) {
                        continue;
                    }
                    let Some(doc) = rooms.iter().find(|d| d.room.id.as_str() == id) else {
                        continue;
                    };
                    let moved = match self.inner.media.migrate(&doc.room.id, budget).await {
                        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX).min(budget),
                        Err(e) => {
                            tracing::warn!(room = %id, error = %e, "cannot move the room's members");
                            0
                        }
                    };
                    if moved > 0 {
                        tracing::info!(room = %id, moved, "draining: members asked to move");
                        metrics::counter!(crate::telemetry::DRAIN_MOVED).increment(moved.into());
                    }
                    pacer.spend(moved);
                    budget -= moved;
                    worked |= moved > 0 || budget == 0;
                }
            }
        }
        Ok(worked)
    }

    /// Gives room `doc`, whose origin is this draining node, the node of `nodes` (the registry
    /// as just read) with the most headroom as its origin, and relays it from there for the members still here. Whether the room
    /// has an origin elsewhere now (false: no other node takes rooms, it stays).
    async fn rehome(&self, doc: &RoomDoc, nodes: &[Node]) -> Result<bool, ControlError> {
        let own = self.inner.config.public_url.clone();
        let edges = self.inner.store.room_edges(&doc.room.id).await?;
        let capacity = self.inner.config.node_capacity;
        let Some((to, link)) = new_origin(nodes, &edges, capacity, now_ms())
            .map(|(n, link)| (n.public_url.clone(), link))
        else {
            tracing::debug!(room = %doc.room.id, "draining: no node takes the room");
            return Ok(false);
        };
        if to == own {
            return Ok(false);
        }
        let mut placed = None;
        self.inner
            .store
            .update_room(&doc.room.id, &Scope::header(), &mut |d| {
                // Moved already (by another request, or an earlier tick): that stands.
                if d.room.media_url.as_deref() == Some(own.as_str()) {
                    d.room.media_url = Some(to.clone());
                }
                placed.clone_from(&d.room.media_url);
                Ok(Effects::default())
            })
            .await?;
        let Some(placed) = placed.filter(|p| *p != own) else {
            return Ok(false);
        };
        if placed == to {
            metrics::counter!(crate::telemetry::DRAIN_REHOMED).increment(1);
            tracing::info!(room = %doc.room.id, to = %to, "draining: the room has a new origin");
        }
        // This node is one of the room's edges until its last member here has moved: it
        // relays the room from the new origin, unless that node relays the room from here
        // already: then the members here hear the room once they have moved.
        if !link || placed != to {
            return Ok(true);
        }
        let mut moved = doc.clone();
        moved.room.media_url = Some(placed);
        self.relay_if_edge(&moved).await;
        Ok(true)
    }
}
