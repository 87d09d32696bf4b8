//! `stoa-control`: Stoa's control plane, the audio-room application.
//!
//! This crate owns rooms and their lifecycle (scheduled, live, ended, archived), roles (host,
//! co-host, speaker, listener), raised hands, speaker modes, moderation (mute, hard mute, kick
//! with cooldown, ban), follows and invitations, analytics, the store behind one trait
//! (embedded for a single node, Redis for several), the REST API and its event stream. It sees
//! the media plane only through a LiveKit-`RoomService`-shaped interface ([`media::MediaPlane`])
//! and LiveKit's access-token types, never through `stoa-signaling` or `stoa-sfu` directly.
//!
//! Layers, inside out:
//! - [`permission`]: the permission matrix (pure);
//! - [`room`]: the room state machine, one command on one [`model::RoomDoc`] with `now` passed
//!   in, returning the effects on the media plane and event stream (pure, deterministic);
//! - [`store`]: the trait and its embedded and Redis implementations;
//! - [`service`]: runs commands against the store and carries effects to every instance;
//! - [`api`]: the REST API, its OpenAPI document and the `/api/events` WebSocket.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
mod clock;
pub mod config;
pub mod drain;
pub mod error;
pub mod events;
pub mod media;
pub mod model;
pub mod nodes;
pub mod notify;
pub mod permission;
pub mod placement;
pub mod replay;
pub mod room;
pub mod schedule;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod view;
pub mod webhook;

pub use config::{ControlConfig, RoomCreators, StoreKind};
pub use error::ControlError;
pub use service::Control;

use std::sync::Arc;

/// Opens the configured store.
pub async fn open_store(config: &ControlConfig) -> Result<Arc<dyn store::Store>, ControlError> {
    Ok(match config.store {
        StoreKind::Embedded => Arc::new(store::embedded::EmbeddedStore::open(
            &config.data_dir.join("control.redb"),
        )?),
        StoreKind::Redis => Arc::new(
            store::redis::RedisStore::connect(&config.redis_url, &config.redis_prefix).await?,
        ),
    })
}
