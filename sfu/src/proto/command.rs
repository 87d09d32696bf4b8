//! Commands as data: everything the engine's owner (signaling) asks of a shard.
//!
//! A command never needs a reply. Peer ids are chosen by the caller ([`PeerId::new`], the shard
//! encoded in the id), so a caller can file a peer before the engine has seen it, and results
//! come back as events: an answer as [`Event::Answer`], an offer as [`Event::Offer`], a refusal
//! as [`Event::CommandFailed`]. A fan-out (a data message to a room, a new track to every
//! auto-subscriber) is one command; [`EngineCommand::split`] cuts it into one command per shard
//! for the shell.
//!
//! [`Event::Answer`]: super::Event::Answer
//! [`Event::Offer`]: super::Event::Offer
//! [`Event::CommandFailed`]: super::Event::CommandFailed

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer};
use str0m::channel::ChannelId;

use super::id::{MediaLabel, PeerId, ShardId, TrackId};
use super::peer::Publish;
use super::{Event, PeerConfig, Sfu, SfuError};

/// One thing the engine's owner asks of the engine. Run on the shard owning the peer or track
/// with [`Sfu::handle_command`].
#[derive(Debug)]
#[non_exhaustive]
pub enum EngineCommand {
    /// Create `peer` from a client's offer (the client drives negotiation, as on LiveKit's
    /// publisher connection). Answered with [`Event::Answer`]; refused with
    /// [`Event::CommandFailed`] ([`SfuError::PublishNotAllowed`] if the offer sends media and
    /// the peer may not publish).
    AcceptOffer {
        /// The new peer's id, chosen by the caller on the shard it names.
        peer: PeerId,
        /// Whether it may publish.
        publish: Publish,
        /// The client's offer.
        offer: SdpOffer,
        /// The client offers every m-line, also those the engine sends subscribed tracks on,
        /// and the engine never offers (LiveKit's single-connection protocol, `/rtc/v1`):
        /// subscriptions take the client's recvonly audio m-lines, answers label them
        /// ([`Event::Answer`]'s `sending`), and more are asked for with
        /// [`Event::SectionsNeeded`].
        ///
        /// [`Event::SectionsNeeded`]: super::Event::SectionsNeeded
        single: bool,
        /// Tracks to forward to the new peer from the start (as [`EngineCommand::Subscribe`]
        /// would), set up before the answer is written: on a single connection they take the
        /// offer's recvonly m-lines and the first answer already labels them, so a client
        /// joining a room with speakers needs no second negotiation.
        subscribe: Vec<(TrackId, MediaLabel)>,
        /// The peer is another node's relay link (an edge relaying the room): each fan-out
        /// serves its slots before any listener's, so the edge's listeners wait for one
        /// packet here, not for this node's whole batch.
        relay: bool,
    },
    /// Create `peer`; the engine makes the first offer ([`Event::Offer`]) with these data
    /// channels (LiveKit's subscriber connection).
    CreatePeer {
        /// The new peer's id, chosen by the caller on the shard it names.
        peer: PeerId,
        /// Whether it may publish.
        publish: Publish,
        /// Data channel labels to open.
        channels: Vec<String>,
    },
    /// Create a relay peer `peer`: the engine's own connection to another node's engine (the
    /// origin), full ICE and controlling, offering `audios` recvonly audio m-lines (at least
    /// one) and these data channels. The offer comes as [`Event::Offer`] and is for the
    /// origin's `AcceptOffer` (`single: true`, `Publish::Deny`); its answer comes back with
    /// [`EngineCommand::HandleAnswer`]. Tracks the origin sends are reported as
    /// [`Event::RelayTrackPublished`]. See `relay`.
    ///
    /// [`Event::RelayTrackPublished`]: super::Event::RelayTrackPublished
    CreateRelayPeer {
        /// The new peer's id, chosen by the caller on the shard it names.
        peer: PeerId,
        /// How many recvonly audio m-lines the first offer carries.
        audios: u32,
        /// Data channel labels to open.
        channels: Vec<String>,
        /// The local address of a UDP socket of the link's own (its one host candidate, the
        /// source of everything it sends): the shell binds one per link and fills this in, so
        /// that two links to one origin differ in their 5-tuple and the origin's datagrams
        /// arrive on the link's own socket. `None`: the shard's own address (one link per
        /// origin per shard, and the origin's datagrams must arrive on this shard's socket).
        local: Option<SocketAddr>,
    },
    /// A relay peer offers again with `audios` more recvonly audio m-lines (0: one spare, for
    /// a new offer): what the origin asks for with [`Event::SectionsNeeded`]. The offer comes
    /// as [`Event::Offer`], after the answer to any offer outstanding.
    ///
    /// [`Event::SectionsNeeded`]: super::Event::SectionsNeeded
    OfferRelaySections {
        /// The relay peer.
        peer: PeerId,
        /// How many recvonly audio m-lines to add.
        audios: u32,
    },
    /// A client's re-offer on an existing peer. Answered with [`Event::Answer`].
    HandleOffer {
        /// The peer.
        peer: PeerId,
        /// The offer.
        offer: SdpOffer,
    },
    /// The client's answer to the engine's last [`Event::Offer`] for `peer`.
    HandleAnswer {
        /// The peer.
        peer: PeerId,
        /// The answer.
        answer: SdpAnswer,
    },
    /// Restart ICE on a peer the engine offers to (LiveKit's subscriber connection, when its
    /// client resumes): an ICE-restart offer arrives as [`Event::Offer`].
    RestartIce {
        /// The peer.
        peer: PeerId,
    },
    /// Change what a peer may do; revoking publish unpublishes its tracks at once.
    SetPublish {
        /// The peer.
        peer: PeerId,
        /// The new permission.
        publish: Publish,
    },
    /// Close a peer; [`Event::Disconnected`] follows.
    ClosePeer {
        /// The peer.
        peer: PeerId,
    },
    /// Forward `track` to each of `peers`, in a slot labelled `label` (an idle slot with that
    /// label is fed again, otherwise a new m-line is offered). The track may live on another
    /// shard.
    Subscribe {
        /// The track.
        track: TrackId,
        /// The label subscribers see (the same for every subscriber of a track).
        label: MediaLabel,
        /// The subscribing peers.
        peers: Vec<PeerId>,
    },
    /// Stop forwarding `track` to `peer`; the m-line stays for reuse.
    Unsubscribe {
        /// The subscriber.
        peer: PeerId,
        /// The track.
        track: TrackId,
    },
    /// Mute or unmute a track on the server.
    SetTrackMuted {
        /// The track.
        track: TrackId,
        /// Whether it is muted.
        muted: bool,
    },
    /// Hand a copy of every packet `track` forwards ([`Tapped`], decrypted, before any
    /// rewriting; nothing while the server mutes it) to the shell's tap, or stop doing so: how
    /// a recording receives a room's audio. The tap never holds up forwarding: the shell
    /// passes packets on without waiting and counts those that do not fit.
    ///
    /// [`Tapped`]: super::Tapped
    SetTap {
        /// The track.
        track: TrackId,
        /// Whether its packets are tapped.
        tapped: bool,
    },
    /// Send one message on a data channel of each target peer: queued and sent a slice of
    /// targets per input ([`SfuConfig::data_slice`]), so other commands and datagrams never
    /// wait for all of it; in order with other `SendData`s.
    ///
    /// [`SfuConfig::data_slice`]: super::SfuConfig::data_slice
    SendData {
        /// Peers and their channel.
        targets: Vec<(PeerId, ChannelId)>,
        /// Whether the message is binary.
        binary: bool,
        /// The message, shared by every target.
        data: Arc<[u8]>,
    },
}

