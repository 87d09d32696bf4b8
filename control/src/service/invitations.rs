//! Invitation links: made, listed and revoked by a room's host and co-hosts, accepted by
//! anyone signed in (a role in the room's line-up, or permission to raise a hand).

use crate::clock::now_ms;
use crate::error::ControlError;
use crate::model::{self, RoomDoc, RoomId, RoomState, Scope, UserId};
use crate::room::{Actor, Command, Effects};
use crate::store::Invite;

use super::Control;

/// Most people one invitation link may admit.
pub const MAX_INVITE_USES: u32 = 10_000;
/// Invitations a room's list shows (the newest).
pub const INVITES_SHOWN: usize = 100;

/// What an invitation link gives and how long and often it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInvite {
    /// Listener (may raise a hand in an "invited" room), speaker or co-host (lined up).
    pub role: model::Role,
    /// How many may accept it (`None`: any number).
    pub max_uses: Option<u32>,
    /// Seconds it lasts (`None`: the configured `invite_ttl`).
    pub expires_in: Option<u64>,
}

impl Default for NewInvite {
    fn default() -> Self {
        NewInvite {
            role: model::Role::Listener,
            max_uses: None,
            expires_in: None,
        }
    }
}

/// The refusal of an invitation link that has been used as often as it may be.
fn used_up() -> ControlError {
    ControlError::new(
        410,
        "invitation_used_up",
        "this invitation link has been used as often as it may be",
    )
}

impl Control {
    /// Room `id` as its host or a co-host `who` sees it, for managing invitations; 403 for
    /// anyone else.
    async fn moderated(&self, who: &UserId, id: &RoomId) -> Result<RoomDoc, ControlError> {
        let doc = self.room_in(id, &Scope::users([who.clone()])).await?;
        let moderator =
            doc.members.get(who).is_some_and(|m| m.role.moderates()) || doc.room.host == *who;
        if !moderator {
            return Err(ControlError::forbidden(
                "not_allowed",
                "only the host or a co-host may manage invitations",
            ));
        }
        Ok(doc)
    }

    /// Makes an invitation link for room `id` (host or co-host): the role it gives, how many
    /// may accept it, and how long it lasts (seconds, at most `invite_ttl`).
    pub async fn invite(
        &self,
        who: &UserId,
        id: &RoomId,
        new: NewInvite,
    ) -> Result<(String, Invite), ControlError> {
        let doc = self.moderated(who, id).await?;
        if matches!(doc.room.state, RoomState::Ended | RoomState::Archived) {
            return Err(ControlError::conflict("room_ended", "the room has ended"));
        }
        if new.role == model::Role::Host {
            return Err(ControlError::bad_request(
                "invalid_role",
                "an invitation gives the role listener, speaker or co_host",
            ));
        }
        if new.max_uses.is_some_and(|m| m == 0 || m > MAX_INVITE_USES) {
            return Err(ControlError::bad_request(
                "invalid_field",
                format!("max_uses is 1 to {MAX_INVITE_USES}, or absent for any number"),
            ));
        }
        let longest = self.inner.config.invite_ttl;
        let ttl = new.expires_in.unwrap_or(longest);
        if !(60..=longest).contains(&ttl) {
            return Err(ControlError::bad_request(
                "invalid_field",
                format!("expires_in is 60 to {longest} seconds"),
            ));
        }
        let mut bytes = [0u8; 20];
        getrandom::fill(&mut bytes)
            .map_err(|_| ControlError::unavailable("no randomness for an invitation"))?;
        let token = model::base32(&bytes);
        let now = now_ms();
        let invite = Invite {
            room: id.clone(),
            created_by: who.clone(),
            expires_at: now + ttl * 1000,
            role: new.role,
            max_uses: new.max_uses,
            uses: 0,
            revoked: false,
            created_at: now,
        };
        self.inner.store.put_invite(&token, &invite).await?;
        Ok((token, invite))
    }

