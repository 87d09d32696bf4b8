//! The room state machine, driven with simulated time.

use super::*;
use crate::model::{Room, RoomId};

const MINUTE: u64 = 60_000;

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn doc(kind: RoomKind, mode: SpeakerMode) -> RoomDoc {
    RoomDoc::new(Room {
        id: RoomId::parse("aaaaaaaaaaaaaaaa").unwrap(),
        title: "t".into(),
        topic: String::new(),
        description: String::new(),
        kind,
        speaker_mode: mode,
        max_participants: 4,
        host: uid("host"),
        created_by: uid("host"),
        state: RoomState::Scheduled,
        created_at: 0,
        scheduled_for: None,
        started_at: None,
        ended_at: None,
        empty_since: None,
        media_url: None,
        schedule: Default::default(),
        reminded: false,
        series: None,
        private: false,
        listener_data: false,
        record_from_start: false,
        recording: false,
        idle: Default::default(),
    })
}

fn cx(now: u64) -> Context {
    Context {
        now,
        follows_host: false,
        kick_cooldown_ms: 5 * MINUTE,
        open_window_ms: 15 * MINUTE,
        seat_grace_ms: MINUTE,
    }
}

fn as_user(s: &str) -> Actor {
    Actor::User(uid(s))
}

fn run(d: &mut RoomDoc, who: &str, c: Command, now: u64) -> Result<Effects, ControlError> {
    apply(d, &as_user(who), c, &cx(now))
}

fn join(d: &mut RoomDoc, who: &str, now: u64) -> Result<Effects, ControlError> {
    run(d, who, Command::Join { name: who.into() }, now)
}

fn live_stage() -> RoomDoc {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    run(&mut d, "host", Command::Start, 0).unwrap();
    join(&mut d, "host", 0).unwrap();
    join(&mut d, "ann", 1).unwrap();
    d
}

#[test]
fn start_creates_the_media_room_and_only_the_host_may() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    assert_eq!(join(&mut d, "ann", 0).unwrap_err().code, "room_not_live");
    assert_eq!(
        run(&mut d, "ann", Command::Start, 0).unwrap_err().code,
        "not_allowed"
    );
    let fx = run(&mut d, "host", Command::Start, 5).unwrap();
    assert_eq!(d.room.state, RoomState::Live);
    assert!(matches!(fx.media[0], MediaCommand::CreateRoom { .. }));
    assert!(matches!(fx.events[0], Event::RoomLive { .. }));
}

#[test]
fn hand_raise_approve_and_move_back_reach_the_media_plane() {
    let mut d = live_stage();
    assert_eq!(d.members[&uid("ann")].role, Role::Listener);
    let fx = run(&mut d, "ann", Command::Own(Action::RaiseHand), 2).unwrap();
    let raised = participant_view(&d, &uid("ann")).unwrap();
    assert!(!raised.0);
    assert_eq!(raised.2["hand"], "raised");
    assert!(fx.media.iter().any(|m| matches!(
        m,
        MediaCommand::Update {
            can_publish: false,
            ..
        }
    )));

    let fx = run(
        &mut d,
        "host",
        Command::Target(Action::ApproveHand, uid("ann")),
        3,
    )
    .unwrap();
    assert_eq!(d.members[&uid("ann")].role, Role::Speaker);
    assert!(d.hands.is_empty());
    let update = fx
        .media
        .iter()
        .find_map(|m| match m {
            MediaCommand::Update {
                can_publish,
                attributes,
                ..
            } => Some((*can_publish, attributes.clone())),
            _ => None,
        })
        .unwrap();
    assert!(update.0);
    assert_eq!(update.1["role"], "speaker");
    assert_eq!(update.1["hand"], "");

    run(
        &mut d,
        "host",
        Command::Target(Action::MoveToAudience, uid("ann")),
        10_003,
    )
    .unwrap();
    assert_eq!(d.members[&uid("ann")].role, Role::Listener);
    assert_eq!(d.stats.stage_ms[&uid("ann")], 10_000);
    assert!(!participant_view(&d, &uid("ann")).unwrap().0);
}

#[test]
fn approving_a_lowered_hand_is_a_conflict() {
    let mut d = live_stage();
    run(&mut d, "ann", Command::Own(Action::RaiseHand), 2).unwrap();
    run(&mut d, "ann", Command::Own(Action::LowerHand), 3).unwrap();
    let err = run(
        &mut d,
        "host",
        Command::Target(Action::ApproveHand, uid("ann")),
        4,
    )
    .unwrap_err();
    assert_eq!((err.status, err.code), (409, "no_raised_hand"));
    assert_eq!(d.members[&uid("ann")].role, Role::Listener);
}

#[test]
fn speaker_modes_gate_hands() {
    for (mode, follows, invited, ok) in [
        (SpeakerMode::Everyone, false, false, true),
        (SpeakerMode::Followers, false, false, false),
        (SpeakerMode::Followers, true, false, true),
        (SpeakerMode::Followers, false, true, true),
        (SpeakerMode::Invited, true, false, false),
        (SpeakerMode::Invited, false, true, true),
    ] {
        let mut d = doc(RoomKind::Stage, mode);
        run(&mut d, "host", Command::Start, 0).unwrap();
        join(&mut d, "ann", 1).unwrap();
        if invited {
            d.invited.insert(uid("ann"));
        }
        let c = Context {
            follows_host: follows,
            ..cx(2)
        };
        let r = apply(&mut d, &as_user("ann"), Command::Own(Action::RaiseHand), &c);
        assert_eq!(
            r.is_ok(),
            ok,
            "{mode:?} follows={follows} invited={invited}"
        );
        if !ok {
            assert_eq!(r.unwrap_err().code, "speaker_mode");
        }
    }
}

