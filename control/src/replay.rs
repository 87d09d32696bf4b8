//! Replays and clips: what the control plane knows of a room's recordings after it ends, the
//! clips members cut from them, and the byte ranges a player asks of their files.
//!
//! The recorder (the media side, `stoa serve`'s recorder thread) writes the files and reports
//! each recording's start and end ([`Control::record_report`](crate::Control::record_report));
//! the store keeps the [`Recording`] records with the room, so the room's page lists them after
//! the room ended. Files are read and cut through an [`Archive`] the binary provides (it owns
//! the recording directory and the Ogg/Opus code), so this crate stays free of codecs.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ControlError;
use crate::model::{RoomId, UserId};

/// Most recordings a room keeps (the newest).
pub const MAX_RECORDINGS: usize = 100;
/// Longest clip (ms).
pub const MAX_CLIP_MS: u64 = 10 * 60 * 1000;
/// Length of a clip of "the last N seconds" when the request names no range (ms).
pub const DEFAULT_CLIP_MS: u64 = 30_000;
/// Longest clip title (characters).
pub const MAX_CLIP_TITLE: usize = 120;

/// A recording's id: the recorder's egress id (`EG_` and 12 letters or digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct RecordingId(String);

impl RecordingId {
    /// Checks an id from a URL or the recorder.
    pub fn parse(s: &str) -> Result<RecordingId, ControlError> {
        let ok = s.len() <= 40
            && s.strip_prefix("EG_")
                .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ok {
            Ok(RecordingId(s.to_owned()))
        } else {
            Err(ControlError::not_found("recording", s))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RecordingId {
    type Error = ControlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RecordingId::parse(&s)
    }
}

impl From<RecordingId> for String {
    fn from(id: RecordingId) -> String {
        id.0
    }
}

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A clip's id: 16 characters of `[a-z0-9]`, made by the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
pub struct ClipId(String);

impl ClipId {
    /// A fresh id from 80 random bits.
    pub fn random() -> ClipId {
        let mut bytes = [0u8; 10];
        if getrandom::fill(&mut bytes).is_err() {
            tracing::error!("no OS randomness for a clip id");
        }
        ClipId(crate::model::base32(&bytes))
    }

    /// Checks a clip id from a URL or a store key.
    pub fn parse(s: &str) -> Result<ClipId, ControlError> {
        let ok = s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(ClipId(s.to_owned()))
        } else {
            Err(ControlError::not_found("clip", s))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClipId {
    type Error = ControlError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ClipId::parse(&s)
    }
}

impl From<ClipId> for String {
    fn from(id: ClipId) -> String {
        id.0
    }
}

impl fmt::Display for ClipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a recording is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    /// Being written now (its file grows; it plays up to its last page).
    Recording,
    /// Finished.
    Complete,
    /// Stopped on an error (a full disk): playable up to it.
    Failed,
}

/// One recording of a room, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recording {
    /// Its id.
    pub id: RecordingId,
    /// The room.
    pub room: RoomId,
    /// The mix (Ogg/Opus), relative to the recording directory.
    pub file: String,
    /// Who spoke when (JSON Lines), relative to the recording directory.
    pub speaking_file: Option<String>,
    /// Unix ms it started.
    pub started_at: u64,
    /// Unix ms it ended.
    pub ended_at: Option<u64>,
    /// Its length (ms), once ended.
    pub duration_ms: Option<u64>,
    /// The mix's size (bytes), once ended.
    pub size: Option<u64>,
    /// Where it is.
    pub state: RecordingState,
    /// The instance whose disk holds its files.
    pub instance: String,
    /// The HTTP(S) base URL of the node whose disk holds its files (from that node's
    /// `public_url`), where other nodes send requests for its audio; absent when that node has
    /// no `public_url` (one node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Who spoke when, kept with the record once it ended (the first [`MAX_KEPT_SPANS`]), so
    /// that a node without its files shows the timeline too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<SpeakingSpan>,
}

/// Speaking spans an ended recording's record keeps.
pub const MAX_KEPT_SPANS: usize = 5_000;

/// The HTTP(S) base URL of a node from its `public_url` (`ws://h:p` → `http://h:p`, `wss://` →
/// `https://`); `None` when it has none.
pub fn http_base(public_url: &str) -> Option<String> {
    let url = public_url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("wss://") {
        Some(format!("https://{rest}"))
    } else {
        url.strip_prefix("ws://")
            .map(|rest| format!("http://{rest}"))
    }
}

/// Where a file asked for is: on this node's disk, or on the node (HTTP(S) base URL) that
/// wrote it, which answers the same request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located<T> {
    /// Here.
    Here(T),
    /// On the node at this base URL.
    At(String),
}

