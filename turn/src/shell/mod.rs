//! The shell around [`crate::proto::Server`]: it binds the client listeners (UDP, TCP, TLS) and
//! one UDP socket per relay port, and runs the relay as shards.
//!
//! A shard is an OS thread with an `epoll` loop that owns one core, its own socket on the UDP
//! listener address (`SO_REUSEPORT`: the kernel hashes each client's flow to one shard, so a
//! client's datagrams always reach the core that holds its allocation) and the relay sockets of
//! its contiguous share of the relay ports (so a peer's datagrams reach the same core). Datagrams
//! are read with `recvmmsg` and written with `sendmmsg`; nothing on that path locks, allocates a
//! task or wakes another thread. The cores share one [`Ledger`] for the quotas and the Allocate
//! rate limit, touched only by Allocate requests and ended allocations.
//!
//! TCP and TLS connections are tokio tasks on the caller's runtime; each is assigned to a shard
//! in turn and passes its frames through that shard's inbox.
//!
//! Every relay port is bound at start-up, so a port the core hands out always has a socket and
//! a port range that overlaps something else fails loudly before any client is served.

#![allow(
    clippy::disallowed_methods,
    reason = "the shell owns the clocks the sans-IO core is fed with"
)]

mod metrics;
mod shard;
mod stream;
pub use stream::server_config as tls_server_config;
mod udp;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::proto::{Client, Config, Ledger, Now, Server};
use udp::Sharing;

/// Where and how the relay listens.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Address every listener and relay port binds to.
    pub bind_ip: IpAddr,
    /// UDP listener port (`0`: any free port), or `None` for no UDP listener.
    pub udp_port: Option<u16>,
    /// TCP listener port (`0`: any free port), or `None`.
    pub tcp_port: Option<u16>,
    /// TLS listener, or `None`.
    pub tls: Option<TlsConfig>,
    /// Most concurrent TCP and TLS connections.
    pub max_connections: usize,
    /// Event-loop threads (shards), usually one per core. At least one; never more than there
    /// are relay ports, since each shard owns a share of them.
    pub shards: usize,
    /// The sans-IO core's configuration (realm, secret, relay ports, policy, quotas).
    pub core: Config,
}

/// The TLS listener (`turns:`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Port (`0`: any free port).
    pub port: u16,
    /// Where its certificate comes from.
    pub certificates: TlsCertificates,
}

/// The TLS listener's certificate.
#[derive(Debug, Clone)]
pub enum TlsCertificates {
    /// PEM files, read once at start.
    Files {
        /// PEM certificate chain.
        certificate: PathBuf,
        /// PEM private key.
        private_key: PathBuf,
    },
    /// A ready configuration, e.g. one whose certificate resolver follows ACME renewals.
    Config(Arc<tokio_rustls::rustls::ServerConfig>),
}

/// Why the relay cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A socket could not be bound.
    #[error("cannot bind the TURN {what} on {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The certificate or key could not be read or used.
    #[error("TURN TLS: {0}")]
    Tls(String),
    /// A shard's thread, epoll instance or eventfd could not be created.
    #[error("cannot start a TURN relay thread: {source}")]
    Thread {
        /// Why.
        source: io::Error,
    },
}

/// A running relay. Dropping it stops every shard and task.
#[derive(Debug)]
#[must_use = "the relay stops when this is dropped"]
pub struct Relay {
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    tasks: JoinSet<()>,
    shards: Vec<shard::Handle>,
    stop: Arc<AtomicBool>,
    ended: mpsc::Receiver<()>,
}

/// What a stream task passes to its shard.
#[derive(Debug)]
enum Input {
    Client {
        client: Client,
        bytes: Vec<u8>,
    },
    Connected {
        client: Client,
        sender: mpsc::Sender<Vec<u8>>,
    },
    Closed {
        client: Client,
    },
}

