//! Active-speaker detection from RFC 6464 audio levels.
//!
//! The algorithm follows LiveKit's (`pkg/sfu/audio/audiolevel.go`) so clients see the same
//! behaviour, and adds hysteresis so a speaker does not flicker at the threshold:
//!
//! 1. For each window (default 400 ms) sum the duration of packets whose level is at least as
//!    loud as `active_level` (RFC 6464 levels are −dBov, so *smaller* is louder) and remember the
//!    loudest one.
//! 2. If that active duration covers at least `min_percentile` of the window, the window's
//!    level is the loudest level penalised by how little of the window was active:
//!    `adjusted = loudest − 20·log10(active / window)`, as a linear amplitude
//!    `10^(−adjusted/20)`. Otherwise the window's level is 0.
//! 3. The window levels are smoothed by an exponential moving average with factor `2/(N+1)`.
//! 4. A track becomes active when the smoothed level reaches `10^(−active_level/20)` and stops
//!    being active when it falls below that threshold scaled by `release_ratio`.
//! 5. A track that sent no packet for two windows drops to level 0 (DTX, gone); a muted one
//!    drops at once ([`SpeakerDetector::silence`]).
//! 6. A speaking track's level is reported in eighths rounded up, LiveKit's quantisation, and
//!    only when that changes.
//!
//! The detector is sans-IO: it is fed packets with their arrival time and asked to close windows
//! by the engine's timer; it reports only changes.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Reported levels are multiples of `1 / LEVEL_STEPS`.
const LEVEL_STEPS: f32 = 8.0;

/// Tuning of the detector. The defaults are LiveKit's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerConfig {
    /// Level (−dBov, 0..=127) at or below which a packet counts as active speech. Default 35.
    pub active_level: u8,
    /// Share of a window (percent) that must be active for the window to count. Default 40.
    pub min_percentile: u8,
    /// Window length. Default 400 ms.
    pub window: Duration,
    /// Number of windows for the moving average (`2/(N+1)`). Default 2.
    pub smooth_windows: u32,
    /// Hysteresis: an active speaker stays active until its level falls below the threshold
    /// times this ratio. 1.0 disables hysteresis. Default 0.7.
    pub release_ratio: f32,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            active_level: 35,
            min_percentile: 40,
            window: Duration::from_millis(400),
            smooth_windows: 2,
            release_ratio: 0.7,
        }
    }
}

/// One change reported by the detector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpeakerLevel<K> {
    /// Which track.
    pub key: K,
    /// Smoothed linear level, 0.0..=1.0, rounded up to eighths; 0 when not speaking.
    pub level: f32,
    /// Whether the track counts as speaking.
    pub active: bool,
}

#[derive(Debug, Default)]
struct TrackLevel {
    active_duration: Duration,
    /// Loudest level seen in this window (smallest −dBov).
    loudest: Option<u8>,
    smoothed: f32,
    active: bool,
    windows_without_packets: u32,
    saw_packet: bool,
    /// Level last reported, quantised, to report only real changes.
    reported: u8,
}

/// The detector, over any track key.
#[derive(Debug)]
pub struct SpeakerDetector<K> {
    config: SpeakerConfig,
    tracks: HashMap<K, TrackLevel>,
    next_window: Option<Instant>,
}

impl<K: Copy + Eq + Hash + Ord> SpeakerDetector<K> {
    /// A detector with the given tuning.
    pub fn new(config: SpeakerConfig) -> Self {
        SpeakerDetector {
            config,
            tracks: HashMap::new(),
            next_window: None,
        }
    }

    /// Record one audio packet of `key` with RFC 6464 `level` (0..=127, −dBov) covering
    /// `duration` of audio. Packets without the extension are not observed.
    pub fn observe(&mut self, now: Instant, key: K, level: u8, duration: Duration) {
        if self.next_window.is_none() {
            self.next_window = Some(now + self.config.window);
        }
        let t = self.tracks.entry(key).or_default();
        t.saw_packet = true;
        let level = level.min(127);
        if level <= self.config.active_level {
            t.active_duration += duration;
            t.loudest = Some(t.loudest.map_or(level, |l| l.min(level)));
        }
    }

