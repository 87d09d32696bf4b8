//! What one listener measured: when audio first arrived, loss from RTP sequence numbers,
//! RFC 3550 interarrival jitter and one-way latency from the send stamps.
//!
//! Records are shared with the scenario runner, which reads them in windows (for the capacity
//! ramp and the progress line) and in total (for the report).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::audio::Stamp;
use crate::clock::Clock;

/// Packets and loss of one received RTP stream (one SSRC: one forwarded track).
#[derive(Debug, Clone, Copy)]
struct StreamSeq {
    first: u64,
    highest: u64,
    received: u64,
    /// `highest` and `received` when the current window began.
    window_highest: u64,
    window_received: u64,
}

/// Measurements of one listener since it began joining.
#[derive(Debug)]
pub struct Reception {
    clock: Clock,
    /// When the client began connecting its WebSocket.
    began: Instant,
    /// From `began` to the first RTP packet received.
    first_audio: Option<Duration>,
    streams: HashMap<u32, StreamSeq>,
    packets: u64,
    bytes: u64,
    unstamped: u64,
    /// Latency samples of the current window, microseconds.
    window_latency_us: Vec<u32>,
    /// Latency samples of the whole run, microseconds.
    latency_us: Vec<u32>,
    /// RFC 3550 §6.4.1 jitter estimate, in microseconds.
    jitter_us: f64,
    last_transit_ns: Option<i128>,
    /// Longest silence between consecutive packets after the first, e.g. across speaker changes.
    longest_gap: Duration,
    last_arrival: Option<Instant>,
}

/// One window of one listener (or the sum of many), as read by [`Reception::take_window`].
#[derive(Debug, Default, Clone)]
pub struct Window {
    /// Packets the sequence numbers say should have arrived.
    pub expected: u64,
    /// Packets that did arrive.
    pub received: u64,
    /// One-way latency samples, microseconds.
    pub latency_us: Vec<u32>,
}

impl Window {
    /// Add another window to this one.
    pub fn merge(&mut self, other: Window) {
        self.expected += other.expected;
        self.received += other.received;
        self.latency_us.extend(other.latency_us);
    }

    /// Fraction of expected packets that did not arrive (0 when nothing was expected).
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.expected.saturating_sub(self.received) as f64 / self.expected as f64
        }
    }
}

/// The totals of one listener, read at the end of a run.
#[derive(Debug, Clone)]
pub struct Totals {
    /// WebSocket connect to first audio packet.
    pub first_audio: Option<Duration>,
    /// Packets expected from the sequence numbers.
    pub expected: u64,
    /// Packets received.
    pub received: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Packets without a send stamp (no latency sample).
    pub unstamped: u64,
    /// Latency samples, microseconds.
    pub latency_us: Vec<u32>,
    /// Final RFC 3550 jitter estimate, microseconds.
    pub jitter_us: f64,
    /// Longest gap between packets.
    pub longest_gap: Duration,
    /// RTP streams (forwarded tracks) heard.
    pub streams: usize,
}

impl Reception {
    /// A record for a listener that begins joining at `began`.
    pub fn new(clock: Clock, began: Instant) -> Reception {
        Reception {
            clock,
            began,
            first_audio: None,
            streams: HashMap::new(),
            packets: 0,
            bytes: 0,
            unstamped: 0,
            window_latency_us: Vec::new(),
            latency_us: Vec::new(),
            jitter_us: 0.0,
            last_transit_ns: None,
            longest_gap: Duration::ZERO,
            last_arrival: None,
        }
    }

