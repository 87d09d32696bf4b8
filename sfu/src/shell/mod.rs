//! The tokio shell around the sans-IO engine.
//!
//! [`SfuRuntime::start`] spawns one shard per configured core. Each shard is an OS thread with
//! a current-thread tokio runtime that owns one [`Sfu`](crate::Sfu) core and one UDP socket; nothing is
//! shared between shards but channels:
//!
//! - **Mux mode** (one port, e.g. LiveKit's dev port 7882): every shard binds the same address
//!   with `SO_REUSEPORT`; the kernel hashes each client's flow to one of them. A datagram that
//!   lands on a shard that does not own its peer is passed to the owner by message (the owner
//!   is encoded in the ICE ufrag and learned per source address).
//! - **Range mode** (e.g. 50000-50200): shard *i* listens on `start + i` and its peers'
//!   candidates point there, so datagrams arrive at the owner directly. The rest of the range
//!   is left for TURN relay ports and relay links.
//!
//! A relay link ([`EngineCommand::CreateRelayPeer`], this node's connection to another node's
//! engine) gets a UDP socket of its own from its shard: a free port of the range's rest (ports
//! TURN holds are skipped), or an ephemeral one in mux mode or when none is free. So two links
//! to one origin differ in their 5-tuple, and the origin's datagrams arrive at the link's
//! shard directly. A small task reads the socket into the shard's inbox; the shard sends the
//! link's datagrams from it; the socket closes with the relay peer.
//!
//! Packets of a track published on one shard reach subscribers on another as
//! [`RelayMsg::Packet`](crate::RelayMsg) messages. Sends are batched with `sendmmsg`.
//!
//! The owner drives the shards with [`EngineCommand`]s ([`SfuHandle::send`]): data, routed by
//! the shard encoded in their peer and track ids, never waiting for a reply; a fan-out is cut
//! into one command per shard. Events of all shards arrive on one channel.
//!
//! Every queue is bounded ([`traffic::Queue`]): a shard's inbox (commands, relays, misrouted
//! datagrams) and the event channel. What does not fit is dropped and counted; a command
//! that cannot be delivered is reported to the caller, and an event about a peer that cannot
//! be delivered closes the peer and reports it `Disconnected` as soon as there is room.

// The shell owns the clock: it reads it and hands `now` to the core.
#![allow(clippy::disallowed_methods)]

mod shard;
pub mod traffic;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{Context, bail};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{EngineCommand, Event, PeerId, SfuStats, ShardId, Tapped};
use shard::{Shard, ShardMsg};
use traffic::{Queue, Traffic, TrafficSnapshot};

/// Capacity of each shard's inbox (commands, relays and misrouted datagrams).
pub const SHARD_INBOX: usize = 16_384;

/// Capacity of the event channel from all shards to the owner.
pub const EVENTS: usize = 16_384;

/// Which UDP ports the engine listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPorts {
    /// One port shared by all shards (`SO_REUSEPORT`).
    Mux(u16),
    /// A range; shard *i* uses `start + i`.
    Range {
        /// First port.
        start: u16,
        /// Last port (inclusive).
        end: u16,
    },
}

/// Settings of the media engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SfuSettings {
    /// Address to bind.
    pub bind_ip: IpAddr,
    /// Address to put in ICE candidates (the public address behind 1:1 NAT).
    pub advertise_ip: IpAddr,
    /// Ports.
    pub ports: UdpPorts,
    /// Number of shards (threads); usually the number of cores.
    pub shards: usize,
}

/// An event of one shard's engine.
pub type ShellEvent = Event;

/// A shard's identity and the address its peers' candidates advertise.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    /// The shard.
    pub id: ShardId,
    /// The address its peers' candidates advertise.
    pub advertised: SocketAddr,
    /// The address its relay links' own sockets bind (with their own ports).
    pub bind_ip: IpAddr,
    /// The address its relay links' candidates advertise (with their own ports).
    pub advertise_ip: IpAddr,
    /// Ports a relay link's socket may take (the part of the media port range no shard
    /// listens on), tried in turn; none free, or no range: an ephemeral port.
    pub link_ports: Option<(u16, u16)>,
}

