//! The REST API (`/api/...`, JSON), its OpenAPI document (`/api/openapi.json`) and the event
//! stream (`/api/events`, a WebSocket of JSON events).
//!
//! Every error is `{code, message}` with a precise status: 400 malformed input, 401 no or bad
//! token, 403 not allowed, 404 unknown id, 409 conflicting state, 422 full, 429 rate-limited,
//! 503 store unavailable.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::Principal;
use crate::clock::now_ms;
use crate::error::{ControlError, ErrorBody};
use crate::events::Event;
use crate::model::{RoomDoc, RoomId, RoomKind, RoomState, Scope, SpeakerMode, UserId};
use crate::permission::Action;
use crate::room::{Actor, Command};
use crate::schedule::Schedule;
use crate::service::{Control, NewRoom};
use crate::store::{Follow, Profile};
use crate::view::{self, AudienceView, HostStatsView, RoomCardView, RoomView, StatsView};

mod invitations;
mod nodes;
mod replay;
mod stream;
pub use invitations::{InvitationBody, InvitationEntry, InvitationView, InvitationsView};
pub use replay::{
    ClipBody, ClipRoomView, ClipView, ClipsView, RecordingView, RecordingsView, TimelineEntry,
};
pub use stream::EventsQuery;

/// Largest request body.
pub const MAX_BODY: usize = 16 * 1024;

/// The `/api` routes.
pub fn router(control: Control) -> Router {
    Router::new()
        .route("/api/openapi.json", get(openapi))
        .route("/api/session/guest", post(guest))
        .route("/api/me", get(me))
        .route("/api/rooms", get(directory).post(create_room))
        .route("/api/rooms/{id}", get(get_room).patch(edit_room))
        .route("/api/rooms/{id}/lineup", get(lineup))
        .route(
            "/api/rooms/{id}/lineup/{user}",
            put(line_up).delete(line_up_remove),
        )
        .route("/api/rooms/{id}/card", get(room_card))
        .route("/api/rooms/{id}/audience", get(audience))
        .route("/api/rooms/{id}/start", post(start))
        .route("/api/rooms/{id}/end", post(end))
        .route(
            "/api/rooms/{id}/recording",
            post(start_recording).delete(stop_recording),
        )
        .merge(replay::routes())
        .merge(nodes::routes())
        .route("/api/rooms/{id}/token", post(token))
        .route("/api/rooms/{id}/leave", post(leave))
        .route("/api/rooms/{id}/hand", post(raise_hand).delete(lower_hand))
        .route("/api/rooms/{id}/mute", post(mute))
        .route("/api/rooms/{id}/unmute", post(unmute))
        .route("/api/rooms/{id}/step_down", post(step_down))
        .route("/api/rooms/{id}/reactions", post(react))
        .route("/api/rooms/{id}/presence", post(presence))
        .route("/api/rooms/{id}/members/{user}/{action}", post(moderate))
        .route("/api/rooms/{id}/stats", get(room_stats))
        .route("/api/rooms/{id}/audit", get(audit_log))
        .merge(invitations::routes())
        .route("/api/users/{id}/stats", get(host_stats))
        .route("/api/users/{id}/profile", get(profile))
        .route("/api/me/profile", axum::routing::put(set_profile))
        .route("/api/me/notifications", get(notifications))
        .route("/api/me/notifications/read", post(read_notifications))
        .route("/api/follows", get(follows))
        .route("/api/follows/{kind}/{id}", put(follow).delete(unfollow))
        .route("/api/events", get(stream::events))
        .route("/api", axum::routing::any(not_found))
        .route("/api/{*rest}", axum::routing::any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .route_layer(axum::middleware::from_fn(crate::telemetry::track))
        .with_state(control)
}

async fn not_found() -> ControlError {
    ControlError::new(404, "not_found", "no such API endpoint")
}

// ------------------------------------------------------------------ extractors

/// The authenticated caller (`Authorization: Bearer`, or `?access_token=` for WebSockets).
#[derive(Debug)]
pub struct Caller(pub Principal);

impl Caller {
    fn user(&self) -> Result<(&UserId, &str), ControlError> {
        match &self.0 {
            Principal::User { id, name } => Ok((id, name)),
            Principal::Server => Err(ControlError::bad_request(
                "needs_user",
                "this call is made by a user, with a user token",
            )),
        }
    }

    fn actor(&self) -> Actor {
        match &self.0 {
            Principal::User { id, .. } => Actor::User(id.clone()),
            Principal::Server => Actor::System,
        }
    }

    fn viewer(&self) -> Option<&UserId> {
        match &self.0 {
            Principal::User { id, .. } => Some(id),
            Principal::Server => None,
        }
    }
}

impl FromRequestParts<Control> for Caller {
    type Rejection = ControlError;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Control,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .map_err(|_| ControlError::unauthorized("the Authorization header is not text"))
            })
            .transpose()?;
        let token = match header {
            Some(h) => h
                .strip_prefix("Bearer ")
                .ok_or_else(|| ControlError::unauthorized("use Authorization: Bearer <token>"))?
                .trim()
                .to_owned(),
            None => parts
                .uri
                .query()
                .and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "access_token")
                        .map(|(_, v)| v.into_owned())
                })
                .ok_or_else(|| ControlError::unauthorized("a bearer token is required"))?,
        };
        control.keys().verify(&token).map(Caller)
    }
}

