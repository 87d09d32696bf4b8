//! UDP sockets for the shards: `SO_REUSEPORT` binding and batched sends with `sendmmsg(2)`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};

use crate::proto::Datagrams;

/// Most datagrams handed to one `sendmmsg` call. 32 is where the per-packet kernel cost
/// bottoms out on these machines (see reference/performance-anchors.md §4.2).
pub const SEND_BATCH: usize = 32;

/// Socket buffer size requested for send and receive (the kernel may cap it).
const SOCKET_BUFFER: usize = 4 << 20;

/// Bind a non-blocking UDP socket on `addr`; with `reuse_port`, several shards may bind the
/// same address and the kernel spreads flows between them.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    // Best effort: a small buffer only costs drops under bursts.
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A one-line error for a failed bind of an RTC port.
pub fn bind_error(addr: SocketAddr, err: &io::Error) -> anyhow::Error {
    if err.kind() == io::ErrorKind::AddrInUse {
        anyhow::anyhow!("RTC UDP port {addr} is already in use")
    } else {
        anyhow::anyhow!("cannot bind RTC UDP port {addr}: {err}")
    }
}

/// Datagrams waiting to be sent, flushed in batches. They live back to back in one reusable
/// buffer ([`Datagrams`]), so queueing allocates nothing once the buffer has grown.
#[derive(Debug, Default)]
pub struct SendBatch {
    queue: Datagrams,
}

impl SendBatch {
    /// Queue a copy of one datagram.
    pub fn push(&mut self, source: SocketAddr, destination: SocketAddr, contents: &[u8]) {
        self.queue.push(source, destination, contents);
    }

    /// The queue itself, e.g. for [`Sfu::poll_datagrams`](crate::Sfu::poll_datagrams).
    pub fn queue_mut(&mut self) -> &mut Datagrams {
        &mut self.queue
    }

    /// Number of queued datagrams.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Send as much as the socket takes, `SEND_BATCH` datagrams per system call. Returns how
    /// many were sent; on `WouldBlock` the rest stays queued. Other per-datagram errors
    /// (e.g. an unreachable destination) drop that datagram and continue.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> io::Result<FlushStats> {
        let mut stats = FlushStats::default();
        let mut done = 0;
        let total = self.queue.len();
        let mut slices: Vec<[IoSlice<'_>; 1]> = Vec::with_capacity(SEND_BATCH);
        let mut addrs: Vec<Option<SockaddrStorage>> = Vec::with_capacity(SEND_BATCH);
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(SEND_BATCH, None);
        while done < total {
            let end = (done + SEND_BATCH).min(total);
            slices.clear();
            addrs.clear();
            for d in (done..end).filter_map(|i| self.queue.get(i)) {
                slices.push([IoSlice::new(d.contents)]);
                addrs.push(Some(SockaddrStorage::from(d.destination)));
            }
            match sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(results) => {
                    let n = results.count();
                    stats.syscalls += 1;
                    if n == 0 {
                        break;
                    }
                    stats.sent += n;
                    stats.bytes += slices[..n].iter().map(|[s]| s.len()).sum::<usize>();
                    done += n;
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    stats.would_block = true;
                    break;
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    // The first datagram of the chunk failed (sendmmsg reports an error only
                    // when nothing was sent): drop it and go on.
                    tracing::debug!(error = %e, "sendmmsg failed, dropping one datagram");
                    stats.dropped += 1;
                    done += 1;
                }
            }
        }
        drop(slices);
        self.queue.consume(done);
        Ok(stats)
    }
}

/// What one [`SendBatch::flush`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushStats {
    /// Datagrams handed to the kernel.
    pub sent: usize,
    /// Bytes of the datagrams handed to the kernel.
    pub bytes: usize,
    /// Datagrams dropped after an error.
    pub dropped: usize,
    /// `sendmmsg` calls made.
    pub syscalls: usize,
    /// The socket buffer was full; the rest is still queued.
    pub would_block: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sends_all_datagrams_in_few_syscalls() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let to = rx.local_addr().unwrap();
        let from = tx.local_addr().unwrap();
        let mut batch = SendBatch::default();
        for i in 0..70u8 {
            batch.push(from, to, &[i; 100]);
        }
        let stats = batch.flush(&tx).unwrap();
        assert_eq!(stats.sent, 70);
        assert_eq!(stats.bytes, 7000);
        assert_eq!(stats.syscalls, 3);
        assert!(batch.is_empty());
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 200];
        for i in 0..70u8 {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(n, 100);
            assert_eq!(buf[0], i);
        }
    }

    #[test]
    fn reuse_port_lets_shards_share_a_port() {
        let a = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind(addr, true).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
        // Without SO_REUSEPORT the port is taken.
        assert!(bind(addr, false).is_err());
    }
}