/// Where the shards put packets of tapped tracks ([`SfuHandle::set_tap`]); set once.
pub(crate) type TapSink = Arc<OnceLock<mpsc::Sender<Tapped>>>;

/// Handle to running engine shards. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SfuHandle {
    shards: Arc<Vec<mpsc::Sender<ShardMsg>>>,
    tap: TapSink,
    next: Arc<AtomicUsize>,
    local_addrs: Arc<Vec<SocketAddr>>,
    traffic: Arc<Vec<Arc<Traffic>>>,
}

/// The running engine: keep it alive as long as the engine should run; dropping the last
/// runtime stops every shard.
#[derive(Debug)]
#[must_use]
pub struct SfuRuntime {
    threads: Vec<std::thread::JoinHandle<()>>,
    shards: Vec<mpsc::Sender<ShardMsg>>,
}

impl SfuRuntime {
    /// Bind the sockets and start the shards. Returns the runtime, a handle for commands, and
    /// the events of all shards.
    pub fn start(
        settings: &SfuSettings,
        seed: [u8; 32],
    ) -> anyhow::Result<(SfuRuntime, SfuHandle, mpsc::Receiver<Event>)> {
        let n = settings.shards.max(1);
        if n > 255 {
            bail!("at most 255 shards are supported, {n} configured");
        }
        if settings.advertise_ip.is_unspecified() {
            bail!(
                "advertise address {} is unspecified; set a concrete address",
                settings.advertise_ip
            );
        }
        let ports: Vec<(u16, bool)> = match settings.ports {
            UdpPorts::Mux(p) => vec![(p, true); n],
            UdpPorts::Range { start, end } => {
                if end < start || usize::from(end - start) + 1 < n {
                    bail!("UDP port range {start}-{end} has fewer ports than the {n} shards");
                }
                (0..n).map(|i| (start + i as u16, false)).collect()
            }
        };
        if let UdpPorts::Mux(port) = settings.ports
            && port != 0
        {
            // SO_REUSEPORT would let a second instance silently share the port and split the
            // traffic: check that nobody holds it first.
            let addr = SocketAddr::new(settings.bind_ip, port);
            drop(udp::bind(addr, false).map_err(|e| udp::bind_error(addr, &e))?);
        }
        let mut sockets = Vec::with_capacity(n);
        let mut port0 = None;
        for (i, (port, reuse)) in ports.iter().enumerate() {
            // Mux mode with port 0: the first shard picks a port, the others join it.
            let port = if *reuse && *port == 0 {
                port0.unwrap_or(0)
            } else {
                *port
            };
            let addr = SocketAddr::new(settings.bind_ip, port);
            let socket = udp::bind(addr, *reuse).map_err(|e| udp::bind_error(addr, &e))?;
            if i == 0 {
                port0 = Some(socket.local_addr()?.port());
            }
            sockets.push(socket);
        }
        let mut senders = Vec::with_capacity(n);
        let mut receivers = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::channel(SHARD_INBOX);
            senders.push(tx);
            receivers.push(rx);
        }
        let (event_tx, event_rx) = mpsc::channel(EVENTS);
        let mut local_addrs = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let traffic: Vec<Arc<Traffic>> = (0..n).map(|_| Arc::default()).collect();
        let tap = TapSink::default();
        let link_ports = match settings.ports {
            UdpPorts::Range { start, end } => u16::try_from(usize::from(start) + n)
                .ok()
                .filter(|first| *first <= end)
                .map(|first| (first, end)),
            UdpPorts::Mux(_) => None,
        };
        for (i, (socket, inbox)) in sockets.into_iter().zip(receivers).enumerate() {
            let local = socket.local_addr()?;
            let info = ShardInfo {
                id: ShardId(i as u16),
                advertised: SocketAddr::new(settings.advertise_ip, local.port()),
                bind_ip: settings.bind_ip,
                advertise_ip: settings.advertise_ip,
                link_ports,
            };
            local_addrs.push(local);
            let mut shard_seed = seed;
            shard_seed[31] ^= i as u8;
            let shard = Shard::new(
                info,
                socket,
                inbox,
                senders.clone(),
                event_tx.clone(),
                shard_seed,
                traffic[i].clone(),
                tap.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("sfu-shard-{i}"))
                .spawn(move || shard.run())
                .context("spawning a shard thread")?;
            threads.push(thread);
        }
        let handle = SfuHandle {
            shards: Arc::new(senders),
            tap,
            next: Arc::new(AtomicUsize::new(0)),
            local_addrs: Arc::new(local_addrs),
            traffic: Arc::new(traffic),
        };
        let runtime = SfuRuntime {
            threads,
            shards: handle.shards.as_ref().clone(),
        };
        Ok((runtime, handle, event_rx))
    }

    /// Stop every shard and wait for their threads. Peers are dropped without goodbye;
    /// signaling tells clients to leave before this.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for tx in &self.shards {
            // A full inbox is stopped by the closed channel once the runtime is dropped.
            let _ = tx.try_send(ShardMsg::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SfuRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The engine stopped before answering.
#[derive(Debug, thiserror::Error)]
#[error("media engine is not running")]
pub struct EngineStopped;

/// A command (or part of a fan-out) that could not be delivered: the shard's inbox was full
/// or the engine stopped. Counted; the caller gives up on the peers named.
#[derive(Debug, thiserror::Error)]
#[error("media engine queue full or stopped; {} peer(s) affected", peers.len())]
pub struct Undelivered {
    /// The peers of the parts not delivered.
    pub peers: Vec<PeerId>,
}

impl SfuHandle {
    /// The bound UDP addresses, one per shard.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shard the next new peer goes to (round robin), for callers that do not choose.
    pub fn pick_shard(&self) -> ShardId {
        ShardId((self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len()) as u16)
    }

    /// Queue a command on the shards it concerns; never waits. A fan-out is cut into one
    /// command per shard. Parts that do not fit are dropped, counted, and named in the error.
    pub fn send(&self, command: EngineCommand) -> Result<(), Undelivered> {
        let mut lost = Vec::new();
        for (shard, part) in command.split() {
            let index = usize::from(shard.0);
            let Some(tx) = self.shards.get(index) else {
                lost.extend(part.peers());
                continue;
            };
            if let Err(e) = tx.try_send(ShardMsg::Command(part)) {
                if let Some(t) = self.traffic.get(index) {
                    t.dropped(Queue::Commands);
                }
                if let ShardMsg::Command(part) = e.into_inner() {
                    lost.extend(part.peers());
                }
            }
        }
        if lost.is_empty() {
            Ok(())
        } else {
            Err(Undelivered { peers: lost })
        }
    }

    /// Where the packets of tapped tracks ([`EngineCommand::SetTap`]) go, from every shard: a
    /// bounded channel (a recorder). A packet that does not fit is dropped and counted
    /// ([`Queue::Tap`]); forwarding never waits for it. Set once per engine; returns `false`
    /// (and changes nothing) if a tap was set already.
    pub fn set_tap(&self, sink: mpsc::Sender<Tapped>) -> bool {
        self.tap.set(sink).is_ok()
    }

    /// Socket traffic of every shard, summed. Reads atomics; never waits for a shard.
    pub fn traffic(&self) -> TrafficSnapshot {
        let mut sum = TrafficSnapshot::default();
        for shard in self.traffic.iter() {
            sum.add(&shard.snapshot());
        }
        sum
    }

    /// Counters of every shard.
    pub async fn stats(&self) -> Result<Vec<SfuStats>, EngineStopped> {
        let mut out = Vec::with_capacity(self.shards.len());
        for tx in self.shards.iter() {
            let (reply, rx) = oneshot::channel();
            tx.send(ShardMsg::Stats(reply))
                .await
                .map_err(|_| EngineStopped)?;
            out.push(rx.await.map_err(|_| EngineStopped)?);
        }
        Ok(out)
    }
}
