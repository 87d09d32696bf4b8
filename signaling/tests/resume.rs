//! Session resume in the signaling core, on simulated time (`stoa_signaling::sim`): a client
//! whose connection is cut is held with its sid, tracks and subscriptions; it resumes with
//! `reconnect=1&sid=…` (ReconnectResponse first, then an ICE restart of both connections) and
//! nobody else sees it leave or join; a held session not resumed within the room's departure
//! timeout ends, and only then do the others see the leave. Seeded, bounded, no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, deprecated)]

use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::signal_response;
use std::sync::Arc;

use stoa_signaling::proto::{AdminOp, ParticipantUpdate, ServerConfig, TokenRefresh};
use stoa_signaling::sim::{SIM_API_KEY, START_UNIX_MS, Sim};
use stoa_signaling::token::ApiKeys;

const SECOND: Duration = Duration::from_secs(1);

fn world(seed: u64) -> Sim {
    Sim::new(Instant::now(), seed, 2, ServerConfig::default())
}

/// A speaker who publishes and `n` listeners, all connected; the listeners hear the speaker.
fn stage(sim: &mut Sim, n: usize) -> (usize, Vec<usize>) {
    let (speaker, listeners) = sim.stage("r", "speaker", "l", n).unwrap();
    sim.speak(speaker, 20);
    sim.run_for(SECOND);
    for &l in &listeners {
        assert!(sim.clients[l].heard.len() >= 15, "listener {l} hears");
    }
    (speaker, listeners)
}

/// Every state `identity` had in the participant updates `log` received.
fn states_of(log: &[signal_response::Message], identity: &str) -> Vec<i32> {
    log.iter()
        .filter_map(|m| match m {
            signal_response::Message::Update(u) => Some(u.participants.iter()),
            _ => None,
        })
        .flatten()
        .filter(|p| p.identity == identity)
        .map(|p| p.state)
        .collect()
}

/// The ICE ufrag of an SDP.
fn ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("a=ice-ufrag")
        .trim()
        .to_owned()
}

fn events_about(sim: &Sim, identity: &str) -> Vec<String> {
    sim.seen
        .events
        .iter()
        .filter(|(_, who)| who == identity)
        .map(|(e, _)| e.clone())
        .collect()
}

