//! The relay's state machine: TURN requests in, responses and relayed data out.
//!
//! [`Server`] is fed client bytes ([`Server::handle_client_input`]), peer datagrams arriving
//! on relay ports ([`Server::handle_peer_input`]), closed stream connections
//! ([`Server::handle_client_closed`]) and time ([`Server::handle_timeout`]). After each call,
//! drain [`Server::poll_command`] until it returns `None` and execute the commands in order.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha1::Sha1;
use tracing::debug;

use super::allocation::{Allocation, AllocationOwner, BindError, CHANNEL_NUMBERS};
use super::credentials::{self, RestUsername, Secret};
use super::ledger::{Ledger, QuotaError};
use super::message::{
    Builder, ChannelData, Class, Fingerprint, FrameKind, Message, Method, Padding, TransactionId,
    attr, decode_xor_address, frame_kind,
};
use super::policy::PeerPolicy;
use super::rate_limit::RateLimit;

/// Allocation lifetime when the client asks for less (or nothing).
/// <https://www.rfc-editor.org/rfc/rfc8656#section-3.2>
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// How long a nonce stays valid before the client is told it is stale (438).
pub const NONCE_LIFETIME: Duration = Duration::from_secs(3600);

/// How often [`Server::handle_timeout`] wants to run.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Largest datagram relayed: it must fit in a DATA attribute or a ChannelData frame.
pub const MAX_RELAYED_DATA: usize = 65_000;

/// Longest USERNAME accepted (RFC 8489 limits it to 513 bytes).
const MAX_USERNAME: usize = 513;

/// Protocol number of UDP in REQUESTED-TRANSPORT.
const PROTOCOL_UDP: u8 = 17;

/// Attributes this relay understands in requests; other comprehension-required ones get 420.
const KNOWN_ATTRIBUTES: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::REQUESTED_TRANSPORT,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::DONT_FRAGMENT,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::XOR_PEER_ADDRESS,
    attr::CHANNEL_NUMBER,
    attr::DATA,
    // Sent by some clients in requests; harmless to accept.
    attr::MAPPED_ADDRESS,
    attr::XOR_MAPPED_ADDRESS,
];

/// How a client reaches the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// `turn:host?transport=udp`.
    Udp,
    /// `turn:host?transport=tcp`.
    Tcp,
    /// `turns:host` (TLS over TCP).
    Tls,
}

impl Transport {
    fn padding(self) -> Padding {
        match self {
            Self::Udp => Padding::Datagram,
            Self::Tcp | Self::Tls => Padding::Stream,
        }
    }
}

/// A client: its transport and address (one UDP five-tuple, or one stream connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client {
    /// The transport.
    pub transport: Transport,
    /// The client's address as the relay sees it.
    pub addr: SocketAddr,
}

/// Allocation quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Most live allocations per identity (the part of the username after `:`).
    pub per_user: usize,
    /// Most live allocations in total (never more than relay ports).
    pub total: usize,
}

/// What the relay needs to know. Built and validated by the caller (the shell's config).
#[derive(Debug, Clone)]
pub struct Config {
    /// REALM sent to clients; part of the long-term key.
    pub realm: String,
    /// The shared secret REST credentials are derived from.
    pub secret: Secret,
    /// The address relayed transport addresses are advertised with.
    pub relay_ip: IpAddr,
    /// Relay ports handed out.
    pub relay_ports: RangeInclusive<u16>,
    /// Which peers are reachable.
    pub policy: PeerPolicy,
    /// Allocation quotas.
    pub quotas: Quotas,
    /// Allocate attempts per source IP.
    pub rate_limit: RateLimit,
    /// Longest allocation lifetime granted.
    pub max_lifetime: Duration,
    /// Key of the stateless nonces (random per process; injected so the core stays seeded).
    pub nonce_key: [u8; 16],
}

