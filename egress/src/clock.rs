//! The egress timeline: 48 kHz samples since the egress started, derived from the `now` its
//! inputs carry (the core reads no clock).

use std::time::{Duration, Instant};

use crate::packet::SAMPLE_RATE;

/// A pause this long (100 ms of RTP time without packets) starts a talk spurt, where a
/// source whose clock drifted from ours is placed again.
pub(crate) const SPURT_GAP: i64 = 4_800;
/// How far ahead of its arrival (20 ms) a talk spurt may map before it is placed again: network
/// delay only ever makes packets map behind their arrival, so this much ahead is drift.
pub(crate) const MAX_AHEAD: i64 = 960;
/// How far behind its arrival (40 ms) a talk spurt may map before it is placed again. Jitter
/// can do that too; placing a spurt again on a delayed packet costs little, as the least
/// delayed of its first packets then sets its place.
pub(crate) const MAX_BEHIND: i64 = 1_920;
/// Maps instants to timeline positions and back. A resumed egress's clock starts at the
/// resumption with the samples recorded before it as offset, so instants never need to reach
/// back before the process started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    start: Instant,
    offset: u64,
}

impl Clock {
    pub(crate) fn new(start: Instant) -> Clock {
        Clock { start, offset: 0 }
    }

    /// A clock at which `now` is `elapsed` into the timeline.
    pub(crate) fn resumed(now: Instant, elapsed: Duration) -> Clock {
        let offset = (elapsed.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64;
        Clock { start: now, offset }
    }

    /// Samples elapsed at `now` (the offset before the start).
    pub(crate) fn samples_at(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.start).as_nanos();
        self.offset + (nanos * u128::from(SAMPLE_RATE) / 1_000_000_000) as u64
    }

    /// The first instant at which [`samples_at`](Self::samples_at) reaches `samples` (the
    /// start for positions before it).
    pub(crate) fn instant_at(&self, samples: u64) -> Instant {
        let samples = samples.saturating_sub(self.offset);
        let nanos = (u128::from(samples) * 1_000_000_000).div_ceil(u128::from(SAMPLE_RATE));
        self.start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Time from the timeline's origin to `now`.
    pub(crate) fn elapsed(&self, now: Instant) -> Duration {
        let samples = self.samples_at(now);
        Duration::from_nanos(
            u64::try_from(u128::from(samples) * 1_000_000_000 / u128::from(SAMPLE_RATE))
                .unwrap_or(u64::MAX),
        )
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
        let r = Clock::resumed(t0, Duration::from_secs(3));
        assert_eq!(r.samples_at(t0), 144_000);
        assert_eq!(r.instant_at(144_960), t0 + Duration::from_millis(20));
        assert_eq!(
            r.elapsed(t0 + Duration::from_secs(1)),
            Duration::from_secs(4)
        );
    }
}
