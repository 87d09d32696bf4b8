//! Who spoke when: the speaking and track events of a recording, kept beside it as JSON Lines
//! (one event per line, appended as it happens, so a crash loses at most a torn last line),
//! and read back as spans for a replay's timeline.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened to a participant at a point of the recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Activity {
    /// Started speaking (active speaker).
    Speaking,
    /// Stopped speaking.
    Silent,
    /// Published an audio track.
    Published,
    /// Unpublished it, or left.
    Unpublished,
    /// Muted the track.
    Muted,
    /// Unmuted it.
    Unmuted,
}

/// One line of the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Milliseconds since the recording's start (its playback time).
    pub t_ms: u64,
    /// The participant's identity.
    pub participant: String,
    /// What happened.
    pub activity: Activity,
}

impl Entry {
    /// The entry as one JSON line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // INVARIANT: a struct of a string, an integer and a unit enum always serialises.
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// A stretch during which a participant spoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    /// The participant's identity.
    pub participant: String,
    /// Start, in milliseconds of playback time.
    pub start_ms: u64,
    /// End, in milliseconds of playback time.
    pub end_ms: u64,
}

/// The speaking spans of a sidecar, ordered by start. Lines that do not parse (a torn last
/// line after a crash) are skipped; a span still open at the end closes at `end_ms`, and so does
/// one whose participant unpublished or muted.
pub fn spans(jsonl: &str, end_ms: u64) -> Vec<Span> {
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for entry in jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
    {
        match entry.activity {
            Activity::Speaking => {
                open.entry(entry.participant).or_insert(entry.t_ms);
            }
            Activity::Silent | Activity::Muted | Activity::Unpublished => {
                if let Some(start) = open.remove(&entry.participant) {
                    out.push(Span {
                        participant: entry.participant,
                        start_ms: start,
                        end_ms: entry.t_ms.max(start),
                    });
                }
            }
            Activity::Published | Activity::Unmuted => {}
        }
    }
    for (participant, start) in open {
        out.push(Span {
            participant,
            start_ms: start,
            end_ms: end_ms.max(start),
        });
    }
    out.sort_by(|a, b| (a.start_ms, &a.participant).cmp(&(b.start_ms, &b.participant)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_from_lines_with_a_torn_tail() {
        let e = |t_ms, p: &str, activity| Entry {
            t_ms,
            participant: p.into(),
            activity,
        };
        let mut file = Vec::new();
        for entry in [
            e(100, "alice", Activity::Speaking),
            e(900, "alice", Activity::Silent),
            e(1_000, "bob", Activity::Speaking),
            e(1_200, "alice", Activity::Speaking),
            e(1_500, "bob", Activity::Muted),
        ] {
            file.extend(entry.to_line());
        }
        file.extend(b"{\"t_ms\":16");
        let text = String::from_utf8(file).unwrap();
        let got = spans(&text, 3_000);
        let s = |p: &str, start_ms, end_ms| Span {
            participant: p.into(),
            start_ms,
            end_ms,
        };
        assert_eq!(
            got,
            vec![
                s("alice", 100, 900),
                s("bob", 1_000, 1_500),
                s("alice", 1_200, 3_000)
            ]
        );
    }
}
