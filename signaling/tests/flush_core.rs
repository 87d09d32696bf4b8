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

    // Room B's join between two slices is answered at once, ahead of room A's rest.
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
