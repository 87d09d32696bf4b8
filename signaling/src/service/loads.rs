//! Each signaling core's peers per engine shard, shared between the cores: a core places a
//! new room on the shard least loaded by every core's peers, not by its own alone
//! (`proto::placement`). With more than one core and more than one shard, each core publishes
//! its own counts after every input (written only when they changed, as a difference to one
//! total per shard) and reads the others' (the total less its own) before the next; the core
//! itself only ever sees them as an input
//! ([`crate::proto::Server::set_shard_loads_elsewhere`]).

use std::sync::atomic::{AtomicU32, Ordering};

/// Every core's peers per shard, summed, and each core's own part as it last published it.
#[derive(Debug)]
pub(super) struct ShardLoads {
    /// Peers per shard, over every core.
    total: Box<[AtomicU32]>,
    /// Each core's own peers per shard, as last published (written by that core only).
    rows: Box<[Box<[AtomicU32]>]>,
    /// Whether there is anything to share: more than one core and more than one shard.
    shared: bool,
}

impl ShardLoads {
    /// `cores` cores with no peers on `shards` shards.
    pub fn new(cores: usize, shards: usize) -> Self {
        let zeros = || (0..shards).map(|_| AtomicU32::new(0)).collect();
        ShardLoads {
            total: zeros(),
            rows: (0..cores).map(|_| zeros()).collect(),
            shared: cores > 1 && shards > 1,
        }
    }

    /// Whether the cores have anything to tell each other: with one core, or one shard (every
    /// peer on it), placement needs no other core's counts, and publishing and reading are
    /// skipped.
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// Core `core`'s own counts, by shard: only shards whose count changed since the core last
    /// published are written, so publishing after every input costs reads alone.
    pub fn publish(&self, core: usize, loads: &[u32]) {
        let Some(row) = self.rows.get(core) else {
            return;
        };
        for ((slot, total), load) in row.iter().zip(self.total.iter()).zip(loads) {
            let before = slot.load(Ordering::Relaxed);
            if before != *load {
                slot.store(*load, Ordering::Relaxed);
                if *load > before {
                    total.fetch_add(load - before, Ordering::Relaxed);
                } else {
                    total.fetch_sub(before - load, Ordering::Relaxed);
                }
            }
        }
    }

    /// The other cores' counts, summed by shard, into `out` (cleared first; left empty with
    /// one core).
    pub fn others(&self, core: usize, out: &mut Vec<u32>) {
        out.clear();
        let Some(row) = self.rows.get(core).filter(|_| self.rows.len() > 1) else {
            return;
        };
        out.extend(self.total.iter().zip(row.iter()).map(|(total, own)| {
            total
                .load(Ordering::Relaxed)
                .saturating_sub(own.load(Ordering::Relaxed))
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_sees_the_others_counts_not_its_own() {
        let loads = ShardLoads::new(3, 2);
        loads.publish(0, &[5, 1]);
        loads.publish(1, &[0, 7]);
        loads.publish(2, &[2, 2]);
        let mut out = Vec::new();
        loads.others(0, &mut out);
        assert_eq!(out, [2, 9]);
        loads.others(1, &mut out);
        assert_eq!(out, [7, 3]);
        // Published again: replaced, not added.
        loads.publish(1, &[0, 0]);
        loads.others(0, &mut out);
        assert_eq!(out, [2, 2]);
        // One core: nobody else.
        let alone = ShardLoads::new(1, 2);
        alone.publish(0, &[4, 4]);
        alone.others(0, &mut out);
        assert!(out.is_empty());
    }
}
