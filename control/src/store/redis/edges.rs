//! A room's edges in Redis: `{p}room:{id}:edges`, a set of the public URLs of the nodes that
//! serve the room's listeners besides its origin (see `crate::placement::edge_for`). Kept a
//! day past its last addition, and deleted with the room.

use redis::AsyncCommands;

use super::{RedisStore, redis_err};
use crate::error::ControlError;
use crate::model::RoomId;

/// How long a room's edge set outlives its last addition (ms): an ended room's set goes with
/// the room, a forgotten one expires.
const EDGES_TTL_MS: i64 = 24 * 3600 * 1000;

/// The key of room `id`'s edges.
pub(super) fn key(store: &RedisStore, id: &RoomId) -> String {
    store.key(&format!("room:{id}:edges"))
}

/// The room's edges.
pub(super) async fn read(store: &RedisStore, id: &RoomId) -> Result<Vec<String>, ControlError> {
    let mut con = store.shared.clone();
    con.smembers(key(store, id)).await.map_err(redis_err)
}

/// Adds the node at `url` to the room's edges.
pub(super) async fn add(store: &RedisStore, id: &RoomId, url: &str) -> Result<(), ControlError> {
    let mut con = store.shared.clone();
    let key = key(store, id);
    redis::pipe()
        .atomic()
        .sadd(&key, url)
        .ignore()
        .pexpire(&key, EDGES_TTL_MS)
        .ignore()
        .query_async::<()>(&mut con)
        .await
        .map_err(redis_err)
}