/// A clip: a stretch of a recording with its own file, link and card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clip {
    /// Its id.
    pub id: ClipId,
    /// The room.
    pub room: RoomId,
    /// The recording it was cut from.
    pub recording: RecordingId,
    /// Its title (the room's title unless the member named it).
    pub title: String,
    /// Who cut it (`None`: a server).
    pub created_by: Option<UserId>,
    /// Unix ms it was cut.
    pub created_at: u64,
    /// Where it starts in the recording (ms).
    pub start_ms: u64,
    /// Where it ends in the recording (ms).
    pub end_ms: u64,
    /// The clip (Ogg/Opus), relative to the recording directory.
    pub file: String,
    /// Its size (bytes).
    pub size: u64,
    /// Who spoke in it, in the order they first spoke.
    pub speakers: Vec<Speaker>,
}

/// Someone who spoke, by id and by the name the room knew them by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Speaker {
    /// Their user id (LiveKit identity).
    pub user: String,
    /// Their display name when the room knows it, else the user id.
    pub name: String,
}

/// A stretch of a recording during which someone spoke, in playback time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpeakingSpan {
    /// Their user id (LiveKit identity).
    pub user: String,
    /// Start (ms since the recording's start).
    pub start_ms: u64,
    /// End (ms since the recording's start).
    pub end_ms: u64,
}

/// Which part of a recording to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipRange {
    /// The last `ms` of what is recorded so far.
    Last {
        /// Length (ms).
        ms: u64,
    },
    /// From `start_ms` (inclusive) to `end_ms` (exclusive).
    Between {
        /// Start (ms).
        start_ms: u64,
        /// End (ms).
        end_ms: u64,
    },
}

/// A clip the archive cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Where it starts in the recording (ms).
    pub start_ms: u64,
    /// Where it ends (ms).
    pub end_ms: u64,
    /// The clip file's size (bytes).
    pub size: u64,
}

/// Why a clip could not be cut.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CutError {
    /// The range starts at or past the recording's end.
    #[error("the clip starts at {start_ms} ms, past the recording's end at {length_ms} ms")]
    PastEnd {
        /// Requested start (ms).
        start_ms: u64,
        /// Recording length (ms).
        length_ms: u64,
    },
    /// Nothing to cut: an empty range, or a recording with no audio yet.
    #[error("nothing to cut: the range or the recording is empty")]
    Empty,
    /// The recording cannot be read, or the clip cannot be written.
    #[error("{0}")]
    Io(String),
}

impl From<CutError> for ControlError {
    fn from(e: CutError) -> ControlError {
        match e {
            CutError::PastEnd { .. } => ControlError::new(416, "past_end", e.to_string()),
            CutError::Empty => ControlError::bad_request("invalid_range", e.to_string()),
            CutError::Io(m) => ControlError::unavailable(format!("recording: {m}")),
        }
    }
}

/// The files of recordings and clips, as the binary keeps them. Calls may block (file I/O);
/// the control plane makes them off its async workers.
pub trait Archive: Send + Sync + fmt::Debug {
    /// Where `file` (relative to the recording directory) is on this instance's disk.
    fn path(&self, file: &str) -> PathBuf;

    /// Cuts `range` of the recording `recording` (an Ogg/Opus file, finished or still being
    /// written) into a new Ogg/Opus file `clip`, both relative to the recording directory.
    fn cut(&self, recording: &str, range: ClipRange, clip: &str) -> Result<Cut, CutError>;