#[test]
fn kick_blocks_rejoin_for_the_cooldown_and_ban_until_unbanned() {
    let mut d = live_stage();
    let fx = run(
        &mut d,
        "host",
        Command::Target(Action::Kick, uid("ann")),
        MINUTE,
    )
    .unwrap();
    assert!(
        fx.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Remove { .. }))
    );
    assert_eq!(fx.released, vec![uid("ann")]);
    assert!(!d.members.contains_key(&uid("ann")));
    let err = join(&mut d, "ann", 2 * MINUTE).unwrap_err();
    assert_eq!((err.status, err.code), (403, "kicked"));
    assert!(err.message.contains("240 s"), "{}", err.message);
    join(&mut d, "ann", 6 * MINUTE + 1).unwrap();

    run(
        &mut d,
        "host",
        Command::Target(Action::Ban, uid("ann")),
        7 * MINUTE,
    )
    .unwrap();
    assert_eq!(
        join(&mut d, "ann", 100 * MINUTE).unwrap_err().code,
        "banned"
    );
    run(
        &mut d,
        "host",
        Command::Target(Action::Unban, uid("ann")),
        101 * MINUTE,
    )
    .unwrap();
    join(&mut d, "ann", 101 * MINUTE).unwrap();
    // Users who never joined can be banned ahead.
    run(
        &mut d,
        "host",
        Command::Target(Action::Ban, uid("troll")),
        102 * MINUTE,
    )
    .unwrap();
    assert_eq!(
        join(&mut d, "troll", 102 * MINUTE).unwrap_err().code,
        "banned"
    );
}

#[test]
fn leaving_ends_the_media_session_and_a_ban_reaches_whoever_is_connected() {
    let mut d = live_stage();
    let remove = |fx: &Effects, who: &str| {
        fx.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Remove { user, .. } if *user == uid(who)))
    };
    run(
        &mut d,
        "host",
        Command::Target(Action::InviteToSpeak, uid("ann")),
        MINUTE,
    )
    .unwrap();
    // A speaker who leaves is disconnected: no publishing without a membership.
    let fx = run(&mut d, "ann", Command::Own(Action::Leave), MINUTE).unwrap();
    assert!(remove(&fx, "ann"), "{fx:?}");
    assert!(!d.members.contains_key(&uid("ann")));
    // A ban after the leave still disconnects anyone connected under that identity.
    let fx = run(
        &mut d,
        "host",
        Command::Target(Action::Ban, uid("ann")),
        2 * MINUTE,
    )
    .unwrap();
    assert!(remove(&fx, "ann"), "{fx:?}");
    assert!(d.bans.contains(&uid("ann")));
}

#[test]
fn co_hosts_cannot_touch_the_host_or_each_other() {
    let mut d = live_stage();
    join(&mut d, "cy", 1).unwrap();
    join(&mut d, "dee", 1).unwrap();
    run(
        &mut d,
        "host",
        Command::Target(Action::AddCoHost, uid("cy")),
        2,
    )
    .unwrap();
    run(
        &mut d,
        "host",
        Command::Target(Action::AddCoHost, uid("dee")),
        2,
    )
    .unwrap();
    for (action, target) in [
        (Action::Kick, "host"),
        (Action::ForceMute, "host"),
        (Action::Kick, "dee"),
    ] {
        let err = run(&mut d, "cy", Command::Target(action, uid(target)), 3).unwrap_err();
        assert_eq!(err.status, 403, "{action:?} {target}");
    }
    run(&mut d, "cy", Command::Target(Action::Kick, uid("ann")), 3).unwrap();
    // Even the host cannot remove the host.
    let err = apply(
        &mut d,
        &Actor::System,
        Command::Target(Action::Ban, uid("host")),
        &cx(4),
    )
    .unwrap_err();
    assert_eq!(err.status, 403);
}

#[test]
fn hard_mute_revokes_publishing_until_restored() {
    let mut d = live_stage();
    run(
        &mut d,
        "host",
        Command::Target(Action::InviteToSpeak, uid("ann")),
        2,
    )
    .unwrap();
    assert!(participant_view(&d, &uid("ann")).unwrap().0);
    run(
        &mut d,
        "host",
        Command::Target(Action::HardMute, uid("ann")),
        3,
    )
    .unwrap();
    assert!(!participant_view(&d, &uid("ann")).unwrap().0);
    assert_eq!(
        run(&mut d, "ann", Command::Own(Action::UnmuteSelf), 4)
            .unwrap_err()
            .code,
        "hard_muted"
    );
    run(
        &mut d,
        "host",
        Command::Target(Action::Restore, uid("ann")),
        5,
    )
    .unwrap();
    assert!(participant_view(&d, &uid("ann")).unwrap().0);
    run(&mut d, "ann", Command::Own(Action::UnmuteSelf), 6).unwrap();
}

#[test]
fn transfer_host_swaps_roles() {
    let mut d = live_stage();
    run(
        &mut d,
        "host",
        Command::Target(Action::TransferHost, uid("ann")),
        2,
    )
    .unwrap();
    assert_eq!(d.room.host, uid("ann"));
    assert_eq!(d.members[&uid("ann")].role, Role::Host);
    assert_eq!(d.members[&uid("host")].role, Role::CoHost);
    assert_eq!(
        run(&mut d, "host", Command::End, 3).unwrap_err().code,
        "not_allowed"
    );
    run(&mut d, "ann", Command::End, 3).unwrap();
}

