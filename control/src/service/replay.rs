//! Replays and clips: the recordings the recorder reports, kept with their room; the clips
//! members cut from them; and who may read which: anyone, signed in or not, a public room's;
//! a private room's those who may see the room (the room view's rule), else 404.

use std::path::PathBuf;
use std::sync::Arc;

use crate::auth::Principal;
use crate::clock::now_ms;
use crate::error::ControlError;
use crate::media::MediaCommand;
use crate::model::{self, RoomDoc, RoomId, RoomState, Scope, UserId};
use crate::replay::{
    Archive, Clip, ClipId, ClipRange, DEFAULT_CLIP_MS, Located, MAX_CLIP_MS, MAX_CLIP_TITLE,
    MAX_KEPT_SPANS, Recording, RecordingId, RecordingState, Speaker, SpeakingSpan, http_base,
};
use crate::view::{self, Viewer};

use super::Control;

/// Clips a room's list shows (the newest).
pub const CLIPS_SHOWN: usize = 100;

/// What a member asks to cut.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewClip {
    /// The recording (absent: the one running now in a live room, else the room's latest).
    pub recording: Option<RecordingId>,
    /// The last this many ms of the recording.
    pub last_ms: Option<u64>,
    /// Start of a range (ms of the recording).
    pub start_ms: Option<u64>,
    /// End of a range (ms of the recording).
    pub end_ms: Option<u64>,
    /// The clip's title (default: the room's).
    pub title: Option<String>,
}

/// A recording with what a replay shows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The record.
    pub recording: Recording,
    /// Its length (ms): as reported at its end, else as far as it got.
    pub duration_ms: u64,
    /// The file's size now (bytes).
    pub size: u64,
    /// Who spoke when, with the names the room knew them by.
    pub timeline: Vec<(SpeakingSpan, String)>,
}

impl Control {
    /// Reads and cuts recordings' files through `archive` from now on (once; later calls are
    /// ignored). Without it, replays list recordings but serve no audio (503).
    pub fn set_archive(&self, archive: Arc<dyn Archive>) {
        let _ = self.inner.archive.set(archive);
    }

    fn archive(&self) -> Result<&Arc<dyn Archive>, ControlError> {
        self.inner
            .archive
            .get()
            .ok_or_else(|| ControlError::unavailable("this server keeps no recordings"))
    }

    /// The recorder's word on a recording: started (`ended_at` none) or ended. Kept with its
    /// room; a start that never arrived is made up from the end.
    pub async fn record_report(&self, mut recording: Recording) {
        // An ended recording keeps its timeline with its record: other nodes lack the sidecar.
        if let (Some(duration_ms), Some(file), Some(archive)) = (
            recording.duration_ms,
            recording.speaking_file.clone(),
            self.inner.archive.get().cloned(),
        ) {
            let spans = tokio::task::spawn_blocking(move || archive.spans(&file, duration_ms))
                .await
                .unwrap_or_default();
            recording.timeline = spans.into_iter().take(MAX_KEPT_SPANS).collect();
        }
        // The start is the first one reported (a recording resumed after a restart keeps it).
        if let Ok(known) = self.inner.store.recordings(&recording.room).await
            && let Some(k) = known.into_iter().find(|r| r.id == recording.id)
        {
            recording.started_at = k.started_at;
        }
        if let Err(e) = self.inner.store.put_recording(&recording).await {
            tracing::warn!(room = %recording.room, recording = %recording.id, error = %e.message, "cannot keep the recording's record");
        }
    }

    /// The `public_url` of the node that records room `id`, when that is another node (the
    /// room's media lives there); `None` when this node records it, or the room is unknown.
    pub async fn recorded_elsewhere(&self, id: &RoomId) -> Option<String> {
        if records_here(&self.inner, id).await {
            return None;
        }
        let doc = self.room_in(id, &Scope::header()).await.ok()?;
        doc.room.media_url
    }

    /// The room, if `viewer` may read its replays (else 404, as its view and card answer: a
    /// private room does not exist to an outsider), with `users` loaded.
    async fn visible(
        &self,
        id: &RoomId,
        viewer: Viewer<'_>,
        users: Vec<UserId>,
    ) -> Result<RoomDoc, ControlError> {
        let doc = self
            .room_in(
                id,
                &Scope::users(viewer.user().cloned().into_iter().chain(users)),
            )
            .await?;
        if !view::may_read(&doc, viewer) {
            return Err(ControlError::not_found("room", id.as_str()));
        }
        Ok(doc)
    }

