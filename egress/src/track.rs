//! Per-track recording without transcoding: the received Opus packets of one track, in
//! sequence order, as an Ogg/Opus file whose time 0 is the egress start.
//!
//! Timeline. Each RTP session (one SSRC) is anchored where the least delayed of its first
//! packets says it was sent (quantised to 2.5 ms), and every later packet at the anchor plus its
//! RTP timestamp difference. So a mute or a silence (no packets, or DTX packets with timestamp
//! jumps) keeps its length, a publisher that rejoins with a new SSRC starts where it rejoined,
//! and what a session sent before the egress started is dropped rather than shifted. Time
//! never goes backwards. A packet whose sequence number or timestamp is far out of place (a
//! sender restart, a frozen or jumping RTP clock, or a forged packet) waits on probation: only
//! a packet right after it starts a new session from it. A talk spurt after at least 100 ms of
//! silence that lands more than 20 ms ahead or 40 ms behind its arrival (the sender's clock
//! drifting from ours) is placed again, the silence absorbing the correction.
//!
//! Gaps. Granule positions must add up to the packets' durations (RFC 7845 §4), so a gap is
//! filled with packets of zero-length frames (RFC 7845 §4.1): 2 bytes per 120 ms, which every
//! decoder turns into a short concealment fading to silence. A granule jump instead would be
//! ignored by decoders that play packets back to back (the audio after a mute would come
//! early) and is invalid Ogg/Opus.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::clock::{Clock, MAX_AHEAD, MAX_BEHIND, SPURT_GAP};
use crate::ogg_opus::{OggOpusWriter, OpusHead, ReadError, Resumption};
use crate::packet::{self, GAP_QUANTUM};
use crate::rtp::{RtpPacket, SeqUnwrapper, Ssrc, TsUnwrapper};

/// Pre-skip of track files: 80 ms, what RFC 7845 §5.1 asks of streams that begin mid-way
/// through a sender's stream (the decoder converges meanwhile; players warn about less).
const PRE_SKIP: u64 = 3_840;
/// How long a packet waits for the ones before it to arrive (reordering window).
pub const REORDER_HOLD: Duration = Duration::from_millis(100);
/// Packets held at most; beyond, the oldest goes out even if an earlier one is missing.
const MAX_HELD: usize = 64;
/// How far (in samples, 1 s) a session's RTP time may stray from its arrival time before it is
/// re-anchored.
pub const MAX_SKEW: i64 = 48_000;
/// Longest a written page stays open in wall time, so that sparse audio (DTX) still reaches the
/// file about every second.
pub const PAGE_MAX_AGE: Duration = Duration::from_secs(1);
/// Sequence numbers further than this from the newest one are out of the session's window: a
/// forged or corrupt packet, or a sender that restarted its numbering. So is a timestamp that
/// places a packet more than [`MAX_SKEW`] from its arrival (a sender that froze or jumped its
/// RTP clock). Only a second packet right after such a one (next sequence number) starts a
/// new session from it, anchored where it arrived.
const MAX_JUMP: i64 = 100;
/// SSRCs remembered as retired: their stragglers are dropped instead of starting a session.
const RETIRED: usize = 4;

/// Counters of one track recording.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackStats {
    /// Opus packets written as received.
    pub packets: u64,
    /// Packets dropped because they came after their place was written.
    pub late: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped because their sequence number was far out of the session's window and
    /// no packet followed them.
    pub out_of_window: u64,
    /// Payloads that are not Opus packets.
    pub malformed: u64,
    /// Samples of gap filled with lost-frame packets.
    pub gap_samples: u64,
    /// RTP sessions started (first packet, new SSRC, restart).
    pub sessions: u64,
    /// Sessions re-anchored because their timestamps strayed from the arrival clock.
    pub reanchors: u64,
    /// Talk spurts placed again after a silence because the sender's clock drifted.
    pub resyncs: u64,
}

