//! Schedules: when a scheduled room may be opened by its host, when its followers are reminded,
//! when it starts by itself, when it expires unstarted, and when a recurring room's next
//! occurrence is. Pure and deterministic: every function takes `now` (unix ms); the sweeper in
//! [`crate::service`] acts on what [`due`] says.
//!
//! A recurrence is days of the week and a local time in an IANA time zone ("every Tuesday and
//! Thursday at 20:00 in Europe/Paris"): occurrences follow the zone's clock across daylight
//! saving changes (20:00 stays 20:00 local; a local time that does not exist on the day the
//! clocks go forward is taken as the same distance past the gap, a repeated one as its first
//! instance). The zone database is built into the binary (jiff's bundled tzdb), so hosts without
//! `/usr/share/zoneinfo` compute the same times.

use jiff::civil::Weekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ControlError;
use crate::model::{Room, RoomState};

/// A day of the week.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Day {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// When a recurring room happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    /// Days of the week, at least one.
    pub days: Vec<Day>,
    /// Local time of day, `HH:MM` (24 h).
    pub time: String,
    /// IANA time zone of `time`, e.g. `Europe/Paris`.
    pub time_zone: String,
}

/// How a scheduled room behaves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Go live by itself at the scheduled time (else the host starts it).
    #[serde(default)]
    pub auto_start: bool,
    /// Repeat: each occurrence, ended or expired, schedules the next one as a new room.
    #[serde(default)]
    pub repeat: Option<Recurrence>,
}

/// The operator's timing rules (from `[control]`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// How long before its time the host may start a scheduled room.
    pub open_window_ms: u64,
    /// How long before its time followers are reminded; 0: no reminders.
    pub reminder_ms: u64,
    /// How long after its time an unstarted room expires.
    pub expiry_ms: u64,
}

/// What a scheduled room needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Remind those who asked.
    Remind,
    /// Go live (auto-start).
    Start,
    /// End it: it was not started in time.
    Expire,
}

impl Recurrence {
    /// Checks the recurrence: days, `HH:MM`, a known time zone.
    pub fn validate(&self) -> Result<(), ControlError> {
        let bad = |m: String| ControlError::bad_request("invalid_schedule", m);
        if self.days.is_empty() || self.days.len() > 7 {
            return Err(bad("repeat.days names 1 to 7 days (mon … sun)".into()));
        }
        self.hour_minute()?;
        self.zone()?;
        Ok(())
    }

