//! One shard: a thread with a current-thread tokio runtime, one engine core, one socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::net::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::traffic::Traffic;
use super::udp::SendBatch;
use super::{Command, ShardInfo};
use crate::proto::{Event, Output, Relay, RelayMsg, Routed, Sfu, SfuConfig};

/// Datagrams read per wake-up before outputs are flushed (a cooperative budget, as Firezone's
/// `MAX_EVENTLOOP_ITERS`).
const RECV_BUDGET: usize = 256;

/// Largest datagram accepted; WebRTC packets stay under the 1200-1500 byte MTU.
const MAX_DATAGRAM: usize = 2048;

/// What a shard receives from the outside and from other shards.
pub(crate) enum ShardMsg {
    /// Run a command on the core.
    Command(Command),
    /// A message from another shard's core.
    Relay(Relay),
    /// A datagram that arrived on another shard's socket but belongs to a peer here.
    Datagram {
        source: SocketAddr,
        received: Instant,
        contents: Vec<u8>,
    },
    /// Stop the shard.
    Stop,
}

pub(crate) struct Shard {
    info: ShardInfo,
    socket: std::net::UdpSocket,
    inbox: mpsc::UnboundedReceiver<ShardMsg>,
    shards: Vec<mpsc::UnboundedSender<ShardMsg>>,
    events: mpsc::UnboundedSender<Event>,
    seed: [u8; 32],
    traffic: Arc<Traffic>,
}

impl Shard {
    pub fn new(
        info: ShardInfo,
        socket: std::net::UdpSocket,
        inbox: mpsc::UnboundedReceiver<ShardMsg>,
        shards: Vec<mpsc::UnboundedSender<ShardMsg>>,
        events: mpsc::UnboundedSender<Event>,
        seed: [u8; 32],
        traffic: Arc<Traffic>,
    ) -> Self {
        Shard {
            info,
            socket,
            inbox,
            shards,
            events,
            seed,
            traffic,
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
        let mut sfu = Sfu::new(SfuConfig::new(self.info.id, self.seed), Instant::now());
        let mut batch = SendBatch::default();
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // When the oldest datagram whose outputs have not left yet was read.
        let mut read_at: Option<Instant> = None;
        tracing::debug!(shard = self.info.id.0, addr = %self.info.advertised, "shard running");
        loop {
            let deadline = self.drain(&mut sfu, &mut batch);
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
                                if let Routed::Foreign(shard) = routed
                                    && let Some(tx) = self.shards.get(usize::from(shard.0))
                                {
                                    let _ = tx.send(ShardMsg::Datagram { source, received: now, contents: buf[..n].to_vec() });
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
                () = sleep => sfu.handle_timeout(Instant::now()),
            }
        }
    }

    fn handle_msg(&mut self, sfu: &mut Sfu, msg: ShardMsg) {
        match msg {
            ShardMsg::Command(f) => f(sfu, &self.info, Instant::now()),
            ShardMsg::Relay(r) => sfu.handle_relay(Instant::now(), r),
            ShardMsg::Datagram {
                source,
                received,
                contents,
            } => {
                // A second hop is never forwarded again: ownership is by ufrag.
                let _ = sfu.handle_receive(
                    received,
                    Protocol::Udp,
                    source,
                    self.info.advertised,
                    &contents,
                );
            }
            ShardMsg::Stop => {}
        }
    }

    /// Take every output of the core; returns the next deadline.
    fn drain(&mut self, sfu: &mut Sfu, batch: &mut SendBatch) -> Instant {
        loop {
            match sfu.poll_output() {
                Output::Transmit(t) => batch.push(t.source, t.destination, &t.contents),
                Output::Relay(r) => {
                    if let Some(tx) = self.shards.get(usize::from(r.to.0)) {
                        let _ = tx.send(ShardMsg::Relay(r));
                    }
                }
                Output::Event(e) => {
                    // Nobody listening is fine (e.g. benchmarks).
                    let _ = self.events.send(e);
                }
                Output::Timeout(t) => {
                    sfu.take_datagrams(batch.queue_mut());
                    return t;
                }
            }
        }
    }
}