    /// A room's recordings, oldest first, with their timelines: for whoever may see the room.
    pub async fn replays(
        &self,
        id: &RoomId,
        viewer: Viewer<'_>,
    ) -> Result<Vec<Replay>, ControlError> {
        let doc = self.visible(id, viewer, vec![]).await?;
        let mut recordings = self.inner.store.recordings(id).await?;
        // A recording whose node stopped (a crash) without reporting its end was interrupted:
        // its file plays up to the crash. Said once, and kept.
        for r in &mut recordings {
            if r.state == RecordingState::Recording
                && r.instance != self.inner.instance
                && !self.inner.store.alive(&r.instance).await?
            {
                self.interrupted(r).await;
            }
        }
        let archive = self.inner.archive.get().cloned();
        let now = now_ms();
        let replays = tokio::task::spawn_blocking(move || {
            recordings
                .into_iter()
                .map(|r| {
                    let size = archive
                        .as_ref()
                        .and_then(|a| std::fs::metadata(a.path(&r.file)).ok())
                        .map_or(r.size.unwrap_or(0), |m| m.len());
                    let duration_ms = r
                        .duration_ms
                        .unwrap_or_else(|| now.saturating_sub(r.started_at));
                    let here = match (&archive, &r.speaking_file) {
                        (Some(a), Some(f)) => a.spans(f, duration_ms),
                        _ => vec![],
                    };
                    // Without the sidecar here (another node recorded it): as kept.
                    let spans = if here.is_empty() {
                        r.timeline.clone()
                    } else {
                        here
                    };
                    (r, size, duration_ms, spans)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ControlError::unavailable(format!("recordings: {e}")))?;
        // The names of whoever spoke: members now, or the names the room kept.
        let speakers: Vec<UserId> = replays
            .iter()
            .flat_map(|(_, _, _, spans)| spans.iter())
            .filter_map(|s| UserId::parse(&s.user).ok())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let names = if speakers.is_empty() {
            doc
        } else {
            self.room_in(id, &Scope::users(speakers)).await?
        };
        Ok(replays
            .into_iter()
            .map(|(recording, size, duration_ms, spans)| Replay {
                recording,
                size,
                duration_ms,
                timeline: spans
                    .into_iter()
                    .map(|s| {
                        let name = name_of(&names, &s.user);
                        (s, name)
                    })
                    .collect(),
            })
            .collect())
    }

    /// Marks `r` as interrupted (failed, playable up to its last page), with its length and
    /// size as its file says.
    async fn interrupted(&self, r: &mut Recording) {
        let archive = self.inner.archive.get().cloned();
        let file = r.file.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let a = archive?;
            let size = std::fs::metadata(a.path(&file)).ok()?.len();
            Some((a.duration(&file)?, size))
        })
        .await
        .ok()
        .flatten();
        let (duration_ms, size) = measured.unwrap_or((0, 0));
        r.state = RecordingState::Failed;
        r.duration_ms = Some(duration_ms);
        r.size = Some(size);
        r.ended_at = Some(r.started_at.saturating_add(duration_ms));
        tracing::info!(room = %r.room, recording = %r.id, duration_ms, "recording interrupted by its node stopping");
        if let Err(e) = self.inner.store.put_recording(r).await {
            tracing::warn!(room = %r.room, recording = %r.id, error = %e.message, "cannot mark the recording interrupted");
        }
    }

    /// Deletes the files of room `id`'s recordings and clips that this instance recorded (the
    /// room is being deleted past its retention).
    pub(super) async fn forget_files(&self, id: &RoomId) -> Result<(), ControlError> {
        let Some(archive) = self.inner.archive.get().cloned() else {
            return Ok(());
        };
        let recordings = self.inner.store.recordings(id).await?;
        let clips = self.inner.store.room_clips(id, usize::MAX).await?;
        let here: Vec<&Recording> = recordings
            .iter()
            .filter(|r| r.instance == self.inner.instance)
            .collect();
        // A recording's directory (`<room>/<id>`, where its sidecar is), and its mix when an
        // egress request's `filepath` put it elsewhere: never the directory of such a file,
        // which may hold anything.
        let dirs: Vec<String> = here.iter().filter_map(|r| recording_dir(r)).collect();
        let placed = here
            .iter()
            .filter(|r| recording_dir(r).is_none_or(|d| !r.file.starts_with(&format!("{d}/"))));
        let mine: Vec<&RecordingId> = here.iter().map(|r| &r.id).collect();
        let files: Vec<String> = clips
            .into_iter()
            .filter(|c| mine.contains(&&c.recording))
            .map(|c| c.file)
            .chain(placed.map(|r| r.file.clone()))
            .collect();
        if dirs.is_empty() && files.is_empty() {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || archive.remove(&dirs, &files))
            .await
            .map_err(|e| ControlError::unavailable(format!("deleting recordings: {e}")))
    }

    /// Where `file` (of a recording `node` wrote) is: here when this node's disk has it, else
    /// on `node` (never this node itself: a file missing here is missing).
    async fn locate(
        &self,
        file: &str,
        node: Option<&String>,
    ) -> Result<Located<PathBuf>, ControlError> {
        if let Some(path) = self.inner.archive.get().map(|a| a.path(file))
            && tokio::fs::metadata(&path).await.is_ok()
        {
            return Ok(Located::Here(path));
        }
        let own = http_base(&self.inner.config.public_url);
        match node {
            Some(n) if Some(n) != own.as_ref() => Ok(Located::At(n.clone())),
            _ => Ok(Located::Here(self.archive()?.path(file))),
        }
    }

    /// Where the mix of recording `rid` of room `id` is (here, or the node that recorded it),
    /// for whoever may see the room.
    pub async fn recording_path(
        &self,
        id: &RoomId,
        rid: &RecordingId,
        viewer: Viewer<'_>,
    ) -> Result<Located<PathBuf>, ControlError> {
        self.visible(id, viewer, vec![]).await?;
        let recording = self
            .inner
            .store
            .recording(id, rid)
            .await?
            .ok_or_else(|| ControlError::not_found("recording", rid.as_str()))?;
        self.locate(&recording.file, recording.node.as_ref()).await
    }

    /// Cuts a clip: a member of a live recorded room (the host, whoever joined), or anyone
    /// who may see an ended room's replay; from the recording running now (live) or the
    /// room's latest, unless one is named. The node whose disk holds the recording cuts it:
    /// elsewhere the answer is where that node is.
    pub async fn cut_clip(
        &self,
        id: &RoomId,
        who: &Principal,
        request: NewClip,
    ) -> Result<Located<Clip>, ControlError> {
        let (viewer, reader) = match who {
            Principal::User { id, .. } => (Some(id), Viewer::User(id)),
            Principal::Server => (None, Viewer::Server),
        };
        let doc = self.visible(id, reader, vec![]).await?;
        let live = doc.room.state == RoomState::Live;
        if let Some(u) = viewer {
            let member = doc.members.contains_key(u) || doc.room.host == *u;
            let ended = matches!(doc.room.state, RoomState::Ended | RoomState::Archived);
            if !member && !ended {
                return Err(ControlError::forbidden(
                    "not_a_member",
                    "only the room's members cut clips while it runs: join it first",
                ));
            }
        }
        let range = clip_range(&request)?;
        let title = match &request.title {
            Some(t) => model::text("title", t, 1, MAX_CLIP_TITLE)?,
            None => doc.room.title.clone(),
        };
        let recordings = self.inner.store.recordings(id).await?;
        let recording = match &request.recording {
            Some(rid) => recordings
                .into_iter()
                .find(|r| r.id == *rid)
                .ok_or_else(|| ControlError::not_found("recording", rid.as_str()))?,
            None => {
                let latest = recordings.into_iter().max_by_key(|r| r.started_at);
                let running = latest
                    .as_ref()
                    .is_some_and(|r| r.state == RecordingState::Recording);
                match latest {
                    // In a live room, "now" is the recording running now.
                    Some(r) if !live || (doc.room.recording && running) => r,
                    _ => return Err(not_recorded(live)),
                }
            }
        };
        if let Located::At(node) = self
            .locate(&recording.file, recording.node.as_ref())
            .await?
        {
            return Ok(Located::At(node));
        }
        let archive = self.archive()?.clone();
        // Cutting reads the whole recording: a few per minute per user.
        if let Some(u) = viewer {
            self.rate_limit(u, "clip", 0.2, 5.0)?;
        }
        let clip_id = ClipId::random();
        let room_dir = recording
            .speaking_file
            .as_deref()
            .unwrap_or(&recording.file)
            .split('/')
            .next()
            .unwrap_or_default();
        let file = format!("{room_dir}/clips/{clip_id}.ogg");
        let (source, speaking, target) = (
            recording.file.clone(),
            recording.speaking_file.clone(),
            file.clone(),
        );
        let (cut, spans) = tokio::task::spawn_blocking(move || {
            let cut = archive.cut(&source, range, &target)?;
            let spans = speaking.map_or_else(Vec::new, |f| archive.spans(&f, cut.end_ms));
            Ok::<_, crate::replay::CutError>((cut, spans))
        })
        .await
        .map_err(|e| ControlError::unavailable(format!("clip: {e}")))??;
        // Who spoke in it, in the order they first did.
        let mut users: Vec<String> = Vec::new();
        for s in spans
            .iter()
            .filter(|s| s.start_ms < cut.end_ms && s.end_ms > cut.start_ms)
        {
            if !users.contains(&s.user) {
                users.push(s.user.clone());
            }
        }
        let names = self
            .room_in(
                id,
                &Scope::users(users.iter().filter_map(|u| UserId::parse(u).ok())),
            )
            .await?;
        let clip = Clip {
            id: clip_id,
            room: id.clone(),
            recording: recording.id,
            title,
            created_by: viewer.cloned(),
            created_at: now_ms(),
            start_ms: cut.start_ms,
            end_ms: cut.end_ms,
            file,
            size: cut.size,
            speakers: users
                .into_iter()
                .map(|user| Speaker {
                    name: name_of(&names, &user),
                    user,
                })
                .collect(),
        };
        self.inner.store.put_clip(&clip).await?;
        metrics::counter!(crate::telemetry::CLIPS).increment(1);
        tracing::info!(room = %id, clip = %clip.id, start_ms = clip.start_ms, end_ms = clip.end_ms, "clip cut");
        Ok(Located::Here(clip))
    }

    /// A clip and its room, for whoever may see the room (else 404).
    pub async fn clip(
        &self,
        cid: &ClipId,
        viewer: Viewer<'_>,
    ) -> Result<(Clip, RoomDoc), ControlError> {
        let clip = self
            .inner
            .store
            .clip(cid)
            .await?
            .ok_or_else(|| ControlError::not_found("clip", cid.as_str()))?;
        let doc = self
            .visible(&clip.room, viewer, vec![])
            .await
            .map_err(|e| match e.status {
                404 => ControlError::not_found("clip", cid.as_str()),
                _ => e,
            })?;
        Ok((clip, doc))
    }

    /// Where a clip's file is (here, or the node that recorded its recording, which cut it),
    /// for whoever may see its room.
    pub async fn clip_path(
        &self,
        cid: &ClipId,
        viewer: Viewer<'_>,
    ) -> Result<Located<PathBuf>, ControlError> {
        let (clip, _) = self.clip(cid, viewer).await?;
        let node = self
            .inner
            .store
            .recording(&clip.room, &clip.recording)
            .await?
            .and_then(|r| r.node);
        self.locate(&clip.file, node.as_ref()).await
    }

    /// A room's clips, newest first, for whoever may see the room.
    pub async fn clips(&self, id: &RoomId, viewer: Viewer<'_>) -> Result<Vec<Clip>, ControlError> {
        self.visible(id, viewer, vec![]).await?;
        self.inner.store.room_clips(id, CLIPS_SHOWN).await
    }
}

/// Whether this node records `room`: the node its media lives on (the room's `media_url`, the
/// `public_url` of the node that created it), or any node when nodes have no URL of their own.
/// Another node would record its own empty media room: silence, and a second recording. A
/// store error records (rather than lose a recording). The same test tells where a room's
/// media room is made ahead of its clients.
async fn records_here(inner: &super::Inner, room: &RoomId) -> bool {
    let own = &inner.config.public_url;
    if own.is_empty() {
        return true;
    }
    match inner.store.room(room, &Scope::header()).await {
        Ok(Some(doc)) => doc.room.media_url.as_ref().is_none_or(|u| u == own),
        _ => true,
    }
}

/// `command` as this node applies it: a room whose media lives on another node is neither
/// made nor recorded here ahead of its clients. Clients land on its origin, or on an edge
/// whose relay link opens the media room at their admission, as the origin's: so the origin
/// alone reports the room's start and end to webhooks, once.
pub(super) async fn for_this_node(
    inner: &super::Inner,
    command: &MediaCommand,
) -> Option<MediaCommand> {
    match command {
        MediaCommand::CreateRoom { room, .. } if !records_here(inner, room).await => None,
        MediaCommand::Record {
            room,
            recording: true,
        } if !records_here(inner, room).await => None,
        other => Some(other.clone()),
    }
}

/// A recording's own directory (`<room>/<id>`, where its sidecar is; else its mix's).
fn recording_dir(r: &Recording) -> Option<String> {
    r.speaking_file
        .as_deref()
        .unwrap_or(&r.file)
        .rsplit_once('/')
        .map(|(dir, _)| dir.to_owned())
}

fn not_recorded(live: bool) -> ControlError {
    ControlError::conflict(
        "not_recorded",
        if live {
            "the room is not being recorded: a host starts a recording first"
        } else {
            "the room has no recording to cut a clip from"
        },
    )
}

/// The range a request asks for: the last N ms (30 s when nothing is said), or start to end.
fn clip_range(r: &NewClip) -> Result<ClipRange, ControlError> {
    let range = match (r.last_ms, r.start_ms, r.end_ms) {
        (Some(ms), None, None) => ClipRange::Last { ms },
        (None, None, None) => ClipRange::Last {
            ms: DEFAULT_CLIP_MS,
        },
        (None, Some(start_ms), Some(end_ms)) => {
            if end_ms <= start_ms {
                return Err(ControlError::bad_request(
                    "invalid_range",
                    format!(
                        "the clip's end ({end_ms} ms) must come after its start ({start_ms} ms)"
                    ),
                ));
            }
            ClipRange::Between { start_ms, end_ms }
        }
        _ => {
            return Err(ControlError::bad_request(
                "invalid_range",
                "give either last_seconds, or start_ms and end_ms",
            ));
        }
    };
    let length = match range {
        ClipRange::Last { ms } => ms,
        ClipRange::Between { start_ms, end_ms } => end_ms - start_ms,
    };
    if length == 0 || length > MAX_CLIP_MS {
        return Err(ControlError::bad_request(
            "invalid_range",
            format!(
                "a clip lasts more than 0 and at most {} s",
                MAX_CLIP_MS / 1000
            ),
        ));
    }
    Ok(range)
}

fn name_of(doc: &RoomDoc, user: &str) -> String {
    UserId::parse(user)
        .ok()
        .and_then(|u| doc.name_of(&u).map(str::to_owned))
        .unwrap_or_else(|| user.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_ranges_are_checked() {
        let ask = |last_ms, start_ms, end_ms| {
            clip_range(&NewClip {
                last_ms,
                start_ms,
                end_ms,
                ..NewClip::default()
            })
        };
        assert_eq!(
            ask(None, None, None).unwrap(),
            ClipRange::Last { ms: 30_000 }
        );
        assert_eq!(
            ask(None, Some(1_000), Some(3_000)).unwrap(),
            ClipRange::Between {
                start_ms: 1_000,
                end_ms: 3_000
            }
        );
        for (last, start, end) in [
            (None, Some(3_000), Some(3_000)),
            (None, Some(3_000), Some(1_000)),
            (Some(0), None, None),
            (Some(MAX_CLIP_MS + 1), None, None),
            (None, Some(0), Some(MAX_CLIP_MS + 1)),
            (Some(1_000), Some(0), Some(1)),
            (None, Some(0), None),
        ] {
            let e = ask(last, start, end).unwrap_err();
            assert_eq!((e.status, e.code), (400, "invalid_range"), "{e}");
        }
    }
}
