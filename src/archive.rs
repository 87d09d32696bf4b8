//! The control plane's [`Archive`]: recordings and clips as files under `[recording] dir`,
//! read and cut with `stoa-egress` (clips are Opus packets copied, not re-encoded; their
//! boundaries exact through pre-skip and end trimming).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use stoa_control::model::RoomId;
use stoa_control::replay::{
    Archive, ClipRange, Cut, CutError, Recording, RecordingId, RecordingState, SpeakingSpan,
};
use stoa_egress::clip::{self, ClipError};

/// Recordings and clips under one directory.
#[derive(Debug, Clone)]
pub struct Files {
    dir: PathBuf,
}

impl Files {
    /// The files under `dir` (the recorder's directory).
    pub fn new(dir: PathBuf) -> Files {
        Files { dir }
    }

    /// `file` under the directory, refusing anything that could leave it.
    fn inside(&self, file: &str) -> Result<PathBuf, CutError> {
        let relative = Path::new(file);
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || file.is_empty() {
            return Err(CutError::Io(format!("{file:?} is not a recording file")));
        }
        Ok(self.dir.join(relative))
    }
}

impl Archive for Files {
    fn path(&self, file: &str) -> PathBuf {
        // A name that could leave the directory names nothing.
        self.inside(file)
            .unwrap_or_else(|_| self.dir.join("not-a-recording"))
    }

    fn cut(&self, recording: &str, range: ClipRange, clip_file: &str) -> Result<Cut, CutError> {
        let source = self.inside(recording)?;
        let target = self.inside(clip_file)?;
        let bytes = std::fs::read(&source)
            .map_err(|e| CutError::Io(format!("cannot read the recording: {e}")))?;
        let range = match range {
            ClipRange::Last { ms } => clip::ClipRange::Last(Duration::from_millis(ms)),
            ClipRange::Between { start_ms, end_ms } => clip::ClipRange::Between {
                start: Duration::from_millis(start_ms),
                end: Duration::from_millis(end_ms),
            },
        };
        let mut serial = [0u8; 4];
        let _ = getrandom::fill(&mut serial);
        let clip = clip::cut(&bytes, range, u32::from_le_bytes(serial)).map_err(|e| match e {
            ClipError::PastEnd { start, length } => CutError::PastEnd {
                start_ms: millis(start),
                length_ms: millis(length),
            },
            ClipError::Empty => CutError::Empty,
            e => CutError::Io(e.to_string()),
        })?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CutError::Io(format!("cannot write the clip: {e}")))?;
        }
        std::fs::write(&target, &clip.bytes)
            .map_err(|e| CutError::Io(format!("cannot write the clip: {e}")))?;
        Ok(Cut {
            start_ms: millis(clip.start),
            end_ms: millis(clip.end),
            size: clip.bytes.len() as u64,
        })
    }

    fn duration(&self, file: &str) -> Option<u64> {
        let bytes = std::fs::read(self.inside(file).ok()?).ok()?;
        let stream = stoa_egress::OpusStream::parse(&bytes).ok()?;
        Some(stream.playback_samples() * 1000 / 48_000)
    }

    fn remove(&self, dirs: &[String], files: &[String]) {
        let mut parents = Vec::new();
        for (relative, is_dir) in dirs
            .iter()
            .map(|d| (d, true))
            .chain(files.iter().map(|f| (f, false)))
        {
            let Ok(path) = self.inside(relative) else {
                continue;
            };
            let removed = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(file = %path.display(), error = %e, "cannot delete a recording's file");
            }
            parents.extend(path.parent().map(Path::to_path_buf));
        }
        // `<room>/clips`, then `<room>`, when nothing else is left in them.
        parents.sort();
        parents.dedup();
        for parent in parents {
            for dir in parent.ancestors() {
                if dir == self.dir
                    || !dir.starts_with(&self.dir)
                    || std::fs::remove_dir(dir).is_err()
                {
                    break;
                }
            }
        }
    }

    fn spans(&self, speaking_file: &str, end_ms: u64) -> Vec<SpeakingSpan> {
        let Ok(path) = self.inside(speaking_file) else {
            return vec![];
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return vec![];
        };
        stoa_egress::speaking::spans(&text, end_ms)
            .into_iter()
            .map(|s| SpeakingSpan {
                user: s.participant,
                start_ms: s.start_ms,
                end_ms: s.end_ms,
            })
            .collect()
    }
}

/// Keeps the recorder's reports (a recording started, ended) with their rooms in the control
/// plane's store: what a replay lists after the room ended.
pub fn spawn_reports(
    control: stoa_control::Control,
    mut reports: tokio::sync::mpsc::Receiver<crate::recording::Report>,
) {
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            let (Ok(room), Ok(id)) = (
                RoomId::parse(&report.room),
                RecordingId::parse(&report.egress_id),
            ) else {
                // A room the control plane did not make (an SDK's own room): not its record.
                continue;
            };
            let recording = Recording {
                id,
                room,
                file: report.file.clone(),
                speaking_file: Some(format!("{}/speaking.jsonl", report.dir)),
                started_at: match &report.ended {
                    Some(e) => report.at.saturating_sub(millis(e.duration)),
                    None => report.at,
                },
                ended_at: report.ended.as_ref().map(|_| report.at),
                duration_ms: report.ended.as_ref().map(|e| millis(e.duration)),
                size: report.ended.as_ref().map(|e| e.size),
                state: match &report.ended {
                    None => RecordingState::Recording,
                    Some(e) if e.failed => RecordingState::Failed,
                    Some(_) => RecordingState::Complete,
                },
                instance: control.instance().to_owned(),
                node: stoa_control::replay::http_base(&control.config().public_url),
                timeline: vec![],
            };
            control.record_report(recording).await;
        }
    });
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_stay_inside_the_directory() {
        let files = Files::new(PathBuf::from("/srv/rec"));
        assert_eq!(
            files.path("room/EG_x/room.ogg"),
            PathBuf::from("/srv/rec/room/EG_x/room.ogg")
        );
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            assert!(files.inside(bad).is_err(), "{bad}");
            assert!(files.path(bad).starts_with("/srv/rec"), "{bad}");
        }
    }

    #[test]
    fn removing_a_rooms_files_keeps_everything_else() {
        let dir = std::env::temp_dir().join(format!("stoa-archive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for file in [
            "room/EG_a/room.ogg",
            "room/EG_a/speaking.jsonl",
            "room/EG_b/room.ogg",
            "room/clips/c1.ogg",
            "other/EG_c/room.ogg",
        ] {
            let path = dir.join(file);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"OggS").unwrap();
        }
        let files = Files::new(dir.clone());
        files.remove(
            &["room/EG_a".into(), "../other".into(), "room/EG_gone".into()],
            &["room/clips/c1.ogg".into(), "/etc/hostname".into()],
        );
        assert!(!dir.join("room/EG_a").exists());
        assert!(
            !dir.join("room/clips").exists(),
            "an empty clips directory goes"
        );
        assert!(dir.join("room/EG_b/room.ogg").exists());
        assert!(dir.join("other/EG_c/room.ogg").exists());
        files.remove(&["room/EG_b".into()], &[]);
        assert!(!dir.join("room").exists(), "an empty room directory goes");
        assert!(dir.exists() && dir.join("other").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