/// Which command failed, in [`Event::CommandFailed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandKind {
    /// [`EngineCommand::AcceptOffer`].
    AcceptOffer,
    /// [`EngineCommand::CreatePeer`].
    CreatePeer,
    /// [`EngineCommand::HandleOffer`].
    HandleOffer,
    /// [`EngineCommand::HandleAnswer`].
    HandleAnswer,
    /// [`EngineCommand::CreateRelayPeer`].
    CreateRelayPeer,
    /// [`EngineCommand::OfferRelaySections`].
    OfferRelaySections,
}

impl EngineCommand {
    /// The shards this command concerns, with the part of it each must run: one entry for a
    /// command about one peer or track, one per shard for a fan-out.
    pub fn split(self) -> Vec<(ShardId, EngineCommand)> {
        match self {
            EngineCommand::Subscribe {
                track,
                label,
                peers,
            } => {
                let mut by_shard: BTreeMap<ShardId, Vec<PeerId>> = BTreeMap::new();
                for p in peers {
                    by_shard.entry(p.shard()).or_default().push(p);
                }
                by_shard
                    .into_iter()
                    .map(|(shard, peers)| {
                        let cmd = EngineCommand::Subscribe {
                            track,
                            label: label.clone(),
                            peers,
                        };
                        (shard, cmd)
                    })
                    .collect()
            }
            EngineCommand::SendData {
                targets,
                binary,
                data,
            } => {
                let mut by_shard: BTreeMap<ShardId, Vec<(PeerId, ChannelId)>> = BTreeMap::new();
                for t in targets {
                    by_shard.entry(t.0.shard()).or_default().push(t);
                }
                by_shard
                    .into_iter()
                    .map(|(shard, targets)| {
                        let cmd = EngineCommand::SendData {
                            targets,
                            binary,
                            data: data.clone(),
                        };
                        (shard, cmd)
                    })
                    .collect()
            }
            other => vec![(other.shard(), other)],
        }
    }

