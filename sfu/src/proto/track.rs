//! A published track as the engine keeps it: its label, mute state, where its packets go, and
//! the gap counting behind `rtp_lost`.

use super::{MediaLabel, ShardId};

#[derive(Debug)]
pub(super) struct Track {
    pub(super) label: MediaLabel,
    pub(super) muted: bool,
    /// Whether its packets go to the tap (a recording).
    pub(super) tapped: bool,
    pub(super) epoch: u64,
    /// Other shards with subscribers.
    pub(super) relays: Vec<ShardId>,
    /// SSRC and extended sequence number of the newest packet received.
    pub(super) newest: Option<(u32, u64)>,
}

/// Most packets one gap counts as lost; a larger jump is a restarted sender, not loss.
const MAX_COUNTED_GAP: u64 = 1_000;

impl Track {
    /// A track just published under `label`: unmuted, untapped, with no subscribers yet.
    pub(super) fn new(label: MediaLabel) -> Track {
        Track {
            label,
            muted: false,
            tapped: false,
            epoch: 0,
            relays: Vec::new(),
            newest: None,
        }
    }

    /// Notes packet `seq` of `ssrc`; returns how many packets before it never arrived.
    pub(super) fn lost_before(&mut self, ssrc: u32, seq: u64) -> u64 {
        match self.newest {
            Some((s, newest)) if s == ssrc => {
                if seq <= newest {
                    // Late or repeated: it filled (part of) a gap already counted.
                    return 0;
                }
                self.newest = Some((ssrc, seq));
                let gap = seq - newest - 1;
                if gap > MAX_COUNTED_GAP { 0 } else { gap }
            }
            _ => {
                self.newest = Some((ssrc, seq));
                0
            }
        }
    }
}