/// Time as the relay needs it: monotonic for lifetimes, wall clock for credential expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Seconds since the Unix epoch.
    pub unix_secs: u64,
}

/// A side effect for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send bytes to a client (a datagram, or a frame on its stream).
    SendToClient {
        /// Where to.
        to: Client,
        /// A STUN message or ChannelData frame.
        payload: Vec<u8>,
    },
    /// Send a datagram from a relay port to a peer.
    SendToPeer {
        /// The allocation's relay port.
        relay_port: u16,
        /// The peer.
        peer: SocketAddr,
        /// The application data.
        payload: Vec<u8>,
    },
}

/// Counters, as plain data for the shell to export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Allocations created.
    pub allocations_created: u64,
    /// Requests refused for missing, wrong or expired credentials (excluding the first,
    /// expected 401 of each Allocate).
    pub auth_failures: u64,
    /// Permissions, channels or sends refused by the peer policy.
    pub policy_refusals: u64,
    /// Allocations refused by a quota or for lack of ports.
    pub quota_refusals: u64,
    /// Allocate attempts dropped by the rate limit.
    pub rate_limited: u64,
    /// Client input that is not STUN or ChannelData, or is malformed.
    pub malformed: u64,
    /// Datagrams relayed from clients to peers.
    pub to_peer_packets: u64,
    /// Bytes relayed from clients to peers.
    pub to_peer_bytes: u64,
    /// Datagrams relayed from peers to clients.
    pub to_client_packets: u64,
    /// Bytes relayed from peers to clients.
    pub to_client_bytes: u64,
    /// Data dropped: no allocation, channel or permission.
    pub dropped: u64,
}

/// The relay.
#[derive(Debug)]
pub struct Server {
    config: Config,
    allocations: HashMap<Client, Allocation>,
    ports: HashMap<u16, Client>,
    ledger: Ledger,
    next_port: u16,
    commands: VecDeque<Command>,
    stats: Stats,
    next_sweep: Option<Instant>,
}

/// An authenticated request's credentials.
struct Authenticated {
    username: String,
    identity: String,
    key: [u8; 16],
}

impl Server {
    /// A relay with no allocations, counting quotas and the rate limit on its own.
    pub fn new(config: Config) -> Self {
        let ledger = Ledger::new(config.quotas, config.rate_limit);
        Self::with_ledger(config, ledger)
    }

    /// A relay with no allocations that counts quotas and the Allocate rate limit in `ledger`,
    /// shared with the other cores of the same relay (whose `relay_ports` must not overlap
    /// this one's). `config.quotas` and `config.rate_limit` are then the ledger's business.
    pub fn with_ledger(config: Config, ledger: Ledger) -> Self {
        let next_port = *config.relay_ports.start();
        Self {
            config,
            allocations: HashMap::new(),
            ports: HashMap::new(),
            ledger,
            next_port,
            commands: VecDeque::new(),
            stats: Stats::default(),
            next_sweep: None,
        }
    }

    /// Handles bytes from a client: one UDP datagram, or one complete frame from a stream
    /// (see [`frame_kind`] for framing). Malformed input is counted and dropped.
    pub fn handle_client_input(&mut self, now: Now, from: Client, bytes: &[u8]) {
        self.next_sweep.get_or_insert(now.instant + SWEEP_INTERVAL);
        match frame_kind(bytes) {
            Ok(FrameKind::ChannelData(_)) => self.handle_channel_data(now.instant, from, bytes),
            Ok(FrameKind::Stun(_)) => match Message::parse(bytes) {
                Ok(message) => self.handle_message(now, from, &message),
                Err(error) => {
                    self.stats.malformed += 1;
                    debug!(%error, "malformed STUN message");
                }
            },
            Err(_) => self.stats.malformed += 1,
        }
    }

