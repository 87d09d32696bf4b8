//! Per-subscriber RTP rewriting.
//!
//! Every downstream slot (one sendonly m-line on a subscriber's peer connection) owns a
//! [`Rewriter`]. It maps the publisher's sequence numbers and timestamps into the slot's own
//! space, so the subscriber sees one continuous stream even when the source stops and resumes
//! (mute, forced mute), restarts with a new SSRC (rejoin) or is replaced by another track
//! (switching speakers into the slot). Within one source, gaps are preserved: a lost packet stays
//! a gap for the subscriber, whose jitter buffer and loss statistics then tell the truth.

use std::time::{Duration, Instant};

/// Opus RTP clock rate (RFC 7587 §4.1: always 48 kHz).
pub const OPUS_CLOCK_RATE: u64 = 48_000;

/// The smallest timestamp advance across a discontinuity: one 20 ms Opus frame.
const MIN_TS_STEP: u32 = 960;

/// How far behind the newest forwarded packet a reordered packet may still be forwarded.
/// Older ones belong to before a discontinuity or are hopelessly late.
const REORDER_WINDOW: u64 = 256;

/// Where a forwarded packet came from: enough to notice that the source changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceKey {
    /// The publisher's SSRC.
    pub ssrc: u32,
    /// An epoch the engine bumps when the source is replaced or resumed after a pause.
    pub epoch: u64,
}

/// The rewritten header fields of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended outgoing sequence number (< 2^16 at the start, so no ROC signalling is needed).
    pub seq_no: u64,
    /// Outgoing RTP timestamp.
    pub timestamp: u32,
}

/// Sequence and timestamp rewriting state for one downstream slot.
#[derive(Debug)]
pub struct Rewriter {
    /// Offset added to the source's extended sequence number (wrapping arithmetic).
    seq_offset: u64,
    /// Offset added to the source's timestamp.
    ts_offset: u32,
    /// The source the offsets belong to.
    source: Option<SourceKey>,
    /// First outgoing sequence number of the current source segment.
    segment_start: u64,
    /// Highest outgoing sequence number so far, its timestamp and when it was sent.
    last: Option<(u64, u32, Instant)>,
    /// Initial values for the first packet, chosen by the engine's seeded generator.
    initial_seq: u64,
    initial_ts: u32,
}

impl Rewriter {
    /// A rewriter whose first packet gets `initial_seq` (must be < 2^15 so that the stream never
    /// needs ROC signalling at start) and `initial_ts`.
    pub fn new(initial_seq: u16, initial_ts: u32) -> Self {
        Rewriter {
            seq_offset: 0,
            ts_offset: 0,
            source: None,
            segment_start: 0,
            last: None,
            initial_seq: u64::from(initial_seq & 0x7fff),
            initial_ts,
        }
    }

    /// Rewrite one packet of `source` with extended sequence number `seq_no` and timestamp `ts`,
    /// arriving at `now`. Returns `None` if the packet must not be forwarded (a duplicate, or a
    /// late packet from before the current segment).
    pub fn rewrite(
        &mut self,
        now: Instant,
        source: SourceKey,
        seq_no: u64,
        ts: u32,
    ) -> Option<Rewritten> {
        if self.source != Some(source) {
            self.start_segment(now, source, seq_no, ts);
        }
        let out_seq = seq_no.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);

        match self.last {
            Some((last_seq, _, _)) if out_seq <= last_seq => {
                // Reordered (or duplicated) within the current segment.
                if out_seq < self.segment_start || last_seq - out_seq > REORDER_WINDOW {
                    return None;
                }
                // A duplicate is indistinguishable here from a late packet; the receiver's
                // SRTP replay protection discards true duplicates, so pass it on.
            }
            _ => self.last = Some((out_seq, out_ts, now)),
        }
        Some(Rewritten {
            seq_no: out_seq,
            timestamp: out_ts,
        })
    }

    /// Forget the current source, so that the next packet (from any source) starts a new
    /// continuous segment. Call when the source is paused by the engine (forced mute) or
    /// replaced.
    pub fn break_segment(&mut self) {
        self.source = None;
    }

    /// The highest outgoing sequence number so far.
    pub fn last_seq(&self) -> Option<u64> {
        self.last.map(|(s, _, _)| s)
    }

    fn start_segment(&mut self, now: Instant, source: SourceKey, seq_no: u64, ts: u32) {
        let (next_seq, next_ts) = match self.last {
            None => (self.initial_seq, self.initial_ts),
            Some((last_seq, last_ts, at)) => {
                let elapsed = now.saturating_duration_since(at);
                (last_seq + 1, last_ts.wrapping_add(ts_step(elapsed)))
            }
        };
        self.seq_offset = next_seq.wrapping_sub(seq_no);
        self.ts_offset = next_ts.wrapping_sub(ts);
        self.segment_start = next_seq;
        self.source = Some(source);
    }
}

