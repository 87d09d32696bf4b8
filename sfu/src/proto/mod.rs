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
//! one call, [`Sfu::poll_datagrams`], into a buffer the caller owns (str0m's first, so a
//! handshake never waits behind a fan-out burst); it may be called at any time, as often as
//! the caller likes.
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

mod broadcast;
mod command;
mod datagrams;
mod demux;
mod fanout;
pub mod forwarder;
mod ice;
pub mod id;
mod lifecycle;
mod peer;
pub mod red;
mod relay;
mod sections;
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
use str0m::media::{Direction, MediaKind, Mid, Pt};
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

/// Most tapped packets waiting for [`Sfu::poll_tapped`]; more are dropped and counted (the
/// shell drains them after every input, so this only bounds a shell that does not).
const MAX_TAPPED: usize = 4_096;

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
    /// Targets of a data broadcast ([`EngineCommand::SendData`]) sent per input; the rest
    /// waits for the next, so no input waits behind a message to a whole room (see
    /// `broadcast`).
    pub data_slice: usize,
    /// Most broadcast targets waiting; a broadcast that does not fit is dropped and counted
    /// ([`SfuStats::data_dropped`]).
    pub data_pending_max: usize,
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
            data_slice: 64,
            data_pending_max: 262_144,
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
    /// The peer is a relay peer, which only receives and only offers
    /// ([`EngineCommand::CreateRelayPeer`]).
    #[error("peer {0} is a relay peer: it only receives, and only offers")]
    RelayPeer(PeerId),
    /// No UDP socket could be opened for a relay link (see the shell).
    #[error("cannot open a relay link's socket: {0}")]
    LinkSocket(String),
    /// The command is for relay peers and the peer is not one.
    #[error("peer {0} is not a relay peer")]
    NotRelayPeer(PeerId),
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
    /// ICE timed out: no binding request from the client for str0m's ICE-lite timeout
    /// (15 s), or, for a relay peer (full ICE), no answer to its checks. The peer stays, with its tracks and subscriptions, so that the client can
    /// come back (binding requests again, or an ICE restart); the owner closes it
    /// ([`EngineCommand::ClosePeer`]) when it gives up on the client.
    IceLost(PeerId),
    /// The peer is gone (closed, or failed). Its tracks were unpublished.
    Disconnected(PeerId),
    /// A peer started sending a track. `label` is the msid from the peer's SDP (for LiveKit
    /// clients the track id is the client's `cid`).
    TrackPublished {
        /// The new track.
        track: TrackId,
        /// msid stream and track ids from the publisher's offer.
        label: MediaLabel,
    },
    /// A relay peer ([`EngineCommand::CreateRelayPeer`]) receives a track from the origin,
    /// filed here as a track it publishes: subscribe this engine's peers to it as to any
    /// published track. The origin's answer named it: `label` is the msid the origin gave
    /// the m-line (its signaling puts the origin's participant and track sids there), `ssrc`
    /// the SSRC it announced for it. It ends with [`Event::TrackUnpublished`].
    RelayTrackPublished {
        /// The track on this engine: the relay peer and its m-line.
        track: TrackId,
        /// msid stream and track ids from the origin's answer.
        label: MediaLabel,
        /// The origin's SSRC for the m-line, if its answer announced one.
        ssrc: Option<u32>,
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
        /// For a single-connection peer, the m-lines the engine sends subscribed tracks on,
        /// with their labels (LiveKit's `mid_to_track_id`); empty otherwise.
        sending: Vec<(Mid, MediaLabel)>,
    },
    /// A single-connection peer needs the client to offer again, with `audios` more recvonly
    /// audio m-lines (0: just a new offer, for a subscription the client does not know
    /// about yet). LiveKit's `MediaSectionsRequirement`.
    SectionsNeeded {
        /// The peer.
        peer: PeerId,
        /// How many recvonly audio m-lines to add.
        audios: u32,
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

impl Event {
    /// The peer the event is about; `None` for [`Event::SpeakersChanged`], which names tracks
    /// of any number of peers.
    pub fn peer(&self) -> Option<PeerId> {
        match self {
            Event::Connected(peer) | Event::IceLost(peer) | Event::Disconnected(peer) => {
                Some(*peer)
            }
            Event::TrackPublished { track, .. }
            | Event::RelayTrackPublished { track, .. }
            | Event::TrackUnpublished { track, .. } => Some(track.peer),
            Event::Answer { peer, .. }
            | Event::CommandFailed { peer, .. }
            | Event::SectionsNeeded { peer, .. }
            | Event::Offer { peer, .. }
            | Event::ChannelOpen { peer, .. }
            | Event::ChannelData { peer, .. }
            | Event::ChannelClose { peer, .. }
            | Event::PeerStats { peer, .. } => Some(*peer),
            Event::SpeakersChanged(_) => None,
        }
    }
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
    /// Opus payload, or RED around Opus; shared by every subscriber.
    pub payload: Arc<[u8]>,
    /// Which of the two `payload` is.
    pub encoding: red::Encoding,
}

/// A copy of a packet of a tapped track ([`EngineCommand::SetTap`]), for a recording.
#[derive(Debug, Clone)]
pub struct Tapped {
    /// The track.
    pub track: TrackId,
    /// The packet as received (Opus, or RED around Opus: [`MediaPacket::opus`]).
    pub packet: MediaPacket,
}

impl MediaPacket {
    /// The Opus packet: the payload, or its primary block if it is RED.
    pub fn opus(&self) -> &[u8] {
        match self.encoding {
            red::Encoding::Opus => &self.payload,
            red::Encoding::Red { primary, .. } => self.payload.get(primary..).unwrap_or(&[]),
        }
    }
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
    /// Of `rtp_lost`, packets rebuilt from the redundant blocks of a later RED packet.
    pub rtp_recovered: u64,
    /// Of `rtp_forwarded`, the packets the engine sealed itself (the fast path).
    pub rtp_forwarded_direct: u64,
    /// Fast-path packets not sent because their SRTP index was already sealed (a duplicate)
    /// or is more than 64 packets behind the newest, too old to tell.
    pub rtp_dropped_duplicate: u64,
    /// RTP packets dropped because the sender may not publish.
    pub rtp_dropped_unauthorized: u64,
    /// RTP packets dropped because their track is muted by the server.
    pub rtp_dropped_muted: u64,
    /// RTP packets dropped because their payload cannot be read (RED that is malformed or not
    /// around Opus).
    pub rtp_dropped_malformed: u64,
    /// Datagrams that matched no peer.
    pub datagrams_unknown: u64,
    /// Offers refused because they tried to publish without permission.
    pub offers_refused: u64,
    /// Timer expiries handed to peer connections.
    pub rtc_timeouts: u64,
    /// Tapped packets dropped because the shell did not take them in time.
    pub rtp_tap_dropped: u64,
    /// Data messages (one per target) dropped because too many broadcasts were waiting
    /// ([`SfuConfig::data_pending_max`]).
    pub data_dropped: u64,
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
    /// Relay peers by (origin address, local address) of their link (see `relay`).
    relay_links: HashMap<(SocketAddr, SocketAddr), PeerId>,
    tracks: HashMap<TrackId, Track>,
    /// Local subscribers of every track, owned here or relayed from another shard.
    fanout: HashMap<TrackId, Vec<(PeerId, SlotId)>>,
    /// Work produced by draining peers, consumed by `process` and `poll_output`.
    out: Drained,
    speakers: SpeakerDetector<TrackId>,
    events: VecDeque<Event>,
    relays: VecDeque<Relay>,
    /// Packets of tapped tracks, waiting for [`Sfu::poll_tapped`] (at most [`MAX_TAPPED`]).
    tapped: VecDeque<Tapped>,
    stats: SfuStats,
    /// The latest instant seen, for the idle wake-up.
    last_now: Instant,
    /// Data broadcasts not yet sent to every target.
    broadcasts: broadcast::Broadcasts,
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
    /// str0m's datagrams (ICE, DTLS, RTCP, SCTP, and media on str0m's send path), in order,
    /// waiting for [`Sfu::poll_datagrams`].
    datagrams: Datagrams,
    /// Packets the forwarding fast path sealed, in order, waiting for the same call.
    sealed: Datagrams,
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
            relay_links: HashMap::new(),
            tracks: HashMap::new(),
            fanout: HashMap::new(),
            out: Drained::default(),
            events: VecDeque::new(),
            relays: VecDeque::new(),
            tapped: VecDeque::new(),
            stats: SfuStats::default(),
            last_now: now,
            broadcasts: broadcast::Broadcasts::default(),
            crypto: srtp::capturing_provider(),
        }
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
        self.send_broadcast_slice(now);
    }

    /// Move every datagram waiting to be sent to the end of `queue`: str0m's own first (ICE,
    /// DTLS, RTCP, SCTP: a handshake never waits behind a fan-out burst), then the packets the
    /// fast path sealed, each in the order produced. Swaps buffers when `queue` is empty, so
    /// nothing is copied in the common case. The only way datagrams leave the engine; call it
    /// whenever convenient, typically once [`Sfu::poll_output`] returned [`Output::Timeout`].
    /// Returns how many datagrams were moved.
    pub fn poll_datagrams(&mut self, queue: &mut Datagrams) -> usize {
        let n = self.out.datagrams.len() + self.out.sealed.len();
        queue.append(&mut self.out.datagrams);
        queue.append(&mut self.out.sealed);
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
        if !self.broadcasts.is_empty() {
            // Data broadcasts wait: the next slice as soon as the shell has served the inputs
            // that arrived meanwhile.
            return Output::Timeout(self.last_now);
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

    /// The next packet of a tapped track ([`EngineCommand::SetTap`]), in order of arrival.
    /// Drain after every input (with [`Sfu::poll_output`]); at most a few thousand wait, the
    /// rest are dropped and counted ([`SfuStats::rtp_tap_dropped`]).
    pub fn poll_tapped(&mut self) -> Option<Tapped> {
        self.tapped.pop_front()
    }

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
                    let single = p.single;
                    self.events.push_back(Event::Connected(peer));
                    if single {
                        // What its slots waited for while the client set up the connection.
                        self.ask_sections(peer);
                    }
                }
            }
            RtcEvent::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.events.push_back(Event::IceLost(peer));
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
                if p.relay.is_some() {
                    // Its tracks follow the origin's answers (see `relay`).
                    return;
                }
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
}