    /// The invitations of room `id`, newest first (host and co-hosts).
    pub async fn invitations(
        &self,
        who: &UserId,
        id: &RoomId,
    ) -> Result<Vec<(String, Invite)>, ControlError> {
        self.moderated(who, id).await?;
        self.inner.store.room_invites(id, INVITES_SHOWN).await
    }

    /// Revokes invitation `token` of room `id` (host and co-hosts): nobody may accept it
    /// any more; who did keeps what it gave.
    pub async fn revoke(&self, who: &UserId, id: &RoomId, token: &str) -> Result<(), ControlError> {
        self.moderated(who, id).await?;
        let mut invite = match self.stored_invite(token).await? {
            Some(i) if i.room == *id => i,
            _ => return Err(ControlError::not_found("invitation", token)),
        };
        if !invite.revoked {
            invite.revoked = true;
            self.inner.store.put_invite(token, &invite).await?;
        }
        Ok(())
    }

    async fn stored_invite(&self, token: &str) -> Result<Option<Invite>, ControlError> {
        let valid = token.len() == 32 && token.bytes().all(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Ok(None);
        }
        self.inner.store.invite(token).await
    }

    /// Looks up an invitation that may still be accepted (at `now`): 404 if unknown, 410 if
    /// revoked, expired or used up, each with its own code.
    pub async fn invitation(&self, token: &str, now: u64) -> Result<Invite, ControlError> {
        let invite = self.invitation_in_time(token, now).await?;
        if invite.max_uses.is_some_and(|m| invite.uses >= m) {
            return Err(used_up());
        }
        Ok(invite)
    }

    /// An invitation neither revoked nor expired at `now` (it may be used up).
    async fn invitation_in_time(&self, token: &str, now: u64) -> Result<Invite, ControlError> {
        let Some(invite) = self.stored_invite(token).await? else {
            return Err(ControlError::not_found("invitation", token));
        };
        if invite.revoked {
            return Err(ControlError::new(
                410,
                "invitation_revoked",
                "this invitation link was revoked by a host",
            ));
        }
        if invite.expires_at <= now {
            return Err(ControlError::new(
                410,
                "invitation_expired",
                "this invitation link has expired",
            ));
        }
        Ok(invite)
    }

    /// Accepts an invitation (at `now`): a listener link lets the user raise a hand in an
    /// "invited" room; a speaker or co-host link lines them up with that role, so that they
    /// are on stage whenever they join (at once if they are in the room). Accepting again
    /// what one already has uses nothing up.
    pub async fn accept(
        &self,
        user: &UserId,
        token: &str,
        now: u64,
    ) -> Result<RoomDoc, ControlError> {
        let invite = self.invitation_in_time(token, now).await?;
        let id = &invite.room;
        let doc = self.room_in(id, &Scope::users([user.clone()])).await?;
        if matches!(doc.room.state, RoomState::Ended | RoomState::Archived) {
            return Err(ControlError::conflict("room_ended", "the room has ended"));
        }
        let has = |r: model::Role| doc.lineup.get(user) == Some(&r);
        let already = doc.room.host == *user
            || match invite.role {
                model::Role::Listener => doc.invited.contains(user),
                model::Role::Speaker => has(model::Role::Speaker) || has(model::Role::CoHost),
                _ => has(model::Role::CoHost),
            };
        if already {
            return Ok(doc);
        }
        if !self.inner.store.use_invite(token, invite.max_uses).await? {
            return Err(used_up());
        }
        let who = user.clone();
        self.inner
            .store
            .update_room(id, &Scope::users([who.clone()]), &mut |doc| {
                doc.invited.insert(who.clone());
                Ok(Effects::default())
            })
            .await?;
        if invite.role.on_stage() {
            let line_up = Command::LineUp(user.clone(), Some(invite.role));
            return self.act_at(&Actor::System, id, line_up, now).await;
        }
        self.room_in(id, &Scope::users([user.clone()])).await
    }
}
