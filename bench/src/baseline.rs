//! The kernel's own limit, three ways, each for a bounded time:
//!
//! - [`sendmmsg_baseline`]: one thread sending small UDP datagrams with `sendmmsg(2)` in batches
//!   of 32, as fast as it can, to many loopback sockets that never read (the kernel drops at
//!   their queues): the cheapest a send can be.
//! - [`fanout_baseline`]: an SFU's kernel work without the SFU: every 20 ms one datagram to
//!   each of N loopback sockets (one speaker's packet to N listeners), in batches of 32, while
//!   another thread (the listeners) waits in `epoll` and reads them. On loopback the sender's
//!   system call also delivers each datagram and wakes the reader, as it does for the server
//!   under test, so this is the floor a forwarder is measured against here.
//! - [`wakeup_baseline`]: the other end of that: a forwarder woken by every datagram (a
//!   relayed stream, a speaker's packets), with nothing to batch. One thread sends datagrams at
//!   a steady rate to a forwarding thread, which sleeps in a blocking `recv(2)`, sends each
//!   datagram on to a sink and sleeps again: two system calls and a wake-up per datagram, the
//!   least any forwarder that forwards each packet as it arrives can pay.
//!
//! Their packets per CPU-second of the sending thread are what a user-space forwarder on this
//! machine is compared against.

use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
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

impl BaselineReport {
    fn new(
        payload: usize,
        destinations: usize,
        packets: u64,
        seconds: f64,
        cpu_seconds: f64,
    ) -> BaselineReport {
        BaselineReport {
            payload,
            destinations,
            packets,
            seconds,
            cpu_seconds,
            pps: packets as f64 / seconds.max(1e-9),
            pps_per_core: packets as f64 / cpu_seconds.max(1e-9),
        }
    }
}

/// Send for `duration` (bounded) from the calling thread. Blocking: call it from a plain
/// thread, not an async task.
pub fn sendmmsg_baseline(
    duration: Duration,
    destinations: usize,
    payload: usize,
) -> io::Result<BaselineReport> {
    let duration = duration.min(Duration::from_secs(60));
    let (sinks, addrs) = bind_sinks(destinations)?;
    let destinations = sinks.len();
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
    Ok(BaselineReport::new(
        data.len(),
        destinations,
        sent,
        seconds,
        cpu_seconds,
    ))
}

/// Send one datagram to each of `destinations` reading sockets every 20 ms for `duration`
/// (bounded), from the calling thread; `reader` runs first on the reading thread (to pin it).
/// Blocking: call it from a plain thread.
pub fn fanout_baseline(
    duration: Duration,
    destinations: usize,
    payload: usize,
    reader: impl FnOnce() + Send + 'static,
) -> io::Result<BaselineReport> {
    let duration = duration.min(Duration::from_secs(60));
    let (sinks, addrs) = bind_sinks(destinations)?;
    let destinations = sinks.len();
    let addrs: Vec<SockaddrStorage> = addrs.into_iter().map(SockaddrStorage::from).collect();
    let epoll = Epoll::new(EpollCreateFlags::empty()).map_err(io::Error::from)?;
    for (i, sink) in sinks.iter().enumerate() {
        sink.set_nonblocking(true)?;
        epoll
            .add(sink, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .map_err(io::Error::from)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reading = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("baseline-reader".into())
            .spawn(move || -> u64 {
                reader();
                let mut events = vec![EpollEvent::empty(); 256];
                let mut buf = [0u8; 2048];
                let mut read = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = epoll.wait(&mut events, 100u16) else {
                        continue;
                    };
                    for e in &events[..n] {
                        let Some(sink) = usize::try_from(e.data()).ok().and_then(|i| sinks.get(i))
                        else {
                            continue;
                        };
                        while sink.recv(&mut buf).is_ok() {
                            read += 1;
                        }
                    }
                }
                read
            })?
    };
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_nonblocking(true)?;
    let data = vec![0x80u8; payload.clamp(12, 1400)];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let slices: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&data)]).collect();
    let cpu0 = thread_cpu()?;
    // The harness owns a clock: this bounds a real, paced loop.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = start;
    let interval = Duration::from_millis(20);
    let mut result = Ok(());
    #[allow(clippy::disallowed_methods)]
    while start.elapsed() < duration && result.is_ok() {
        for chunk in addrs.chunks(BATCH) {
            let batch: Vec<Option<SockaddrStorage>> = chunk.iter().copied().map(Some).collect();
            match sendmmsg(
                socket.as_raw_fd(),
                &mut headers,
                &slices[..chunk.len()],
                &batch,
                [],
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(results) => sent += results.count() as u64,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => result = Err(io::Error::from(e)),
            }
        }
        tick += interval;
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = (thread_cpu()? - cpu0).max(1e-9);
    stop.store(true, Ordering::Relaxed);
    let read = reading
        .join()
        .map_err(|_| io::Error::other("the reading thread panicked"))?;
    result?;
    if read == 0 && sent > 0 {
        return Err(io::Error::other("the reading thread read nothing"));
    }
    Ok(BaselineReport::new(
        data.len(),
        destinations,
        sent,
        seconds,
        cpu_seconds,
    ))
}

