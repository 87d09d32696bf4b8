//! Idle rules, away and deafened: the room state machine on simulated time.

use super::*;

/// A live stage room with the host, and "ann" on stage (invited at 1, unmuted at 2, connected).
fn idle_stage(rules: IdleRules) -> RoomDoc {
    let mut d = live_stage();
    d.room.idle = rules;
    run(
        &mut d,
        "host",
        Command::Target(Action::InviteToSpeak, uid("ann")),
        1,
    )
    .unwrap();
    run(&mut d, "ann", Command::Own(Action::UnmuteSelf), 2).unwrap();
    let c = Command::Connected(uid("ann"), "i1".into());
    apply(&mut d, &Actor::System, c, &cx(2)).unwrap();
    d
}

fn idle_at(d: &mut RoomDoc, now: u64) -> Effects {
    let due = idle_due(d, now);
    apply(d, &Actor::System, Command::Idle(due), &cx(now)).unwrap()
}

#[test]
fn idle_speakers_are_muted_then_moved_back_counting_from_their_last_word() {
    let rules = IdleRules {
        mute_after: 60,
        audience_after: 180,
        show_away: false,
    };
    let mut d = idle_stage(rules);
    let ann = uid("ann");
    // Speaking from 10 s to 20 s: never idle while speaking, counted from 20 s after.
    apply(
        &mut d,
        &Actor::System,
        Command::Speaking(ann.clone(), true),
        &cx(10_000),
    )
    .unwrap();
    assert!(idle_due(&d, 10_000 + 3_600_000).is_empty());
    apply(
        &mut d,
        &Actor::System,
        Command::Speaking(ann.clone(), false),
        &cx(20_000),
    )
    .unwrap();
    // The host arrived muted and is never moved: nobody is due until 80 s.
    assert!(idle_due(&d, 79_999).is_empty());
    assert_eq!(idle_due(&d, 80_000), vec![ann.clone()]);
    let fx = idle_at(&mut d, 80_000);
    assert!(d.members[&ann].muted);
    assert_eq!(d.members[&ann].role, Role::Speaker);
    assert!(fx.media.contains(&MediaCommand::Mute {
        room: d.room.id.clone(),
        user: ann.clone(),
    }));
    assert!(fx.events.contains(&Event::Idle {
        room: d.room.id.clone(),
        user: ann.clone(),
        moved: false,
    }));
    // Muted already: nothing more until 200 s; then back to the audience, line-up kept.
    assert!(idle_due(&d, 199_999).is_empty());
    let fx = idle_at(&mut d, 200_000);
    assert_eq!(d.members[&ann].role, Role::Listener);
    assert_eq!(d.lineup.get(&ann), Some(&Role::Speaker));
    assert!(fx.events.contains(&Event::Idle {
        room: d.room.id.clone(),
        user: ann.clone(),
        moved: true,
    }));
    assert!(fx.events.iter().any(|e| matches!(
        e,
        Event::Role {
            role: Role::Listener,
            ..
        }
    )));
    // A listener is never idle on stage; a stale list changes nothing.
    assert!(idle_due(&d, 10_000_000).is_empty());
    let fx = apply(
        &mut d,
        &Actor::System,
        Command::Idle(vec![ann.clone()]),
        &cx(10_000_000),
    )
    .unwrap();
    assert!(fx.events.is_empty());
}

