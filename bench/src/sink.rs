//! One thread that reads the subscriber sockets of every header-only listener of a run, so
//! that a listener's audio costs the harness one `recvfrom` and a few look-ups instead of a
//! task wake-up, a `select!` and two system calls per packet.
//!
//! A listener hands its socket over once its subscriber connection is up (`Sink::adopt`).
//! The thread waits in a level-triggered `epoll` over all adopted sockets (the server sends one
//! speaker's packet to every listener within a millisecond, so one wake-up reads many), records
//! RTP from its clear header as the listener itself would, and passes everything else (STUN,
//! DTLS, RTCP, and the packets the listener decrypts to calibrate latency) back to the
//! listener's task. The thread stops when the sink is dropped, and after `MAX_LIFE` anyway.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use tokio::sync::mpsc;

use crate::client::{Counters, mark_heard, read_header};
use crate::clock::Clock;
use crate::peer::MAX_DATAGRAM;
use crate::reception::Reception;

/// Longest a sink thread runs, whatever happens.
const MAX_LIFE: Duration = Duration::from_secs(3_700);
/// How often the thread looks for new sockets and for its stop flag when nothing arrives.
const POLL: u16 = 20;
/// How often sockets of listeners that ended are let go.
const SWEEP: Duration = Duration::from_secs(1);

/// A datagram the listener's own task must handle, with its sender.
pub(crate) type Passed = (Vec<u8>, SocketAddr);

/// A listener's registration.
struct Entry {
    socket: Arc<UdpSocket>,
    reception: Arc<Mutex<Reception>>,
    heard: Arc<AtomicBool>,
    back: mpsc::UnboundedSender<Passed>,
}

/// The name of a sink's thread unless told otherwise.
pub const SINK_THREAD: &str = "listener-sink";

/// The reading thread of one run.
#[derive(Debug)]
pub struct Sink {
    adopt: std::sync::mpsc::Sender<(u64, Entry)>,
    stop: Arc<AtomicBool>,
    next: std::sync::atomic::AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entry")
    }
}

impl Sink {
    /// Start the thread, named [`SINK_THREAD`] (it inherits the calling thread's CPU affinity
    /// and priority).
    pub fn start(clock: Clock, counters: Arc<Counters>) -> io::Result<Sink> {
        Sink::start_named(SINK_THREAD, clock, counters)
    }

    /// [`Sink::start`], the thread named `name` (at most 15 bytes show in `/proc`).
    pub fn start_named(name: &str, clock: Clock, counters: Arc<Counters>) -> io::Result<Sink> {
        let epoll = Epoll::new(EpollCreateFlags::empty()).map_err(io::Error::from)?;
        let (adopt, adopted) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&epoll, &adopted, &flag, clock, &counters))?;
        Ok(Sink {
            adopt,
            stop,
            next: std::sync::atomic::AtomicU64::new(0),
            thread: Some(thread),
        })
    }

    /// Read `socket` for a listener from now on: RTP into `reception`, the rest into `back`.
    /// `heard` is the listener's "counted as heard" flag, shared so it is counted once.
    pub(crate) fn adopt(
        &self,
        socket: Arc<UdpSocket>,
        reception: Arc<Mutex<Reception>>,
        heard: Arc<AtomicBool>,
        back: mpsc::UnboundedSender<Passed>,
    ) -> bool {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            socket,
            reception,
            heard,
            back,
        };
        self.adopt.send((token, entry)).is_ok()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    epoll: &Epoll,
    adopted: &std::sync::mpsc::Receiver<(u64, Entry)>,
    stop: &AtomicBool,
    clock: Clock,
    counters: &Counters,
) {
    let mut entries: HashMap<u64, Entry> = HashMap::new();
    let mut events = vec![EpollEvent::empty(); 512];
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let end = clock.now() + MAX_LIFE;
    let mut next_sweep = clock.now() + SWEEP;
    while !stop.load(Ordering::Relaxed) {
        while let Ok((token, entry)) = adopted.try_recv() {
            let event = EpollEvent::new(EpollFlags::EPOLLIN, token);
            if epoll.add(entry.socket.as_ref(), event).is_ok() {
                entries.insert(token, entry);
            }
        }
        let Ok(n) = epoll.wait(&mut events, POLL) else {
            continue;
        };
        let now = clock.now();
        if now > end {
            return;
        }
        for e in &events[..n] {
            let token = e.data();
            let Some(entry) = entries.get(&token) else {
                continue;
            };
            // Level-triggered: one datagram per wake-up; the next wait returns the socket
            // again if more are queued.
            let Ok((len, from)) = entry.socket.recv_from(&mut buf) else {
                continue;
            };
            if !read(entry, &buf[..len], now, counters)
                && entry.back.send((buf[..len].to_vec(), from)).is_err()
            {
                // The listener is gone.
                let _ = epoll.delete(entry.socket.as_ref());
                entries.remove(&token);
            }
        }
        if now < next_sweep {
            continue;
        }
        next_sweep = now + SWEEP;
        // Listeners that ended without a datagram to tell.
        entries.retain(|_, entry| {
            let open = !entry.back.is_closed();
            if !open {
                let _ = epoll.delete(entry.socket.as_ref());
            }
            open
        });
    }
}

/// Record `data` from its clear RTP header when the listener does not need it decrypted;
/// `false` when the listener's task must handle it.
fn read(entry: &Entry, data: &[u8], now: Instant, counters: &Counters) -> bool {
    match read_header(&entry.reception, counters, data, now) {
        Some(heard) => {
            if heard {
                mark_heard(&entry.heard, counters);
            }
            true
        }
        None => false,
    }
}
