//! One shard: a thread with a current-thread tokio runtime, one engine core, one socket, and
//! a socket of their own for each of its relay links, all read by the shard's one loop.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use super::traffic::{Queue, Traffic};
use super::udp::{self, SendBatch};
use super::{ShardInfo, TapSink};
use crate::proto::speaker::SpeakerLevel;
use crate::proto::{
    CommandKind, EngineCommand, Event, Output, PeerId, Relay, RelayMsg, Routed, Sfu, SfuConfig,
    SfuError, SfuStats, TrackId,
};

/// Datagrams read per wake-up before outputs are flushed (a cooperative budget, as Firezone's
/// `MAX_EVENTLOOP_ITERS`).
const RECV_BUDGET: usize = 256;

/// Largest datagram accepted; WebRTC packets stay under the 1200-1500 byte MTU.
const MAX_DATAGRAM: usize = 2048;

/// How soon a shard retries telling the owner about peers it closed, or speaker changes it
/// dropped, because the event channel was full.
const LOST_RETRY: Duration = Duration::from_millis(10);

/// What a shard receives from the outside and from other shards.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// Run a command on the core.
    Command(EngineCommand),
    /// Report the core's counters.
    Stats(oneshot::Sender<SfuStats>),
    /// A message from another shard's core.
    Relay(Relay),
    /// A datagram that arrived on another shard's socket but belongs to a peer here
    /// (`destination`: the address it arrived at, as its peer's candidate names it).
    Datagram {
        source: SocketAddr,
        destination: SocketAddr,
        received: Instant,
        contents: Vec<u8>,
    },
    /// Stop the shard.
    Stop,
}

pub(crate) struct Shard {
    info: ShardInfo,
    socket: std::net::UdpSocket,
    inbox: mpsc::Receiver<ShardMsg>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
    events: mpsc::Sender<Event>,
    seed: [u8; 32],
    traffic: Arc<Traffic>,
    tap: TapSink,
    /// Peers closed because an event about them did not fit in the event channel; their
    /// `Disconnected` is still owed to the owner. At most one entry per peer the shard had.
    lost: BTreeSet<PeerId>,
    /// Speaker changes dropped for a full event channel, the latest per track in the order
    /// they happened (two tracks may be one participant's): owed to the owner, in one
    /// `SpeakersChanged` before any later change, so that no client is left with a speaker
    /// who stopped long ago still speaking. At most one entry per track.
    owed_speakers: Vec<SpeakerLevel<TrackId>>,
    /// Relay links' own sockets, by the address their relay peer's candidate advertises.
    links: HashMap<SocketAddr, Link>,
    /// Where the next search for a free link port starts, as an offset into the range.
    link_cursor: usize,
}

