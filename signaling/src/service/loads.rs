//! Each signaling core's peers per engine shard, shared between the cores: a core places a
//! new room on the shard least loaded by every core's peers, not by its own alone
//! (`proto::placement`). Each core publishes its own counts after every input and reads the
//! others' before the next; the core itself only ever sees them as an input
//! ([`crate::proto::Server::set_shard_loads_elsewhere`]).

use std::sync::atomic::{AtomicU32, Ordering};

/// Peers per shard, one row per signaling core.
#[derive(Debug)]
pub(super) struct ShardLoads {
    rows: Box<[Box<[AtomicU32]>]>,
}

impl ShardLoads {
    /// `cores` rows of `shards` zeros.
    pub fn new(cores: usize, shards: usize) -> Self {
        ShardLoads {
            rows: (0..cores)
                .map(|_| (0..shards).map(|_| AtomicU32::new(0)).collect())
                .collect(),
        }
    }

    /// How many cores share it.
    pub fn cores(&self) -> usize {
        self.rows.len()
    }

    /// Core `core`'s own counts, by shard.
    pub fn publish(&self, core: usize, loads: &[u32]) {
        if let Some(row) = self.rows.get(core) {
            for (slot, load) in row.iter().zip(loads) {
                slot.store(*load, Ordering::Relaxed);
            }
        }
    }

    /// The other cores' counts, summed by shard, into `out` (cleared first).
    pub fn others(&self, core: usize, out: &mut Vec<u32>) {
        out.clear();
        for (i, row) in self.rows.iter().enumerate() {
            if i == core {
                continue;
            }
            if out.len() < row.len() {
                out.resize(row.len(), 0);
            }
            for (sum, slot) in out.iter_mut().zip(row.iter()) {
                *sum = sum.saturating_add(slot.load(Ordering::Relaxed));
            }
        }
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
