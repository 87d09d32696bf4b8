//! A tick's flush in the signaling core alone (`proto::Server` on a virtual clock): a change
//! told to a room of many clients goes out a slice of clients per turn, the next slice due at
//! once, and another room's join between two slices is answered before the rest of the flush.
//! Deterministic: fixed seed, simulated time, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use livekit_protocol::signal_response;
use stoa_sfu::Event;
use stoa_signaling::proto::{FLUSH_SLICE, Output, SessionId};

mod core_support;
use core_support::{claims, drain, fire, join, server, updates_for};

const TICK: Duration = Duration::from_millis(100);

/// Sessions among `outs` sent a `ParticipantUpdate`.
fn updated(outs: &[Output]) -> Vec<SessionId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(to, m)
                if matches!(m.message, Some(signal_response::Message::Update(_))) =>
            {
                Some(*to)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_big_rooms_flush_goes_in_slices_and_another_rooms_join_goes_between() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = server(t0);
    let listeners = 2 * FLUSH_SLICE + 10;
    let mut audience = Vec::new();
    for i in 0..listeners {
        let (session, _) = join(&mut s, now, claims(&format!("l{i}"), "a", false));
        audience.push(session);
    }
    let (host, host_peer) = join(&mut s, now, claims("host", "a", true));
    now += TICK;
    fire(&mut s, now);
    drain(&mut s);

    // The host's connection comes up: every listener is to see her active.
    s.handle_engine_event(now, Event::Connected(host_peer));
    assert!(updated(&drain(&mut s)).is_empty(), "batched for the tick");
    now += TICK;
    s.handle_timeout(now);
    let first = drain(&mut s);
    assert_eq!(updated(&first).len(), FLUSH_SLICE, "one slice per turn");
    assert!(
        matches!(s.poll_output(), Output::Timeout(t) if t <= now),
        "the next slice is due at once"
    );

    // Room B's join between two slices is answered at once: nothing of room A's rest is
    // queued before it (in the shell, it then races the next slice).
    let (b, _) = join(&mut s, now, claims("b1", "b", false));
    let outs = drain(&mut s);
    assert!(
        outs.iter().any(|o| matches!(o, Output::Send(to, m)
            if *to == b && matches!(m.message, Some(signal_response::Message::Join(_))))),
        "{outs:?}"
    );
    assert!(updated(&outs).is_empty(), "no slice went with the join");

    // The rest follows on the next turns, each of room A told once (the host of herself too),
    // nothing of it to room B.
    let rest = fire(&mut s, now);
    let mut told = updated(&first);
    told.extend(updated(&rest));
    told.sort_unstable();
    let mut expected = audience.clone();
    expected.push(host);
    expected.sort_unstable();
    assert_eq!(told, expected);
    for session in &audience {
        let seen = [updates_for(&first, *session), updates_for(&rest, *session)].concat();
        assert!(
            seen.iter().any(|p| p.identity == "host"),
            "{session:?} saw the host"
        );
    }
    assert!(
        matches!(s.poll_output(), Output::Timeout(t) if t == now + TICK),
        "flushed: the next tick"
    );
}

#[test]
fn a_flush_not_done_by_the_next_tick_keeps_its_order() {
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = server(t0);
    let mut room = Vec::new();
    for i in 0..2 * FLUSH_SLICE + 10 {
        room.push(join(&mut s, now, claims(&format!("l{i}"), "a", false)).0);
    }
    let (first_host, first_peer) = join(&mut s, now, claims("host1", "a", true));
    let (second_host, second_peer) = join(&mut s, now, claims("host2", "a", true));
    room.extend([first_host, second_host]);
    room.sort_unstable();
    now += TICK;
    fire(&mut s, now);
    drain(&mut s);

    // The first host's connection comes up; the tick's first slice goes out, no more.
    s.handle_engine_event(now, Event::Connected(first_peer));
    now += TICK;
    s.handle_timeout(now);
    assert_eq!(updated(&drain(&mut s)), room[..FLUSH_SLICE]);
    // The second's too, for everyone, and the next tick comes before the rest was flushed:
    // the sessions not reached yet go first, in order, then those told already.
    s.handle_engine_event(now, Event::Connected(second_peer));
    drain(&mut s);
    now += TICK;
    s.handle_timeout(now);
    assert_eq!(updated(&drain(&mut s)), room[FLUSH_SLICE..2 * FLUSH_SLICE]);
    let rest = fire(&mut s, now);
    let mut order = updated(&rest);
    let mut expected: Vec<SessionId> = room[2 * FLUSH_SLICE..].to_vec();
    expected.extend_from_slice(&room[..FLUSH_SLICE]);
    assert_eq!(order, expected);
    // Everyone saw both hosts, once each session.
    order.extend(room[FLUSH_SLICE..2 * FLUSH_SLICE].iter().copied());
    order.sort_unstable();
    assert_eq!(order, room);
}
