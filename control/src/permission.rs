//! The permission matrix: which role may take which action in which kind of room.
//!
//! One function, [`allowed`], decides for every action; [`may_target`] adds the rules about
//! whom a moderation action may touch. Both are pure and tested exhaustively, and every command
//! passes through them before it changes a room ([`crate::room`]).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{Role, RoomKind};

/// Everything a user can do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Join (or rejoin) and get a media token.
    Join,
    /// Leave.
    Leave,
    /// Raise a hand to speak.
    RaiseHand,
    /// Lower one's own hand.
    LowerHand,
    /// Send a reaction.
    React,
    /// Mute oneself.
    MuteSelf,
    /// Unmute oneself.
    UnmuteSelf,
    /// Leave the stage for the audience.
    StepDown,
    /// Bring a raised hand on stage.
    ApproveHand,
    /// Lower someone's raised hand.
    DenyHand,
    /// Bring a listener on stage without a raised hand (and let them raise hands in
    /// "invited" rooms).
    InviteToSpeak,
    /// Move a speaker back to the audience.
    MoveToAudience,
    /// Mute someone (they may unmute themselves).
    ForceMute,
    /// Revoke someone's publishing until restored.
    HardMute,
    /// Restore publishing after a hard mute.
    Restore,
    /// Remove someone; they may not rejoin for the cooldown.
    Kick,
    /// Remove someone for good.
    Ban,
    /// Lift a ban.
    Unban,
    /// Take a scheduled room live.
    Start,
    /// End the room for everyone.
    End,
    /// Make a member co-host.
    AddCoHost,
    /// Make a co-host a speaker again.
    RemoveCoHost,
    /// Hand the host role to another member.
    TransferHost,
    /// Change the room's title, description, limits or schedule.
    Edit,
    /// Give someone a role in advance (the line-up of co-hosts and speakers).
    LineUp,
}

impl Action {
    /// Every action, for exhaustive tests.
    pub const ALL: [Action; 25] = [
        Action::Join,
        Action::Leave,
        Action::RaiseHand,
        Action::LowerHand,
        Action::React,
        Action::MuteSelf,
        Action::UnmuteSelf,
        Action::StepDown,
        Action::ApproveHand,
        Action::DenyHand,
        Action::InviteToSpeak,
        Action::MoveToAudience,
        Action::ForceMute,
        Action::HardMute,
        Action::Restore,
        Action::Kick,
        Action::Ban,
        Action::Unban,
        Action::Start,
        Action::End,
        Action::AddCoHost,
        Action::RemoveCoHost,
        Action::TransferHost,
        Action::Edit,
        Action::LineUp,
    ];

    /// Whether the action names another member as its target.
    pub fn has_target(self) -> bool {
        matches!(
            self,
            Action::ApproveHand
                | Action::DenyHand
                | Action::InviteToSpeak
                | Action::MoveToAudience
                | Action::ForceMute
                | Action::HardMute
                | Action::Restore
                | Action::Kick
                | Action::Ban
                | Action::Unban
                | Action::AddCoHost
                | Action::RemoveCoHost
                | Action::TransferHost
        )
    }

    /// The action's name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Join => "join",
            Action::Leave => "leave",
            Action::RaiseHand => "raise_hand",
            Action::LowerHand => "lower_hand",
            Action::React => "react",
            Action::MuteSelf => "mute_self",
            Action::UnmuteSelf => "unmute_self",
            Action::StepDown => "step_down",
            Action::ApproveHand => "approve_hand",
            Action::DenyHand => "deny_hand",
            Action::InviteToSpeak => "invite_to_speak",
            Action::MoveToAudience => "move_to_audience",
            Action::ForceMute => "force_mute",
            Action::HardMute => "hard_mute",
            Action::Restore => "restore",
            Action::Kick => "kick",
            Action::Ban => "ban",
            Action::Unban => "unban",
            Action::Start => "start",
            Action::End => "end",
            Action::AddCoHost => "add_co_host",
            Action::RemoveCoHost => "remove_co_host",
            Action::TransferHost => "transfer_host",
            Action::Edit => "edit",
            Action::LineUp => "line_up",
        }
    }
}

