//! `/rtc/v1`, one peer connection per client, in the simulated world (`stoa_signaling::sim`):
//! the join with the publisher offer inside it, answers that say which track each m-line
//! carries (`mid_to_track_id`), `MediaSectionsRequirement` when a client has too few m-lines,
//! data on the client's own channels, resume, and both protocols in one room. Seeded, bounded,
//! no sleeps.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, deprecated)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::participant_info::State;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use stoa_signaling::proto::ServerConfig;
use stoa_signaling::sim::Sim;

const SECOND: Duration = Duration::from_secs(1);

fn world(seed: u64) -> Sim {
    Sim::new(Instant::now(), seed, 2, ServerConfig::default())
}

/// Runs until client `c`'s one connection is up.
fn connect(sim: &mut Sim, c: usize) {
    let ok = sim.run_until(10 * SECOND, |s| s.clients[c].publisher.connected);
    assert!(ok, "client {c}'s connection did not come up");
}

fn track_sid(sim: &Sim, c: usize) -> String {
    sim.clients[c]
        .find(|m| match m {
            signal_response::Message::TrackPublished(t) => t.track.as_ref().map(|t| t.sid.clone()),
            _ => None,
        })
        .expect("no TrackPublished")
}

/// Every answer client `c` received.
fn answers(sim: &Sim, c: usize) -> Vec<lk::SessionDescription> {
    sim.clients[c]
        .log
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::Answer(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

/// The mid that, in the latest answer naming it, carries `track`.
fn mid_of(sim: &Sim, c: usize, track: &str) -> Option<String> {
    answers(sim, c).iter().rev().find_map(|a| {
        a.mid_to_track_id
            .iter()
            .find(|(_, t)| *t == track)
            .map(|(m, _)| m.clone())
    })
}

/// Packets client `c` heard from the client with tag byte `from`, by mid.
fn heard_from(sim: &Sim, c: usize, from: usize) -> HashMap<String, usize> {
    let mut by_mid = HashMap::new();
    for (mid, tag, _) in &sim.clients[c].heard {
        if usize::from(*tag) == from {
            *by_mid
                .entry(mid.map(|m| m.to_string()).unwrap_or_default())
                .or_default() += 1;
        }
    }
    by_mid
}

fn requirements(sim: &Sim, c: usize) -> Vec<lk::MediaSectionsRequirement> {
    sim.clients[c]
        .log
        .iter()
        .filter_map(|m| match m {
            signal_response::Message::MediaSectionsRequirement(r) => Some(*r),
            _ => None,
        })
        .collect()
}

#[test]
fn v1_join_answers_the_offer_in_the_join_request_and_never_offers() {
    let mut sim = world(11);
    let a = sim.join_v1("r", "a", true, 3);
    connect(&mut sim, a);
    let client = &sim.clients[a];
    let signal_response::Message::Join(join) = &client.log[0] else {
        panic!("first message: {:?}", client.log[0]);
    };
    assert!(
        !join.subscriber_primary,
        "one connection: the client offers"
    );
    // The offer sent inside the join request is answered with its id.
    let first = answers(&sim, a);
    assert_eq!(first.first().map(|a| a.id), Some(1), "{first:?}");
    assert!(
        first[0].mid_to_track_id.is_empty(),
        "nothing subscribed yet"
    );
    // Its recvonly m-lines carry nothing yet: the answer leaves them inactive.
    assert_eq!(
        first[0].sdp.matches("a=inactive").count(),
        3,
        "{}",
        first[0].sdp
    );
    assert!(!first[0].sdp.contains("a=sendonly"), "{}", first[0].sdp);
    // Connected on its one connection: active, joined once.
    let ok = sim.run_until(SECOND, |s| {
        s.clients[a]
            .me_now()
            .is_some_and(|p| p.state == State::Active as i32)
    });
    assert!(ok, "a never became active");
    assert_eq!(sim.seen.join_latencies.len(), 1);
    assert_eq!(sim.server.stats().joins_single, 1);
    assert_eq!(sim.server.stats().joins_legacy, 0);
    // The client publishes on it: AddTrack, a re-offer with its microphone, an answer.
    sim.publish(a);
    let ok = sim.run_until(5 * SECOND, |s| {
        s.clients[a].me_now().is_some_and(|p| !p.tracks.is_empty())
    });
    assert!(ok, "a's track was never announced to itself");
    assert!(answers(&sim, a).iter().any(|x| x.id == 2));
    // The server never sent an offer.
    assert!(
        !sim.clients[a]
            .log
            .iter()
            .any(|m| matches!(m, signal_response::Message::Offer(_))),
        "an offer on /rtc/v1"
    );
}

/// The m-line of `sdp` whose mid is `mid`, and whether the session's BUNDLE group has it.
fn m_line_of(sdp: &str, mid: &str) -> (String, bool) {
    let section = sdp
        .split("m=")
        .skip(1)
        .find(|s| s.contains(&format!("a=mid:{mid}\r\n")))
        .unwrap_or_else(|| panic!("no mid {mid} in {sdp}"));
    let bundled = sdp
        .lines()
        .find(|l| l.starts_with("a=group:BUNDLE"))
        .is_some_and(|l| l.split_whitespace().skip(1).any(|m| m == mid));
    (format!("m={section}"), bundled)
}

/// The mids of `sdp`'s video m-lines.
fn video_mids(sdp: &str) -> Vec<String> {
    sdp.split("m=video")
        .skip(1)
        .filter_map(|s| s.split("a=mid:").nth(1))
        .filter_map(|s| s.split("\r\n").next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn offered_video_m_lines_are_answered_inactive_not_rejected() {
    // livekit-client's first offer has recvonly video m-lines too. Rejected (port 0), they
    // would stop its transceivers, and an offer it made before applying the answer would no
    // longer apply.
    let mut sim = world(17);
    let speaker = sim.join_v1("r", "s", true, 3);
    connect(&mut sim, speaker);
    sim.publish(speaker);
    sim.run_for(SECOND);
    let l = sim.join_v1_with_videos("r", "l", 1, 2);
    connect(&mut sim, l);
    let inactive_and_bundled = |sdp: &str| {
        let videos = video_mids(sdp);
        assert_eq!(videos.len(), 2, "{sdp}");
        for mid in videos {
            let (section, bundled) = m_line_of(sdp, &mid);
            assert!(section.starts_with("m=video 9 "), "{section}");
            assert!(section.contains("a=inactive\r\n"), "{section}");
            assert!(section.contains("a=rtpmap:"), "{section}");
            assert!(bundled, "video mid {mid} left out of the bundle: {sdp}");
        }
    };
    let first = answers(&sim, l);
    inactive_and_bundled(&first[0].sdp);
    // The audio m-line carries the speaker, and the listener hears her.
    let track = track_sid(&sim, speaker);
    assert!(mid_of(&sim, l, &track).is_some(), "{first:?}");
    // A second speaker: no audio m-line left, the client offers again with its videos (an
    // offer on a connection that exists), and they are answered the same.
    let second = sim.join_v1("r", "s2", true, 3);
    connect(&mut sim, second);
    sim.publish(second);
    let t2 = track_sid(&sim, second);
    let ok = sim.run_until(5 * SECOND, |s| mid_of(s, l, &t2).is_some());
    assert!(ok, "the second track never reached an answer");
    let later = answers(&sim, l);
    assert!(later.len() > first.len(), "{later:?}");
    inactive_and_bundled(&later[later.len() - 1].sdp);
    sim.speak(speaker, 50);
    sim.speak(second, 50);
    sim.run_for(SECOND);
    for from in [speaker, second] {
        let heard = heard_from(&sim, l, from);
        assert!(
            heard.values().sum::<usize>() >= 45,
            "from {from}: {heard:?}"
        );
    }
    sim.check_invariants().unwrap();
}

#[test]
fn subscribed_audio_arrives_on_the_m_line_the_answer_names() {
    let mut sim = world(12);
    let speaker = sim.join_v1("r", "speaker", true, 3);
    connect(&mut sim, speaker);
    sim.publish(speaker);
    sim.run_for(SECOND);
    let listener = sim.join_v1("r", "listener", false, 3);
    connect(&mut sim, listener);
    let tsid = track_sid(&sim, speaker);
    // The listener knew the speaker and its track before the answer that names its m-line.
    let named_at = sim.clients[listener]
        .log
        .iter()
        .position(|m| matches!(m, signal_response::Message::Answer(a) if a.mid_to_track_id.values().any(|t| *t == tsid)))
        .expect("no answer names the track");
    let known_at = sim.clients[listener]
        .log
        .iter()
        .position(|m| match m {
            signal_response::Message::Join(j) => j
                .other_participants
                .iter()
                .any(|p| p.tracks.iter().any(|t| t.sid == tsid)),
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .any(|p| p.tracks.iter().any(|t| t.sid == tsid)),
            _ => false,
        })
        .expect("track never announced");
    assert!(
        known_at < named_at,
        "announced at {known_at}, named at {named_at}"
    );
    let mid = mid_of(&sim, listener, &tsid).unwrap();
    // That m-line is sendonly with the msid livekit-client splits into participant and track.
    let speaker_sid = sim.clients[speaker].me().unwrap().sid;
    let answer = &sim.clients[listener].log[named_at];
    let signal_response::Message::Answer(answer) = answer else {
        unreachable!()
    };
    let section = answer
        .sdp
        .split("\r\nm=")
        .find(|m| m.contains(&format!("\r\na=mid:{mid}\r\n")))
        .unwrap();
    assert!(section.contains("\r\na=sendonly"), "{section}");
    assert!(
        section.contains(&format!("\r\na=msid:{speaker_sid}|{tsid} {tsid}")),
        "{section}"
    );
    // The speaker's track was bound to a free m-line before the answer to the offer in the
    // join request was written: that first answer names it, and no second round is asked for.
    assert_eq!(answer.id, 1, "named in answer {}", answer.id);
    let reqs = requirements(&sim, listener);
    assert!(reqs.is_empty(), "{reqs:?}");
    sim.speak(speaker, 50);
    sim.run_for(SECOND);
    let heard = heard_from(&sim, listener, speaker);
    assert!(
        heard.get(&mid).copied().unwrap_or(0) >= 45,
        "heard {heard:?}, want 50 on mid {mid}"
    );
    assert_eq!(heard.len(), 1, "{heard:?}");
}

#[test]
fn a_second_speaker_with_no_m_line_left_asks_the_client_for_one() {
    let mut sim = world(13);
    // The listener offers a single receiving m-line.
    let listener = sim.join_v1("r", "listener", false, 1);
    connect(&mut sim, listener);
    let first = sim.join_v1("r", "s1", true, 3);
    connect(&mut sim, first);
    sim.publish(first);
    let t1 = track_sid(&sim, first);
    let ok = sim.run_until(5 * SECOND, |s| mid_of(s, listener, &t1).is_some());
    assert!(ok, "the first track never reached an answer");
    // A bound m-line the client was not told about yet: a requirement for none, a re-offer.
    assert_eq!(
        requirements(&sim, listener),
        vec![lk::MediaSectionsRequirement {
            num_audios: 0,
            num_videos: 0
        }]
    );
    let second = sim.join_v1("r", "s2", true, 3);
    connect(&mut sim, second);
    sim.publish(second);
    let t2 = track_sid(&sim, second);
    let ok = sim.run_until(5 * SECOND, |s| mid_of(s, listener, &t2).is_some());
    assert!(ok, "the second track never reached an answer");
    // No m-line was left: the server asked for one more audio m-line, and it came.
    let reqs = requirements(&sim, listener);
    assert!(
        reqs.iter().any(|r| r.num_audios == 1 && r.num_videos == 0),
        "{reqs:?}"
    );
    assert_eq!(sim.clients[listener].recv_mids.len(), 2);
    let (m1, m2) = (
        mid_of(&sim, listener, &t1).unwrap(),
        mid_of(&sim, listener, &t2).unwrap(),
    );
    assert_ne!(m1, m2);
    // Every answer's ids increase and echo the offers'; the latest maps both tracks.
    let ids: Vec<u32> = answers(&sim, listener).iter().map(|a| a.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let last = answers(&sim, listener).pop().unwrap();
    let mapped: HashSet<&String> = last.mid_to_track_id.values().collect();
    assert!(mapped.contains(&t1) && mapped.contains(&t2), "{last:?}");
    // Both are heard, each on its own m-line.
    for _ in 0..40 {
        sim.speak(first, 1);
        sim.speak(second, 1);
    }
    sim.run_for(SECOND);
    let from1 = heard_from(&sim, listener, first);
    let from2 = heard_from(&sim, listener, second);
    assert!(from1.get(&m1).copied().unwrap_or(0) >= 35, "{from1:?}");
    assert!(from2.get(&m2).copied().unwrap_or(0) >= 35, "{from2:?}");
    assert_eq!((from1.len(), from2.len()), (1, 1), "{from1:?} {from2:?}");
    sim.check_invariants().unwrap();
}

#[test]
fn both_protocols_share_a_room() {
    let mut sim = world(14);
    let v1 = sim.join_v1("r", "v1-speaker", true, 3);
    let legacy = sim.join("r", "legacy-speaker", true);
    let ok = sim.run_until(10 * SECOND, |s| {
        s.clients[v1].publisher.connected && s.clients[legacy].subscriber.connected
    });
    assert!(ok, "connections did not come up");
    sim.publish(v1);
    sim.publish(legacy);
    let ok = sim.run_until(10 * SECOND, |s| s.clients[legacy].publisher.connected);
    assert!(ok, "legacy publisher did not connect");
    let t_legacy = track_sid(&sim, legacy);
    let ok = sim.run_until(5 * SECOND, |s| mid_of(s, v1, &t_legacy).is_some());
    assert!(ok, "the legacy track never reached the v1 client");
    for _ in 0..40 {
        sim.speak(v1, 1);
        sim.speak(legacy, 1);
    }
    sim.run_for(SECOND);
    let at_legacy: usize = heard_from(&sim, legacy, v1).values().sum();
    let at_v1: usize = heard_from(&sim, v1, legacy).values().sum();
    assert!(at_legacy >= 35, "the legacy client heard {at_legacy} of 40");
    assert!(at_v1 >= 35, "the v1 client heard {at_v1} of 40");
    assert_eq!(sim.server.stats().joins_single, 1);
    assert_eq!(sim.server.stats().joins_legacy, 1);

    // Data: sent on the v1 client's own `_reliable`, received on it too.
    assert!(sim.send_data(v1, b"from v1"));
    assert!(sim.send_data(legacy, b"from legacy"));
    sim.run_for(SECOND);
    let got = |c: usize, want: &[u8]| {
        sim.clients[c].data.iter().any(|d| {
            lk::DataPacket::decode(d.as_slice()).is_ok_and(|p| match p.value {
                Some(lk::data_packet::Value::User(u)) => u.payload == want,
                _ => false,
            })
        })
    };
    assert!(
        got(legacy, b"from v1"),
        "the legacy client missed the v1 data"
    );
    assert!(
        got(v1, b"from legacy"),
        "the v1 client missed the legacy data"
    );
    sim.check_invariants().unwrap();
}

#[test]
fn a_v1_session_resumes_on_its_one_connection() {
    let mut sim = world(15);
    let speaker = sim.join_v1("r", "speaker", true, 3);
    connect(&mut sim, speaker);
    sim.publish(speaker);
    let listener = sim.join_v1("r", "listener", false, 3);
    connect(&mut sim, listener);
    let sid = sim.clients[listener].me().unwrap().sid;
    sim.speak(speaker, 10);
    sim.disconnect(listener);
    sim.run_for(2 * SECOND);
    sim.resume(listener).expect("resume refused");
    // A ReconnectResponse first, the same sid, and the client's ICE-restart offer answered.
    let reconnects = sim.clients[listener]
        .log
        .iter()
        .filter(|m| matches!(m, signal_response::Message::Reconnect(_)))
        .count();
    assert_eq!(reconnects, 1);
    assert_eq!(sim.clients[listener].me().unwrap().sid, sid);
    let before: usize = heard_from(&sim, listener, speaker).values().sum();
    sim.speak(speaker, 40);
    sim.run_for(SECOND);
    let after: usize = heard_from(&sim, listener, speaker).values().sum();
    assert!(after >= before + 35, "heard {before} then {after}");
    // Nobody saw the listener leave.
    let left = sim
        .seen
        .events
        .iter()
        .any(|(e, who)| e == "participant_left" && who == "listener");
    assert!(!left);
    assert_eq!(sim.server.stats().joins_single, 2, "a resume is not a join");
}

#[test]
fn an_offer_sent_after_the_join_creates_the_connection_and_subscribes_it() {
    let mut sim = world(16);
    let speaker = sim.join_v1("r", "speaker", true, 3);
    connect(&mut sim, speaker);
    sim.publish(speaker);
    sim.run_for(SECOND);
    let tsid = track_sid(&sim, speaker);
    // Firefox's order: the join request without an offer, then the offer on its own.
    let listener = sim.join_v1_offer_after("r", "listener", false, 3);
    connect(&mut sim, listener);
    let ok = sim.run_until(5 * SECOND, |s| mid_of(s, listener, &tsid).is_some());
    assert!(ok, "the speaker's track never reached an answer");
    assert_eq!(answers(&sim, listener).first().map(|a| a.id), Some(1));
    sim.speak(speaker, 30);
    sim.run_for(SECOND);
    let heard: usize = heard_from(&sim, listener, speaker).values().sum();
    assert!(heard >= 25, "heard {heard} of 30");
    sim.check_invariants().unwrap();
}

#[test]
fn a_listeners_first_offer_that_sends_is_refused_and_the_next_one_still_subscribes() {
    use stoa_sfu::str0m::media::{Direction, MediaKind};
    use stoa_sfu::str0m::{Candidate, RtcConfig};
    use stoa_signaling::sim::SFU_ADDR;

    let mut sim = world(17);
    let speaker = sim.join_v1("r", "speaker", true, 3);
    connect(&mut sim, speaker);
    sim.publish(speaker);
    sim.run_for(SECOND);
    let tsid = track_sid(&sim, speaker);
    let listener = sim.join_v1_without_offer("r", "listener", false, 3);
    // A forged first offer that sends audio, from a participant who may not publish.
    let mut rogue = RtcConfig::new()
        .clear_codecs()
        .enable_opus(true, false)
        .build(sim.now);
    rogue.add_local_candidate(Candidate::host(SFU_ADDR.parse().unwrap(), "udp").unwrap());
    let mut api = rogue.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    let sd = lk::SessionDescription {
        r#type: "offer".into(),
        sdp: offer.to_sdp_string(),
        id: 1,
        ..Default::default()
    };
    sim.request(listener, signal_request::Message::Offer(sd));
    let refused = sim.clients[listener].errors();
    assert!(
        refused
            .iter()
            .any(|r| r.reason == lk::request_response::Reason::NotAllowed as i32),
        "{refused:?}"
    );
    assert!(answers(&sim, listener).is_empty());
    // Its real offer then creates the connection, subscribed to the speaker as if nothing
    // happened.
    sim.send_first_offer(listener);
    connect(&mut sim, listener);
    let ok = sim.run_until(5 * SECOND, |s| mid_of(s, listener, &tsid).is_some());
    assert!(ok, "the speaker's track never reached an answer");
    sim.speak(speaker, 30);
    sim.run_for(SECOND);
    let heard: usize = heard_from(&sim, listener, speaker).values().sum();
    assert!(heard >= 25, "heard {heard} of 30");
    sim.check_invariants().unwrap();
}

#[test]
fn more_m_lines_are_asked_for_only_once_the_connection_is_up() {
    // A client still applying the first answer must not be asked to offer again: livekit-client
    // would start that offer while it sets the first one and fail to set it.
    let mut sim = world(17);
    let s1 = sim.join_v1("r", "s1", true, 3);
    connect(&mut sim, s1);
    sim.publish(s1);
    let s2 = sim.join_v1("r", "s2", true, 3);
    connect(&mut sim, s2);
    sim.publish(s2);
    sim.run_for(SECOND);
    // One receiving m-line for two speakers' tracks.
    let listener = sim.join_v1("r", "listener", false, 1);
    connect(&mut sim, listener);
    let ok = sim.run_until(5 * SECOND, |s| !requirements(s, listener).is_empty());
    assert!(ok, "never asked for the missing m-line");
    assert_eq!(requirements(&sim, listener)[0].num_audios, 1);
    // The first answer named one track; the request for the second came once the client's
    // connection was up (so the client had applied that answer), not right after it.
    let first = answers(&sim, listener);
    assert_eq!(
        first.first().map(|a| a.mid_to_track_id.len()),
        Some(1),
        "{first:?}"
    );
    let when = &sim.clients[listener].asked_when_connected;
    assert!(!when.is_empty() && when.iter().all(|up| *up), "{when:?}");
    // It offers the missing m-line and hears both speakers.
    let (t1, t2) = (track_sid(&sim, s1), track_sid(&sim, s2));
    let ok = sim.run_until(5 * SECOND, |s| {
        mid_of(s, listener, &t1).is_some() && mid_of(s, listener, &t2).is_some()
    });
    assert!(ok, "both tracks never named: {:?}", answers(&sim, listener));
    sim.speak(s1, 25);
    sim.speak(s2, 25);
    sim.run_for(SECOND);
    assert!(!heard_from(&sim, listener, s1).is_empty(), "s1 not heard");
    assert!(!heard_from(&sim, listener, s2).is_empty(), "s2 not heard");
}

#[test]
fn livekit_clients_track_published_waits_for_its_connection_after_an_offer_in_the_join() {
    // livekit-client republishes its tracks as soon as a full reconnect's join response
    // arrives, while it may still be setting the offer it sent inside the join request; the
    // negotiate() a TrackPublishedResponse starts must find that offer and its answer applied,
    // which they are once its connection is up.
    let mut sim = world(19);
    let a = sim.join_v1_adding_track("r", "a", 3, true);
    connect(&mut sim, a);
    let ok = sim.run_until(SECOND, |s| {
        !s.clients[a].published_when_connected.is_empty()
    });
    assert!(ok, "the TrackPublishedResponse never came");
    assert_eq!(sim.clients[a].published_when_connected, [true]);
    // The response came after the answer to the join's offer, and the track is published in
    // full with the offer that follows it.
    let log = &sim.clients[a].log;
    let answer = log
        .iter()
        .position(|m| matches!(m, signal_response::Message::Answer(_)));
    let published = log
        .iter()
        .position(|m| matches!(m, signal_response::Message::TrackPublished(_)));
    assert!(
        answer.is_some() && answer < published,
        "{answer:?} {published:?}"
    );
    sim.offer_publisher(a, Some("mic-a"));
    let ok = sim.run_until(5 * SECOND, |s| {
        s.clients[a].me_now().is_some_and(|p| !p.tracks.is_empty())
    });
    assert!(ok, "a's track was never announced to itself");
    // A later AddTrack is answered at once.
    sim.request(
        a,
        signal_request::Message::AddTrack(lk::AddTrackRequest {
            cid: "mic-a-2".into(),
            r#type: lk::TrackType::Audio as i32,
            source: lk::TrackSource::Microphone as i32,
            ..Default::default()
        }),
    );
    assert_eq!(sim.clients[a].published_when_connected, [true, true]);

    // Other clients (here: no `sdk`) get the response at once, before their connection is up.
    let b = sim.join_v1_adding_track("r", "b", 3, false);
    assert_eq!(
        sim.clients[b].published_when_connected.first(),
        Some(&false)
    );
}
