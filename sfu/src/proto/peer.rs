//! One WebRTC peer connection: its `Rtc`, what it publishes, what it receives, and the
//! server-side SDP negotiation queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::Rtc;
use str0m::change::SdpPendingOffer;
use str0m::crypto::CryptoProvider;
use str0m::format::Codec;
use str0m::ice::IceCreds;
use str0m::media::{Mid, Pt};
use str0m::net::{Protocol, Transmit};
use str0m::rtp::{Extension, Ssrc};

use super::forwarder::Rewriter;
use super::id::{MediaLabel, PeerId, TrackId};
use super::srtp::{KeySlot, SealedIndices, Sealer};

/// Whether a peer may send media into the engine. Enforced in the engine, not trusted to the
/// client: offers with send sections are refused and RTP is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The peer may publish audio.
    Allow,
    /// The peer may only receive.
    Deny,
}

/// A downstream slot: one sendonly m-line on a subscriber's connection, fed by at most one
/// track at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(pub u32);

#[derive(Debug)]
pub(crate) struct Slot {
    pub label: MediaLabel,
    /// Assigned when the slot's m-line is put into an offer.
    pub mid: Option<Mid>,
    /// The track currently forwarded into this slot.
    pub source: Option<TrackId>,
    pub rewriter: Rewriter,
    /// Set when the subscriber's answer for the m-line was applied.
    pub negotiated: bool,
    /// How the slot's packets are sent; chosen at its first forwarded packet.
    pub path: SendPath,
}

/// How a slot's packets reach the subscriber. Chosen once, at the slot's first forwarded
/// packet, and then kept: one SSRC never has two senders, so an SRTP index is never sealed
/// twice under the same key and sequence numbers never interleave.
#[derive(Debug, Default)]
pub(crate) enum SendPath {
    /// Nothing forwarded yet.
    #[default]
    Undecided,
    /// The engine writes and seals the packets itself (the fast path).
    Direct(DirectSlot),
    /// str0m's own RTP send path (`StreamTx::write_rtp` and a timer run): the fallback.
    Rtc,
}

/// What the fast path needs to know about one slot.
#[derive(Debug)]
pub(crate) struct DirectSlot {
    /// The SSRC str0m announced for the slot's m-line.
    pub ssrc: u32,
    /// Negotiated one-byte extension id of the RFC 6464 audio level.
    pub audio_level_id: Option<u8>,
    /// Negotiated one-byte extension id of the MID (RFC 8843 §15.2) and the mid's octets.
    pub mid_ext: Option<(u8, [u8; 16], usize)>,
    /// SRTP indices sealed so far.
    pub sealed: SealedIndices,
}

/// The fast path's per-connection state: the DTLS keys, the sealer derived from them and the
/// address str0m sends to.
#[derive(Debug)]
pub(crate) struct DirectTx {
    /// Filled by the DTLS handshake.
    pub keys: KeySlot,
    pub sealer: SealerState,
    /// (local, remote) of the nominated UDP pair, learned from str0m's own DTLS/SRTP sends.
    pub route: Option<(SocketAddr, SocketAddr)>,
}

#[derive(Debug)]
pub(crate) enum SealerState {
    /// No keys yet.
    Waiting,
    Ready(Sealer),
    /// A profile the fast path does not implement: slots use str0m's path.
    Unsupported,
}

impl DirectTx {
    pub fn new(keys: KeySlot) -> Self {
        DirectTx {
            keys,
            sealer: SealerState::Waiting,
            route: None,
        }
    }

    /// Note where str0m sends. STUN answers go wherever a check came from, but DTLS, SRTP and
    /// SRTCP go only to the nominated pair (RFC 7983 §7 tells them apart by the first octet).
    pub fn observe(&mut self, t: &Transmit) {
        let Some(&first) = t.contents.first() else {
            return;
        };
        if (20..=63).contains(&first) || (128..=191).contains(&first) {
            self.route = (t.proto == Protocol::Udp).then_some((t.source, t.destination));
        }
    }

    /// The sealer, derived from the keys on first use.
    pub fn sealer(&mut self, crypto: &CryptoProvider) -> Option<&mut Sealer> {
        if matches!(self.sealer, SealerState::Waiting)
            && let Some(keys) = self.keys.get()
        {
            self.sealer = match Sealer::from_keys(crypto, keys) {
                Some(s) => SealerState::Ready(s),
                None => SealerState::Unsupported,
            };
        }
        match &mut self.sealer {
            SealerState::Ready(s) => Some(s),
            SealerState::Waiting | SealerState::Unsupported => None,
        }
    }
}

/// The fast path's view of a slot's m-line, or `None` if it cannot send on it (no stream,
/// or an extension id that needs the two-byte form).
pub(crate) fn direct_slot(rtc: &mut Rtc, mid: Mid) -> Option<DirectSlot> {
    let ssrc = *rtc.direct_api().stream_tx_by_mid(mid, None)?.ssrc();
    let exts = rtc.media(mid)?.remote_extmap();
    // One-byte header extensions carry ids 1..=14 (RFC 8285 §4.2).
    let one_byte = |e: Extension| match exts.id_of(e) {
        None => Some(None),
        Some(id @ 1..=14) => Some(Some(id)),
        Some(_) => None,
    };
    let audio_level_id = one_byte(Extension::AudioLevel)?;
    let mid_ext = match one_byte(Extension::RtpMid)? {
        Some(id) => {
            let m: &str = &mid;
            let len = m.len();
            if !(1..=16).contains(&len) {
                return None;
            }
            let mut bytes = [0u8; 16];
            bytes[..len].copy_from_slice(m.as_bytes());
            Some((id, bytes, len))
        }
        None => None,
    };
    Some(DirectSlot {
        ssrc,
        audio_level_id,
        mid_ext,
        sealed: SealedIndices::default(),
    })
}

