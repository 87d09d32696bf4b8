//! Forwarding: subscriptions (slots fed by tracks), incoming RTP from publishers, and the
//! fan-out of each packet to the slots it feeds, through the fast path or str0m's send path.

use super::*;

impl Sfu {
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
        if p.relay.is_some() {
            // A relay peer only receives: nothing is sent back to the origin.
            return Err(SfuError::RelayPeer(peer));
        }
        let id = SlotId(p.slots.len() as u32);
        p.slots.push(Slot {
            label,
            mid: None,
            source: None,
            rewriter: Rewriter::new(initial_seq, initial_ts),
            negotiated: false,
            path: SendPath::Undecided,
        });
        if p.single {
            self.queue_single_slot(peer, id);
        } else {
            p.negotiation.queued.push(id);
            self.renegotiate(peer);
        }
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
            // A muted speaker stops speaking now, told with the mute itself.
            if muted && let Some(change) = self.speakers.silence(track) {
                self.events.push_back(Event::SpeakersChanged(vec![change]));
            }
        }
        Ok(())
    }

    /// Tap `track` (or stop): its packets are queued for [`Sfu::poll_tapped`].
    pub fn set_tap(&mut self, track: TrackId, tapped: bool) -> Result<(), SfuError> {
        let t = self
            .tracks
            .get_mut(&track)
            .ok_or(SfuError::UnknownTrack(track))?;
        t.tapped = tapped;
        Ok(())
    }

    pub(super) fn handle_rtp(&mut self, now: Instant, peer: PeerId, packet: RtpPacket) {
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
        // Only Opus and RED around Opus are forwarded (CN and DTMF are not relayed).
        let pt = Some(packet.header.payload_type);
        let encoding = match p.opus_pt {
            Some(opus) if pt == Some(opus) => red::Encoding::Opus,
            Some(opus) if pt == p.red_pt => match red::Encoding::of_red(&packet.payload, *opus) {
                Ok(encoding) => encoding,
                Err(_) => {
                    self.stats.rtp_dropped_malformed += 1;
                    return;
                }
            },
            _ => return,
        };
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        self.stats.rtp_in += 1;
        let gap = t.lost_before(*ssrc, *packet.seq_no);
        self.stats.rtp_lost += gap;
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
            encoding,
        };
        // Packets lost just before a RED packet, rebuilt from its redundant blocks.
        let recovered = red::rebuild_lost(&media, gap);
        self.stats.rtp_recovered += recovered.len() as u64;
        if t.tapped {
            for m in recovered.iter().chain(std::iter::once(&media)) {
                if self.tapped.len() >= MAX_TAPPED {
                    self.stats.rtp_tap_dropped += 1;
                    continue;
                }
                self.tapped.push_back(Tapped {
                    track,
                    packet: m.clone(),
                });
            }
        }
        for shard in &t.relays {
            for m in recovered.iter().chain(std::iter::once(&media)) {
                self.relays.push_back(Relay {
                    to: *shard,
                    from: self.config.shard,
                    msg: RelayMsg::Packet(track, m.clone()),
                });
            }
        }
        for m in &recovered {
            self.forward(now, track, m);
        }
        self.forward(now, track, &media);
    }

    /// Write `packet` of `track` to every local slot fed by it.
    pub(super) fn forward(&mut self, now: Instant, track: TrackId, packet: &MediaPacket) {
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
            let (Some(opus_pt), true) = (p.opus_pt, p.connected) else {
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
            // RED to subscribers that negotiated it, the primary Opus block to the others.
            let body = red::Outgoing::choose(
                packet.encoding,
                &packet.payload,
                *opus_pt,
                p.red_pt.map(|pt| *pt),
            );
            let pt = Pt::from(body.pt());
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
                let payload = body.bytes(&packet.payload);
                let ssrc = d.ssrc;
                let sent = self.out.sealed.push_with(
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
            let payload = match body {
                red::Outgoing::Whole(_) => packet.payload.clone(),
                _ => Arc::from(body.bytes(&packet.payload)),
            };
            let write = RtpWrite::new(
                pt,
                SeqNo::from(out.seq_no),
                out.timestamp,
                packet.received,
                payload,
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

    pub(super) fn fanout_add(&mut self, track: TrackId, peer: PeerId, slot: SlotId) {
        let first = self.peers.get(&peer).is_some_and(|p| p.serve_first);
        let subs = self.fanout.entry(track).or_default();
        if first {
            // Another node's relay link: its packet leaves in the batch's first send, and that
            // node's listeners wait no longer than this one's first.
            subs.insert(0, (peer, slot));
        } else {
            subs.push((peer, slot));
        }
        if subs.len() == 1 && track.shard() != self.config.shard {
            self.relays.push_back(Relay {
                to: track.shard(),
                from: self.config.shard,
                msg: RelayMsg::Subscribe(track),
            });
        }
    }

    pub(super) fn fanout_remove(&mut self, track: TrackId, peer: PeerId, slot: SlotId) {
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
    pub(super) fn clear_slots_of(&mut self, track: TrackId) {
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
}
