//! Shared by the tests of the signaling core without sockets (`proto::Server` on a virtual
//! clock): draining its outputs and the claims of a token.
#![allow(dead_code)]

use std::time::Instant;

use livekit_protocol as lk;
use livekit_protocol::signal_response;
use stoa_sfu::str0m::RtcConfig;
use stoa_sfu::str0m::change::SdpOffer;
use stoa_sfu::str0m::media::{Direction, MediaKind};
use stoa_sfu::{EngineCommand, MediaLabel, PeerId, TrackId};
use stoa_signaling::join::parse_query;
use stoa_signaling::proto::{Output, Server, ServerConfig, SessionId};
use stoa_signaling::token::{Claims, VideoGrants};

/// Every output up to the next timeout.
pub fn drain(s: &mut Server) -> Vec<Output> {
    let mut out = Vec::new();
    loop {
        match s.poll_output() {
            Output::Timeout(_) => return out,
            o => out.push(o),
        }
    }
}

/// Fire the timers at `now` until nothing more is due then (a tick's flush goes out a slice
/// of sessions per call): every output on the way.
pub fn fire(s: &mut Server, now: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    loop {
        s.handle_timeout(now);
        loop {
            match s.poll_output() {
                Output::Timeout(t) if t > now => return out,
                Output::Timeout(_) => break,
                o => out.push(o),
            }
        }
    }
}

/// The claims of a token for `identity` to join `room`, allowed to publish or not.
pub fn claims(identity: &str, room: &str, publish: bool) -> Claims {
    Claims {
        sub: identity.into(),
        iss: "key".into(),
        video: VideoGrants {
            room_join: true,
            room: room.into(),
            can_publish: Some(publish),
            can_subscribe: Some(true),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A core at `t0` that reports events (webhooks and observer events).
pub fn server(t0: Instant) -> Server {
    let config = ServerConfig {
        events: true,
        ..ServerConfig::default()
    };
    Server::new(config, t0, 1_700_000_000_000)
}

/// A legacy (two-connection) client joins; returns its session and subscriber peer.
pub fn join(s: &mut Server, now: Instant, c: Claims) -> (SessionId, PeerId) {
    let params = parse_query("access_token=x&protocol=17&auto_subscribe=1").unwrap();
    let session = s.connect(now, c, params).unwrap();
    let (_, subscriber) = s.session_peers(session).unwrap();
    (session, subscriber.unwrap())
}

/// An offer as a relay peer would make it.
pub fn some_offer(now: Instant) -> SdpOffer {
    let mut rtc = RtcConfig::new().build(now);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    api.apply().unwrap().0
}

/// Participant snapshots `session` was sent among `outs` (updates and its join response).
pub fn updates_for(outs: &[Output], session: SessionId) -> Vec<lk::ParticipantInfo> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(to, m) if *to == session => match &m.message {
                Some(signal_response::Message::Update(u)) => Some(u.participants.clone()),
                Some(signal_response::Message::Join(j)) => Some(j.other_participants.clone()),
                _ => None,
            },
            _ => None,
        })
        .flatten()
        .collect()
}

/// The engine subscriptions among `outs`: (track, label, peers).
pub fn subscribes(outs: &[Output]) -> Vec<(TrackId, MediaLabel, Vec<PeerId>)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Engine(EngineCommand::Subscribe {
                track,
                label,
                peers,
            }) => Some((*track, label.clone(), peers.clone())),
            _ => None,
        })
        .collect()
}
