//! Replays and clips: a room's recordings with who spoke when, their audio with HTTP range
//! requests (so a browser's player seeks), and clips with their own link, card and audio.
//! A public room's replays and clips are read by anyone, signed in or not (an embedded card
//! plays them: no token needed); a private room's by whoever may see the room (its view's
//! rule), and to anyone else, signed out included, it does not exist (404, as its card). An
//! anonymous reader gets no `user` fields, only names (which fall back to the user id when
//! the room knows no display name, as everywhere). Cutting a clip needs a user.

use axum::http::{HeaderMap, HeaderValue, Method, Uri, header};

use super::*;
use crate::replay::{
    ByteRange, Clip, ClipId, Located, RecordingId, RecordingState, Speaker, byte_range,
};
use crate::service::NewClip;
use crate::view::Viewer;

/// Whoever reads a replay or clip: the caller when a token came (`Authorization: Bearer`, or
/// `?access_token=` for an audio element; a bad one is still 401), else someone anonymous.
#[derive(Debug)]
pub struct Reader(Option<Principal>);

impl Reader {
    fn viewer(&self) -> Viewer<'_> {
        match &self.0 {
            None => Viewer::Anonymous,
            Some(Principal::User { id, .. }) => Viewer::User(id),
            Some(Principal::Server) => Viewer::Server,
        }
    }

    fn anonymous(&self) -> bool {
        self.0.is_none()
    }
}

impl FromRequestParts<Control> for Reader {
    type Rejection = ControlError;

    async fn from_request_parts(
        parts: &mut Parts,
        control: &Control,
    ) -> Result<Self, Self::Rejection> {
        let token = parts.headers.contains_key(header::AUTHORIZATION)
            || parts.uri.query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token")
            });
        if !token {
            return Ok(Reader(None));
        }
        Caller::from_request_parts(parts, control)
            .await
            .map(|c| Reader(Some(c.0)))
    }
}

/// The replay and clip routes.
pub(super) fn routes() -> Router<Control> {
    Router::new()
        .route("/api/rooms/{id}/recordings", get(list_recordings))
        .route(
            "/api/rooms/{id}/recordings/{recording}/audio",
            get(recording_audio),
        )
        .route("/api/rooms/{id}/clips", post(create_clip).get(list_clips))
        .route("/api/clips/{clip}", get(get_clip))
        .route("/api/clips/{clip}/audio", get(clip_audio))
}

/// One span of a replay's timeline: someone speaking.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// Their user id ("" to an anonymous reader).
    pub user: String,
    /// Their display name when the room knows it.
    pub name: String,
    /// Start, ms since the recording's start.
    pub start_ms: u64,
    /// End, ms since the recording's start.
    pub end_ms: u64,
}

/// A recording of a room.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingView {
    /// Its id.
    pub id: RecordingId,
    /// `recording` (running now), `complete` or `failed` (playable up to the failure).
    pub state: RecordingState,
    /// Unix ms it started.
    pub started_at: u64,
    /// Unix ms it ended.
    pub ended_at: Option<u64>,
    /// Its length (ms; so far, while it runs).
    pub duration_ms: u64,
    /// Its audio's size (bytes).
    pub size: u64,
    /// Its audio (Ogg/Opus, HTTP range requests): add `?access_token=` for an audio element.
    pub audio_url: String,
    /// Who spoke when, ordered by start.
    pub timeline: Vec<TimelineEntry>,
}

/// `GET /api/rooms/{id}/recordings`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecordingsView {
    /// The room's recordings, oldest first.
    pub recordings: Vec<RecordingView>,
}

/// `POST /api/rooms/{id}/clips`: the last N seconds, or a start and end in the recording;
/// neither gives the last 30 seconds.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipBody {
    /// The recording to cut (default: the one running now in a live room, else the latest).
    pub recording: Option<RecordingId>,
    /// The last this many seconds (at most 600).
    pub last_seconds: Option<f64>,
    /// Start, ms of the recording.
    pub start_ms: Option<u64>,
    /// End, ms of the recording (after the start, at most 600 s later).
    pub end_ms: Option<u64>,
    /// Title (default: the room's), 1 to 120 characters.
    pub title: Option<String>,
}