impl Relay {
    /// Binds every socket, starts the shards' threads, and the TCP and TLS listeners on the
    /// current tokio runtime.
    pub async fn start(config: RelayConfig) -> Result<Self, StartError> {
        let bind = |port| SocketAddr::new(config.bind_ip, port);
        let ports = config.core.relay_ports.clone();
        let port_count = usize::from(ports.end().saturating_sub(*ports.start())) + 1;
        let shard_count = config.shards.clamp(1, port_count.max(1));

        // The UDP listener: the first shard binds (possibly port 0), the others join its port.
        let mut listeners = Vec::new();
        if let Some(port) = config.udp_port {
            let mut addr = bind(port);
            for _ in 0..shard_count {
                let socket =
                    udp::bind(addr, Sharing::ReusePort).map_err(|source| StartError::Bind {
                        what: "UDP listener",
                        addr,
                        source,
                    })?;
                if let Ok(local) = socket.local_addr() {
                    addr = local;
                }
                listeners.push(socket);
            }
        }
        let udp_addr = listeners.first().and_then(|s| s.local_addr().ok());

        // Relay ports, in contiguous shares: shard i owns its own sub-range.
        let ledger = Ledger::new(config.core.quotas, config.core.rate_limit);
        let mut shards = Vec::with_capacity(shard_count);
        let mut listeners = listeners.into_iter();
        let mut first = *ports.start();
        for index in 0..shard_count {
            let share = port_count / shard_count + usize::from(index < port_count % shard_count);
            let mut relays = Vec::with_capacity(share);
            for offset in 0..share {
                let Some(port) = u16::try_from(offset)
                    .ok()
                    .and_then(|o| first.checked_add(o))
                else {
                    break;
                };
                let addr = bind(port);
                relays.push(udp::bind(addr, Sharing::Exclusive).map_err(|source| {
                    StartError::Bind {
                        what: "relay port",
                        addr,
                        source,
                    }
                })?);
            }
            let Some(last) = u16::try_from(relays.len())
                .ok()
                .and_then(|len| len.checked_sub(1))
                .and_then(|len| first.checked_add(len))
            else {
                continue;
            };
            let mut core = config.core.clone();
            core.relay_ports = first..=last;
            shards.push(shard::Shard {
                server: Server::with_ledger(core, ledger.clone()),
                listener: listeners.next(),
                relays,
                first_port: first,
            });
            first = last.saturating_add(1);
        }

        // One message per shard at most (when it ends), so room for every shard suffices.
        let (ended_tx, ended) = mpsc::channel(shards.len().max(1));
        // Dropping `relay` (also on an error below) stops the shards already started.
        let mut relay = Self {
            udp: udp_addr,
            tcp: None,
            tls: None,
            tasks: JoinSet::new(),
            shards: Vec::with_capacity(shards.len()),
            stop: Arc::new(AtomicBool::new(false)),
            ended,
        };
        let mut inboxes = Vec::with_capacity(shards.len());
        for (index, shard) in shards.into_iter().enumerate() {
            let (handle, inbox) = shard
                .spawn(index, Arc::clone(&relay.stop), ended_tx.clone())
                .map_err(|source| StartError::Thread { source })?;
            relay.shards.push(handle);
            inboxes.push(inbox);
        }
        let inboxes: Arc<[shard::Inbox]> = inboxes.into();

        let limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        if let Some(port) = config.tcp_port {
            let addr = bind(port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "TCP listener",
                    addr,
                    source,
                })?;
            relay.tcp = listener.local_addr().ok();
            relay.tasks.spawn(stream::accept(
                listener,
                None,
                Arc::clone(&limit),
                Arc::clone(&inboxes),
            ));
        }
        if let Some(tls) = &config.tls {
            let acceptor = stream::tls_acceptor(tls)?;
            let addr = bind(tls.port);
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "TLS listener",
                    addr,
                    source,
                })?;
            relay.tls = listener.local_addr().ok();
            relay.tasks.spawn(stream::accept(
                listener,
                Some(acceptor),
                Arc::clone(&limit),
                Arc::clone(&inboxes),
            ));
        }

        info!(
            udp = ?relay.udp,
            tcp = ?relay.tcp,
            tls = ?relay.tls,
            relay_ports = ?config.core.relay_ports,
            shards = relay.shards.len(),
            "TURN relay listening"
        );
        Ok(relay)
    }

    /// The UDP listener's address.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp
    }

    /// The TCP listener's address.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The TLS listener's address.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
    }

    /// Waits until a shard or task of the relay ends (which only happens on a bug), then stops
    /// the rest.
    pub async fn wait(mut self) {
        let (tasks, ended) = (&mut self.tasks, &mut self.ended);
        let tasks = async {
            match tasks.join_next().await {
                Some(Err(error)) => warn!(%error, "TURN relay task failed"),
                Some(Ok(())) => warn!("TURN relay task ended"),
                // No TCP or TLS listener: only the shards can end.
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tasks => {}
            _ = ended.recv() => warn!("TURN relay shard ended"),
        }
        self.tasks.shutdown().await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for shard in &self.shards {
            let _ = shard.wake.write(1);
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take()
                && thread.join().is_err()
            {
                warn!("TURN relay shard panicked");
            }
        }
    }
}

fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
    }
}
