//! Test helpers: tone speakers encoded with libopus into RTP-like packets, a deterministic
//! network (seeded delay, reordering, duplicates, loss), a simulated clock driving an
//! [`Egress`], and tone detection.
#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use stoa_egress::{Artifact, Egress, EgressEvent, Input, Output, RtpPacket, Ssrc};

pub const RATE: u32 = 48_000;
pub const FRAME: usize = 960;

/// A tiny seeded generator (xorshift64*), so every run sends the same packets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A publisher sending a sine tone as 20 ms Opus packets.
pub struct Speaker {
    pub participant: String,
    pub track: String,
    pub ssrc: u32,
    pub seq: u16,
    pub ts: u32,
    freq: f64,
    amplitude: f64,
    phase: u64,
    encoder: opus::Encoder,
}

impl Speaker {
    pub fn new(participant: &str, track: &str, freq: f64, ssrc: u32, rng: &mut Rng) -> Speaker {
        let mut encoder =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio).unwrap();
        encoder.set_bitrate(opus::Bitrate::Bits(48_000)).unwrap();
        Speaker {
            participant: participant.into(),
            track: track.into(),
            ssrc,
            seq: rng.next_u64() as u16,
            ts: rng.next_u64() as u32,
            freq,
            amplitude: 0.4,
            phase: 0,
            encoder,
        }
    }

    /// Changes the tone's amplitude (0 for silence).
    pub fn set_amplitude(&mut self, amplitude: f64) {
        self.amplitude = amplitude;
    }

    /// The next 20 ms packet: (sequence, timestamp, payload).
    pub fn packet(&mut self) -> (u16, u32, Vec<u8>) {
        let pcm: Vec<f32> = (0..FRAME as u64)
            .map(|i| {
                let t = (self.phase + i) as f64 / f64::from(RATE);
                (self.amplitude * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as f32
            })
            .collect();
        self.phase += FRAME as u64;
        let payload = self.encoder.encode_vec_float(&pcm, 1_500).unwrap();
        let out = (self.seq, self.ts, payload);
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        out
    }

    /// Time passes without packets (muted, RTP clock running on as browsers do).
    pub fn skip(&mut self, frames: u32) {
        self.ts = self.ts.wrapping_add(frames * FRAME as u32);
        self.phase += u64::from(frames) * FRAME as u64;
    }

    /// Rejoins: new SSRC, sequence and timestamp bases, and a new encoder (a new peer
    /// connection).
    pub fn rejoin(&mut self, ssrc: u32, track: &str, rng: &mut Rng) {
        let mut encoder =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio).unwrap();
        encoder.set_bitrate(opus::Bitrate::Bits(48_000)).unwrap();
        self.encoder = encoder;
        self.ssrc = ssrc;
        self.track = track.into();
        self.seq = rng.next_u64() as u16;
        self.ts = rng.next_u64() as u32;
    }
}

/// Whether the network may lose a packet. The first packets of a talk spurt are kept: Opus
/// codes energy relative to the previous frame, so a loss right at an onset makes the decoder
/// ramp up over ~100 ms, which would blur the onsets the tests measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    None,
    Some,
}

/// One thing happening at a point of simulated time.
#[derive(Debug, Clone)]
pub enum Event {
    Packet {
        participant: String,
        track: String,
        ssrc: u32,
        seq: u16,
        ts: u32,
        payload: Vec<u8>,
    },
    Published(String, String),
    Muted(String, String),
    Unmuted(String, String),
    Unpublished(String, String),
    Speaking(String, bool),
}

/// Events by arrival time (offset from the start), stable for equal times.
#[derive(Debug, Default)]
pub struct Schedule {
    events: Vec<(Duration, u64, Event)>,
    order: u64,
}

impl Schedule {
    pub fn at(&mut self, t: Duration, e: Event) {
        self.events.push((t, self.order, e));
        self.order += 1;
    }

