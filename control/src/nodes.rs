//! The node registry: what each `stoa serve` process sharing a store says about itself.
//!
//! Every instance writes a [`Node`] record on a heartbeat of its own (three times per
//! `[control] node_ttl`, apart from the room sweep), and the record expires with it; the store
//! lists the living ones ([`crate::store::Store::nodes`]). Placement ([`crate::placement`])
//! reads them to put rooms on a living, non-draining node with headroom. The embedded store (one node) lists this node
//! alone, so placement there always answers this node's own URL, as before.
//!
//! The load numbers come from the binary's media plane through [`LoadSource`]; the control
//! plane never reads them itself.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a node carries now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeLoad {
    /// Media rooms open on it.
    pub rooms: u64,
    /// Participants connected to its media plane (publishers and listeners).
    pub participants: u64,
    /// Of them, participants that may only listen.
    pub listeners: u64,
    /// Listener-streams it forwards: one per subscriber per published track.
    pub streams: u64,
    /// The share of its machine's CPU time the process used since the last record, 0 to 1
    /// (1 = every core busy).
    pub cpu: f32,
}

/// One node's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Its id: random at each process start (the instance id members' presence names).
    pub id: String,
    /// Where clients reach its media (`[control] public_url`); empty when it has none.
    pub public_url: String,
    /// Its load when it wrote the record.
    #[serde(flatten)]
    pub load: NodeLoad,
    /// It takes no new rooms (an operator drained it, or it is shutting down).
    pub draining: bool,
    /// Unix ms it wrote the record.
    pub seen_at: u64,
    /// Unix ms after which it counts as dead unless it writes again.
    pub expires_at: u64,
}

/// Where a node's load comes from: the binary implements it with its media plane.
#[async_trait::async_trait]
pub trait LoadSource: Send + Sync + std::fmt::Debug {
    /// The node's load now.
    async fn load(&self) -> NodeLoad;
}

/// A new random node id (as [`crate::service::Control::start`] makes one): for a binary that
/// names its node before starting the control plane ([`crate::service::Control::start_as`]).
pub fn new_id() -> String {
    let mut id = [0u8; 5];
    let _ = getrandom::fill(&mut id);
    crate::model::base32(&id)
}

/// Whether `id` can be a node id (what the API accepts before it reaches a key).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_as_flat_json() {
        let node = Node {
            id: "abcd1234".into(),
            public_url: "ws://127.0.0.1:7880".into(),
            load: NodeLoad {
                rooms: 2,
                participants: 30,
                listeners: 28,
                streams: 56,
                cpu: 0.25,
            },
            draining: false,
            seen_at: 1_000,
            expires_at: 4_000,
        };
        let text = serde_json::to_string(&node).unwrap_or_default();
        assert!(text.contains("\"participants\":30"), "{text}");
        let back: Node = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back, node);
    }

    #[test]
    fn ids_are_short_and_alphanumeric() {
        assert!(valid_id("abcd1234"));
        assert!(valid_id(&new_id()));
        assert_ne!(new_id(), new_id());
        assert!(!valid_id(""));
        assert!(!valid_id("a:b"));
        assert!(!valid_id(&"a".repeat(33)));
    }
}
