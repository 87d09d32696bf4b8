//! Read-only counts of the session service, for the shell's metrics.

use stoa_sfu::shell::traffic::HistogramSnapshot;
use tokio::sync::oneshot;

use super::{Msg, Service, ServiceError, Signaling};

/// Sizes of the session service's state at one instant. Plain data; no room or user ids.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SignalingStats {
    /// Rooms that exist (including empty ones waiting for their timeout).
    pub rooms: u64,
    /// Open WebSocket sessions.
    pub sessions: u64,
    /// Participants allowed to publish.
    pub publishers: u64,
    /// Participants that may only listen.
    pub listeners: u64,
    /// Published tracks, over every room.
    pub tracks: u64,
    /// Join latency: from a session's join (WebSocket accepted, token checked) to its media
    /// connection being up (ICE and DTLS connected), one observation per participant.
    pub joins: HistogramSnapshot,
}

impl Signaling {
    /// Counts of rooms, sessions, participants by role and tracks.
    pub async fn stats(&self) -> Result<SignalingStats, ServiceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Stats { reply })
            .map_err(|_| ServiceError::Stopped)?;
        rx.await.map_err(|_| ServiceError::Stopped)
    }
}

impl Service {
    pub(super) fn stats(&self) -> SignalingStats {
        let mut stats = SignalingStats {
            rooms: self.rooms.len() as u64,
            sessions: self.sessions.len() as u64,
            joins: self.join_latency.snapshot(),
            ..SignalingStats::default()
        };
        for participant in self.rooms.values().flat_map(|r| r.participants.values()) {
            if participant.can_publish() {
                stats.publishers += 1;
            } else {
                stats.listeners += 1;
            }
            stats.tracks += participant.tracks.len() as u64;
        }
        stats
    }
}
