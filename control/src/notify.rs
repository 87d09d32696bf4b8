//! Notifications: a room going live reaches its followers and its host's followers, a
//! reminder reaches those who asked ("remind me" = following the room), each as an entry of
//! the user's feed (`GET /api/me/notifications`) and, while they are connected, a message on
//! their `/api/events` stream.
//!
//! The fan-out never runs inside a request: the instance that ran the command queues a job
//! (bounded; a full queue drops the job and counts it), and one task pages through the
//! followers ([`FOLLOWER_PAGE`] at a time), writes each page's feed entries in one store call
//! and puts them on the bus, whose consumers hand each entry to the recipient's streams on
//! their instance (a map lookup per recipient, not a scan of every stream).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::error::ControlError;
use crate::events::{BusMessage, Event};
use crate::model::{RoomId, UserId};
use crate::store::{Follow, Store};

/// Most entries a user's feed keeps (the oldest go first).
pub const MAX_FEED: usize = 200;
/// Followers read and notified per store call.
pub const FOLLOWER_PAGE: usize = 500;
/// Fan-out jobs waiting; more are dropped and counted.
pub const QUEUE: usize = 1024;
/// Notifications buffered per connected stream; a stream that falls behind loses the
/// excess (its feed keeps everything).
pub const STREAM_BUFFER: usize = 64;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A room you follow, or a host you follow, went live.
    RoomLive,
    /// A room you asked to be reminded of starts soon.
    Reminder,
}

/// One entry of a user's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Unique within the feed.
    pub id: String,
    /// Unix ms it was made.
    pub at: u64,
    /// Live or reminder.
    pub kind: NotificationKind,
    /// The room.
    pub room: RoomId,
    /// Its title.
    pub title: String,
    /// Its host.
    pub host: UserId,
    /// Unix ms it is scheduled for (reminders).
    pub scheduled_for: Option<u64>,
}

impl Notification {
    /// The notification an event calls for, if any, made at `now`.
    pub fn of(event: &Event, now: u64) -> Option<(Notification, Vec<Follow>)> {
        // A private room's going live is news only to those who follow the room itself (who
        // could see it when they followed it), not to everyone who follows its host.
        let mut private_room = false;
        let (kind, room, title, host, scheduled_for) = match event {
            Event::RoomLive {
                room,
                title,
                host,
                private,
            } => {
                private_room = *private;
                (NotificationKind::RoomLive, room, title, host, None)
            }
            Event::Reminder {
                room,
                title,
                host,
                scheduled_for,
            } => (
                NotificationKind::Reminder,
                room,
                title,
                host,
                *scheduled_for,
            ),
            _ => return None,
        };
        let mut audience = vec![Follow::Room(room.clone())];
        if kind == NotificationKind::RoomLive && !private_room {
            audience.push(Follow::User(host.clone()));
        }
        let kind_name = match kind {
            NotificationKind::RoomLive => "live",
            NotificationKind::Reminder => "reminder",
        };
        Some((
            Notification {
                id: format!("{now}-{room}-{kind_name}"),
                at: now,
                kind,
                room: room.clone(),
                title: title.clone(),
                host: host.clone(),
                scheduled_for,
            },
            audience,
        ))
    }
}

/// A fan-out to do: one notification to the followers of each of `audience`.
#[derive(Debug, Clone)]
pub struct Job {
    /// The notification.
    pub notification: Notification,
    /// Whose followers receive it (a room, its series, its host).
    pub audience: Vec<Follow>,
    /// Never notified (the host of their own room going live).
    pub except: Option<UserId>,
}

/// Connected `/api/events` streams by user, on this instance.
#[derive(Debug, Default)]
pub struct Streams {
    by_user: Mutex<HashMap<UserId, Vec<mpsc::Sender<Notification>>>>,
    /// Streams opened so far: every [`SWEEP_EVERY`]th open forgets every closed stream, so
    /// that users who came once and never heard anything do not stay in the map.
    opened: std::sync::atomic::AtomicU64,
}

/// How often (in opened streams) [`Streams::open`] forgets closed streams.
const SWEEP_EVERY: u64 = 256;

