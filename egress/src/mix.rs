//! The room mix: every speaker's Opus decoded, placed on the egress timeline, summed, limited
//! and re-encoded into one Ogg/Opus stream.
//!
//! The output is driven by `now`, not by packets: one 20 ms frame is mixed for every 20 ms of
//! the egress timeline, [`MixConfig::playout_delay`] behind `now`, whoever speaks or not. So
//! the file's length is the egress's wall-clock length (no gap while everyone is muted, no
//! drift), and a late joiner is heard from where it joined.
//!
//! Each RTP session (track, SSRC) is a source with its own decoder, anchored on the timeline
//! where the least delayed of its first packets says it was sent; later packets follow their
//! RTP timestamps. A track has one source at a time: a new SSRC retires the old one once it has
//! played out. Packets wait in a jitter buffer ordered by position (duplicates collapse,
//! reordering sorts itself) until their frame is mixed; one that comes after its frame was
//! mixed is dropped. A packet placed far from its arrival (a restarted sender, a forged
//! timestamp) is dropped unless the next one follows it, in which case the source starts again
//! from there; a talk spurt after a silence that drifted off its arrival (the sender's clock
//! against ours) is placed again. A short gap between packets (loss) is concealed by the
//! decoder; a long one (mute, DTX) is silence.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::clock::{Clock, MAX_AHEAD, MAX_BEHIND, SPURT_GAP};
use crate::limiter::Limiter;
use crate::ogg_opus::{OggOpusWriter, OpusHead, ReadError, Resumption};
use crate::packet::{self, GAP_QUANTUM, MAX_PACKET_SAMPLES, SAMPLE_RATE};
use crate::rtp::{RtpPacket, Ssrc, TsUnwrapper};

/// Samples per mixed frame: 20 ms.
pub const FRAME: u64 = 960;
/// The most concealment (decoder PLC) run after a source's last packet: 120 ms; beyond that the
/// source is silent.
const MAX_CONCEALMENT: u64 = 5_760;
/// How far (1 s) a source's RTP time may run ahead of its arrival clock before re-anchoring.
const MAX_LEAD: u64 = 48_000;
/// Frames of digital silence encoded before the mix writes lost frames instead (200 ms).
const ENCODED_SILENCE: u32 = 10;
/// Packets a source buffers at most (2 s of 20 ms packets).
const MAX_BUFFERED: usize = 100;
/// Sources mixed at most; packets of further ones are refused (the engine only forwards
/// negotiated SSRCs, so this bounds what a flood of forged ones could cost).
pub const MAX_SOURCES: usize = 64;
/// A source with nothing buffered and no packet for this long is forgotten.
const IDLE: Duration = Duration::from_secs(10);

/// Settings of the room mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixConfig {
    /// How far behind `now` frames are mixed: the jitter buffer's depth. A packet delayed more
    /// than this (relative to its source's first packet) misses its frame.
    pub playout_delay: Duration,
    /// Encoder bitrate in bits per second.
    pub bitrate: i32,
    /// libopus encoder complexity, 0-10 (CPU against quality).
    pub complexity: i32,
}

impl Default for MixConfig {
    fn default() -> Self {
        MixConfig {
            playout_delay: Duration::from_millis(200),
            bitrate: 48_000,
            complexity: 5,
        }
    }
}

/// Counters of the room mix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixStats {
    /// Frames mixed (20 ms each).
    pub frames: u64,
    /// Frames of silence written as lost frames instead of being encoded.
    pub skipped: u64,
    /// Packets decoded into the mix.
    pub packets: u64,
    /// Packets that arrived after their frame was mixed.
    pub late: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped because their timestamps placed them far from their arrival and no
    /// packet followed them.
    pub out_of_window: u64,
    /// Payloads that are not Opus packets.
    pub malformed: u64,
    /// Packets libopus could not decode (concealed instead).
    pub decode_errors: u64,
    /// Sources (RTP sessions) seen.
    pub sources: u64,
    /// Sources held now (a gauge, updated as frames are mixed).
    pub live_sources: u64,
    /// Packets of new sources refused because [`MAX_SOURCES`] were live.
    pub refused: u64,
    /// Sources re-anchored because their timestamps strayed from the arrival clock.
    pub reanchors: u64,
    /// Talk spurts placed again after a silence because the sender's clock drifted.
    pub resyncs: u64,
}

/// What went wrong setting up libopus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    /// libopus refused to create or configure a codec.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// The mix to resume cannot be read or continued.
    #[error("cannot resume the mix: {0}")]
    Resume(#[from] ReadError),
}

