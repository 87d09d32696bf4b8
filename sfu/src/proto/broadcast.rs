//! Data-channel broadcasts: one message to many peers ([`EngineCommand::SendData`], a reaction
//! to a room of thousands), sent a slice at a time.
//!
//! Each target costs a write into its SCTP association, a DTLS record and a datagram, so a
//! message to a thousand listeners is milliseconds of work. Done in one go, every input that
//! arrives meanwhile (a joining peer's STUN or DTLS, an offer, a publisher's audio) waits for
//! all of it. Instead a broadcast is queued and sent at most [`SfuConfig::data_slice`] targets
//! per input: one slice when the command arrives, then one per [`Sfu::handle_timeout`], which
//! [`Sfu::poll_output`] asks for at once while targets are waiting. A shell that serves its
//! commands and datagrams before an expired timer (as `shell::shard` does) so handles every
//! join step between two slices. Broadcasts keep their order (one queue), so messages to one
//! peer arrive as they were sent. At most [`SfuConfig::data_pending_max`] targets wait; a
//! broadcast that does not fit is dropped and counted ([`SfuStats::data_dropped`]).
//!
//! [`EngineCommand::SendData`]: super::EngineCommand::SendData
//! [`SfuConfig::data_slice`]: super::SfuConfig::data_slice
//! [`SfuConfig::data_pending_max`]: super::SfuConfig::data_pending_max
//! [`SfuStats::data_dropped`]: super::SfuStats::data_dropped

use super::*;

/// A broadcast not yet sent to every target.
#[derive(Debug)]
pub(super) struct Broadcast {
    /// Peers and their channel.
    targets: Vec<(PeerId, ChannelId)>,
    /// Targets before this one are done.
    next: usize,
    binary: bool,
    data: Arc<[u8]>,
}

/// Broadcasts waiting, in order.
#[derive(Debug, Default)]
pub(super) struct Broadcasts {
    queue: VecDeque<Broadcast>,
    /// Targets waiting, over every broadcast.
    pending: usize,
}

impl Broadcasts {
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl Sfu {
    /// Queue a message to `targets` and send the first slice of what waits.
    pub(super) fn broadcast(
        &mut self,
        now: Instant,
        targets: Vec<(PeerId, ChannelId)>,
        binary: bool,
        data: Arc<[u8]>,
    ) {
        self.last_now = self.last_now.max(now);
        if targets.is_empty() {
            return;
        }
        if self.broadcasts.pending + targets.len() > self.config.data_pending_max {
            self.stats.data_dropped += targets.len() as u64;
            tracing::warn!(
                targets = targets.len(),
                "too many data messages waiting; broadcast dropped"
            );
            return;
        }
        self.broadcasts.pending += targets.len();
        self.broadcasts.queue.push_back(Broadcast {
            targets,
            next: 0,
            binary,
            data,
        });
        self.send_broadcast_slice(now);
    }

    /// Send up to [`SfuConfig::data_slice`] waiting targets, oldest broadcast first.
    pub(super) fn send_broadcast_slice(&mut self, now: Instant) {
        let mut budget = self.config.data_slice.max(1);
        while budget > 0 {
            let Some(b) = self.broadcasts.queue.front_mut() else {
                return;
            };
            let end = b.targets.len().min(b.next + budget);
            let (binary, data) = (b.binary, b.data.clone());
            let slice: Vec<(PeerId, ChannelId)> = b.targets[b.next..end].to_vec();
            b.next = end;
            if b.next == b.targets.len() {
                self.broadcasts.queue.pop_front();
            }
            budget -= slice.len();
            self.broadcasts.pending -= slice.len();
            for (peer, channel) in slice {
                if let Err(e) = self.send_data(now, peer, channel, binary, &data) {
                    // The peer closed meanwhile; its owner hears of that.
                    tracing::debug!(error = %e, "data message had no target");
                }
            }
        }
    }

    /// Targets of data broadcasts not sent yet.
    pub fn data_pending(&self) -> usize {
        self.broadcasts.pending
    }
}

#[cfg(test)]
mod tests {
    // The start of simulated time; nothing here waits for the clock.
    #![allow(clippy::disallowed_methods)]
    use super::*;

    const SLICE: usize = 4;

    fn sfu(pending_max: usize) -> (Sfu, Instant) {
        let now = Instant::now();
        let mut config = SfuConfig::new(ShardId(0), [3; 32]);
        config.data_slice = SLICE;
        config.data_pending_max = pending_max;
        (Sfu::new(config, now), now)
    }

