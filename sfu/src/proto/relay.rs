//! Relay peers: the edge side of a node-to-node media link (docs/ARCHITECTURE.md, "Relayed
//! media").
//!
//! A relay peer is the one peer the engine connects *out*: its `Rtc` runs full ICE (not
//! ICE-lite, as every other peer does), makes the first offer, and so is the controlling ICE
//! agent and the side that nominates. Its offer carries only recvonly audio m-lines (and data
//! channels, if asked): it never sends media. The origin's engine accepts that offer as an
//! ordinary single-connection subscriber (`EngineCommand::AcceptOffer` with `single: true` and
//! `Publish::Deny`), subscribes it to tracks, and labels each m-line it sends on with the
//! track's msid in its answer (see `sections`).
//!
//! - [`EngineCommand::CreateRelayPeer`] creates the peer; its offer comes out as
//!   [`Event::Offer`] (with no slots). Its one host candidate is `local`, the address of a UDP
//!   socket of the link's own, which the shell binds and fills in (without it, the shard's
//!   own addresses). The origin's answer goes back with [`EngineCommand::HandleAnswer`];
//!   str0m takes the origin's candidates from it, and the engine routes datagrams from those
//!   addresses *to the link's local address* to the relay peer, keyed by (origin address,
//!   local address): the origin is ICE-lite and sends only binding responses, which carry no
//!   ufrag that could route its address. The link's socket belongs to the relay peer's
//!   shard, so the origin's datagrams arrive there directly.
//! - [`EngineCommand::OfferRelaySections`] makes a new offer, with more recvonly m-lines if
//!   asked: what the origin asks for with `Event::SectionsNeeded`. The origin answers
//!   `inactive` for an m-line it has no track for yet, and str0m then makes it inactive here
//!   too; every relay offer turns such m-lines back to recvonly, so that the origin can
//!   answer with the track it bound to one meanwhile. A new offer asked for while no m-line
//!   is inactive and none is asked for carries one spare m-line (str0m makes no offer
//!   without a change), the free section the origin's next subscription takes. While an
//!   offer is unanswered, further requests wait for its answer and are offered together.
//! - After each answer the engine files, as a track published by the relay peer, every
//!   m-line the origin sends on (`a=sendonly` in the answer), with the origin's msid as its
//!   label, and reports it as [`Event::RelayTrackPublished`]. From then on the track is a
//!   published track like any: subscribers on this engine are fed by the same fan-out
//!   (rewriter, RED passthrough and recovery, audio level and voice activity passthrough,
//!   speaker detection, tap, server mute). An m-line the origin stops sending on
//!   (`inactive`), or whose msid changes, is unpublished ([`Event::TrackUnpublished`],
//!   `Removed`); when the relay peer closes or fails, all its tracks are (`PeerGone`), as a
//!   publisher's. (The origin's engine keeps an m-line with its slot once bound, so today a
//!   track that ends on the origin stays filed here, idle, until the owner closes the relay
//!   peer or learns of it from the origin's signaling.)
//! - The relay peer refuses what would make it send or renegotiate as an answerer: a
//!   subscription, a remote offer, a change of its publish permission and an ICE restart
//!   fail with [`SfuError::RelayPeer`].
//! - Losing the origin: the relay peer's ICE agent reports [`Event::IceLost`] when the
//!   origin stops answering its checks (about 23 s after the origin closed its side, in the
//!   simulated test), and the owner closes it; the owner should close it as soon as the
//!   origin's signaling says the link is gone rather than wait for that.
//!
//! Datagrams reach the relay peer by (source, destination). With a socket per link, two relay
//! links between the same two engines (two rooms relayed from one origin to one edge, or two
//! nodes relaying to each other) differ in the edge's port, so both engines tell them apart:
//! the origin by source address, as any subscriber, the edge by local address. Two links
//! from one *shared* local address to the same origin address (only without `local`) would
//! share a 5-tuple: the second is not routed (a warning), so the shell always gives one.
//!
//! Retransmission: none, on either side, as on listener links. str0m 0.25 retransmits only
//! through an RTX payload type and sends NACKs only for streams that have one; Opus has
//! none, so the relay peer never NACKs, and the origin's str0m could not answer a NACK for
//! Opus either (its packets are not `nackable`), whichever send path the origin uses. Loss on
//! the link is covered by RED where the publisher sends it (the edge rebuilds lost packets
//! from the next packet's redundant block and forwards them) and by Opus in-band FEC.
//!
//! [`EngineCommand::CreateRelayPeer`]: super::EngineCommand::CreateRelayPeer
//! [`EngineCommand::HandleAnswer`]: super::EngineCommand::HandleAnswer
//! [`EngineCommand::OfferRelaySections`]: super::EngineCommand::OfferRelaySections

use super::sections::{Section, split};
use super::*;