/// The room a clip comes from.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClipRoomView {
    /// Room id.
    pub id: RoomId,
    /// Its title.
    pub title: String,
    /// Its host's display name.
    pub host_name: String,
}

/// A clip: its card and where to play and share it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClipView {
    /// Its id.
    pub id: ClipId,
    /// Its title.
    pub title: String,
    /// The room.
    pub room: ClipRoomView,
    /// The recording it was cut from.
    pub recording: RecordingId,
    /// Where it starts in the recording (ms).
    pub start_ms: u64,
    /// Where it ends in the recording (ms).
    pub end_ms: u64,
    /// Its length (ms).
    pub duration_ms: u64,
    /// Who spoke in it.
    pub speakers: Vec<Speaker>,
    /// Who cut it (absent: a server, or to an anonymous reader).
    pub created_by: Option<UserId>,
    /// Unix ms it was cut.
    pub created_at: u64,
    /// Its audio (Ogg/Opus, HTTP range requests).
    pub audio_url: String,
    /// The web app's page for it, to share.
    pub link: String,
}

/// `GET /api/rooms/{id}/clips`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClipsView {
    /// The newest 100, newest first.
    pub clips: Vec<ClipView>,
}

/// A clip as shown; to an anonymous reader without user ids.
fn clip_view(mut clip: Clip, doc: &RoomDoc, anonymous: bool) -> ClipView {
    if anonymous {
        clip.created_by = None;
        for s in &mut clip.speakers {
            s.user.clear();
        }
    }
    ClipView {
        audio_url: format!("/api/clips/{}/audio", clip.id),
        link: format!("/clips/{}", clip.id),
        duration_ms: clip.end_ms.saturating_sub(clip.start_ms),
        room: ClipRoomView {
            id: doc.room.id.clone(),
            title: doc.room.title.clone(),
            host_name: doc
                .name_of(&doc.room.host)
                .unwrap_or(doc.room.host.as_str())
                .to_owned(),
        },
        id: clip.id,
        title: clip.title,
        recording: clip.recording,
        start_ms: clip.start_ms,
        end_ms: clip.end_ms,
        speakers: clip.speakers,
        created_by: clip.created_by,
        created_at: clip.created_at,
    }
}

/// A room's recordings, with who spoke when, live or ended: a public room's for anyone (no
/// token needed; user ids left out then), a private room's for whoever may see it (anyone
/// else gets 404).
#[utoipa::path(get, path = "/api/rooms/{id}/recordings", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = RecordingsView), (status = 401, body = ErrorBody, description = "A bad token"), (status = 404, body = ErrorBody)))]
pub(super) async fn list_recordings(
    State(c): State<Control>,
    caller: Reader,
    Path(id): Path<String>,
) -> Result<Json<RecordingsView>, ControlError> {
    let id = room_id(&id)?;
    let replays = c.replays(&id, caller.viewer()).await?;
    let anonymous = caller.anonymous();
    Ok(Json(RecordingsView {
        recordings: replays
            .into_iter()
            .map(|r| RecordingView {
                audio_url: format!("/api/rooms/{id}/recordings/{}/audio", r.recording.id),
                id: r.recording.id,
                state: r.recording.state,
                started_at: r.recording.started_at,
                ended_at: r.recording.ended_at,
                duration_ms: r.duration_ms,
                size: r.size,
                timeline: r
                    .timeline
                    .into_iter()
                    .map(|(s, name)| TimelineEntry {
                        user: if anonymous { String::new() } else { s.user },
                        name,
                        start_ms: s.start_ms,
                        end_ms: s.end_ms,
                    })
                    .collect(),
            })
            .collect(),
    }))
}