/// A query string whose problems come back as `{code, message}` (`invalid_query`).
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ControlError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Params(q))
            .map_err(|e| ControlError::bad_request("invalid_query", e.body_text()))
    }
}

/// A JSON body whose problems come back as `{code, message}`.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ControlError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return Err(ControlError::new(
                415,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ControlError::new(413, "too_large", format!("request body: {e}")))?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| ControlError::bad_request("invalid_json", format!("request body: {e}")))
    }
}

fn room_id(id: &str) -> Result<RoomId, ControlError> {
    RoomId::parse(id)
}

// ------------------------------------------------------------------ request and response bodies

/// `POST /api/session/guest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuestBody {
    /// Display name, 1 to 64 characters.
    pub name: String,
}

/// A user token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Bearer token for this API.
    pub token: String,
    /// The user id.
    pub user: UserId,
    /// Display name.
    pub name: String,
}

/// `GET /api/me`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeView {
    /// The user id.
    pub user: UserId,
    /// Display name.
    pub name: String,
}

/// `POST /api/rooms`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoomBody {
    /// 1 to 120 characters.
    pub title: String,
    /// Up to 60 characters.
    #[serde(default)]
    pub topic: String,
    /// Up to 2000 characters.
    #[serde(default)]
    pub description: String,
    /// `stage` (default) or `open`.
    #[serde(default = "default_kind")]
    pub kind: RoomKind,
    /// `everyone` (default), `followers` or `invited`.
    #[serde(default = "default_mode")]
    pub speaker_mode: SpeakerMode,
    /// Member limit; the server's maximum if absent.
    pub max_participants: Option<u32>,
    /// Unix ms to schedule the room for; absent: it goes live now.
    pub scheduled_for: Option<u64>,
    /// The host, when a server creates a room for a user.
    pub host: Option<UserId>,
    /// Auto-start and recurrence (days of the week, local time, IANA time zone); with a
    /// recurrence and no `scheduled_for`, the room is scheduled for its first occurrence.
    #[serde(default)]
    pub schedule: Schedule,
    /// Unlisted and joinable only by invitation (default false).
    #[serde(default)]
    pub private: bool,
    /// Listeners may send data packets (`canPublishData`) to the room, rate-limited and stamped
    /// with their identity by the server (default false: only the stage sends data).
    #[serde(default)]
    pub listener_data: bool,
    /// Record the room from the moment it goes live (default `false`).
    #[serde(default)]
    pub recording: bool,
    /// Seconds without speaking after which someone on stage is muted; 0: never (default
    /// 600).
    pub idle_mute_after: Option<u32>,
    /// Seconds without speaking after which a speaker goes back to the audience; 0: never
    /// (default 1800; longer than `idle_mute_after`).
    pub idle_audience_after: Option<u32>,
    /// Show listeners whose page is hidden as away (default false).
    #[serde(default)]
    pub show_away: bool,
}

/// `PATCH /api/rooms/{id}`: the fields to change, checked as at creation; absent fields stay.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditRoomBody {
    /// 1 to 120 characters.
    pub title: Option<String>,
    /// Up to 60 characters.
    pub topic: Option<String>,
    /// Up to 2000 characters.
    pub description: Option<String>,
    /// `stage` or `open` (before the room goes live).
    pub kind: Option<RoomKind>,
    /// `everyone`, `followers` or `invited`.
    pub speaker_mode: Option<SpeakerMode>,
    /// Member limit, not below the members in the room.
    pub max_participants: Option<u32>,
    /// Unix ms (scheduled rooms).
    pub scheduled_for: Option<u64>,
    /// Auto-start and recurrence (scheduled rooms).
    pub schedule: Option<Schedule>,
    /// Listeners may send data packets to the room; applies at once to those connected.
    pub listener_data: Option<bool>,
    /// Seconds without speaking after which someone on stage is muted (0: never).
    pub idle_mute_after: Option<u32>,
    /// Seconds without speaking after which a speaker goes back to the audience (0: never).
    pub idle_audience_after: Option<u32>,
    /// Show listeners whose page is hidden as away.
    pub show_away: Option<bool>,
}

/// `PUT /api/rooms/{id}/lineup/{user}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineUpBody {
    /// `co_host` or `speaker`.
    pub role: crate::model::Role,
}

/// A room's line-up: who has a role whenever they join.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LineUpView {
    /// Users and their roles, by user id.
    pub lineup: Vec<LineUpEntry>,
}

/// One entry of a line-up.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LineUpEntry {
    /// Whose.
    pub user: UserId,
    /// Their display name when the room knows it, else the user id.
    pub name: String,
    /// `co_host` or `speaker`.
    pub role: crate::model::Role,
}

