//! The sans-IO engine: one [`Sfu`] per shard.
//!
//! # Run loop
//!
//! ```text
//! loop {
//!     match sfu.poll_output() {
//!         Output::Event(e)    => hand to signaling,
//!         Output::Relay(r)    => deliver to shard r.to via handle_relay,
//!         Output::Timeout(t)  => sfu.poll_datagrams(&mut queue), send the queue,
//!                                wait for a datagram, a command or t, then call
//!                                handle_receive / handle_command / handle_timeout(now),
//!     }
//! }
//! ```
//!
//! Every method that takes `now` may be called at any time; `poll_output` must be drained
//! until it returns [`Output::Timeout`] before blocking. Every datagram the engine sends, str0m's
//! own (ICE, DTLS, RTCP, SCTP) and the packets the forwarding fast path sealed, leaves through
//! one call, [`Sfu::poll_datagrams`], into a buffer the caller owns, in the order they were
//! produced; it may be called at any time, as often as the caller likes.
//!
//! The owner drives the engine with [`EngineCommand`]s ([`Sfu::handle_command`]): plain data,
//! never waiting for a reply. It chooses the ids of the peers it creates ([`PeerId::new`]);
//! answers, offers and refusals come back as events.
//! The engine never reads a clock, never sleeps and draws randomness (ICE credentials, initial
//! sequence numbers) only from the seed it is given, so a test with simulated time and a fixed
//! seed is fully reproducible.
//!
//! # Forwarding fast path
//!
//! Forwarded audio does not go through str0m's send path (a write, a timer run, the pacer and
//! a full poll of the subscriber's `Rtc` per packet). The engine captures each connection's
//! DTLS-SRTP keys (see `srtp`), writes the rewritten RTP header itself and seals the packet
//! with AEAD-AES-GCM straight into the same queue as str0m's datagrams. str0m still
//! runs ICE, DTLS, RTCP, SCTP and timers on their own schedule. A slot whose connection
//! negotiated AES-CM-SHA1-80, or whose keys or route are unknown, uses str0m's path instead
//! ([`FastPath`]).
//!
//! # Errors versus bugs
//!
//! Input from the network never panics: undecodable datagrams, RTP from peers that may not
//! publish and packets for unknown peers are dropped and counted in [`SfuStats`]. Commands
//! about unknown peers return [`SfuError`] (as events when they came as [`EngineCommand`]s). A peer whose `Rtc` fails is closed and reported
//! as [`Event::Disconnected`]; other peers are untouched.

mod command;
mod datagrams;
pub mod forwarder;
pub mod id;
mod peer;
pub mod speaker;
mod srtp;
mod track;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::ChannelId;
use str0m::crypto::CryptoProvider;
use str0m::ice::{IceCreds, StunMessage};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use str0m::{
    Candidate, Event as RtcEvent, IceConnectionState, Input, Output as RtcOutput, RtcConfig,
};

pub use command::{CommandKind, EngineCommand};
pub use datagrams::{Datagram, Datagrams};
use forwarder::{Rewriter, SourceKey};
pub use id::{MediaLabel, PeerId, ShardId, TrackId};
use peer::{DirectTx, Negotiation, Peer, PeerCounters, SendPath, Slot};
pub use peer::{Publish, SlotId};
use speaker::{SpeakerConfig, SpeakerDetector, SpeakerLevel};
use srtp::{GCM_TAG_LEN, MAX_HEADER_LEN, RtpHeaderOut};
use track::Track;

/// Length of the ICE username fragments the engine hands out. The first two characters carry
/// the owning shard (hex), so any shard can route a STUN request without a shared table.
const UFRAG_LEN: usize = 16;

/// Upper bound on remembered addresses of peers that live on other shards.
const MAX_FOREIGN_ADDRS: usize = 65_536;

/// Default duration of one Opus packet when it cannot be derived.
const OPUS_FRAME: Duration = Duration::from_millis(20);

/// Configuration of one engine shard.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// This shard's id; encoded in every [`PeerId`] and ICE ufrag it creates.
    pub shard: ShardId,
    /// Seed for ICE credentials and initial sequence numbers. Production seeds it from the OS;
    /// tests pass a constant.
    pub seed: [u8; 32],
    /// Active-speaker detection tuning.
    pub speaker: SpeakerConfig,
    /// How often str0m reports per-peer statistics ([`Event::PeerStats`]); `None` for never.
    pub stats_interval: Option<Duration>,
    /// Whether forwarded packets are sealed by the engine (see the module docs).
    pub fast_path: FastPath,
    /// Host candidates of peers created by [`EngineCommand`]s: the shard's advertised socket
    /// addresses.
    pub candidates: Vec<SocketAddr>,
}

/// Whether the engine seals forwarded packets itself or hands each one to str0m.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FastPath {
    /// Seal forwarded packets directly where the connection's keys allow it (the default).
    #[default]
    Enabled,
    /// Send every forwarded packet through str0m's own RTP path (about ten times the CPU per
    /// packet at hundreds of subscribers; for comparison and as a safety switch).
    Disabled,
}

impl SfuConfig {
    /// A config for shard `shard` with default tuning.
    pub fn new(shard: ShardId, seed: [u8; 32]) -> Self {
        SfuConfig {
            shard,
            seed,
            speaker: SpeakerConfig::default(),
            stats_interval: None,
            fast_path: FastPath::Enabled,
            candidates: Vec::new(),
        }
    }
}

/// How a new peer connection is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The engine's addresses the peer may reach (host candidates), usually the shell's UDP
    /// sockets' advertised addresses.
    pub candidates: Vec<SocketAddr>,
    /// Whether the peer may publish.
    pub publish: Publish,
}

/// Errors from engine commands.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The peer does not exist (closed, or never created on this shard).
    #[error("unknown peer {0}")]
    UnknownPeer(PeerId),
    /// A peer with this id exists already, or the id names another shard.
    #[error("peer id {0} is taken or not this shard's")]
    PeerIdUnavailable(PeerId),
    /// The track is not published on this shard.
    #[error("unknown track {0}")]
    UnknownTrack(TrackId),
    /// The slot does not exist on the peer.
    #[error("unknown slot {0:?}")]
    UnknownSlot(SlotId),
    /// The offer contains send sections but the peer may not publish.
    #[error("peer may not publish media")]
    PublishNotAllowed,
    /// An answer arrived with no offer outstanding.
    #[error("no offer is outstanding")]
    NoPendingOffer,
    /// A local address cannot be a candidate (unspecified, link-local, multicast...).
    #[error("bad candidate address: {0}")]
    BadCandidate(String),
    /// str0m refused the SDP or the operation.
    #[error("webrtc: {0}")]
    Rtc(#[from] str0m::RtcError),
}

