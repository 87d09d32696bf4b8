//! `stoa-sfu`: Stoa's media engine.
//!
//! It owns WebRTC peer connections (one str0m [`Rtc`](str0m::Rtc) each, ICE-lite, DTLS with
//! str0m's Rust backend, SRTP AEAD-AES-GCM preferred), demultiplexes datagrams to them in O(1),
//! forwards Opus in RTP mode with per-subscriber sequence and timestamp rewriting, forwards a
//! track only to the slots subscribed to it, detects active speakers from RFC 6464 audio levels
//! and enforces who may publish. It knows peers, tracks and packets, not rooms or roles: the
//! signaling layer drives it with commands and consumes its events.
//!
//! - [`proto`] is the sans-IO core: [`proto::Sfu`] takes `now` and inputs and is polled for
//!   outputs; see its module docs for the run-loop contract and the errors-versus-bugs policy.
//! - `shell` (feature `runtime`, on by default) runs one core per CPU core over UDP sockets
//!   sharing a port (`SO_REUSEPORT`), relays packets between shards by message and batches
//!   sends with `sendmmsg`.
//!
//! The owner drives the engine with [`EngineCommand`]s: data, never waiting for a reply, with
//! peer ids the owner chooses; answers, offers and refusals come back as [`Event`]s.
//!
//! Forwarded packets take a fast path: the engine captures each connection's DTLS-SRTP keys
//! through str0m's pluggable crypto and seals rewritten RTP itself, leaving ICE, DTLS, RTCP and
//! data channels to str0m. Every datagram, str0m's or sealed, leaves through one call into a
//! buffer the caller owns ([`Sfu::poll_datagrams`]).
#![deny(missing_docs)]

pub mod proto;
#[cfg(feature = "runtime")]
pub mod shell;

pub use proto::{
    CommandKind, Datagram, Datagrams, EngineCommand, Event, FastPath, MediaLabel, MediaPacket,
    Output, PeerConfig, PeerId, Publish, Relay, RelayMsg, Routed, Sfu, SfuConfig, SfuError,
    SfuStats, ShardId, SlotId, Tapped, TrackId, UnpublishReason,
};
pub use str0m;
