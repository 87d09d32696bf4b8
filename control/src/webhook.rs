//! Webhooks to the embedding app's backend for control-plane events: a room scheduled,
//! started, ended or edited; a member joined or left; a hand raised; a role changed; a
//! recording started, stopped or failed; a moderation action; every entry of a room's audit log (`control.audit`, the entry as
//! `GET /api/rooms/{id}/audit` shows it). So an app can send its own push notifications or e-mail.
//!
//! This module only says what happened, as a JSON body:
//!
//! ```json
//! {"event": "control.room_started", "id": "CW_…", "createdAt": 1767000000,
//!  "control": {"room": "…", "user": "…", "actor": "…", "title": "…", …}}
//! ```
//!
//! `event` is one of the names of [`Hook::event`], prefixed with `control.` so that it never
//! reads as one of the media plane's LiveKit events (whose `room_started` means a media room
//! was created); the details sit under `control`, a key LiveKit's `WebhookEvent` does not have,
//! so a LiveKit server SDK's receiver still checks the signature and parses the body. The
//! binary hands each body to a [`HookSink`]: the media plane's webhook notifier, which queues
//! it (bounded: a full queue drops it, counted in `signaling_webhook_events_total`), signs it
//! as LiveKit signs its webhooks (a JWT in `Authorization`, HS256 with the API secret,
//! `sha256` = the body's hash) and retries failed deliveries with backoff. One signer, one
//! queue, one set of receivers (`[webhook]`) for both planes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Where webhook bodies go: queued, signed and delivered by the binary's notifier. Never
/// waits.
pub trait HookSink: Send + Sync + std::fmt::Debug {
    /// Queues `body`, a JSON document whose `event` is `event`.
    fn deliver(&self, event: String, body: Vec<u8>);
}

/// A control-plane event as the webhook body's `control` object carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    /// `room_scheduled`, `room_created` (live at once, unscheduled), `room_started`,
    /// `room_ended`, `room_edited`, `member_joined`, `member_left`, `hand_raised`,
    /// `role_changed`, `moderation`, `audit` (each audit-log entry, `at` in Unix ms),
    /// `recording` (started or stopped; `error` when it failed by itself).
    #[serde(skip)]
    pub event: &'static str,
    /// The room.
    pub room: String,
    /// The member concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Who acted (moderation), if a user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Details: the title, the new role, the moderation action, the scheduled time.
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// The whole body.
#[derive(Serialize)]
struct Body<'a> {
    event: String,
    id: String,
    #[serde(rename = "createdAt")]
    created_at: u64,
    control: &'a Hook,
}

/// Turns control-plane events into webhook bodies for a [`HookSink`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhooks {
    sink: Arc<dyn HookSink>,
    seq: Arc<AtomicU64>,
    instance: String,
}

impl Webhooks {
    /// Bodies go to `sink`; `instance` makes their ids unique across instances.
    pub fn new(sink: Arc<dyn HookSink>, instance: &str) -> Webhooks {
        Webhooks {
            sink,
            seq: Arc::new(AtomicU64::new(0)),
            instance: instance.to_owned(),
        }
    }

    /// Hands `hook`, made at `now` (unix ms), to the sink.
    pub fn send(&self, hook: &Hook, now: u64) {
        let (event, body) = body(
            hook,
            now,
            &self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed),
        );
        match body {
            Ok(body) => self.sink.deliver(event, body),
            Err(e) => tracing::warn!(error = %e, "cannot encode a control webhook"),
        }
    }
}

/// The event name and body of `hook` made at `now` (unix ms), the `seq`th of `instance`.
pub fn body(
    hook: &Hook,
    now: u64,
    instance: &str,
    seq: u64,
) -> (String, Result<Vec<u8>, serde_json::Error>) {
    let event = format!("control.{}", hook.event);
    let body = serde_json::to_vec(&Body {
        event: event.clone(),
        id: format!("CW_{instance}_{now}_{seq}"),
        created_at: now / 1000,
        control: hook,
    });
    (event, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_name_the_event_and_keep_details_under_control() {
        let mut data = serde_json::Map::new();
        data.insert("role".into(), "speaker".into());
        let hook = Hook {
            event: "role_changed",
            room: "r".into(),
            user: Some("u".into()),
            actor: None,
            data,
        };
        let (event, body) = body(&hook, 1_767_000_000_123, "inst", 7);
        assert_eq!(event, "control.role_changed");
        let v: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "event": "control.role_changed",
                "id": "CW_inst_1767000000123_7",
                "createdAt": 1_767_000_000,
                "control": {"room": "r", "user": "u", "role": "speaker"}
            })
        );
    }
}
