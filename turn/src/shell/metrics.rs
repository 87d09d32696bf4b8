//! Every metric the relay exports, through the `metrics` facade (Prometheus in `stoa`).
//! The core counts in [`Stats`]; once a second each shard adds what changed.
//! `turn_send_dropped_total` (datagrams a full socket buffer refused) is counted by the shard.

use crate::proto::{Server, Stats};

/// Adds the counters' growth since `exported`, and the change of the allocation gauge since
/// `allocations` (each shard adds its own share to the relay's totals).
pub(super) fn export(server: &Server, exported: &mut Stats, allocations: &mut usize) {
    let now = server.stats();
    let counters: [(&'static str, u64, u64); 11] = [
        (
            "turn_allocations_created_total",
            now.allocations_created,
            exported.allocations_created,
        ),
        (
            "turn_auth_failures_total",
            now.auth_failures,
            exported.auth_failures,
        ),
        (
            "turn_policy_refusals_total",
            now.policy_refusals,
            exported.policy_refusals,
        ),
        (
            "turn_quota_refusals_total",
            now.quota_refusals,
            exported.quota_refusals,
        ),
        (
            "turn_rate_limited_total",
            now.rate_limited,
            exported.rate_limited,
        ),
        ("turn_malformed_total", now.malformed, exported.malformed),
        ("turn_dropped_total", now.dropped, exported.dropped),
        (
            "turn_to_peer_packets_total",
            now.to_peer_packets,
            exported.to_peer_packets,
        ),
        (
            "turn_to_peer_bytes_total",
            now.to_peer_bytes,
            exported.to_peer_bytes,
        ),
        (
            "turn_to_client_packets_total",
            now.to_client_packets,
            exported.to_client_packets,
        ),
        (
            "turn_to_client_bytes_total",
            now.to_client_bytes,
            exported.to_client_bytes,
        ),
    ];
    for (name, value, before) in counters {
        let delta = value.saturating_sub(before);
        if delta > 0 {
            metrics::counter!(name).increment(delta);
        }
    }
    let live = server.num_allocations();
    if live != *allocations {
        metrics::gauge!("turn_allocations").increment(live as f64 - *allocations as f64);
        *allocations = live;
    }
    *exported = now;
}
