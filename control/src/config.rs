//! The control plane's settings (`[control]` in the config file).

use std::path::PathBuf;

use serde::Deserialize;

/// Where the control plane keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A file under `data_dir` (one node).
    Embedded,
    /// Redis at `redis_url` (several nodes).
    Redis,
}

/// Who may create rooms (`[control] room_creators`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomCreators {
    /// Anyone with a user token, guests included.
    Everyone,
    /// Users whose tokens the embedding app minted (not guests), and servers.
    Users,
    /// Only servers (an app backend with the API secret, creating rooms for its users).
    Servers,
}

/// The `[control]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// `embedded` or `redis`.
    pub store: StoreKind,
    /// Directory of the embedded store's file (`control.redb`).
    pub data_dir: PathBuf,
    /// Redis URL for the `redis` store.
    pub redis_url: String,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
    /// Seconds a live room may stay empty before it ends itself.
    pub empty_timeout: u64,
    /// Seconds after which an instance that stopped sending heartbeats counts as dead, and
    /// the members connected through it as gone.
    pub presence_ttl: u64,
    /// Seconds after which a node that stopped writing its registry record counts as dead:
    /// token requests send nobody there and its rooms move (its own heartbeat, three times per
    /// this, apart from the room sweep).
    pub node_ttl: u64,
    /// Seconds a kicked user may not rejoin.
    pub kick_cooldown: u64,
    /// Seconds a member's seat is held for them without a media connection: after they take
    /// their token, and after their session drops without `/leave`. Past it, a full room gives
    /// the seat to someone else (and the member must join again).
    pub seat_grace: u64,
    /// Lifetime of minted media tokens (seconds).
    pub token_ttl: u64,
    /// Lifetime of guest user tokens (seconds).
    pub user_token_ttl: u64,
    /// Longest (and default) lifetime of invitation links (seconds).
    pub invite_ttl: u64,
    /// Seconds an ended room (with its statistics, recordings and clips) is kept before it is
    /// deleted; 0 keeps ended rooms forever.
    pub ended_room_retention: u64,
    /// Largest room anyone may create.
    pub max_participants: u32,
    /// Seconds before its scheduled time that the host may start a room.
    pub schedule_open_window: u64,
    /// Seconds before a scheduled room's time that those who asked ("remind me") are
    /// reminded; 0: no reminders.
    pub reminder_before: u64,
    /// Seconds after its scheduled time that a room nobody started expires (ended, archived,
    /// gone from the directory; a recurring room schedules its next occurrence).
    pub schedule_expiry: u64,
    /// Whether anyone may sign in as a guest with a display name (`POST /api/session/guest`).
    /// `None`: the mode's default (on with `--dev`, off otherwise).
    pub guest_sign_in: Option<bool>,
    /// Who may create rooms. `None`: the mode's default (everyone with `--dev`, otherwise
    /// users but not guests).
    pub room_creators: Option<RoomCreators>,
    /// Rooms a user may have live or scheduled at once as their host when they create one
    /// (a server creating rooms for a host is trusted); 0: no limit.
    pub max_rooms_per_user: u32,
    /// This node's WebSocket URL for media (`ws[s]://host[:port]`). Rooms created on this node
    /// send every client here, whichever node answers the token request, so that a room's
    /// participants meet on one media node. Empty: the `Host` of each token request.
    pub public_url: String,
    /// Participants a node is meant to carry (listener-streams, roughly): placement puts a new
    /// room on the node with the most headroom, its load being the larger of its participants'
    /// share of this and its CPU share.
    pub node_capacity: u64,
    /// Participants a room's origin takes beyond `node_capacity` for those who may speak
    /// before it sends them to an edge: the origin's listeners receive a speaker's stream
    /// wherever she joins, so on the origin she costs it little and adds no relay hop.
    pub stage_reserve: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            store: StoreKind::Embedded,
            data_dir: PathBuf::from("stoa-data"),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "stoa:".into(),
            empty_timeout: 300,
            presence_ttl: 30,
            node_ttl: 3,
            kick_cooldown: 300,
            seat_grace: 60,
            token_ttl: 600,
            user_token_ttl: 7 * 24 * 3600,
            invite_ttl: 7 * 24 * 3600,
            ended_room_retention: 90 * 24 * 3600,
            max_participants: 10_000,
            schedule_open_window: 15 * 60,
            reminder_before: 10 * 60,
            schedule_expiry: 60 * 60,
            guest_sign_in: None,
            room_creators: None,
            max_rooms_per_user: 3,
            public_url: String::new(),
            node_capacity: 2_000,
            stage_reserve: 50,
        }
    }
}