    /// The shard of a command about one peer or track (for a fan-out: of its first target).
    pub fn shard(&self) -> ShardId {
        match self {
            EngineCommand::AcceptOffer { peer, .. }
            | EngineCommand::CreatePeer { peer, .. }
            | EngineCommand::CreateRelayPeer { peer, .. }
            | EngineCommand::OfferRelaySections { peer, .. }
            | EngineCommand::HandleOffer { peer, .. }
            | EngineCommand::HandleAnswer { peer, .. }
            | EngineCommand::SetPublish { peer, .. }
            | EngineCommand::RestartIce { peer }
            | EngineCommand::ClosePeer { peer }
            | EngineCommand::Unsubscribe { peer, .. } => peer.shard(),
            EngineCommand::SetTrackMuted { track, .. } | EngineCommand::SetTap { track, .. } => {
                track.shard()
            }
            EngineCommand::Subscribe { track, peers, .. } => {
                peers.first().map_or(track.shard(), |p| p.shard())
            }
            EngineCommand::SendData { targets, .. } => {
                targets.first().map_or(ShardId(0), |t| t.0.shard())
            }
        }
    }

    /// The peers this command creates or changes (for a caller that must give up on them when
    /// the command cannot be delivered).
    pub fn peers(&self) -> Vec<PeerId> {
        match self {
            EngineCommand::AcceptOffer { peer, .. }
            | EngineCommand::CreatePeer { peer, .. }
            | EngineCommand::CreateRelayPeer { peer, .. }
            | EngineCommand::OfferRelaySections { peer, .. }
            | EngineCommand::HandleOffer { peer, .. }
            | EngineCommand::HandleAnswer { peer, .. }
            | EngineCommand::SetPublish { peer, .. }
            | EngineCommand::RestartIce { peer }
            | EngineCommand::ClosePeer { peer }
            | EngineCommand::Unsubscribe { peer, .. } => vec![*peer],
            EngineCommand::Subscribe { peers, .. } => peers.clone(),
            EngineCommand::SendData { targets, .. } => targets.iter().map(|t| t.0).collect(),
            EngineCommand::SetTrackMuted { .. } | EngineCommand::SetTap { .. } => vec![],
        }
    }
}

