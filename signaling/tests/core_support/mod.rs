//! Shared by the tests of the signaling core without sockets (`proto::Server` on a virtual
//! clock): draining its outputs and the claims of a token.
#![allow(dead_code)]

use stoa_signaling::proto::{Output, Server};
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