#[derive(Debug)]
struct Session {
    ssrc: Ssrc,
    seq: SeqUnwrapper,
    ts: TsUnwrapper,
    next_seq: Option<i64>,
    /// (extended RTP timestamp, timeline position) of the anchor packet; negative for a
    /// session that started before the egress.
    anchor: Option<(i64, i64)>,
    /// A packet out of the window, kept in case the next one follows it.
    probation: Option<Probation>,
    /// Extended RTP timestamp of the last packet written.
    last_ts: Option<i64>,
}

#[derive(Debug)]
struct Probation {
    sequence: u16,
    timestamp: u32,
    payload: Vec<u8>,
    arrived: Instant,
}

impl Session {
    fn new(ssrc: Ssrc) -> Session {
        Session {
            ssrc,
            seq: SeqUnwrapper::new(),
            ts: TsUnwrapper::new(),
            next_seq: None,
            anchor: None,
            probation: None,
            last_ts: None,
        }
    }
}

#[derive(Debug)]
struct Held {
    ts: i64,
    payload: Vec<u8>,
    samples: u32,
    arrived: Instant,
}

/// Records one track's Opus packets into an Ogg/Opus stream. Sans-IO: bytes to append to the
/// file come out through the `out` buffers.
///
/// Call [`handle_packet`](Self::handle_packet) for every received packet,
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) is due,
/// [`drain`](Self::drain) when the track is muted or unpublished (so nothing waits on a
/// packet that will not come), and [`finish`](Self::finish) once.
#[derive(Debug)]
pub struct TrackRecorder {
    clock: Clock,
    writer: OggOpusWriter,
    session: Option<Session>,
    retired: VecDeque<Ssrc>,
    held: BTreeMap<i64, Held>,
    /// Timeline position up to which the stream is written.
    head: u64,
    last_toc: Option<u8>,
    page_opened: Option<Instant>,
    stats: TrackStats,
    finished: bool,
}

impl TrackRecorder {
    /// A recording whose time 0 is `start`; the Ogg headers go to `out`.
    pub fn new(start: Instant, serial: u32, comments: &[String], out: &mut Vec<u8>) -> Self {
        TrackRecorder::with_clock(Clock::new(start), serial, comments, out)
    }

    /// Continues the recording in `bytes` (a file cut by a crash) at `now`, `elapsed` after the
    /// recording's time 0. Cut the file to [`Resumption::valid_len`] before appending what
    /// comes out; the time the recorder was down becomes a gap when the next packet arrives.
    pub fn resume(
        now: Instant,
        elapsed: Duration,
        bytes: &[u8],
    ) -> Result<(TrackRecorder, Resumption), ReadError> {
        TrackRecorder::resume_with(Clock::resumed(now, elapsed), bytes)
    }

    pub(crate) fn resume_with(
        clock: Clock,
        bytes: &[u8],
    ) -> Result<(TrackRecorder, Resumption), ReadError> {
        let (writer, resumption) = OggOpusWriter::resume(bytes)?;
        let recorder = TrackRecorder {
            clock,
            writer,
            session: None,
            retired: VecDeque::new(),
            held: BTreeMap::new(),
            head: resumption
                .granule
                .saturating_sub(u64::from(resumption.pre_skip)),
            last_toc: resumption.last_toc,
            page_opened: None,
            stats: TrackStats::default(),
            finished: false,
        };
        Ok((recorder, resumption))
    }