/// What a relay peer keeps beside an ordinary peer's state.
#[derive(Debug, Default)]
pub(crate) struct RelayState {
    /// Recvonly m-lines asked for and not yet offered.
    pub wanted: u32,
    /// A new offer was asked for and not yet made.
    pub reoffer: bool,
    /// Recvonly m-lines in the offer awaiting its answer.
    pub in_flight: u32,
    /// Every recvonly m-line offered, in order (those of an offer whose answer failed too:
    /// str0m knows no media for them).
    pub mids: Vec<Mid>,
    /// The local addresses the peer uses: the link's own socket, or the shard's.
    pub locals: Vec<SocketAddr>,
    /// The (origin address, local address) pairs routed to this peer.
    pub routes: Vec<(SocketAddr, SocketAddr)>,
}

impl Sfu {
    /// Create a relay peer with `audios` recvonly audio m-lines (at least one) and the given
    /// data channels; its offer arrives as [`Event::Offer`]. `id` is chosen by the caller
    /// (`None`: by the engine). `local` is the address of the link's own socket, its only
    /// candidate (`None`: the shard's candidates).
    pub fn create_relay_peer(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        audios: u32,
        channels: &[&str],
        local: Option<SocketAddr>,
    ) -> Result<PeerId, SfuError> {
        // It receives into the engine as a publisher does; it never sends media.
        let mut config = self.peer_config(Publish::Allow);
        if let Some(local) = local {
            config.candidates = vec![local];
        }
        let locals = config.candidates.clone();
        let id = self.new_peer(now, id, &config, false)?;
        if let Some(p) = self.peers.get_mut(&id) {
            p.negotiation.queued_channels = channels.iter().map(|c| (*c).to_owned()).collect();
            p.relay = Some(RelayState {
                wanted: audios.max(1),
                reoffer: false,
                in_flight: 0,
                mids: Vec::new(),
                locals,
                routes: Vec::new(),
            });
        }
        self.relay_offer(id);
        self.after_mutation(now, id);
        Ok(id)
    }