    /// A packet sent at `sent`, through a network of 10-50 ms delay with 2 % duplicates (so
    /// some packets overtake others) and, with `Loss::Some`, 1 % loss.
    pub fn send(&mut self, sent: Duration, s: &mut Speaker, rng: &mut Rng, loss: Loss) {
        let (seq, ts, payload) = s.packet();
        if loss == Loss::Some && rng.below(100) == 0 {
            return;
        }
        let delay = Duration::from_millis(10 + rng.below(41));
        let e = Event::Packet {
            participant: s.participant.clone(),
            track: s.track.clone(),
            ssrc: s.ssrc,
            seq,
            ts,
            payload,
        };
        if rng.below(50) == 0 {
            self.at(
                sent + delay + Duration::from_millis(rng.below(30)),
                e.clone(),
            );
        }
        self.at(sent + delay, e);
    }

    pub fn into_sorted(mut self) -> Vec<(Duration, Event)> {
        self.events.sort_by_key(|(t, o, _)| (*t, *o));
        self.events.into_iter().map(|(t, _, e)| (t, e)).collect()
    }
}

/// Files and events collected from an egress, as a file sink would write them.
#[derive(Debug, Default, Clone)]
pub struct Collected {
    pub files: BTreeMap<Artifact, Vec<u8>>,
    pub events: Vec<EgressEvent>,
}

impl Collected {
    pub fn drain(&mut self, egress: &mut Egress) {
        while let Some(out) = egress.poll_output() {
            match out {
                Output::Write { artifact, bytes } => {
                    self.files.entry(artifact).or_default().extend(bytes)
                }
                Output::Truncate { artifact, len } => self
                    .files
                    .entry(artifact)
                    .or_default()
                    .truncate(len as usize),
                Output::Event(e) => self.events.push(e),
            }
        }
    }