#[derive(Debug)]
struct Source {
    track: String,
    decoder: opus::Decoder,
    ts: TsUnwrapper,
    newest_ts: i64,
    /// (extended RTP timestamp, timeline position) of the anchor packet. The position may be
    /// negative: a burst can show the anchor packet was delayed more than the timeline's age.
    anchor: (i64, i64),
    /// Jitter buffer: timeline position → (packet, samples).
    buffer: BTreeMap<u64, (Vec<u8>, u32)>,
    /// Decoded samples from timeline position `pcm_start` on.
    pcm: VecDeque<f32>,
    pcm_start: u64,
    /// Samples since the last decoded packet (concealed or silent).
    since_packet: u64,
    last_packet_at: Instant,
    /// Whether a frame was mixed from it: its anchor no longer moves.
    settled: bool,
    /// RTP timestamp of the last packet that could not be placed.
    suspect: Option<u32>,
    /// Replaced or unpublished: takes no more packets, dropped once played out.
    retired: bool,
}

impl Source {
    fn position(&self, ts: i64) -> i64 {
        self.anchor.1 + (ts - self.anchor.0)
    }

    /// Decodes buffered packets until the samples up to `end` are known.
    fn fill_until(&mut self, end: u64, scratch: &mut [f32], stats: &mut MixStats) {
        loop {
            let pcm_end = self.pcm_start + self.pcm.len() as u64;
            if pcm_end >= end {
                return;
            }
            let Some((&pos, _)) = self.buffer.first_key_value() else {
                // Nothing more from this source yet: silence, mixed as nothing.
                return;
            };
            if pos >= end {
                // A later packet exists, none for the rest of this frame: loss or DTX.
                self.conceal(end - pcm_end, scratch);
                return;
            }
            let Some((pos, (data, samples))) = self.buffer.pop_first() else {
                return;
            };
            if pos + u64::from(samples) <= pcm_end {
                stats.late += 1;
                continue;
            }
            if pos > pcm_end {
                self.conceal(pos - pcm_end, scratch);
            }
            self.settled = true;
            let want = samples as usize;
            let decoded = match self.decoder.decode_float(&data, scratch, false) {
                Ok(n) if n == want => n,
                _ => {
                    stats.decode_errors += 1;
                    self.decoder
                        .decode_float(&[], &mut scratch[..want], false)
                        .unwrap_or(0)
                }
            };
            scratch[decoded.min(want)..want].fill(0.0);
            let skip = pcm_end.saturating_sub(pos) as usize;
            self.pcm.extend(&scratch[skip.min(want)..want]);
            self.since_packet = 0;
            stats.packets += 1;
        }
    }

    /// Appends `samples` of concealment: decoder PLC right after a packet, silence after
    /// [`MAX_CONCEALMENT`].
    fn conceal(&mut self, samples: u64, scratch: &mut [f32]) {
        let mut left = samples;
        while left > 0 {
            let plc = if self.since_packet < MAX_CONCEALMENT {
                (MAX_CONCEALMENT - self.since_packet).min(left) / GAP_QUANTUM * GAP_QUANTUM
            } else {
                0
            };
            if plc > 0 {
                let n = plc as usize;
                let got = self
                    .decoder
                    .decode_float(&[], &mut scratch[..n], false)
                    .unwrap_or(0);
                scratch[got.min(n)..n].fill(0.0);
                self.pcm.extend(&scratch[..n]);
                self.since_packet += plc;
                left -= plc;
            } else {
                self.pcm.extend(std::iter::repeat_n(0.0, left as usize));
                self.since_packet += left;
                left = 0;
            }
        }
    }
}

fn encoder(config: MixConfig) -> Result<opus::Encoder, MixError> {
    let mut encoder =
        opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Audio)?;
    encoder.set_bitrate(opus::Bitrate::Bits(config.bitrate))?;
    encoder.set_complexity(config.complexity)?;
    Ok(encoder)
}

/// The encoder's delay, which is the stream's pre-skip: decoded sample `n + lookahead` is
/// timeline sample `n` (RFC 7845 §4.2).
fn lookahead(config: MixConfig) -> Result<u16, MixError> {
    Ok(u16::try_from(encoder(config)?.get_lookahead()?).unwrap_or(312))
}

