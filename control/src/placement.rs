//! Where a room's media lives (pure: the node records and `now` are inputs).
//!
//! A room lives on one node, its origin: its speakers and, while the origin has headroom,
//! its listeners connect to its `media_url`. Listeners of a room whose origin is full go to
//! an edge ([`edge_for`]), which relays the room's media from the origin. A room is placed when it is created (or, created without
//! a node, at its first token request) on the living, non-draining node with the most
//! headroom; it stays there while that node lives. At a token request, a room whose node is
//! gone (its record expired, `[control] node_ttl` after its last write) moves to the node with
//! the most headroom, whoever is still counted as connected there ([`holding`] counts only
//! members of the origin's living node); a draining origin keeps the room while anyone is
//! connected to it, and loses it once nobody is. Its next members meet on the new node.
//!
//! Headroom is `1 - load`, the load being the larger of the participants' share of
//! `[control] node_capacity` and the CPU share, in whole percent; ties go to the node with
//! fewer rooms, then to the smaller id, so that every instance chooses alike from the same
//! records.

use std::collections::BTreeMap;

use crate::nodes::Node;

/// A node's load, 0 (idle) to 1 (full) or more: the larger of its participants' share of
/// `capacity` and its CPU share.
pub fn load(node: &Node, capacity: u64) -> f64 {
    let people = node.load.participants as f64 / capacity.max(1) as f64;
    people.max(f64::from(node.load.cpu))
}

/// Whether `node` may take new rooms at `now`: living, not draining, reachable by URL.
pub fn eligible(node: &Node, now: u64) -> bool {
    node.expires_at > now && !node.draining && !node.public_url.is_empty()
}

/// A node's load in whole percent: loads within a percent of each other (an idle node's CPU
/// noise) count as equal, so that the number of rooms decides between them.
fn percent(node: &Node, capacity: u64) -> u64 {
    (load(node, capacity) * 100.0).floor() as u64
}

/// The node a new room goes to: the eligible one with the most headroom.
pub fn choose(nodes: &[Node], capacity: u64, now: u64) -> Option<&Node> {
    nodes.iter().filter(|n| eligible(n, now)).min_by(|a, b| {
        percent(a, capacity)
            .cmp(&percent(b, capacity))
            .then(a.load.rooms.cmp(&b.load.rooms))
            .then(a.id.cmp(&b.id))
    })
}

/// How many members hold a room on its node at `current`: those connected through that node
/// while its record lives at `now`. `instances` counts the room's connected members by the
/// instance hosting them (a node's id is its instance's). Members on the room's other nodes
/// (its edges) do not hold it, nor do members counted on a node whose record expired: they
/// went with it (their presence is only marked gone later, `presence_ttl` after the node's
/// last heartbeat), so a dead origin's room moves as soon as its record expired.
pub fn holding(
    current: Option<&str>,
    instances: &BTreeMap<String, u32>,
    nodes: &[Node],
    now: u64,
) -> u32 {
    let Some(url) = current else {
        return 0;
    };
    nodes
        .iter()
        .filter(|n| n.public_url == url && n.expires_at > now)
        .filter_map(|n| instances.get(&n.id))
        .fold(0, |sum, n| sum.saturating_add(*n))
}

/// Where a room placed at `current` (`None`: nowhere yet), with `present` members holding it
/// there ([`holding`]), should live now: `Some(url)` when it should move there, `None` when it
/// stays (or no node can take it, when it keeps what it has).
pub fn review(
    current: Option<&str>,
    present: u32,
    nodes: &[Node],
    capacity: u64,
    now: u64,
) -> Option<String> {
    if let Some(url) = current {
        // Whoever is connected to the room's living node keeps it there (a draining node
        // keeps its occupied rooms): the room never moves under them, lest its speakers split
        // across two origins. A node whose record expired holds nobody: it is taken for dead
        // and the room moves. Should it only have stalled past `node_ttl` (three missed
        // writes) and come back, the speakers still connected to it are apart from the new
        // origin until they ask for a token again; `node_ttl` is sized to make that rare.
        if present > 0 {
            return None;
        }
        let stays = nodes
            .iter()
            .any(|n| n.expires_at > now && n.public_url == url && !n.draining);
        if stays {
            return None;
        }
    }
    let to = choose(nodes, capacity, now)?;
    (current != Some(to.public_url.as_str())).then(|| to.public_url.clone())
}

