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
    /// Last arrival on this stream.
    last_arrival: Instant,
    /// RTP timestamp and send time (ns) of the last stamped packet: maps later timestamps to
    /// send times for packets read from their header only.
    calibration: Option<(u32, u64)>,
    /// Header-only packets since the last stamped one.
    since_calibration: u32,
}

/// A header-only packet asks for a decrypted one after this many, or after a silence: the
/// server may move a stream's timestamps when its publisher changes or resumes.
const RECALIBRATE_EVERY: u32 = 50;
/// Silence on a stream after which the calibration is no longer trusted.
const RECALIBRATE_AFTER: Duration = Duration::from_millis(100);
/// RTP clock of Opus.
const RTP_HZ: i64 = 48_000;

/// Extend a 16-bit sequence number next to the highest seen (RFC 3550 appendix A.1 style).
fn extend_seq(highest: u64, seq: u16) -> u64 {
    let base = highest & !0xffff;
    let candidates = [base.wrapping_sub(0x1_0000), base, base + 0x1_0000];
    candidates
        .into_iter()
        .map(|b| b.wrapping_add(u64::from(seq)))
        .filter(|c| *c < (1 << 62))
        .min_by_key(|c| c.abs_diff(highest))
        .unwrap_or(u64::from(seq))
}

/// The RTP header fields a listener reads from every packet, decrypted or not (RFC 3550 §5.1:
/// SRTP leaves the header in the clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpSeen {
    /// Stream.
    pub ssrc: u32,
    /// 16-bit sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Datagram or payload size, bytes.
    pub len: usize,
}

impl RtpSeen {
    /// The header of an RTP (not RTCP) datagram, by RFC 7983 / RFC 5761 demultiplexing:
    /// first byte 128..=191 and a payload type outside RTCP's 64..=95.
    pub fn parse(datagram: &[u8]) -> Option<RtpSeen> {
        if datagram.len() < 12 || !(128..=191).contains(&datagram[0]) {
            return None;
        }
        if (64..=95).contains(&(datagram[1] & 0x7f)) {
            return None;
        }
        Some(RtpSeen {
            seq: u16::from_be_bytes([datagram[2], datagram[3]]),
            timestamp: u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]),
            ssrc: u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]),
            len: datagram.len(),
        })
    }
}

/// The steps of a listener's join before its first audio, in order. Each is marked once, when
/// first reached; the report breaks join→first audio down along them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The product path's `POST /api/rooms/{id}/token` answered (direct tokens skip it).
    Granted,
    /// The WebSocket upgrade completed.
    Upgraded,
    /// The join response arrived.
    Joined,
    /// The first subscriber offer arrived.
    Offered,
    /// Its answer was sent.
    Answered,
    /// The subscriber connection is up (ICE and DTLS).
    Connected,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::Granted,
        Step::Upgraded,
        Step::Joined,
        Step::Offered,
        Step::Answered,
        Step::Connected,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Step::Granted => "granted",
            Step::Upgraded => "upgraded",
            Step::Joined => "joined",
            Step::Offered => "offered",
            Step::Answered => "answered",
            Step::Connected => "connected",
        }
    }
}

