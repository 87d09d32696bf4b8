//! UDP for the shards: sockets with large buffers (the listener shared between shards with
//! `SO_REUSEPORT`), batched receives with `recvmmsg(2)` and batched sends with `sendmmsg(2)`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};

/// Most datagrams moved by one `recvmmsg` or `sendmmsg` call.
pub(super) const BATCH: usize = 32;

/// Largest datagram read from a client or peer.
pub(super) const MAX_DATAGRAM: usize = 65_535;

/// Socket buffer size requested for send and receive (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`). A burst that arrives while a shard is busy waits here
/// instead of being dropped.
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a non-blocking UDP socket on `addr`; with [`Sharing::ReusePort`] every shard binds
/// the listener's address and the kernel hashes each client's flow to one of them.
pub(super) fn bind(addr: SocketAddr, sharing: Sharing) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if sharing == Sharing::ReusePort {
        socket.set_reuse_port(true)?;
    }
    // Best effort: a smaller buffer only costs drops under bursts.
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Whether a socket's address is shared between shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sharing {
    /// Only this socket binds the address (relay ports: a clash fails loudly).
    Exclusive,
    /// Every shard binds the same address (the client listener).
    ReusePort,
}

/// Buffers for receiving up to [`BATCH`] datagrams per system call.
pub(super) struct Receiver {
    buffers: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrStorage>,
    received: Vec<(usize, SocketAddr)>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("received", &self.received.len())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub(super) fn new() -> Self {
        Self {
            buffers: (0..BATCH).map(|_| vec![0; MAX_DATAGRAM]).collect(),
            headers: MultiHeaders::preallocate(BATCH, None),
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Reads what `socket` has queued, up to [`BATCH`] datagrams, without blocking. Returns how
    /// many were read (0 when none was waiting); see [`Receiver::datagrams`].
    pub(super) fn receive(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        self.received.clear();
        loop {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
                .buffers
                .iter_mut()
                .map(|buffer| [IoSliceMut::new(buffer)])
                .collect();
            match recvmmsg(
                socket.as_raw_fd(),
                &mut self.headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    for message in results {
                        // A datagram without a usable source address cannot be answered.
                        let from = message.address.as_ref().and_then(socket_addr);
                        self.received.push((message.bytes, from.unwrap_or(UNKNOWN)));
                    }
                    return Ok(self.received.len());
                }
                Err(Errno::EAGAIN) => return Ok(0),
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// The datagrams of the last [`Receiver::receive`]: source and bytes.
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received
            .iter()
            .zip(&self.buffers)
            .filter(|((_, from), _)| *from != UNKNOWN)
            .map(|((len, from), buffer)| (*from, &buffer[..(*len).min(buffer.len())]))
    }
}

/// Placeholder for a datagram whose source could not be read; such datagrams are skipped.
const UNKNOWN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}

/// Datagrams waiting to be sent from one socket, flushed in batches of [`BATCH`].
#[derive(Debug, Default)]
pub(super) struct SendQueue {
    items: Vec<(SocketAddr, Vec<u8>)>,
}

/// What one [`SendQueue::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Flushed {
    /// Datagrams handed to the kernel.
    pub(super) sent: usize,
    /// Datagrams dropped: a full socket buffer or a per-datagram error.
    pub(super) dropped: usize,
}

impl SendQueue {
    pub(super) fn push(&mut self, to: SocketAddr, payload: Vec<u8>) {
        self.items.push((to, payload));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Sends everything queued, [`BATCH`] datagrams per system call. What the socket does not
    /// take (a full buffer) or refuses (an unreachable destination) is dropped, as the
    /// network would drop it; the queue is empty afterwards.
    pub(super) fn flush(&mut self, socket: &impl AsRawFd) -> Flushed {
        let mut flushed = Flushed::default();
        let mut done = 0;
        while done < self.items.len() {
            let chunk = &self.items[done..(done + BATCH).min(self.items.len())];
            let slices: Vec<[IoSlice<'_>; 1]> = chunk
                .iter()
                .map(|(_, payload)| [IoSlice::new(payload)])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = chunk
                .iter()
                .map(|(to, _)| Some(SockaddrStorage::from(*to)))
                .collect();
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
            match sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(results) => match results.count() {
                    0 => {
                        flushed.dropped += 1;
                        done += 1;
                    }
                    sent => {
                        flushed.sent += sent;
                        done += sent;
                    }
                },
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    // The socket buffer is full: what is left is dropped.
                    flushed.dropped += self.items.len() - done;
                    done = self.items.len();
                }
                Err(errno) => {
                    // sendmmsg reports an error only when the chunk's first datagram failed
                    // (e.g. ICMP port unreachable from an earlier send): drop it, go on.
                    tracing::debug!(error = %errno, "TURN send failed");
                    flushed.dropped += 1;
                    done += 1;
                }
            }
        }
        self.items.clear();
        flushed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn batches_round_trip_in_order() {
        let rx = bind("127.0.0.1:0".parse().unwrap(), Sharing::Exclusive).unwrap();
        let tx = bind("127.0.0.1:0".parse().unwrap(), Sharing::Exclusive).unwrap();
        let to = rx.local_addr().unwrap();
        let mut queue = SendQueue::default();
        for i in 0..70u8 {
            queue.push(to, vec![i; 100]);
        }
        assert_eq!(
            queue.flush(&tx),
            Flushed {
                sent: 70,
                dropped: 0
            }
        );
        assert!(queue.is_empty());
        let mut receiver = Receiver::new();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < 70 && std::time::Instant::now() < deadline {
            if receiver.receive(&rx).unwrap() == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            for (from, bytes) in receiver.datagrams() {
                assert_eq!(from, tx.local_addr().unwrap());
                assert_eq!(bytes.len(), 100);
                seen.push(bytes[0]);
            }
        }
        assert_eq!(seen, (0..70).collect::<Vec<u8>>());
    }

    #[test]
    fn the_listener_is_shared_and_relay_ports_are_not() {
        let a = bind("127.0.0.1:0".parse().unwrap(), Sharing::ReusePort).unwrap();
        let addr = a.local_addr().unwrap();
        assert!(bind(addr, Sharing::ReusePort).is_ok());
        assert!(bind(addr, Sharing::Exclusive).is_err());
    }
}
