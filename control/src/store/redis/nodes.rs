//! The node registry in Redis: `{p}node:{id}` (a node's record, expiring with its heartbeat),
//! `{p}nodes` (ids scored by expiry, an index pruned a minute late) and `{p}nodes:draining`
//! (ids an operator drained, forgotten with the node).

use redis::AsyncCommands;

use super::{RedisStore, json, redis_err};
use crate::error::ControlError;
use crate::nodes::Node;

/// Writes node `node`'s record for `ttl_ms` and indexes it by its expiry.
pub(super) async fn put(store: &RedisStore, node: &Node, ttl_ms: u64) -> Result<(), ControlError> {
    let mut node = node.clone();
    let ttl_ms = ttl_ms.max(1);
    node.expires_at = node.seen_at.saturating_add(ttl_ms);
    let mut con = store.shared.clone();
    redis::pipe()
        .atomic()
        .pset_ex(
            store.key(&format!("node:{}", node.id)),
            json(&node)?,
            ttl_ms,
        )
        .ignore()
        .zadd(store.key("nodes"), &node.id, node.expires_at)
        .ignore()
        .query_async::<()>(&mut con)
        .await
        .map_err(redis_err)
}

/// The living nodes at `now` (their records' keys not expired), drained ones marked.
pub(super) async fn living(store: &RedisStore, now: u64) -> Result<Vec<Node>, ControlError> {
    // The index is pruned a minute late (clocks of several machines); the record's own
    // key, expiring on Redis's clock, says who lives.
    const SKEW_MS: u64 = 60_000;
    let mut con = store.shared.clone();
    let (ids, drained): (Vec<String>, Vec<String>) = redis::pipe()
        .zrembyscore(store.key("nodes"), "-inf", now.saturating_sub(SKEW_MS))
        .ignore()
        .zrange(store.key("nodes"), 0, -1)
        .smembers(store.key("nodes:draining"))
        .query_async(&mut con)
        .await
        .map_err(redis_err)?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for id in &ids {
        let key = store.key(&format!("node:{id}"));
        pipe.get(&key).pttl(&key);
    }
    let found: Vec<(Option<String>, i64)> = pipe.query_async(&mut con).await.map_err(redis_err)?;
    let mut out = Vec::with_capacity(ids.len());
    for (raw, ttl) in found {
        let Some(raw) = raw else { continue };
        let Ok(mut node) = serde_json::from_str::<Node>(&raw) else {
            continue;
        };
        if ttl > 0 {
            node.expires_at = now.saturating_add(ttl.unsigned_abs());
        }
        node.draining |= drained.contains(&node.id);
        out.push(node);
    }
    let gone: Vec<&String> = drained
        .iter()
        .filter(|d| !out.iter().any(|n| n.id == **d))
        .collect();
    if !gone.is_empty() {
        con.srem::<_, _, ()>(store.key("nodes:draining"), gone)
            .await
            .map_err(redis_err)?;
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Marks node `id` drained by an operator, or not.
pub(super) async fn drain(store: &RedisStore, id: &str, on: bool) -> Result<(), ControlError> {
    let mut con = store.shared.clone();
    let key = store.key("nodes:draining");
    if on {
        con.sadd::<_, _, ()>(key, id).await
    } else {
        con.srem::<_, _, ()>(key, id).await
    }
    .map_err(redis_err)
}
