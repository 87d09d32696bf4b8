//! The Twirp `Egress` service that LiveKit's server SDKs call (`EgressClient` in
//! `livekit-server-sdk`, `LiveKitAPI.egress` in Python `livekit-api`):
//! `POST /twirp/livekit.Egress/{Method}`.
//!
//! This module speaks the protocol: it authenticates (the `roomRecord` grant, as LiveKit
//! requires), decodes the request in either encoding, checks what Stoa can do and refuses the
//! rest with a Twirp error that says why, and answers with `EgressInfo`. What is recorded, and
//! where, is decided behind [`EgressBackend`], which the server binary implements with its
//! recorder and its control plane (so that a recording started here or through `/api` is one
//! and the same).
//!
//! Supported: `StartRoomCompositeEgress` with `audio_only` and one file output of type `OGG`
//! (or the default type, which for audio is Ogg) given as `file_outputs[0]` or the deprecated
//! `file`; `StartTrackEgress` with a file output (the track's Opus packets in Ogg, not
//! transcoded); `StopEgress`; `ListEgress` (filters `room_name`, `egress_id`, `active`). The
//! file is written on the server's disk under its recording directory, at the output's
//! `filepath` (relative to that directory, LiveKit's templates `{room_name}`, `{room_id}`,
//! `{time}`, `{track_id}` filled in; an absolute path or one climbing out with `..` is
//! `invalid_argument`) or, without one, where the server chooses; `file_results` says where.
//! `StopEgress` answers `EGRESS_ENDING`, as LiveKit does (`egress_updated` says so too), before
//! `egress_ended` says how it ended. Everything else —
//! video, stream, segment and image outputs, cloud uploads, web, participant and track
//! composite egress, `UpdateLayout`, `UpdateStream` — answers `unimplemented` or
//! `invalid_argument` with a message.

// The HTTP shell reads the clock for token expiry (in `twirp::authenticate`).
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use livekit_protocol as lk;

use crate::token::ApiKeys;
use crate::twirp::{Encoding, MAX_BODY, TwirpError, authenticate, require};

/// A future answered by an [`EgressBackend`].
pub type EgressFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, TwirpError>> + Send + 'a>>;

/// What was asked to be recorded (after the protocol checks).
#[derive(Debug, Clone, PartialEq)]
pub enum EgressRequest {
    /// The room's mixed audio (`StartRoomCompositeEgress`, audio only, Ogg).
    RoomComposite {
        /// The room's name.
        room: String,
        /// The request as received, for `EgressInfo.request`.
        request: Box<lk::RoomCompositeEgressRequest>,
    },
    /// One track as received (`StartTrackEgress`, file output).
    Track {
        /// The room's name.
        room: String,
        /// The track's sid.
        track: String,
        /// The request as received, for `EgressInfo.request`.
        request: Box<lk::TrackEgressRequest>,
    },
}

/// Which egresses `ListEgress` wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressFilter {
    /// Only this room's.
    pub room: Option<String>,
    /// Only this one.
    pub egress_id: Option<String>,
    /// Only the running ones.
    pub active: bool,
}

/// Records what the `Egress` service is asked to (implemented by the server binary).
pub trait EgressBackend: Send + Sync {
    /// Starts an egress; answers its state (status starting or active).
    fn start(&self, request: EgressRequest) -> EgressFuture<'_, lk::EgressInfo>;
    /// Stops an egress; answers its state.
    fn stop<'a>(&'a self, egress_id: &'a str) -> EgressFuture<'a, lk::EgressInfo>;
    /// The egresses `filter` selects, running and recently ended.
    fn list(&self, filter: EgressFilter) -> EgressFuture<'_, Vec<lk::EgressInfo>>;
}

#[derive(Clone)]
struct EgressState {
    backend: Arc<dyn EgressBackend>,
    keys: Arc<ApiKeys>,
}

/// The `Egress` Twirp routes, to merge into the server's router.
pub fn router(backend: Arc<dyn EgressBackend>, keys: Arc<ApiKeys>) -> Router {
    Router::new()
        .route("/twirp/livekit.Egress/{method}", post(handle))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(EgressState { backend, keys })
}