fn default_kind() -> RoomKind {
    RoomKind::Stage
}

fn default_mode() -> SpeakerMode {
    SpeakerMode::Everyone
}

/// `GET /api/rooms` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DirectoryQuery {
    /// Text to find in titles, topics and descriptions.
    pub q: Option<String>,
    /// Only rooms of this kind.
    pub kind: Option<RoomKind>,
    /// Also list archived rooms (newest first, at most 50).
    #[serde(default)]
    pub archived: bool,
}

/// `GET /api/rooms`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DirectoryView {
    /// Live rooms, largest audience first.
    pub live: Vec<RoomView>,
    /// Scheduled rooms, soonest first.
    pub scheduled: Vec<RoomView>,
    /// Archived rooms when asked for.
    pub archived: Vec<RoomView>,
}

/// `POST /api/rooms/{id}/token`: what a client needs to connect.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The LiveKit access token (grants match the caller's role).
    pub token: String,
    /// The WebSocket URL to give `room.connect`.
    pub url: String,
    /// The room (the LiveKit room name).
    pub room: String,
    /// The caller's identity.
    pub identity: UserId,
    /// The caller's role.
    pub role: crate::model::Role,
}

/// `POST /api/rooms/{id}/reactions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactionBody {
    /// 1 to 8 characters, e.g. an emoji.
    pub emoji: String,
}

/// What the caller follows.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FollowsView {
    /// Users and rooms.
    pub follows: Vec<Follow>,
}

/// `GET /api/rooms/{id}/audience` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AudienceQuery {
    /// The cursor of the previous page (its `next`); absent: the first page.
    pub after: Option<String>,
    /// Members per page, 1 to 200 (default 50).
    pub limit: Option<usize>,
}

// ------------------------------------------------------------------ handlers

#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi().to_pretty_json().unwrap_or_default(),
    )
        .into_response()
}

#[utoipa::path(post, path = "/api/session/guest", request_body = GuestBody,
    responses((status = 200, body = SessionView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn guest(
    State(c): State<Control>,
    Body(b): Body<GuestBody>,
) -> Result<Json<SessionView>, ControlError> {
    if !c.config().guests() {
        return Err(ControlError::forbidden(
            "guests_disabled",
            "guest sign-in is turned off",
        ));
    }
    let name = crate::model::text("name", &b.name, 1, crate::model::MAX_NAME)?;
    let everyone = UserId::parse("guest")?;
    c.rate_limit(&everyone, "guest sign-in", 20.0, 50.0)?;
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(|_| ControlError::unavailable("no randomness"))?;
    let user = UserId::parse(&format!("guest-{}", crate::model::base32(&bytes)))?;
    let ttl = std::time::Duration::from_secs(c.config().user_token_ttl);
    let token = c.keys().user_token(&user, &name, ttl)?;
    Ok(Json(SessionView { token, user, name }))
}

#[utoipa::path(get, path = "/api/me", responses((status = 200, body = MeView), (status = 401, body = ErrorBody)))]
async fn me(caller: Caller) -> Result<Json<MeView>, ControlError> {
    let (id, name) = caller.user()?;
    Ok(Json(MeView {
        user: id.clone(),
        name: name.to_owned(),
    }))
}

#[utoipa::path(get, path = "/api/rooms", params(DirectoryQuery),
    responses((status = 200, body = DirectoryView), (status = 401, body = ErrorBody)))]
async fn directory(
    State(c): State<Control>,
    caller: Caller,
    Params(q): Params<DirectoryQuery>,
) -> Result<Json<DirectoryView>, ControlError> {
    let mut states = vec![RoomState::Live, RoomState::Scheduled];
    if q.archived {
        states.push(RoomState::Archived);
    }
    let needle = q.q.as_deref().map(str::to_lowercase);
    let docs = c.rooms(&states).await?;
    // Private rooms are unlisted: only their host, servers and whoever is on their stage
    // find them here.
    let matches = |d: &RoomDoc| {
        view::may_see(d, caller.viewer())
            && q.kind.is_none_or(|k| d.room.kind == k)
            && needle.as_deref().is_none_or(|n| {
                d.room.title.to_lowercase().contains(n)
                    || d.room.topic.to_lowercase().contains(n)
                    || d.room.description.to_lowercase().contains(n)
            })
    };
    let mut out = DirectoryView {
        live: vec![],
        scheduled: vec![],
        archived: vec![],
    };
    let mut archived: Vec<&RoomDoc> = vec![];
    for d in docs.iter().filter(|d| matches(d)) {
        match d.room.state {
            RoomState::Live => out.live.push(view::room(d, caller.viewer(), None)),
            RoomState::Scheduled => out.scheduled.push(view::room(d, caller.viewer(), None)),
            _ => archived.push(d),
        }
    }
    out.live
        .sort_by(|a, b| b.present.cmp(&a.present).then_with(|| a.id.cmp(&b.id)));
    out.scheduled.sort_by_key(|r| r.scheduled_for);
    archived.sort_by_key(|d| std::cmp::Reverse(d.room.ended_at));
    out.archived = archived
        .into_iter()
        .take(50)
        .map(|d| view::room(d, caller.viewer(), None))
        .collect();
    Ok(Json(out))
}