    pub(crate) fn with_clock(
        clock: Clock,
        serial: u32,
        comments: &[String],
        out: &mut Vec<u8>,
    ) -> Self {
        let head = OpusHead {
            channels: 1,
            pre_skip: PRE_SKIP as u16,
        };
        let mut writer = OggOpusWriter::new(serial, head, comments, out);
        // The pre-skip is decoded and discarded: lost frames, so time 0 is the first sample
        // after it.
        for gap in packet::gap_packets(PRE_SKIP, None) {
            if let Ok(n) = packet::packet_samples(&gap) {
                writer.push(&gap, n, out);
            }
        }
        TrackRecorder {
            clock,
            writer,
            session: None,
            retired: VecDeque::new(),
            held: BTreeMap::new(),
            head: 0,
            last_toc: None,
            page_opened: None,
            stats: TrackStats::default(),
            finished: false,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> TrackStats {
        self.stats
    }

    /// Timeline samples written so far (the file's playable length).
    pub fn written_samples(&self) -> u64 {
        self.head
    }

    /// A received packet of the track. Invalid payloads, duplicates and packets too late are
    /// counted and dropped.
    pub fn handle_packet(&mut self, now: Instant, packet: &RtpPacket<'_>, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let Ok(samples) = packet::packet_samples(packet.payload) else {
            self.stats.malformed += 1;
            return;
        };
        if self.retired.contains(&packet.ssrc) {
            self.stats.late += 1;
            return;
        }
        if self.session.as_ref().is_none_or(|s| s.ssrc != packet.ssrc) {
            self.start_session(packet.ssrc, out);
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let seq = session.seq.peek(u32::from(packet.sequence));
        let arrival = self.clock.samples_at(now) as i64;
        let skewed = session.anchor.is_some_and(|(ts, pos)| {
            let position = pos + (session.ts.peek(packet.timestamp) - ts);
            (position - arrival).abs() > MAX_SKEW
        });
        let jumped = session
            .seq
            .newest()
            .is_some_and(|n| (seq - n).abs() > MAX_JUMP);
        if skewed || jumped {
            match session.probation.take() {
                Some(p) if p.sequence.wrapping_add(1) == packet.sequence => {
                    // Two in a row: the sender really jumped. A new session from the first.
                    let ssrc = session.ssrc;
                    self.start_session(ssrc, out);
                    let first = RtpPacket {
                        ssrc,
                        sequence: p.sequence,
                        timestamp: p.timestamp,
                        marker: false,
                        payload: &p.payload,
                    };
                    self.handle_packet(p.arrived, &first, out);
                    self.handle_packet(now, packet, out);
                }
                _ => {
                    session.probation = Some(Probation {
                        sequence: packet.sequence,
                        timestamp: packet.timestamp,
                        payload: packet.payload.to_vec(),
                        arrived: now,
                    });
                    self.stats.out_of_window += 1;
                }
            }
            return;
        }
        let seq = session.seq.extend(u32::from(packet.sequence));
        let ts = session.ts.extend(packet.timestamp);
        if self.held.contains_key(&seq) {
            self.stats.duplicates += 1;
            return;
        }
        if session.next_seq.is_some_and(|next| seq < next) {
            // Behind what was written: a duplicate or a straggler of the reordering window.
            self.stats.late += 1;
            return;
        }
        self.held.insert(
            seq,
            Held {
                ts,
                payload: packet.payload.to_vec(),
                samples,
                arrived: now,
            },
        );
        self.release(now, out);
    }

    /// Writes out what waited past the reordering window and flushes a page open too long.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.release(now, out);
        if self.page_opened.is_some_and(|t| now >= t + PAGE_MAX_AGE) {
            self.writer.flush(out);
            self.page_opened = None;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let hold = self.held.values().next().map(|h| h.arrived + REORDER_HOLD);
        let page = self.page_opened.map(|t| t + PAGE_MAX_AGE);
        [hold, page].into_iter().flatten().min()
    }

    /// Writes every held packet now (the track was muted or unpublished: nothing more is
    /// coming soon) and flushes the open page.
    pub fn drain(&mut self, out: &mut Vec<u8>) {
        while let Some((seq, held)) = self.held.pop_first() {
            self.write(seq, held, out);
        }
        self.writer.flush(out);
        self.page_opened = None;
    }

    /// Ends the recording at `now`: held packets written, silence up to `now`, the
    /// end-of-stream page. Later calls do nothing.
    pub fn finish(&mut self, now: Instant, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        while let Some((seq, held)) = self.held.pop_first() {
            self.write(seq, held, out);
        }
        let end = self.clock.samples_at(now);
        if end > self.head {
            self.fill(end - self.head, out);
        }
        if !self.writer.has_open_page() {
            // The end-of-stream page carries a packet: 2.5 ms of nothing.
            self.fill(GAP_QUANTUM, out);
        }
        self.writer.finish(None, out);
        self.page_opened = None;
        self.finished = true;
    }

    fn start_session(&mut self, ssrc: Ssrc, out: &mut Vec<u8>) {
        while let Some((seq, held)) = self.held.pop_first() {
            self.write(seq, held, out);
        }
        if let Some(old) = self.session.take() {
            self.retired.push_back(old.ssrc);
            if self.retired.len() > RETIRED {
                self.retired.pop_front();
            }
        }
        self.retired.retain(|s| *s != ssrc);
        self.session = Some(Session::new(ssrc));
        self.stats.sessions += 1;
    }

    /// Writes held packets that are next in sequence, waited long enough, or overflow.
    fn release(&mut self, now: Instant, out: &mut Vec<u8>) {
        while let Some((&seq, first)) = self.held.first_key_value() {
            let next = self.session.as_ref().and_then(|s| s.next_seq);
            let ready = next == Some(seq)
                || now >= first.arrived + REORDER_HOLD
                || self.held.len() > MAX_HELD;
            if !ready {
                break;
            }
            if let Some((seq, held)) = self.held.pop_first() {
                self.write(seq, held, out);
            }
        }
        if self.writer.has_open_page() {
            self.page_opened.get_or_insert(now);
        } else {
            self.page_opened = None;
        }
    }

    fn write(&mut self, seq: i64, held: Held, out: &mut Vec<u8>) {
        let arrival = self.clock.samples_at(held.arrived) as i64;
        let head = self.head as i64;
        // A session's anchor is its least delayed packet among those waiting: where the first
        // packet would have arrived with that delay.
        let clock = self.clock;
        let earliest = self
            .held
            .values()
            .map(|h| clock.samples_at(h.arrived) as i64 - (h.ts - held.ts))
            .fold(arrival, i64::min);
        let Some(session) = self.session.as_mut() else {
            return;
        };
        session.next_seq = Some(seq + 1);
        // Behind what is written, a session starts at the head (nothing lost, a little late);
        // one that started before the egress keeps its place, and what it sent before time 0
        // is dropped below.
        let anchor_at = |at: i64| -> i64 {
            let at = if at < 0 { at } else { at.max(head) };
            at - at.rem_euclid(GAP_QUANTUM as i64)
        };
        let (anchor_ts, anchor_pos) = *session
            .anchor
            .get_or_insert_with(|| (held.ts, anchor_at(earliest)));
        let mut position = anchor_pos + (held.ts - anchor_ts);
        let silence = session.last_ts.map(|previous| held.ts - previous);
        let skew = position - earliest;
        if (position - arrival).abs() > MAX_SKEW || position < head - MAX_SKEW {
            let pos = anchor_at(arrival);
            session.anchor = Some((held.ts, pos));
            position = pos;
            self.stats.reanchors += 1;
        } else if silence.is_some_and(|s| s >= SPURT_GAP)
            && !(-MAX_BEHIND..=MAX_AHEAD).contains(&skew)
        {
            // A talk spurt after a silence, placed off its arrival by more than network jitter
            // explains: the sender's clock drifted from ours. The silence absorbs the
            // correction (a gap a little longer or shorter than the RTP time says).
            let pos = anchor_at(earliest);
            session.anchor = Some((held.ts, pos));
            position = pos;
            self.stats.resyncs += 1;
        }
        session.last_ts = Some(held.ts);
        if position + i64::from(held.samples) <= head {
            // All of it falls where the file is written already (before the egress started).
            self.stats.late += 1;
            return;
        }
        if position > head {
            self.fill((position - head) as u64, out);
        }
        // A packet a little before the head (overlapping timestamps) is written at the head:
        // the file's time never goes backwards.
        self.writer.push(&held.payload, held.samples, out);
        self.head += u64::from(held.samples);
        self.last_toc = held.payload.first().copied();
        self.stats.packets += 1;
    }

    fn fill(&mut self, samples: u64, out: &mut Vec<u8>) {
        for gap in packet::gap_packets(samples, self.last_toc) {
            let Ok(n) = packet::packet_samples(&gap) else {
                continue;
            };
            self.writer.push(&gap, n, out);
            self.head += u64::from(n);
            self.stats.gap_samples += u64::from(n);
        }
    }
}