#[test]
fn seats_of_members_who_never_came_or_dropped_are_released_after_the_grace() {
    // Room of 4: the host, ann (never connects), bob (connects, then drops), cy (connected).
    let mut d = live_stage();
    join(&mut d, "bob", 1).unwrap();
    join(&mut d, "cy", 1).unwrap();
    let system = |d: &mut RoomDoc, c: Command, now: u64| apply(d, &Actor::System, c, &cx(now));
    for who in ["host", "bob", "cy"] {
        system(&mut d, Command::Connected(uid(who), "i".into()), 2).unwrap();
    }
    system(
        &mut d,
        Command::Disconnected(uid("bob"), "i".into()),
        30_000,
    )
    .unwrap();
    assert_eq!(join(&mut d, "dan", 30_001).unwrap_err().code, "room_full");
    let everyone = || ["host", "ann", "bob", "cy"].map(uid).to_vec();
    // Within the grace nobody loses a seat.
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), MINUTE).unwrap();
    assert!(fx.released.is_empty(), "{fx:?}");
    assert_eq!(d.members.len(), 4);
    // Ann's grace ran from her join (1 ms), bob's from his drop (30 s).
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), MINUTE + 1).unwrap();
    assert_eq!(fx.released, vec![uid("ann")]);
    assert!(
        fx.media
            .iter()
            .any(|m| matches!(m, MediaCommand::Remove { user, .. } if *user == uid("ann")))
    );
    join(&mut d, "dan", MINUTE + 2).unwrap();
    assert_eq!(
        join(&mut d, "eve", MINUTE + 3).unwrap_err().code,
        "room_full"
    );
    // Bob reconnecting in time keeps his seat; dropping again restarts his grace.
    system(
        &mut d,
        Command::Connected(uid("bob"), "i".into()),
        MINUTE + 10,
    )
    .unwrap();
    system(
        &mut d,
        Command::Disconnected(uid("bob"), "i".into()),
        2 * MINUTE,
    )
    .unwrap();
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), 3 * MINUTE - 1).unwrap();
    assert!(fx.released.is_empty(), "{fx:?}");
    // Connected members, and the host whatever their state, are never released.
    system(
        &mut d,
        Command::Disconnected(uid("host"), "i".into()),
        2 * MINUTE,
    )
    .unwrap();
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), 10 * MINUTE).unwrap();
    assert_eq!(fx.released, vec![uid("bob")]);
    assert!(d.members.contains_key(&uid("host")));
    assert!(d.members.contains_key(&uid("cy")));
    // A new token holds the seat again for the grace.
    join(&mut d, "dan", 20 * MINUTE).unwrap();
    let fx = system(
        &mut d,
        Command::ReleaseSeats(vec![uid("dan")]),
        21 * MINUTE - 1,
    )
    .unwrap();
    assert!(fx.released.is_empty(), "{fx:?}");
}

#[test]
fn mutes_made_in_the_media_plane_reach_the_room() {
    let mut d = live_stage();
    let system = |d: &mut RoomDoc, c: Command| apply(d, &Actor::System, c, &cx(5));
    // The host arrives muted; unmuting through an SDK shows in the room and its events.
    assert!(d.members[&uid("host")].muted);
    let fx = system(&mut d, Command::MediaMuted(uid("host"), false)).unwrap();
    assert!(!d.members[&uid("host")].muted);
    assert_eq!(
        fx.events,
        vec![Event::Muted {
            room: d.room.id.clone(),
            user: uid("host"),
            muted: false,
            hard: false,
        }]
    );
    // The echo of a mute the room already knows changes nothing and says nothing.
    let fx = system(&mut d, Command::MediaMuted(uid("host"), false)).unwrap();
    assert!(fx.events.is_empty());
    let fx = system(&mut d, Command::MediaMuted(uid("host"), true)).unwrap();
    assert!(d.members[&uid("host")].muted);
    assert_eq!(fx.events.len(), 1);
    // Someone who is not a member changes nothing.
    let fx = system(&mut d, Command::MediaMuted(uid("nobody"), true)).unwrap();
    assert!(fx.events.is_empty() && !d.members.contains_key(&uid("nobody")));
}

#[test]
fn private_rooms_admit_the_host_members_and_the_invited_only() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    d.room.private = true;
    run(&mut d, "host", Command::Start, 0).unwrap();
    join(&mut d, "host", 0).unwrap();
    let err = join(&mut d, "ann", 1).unwrap_err();
    assert_eq!((err.status, err.code), (403, "private_room"));
    assert!(!d.members.contains_key(&uid("ann")));
    d.invited.insert(uid("ann"));
    join(&mut d, "ann", 2).unwrap();
    // A member taking a new token stays in.
    join(&mut d, "ann", 3).unwrap();
    // Lined up for the stage by the host is invited too: seen, and let in as a speaker.
    assert!(!crate::view::may_see(&d, Some(&uid("sam"))));
    d.lineup.insert(uid("sam"), Role::Speaker);
    assert!(crate::view::may_see(&d, Some(&uid("sam"))));
    join(&mut d, "sam", 3).unwrap();
    assert_eq!(d.members[&uid("sam")].role, Role::Speaker);
    // Lifecycle and audience events say the room is private (the event stream filters them).
    let fx = run(&mut d, "host", Command::End, 4).unwrap();
    assert!(fx.events.iter().any(|e| e.private()), "{fx:?}");
    // Its replay: someone signed out is nobody in it, never a server (whose sight `None` is).
    use crate::view::{Viewer, may_read};
    assert!(!may_read(&d, Viewer::Anonymous));
    assert!(!may_read(&d, Viewer::User(&uid("zed"))));
    assert!(may_read(&d, Viewer::User(&uid("ann"))) && may_read(&d, Viewer::Server));
    d.room.private = false;
    assert!(may_read(&d, Viewer::Anonymous) && may_read(&d, Viewer::User(&uid("zed"))));
}

#[test]
fn open_rooms_let_everyone_speak_and_have_no_hands() {
    let mut d = doc(RoomKind::Open, SpeakerMode::Everyone);
    run(&mut d, "host", Command::Start, 0).unwrap();
    join(&mut d, "ann", 1).unwrap();
    assert_eq!(d.members[&uid("ann")].role, Role::Speaker);
    assert!(participant_view(&d, &uid("ann")).unwrap().0);
    assert_eq!(
        run(&mut d, "ann", Command::Own(Action::RaiseHand), 2)
            .unwrap_err()
            .code,
        "not_allowed"
    );
}