impl ControlConfig {
    /// The schedule rules in milliseconds.
    pub fn schedule_rules(&self) -> crate::schedule::Rules {
        crate::schedule::Rules {
            open_window_ms: self.schedule_open_window.saturating_mul(1000),
            reminder_ms: self.reminder_before.saturating_mul(1000),
            expiry_ms: self.schedule_expiry.saturating_mul(1000),
        }
    }

    /// Whether guests may sign in (off unless configured or in dev mode).
    pub fn guests(&self) -> bool {
        self.guest_sign_in == Some(true)
    }

    /// Who may create rooms (users but not guests unless configured or in dev mode).
    pub fn creators(&self) -> RoomCreators {
        self.room_creators.unwrap_or(RoomCreators::Users)
    }

    /// Fills what is left to the mode: `dev` turns guest sign-in on and lets everyone create
    /// rooms unless the configuration says otherwise.
    pub fn with_mode_defaults(mut self, dev: bool) -> Self {
        self.guest_sign_in.get_or_insert(dev);
        self.room_creators.get_or_insert(if dev {
            RoomCreators::Everyone
        } else {
            RoomCreators::Users
        });
        self
    }

    /// Checks values a type cannot; returns the first problem as one line.
    pub fn validate(&self) -> Result<(), String> {
        if self.store == StoreKind::Redis && !self.redis_url.starts_with("redis://") {
            return Err(format!(
                "control.redis_url must start with redis:// (got {:?})",
                self.redis_url
            ));
        }
        if self.kick_cooldown == 0
            || self.seat_grace == 0
            || self.token_ttl == 0
            || self.max_participants == 0
            || self.presence_ttl == 0
            || self.node_ttl == 0
            || self.node_capacity == 0
        {
            return Err(
                "control.kick_cooldown, seat_grace, token_ttl, presence_ttl, node_ttl, node_capacity and max_participants must be above 0"
                    .into(),
            );
        }
        if self.schedule_expiry == 0 {
            return Err("control.schedule_expiry must be above 0".into());
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(format!(
                "control.public_url must start with ws:// or wss:// (got {:?})",
                self.public_url
            ));
        }
        if self.redis_prefix.contains(char::is_whitespace) {
            return Err("control.redis_prefix must not contain spaces".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_dev_mode_the_defaults_are_the_safe_ones() {
        let prod = ControlConfig::default().with_mode_defaults(false);
        assert!(!prod.guests());
        assert_eq!(prod.creators(), RoomCreators::Users);
        assert_eq!(prod.max_rooms_per_user, 3);
        // Unset (a library user who never calls with_mode_defaults) is safe too.
        assert!(!ControlConfig::default().guests());
        assert_eq!(ControlConfig::default().creators(), RoomCreators::Users);
        let dev = ControlConfig::default().with_mode_defaults(true);
        assert!(dev.guests());
        assert_eq!(dev.creators(), RoomCreators::Everyone);
        // What the configuration says wins in either mode.
        let set = ControlConfig {
            guest_sign_in: Some(false),
            room_creators: Some(RoomCreators::Servers),
            ..ControlConfig::default()
        }
        .with_mode_defaults(true);
        assert!(!set.guests());
        assert_eq!(set.creators(), RoomCreators::Servers);
    }

    #[test]
    fn a_node_ttl_of_zero_is_refused() {
        assert_eq!(ControlConfig::default().node_ttl, 3);
        assert_eq!(ControlConfig::default().validate(), Ok(()));
        let zero = ControlConfig {
            node_ttl: 0,
            ..ControlConfig::default()
        };
        let err = zero.validate().err().unwrap_or_default();
        assert!(err.contains("node_ttl"), "{err}");
    }
}