    /// Handles a datagram a peer sent to `relay_port`.
    pub fn handle_peer_input(
        &mut self,
        now: Instant,
        relay_port: u16,
        from: SocketAddr,
        data: &[u8],
    ) {
        let Some(client) = self.ports.get(&relay_port).copied() else {
            self.stats.dropped += 1;
            return;
        };
        let Some(allocation) = self.allocations.get(&client) else {
            self.stats.dropped += 1;
            return;
        };
        if data.len() > MAX_RELAYED_DATA || !allocation.is_permitted(now, from.ip()) {
            self.stats.dropped += 1;
            return;
        }
        let payload = match allocation.peer_channel(now, from) {
            Some(channel) => ChannelData::encode(channel, data, client.transport.padding()),
            None => {
                // Data indications carry a fresh random-looking id; it needs no uniqueness.
                let mut id = [0; 12];
                id[..2].copy_from_slice(&relay_port.to_be_bytes());
                id[2..10].copy_from_slice(&self.stats.to_client_packets.to_be_bytes());
                Builder::new(Method::Data, Class::Indication, TransactionId(id))
                    .xor_address(attr::XOR_PEER_ADDRESS, from)
                    .attribute(attr::DATA, data)
                    .finish(None, Fingerprint::Omit)
            }
        };
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += data.len() as u64;
        self.commands.push_back(Command::SendToClient {
            to: client,
            payload,
        });
    }

    /// A stream client (TCP or TLS) went away: its allocation goes with it.
    pub fn handle_client_closed(&mut self, client: Client) {
        self.remove_allocation(client);
    }

