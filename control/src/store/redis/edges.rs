//! A room's edges in Redis: `{p}room:{id}:edges`, a set of the public URLs of the nodes that
//! serve the room's listeners besides its origin (see `crate::placement::edge_for`). Kept a
//! day past its last addition, and deleted with the room.
//!
//! And the relay pairs: `{p}relay:{origin URL}>{edge URL}`, the id of the one room whose media
//! the origin relays to the edge (engines tell relay links apart by their sockets). Kept a day
//! past its last claim; a pair whose room ended or left the origin is taken over.

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

/// The key of the relay pair from `origin` to `edge`.
fn pair_key(store: &RedisStore, origin: &str, edge: &str) -> String {
    store.key(&format!("relay:{origin}>{edge}"))
}

/// Claims the pair for room `id`; `None` when `id` holds it, else its holder.
pub(super) async fn claim_pair(
    store: &RedisStore,
    origin: &str,
    edge: &str,
    id: &RoomId,
) -> Result<Option<String>, ControlError> {
    let mut con = store.shared.clone();
    let key = pair_key(store, origin, edge);
    // Twice at most: a holder's key may expire between the two commands.
    for _ in 0..2 {
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(id.as_str())
            .arg("NX")
            .arg("PX")
            .arg(EDGES_TTL_MS)
            .query_async(&mut con)
            .await
            .map_err(redis_err)?;
        if set.is_some() {
            return Ok(None);
        }
        let holder: Option<String> = con.get(&key).await.map_err(redis_err)?;
        match holder {
            Some(h) if h == id.as_str() => {
                let _: bool = con.pexpire(&key, EDGES_TTL_MS).await.map_err(redis_err)?;
                return Ok(None);
            }
            Some(h) => return Ok(Some(h)),
            None => {}
        }
    }
    Ok(Some(String::new()))
}

/// Gives the pair to room `id`.
pub(super) async fn take_pair(
    store: &RedisStore,
    origin: &str,
    edge: &str,
    id: &RoomId,
) -> Result<(), ControlError> {
    let mut con = store.shared.clone();
    let key = pair_key(store, origin, edge);
    redis::cmd("SET")
        .arg(&key)
        .arg(id.as_str())
        .arg("PX")
        .arg(EDGES_TTL_MS)
        .query_async::<()>(&mut con)
        .await
        .map_err(redis_err)
}