    /// Record one received RTP packet: its stream, extended sequence number, arrival time and
    /// (decrypted) payload.
    pub fn record(&mut self, ssrc: u32, seq: u64, arrival: Instant, payload: &[u8]) {
        if self.first_audio.is_none() {
            self.first_audio = Some(arrival.saturating_duration_since(self.began));
        }
        if let Some(last) = self.last_arrival {
            self.longest_gap = self
                .longest_gap
                .max(arrival.saturating_duration_since(last));
        }
        self.last_arrival = Some(arrival);
        self.packets += 1;
        self.bytes += payload.len() as u64;
        let s = self.streams.entry(ssrc).or_insert(StreamSeq {
            first: seq,
            highest: seq,
            received: 0,
            window_highest: seq.saturating_sub(1),
            window_received: 0,
        });
        s.highest = s.highest.max(seq);
        s.received += 1;
        match Stamp::read(payload) {
            Some(stamp) => {
                let arrival_ns = i128::from(self.clock.stamp(arrival));
                let transit = arrival_ns - i128::from(stamp.sent_ns);
                let latency_us = u32::try_from(transit.max(0) / 1_000).unwrap_or(u32::MAX);
                self.window_latency_us.push(latency_us);
                self.latency_us.push(latency_us);
                if let Some(prev) = self.last_transit_ns {
                    let d = (transit - prev).abs() as f64 / 1_000.0;
                    self.jitter_us += (d - self.jitter_us) / 16.0;
                }
                self.last_transit_ns = Some(transit);
            }
            None => self.unstamped += 1,
        }
    }

    /// Whether any audio arrived.
    pub fn heard(&self) -> bool {
        self.first_audio.is_some()
    }

    /// Packets received so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The window since the last call, and start a new one.
    pub fn take_window(&mut self) -> Window {
        let mut w = Window {
            latency_us: std::mem::take(&mut self.window_latency_us),
            ..Window::default()
        };
        for s in self.streams.values_mut() {
            w.expected += s.highest - s.window_highest;
            w.received += s.received - s.window_received;
            s.window_highest = s.highest;
            s.window_received = s.received;
        }
        w
    }

    /// Everything measured so far.
    pub fn totals(&self) -> Totals {
        Totals {
            first_audio: self.first_audio,
            expected: self.streams.values().map(|s| s.highest - s.first + 1).sum(),
            received: self.streams.values().map(|s| s.received).sum(),
            bytes: self.bytes,
            unstamped: self.unstamped,
            latency_us: self.latency_us.clone(),
            jitter_us: self.jitter_us,
            longest_gap: self.longest_gap,
            streams: self.streams.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(clock: &Clock, seq: u32, sent: Instant) -> Vec<u8> {
        let frame = [0x78u8, 1, 2, 3];
        Stamp {
            seq,
            sent_ns: clock.stamp(sent),
        }
        .apply(&frame)
    }

    #[test]
    fn loss_latency_and_first_audio_from_sequence_numbers_and_stamps() {
        let clock = Clock::start();
        let t0 = clock.now();
        let mut r = Reception::new(clock, t0);
        let ms = Duration::from_millis;
        // Seq 10..20 without 13 and 17: 2 of 10 lost; each packet 5 ms in flight.
        for seq in 10u64..20 {
            if seq == 13 || seq == 17 {
                continue;
            }
            let sent = t0 + ms(100 + 20 * seq);
            r.record(1, seq, sent + ms(5), &packet(&clock, seq as u32, sent));
        }
        let t = r.totals();
        assert_eq!((t.expected, t.received), (10, 8));
        assert_eq!(t.first_audio, Some(ms(305)));
        assert!(t.latency_us.iter().all(|&l| (4_990..=5_010).contains(&l)));
        assert!(t.jitter_us < 10.0, "constant delay has no jitter");
        let w = r.take_window();
        assert_eq!((w.expected, w.received), (10, 8));
        assert!((w.loss() - 0.2).abs() < 1e-9);
        // The next window starts where this one ended.
        let sent = t0 + ms(1000);
        r.record(1, 21, sent + ms(5), &packet(&clock, 21, sent));
        let w = r.take_window();
        assert_eq!((w.expected, w.received), (2, 1));
    }
}