/// Timestamp advance for a pause of `elapsed`, at least one frame.
fn ts_step(elapsed: Duration) -> u32 {
    let ticks = elapsed.as_micros() * u128::from(OPUS_CLOCK_RATE) / 1_000_000;
    u32::try_from(ticks).unwrap_or(u32::MAX).max(MIN_TS_STEP)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;

    fn src(ssrc: u32) -> SourceKey {
        SourceKey { ssrc, epoch: 0 }
    }

    #[test]
    fn first_packet_gets_initial_values_and_deltas_are_kept() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(100, 5000);
        let a = r.rewrite(t0, src(1), 70_000, 1_000_000).unwrap();
        assert_eq!(
            a,
            Rewritten {
                seq_no: 100,
                timestamp: 5000
            }
        );
        let b = r
            .rewrite(t0 + Duration::from_millis(20), src(1), 70_001, 1_000_960)
            .unwrap();
        assert_eq!(
            b,
            Rewritten {
                seq_no: 101,
                timestamp: 5960
            }
        );
        // A lost packet stays a gap.
        let c = r
            .rewrite(t0 + Duration::from_millis(60), src(1), 70_003, 1_002_880)
            .unwrap();
        assert_eq!(
            c,
            Rewritten {
                seq_no: 103,
                timestamp: 7880
            }
        );
    }

    #[test]
    fn source_change_continues_without_gap() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(10, 0);
        r.rewrite(t0, src(1), 500, 9_000).unwrap();
        r.rewrite(t0 + Duration::from_millis(20), src(1), 501, 9_960)
            .unwrap();
        // Rejoin: new SSRC, unrelated numbers, 1 s later.
        let x = r
            .rewrite(t0 + Duration::from_millis(1020), src(2), 40_000, 123)
            .unwrap();
        assert_eq!(x.seq_no, 12);
        assert_eq!(x.timestamp, 960 + 48_000);
        let y = r
            .rewrite(t0 + Duration::from_millis(1040), src(2), 40_001, 1083)
            .unwrap();
        assert_eq!(y.seq_no, 13);
        assert_eq!(y.timestamp, 960 + 48_000 + 960);
    }

    #[test]
    fn break_segment_resumes_after_pause() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(0, 0);
        r.rewrite(t0, src(1), 10, 0).unwrap();
        r.break_segment();
        // 50 packets were dropped by the engine while muted; the subscriber sees no gap.
        let x = r
            .rewrite(t0 + Duration::from_secs(1), src(1), 61, 49_920)
            .unwrap();
        assert_eq!(x.seq_no, 1);
        assert_eq!(x.timestamp, 48_000);
    }

    #[test]
    fn reorder_within_segment_passes_late_from_old_segment_dropped() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(0, 0);
        r.rewrite(t0, src(1), 10, 0).unwrap();
        assert_eq!(r.rewrite(t0, src(1), 12, 1920).unwrap().seq_no, 2);
        assert_eq!(r.rewrite(t0, src(1), 11, 960).unwrap().seq_no, 1);
        assert_eq!(r.last_seq(), Some(2));
        r.rewrite(t0, src(2), 1000, 0).unwrap(); // new segment starts at 3
        // A late packet of the old source starts yet another segment rather than going back.
        let late = r.rewrite(t0, src(1), 9, 0).unwrap();
        assert_eq!(late.seq_no, 4);
    }

    #[test]
    fn wraps_16_bit_sources_without_going_backwards() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(65_000 & 0x7fff, u32::MAX - 500);
        let mut prev = None;
        for i in 0..200u64 {
            let out = r.rewrite(t0, src(7), 65_500 + i, (i as u32) * 960).unwrap();
            if let Some(p) = prev {
                assert_eq!(out.seq_no, p + 1);
            }
            prev = Some(out.seq_no);
        }
    }
}