/// Why a track stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpublishReason {
    /// The publisher closed or lost its connection.
    PeerGone,
    /// The publisher's permission to publish was revoked.
    PermissionRevoked,
    /// The publisher renegotiated the m-line away.
    Removed,
}

/// Something the engine reports to its owner (the signaling layer).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// ICE and DTLS are up; media can flow.
    Connected(PeerId),
    /// The peer is gone (ICE timed out, closed, or failed). Its tracks were unpublished.
    Disconnected(PeerId),
    /// A peer started sending a track. `label` is the msid from the peer's SDP (for LiveKit
    /// clients the track id is the client's `cid`).
    TrackPublished {
        /// The new track.
        track: TrackId,
        /// msid stream and track ids from the publisher's offer.
        label: MediaLabel,
    },
    /// A track stopped.
    TrackUnpublished {
        /// The track.
        track: TrackId,
        /// Why.
        reason: UnpublishReason,
    },
    /// The engine's answer to a client's offer ([`EngineCommand::AcceptOffer`] or
    /// [`EngineCommand::HandleOffer`]).
    Answer {
        /// The peer.
        peer: PeerId,
        /// The answer for the client.
        answer: SdpAnswer,
    },
    /// A command about `peer` was refused; the peer is unchanged (or, for a refused creation,
    /// does not exist).
    CommandFailed {
        /// The peer.
        peer: PeerId,
        /// Which command.
        command: CommandKind,
        /// Why.
        error: SfuError,
    },
    /// A server offer for `peer` must be sent to the client; answer with
    /// [`EngineCommand::HandleAnswer`] (or [`Sfu::handle_answer`]).
    Offer {
        /// The peer.
        peer: PeerId,
        /// The offer.
        offer: SdpOffer,
        /// Slots whose m-lines this offer adds, with their mids and labels.
        slots: Vec<(SlotId, Mid, MediaLabel)>,
    },
    /// Active-speaker changes among tracks published on this shard, loudest first.
    SpeakersChanged(Vec<SpeakerLevel<TrackId>>),
    /// A data channel opened.
    ChannelOpen {
        /// The peer.
        peer: PeerId,
        /// The channel.
        channel: ChannelId,
        /// Its label.
        label: String,
    },
    /// A message on a data channel.
    ChannelData {
        /// The peer.
        peer: PeerId,
        /// The channel.
        channel: ChannelId,
        /// Whether the message is binary.
        binary: bool,
        /// The payload.
        data: Vec<u8>,
    },
    /// A data channel closed.
    ChannelClose {
        /// The peer.
        peer: PeerId,
        /// The channel.
        channel: ChannelId,
    },
    /// Periodic statistics of a peer (see [`SfuConfig::stats_interval`]).
    PeerStats {
        /// The peer.
        peer: PeerId,
        /// str0m's statistics.
        stats: str0m::stats::PeerStats,
    },
}

/// A message between shards. The shell delivers it to shard `to` with [`Sfu::handle_relay`].
#[derive(Debug, Clone)]
pub struct Relay {
    /// Destination shard.
    pub to: ShardId,
    /// Source shard.
    pub from: ShardId,
    /// The message.
    pub msg: RelayMsg,
}

/// What shards tell each other.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RelayMsg {
    /// The sender has local subscribers for `track` (owned by the receiver) and wants its packets.
    Subscribe(TrackId),
    /// The sender no longer has local subscribers for `track`.
    Unsubscribe(TrackId),
    /// A packet of `track` for the receiver's local subscribers.
    Packet(TrackId, MediaPacket),
    /// `track` ended; the receiver clears slots fed by it.
    TrackEnded(TrackId),
}

/// One incoming audio packet, decoupled from the publisher's `Rtc`.
#[derive(Debug, Clone)]
pub struct MediaPacket {
    /// The publisher's SSRC.
    pub ssrc: u32,
    /// Bumped by the engine when the source was paused by it (forced mute), so subscribers
    /// start a new continuous segment.
    pub epoch: u64,
    /// Extended sequence number.
    pub seq_no: u64,
    /// RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit (Opus: start of talkspurt).
    pub marker: bool,
    /// RFC 6464 level (−dBov) if present.
    pub audio_level: Option<i8>,
    /// RFC 6464 voice-activity flag if present.
    pub voice_activity: Option<bool>,
    /// Arrival time.
    pub received: Instant,
    /// Opus payload, shared by every subscriber.
    pub payload: Arc<[u8]>,
}

/// What happened to a datagram given to [`Sfu::handle_receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// A local peer took it.
    Handled,
    /// It belongs to a peer of another shard: pass it there.
    Foreign(ShardId),
    /// Nobody wants it; it was dropped and counted.
    Dropped,
}

/// Output of [`Sfu::poll_output`]. Datagrams leave through [`Sfu::poll_datagrams`].
#[derive(Debug)]
pub enum Output {
    /// An event for the owner.
    Event(Event),
    /// A message for another shard.
    Relay(Relay),
    /// Nothing more to do before this instant (or before the next input).
    Timeout(Instant),
}

/// Engine-wide counters, plain data for the shell to export.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SfuStats {
    /// Live peers.
    pub peers: u64,
    /// Published tracks owned by this shard.
    pub tracks: u64,
    /// RTP packets received from publishers.
    pub rtp_in: u64,
    /// RTP packets written to subscribers.
    pub rtp_forwarded: u64,
    /// RTP packets publishers sent that never arrived (gaps in their sequence numbers).
    pub rtp_lost: u64,
    /// Of `rtp_forwarded`, the packets the engine sealed itself (the fast path).
    pub rtp_forwarded_direct: u64,
    /// Fast-path packets not sent because their SRTP index was already sealed (a duplicate)
    /// or is more than 64 packets behind the newest, too old to tell.
    pub rtp_dropped_duplicate: u64,
    /// RTP packets dropped because the sender may not publish.
    pub rtp_dropped_unauthorized: u64,
    /// RTP packets dropped because their track is muted by the server.
    pub rtp_dropped_muted: u64,
    /// Datagrams that matched no peer.
    pub datagrams_unknown: u64,
    /// Offers refused because they tried to publish without permission.
    pub offers_refused: u64,
    /// Timer expiries handed to peer connections.
    pub rtc_timeouts: u64,
}

