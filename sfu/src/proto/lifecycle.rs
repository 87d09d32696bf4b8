//! Peer lifecycle: creating peers from offers or with the engine's offer, renegotiation,
//! permission changes, publishing and unpublishing tracks, closing peers.

use super::*;

impl Sfu {
    /// Create a peer from a client's offer (the client drives negotiation, as on LiveKit's
    /// publisher connection). Fails with [`SfuError::PublishNotAllowed`] if the offer sends
    /// media and the peer may not publish.
    pub fn accept_offer(
        &mut self,
        now: Instant,
        config: PeerConfig,
        offer: SdpOffer,
    ) -> Result<(PeerId, SdpAnswer), SfuError> {
        self.accept_offer_as(now, None, config, offer, false)
    }

    /// [`Sfu::accept_offer`] with the peer's id chosen by the caller (`None`: by the engine).
    pub(super) fn accept_offer_as(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        config: PeerConfig,
        offer: SdpOffer,
        single: bool,
    ) -> Result<(PeerId, SdpAnswer), SfuError> {
        if config.publish == Publish::Deny && peer::offer_sends_media(&offer.to_sdp_string()) {
            self.stats.offers_refused += 1;
            return Err(SfuError::PublishNotAllowed);
        }
        let id = self.new_peer(now, id, &config, true)?;
        let result = self.with_peer(id, |p| {
            p.single = single;
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
    pub(super) fn create_peer_as(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        config: PeerConfig,
        channels: &[&str],
    ) -> Result<PeerId, SfuError> {
        let id = self.new_peer(now, id, &config, true)?;
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
        if p.relay.is_some() {
            return Err(SfuError::RelayPeer(peer));
        }
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
                Ok(self.adopt_remote_restart(peer, answer))
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
        if self.is_relay_peer(peer) {
            return self.relay_answer(now, peer, answer);
        }
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
                self.adopt_offered_restart(peer);
            }
            Err(e) => {
                if let Some(creds) = p.negotiation.restart_creds.take() {
                    self.by_ufrag.remove(&creds.ufrag);
                }
                let Some(p) = self.peers.get_mut(&peer) else {
                    return Err(SfuError::Rtc(e));
                };
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
        if p.relay.is_some() {
            // Its tracks are the origin's; it never sends. Closing it ends them.
            return Err(SfuError::RelayPeer(peer));
        }
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

    pub(super) fn new_peer(
        &mut self,
        now: Instant,
        id: Option<PeerId>,
        config: &PeerConfig,
        ice_lite: bool,
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
        let IceCreds { ufrag, pass } = self.new_ice_creds();
        let mut rtc_config = RtcConfig::new()
            .set_crypto_provider(self.crypto.clone())
            .set_ice_lite(ice_lite)
            .set_rtp_mode(true)
            .clear_codecs()
            // RED (RFC 2198) when the peer offers or accepts it: publishers may send it, and
            // subscribers that accept it get it (see `red`).
            .enable_opus(true, true)
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
                red_pt: None,
                addrs: Vec::new(),
                audio_mids: Vec::new(),
                counters: PeerCounters::default(),
                direct: DirectTx::new(keys),
                single: false,
                sections: Default::default(),
                relay: None,
                serve_first: false,
            }),
        );
        self.out.deadlines.insert((now, id));
        Ok(id)
    }

    pub(super) fn random_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..len)
            .map(|_| ALPHABET[(self.rng.next_u64() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }

    pub(super) fn with_peer<T>(
        &mut self,
        id: PeerId,
        f: impl FnOnce(&mut Peer) -> Result<T, str0m::RtcError>,
    ) -> Result<T, SfuError> {
        let p = self.peers.get_mut(&id).ok_or(SfuError::UnknownPeer(id))?;
        Ok(f(p)?)
    }

    /// A peer's m-line `mid` receives audio: publish it if the peer may.
    pub(super) fn publish_mid(&mut self, peer: PeerId, mid: Mid) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.publish == Publish::Deny || p.relay.is_some() || p.up.contains_key(&mid) {
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
        self.tracks.insert(track, Track::new(label.clone()));
        self.events
            .push_back(Event::TrackPublished { track, label });
    }

    /// After a grant of publish permission, publish m-lines that already receive audio.
    pub(super) fn publish_existing(&mut self, peer: PeerId) {
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

    /// Start an offer for `peer` if it has queued changes and none is outstanding.
    pub(super) fn renegotiate(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.single || p.relay.is_some() {
            // The client offers; the engine asks it to (see `sections`). A relay peer offers
            // its own way (see `relay`).
            return;
        }
        let n = &mut p.negotiation;
        if n.pending.is_some()
            || (n.queued.is_empty() && n.queued_channels.is_empty() && !n.ice_restart)
        {
            return;
        }
        let queued = std::mem::take(&mut n.queued);
        let channels = std::mem::take(&mut n.queued_channels);
        let restart = std::mem::take(&mut n.ice_restart);
        let mut api = p.rtc.sdp_api();
        let random = restart.then(|| api.ice_restart(true));
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
            let offer = match random {
                Some(random) => self.announce_restart(peer, offer, &random),
                None => offer,
            };
            self.events.push_back(Event::Offer {
                peer,
                offer,
                slots: added,
            });
        }
        self.drain_rtc(peer);
    }

    pub(super) fn unpublish(&mut self, track: TrackId, reason: UnpublishReason) {
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

    pub(super) fn remove_peer(&mut self, peer: PeerId) {
        let Some(p) = self.peers.remove(&peer) else {
            return;
        };
        self.out.deadlines.remove(&(p.deadline, peer));
        self.by_ufrag.remove(&p.ufrag);
        if let Some(creds) = &p.negotiation.restart_creds {
            self.by_ufrag.remove(&creds.ufrag);
        }
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
        for key in p.relay.iter().flat_map(|r| &r.routes) {
            if self.relay_links.get(key) == Some(&peer) {
                self.relay_links.remove(key);
            }
        }
        self.events.push_back(Event::Disconnected(peer));
    }
}
