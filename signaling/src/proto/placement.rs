//! Which engine shard a new peer goes to: rooms kept apart.
//!
//! Each engine shard is one thread serving its peers in turn, so a peer waits behind the
//! work of every other peer on its shard: a reaction fanned out to a large room, a speaker's
//! packet sealed for each of its listeners. Spread round robin, every room's peers would share
//! every shard, and a join in a quiet room would queue behind a busy room's sends. So a room
//! keeps its peers together: its first peer goes to the least-loaded shard, the next ones to the
//! same shard until the room holds [`Placement::per_shard`] peers there; only then does it take
//! another shard (the least-loaded one it is not on yet), and its new peers go to whichever of
//! its shards holds fewest of them. A room thus spreads over cores only when one shard would
//! carry too much of it, and two rooms on different shards run in parallel (on one core, the
//! kernel's scheduler shares the core between the shards' threads, so a quiet room's shard
//! runs as soon as it has work).
//!
//! Each signaling core places its own rooms' peers and counts them; a shard's load is that
//! count plus the other cores' peers there, which the shell tells the core
//! ([`Server::set_shard_loads_elsewhere`], read before each input, so a little behind), and core
//! `i` prefers shard `i` on ties. Plain bookkeeping: no clock, no randomness.
//!
//! [`Server::set_shard_loads_elsewhere`]: super::Server::set_shard_loads_elsewhere

use std::collections::HashMap;

use stoa_sfu::{PeerId, ShardId};

#[cfg(doc)]
use super::ServerConfig;

/// Default of [`ServerConfig::room_peers_per_shard`], the peers a room puts on one shard before
/// it takes another: about half a core of listener streams for one speaker
/// (BENCHMARKS.md: 4,000–5,000 listener-streams per core), leaving the rest for a second
/// speaker and the room's signaling.
pub const ROOM_PEERS_PER_SHARD: u32 = 2_000;

/// Peers of this core per shard and per room. See the [module documentation](self).
#[derive(Debug)]
pub(super) struct Placement {
    /// Peers a room puts on one shard before it takes another.
    per_shard: u32,
    /// The shard this core prefers on ties.
    first: u16,
    /// Peers per shard, indexed by shard.
    load: Vec<u32>,
    /// Other signaling cores' peers per shard, as last told.
    elsewhere: Vec<u32>,
    /// Each room's shards, in the order it took them, with its peers on each.
    rooms: HashMap<String, Vec<(u16, u32)>>,
    /// The room of each placed peer.
    peers: HashMap<PeerId, String>,
}

impl Placement {
    /// No peers on `shards` shards (at least one); ties go first to shard `first % shards`.
    pub fn new(shards: u16, first: u16, per_shard: u32) -> Self {
        let shards = shards.max(1);
        Placement {
            per_shard: per_shard.max(1),
            first: first % shards,
            load: vec![0; usize::from(shards)],
            elsewhere: vec![0; usize::from(shards)],
            rooms: HashMap::new(),
            peers: HashMap::new(),
        }
    }

    /// The shard for a new peer of `room` (record it with [`Placement::add`]).
    pub fn shard_for(&self, room: &str) -> ShardId {
        let taken = self.rooms.get(room).map(Vec::as_slice).unwrap_or_default();
        // The room's shard with fewest of its peers (the earliest taken on ties).
        let own = taken
            .iter()
            .enumerate()
            .min_by_key(|(order, (_, peers))| (*peers, *order))
            .map(|(_, entry)| *entry);
        if let Some((shard, peers)) = own
            && peers < self.per_shard
        {
            return ShardId(shard);
        }
        // A shard the room is not on yet, the least loaded (this core's preferred first).
        let n = self.load.len();
        let fresh = (0..n)
            .map(|i| ((usize::from(self.first) + i) % n) as u16)
            .filter(|s| !taken.iter().any(|(t, _)| t == s))
            .min_by_key(|s| {
                let s = usize::from(*s);
                self.load[s].saturating_add(self.elsewhere[s])
            });
        match (fresh, own) {
            (Some(shard), _) => ShardId(shard),
            // On every shard already: the one with fewest of its peers.
            (None, Some((shard, _))) => ShardId(shard),
            (None, None) => ShardId(self.first),
        }
    }

    /// `peer` (on its shard) belongs to `room` from now on.
    pub fn add(&mut self, peer: PeerId, room: &str) {
        if self.peers.contains_key(&peer) {
            return;
        }
        let shard = peer.shard().0;
        if let Some(load) = self.load.get_mut(usize::from(shard)) {
            *load += 1;
        }
        match self.rooms.get_mut(room) {
            Some(taken) => match taken.iter_mut().find(|(s, _)| *s == shard) {
                Some((_, peers)) => *peers += 1,
                None => taken.push((shard, 1)),
            },
            None => {
                self.rooms.insert(room.to_owned(), vec![(shard, 1)]);
            }
        }
        self.peers.insert(peer, room.to_owned());
    }

