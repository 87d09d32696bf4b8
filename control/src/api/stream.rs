//! `GET /api/events`: the event stream, each event filtered through the room view's visibility
//! rule for its subscriber, with the subscriber's own notifications.

use super::*;

/// `GET /api/events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Only this room's events.
    pub room: Option<String>,
    /// Only the caller's own notifications, no room events (a signed-in app's bell).
    pub notifications_only: Option<bool>,
    /// The bearer token (browsers cannot set headers on WebSockets).
    pub access_token: Option<String>,
}

#[utoipa::path(get, path = "/api/events", params(EventsQuery),
    responses((status = 101, description = "WebSocket of JSON events: each filtered through the room view's visibility rule for the caller", body = Event),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn events(
    State(c): State<Control>,
    caller: Caller,
    Params(q): Params<EventsQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ControlError> {
    let room = q.room.as_deref().map(room_id).transpose()?;
    if let Some(id) = &room {
        // Subscribing to a room needs the right to see it.
        let doc = c
            .room_in(id, &Scope::users(caller.viewer().cloned()))
            .await?;
        if !view::may_see(&doc, caller.viewer()) {
            return Err(ControlError::not_found("room", id.as_str()));
        }
    }
    let rx = (q.notifications_only != Some(true)).then(|| c.events());
    // A user's stream also carries their own notifications (`{"type": "notification", …}`).
    let mine = caller.viewer().map(|u| c.notification_stream(u));
    let viewer = caller.viewer().cloned();
    let filter = EventFilter {
        control: c,
        viewer,
        sights: std::collections::HashMap::new(),
    };
    Ok(ws
        .max_message_size(MAX_BODY)
        .on_upgrade(move |socket| stream_events(socket, rx, room, mine, filter)))
}

/// A notification as the event stream carries it.
#[derive(Debug, Serialize)]
struct NotificationEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    notification: &'a crate::notify::Notification,
}

/// How long a subscriber's sight of a room is trusted before it is read again.
const SIGHT_TTL_MS: u64 = 2_000;
/// Rooms whose sight one subscriber remembers.
const SIGHTS_KEPT: usize = 256;

/// One subscriber's view of the event stream: every event passes [`view::sees`] with the
/// subscriber's [`view::Sight`] of its room, read from the store (the viewer's own record) and
/// remembered for [`SIGHT_TTL_MS`]: someone who just joined a room may miss its events for that
/// long (a room's end is always looked at afresh).
struct EventFilter {
    control: Control,
    /// `None`: a server token, which sees everything.
    viewer: Option<UserId>,
    /// Sight per room and the unix ms it was read.
    sights: std::collections::HashMap<RoomId, (view::Sight, bool, u64)>,
}

impl EventFilter {
    async fn admits(&mut self, e: &Event) -> bool {
        let Some(viewer) = self.viewer.clone() else {
            return true;
        };
        if !view::in_room(e) {
            return true;
        }
        let room = event_room(e).clone();
        if matches!(e, Event::RoomEnded { .. }) {
            // A room ends once: its last word is worth a fresh look.
            self.sights.remove(&room);
        }
        let (sight, knows) = match self.sights.get(&room) {
            Some(&(sight, knows, at)) if now_ms().saturating_sub(at) < SIGHT_TTL_MS => {
                (sight, knows)
            }
            _ => {
                let (sight, knows) = match self
                    .control
                    .room_in(&room, &Scope::users([viewer.clone()]))
                    .await
                {
                    Ok(doc) => (
                        view::sight(&doc, Some(&viewer)),
                        view::may_see(&doc, Some(&viewer)),
                    ),
                    Err(_) => (view::Sight::Outsider, false),
                };
                if self.sights.len() >= SIGHTS_KEPT {
                    self.sights.clear();
                }
                self.sights.insert(room.clone(), (sight, knows, now_ms()));
                (sight, knows)
            }
        };
        let admitted = view::sees(sight, knows, Some(&viewer), e);
        // An event about the viewer may change what they see next.
        if matches!(e, Event::Hand { user, .. } | Event::Role { user, .. } | Event::Removed { user, .. } if *user == viewer)
        {
            self.sights.remove(&room);
        }
        admitted
    }
}

async fn stream_events(
    mut socket: WebSocket,
    mut rx: Option<tokio::sync::broadcast::Receiver<Event>>,
    room: Option<RoomId>,
    mut mine: Option<tokio::sync::mpsc::Receiver<crate::notify::Notification>>,
    mut filter: EventFilter,
) {
    loop {
        tokio::select! {
            Some(n) = async { match mine.as_mut() { Some(m) => m.recv().await, None => None } } => {
                let e = NotificationEvent { kind: "notification", notification: &n };
                let Ok(text) = serde_json::to_string(&e) else { continue };
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            },
            Some(event) = async { match rx.as_mut() { Some(r) => Some(r.recv().await), None => None } } => match event {
                Ok(e) => {
                    if room.as_ref().is_some_and(|r| event_room(&e) != r) {
                        continue;
                    }
                    if !filter.admits(&e).await {
                        continue;
                    }
                    let Ok(text) = serde_json::to_string(&e) else { continue };
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

fn event_room(e: &Event) -> &RoomId {
    match e {
        Event::RoomCreated { room, .. }
        | Event::RoomLive { room, .. }
        | Event::RoomEnded { room, .. }
        | Event::Audience { room, .. }
        | Event::Hand { room, .. }
        | Event::Role { room, .. }
        | Event::Muted { room, .. }
        | Event::Removed { room, .. }
        | Event::Reaction { room, .. }
        | Event::RoomEdited { room, .. }
        | Event::Reminder { room, .. }
        | Event::LineUp { room, .. }
        | Event::Idle { room, .. }
        | Event::Presence { room, .. }
        | Event::Recording { room, .. } => room,
    }
}