async fn handle(
    State(state): State<EgressState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match call(&state, &method, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn unimplemented(what: impl Into<String>) -> TwirpError {
    TwirpError::new("unimplemented", what)
}

fn invalid(what: impl Into<String>) -> TwirpError {
    TwirpError::new("invalid_argument", what)
}

async fn call(
    state: &EgressState,
    method: &str,
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, TwirpError> {
    let claims = authenticate(&state.keys, headers)?;
    if !claims.video.room_record {
        return Err(TwirpError::new(
            "permission_denied",
            "the token lacks the roomRecord grant egress calls need",
        ));
    }
    let enc = Encoding::of(headers)?;
    let body = body.map_err(|e| TwirpError::new("malformed", e.body_text()))?;
    let backend = &state.backend;
    match method {
        "StartRoomCompositeEgress" => {
            let req: lk::RoomCompositeEgressRequest = enc.decode(&body)?;
            check_room_composite(&req)?;
            let request = EgressRequest::RoomComposite {
                room: req.room_name.clone(),
                request: Box::new(req),
            };
            Ok(enc.encode(&backend.start(request).await?))
        }
        "StartTrackEgress" => {
            let req: lk::TrackEgressRequest = enc.decode(&body)?;
            check_track(&req)?;
            let request = EgressRequest::Track {
                room: req.room_name.clone(),
                track: req.track_id.clone(),
                request: Box::new(req),
            };
            Ok(enc.encode(&backend.start(request).await?))
        }
        "StopEgress" => {
            let req: lk::StopEgressRequest = enc.decode(&body)?;
            require("egress_id", &req.egress_id)?;
            Ok(enc.encode(&backend.stop(&req.egress_id).await?))
        }
        "ListEgress" => {
            let req: lk::ListEgressRequest = enc.decode(&body)?;
            let filter = EgressFilter {
                room: Some(req.room_name).filter(|r| !r.is_empty()),
                egress_id: Some(req.egress_id).filter(|r| !r.is_empty()),
                active: req.active,
            };
            let items = backend.list(filter).await?;
            Ok(enc.encode(&lk::ListEgressResponse {
                items,
                next_page_token: None,
            }))
        }
        "UpdateLayout" => Err(unimplemented(
            "UpdateLayout is not supported: Stoa's room composite egress is audio only",
        )),
        "UpdateStream" => Err(unimplemented(
            "UpdateStream is not supported: Stoa's egress writes files only, no streams",
        )),
        "StartWebEgress" => Err(unimplemented(
            "web egress is not supported (no browser is run); use StartRoomCompositeEgress with audio_only",
        )),
        "StartParticipantEgress" | "StartTrackCompositeEgress" => Err(unimplemented(format!(
            "{method} is not supported; use StartRoomCompositeEgress (audio only) or StartTrackEgress"
        ))),
        _ => Err(TwirpError::new(
            "bad_route",
            format!("Egress has no method {method}"),
        )),
    }
}

/// `StartRoomCompositeEgress`: audio only, exactly one Ogg file output.
// The deprecated single `output` is what older SDKs send: it is read as LiveKit still does.
#[allow(deprecated)]
fn check_room_composite(req: &lk::RoomCompositeEgressRequest) -> Result<(), TwirpError> {
    use lk::room_composite_egress_request::Output;
    require("room_name", &req.room_name)?;
    if req.video_only || !req.audio_only {
        return Err(invalid(
            "only audio-only room composite egress is supported: set audio_only (Stoa rooms carry no video)",
        ));
    }
    if !req.custom_base_url.is_empty() {
        return Err(unimplemented(
            "custom_base_url is not supported: the room is mixed without a browser template",
        ));
    }
    if !req.stream_outputs.is_empty() || matches!(req.output, Some(Output::Stream(_))) {
        return Err(unimplemented(
            "stream outputs (RTMP, SRT, WebSocket) are not supported; use a file output (ogg)",
        ));
    }
    if !req.segment_outputs.is_empty() || matches!(req.output, Some(Output::Segments(_))) {
        return Err(unimplemented(
            "segment outputs (HLS) are not supported; use a file output (ogg)",
        ));
    }
    if !req.image_outputs.is_empty() {
        return Err(unimplemented("image outputs are not supported"));
    }
    if !req.webhooks.is_empty() {
        return Err(unimplemented(
            "per-request webhooks are not supported; egress events go to the server's [webhook] receivers",
        ));
    }
    let mut files: Vec<&lk::EncodedFileOutput> = req.file_outputs.iter().collect();
    // SDKs send a single file output in both places (Node's `livekit-server-sdk` does): one.
    if let Some(Output::File(file)) = &req.output
        && !files.contains(&file)
    {
        files.push(file);
    }
    let file = match files.as_slice() {
        [file] => *file,
        [] => return Err(invalid("a file output (ogg) is required")),
        _ => return Err(invalid("only one file output is supported")),
    };
    let ogg = file.file_type == lk::EncodedFileType::DefaultFiletype as i32
        || file.file_type == lk::EncodedFileType::Ogg as i32;
    if !ogg {
        let name = lk::EncodedFileType::try_from(file.file_type).map_or_else(
            |_| file.file_type.to_string(),
            |t| t.as_str_name().to_owned(),
        );
        return Err(invalid(format!(
            "file type {name} is not supported: audio is recorded as OGG (Opus)"
        )));
    }
    check_filepath(&file.filepath)?;
    if file.output.is_some() {
        return Err(unimplemented(
            "uploads (S3, GCP, Azure, AliOSS) are not supported; files stay on the server's disk",
        ));
    }
    Ok(())
}

/// The `filepath` of a room composite request's file output ("" when it names none).
#[allow(deprecated)]
pub fn composite_filepath(req: &lk::RoomCompositeEgressRequest) -> &str {
    use lk::room_composite_egress_request::Output;
    match (req.file_outputs.first(), &req.output) {
        (Some(file), _) | (None, Some(Output::File(file))) => &file.filepath,
        _ => "",
    }
}

/// `StartTrackEgress`: a file output.
fn check_track(req: &lk::TrackEgressRequest) -> Result<(), TwirpError> {
    use lk::track_egress_request::Output;
    require("room_name", &req.room_name)?;
    require("track_id", &req.track_id)?;
    if !req.webhooks.is_empty() {
        return Err(unimplemented(
            "per-request webhooks are not supported; egress events go to the server's [webhook] receivers",
        ));
    }
    match &req.output {
        Some(Output::File(file)) => {
            check_filepath(&file.filepath)?;
            if file.output.is_some() {
                return Err(unimplemented(
                    "uploads (S3, GCP, Azure, AliOSS) are not supported; files stay on the server's disk",
                ));
            }
            Ok(())
        }
        Some(Output::WebsocketUrl(_)) => Err(unimplemented(
            "WebSocket track output is not supported; use a file output",
        )),
        None => Err(invalid("a file output is required")),
    }
}

/// A `filepath` is relative to the server's recording directory and stays in it (no absolute
/// path, no `..`); it may name an Ogg file (or leave the extension out) and use LiveKit's
/// templates (`{room_name}`, `{room_id}`, `{time}`, `{track_id}`), which the recorder fills in.
fn check_filepath(path: &str) -> Result<(), TwirpError> {
    let absolute = path.starts_with('/')
        || path.starts_with('\\')
        || path.as_bytes().get(1) == Some(&b':')
        || path.contains("://");
    if absolute {
        return Err(invalid(format!(
            "filepath {path:?} is absolute: give a path relative to the server's recording directory"
        )));
    }
    if path.split(['/', '\\']).any(|c| c == "..") {
        return Err(invalid(format!(
            "filepath {path:?} climbs out with `..`: it must stay inside the server's recording directory"
        )));
    }
    if path.len() > 512 || path.chars().any(char::is_control) {
        return Err(invalid(
            "filepath is too long (over 512 bytes) or holds control characters",
        ));
    }
    let name = path.rsplit('/').next().unwrap_or_default();
    match name.rsplit_once('.') {
        Some((_, ext)) if !ext.contains('}') && !ext.eq_ignore_ascii_case("ogg") => Err(invalid(
            format!("filepath {path:?} asks for .{ext}: audio is recorded as .ogg (Opus)"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composite() -> lk::RoomCompositeEgressRequest {
        lk::RoomCompositeEgressRequest {
            room_name: "r".into(),
            audio_only: true,
            file_outputs: vec![lk::EncodedFileOutput {
                file_type: lk::EncodedFileType::Ogg as i32,
                filepath: "rec/{room_name}.ogg".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    #[allow(deprecated)]
    fn audio_only_ogg_files_pass_and_the_rest_says_why_not() {
        assert_eq!(check_room_composite(&composite()), Ok(()));
        let mut old = composite();
        let file = old.file_outputs.pop().unwrap();
        old.output = Some(lk::room_composite_egress_request::Output::File(file));
        assert_eq!(check_room_composite(&old), Ok(()));
        old.file_outputs = vec![composite().file_outputs[0].clone()];
        assert_eq!(
            check_room_composite(&old),
            Ok(()),
            "the same file in both places"
        );

        let mut video = composite();
        video.audio_only = false;
        assert_eq!(
            check_room_composite(&video).unwrap_err().code,
            "invalid_argument"
        );
        let mut mp4 = composite();
        mp4.file_outputs[0].file_type = lk::EncodedFileType::Mp4 as i32;
        let e = check_room_composite(&mp4).unwrap_err();
        assert!(
            e.code == "invalid_argument" && e.msg.contains("MP4"),
            "{e:?}"
        );
        let mut mp3_path = composite();
        mp3_path.file_outputs[0].filepath = "a.mp3".into();
        assert_eq!(
            check_room_composite(&mp3_path).unwrap_err().code,
            "invalid_argument"
        );
        let mut stream = composite();
        stream.stream_outputs.push(lk::StreamOutput::default());
        assert_eq!(
            check_room_composite(&stream).unwrap_err().code,
            "unimplemented"
        );
        let mut segments = composite();
        segments
            .segment_outputs
            .push(lk::SegmentedFileOutput::default());
        assert_eq!(
            check_room_composite(&segments).unwrap_err().code,
            "unimplemented"
        );
        let mut none = composite();
        none.file_outputs.clear();
        assert_eq!(
            check_room_composite(&none).unwrap_err().code,
            "invalid_argument"
        );
        let mut two = composite();
        two.file_outputs.push(two.file_outputs[0].clone());
        assert_eq!(
            check_room_composite(&two).unwrap_err().code,
            "invalid_argument"
        );
        let mut s3 = composite();
        s3.file_outputs[0].output =
            Some(lk::encoded_file_output::Output::S3(lk::S3Upload::default()));
        assert_eq!(check_room_composite(&s3).unwrap_err().code, "unimplemented");
    }

    #[test]
    fn filepaths_stay_inside_the_recording_directory() {
        for ok in [
            "",
            "a.ogg",
            "rec/{room_name}-{time}.ogg",
            "{room_id}/",
            "x/./y",
            "a..b.ogg",
        ] {
            assert_eq!(check_filepath(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/etc/passwd.ogg",
            "../up.ogg",
            "a/../../b.ogg",
            "a/..",
            "C:/x.ogg",
            "\\\\host\\share.ogg",
            "s3://bucket/a.ogg",
            "a\n.ogg",
        ] {
            let e = check_filepath(bad).unwrap_err();
            assert_eq!(e.code, "invalid_argument", "{bad}");
            assert!(!e.msg.is_empty());
        }
    }

    #[test]
    fn track_egress_needs_a_file() {
        let file = lk::TrackEgressRequest {
            room_name: "r".into(),
            track_id: "TR_a".into(),
            output: Some(lk::track_egress_request::Output::File(
                lk::DirectFileOutput {
                    filepath: "{track_id}".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(check_track(&file), Ok(()));
        let ws = lk::TrackEgressRequest {
            output: Some(lk::track_egress_request::Output::WebsocketUrl(
                "ws://127.0.0.1:1".into(),
            )),
            ..file.clone()
        };
        assert_eq!(check_track(&ws).unwrap_err().code, "unimplemented");
        let no_track = lk::TrackEgressRequest {
            track_id: String::new(),
            ..file
        };
        assert_eq!(check_track(&no_track).unwrap_err().code, "invalid_argument");
    }
}