    /// Expires allocations, permissions and channels, and forgets refilled rate buckets.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| at > now) {
            return;
        }
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        let expired: Vec<Client> = self
            .allocations
            .iter()
            .filter(|(_, allocation)| allocation.expires <= now)
            .map(|(client, _)| *client)
            .collect();
        for client in expired {
            debug!(
                port = self.allocations.get(&client).map(|a| a.port),
                "allocation expired"
            );
            self.remove_allocation(client);
        }
        for allocation in self.allocations.values_mut() {
            allocation.expire(now);
        }
        self.ledger.sweep(now);
    }

    /// The next command to execute, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        self.commands.pop_front()
    }

    /// When [`Server::handle_timeout`] wants to run next (`None` before any input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Live allocations.
    pub fn num_allocations(&self) -> usize {
        self.allocations.len()
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn handle_channel_data(&mut self, now: Instant, from: Client, bytes: &[u8]) {
        let Ok(frame) = ChannelData::parse(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(allocation) = self.allocations.get(&from) else {
            self.stats.dropped += 1;
            return;
        };
        let Some(peer) = allocation.channel_peer(now, frame.channel) else {
            self.stats.dropped += 1;
            return;
        };
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += frame.data.len() as u64;
        self.commands.push_back(Command::SendToPeer {
            relay_port: allocation.port,
            peer,
            payload: frame.data.to_vec(),
        });
    }

    fn handle_message(&mut self, now: Now, from: Client, message: &Message<'_>) {
        match (message.class, message.method) {
            (Class::Request, Method::Binding) => {
                let response = Builder::new(Method::Binding, Class::Success, message.transaction)
                    .xor_address(attr::XOR_MAPPED_ADDRESS, from.addr)
                    .finish(None, fingerprint_like(message));
                self.send(from, response);
            }
            (Class::Indication, Method::Send) => self.handle_send(now.instant, from, message),
            (
                Class::Request,
                method @ (Method::Allocate
                | Method::Refresh
                | Method::CreatePermission
                | Method::ChannelBind),
            ) => {
                if method == Method::Allocate && !self.ledger.try_take(now.instant, from.addr.ip())
                {
                    self.stats.rate_limited += 1;
                    return;
                }
                let unknown = message.unknown_required(KNOWN_ATTRIBUTES);
                if !unknown.is_empty() {
                    let value: Vec<u8> = unknown.iter().flat_map(|a| a.to_be_bytes()).collect();
                    let response = Builder::new(method, Class::Error, message.transaction)
                        .error(420, "Unknown Attribute")
                        .attribute(attr::UNKNOWN_ATTRIBUTES, &value)
                        .finish(None, fingerprint_like(message));
                    self.send(from, response);
                    return;
                }
                let auth = match self.authenticate(now, from, method, message) {
                    Ok(auth) => auth,
                    Err(response) => {
                        self.send(from, response);
                        return;
                    }
                };
                let reply = Reply {
                    method,
                    transaction: message.transaction,
                    key: auth.key,
                    fingerprint: fingerprint_like(message),
                };
                let response = match method {
                    Method::Allocate => self.allocate(now.instant, from, message, auth, &reply),
                    Method::Refresh => self.refresh(now.instant, from, message, &auth, &reply),
                    Method::CreatePermission => {
                        self.create_permission(now.instant, from, message, &auth, &reply)
                    }
                    _ => self.channel_bind(now.instant, from, message, &auth, &reply),
                };
                self.send(from, response);
            }
            // Responses, other indications and unknown methods from clients are ignored.
            _ => self.stats.malformed += 1,
        }
    }

    /// Checks the long-term credentials of a request; the error response to send otherwise.
    /// <https://www.rfc-editor.org/rfc/rfc8489#section-9.2.4>
    fn authenticate(
        &mut self,
        now: Now,
        from: Client,
        method: Method,
        message: &Message<'_>,
    ) -> Result<Authenticated, Vec<u8>> {
        let fingerprint = fingerprint_like(message);
        let challenge = |server: &Self, code, reason| {
            Builder::new(method, Class::Error, message.transaction)
                .error(code, reason)
                .attribute(attr::REALM, server.config.realm.as_bytes())
                .attribute(
                    attr::NONCE,
                    server.nonce(now.unix_secs, from.addr.ip()).as_bytes(),
                )
                .finish(None, fingerprint)
        };
        if message.attribute(attr::MESSAGE_INTEGRITY).is_none() {
            // The expected first round trip of every client: not counted as a failure.
            return Err(challenge(self, 401, "Unauthorized"));
        }
        let (Some(username), Some(_realm), Some(nonce)) = (
            message.attribute(attr::USERNAME),
            message.attribute(attr::REALM),
            message.attribute(attr::NONCE),
        ) else {
            self.stats.auth_failures += 1;
            return Err(error(method, message, 400, "Bad Request"));
        };
        if !self.nonce_is_valid(nonce, now.unix_secs, from.addr.ip()) {
            return Err(challenge(self, 438, "Stale Nonce"));
        }
        let Some(username) = std::str::from_utf8(username)
            .ok()
            .filter(|u| u.len() <= MAX_USERNAME)
        else {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        };
        let Some(rest) = RestUsername::parse(username) else {
            self.stats.auth_failures += 1;
            return Err(challenge(self, 401, "Unauthorized"));
        };
        if rest.expires_unix < now.unix_secs {
            self.stats.auth_failures += 1;
            debug!("expired TURN credentials");
            return Err(challenge(self, 401, "Unauthorized"));
        }
        let password = credentials::password(&self.config.secret, username);
        let key = credentials::long_term_key(username, &self.config.realm, &password);
        if !message.verify_integrity(&key) {
            self.stats.auth_failures += 1;
            debug!("wrong TURN credentials");
            return Err(challenge(self, 401, "Unauthorized"));
        }
        Ok(Authenticated {
            username: username.to_owned(),
            identity: rest.identity.to_owned(),
            key,
        })
    }

    fn allocate(
        &mut self,
        now: Instant,
        from: Client,
        message: &Message<'_>,
        auth: Authenticated,
        reply: &Reply,
    ) -> Vec<u8> {
        if let Some(existing) = self.allocations.get(&from) {
            // A retransmitted Allocate gets the same answer; anything else is a mismatch.
            if existing.created_by == message.transaction && existing.username == auth.username {
                return existing.created_response.clone();
            }
            return reply.error(437, "Allocation Mismatch");
        }
        match message.attribute(attr::REQUESTED_TRANSPORT) {
            None => return reply.error(400, "Bad Request"),
            Some([PROTOCOL_UDP, ..]) => {}
            Some(_) => return reply.error(442, "Unsupported Transport Protocol"),
        }
        if let Some(family) = message.attribute(attr::REQUESTED_ADDRESS_FAMILY) {
            let wanted = if self.config.relay_ip.is_ipv4() {
                0x01
            } else {
                0x02
            };
            if family.first() != Some(&wanted) {
                return reply.error(440, "Address Family not Supported");
            }
        }
        if message.attribute(attr::RESERVATION_TOKEN).is_some() {
            return reply.error(508, "Insufficient Capacity");
        }
        match self.ledger.try_allocate(&auth.identity) {
            Ok(()) => {}
            Err(QuotaError::PerUser) => {
                self.stats.quota_refusals += 1;
                return reply.error(486, "Allocation Quota Reached");
            }
            Err(QuotaError::Total) => {
                self.stats.quota_refusals += 1;
                return reply.error(508, "Insufficient Capacity");
            }
        }
        let even = message.attribute(attr::EVEN_PORT).is_some();
        let Some(port) = self.free_port(even) else {
            self.ledger.release(&auth.identity);
            self.stats.quota_refusals += 1;
            return reply.error(508, "Insufficient Capacity");
        };
        let lifetime = self.lifetime(message);
        let relayed = SocketAddr::new(self.config.relay_ip, port);
        let response = reply
            .success()
            .xor_address(attr::XOR_RELAYED_ADDRESS, relayed)
            .xor_address(attr::XOR_MAPPED_ADDRESS, from.addr)
            .attribute(attr::LIFETIME, &lifetime_secs(lifetime).to_be_bytes());
        let response = reply.finish(response);
        let owner = AllocationOwner {
            username: auth.username,
            identity: auth.identity,
            key: auth.key,
            transaction: message.transaction,
        };
        let mut allocation = Allocation::new(port, owner, now + lifetime);
        allocation.created_response = response.clone();
        self.allocations.insert(from, allocation);
        self.ports.insert(port, from);
        self.stats.allocations_created += 1;
        debug!(port, transport = ?from.transport, "allocation created");
        response
    }

    fn refresh(
        &mut self,
        now: Instant,
        from: Client,
        message: &Message<'_>,
        auth: &Authenticated,
        reply: &Reply,
    ) -> Vec<u8> {
        let lifetime = self.lifetime(message);
        let requested_zero = message
            .attribute(attr::LIFETIME)
            .is_some_and(|v| v == [0, 0, 0, 0]);
        let Some(allocation) = self.owned_allocation(from, auth) else {
            return self.mismatch(from, reply);
        };
        let granted = if requested_zero {
            0
        } else {
            allocation.expires = now + lifetime;
            lifetime_secs(lifetime)
        };
        if requested_zero {
            self.remove_allocation(from);
        }
        let response = reply
            .success()
            .attribute(attr::LIFETIME, &granted.to_be_bytes());
        reply.finish(response)
    }

    fn create_permission(
        &mut self,
        now: Instant,
        from: Client,
        message: &Message<'_>,
        auth: &Authenticated,
        reply: &Reply,
    ) -> Vec<u8> {
        let mut peers = Vec::new();
        for value in message.attributes(attr::XOR_PEER_ADDRESS) {
            match decode_xor_address(value, &message.transaction) {
                Ok(peer) => peers.push(peer.ip()),
                Err(_) => return reply.error(400, "Bad Request"),
            }
        }
        if peers.is_empty() {
            return reply.error(400, "Bad Request");
        }
        let relay_v4 = self.config.relay_ip.is_ipv4();
        if peers.iter().any(|ip| ip.is_ipv4() != relay_v4) {
            return reply.error(443, "Peer Address Family Mismatch");
        }
        if !peers.iter().all(|ip| self.config.policy.permits_ip(*ip)) {
            self.stats.policy_refusals += 1;
            debug!("permission refused by peer policy");
            return reply.error(403, "Forbidden");
        }
        let Some(allocation) = self.owned_allocation(from, auth) else {
            return self.mismatch(from, reply);
        };
        match allocation.permit(now, &peers) {
            Ok(()) => reply.finish(reply.success()),
            Err(_) => reply.error(508, "Insufficient Capacity"),
        }
    }

    fn channel_bind(
        &mut self,
        now: Instant,
        from: Client,
        message: &Message<'_>,
        auth: &Authenticated,
        reply: &Reply,
    ) -> Vec<u8> {
        let channel = match message.attribute(attr::CHANNEL_NUMBER) {
            Some([c0, c1, _, _]) => u16::from_be_bytes([*c0, *c1]),
            _ => return reply.error(400, "Bad Request"),
        };
        if !CHANNEL_NUMBERS.contains(&channel) {
            return reply.error(400, "Bad Request");
        }
        let peer = match message
            .attribute(attr::XOR_PEER_ADDRESS)
            .map(|value| decode_xor_address(value, &message.transaction))
        {
            Some(Ok(peer)) => peer,
            _ => return reply.error(400, "Bad Request"),
        };
        if peer.is_ipv4() != self.config.relay_ip.is_ipv4() {
            return reply.error(443, "Peer Address Family Mismatch");
        }
        if !self.config.policy.permits(peer) {
            self.stats.policy_refusals += 1;
            debug!("channel refused by peer policy");
            return reply.error(403, "Forbidden");
        }
        let Some(allocation) = self.owned_allocation(from, auth) else {
            return self.mismatch(from, reply);
        };
        match allocation.bind_channel(now, channel, peer) {
            Ok(()) => reply.finish(reply.success()),
            Err(BindError::Conflict) => reply.error(400, "Bad Request"),
            Err(BindError::Full) => reply.error(508, "Insufficient Capacity"),
        }
    }

    fn handle_send(&mut self, now: Instant, from: Client, message: &Message<'_>) {
        let (Some(peer), Some(data)) = (
            message.attribute(attr::XOR_PEER_ADDRESS),
            message.attribute(attr::DATA),
        ) else {
            self.stats.malformed += 1;
            return;
        };
        let Ok(peer) = decode_xor_address(peer, &message.transaction) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(allocation) = self.allocations.get(&from) else {
            self.stats.dropped += 1;
            return;
        };
        if !allocation.is_permitted(now, peer.ip()) {
            self.stats.dropped += 1;
            return;
        }
        if !self.config.policy.permits(peer) {
            self.stats.policy_refusals += 1;
            return;
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += data.len() as u64;
        self.commands.push_back(Command::SendToPeer {
            relay_port: allocation.port,
            peer,
            payload: data.to_vec(),
        });
    }

    /// The client's allocation if `auth` owns it.
    fn owned_allocation(&mut self, from: Client, auth: &Authenticated) -> Option<&mut Allocation> {
        self.allocations
            .get_mut(&from)
            .filter(|allocation| allocation.username == auth.username)
    }

    /// 437 when the client has no allocation, 441 when another username owns it.
    fn mismatch(&self, from: Client, reply: &Reply) -> Vec<u8> {
        if self.allocations.contains_key(&from) {
            reply.error(441, "Wrong Credentials")
        } else {
            reply.error(437, "Allocation Mismatch")
        }
    }

    /// The lifetime to grant for the request's LIFETIME: at least the default, at most the
    /// configured maximum. <https://www.rfc-editor.org/rfc/rfc8656#section-7.2>
    fn lifetime(&self, message: &Message<'_>) -> Duration {
        let requested = match message.attribute(attr::LIFETIME) {
            Some([a, b, c, d]) => {
                Duration::from_secs(u64::from(u32::from_be_bytes([*a, *b, *c, *d])))
            }
            _ => DEFAULT_LIFETIME,
        };
        requested
            .min(self.config.max_lifetime)
            .max(DEFAULT_LIFETIME.min(self.config.max_lifetime))
    }

    /// A free relay port, scanning from after the last one handed out.
    fn free_port(&mut self, even: bool) -> Option<u16> {
        let (first, last) = (
            *self.config.relay_ports.start(),
            *self.config.relay_ports.end(),
        );
        let count = u32::from(last - first) + 1;
        for _ in 0..count {
            let port = self.next_port;
            self.next_port = if port >= last { first } else { port + 1 };
            if !self.ports.contains_key(&port) && (!even || port.is_multiple_of(2)) {
                return Some(port);
            }
        }
        None
    }

    fn remove_allocation(&mut self, client: Client) {
        let Some(allocation) = self.allocations.remove(&client) else {
            return;
        };
        self.ports.remove(&allocation.port);
        self.ledger.release(&allocation.identity);
    }

    /// A stateless nonce: hex expiry, then a truncated MAC over expiry and client IP. Nothing
    /// is stored per nonce, so a flood of unauthenticated requests grows no table.
    fn nonce(&self, unix_secs: u64, ip: IpAddr) -> String {
        let expiry = unix_secs + NONCE_LIFETIME.as_secs();
        let tag = self.nonce_tag(expiry, ip);
        let mut nonce = format!("{expiry:016x}");
        for byte in &tag[..8] {
            nonce.push_str(&format!("{byte:02x}"));
        }
        nonce
    }

    fn nonce_is_valid(&self, nonce: &[u8], unix_secs: u64, ip: IpAddr) -> bool {
        let Some(nonce) = std::str::from_utf8(nonce).ok().filter(|n| n.len() == 32) else {
            return false;
        };
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        if expiry < unix_secs {
            return false;
        }
        let tag = self.nonce_tag(expiry, ip);
        let mut expected = String::with_capacity(16);
        for byte in &tag[..8] {
            expected.push_str(&format!("{byte:02x}"));
        }
        expected == nonce[16..]
    }

    fn nonce_tag(&self, expiry: u64, ip: IpAddr) -> Vec<u8> {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.config.nonce_key)
            // INVARIANT: HMAC accepts keys of any length.
            .expect("HMAC takes any key length");
        mac.update(&expiry.to_be_bytes());
        match ip {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.finalize().into_bytes().to_vec()
    }

    fn send(&mut self, to: Client, payload: Vec<u8>) {
        self.commands
            .push_back(Command::SendToClient { to, payload });
    }
}

/// How to answer one authenticated request.
struct Reply {
    method: Method,
    transaction: TransactionId,
    key: [u8; 16],
    fingerprint: Fingerprint,
}

impl Reply {
    fn success(&self) -> Builder {
        Builder::new(self.method, Class::Success, self.transaction)
    }

    fn finish(&self, builder: Builder) -> Vec<u8> {
        builder.finish(Some(&self.key), self.fingerprint)
    }

    /// An error response to an authenticated request, itself authenticated.
    fn error(&self, code: u16, reason: &str) -> Vec<u8> {
        let builder = Builder::new(self.method, Class::Error, self.transaction).error(code, reason);
        self.finish(builder)
    }
}

/// An unauthenticated error response.
fn error(method: Method, message: &Message<'_>, code: u16, reason: &str) -> Vec<u8> {
    Builder::new(method, Class::Error, message.transaction)
        .error(code, reason)
        .finish(None, fingerprint_like(message))
}

fn fingerprint_like(message: &Message<'_>) -> Fingerprint {
    if message.has_fingerprint() {
        Fingerprint::Add
    } else {
        Fingerprint::Omit
    }
}

fn lifetime_secs(lifetime: Duration) -> u32 {
    u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX)
}