#[test]
fn a_speaker_cut_off_for_seconds_resumes_with_its_sid_tracks_and_listeners() {
    let mut sim = world(21);
    let (speaker, listeners) = stage(&mut sim, 2);
    let me = sim.clients[speaker].me().unwrap();
    let first_offer = sim.clients[speaker]
        .find(|m| match m {
            signal_response::Message::Offer(sd) => Some(sd.sdp.clone()),
            _ => None,
        })
        .unwrap();
    let events_before = events_about(&sim, "speaker");
    let heard_before: Vec<usize> = listeners
        .iter()
        .map(|&l| sim.clients[l].heard.len())
        .collect();

    // The network is cut: signaling and media.
    sim.disconnect(speaker);
    sim.run_for(5 * SECOND);
    let held = sim.participants("r");
    let still = held.iter().find(|p| p.identity == "speaker").expect("held");
    assert_eq!(still.sid, me.sid);
    assert_eq!(still.tracks.len(), 1, "its track stays published");
    assert_eq!(sim.server.stats().sessions, 2);
    assert_eq!(sim.server.stats().held, 1);
    sim.check_invariants().unwrap();

    // It comes back within the departure timeout and resumes.
    let log_len = sim.clients[speaker].log.len();
    sim.resume(speaker).expect("resumed");
    sim.run_for(2 * SECOND);
    assert!(sim.clients[speaker].is_open());
    let after = &sim.clients[speaker].log[log_len..];
    assert!(
        matches!(after.first(), Some(signal_response::Message::Reconnect(r))
            if r.client_configuration.as_ref().map(|c| c.resume_connection)
                == Some(lk::ClientConfigSetting::Enabled as i32)
                && r.server_info.is_some()),
        "ReconnectResponse first: {:?}",
        after.first()
    );
    let update = after
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Update(u) => Some(u),
            _ => None,
        })
        .expect("a participant update after the resume");
    assert!(update.participants.iter().any(|p| p.sid == me.sid));
    assert!(update.participants.iter().any(|p| p.identity == "l0"));
    assert!(
        after
            .iter()
            .any(|m| matches!(m, signal_response::Message::RoomUpdate(_)))
    );
    // The subscriber connection is offered an ICE restart, with new engine credentials that
    // keep the shard prefix (so binding requests from new addresses still route).
    let restart = after
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Offer(sd) => Some(sd.sdp.clone()),
            _ => None,
        })
        .expect("an ICE-restart offer on the subscriber connection");
    let (old, new) = (ufrag(&first_offer), ufrag(&restart));
    assert_ne!(old, new, "the offer restarts ICE");
    assert_eq!(old[..2], new[..2], "the shard prefix is kept");
    let (publisher, subscriber) = sim
        .server
        .session_peers(sim.clients[speaker].session.unwrap())
        .unwrap();
    let subscriber = subscriber.unwrap();
    let shard = usize::from(subscriber.shard().0);
    assert_eq!(sim.shards[shard].ice_ufrag(subscriber), Some(new.as_str()));
    // The publisher's own ICE restart was answered with engine credentials too.
    let publisher = publisher.unwrap();
    let answer = after
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Answer(sd) => Some(sd.sdp.clone()),
            _ => None,
        })
        .expect("an answer to the ICE-restart publisher offer");
    let pshard = usize::from(publisher.shard().0);
    assert_eq!(
        sim.shards[pshard].ice_ufrag(publisher),
        Some(ufrag(&answer).as_str())
    );
    assert_eq!(
        ufrag(&answer)[..2],
        format!("{:02x}", publisher.shard().0),
        "shard prefix"
    );

    // Same participant, same track; the listeners hear it again over the restarted ICE.
    let ps = sim.participants("r");
    assert_eq!(ps.len(), 3);
    let p = ps.iter().find(|p| p.identity == "speaker").unwrap();
    assert_eq!(p.sid, me.sid);
    assert_eq!(p.tracks.len(), 1);
    sim.speak(speaker, 50);
    sim.run_for(SECOND);
    for (i, &l) in listeners.iter().enumerate() {
        let new = sim.clients[l].heard.len() - heard_before[i];
        assert!(
            new >= 45,
            "listener {l} heard {new} new packets of at least 50"
        );
    }
    // Nobody saw it leave or join again.
    for &l in &listeners {
        let states = states_of(&sim.clients[l].log, "speaker");
        assert!(
            !states.contains(&(State::Disconnected as i32)),
            "listener {l} saw {states:?}"
        );
    }
    let presence = |events: Vec<String>| -> Vec<String> {
        events
            .into_iter()
            .filter(|e| e.starts_with("participant_") || e.starts_with("track_"))
            .collect()
    };
    assert_eq!(
        presence(events_about(&sim, "speaker")),
        presence(events_before),
        "no leave or join in the webhooks"
    );
    sim.check_invariants().unwrap();
}

#[test]
fn a_held_session_expires_after_the_departure_timeout_and_then_cannot_resume() {
    let mut sim = world(22);
    let (speaker, listeners) = stage(&mut sim, 1);
    let l0 = listeners[0];
    sim.disconnect(l0);
    // Longer than the engine's ICE-lite timeout (15 s), shorter than the departure timeout
    // (20 s): still held, nobody told.
    sim.run_for(18 * SECOND);
    assert!(sim.participants("r").iter().any(|p| p.identity == "l0"));
    assert!(!states_of(&sim.clients[speaker].log, "l0").contains(&(State::Disconnected as i32)));
    assert!(!events_about(&sim, "l0").contains(&"participant_left".to_owned()));
    sim.check_invariants().unwrap();

    // Past it: gone, and the speaker (who sees listeners) sees it leave.
    sim.run_for(4 * SECOND);
    assert!(!sim.participants("r").iter().any(|p| p.identity == "l0"));
    let last = states_of(&sim.clients[speaker].log, "l0");
    assert_eq!(last.last(), Some(&(State::Disconnected as i32)), "{last:?}");
    assert!(events_about(&sim, "l0").contains(&"participant_left".to_owned()));
    assert_eq!(sim.server.stats().sessions, 1);
    sim.check_invariants().unwrap();

    // A late resume is told to rejoin in full, which works.
    let log_len = sim.clients[l0].log.len();
    sim.resume(l0).expect("answered");
    let leave = sim.clients[l0].log[log_len..]
        .iter()
        .find_map(|m| match m {
            signal_response::Message::Leave(l) => Some(l.clone()),
            _ => None,
        })
        .expect("told to rejoin");
    assert_eq!(leave.action, lk::leave_request::Action::Reconnect as i32);
    assert_eq!(leave.reason, lk::DisconnectReason::StateMismatch as i32);
    assert!(sim.clients[l0].closed.is_some());
    let again = sim.join("r", "l0", false);
    let up = sim.run_until(10 * SECOND, |s| s.clients[again].subscriber.connected);
    assert!(up);
    assert_ne!(
        sim.clients[again].me().unwrap().sid,
        sim.clients[l0].me().unwrap().sid
    );
    sim.check_invariants().unwrap();
}