/// A recording's audio (Ogg/Opus) with HTTP range requests (`Range: bytes=…` → 206 with
/// `Content-Range`; past the end → 416), so a player seeks; `HEAD` answers the headers.
/// Who may read it as for the room's recordings (a public room's: anyone, no token);
/// `?access_token=` authenticates an audio element.
#[utoipa::path(get, path = "/api/rooms/{id}/recordings/{recording}/audio",
    params(("id" = String, Path, description = "Room id"), ("recording" = String, Path, description = "Recording id")),
    responses((status = 200, description = "The whole file", content_type = "audio/ogg"),
        (status = 206, description = "The range asked for", content_type = "audio/ogg"),
        (status = 307, body = ErrorBody, description = "The file is on the node that recorded it (`on_another_node`): `Location` is the same request there"),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody, description = "The range starts past the end (`range_not_satisfiable`)")))]
pub(super) async fn recording_audio(
    State(c): State<Control>,
    caller: Reader,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path((id, recording)): Path<(String, String)>,
) -> Result<Response, ControlError> {
    let id = room_id(&id)?;
    let recording = RecordingId::parse(&recording)?;
    match c.recording_path(&id, &recording, caller.viewer()).await? {
        Located::Here(path) => serve_file(&path, &method, &headers).await,
        Located::At(node) => Ok(elsewhere(&node, &uri)),
    }
}

/// `307 Temporary Redirect` to the same request (method, body, query with its
/// `?access_token=`) on the node at `base`, whose disk holds the file; the body says so as
/// `{code, message}`. Asked only after this node checked who may read it.
fn elsewhere(base: &str, uri: &Uri) -> Response {
    let target = format!(
        "{base}{}",
        uri.path_and_query().map_or(uri.path(), |p| p.as_str())
    );
    metrics::counter!(crate::telemetry::AUDIO_REDIRECTS).increment(1);
    let mut response = ControlError::new(
        307,
        "on_another_node",
        format!("the file is on the node that recorded it: {base}"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&target) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Cuts a clip of the room's recording: the last N seconds, or a start and end. While the
/// room is live, its members (and the host) cut from the recording running now; once it
/// ended, whoever may see the room cuts from its replay. The clip has its own id, link,
/// card (who spoke in it) and audio file.
#[utoipa::path(post, path = "/api/rooms/{id}/clips", params(("id" = String, Path, description = "Room id")), request_body = ClipBody,
    responses((status = 201, body = ClipView),
        (status = 307, body = ErrorBody, description = "The recording is on another node (`on_another_node`), which cuts it: `Location` is the same request there"),
        (status = 400, body = ErrorBody, description = "A bad range (`invalid_range`: start not before end, too long)"),
        (status = 403, body = ErrorBody, description = "Not a member of the live room (`not_a_member`)"),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "The room is not recorded (`not_recorded`)"),
        (status = 416, body = ErrorBody, description = "The range starts past the recording's end (`past_end`)"),
        (status = 429, body = ErrorBody)))]
pub(super) async fn create_clip(
    State(c): State<Control>,
    caller: Caller,
    uri: Uri,
    Path(id): Path<String>,
    OptionalBody(b): OptionalBody<ClipBody>,
) -> Result<Response, ControlError> {
    let id = room_id(&id)?;
    let last_ms = match b.last_seconds {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(ControlError::bad_request(
                "invalid_range",
                "last_seconds must be a positive number",
            ));
        }
        Some(s) => Some((s * 1000.0).min(u64::MAX as f64) as u64),
        None => None,
    };
    let request = NewClip {
        recording: b.recording,
        last_ms,
        start_ms: b.start_ms,
        end_ms: b.end_ms,
        title: b.title,
    };
    let clip = match c.cut_clip(&id, &caller.0, request).await? {
        Located::Here(clip) => clip,
        Located::At(node) => return Ok(elsewhere(&node, &uri)),
    };
    let doc = c.room_in(&id, &Scope::header()).await?;
    Ok((StatusCode::CREATED, Json(clip_view(clip, &doc, false))).into_response())
}

/// A room's clips, newest first: a public room's for anyone (no token needed), a private
/// room's for whoever may see it.
#[utoipa::path(get, path = "/api/rooms/{id}/clips", params(("id" = String, Path, description = "Room id")),
    responses((status = 200, body = ClipsView), (status = 404, body = ErrorBody)))]