/// A relay link's own socket, read by the shard's loop beside the shard's socket (no task of
/// its own: a relayed packet costs one wake-up of the shard, not a hand-over between tasks).
struct Link {
    peer: PeerId,
    socket: UdpSocket,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        info: ShardInfo,
        socket: std::net::UdpSocket,
        inbox: mpsc::Receiver<ShardMsg>,
        shards: Vec<mpsc::Sender<ShardMsg>>,
        events: mpsc::Sender<Event>,
        seed: [u8; 32],
        traffic: Arc<Traffic>,
        tap: TapSink,
    ) -> Self {
        // Shards start their search for a free link port apart.
        let link_cursor = usize::from(info.id.0) * 8;
        Shard {
            info,
            socket,
            inbox,
            shards,
            events,
            seed,
            traffic,
            tap,
            lost: BTreeSet::new(),
            owed_speakers: Vec::new(),
            links: HashMap::new(),
            link_cursor,
        }
    }

    /// Run until stopped. Blocks the calling thread.
    pub fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start shard runtime");
                return;
            }
        };
        let id = self.info.id;
        if let Err(e) = runtime.block_on(self.run_loop()) {
            tracing::error!(shard = id.0, error = %e, "shard stopped");
        }
    }

    async fn run_loop(mut self) -> io::Result<()> {
        let socket = UdpSocket::from_std(self.socket.try_clone()?)?;
        let mut config = SfuConfig::new(self.info.id, self.seed);
        config.candidates = vec![self.info.advertised];
        let mut sfu = Sfu::new(config, Instant::now());
        let mut batch = SendBatch::default();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // When the oldest datagram whose outputs have not left yet was read.
        let mut read_at: Option<Instant> = None;
        tracing::debug!(shard = self.info.id.0, addr = %self.info.advertised, "shard running");
        loop {
            let deadline = self.drain(&mut sfu, &mut batch);
            if !self.links.is_empty() {
                self.send_links(&mut batch);
            }
            if !batch.is_empty() {
                let stats = batch.flush(&socket)?;
                self.traffic.sent(stats.sent, stats.bytes);
                if let Some(read) = read_at
                    && !stats.would_block
                {
                    self.traffic.forwarded(read.elapsed());
                }
                if stats.would_block {
                    socket.writable().await?;
                    continue;
                }
            }
            if batch.is_empty() {
                read_at = None;
            }
            let deadline = if self.lost.is_empty() && self.owed_speakers.is_empty() {
                deadline
            } else {
                deadline.min(Instant::now() + LOST_RETRY)
            };
            let sleep = tokio::time::sleep_until(deadline.into());
            tokio::select! {
                biased;
                msg = self.inbox.recv() => match msg {
                    None | Some(ShardMsg::Stop) => return Ok(()),
                    Some(msg) => {
                        // A packet another shard read: its forwarding time runs from that read.
                        let read = match &msg {
                            ShardMsg::Datagram { received, .. } => Some(*received),
                            ShardMsg::Relay(Relay { msg: RelayMsg::Packet(_, packet), .. }) => {
                                Some(packet.received)
                            }
                            _ => None,
                        };
                        if let Some(read) = read {
                            read_at = Some(read_at.map_or(read, |r| r.min(read)));
                        }
                        self.handle_msg(&mut sfu, msg);
                    }
                },
                readable = socket.readable() => {
                    readable?;
                    for _ in 0..RECV_BUDGET {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => {
                                let now = Instant::now();
                                self.traffic.received(n);
                                read_at.get_or_insert(now);
                                let routed = sfu.handle_receive(now, Protocol::Udp, source, self.info.advertised, &buf[..n]);
                                if let Routed::Foreign(shard) = routed {
                                    let destination = self.info.advertised;
                                    let msg = ShardMsg::Datagram { source, destination, received: now, contents: buf[..n].to_vec() };
                                    self.relay(shard.0, msg);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            // ICMP errors of earlier sends surface here; they concern one peer.
                            Err(e) => {
                                tracing::trace!(error = %e, "recv error");
                                break;
                            }
                        }
                    }
                }
                () = links_readable(&self.links), if !self.links.is_empty() => {
                    let now = Instant::now();
                    if self.read_links(&mut sfu, now, &mut buf) > 0 {
                        read_at.get_or_insert(now);
                    }
                }
                () = sleep => sfu.handle_timeout(Instant::now()),
            }
        }
    }

    /// Read every relay link's socket until it would block (at most [`RECV_BUDGET`] datagrams
    /// each) straight into the core; returns how many datagrams were read.
    fn read_links(&self, sfu: &mut Sfu, now: Instant, buf: &mut [u8]) -> usize {
        let mut read = 0;
        for (local, link) in &self.links {
            for _ in 0..RECV_BUDGET {
                match link.socket.try_recv_from(buf) {
                    Ok((n, source)) => {
                        read += 1;
                        self.traffic.received(n);
                        // Routed by (source, local) to the link's relay peer, which lives here.
                        let _ = sfu.handle_receive(now, Protocol::Udp, source, *local, &buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors of earlier sends surface here; the next datagram may be fine.
                    Err(e) => {
                        tracing::trace!(error = %e, "relay link recv error");
                        break;
                    }
                }
            }
        }
        read
    }

    /// Pass a message to another shard; dropped and counted if its inbox is full (media and
    /// misrouted datagrams are as good as lost on the wire; subscriptions are renewed by the
    /// next subscriber change).
    fn relay(&self, shard: u16, msg: ShardMsg) {
        if let Some(tx) = self.shards.get(usize::from(shard))
            && let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg)
        {
            self.traffic.dropped(Queue::Relays);
        }
    }

    fn handle_msg(&mut self, sfu: &mut Sfu, msg: ShardMsg) {
        match msg {
            ShardMsg::Command(EngineCommand::CreateRelayPeer {
                peer,
                audios,
                channels,
                local: None,
            }) => match self.open_link(sfu, peer) {
                Ok(local) => {
                    let command = EngineCommand::CreateRelayPeer {
                        peer,
                        audios,
                        channels,
                        local: Some(local),
                    };
                    sfu.handle_command(Instant::now(), command);
                }
                Err(error) => {
                    tracing::warn!(peer = %peer, error = %error, "cannot open a relay link's socket");
                    let event = Event::CommandFailed {
                        peer,
                        command: CommandKind::CreateRelayPeer,
                        error,
                    };
                    self.deliver(sfu, event);
                }
            },
            ShardMsg::Command(command) => sfu.handle_command(Instant::now(), command),
            ShardMsg::Stats(reply) => {
                let _ = reply.send(sfu.stats());
            }
            ShardMsg::Relay(r) => sfu.handle_relay(Instant::now(), r),
            ShardMsg::Datagram {
                source,
                destination,
                received,
                contents,
            } => {
                // A second hop is never forwarded again: ownership is by ufrag (or, for a
                // link's socket, by its relay peer, which lives here).
                let _ = sfu.handle_receive(received, Protocol::Udp, source, destination, &contents);
            }
            ShardMsg::Stop => {}
        }
    }

    /// Bind a socket of its own for relay peer `peer`'s link, read from now on by the shard's
    /// loop; returns the address its candidate advertises.
    fn open_link(&mut self, sfu: &Sfu, peer: PeerId) -> Result<SocketAddr, SfuError> {
        if sfu.is_relay_peer(peer) || self.links.values().any(|l| l.peer == peer) {
            return Err(SfuError::PeerIdUnavailable(peer));
        }
        let std_socket = self
            .bind_link()
            .map_err(|e| SfuError::LinkSocket(e.to_string()))?;
        let port = std_socket
            .local_addr()
            .map_err(|e| SfuError::LinkSocket(e.to_string()))?
            .port();
        let socket =
            UdpSocket::from_std(std_socket).map_err(|e| SfuError::LinkSocket(e.to_string()))?;
        let local = SocketAddr::new(self.info.advertise_ip, port);
        tracing::debug!(peer = %peer, port, "relay link socket open");
        self.links.insert(local, Link { peer, socket });
        Ok(local)
    }

    /// A socket for a relay link: the first free port of the range's rest (ports another link,
    /// another shard or TURN holds are skipped), else an ephemeral port.
    fn bind_link(&mut self) -> io::Result<std::net::UdpSocket> {
        if let Some((first, last)) = self.info.link_ports {
            let count = usize::from(last - first) + 1;
            for i in 0..count {
                let offset = (self.link_cursor + i) % count;
                let Ok(port) = u16::try_from(usize::from(first) + offset) else {
                    continue;
                };
                if let Ok(socket) = udp::bind(SocketAddr::new(self.info.bind_ip, port), false) {
                    self.link_cursor = offset + 1;
                    return Ok(socket);
                }
            }
            tracing::warn!(
                first,
                last,
                "no free port in the media port range for a relay link; using an ephemeral port"
            );
        }
        udp::bind(SocketAddr::new(self.info.bind_ip, 0), false)
    }

    /// Close the link socket of `peer` once the core has no relay peer of that id.
    fn close_link(&mut self, sfu: &Sfu, peer: PeerId) {
        if sfu.is_relay_peer(peer) {
            return;
        }
        self.links.retain(|_, l| l.peer != peer);
    }

    /// Send the datagrams of relay links from their own sockets; the rest stays queued for
    /// the shard's socket. A link's socket that cannot take one now loses it, as the wire
    /// would (a link sends little: ICE checks, DTLS, RTCP).
    fn send_links(&self, batch: &mut SendBatch) {
        let own = self.info.advertised;
        let queue = batch.queue_mut();
        if queue.iter().all(|d| d.source == own) {
            return;
        }
        queue.retain(|d| {
            let Some(link) = self.links.get(&d.source) else {
                return true;
            };
            match link.socket.try_send_to(d.contents, d.destination) {
                Ok(n) => self.traffic.sent(1, n),
                Err(e) => tracing::trace!(error = %e, "relay link send failed"),
            }
            false
        });
    }

    /// Take every output of the core; returns the next deadline.
    fn drain(&mut self, sfu: &mut Sfu, batch: &mut SendBatch) -> Instant {
        self.retry_lost();
        loop {
            match sfu.poll_output() {
                Output::Relay(r) => self.relay(r.to.0, ShardMsg::Relay(r)),
                Output::Event(e) => self.deliver(sfu, e),
                Output::Timeout(t) => {
                    sfu.poll_datagrams(batch.queue_mut());
                    self.pass_tapped(sfu);
                    return t;
                }
            }
        }
    }

    /// Hand the packets of tapped tracks to the tap without waiting; what does not fit is
    /// dropped and counted.
    fn pass_tapped(&self, sfu: &mut Sfu) {
        while let Some(tapped) = sfu.poll_tapped() {
            let Some(tap) = self.tap.get() else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = tap.try_send(tapped) {
                self.traffic.dropped(Queue::Tap);
            }
        }
    }

    /// Hand an event to the owner without waiting. If the channel is full, an event the owner
    /// can do without (data, statistics) is dropped; speaker changes are owed, the latest per
    /// track; any other event about a peer closes the peer, and its `Disconnected` is owed
    /// (see [`Shard::retry_lost`]).
    fn deliver(&mut self, sfu: &mut Sfu, event: Event) {
        if !self.links.is_empty()
            && let Event::Disconnected(peer)
            | Event::CommandFailed {
                peer,
                command: CommandKind::CreateRelayPeer,
                ..
            } = &event
        {
            self.close_link(sfu, *peer);
        }
        let peer = event_peer(&event);
        if let Some(peer) = peer
            && self.lost.contains(&peer)
        {
            // The owner hears of this peer again only through the owed `Disconnected`.
            return;
        }
        if let Event::SpeakersChanged(changes) = event {
            // Later changes replace owed ones; all go out together, in order.
            self.owe_speakers(changes);
            if !self.send_owed_speakers() {
                self.traffic.dropped(Queue::Events);
            }
            return;
        }
        let event = match self.events.try_send(event) {
            Ok(()) => return,
            // Nobody listening is fine (e.g. benchmarks of the engine alone).
            Err(mpsc::error::TrySendError::Closed(_)) => return,
            Err(mpsc::error::TrySendError::Full(event)) => event,
        };
        self.traffic.dropped(Queue::Events);
        if let (Some(peer), false) = (peer, dispensable(&event)) {
            tracing::warn!(peer = %peer, "event channel full; peer closed");
            self.lost.insert(peer);
            let _ = sfu.close_peer(Instant::now(), peer);
        }
    }

    /// Tell the owner about peers closed for a full event channel, and the speaker changes it
    /// missed, as far as there is room.
    fn retry_lost(&mut self) {
        while let Some(&peer) = self.lost.first() {
            if let Err(mpsc::error::TrySendError::Full(_)) =
                self.events.try_send(Event::Disconnected(peer))
            {
                return;
            }
            self.lost.pop_first();
        }
        if !self.owed_speakers.is_empty() {
            self.send_owed_speakers();
        }
    }

    /// Hand the owed speaker changes to the owner in one event, if there is room; false if
    /// they are still owed.
    fn send_owed_speakers(&mut self) -> bool {
        let owed = std::mem::take(&mut self.owed_speakers);
        match self.events.try_send(Event::SpeakersChanged(owed)) {
            Err(mpsc::error::TrySendError::Full(Event::SpeakersChanged(owed))) => {
                self.owed_speakers = owed;
                false
            }
            // Sent, or nobody listening (nothing to owe then).
            _ => true,
        }
    }

    /// Keep speaker changes for later: the latest per track, last in order.
    fn owe_speakers(&mut self, changes: Vec<SpeakerLevel<TrackId>>) {
        for change in changes {
            self.owed_speakers.retain(|owed| owed.key != change.key);
            self.owed_speakers.push(change);
        }
    }
}

/// Ready once any relay link's socket has a datagram to read (or an error to report); each
/// socket's readiness is registered with the waker of the shard's loop.
fn links_readable(links: &HashMap<SocketAddr, Link>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        let mut ready = false;
        for link in links.values() {
            // Polled to the end, so that every socket wakes the loop when it becomes readable.
            ready |= link.socket.poll_recv_ready(cx).is_ready();
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

/// The peer an event is about, if any.
fn event_peer(event: &Event) -> Option<PeerId> {
    match event {
        Event::Connected(p) | Event::IceLost(p) | Event::Disconnected(p) => Some(*p),
        Event::TrackPublished { track, .. } | Event::TrackUnpublished { track, .. } => {
            Some(track.peer)
        }
        Event::Answer { peer, .. }
        | Event::CommandFailed { peer, .. }
        | Event::Offer { peer, .. }
        | Event::SectionsNeeded { peer, .. }
        | Event::ChannelOpen { peer, .. }
        | Event::ChannelData { peer, .. }
        | Event::ChannelClose { peer, .. }
        | Event::PeerStats { peer, .. } => Some(*peer),
        _ => None,
    }
}

/// Events whose loss costs a message or a reading, not a session's state.
fn dispensable(event: &Event) -> bool {
    matches!(
        event,
        Event::ChannelData { .. } | Event::PeerStats { .. } | Event::SpeakersChanged(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{PeerId, ShardId};

    fn shard(events: mpsc::Sender<Event>) -> Shard {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let advertised = socket.local_addr().expect("addr");
        let (_tx, inbox) = mpsc::channel(1);
        let info = ShardInfo {
            id: ShardId(0),
            advertised,
            bind_ip: advertised.ip(),
            advertise_ip: advertised.ip(),
            link_ports: None,
        };
        Shard::new(
            info,
            socket,
            inbox,
            vec![],
            events,
            [1; 32],
            Arc::default(),
            TapSink::default(),
        )
    }

    #[test]
    fn a_full_event_channel_closes_the_peer_and_reports_it_later() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut shard = shard(tx);
        let mut sfu = Sfu::new(SfuConfig::new(ShardId(0), [2; 32]), Instant::now());
        let (a, b) = (PeerId::new(ShardId(0), 1), PeerId::new(ShardId(0), 2));
        shard.deliver(&mut sfu, Event::Connected(a));
        // Full: speaker levels are dispensable, b's connection is not.
        shard.deliver(&mut sfu, Event::SpeakersChanged(vec![]));
        shard.deliver(&mut sfu, Event::Connected(b));
        let dropped = shard.traffic.snapshot().dropped_from(Queue::Events);
        assert_eq!(dropped, 2);
        assert!(shard.lost.contains(&b) && !shard.lost.contains(&a));
        // Nothing more about b goes out until its disconnection can.
        assert!(matches!(rx.try_recv(), Ok(Event::Connected(p)) if p == a));
        let track = crate::proto::TrackId {
            peer: b,
            mid: str0m::media::Mid::from("0"),
        };
        let reason = crate::proto::UnpublishReason::Removed;
        shard.deliver(&mut sfu, Event::TrackUnpublished { track, reason });
        assert!(
            rx.try_recv().is_err(),
            "events about a lost peer are withheld"
        );
        shard.retry_lost();
        assert!(matches!(rx.try_recv(), Ok(Event::Disconnected(p)) if p == b));
        assert!(shard.lost.is_empty());
    }

    #[test]
    fn speaker_changes_dropped_for_a_full_channel_are_owed_the_latest_per_track() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut shard = shard(tx);
        let mut sfu = Sfu::new(SfuConfig::new(ShardId(0), [2; 32]), Instant::now());
        let track = |n| TrackId {
            peer: PeerId::new(ShardId(0), n),
            mid: str0m::media::Mid::from("0"),
        };
        let level = |n, active: bool| SpeakerLevel {
            key: track(n),
            level: if active { 0.5 } else { 0.0 },
            active,
        };
        let speakers = |rx: &mut mpsc::Receiver<Event>| match rx.try_recv() {
            Ok(Event::SpeakersChanged(levels)) => levels,
            other => panic!("expected speaker changes, got {other:?}"),
        };
        shard.deliver(&mut sfu, Event::Connected(PeerId::new(ShardId(0), 9)));
        // Full: 1 starts, then stops while 2 starts; both dropped, the latest of each owed.
        shard.deliver(&mut sfu, Event::SpeakersChanged(vec![level(1, true)]));
        shard.deliver(
            &mut sfu,
            Event::SpeakersChanged(vec![level(1, false), level(2, true)]),
        );
        assert_eq!(shard.traffic.snapshot().dropped_from(Queue::Events), 2);
        assert!(matches!(rx.try_recv(), Ok(Event::Connected(_))));
        shard.retry_lost();
        assert_eq!(speakers(&mut rx), vec![level(1, false), level(2, true)]);
        assert!(shard.owed_speakers.is_empty());

        // Owed changes go out with the next change there is room for, ahead of it, in the
        // order they happened (not the tracks' order).
        shard.deliver(&mut sfu, Event::SpeakersChanged(vec![level(3, true)]));
        shard.deliver(&mut sfu, Event::SpeakersChanged(vec![level(2, false)]));
        assert_eq!(speakers(&mut rx), vec![level(3, true)]);
        shard.deliver(&mut sfu, Event::SpeakersChanged(vec![level(1, true)]));
        assert_eq!(speakers(&mut rx), vec![level(2, false), level(1, true)]);
        assert!(shard.owed_speakers.is_empty());
        shard.retry_lost();
        assert!(rx.try_recv().is_err(), "nothing owed twice");
    }

    #[test]
    fn a_link_takes_a_free_port_of_the_range_else_an_ephemeral_one() {
        let (tx, _rx) = mpsc::channel(1);
        let mut shard = shard(tx);
        // A port that was free a moment ago, as the range's only one.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("probe")
            .port();
        shard.info.link_ports = Some((port, port));
        let first = shard.bind_link().expect("first link");
        let first_addr = first.local_addr().expect("addr");
        assert_eq!(first_addr, SocketAddr::new(shard.info.bind_ip, port));
        // The range is full: an ephemeral port on the same address.
        let second = shard.bind_link().expect("second link");
        let second_addr = second.local_addr().expect("addr");
        assert_eq!(second_addr.ip(), shard.info.bind_ip);
        assert_ne!(second_addr.port(), port);
        // Freed with its link, the port is taken again.
        drop(first);
        let third = shard.bind_link().expect("third link");
        assert_eq!(third.local_addr().expect("addr").port(), port);
    }

    #[test]
    fn nobody_listening_is_not_a_drop() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let mut shard = shard(tx);
        let mut sfu = Sfu::new(SfuConfig::new(ShardId(0), [2; 32]), Instant::now());
        shard.deliver(&mut sfu, Event::Connected(PeerId::new(ShardId(0), 1)));
        assert_eq!(shard.traffic.snapshot().dropped_from(Queue::Events), 0);
        assert!(shard.lost.is_empty());
    }
}