    /// Ask for `audios` more recvonly m-lines on a relay peer (none: a new offer with one
    /// spare m-line). The offer arrives as [`Event::Offer`], at once or after the answer to
    /// the one outstanding.
    pub fn offer_relay_sections(
        &mut self,
        now: Instant,
        peer: PeerId,
        audios: u32,
    ) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        let Some(r) = p.relay.as_mut() else {
            return Err(SfuError::NotRelayPeer(peer));
        };
        r.wanted += audios;
        r.reoffer = true;
        self.relay_offer(peer);
        self.after_mutation(now, peer);
        Ok(())
    }

    /// Whether `peer` is a relay peer.
    pub fn is_relay_peer(&self, peer: PeerId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.relay.is_some())
    }

    /// Make the relay peer's next offer if it wants sections or channels and no offer is
    /// outstanding.
    fn relay_offer(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.negotiation.pending.is_some() {
            return;
        }
        // m-lines the origin answered `inactive` (sections it had no track for): str0m made
        // them inactive here too, and every offer asks to receive on them again, so that the
        // origin can answer with the track it bound to one meanwhile.
        let Some(r) = p.relay.as_ref() else {
            return;
        };
        let idle: Vec<Mid> = r
            .mids
            .iter()
            .copied()
            .filter(|m| {
                p.rtc
                    .media(*m)
                    .is_some_and(|media| media.direction() == Direction::Inactive)
            })
            .collect();
        let Some(r) = p.relay.as_mut() else {
            return;
        };
        let asked = r.wanted > 0 || r.reoffer || !p.negotiation.queued_channels.is_empty();
        if !asked {
            return;
        }
        if r.wanted == 0 && idle.is_empty() && p.negotiation.queued_channels.is_empty() {
            // A new offer needs a change: one spare m-line, the origin's next free section.
            r.wanted = 1;
        }
        r.reoffer = false;
        let audios = std::mem::take(&mut r.wanted);
        let channels = std::mem::take(&mut p.negotiation.queued_channels);
        let mut api = p.rtc.sdp_api();
        for mid in idle {
            api.set_direction(mid, Direction::RecvOnly);
        }
        let mut added = Vec::new();
        for _ in 0..audios {
            added.push(api.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None));
        }
        for label in channels {
            api.add_channel(label);
        }
        if let Some((offer, pending)) = api.apply() {
            p.negotiation.pending = Some(pending);
            if let Some(r) = p.relay.as_mut() {
                r.in_flight = audios;
                r.mids.extend(added);
            }
            self.events.push_back(Event::Offer {
                peer,
                offer,
                slots: Vec::new(),
            });
        }
        self.drain_rtc(peer);
    }

    /// The origin's answer to a relay peer's offer: apply it, route the origin's addresses to
    /// the peer, file the tracks the origin sends, then offer what was asked for meanwhile.
    pub(super) fn relay_answer(
        &mut self,
        now: Instant,
        peer: PeerId,
        answer: SdpAnswer,
    ) -> Result<(), SfuError> {
        let sdp = answer.to_sdp_string();
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        let pending = p
            .negotiation
            .pending
            .take()
            .ok_or(SfuError::NoPendingOffer)?;
        let in_flight = p
            .relay
            .as_mut()
            .map_or(0, |r| std::mem::take(&mut r.in_flight));
        if let Err(e) = p.rtc.sdp_api().accept_answer(pending, answer) {
            // The offer is spent; its sections are offered again with the next one.
            if let Some(r) = p.relay.as_mut() {
                r.wanted += in_flight;
                r.reoffer = true;
            }
            self.after_mutation(now, peer);
            return Err(SfuError::Rtc(e));
        }
        p.refresh_opus_pt();
        self.route_origin(peer, &sdp);
        self.file_relayed(peer, &sdp);
        self.after_mutation(now, peer);
        self.relay_offer(peer);
        self.after_mutation(now, peer);
        Ok(())
    }

    /// Datagrams from the answer's candidates to the peer's local addresses go to the relay
    /// peer.
    fn route_origin(&mut self, peer: PeerId, sdp: &str) {
        let Some(locals) = self
            .peers
            .get(&peer)
            .and_then(|p| p.relay.as_ref())
            .map(|r| r.locals.clone())
        else {
            return;
        };
        for line in sdp.lines() {
            let Some(attr) = line.trim_end().strip_prefix("a=") else {
                continue;
            };
            if !attr.starts_with("candidate:") {
                continue;
            }
            let Ok(c) = Candidate::from_sdp_string(attr) else {
                continue;
            };
            if c.proto() != Protocol::Udp {
                continue;
            }
            for local in &locals {
                let key = (c.addr(), *local);
                match self.relay_links.get(&key) {
                    Some(other) if *other != peer => {
                        tracing::warn!(
                            peer = %peer,
                            other = %other,
                            "relay peer's origin address and local socket already routed to another peer"
                        );
                    }
                    Some(_) => {}
                    None => {
                        self.relay_links.insert(key, peer);
                        if let Some(r) = self.peers.get_mut(&peer).and_then(|p| p.relay.as_mut()) {
                            r.routes.push(key);
                        }
                    }
                }
            }
        }
    }

    /// File the m-lines the origin sends on as the relay peer's tracks; unpublish those it
    /// stopped sending on or relabelled.
    fn file_relayed(&mut self, peer: PeerId, sdp: &str) {
        let (_, sections) = split(sdp);
        let sending: HashMap<Mid, (MediaLabel, Option<u32>)> = sections
            .iter()
            .filter(|s| s.is_live_audio() && s.sends())
            .filter_map(|s| {
                let mid = Mid::from(s.mid()?);
                Some((mid, (msid(s)?, first_ssrc(s))))
            })
            .collect();
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        let ended: Vec<(Mid, TrackId)> =
            p.up.iter()
                .filter(
                    |(mid, track)| match (sending.get(*mid), self.tracks.get(*track)) {
                        (Some((label, _)), Some(t)) => t.label != *label,
                        _ => true,
                    },
                )
                .map(|(mid, track)| (*mid, *track))
                .collect();
        for (mid, track) in ended {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.up.remove(&mid);
                p.ssrc_mid.retain(|_, m| *m != mid);
            }
            self.unpublish(track, UnpublishReason::Removed);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        // In the answer's order, so events come in m-line order.
        for s in &sections {
            let Some(mid) = s.mid().map(Mid::from) else {
                continue;
            };
            let Some((label, ssrc)) = sending.get(&mid) else {
                continue;
            };
            if p.up.contains_key(&mid) {
                continue;
            }
            let track = TrackId { peer, mid };
            p.up.insert(mid, track);
            self.tracks.insert(track, Track::new(label.clone()));
            self.events.push_back(Event::RelayTrackPublished {
                track,
                label: label.clone(),
                ssrc: *ssrc,
            });
        }
    }
}

/// The msid of an m-section (`a=msid:<stream> <track>`).
fn msid(s: &Section<'_>) -> Option<MediaLabel> {
    let value = s.lines.iter().find_map(|l| l.strip_prefix("a=msid:"))?;
    let (stream, track) = value.split_once(' ')?;
    Some(MediaLabel {
        stream_id: stream.to_owned(),
        track_id: track.trim().to_owned(),
    })
}

/// The first SSRC an m-section announces (`a=ssrc:<ssrc> …`).
fn first_ssrc(s: &Section<'_>) -> Option<u32> {
    s.lines.iter().find_map(|l| {
        let rest = l.strip_prefix("a=ssrc:")?;
        rest.split(' ').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_msid_and_ssrc_of_a_section() {
        let sdp = "v=0\r\ns=-\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:2\r\na=sendonly\r\n\
            a=msid:PA_a|TR_b TR_b\r\na=ssrc:1234 cname:c\r\na=ssrc:1234 msid:PA_a|TR_b TR_b\r\n";
        let (_, sections) = split(sdp);
        assert_eq!(sections.len(), 1);
        let label = msid(&sections[0]).expect("msid");
        assert_eq!(label.stream_id, "PA_a|TR_b");
        assert_eq!(label.track_id, "TR_b");
        assert_eq!(first_ssrc(&sections[0]), Some(1234));
        let bare = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:3\r\na=inactive\r\n";
        let (_, sections) = split(bare);
        assert!(msid(&sections[0]).is_none());
        assert_eq!(first_ssrc(&sections[0]), None);
    }
}
