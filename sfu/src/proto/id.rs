//! Identifiers the engine hands out. They are plain data, cheap to copy and hash.

use std::fmt;

use str0m::media::Mid;

/// Which engine shard (one per core in the shell) owns a peer and the tracks it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ShardId(pub u16);

/// A WebRTC peer connection inside the engine.
///
/// The owning shard is encoded in the id, so any shard (or the shell) can tell where a peer and
/// its tracks live without a lookup.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(u64);

impl PeerId {
    /// The peer `index` (48 bits; higher bits are dropped) of `shard`. The engine's owner
    /// chooses the ids of the peers it creates with [`EngineCommand`](super::EngineCommand)s,
    /// so it can file a peer before the engine has seen it.
    pub fn new(shard: ShardId, index: u64) -> Self {
        PeerId((u64::from(shard.0) << 48) | (index & 0xffff_ffff_ffff))
    }

    /// The shard that owns this peer.
    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> 48) as u16)
    }

    /// The index it was created with (without the shard).
    pub fn index(self) -> u64 {
        self.0 & 0xffff_ffff_ffff
    }

    /// The raw value, stable for the lifetime of the engine; useful as a map key outside it.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({}:{})", self.shard().0, self.index())
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A published track: the publishing peer and the m-line (mid) it arrives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId {
    /// The publishing peer.
    pub peer: PeerId,
    /// The publisher's m-line.
    pub mid: Mid,
}

impl TrackId {
    /// The shard that receives this track's packets.
    pub fn shard(self) -> ShardId {
        self.peer.shard()
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.peer, self.mid)
    }
}

/// The stream id and track id a subscriber sees in its SDP (`a=msid:<stream> <track>`).
///
/// LiveKit clients expect `stream = "PA_…|TR_…"` and `track = "TR_…"`; the engine only carries
/// the strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaLabel {
    /// The msid stream id.
    pub stream_id: String,
    /// The msid track id.
    pub track_id: String,
}
