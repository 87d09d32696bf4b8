//! One shard: an OS thread with a level-triggered `epoll` loop that owns one
//! [`Server`](crate::proto::Server) core, its share of the UDP listener (`SO_REUSEPORT`) and
//! the relay sockets of its share of the relay ports.
//!
//! Everything a relayed datagram touches lives on one thread, so the hot path takes no lock,
//! crosses no channel and wakes no other thread: `recvmmsg` on a ready socket, the core, and
//! `sendmmsg` per destination socket at the end of the turn. Stream clients (TCP, TLS) are
//! served by tokio tasks that pass frames in through the shard's [`Inbox`] and get replies
//! back on their own channel.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::udp::{Receiver, SendQueue};
use super::{Input, metrics, now};
use crate::proto::{Client, Command, Server, Stats, Transport};

/// Epoll token of the shard's wake-up eventfd.
const WAKE: u64 = u64::MAX;

/// Epoll token of the shard's share of the UDP listener.
const LISTENER: u64 = u64::MAX - 1;

/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// Stream inputs handled per loop turn; the rest wait for the next turn (which then does not
/// sleep), so a busy stream cannot starve the UDP sockets.
const INBOX_BUDGET: usize = 256;

/// Longest sleep in `epoll_wait`, so a stop request is seen even if the wake-up is lost.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Inputs queued for a shard by stream tasks.
pub(super) const INBOX_QUEUE: usize = 8192;

/// Where stream tasks send their inputs for one shard. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Inbox {
    sender: mpsc::Sender<Input>,
    wake: Arc<EventFd>,
}

/// The shard is gone (the relay is stopping).
#[derive(Debug)]
pub(super) struct Gone;

impl Inbox {
    /// Queues `input` (waiting while the queue is full) and wakes the shard.
    pub(super) async fn send(&self, input: Input) -> Result<(), Gone> {
        self.sender.send(input).await.map_err(|_| Gone)?;
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Whether the shard has stopped.
    pub(super) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// What the relay keeps of a running shard.
#[derive(Debug)]
pub(super) struct Handle {
    pub(super) wake: Arc<EventFd>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

/// The sockets and core of one shard, before its thread starts.
#[derive(Debug)]
pub(super) struct Shard {
    pub(super) server: Server,
    /// This shard's socket on the UDP listener address, if UDP is served.
    pub(super) listener: Option<UdpSocket>,
    /// Relay sockets; index `i` is port `first_port + i`.
    pub(super) relays: Vec<UdpSocket>,
    pub(super) first_port: u16,
}

impl Shard {
    /// Starts the shard's thread. `ended` hears from it when it stops for any reason.
    pub(super) fn spawn(
        self,
        index: usize,
        stop: Arc<AtomicBool>,
        ended: mpsc::Sender<()>,
    ) -> std::io::Result<(Handle, Inbox)> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        let readable = |token| EpollEvent::new(EpollFlags::EPOLLIN, token);
        epoll.add(wake.as_fd(), readable(WAKE))?;
        if let Some(listener) = &self.listener {
            epoll.add(listener.as_fd(), readable(LISTENER))?;
        }
        for (index, socket) in self.relays.iter().enumerate() {
            epoll.add(socket.as_fd(), readable(index as u64))?;
        }
        let (sender, inbox) = mpsc::channel(INBOX_QUEUE);
        let relays = self.relays.len();
        let event_loop = EventLoop {
            server: self.server,
            epoll,
            wake: Arc::clone(&wake),
            stop,
            listener: self.listener,
            relays: self.relays,
            first_port: self.first_port,
            inbox,
            streams: HashMap::new(),
            to_clients: SendQueue::default(),
            to_peers: (0..relays).map(|_| SendQueue::default()).collect(),
            pending_peers: Vec::new(),
            exported: Stats::default(),
            exported_allocations: 0,
        };
        let thread = std::thread::Builder::new()
            .name(format!("stoa-turn-{index}"))
            .spawn(move || {
                let _ended = Ended(ended);
                event_loop.run();
            })?;
        Ok((
            Handle {
                wake: Arc::clone(&wake),
                thread: Some(thread),
            },
            Inbox { sender, wake },
        ))
    }
}

/// Tells the relay that a shard thread ended, also when it ends by a panic. Each shard sends
/// once into a channel with room for every shard, so the send never waits.
struct Ended(mpsc::Sender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

struct EventLoop {
    server: Server,
    epoll: Epoll,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    listener: Option<UdpSocket>,
    relays: Vec<UdpSocket>,
    first_port: u16,
    inbox: mpsc::Receiver<Input>,
    streams: HashMap<Client, mpsc::Sender<Vec<u8>>>,
    /// Datagrams for UDP clients, sent from the listener at the end of the turn.
    to_clients: SendQueue,
    /// Datagrams for peers, one queue per relay socket.
    to_peers: Vec<SendQueue>,
    /// Relay sockets whose queue is not empty.
    pending_peers: Vec<usize>,
    exported: Stats,
    exported_allocations: usize,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); EVENTS];
        let mut receiver = Receiver::new();
        let mut inbox_pending = false;
        while !self.stop.load(Ordering::Relaxed) {
            let wait = if inbox_pending {
                Duration::ZERO
            } else {
                self.server
                    .poll_timeout()
                    .map_or(MAX_WAIT, |at| at.saturating_duration_since(Instant::now()))
                    .min(MAX_WAIT)
            };
            // Round up, so a deadline is never polled a millisecond early in a busy loop.
            let millis = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let ready = match self.epoll.wait(&mut events, EpollTimeout::from(millis)) {
                Ok(ready) => ready,
                Err(Errno::EINTR) => continue,
                Err(error) => {
                    warn!(%error, "TURN shard: epoll_wait failed; stopping");
                    return;
                }
            };
            let now = now();
            for event in &events[..ready] {
                match event.data() {
                    WAKE => {
                        let _ = self.wake.read();
                        inbox_pending = true;
                    }
                    LISTENER => self.receive_clients(&mut receiver, now),
                    index => self.receive_peers(&mut receiver, index, now),
                }
            }
            if inbox_pending {
                inbox_pending = self.drain_inbox(now);
            }
            if self
                .server
                .poll_timeout()
                .is_some_and(|at| at <= now.instant)
            {
                self.server.handle_timeout(now.instant);
                self.execute();
                metrics::export(
                    &self.server,
                    &mut self.exported,
                    &mut self.exported_allocations,
                );
            }
            self.flush();
        }
    }

