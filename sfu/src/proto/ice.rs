//! ICE restarts that keep routing working.
//!
//! Every peer's local ICE ufrag starts with its shard in two hex digits, and each shard files
//! its peers by ufrag (see `demux`): a binding request from an address not seen before reaches
//! the right shard and peer by that ufrag alone. str0m 0.25 makes up fresh random credentials
//! on an ICE restart, both when it offers one (`SdpApi::ice_restart`) and when it answers a
//! remote offer that restarts ICE, so those would route nowhere. The engine therefore replaces
//! them with credentials of its own making, shard prefix included: in the SDP it sends (the
//! offer or answer carrying the restart) and in the ICE agent (`DirectApi`), and files the new
//! ufrag for the peer.
//!
//! - A client's offer that restarts ICE (livekit-client's publisher on a resume) is answered
//!   with the engine's credentials at once ([`Sfu::adopt_remote_restart`]).
//! - [`Sfu::restart_ice`] makes the engine offer an ICE restart (the subscriber connection on
//!   a resume): the offer announces the engine's credentials, which are adopted with the
//!   client's answer ([`Sfu::adopt_offered_restart`]). The new ufrag routes to the peer from
//!   the moment the offer is made; the old one until the answer arrives.

use super::*;

impl Sfu {
    /// Offer an ICE restart to `peer` (an offer arrives as [`Event::Offer`]). An offer still
    /// unanswered is replaced: its changes go into the new one. Call when the client resumed
    /// after losing its connection.
    pub fn restart_ice(&mut self, now: Instant, peer: PeerId) -> Result<(), SfuError> {
        let p = self
            .peers
            .get_mut(&peer)
            .ok_or(SfuError::UnknownPeer(peer))?;
        if p.relay.is_some() {
            return Err(SfuError::RelayPeer(peer));
        }
        if p.negotiation.pending.take().is_some() {
            // The client never saw (or will never answer) that offer: offer its slots again.
            let in_flight = std::mem::take(&mut p.negotiation.in_flight);
            for s in &in_flight {
                if let Some(slot) = p.slots.get_mut(s.0 as usize) {
                    slot.mid = None;
                }
            }
            p.negotiation.queued.splice(0..0, in_flight);
            if let Some(creds) = p.negotiation.restart_creds.take() {
                self.by_ufrag.remove(&creds.ufrag);
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.negotiation.ice_restart = true;
        }
        self.renegotiate(peer);
        self.after_mutation(now, peer);
        Ok(())
    }

    /// Fresh local ICE credentials for a peer of this shard (ufrag prefixed by the shard).
    pub(super) fn new_ice_creds(&mut self) -> IceCreds {
        let ufrag = format!(
            "{:02x}{}",
            self.config.shard.0 & 0xff,
            self.random_token(UFRAG_LEN - 2)
        );
        let pass = self.random_token(24);
        IceCreds { ufrag, pass }
    }

    /// In an offer str0m made with `SdpApi::ice_restart` (announcing its `random`
    /// credentials), announce the engine's own instead; they are adopted with the answer.
    pub(super) fn announce_restart(
        &mut self,
        peer: PeerId,
        offer: SdpOffer,
        random: &IceCreds,
    ) -> SdpOffer {
        let creds = self.new_ice_creds();
        let sdp = replace_creds(&offer.to_sdp_string(), random, &creds);
        let Ok(rewritten) = SdpOffer::from_sdp_string(&sdp) else {
            // INVARIANT-like: only the credential strings changed; should it fail anyway, the
            // offer keeps str0m's credentials and the restart still works on one shard.
            tracing::warn!(peer = %peer, "could not rewrite ICE restart offer");
            return offer;
        };
        self.by_ufrag.insert(creds.ufrag.clone(), peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.negotiation.restart_creds = Some(creds);
        }
        rewritten
    }

    /// The client answered an offer that restarted ICE: the agent takes the credentials the
    /// offer announced.
    pub(super) fn adopt_offered_restart(&mut self, peer: PeerId) {
        let Some(creds) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.negotiation.restart_creds.take())
        else {
            return;
        };
        self.adopt_creds(peer, creds);
    }

    /// After applying a client's offer: if it restarted ICE, str0m answered with random
    /// credentials; answer with the engine's own instead and adopt them.
    pub(super) fn adopt_remote_restart(&mut self, peer: PeerId, answer: SdpAnswer) -> SdpAnswer {
        let Some(p) = self.peers.get_mut(&peer) else {
            return answer;
        };
        let random = p.rtc.direct_api().local_ice_credentials();
        if random.ufrag == p.ufrag {
            return answer;
        }
        let creds = self.new_ice_creds();
        let sdp = replace_creds(&answer.to_sdp_string(), &random, &creds);
        let Ok(rewritten) = SdpAnswer::from_sdp_string(&sdp) else {
            tracing::warn!(peer = %peer, "could not rewrite ICE restart answer");
            return answer;
        };
        self.adopt_creds(peer, creds);
        rewritten
    }

    /// Make `creds` the peer's local ICE credentials and its ufrag the one it is filed by.
    fn adopt_creds(&mut self, peer: PeerId, creds: IceCreds) {
        let candidates = self.config.candidates.clone();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.rtc.direct_api().set_local_ice_credentials(creds.clone());
        // The agent's candidates carry the ufrag they were added under (and it appears in
        // their SDP lines): add them again, which replaces each with one under the new ufrag.
        for addr in candidates {
            if let Ok(c) = Candidate::host(addr, "udp") {
                p.rtc.add_local_candidate(c);
            }
        }
        let old = std::mem::replace(&mut p.ufrag, creds.ufrag.clone());
        self.by_ufrag.remove(&old);
        self.by_ufrag.insert(creds.ufrag, peer);
        tracing::debug!(peer = %peer, "ICE restarted with new local credentials");
    }
}

/// `sdp` with `from`'s ufrag and password replaced by `to`'s (in `a=ice-ufrag`, `a=ice-pwd`
/// and the candidates' `ufrag` extension).
fn replace_creds(sdp: &str, from: &IceCreds, to: &IceCreds) -> String {
    sdp.replace(&from.pass, &to.pass)
        .replace(&from.ufrag, &to.ufrag)
}