/// Measurements of one listener since it began joining.
#[derive(Debug)]
pub struct Reception {
    clock: Clock,
    /// When the client began joining (the token call on the product path, else the WebSocket
    /// connect).
    began: Instant,
    /// From `began` to each step of the join, when reached.
    steps: [Option<Duration>; Step::ALL.len()],
    /// From `began` to the first RTP packet received.
    first_audio: Option<Duration>,
    streams: HashMap<u32, StreamSeq>,
    packets: u64,
    bytes: u64,
    unstamped: u64,
    decrypted: u64,
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
    /// The server whose `/rtc` this client joined (the media URL of its grant on the product
    /// path), once known.
    server: Option<std::net::SocketAddr>,
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
    /// Join start to each step of the join ([`Step::ALL`] order), when reached.
    pub steps: [Option<Duration>; Step::ALL.len()],
    /// Join start to first audio packet.
    pub first_audio: Option<Duration>,
    /// Packets expected from the sequence numbers.
    pub expected: u64,
    /// Packets received.
    pub received: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Packets without a send time (no latency sample).
    pub unstamped: u64,
    /// Packets decrypted and parsed by str0m (the rest were read from the RTP header).
    pub decrypted: u64,
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
            steps: [None; Step::ALL.len()],
            first_audio: None,
            streams: HashMap::new(),
            packets: 0,
            bytes: 0,
            unstamped: 0,
            decrypted: 0,
            window_latency_us: Vec::new(),
            latency_us: Vec::new(),
            jitter_us: 0.0,
            last_transit_ns: None,
            longest_gap: Duration::ZERO,
            last_arrival: None,
            server: None,
        }
    }

    /// The client opens `/rtc` at `server`.
    pub fn set_server(&mut self, server: std::net::SocketAddr) {
        self.server = Some(server);
    }

    /// The server whose `/rtc` the client opened (on the product path, the node its grant
    /// named), once known.
    pub fn server(&self) -> Option<std::net::SocketAddr> {
        self.server
    }

    /// The join reached `step` now; only the first time counts.
    pub fn mark(&mut self, step: Step) {
        let slot = &mut self.steps[step as usize];
        if slot.is_none() {
            *slot = Some(self.clock.now().saturating_duration_since(self.began));
        }
    }

    /// Whether the next RTP packet of stream `ssrc` should be decrypted (to calibrate
    /// header-only latency) rather than read from its header alone.
    pub fn wants_payload(&self, ssrc: u32, arrival: Instant) -> bool {
        match self.streams.get(&ssrc) {
            None => true,
            Some(s) => {
                s.calibration.is_none()
                    || s.since_calibration >= RECALIBRATE_EVERY
                    || arrival.saturating_duration_since(s.last_arrival) > RECALIBRATE_AFTER
            }
        }
    }

    /// Record one received RTP packet: its stream, 16-bit sequence number, RTP timestamp,
    /// arrival time, size, and the decrypted payload when there is one. Without a payload the
    /// send time is estimated from the RTP timestamp and the stream's last stamped packet.
    pub fn record(&mut self, rtp: RtpSeen, arrival: Instant, payload: Option<&[u8]>) {
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
        self.bytes += rtp.len as u64;
        let s = self.streams.entry(rtp.ssrc).or_insert_with(|| {
            let first = u64::from(rtp.seq) + (1 << 32);
            StreamSeq {
                first,
                highest: first,
                received: 0,
                window_highest: first - 1,
                window_received: 0,
                last_arrival: arrival,
                calibration: None,
                since_calibration: 0,
            }
        });
        let seq = extend_seq(s.highest, rtp.seq);
        s.highest = s.highest.max(seq);
        s.first = s.first.min(seq);
        s.received += 1;
        s.last_arrival = arrival;
        let sent_ns = match payload.and_then(Stamp::read) {
            Some(stamp) => {
                s.calibration = Some((rtp.timestamp, stamp.sent_ns));
                s.since_calibration = 0;
                Some(stamp.sent_ns)
            }
            None => {
                s.since_calibration += 1;
                s.calibration.map(|(ts, ns)| {
                    let ticks = i64::from(rtp.timestamp.wrapping_sub(ts) as i32);
                    (ns as i64 + ticks * 1_000_000_000 / RTP_HZ).max(0) as u64
                })
            }
        };
        match sent_ns {
            Some(sent_ns) => {
                let arrival_ns = i128::from(self.clock.stamp(arrival));
                let transit = arrival_ns - i128::from(sent_ns);
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
        if payload.is_some() {
            self.decrypted += 1;
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
            steps: self.steps,
            first_audio: self.first_audio,
            expected: self.streams.values().map(|s| s.highest - s.first + 1).sum(),
            received: self.streams.values().map(|s| s.received).sum(),
            bytes: self.bytes,
            unstamped: self.unstamped,
            decrypted: self.decrypted,
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

    fn seen(seq: u64) -> RtpSeen {
        RtpSeen {
            ssrc: 1,
            seq: seq as u16,
            timestamp: (seq as u32).wrapping_mul(960),
            len: 40,
        }
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
            let p = packet(&clock, seq as u32, sent);
            r.record(seen(seq), sent + ms(5), Some(&p));
        }
        let t = r.totals();
        assert_eq!((t.expected, t.received, t.decrypted), (10, 8, 8));
        assert_eq!(t.first_audio, Some(ms(305)));
        assert!(t.latency_us.iter().all(|&l| (4_990..=5_010).contains(&l)));
        assert!(t.jitter_us < 10.0, "constant delay has no jitter");
        let w = r.take_window();
        assert_eq!((w.expected, w.received), (10, 8));
        assert!((w.loss() - 0.2).abs() < 1e-9);
        // The next window starts where this one ended.
        let sent = t0 + ms(1000);
        let p = packet(&clock, 21, sent);
        r.record(seen(21), sent + ms(5), Some(&p));
        let w = r.take_window();
        assert_eq!((w.expected, w.received), (2, 1));
    }

    #[test]
    fn header_only_packets_get_latency_from_the_timestamp_calibration() {
        let clock = Clock::start();
        let t0 = clock.now();
        let mut r = Reception::new(clock, t0);
        let ms = Duration::from_millis;
        let sent = |seq: u64| t0 + ms(20 * seq);
        assert!(r.wants_payload(1, t0));
        let p = packet(&clock, 0, sent(0));
        r.record(seen(0), sent(0) + ms(3), Some(&p));
        for seq in 1..RECALIBRATE_EVERY as u64 {
            assert!(!r.wants_payload(1, sent(seq)));
            // 960 RTP ticks = 20 ms later: the same 3 ms in flight, plus 1 ms more.
            r.record(seen(seq), sent(seq) + ms(4), None);
        }
        assert!(r.wants_payload(1, sent(60)), "recalibrates every so often");
        let t = r.totals();
        assert_eq!(t.decrypted, 1);
        assert_eq!(t.unstamped, 0);
        assert!(
            t.latency_us[1..]
                .iter()
                .all(|&l| (3_990..=4_010).contains(&l))
        );
        // A silence makes the calibration stale.
        let mut r2 = Reception::new(clock, t0);
        r2.record(seen(0), t0, Some(&packet(&clock, 0, t0)));
        assert!(!r2.wants_payload(1, t0 + ms(20)));
        assert!(r2.wants_payload(1, t0 + ms(500)));
    }

    #[test]
    fn sequence_numbers_extend_across_the_wrap() {
        let clock = Clock::start();
        let t0 = clock.now();
        let mut r = Reception::new(clock, t0);
        for seq in 65_530u64..65_546 {
            r.record(seen(seq), t0, None);
        }
        let t = r.totals();
        assert_eq!((t.expected, t.received), (16, 16));
        assert_eq!(extend_seq(5 << 16 | 10, 9), 5 << 16 | 9);
        assert_eq!(extend_seq(5 << 16 | 65_535, 2), 6 << 16 | 2);
        assert_eq!(extend_seq(6 << 16 | 2, 65_534), 5 << 16 | 65_534);
    }

    #[test]
    fn rtp_headers_parse_and_rtcp_stun_dtls_do_not() {
        let mut rtp = vec![0x80, 111, 0x12, 0x34, 0, 0, 3, 0xc0, 0xde, 0xad, 0xbe, 0xef];
        rtp.extend_from_slice(&[0; 20]);
        let h = RtpSeen::parse(&rtp).unwrap();
        assert_eq!(
            (h.seq, h.timestamp, h.ssrc, h.len),
            (0x1234, 960, 0xdead_beef, 32)
        );
        let mut rtcp = rtp.clone();
        rtcp[1] = 200; // sender report
        assert_eq!(RtpSeen::parse(&rtcp), None);
        assert_eq!(
            RtpSeen::parse(&[0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        ); // STUN
        assert_eq!(RtpSeen::parse(&[22; 40]), None); // DTLS
        assert_eq!(RtpSeen::parse(&[0x80, 111]), None);
    }
}