pub(super) async fn list_clips(
    State(c): State<Control>,
    caller: Reader,
    Path(id): Path<String>,
) -> Result<Json<ClipsView>, ControlError> {
    let id = room_id(&id)?;
    let clips = c.clips(&id, caller.viewer()).await?;
    let doc = c.room_in(&id, &Scope::header()).await?;
    Ok(Json(ClipsView {
        clips: clips
            .into_iter()
            .map(|k| clip_view(k, &doc, caller.anonymous()))
            .collect(),
    }))
}

/// A clip's card: title, room, who spoke in it, where to play and share it. A public room's
/// for anyone (no token needed), a private room's for whoever may see the room (else 404).
#[utoipa::path(get, path = "/api/clips/{clip}", params(("clip" = String, Path, description = "Clip id")),
    responses((status = 200, body = ClipView), (status = 404, body = ErrorBody)))]
pub(super) async fn get_clip(
    State(c): State<Control>,
    caller: Reader,
    Path(clip): Path<String>,
) -> Result<Json<ClipView>, ControlError> {
    let (clip, doc) = c.clip(&ClipId::parse(&clip)?, caller.viewer()).await?;
    Ok(Json(clip_view(clip, &doc, caller.anonymous())))
}

/// A clip's audio (Ogg/Opus, starting at 0), with HTTP range requests and readers as a
/// recording's.
#[utoipa::path(get, path = "/api/clips/{clip}/audio", params(("clip" = String, Path, description = "Clip id")),
    responses((status = 200, content_type = "audio/ogg"), (status = 206, content_type = "audio/ogg"),
        (status = 307, body = ErrorBody, description = "On the node that recorded it (`on_another_node`): `Location` is the same request there"),
        (status = 404, body = ErrorBody), (status = 416, body = ErrorBody)))]
pub(super) async fn clip_audio(
    State(c): State<Control>,
    caller: Reader,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Path(clip): Path<String>,
) -> Result<Response, ControlError> {
    match c.clip_path(&ClipId::parse(&clip)?, caller.viewer()).await? {
        Located::Here(path) => serve_file(&path, &method, &headers).await,
        Located::At(node) => Ok(elsewhere(&node, &uri)),
    }
}

/// Bytes read from disk per chunk of a response.
const CHUNK: usize = 64 * 1024;

/// An Ogg file, whole or the range the request asks for, streamed from disk.
async fn serve_file(
    path: &std::path::Path,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ControlError> {
    let missing = || ControlError::not_found("audio file", "on this server");
    let file = tokio::fs::File::open(path).await.map_err(|_| missing())?;
    let len = file.metadata().await.map_err(|_| missing())?.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (status, start, end) = match byte_range(range.as_deref(), len) {
        ByteRange::Whole => (StatusCode::OK, 0, len.saturating_sub(1)),
        ByteRange::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        ByteRange::Unsatisfiable => {
            let mut response = ControlError::new(
                416,
                "range_not_satisfiable",
                format!("the range {range:?} starts past the end of this {len}-byte file"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            response
                .headers_mut()
                .insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            return Ok(response);
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "audio/ogg")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, count)
        .header(header::CACHE_CONTROL, "private, no-cache");
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    let body = if *method == Method::HEAD || count == 0 {
        axum::body::Body::empty()
    } else {
        metrics::counter!(crate::telemetry::AUDIO_BYTES).increment(count);
        stream_file(file, start, count)
            .await
            .map_err(|_| missing())?
    };
    builder
        .body(body)
        .map_err(|e| ControlError::unavailable(format!("audio response: {e}")))
}

/// `count` bytes of `file` from `start`, read as the response is sent.
async fn stream_file(
    mut file: tokio::fs::File,
    start: u64,
    count: u64,
) -> std::io::Result<axum::body::Body> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let reader = file.take(count);
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; CHUNK];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)),
                    reader,
                ))
            }
            Err(e) => Some((Err(e), reader)),
        }
    });
    Ok(axum::body::Body::from_stream(stream))
}
