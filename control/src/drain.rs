//! Moving a drained node's members elsewhere, paced (pure: `now` and the rooms are inputs).
//!
//! An operator drains a node (`POST /api/nodes/{id}/drain`): it takes no new rooms or edge
//! listeners ([`crate::placement`]), and its own sweep moves whoever is connected to it, at
//! most [`MOVES_PER_SECOND`] members a second ([`Pacer`]), so that the rest of the cluster
//! sees a steady trickle of token requests and joins rather than a storm. Each member moved is
//! told to leave with LiveKit's `MIGRATION` reason; its client asks the API for a new token,
//! which names a node that is not draining.
//!
//! The order ([`order`]): first every room whose origin is this node is re-homed (its
//! `media_url` set to the node with the most headroom, no member moved yet), so that the next
//! token requests of its speakers and listeners name the new origin, this node relays the room
//! from there for the members still here, and the room's other edges re-link to it. Then
//! members move, rooms that were origins here first (their speakers publish here until they
//! move, and the room is heard from the new origin only once they have), each room's
//! publishers before its listeners; then the rooms this node serves as an edge. The room is
//! never split: until its last member here has moved, this node is an edge of the room's
//! origin like any other.

use crate::nodes::Node;
use crate::placement;

/// How many members a draining node moves per second, at most: 3,000 listeners (a full
/// 2-vCPU node, BENCHMARKS.md) in 30 s, about a twentieth of the join rate one room's header
/// sustains (≈ 1,900 joins/s, docs/ARCHITECTURE.md "Capacity model").
pub const MOVES_PER_SECOND: u32 = 100;

/// How often a draining node moves its next batch (ms).
pub const TICK_MS: u64 = 250;

/// A token bucket of moves: refills at `per_second` and holds one tick's worth at most (one
/// move at least), so that no second sees more than `per_second` moves and a tick's share,
/// whatever the gaps between calls (a stalled loop loses budget rather than bursting).
#[derive(Debug, Clone)]
pub struct Pacer {
    per_second: u32,
    /// Moves allowed now, in thousandths (so that short ticks accumulate exactly).
    milli: u64,
    /// When it was last refilled (unix ms).
    at: Option<u64>,
}

impl Pacer {
    /// A pacer allowing `per_second` moves a second (at least one), starting empty.
    pub fn new(per_second: u32) -> Pacer {
        Pacer {
            per_second: per_second.max(1),
            milli: 0,
            at: None,
        }
    }

    fn cap(&self) -> u64 {
        (u64::from(self.per_second) * TICK_MS).max(1000)
    }

    /// How many moves may start at `now` (unix ms): what the time since the last call earned,
    /// up to a tick's share. The first call allows a tick's share.
    pub fn allowed(&mut self, now: u64) -> u32 {
        let earned = match self.at {
            Some(at) => now.saturating_sub(at),
            None => TICK_MS,
        };
        self.at = Some(now.max(self.at.unwrap_or(0)));
        self.milli = self
            .milli
            .saturating_add(earned.saturating_mul(u64::from(self.per_second)))
            .min(self.cap());
        u32::try_from(self.milli / 1000).unwrap_or(u32::MAX)
    }

    /// Records `n` moves made (of what [`Pacer::allowed`] gave).
    pub fn spend(&mut self, n: u32) {
        self.milli = self.milli.saturating_sub(u64::from(n) * 1000);
    }

    /// Forgets the budget (the drain was lifted): a later drain starts empty.
    pub fn reset(&mut self) {
        self.milli = 0;
        self.at = None;
    }
}

/// One room with members connected to the draining node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The room's id.
    pub room: String,
    /// Its origin is the draining node (its `media_url` names it): it needs a new one.
    pub origin_here: bool,
    /// Its origin was the draining node when the drain began (re-homed since, or not yet):
    /// its members move first.
    pub was_origin: bool,
    /// Its members connected to the draining node, as the room counts them.
    pub here: u32,
}

/// What the draining node does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Give the room a new origin before anyone moves.
    Rehome(String),
    /// Move the room's members connected here, as many as the tick's budget allows.
    Move(String),
}