/// Mixes a room's audio tracks into one Ogg/Opus stream. Sans-IO: bytes to append to the file
/// come out through the `out` buffers.
///
/// Call [`handle_packet`](Self::handle_packet) for every received audio packet of every track,
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) is due
/// (every 20 ms), [`remove_track`](Self::remove_track) when a track is unpublished, and
/// [`finish`](Self::finish) once.
#[derive(Debug)]
pub struct RoomMixer {
    clock: Clock,
    delay: u64,
    sources: BTreeMap<Ssrc, Source>,
    encoder: opus::Encoder,
    writer: OggOpusWriter,
    limiter: Limiter,
    /// Timeline position of the next frame to mix.
    mixed: u64,
    frame: Vec<f32>,
    scratch: Vec<f32>,
    encoded: Vec<u8>,
    stats: MixStats,
    /// Consecutive frames of digital silence.
    silent_frames: u32,
    finished: bool,
}

impl RoomMixer {
    /// A mix whose time 0 is `start`; the Ogg headers go to `out`.
    pub fn new(
        start: Instant,
        config: MixConfig,
        serial: u32,
        comments: &[String],
        out: &mut Vec<u8>,
    ) -> Result<RoomMixer, MixError> {
        let clock = Clock::new(start);
        let head = OpusHead {
            channels: 1,
            pre_skip: lookahead(config)?,
        };
        let writer = OggOpusWriter::new(serial, head, comments, out);
        RoomMixer::with_clock(clock, config, writer)
    }