    /// The playback length (ms) of an Ogg/Opus file, finished or cut short; `None` when it
    /// cannot be read.
    fn duration(&self, file: &str) -> Option<u64>;

    /// Deletes recordings' and clips' files, `dirs` (a recording's directory) with all they
    /// hold and `files` one by one, then their parents that are left empty; what is missing
    /// already is no error. For rooms deleted past their retention.
    fn remove(&self, dirs: &[String], files: &[String]);

    /// Who spoke when, from a recording's speaking file, ordered by start; spans still open
    /// close at `end_ms`. A missing or damaged file gives what it can (possibly nothing).
    fn spans(&self, speaking_file: &str, end_ms: u64) -> Vec<SpeakingSpan>;
}

/// A byte range of a file of `len` bytes that a `Range` header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// No range (or one this server ignores, as RFC 9110 §14.2 allows): the whole file.
    Whole,
    /// Bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// A range that no byte of the file satisfies (416).
    Unsatisfiable,
}

/// Reads a `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`) for a file of `len` bytes
/// (<https://www.rfc-editor.org/rfc/rfc9110#section-14.1.2>). Malformed headers, other units
/// and several ranges at once are ignored (the whole file is sent), as §14.2 allows.
pub fn byte_range(header: Option<&str>, len: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return ByteRange::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // A suffix: the last n bytes.
        return match number(last) {
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if len == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => ByteRange::Whole,
        };
    }
    let Some(start) = number(first) else {
        return ByteRange::Whole;
    };
    let last = if last.is_empty() {
        None
    } else {
        match number(last) {
            Some(l) => Some(l),
            None => return ByteRange::Whole,
        }
    };
    if last.is_some_and(|l| l < start) {
        return ByteRange::Whole;
    }
    if start >= len {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part {
        start,
        end: last.map_or(len - 1, |l| l.min(len - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_as_rfc_9110_reads_them() {
        let part = |start, end| ByteRange::Part { start, end };
        assert_eq!(byte_range(None, 100), ByteRange::Whole);
        assert_eq!(byte_range(Some("bytes=0-9"), 100), part(0, 9));
        assert_eq!(byte_range(Some("bytes=50-"), 100), part(50, 99));
        assert_eq!(byte_range(Some("bytes=90-500"), 100), part(90, 99));
        assert_eq!(byte_range(Some("bytes=-10"), 100), part(90, 99));
        assert_eq!(byte_range(Some("bytes=-500"), 100), part(0, 99));
        assert_eq!(
            byte_range(Some("bytes=100-"), 100),
            ByteRange::Unsatisfiable
        );
        assert_eq!(
            byte_range(Some("bytes=200-300"), 100),
            ByteRange::Unsatisfiable
        );
        assert_eq!(byte_range(Some("bytes=-0"), 100), ByteRange::Unsatisfiable);
        // Ignored: other units, several ranges, nonsense, a backwards range.
        assert_eq!(byte_range(Some("items=0-1"), 100), ByteRange::Whole);
        assert_eq!(byte_range(Some("bytes=0-1,5-6"), 100), ByteRange::Whole);
        assert_eq!(byte_range(Some("bytes=x-y"), 100), ByteRange::Whole);
        assert_eq!(byte_range(Some("bytes=9-3"), 100), ByteRange::Whole);
        assert_eq!(byte_range(Some("bytes=-"), 100), ByteRange::Whole);
    }

    #[test]
    fn ids_cannot_reach_other_files() {
        assert!(RecordingId::parse("EG_abcDEF234567").is_ok());
        for bad in ["", "EG_", "EG_../x", "eg_abc", "EG_a/b", "abc"] {
            assert!(RecordingId::parse(bad).is_err(), "{bad}");
        }
        let id = ClipId::random();
        assert!(ClipId::parse(id.as_str()).is_ok());
        assert!(ClipId::parse("../../etc/passwd").is_err());
    }
}
