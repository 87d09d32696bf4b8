//! A soft limiter for the room mix: when speakers overlap loudly the sum can exceed full
//! scale, and clipping it would add harsh distortion. Two stages, neither of which clips:
//!
//! 1. gain riding: an envelope follower (fast attack, slow release) lowers the gain while the
//!    level is above [`THRESHOLD`], smoothly, so the waveform keeps its shape;
//! 2. a soft knee: what the envelope has not caught yet (the first milliseconds of a loud
//!    onset) is bent smoothly (tanh) between [`THRESHOLD`] and [`CEILING`], never flattened.

use crate::packet::SAMPLE_RATE;

/// Level above which the gain is lowered and the knee bends: -3 dBFS.
pub const THRESHOLD: f32 = 0.708;
/// Highest output magnitude: -1 dBFS, headroom for the encoder's own overshoot.
pub const CEILING: f32 = 0.891;
/// Attack time constant of the envelope.
const ATTACK_SECONDS: f32 = 0.002;
/// Release time constant: how fast the gain recovers after a peak.
const RELEASE_SECONDS: f32 = 0.100;

/// Limiter state (mono).
#[derive(Debug, Clone)]
pub struct Limiter {
    envelope: f32,
    attack: f32,
    release: f32,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    /// A limiter at rest.
    pub fn new() -> Limiter {
        let coefficient = |seconds: f32| 1.0 - (-1.0 / (seconds * SAMPLE_RATE as f32)).exp();
        Limiter {
            envelope: 0.0,
            attack: coefficient(ATTACK_SECONDS),
            release: coefficient(RELEASE_SECONDS),
        }
    }

    /// Limits `samples` in place: afterwards every |sample| < [`CEILING`]. Samples at or below
    /// [`THRESHOLD`] pass unchanged while the envelope is below it.
    pub fn process(&mut self, samples: &mut [f32]) {
        for s in samples {
            if !s.is_finite() {
                *s = 0.0;
            }
            let level = s.abs();
            let k = if level > self.envelope {
                self.attack
            } else {
                self.release
            };
            self.envelope += k * (level - self.envelope);
            if self.envelope > THRESHOLD {
                *s *= THRESHOLD / self.envelope;
            }
            *s = knee(*s);
        }
    }
}

/// Identity up to [`THRESHOLD`], then a tanh curve that approaches [`CEILING`] with a
/// continuous slope.
fn knee(x: f32) -> f32 {
    let a = x.abs();
    if a <= THRESHOLD {
        return x;
    }
    let room = CEILING - THRESHOLD;
    let bent = THRESHOLD + room * ((a - THRESHOLD) / room).tanh();
    bent.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loud_sums_stay_under_the_ceiling_and_quiet_ones_pass() {
        let mut l = Limiter::new();
        let mut loud: Vec<f32> = (0..48_000)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.8 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.8 * (2.0 * std::f32::consts::PI * 880.0 * t).sin()
            })
            .collect();
        l.process(&mut loud);
        assert!(loud.iter().all(|s| s.abs() < CEILING));
        // Not a hard clip: peaks touch the ceiling for a sample or two, never a flat run.
        let longest_run = |s: &[f32]| {
            s.iter()
                .fold((0, 0), |(run, best), x| {
                    let run = if x.abs() > CEILING - 1e-4 { run + 1 } else { 0 };
                    (run, best.max(run))
                })
                .1
        };
        assert!(longest_run(&loud) <= 4, "{}", longest_run(&loud));
        let clipped: Vec<f32> = (0..48_000)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                (0.8 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.8 * (2.0 * std::f32::consts::PI * 880.0 * t).sin())
                .clamp(-CEILING, CEILING)
            })
            .collect();
        assert!(longest_run(&clipped) >= 16, "{}", longest_run(&clipped));

        let mut quiet = Limiter::new();
        let mut soft = vec![0.25f32, -0.5, 0.7, -0.1, 0.6];
        let copy = soft.clone();
        quiet.process(&mut soft);
        assert_eq!(soft, copy);

        let mut odd = vec![f32::NAN, f32::INFINITY, 0.5];
        quiet.process(&mut odd);
        assert!(odd.iter().all(|s| s.is_finite()));
    }
}