    /// `peer` is gone (closed or never created); unknown peers are ignored.
    pub fn remove(&mut self, peer: PeerId) {
        let Some(room) = self.peers.remove(&peer) else {
            return;
        };
        let shard = peer.shard().0;
        if let Some(load) = self.load.get_mut(usize::from(shard)) {
            *load = load.saturating_sub(1);
        }
        if let Some(taken) = self.rooms.get_mut(&room) {
            if let Some(i) = taken.iter().position(|(s, _)| *s == shard) {
                taken[i].1 = taken[i].1.saturating_sub(1);
                if taken[i].1 == 0 {
                    taken.remove(i);
                }
            }
            if taken.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    /// This core's peers per shard.
    pub fn loads(&self) -> &[u32] {
        &self.load
    }

    /// The other cores' peers per shard (missing shards count none, extra ones are ignored).
    pub fn set_elsewhere(&mut self, loads: &[u32]) {
        for (i, slot) in self.elsewhere.iter_mut().enumerate() {
            *slot = loads.get(i).copied().unwrap_or(0);
        }
    }

    /// The peers placed and not removed, with their rooms (for invariant checks).
    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &str)> + '_ {
        self.peers.iter().map(|(p, r)| (*p, r.as_str()))
    }

    /// The shards `room` is on, in the order it took them, with its peers on each.
    #[cfg(test)]
    pub fn room_shards(&self, room: &str) -> &[(u16, u32)] {
        self.rooms.get(room).map(Vec::as_slice).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Place one peer of `room`, with the next id.
    fn place(p: &mut Placement, next: &mut u64, room: &str) -> ShardId {
        let shard = p.shard_for(room);
        *next += 1;
        p.add(PeerId::new(shard, *next), room);
        shard
    }

    #[test]
    fn a_room_stays_on_one_shard_and_rooms_take_different_ones() {
        let mut p = Placement::new(2, 0, 100);
        let mut next = 0;
        for _ in 0..50 {
            assert_eq!(place(&mut p, &mut next, "a"), ShardId(0));
        }
        // Room b goes to the shard room a does not load.
        for _ in 0..20 {
            assert_eq!(place(&mut p, &mut next, "b"), ShardId(1));
        }
        // Room c goes to the lighter shard, b's.
        assert_eq!(place(&mut p, &mut next, "c"), ShardId(1));
        assert_eq!(p.room_shards("a"), &[(0, 50)]);
        assert_eq!(p.room_shards("b"), &[(1, 20)]);
    }

    #[test]
    fn a_room_spreads_past_its_share_and_then_balances() {
        let mut p = Placement::new(3, 0, 4);
        let mut next = 0;
        let shards: Vec<u16> = (0..16).map(|_| place(&mut p, &mut next, "big").0).collect();
        // Four on shard 0, then a new shard each time the room's shards are full, then the
        // room's least-occupied shard in turn.
        assert_eq!(&shards[..12], &[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(&shards[12..], &[0, 1, 2, 0]);
        assert_eq!(p.room_shards("big"), &[(0, 6), (1, 5), (2, 5)]);
    }

    #[test]
    fn removed_peers_free_their_shard() {
        let mut p = Placement::new(2, 0, 10);
        let a = PeerId::new(p.shard_for("a"), 1);
        p.add(a, "a");
        p.add(a, "a"); // twice is once
        assert_eq!(p.room_shards("a"), &[(0, 1)]);
        let b = PeerId::new(p.shard_for("b"), 2);
        p.add(b, "b");
        assert_eq!(b.shard(), ShardId(1));
        p.remove(a);
        p.remove(a); // unknown now: ignored
        assert!(p.room_shards("a").is_empty());
        assert_eq!(p.peers().count(), 1);
        // Shard 0 is empty again: a new room takes it.
        assert_eq!(p.shard_for("c"), ShardId(0));
    }

    #[test]
    fn other_cores_peers_count_for_a_new_room() {
        // Core 1 of two, two shards: its first room would take shard 1, but core 0 has a room
        // there already.
        let mut p = Placement::new(2, 1, 10);
        p.set_elsewhere(&[0, 40]);
        assert_eq!(p.shard_for("x"), ShardId(0));
        let mut next = 0;
        place(&mut p, &mut next, "x");
        // A room's own shard is kept whatever the others do.
        p.set_elsewhere(&[90, 0]);
        assert_eq!(p.shard_for("x"), ShardId(0));
        assert_eq!(p.shard_for("y"), ShardId(1));
        assert_eq!(p.loads(), &[1, 0]);
    }

    #[test]
    fn cores_prefer_their_own_shard_on_ties() {
        let p = Placement::new(4, 2, 10);
        assert_eq!(p.shard_for("x"), ShardId(2));
        let p = Placement::new(4, 6, 10);
        assert_eq!(p.shard_for("x"), ShardId(2));
        let p = Placement::new(1, 5, 10);
        assert_eq!(p.shard_for("x"), ShardId(0));
    }
}