#[test]
fn full_rooms_refuse_with_422() {
    let mut d = live_stage();
    join(&mut d, "b", 2).unwrap();
    join(&mut d, "c", 2).unwrap();
    let err = join(&mut d, "d", 2).unwrap_err();
    assert_eq!((err.status, err.code), (422, "room_full"));
    // Members rejoining are not counted twice.
    join(&mut d, "c", 3).unwrap();
}

#[test]
fn end_disconnects_everyone_and_keeps_statistics() {
    let mut d = live_stage();
    apply(
        &mut d,
        &Actor::System,
        Command::Connected(uid("ann"), "i1".into()),
        &cx(1_000),
    )
    .unwrap();
    apply(
        &mut d,
        &Actor::System,
        Command::Connected(uid("host"), "i1".into()),
        &cx(1_000),
    )
    .unwrap();
    assert_eq!(d.stats.peak_listeners, 1);
    run(
        &mut d,
        "ann",
        Command::React {
            emoji: "👏".into()
        },
        2_000,
    )
    .unwrap();
    let fx = run(&mut d, "host", Command::End, 31_000).unwrap();
    assert_eq!(d.room.state, RoomState::Ended);
    assert!(d.members.is_empty());
    assert_eq!(fx.released.len(), 2);
    assert!(fx.media.contains(&MediaCommand::DeleteRoom {
        room: d.room.id.clone()
    }));
    assert_eq!(d.stats.listening_ms, 60_000);
    assert_eq!(d.stats.listening_sessions, 2);
    assert_eq!(d.stats.stage_ms[&uid("host")], 31_000);
    assert_eq!(d.stats.reactions, 1);
    assert_eq!(join(&mut d, "ann", 32_000).unwrap_err().code, "room_ended");
    apply(&mut d, &Actor::System, Command::Archive, &cx(32_000)).unwrap();
    assert_eq!(d.room.state, RoomState::Archived);
}

#[test]
fn presence_tracks_emptiness() {
    let mut d = live_stage();
    assert_eq!(d.room.empty_since, Some(0));
    apply(
        &mut d,
        &Actor::System,
        Command::Connected(uid("ann"), "i1".into()),
        &cx(10),
    )
    .unwrap();
    assert_eq!(d.room.empty_since, None);
    apply(
        &mut d,
        &Actor::System,
        Command::Disconnected(uid("ann"), "i1".into()),
        &cx(20),
    )
    .unwrap();
    assert_eq!(d.room.empty_since, Some(20));
    // A disconnect reported for another instance (the user moved on) changes nothing.
    apply(
        &mut d,
        &Actor::System,
        Command::Connected(uid("ann"), "i2".into()),
        &cx(25),
    )
    .unwrap();
    let before = d.clone();
    apply(
        &mut d,
        &Actor::System,
        Command::Disconnected(uid("ann"), "i1".into()),
        &cx(26),
    )
    .unwrap();
    assert_eq!(d, before);
    apply(
        &mut d,
        &Actor::System,
        Command::Disconnected(uid("ann"), "i2".into()),
        &cx(27),
    )
    .unwrap();
    assert!(!d.members[&uid("ann")].present);
    // Strangers' presence changes nothing.
    let before = d.clone();
    apply(
        &mut d,
        &Actor::System,
        Command::Connected(uid("zed"), "i1".into()),
        &cx(30),
    )
    .unwrap();
    assert_eq!(d, before);
}

#[test]
fn self_actions_need_a_user_and_non_members_are_refused() {
    let mut d = live_stage();
    let err = apply(
        &mut d,
        &Actor::System,
        Command::Own(Action::RaiseHand),
        &cx(1),
    )
    .unwrap_err();
    assert_eq!(err.code, "needs_user");
    let err = run(&mut d, "zed", Command::Own(Action::RaiseHand), 1).unwrap_err();
    assert_eq!(err.code, "not_a_member");
    let err = run(&mut d, "ann", Command::Target(Action::Kick, uid("host")), 1).unwrap_err();
    assert_eq!(err.status, 403);
}

#[test]
fn speaking_time_comes_from_the_media_plane() {
    let mut d = live_stage();
    let sys =
        |d: &mut RoomDoc, c: Command, now: u64| apply(d, &Actor::System, c, &cx(now)).unwrap();
    // Not connected: nothing counts.
    sys(&mut d, Command::Speaking(uid("host"), true), 0);
    assert_eq!(d.members[&uid("host")].speaking_since, None);
    sys(&mut d, Command::Connected(uid("host"), "i1".into()), 0);
    sys(&mut d, Command::Speaking(uid("host"), true), 1_000);
    sys(&mut d, Command::Speaking(uid("host"), true), 2_000);
    sys(&mut d, Command::Speaking(uid("host"), false), 4_000);
    sys(&mut d, Command::Speaking(uid("host"), true), 10_000);
    // A disconnect closes the open period.
    sys(
        &mut d,
        Command::Disconnected(uid("host"), "i1".into()),
        10_500,
    );
    assert_eq!(d.stats.speaking_ms[&uid("host")], 3_500);
}