    fn receive_clients(&mut self, receiver: &mut Receiver, now: crate::proto::Now) {
        let Some(socket) = &self.listener else {
            return;
        };
        if let Err(error) = receiver.receive(socket) {
            // ICMP errors surface as receive errors; keep reading.
            debug!(%error, "TURN UDP receive failed");
            return;
        }
        for (from, bytes) in receiver.datagrams() {
            let client = Client {
                transport: Transport::Udp,
                addr: from,
            };
            self.server.handle_client_input(now, client, bytes);
            self.execute();
        }
    }

    fn receive_peers(&mut self, receiver: &mut Receiver, index: u64, now: crate::proto::Now) {
        let Some((socket, port)) = u16::try_from(index).ok().and_then(|offset| {
            let socket = self.relays.get(usize::from(offset))?;
            Some((socket, self.first_port.checked_add(offset)?))
        }) else {
            return;
        };
        if let Err(error) = receiver.receive(socket) {
            debug!(%error, "TURN relay receive failed");
            return;
        }
        for (from, bytes) in receiver.datagrams() {
            self.server
                .handle_peer_input(now.instant, port, from, bytes);
            self.execute();
        }
    }

    /// Handles queued stream inputs, at most [`INBOX_BUDGET`]; `true` if some are left.
    fn drain_inbox(&mut self, now: crate::proto::Now) -> bool {
        for _ in 0..INBOX_BUDGET {
            let Ok(input) = self.inbox.try_recv() else {
                return false;
            };
            match input {
                Input::Client { client, bytes } => {
                    self.server.handle_client_input(now, client, &bytes);
                }
                Input::Connected { client, sender } => {
                    self.streams.insert(client, sender);
                }
                Input::Closed { client } => {
                    self.streams.remove(&client);
                    self.server.handle_client_closed(client);
                }
            }
            self.execute();
        }
        true
    }

    /// Queues the core's commands; datagrams go out in [`EventLoop::flush`].
    fn execute(&mut self) {
        while let Some(command) = self.server.poll_command() {
            match command {
                Command::SendToClient { to, payload } => match to.transport {
                    Transport::Udp => self.to_clients.push(to.addr, payload),
                    Transport::Tcp | Transport::Tls => {
                        if let Some(sender) = self.streams.get(&to) {
                            // A client that does not read its stream loses data, not the relay.
                            let _ = sender.try_send(payload);
                        }
                    }
                },
                Command::SendToPeer {
                    relay_port,
                    peer,
                    payload,
                } => {
                    let index = relay_port
                        .checked_sub(self.first_port)
                        .map(usize::from)
                        .filter(|index| *index < self.to_peers.len());
                    if let Some(index) = index {
                        if self.to_peers[index].is_empty() {
                            self.pending_peers.push(index);
                        }
                        self.to_peers[index].push(peer, payload);
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        let mut dropped = 0;
        if let Some(socket) = &self.listener
            && !self.to_clients.is_empty()
        {
            dropped += self.to_clients.flush(socket).dropped;
        }
        for index in self.pending_peers.drain(..) {
            if let (Some(queue), Some(socket)) =
                (self.to_peers.get_mut(index), self.relays.get(index))
            {
                dropped += queue.flush(socket).dropped;
            }
        }
        if dropped > 0 {
            ::metrics::counter!("turn_send_dropped_total").increment(dropped as u64);
        }
    }
}