/// Where a thread of [`wakeup_baseline`] runs: `setup` runs first on the thread (entering a
/// network namespace, pinning it to CPUs), then it binds an ephemeral port on `ip`.
pub struct Place {
    /// Run on the thread before it binds.
    pub setup: Box<dyn FnOnce() -> io::Result<()> + Send>,
    /// The address the thread binds.
    pub ip: IpAddr,
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Place")
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// What [`wakeup_baseline`] measured.
#[derive(Debug, Clone, Serialize)]
pub struct WakeupBaseline {
    /// Datagrams sent per second.
    pub rate: f64,
    /// Datagrams the forwarder forwarded.
    pub packets: u64,
    /// The forwarding thread's CPU time per datagram, from its first datagram to its last.
    pub ns_per_packet: f64,
}

/// Longest wait of the forwarder and the sink for their next datagram before they look
/// whether the run is over.
const WAKEUP_POLL: Duration = Duration::from_millis(200);

/// Send `rate` datagrams of `size` bytes a second for `window` from `sender` to a forwarder at
/// `forwarder`, which sends each on to a sink on `sink_ip` (on the calling thread's network
/// namespace), and measure the forwarder's CPU per datagram (module docs).
pub fn wakeup_baseline(
    sender: Place,
    forwarder: Place,
    sink_ip: IpAddr,
    rate: f64,
    size: usize,
    window: Duration,
) -> io::Result<WakeupBaseline> {
    if !(1.0..=100_000.0).contains(&rate) || window > Duration::from_secs(600) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "rate must be 1 to 100,000 datagrams/s and the window at most 600 s",
        ));
    }
    let sink = UdpSocket::bind(SocketAddr::new(sink_ip, 0))?;
    sink.set_read_timeout(Some(WAKEUP_POLL))?;
    let sink_addr = sink.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));
    let sunk = Arc::new(AtomicU64::new(0));
    let sink_thread = {
        let (done, sunk) = (done.clone(), sunk.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                if sink.recv(&mut buf).is_ok() {
                    sunk.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let forwarder_thread = {
        let done = done.clone();
        std::thread::spawn(move || -> io::Result<(u64, f64)> {
            (forwarder.setup)()?;
            let socket = UdpSocket::bind(SocketAddr::new(forwarder.ip, 0))?;
            socket.set_read_timeout(Some(WAKEUP_POLL))?;
            let _ = tx.send(socket.local_addr()?);
            let mut buf = [0u8; 2048];
            let (mut packets, mut first, mut last) = (0u64, 0.0, 0.0);
            while !done.load(Ordering::Relaxed) {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let _ = socket.send_to(&buf[..n], sink_addr);
                packets += 1;
                if packets == 1 {
                    first = thread_cpu()?;
                }
            }
            if packets > 1 {
                last = thread_cpu()?;
            }
            Ok((packets, last - first))
        })
    };
    let to = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| io::Error::other("the forwarder did not start"))?;
    let count = (rate * window.as_secs_f64()).round() as u64;
    let sender_thread = std::thread::spawn(move || -> io::Result<()> {
        (sender.setup)()?;
        let socket = UdpSocket::bind(SocketAddr::new(sender.ip, 0))?;
        let payload = vec![0x5au8; size.clamp(12, 1200)];
        let step = Duration::from_secs_f64(1.0 / rate);
        // The baseline owns its clock: it paces real sends.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        for i in 0..count {
            let at = start + step.mul_f64(i as f64);
            #[allow(clippy::disallowed_methods)]
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            socket.send_to(&payload, to)?;
        }
        Ok(())
    });
    let sent = sender_thread
        .join()
        .map_err(|_| io::Error::other("the sender panicked"))?;
    // The last datagrams' way through.
    std::thread::sleep(WAKEUP_POLL);
    done.store(true, Ordering::Relaxed);
    let forwarded = forwarder_thread
        .join()
        .map_err(|_| io::Error::other("the forwarder panicked"))?;
    let _ = sink_thread.join();
    sent?;
    let (packets, cpu) = forwarded?;
    if packets < 2 || sunk.load(Ordering::Relaxed) == 0 {
        return Err(io::Error::other(format!(
            "the forwarder forwarded {packets} datagrams and the sink took {}",
            sunk.load(Ordering::Relaxed)
        )));
    }
    Ok(WakeupBaseline {
        rate,
        packets,
        ns_per_packet: cpu * 1e9 / (packets - 1) as f64,
    })
}

