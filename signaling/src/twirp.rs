//! The Twirp `RoomService` that LiveKit's server SDKs call:
//! `POST /twirp/livekit.RoomService/{Method}`.
//!
//! Requests come as protobuf JSON (`application/json`, as the Node SDK sends) or binary protobuf
//! (`application/protobuf`, as the Python and Rust SDKs send); the answer uses the request's
//! encoding. Errors are Twirp JSON `{"code","msg","meta"}` with `Content-Type: application/json`
//! exactly (the Node SDK parses nothing else) and Twirp's HTTP statuses.
//!
//! Every call needs `Authorization: Bearer <JWT>` verified with the configured keys. Grants:
//! `roomCreate` for CreateRoom and DeleteRoom, `roomList` for ListRooms, `roomAdmin` with the
//! matching `room` for the others. A missing or invalid token is `unauthenticated` (401), a
//! valid token without the grant `permission_denied` (403).
//!
//! A room spread over several nodes is one room here ([`crate::cluster`]): with a
//! [`Forwarder`], listings merge every node's participants (ListParticipants, ListRooms'
//! `num_participants`), a call about a participant this node does not hold (Get, Remove,
//! MutePublishedTrack, UpdateParticipant, UpdateSubscriptions) goes to the node that holds
//! it, and SendData, UpdateRoomMetadata and DeleteRoom reach every node of the room.

// The HTTP shell reads the clock for token expiry.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use livekit_api::access_token::Claims;
use livekit_protocol as lk;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::{Answer, Forwarder, SCOPE_HEADER, SCOPE_NODE};
use crate::room::RoomLimits;
use crate::service::{ParticipantUpdate, SendData, ServiceError, Signaling};
use crate::token::ApiKeys;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

#[derive(Clone)]
struct TwirpState {
    signaling: Signaling,
    keys: Arc<ApiKeys>,
    cluster: Option<Forwarder>,
}

/// The Twirp routes, to merge into the server's router: this node's rooms only.
pub fn router(signaling: Signaling, keys: Arc<ApiKeys>) -> Router {
    router_with(signaling, keys, None)
}

/// The Twirp routes; with `cluster`, rooms spread over several nodes are answered room-wide.
pub fn router_with(signaling: Signaling, keys: Arc<ApiKeys>, cluster: Option<Forwarder>) -> Router {
    Router::new()
        .route("/twirp/livekit.RoomService/{method}", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(TwirpState {
            signaling,
            keys,
            cluster,
        })
}

/// A Twirp error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwirpError {
    /// Twirp code (`not_found`, `malformed`, …).
    pub code: &'static str,
    /// Message.
    pub msg: String,
}

impl TwirpError {
    /// An error with Twirp `code` and a message.
    pub fn new(code: &'static str, msg: impl Into<String>) -> Self {
        TwirpError {
            code,
            msg: msg.into(),
        }
    }

    /// The HTTP status of the code, as Twirp maps it.
    pub fn status(&self) -> StatusCode {
        match self.code {
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "permission_denied" => StatusCode::FORBIDDEN,
            "not_found" | "bad_route" => StatusCode::NOT_FOUND,
            "malformed" | "invalid_argument" | "out_of_range" => StatusCode::BAD_REQUEST,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "failed_precondition" => StatusCode::PRECONDITION_FAILED,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": self.code,
            "msg": self.msg,
            "meta": {},
        })
        .to_string();
        let mut r = (self.status(), body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

impl From<ServiceError> for TwirpError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::RoomNotFound(_)
            | ServiceError::ParticipantNotFound(_)
            | ServiceError::TrackNotFound(_) => TwirpError::new("not_found", e.to_string()),
            ServiceError::Stopped => TwirpError::new("unavailable", e.to_string()),
            #[allow(unreachable_patterns)]
            _ => TwirpError::new("internal", e.to_string()),
        }
    }
}

