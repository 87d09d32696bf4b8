//! Writes an egress's output to files in one directory per egress.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::egress::{Artifact, Egress, EgressEvent, Output};

/// File names longer than this are shortened (with a hash keeping them apart).
const MAX_NAME: usize = 160;

/// The files of one egress under a directory: `room.ogg` (the mix), `participant-<id>.ogg`,
/// `track-<id>.ogg`, `speaking.jsonl`.
///
/// Every write is one or more whole Ogg pages or JSON lines, appended and flushed to the
/// kernel at once, so a crash of the process leaves files playable up to the last write;
/// [`sync`](Self::sync) also asks the disk to keep them (at the end, or periodically).
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    files: BTreeMap<Artifact, File>,
    /// Artifacts written elsewhere than their name in `dir` (an egress request's `filepath`).
    paths: BTreeMap<Artifact, PathBuf>,
}

impl FileSink {
    /// Files under `dir`, created if missing.
    pub fn create(dir: impl Into<PathBuf>) -> io::Result<FileSink> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(FileSink {
            dir,
            files: BTreeMap::new(),
            paths: BTreeMap::new(),
        })
    }

    /// Writes `artifact` to `path` (its parent directories created) instead of its name in
    /// the directory. Refuses a path whose file exists already: an egress never appends to
    /// another's file.
    pub fn place(&mut self, artifact: Artifact, path: PathBuf) -> io::Result<()> {
        if path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists already", path.display()),
            ));
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        self.paths.insert(artifact, path);
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `artifact` is written.
    pub fn path(&self, artifact: &Artifact) -> PathBuf {
        match self.paths.get(artifact) {
            Some(path) => path.clone(),
            None => self.dir.join(file_name(artifact)),
        }
    }

    /// Appends `bytes` to the file of `artifact`, creating it on first use.
    pub fn write(&mut self, artifact: &Artifact, bytes: &[u8]) -> io::Result<()> {
        if !self.files.contains_key(artifact) {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(artifact))?;
            self.files.insert(artifact.clone(), file);
        }
        match self.files.get_mut(artifact) {
            Some(file) => file.write_all(bytes),
            None => Err(io::Error::other("file not open")),
        }
    }

    /// Cuts the file of `artifact` to `len` bytes, creating it if missing.
    pub fn truncate(&mut self, artifact: &Artifact, len: u64) -> io::Result<()> {
        self.write(artifact, &[])?;
        match self.files.get(artifact) {
            Some(file) => file.set_len(len),
            None => Err(io::Error::other("file not open")),
        }
    }

    /// The files already in the directory (an egress's, found after a restart), for
    /// [`Egress::resume`]. Names that are not an egress's are ignored.
    pub fn existing(&self) -> io::Result<BTreeMap<Artifact, Vec<u8>>> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Some(artifact) = entry.file_name().to_str().and_then(artifact_of) else {
                continue;
            };
            if entry.file_type()?.is_file() {
                files.insert(artifact, std::fs::read(entry.path())?);
            }
        }
        Ok(files)
    }

    /// Asks the disk to keep what was written (`fdatasync` on every file).
    pub fn sync(&mut self) -> io::Result<()> {
        for file in self.files.values() {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Drains `egress`'s output into the files and returns its events. A failed write is
    /// reported to the egress (which ends as failed and says so in an event).
    pub fn drive(&mut self, now: Instant, egress: &mut Egress) -> Vec<EgressEvent> {
        let mut events = Vec::new();
        while let Some(output) = egress.poll_output() {
            match output {
                Output::Write { artifact, bytes } => {
                    if let Err(e) = self.write(&artifact, &bytes) {
                        egress.handle_write_error(now, &artifact, &e.to_string());
                    }
                }
                Output::Truncate { artifact, len } => {
                    if let Err(e) = self.truncate(&artifact, len) {
                        egress.handle_write_error(now, &artifact, &e.to_string());
                    }
                }
                Output::Event(event) => {
                    if matches!(event, EgressEvent::Ended(_))
                        && let Err(e) = self.sync()
                    {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "egress sync failed");
                    }
                    events.push(event);
                }
            }
        }
        events
    }
}

/// The file name of `artifact`; identities are encoded so that no name escapes the directory
/// or collides with another.
pub fn file_name(artifact: &Artifact) -> String {
    match artifact {
        Artifact::Mix => "room.ogg".to_owned(),
        Artifact::Participant(id) => format!("participant-{}.ogg", encode(id)),
        Artifact::Track(id) => format!("track-{}.ogg", encode(id)),
        Artifact::Speaking => "speaking.jsonl".to_owned(),
    }
}

/// The artifact whose file is named `name` (the inverse of [`file_name`]; shortened names
/// are not recognised).
pub fn artifact_of(name: &str) -> Option<Artifact> {
    match name {
        "room.ogg" => Some(Artifact::Mix),
        "speaking.jsonl" => Some(Artifact::Speaking),
        _ => {
            let stem = name.strip_suffix(".ogg")?;
            if let Some(id) = stem.strip_prefix("participant-") {
                Some(Artifact::Participant(decode(id)?))
            } else {
                Some(Artifact::Track(decode(stem.strip_prefix("track-")?)?))
            }
        }
    }
}

/// The inverse of [`encode`].
fn decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'~' {
            let hex = [it.next()?, it.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
        } else if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            bytes.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Letters, digits, `_` and `-` as they are; any other byte as `~xx`.
fn encode(id: &str) -> String {
    let mut s = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("~{b:02x}"));
        }
    }
    if s.len() > MAX_NAME {
        // FNV-1a of the whole id keeps shortened names apart.
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        s.truncate(MAX_NAME);
        s.push_str(&format!("~{hash:016x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_stay_in_the_directory_and_apart() {
        assert_eq!(
            file_name(&Artifact::Participant("alice".into())),
            "participant-alice.ogg"
        );
        let evil = file_name(&Artifact::Track("../../etc/passwd".into()));
        assert!(!evil.contains('/') && !evil.contains(".."), "{evil}");
        assert_ne!(encode("a b"), encode("a_b"));
        let long_a = encode(&"é".repeat(200));
        let long_b = encode(&format!("{}x", "é".repeat(200)));
        assert!(long_a.len() < 200 && long_a != long_b);
        for artifact in [
            Artifact::Mix,
            Artifact::Speaking,
            Artifact::Participant("Zoë ~ 1/2".into()),
            Artifact::Track("TR_abc-1".into()),
        ] {
            assert_eq!(artifact_of(&file_name(&artifact)), Some(artifact));
        }
        assert_eq!(artifact_of("notes.txt"), None);
        assert_eq!(artifact_of("participant-~zz.ogg"), None);
    }
}
