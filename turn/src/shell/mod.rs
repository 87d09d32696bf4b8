//! The tokio shell around [`crate::proto::Server`]: it binds the client listeners (UDP, TCP,
//! TLS) and one UDP socket per relay port, feeds what arrives into the core on one event-loop
//! task, and executes the core's commands.
//!
//! Every relay port is bound at start-up, so a port the core hands out always has a socket and
//! a port range that overlaps something else fails loudly before any client is served.

#![allow(
    clippy::disallowed_methods,
    reason = "the shell owns the clocks the sans-IO core is fed with"
)]

mod metrics;
mod stream;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::proto::{Client, Command, Config, Now, Server, Transport};

/// Inputs queued for the event loop. UDP readers drop datagrams when it is full.
const INPUT_QUEUE: usize = 8192;

/// Inputs handled per event-loop turn before commands are executed.
const BATCH: usize = 256;

/// Largest datagram read from a client or peer.
const MAX_DATAGRAM: usize = 65_535;

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
    /// The sans-IO core's configuration (realm, secret, relay ports, policy, quotas).
    pub core: Config,
}

/// The TLS listener (`turns:`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Port (`0`: any free port).
    pub port: u16,
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
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
}

/// A running relay. Dropping it stops every task.
#[derive(Debug)]
#[must_use = "the relay stops when this is dropped"]
pub struct Relay {
    udp: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

/// What the event loop receives.
#[derive(Debug)]
enum Input {
    Client {
        client: Client,
        bytes: Vec<u8>,
    },
    Peer {
        port: u16,
        from: SocketAddr,
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
    /// Binds every socket, then starts the relay's tasks on the current tokio runtime.
    pub async fn start(config: RelayConfig) -> Result<Self, StartError> {
        let bind = |port| SocketAddr::new(config.bind_ip, port);
        let mut tasks = JoinSet::new();
        let (input, inputs) = mpsc::channel(INPUT_QUEUE);

        let first_port = *config.core.relay_ports.start();
        let mut relay_sockets = Vec::new();
        for port in config.core.relay_ports.clone() {
            let addr = bind(port);
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    what: "relay port",
                    addr,
                    source,
                })?;
            let socket = Arc::new(socket);
            tasks.spawn(read_peers(Arc::clone(&socket), port, input.clone()));
            relay_sockets.push(socket);
        }

        let udp = match config.udp_port {
            Some(port) => {
                let addr = bind(port);
                let socket = UdpSocket::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind {
                        what: "UDP listener",
                        addr,
                        source,
                    })?;
                Some(Arc::new(socket))
            }
            None => None,
        };
        let udp_addr = udp.as_ref().and_then(|s| s.local_addr().ok());
        if let Some(socket) = &udp {
            tasks.spawn(read_udp_clients(Arc::clone(socket), input.clone()));
        }

        let limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let tcp_addr = match config.tcp_port {
            Some(port) => {
                let addr = bind(port);
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            what: "TCP listener",
                            addr,
                            source,
                        })?;
                let local = listener.local_addr().ok();
                tasks.spawn(stream::accept(
                    listener,
                    None,
                    Arc::clone(&limit),
                    input.clone(),
                ));
                local
            }
            None => None,
        };
        let tls_addr = match &config.tls {
            Some(tls) => {
                let acceptor = stream::tls_acceptor(tls)?;
                let addr = bind(tls.port);
                let listener =
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            what: "TLS listener",
                            addr,
                            source,
                        })?;
                let local = listener.local_addr().ok();
                tasks.spawn(stream::accept(
                    listener,
                    Some(acceptor),
                    Arc::clone(&limit),
                    input.clone(),
                ));
                local
            }
            None => None,
        };
        drop(input);

        info!(
            udp = ?udp_addr,
            tcp = ?tcp_addr,
            tls = ?tls_addr,
            relay_ports = ?config.core.relay_ports,
            "TURN relay listening"
        );
        let event_loop = EventLoop {
            server: Server::new(config.core),
            inputs,
            udp,
            relay_sockets,
            first_port,
            streams: HashMap::new(),
            exported: crate::proto::Stats::default(),
        };
        tasks.spawn(event_loop.run());
        Ok(Self {
            udp: udp_addr,
            tcp: tcp_addr,
            tls: tls_addr,
            tasks,
        })
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

    /// Waits until a task of the relay ends (which only happens on a bug), then stops the rest.
    pub async fn wait(mut self) {
        if let Some(Err(error)) = self.tasks.join_next().await {
            warn!(%error, "TURN relay task failed");
        }
        self.tasks.shutdown().await;
    }
}

