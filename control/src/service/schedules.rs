//! What runs by the clock: scheduled rooms' reminders, auto-starts and expiries, the next
//! occurrence of a recurring room, and the idle rules of live rooms. Each takes `now`.

use super::*;

impl Control {
    /// Schedules the next occurrence of a recurring room that just ended or expired: a new
    /// room with the same description, schedule, line-up and invitees (a private series stays
    /// open to those invited to it), in the same series.
    pub(super) async fn schedule_next(
        &self,
        ended: &RoomDoc,
    ) -> Result<Option<RoomId>, ControlError> {
        let now = now_ms();
        let Some(at) = crate::schedule::next_occurrence(&ended.room, now)? else {
            return Ok(None);
        };
        let store = &self.inner.store;
        let lineup = store.lineup(&ended.room.id, model::MAX_LINEUP).await?;
        let invited = store.invited(&ended.room.id, model::MAX_INVITED).await?;
        let mut doc = RoomDoc::new(Room {
            id: RoomId::random(),
            state: RoomState::Scheduled,
            created_at: now,
            scheduled_for: Some(at),
            started_at: None,
            ended_at: None,
            empty_since: None,
            reminded: false,
            // `recording` was cleared when the room ended; the series' wish was kept.
            recording: ended.room.record_from_start,
            series: Some(
                ended
                    .room
                    .series
                    .clone()
                    .unwrap_or_else(|| ended.room.id.clone()),
            ),
            ..ended.room.clone()
        });
        doc.lineup = lineup.into_iter().collect();
        doc.invited = invited.into_iter().collect();
        let host = &doc.room.host;
        if let Some(name) = ended.stats.names.get(host) {
            doc.stats.names.insert(host.clone(), name.clone());
        }
        store.insert_room(&doc).await?;
        let id = doc.room.id.clone();
        let events = vec![Event::RoomCreated {
            room: id.clone(),
            title: doc.room.title.clone(),
            scheduled_for: doc.room.scheduled_for,
            private: doc.room.private,
        }];
        self.announce(&events, doc.room.series.as_ref());
        self.publish(Effects {
            events,
            ..Default::default()
        })
        .await?;
        tracing::info!(room = %id, previous = %ended.room.id, "next occurrence scheduled");
        Ok(Some(id))
    }

    /// Applies the idle rules of live rooms at `now`: mutes whoever on stage has been silent
    /// past their room's `mute_after`, and moves speakers silent past `audience_after` back
    /// to the audience. Returns how many members it acted on.
    pub async fn run_idle(&self, now: u64) -> Result<usize, ControlError> {
        let rooms = self.rooms(&[RoomState::Live]).await?;
        Ok(self.idle_rooms(&rooms, now).await)
    }

    pub(super) async fn idle_rooms(&self, rooms: &[RoomDoc], now: u64) -> usize {
        let mut acted = 0;
        for doc in rooms {
            let due = room::idle_due(doc, now);
            if due.is_empty() {
                continue;
            }
            let id = &doc.room.id;
            let n = due.len();
            match self
                .act_at(&Actor::System, id, Command::Idle(due), now)
                .await
            {
                Ok(_) => acted += n,
                Err(e) => tracing::warn!(room = %id, error = %e, "idle rules not applied"),
            }
        }
        acted
    }

    /// The schedule rules in force.
    pub fn schedule_rules(&self) -> crate::schedule::Rules {
        self.inner.config.schedule_rules()
    }

    /// Acts on scheduled rooms whose time has come (at `now`): reminders, auto-starts,
    /// expiries. Returns how many rooms it acted on.
    pub async fn run_schedules(&self, now: u64) -> Result<usize, ControlError> {
        let rules = self.schedule_rules();
        let mut acted = 0;
        for doc in self.rooms(&[RoomState::Scheduled]).await? {
            let id = &doc.room.id;
            let command = match crate::schedule::due(&doc.room, now, &rules) {
                None => continue,
                Some(crate::schedule::Due::Remind) => Command::Remind,
                Some(crate::schedule::Due::Start) => Command::Start,
                Some(crate::schedule::Due::Expire) => {
                    tracing::info!(room = %id, "scheduled room expired unstarted");
                    Command::End
                }
            };
            match self.act(&Actor::System, id, command).await {
                Ok(_) => acted += 1,
                Err(e) => tracing::warn!(room = %id, error = %e, "schedule not applied"),
            }
        }
        Ok(acted)
    }
}