#[test]
fn a_resume_with_a_token_of_another_identity_is_refused() {
    let mut sim = world(23);
    let (_speaker, listeners) = stage(&mut sim, 2);
    let (l0, l1) = (listeners[0], listeners[1]);
    let sid = sim.clients[l0].me().unwrap().sid;
    sim.disconnect(l0);
    sim.run_for(SECOND);
    // l1's valid token cannot take over l0's held session.
    let refused = sim.resume_as(l0, "l1").expect_err("refused");
    assert_eq!(refused.status, 403);
    assert!(sim.clients[l1].is_open(), "l1 itself is untouched");
    let ps = sim.participants("r");
    assert_eq!(ps.iter().filter(|p| p.identity == "l1").count(), 1);
    // The held session is untouched and its owner can still resume it.
    sim.resume(l0).expect("its owner resumes");
    sim.run_for(SECOND);
    assert!(sim.clients[l0].is_open());
    let p = sim.participants("r");
    assert_eq!(p.iter().find(|p| p.identity == "l0").unwrap().sid, sid);
    sim.check_invariants().unwrap();
}

#[test]
fn a_resume_of_a_session_whose_old_connection_is_still_open_moves_it() {
    let mut sim = world(24);
    let (_speaker, listeners) = stage(&mut sim, 1);
    let l0 = listeners[0];
    let old = sim.clients[l0].session.unwrap();
    // The client gave up on a connection the server still thinks open.
    sim.resume(l0).expect("resumed");
    sim.run_for(SECOND);
    assert!(sim.clients[l0].is_open());
    assert_ne!(sim.clients[l0].session, Some(old));
    assert!(!sim.server.sessions().any(|s| s == old));
    assert_eq!(sim.server.stats().sessions, 2);
    sim.check_invariants().unwrap();
}

#[test]
fn a_draining_server_holds_nobody() {
    let mut sim = world(25);
    let (_speaker, listeners) = stage(&mut sim, 2);
    let (l0, l1) = (listeners[0], listeners[1]);
    // l0 is away (held) when the drain starts: it cannot be told nor resume, so it ends now.
    sim.disconnect(l0);
    sim.run_for(SECOND);
    assert!(sim.participants("r").iter().any(|p| p.identity == "l0"));
    sim.admin(AdminOp::Drain).unwrap();
    assert!(!sim.participants("r").iter().any(|p| p.identity == "l0"));
    // l1 is told to leave; its connection then closes without a leave: gone, not held.
    let leave = sim.clients[l1].leave().expect("told to leave");
    assert_eq!(leave.reason, lk::DisconnectReason::ServerShutdown as i32);
    sim.disconnect(l1);
    assert!(!sim.participants("r").iter().any(|p| p.identity == "l1"));
    sim.check_invariants().unwrap();
}