    pub fn file(&self, artifact: &Artifact) -> &[u8] {
        self.files.get(artifact).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Runs `egress` through `events` on simulated time starting at `t0`, then until `stop`,
/// where it stops (unless `stop` is `None`). `snapshot_at` takes a copy of the files at that
/// time (a crash there).
pub fn run(
    t0: Instant,
    egress: &mut Egress,
    events: &[(Duration, Event)],
    stop: Option<Duration>,
    snapshot_at: Option<Duration>,
) -> (Collected, Option<Collected>) {
    run_from(Collected::default(), t0, egress, events, stop, snapshot_at)
}

/// [`run`], appending to files that already hold `c` (a resumed egress's).
pub fn run_from(
    mut c: Collected,
    t0: Instant,
    egress: &mut Egress,
    events: &[(Duration, Event)],
    stop: Option<Duration>,
    snapshot_at: Option<Duration>,
) -> (Collected, Option<Collected>) {
    let mut snapshot = None;
    let end = stop.unwrap_or_else(|| events.last().map_or(Duration::ZERO, |e| e.0));
    let advance = |to: Instant, egress: &mut Egress, c: &mut Collected| {
        // Bounded: a livelock fails instead of hanging.
        for _ in 0..1_000_000 {
            match egress.poll_timeout() {
                Some(t) if t <= to => {
                    egress.handle_timeout(t);
                    c.drain(egress);
                }
                _ => return,
            }
        }
        panic!("timeouts never settle");
    };
    c.drain(egress);
    for (t, e) in events {
        if let Some(s) = snapshot_at
            && *t > s
            && snapshot.is_none()
        {
            advance(t0 + s, egress, &mut c);
            snapshot = Some(c.clone());
        }
        let now = t0 + *t;
        advance(now, egress, &mut c);
        let input = match e {
            Event::Packet {
                participant,
                track,
                ssrc,
                seq,
                ts,
                payload,
            } => Input::Packet {
                participant,
                track,
                packet: RtpPacket {
                    ssrc: Ssrc(*ssrc),
                    sequence: *seq,
                    timestamp: *ts,
                    marker: false,
                    payload,
                },
            },
            Event::Published(p, t) => Input::TrackPublished {
                participant: p,
                track: t,
            },
            Event::Muted(p, t) => Input::TrackMuted {
                participant: p,
                track: t,
            },
            Event::Unmuted(p, t) => Input::TrackUnmuted {
                participant: p,
                track: t,
            },
            Event::Unpublished(p, t) => Input::TrackUnpublished {
                participant: p,
                track: t,
            },
            Event::Speaking(p, speaking) => Input::Speaking {
                participant: p,
                speaking: *speaking,
            },
        };
        egress.handle_input(now, input);
        c.drain(egress);
    }
    advance(t0 + end, egress, &mut c);
    if stop.is_some() {
        egress.handle_input(t0 + end, Input::Stop);
        c.drain(egress);
    }
    (c, snapshot)
}

/// Amplitude of the `freq` component of `samples` (Goertzel): about the sine's amplitude.
pub fn tone(samples: &[f32], freq: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(RATE);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / samples.len() as f64
}

/// `samples[from..to]` in seconds, clamped.
pub fn window(samples: &[f32], from: f64, to: f64) -> &[f32] {
    let a = ((from * f64::from(RATE)) as usize).min(samples.len());
    let b = ((to * f64::from(RATE)) as usize).min(samples.len());
    &samples[a..b.max(a)]
}

/// Where the `freq` tone starts after `from` (seconds): the centre of the first 40 ms window
/// (2.5 ms steps) whose tone amplitude passes `threshold`, which with half the steady
/// amplitude as threshold is the onset.
pub fn onset(samples: &[f32], freq: f64, from: f64, threshold: f64) -> Option<f64> {
    let step = 120;
    let len = 1_920;
    let mut i = (from * f64::from(RATE)) as usize;
    while i + len <= samples.len() {
        if tone(&samples[i..i + len], freq) > threshold {
            return Some((i + len / 2) as f64 / f64::from(RATE));
        }
        i += step;
    }
    None
}

/// Seconds of `samples`.
pub fn seconds(samples: usize) -> f64 {
    samples as f64 / f64::from(RATE)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The room: alice (440 Hz) speaks 0-3 s, is muted 3-5 s, speaks 5-10 s; bob (880 Hz) joins
/// at 2 s, leaves at 6 s and rejoins at 6.5 s with a new SSRC and track.
pub fn two_speaker_room(rng: &mut Rng) -> Vec<(Duration, Event)> {
    let mut s = Schedule::default();
    let mut alice = Speaker::new("alice", "TR_alice", 440.0, 1111, rng);
    let mut bob = Speaker::new("bob", "TR_bob1", 880.0, 2222, rng);
    let ev = |p: &str, t: &str| (p.to_string(), t.to_string());
    let (ap, at) = ev("alice", "TR_alice");
    s.at(secs(0.0), Event::Published(ap.clone(), at.clone()));
    s.at(secs(0.0), Event::Speaking(ap.clone(), true));
    for i in 0..500u32 {
        let t = f64::from(i) * 0.02;
        if (3.0..5.0).contains(&t) {
            alice.skip(1);
            continue;
        }
        let loss = if (0.2..3.0).contains(&t) || t >= 5.2 {
            Loss::Some
        } else {
            Loss::None
        };
        s.send(secs(t), &mut alice, rng, loss);
    }
    s.at(secs(3.0), Event::Muted(ap.clone(), at.clone()));
    s.at(secs(3.0), Event::Speaking(ap.clone(), false));
    s.at(secs(5.0), Event::Unmuted(ap.clone(), at.clone()));
    s.at(secs(5.0), Event::Speaking(ap, true));

    let (bp, bt) = ev("bob", "TR_bob1");
    s.at(secs(2.0), Event::Published(bp.clone(), bt.clone()));
    s.at(secs(2.0), Event::Speaking(bp.clone(), true));
    for i in 100..300u32 {
        let loss = if i >= 110 { Loss::Some } else { Loss::None };
        s.send(secs(f64::from(i) * 0.02), &mut bob, rng, loss);
    }
    s.at(secs(6.0), Event::Speaking(bp.clone(), false));
    s.at(secs(6.05), Event::Unpublished(bp.clone(), bt));
    bob.rejoin(3333, "TR_bob2", rng);
    s.at(secs(6.5), Event::Published(bp.clone(), "TR_bob2".into()));
    s.at(secs(6.5), Event::Speaking(bp, true));
    for i in 325..500u32 {
        let loss = if i >= 335 { Loss::Some } else { Loss::None };
        s.send(secs(f64::from(i) * 0.02), &mut bob, rng, loss);
    }
    s.into_sorted()
}