#[test]
fn idle_rules_spare_the_host_and_co_hosts_from_the_move_and_can_be_off() {
    let rules = IdleRules {
        mute_after: 60,
        audience_after: 180,
        show_away: false,
    };
    let mut d = idle_stage(rules);
    run(
        &mut d,
        "host",
        Command::Target(Action::AddCoHost, uid("ann")),
        3,
    )
    .unwrap();
    run(&mut d, "ann", Command::Own(Action::UnmuteSelf), 4).unwrap();
    run(&mut d, "host", Command::Own(Action::UnmuteSelf), 4).unwrap();
    // Both muted at 64 s, neither moved at any time.
    idle_at(&mut d, 64_000);
    assert!(d.members[&uid("ann")].muted && d.members[&uid("host")].muted);
    assert!(idle_due(&d, 100_000_000).is_empty());
    assert_eq!(d.members[&uid("ann")].role, Role::CoHost);
    // Rules at 0 never act; only the system applies them; only live rooms.
    let mut d = idle_stage(IdleRules {
        mute_after: 0,
        audience_after: 0,
        show_away: false,
    });
    assert!(idle_due(&d, 100_000_000).is_empty());
    let mut d2 = idle_stage(rules);
    let fx = run(
        &mut d2,
        "host",
        Command::Idle(vec![uid("ann")]),
        100_000_000,
    )
    .unwrap();
    assert!(fx.events.is_empty() && !d2.members[&uid("ann")].muted);
    run(&mut d, "host", Command::End, 5).unwrap();
    assert!(idle_due(&d, 100_000_000).is_empty());
}

#[test]
fn away_and_deafened_are_the_members_own_and_away_shows_where_the_room_says() {
    let mut d = live_stage();
    let presence = |away, deafened| Command::Presence { away, deafened };
    assert_eq!(
        run(&mut d, "zed", presence(Some(true), None), 2)
            .unwrap_err()
            .code,
        "not_a_member"
    );
    let fx = run(&mut d, "ann", presence(Some(true), Some(true)), 2).unwrap();
    let ann = &d.members[&uid("ann")];
    assert!(ann.away && ann.deafened);
    // Away is recorded but not shown while the room's show_away is off (the default).
    assert!(fx.events.contains(&Event::Presence {
        room: d.room.id.clone(),
        user: uid("ann"),
        away: false,
        deafened: true,
    }));
    let (_, _, attributes) = participant_view(&d, &uid("ann")).unwrap();
    assert_eq!(
        (attributes["away"].as_str(), attributes["deafened"].as_str()),
        ("", "yes")
    );
    d.room.idle.show_away = true;
    let (_, _, attributes) = participant_view(&d, &uid("ann")).unwrap();
    assert_eq!(attributes["away"], "yes");
    // Saying the same again changes nothing; None leaves a field as it is.
    let fx = run(&mut d, "ann", presence(Some(true), None), 3).unwrap();
    assert!(fx.events.is_empty() && fx.media.is_empty());
    run(&mut d, "ann", presence(Some(false), None), 4).unwrap();
    let ann = &d.members[&uid("ann")];
    assert!(!ann.away && ann.deafened);
}

#[test]
fn editing_the_idle_rules_checks_them_as_creation_does() {
    let mut d = live_stage();
    let edit = |m, a, s| Edit {
        idle_mute_after: m,
        idle_audience_after: a,
        show_away: s,
        ..Edit::default()
    };
    let err = run(
        &mut d,
        "host",
        Command::Edit(edit(Some(300), Some(200), None)),
        2,
    )
    .unwrap_err();
    assert_eq!(err.code, "invalid_field");
    let err = run(
        &mut d,
        "host",
        Command::Edit(edit(Some(90_000), None, None)),
        2,
    )
    .unwrap_err();
    assert_eq!(err.code, "invalid_field");
    assert_eq!(
        run(&mut d, "ann", Command::Edit(edit(Some(30), None, None)), 2)
            .unwrap_err()
            .code,
        "not_allowed"
    );
    let fx = run(
        &mut d,
        "host",
        Command::Edit(edit(Some(30), Some(0), Some(true))),
        2,
    )
    .unwrap();
    assert_eq!(
        d.room.idle,
        IdleRules {
            mute_after: 30,
            audience_after: 0,
            show_away: true
        }
    );
    assert!(
        fx.events
            .iter()
            .any(|e| matches!(e, Event::RoomEdited { .. }))
    );
}