impl Streams {
    /// Registers a stream of `user`'s notifications.
    pub fn open(&self, user: &UserId) -> mpsc::Receiver<Notification> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let mut map = self
            .by_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = self
            .opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % SWEEP_EVERY == SWEEP_EVERY - 1 {
            map.retain(|_, list| {
                list.retain(|s| !s.is_closed());
                !list.is_empty()
            });
        }
        let list = map.entry(user.clone()).or_default();
        list.retain(|s| !s.is_closed());
        list.push(tx);
        rx
    }

    /// Users with a stream registered here (open, or closed and not yet forgotten).
    pub fn users(&self) -> usize {
        self.by_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Hands `n` to each of `users`' open streams here.
    pub fn deliver(&self, users: &[UserId], n: &Notification) {
        let mut map = self
            .by_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for u in users {
            let Some(list) = map.get_mut(u) else {
                continue;
            };
            list.retain(|s| !s.is_closed());
            for s in list.iter() {
                if s.try_send(n.clone()).is_err() {
                    metrics::counter!(crate::telemetry::NOTIFICATIONS_DROPPED, "where" => "stream")
                        .increment(1);
                }
            }
            if list.is_empty() {
                map.remove(u);
            }
        }
    }
}

/// Queues fan-out jobs for the task started by [`spawn`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Fanout {
    tx: mpsc::Sender<Job>,
}

impl Fanout {
    /// Queues a job; never waits. A full queue drops it (counted).
    pub fn queue(&self, job: Job) {
        if self.tx.try_send(job).is_err() {
            metrics::counter!(crate::telemetry::NOTIFICATIONS_DROPPED, "where" => "queue")
                .increment(1);
            tracing::warn!("notification queue full; a fan-out was dropped");
        }
    }
}

/// Starts the fan-out task on `store`, publishing each page of recipients on the bus as
/// `origin`.
pub fn spawn(store: Arc<dyn Store>, origin: String) -> Fanout {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            if let Err(e) = fan_out(&*store, &origin, &job).await {
                tracing::warn!(room = %job.notification.room, error = %e, "notification fan-out failed");
            }
        }
    });
    Fanout { tx }
}

/// Notifies the followers of every follow in `job.audience`, a page at a time; a follower of
/// several (the room and its host) is notified once.
pub async fn fan_out(store: &dyn Store, origin: &str, job: &Job) -> Result<usize, ControlError> {
    let mut done: BTreeSet<UserId> = BTreeSet::new();
    for what in &job.audience {
        let mut after: Option<UserId> = None;
        loop {
            let page = store.followers(what, after.as_ref(), FOLLOWER_PAGE).await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            let fresh: Vec<UserId> = page
                .into_iter()
                .filter(|u| Some(u) != job.except.as_ref() && done.insert(u.clone()))
                .collect();
            if !fresh.is_empty() {
                store.push_notification(&fresh, &job.notification).await?;
                metrics::counter!(crate::telemetry::NOTIFICATIONS).increment(fresh.len() as u64);
                store
                    .publish(&BusMessage {
                        origin: origin.to_owned(),
                        media: Vec::new(),
                        events: Vec::new(),
                        notices: vec![(fresh, job.notification.clone())],
                        moved: Vec::new(),
                        presence: Vec::new(),
                    })
                    .await?;
            }
            after = Some(last);
        }
    }
    Ok(done.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    fn notice(at: u64) -> Notification {
        Notification {
            id: format!("{at}"),
            at,
            kind: NotificationKind::RoomLive,
            room: RoomId::random(),
            title: "T".into(),
            host: uid("h"),
            scheduled_for: None,
        }
    }

    #[test]
    fn streams_get_their_users_notifications_and_closed_ones_are_forgotten() {
        let streams = Streams::default();
        let mut a = streams.open(&uid("a"));
        let mut a2 = streams.open(&uid("a"));
        let mut b = streams.open(&uid("b"));
        streams.deliver(&[uid("a")], &notice(1));
        assert_eq!(a.try_recv().unwrap().at, 1);
        assert_eq!(a2.try_recv().unwrap().at, 1);
        assert!(b.try_recv().is_err(), "not b's");
        // A stream that falls behind loses the excess, never blocks.
        for at in 0..(STREAM_BUFFER as u64 + 10) {
            streams.deliver(&[uid("b")], &notice(at));
        }
        let mut got = 0;
        while b.try_recv().is_ok() {
            got += 1;
        }
        assert_eq!(got, STREAM_BUFFER);
        // Users whose streams closed go, at the latest after SWEEP_EVERY opens.
        drop((a, a2, b));
        for i in 0..SWEEP_EVERY {
            drop(streams.open(&uid(&format!("u{i}"))));
        }
        // (The sweep ran at the 256th open; the three opened since are still there.)
        assert!(streams.users() <= 4, "{}", streams.users());
    }
}
