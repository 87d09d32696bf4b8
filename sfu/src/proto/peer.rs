//! One WebRTC peer connection: its `Rtc`, what it publishes, what it receives, and the
//! server-side SDP negotiation queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use str0m::Rtc;
use str0m::change::SdpPendingOffer;
use str0m::format::Codec;
use str0m::media::{Mid, Pt};
use str0m::rtp::Ssrc;

use super::forwarder::Rewriter;
use super::id::{MediaLabel, PeerId, TrackId};

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
    /// Remote addresses routed to this peer, removed with it.
    pub addrs: Vec<SocketAddr>,
    /// Every audio m-line the connection has, in order of appearance.
    pub audio_mids: Vec<Mid>,
    pub counters: PeerCounters,
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

    /// Refresh the cached Opus payload type after a negotiation.
    pub fn refresh_opus_pt(&mut self) {
        self.opus_pt = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt());
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
