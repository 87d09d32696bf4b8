//! Shared test support.
pub mod redis_server;

/// What the service tests share: the wall clock in unix ms, user ids, a started service.
#[allow(dead_code, reason = "not every test file uses every helper")]
pub mod service {
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use stoa_control::auth::{Keys, Principal};
    use stoa_control::media::NoMedia;
    use stoa_control::model::{RoomKind, SpeakerMode, UserId};
    use stoa_control::schedule::Schedule;
    use stoa_control::service::NewRoom;
    use stoa_control::store::Store;
    use stoa_control::{Control, ControlConfig};

    /// Unix ms now.
    pub fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64
    }

    /// A user id.
    pub fn uid(s: &str) -> UserId {
        UserId::parse(s).expect("user id")
    }

    /// The service on `store` with the default settings and no media plane.
    pub fn start(store: Arc<dyn Store>) -> Control {
        let keys = Keys::new(vec![("k".into(), "s".into())]).expect("keys");
        Control::start(store, Arc::new(NoMedia), keys, ControlConfig::default())
    }

    /// Hana, the host of the rooms these tests create.
    pub fn host() -> Principal {
        Principal::User {
            id: uid("hana"),
            name: "Hana".into(),
        }
    }

    /// A stage room titled `title`, live at once unless scheduled.
    pub fn new_room(title: &str, scheduled_for: Option<u64>, schedule: Schedule) -> NewRoom {
        NewRoom {
            title: title.into(),
            topic: String::new(),
            description: String::new(),
            kind: RoomKind::Stage,
            speaker_mode: SpeakerMode::Everyone,
            max_participants: None,
            scheduled_for,
            host: None,
            schedule,
            private: false,
            listener_data: false,
            recording: false,
            idle: Default::default(),
        }
    }
}