/// The engine for one shard. See the [module documentation](self).
pub struct Sfu {
    config: SfuConfig,
    rng: ChaCha20Rng,
    next_peer: u64,
    /// Boxed: a `Peer` holds its `Rtc` inline (kilobytes), and the fan-out loop looks up one
    /// peer per subscriber and packet; with small buckets the table stays in cache.
    peers: HashMap<PeerId, Box<Peer>>,
    by_addr: HashMap<SocketAddr, PeerId>,
    by_ufrag: HashMap<String, PeerId>,
    foreign_addrs: HashMap<SocketAddr, ShardId>,
    tracks: HashMap<TrackId, Track>,
    /// Local subscribers of every track, owned here or relayed from another shard.
    fanout: HashMap<TrackId, Vec<(PeerId, SlotId)>>,
    /// Work produced by draining peers, consumed by `process` and `poll_output`.
    out: Drained,
    speakers: SpeakerDetector<TrackId>,
    events: VecDeque<Event>,
    relays: VecDeque<Relay>,
    stats: SfuStats,
    /// The latest instant seen, for the idle wake-up.
    last_now: Instant,
    /// str0m's crypto with a DTLS factory that hands the engine each connection's SRTP keys.
    crypto: Arc<CryptoProvider>,
}

/// What draining peers' `Rtc`s produces: their next deadlines, datagrams to send, str0m events
/// to process, and peers to close. Kept apart from the peer map so a peer can be drained while
/// the map is borrowed.
#[derive(Debug, Default)]
struct Drained {
    deadlines: BTreeSet<(Instant, PeerId)>,
    /// str0m events not yet processed, in order.
    rtc_events: VecDeque<(PeerId, RtcEvent)>,
    /// Every datagram to send, str0m's and the fast path's, in order, waiting for
    /// [`Sfu::poll_datagrams`].
    datagrams: Datagrams,
    /// Peers whose `Rtc` failed or died, to close after the current operation.
    doomed: Vec<PeerId>,
}

impl Drained {
    /// Drain one `Rtc` to its timeout (str0m's single-mutation invariant).
    fn drain(&mut self, p: &mut Peer) {
        let peer = p.id;
        loop {
            match p.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    if t != p.deadline {
                        self.deadlines.remove(&(p.deadline, peer));
                        p.deadline = t;
                    }
                    self.deadlines.insert((t, peer));
                    break;
                }
                Ok(RtcOutput::Transmit(t)) => {
                    p.direct.observe(&t);
                    self.datagrams.push(t.source, t.destination, &t.contents);
                }
                Ok(RtcOutput::Event(e)) => self.rtc_events.push_back((peer, e)),
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "rtc failed");
                    self.doomed.push(peer);
                    break;
                }
            }
        }
    }
}

impl std::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sfu")
            .field("shard", &self.config.shard)
            .field("peers", &self.peers.len())
            .field("tracks", &self.tracks.len())
            .finish_non_exhaustive()
    }
}

impl Sfu {
    /// A new, empty shard, created at `now`.
    pub fn new(config: SfuConfig, now: Instant) -> Self {
        Sfu {
            rng: ChaCha20Rng::from_seed(config.seed),
            speakers: SpeakerDetector::new(config.speaker),
            config,
            next_peer: 1,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            foreign_addrs: HashMap::new(),
            tracks: HashMap::new(),
            fanout: HashMap::new(),
            out: Drained::default(),
            events: VecDeque::new(),
            relays: VecDeque::new(),
            stats: SfuStats::default(),
            last_now: now,
            crypto: srtp::capturing_provider(),
        }
    }

    // ---------------------------------------------------------------- peers

