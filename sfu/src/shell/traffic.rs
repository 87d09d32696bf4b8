//! What crosses the shards' sockets: datagrams and bytes in and out, and how long a received
//! datagram batch takes to leave again as forwarded packets. Plain atomics, written by the shard
//! threads and read at scrape time; no ids, nothing per peer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of [`Histogram`] buckets, from 50 µs to 1 s; a last `+Inf` bucket is
/// implied.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A latency histogram with the fixed [`LATENCY_BUCKETS`]: lock-free, bounded memory however
/// many observations it takes.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut snapshot = HistogramSnapshot::default();
        for (sum, bucket) in snapshot.buckets.iter_mut().zip(&self.buckets) {
            *sum = bucket.load(Ordering::Relaxed);
        }
        snapshot.sum_seconds =
            Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        snapshot
    }
}

/// A reading of a [`Histogram`]; readings of several add up with [`HistogramSnapshot::add`].
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`LATENCY_BUCKETS`] (not cumulative), then `+Inf`.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Sum of every observation, in seconds.
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `(upper bound, cumulative count)` per bucket, as Prometheus' `le` buckets; the last bound
    /// is `f64::INFINITY`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.buckets.iter().scan(0, |sum, n| {
                *sum += n;
                Some(*sum)
            }))
    }
}

/// One shard's socket traffic.
#[derive(Debug, Default)]
pub struct Traffic {
    datagrams_in: AtomicU64,
    bytes_in: AtomicU64,
    datagrams_out: AtomicU64,
    bytes_out: AtomicU64,
    forwarding: Histogram,
    dropped: [AtomicU64; Queue::ALL.len()],
}

/// A bounded queue of the engine's shell; when one is full, what does not fit is dropped and
/// counted ([`Traffic::dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Commands from the engine's owner to a shard ([`SfuHandle::send`](super::SfuHandle::send)
    /// reports them; the owner gives up on the peers concerned).
    Commands,
    /// Messages between shards: relayed packets, subscriptions and misrouted datagrams.
    Relays,
    /// Events from the shards to the owner. An event about a peer that cannot be delivered
    /// closes that peer; its `Disconnected` follows once there is room, so the client is
    /// told to rejoin instead of waiting. Speaker changes that do not fit are kept and
    /// delivered once there is room (each attempt that found no room is counted here);
    /// data and statistics are lost.
    Events,
    /// Packets of tapped tracks on their way to the recorder
    /// ([`SfuHandle::set_tap`](super::SfuHandle::set_tap)): one that does not fit is missing
    /// from the recording (concealed there like a lost packet); forwarding never waits.
    Tap,
}

impl Queue {
    /// Every queue, in the order of [`TrafficSnapshot::dropped`].
    pub const ALL: [Queue; 4] = [Queue::Commands, Queue::Relays, Queue::Events, Queue::Tap];

    /// The name used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Queue::Commands => "commands",
            Queue::Relays => "relays",
            Queue::Events => "events",
            Queue::Tap => "tap",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl Traffic {
    /// A datagram of `len` bytes was read.
    pub fn received(&self, len: usize) {
        self.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// `datagrams` datagrams of `bytes` bytes in all were handed to the kernel.
    pub fn sent(&self, datagrams: usize, bytes: usize) {
        self.datagrams_out
            .fetch_add(datagrams as u64, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A batch of received datagrams left as forwarded packets `elapsed` after it was read.
    pub fn forwarded(&self, elapsed: Duration) {
        self.forwarding.observe(elapsed);
    }

    /// A message for `queue` did not fit and was dropped.
    pub fn dropped(&self, queue: Queue) {
        self.dropped[queue.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> TrafficSnapshot {
        TrafficSnapshot {
            dropped: std::array::from_fn(|i| self.dropped[i].load(Ordering::Relaxed)),
            datagrams_in: self.datagrams_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            datagrams_out: self.datagrams_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            forwarding: self.forwarding.snapshot(),
        }
    }
}

/// A reading of every shard's [`Traffic`], summed.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct TrafficSnapshot {
    /// UDP datagrams read.
    pub datagrams_in: u64,
    /// Bytes of UDP payload read.
    pub bytes_in: u64,
    /// UDP datagrams sent.
    pub datagrams_out: u64,
    /// Bytes of UDP payload sent.
    pub bytes_out: u64,
    /// Time from reading a datagram batch to handing the packets it produced to the kernel, one
    /// observation per batch that produced any (so the batch's slowest packet).
    pub forwarding: HistogramSnapshot,
    /// Messages dropped because a bounded queue was full, per [`Queue::ALL`].
    pub dropped: [u64; Queue::ALL.len()],
}

impl TrafficSnapshot {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &TrafficSnapshot) {
        self.datagrams_in += other.datagrams_in;
        self.bytes_in += other.bytes_in;
        self.datagrams_out += other.datagrams_out;
        self.bytes_out += other.bytes_out;
        self.forwarding.add(&other.forwarding);
        for (a, b) in self.dropped.iter_mut().zip(&other.dropped) {
            *a += b;
        }
    }

    /// Messages dropped from `queue`.
    pub fn dropped_from(&self, queue: Queue) -> u64 {
        self.dropped[queue.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(10)); // ≤ 50 µs
        h.observe(Duration::from_micros(50)); // ≤ 50 µs (bounds are inclusive)
        h.observe(Duration::from_millis(3)); // ≤ 5 ms
        h.observe(Duration::from_secs(2)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count(), 4);
        let cumulative: Vec<(f64, u64)> = s.cumulative().collect();
        assert_eq!(cumulative.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(cumulative[0], (0.000_05, 2));
        assert_eq!(cumulative[5], (0.002_5, 2));
        assert_eq!(cumulative[6], (0.005, 3));
        assert_eq!(cumulative[13], (1.0, 3));
        assert_eq!(cumulative[14], (f64::INFINITY, 4));
        assert!((s.sum_seconds - 2.003_06).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn traffic_snapshots_add_up() {
        let a = Traffic::default();
        a.received(100);
        a.received(50);
        a.sent(3, 300);
        a.forwarded(Duration::from_micros(200));
        let b = Traffic::default();
        b.sent(1, 10);
        let mut sum = a.snapshot();
        sum.add(&b.snapshot());
        assert_eq!(
            (
                sum.datagrams_in,
                sum.bytes_in,
                sum.datagrams_out,
                sum.bytes_out
            ),
            (2, 150, 4, 310)
        );
        assert_eq!(sum.forwarding.count(), 1);
    }
}
