//! The control plane's Prometheus metrics (rendered by the binary's `/metrics`). Labels are
//! route templates, actions and states, never room or user ids.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::model::RoomState;

/// API requests by `route` (template, e.g. `/api/rooms/{id}/hand`), `method` and `status`.
pub const API_REQUESTS: &str = "control_api_requests_total";
/// API request durations in seconds, by `route`.
pub const API_SECONDS: &str = "control_api_request_duration_seconds";
/// Rooms by `state`, as of the last sweep of this instance.
pub const ROOMS: &str = "control_rooms";
/// Members connected to live rooms, as of the last sweep.
pub const PRESENT: &str = "control_members_present";
/// Changes per commit of the embedded store (grouped commits).
pub const STORE_GROUP: &str = "control_store_commit_changes";
/// Media-plane events (presence, speaking) per coalesced store update.
pub const MEDIA_EVENTS_GROUP: &str = "control_media_events_per_update";
/// Notifications written to users' feeds.
pub const NOTIFICATIONS: &str = "control_notifications_total";
/// Notifications or fan-out jobs dropped, by `where` (`queue`: the fan-out queue was full;
/// `stream`: a connected stream fell behind; its feed still has them).
pub const NOTIFICATIONS_DROPPED: &str = "control_notifications_dropped_total";
/// Ended rooms deleted past their retention.
pub const ROOMS_PRUNED: &str = "control_rooms_pruned_total";
/// Seats of members who never connected or dropped, given up to a join into a full room.
pub const SEATS_RELEASED: &str = "control_seats_released_total";
/// Living nodes sharing the store, by `state` (`ready`, `draining`), as this node last read them.
pub const NODES: &str = "control_nodes";
/// 1 while this node is draining (by an operator or its shutdown), else 0.
pub const NODE_DRAINING: &str = "control_node_draining";
/// This node's load as placement sees it: the larger of participants / `node_capacity` and the
/// CPU share (0 to 1, above 1 when over capacity).
pub const NODE_LOAD: &str = "control_node_load";
/// Rooms placed on a node at a token request: their node had died or was draining, or they
/// had none.
pub const ROOMS_PLACED: &str = "control_rooms_placed_total";
/// Listeners sent to an edge (another node than their room's origin, which was full).
pub const EDGE_LISTENERS: &str = "control_edge_listeners_total";
/// Speakers sent to an edge (their room's origin was full): the origin hears them through a
/// feed.
pub const EDGE_SPEAKERS: &str = "control_edge_speakers_total";
/// Relay links this node started to rooms' origins (an edge's first admission, or the next
/// one after a link ended).
pub const RELAYS_STARTED: &str = "control_relays_started_total";

/// Members a draining node asked to move to another node.
pub const DRAIN_MOVED: &str = "control_drain_members_moved_total";
/// Rooms a draining node gave a new origin.
pub const DRAIN_REHOMED: &str = "control_drain_rooms_rehomed_total";
/// Clips cut from recordings.
pub const CLIPS: &str = "control_clips_total";
/// Bytes of recordings and clips sent to players.
pub const AUDIO_BYTES: &str = "control_audio_bytes_total";
/// Requests for a recording's or clip's audio (or a clip's cut) sent to the node whose disk
/// holds it.
pub const AUDIO_REDIRECTS: &str = "control_audio_redirects_total";

/// `# HELP` texts and units.
pub fn describe() {
    describe_counter!(
        NOTIFICATIONS,
        Unit::Count,
        "Notifications written to users' feeds"
    );
    describe_counter!(
        NOTIFICATIONS_DROPPED,
        Unit::Count,
        "Notifications or fan-out jobs dropped: queue full or a stream behind"
    );
    describe_counter!(
        API_REQUESTS,
        Unit::Count,
        "Control API requests by route template, method and status"
    );
    describe_histogram!(
        API_SECONDS,
        Unit::Seconds,
        "Control API request durations by route"
    );
    describe_gauge!(
        ROOMS,
        Unit::Count,
        "Rooms by lifecycle state (scheduled, live)"
    );
    describe_gauge!(PRESENT, Unit::Count, "Members connected to live rooms");
    describe_histogram!(
        STORE_GROUP,
        Unit::Count,
        "Changes committed together by the embedded store's writer"
    );
    describe_histogram!(
        MEDIA_EVENTS_GROUP,
        Unit::Count,
        "Presence and speaking events applied to a room in one store update"
    );
    describe_counter!(
        ROOMS_PRUNED,
        Unit::Count,
        "Ended rooms deleted after their retention"
    );
    describe_counter!(CLIPS, Unit::Count, "Clips cut from recordings");
    describe_counter!(
        DRAIN_MOVED,
        Unit::Count,
        "Members this draining node asked to move to another node"
    );
    describe_counter!(
        DRAIN_REHOMED,
        Unit::Count,
        "Rooms this draining node gave a new origin"
    );
    describe_gauge!(
        NODES,
        Unit::Count,
        "Living nodes sharing the store, by state (ready, draining)"
    );
    describe_gauge!(NODE_DRAINING, Unit::Count, "1 while this node is draining");
    describe_gauge!(
        NODE_LOAD,
        Unit::Count,
        "This node's load for placement: max(participants / node_capacity, CPU share)"
    );
    describe_counter!(
        ROOMS_PLACED,
        Unit::Count,
        "Rooms placed on another node at a token request (their node died, drained, or none)"
    );
    describe_counter!(
        EDGE_LISTENERS,
        Unit::Count,
        "Listeners sent to an edge node at a token request (their room's origin was full)"
    );
    describe_counter!(
        EDGE_SPEAKERS,
        Unit::Count,
        "Speakers sent to an edge node at a token request (their room's origin was full)"
    );
    describe_counter!(
        RELAYS_STARTED,
        Unit::Count,
        "Relay links this node started to a room's origin"
    );
    describe_counter!(
        AUDIO_BYTES,
        Unit::Bytes,
        "Bytes of recordings and clips sent to players (ranges included)"
    );
    describe_counter!(
        AUDIO_REDIRECTS,
        Unit::Count,
        "Audio and clip requests redirected to the node that recorded the file"
    );
    describe_counter!(
        SEATS_RELEASED,
        Unit::Count,
        "Seats of members who never connected or dropped, released for a join into a full room"
    );
}

/// Counts and times every API request by its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    // The shell owns the clock; durations are for the histogram only.
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    counter!(API_REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    histogram!(API_SECONDS, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// Records what a sweep saw of the live and scheduled rooms.
pub fn rooms(live: usize, scheduled: Option<usize>, present: usize) {
    gauge!(ROOMS, "state" => state(RoomState::Live)).set(live as f64);
    if let Some(n) = scheduled {
        gauge!(ROOMS, "state" => state(RoomState::Scheduled)).set(n as f64);
    }
    gauge!(PRESENT).set(present as f64);
}

/// Records the living nodes this node read with its heartbeat.
pub fn nodes(ready: usize, draining: usize) {
    gauge!(NODES, "state" => "ready").set(ready as f64);
    gauge!(NODES, "state" => "draining").set(draining as f64);
}

/// Records whether this node is draining, and its load.
pub fn node(draining: bool, load: f64) {
    gauge!(NODE_DRAINING).set(if draining { 1.0 } else { 0.0 });
    gauge!(NODE_LOAD).set(load);
}

fn state(s: RoomState) -> &'static str {
    match s {
        RoomState::Scheduled => "scheduled",
        RoomState::Live => "live",
        RoomState::Ended => "ended",
        RoomState::Archived => "archived",
    }
}