/// The two request encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    pub(crate) fn of(headers: &HeaderMap) -> Result<Self, TwirpError> {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json" => Ok(Encoding::Json),
            "application/protobuf" | "application/x-protobuf" => Ok(Encoding::Protobuf),
            _ => Err(TwirpError::new(
                "malformed",
                format!("unexpected Content-Type {ct:?}"),
            )),
        }
    }

    pub(crate) fn decode<T: Message + Default + DeserializeOwned>(
        self,
        body: &[u8],
    ) -> Result<T, TwirpError> {
        match self {
            Encoding::Json => {
                let body = if body.iter().all(u8::is_ascii_whitespace) {
                    &b"{}"[..]
                } else {
                    body
                };
                serde_json::from_slice(body).map_err(|e| {
                    TwirpError::new("malformed", format!("the JSON body is invalid: {e}"))
                })
            }
            Encoding::Protobuf => T::decode(body).map_err(|e| {
                TwirpError::new("malformed", format!("the protobuf body is invalid: {e}"))
            }),
        }
    }

    pub(crate) fn encode<T: Message + Serialize>(self, message: &T) -> Response {
        let (body, ct) = match self {
            Encoding::Json => match serde_json::to_vec(message) {
                Ok(b) => (b, "application/json"),
                Err(e) => return TwirpError::new("internal", e.to_string()).into_response(),
            },
            Encoding::Protobuf => (message.encode_to_vec(), "application/protobuf"),
        };
        let mut r = (StatusCode::OK, body).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        r
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn authenticate(keys: &ApiKeys, headers: &HeaderMap) -> Result<Claims, TwirpError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| TwirpError::new("unauthenticated", "missing Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| TwirpError::new("unauthenticated", "expected a Bearer token"))?
        .trim();
    keys.verify(token, now_unix())
        .map_err(|e| TwirpError::new("unauthenticated", e.to_string()))
}

/// What a call needs from the token.
enum Need<'a> {
    Create,
    List,
    Admin(&'a str),
}

fn authorize(claims: &Claims, need: Need<'_>) -> Result<(), TwirpError> {
    let g = &claims.video;
    let ok = match need {
        Need::Create => g.room_create,
        Need::List => g.room_list,
        Need::Admin(room) => g.room_admin && !room.is_empty() && g.room == room,
    };
    if ok {
        Ok(())
    } else {
        Err(TwirpError::new(
            "permission_denied",
            "the token lacks the grant for this call",
        ))
    }
}

pub(crate) fn require(field: &str, value: &str) -> Result<(), TwirpError> {
    if value.is_empty() {
        Err(TwirpError::new(
            "invalid_argument",
            format!("{field} is required"),
        ))
    } else {
        Ok(())
    }
}

async fn handle(
    State(state): State<TwirpState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match call(&state, &method, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn call(
    state: &TwirpState,
    method: &str,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, TwirpError> {
    let claims = authenticate(&state.keys, headers)?;
    let enc = Encoding::of(headers)?;
    let body = body.map_err(|e| TwirpError::new("malformed", e.body_text()))?;
    let s = &state.signaling;
    let here = Reach::of(state, headers);
    match method {
        "CreateRoom" => {
            authorize(&claims, Need::Create)?;
            let req: lk::CreateRoomRequest = enc.decode(&body)?;
            require("name", &req.name)?;
            let defaults = RoomLimits::default();
            let limits = RoomLimits {
                empty_timeout: if req.empty_timeout > 0 {
                    req.empty_timeout
                } else {
                    defaults.empty_timeout
                },
                departure_timeout: if req.departure_timeout > 0 {
                    req.departure_timeout
                } else {
                    defaults.departure_timeout
                },
                max_participants: req.max_participants,
            };
            let room = s.create_room_with(&req.name, limits, &req.metadata).await?;
            Ok(enc.encode(&room))
        }
        "ListRooms" => {
            authorize(&claims, Need::List)?;
            let req: lk::ListRoomsRequest = enc.decode(&body)?;
            let mut rooms = s.list_rooms(&req.names).await?;
            let nodes = here.every_other().await;
            if here.node_only || !nodes.is_empty() {
                // Each node counts the people it holds (mirrors are their origin's).
                for room in &mut rooms {
                    if let Ok(held) = s.list_held(&room.name).await {
                        let publishers = held
                            .iter()
                            .filter(|p| {
                                !p.tracks.is_empty()
                                    || p.permission.as_ref().is_some_and(|x| x.can_publish)
                            })
                            .count();
                        room.num_participants = u32::try_from(held.len()).unwrap_or(u32::MAX);
                        room.num_publishers = u32::try_from(publishers).unwrap_or(u32::MAX);
                    }
                }
            }
            if !nodes.is_empty() {
                // A room on several nodes is listed once, with everyone's counts; a room on
                // another node only is listed too.
                let mut by_name: std::collections::BTreeMap<String, lk::Room> =
                    rooms.into_iter().map(|r| (r.name.clone(), r)).collect();
                for a in here.each(&nodes, method, &body).await.into_iter().flatten() {
                    if a.status != 200 {
                        continue;
                    }
                    let theirs: lk::ListRoomsResponse = enc.decode(&a.body)?;
                    for r in theirs.rooms {
                        match by_name.entry(r.name.clone()) {
                            std::collections::btree_map::Entry::Occupied(mut e) => {
                                let mine = e.get_mut();
                                mine.num_participants += r.num_participants;
                                mine.num_publishers += r.num_publishers;
                            }
                            std::collections::btree_map::Entry::Vacant(e) => {
                                e.insert(r);
                            }
                        }
                    }
                }
                rooms = by_name.into_values().collect();
            }
            Ok(enc.encode(&lk::ListRoomsResponse { rooms }))
        }
        "DeleteRoom" => {
            authorize(&claims, Need::Create)?;
            let req: lk::DeleteRoomRequest = enc.decode(&body)?;
            require("room", &req.room)?;
            let local = s.delete_room(&req.room).await;
            let nodes = here.others(&req.room).await;
            let elsewhere = here.each(&nodes, method, &body).await;
            settle_everywhere(local, &elsewhere)?;
            Ok(enc.encode(&lk::DeleteRoomResponse {}))
        }
        "ListParticipants" => {
            let req: lk::ListParticipantsRequest = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            let participants = if here.node_only {
                s.list_held(&req.room).await?
            } else {
                let nodes = here.others(&req.room).await;
                let local = s.list_participants(&req.room).await;
                if nodes.is_empty() {
                    local?
                } else {
                    let mut found = local.is_ok();
                    // By sid: a node's own participant replaces this node's mirror of it.
                    let mut by_sid: std::collections::BTreeMap<String, lk::ParticipantInfo> = local
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| (p.sid.clone(), p))
                        .collect();
                    for a in here.each(&nodes, method, &body).await.into_iter().flatten() {
                        if a.status != 200 {
                            continue;
                        }
                        let theirs: lk::ListParticipantsResponse = enc.decode(&a.body)?;
                        found = true;
                        for p in theirs.participants {
                            by_sid.insert(p.sid.clone(), p);
                        }
                    }
                    if !found {
                        return Err(ServiceError::RoomNotFound(req.room).into());
                    }
                    by_sid.into_values().collect()
                }
            };
            Ok(enc.encode(&lk::ListParticipantsResponse { participants }))
        }
        "GetParticipant" => {
            let req: lk::RoomParticipantIdentity = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            let held = s
                .list_held(&req.room)
                .await
                .unwrap_or_default()
                .into_iter()
                .find(|p| p.identity == req.identity);
            if let Some(p) = held {
                return Ok(enc.encode(&p));
            }
            if here.node_only {
                return Err(ServiceError::ParticipantNotFound(req.identity).into());
            }
            let nodes = here.others(&req.room).await;
            if let Some(answer) = here.first_holder(&nodes, method, &body).await {
                return Ok(answer);
            }
            // This node's mirror, when the node holding it did not answer.
            let p = s.get_participant(&req.room, &req.identity).await?;
            Ok(enc.encode(&p))
        }
        "RemoveParticipant" => {
            let req: lk::RoomParticipantIdentity = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            match s.remove_participant(&req.room, &req.identity).await {
                Err(e) if not_found(&e) => here.held_elsewhere(&req.room, method, &body, e).await,
                r => {
                    r?;
                    Ok(enc.encode(&lk::RemoveParticipantResponse {}))
                }
            }
        }
        "MutePublishedTrack" => {
            let req: lk::MuteRoomTrackRequest = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            if !req.muted {
                // As LiveKit without `room.enable_remote_unmute`: a participant's microphone is
                // only ever turned on by that participant.
                return Err(TwirpError::new(
                    "failed_precondition",
                    "remote unmute not enabled",
                ));
            }
            match s
                .mute_published_track(&req.room, &req.identity, &req.track_sid, req.muted)
                .await
            {
                Err(e) if not_found(&e) => here.held_elsewhere(&req.room, method, &body, e).await,
                r => Ok(enc.encode(&lk::MuteRoomTrackResponse { track: Some(r?) })),
            }
        }
        "UpdateParticipant" => {
            let req: lk::UpdateParticipantRequest = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            let update = ParticipantUpdate {
                name: req.name,
                metadata: req.metadata,
                attributes: req.attributes,
                permission: req.permission,
            };
            match s.update_participant(&req.room, &req.identity, update).await {
                Err(e) if not_found(&e) => here.held_elsewhere(&req.room, method, &body, e).await,
                r => Ok(enc.encode(&r?)),
            }
        }
        "UpdateSubscriptions" => {
            let req: lk::UpdateSubscriptionsRequest = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            let mut sids = req.track_sids;
            sids.extend(
                req.participant_tracks
                    .into_iter()
                    .flat_map(|p| p.track_sids),
            );
            match s
                .update_subscriptions(&req.room, &req.identity, sids, req.subscribe)
                .await
            {
                Err(e) if not_found(&e) => here.held_elsewhere(&req.room, method, &body, e).await,
                r => {
                    r?;
                    Ok(enc.encode(&lk::UpdateSubscriptionsResponse {}))
                }
            }
        }
        "SendData" => {
            let req: lk::SendDataRequest = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            let room = req.room.clone();
            #[allow(deprecated)]
            let data = SendData {
                payload: req.data,
                reliable: req.kind != lk::data_packet::Kind::Lossy as i32,
                destination_sids: req.destination_sids,
                destination_identities: req.destination_identities,
                topic: req.topic,
                nonce: req.nonce,
                sender_identity: None,
            };
            // Each node sends to the sessions it holds.
            let local = s.send_data(&room, data).await;
            let nodes = here.others(&room).await;
            let elsewhere = here.each(&nodes, method, &body).await;
            settle_everywhere(local, &elsewhere)?;
            Ok(enc.encode(&lk::SendDataResponse {}))
        }
        "UpdateRoomMetadata" => {
            let req: lk::UpdateRoomMetadataRequest = enc.decode(&body)?;
            authorize(&claims, Need::Admin(&req.room))?;
            let local = s.update_room_metadata(&req.room, &req.metadata).await;
            let nodes = here.others(&req.room).await;
            let elsewhere = here.each(&nodes, method, &body).await;
            match local {
                Ok(room) => Ok(enc.encode(&room)),
                Err(e) if not_found(&e) => elsewhere
                    .into_iter()
                    .flatten()
                    .find(|a| a.status == 200)
                    .map(passthrough)
                    .ok_or_else(|| e.into()),
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(TwirpError::new(
            "unimplemented",
            format!("RoomService has no method {method}"),
        )),
    }
}

/// How far a call reaches: this node only (a call another node forwarded, or no cluster), or
/// every node of the room.
struct Reach<'a> {
    cluster: Option<&'a Forwarder>,
    /// Forwarded by another node: answer for this node only.
    node_only: bool,
    authorization: &'a str,
    content_type: &'a str,
}

impl<'a> Reach<'a> {
    fn of(state: &'a TwirpState, headers: &'a HeaderMap) -> Reach<'a> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        Reach {
            cluster: state.cluster.as_ref(),
            node_only: headers
                .get(SCOPE_HEADER)
                .is_some_and(|v| v.as_bytes() == SCOPE_NODE.as_bytes()),
            authorization: text(header::AUTHORIZATION.as_str()),
            content_type: text(header::CONTENT_TYPE.as_str()),
        }
    }

    /// The other nodes of `room` to ask; none for a forwarded call.
    async fn others(&self, room: &str) -> Vec<String> {
        match self.cluster {
            Some(c) if !self.node_only && !room.is_empty() => c.nodes(room).await,
            _ => Vec::new(),
        }
    }

    /// Every other living node (for listings of rooms); none for a forwarded call.
    async fn every_other(&self) -> Vec<String> {
        match self.cluster {
            Some(c) if !self.node_only => c.every_other().await,
            _ => Vec::new(),
        }
    }

    /// The same call (`body`) on each of `nodes`, for that node only; `None` where it could
    /// not be asked (logged).
    async fn each(&self, nodes: &[String], method: &str, body: &[u8]) -> Vec<Option<Answer>> {
        let Some(cluster) = self.cluster else {
            return Vec::new();
        };
        let mut answers = Vec::with_capacity(nodes.len());
        for node in nodes {
            let answer = cluster
                .call(node, method, self.authorization, self.content_type, body)
                .await;
            answers.push(match answer {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(method, error = %e, "a node of the room did not answer");
                    None
                }
            });
        }
        answers
    }

    /// The answer of the first of `nodes` that holds the call's participant (anything but
    /// `not_found`).
    async fn first_holder(&self, nodes: &[String], method: &str, body: &[u8]) -> Option<Response> {
        for node in nodes {
            let Some(Some(a)) = self
                .each(std::slice::from_ref(node), method, body)
                .await
                .pop()
            else {
                continue;
            };
            if a.status != StatusCode::NOT_FOUND.as_u16() {
                return Some(passthrough(a));
            }
        }
        None
    }

    /// A call about a participant this node does not hold (`e`): answered by the node of the
    /// room that holds it, else `e`.
    async fn held_elsewhere(
        &self,
        room: &str,
        method: &str,
        body: &[u8],
        e: ServiceError,
    ) -> Result<Response, TwirpError> {
        let nodes = self.others(room).await;
        self.first_holder(&nodes, method, body)
            .await
            .ok_or_else(|| e.into())
    }
}

fn not_found(e: &ServiceError) -> bool {
    matches!(
        e,
        ServiceError::RoomNotFound(_)
            | ServiceError::ParticipantNotFound(_)
            | ServiceError::TrackNotFound(_)
    )
}

/// A call made on every node of the room: done if done here, or, for a room this node does
/// not have, on another node.
fn settle_everywhere(
    local: Result<(), ServiceError>,
    elsewhere: &[Option<Answer>],
) -> Result<(), TwirpError> {
    match local {
        Err(e) if not_found(&e) => {
            if elsewhere.iter().flatten().any(|a| a.status == 200) {
                Ok(())
            } else {
                Err(e.into())
            }
        }
        r => r.map_err(TwirpError::from),
    }
}

/// Another node's answer, as it came.
fn passthrough(a: Answer) -> Response {
    let status = StatusCode::from_u16(a.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = (status, a.body).into_response();
    if let Ok(ct) = HeaderValue::from_str(&a.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}