/// The task that owns the core.
struct EventLoop {
    server: Server,
    inputs: mpsc::Receiver<Input>,
    udp: Option<Arc<UdpSocket>>,
    relay_sockets: Vec<Arc<UdpSocket>>,
    first_port: u16,
    streams: HashMap<Client, mpsc::Sender<Vec<u8>>>,
    exported: crate::proto::Stats,
}

impl EventLoop {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let timeout = self.server.poll_timeout();
            tokio::select! {
                received = self.inputs.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    let now = now();
                    for input in batch.drain(..) {
                        self.handle(now, input);
                        self.execute();
                    }
                }
                () = sleep_until(timeout) => {
                    self.server.handle_timeout(Instant::now());
                    self.execute();
                    metrics::export(&self.server, &mut self.exported);
                }
            }
        }
    }

    fn handle(&mut self, now: Now, input: Input) {
        match input {
            Input::Client { client, bytes } => self.server.handle_client_input(now, client, &bytes),
            Input::Peer { port, from, bytes } => {
                self.server
                    .handle_peer_input(now.instant, port, from, &bytes);
            }
            Input::Connected { client, sender } => {
                self.streams.insert(client, sender);
            }
            Input::Closed { client } => {
                self.streams.remove(&client);
                self.server.handle_client_closed(client);
            }
        }
    }

    fn execute(&mut self) {
        while let Some(command) = self.server.poll_command() {
            match command {
                Command::SendToClient { to, payload } => match to.transport {
                    Transport::Udp => {
                        if let Some(socket) = &self.udp {
                            send_datagram(socket, &payload, to.addr);
                        }
                    }
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
                    let socket = relay_port
                        .checked_sub(self.first_port)
                        .and_then(|index| self.relay_sockets.get(usize::from(index)));
                    if let Some(socket) = socket {
                        send_datagram(socket, &payload, peer);
                    }
                }
            }
        }
    }
}

fn send_datagram(socket: &UdpSocket, payload: &[u8], to: SocketAddr) {
    match socket.try_send_to(payload, to) {
        Ok(_) => {}
        // A full socket buffer drops the datagram, as the network would.
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
        Err(error) => debug!(%error, "TURN send failed"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
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

/// Reads client datagrams from the UDP listener.
async fn read_udp_clients(socket: Arc<UdpSocket>, input: mpsc::Sender<Input>) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let client = Client {
                    transport: Transport::Udp,
                    addr: from,
                };
                let bytes = buf[..len].to_vec();
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    input.try_send(Input::Client { client, bytes })
                {
                    return;
                }
            }
            // ICMP errors surface as receive errors on some platforms; keep reading.
            Err(error) => debug!(%error, "TURN UDP receive failed"),
        }
    }
}

/// Reads peer datagrams arriving on one relay port.
async fn read_peers(socket: Arc<UdpSocket>, port: u16, input: mpsc::Sender<Input>) {
    let mut buf = vec![0; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((len, from)) => {
                let bytes = buf[..len].to_vec();
                if let Err(mpsc::error::TrySendError::Closed(_)) =
                    input.try_send(Input::Peer { port, from, bytes })
                {
                    return;
                }
            }
            Err(error) => debug!(%error, "TURN relay receive failed"),
        }
    }
}