/// The steps for rooms `held`: every re-homing first (they move nobody), then moves, rooms
/// whose origin is or was here first (over every tick of the drain, not only the one that
/// re-homed them), then by room id, so that every tick goes on where the last stopped. The caller spends the tick's budget ([`Pacer`]) along the moves, by the members
/// actually moved: a count that lags (members told to leave whose departure is not recorded
/// yet) costs nothing.
pub fn order(held: &[Held]) -> Vec<Step> {
    let mut rooms: Vec<&Held> = held
        .iter()
        .filter(|h| h.here > 0 || h.origin_here)
        .collect();
    let first = |h: &Held| h.origin_here || h.was_origin;
    rooms.sort_by(|a, b| first(b).cmp(&first(a)).then(a.room.cmp(&b.room)));
    let rehome = rooms
        .iter()
        .filter(|h| h.origin_here)
        .map(|h| Step::Rehome(h.room.clone()));
    let moves = rooms
        .iter()
        .filter(|h| h.here > 0)
        .map(|h| Step::Move(h.room.clone()));
    rehome.chain(moves).collect()
}

/// Where a room whose origin drains goes: the eligible node with the most headroom
/// ([`crate::placement::choose`]) among those that are not `edges` of the room (the URLs of
/// the nodes relaying it from the draining origin), and `true`: the draining node may relay
/// the room from there for its members not moved yet. Else the best of all eligible nodes and
/// `false`: that node relays the room from the draining one already, and the draining node
/// does not link back (one direction per room between two nodes: a link each way for one
/// room could hand its speakers' media back to where it came from), so the members left on
/// the draining node hear the room only once they have moved. `None` when no other node takes
/// rooms.
pub fn new_origin<'a>(
    nodes: &'a [Node],
    edges: &[String],
    capacity: u64,
    now: u64,
) -> Option<(&'a Node, bool)> {
    let fresh: Vec<Node> = nodes
        .iter()
        .filter(|n| !edges.contains(&n.public_url))
        .cloned()
        .collect();
    if let Some(best) = placement::choose(&fresh, capacity, now) {
        return nodes.iter().find(|n| n.id == best.id).map(|n| (n, true));
    }
    placement::choose(nodes, capacity, now).map(|n| (n, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most moves (`(ms, moves)` pairs) in any second that starts at a pair, and where.
    fn most_in_a_second(moved: &[(u64, u32)]) -> (u32, u64) {
        moved
            .iter()
            .map(|&(start, _)| {
                let window = moved
                    .iter()
                    .filter(|(t, _)| *t >= start && *t < start + 1_000)
                    .map(|(_, n)| n)
                    .sum();
                (window, start)
            })
            .max()
            .unwrap_or_default()
    }
    use crate::nodes::NodeLoad;

    fn node(id: &str, participants: u64, draining: bool) -> Node {
        Node {
            id: id.into(),
            public_url: format!("ws://{id}.example:7880"),
            load: NodeLoad {
                participants,
                ..NodeLoad::default()
            },
            draining,
            seen_at: 0,
            expires_at: 10_000,
        }
    }

    #[test]
    fn a_draining_origin_prefers_a_node_that_does_not_relay_the_room_already() {
        let nodes = [
            node("d", 0, true),
            node("e", 0, false),
            node("f", 50, false),
        ];
        let id = |c: Option<(&Node, bool)>| c.map(|(n, link)| (n.id.clone(), link));
        // The idlest node, not an edge: the drained node relays from it.
        assert_eq!(
            id(new_origin(&nodes, &[], 100, 0)),
            Some(("e".into(), true))
        );
        // e relays the room from d already: f, busier but free of the room.
        let e = vec!["ws://e.example:7880".to_owned()];
        assert_eq!(id(new_origin(&nodes, &e, 100, 0)), Some(("f".into(), true)));
        // Every other node is an edge: the best of them, without a link back.
        let both = vec![e[0].clone(), "ws://f.example:7880".to_owned()];
        assert_eq!(
            id(new_origin(&nodes, &both, 100, 0)),
            Some(("e".into(), false))
        );
        // Nobody takes rooms (draining, dead): the room stays.
        assert_eq!(id(new_origin(&nodes[..1], &[], 100, 0)), None);
        assert_eq!(id(new_origin(&nodes, &[], 100, 10_000)), None);
    }

    #[test]
    fn the_pacer_never_allows_more_than_its_rate_in_any_second() {
        let mut p = Pacer::new(100);
        // The first tick: a tick's share.
        assert_eq!(p.allowed(1_000), 25);
        p.spend(25);
        // Simulated time in 50 ms steps for 10 s, always taking everything allowed: at most
        // 100 in every window of a second, and the whole rate over the run.
        let mut moved: Vec<(u64, u32)> = Vec::new();
        let mut now = 1_000;
        while now < 11_000 {
            now += 50;
            let n = p.allowed(now);
            p.spend(n);
            moved.push((now, n));
        }
        let (most, from) = most_in_a_second(&moved);
        assert!(most <= 100, "{most} moves in the second from {from}");
        let total: u32 = moved.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 1_000, "10 s at 100/s");
    }

    #[test]
    fn a_stalling_loop_never_bursts_past_the_rate_and_a_tick() {
        let mut p = Pacer::new(100);
        // Calls at irregular gaps (a seeded sequence: 1 ms to 1.5 s), spending everything.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut now = 0;
        let mut moved: Vec<(u64, u32)> = Vec::new();
        for _ in 0..2_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            now += 1 + state % 1_500;
            let n = p.allowed(now);
            p.spend(n);
            moved.push((now, n));
        }
        let (most, from) = most_in_a_second(&moved);
        assert!(most <= 125, "{most} moves in the second from {from}");
        let total: u32 = moved.iter().map(|(_, n)| n).sum();
        assert!(u64::from(total) <= now / 10 + 25, "{total} in {now} ms");
    }

    #[test]
    fn an_idle_pacer_holds_at_most_a_tick_of_budget() {
        let mut p = Pacer::new(100);
        p.allowed(0);
        // An hour without moves (nobody to move) earns no storm.
        assert_eq!(p.allowed(3_600_000), 25);
        p.spend(25);
        assert_eq!(p.allowed(3_600_000), 0);
        // Unspent budget carries over, capped; fractions accumulate.
        assert_eq!(p.allowed(3_600_005), 0);
        assert_eq!(p.allowed(3_600_010), 1);
        // A clock going back earns nothing.
        assert_eq!(p.allowed(3_000_000), 1);
        p.reset();
        assert_eq!(p.allowed(5_000_000), 25);
        assert_eq!(
            Pacer::new(0).allowed(0),
            0,
            "a tick of a one-per-second pacer"
        );
        // One a second still moves one a second.
        let mut slow = Pacer::new(1);
        assert_eq!(slow.allowed(0), 0);
        assert_eq!(slow.allowed(750), 1);
        slow.spend(1);
        assert_eq!(slow.allowed(5_000), 1, "at most one held");
    }

    fn held(room: &str, origin_here: bool, here: u32) -> Held {
        Held {
            room: room.into(),
            origin_here,
            was_origin: false,
            here,
        }
    }

    #[test]
    fn origins_are_rehomed_first_and_their_members_move_before_edges() {
        let rooms = [
            held("a-edge", false, 30),
            held("z-origin", true, 10),
            held("b-edge", false, 5),
            held("empty", false, 0),
            held("m-origin", true, 0),
        ];
        assert_eq!(
            order(&rooms),
            vec![
                Step::Rehome("m-origin".into()),
                Step::Rehome("z-origin".into()),
                Step::Move("z-origin".into()),
                Step::Move("a-edge".into()),
                Step::Move("b-edge".into()),
            ]
        );
        assert!(order(&[]).is_empty());
        assert!(order(&[held("empty", false, 0)]).is_empty());
        // Re-homed at an earlier tick: no longer here, still first.
        let later = [
            held("a-edge", false, 30),
            Held {
                was_origin: true,
                ..held("z-origin", false, 4)
            },
        ];
        assert_eq!(
            order(&later),
            vec![Step::Move("z-origin".into()), Step::Move("a-edge".into())]
        );
    }
}