    pub(crate) fn with_clock(
        clock: Clock,
        config: MixConfig,
        writer: OggOpusWriter,
    ) -> Result<RoomMixer, MixError> {
        let delay =
            (config.playout_delay.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64;
        Ok(RoomMixer {
            clock,
            delay,
            sources: BTreeMap::new(),
            encoder: encoder(config)?,
            writer,
            limiter: Limiter::new(),
            mixed: 0,
            frame: vec![0.0; FRAME as usize],
            scratch: vec![0.0; MAX_PACKET_SAMPLES as usize],
            encoded: vec![0; 4_000],
            stats: MixStats::default(),
            silent_frames: 0,
            finished: false,
        })
    }

    /// Continues the mix in `bytes` (a file cut by a crash) at `now`, `elapsed` after the
    /// recording's time 0. Cut the file to [`Resumption::valid_len`] before appending `out`:
    /// the time the recorder was down is filled with lost frames (silence), and mixing goes on
    /// with a new encoder (whose lookahead shifts the audio after the resumption by 6.5 ms).
    pub fn resume(
        now: Instant,
        elapsed: Duration,
        config: MixConfig,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(RoomMixer, Resumption), MixError> {
        RoomMixer::resume_with(Clock::resumed(now, elapsed), now, config, bytes, out)
    }

    pub(crate) fn resume_with(
        clock: Clock,
        now: Instant,
        config: MixConfig,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(RoomMixer, Resumption), MixError> {
        let (writer, resumption) = OggOpusWriter::resume(bytes)?;
        let mut mixer = RoomMixer::with_clock(clock, config, writer)?;
        // The writer's granule counts the frames encoded, which is the timeline mixed: the
        // pre-skip is the encoder's delay inside those frames, not extra time.
        mixer.mixed = resumption.granule / FRAME * FRAME;
        mixer.skip_to(now, out);
        Ok((mixer, resumption))
    }

    /// Fills the timeline up to what is due at `now` with lost frames (silence) instead of
    /// mixing it: the time a resumed recorder was down.
    pub(crate) fn skip_to(&mut self, now: Instant, out: &mut Vec<u8>) {
        let due = self.clock.samples_at(now).saturating_sub(self.delay) / FRAME * FRAME;
        if due > self.mixed {
            for gap in packet::gap_packets(due - self.mixed, None) {
                if let Ok(n) = packet::packet_samples(&gap) {
                    self.writer.push(&gap, n, out);
                }
            }
            self.mixed = due;
        }
    }

    /// A new mix file for a resumed egress whose old one was unreadable: headers to `out`,
    /// then lost frames up to `now`.
    pub(crate) fn restart_with(
        clock: Clock,
        now: Instant,
        config: MixConfig,
        serial: u32,
        comments: &[String],
        out: &mut Vec<u8>,
    ) -> Result<RoomMixer, MixError> {
        let head = OpusHead {
            channels: 1,
            pre_skip: lookahead(config)?,
        };
        let writer = OggOpusWriter::new(serial, head, comments, out);
        let mut mixer = RoomMixer::with_clock(clock, config, writer)?;
        mixer.skip_to(now, out);
        Ok(mixer)
    }

    /// Counters so far.
    pub fn stats(&self) -> MixStats {
        self.stats
    }

    /// Timeline samples mixed so far.
    pub fn mixed_samples(&self) -> u64 {
        self.mixed
    }

    /// A received audio packet of `track`.
    pub fn handle_packet(&mut self, now: Instant, track: &str, packet: &RtpPacket<'_>) {
        if self.finished {
            return;
        }
        let Ok(samples) = packet::packet_samples(packet.payload) else {
            self.stats.malformed += 1;
            return;
        };
        let arrival = self.clock.samples_at(now);
        if !self.sources.contains_key(&packet.ssrc) {
            let live = self.sources.values().filter(|s| !s.retired).count();
            if live >= MAX_SOURCES {
                self.stats.refused += 1;
                return;
            }
            let Ok(decoder) = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono) else {
                return;
            };
            // A track has one SSRC at a time: a new one (the sender restarted, the publisher
            // came back on the same track) retires the old, which plays out what it buffered.
            for other in self.sources.values_mut() {
                if other.track == track {
                    other.retired = true;
                }
            }
            self.stats.sources += 1;
            let mut ts = TsUnwrapper::new();
            let first = ts.extend(packet.timestamp);
            self.sources.insert(
                packet.ssrc,
                Source {
                    track: track.to_owned(),
                    decoder,
                    ts,
                    newest_ts: first,
                    anchor: (first, arrival.max(self.mixed) as i64),
                    buffer: BTreeMap::new(),
                    pcm: VecDeque::new(),
                    pcm_start: self.mixed,
                    since_packet: MAX_CONCEALMENT,
                    last_packet_at: now,
                    settled: false,
                    suspect: None,
                    retired: false,
                },
            );
        }
        let Some(source) = self.sources.get_mut(&packet.ssrc) else {
            return;
        };
        if source.retired {
            self.stats.late += 1;
            return;
        }
        source.last_packet_at = now;
        let mut ts = source.ts.peek(packet.timestamp);
        let mut position = source.position(ts);
        let too_late = position < self.mixed as i64;
        let too_early = position > (arrival + MAX_LEAD) as i64;
        if (too_late && ts > source.newest_ts) || too_early {
            // The newest packet of a source cannot be placed where its timestamps say: the
            // sender restarted or its clock drifted, or the packet is forged or corrupt. If the
            // packet before was out of place too and this one follows it (a jump, not noise),
            // the source starts again from this packet's arrival.
            let follows = source.suspect.take().is_some_and(|previous| {
                let step = packet.timestamp.wrapping_sub(previous);
                step > 0 && step <= MAX_PACKET_SAMPLES
            });
            if !follows {
                source.suspect = Some(packet.timestamp);
                self.stats.out_of_window += 1;
                return;
            }
            source.ts = TsUnwrapper::new();
            ts = source.ts.extend(packet.timestamp);
            source.newest_ts = ts;
            source.anchor = (ts, arrival.max(self.mixed) as i64);
            position = source.anchor.1;
            self.stats.reanchors += 1;
        } else if too_late {
            self.stats.late += 1;
            return;
        } else {
            let silence = ts - source.newest_ts;
            let skew = position - arrival as i64;
            if source.settled && silence >= SPURT_GAP && !(-MAX_BEHIND..=MAX_AHEAD).contains(&skew)
            {
                // A talk spurt after a silence, placed off its arrival by more than network
                // jitter explains: the sender's clock drifted from ours. The silence absorbs
                // the correction, inaudibly.
                source.anchor = (ts, arrival.max(self.mixed) as i64);
                position = source.anchor.1;
                source.settled = false;
                self.stats.resyncs += 1;
            }
            source.ts.extend(packet.timestamp);
            source.newest_ts = source.newest_ts.max(ts);
            source.suspect = None;
        }
        if !source.settled && position > arrival.max(self.mixed) as i64 {
            // Less delayed than the packets before it: until the anchor's first packet is
            // mixed, the anchor moves to the least delayed packet, so network delay does not
            // shift the source. Only this anchor's packets move with it.
            let shift = position - arrival.max(self.mixed) as i64;
            let from = source.anchor.1;
            source.anchor.1 -= shift;
            position -= shift;
            let mixed = self.mixed;
            let mut dropped = 0;
            source.buffer = std::mem::take(&mut source.buffer)
                .into_iter()
                .filter_map(|(pos, p)| {
                    if (pos as i64) < from {
                        return Some((pos, p));
                    }
                    // Moved before what is mixed already: too late now.
                    let moved = u64::try_from(pos as i64 - shift)
                        .ok()
                        .filter(|m| *m >= mixed);
                    dropped += u64::from(moved.is_none());
                    moved.map(|m| (m, p))
                })
                .collect();
            self.stats.late += dropped;
        }
        let Ok(position) = u64::try_from(position) else {
            self.stats.late += 1;
            return;
        };
        if source.buffer.contains_key(&position) {
            self.stats.duplicates += 1;
            return;
        }
        source
            .buffer
            .insert(position, (packet.payload.to_vec(), samples));
        while source.buffer.len() > MAX_BUFFERED {
            source.buffer.pop_first();
            self.stats.late += 1;
        }
    }

    /// Forgets the sources of `track` once what they buffered is mixed (the track was
    /// unpublished or its publisher left).
    pub fn remove_track(&mut self, track: &str) {
        for source in self.sources.values_mut() {
            if source.track == track {
                source.retired = true;
            }
        }
    }

    /// Mixes every frame that is due at `now`, appending pages to `out`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        let due = self.clock.samples_at(now).saturating_sub(self.delay);
        while self.mixed + FRAME <= due {
            self.mix_frame(out);
        }
        self.sources.retain(|_, s| {
            let drained = s.buffer.is_empty() && s.pcm.is_empty();
            !(drained && (s.retired || now >= s.last_packet_at + IDLE))
        });
        self.stats.live_sources = self.sources.len() as u64;
    }

    /// When the next frame is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.finished).then(|| self.clock.instant_at(self.mixed + FRAME + self.delay))
    }

