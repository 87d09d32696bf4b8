//! Invitation links: a room's moderators make, list and revoke them; whoever holds one sees
//! the room it opens (even a private one) and accepts it.

use super::*;

/// The invitation routes.
pub(super) fn routes() -> Router<Control> {
    Router::new()
        .route(
            "/api/rooms/{id}/invitations",
            post(create_invitation).get(list_invitations),
        )
        .route(
            "/api/rooms/{id}/invitations/{token}",
            axum::routing::delete(revoke_invitation),
        )
        .route("/api/invitations/{token}", get(get_invitation))
        .route("/api/invitations/{token}/accept", post(accept_invitation))
}

/// An invitation link.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationView {
    /// The opaque token.
    pub token: String,
    /// The room.
    pub room: RoomView,
    /// Unix ms after which it no longer works.
    pub expires_at: u64,
    /// Stage rooms ask the invitee to confirm before joining.
    pub requires_confirmation: bool,
    /// The role it gives: `listener`, `speaker` or `co_host`.
    pub role: crate::model::Role,
    /// How many may accept it (absent: any number).
    pub max_uses: Option<u32>,
    /// How many did.
    pub uses: u32,
}

/// `POST /api/rooms/{id}/invitations` (the body is optional: a multi-use listener link that
/// lasts `invite_ttl`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationBody {
    /// `listener` (default: may raise a hand in an "invited" room), `speaker` or `co_host`
    /// (lined up: on stage whenever they join).
    pub role: Option<crate::model::Role>,
    /// How many may accept it: 1 for a single-use link; absent for any number.
    pub max_uses: Option<u32>,
    /// Seconds it lasts: 60 up to the server's `invite_ttl` (its default).
    pub expires_in: Option<u64>,
}

/// One invitation of a room, as its moderators list it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationEntry {
    /// The opaque token (the link is `/invite/{token}`).
    pub token: String,
    /// The role it gives.
    pub role: crate::model::Role,
    /// How many may accept it (absent: any number).
    pub max_uses: Option<u32>,
    /// How many did.
    pub uses: u32,
    /// Unix ms it was made.
    pub created_at: u64,
    /// Unix ms after which it no longer works.
    pub expires_at: u64,
    /// Who made it.
    pub created_by: UserId,
    /// Revoked.
    pub revoked: bool,
    /// Still accepted now (not revoked, expired or used up).
    pub usable: bool,
}

/// A room's invitations, newest first (at most 100).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvitationsView {
    /// The invitations.
    pub invitations: Vec<InvitationEntry>,
}

#[utoipa::path(post, path = "/api/rooms/{id}/invitations", params(("id" = String, Path, description = "Room id")), request_body(content = InvitationBody, description = "Optional: a multi-use listener link by default"),
    responses((status = 201, body = InvitationView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_invitation(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
    OptionalBody(b): OptionalBody<InvitationBody>,
) -> Result<Response, ControlError> {
    let (user, _) = caller.user()?;
    let id = room_id(&id)?;
    c.rate_limit(user, "invitation", 0.5, 10.0)?;
    let new = crate::service::NewInvite {
        role: b.role.unwrap_or(crate::model::Role::Listener),
        max_uses: b.max_uses,
        expires_in: b.expires_in,
    };
    let (token, invite) = c.invite(user, &id, new).await?;
    let room = c.view(&id, caller.viewer()).await?;
    Ok((
        StatusCode::CREATED,
        Json(invitation_view(token, &invite, room)),
    )
        .into_response())
}

fn invitation_view(token: String, invite: &crate::store::Invite, room: RoomView) -> InvitationView {
    InvitationView {
        token,
        requires_confirmation: room.kind == RoomKind::Stage,
        room,
        expires_at: invite.expires_at,
        role: invite.role,
        max_uses: invite.max_uses,
        uses: invite.uses,
    }
}

#[utoipa::path(get, path = "/api/rooms/{id}/invitations", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = InvitationsView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_invitations(
    State(c): State<Control>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<InvitationsView>, ControlError> {
    let (user, _) = caller.user()?;
    let id = room_id(&id)?;
    let now = now_ms();
    let invitations = c
        .invitations(user, &id)
        .await?
        .into_iter()
        .map(|(token, i)| InvitationEntry {
            usable: !i.revoked && i.expires_at > now && i.max_uses.is_none_or(|m| i.uses < m),
            token,
            role: i.role,
            max_uses: i.max_uses,
            uses: i.uses,
            created_at: i.created_at,
            expires_at: i.expires_at,
            created_by: i.created_by,
            revoked: i.revoked,
        })
        .collect();
    Ok(Json(InvitationsView { invitations }))
}

#[utoipa::path(delete, path = "/api/rooms/{id}/invitations/{token}", params(("id" = String, Path, description = "Room id"), ("token" = String, Path, description = "Invitation token")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke_invitation(
    State(c): State<Control>,
    caller: Caller,
    Path((id, token)): Path<(String, String)>,
) -> Result<StatusCode, ControlError> {
    let (user, _) = caller.user()?;
    let id = room_id(&id)?;
    c.revoke(user, &id, &token).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/invitations/{token}", params(("token" = String, Path, description = "Invitation token")),
    responses((status = 200, body = InvitationView), (status = 404, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(super) async fn get_invitation(
    State(c): State<Control>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<InvitationView>, ControlError> {
    let invite = c.invitation(&token, now_ms()).await?;
    let room = c.invited_view(&invite.room, caller.viewer()).await?;
    Ok(Json(invitation_view(token, &invite, room)))
}

#[utoipa::path(post, path = "/api/invitations/{token}/accept", params(("token" = String, Path, description = "Invitation token")),
    responses((status = 200, body = RoomView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub(super) async fn accept_invitation(
    State(c): State<Control>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<Json<RoomView>, ControlError> {
    let (user, _) = caller.user()?;
    let doc = c.accept(user, &token, now_ms()).await?;
    Ok(Json(c.view(&doc.room.id, caller.viewer()).await?))
}
