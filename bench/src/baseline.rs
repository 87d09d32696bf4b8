//! The kernel's own limit: one thread sending small UDP datagrams with `sendmmsg(2)` in batches
//! of 32 to many loopback sockets (which never read, so the kernel drops at their queues), for a
//! bounded time. Its packets per CPU-second are what any user-space forwarder on this machine
//! is compared against.

use std::io::{self, IoSlice};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;

/// Datagrams per `sendmmsg` call (where the per-packet cost bottoms out, as in the SFU).
const BATCH: usize = 32;
/// Most datagrams one baseline run sends.
const MAX_PACKETS: u64 = 200_000_000;

/// What the sender measured.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// Datagram payload bytes.
    pub payload: usize,
    /// Destination sockets.
    pub destinations: usize,
    /// Datagrams the kernel accepted.
    pub packets: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// CPU seconds of the sending thread.
    pub cpu_seconds: f64,
    /// Datagrams per wall second.
    pub pps: f64,
    /// Datagrams per CPU second: what one core sends.
    pub pps_per_core: f64,
}

/// Send for `duration` (bounded) from the calling thread. Blocking: call it from a plain
/// thread, not an async task.
pub fn sendmmsg_baseline(
    duration: Duration,
    destinations: usize,
    payload: usize,
) -> io::Result<BaselineReport> {
    let duration = duration.min(Duration::from_secs(60));
    let destinations = destinations.clamp(1, 4096);
    let sinks: Vec<UdpSocket> = (0..destinations)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()?;
    let addrs: Vec<SocketAddr> = sinks
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<io::Result<_>>()?;
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    let data = vec![0x80u8; payload.clamp(12, 1400)];
    let storage: Vec<Option<SockaddrStorage>> = addrs
        .iter()
        .map(|a| Some(SockaddrStorage::from(*a)))
        .collect();
    let cpu0 = thread_cpu()?;
    // The harness owns a clock: this bounds a real loop.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let slices: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&data)]).collect();
    while start.elapsed() < duration && sent < MAX_PACKETS {
        for _ in 0..64 {
            let batch: Vec<Option<SockaddrStorage>> = (0..BATCH)
                .map(|i| storage[(next + i) % storage.len()])
                .collect();
            next = (next + BATCH) % storage.len();
            match sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &slices,
                &batch,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(results) => sent += results.count() as u64,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = (thread_cpu()? - cpu0).max(1e-9);
    drop(sinks);
    Ok(BaselineReport {
        payload: data.len(),
        destinations,
        packets: sent,
        seconds,
        cpu_seconds,
        pps: sent as f64 / seconds.max(1e-9),
        pps_per_core: sent as f64 / cpu_seconds,
    })
}

fn thread_cpu() -> io::Result<f64> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_err(io::Error::from)?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_for_a_bounded_time() {
        let r = sendmmsg_baseline(Duration::from_millis(200), 8, 100).unwrap();
        assert!(r.packets > 0);
        assert!(r.seconds < 5.0);
        assert!(r.pps_per_core > 0.0);
    }
}
