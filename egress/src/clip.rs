//! Clips: a `[start, end)` range (or the last N seconds) of a recording, cut into a new
//! Ogg/Opus file without re-encoding.
//!
//! Opus packets are copied whole; the boundaries are made exact by the container instead:
//! the clip starts [`PREROLL`] before `start` so the decoder has converged by then (RFC 7845
//! §4.6 recommends 80 ms), its pre-skip discards that pre-roll, and the final page's granule
//! position trims the last packet at `end` (RFC 7845 §4.5). Players that honour both (libopus'
//! opusfile, browsers, FFmpeg) start and stop at the requested sample; one that honours
//! neither is off by at most a packet (20 ms) plus the pre-roll at the start.

use std::time::Duration;

use crate::ogg_opus::{OggOpusWriter, OpusHead, OpusStream, ReadError};
use crate::packet::SAMPLE_RATE;

/// Audio decoded before a clip's start and discarded (pre-skip): 80 ms
/// (<https://www.rfc-editor.org/rfc/rfc7845#section-4.6>).
pub const PREROLL: u64 = 3_840;

/// Which part of a recording to cut, in playback time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipRange {
    /// From `start` (inclusive) to `end` (exclusive); an `end` past the recording's end is cut
    /// at the end.
    Between {
        /// Start of the clip.
        start: Duration,
        /// End of the clip.
        end: Duration,
    },
    /// The last stretch of this length (all of it when the recording is shorter).
    Last(Duration),
}

/// Why a clip could not be cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// The recording is not a readable Ogg/Opus stream.
    #[error("recording unreadable: {0}")]
    Read(#[from] ReadError),
    /// The range starts at or past the recording's end.
    #[error("clip starts at {start:?}, past the recording's end at {length:?}")]
    PastEnd {
        /// Requested start.
        start: Duration,
        /// Recording length.
        length: Duration,
    },
    /// The range is empty (`end` not after `start`) or the recording holds no audio.
    #[error("clip range is empty")]
    Empty,
}

/// A clip cut from a recording.
#[derive(Debug, Clone)]
pub struct Clip {
    /// The clip as an Ogg/Opus file.
    pub bytes: Vec<u8>,
    /// Where it starts in the recording.
    pub start: Duration,
    /// Where it ends in the recording (the requested end, or the recording's end).
    pub end: Duration,
}

fn to_samples(d: Duration) -> u64 {
    (d.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64
}

fn to_duration(samples: u64) -> Duration {
    Duration::from_nanos(
        u64::try_from(u128::from(samples) * 1_000_000_000 / u128::from(SAMPLE_RATE))
            .unwrap_or(u64::MAX),
    )
}

/// Cuts `range` out of `recording` (a whole Ogg/Opus file, or what was written of one so far:
/// a live recording's file works, up to its last complete page). `serial` is the new stream's
/// serial number.
pub fn cut(recording: &[u8], range: ClipRange, serial: u32) -> Result<Clip, ClipError> {
    let stream = OpusStream::parse(recording)?;
    let pre_skip = u64::from(stream.head.pre_skip);
    let length = stream.playback_samples();
    let (start, end) = match range {
        ClipRange::Between { start, end } => (to_samples(start), to_samples(end).min(length)),
        ClipRange::Last(n) => (length.saturating_sub(to_samples(n)), length),
    };
    if start >= length {
        return Err(if length == 0 {
            ClipError::Empty
        } else {
            ClipError::PastEnd {
                start: to_duration(start),
                length: to_duration(length),
            }
        });
    }
    if end <= start {
        return Err(ClipError::Empty);
    }
    // Granule positions of the cut.
    let (from, to) = (start + pre_skip, end + pre_skip);
    let decode_from = from.saturating_sub(PREROLL).max(stream.start());
    let packets = &stream.packets;
    let first = packets
        .iter()
        .position(|p| p.start + u64::from(p.samples) > decode_from)
        .ok_or(ClipError::Empty)?;
    let last = packets
        .iter()
        .rposition(|p| p.start < to)
        .ok_or(ClipError::Empty)?;
    if last < first {
        return Err(ClipError::Empty);
    }
    let origin = packets[first].start;
    let head = OpusHead {
        channels: stream.head.channels,
        // At most PREROLL plus one packet (120 ms): well within u16.
        // (A damaged file whose first packet starts after `from` starts the clip there.)
        pre_skip: u16::try_from(from.saturating_sub(origin)).unwrap_or(u16::MAX),
    };
    let mut comments: Vec<String> = stream
        .comments
        .iter()
        .filter(|c| !c.starts_with("STOA_CLIP_"))
        .cloned()
        .collect();
    comments.push(format!(
        "STOA_CLIP_START_MS={}",
        to_duration(start).as_millis()
    ));
    comments.push(format!("STOA_CLIP_END_MS={}", to_duration(end).as_millis()));
    let mut bytes = Vec::new();
    let mut writer = OggOpusWriter::new(serial, head, &comments, &mut bytes);
    for p in &packets[first..last] {
        writer.push(&p.data, p.samples, &mut bytes);
    }
    let tail = &packets[last];
    writer.push_last(&tail.data, tail.samples, &mut bytes);
    writer.finish(Some(to.saturating_sub(origin)), &mut bytes);
    Ok(Clip {
        bytes,
        start: to_duration(start),
        end: to_duration(end),
    })
}
