//! Recording, clips and replays for Stoa's rooms, in-process and without a browser: received
//! Opus RTP in, Ogg/Opus files out.
//!
//! - **Per-track recording** ([`TrackRecorder`]): a track's packets as received, no
//!   transcoding, in an Ogg/Opus file (RFC 7845) whose time 0 is the egress start. Reordering
//!   within [`track::REORDER_HOLD`], duplicates dropped, gaps (mute, DTX, loss, a publisher
//!   away) filled with zero-length "lost" frames so the timeline keeps its length, a new SSRC
//!   (rejoin) or a timestamp jump re-anchored without time going backwards.
//! - **Room mix** ([`RoomMixer`]): every speaker decoded with libopus, placed on the egress
//!   timeline by a jitter buffer, summed, soft-limited ([`limiter`]), re-encoded: one 20 ms
//!   frame per 20 ms of wall time whoever speaks, so the file has neither gaps nor drift.
//! - **Clips** ([`clip::cut`]): `[start, end)` or the last N seconds of a recording as a new
//!   file, packets copied, boundaries exact through pre-skip and end trimming.
//! - **Who spoke when** ([`speaking`]): a JSON Lines sidecar beside the mix, and the spans a
//!   replay's timeline shows.
//! - **Restarts** ([`Egress::resume`]): a recorder that crashed or was redeployed continues its
//!   files as the same Ogg streams on the original timeline (the downtime becomes silence).
//! - [`Egress`] bundles these per LiveKit egress (room composite or track), and [`Recorder`]
//!   holds a node's egresses by id and room (start, stop, list, inputs fanned out per room);
//!   the `fs` feature's [`shell::FileSink`] writes their output to files.
//!
//! # Run loop (sans-IO)
//!
//! The core reads no clock, does no I/O and has no randomness: every input carries `now`, and
//! outputs are polled, as in str0m and quinn-proto.
//!
//! ```text
//! let mut egress = Egress::new(now, config)?;          // headers queued, Started event
//! loop {
//!     // on each engine event:  egress.handle_input(now, Input::Packet { .. })
//!     // at the deadline:       egress.handle_timeout(now)   (egress.poll_timeout())
//!     while let Some(out) = egress.poll_output() {
//!         // Output::Write { artifact, bytes } → append to that file
//!         // Output::Truncate { artifact, len } → cut it (only after Egress::resume)
//!         // Output::Event(e)                  → webhook / ListEgress state
//!     }
//! }
//! ```
//!
//! Every `Write` ends on an Ogg page (or JSON line) boundary, and pages are closed at least
//! every second of audio (and every second of wall time), so a file cut by a crash at any
//! point plays up to its last complete page.
//!
//! # Errors and bugs
//!
//! Network input never panics: payloads that are not Opus packets (RFC 6716 §3.4), duplicates,
//! late packets and libopus decode errors are counted ([`EgressInfo`], [`MixStats`],
//! [`TrackStats`]) and dropped or concealed. A write the shell could not do is reported with
//! [`Egress::handle_write_error`]: the egress ends as failed with an `Ended` event, and the
//! room it records is not affected. Errors that are returned are the setup of libopus
//! ([`EgressError`]) and unreadable recordings ([`ReadError`], [`clip::ClipError`]).
//!
//! # Integration plan (engine, signaling, control)
//!
//! The crate depends on nothing in the workspace. Where the wiring stands: room recordings
//! started and stopped through the control plane run today — the engine's tap
//! (`EngineCommand::SetTap`, one sink per node), signaling naming tapped tracks
//! (`Output::Tap`: room, identity, track sid) and setting `Room.active_recording`, and the
//! binary's recorder thread (`src/recording.rs`) writing [`Recorder`]'s output with
//! [`shell::FileSink`], and signaling's Twirp `livekit.Egress` backed by that recorder (the
//! binary's `egress_service`), with the egress webhooks. Not done yet: the mute inputs from
//! signaling's events, the manifest and [`Egress::resume`] at startup (a restarted node records
//! a recorded room again into a new egress instead), replays and clips (item 5). The plan, as drawn up before:
//!
//! 1. **The engine feeds it** (sfu). A recorded room registers an *egress tap* with the engine,
//!    like a subscriber that is not a peer: for every audio packet the engine already
//!    decrypted from a publisher of that room, it hands over [`Input::Packet`] with the
//!    publisher's identity, the track id and an [`RtpPacket`] (SSRC, sequence number,
//!    timestamp, marker, payload), before any rewriting for subscribers. The tap is a bounded
//!    channel to one recorder task per node (packets dropped and counted when full, never
//!    blocking forwarding), so recording cannot add latency to listeners. With the engine's
//!    commands an enum (issue 16), this is one more command, `AddEgressTap { room, sender }`
//!    / `RemoveEgressTap`, and one more event stream.
//! 2. **Signaling feeds the rest**, from the events it already has: track published
//!    ([`Input::TrackPublished`]), muted / unmuted ([`Input::TrackMuted`],
//!    [`Input::TrackUnmuted`]), unpublished or participant left
//!    ([`Input::TrackUnpublished`]; a rejoin is a new publish, and a new SSRC in a packet is
//!    handled even without it), and the active-speaker changes it sends as `SpeakersChanged`
//!    ([`Input::Speaking`]). The room closing is [`Input::Stop`].
//! 3. **The recorder task** (a thin tokio shell, next to [`shell::FileSink`]) owns the node's
//!    [`Recorder`]: it feeds [`Recorder::handle_input`] with the room's events, sleeps until
//!    [`Recorder::poll_timeout`], drains [`Recorder::poll_output`] into one `FileSink` per
//!    egress under `<recordings dir>/<room>/<egress id>/`, and turns events into webhooks.
//!    [`Recorder::is_recording`] changes are what set or clear the room attribute that tells
//!    participants they are recorded. Beside the files it keeps a small manifest (the request, the start
//!    as wall-clock time); at startup, for every manifest without an end, it calls
//!    [`Egress::resume`] with the time elapsed since that start and
//!    [`shell::FileSink::existing`], so a crash or a redeploy costs the downtime only. It
//!    calls `FileSink::sync` every few seconds (and the sink syncs at the end).
//! 4. **Twirp `livekit.Egress`** (signaling, with the same auth as `RoomService`: a token with
//!    the `roomRecord` grant):
//!    - `StartRoomCompositeEgress`: `audio_only` must be true (else `invalid_argument`: video
//!      is not supported), one `file_outputs` entry (or the deprecated `file`) with
//!      `file_type` `OGG` or `DEFAULT_FILETYPE` (others `invalid_argument`), local storage
//!      only (an `s3`/`gcp`/`azure`/`aliOSS` upload → `unimplemented`), no stream, segment
//!      or image outputs (`unimplemented`). Becomes [`EgressKind::RoomComposite`]; `filepath`
//!      picks the mix's file name inside the configured directory (never outside it).
//!    - `StartTrackEgress`: `file` (`DirectFileOutput`) only, `websocket_url` →
//!      `unimplemented`; the track must be a published audio track (else `not_found` /
//!      `invalid_argument`). Becomes [`EgressKind::Track`].
//!    - `StopEgress`: [`Recorder::stop`]; [`RecorderError::NotFound`] → `not_found`,
//!      [`RecorderError::Ended`] → `failed_precondition`, as LiveKit answers.
//!    - Start errors: [`RecorderError::AlreadyExists`] → `already_exists`,
//!      [`RecorderError::TooMany`] → `resource_exhausted`.
//!    - `ListEgress` (`room_name`, `egress_id`, `active` filters): [`Recorder::list`] and
//!      [`Recorder::info`].
//!    - `EgressInfo` mapping: `status` from [`EgressState::livekit_status`] (`Starting` →
//!      `EGRESS_STARTING`, `Active` → `EGRESS_ACTIVE`, `Complete` → `EGRESS_COMPLETE`,
//!      `Failed` → `EGRESS_FAILED` with `error`); `room_name`, `egress_id` and the request kind
//!      from [`EgressInfo`]; `file_results` from [`FileInfo`] (`filename` from
//!      [`shell::file_name`], `size` = bytes, `duration`); `started_at` / `ended_at` are wall
//!      clock, which the shell records (the core has only `Instant`s).
//!    - Webhooks: [`EgressEvent::Started`] → `egress_started`, [`EgressEvent::Active`] →
//!      `egress_updated`, [`EgressEvent::Ended`] → `egress_ended`, each with the
//!      `EgressInfo`.
//! 5. **Control** starts and stops room recordings for hosts through its `RoomService`-shaped
//!    interface (extended with the egress calls), sets the room attribute that tells every
//!    SDK the room is recorded, and serves replays and clips from the files: range requests
//!    on the Ogg files, [`speaking::spans`] for the timeline, [`clip::cut`] for clips (whose
//!    errors map to 4xx: [`clip::ClipError::PastEnd`] → 416 or 400, `Empty` → 400).

#![deny(missing_docs)]
#![forbid(unsafe_code)]
// The docs link the file shell, which only the `fs` feature builds.
#![cfg_attr(not(feature = "fs"), allow(rustdoc::broken_intra_doc_links))]

pub mod clip;
mod clock;
mod egress;
pub mod limiter;
pub mod mix;
pub mod ogg;
pub mod ogg_opus;
pub mod packet;
mod recorder;
mod rtp;
pub mod speaking;
pub mod track;

#[cfg(feature = "fs")]
pub mod shell;

pub use egress::{
    Artifact, Egress, EgressConfig, EgressError, EgressEvent, EgressInfo, EgressKind, EgressState,
    FileInfo, Input, Output, TrackFiles,
};
pub use mix::{MixConfig, MixError, MixStats, RoomMixer};
pub use ogg_opus::{OpusStream, Pcm, ReadError, decode};
pub use recorder::{Recorder, RecorderError, RecorderLimits};
pub use rtp::{RtpPacket, Ssrc};
pub use track::{TrackRecorder, TrackStats};