/// Every action × every role × both room kinds through the state machine: refused with
/// `not_allowed` exactly where the matrix says so (other refusals, such as approving a hand that
/// is not raised, are about state, not permission).
#[test]
fn the_state_machine_enforces_the_matrix_everywhere() {
    use crate::permission::allowed;
    let mut checked = 0;
    for kind in [RoomKind::Stage, RoomKind::Open] {
        for role in Role::ALL {
            for action in Action::ALL {
                let mut d = doc(kind, SpeakerMode::Everyone);
                run(&mut d, "host", Command::Start, 0).unwrap();
                join(&mut d, "host", 0).unwrap();
                join(&mut d, "actor", 0).unwrap();
                join(&mut d, "target", 0).unwrap();
                if kind == RoomKind::Stage {
                    run(&mut d, "target", Command::Own(Action::RaiseHand), 1).unwrap();
                }
                let actor = if role == Role::Host { "host" } else { "actor" };
                if role != Role::Host {
                    d.members.get_mut(&uid("actor")).unwrap().role = role;
                }
                let command = match action {
                    Action::Join => Command::Join { name: "x".into() },
                    Action::React => Command::React {
                        emoji: "👏".into()
                    },
                    Action::Start => Command::Start,
                    Action::End => Command::End,
                    Action::Edit => Command::Edit(crate::room::Edit {
                        title: Some("New".into()),
                        ..Default::default()
                    }),
                    Action::LineUp => Command::LineUp(uid("target"), Some(Role::Speaker)),
                    a if a.has_target() => Command::Target(a, uid("target")),
                    a => Command::Own(a),
                };
                let result = run(&mut d, actor, command, 2);
                let refused = matches!(&result, Err(e) if e.code == "not_allowed");
                assert_eq!(
                    refused,
                    !allowed(action, role, kind),
                    "{action:?} by {role:?} in {kind:?}: {result:?}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 4 * 25);
}

/// A command run on the part of a room its scope names sees the whole room's counts, and
/// makes the same changes and effects as on the whole room.
#[test]
fn a_scoped_document_behaves_like_the_whole_room() {
    let mut full = doc(RoomKind::Stage, SpeakerMode::Everyone);
    full.room.max_participants = 100;
    run(&mut full, "host", Command::Start, 0).unwrap();
    for u in ["host", "ann", "bo", "cy", "di"] {
        join(&mut full, u, 1).unwrap();
        let c = Command::Connected(uid(u), "i1".into());
        apply(&mut full, &Actor::System, c, &cx(2)).unwrap();
    }
    let commands = [
        (Actor::System, Command::Connected(uid("ann"), "i2".into())),
        (as_user("ed"), Command::Join { name: "Ed".into() }),
        (as_user("bo"), Command::Own(Action::RaiseHand)),
        (Actor::System, Command::Disconnected(uid("cy"), "i1".into())),
        (
            Actor::System,
            Command::Target(Action::ApproveHand, uid("bo")),
        ),
        (as_user("di"), Command::Own(Action::Leave)),
    ];
    for (actor, command) in commands {
        let scope = scope(&actor, &command, Some(&uid("host")));
        assert!(!scope.all);
        let mut part = RoomDoc::new(full.room.clone());
        part.stats = full.stats.clone();
        for u in &scope.users {
            if let Some(m) = full.members.get(u) {
                part.members.insert(u.clone(), m.clone());
            }
            if let Some(t) = full.hands.get(u) {
                part.hands.insert(u.clone(), *t);
            }
        }
        part.set_total(&full.counts());
        let a = apply(&mut full, &actor, command.clone(), &cx(3));
        let b = apply(&mut part, &actor, command, &cx(3));
        assert_eq!(a, b);
        assert_eq!(part.counts(), full.counts());
        let (t, c) = (part.totals(), part.counts());
        assert_eq!(
            (t.members, t.stage, t.present, t.listeners, t.hands),
            (c.members, c.stage, c.present, c.listeners, c.hands)
        );
        assert_eq!(part.stats, full.stats);
        for (u, m) in &part.members {
            assert_eq!(full.members.get(u), Some(m));
        }
    }
    let c = full.counts();
    assert_eq!((c.members, c.stage, c.present, c.listeners), (5, 2, 3, 1));
    assert_eq!(c.instances.get("i2"), Some(&1));
    assert_eq!(scope(&Actor::System, &Command::End, None), Scope::all());
}

#[test]
fn the_host_and_new_speakers_arrive_muted() {
    let mut d = live_stage();
    assert!(
        d.members[&uid("host")].muted,
        "the host comes on stage muted"
    );
    assert!(
        !d.members[&uid("ann")].muted,
        "a listener has nothing to mute"
    );
    run(&mut d, "ann", Command::Own(Action::RaiseHand), 2).unwrap();
    run(
        &mut d,
        "host",
        Command::Target(Action::ApproveHand, uid("ann")),
        3,
    )
    .unwrap();
    assert!(
        d.members[&uid("ann")].muted,
        "an approved speaker comes up muted"
    );
    run(&mut d, "ann", Command::Own(Action::UnmuteSelf), 4).unwrap();
    assert!(!d.members[&uid("ann")].muted);

    let mut open = doc(RoomKind::Open, SpeakerMode::Everyone);
    run(&mut open, "host", Command::Start, 0).unwrap();
    join(&mut open, "bob", 1).unwrap();
    assert!(open.members[&uid("bob")].muted, "open rooms too");
}

#[test]
fn names_outlive_membership_for_summaries_and_removal_lists() {
    let mut d = live_stage();
    join(&mut d, "cat", 2).unwrap();
    run(
        &mut d,
        "host",
        Command::Target(Action::InviteToSpeak, uid("ann")),
        3,
    )
    .unwrap();
    run(&mut d, "ann", Command::Own(Action::Leave), 10).unwrap();
    run(
        &mut d,
        "host",
        Command::Target(Action::Kick, uid("cat")),
        11,
    )
    .unwrap();
    assert!(!d.members.contains_key(&uid("ann")));
    assert_eq!(d.name_of(&uid("ann")), Some("ann"));
    assert_eq!(d.name_of(&uid("cat")), Some("cat"));
    assert_eq!(d.name_of(&uid("nobody")), None);

    // What a moderator's view reads besides the document: the room's kicks and bans as the
    // stores list them, without the removed users' member records (they have none now).
    let extras = crate::view::Extras {
        bans: d.bans.iter().cloned().collect(),
        kicks: d.kicks.iter().map(|(u, t)| (u.clone(), *t)).collect(),
        ..crate::view::Extras::default()
    };
    let mut header = RoomDoc::new(d.room.clone());
    header.stats = d.stats.clone();
    let v = crate::view::room(&header, Some(&uid("host")), Some(&extras));
    assert_eq!(v.host_name, "host");
    let removed = v.removed.unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, "cat");
    assert!(!removed[0].banned);
    assert_eq!(removed[0].until, Some(11 + 5 * MINUTE));
    assert!(
        crate::view::room(&d, Some(&uid("ann")), None)
            .removed
            .is_none()
    );

    let err = join(&mut d, "cat", 12).unwrap_err();
    assert_eq!(err.code, "kicked");
    assert_eq!(err.retry_after, Some((5 * MINUTE - 1).div_ceil(1000)));

    run(&mut d, "host", Command::End, 20).unwrap();
    let stats = crate::view::stats(&d, 30);
    assert_eq!(stats.names[&uid("ann")], "ann");
    assert_eq!(stats.names[&uid("host")], "host");
    assert!(stats.stage_ms.keys().all(|u| stats.names.contains_key(u)));
}

#[test]
fn the_host_opens_a_scheduled_room_only_within_its_window() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    d.room.scheduled_for = Some(60 * MINUTE);
    let err = run(&mut d, "host", Command::Start, 44 * MINUTE).unwrap_err();
    assert_eq!((err.code, err.retry_after), ("too_early", Some(60)));
    assert_eq!(d.room.state, RoomState::Scheduled);
    // The server (auto-start, an app backend) is not held to the window.
    let mut early = d.clone();
    apply(&mut early, &Actor::System, Command::Start, &cx(0)).unwrap();
    assert_eq!(early.room.state, RoomState::Live);
    let fx = run(&mut d, "host", Command::Start, 45 * MINUTE).unwrap();
    assert_eq!(d.room.state, RoomState::Live);
    // Participants get the room's description as metadata from the start.
    assert!(
        fx.media
            .iter()
            .any(|m| matches!(m, MediaCommand::RoomMetadata { .. }))
    );
}

#[test]
fn a_reminder_goes_out_once_per_scheduled_time() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    d.room.scheduled_for = Some(60 * MINUTE);
    let sys = |d: &mut RoomDoc, c: Command| apply(d, &Actor::System, c, &cx(50 * MINUTE)).unwrap();
    let fx = sys(&mut d, Command::Remind);
    assert!(matches!(fx.events[..], [Event::Reminder { .. }]));
    assert!(sys(&mut d, Command::Remind).events.is_empty());
    // A new time earns a new reminder.
    let edit = Edit {
        scheduled_for: Some(90 * MINUTE),
        ..Edit::default()
    };
    run(&mut d, "host", Command::Edit(edit), 50 * MINUTE).unwrap();
    assert!(!d.room.reminded);
    assert_eq!(sys(&mut d, Command::Remind).events.len(), 1);
}

#[test]
fn editing_is_for_moderators_and_reaches_live_participants() {
    let mut d = live_stage();
    let edit = Edit {
        title: Some("Renamed".into()),
        topic: Some("Rust".into()),
        ..Edit::default()
    };
    let err = run(&mut d, "ann", Command::Edit(edit.clone()), 2).unwrap_err();
    assert_eq!(err.code, "not_allowed");
    let fx = run(&mut d, "host", Command::Edit(edit.clone()), 2).unwrap();
    assert_eq!(d.room.title, "Renamed");
    let MediaCommand::RoomMetadata { metadata, .. } = &fx.media[0] else {
        panic!("metadata expected: {fx:?}");
    };
    assert!(metadata.contains("\"title\":\"Renamed\""), "{metadata}");
    assert!(matches!(fx.events[..], [Event::RoomEdited { .. }]));
    // Nothing changed: nothing to tell.
    assert_eq!(
        run(&mut d, "host", Command::Edit(edit), 3).unwrap(),
        Effects::default()
    );
    // A co-host edits too.
    run(
        &mut d,
        "host",
        Command::Target(Action::AddCoHost, uid("ann")),
        3,
    )
    .unwrap();
    let mode = Edit {
        speaker_mode: Some(SpeakerMode::Invited),
        ..Edit::default()
    };
    run(&mut d, "ann", Command::Edit(mode), 4).unwrap();
    assert_eq!(d.room.speaker_mode, SpeakerMode::Invited);
    // Live rooms keep their kind and schedule; limits stay above the members.
    for (e, code) in [
        (
            Edit {
                kind: Some(RoomKind::Open),
                ..Edit::default()
            },
            "room_live",
        ),
        (
            Edit {
                scheduled_for: Some(10 * MINUTE),
                ..Edit::default()
            },
            "room_live",
        ),
        (
            Edit {
                max_participants: Some(1),
                ..Edit::default()
            },
            "below_members",
        ),
    ] {
        let before = d.clone();
        assert_eq!(
            run(&mut d, "host", Command::Edit(e), 5).unwrap_err().code,
            code
        );
        assert_eq!(d, before);
    }
    // Scheduled rooms change kind; ended ones change nothing.
    let mut s = doc(RoomKind::Stage, SpeakerMode::Everyone);
    let open = Edit {
        kind: Some(RoomKind::Open),
        ..Edit::default()
    };
    let fx = run(&mut s, "host", Command::Edit(open.clone()), 0).unwrap();
    assert_eq!(s.room.kind, RoomKind::Open);
    assert!(fx.media.is_empty(), "no media room yet");
    apply(&mut s, &Actor::System, Command::End, &cx(1)).unwrap();
    assert_eq!(
        run(&mut s, "host", Command::Edit(open), 2)
            .unwrap_err()
            .code,
        "room_ended"
    );
}

#[test]
fn a_lined_up_speaker_lands_on_stage_and_keeps_the_role_across_rejoins() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    // Before the room goes live.
    run(
        &mut d,
        "host",
        Command::LineUp(uid("sam"), Some(Role::Speaker)),
        0,
    )
    .unwrap();
    run(
        &mut d,
        "host",
        Command::LineUp(uid("cole"), Some(Role::CoHost)),
        0,
    )
    .unwrap();
    assert_eq!(
        run(
            &mut d,
            "sam",
            Command::LineUp(uid("ann"), Some(Role::Speaker)),
            0
        )
        .unwrap_err()
        .code,
        "not_a_member"
    );
    for (role, code) in [
        (Role::Host, "invalid_role"),
        (Role::Listener, "invalid_role"),
    ] {
        let e = run(&mut d, "host", Command::LineUp(uid("ann"), Some(role)), 0).unwrap_err();
        assert_eq!(e.code, code);
    }
    run(&mut d, "host", Command::Start, 0).unwrap();
    join(&mut d, "sam", 1).unwrap();
    join(&mut d, "cole", 1).unwrap();
    join(&mut d, "ann", 1).unwrap();
    assert_eq!(d.members[&uid("sam")].role, Role::Speaker);
    assert_eq!(d.members[&uid("cole")].role, Role::CoHost);
    assert_eq!(d.members[&uid("ann")].role, Role::Listener);
    let (can_publish, _, attributes) = participant_view(&d, &uid("sam")).unwrap();
    assert!(can_publish);
    assert_eq!(attributes["role"], "speaker");
    // Leave and rejoin: still a speaker.
    run(&mut d, "sam", Command::Own(Action::Leave), 2).unwrap();
    join(&mut d, "sam", 3).unwrap();
    assert_eq!(d.members[&uid("sam")].role, Role::Speaker);
    // A role given during the room is kept too; moving to the audience forgets it.
    run(&mut d, "ann", Command::Own(Action::RaiseHand), 4).unwrap();
    run(
        &mut d,
        "host",
        Command::Target(Action::ApproveHand, uid("ann")),
        4,
    )
    .unwrap();
    assert_eq!(d.lineup[&uid("ann")], Role::Speaker);
    run(
        &mut d,
        "host",
        Command::Target(Action::MoveToAudience, uid("sam")),
        5,
    )
    .unwrap();
    assert!(!d.lineup.contains_key(&uid("sam")));
    run(&mut d, "sam", Command::Own(Action::Leave), 6).unwrap();
    join(&mut d, "sam", 7).unwrap();
    assert_eq!(d.members[&uid("sam")].role, Role::Listener);
    // Taking a present member off the line-up takes them off stage at once.
    let fx = run(&mut d, "host", Command::LineUp(uid("ann"), None), 8).unwrap();
    assert_eq!(d.members[&uid("ann")].role, Role::Listener);
    assert!(fx.events.iter().any(|e| matches!(e, Event::Role { .. })));
}

