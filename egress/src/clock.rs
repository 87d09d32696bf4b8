//! The egress timeline: 48 kHz samples since the egress started, derived from the `now` its
//! inputs carry (the core reads no clock).

use std::time::{Duration, Instant};

use crate::packet::SAMPLE_RATE;

/// Maps instants to timeline positions and back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
}

impl Clock {
    pub(crate) fn new(start: Instant) -> Clock {
        Clock { start }
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }

    /// Samples elapsed at `now` (0 before the start).
    pub(crate) fn samples_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        (nanos * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64
    }

    /// The first instant at which [`samples_at`](Self::samples_at) reaches `samples`.
    pub(crate) fn instant_at(&self, samples: u64) -> Instant {
        let nanos = (u128::from(samples) * 1_000_000_000).div_ceil(u128::from(SAMPLE_RATE));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Milliseconds of `samples`.
pub(crate) fn samples_to_ms(samples: u64) -> u64 {
    samples / u64::from(SAMPLE_RATE / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_samples_agree() {
        #[allow(clippy::disallowed_methods)] // a test's epoch
        let t0 = Instant::now();
        let c = Clock::new(t0);
        for s in [0u64, 1, 959, 960, 48_000, 1_234_567] {
            let at = c.instant_at(s);
            assert_eq!(c.samples_at(at), s);
            assert!(c.samples_at(at - Duration::from_nanos(1)) < s || s == 0);
        }
    }
}