/// Whether `role` may take `action` in a room of `kind`. Speaker-mode rules for hands and the
/// room's state are checked by the command itself.
pub fn allowed(action: Action, role: Role, kind: RoomKind) -> bool {
    use Action as A;
    use Role as R;
    let stage = kind == RoomKind::Stage;
    match action {
        A::Join | A::Leave | A::React => true,
        // Hands exist only where the audience does not speak already.
        A::RaiseHand | A::LowerHand => stage && role == R::Listener,
        // In open rooms everyone is a speaker.
        A::MuteSelf | A::UnmuteSelf => role.on_stage() || !stage,
        A::StepDown => stage && matches!(role, R::Speaker | R::CoHost),
        A::ApproveHand | A::DenyHand | A::InviteToSpeak | A::MoveToAudience => {
            stage && role.moderates()
        }
        A::ForceMute | A::HardMute | A::Restore | A::Kick | A::Ban | A::Unban => role.moderates(),
        A::Edit => role.moderates(),
        A::Start | A::End | A::AddCoHost | A::RemoveCoHost | A::TransferHost | A::LineUp => {
            role == R::Host
        }
    }
}

/// Whether an actor in `actor` role may aim a targeted action at a member in `target` role.
/// Nobody targets themselves (`same_user`); co-hosts cannot touch the host or other co-hosts;
/// `target` is `None` for users who are not members (bans and unbans of absent users).
pub fn may_target(action: Action, actor: Role, target: Option<Role>, same_user: bool) -> bool {
    if !action.has_target() || same_user {
        return false;
    }
    let Some(target) = target else {
        // Only bans and unbans reach users outside the room.
        return matches!(action, Action::Ban | Action::Unban);
    };
    match actor {
        Role::Host => true,
        Role::CoHost => !target.moderates(),
        Role::Speaker | Role::Listener => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The matrix as the product defines it: for each action, the roles allowed in stage
    /// rooms and in open rooms (H = host, C = co-host, S = speaker, L = listener).
    const MATRIX: &[(Action, &str, &str)] = &[
        (Action::Join, "HCSL", "HCSL"),
        (Action::Leave, "HCSL", "HCSL"),
        (Action::RaiseHand, "L", ""),
        (Action::LowerHand, "L", ""),
        (Action::React, "HCSL", "HCSL"),
        (Action::MuteSelf, "HCS", "HCSL"),
        (Action::UnmuteSelf, "HCS", "HCSL"),
        (Action::StepDown, "CS", ""),
        (Action::ApproveHand, "HC", ""),
        (Action::DenyHand, "HC", ""),
        (Action::InviteToSpeak, "HC", ""),
        (Action::MoveToAudience, "HC", ""),
        (Action::ForceMute, "HC", "HC"),
        (Action::HardMute, "HC", "HC"),
        (Action::Restore, "HC", "HC"),
        (Action::Kick, "HC", "HC"),
        (Action::Ban, "HC", "HC"),
        (Action::Unban, "HC", "HC"),
        (Action::Start, "H", "H"),
        (Action::End, "H", "H"),
        (Action::AddCoHost, "H", "H"),
        (Action::RemoveCoHost, "H", "H"),
        (Action::TransferHost, "H", "H"),
        (Action::Edit, "HC", "HC"),
        (Action::LineUp, "H", "H"),
    ];

    fn letter(role: Role) -> char {
        match role {
            Role::Host => 'H',
            Role::CoHost => 'C',
            Role::Speaker => 'S',
            Role::Listener => 'L',
        }
    }

    #[test]
    fn every_action_role_and_room_kind() {
        assert_eq!(MATRIX.len(), Action::ALL.len());
        let mut checked = 0;
        for action in Action::ALL {
            let &(_, stage, open) = MATRIX
                .iter()
                .find(|(a, _, _)| *a == action)
                .unwrap_or_else(|| panic!("{action:?} missing from the matrix"));
            for (kind, roles) in [(RoomKind::Stage, stage), (RoomKind::Open, open)] {
                for role in Role::ALL {
                    let expected = roles.contains(letter(role));
                    assert_eq!(
                        allowed(action, role, kind),
                        expected,
                        "{action:?} by {role:?} in a {kind:?} room"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 25 * 2 * 4);
    }

    #[test]
    fn targets() {
        let targeted: Vec<Action> = Action::ALL.into_iter().filter(|a| a.has_target()).collect();
        for action in targeted {
            for actor in Role::ALL {
                for target in Role::ALL {
                    let expected = match actor {
                        Role::Host => true,
                        Role::CoHost => matches!(target, Role::Speaker | Role::Listener),
                        _ => false,
                    };
                    assert_eq!(
                        may_target(action, actor, Some(target), false),
                        expected,
                        "{action:?} by {actor:?} on {target:?}"
                    );
                    assert!(!may_target(action, actor, Some(target), true), "self");
                }
                let outsider = matches!(action, Action::Ban | Action::Unban);
                assert_eq!(may_target(action, actor, None, false), outsider);
            }
        }
        assert!(!may_target(
            Action::React,
            Role::Host,
            Some(Role::Listener),
            false
        ));
    }
}
