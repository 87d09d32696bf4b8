//! `stoa-signaling`: Stoa's LiveKit-compatible media-side signaling.
//!
//! This crate owns the LiveKit wire protocol spoken on the `/rtc` WebSocket, access tokens and
//! their grants, participant sessions, the media-side rooms (participants, tracks, permissions,
//! attributes and metadata), the Twirp `RoomService` and `Egress` servers that unmodified
//! LiveKit server SDKs call (`Egress` behind a backend the binary provides), and signed
//! webhooks. It drives the media engine in `stoa-sfu` with commands and consumes
//! its events; it knows nothing about hands, followers or other control-plane concepts.
//!
//! - [`proto`] is the sans-IO core: every room and session of a node as one deterministic
//!   state machine, fed with `now` and inputs, polled for outputs (messages to clients, engine
//!   commands, webhook events, timeouts).
//! - `service` (feature `runtime`) is its tokio shell: one task moving bytes and timers between
//!   the core, the clients' WebSockets (`ws`), the engine and the webhook notifier.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

#[cfg(feature = "runtime")]
pub mod cluster;
#[cfg(feature = "runtime")]
pub mod egress;
pub mod join;
pub mod proto;
pub mod redact;
pub mod room;
#[cfg(feature = "runtime")]
pub mod service;
#[cfg(feature = "sim")]
pub mod sim;
pub mod token;
#[cfg(feature = "runtime")]
pub mod twirp;
#[cfg(feature = "runtime")]
pub mod webhook;
#[cfg(feature = "runtime")]
pub mod ws;