    /// Stop tracking `key` (unpublished). Reports it inactive if it was active.
    pub fn remove(&mut self, key: K) -> Option<SpeakerLevel<K>> {
        let t = self.tracks.remove(&key)?;
        t.active.then_some(SpeakerLevel {
            key,
            level: 0.0,
            active: false,
        })
    }

    /// `key` was muted: its level drops to 0 at once, not windows later as its packets stop.
    /// Reports it inactive if it was active. It stays tracked and starts afresh when it sends
    /// again.
    pub fn silence(&mut self, key: K) -> Option<SpeakerLevel<K>> {
        let t = self.tracks.get_mut(&key)?;
        let was_active = t.active;
        *t = TrackLevel::default();
        was_active.then_some(SpeakerLevel {
            key,
            level: 0.0,
            active: false,
        })
    }

    /// When the next window closes, if any track is tracked.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.tracks.is_empty() {
            None
        } else {
            self.next_window
        }
    }

    /// Close every window that ended by `now`; push the tracks whose state or quantised level
    /// changed into `changes`, loudest first.
    pub fn handle_timeout(&mut self, now: Instant, changes: &mut Vec<SpeakerLevel<K>>) {
        let Some(mut due) = self.next_window else {
            return;
        };
        let start = changes.len();
        while due <= now {
            self.close_window(changes);
            due += self.config.window;
        }
        self.next_window = Some(due);
        if self.tracks.is_empty() {
            self.next_window = None;
        }
        // Keep the last change per key, loudest first.
        let mut tail: Vec<SpeakerLevel<K>> = changes.drain(start..).collect();
        tail.reverse();
        tail.sort_by_key(|c| c.key);
        tail.dedup_by(|a, b| a.key == b.key);
        tail.sort_by(|a, b| b.level.total_cmp(&a.level).then(a.key.cmp(&b.key)));
        changes.extend(tail);
    }

    fn close_window(&mut self, changes: &mut Vec<SpeakerLevel<K>>) {
        let c = self.config;
        let threshold = 10f32.powf(-f32::from(c.active_level) / 20.0);
        let factor = 2.0 / (c.smooth_windows as f32 + 1.0);
        let window = c.window.as_secs_f32();
        for (key, t) in &mut self.tracks {
            if t.saw_packet {
                t.windows_without_packets = 0;
            } else {
                t.windows_without_packets += 1;
            }
            let active_ratio = (t.active_duration.as_secs_f32() / window).min(1.0);
            let window_level = match t.loudest {
                Some(loudest) if active_ratio * 100.0 >= f32::from(c.min_percentile) => {
                    let adjusted = f32::from(loudest) - 20.0 * active_ratio.log10();
                    10f32.powf(-adjusted / 20.0)
                }
                _ => 0.0,
            };
            t.smoothed += (window_level - t.smoothed) * factor;
            if t.windows_without_packets >= 2 {
                t.smoothed = 0.0;
            }
            let active = if t.active {
                t.smoothed >= threshold * c.release_ratio
            } else {
                t.smoothed >= threshold
            };
            // Levels are reported in eighths, rounded up, as LiveKit reports them: finer
            // changes are noise to a UI and would each be a message to every participant.
            let quantised = (t.smoothed * LEVEL_STEPS).ceil() as u8;
            if active != t.active || (active && quantised != t.reported) {
                changes.push(SpeakerLevel {
                    key: *key,
                    level: if active {
                        f32::from(quantised) / LEVEL_STEPS
                    } else {
                        0.0
                    },
                    active,
                });
                t.reported = quantised;
            }
            t.active = active;
            t.active_duration = Duration::ZERO;
            t.loudest = None;
            t.saw_packet = false;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)]
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    /// Feed `secs` of 20 ms frames at `level` for each key, closing windows on the way.
    fn run(
        d: &mut SpeakerDetector<u32>,
        t: &mut Instant,
        secs: f32,
        levels: &[(u32, Option<u8>)],
    ) -> Vec<SpeakerLevel<u32>> {
        let mut out = vec![];
        let frames = (secs / 0.02) as usize;
        for _ in 0..frames {
            for (k, l) in levels {
                if let Some(l) = l {
                    d.observe(*t, *k, *l, FRAME);
                }
            }
            *t += FRAME;
            d.handle_timeout(*t, &mut out);
        }
        out
    }

    #[test]
    fn loud_track_becomes_active_quiet_one_does_not() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut t = Instant::now();
        let ch = run(&mut d, &mut t, 2.0, &[(1, Some(20)), (2, Some(60))]);
        assert!(ch.iter().any(|c| c.key == 1 && c.active));
        assert!(!ch.iter().any(|c| c.key == 2 && c.active));
    }

    #[test]
    fn silence_releases_and_changes_are_not_repeated() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut t = Instant::now();
        let ch = run(&mut d, &mut t, 2.0, &[(1, Some(10))]);
        let activations = ch.iter().filter(|c| c.active).count();
        // Steady level: one activation plus at most a couple of level refinements.
        assert!((1..=3).contains(&activations), "{ch:?}");
        // Packets stop (mute): inactive within three windows.
        let ch = run(&mut d, &mut t, 1.2, &[(1, None)]);
        assert_eq!(ch.last().map(|c| c.active), Some(false), "{ch:?}");
        // And nothing more is reported while silent.
        assert!(run(&mut d, &mut t, 2.0, &[(1, None)]).is_empty());
    }

    #[test]
    fn short_bursts_below_percentile_do_not_activate() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut t = Instant::now();
        let mut out = vec![];
        // 2 loud frames out of every 20 (10 % activity).
        for i in 0..200 {
            let level = if i % 20 < 2 { 5 } else { 90 };
            d.observe(t, 1u32, level, FRAME);
            t += FRAME;
            d.handle_timeout(t, &mut out);
        }
        assert!(out.iter().all(|c| !c.active), "{out:?}");
    }

    #[test]
    fn hysteresis_keeps_a_speaker_near_the_threshold() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut t = Instant::now();
        run(&mut d, &mut t, 1.0, &[(1, Some(30))]);
        // 60 % of frames at level 33: adjusted level about 37.4 dBov, below the activation
        // threshold (35) but within the release band.
        let mut out = vec![];
        for i in 0..100 {
            d.observe(t, 1u32, if i % 5 < 3 { 33 } else { 90 }, FRAME);
            t += FRAME;
            d.handle_timeout(t, &mut out);
        }
        assert!(out.iter().all(|c| c.active), "{out:?}");
        // The same input never activates a track that was not speaking.
        let mut fresh = SpeakerDetector::new(SpeakerConfig::default());
        let mut out = vec![];
        for i in 0..100 {
            fresh.observe(t, 2u32, if i % 5 < 3 { 33 } else { 90 }, FRAME);
            t += FRAME;
            fresh.handle_timeout(t, &mut out);
        }
        assert!(out.iter().all(|c| !c.active), "{out:?}");
    }

    #[test]
    fn a_silenced_speaker_stops_at_once_and_starts_afresh() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut t = Instant::now();
        run(&mut d, &mut t, 1.0, &[(1, Some(10)), (2, Some(10))]);
        let r = d.silence(1).unwrap();
        assert_eq!((r.key, r.active, r.level), (1, false, 0.0));
        // Only once, a track that was not speaking reports nothing, and no window repeats it.
        assert_eq!(d.silence(1), None);
        assert_eq!(d.silence(3), None);
        let ch = run(&mut d, &mut t, 2.0, &[(2, Some(10))]);
        assert!(ch.iter().all(|c| c.key == 2), "{ch:?}");
        // Unmuted: it becomes active again from a level of 0, within two windows.
        let ch = run(&mut d, &mut t, 0.8, &[(1, Some(10)), (2, Some(10))]);
        assert!(ch.iter().any(|c| c.key == 1 && c.active), "{ch:?}");
    }

    #[test]
    fn removed_active_track_reports_inactive() {
        let mut d = SpeakerDetector::new(SpeakerConfig::default());
        let mut t = Instant::now();
        run(&mut d, &mut t, 1.0, &[(1, Some(10))]);
        let r = d.remove(1).unwrap();
        assert!(!r.active);
        assert_eq!(d.poll_timeout(), None);
    }
}