impl Sfu {
    /// Run a command. Results and refusals are reported as events ([`Sfu::poll_output`]);
    /// commands about peers or tracks this shard does not know are dropped (the peer closed
    /// meanwhile, and its owner learns that from [`Event::Disconnected`]).
    pub fn handle_command(&mut self, now: Instant, command: EngineCommand) {
        match command {
            EngineCommand::AcceptOffer {
                peer,
                publish,
                offer,
                single,
                subscribe,
                relay,
            } => {
                let config = self.peer_config(publish);
                let offered = single.then(|| offer.to_sdp_string());
                match self.accept_offer_as(now, Some(peer), config, offer, single) {
                    Ok((peer, answer)) => {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.serve_first = relay;
                        }
                        for (track, label) in subscribe {
                            ignore(self.subscribe(now, peer, track, label).map(|_| ()));
                        }
                        self.answered(peer, answer, offered.as_deref());
                    }
                    Err(error) => self.command_failed(peer, CommandKind::AcceptOffer, error),
                }
            }
            EngineCommand::CreatePeer {
                peer,
                publish,
                channels,
            } => {
                let config = self.peer_config(publish);
                let labels: Vec<&str> = channels.iter().map(String::as_str).collect();
                if let Err(error) = self.create_peer_as(now, Some(peer), config, &labels) {
                    self.command_failed(peer, CommandKind::CreatePeer, error);
                }
            }
            EngineCommand::CreateRelayPeer {
                peer,
                audios,
                channels,
                local,
            } => {
                let labels: Vec<&str> = channels.iter().map(String::as_str).collect();
                let result = self.create_relay_peer(now, Some(peer), audios, &labels, local);
                if let Err(error) = result {
                    self.command_failed(peer, CommandKind::CreateRelayPeer, error);
                }
            }
            EngineCommand::OfferRelaySections { peer, audios } => {
                match self.offer_relay_sections(now, peer, audios) {
                    Ok(()) | Err(SfuError::UnknownPeer(_)) => {}
                    Err(error) => self.command_failed(peer, CommandKind::OfferRelaySections, error),
                }
            }
            EngineCommand::HandleOffer { peer, offer } => {
                let single = self.peers.get(&peer).is_some_and(|p| p.single);
                let offered = single.then(|| offer.to_sdp_string());
                match self.handle_offer(now, peer, offer) {
                    Ok(answer) => self.answered(peer, answer, offered.as_deref()),
                    Err(error) => self.command_failed(peer, CommandKind::HandleOffer, error),
                }
            }
            EngineCommand::HandleAnswer { peer, answer } => {
                if let Err(error) = self.handle_answer(now, peer, answer) {
                    self.command_failed(peer, CommandKind::HandleAnswer, error);
                }
            }
            EngineCommand::SetPublish { peer, publish } => {
                ignore(self.set_publish(now, peer, publish));
            }
            EngineCommand::RestartIce { peer } => ignore(self.restart_ice(now, peer)),
            EngineCommand::ClosePeer { peer } => ignore(self.close_peer(now, peer)),
            EngineCommand::Subscribe {
                track,
                label,
                peers,
            } => {
                for peer in peers {
                    let result = match self.find_slot(peer, &label) {
                        Some(slot) => self.set_slot_source(now, peer, slot, Some(track)),
                        None => self.subscribe(now, peer, track, label.clone()).map(|_| ()),
                    };
                    ignore(result);
                }
            }
            EngineCommand::Unsubscribe { peer, track } => {
                ignore(self.unsubscribe(now, peer, track));
            }
            EngineCommand::SetTrackMuted { track, muted } => {
                ignore(self.set_track_muted(track, muted));
            }
            EngineCommand::SetTap { track, tapped } => ignore(self.set_tap(track, tapped)),
            EngineCommand::SendData {
                targets,
                binary,
                data,
            } => self.broadcast(now, targets, binary, data),
        }
    }

    /// An answer for the owner, its sending m-lines labelled on single-connection peers.
    fn answered(&mut self, peer: PeerId, answer: SdpAnswer, offer: Option<&str>) {
        let (answer, sending) = self.answer_sections(peer, answer, offer);
        self.events.push_back(Event::Answer {
            peer,
            answer,
            sending,
        });
        // What slots still wait for, asked after the answer that did not give it.
        self.ask_sections(peer);
    }

    pub(super) fn peer_config(&self, publish: Publish) -> PeerConfig {
        PeerConfig {
            candidates: self.config.candidates.clone(),
            publish,
        }
    }

    fn command_failed(&mut self, peer: PeerId, command: CommandKind, error: SfuError) {
        tracing::debug!(peer = %peer, ?command, error = %error, "engine command refused");
        self.events.push_back(Event::CommandFailed {
            peer,
            command,
            error,
        });
    }
}

/// A command about something that went away meanwhile is not an error of the caller.
fn ignore(result: Result<(), SfuError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "engine command had no effect");
    }
}
