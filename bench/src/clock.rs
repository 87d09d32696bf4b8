//! The harness clock, shared by every client of a run so send and receive times compare.

// The bench is a shell around real sockets: it owns the clock and reads it here only.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

/// A monotonic clock with a fixed epoch; send stamps are nanoseconds since that epoch.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn start() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// The current instant.
    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Nanoseconds from the epoch to `at` (0 before the epoch).
    pub fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `stamp` nanoseconds after the epoch.
    pub fn instant(&self, stamp: u64) -> Instant {
        self.epoch + Duration::from_nanos(stamp)
    }

    /// Time since the epoch.
    pub fn elapsed(&self) -> Duration {
        self.epoch.elapsed()
    }
}