/// Between 1 and 4,096 receiving sockets on 127.0.0.1, and their addresses.
fn bind_sinks(destinations: usize) -> io::Result<(Vec<UdpSocket>, Vec<SocketAddr>)> {
    let sinks: Vec<UdpSocket> = (0..destinations.clamp(1, 4096))
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<io::Result<_>>()?;
    let addrs = sinks
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<io::Result<_>>()?;
    Ok((sinks, addrs))
}

fn thread_cpu() -> io::Result<f64> {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_err(io::Error::from)?;
    Ok(t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_woken_forwarder_forwards_every_datagram_and_is_timed() {
        let here = || Place {
            setup: Box::new(|| Ok(())),
            ip: IpAddr::from([127, 0, 0, 1]),
        };
        let ip = IpAddr::from([127, 0, 0, 1]);
        let r =
            wakeup_baseline(here(), here(), ip, 200.0, 100, Duration::from_millis(300)).unwrap();
        assert_eq!(r.packets, 60, "every datagram sent is forwarded");
        assert!(r.ns_per_packet > 0.0 && r.ns_per_packet < 1e7, "{r:?}");
        assert!(wakeup_baseline(here(), here(), ip, 0.0, 100, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn sends_for_a_bounded_time() {
        let r = sendmmsg_baseline(Duration::from_millis(200), 8, 100).unwrap();
        assert!(r.packets > 0);
        assert!(r.seconds < 5.0);
        assert!(r.pps_per_core > 0.0);
    }

    #[test]
    fn fans_out_paced_to_reading_sockets() {
        let r = fanout_baseline(Duration::from_millis(300), 50, 100, || {}).unwrap();
        // 50 destinations every 20 ms: about 15 rounds in 300 ms, not a tight loop.
        assert!(r.packets >= 50 * 5 && r.packets <= 50 * 20, "{r:?}");
        assert!(r.seconds < 5.0);
        assert!(r.pps_per_core > 0.0);
    }
}