#[derive(Debug, Default)]
pub(crate) struct Negotiation {
    /// The offer sent to the client and not yet answered.
    pub pending: Option<SdpPendingOffer>,
    /// Slots in the pending offer.
    pub in_flight: Vec<SlotId>,
    /// Slots waiting for the next offer.
    pub queued: Vec<SlotId>,
    /// Data channels waiting for the next offer.
    pub queued_channels: Vec<String>,
    /// The next offer restarts ICE (see `ice`).
    pub ice_restart: bool,
    /// The credentials the pending offer announced in an ICE restart, adopted with its
    /// answer.
    pub restart_creds: Option<IceCreds>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerCounters {
    pub rtp_in: u64,
    pub rtp_dropped_unauthorized: u64,
    pub rtp_dropped_muted: u64,
}

pub(crate) struct Peer {
    pub id: PeerId,
    pub rtc: Rtc,
    pub publish: Publish,
    pub connected: bool,
    pub ufrag: String,
    pub deadline: Instant,
    pub negotiation: Negotiation,
    /// Published tracks by the publisher's mid.
    pub up: HashMap<Mid, TrackId>,
    pub ssrc_mid: HashMap<Ssrc, Mid>,
    pub slots: Vec<Slot>,
    pub slot_by_mid: HashMap<Mid, SlotId>,
    /// The Opus payload type this peer negotiated, once known.
    pub opus_pt: Option<Pt>,
    /// The RED (RFC 2198) payload type around Opus, if the peer negotiated RED.
    pub red_pt: Option<Pt>,
    /// Remote addresses routed to this peer, removed with it.
    pub addrs: Vec<SocketAddr>,
    /// Every audio m-line the connection has, in order of appearance.
    pub audio_mids: Vec<Mid>,
    pub counters: PeerCounters,
    /// The forwarding fast path's state.
    pub direct: DirectTx,
    /// The client offers every m-line, those the engine sends on included (LiveKit's
    /// single-connection protocol); the engine never offers (see `sections`).
    pub single: bool,
    /// The client's sections the engine may send on (single-connection peers).
    pub sections: super::sections::Sections,
    /// Set on a relay peer: the engine's own full-ICE, offering connection to an origin
    /// (see `relay`).
    pub relay: Option<super::relay::RelayState>,
    /// Served before other subscribers in each fan-out: another node's relay link.
    pub serve_first: bool,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("publish", &self.publish)
            .field("connected", &self.connected)
            .finish_non_exhaustive()
    }
}

impl Peer {
    pub fn slot_mut(&mut self, slot: SlotId) -> Option<&mut Slot> {
        self.slots.get_mut(slot.0 as usize)
    }

    /// Refresh the cached Opus and RED payload types after a negotiation.
    pub fn refresh_opus_pt(&mut self) {
        let opus = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus);
        self.opus_pt = opus.map(|p| p.pt());
        self.red_pt = opus.and_then(|p| p.red());
    }

    /// The mid an incoming RTP stream belongs to.
    pub fn mid_of(&mut self, ssrc: Ssrc, header_mid: Option<Mid>) -> Option<Mid> {
        if let Some(mid) = self.ssrc_mid.get(&ssrc) {
            return Some(*mid);
        }
        let mid = header_mid.or_else(|| self.rtc.direct_api().stream_rx(&ssrc).map(|s| s.mid()))?;
        self.ssrc_mid.insert(ssrc, mid);
        Some(mid)
    }
}

/// Whether an SDP offer asks to send audio or video to us: any non-rejected audio/video
/// m-section whose direction is `sendrecv` (the default) or `sendonly`.
pub(crate) fn offer_sends_media(sdp: &str) -> bool {
    let mut in_media = false;
    let mut sends = false;
    let mut any = false;
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("m=") {
            if in_media && sends {
                any = true;
            }
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or("");
            let port = parts.next().unwrap_or("0");
            in_media = (kind == "audio" || kind == "video") && port != "0";
            sends = true; // RFC 4566 §6: sendrecv unless stated otherwise.
        } else if in_media {
            match line {
                "a=recvonly" | "a=inactive" => sends = false,
                "a=sendonly" | "a=sendrecv" => sends = true,
                _ => {}
            }
        }
    }
    any || (in_media && sends)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_send_sections() {
        let base = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n";
        let app = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        assert!(!offer_sends_media(&format!("{base}{app}")));
        let recv = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:1\r\na=recvonly\r\n";
        assert!(!offer_sends_media(&format!("{base}{app}{recv}")));
        let send = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=sendonly\r\n";
        assert!(offer_sends_media(&format!("{base}{send}{app}")));
        let implicit = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\n";
        assert!(offer_sends_media(&format!("{base}{app}{implicit}")));
        let rejected = "m=audio 0 UDP/TLS/RTP/SAVPF 111\r\na=mid:4\r\na=sendrecv\r\n";
        assert!(!offer_sends_media(&format!("{base}{rejected}")));
        let inactive = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\n";
        assert!(!offer_sends_media(&format!("{base}{inactive}{app}")));
    }
}