    /// Peers with a data channel each (not connected: a write finds no open channel, which
    /// changes nothing here but the queue), and a channel id to address.
    fn peers(sfu: &mut Sfu, now: Instant, n: u64) -> Vec<(PeerId, ChannelId)> {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(sfu.crypto.clone())
            .build(now);
        let channel = rtc.sdp_api().add_channel("_reliable".into());
        (1..=n)
            .map(|i| {
                let peer = PeerId::new(ShardId(0), i);
                sfu.handle_command(
                    now,
                    EngineCommand::CreatePeer {
                        peer,
                        publish: Publish::Deny,
                        channels: vec!["_reliable".into()],
                    },
                );
                while let Output::Event(_) = sfu.poll_output() {}
                (peer, channel)
            })
            .collect()
    }

    fn send(sfu: &mut Sfu, now: Instant, targets: &[(PeerId, ChannelId)]) {
        let command = EngineCommand::SendData {
            targets: targets.to_vec(),
            binary: true,
            data: Arc::from(&b"reaction"[..]),
        };
        sfu.handle_command(now, command);
    }

    #[test]
    fn a_broadcast_is_sent_a_slice_per_input_and_commands_do_not_wait_for_it() {
        let (mut sfu, now) = sfu(1_000);
        let targets = peers(&mut sfu, now, 10);
        send(&mut sfu, now, &targets);
        send(&mut sfu, now, &targets[..3]);
        // One slice went out with each command; the rest waits.
        assert_eq!(sfu.data_pending(), 13 - 2 * SLICE);
        // A command after the broadcasts is served at once: the new peer's offer is out
        // while the broadcasts still wait.
        let newcomer = PeerId::new(ShardId(0), 99);
        sfu.handle_command(
            now,
            EngineCommand::CreatePeer {
                peer: newcomer,
                publish: Publish::Deny,
                channels: vec!["_reliable".into()],
            },
        );
        assert!(
            matches!(sfu.poll_output(), Output::Event(Event::Offer { peer, .. }) if peer == newcomer)
        );
        assert_eq!(sfu.data_pending(), 13 - 2 * SLICE);
        // While targets wait, the engine asks to be woken at once; each wake-up is one slice.
        let mut wakeups = 0;
        while sfu.data_pending() > 0 {
            let Output::Timeout(t) = sfu.poll_output() else {
                continue;
            };
            assert!(
                t <= now,
                "a waiting broadcast asks for an immediate wake-up"
            );
            let before = sfu.data_pending();
            sfu.handle_timeout(now);
            assert_eq!(before - sfu.data_pending(), before.min(SLICE));
            wakeups += 1;
        }
        assert_eq!(wakeups, 2, "5 targets in slices of 4");
        assert!(sfu.broadcasts.is_empty());
        // Nothing waits: the next wake-up is the peers' own timers.
        while let Output::Event(_) = sfu.poll_output() {}
        assert!(matches!(sfu.poll_output(), Output::Timeout(t) if t > now));
    }

    #[test]
    fn broadcasts_beyond_the_bound_are_dropped_and_counted() {
        let (mut sfu, now) = sfu(10);
        let targets = peers(&mut sfu, now, 8);
        send(&mut sfu, now, &targets);
        assert_eq!(sfu.data_pending(), 8 - SLICE);
        // 4 waiting + 8 > 10: dropped whole.
        send(&mut sfu, now, &targets);
        assert_eq!(sfu.stats().data_dropped, 8);
        assert_eq!(sfu.data_pending(), 8 - SLICE);
        // 4 waiting + 6 fits; the slice sent with it is the older broadcast's rest.
        send(&mut sfu, now, &targets[..6]);
        assert_eq!(sfu.stats().data_dropped, 8);
        assert_eq!(sfu.data_pending(), 6);
    }

    #[test]
    fn targets_that_closed_meanwhile_are_skipped() {
        let (mut sfu, now) = sfu(1_000);
        let targets = peers(&mut sfu, now, 6);
        send(&mut sfu, now, &targets);
        let (gone, _) = targets[5];
        sfu.handle_command(now, EngineCommand::ClosePeer { peer: gone });
        sfu.handle_timeout(now);
        assert_eq!(sfu.data_pending(), 0);
        assert_eq!(sfu.stats().data_dropped, 0);
    }
}