    /// Create a peer from a client's offer (the client drives negotiation, as on LiveKit's
    /// publisher connection). Fails with [`SfuError::PublishNotAllowed`] if the offer sends
    /// media and the peer may not publish.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        config: PeerConfig,
        offer: SdpOffer,
    ) -> Result<(PeerId, SdpAnswer), SfuError> {
        self.accept_offer_as(now, None, config, offer)
    }

    /// [`Sfu::accept_offer`] with the peer's id chosen by the caller (`None`: by the engine).
    fn accept_offer_as(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        config: PeerConfig,
        offer: SdpOffer,
    ) -> Result<(PeerId, SdpAnswer), SfuError> {
        if config.publish == Publish::Deny && peer::offer_sends_media(&offer.to_sdp_string()) {
            self.stats.offers_refused += 1;
            return Err(SfuError::PublishNotAllowed);
        }
        let id = self.new_peer(now, id, &config)?;
        let result = self.with_peer(id, |p| {
            let answer = p.rtc.sdp_api().accept_offer(offer)?;
            p.refresh_opus_pt();
            Ok(answer)
        });
        match result {
            Ok(answer) => {
                self.after_mutation(now, id);
                Ok((id, answer))
            }
            Err(e) => {
                self.remove_peer(id);
                Err(e)
            }
        }
    }

    /// Create a peer for which the engine makes the first offer (LiveKit's subscriber
    /// connection), with the given data channels in it. The offer arrives as
    /// [`Event::Offer`].
    pub fn create_peer(
        &mut self,
        now: Instant,
        config: PeerConfig,
        channels: &[&str],
    ) -> Result<PeerId, SfuError> {
        self.create_peer_as(now, None, config, channels)
    }

    /// [`Sfu::create_peer`] with the peer's id chosen by the caller (`None`: by the engine).
    fn create_peer_as(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        config: PeerConfig,
        channels: &[&str],
    ) -> Result<PeerId, SfuError> {
        let id = self.new_peer(now, id, &config)?;
        if let Some(p) = self.peers.get_mut(&id) {
            p.negotiation.queued_channels = channels.iter().map(|c| (*c).to_owned()).collect();
        }
        self.renegotiate(id);
        self.after_mutation(now, id);
        Ok(id)
    }

    /// Apply a client's re-offer on an existing peer (e.g. it adds its microphone).
    pub fn handle_offer(
        &mut self,
        now: Instant,
        peer: PeerId,
        offer: SdpOffer,
    ) -> Result<SdpAnswer, SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        if p.publish == Publish::Deny && peer::offer_sends_media(&offer.to_sdp_string()) {
            self.stats.offers_refused += 1;
            return Err(SfuError::PublishNotAllowed);
        }
        // str0m invalidates a pending local offer when it accepts a remote one: re-queue its
        // slots so they are offered again after this exchange.
        if p.negotiation.pending.take().is_some() {
            let in_flight = std::mem::take(&mut p.negotiation.in_flight);
            for s in &in_flight {
                if let Some(slot) = p.slots.get_mut(s.0 as usize) {
                    slot.mid = None;
                }
            }
            p.negotiation.queued.splice(0..0, in_flight);
        }
        let answer = p.rtc.sdp_api().accept_offer(offer);
        let result = match answer {
            Ok(answer) => {
                p.refresh_opus_pt();
                Ok(answer)
            }
            Err(e) => Err(SfuError::Rtc(e)),
        };
        self.after_mutation(now, peer);
        if result.is_ok() {
            self.renegotiate(peer);
            self.after_mutation(now, peer);
        }
        result
    }

    /// Apply the client's answer to the engine's last [`Event::Offer`] for `peer`.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        peer: PeerId,
        answer: SdpAnswer,
    ) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        let pending = p
            .negotiation
            .pending
            .take()
            .ok_or(SfuError::NoPendingOffer)?;
        let in_flight = std::mem::take(&mut p.negotiation.in_flight);
        let result = p.rtc.sdp_api().accept_answer(pending, answer);
        match result {
            Ok(()) => {
                p.refresh_opus_pt();
                for s in in_flight {
                    if let Some(slot) = p.slots.get_mut(s.0 as usize) {
                        slot.negotiated = true;
                    }
                }
            }
            Err(e) => {
                // The offer is spent either way; offer the slots again.
                for s in &in_flight {
                    if let Some(slot) = p.slots.get_mut(s.0 as usize) {
                        slot.mid = None;
                    }
                }
                p.negotiation.queued.splice(0..0, in_flight);
                self.after_mutation(now, peer);
                return Err(SfuError::Rtc(e));
            }
        }
        self.after_mutation(now, peer);
        self.renegotiate(peer);
        self.after_mutation(now, peer);
        Ok(())
    }

    /// Add a remote ICE candidate (trickle). With ICE-lite the engine learns addresses from
    /// binding requests, so this is optional.
    pub fn add_remote_candidate(
        &mut self,
        now: Instant,
        peer: PeerId,
        candidate: Candidate,
    ) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        p.rtc.add_remote_candidate(candidate);
        self.after_mutation(now, peer);
        Ok(())
    }

    /// Change what a peer may do. Revoking publish unpublishes its tracks at once and drops
    /// any RTP it still sends.
    pub fn set_publish(
        &mut self,
        now: Instant,
        peer: PeerId,
        publish: Publish,
    ) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        p.publish = publish;
        if publish == Publish::Deny {
            let tracks: Vec<TrackId> = p.up.drain().map(|(_, t)| t).collect();
            p.ssrc_mid.clear();
            for t in tracks {
                self.unpublish(t, UnpublishReason::PermissionRevoked);
            }
        } else {
            self.publish_existing(peer);
        }
        self.process(now);
        Ok(())
    }

    /// Close a peer: its tracks are unpublished, its subscriptions dropped. Emits
    /// [`Event::Disconnected`].
    pub fn close_peer(&mut self, now: Instant, peer: PeerId) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        p.rtc.disconnect();
        self.drain_rtc(peer);
        self.remove_peer(peer);
        self.process(now);
        Ok(())
    }

    /// Send a message on a data channel.
    pub fn send_data(
        &mut self,
        now: Instant,
        peer: PeerId,
        channel: ChannelId,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        let sent = match p.rtc.channel(channel) {
            Some(mut ch) => ch.write(binary, data)?,
            None => false,
        };
        self.after_mutation(now, peer);
        Ok(sent)
    }

    // ---------------------------------------------------------------- subscriptions

    /// Subscribe `peer` to `track`: adds a sendonly m-line labelled `label` (negotiated via
    /// [`Event::Offer`]) and forwards the track into it. The track may live on another shard.
    pub fn subscribe(
        &mut self,
        now: Instant,
        peer: PeerId,
        track: TrackId,
        label: MediaLabel,
    ) -> Result<SlotId, SfuError> {
        let slot = self.add_slot(peer, label)?;
        self.set_slot_source(now, peer, slot, Some(track))?;
        Ok(slot)
    }

    /// Add an empty downstream slot to `peer` (for fixed slots fed by changing sources).
    pub fn add_slot(&mut self, peer: PeerId, label: MediaLabel) -> Result<SlotId, SfuError> {
        let initial_seq = (self.rng.next_u64() & 0x7fff) as u16;
        let initial_ts = self.rng.next_u64() as u32;
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        let id = SlotId(p.slots.len() as u32);
        p.slots.push(Slot {
            label,
            mid: None,
            source: None,
            rewriter: Rewriter::new(initial_seq, initial_ts),
            negotiated: false,
            path: SendPath::Undecided,
        });
        p.negotiation.queued.push(id);
        self.renegotiate(peer);
        Ok(id)
    }

    /// Point a slot at `source` (or at nothing). The subscriber's stream stays continuous
    /// across changes. Only subscribed tracks cost per-packet work.
    pub fn set_slot_source(
        &mut self,
        now: Instant,
        peer: PeerId,
        slot: SlotId,
        source: Option<TrackId>,
    ) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        let s = p.slot_mut(slot).ok_or(SfuError::UnknownSlot(slot))?;
        let old = std::mem::replace(&mut s.source, source);
        if old == source {
            self.process(now);
            return Ok(());
        }
        s.rewriter.break_segment();
        if let Some(old) = old {
            self.fanout_remove(old, peer, slot);
        }
        if let Some(new) = source {
            self.fanout_add(new, peer, slot);
        }
        self.process(now);
        Ok(())
    }

    /// Stop forwarding `track` to `peer`. The m-line stays (as LiveKit's transceiver reuse)
    /// and can be fed again with [`Sfu::set_slot_source`].
    pub fn unsubscribe(
        &mut self,
        now: Instant,
        peer: PeerId,
        track: TrackId,
    ) -> Result<(), SfuError> {
        let p = self.peers.get(&peer).ok_or(SfuError::UnknownPeer(peer))?;
        let slots: Vec<SlotId> = (0..p.slots.len() as u32)
            .map(SlotId)
            .filter(|s| p.slots[s.0 as usize].source == Some(track))
            .collect();
        for s in slots {
            self.set_slot_source(now, peer, s, None)?;
        }
        Ok(())
    }

    /// Mute or unmute a track on the server: while muted nothing is forwarded, whatever the
    /// publisher sends. Subscribers see a continuous stream across the pause.
    pub fn set_track_muted(&mut self, track: TrackId, muted: bool) -> Result<(), SfuError> {
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or(SfuError::UnknownTrack(track))?;
        if t.muted != muted {
            t.muted = muted;
            t.epoch += 1;
        }
        Ok(())
    }

    // ---------------------------------------------------------------- input

    /// Feed a datagram received on the engine's socket `destination` from `source`.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> Routed {
        self.last_now = self.last_now.max(now);
        let peer = match self.by_addr.get(&source) {
            Some(p) => *p,
            None => match self.route_new(now, proto, source, destination, contents) {
                Ok(p) => p,
                Err(r) => return r,
            },
        };
        let Ok(receive) = Receive::new(proto, source, destination, contents) else {
            self.stats.datagrams_unknown += 1;
            return Routed::Dropped;
        };
        if let Some(p) = self.peers.get_mut(&peer)
            && let Err(e) = p.rtc.handle_input(Input::Receive(now, receive))
        {
            tracing::debug!(peer = %peer, error = %e, "rtc rejected input");
        }
        self.after_mutation(now, peer);
        Routed::Handled
    }

    /// Deliver a message from another shard.
    pub fn handle_relay(&mut self, now: Instant, relay: Relay) {
        match relay.msg {
            RelayMsg::Subscribe(track) => {
                if let Some(t) = self.tracks.get_mut(&track) {
                    if !t.relays.contains(&relay.from) {
                        t.relays.push(relay.from);
                    }
                } else {
                    // The track is already gone: tell the subscriber's shard.
                    self.relays.push_back(Relay {
                        to: relay.from,
                        from: self.config.shard,
                        msg: RelayMsg::TrackEnded(track),
                    });
                }
            }
            RelayMsg::Unsubscribe(track) => {
                if let Some(t) = self.tracks.get_mut(&track) {
                    t.relays.retain(|s| *s != relay.from);
                }
            }
            RelayMsg::Packet(track, packet) => self.forward(now, track, &packet),
            RelayMsg::TrackEnded(track) => self.clear_slots_of(track),
        }
        self.process(now);
    }

    /// Drive timers: call when the last [`Output::Timeout`] passed (earlier is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        while let Some(&(at, peer)) = self.out.deadlines.first() {
            if at > now {
                break;
            }
            self.out.deadlines.pop_first();
            if let Some(p) = self.peers.get_mut(&peer) {
                // Park the deadline far away; draining sets the real one.
                p.deadline = now + Duration::from_secs(3600);
                self.stats.rtc_timeouts += 1;
                if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(peer = %peer, error = %e, "rtc timeout failed");
                    self.out.doomed.push(peer);
                }
                self.drain_rtc(peer);
                if !self.peers.get(&peer).is_some_and(|p| p.rtc.is_alive()) {
                    self.out.doomed.push(peer);
                }
            }
        }
        if self.speakers.poll_timeout().is_some_and(|t| t <= now) {
            let mut changes = Vec::new();
            self.speakers.handle_timeout(now, &mut changes);
            if !changes.is_empty() {
                self.events.push_back(Event::SpeakersChanged(changes));
            }
        }
        self.process(now);
    }

    /// Move every datagram waiting to be sent (str0m's and the fast path's, in the order they
    /// were produced) to the end of `queue`, swapping buffers when `queue` is empty so nothing
    /// is copied in the common case. The only way datagrams leave the engine; call it whenever
    /// convenient, typically once [`Sfu::poll_output`] returned [`Output::Timeout`]. Returns
    /// how many datagrams were moved.
    pub fn poll_datagrams(&mut self, queue: &mut Datagrams) -> usize {
        let n = self.out.datagrams.len();
        queue.append(&mut self.out.datagrams);
        n
    }

    /// The next output. Drain until [`Output::Timeout`].
    pub fn poll_output(&mut self) -> Output {
        if let Some(r) = self.relays.pop_front() {
            return Output::Relay(r);
        }
        if let Some(e) = self.events.pop_front() {
            return Output::Event(e);
        }
        let peers = self.out.deadlines.first().map(|(t, _)| *t);
        let speakers = self.speakers.poll_timeout();
        let next = match (peers, speakers) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            // Idle: ask to be woken a while after the last input.
            (None, None) => self.last_now + Duration::from_secs(1),
        };
        Output::Timeout(next)
    }

    // ---------------------------------------------------------------- queries

    /// Engine counters.
    pub fn stats(&self) -> SfuStats {
        SfuStats {
            peers: self.peers.len() as u64,
            tracks: self.tracks.len() as u64,
            ..self.stats
        }
    }

    /// The local ICE credentials of a peer (for tests and diagnostics).
    pub fn ice_ufrag(&self, peer: PeerId) -> Option<&str> {
        self.peers.get(&peer).map(|p| p.ufrag.as_str())
    }

    /// Whether the peer's ICE and DTLS are up.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.connected)
    }

    /// The mid of a slot, once it was offered.
    pub fn slot_mid(&self, peer: PeerId, slot: SlotId) -> Option<Mid> {
        self.peers.get(&peer)?.slots.get(slot.0 as usize)?.mid
    }

    /// An idle slot of `peer` labelled `label` (one that carried a track before), to feed
    /// again instead of adding an m-line.
    pub fn find_slot(&self, peer: PeerId, label: &MediaLabel) -> Option<SlotId> {
        let p = self.peers.get(&peer)?;
        p.slots
            .iter()
            .position(|s| s.source.is_none() && s.label == *label)
            .map(|i| SlotId(i as u32))
    }

    /// Number of local subscribers of `track` (slots fed by it on this shard).
    pub fn subscriber_count(&self, track: TrackId) -> usize {
        self.fanout.get(&track).map_or(0, Vec::len)
    }

    // ---------------------------------------------------------------- internals

    fn new_peer(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        config: &PeerConfig,
    ) -> Result<PeerId, SfuError> {
        let id = match id {
            Some(id) if id.shard() != self.config.shard || self.peers.contains_key(&id) => {
                return Err(SfuError::PeerIdUnavailable(id));
            }
            Some(id) => id,
            None => loop {
                let id = PeerId::new(self.config.shard, self.next_peer);
                self.next_peer += 1;
                if !self.peers.contains_key(&id) {
                    break id;
                }
            },
        };
        let ufrag = format!(
            "{:02x}{}",
            self.config.shard.0 & 0xff,
            self.random_token(UFRAG_LEN - 2)
        );
        let pass = self.random_token(24);
        let mut rtc_config = RtcConfig::new()
            .set_crypto_provider(self.crypto.clone())
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .set_stats_interval(self.config.stats_interval)
            .set_local_ice_credentials(IceCreds {
                ufrag: ufrag.clone(),
                pass,
            });
        // Opus FEC on, DTX allowed: what LiveKit answers too.
        rtc_config = rtc_config.set_reordering_size_audio(0);
        let (mut rtc, keys) = srtp::build_rtc(rtc_config, now);
        for addr in &config.candidates {
            let cand =
                Candidate::host(*addr, "udp").map_err(|e| SfuError::BadCandidate(e.to_string()))?;
            rtc.add_local_candidate(cand);
        }
        self.by_ufrag.insert(ufrag.clone(), id);
        self.peers.insert(
            id,
            Box::new(Peer {
                id,
                rtc,
                publish: config.publish,
                connected: false,
                ufrag,
                deadline: now,
                negotiation: Negotiation::default(),
                up: HashMap::new(),
                ssrc_mid: HashMap::new(),
                slots: Vec::new(),
                slot_by_mid: HashMap::new(),
                opus_pt: None,
                addrs: Vec::new(),
                audio_mids: Vec::new(),
                counters: PeerCounters::default(),
                direct: DirectTx::new(keys),
            }),
        );
        self.out.deadlines.insert((now, id));
        Ok(id)
    }

    fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| ALPHABET[(self.rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }

    fn with_peer<T>(
        &mut self,
        id: PeerId,
        f: impl FnOnce(&mut Peer) -> Result<T, str0m::RtcError>,
    ) -> Result<T, SfuError> {
        let p = self.peers.get_mut(&id).ok_or(SfuError::UnknownPeer(id))?;
        Ok(f(p)?)
    }

    /// Route a datagram from an address not seen before: only an authenticated STUN binding
    /// request may bind a new address to a peer.
    fn route_new(
        &mut self,
        now: Instant,
        proto: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) -> Result<PeerId, Routed> {
        let dropped = |s: &mut Self| {
            s.stats.datagrams_unknown += 1;
            Err(Routed::Dropped)
        };
        let Ok(stun) = StunMessage::parse(contents) else {
            if let Some(shard) = self.foreign_addrs.get(&source) {
                return Err(Routed::Foreign(*shard));
            }
            return dropped(self);
        };
        let Some((local_ufrag, _)) = stun.split_username() else {
            return dropped(self);
        };
        let Some(peer) = self.by_ufrag.get(local_ufrag).copied() else {
            let shard = local_ufrag
                .get(0..2)
                .and_then(|h| u16::from_str_radix(h, 16).ok())
                .map(ShardId)
                .filter(|s| *s != self.config.shard);
            return match shard {
                Some(shard) => {
                    if self.foreign_addrs.len() >= MAX_FOREIGN_ADDRS {
                        self.foreign_addrs.clear();
                    }
                    self.foreign_addrs.insert(source, shard);
                    Err(Routed::Foreign(shard))
                }
                None => dropped(self),
            };
        };
        let Ok(receive) = Receive::new(proto, source, destination, contents) else {
            return dropped(self);
        };
        let p = self.peers.get_mut(&peer).ok_or(Routed::Dropped)?;
        if !p.rtc.accepts(&Input::Receive(now, receive)) {
            return dropped(self);
        }
        self.foreign_addrs.remove(&source);
        self.by_addr.insert(source, peer);
        p.addrs.push(source);
        Ok(peer)
    }

    /// After mutating a peer's `Rtc`: drain it, then process what came out.
    fn after_mutation(&mut self, now: Instant, peer: PeerId) {
        self.drain_rtc(peer);
        self.process(now);
    }

    /// Drain one `Rtc` to its timeout (str0m's single-mutation invariant).
    fn drain_rtc(&mut self, peer: PeerId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            self.out.drain(p);
        }
    }

    /// Handle queued str0m events (which may forward media, which queues more) and close
    /// doomed peers, until nothing is left.
    fn process(&mut self, now: Instant) {
        loop {
            if let Some((peer, event)) = self.out.rtc_events.pop_front() {
                self.handle_rtc_event(now, peer, event);
                continue;
            }
            if let Some(peer) = self.out.doomed.pop() {
                self.remove_peer(peer);
                continue;
            }
            break;
        }
    }

    fn handle_rtc_event(&mut self, now: Instant, peer: PeerId, event: RtcEvent) {
        match event {
            RtcEvent::RtpPacket(packet) => self.handle_rtp(now, peer, packet),
            RtcEvent::Connected => {
                if let Some(p) = self.peers.get_mut(&peer) {
                    p.connected = true;
                    self.events.push_back(Event::Connected(peer));
                }
            }
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.out.doomed.push(peer);
            }
            RtcEvent::MediaAdded(added) => {
                if added.kind == MediaKind::Audio
                    && let Some(p) = self.peers.get_mut(&peer)
                {
                    p.audio_mids.push(added.mid);
                }
                if added.kind == MediaKind::Audio && added.direction.is_receiving() {
                    self.publish_mid(peer, added.mid);
                }
            }
            RtcEvent::MediaChanged(changed) => {
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                let published = p.up.get(&changed.mid).copied();
                match (published, changed.direction.is_receiving()) {
                    (None, true) => self.publish_mid(peer, changed.mid),
                    (Some(track), false) => {
                        p.up.remove(&changed.mid);
                        p.ssrc_mid.retain(|_, m| *m != changed.mid);
                        self.unpublish(track, UnpublishReason::Removed);
                    }
                    _ => {}
                }
            }
            RtcEvent::ChannelOpen(channel, label) => self.events.push_back(Event::ChannelOpen {
                peer,
                channel,
                label,
            }),
            RtcEvent::ChannelData(d) => self.events.push_back(Event::ChannelData {
                peer,
                channel: d.id,
                binary: d.binary,
                data: d.data,
            }),
            RtcEvent::ChannelClose(channel) => {
                self.events.push_back(Event::ChannelClose { peer, channel })
            }
            RtcEvent::PeerStats(stats) => self.events.push_back(Event::PeerStats { peer, stats }),
            _ => {}
        }
    }

    /// A peer's m-line `mid` receives audio: publish it if the peer may.
    fn publish_mid(&mut self, peer: PeerId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.publish == Publish::Deny || p.up.contains_key(&mid) {
            return;
        }
        let Some(media) = p.rtc.media(mid) else {
            return;
        };
        let label = MediaLabel {
            stream_id: media.stream_id().to_owned(),
            track_id: media.track_id().to_owned(),
        };
        let track = TrackId { peer, mid };
        p.up.insert(mid, track);
        self.tracks.insert(
            track,
            Track {
                label: label.clone(),
                muted: false,
                epoch: 0,
                relays: Vec::new(),
                newest: None,
            },
        );
        self.events
            .push_back(Event::TrackPublished { track, label });
    }

    /// After a grant of publish permission, publish m-lines that already receive audio.
    fn publish_existing(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let mids: Vec<Mid> = p
            .audio_mids
            .iter()
            .copied()
            .filter(|m| {
                p.rtc.media(*m).is_some_and(|media| {
                    media.kind() == MediaKind::Audio && media.direction().is_receiving()
                })
            })
            .collect();
        for mid in mids {
            self.publish_mid(peer, mid);
        }
    }

    fn handle_rtp(&mut self, now: Instant, peer: PeerId, packet: RtpPacket) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.counters.rtp_in += 1;
        if p.publish == Publish::Deny {
            p.counters.rtp_dropped_unauthorized += 1;
            self.stats.rtp_dropped_unauthorized += 1;
            return;
        }
        let ssrc = packet.header.ssrc;
        let Some(mid) = p.mid_of(ssrc, packet.header.ext_vals.mid) else {
            self.stats.datagrams_unknown += 1;
            return;
        };
        let Some(&track) = p.up.get(&mid) else {
            // Media on an m-line that is not (or no longer) published.
            p.counters.rtp_dropped_unauthorized += 1;
            self.stats.rtp_dropped_unauthorized += 1;
            return;
        };
        if Some(packet.header.payload_type) != p.opus_pt {
            // Only Opus is forwarded (RED is not negotiated, CN and DTMF are not relayed).
            return;
        }
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        self.stats.rtp_in += 1;
        self.stats.rtp_lost += t.lost_before(*ssrc, *packet.seq_no);
        if t.muted {
            self.stats.rtp_dropped_muted += 1;
            if let Some(p) = self.peers.get_mut(&peer) {
                p.counters.rtp_dropped_muted += 1;
            }
            return;
        }
        if let Some(level) = packet.header.ext_vals.audio_level {
            self.speakers
                .observe(now, track, level.unsigned_abs(), OPUS_FRAME);
        }
        let media = MediaPacket {
            ssrc: *ssrc,
            epoch: t.epoch,
            seq_no: *packet.seq_no,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            audio_level: packet.header.ext_vals.audio_level,
            voice_activity: packet.header.ext_vals.voice_activity,
            received: packet.timestamp,
            payload: packet.payload,
        };
        for shard in &t.relays {
            self.relays.push_back(Relay {
                to: *shard,
                from: self.config.shard,
                msg: RelayMsg::Packet(track, media.clone()),
            });
        }
        self.forward(now, track, &media);
    }

    /// Write `packet` of `track` to every local slot fed by it.
    fn forward(&mut self, now: Instant, track: TrackId, packet: &MediaPacket) {
        let Some(subs) = self.fanout.get(&track) else {
            return;
        };
        let source = SourceKey {
            ssrc: packet.ssrc,
            epoch: packet.epoch,
        };
        let level = match (packet.audio_level, packet.voice_activity) {
            (Some(l), Some(v)) => Some(srtp::audio_level_octet(l, v)),
            _ => None,
        };
        for &(peer, slot) in subs {
            let Some(p) = self.peers.get_mut(&peer) else {
                continue;
            };
            let (Some(pt), true) = (p.opus_pt, p.connected) else {
                continue;
            };
            let Some(s) = p.slots.get_mut(slot.0 as usize) else {
                continue;
            };
            let (Some(mid), true) = (s.mid, s.negotiated) else {
                continue;
            };
            let Some(out) = s
                .rewriter
                .rewrite(now, source, packet.seq_no, packet.timestamp)
            else {
                continue;
            };
            if matches!(s.path, SendPath::Undecided) {
                s.path = match self.config.fast_path {
                    FastPath::Enabled
                        if p.direct.route.is_some() && p.direct.sealer(&self.crypto).is_some() =>
                    {
                        peer::direct_slot(&mut p.rtc, mid).map_or(SendPath::Rtc, SendPath::Direct)
                    }
                    _ => SendPath::Rtc,
                };
                let direct = matches!(s.path, SendPath::Direct(_));
                tracing::debug!(peer = %peer, slot = slot.0, direct, "slot send path chosen");
            }
            if let SendPath::Direct(d) = &mut s.path {
                // The fast path: header, seal, queue. str0m never sends on this SSRC.
                let (Some((local, remote)), Some(sealer)) =
                    (p.direct.route, p.direct.sealer(&self.crypto))
                else {
                    continue;
                };
                // SRTP indices are 48 bits (RFC 3711 §3.3.1); the rewriter starts below 2^15.
                let index = out.seq_no & 0xffff_ffff_ffff;
                if !d.sealed.claim(index) {
                    self.stats.rtp_dropped_duplicate += 1;
                    continue;
                }
                let header = RtpHeaderOut {
                    payload_type: *pt,
                    marker: packet.marker,
                    seq: out.seq_no as u16,
                    timestamp: out.timestamp,
                    ssrc: d.ssrc,
                    audio_level: d.audio_level_id.zip(level),
                    mid: d.mid_ext.as_ref().map(|(id, m, len)| (*id, &m[..*len])),
                };
                let payload = &packet.payload[..];
                let ssrc = d.ssrc;
                let sent = self.out.datagrams.push_with(
                    local,
                    remote,
                    MAX_HEADER_LEN + payload.len() + GCM_TAG_LEN,
                    |buf| {
                        let header_len = srtp::write_header(buf, &header);
                        let len = header_len + payload.len() + GCM_TAG_LEN;
                        sealer
                            .seal(&mut buf[..len], header_len, payload, ssrc, index)
                            .ok()?;
                        Some(len)
                    },
                );
                if sent {
                    self.stats.rtp_forwarded += 1;
                    self.stats.rtp_forwarded_direct += 1;
                }
                continue;
            }
            let mut api = p.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                continue;
            };
            let ext = ExtensionValues {
                audio_level: packet.audio_level,
                voice_activity: packet.voice_activity,
                ..Default::default()
            };
            let write = RtpWrite::new(
                pt,
                SeqNo::from(out.seq_no),
                out.timestamp,
                packet.received,
                packet.payload.clone(),
            )
            .marker(packet.marker)
            .ext_vals(ext);
            tx.write_rtp(write);
            self.stats.rtp_forwarded += 1;
            // str0m sends a written packet on its next timer run (it answers the write with
            // `Timeout(now)`): run it right away so the peer is drained once per packet, and
            // any timer that was due anyway is served by the same run.
            self.stats.rtc_timeouts += 1;
            if p.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.out.doomed.push(peer);
                continue;
            }
            self.out.drain(p);
        }
    }

    /// Start an offer for `peer` if it has queued changes and none is outstanding.
    fn renegotiate(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let n = &mut p.negotiation;
        if n.pending.is_some() || (n.queued.is_empty() && n.queued_channels.is_empty()) {
            return;
        }
        let queued = std::mem::take(&mut n.queued);
        let channels = std::mem::take(&mut n.queued_channels);
        let mut api = p.rtc.sdp_api();
        let mut added = Vec::new();
        for slot in &queued {
            let Some(s) = p.slots.get_mut(slot.0 as usize) else {
                continue;
            };
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some(s.label.stream_id.clone()),
                Some(s.label.track_id.clone()),
                None,
            );
            s.mid = Some(mid);
            p.slot_by_mid.insert(mid, *slot);
            added.push((*slot, mid, s.label.clone()));
        }
        for label in channels {
            api.add_channel(label);
        }
        if let Some((offer, pending)) = api.apply() {
            p.negotiation.pending = Some(pending);
            p.negotiation.in_flight = queued;
            self.events.push_back(Event::Offer {
                peer,
                offer,
                slots: added,
            });
        }
        self.drain_rtc(peer);
    }

    fn fanout_add(&mut self, track: TrackId, peer: PeerId, slot: SlotId) {
        let subs = self.fanout.entry(track).or_default();
        subs.push((peer, slot));
        if subs.len() == 1 && track.shard() != self.config.shard {
            self.relays.push_back(Relay {
                to: track.shard(),
                from: self.config.shard,
                msg: RelayMsg::Subscribe(track),
            });
        }
    }

    fn fanout_remove(&mut self, track: TrackId, peer: PeerId, slot: SlotId) {
        let Some(subs) = self.fanout.get_mut(&track) else {
            return;
        };
        subs.retain(|e| *e != (peer, slot));
        if subs.is_empty() {
            self.fanout.remove(&track);
            if track.shard() != self.config.shard {
                self.relays.push_back(Relay {
                    to: track.shard(),
                    from: self.config.shard,
                    msg: RelayMsg::Unsubscribe(track),
                });
            }
        }
    }

    /// The track ended: slots fed by it go idle (they keep their m-line).
    fn clear_slots_of(&mut self, track: TrackId) {
        let Some(subs) = self.fanout.remove(&track) else {
            return;
        };
        for (peer, slot) in subs {
            if let Some(s) = self.peers.get_mut(&peer).and_then(|p| p.slot_mut(slot)) {
                s.source = None;
                s.rewriter.break_segment();
            }
        }
    }

    fn unpublish(&mut self, track: TrackId, reason: UnpublishReason) {
        let Some(t) = self.tracks.remove(&track) else {
            return;
        };
        for shard in t.relays {
            self.relays.push_back(Relay {
                to: shard,
                from: self.config.shard,
                msg: RelayMsg::TrackEnded(track),
            });
        }
        self.clear_slots_of(track);
        if let Some(change) = self.speakers.remove(track) {
            self.events.push_back(Event::SpeakersChanged(vec![change]));
        }
        let _ = t.label;
        self.events
            .push_back(Event::TrackUnpublished { track, reason });
    }

    fn remove_peer(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        self.out.deadlines.remove(&(p.deadline, peer));
        self.by_ufrag.remove(&p.ufrag);
        for a in &p.addrs {
            if self.by_addr.get(a) == Some(&peer) {
                self.by_addr.remove(a);
            }
        }
        for (i, s) in p.slots.iter().enumerate() {
            if let Some(track) = s.source {
                self.fanout_remove(track, peer, SlotId(i as u32));
            }
        }
        for track in p.up.values() {
            self.unpublish(*track, UnpublishReason::PeerGone);
        }
        self.events.push_back(Event::Disconnected(peer));
    }
}