#[test]
fn listeners_send_data_only_where_the_room_allows_it() {
    let mut d = live_stage();
    let data = |d: &RoomDoc, who: &str| {
        let (publish, data, _) = participant_view(d, &uid(who)).unwrap();
        (publish, data)
    };
    // Off by default: a listener may send neither audio nor data; the stage both.
    assert_eq!(data(&d, "ann"), (false, false));
    assert_eq!(data(&d, "host"), (true, true));
    let allow = |on: bool| Edit {
        listener_data: Some(on),
        ..Edit::default()
    };
    assert_eq!(
        run(&mut d, "ann", Command::Edit(allow(true)), 2)
            .unwrap_err()
            .code,
        "not_allowed"
    );
    // Switched on: connected listeners get the data permission at once, never audio.
    let fx = run(&mut d, "host", Command::Edit(allow(true)), 3).unwrap();
    assert!(d.room.listener_data);
    assert_eq!(data(&d, "ann"), (false, true));
    assert!(
        fx.media.iter().any(|m| matches!(m,
            MediaCommand::Update { user, can_publish: false, can_publish_data: true, .. }
                if *user == uid("ann"))),
        "{fx:?}"
    );
    // A hard mute takes data too.
    run(
        &mut d,
        "host",
        Command::Target(Action::HardMute, uid("ann")),
        4,
    )
    .unwrap();
    assert_eq!(data(&d, "ann"), (false, false));
    run(
        &mut d,
        "host",
        Command::Target(Action::Restore, uid("ann")),
        5,
    )
    .unwrap();
    assert_eq!(data(&d, "ann"), (false, true));
    // Switched off again: taken back at once.
    let fx = run(&mut d, "host", Command::Edit(allow(false)), 6).unwrap();
    assert_eq!(data(&d, "ann"), (false, false));
    assert!(
        fx.media.iter().any(|m| matches!(m,
            MediaCommand::Update { user, can_publish_data: false, .. } if *user == uid("ann"))),
        "{fx:?}"
    );
    assert_eq!(data(&d, "host"), (true, true));
}

