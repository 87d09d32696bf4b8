//! Demultiplexing: which peer a datagram belongs to, in O(1) (a relay link's by its origin and
//! local address, every other by source address, or for a new address by the authenticated
//! STUN binding request's ufrag, whose first two characters name the owning shard), and
//! messages from other shards.

use super::*;

impl Sfu {
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
        // A relay link's datagrams by origin and local address (the origin is ICE-lite: its
        // binding responses carry no ufrag to route by), then everyone's by source.
        let link = if self.relay_links.is_empty() {
            None
        } else {
            self.relay_links.get(&(source, destination)).copied()
        };
        let peer = match link.or_else(|| self.by_addr.get(&source).copied()) {
            Some(p) => p,
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

    /// Route a datagram from an address not seen before: only an authenticated STUN binding
    /// request may bind a new address to a peer.
    pub(super) fn route_new(
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
}