/// The participants a node is meant to carry, as [`edge_for`] judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Every node's (`[control] node_capacity`): an edge with headroom is below it.
    pub node: u64,
    /// The origin's for the member placed: `node`, or for one who may speak `node` plus the
    /// stage reserve (`[control] stage_reserve`).
    pub origin: u64,
}

impl Capacity {
    /// The same for the origin as for every node (a listener's placement).
    pub fn flat(node: u64) -> Capacity {
        Capacity { node, origin: node }
    }
}

/// Where a member of a room whose origin is `origin` (its node's URL) goes when the origin is
/// full: `Some(node)`, another living, non-draining node with headroom, preferring one of
/// `edges` (the URLs of nodes already serving the room, so that a room spreads over few
/// nodes), else the one with the most headroom; `None` sends the member to the origin (it has
/// room, its record is unknown, or no other node has headroom). Listeners and speakers come
/// here (a speaker on an edge is heard through the origin's feed from it); hosts and co-hosts
/// never do: they join on the origin.
pub fn edge_for<'a>(
    origin: &str,
    edges: &[String],
    nodes: &'a [Node],
    capacity: Capacity,
    now: u64,
) -> Option<&'a Node> {
    let home = nodes
        .iter()
        .find(|n| n.public_url == origin && n.expires_at > now)?;
    if load(home, capacity.origin) < 1.0 {
        return None;
    }
    let capacity = capacity.node;
    let open: Vec<Node> = nodes
        .iter()
        .filter(|n| n.public_url != origin && eligible(n, now) && load(n, capacity) < 1.0)
        .cloned()
        .collect();
    let serving: Vec<Node> = open
        .iter()
        .filter(|n| edges.contains(&n.public_url))
        .cloned()
        .collect();
    let best = choose(&serving, capacity, now).or_else(|| choose(&open, capacity, now))?;
    nodes.iter().find(|n| n.id == best.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodes::NodeLoad;

    fn node(id: &str, participants: u64, cpu: f32, draining: bool) -> Node {
        Node {
            id: id.into(),
            public_url: format!("ws://{id}.example:7880"),
            load: NodeLoad {
                participants,
                cpu,
                ..NodeLoad::default()
            },
            draining,
            seen_at: 0,
            expires_at: 10_000,
        }
    }

    #[test]
    fn a_new_room_goes_to_the_node_with_the_most_headroom() {
        let nodes = [
            node("a", 500, 0.1, false),
            node("b", 100, 0.1, false),
            node("c", 50, 0.9, false),
        ];
        // b: max(0.1, 0.1); a: 0.5; c: 0.9 (CPU).
        assert_eq!(
            choose(&nodes, 1000, 5_000).map(|n| n.id.as_str()),
            Some("b")
        );
        // Past their expiry none is eligible.
        assert!(choose(&nodes, 1000, 10_000).is_none());
    }

    #[test]
    fn draining_and_unreachable_nodes_take_no_rooms() {
        let mut nodes = vec![node("a", 900, 0.5, false), node("b", 0, 0.0, true)];
        assert_eq!(choose(&nodes, 1000, 0).map(|n| n.id.as_str()), Some("a"));
        nodes[0].public_url.clear();
        assert!(choose(&nodes, 1000, 0).is_none());
    }

    #[test]
    fn ties_go_to_fewer_rooms_then_the_smaller_id() {
        let mut nodes = [node("b", 0, 0.0, false), node("a", 0, 0.0, false)];
        assert_eq!(choose(&nodes, 10, 0).map(|n| n.id.as_str()), Some("a"));
        nodes[1].load.rooms = 3;
        assert_eq!(choose(&nodes, 10, 0).map(|n| n.id.as_str()), Some("b"));
        // Within a percent is a tie: CPU noise of idle nodes does not decide.
        nodes[0].load.cpu = 0.004;
        assert_eq!(choose(&nodes, 10, 0).map(|n| n.id.as_str()), Some("b"));
        nodes[0].load.cpu = 0.02;
        assert_eq!(choose(&nodes, 10, 0).map(|n| n.id.as_str()), Some("a"));
    }

    #[test]
    fn a_room_stays_on_its_living_node_even_when_busier() {
        let nodes = [node("a", 900, 0.5, false), node("b", 0, 0.0, false)];
        let a = "ws://a.example:7880";
        assert_eq!(review(Some(a), 0, &nodes, 1000, 0), None);
    }

    #[test]
    fn a_room_whose_node_died_moves_to_a_living_one() {
        let nodes = [node("a", 900, 0.5, false), node("b", 10, 0.0, false)];
        let gone = "ws://c.example:7880";
        assert_eq!(
            review(Some(gone), 0, &nodes, 1000, 0).as_deref(),
            Some("ws://b.example:7880")
        );
        // Whoever holds it there keeps it (the caller counts them with `holding`, which
        // counts nobody on a dead node).
        assert_eq!(review(Some(gone), 5, &nodes, 1000, 0), None);
        // A record past its expiry is a dead node too.
        assert_eq!(
            review(Some("ws://a.example:7880"), 0, &nodes, 1000, 10_000),
            None,
            "no living node: it keeps what it has"
        );
        let mut later = nodes.clone();
        later[0].expires_at = 5_000;
        later[1].expires_at = 20_000;
        assert_eq!(
            review(Some("ws://a.example:7880"), 0, &later, 1000, 10_000).as_deref(),
            Some("ws://b.example:7880")
        );
    }

    #[test]
    fn a_draining_node_keeps_its_occupied_rooms_and_loses_its_empty_ones() {
        let nodes = [node("a", 10, 0.1, true), node("b", 10, 0.1, false)];
        let a = "ws://a.example:7880";
        assert_eq!(review(Some(a), 3, &nodes, 1000, 0), None);
        assert_eq!(
            review(Some(a), 0, &nodes, 1000, 0).as_deref(),
            Some("ws://b.example:7880")
        );
    }

    #[test]
    fn listeners_of_a_full_origin_go_to_an_edge_with_headroom() {
        let nodes = [
            node("a", 2, 0.1, false),
            node("b", 1, 0.1, false),
            node("c", 0, 0.0, false),
        ];
        let a = "ws://a.example:7880".to_owned();
        let b = ["ws://b.example:7880".to_owned()];
        let id = |n: Option<&Node>| n.map(|n| n.id.clone());
        // Room at the origin: listeners stay there.
        assert_eq!(edge_for(&a, &[], &nodes, Capacity::flat(3), 0), None);
        // Full (at capacity): the node with the most headroom, c...
        assert_eq!(
            id(edge_for(&a, &[], &nodes, Capacity::flat(2), 0)).as_deref(),
            Some("c")
        );
        // ...unless another node serves the room already and has headroom: b.
        assert_eq!(
            id(edge_for(&a, &b, &nodes, Capacity::flat(2), 0)).as_deref(),
            Some("b")
        );
        // A full edge is passed over for one with headroom.
        let mut busy = nodes.clone();
        busy[1].load.participants = 2;
        assert_eq!(
            id(edge_for(&a, &b, &busy, Capacity::flat(2), 0)).as_deref(),
            Some("c")
        );
        // Draining, dead and URL-less nodes are no edges; with none left, the origin it is.
        let mut gone = busy.clone();
        gone[2].draining = true;
        assert_eq!(edge_for(&a, &b, &gone, Capacity::flat(2), 0), None);
        gone[2].draining = false;
        gone[2].expires_at = 0;
        assert_eq!(edge_for(&a, &[], &gone, Capacity::flat(2), 0), None);
        gone[2].expires_at = 10_000;
        gone[2].public_url.clear();
        assert_eq!(edge_for(&a, &[], &gone, Capacity::flat(2), 0), None);
        // CPU counts as load too.
        let mut hot = nodes.clone();
        hot[0].load.cpu = 1.0;
        assert_eq!(
            id(edge_for(&a, &[], &hot, Capacity::flat(100), 0)).as_deref(),
            Some("c")
        );
        // An origin whose record is unknown or expired is the review's business, not an
        // edge's: listeners are sent there as before.
        assert_eq!(
            edge_for("ws://x.example:7880", &[], &nodes, Capacity::flat(2), 0),
            None
        );
        assert_eq!(edge_for(&a, &[], &nodes, Capacity::flat(2), 10_000), None);
        // Every instance chooses alike: ties as for rooms (fewer rooms, then the smaller id).
        let tie = [
            node("a", 5, 0.0, false),
            node("d", 0, 0.0, false),
            node("c", 0, 0.0, false),
        ];
        assert_eq!(
            id(edge_for(&a, &[], &tie, Capacity::flat(2), 0)).as_deref(),
            Some("c")
        );
        // A speaker: the origin takes her into its stage reserve beyond capacity; past it, an
        // edge with headroom as for listeners.
        let stage = |reserve: u64| Capacity {
            node: 2,
            origin: 2 + reserve,
        };
        assert_eq!(edge_for(&a, &[], &nodes, stage(1), 0), None);
        assert_eq!(
            id(edge_for(&a, &[], &nodes, stage(0), 0)).as_deref(),
            Some("c")
        );
        let mut crowded = nodes.clone();
        crowded[0].load.participants = 3;
        assert_eq!(
            id(edge_for(&a, &[], &crowded, stage(1), 0)).as_deref(),
            Some("c")
        );
    }

    #[test]
    fn only_members_of_the_living_origin_hold_a_room() {
        let nodes = [node("a", 3, 0.1, false), node("b", 10, 0.1, false)];
        let a = "ws://a.example:7880";
        let counts = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
            pairs.iter().map(|(i, n)| ((*i).to_owned(), *n)).collect()
        };
        // Members on the origin hold it; members on an edge (b) or on a node with no record
        // (c, dead, its presence not yet marked gone) do not.
        let spread = counts(&[("a", 2), ("b", 7), ("c", 4)]);
        assert_eq!(holding(Some(a), &spread, &nodes, 5_000), 2);
        assert_eq!(
            holding(Some("ws://c.example:7880"), &spread, &nodes, 5_000),
            0
        );
        assert_eq!(holding(None, &spread, &nodes, 5_000), 0);
        // Once the origin's record expired, nobody holds it there: the room moves although
        // its members are still counted, to the living node.
        assert_eq!(holding(Some(a), &spread, &nodes, 10_000), 0);
        let mut later = nodes.clone();
        later[0].expires_at = 8_000;
        later[1].expires_at = 20_000;
        let held = holding(Some(a), &spread, &later, 9_000);
        assert_eq!(held, 0);
        assert_eq!(
            review(Some(a), held, &later, 1000, 9_000).as_deref(),
            Some("ws://b.example:7880")
        );
        // A draining origin keeps the room while its own members hold it, not for an edge's.
        let mut draining = nodes.clone();
        draining[0].draining = true;
        let held = holding(Some(a), &spread, &draining, 5_000);
        assert_eq!(review(Some(a), held, &draining, 1000, 5_000), None);
        let edge_only = counts(&[("b", 7)]);
        let held = holding(Some(a), &edge_only, &draining, 5_000);
        assert_eq!(
            review(Some(a), held, &draining, 1000, 5_000).as_deref(),
            Some("ws://b.example:7880")
        );
        // A node restarted at the same URL is a new id: the old instance's members do not
        // hold the room there, the new one's do.
        let mut restarted = nodes.clone();
        restarted[0].id = "a2".into();
        assert_eq!(holding(Some(a), &spread, &restarted, 5_000), 0);
        let back = counts(&[("a", 2), ("a2", 1)]);
        assert_eq!(holding(Some(a), &back, &restarted, 5_000), 1);
    }

    #[test]
    fn a_room_without_a_node_is_placed() {
        let nodes = [node("a", 10, 0.1, false)];
        assert_eq!(
            review(None, 0, &nodes, 1000, 0).as_deref(),
            Some("ws://a.example:7880")
        );
        assert_eq!(review(None, 0, &[], 1000, 0), None);
    }
}