    /// Ends the mix at `now` (rounded down to a 20 ms frame): what is buffered is mixed
    /// without waiting for the playout delay, the encoder is flushed, and the end-of-stream
    /// page is written with the exact end (end trimming). Later calls do nothing.
    pub fn finish(&mut self, now: Instant, out: &mut Vec<u8>) -> Result<(), MixError> {
        if self.finished {
            return Ok(());
        }
        let end = self.clock.samples_at(now) / FRAME * FRAME;
        while self.mixed < end {
            self.mix_frame(out);
        }
        // One more frame of silence pushes the encoder's lookahead out.
        self.frame.fill(0.0);
        let n = self.encoder.encode_float(&self.frame, &mut self.encoded)?;
        self.writer.push_last(&self.encoded[..n], FRAME as u32, out);
        self.writer
            .finish(Some(self.mixed + u64::from(self.writer.pre_skip())), out);
        self.finished = true;
        Ok(())
    }

    fn mix_frame(&mut self, out: &mut Vec<u8>) {
        let start = self.mixed;
        let end = start + FRAME;
        self.frame.fill(0.0);
        for source in self.sources.values_mut() {
            if source.pcm.is_empty() && source.pcm_start < start {
                source.since_packet += start - source.pcm_start;
                source.pcm_start = start;
            }
            if source.pcm_start < start {
                // Samples of frames already mixed (not expected): drop them.
                let stale = (start - source.pcm_start).min(source.pcm.len() as u64);
                source.pcm.drain(..stale as usize);
                source.pcm_start = start;
            }
            source.fill_until(end, &mut self.scratch, &mut self.stats);
            if source.pcm_start >= end {
                continue;
            }
            let offset = (source.pcm_start - start) as usize;
            let take = (end - source.pcm_start).min(source.pcm.len() as u64) as usize;
            for (i, s) in source.pcm.drain(..take).enumerate() {
                self.frame[offset + i] += s;
            }
            source.pcm_start += take as u64;
        }
        self.limiter.process(&mut self.frame);
        let silent = self.frame.iter().all(|s| *s == 0.0);
        self.silent_frames = if silent { self.silent_frames + 1 } else { 0 };
        if self.silent_frames > ENCODED_SILENCE {
            // Nobody has sounded for a while: a lost frame (one byte) instead of encoding
            // silence, so an idle recorded room costs next to nothing. The encoder has seen
            // enough silence that the decoder's concealment is silence too.
            for gap in packet::gap_packets(FRAME, None) {
                self.writer.push(&gap, FRAME as u32, out);
            }
            self.stats.skipped += 1;
            self.mixed = end;
            self.stats.frames += 1;
            return;
        }
        match self.encoder.encode_float(&self.frame, &mut self.encoded) {
            Ok(n) => self.writer.push(&self.encoded[..n], FRAME as u32, out),
            Err(_) => {
                // Keep the timeline: a lost frame instead of the one libopus refused.
                for gap in packet::gap_packets(FRAME, None) {
                    self.writer.push(&gap, FRAME as u32, out);
                }
            }
        }
        self.mixed = end;
        self.stats.frames += 1;
    }
}