#[utoipa::path(post, path = "/api/rooms", request_body = CreateRoomBody,
    responses((status = 201, body = RoomView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn create_room(
    State(c): State<Control>,
    caller: Caller,
    Body(b): Body<CreateRoomBody>,
) -> Result<Response, ControlError> {
    let doc = c
        .create_room(
            &caller.0,
            NewRoom {
                title: b.title,
                topic: b.topic,
                description: b.description,
                kind: b.kind,
                speaker_mode: b.speaker_mode,
                max_participants: b.max_participants,
                scheduled_for: b.scheduled_for,
                host: b.host,
                schedule: b.schedule,
                private: b.private,
                listener_data: b.listener_data,
                recording: b.recording,
                idle: {
                    let d = crate::model::IdleRules::default();
                    crate::model::IdleRules {
                        mute_after: b.idle_mute_after.unwrap_or(d.mute_after),
                        audience_after: b.idle_audience_after.unwrap_or(d.audience_after),
                        show_away: b.show_away,
                    }
                },
            },
        )
        .await?;
    let view = c.view(&doc.room.id, caller.viewer()).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// The room: header, counts, stage, the caller's membership, and for hosts and co-hosts the
/// first raised hands, the first page of the audience and the first bans. Its size does not
/// grow with the room.
#[utoipa::path(get, path = "/api/rooms/{id}", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomView), (status = 404, body = ErrorBody)))]
async fn get_room(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoomView>, ControlError> {
    Ok(Json(c.view(&room_id(&id)?, caller.viewer()).await?))
}

/// Changes the room's title, topic, description, kind (before it goes live), speaker mode,
/// member limit or schedule (before it goes live): host and co-hosts, with the checks of
/// creation. Live participants get the new description as room metadata.
#[utoipa::path(patch, path = "/api/rooms/{id}", params(("id" = String, Path, description = "Room id")), request_body = EditRoomBody,
    responses((status = 200, body = RoomView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn edit_room(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
    Body(b): Body<EditRoomBody>,
) -> Result<Json<RoomView>, ControlError> {
    let id = room_id(&id)?;
    if let Principal::User { id: user, .. } = &caller.0 {
        c.rate_limit(user, "room edit", 1.0, 10.0)?;
    }
    let changes = crate::room::Edit {
        title: b.title,
        topic: b.topic,
        description: b.description,
        kind: b.kind,
        speaker_mode: b.speaker_mode,
        max_participants: b.max_participants,
        scheduled_for: b.scheduled_for,
        schedule: b.schedule,
        listener_data: b.listener_data,
        idle_mute_after: b.idle_mute_after,
        idle_audience_after: b.idle_audience_after,
        show_away: b.show_away,
    };
    c.edit(&caller.actor(), &id, changes).await?;
    Ok(Json(c.view(&id, caller.viewer()).await?))
}

/// The room's line-up: co-hosts and speakers the host gave their role in advance (they are on
/// stage whenever they join, and in the room's next occurrences).
#[utoipa::path(get, path = "/api/rooms/{id}/lineup", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = LineUpView), (status = 404, body = ErrorBody)))]
async fn lineup(
    State(c): State<Control>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<LineUpView>, ControlError> {
    let id = room_id(&id)?;
    let doc = c.room_in(&id, &Scope::header()).await?;
    let entries = c.store().lineup(&id, crate::model::MAX_LINEUP).await?;
    Ok(Json(LineUpView {
        lineup: entries
            .into_iter()
            .map(|(user, role)| LineUpEntry {
                name: doc.name_of(&user).unwrap_or(user.as_str()).to_owned(),
                user,
                role,
            })
            .collect(),
    }))
}

#[utoipa::path(put, path = "/api/rooms/{id}/lineup/{user}", request_body = LineUpBody,
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    responses((status = 200, body = RoomView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn line_up(
    State(c): State<Control>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
    Body(b): Body<LineUpBody>,
) -> Result<Json<RoomView>, ControlError> {
    let user = UserId::parse(&user)?;
    run(&c, &caller, &id, Command::LineUp(user, Some(b.role))).await
}

#[utoipa::path(delete, path = "/api/rooms/{id}/lineup/{user}",
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "User id")),
    responses((status = 200, body = RoomView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn line_up_remove(
    State(c): State<Control>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> Result<Json<RoomView>, ControlError> {
    let user = UserId::parse(&user)?;
    run(&c, &caller, &id, Command::LineUp(user, None)).await
}

/// The audience (members not on stage), a page at a time by user id, for every member.
///
/// Hosts and co-hosts see every member with their presence, hand and mute state; other members
/// of the room see who is connected now (user, name, role, profile), so one of their pages may
/// hold fewer than `limit` while `next` is set. Whoever is not a member (never joined, left,
/// kicked or banned) gets 403 `not_a_member`.
#[utoipa::path(get, path = "/api/rooms/{id}/audience", params(("id" = String, Path, description = "Room id"), AudienceQuery),
    responses((status = 200, body = AudienceView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not a member of the room (`not_a_member`)", body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audience(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
    Params(q): Params<AudienceQuery>,
) -> Result<Json<AudienceView>, ControlError> {
    let id = room_id(&id)?;
    let after = q.after.as_deref().map(UserId::parse).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > crate::service::MAX_AUDIENCE_PAGE {
        return Err(ControlError::bad_request(
            "invalid_field",
            format!("limit must be 1 to {}", crate::service::MAX_AUDIENCE_PAGE),
        ));
    }
    let (page, sight) = c
        .audience(&id, caller.viewer(), after.as_ref(), limit)
        .await?;
    Ok(Json(view::audience(&page, sight)))
}

/// The only room read that needs no token: what an embedded card or a shared link shows before
/// anyone signs in. It mints nothing and creates no user.
#[utoipa::path(get, path = "/api/rooms/{id}/card", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomCardView), (status = 404, body = ErrorBody)))]
async fn room_card(
    State(c): State<Control>,
    Path(id): Path<String>,
) -> Result<Json<RoomCardView>, ControlError> {
    let id = room_id(&id)?;
    let doc = c.room_in(&id, &Scope::header().with_stage()).await?;
    if doc.room.private {
        return Err(ControlError::not_found("room", id.as_str()));
    }
    Ok(Json(view::card(&doc)))
}

async fn run(
    c: &Control,
    caller: &Caller,
    id: &str,
    command: Command,
) -> Result<Json<RoomView>, ControlError> {
    let id = room_id(id)?;
    c.act(&caller.actor(), &id, command).await?;
    Ok(Json(c.view(&id, caller.viewer()).await?))
}

#[utoipa::path(post, path = "/api/rooms/{id}/start", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn start(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoomView>, ControlError> {
    run(&c, &caller, &id, Command::Start).await
}

#[utoipa::path(post, path = "/api/rooms/{id}/end", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn end(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoomView>, ControlError> {
    run(&c, &caller, &id, Command::End).await
}

/// Starts recording the live room (host and co-hosts): its mixed audio is written to the
/// server's recording directory and every participant sees the room as recorded.
#[utoipa::path(post, path = "/api/rooms/{id}/recording", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The room is not live")))]
async fn start_recording(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoomView>, ControlError> {
    run(&c, &caller, &id, Command::Record(true)).await
}

/// Stops recording the room (host and co-hosts); its files are finished.
#[utoipa::path(delete, path = "/api/rooms/{id}/recording", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RoomView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The room is not live")))]
async fn stop_recording(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RoomView>, ControlError> {
    run(&c, &caller, &id, Command::Record(false)).await
}

#[utoipa::path(post, path = "/api/rooms/{id}/token", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = TokenView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "In another room, or the room is not live"), (status = 422, body = ErrorBody, description = "Full")))]
async fn token(
    State(c): State<Control>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ControlError> {
    let (user, name) = caller.user()?;
    let id = room_id(&id)?;
    let grant = c.join(user, name, &id).await?;
    let url = match grant.media_url {
        Some(url) => url,
        None => media_url(&c, &headers),
    };
    Ok(Json(TokenView {
        token: grant.token,
        url,
        room: id.to_string(),
        identity: grant.identity,
        role: grant.role,
    }))
}

/// The URL clients connect media to: configured, or this request's host.
fn media_url(c: &Control, headers: &axum::http::HeaderMap) -> String {
    if !c.config().public_url.is_empty() {
        return c.config().public_url.clone();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("127.0.0.1:7880");
    let tls = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}", if tls { "wss" } else { "ws" })
}

macro_rules! own_action {
    ($name:ident, $method:ident, $path:literal, $action:expr) => {
        #[utoipa::path($method, path = $path, params(("id" = String, Path, description = "Room id")),
            responses((status = 200, body = RoomView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
        async fn $name(State(c): State<Control>, caller: Caller, Path(id): Path<String>) -> Result<Json<RoomView>, ControlError> {
            if $action == Action::RaiseHand {
                c.rate_limit(caller.user()?.0, "hand", 0.5, 3.0)?;
            }
            run(&c, &caller, &id, Command::Own($action)).await
        }
    };
}

own_action!(leave, post, "/api/rooms/{id}/leave", Action::Leave);
own_action!(raise_hand, post, "/api/rooms/{id}/hand", Action::RaiseHand);
own_action!(
    lower_hand,
    delete,
    "/api/rooms/{id}/hand",
    Action::LowerHand
);
own_action!(mute, post, "/api/rooms/{id}/mute", Action::MuteSelf);
own_action!(unmute, post, "/api/rooms/{id}/unmute", Action::UnmuteSelf);
own_action!(
    step_down,
    post,
    "/api/rooms/{id}/step_down",
    Action::StepDown
);

/// `POST /api/rooms/{id}/presence`: the member's own state as their client sees it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceBody {
    /// The page is hidden (away); shown to others only where the room's `show_away` is on.
    pub away: Option<bool>,
    /// The room's sound is off (deafened).
    pub deafened: Option<bool>,
}

/// Away and deafen are the member's own word, sent here rather than set as participant
/// attributes by the client: the media plane's attributes are the server's (role, hand), and
/// a client allowed to write its own attributes could write those too.
#[utoipa::path(post, path = "/api/rooms/{id}/presence", params(("id" = String, Path, description = "Room id")), request_body = PresenceBody,
    responses((status = 200, body = RoomView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn presence(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
    Body(b): Body<PresenceBody>,
) -> Result<Json<RoomView>, ControlError> {
    let (user, _) = caller.user()?;
    c.rate_limit(user, "presence", 2.0, 10.0)?;
    let command = Command::Presence {
        away: b.away,
        deafened: b.deafened,
    };
    run(&c, &caller, &id, command).await
}

#[utoipa::path(post, path = "/api/rooms/{id}/reactions", params(("id" = String, Path, description = "Room id")), request_body = ReactionBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn react(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
    Body(b): Body<ReactionBody>,
) -> Result<StatusCode, ControlError> {
    let (user, _) = caller.user()?;
    let emoji = crate::model::text("emoji", &b.emoji, 1, 8)?;
    c.rate_limit(user, "reaction", 5.0, 10.0)?;
    let _ = run(&c, &caller, &id, Command::React { emoji }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/rooms/{id}/members/{user}/{action}",
    params(("id" = String, Path, description = "Room id"), ("user" = String, Path, description = "Target user"),
        ("action" = Action, Path, description = "approve_hand, deny_hand, invite_to_speak, move_to_audience, force_mute, hard_mute, restore, kick, ban, unban, add_co_host, remove_co_host, transfer_host")),
    responses((status = 200, body = RoomView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn moderate(
    State(c): State<Control>,
    caller: Caller,
    Path((id, user, action)): Path<(String, String, String)>,
) -> Result<Json<RoomView>, ControlError> {
    let action: Action = serde_json::from_value(serde_json::Value::String(action.clone()))
        .ok()
        .filter(|a: &Action| a.has_target())
        .ok_or_else(|| {
            ControlError::bad_request(
                "invalid_action",
                format!("unknown member action {action:?}"),
            )
        })?;
    let target = UserId::parse(&user)?;
    run(&c, &caller, &id, Command::Target(action, target)).await
}

/// A room's statistics. Hosts, co-hosts and servers read them whole; a member reads the
/// room's summary (totals and time on stage, no per-user speaking time), as anyone does once
/// the room has ended (the ended page's summary); anyone else is refused.
#[utoipa::path(get, path = "/api/rooms/{id}/stats", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = StatsView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn room_stats(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<StatsView>, ControlError> {
    let viewer = caller.viewer();
    let doc = c
        .room_in(&room_id(&id)?, &Scope::users(viewer.cloned()).with_stage())
        .await?;
    if !view::may_see(&doc, viewer) {
        return Err(ControlError::not_found("room", doc.room.id.as_str()));
    }
    let ended = matches!(doc.room.state, RoomState::Ended | RoomState::Archived);
    match view::sight(&doc, viewer) {
        view::Sight::Moderator => Ok(Json(view::stats(&doc, now_ms()))),
        view::Sight::Member => Ok(Json(view::stats_summary(&doc, now_ms()))),
        view::Sight::Outsider if ended => Ok(Json(view::stats_summary(&doc, now_ms()))),
        view::Sight::Outsider => Err(ControlError::forbidden(
            "not_allowed",
            "only the room's members see its statistics while it runs",
        )),
    }
}

/// `GET /api/rooms/{id}/audit`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Moderation and lifecycle actions, oldest first (the newest 200).
    pub entries: Vec<crate::store::AuditEntry>,
}

/// A room's audit log: who did what to whom, when. The host and servers only.
#[utoipa::path(get, path = "/api/rooms/{id}/audit", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = AuditView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit_log(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AuditView>, ControlError> {
    let entries = c.audit(&room_id(&id)?, caller.viewer()).await?;
    Ok(Json(AuditView { entries }))
}

/// A host's totals: the host and servers only.
#[utoipa::path(get, path = "/api/users/{id}/stats", params(("id" = String, Path, description = "Host user id")),
    responses((status = 200, body = HostStatsView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn host_stats(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<HostStatsView>, ControlError> {
    let host = UserId::parse(&id)?;
    if caller.viewer().is_some_and(|v| *v != host) {
        return Err(ControlError::forbidden(
            "not_allowed",
            "a host's statistics are for that host only",
        ));
    }
    let docs = c
        .rooms(&[
            RoomState::Scheduled,
            RoomState::Live,
            RoomState::Ended,
            RoomState::Archived,
        ])
        .await?;
    Ok(Json(view::host_stats(&host, &docs, now_ms())))
}

/// A JSON body that may be left out (then `T::default()`).
#[derive(Debug)]
pub struct OptionalBody<T>(pub T);

impl<T: serde::de::DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = ControlError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
            || (!req
                .headers()
                .contains_key(axum::http::header::CONTENT_LENGTH)
                && !req
                    .headers()
                    .contains_key(axum::http::header::TRANSFER_ENCODING));
        if empty {
            return Ok(OptionalBody(T::default()));
        }
        Body::<T>::from_request(req, state)
            .await
            .map(|Body(t)| OptionalBody(t))
    }
}

/// Longest profile bio (characters).
pub const MAX_BIO: usize = 160;
/// Longest avatar data URL (bytes): a small picture, e.g. 128×128 JPEG.
pub const MAX_AVATAR: usize = 12_000;

/// A user's profile as anyone signed in sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProfileView {
    /// The user id.
    pub user: UserId,
    /// A short bio ("" when none).
    pub bio: String,
    /// A small picture as a `data:image/...;base64,` URL.
    pub avatar: Option<String>,
}

/// `PUT /api/me/profile`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    /// Up to 160 characters.
    #[serde(default)]
    pub bio: String,
    /// A PNG, JPEG or WebP picture as a base64 `data:` URL of at most 12,000 bytes; absent or
    /// null removes it.
    pub avatar: Option<String>,
}

/// Checks an avatar: a base64 `data:` URL of a PNG, JPEG or WebP picture, small.
fn avatar(url: &str) -> Result<String, ControlError> {
    let bad = |why: &str| ControlError::bad_request("invalid_field", format!("avatar {why}"));
    if url.len() > MAX_AVATAR {
        return Err(bad(&format!(
            "must be at most {MAX_AVATAR} bytes (got {}); send a smaller picture",
            url.len()
        )));
    }
    let data = ["png", "jpeg", "webp"]
        .iter()
        .find_map(|t| url.strip_prefix(&format!("data:image/{t};base64,")))
        .ok_or_else(|| bad("must be a data:image/png, jpeg or webp URL in base64"))?;
    let base64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if data.is_empty() || !data.bytes().all(base64) {
        return Err(bad("is not valid base64"));
    }
    Ok(url.to_owned())
}

#[utoipa::path(get, path = "/api/users/{id}/profile", params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = ProfileView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn profile(
    State(c): State<Control>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProfileView>, ControlError> {
    let user = UserId::parse(&id)?;
    let p = c.store().profile(&user).await?.unwrap_or_default();
    Ok(Json(ProfileView {
        user,
        bio: p.bio,
        avatar: p.avatar,
    }))
}

#[utoipa::path(put, path = "/api/me/profile", request_body = ProfileBody,
    responses((status = 200, body = ProfileView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn set_profile(
    State(c): State<Control>,
    caller: Caller,
    Body(b): Body<ProfileBody>,
) -> Result<Json<ProfileView>, ControlError> {
    let (user, _) = caller.user()?;
    let profile = Profile {
        bio: crate::model::text("bio", &b.bio, 0, MAX_BIO)?,
        avatar: b.avatar.as_deref().map(avatar).transpose()?,
    };
    c.rate_limit(user, "profile", 0.2, 5.0)?;
    c.store().set_profile(user, &profile).await?;
    Ok(Json(ProfileView {
        user: user.clone(),
        bio: profile.bio,
        avatar: profile.avatar,
    }))
}

#[utoipa::path(get, path = "/api/follows", responses((status = 200, body = FollowsView)))]
async fn follows(
    State(c): State<Control>,
    caller: Caller,
) -> Result<Json<FollowsView>, ControlError> {
    let (user, _) = caller.user()?;
    Ok(Json(FollowsView {
        follows: c.store().follows(user).await?,
    }))
}

fn follow_target(kind: &str, id: &str) -> Result<Follow, ControlError> {
    match kind {
        "users" => Ok(Follow::User(UserId::parse(id)?)),
        "rooms" => Ok(Follow::Room(room_id(id)?)),
        _ => Err(ControlError::not_found("follow kind", kind)),
    }
}

#[utoipa::path(put, path = "/api/follows/{kind}/{id}",
    params(("kind" = String, Path, description = "users or rooms"), ("id" = String, Path, description = "User or room id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn follow(
    State(c): State<Control>,
    caller: Caller,
    Path((kind, id)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    let (user, _) = caller.user()?;
    c.follow(user, &follow_target(&kind, &id)?, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/follows/{kind}/{id}",
    params(("kind" = String, Path, description = "users or rooms"), ("id" = String, Path, description = "User or room id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn unfollow(
    State(c): State<Control>,
    caller: Caller,
    Path((kind, id)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    let (user, _) = caller.user()?;
    c.follow(user, &follow_target(&kind, &id)?, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/me/notifications` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NotificationsQuery {
    /// Only entries after this one in the feed (the previous page's `next`).
    pub after: Option<String>,
    /// Entries per page, 1 to 100 (default 20).
    pub limit: Option<usize>,
}

/// A feed entry with its read mark.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    /// The entry.
    #[serde(flatten)]
    pub notification: crate::notify::Notification,
    /// Read (made at or before the feed's read mark).
    pub read: bool,
}

/// `GET /api/me/notifications`: a page of the caller's feed, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationsView {
    /// Entries.
    pub notifications: Vec<NotificationView>,
    /// Unread entries in the whole feed.
    pub unread: usize,
    /// `after` of the next page, if any.
    pub next: Option<String>,
}

/// `POST /api/me/notifications/read`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// Marks entries made up to this unix ms read; absent: everything so far.
    pub until: Option<u64>,
}

#[utoipa::path(get, path = "/api/me/notifications", params(NotificationsQuery),
    responses((status = 200, body = NotificationsView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn notifications(
    State(c): State<Control>,
    caller: Caller,
    Params(q): Params<NotificationsQuery>,
) -> Result<Json<NotificationsView>, ControlError> {
    let (user, _) = caller.user()?;
    let limit = q.limit.unwrap_or(20);
    if limit == 0 || limit > 100 {
        return Err(ControlError::bad_request(
            "invalid_field",
            "limit must be 1 to 100",
        ));
    }
    let (feed, read_until) = c.notifications(user).await?;
    let unread = feed.iter().filter(|n| n.at > read_until).count();
    let start = match &q.after {
        // An entry gone from the feed (the oldest are dropped) ends the listing.
        Some(after) => feed
            .iter()
            .position(|n| n.id == *after)
            .map_or(feed.len(), |i| i + 1),
        None => 0,
    };
    let mut page: Vec<NotificationView> = feed
        .into_iter()
        .skip(start)
        .take(limit + 1)
        .map(|n| NotificationView {
            read: n.at <= read_until,
            notification: n,
        })
        .collect();
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|n| n.notification.id.clone())
    } else {
        None
    };
    Ok(Json(NotificationsView {
        notifications: page,
        unread,
        next,
    }))
}

#[utoipa::path(post, path = "/api/me/notifications/read", request_body = ReadBody,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn read_notifications(
    State(c): State<Control>,
    caller: Caller,
    Body(b): Body<ReadBody>,
) -> Result<StatusCode, ControlError> {
    let (user, _) = caller.user()?;
    let until = match b.until {
        Some(t) => t,
        None => c.notifications(user).await?.0.first().map_or(0, |n| n.at),
    };
    c.mark_read(user, until).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The OpenAPI document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Stoa control API",
        description = "Live audio rooms: rooms, roles, hands, moderation, follows, invitations, analytics. Authenticate with `Authorization: Bearer <user or server token>`; needing no token: `GET /api/rooms/{id}/card` (a room's public card) and, for a public room, its replays and clips (`GET /api/rooms/{id}/recordings`, `/recordings/{recording}/audio`, `/clips`, `GET /api/clips/{clip}` and `/audio`; a private room's need a user who may see it, else 404)."
    ),
    paths(
        openapi,
        guest,
        me,
        directory,
        create_room,
        get_room,
        edit_room,
        lineup,
        line_up,
        line_up_remove,
        audience,
        room_card,
        start,
        end,
        start_recording,
        stop_recording,
        replay::list_recordings,
        replay::recording_audio,
        replay::create_clip,
        replay::list_clips,
        replay::get_clip,
        replay::clip_audio,
        token,
        leave,
        raise_hand,
        lower_hand,
        mute,
        unmute,
        step_down,
        presence,
        react,
        moderate,
        room_stats,
        audit_log,
        host_stats,
        invitations::create_invitation,
        invitations::list_invitations,
        invitations::revoke_invitation,
        invitations::get_invitation,
        invitations::accept_invitation,
        follows,
        follow,
        unfollow,
        profile,
        set_profile,
        notifications,
        read_notifications,
        stream::events,
        nodes::list_nodes,
        nodes::drain_node,
        nodes::undrain_node
    ),
    components(schemas(
        ErrorBody,
        RoomView,
        AudienceView,
        RoomCardView,
        StatsView,
        HostStatsView,
        AuditView,
        Event,
        Follow,
        NotificationsView,
        crate::notify::Notification,
        RecordingsView,
        ClipView,
        ClipsView
    ))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatars_are_small_base64_pictures() {
        let ok = "data:image/jpeg;base64,/9j/4AAQSkZJRg==";
        assert_eq!(avatar(ok).unwrap(), ok);
        for bad in [
            "",
            "https://example.com/a.png",
            "data:image/svg+xml;base64,PHN2Zz4=",
            "data:image/png;base64,",
            "data:image/png;base64,<script>",
            "data:image/png,rawbytes",
        ] {
            assert_eq!(avatar(bad).unwrap_err().code, "invalid_field", "{bad}");
        }
        let huge = format!("data:image/png;base64,{}", "A".repeat(MAX_AVATAR));
        assert!(avatar(&huge).unwrap_err().message.contains("at most"));
    }
}