#[test]
fn leaving_the_media_room_on_purpose_frees_the_seat_at_once_a_lost_connection_after_the_grace() {
    // Room of 4: the host, ann, bob, cy, all connected.
    let mut d = live_stage();
    join(&mut d, "bob", 1).unwrap();
    join(&mut d, "cy", 1).unwrap();
    let system = |d: &mut RoomDoc, c: Command, now: u64| apply(d, &Actor::System, c, &cx(now));
    // Well past the start, as Unix ms are.
    const T: u64 = 10 * MINUTE;
    let everyone = || ["host", "ann", "bob", "cy"].map(uid).to_vec();
    for who in ["host", "ann", "bob", "cy"] {
        system(&mut d, Command::Connected(uid(who), "i".into()), 2).unwrap();
    }
    // Bob's connection is lost: his seat is held for a reconnect.
    system(
        &mut d,
        Command::Disconnected(uid("bob"), "i".into()),
        T + 10,
    )
    .unwrap();
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), T + 11).unwrap();
    assert!(fx.released.is_empty(), "{fx:?}");
    assert_eq!(join(&mut d, "dan", T + 12).unwrap_err().code, "room_full");
    // Ann and the host leave on purpose: Ann's seat is free at once, long before the grace.
    system(&mut d, Command::Left(uid("ann"), "i".into()), T + 20).unwrap();
    system(&mut d, Command::Left(uid("host"), "i".into()), T + 20).unwrap();
    assert!(d.members[&uid("ann")].is_ghost(T + 21, MINUTE));
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), T + 21).unwrap();
    assert_eq!(
        fx.released,
        vec![uid("ann")],
        "the host's seat is never given away"
    );
    join(&mut d, "dan", T + 22).unwrap();
    // Coming straight back with a new token holds the seat again, role and all.
    join(&mut d, "host", T + 23).unwrap();
    system(&mut d, Command::Left(uid("cy"), "i".into()), T + 30).unwrap();
    join(&mut d, "cy", T + 31).unwrap();
    let fx = system(&mut d, Command::ReleaseSeats(everyone()), T + 32).unwrap();
    assert!(fx.released.is_empty(), "{fx:?}");
    assert_eq!(d.members[&uid("host")].role, Role::Host);
    // A leave reported by an instance the member is no longer on changes nothing.
    system(&mut d, Command::Connected(uid("cy"), "j".into()), T + 40).unwrap();
    system(&mut d, Command::Left(uid("cy"), "i".into()), T + 41).unwrap();
    assert!(d.members[&uid("cy")].present);
}

