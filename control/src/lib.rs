//! `stoa-control`: Stoa's control plane, the audio-room application.
//!
//! This crate owns rooms and their lifecycle (scheduled, live, ended, archived), roles (host,
//! co-host, speaker, listener), raised hands, speaker modes, moderation (mute, hard mute, remove,
//! kick with cooldown, ban), the store behind one trait (embedded for a single node, Redis for
//! several), the REST API and its events. It sees the media plane only through a
//! LiveKit-`RoomService`-shaped interface and the access-token types, never through
//! `stoa-signaling` or `stoa-sfu` directly.
//!
//! Not implemented yet: the crate holds no code beyond this description.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