/// Every token the client of `c` was sent in a `RefreshToken`, oldest first.
fn refreshed(sim: &Sim, c: usize) -> Vec<String> {
    sim.clients[c]
        .log
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::RefreshToken(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Connected clients get a fresh token every `every` (LiveKit's `refresh_token`), for their
/// identity and room, with the permissions they have at that moment and the key their own token
/// named, valid for `ttl`: so a client whose first token has expired can still resume or rejoin,
/// and never with a permission taken from it. A held session gets none.
#[test]
fn connected_clients_get_fresh_tokens_with_the_permissions_they_have_now() {
    const SECRET: &str = "a-long-enough-simulated-secret-0123456789";
    let keys = Arc::new(ApiKeys::new([(SIM_API_KEY, SECRET)]));
    let config = ServerConfig {
        token_refresh: Some(TokenRefresh {
            keys: keys.clone(),
            every: 60 * SECOND,
            ttl: 120 * SECOND,
        }),
        ..ServerConfig::default()
    };
    let start = Instant::now();
    let mut sim = Sim::new(start, 11, 2, config);
    let (speaker, listeners) = stage(&mut sim, 2);
    let lee = listeners[0];
    sim.run_for(50 * SECOND);
    assert!(refreshed(&sim, lee).is_empty(), "nothing before a minute");

    // Lee is promoted; the next token says so.
    let update = ParticipantUpdate {
        permission: Some(lk::ParticipantPermission {
            can_publish: true,
            can_subscribe: true,
            can_publish_data: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    sim.admin(AdminOp::UpdateParticipant {
        room: "r".into(),
        identity: "l0".into(),
        update: Box::new(update),
    })
    .unwrap();
    sim.run_for(15 * SECOND);
    let tokens = refreshed(&sim, lee);
    assert_eq!(tokens.len(), 1, "one refresh after a minute");
    let now_unix = |sim: &Sim| {
        let elapsed = sim.now.duration_since(start).as_secs();
        u64::try_from(START_UNIX_MS / 1000).unwrap() + elapsed
    };
    let claims = keys.verify(&tokens[0], now_unix(&sim)).unwrap();
    assert_eq!(claims.sub, "l0");
    assert_eq!(claims.iss, SIM_API_KEY);
    assert_eq!(claims.video.room, "r");
    assert!(claims.video.room_join);
    assert_eq!(claims.video.can_publish, Some(true));
    assert_eq!(claims.exp - claims.nbf, 120);
    // The other listener's token still says listener.
    let other = refreshed(&sim, listeners[1]);
    let claims = keys.verify(&other[0], now_unix(&sim)).unwrap();
    assert_eq!(claims.sub, "l1");
    assert_eq!(claims.video.can_publish, Some(false));
    assert_eq!(refreshed(&sim, speaker).len(), 1);

    // A held session gets none; the others keep getting theirs.
    sim.disconnect(lee);
    sim.run_for(70 * SECOND);
    assert_eq!(refreshed(&sim, lee).len(), 1, "none while held");
    assert_eq!(refreshed(&sim, listeners[1]).len(), 2);
}

/// Whether each participant sid speaks, as a client folding every `SpeakersChanged` of `log`
/// in order (livekit-client's merge) believes.
fn speaking(log: &[signal_response::Message]) -> std::collections::BTreeMap<String, bool> {
    let mut state = std::collections::BTreeMap::new();
    for m in log {
        if let signal_response::Message::SpeakersChanged(c) = m {
            for s in &c.speakers {
                state.insert(s.sid.clone(), s.active);
            }
        }
    }
    state
}

#[test]
fn a_resumed_listener_learns_where_the_speakers_stand_after_missing_their_changes() {
    let mut sim = world(23);
    let (speaker, listeners) = stage(&mut sim, 1);
    let listener = listeners[0];
    let sid = sim.clients[speaker].me().unwrap().sid;
    sim.speak(speaker, 50);
    assert_eq!(speaking(&sim.clients[listener].log).get(&sid), Some(&true));

    // Away while the speaker stops: the change goes nowhere.
    sim.disconnect(listener);
    sim.run_for(3 * SECOND);
    assert_eq!(speaking(&sim.clients[listener].log).get(&sid), Some(&true));
    let log_len = sim.clients[listener].log.len();
    sim.resume(listener).expect("resumed");
    sim.run_for(SECOND);
    assert_eq!(
        speaking(&sim.clients[listener].log).get(&sid),
        Some(&false),
        "told on resuming that the speaker stopped"
    );
    // After the update that (re)introduces the participants it names.
    let after = &sim.clients[listener].log[log_len..];
    let position = |f: &dyn Fn(&signal_response::Message) -> bool| after.iter().position(f);
    let update = position(&|m| matches!(m, signal_response::Message::Update(_))).unwrap();
    let speakers = position(&|m| matches!(m, signal_response::Message::SpeakersChanged(_)));
    assert!(speakers.unwrap() > update, "{after:?}");

    // Away while the speaker starts: told on resuming that she speaks.
    sim.disconnect(listener);
    sim.speak(speaker, 50);
    sim.resume(listener).expect("resumed again");
    sim.run_for(Duration::from_millis(200));
    assert_eq!(speaking(&sim.clients[listener].log).get(&sid), Some(&true));
    sim.check_invariants().unwrap();
}