    fn hour_minute(&self) -> Result<(i8, i8), ControlError> {
        let parsed = self.time.split_once(':').and_then(|(h, m)| {
            let ok = h.len() == 2 && m.len() == 2;
            let (h, m) = (h.parse::<i8>().ok()?, m.parse::<i8>().ok()?);
            (ok && (0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
        });
        parsed.ok_or_else(|| {
            ControlError::bad_request(
                "invalid_schedule",
                format!(
                    "repeat.time must be HH:MM, 00:00 to 23:59 (got {:?})",
                    self.time
                ),
            )
        })
    }

    fn zone(&self) -> Result<TimeZone, ControlError> {
        TimeZone::get(&self.time_zone).map_err(|_| {
            ControlError::bad_request(
                "invalid_schedule",
                format!(
                    "repeat.time_zone {:?} is not an IANA time zone (e.g. Europe/Paris)",
                    self.time_zone
                ),
            )
        })
    }

    /// The first occurrence at or after `after` (unix ms).
    pub fn next(&self, after: u64) -> Result<u64, ControlError> {
        let (hour, minute) = self.hour_minute()?;
        let tz = self.zone()?;
        let unavailable = |e: jiff::Error| ControlError::unavailable(format!("schedule: {e}"));
        let after_ms = i64::try_from(after).unwrap_or(i64::MAX);
        let start = Timestamp::from_millisecond(after_ms).map_err(unavailable)?;
        let today = start.to_zoned_datetime(tz.clone()).date();
        for offset in 0..=7 {
            let day = today.checked_add(offset.days()).map_err(unavailable)?;
            if !self.days.iter().any(|d| d.weekday() == day.weekday()) {
                continue;
            }
            let at = day
                .at(hour, minute, 0, 0)
                .to_zoned_datetime(tz.clone())
                .map_err(unavailable)?
                .timestamp()
                .as_millisecond();
            if at >= after_ms {
                return u64::try_from(at).map_err(|_| ControlError::unavailable("schedule: date"));
            }
        }
        Err(ControlError::unavailable(
            "schedule: no occurrence in a week",
        ))
    }
}

/// What room `room` needs at `now`, if anything: expiry first, then auto-start, then the
/// reminder (unless it went out for the current time already).
pub fn due(room: &Room, now: u64, rules: &Rules) -> Option<Due> {
    if room.state != RoomState::Scheduled {
        return None;
    }
    let at = room.scheduled_for?;
    if now >= at.saturating_add(rules.expiry_ms) {
        return Some(Due::Expire);
    }
    if room.schedule.auto_start && now >= at {
        return Some(Due::Start);
    }
    if !room.reminded && rules.reminder_ms > 0 && now.saturating_add(rules.reminder_ms) >= at {
        return Some(Due::Remind);
    }
    None
}

/// Whether the host may start `room` at `now`: unscheduled, or within the window before its
/// time (or later).
pub fn may_open(room: &Room, now: u64, rules: &Rules) -> bool {
    room.scheduled_for
        .is_none_or(|at| now.saturating_add(rules.open_window_ms) >= at)
}

/// The next occurrence of a recurring `room` once the current one is over at `now`: the first
/// after both its time and `now`. `None` for a one-off room.
pub fn next_occurrence(room: &Room, now: u64) -> Result<Option<u64>, ControlError> {
    let Some(repeat) = &room.schedule.repeat else {
        return Ok(None);
    };
    let after = room.scheduled_for.unwrap_or(0).max(now).saturating_add(1);
    repeat.next(after).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RoomDoc, RoomId, RoomKind, SpeakerMode, UserId};

    /// Unix ms of a UTC date-time.
    fn utc(s: &str) -> u64 {
        let ts: Timestamp = s.parse().unwrap_or_else(|e| panic!("{s}: {e}"));
        u64::try_from(ts.as_millisecond()).unwrap_or_default()
    }

    fn weekly(days: &[Day], time: &str, tz: &str) -> Recurrence {
        Recurrence {
            days: days.to_vec(),
            time: time.into(),
            time_zone: tz.into(),
        }
    }

    fn room(at: Option<u64>, schedule: Schedule) -> Room {
        let mut doc = RoomDoc::new(Room {
            id: RoomId::parse("aaaaaaaaaaaaaaaa").unwrap_or_else(|_| panic!("id")),
            title: "Weekly".into(),
            topic: String::new(),
            description: String::new(),
            kind: RoomKind::Stage,
            speaker_mode: SpeakerMode::Everyone,
            max_participants: 10,
            host: UserId::parse("host").unwrap_or_else(|_| panic!("user")),
            created_by: UserId::parse("host").unwrap_or_else(|_| panic!("user")),
            state: RoomState::Scheduled,
            created_at: 0,
            scheduled_for: at,
            started_at: None,
            ended_at: None,
            empty_since: None,
            media_url: None,
            schedule: Schedule::default(),
            reminded: false,
            private: false,
            listener_data: false,
            record_from_start: false,
            recording: false,
            series: None,
            idle: Default::default(),
        });
        doc.room.schedule = schedule;
        doc.room
    }

    fn reminded(r: &Room, reminded: bool) -> Room {
        Room {
            reminded,
            ..r.clone()
        }
    }

    const RULES: Rules = Rules {
        open_window_ms: 15 * 60_000,
        reminder_ms: 10 * 60_000,
        expiry_ms: 60 * 60_000,
    };

    #[test]
    fn weekly_occurrences_keep_local_time_across_dst() {
        // Europe/Paris leaves summer time on Sunday 2026-10-25: 20:00 local is 18:00 UTC
        // before, 19:00 UTC after.
        let r = weekly(&[Day::Sat, Day::Tue], "20:00", "Europe/Paris");
        let first = r.next(utc("2026-10-20T00:00:00Z")).unwrap();
        assert_eq!(first, utc("2026-10-20T18:00:00Z"), "Tuesday, summer time");
        let second = r.next(first + 1).unwrap();
        assert_eq!(
            second,
            utc("2026-10-24T18:00:00Z"),
            "Saturday, still summer"
        );
        let third = r.next(second + 1).unwrap();
        assert_eq!(third, utc("2026-10-27T19:00:00Z"), "Tuesday, winter time");
        // And into summer time again (2027-03-28).
        let r = weekly(&[Day::Sun], "10:30", "Europe/Paris");
        assert_eq!(
            r.next(utc("2027-03-27T12:00:00Z")).unwrap(),
            utc("2027-03-28T08:30:00Z")
        );
        // New York's change (2026-11-01) moves the UTC time the other way.
        let r = weekly(&[Day::Mon], "09:00", "America/New_York");
        assert_eq!(
            r.next(utc("2026-10-26T00:00:00Z")).unwrap(),
            utc("2026-10-26T13:00:00Z")
        );
        assert_eq!(
            r.next(utc("2026-10-27T00:00:00Z")).unwrap(),
            utc("2026-11-02T14:00:00Z")
        );
    }

    #[test]
    fn a_time_inside_the_spring_gap_is_taken_past_it() {
        // 02:30 does not exist in Paris on 2027-03-28 (02:00 → 03:00).
        let r = weekly(&[Day::Sun], "02:30", "Europe/Paris");
        assert_eq!(
            r.next(utc("2027-03-27T00:00:00Z")).unwrap(),
            utc("2027-03-28T01:30:00Z")
        );
    }

    #[test]
    fn the_same_day_counts_when_the_time_is_still_ahead() {
        let r = weekly(&[Day::Wed], "12:00", "UTC");
        // Wednesday 2026-12-02.
        assert_eq!(
            r.next(utc("2026-12-02T11:59:00Z")).unwrap(),
            utc("2026-12-02T12:00:00Z")
        );
        assert_eq!(
            r.next(utc("2026-12-02T12:00:00.001Z")).unwrap(),
            utc("2026-12-09T12:00:00Z")
        );
    }

    #[test]
    fn bad_recurrences_are_refused_with_reasons() {
        assert!(
            weekly(&[Day::Mon], "20:00", "Europe/Paris")
                .validate()
                .is_ok()
        );
        for (r, what) in [
            (weekly(&[], "20:00", "UTC"), "days"),
            (weekly(&[Day::Mon], "24:00", "UTC"), "time"),
            (weekly(&[Day::Mon], "8:00", "UTC"), "time"),
            (weekly(&[Day::Mon], "20:00", "Mars/Olympus"), "time_zone"),
        ] {
            let e = r.validate().unwrap_err();
            assert_eq!(e.code, "invalid_schedule");
            assert!(e.message.contains(what), "{}", e.message);
        }
    }

    #[test]
    fn a_scheduled_room_is_reminded_started_and_expired_in_order() {
        let at = 1_000_000_000;
        let manual = room(Some(at), Schedule::default());
        let min = 60_000;
        assert_eq!(due(&reminded(&manual, false), at - 11 * min, &RULES), None);
        assert_eq!(
            due(&reminded(&manual, false), at - 10 * min, &RULES),
            Some(Due::Remind)
        );
        assert_eq!(due(&reminded(&manual, true), at - 10 * min, &RULES), None);
        // Without auto-start it waits for the host until it expires.
        assert_eq!(due(&reminded(&manual, true), at + 59 * min, &RULES), None);
        assert_eq!(
            due(&reminded(&manual, true), at + 60 * min, &RULES),
            Some(Due::Expire)
        );
        let auto = room(
            Some(at),
            Schedule {
                auto_start: true,
                repeat: None,
            },
        );
        assert_eq!(due(&reminded(&auto, true), at - 1, &RULES), None);
        assert_eq!(due(&reminded(&auto, true), at, &RULES), Some(Due::Start));
        // Expired wins over starting hours late (the sweeper was down).
        assert_eq!(
            due(&reminded(&auto, false), at + 61 * min, &RULES),
            Some(Due::Expire)
        );
        let mut live = auto.clone();
        live.state = RoomState::Live;
        assert_eq!(due(&reminded(&live, false), at, &RULES), None);
        let no_reminders = Rules {
            reminder_ms: 0,
            ..RULES
        };
        assert_eq!(due(&reminded(&manual, false), at - 1, &no_reminders), None);
    }

    #[test]
    fn the_host_opens_within_the_window() {
        let at = 1_000_000_000;
        let r = room(Some(at), Schedule::default());
        assert!(!may_open(&r, at - 16 * 60_000, &RULES));
        assert!(may_open(&r, at - 15 * 60_000, &RULES));
        assert!(may_open(&r, at + 1, &RULES));
        assert!(may_open(&room(None, Schedule::default()), 0, &RULES));
    }

    #[test]
    fn a_recurring_room_has_a_next_occurrence_and_a_one_off_none() {
        let tuesday = utc("2026-12-01T18:00:00Z");
        let r = room(
            Some(tuesday),
            Schedule {
                auto_start: false,
                repeat: Some(weekly(&[Day::Tue], "19:00", "Europe/Paris")),
            },
        );
        // Ended during the occurrence: the next week.
        assert_eq!(
            next_occurrence(&r, tuesday + 3_600_000).unwrap(),
            Some(utc("2026-12-08T18:00:00Z"))
        );
        // Expired weeks late (a node down): the next one after now, not one in the past.
        assert_eq!(
            next_occurrence(&r, utc("2026-12-20T00:00:00Z")).unwrap(),
            Some(utc("2026-12-22T18:00:00Z"))
        );
        assert_eq!(
            next_occurrence(&room(Some(tuesday), Schedule::default()), tuesday).unwrap(),
            None
        );
    }
}
