//! One allocation: a relay port leased to one client five-tuple, with its permission and
//! channel tables. Both tables are bounded, so no client can grow the relay's memory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::message::TransactionId;

/// How long a permission lives unless refreshed.
/// <https://www.rfc-editor.org/rfc/rfc8656#name-permissions-2>
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);

/// How long a channel binding lives unless refreshed.
/// <https://www.rfc-editor.org/rfc/rfc8656#name-channels-2>
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// Most permissions (peer IPs) one allocation holds. A browser talking to one SFU needs one.
pub const MAX_PERMISSIONS: usize = 32;

/// Most channels one allocation binds.
pub const MAX_CHANNELS: usize = 32;

/// Valid channel numbers (RFC 5766's range; RFC 8656 narrowed it to 0x4FFF, a subset).
/// <https://www.rfc-editor.org/rfc/rfc8656#name-channels-2>
pub const CHANNEL_NUMBERS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// A relay port leased to one client.
#[derive(Debug)]
pub struct Allocation {
    /// The relay port (on the configured relay address).
    pub port: u16,
    /// The username that created it; every later request must use the same one.
    pub username: String,
    /// The identity part of the username, for the per-user quota.
    pub identity: String,
    /// The long-term key of `username`, which signs every response.
    pub key: [u8; 16],
    /// When it expires unless refreshed.
    pub expires: Instant,
    /// The Allocate request that created it and the response sent, for retransmissions.
    pub created_by: TransactionId,
    /// The success response sent for `created_by`.
    pub created_response: Vec<u8>,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    channel_by_peer: HashMap<SocketAddr, u16>,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

/// Why a permission or channel cannot be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The table is full ([`MAX_PERMISSIONS`] or [`MAX_CHANNELS`]).
    Full,
    /// The channel is bound to another peer, or the peer to another channel.
    Conflict,
}

impl Allocation {
    /// A fresh allocation with empty tables.
    pub fn new(port: u16, credentials: AllocationOwner, expires: Instant) -> Self {
        Self {
            port,
            username: credentials.username,
            identity: credentials.identity,
            key: credentials.key,
            expires,
            created_by: credentials.transaction,
            created_response: Vec::new(),
            permissions: HashMap::new(),
            channels: HashMap::new(),
            channel_by_peer: HashMap::new(),
        }
    }

    /// Installs or refreshes permissions for all `ips`, or none if the table would overflow.
    pub fn permit(&mut self, now: Instant, ips: &[IpAddr]) -> Result<(), BindError> {
        let new = ips
            .iter()
            .filter(|ip| !self.permissions.contains_key(ip))
            .count();
        if self.permissions.len() + new > MAX_PERMISSIONS {
            return Err(BindError::Full);
        }
        for ip in ips {
            self.permissions.insert(*ip, now + PERMISSION_LIFETIME);
        }
        Ok(())
    }

    /// Whether a live permission covers `ip`.
    pub fn is_permitted(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions
            .get(&ip)
            .is_some_and(|expires| *expires > now)
    }

    /// Binds or refreshes `channel` to `peer`, and refreshes the peer's permission.
    pub fn bind_channel(
        &mut self,
        now: Instant,
        channel: u16,
        peer: SocketAddr,
    ) -> Result<(), BindError> {
        match (self.channels.get(&channel), self.channel_by_peer.get(&peer)) {
            (Some(bound), _) if bound.peer != peer => return Err(BindError::Conflict),
            (_, Some(bound)) if *bound != channel => return Err(BindError::Conflict),
            (None, _) if self.channels.len() >= MAX_CHANNELS => return Err(BindError::Full),
            _ => {}
        }
        self.permit(now, &[peer.ip()])?;
        self.channels.insert(
            channel,
            Channel {
                peer,
                expires: now + CHANNEL_LIFETIME,
            },
        );
        self.channel_by_peer.insert(peer, channel);
        Ok(())
    }

    /// The peer bound to `channel`, if the binding and the peer's permission are alive.
    pub fn channel_peer(&self, now: Instant, channel: u16) -> Option<SocketAddr> {
        self.channels
            .get(&channel)
            .filter(|bound| bound.expires > now && self.is_permitted(now, bound.peer.ip()))
            .map(|bound| bound.peer)
    }

    /// The live channel bound to `peer`.
    pub fn peer_channel(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        self.channel_by_peer
            .get(&peer)
            .copied()
            .filter(|channel| self.channels.get(channel).is_some_and(|b| b.expires > now))
    }

    /// Drops expired permissions and channels.
    pub fn expire(&mut self, now: Instant) {
        self.permissions.retain(|_, expires| *expires > now);
        self.channels.retain(|_, bound| bound.expires > now);
        let channels = &self.channels;
        self.channel_by_peer
            .retain(|_, channel| channels.contains_key(channel));
    }
}

/// Who owns a new allocation, as authenticated by its Allocate request.
#[derive(Debug, Clone)]
pub struct AllocationOwner {
    /// The full username.
    pub username: String,
    /// Its identity part.
    pub identity: String,
    /// Its long-term key.
    pub key: [u8; 16],
    /// The Allocate request's transaction.
    pub transaction: TransactionId,
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests pick an arbitrary start instant"
)]
mod tests {
    use super::*;

    fn allocation(now: Instant) -> Allocation {
        let owner = AllocationOwner {
            username: "1:a".into(),
            identity: "a".into(),
            key: [0; 16],
            transaction: TransactionId([0; 12]),
        };
        Allocation::new(50000, owner, now + Duration::from_secs(600))
    }

    #[test]
    fn tables_are_bounded() {
        let now = Instant::now();
        let mut alloc = allocation(now);
        let ips: Vec<IpAddr> = (0..=MAX_PERMISSIONS as u32)
            .map(|i| IpAddr::from(i.to_be_bytes()))
            .collect();
        assert_eq!(alloc.permit(now, &ips), Err(BindError::Full));
        alloc.permit(now, &ips[..MAX_PERMISSIONS]).unwrap();
        assert_eq!(
            alloc.permit(now, &ips[MAX_PERMISSIONS..]),
            Err(BindError::Full)
        );
        // Refreshing existing ones is always fine.
        alloc.permit(now, &ips[..3]).unwrap();
    }

    #[test]
    fn channels_conflict_and_expire() {
        let now = Instant::now();
        let mut alloc = allocation(now);
        let a: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let b: SocketAddr = "192.0.2.1:1001".parse().unwrap();
        alloc.bind_channel(now, 0x4000, a).unwrap();
        assert_eq!(alloc.bind_channel(now, 0x4000, b), Err(BindError::Conflict));
        assert_eq!(alloc.bind_channel(now, 0x4001, a), Err(BindError::Conflict));
        assert_eq!(alloc.channel_peer(now, 0x4000), Some(a));
        assert_eq!(alloc.peer_channel(now, a), Some(0x4000));
        // The permission dies first (300 s), which stops channel traffic too.
        let later = now + PERMISSION_LIFETIME;
        assert_eq!(alloc.channel_peer(later, 0x4000), None);
        alloc.expire(now + CHANNEL_LIFETIME);
        assert_eq!(alloc.peer_channel(now, a), None);
        alloc.bind_channel(now, 0x4001, a).unwrap();
    }
}