fn record_commands(fx: &Effects) -> Vec<bool> {
    fx.media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::Record { recording, .. } => Some(*recording),
            _ => None,
        })
        .collect()
}

#[test]
fn only_hosts_and_co_hosts_record_a_live_room() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    assert_eq!(
        run(&mut d, "host", Command::Record(true), 0)
            .unwrap_err()
            .code,
        "room_not_live"
    );
    let mut d = live_stage();
    assert_eq!(
        run(&mut d, "ann", Command::Record(true), 2)
            .unwrap_err()
            .code,
        "not_allowed"
    );
    assert_eq!(
        run(&mut d, "zed", Command::Record(true), 2)
            .unwrap_err()
            .code,
        "not_allowed"
    );
    assert!(!d.room.recording);
    let fx = run(&mut d, "host", Command::Record(true), 3).unwrap();
    assert!(d.room.recording);
    assert_eq!(record_commands(&fx), [true]);
    // Again: nothing more to do.
    let fx = run(&mut d, "host", Command::Record(true), 4).unwrap();
    assert!(record_commands(&fx).is_empty());
    // A co-host stops it.
    run(
        &mut d,
        "host",
        Command::Target(Action::AddCoHost, uid("ann")),
        5,
    )
    .unwrap();
    let fx = run(&mut d, "ann", Command::Record(false), 6).unwrap();
    assert!(!d.room.recording);
    assert_eq!(record_commands(&fx), [false]);
}

#[test]
fn a_failed_recording_stops_with_an_event_that_says_why() {
    let mut d = live_stage();
    let fx = run(&mut d, "host", Command::Record(true), 3).unwrap();
    assert!(fx.events.contains(&Event::Recording {
        room: d.room.id.clone(),
        recording: true,
        error: None,
    }));
    // Only the server reports a failure.
    let failed = || Command::RecordingFailed("No space left on device".into());
    assert_eq!(
        run(&mut d, "host", failed(), 4).unwrap_err().code,
        "not_allowed"
    );
    assert!(d.room.recording);
    let fx = apply(&mut d, &Actor::System, failed(), &cx(5)).unwrap();
    assert!(!d.room.recording);
    assert_eq!(record_commands(&fx), [false]);
    assert_eq!(
        fx.events,
        [Event::Recording {
            room: d.room.id.clone(),
            recording: false,
            error: Some("No space left on device".into()),
        }]
    );
    // Reported again (a late duplicate): nothing more.
    let fx = apply(&mut d, &Actor::System, failed(), &cx(6)).unwrap();
    assert!(fx.events.is_empty() && fx.media.is_empty());
}

#[test]
fn a_room_created_recorded_records_from_its_start_until_its_end() {
    let mut d = doc(RoomKind::Stage, SpeakerMode::Everyone);
    d.room.recording = true;
    let fx = run(&mut d, "host", Command::Start, 1).unwrap();
    assert!(matches!(fx.media[0], MediaCommand::CreateRoom { .. }));
    assert_eq!(record_commands(&fx), [true]);
    join(&mut d, "host", 2).unwrap();
    let fx = run(&mut d, "host", Command::End, 3).unwrap();
    assert_eq!(record_commands(&fx), [false]);
    assert!(matches!(
        fx.media.last(),
        Some(MediaCommand::DeleteRoom { .. })
    ));
    assert!(!d.room.recording);
}

#[test]
fn leaving_while_connected_ends_the_media_session_too() {
    let mut d = live_stage();
    apply(
        &mut d,
        &Actor::System,
        Command::Connected(uid("ann"), "i1".into()),
        &cx(2),
    )
    .unwrap();
    // Left through the API (e.g. from another device) while still connected: the session goes.
    let fx = run(&mut d, "ann", Command::Own(Action::Leave), 3).unwrap();
    assert!(fx.media.contains(&MediaCommand::Remove {
        room: d.room.id.clone(),
        user: uid("ann"),
    }));
    assert_eq!(fx.released, vec![uid("ann")]);
    // Not known to be connected: the session goes all the same, should the media plane have
    // one the books missed (it is the source of presence).
    let fx = run(&mut d, "host", Command::Own(Action::Leave), 4).unwrap();
    assert!(fx.media.contains(&MediaCommand::Remove {
        room: d.room.id.clone(),
        user: uid("host"),
    }));
}

#[path = "room_tests_idle.rs"]
mod idle;
