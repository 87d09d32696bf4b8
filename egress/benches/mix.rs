//! What recording costs per second of room audio with 4 active speakers, as a fraction of one
//! core (thread CPU time ÷ audio time), measured side by side in one run:
//!
//! - **mix**: `RoomMixer` — 4 libopus decoders, the sum, the limiter, 1 libopus encoder, Ogg;
//! - **per-track**: 4 `TrackRecorder`s — the packets as received into Ogg, no transcoding;
//! - **room egress**: `Egress` room composite with a file per speaker and the sidecar (mix +
//!   per-track + JSON), i.e. everything a recorded room runs;
//! - baselines: libopus alone decoding the 4 streams, and encoding one.
//!
//! Usage: `cargo bench -p stoa-egress --bench mix -- [audio seconds, default 60] [rounds,
//! default 3] [mix encoder complexity, default MixConfig's 5]`. Speakers send 20 ms packets of
//! different tones with a tremolo (48 kbit/s, libopus' default complexity, as browsers send);
//! the clock is simulated, so nothing waits.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use nix::time::{ClockId, clock_gettime};
use stoa_egress::{
    Egress, EgressConfig, EgressKind, Input, MixConfig, RoomMixer, RtpPacket, Ssrc, TrackFiles,
    TrackRecorder,
};

const SPEAKERS: usize = 4;
const FRAME: usize = 960;
const RATE: u32 = 48_000;

fn cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

/// One second of each speaker's packets (50), looped with advancing RTP fields.
fn encode_speakers() -> Vec<Vec<Vec<u8>>> {
    (0..SPEAKERS)
        .map(|k| {
            let freq = 220.0 * (k + 1) as f64 + 17.0;
            let mut enc =
                opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
            enc.set_bitrate(opus::Bitrate::Bits(48_000)).unwrap();
            let mut packets = Vec::new();
            for i in 0..100usize {
                let pcm: Vec<f32> = (0..FRAME)
                    .map(|n| {
                        let t = (i * FRAME + n) as f64 / f64::from(RATE);
                        // A tone with a slow tremolo, so frames differ.
                        let env = 0.5 + 0.3 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
                        (0.3 * env * (2.0 * std::f64::consts::PI * freq * t).sin()) as f32
                    })
                    .collect();
                let p = enc.encode_vec_float(&pcm, 1_500).unwrap();
                if i >= 50 {
                    packets.push(p);
                }
            }
            packets
        })
        .collect()
}

/// Feeds `seconds` of the 4 speakers to `step` (`Some((speaker, packet))`), with a tick
/// (`None`) every 20 ms; returns the thread CPU time spent.
fn drive(
    t0: Instant,
    seconds: u64,
    packets: &[Vec<Vec<u8>>],
    mut step: impl FnMut(Instant, Option<(usize, RtpPacket<'_>)>),
) -> Duration {
    let start = cpu();
    for i in 0..seconds as usize * 50 {
        let now = t0 + Duration::from_millis(20 * i as u64 + 20);
        for (k, speaker) in packets.iter().enumerate() {
            let payload = &speaker[i % speaker.len()];
            let packet = RtpPacket {
                ssrc: Ssrc(1_000 + k as u32),
                sequence: i as u16,
                timestamp: (i * FRAME) as u32,
                marker: false,
                payload,
            };
            step(now, Some((k, packet)));
        }
        step(now, None);
    }
    cpu() - start
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(60);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let mix = MixConfig {
        complexity: args
            .get(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or(MixConfig::default().complexity),
        ..MixConfig::default()
    };
    let packets = encode_speakers();
    let names = [
        "mix (decode 4, limit, encode 1)",
        "per-track (4 files, no transcoding)",
        "room egress (mix + 4 track files + sidecar)",
        "baseline: libopus decode of 4 streams",
        "baseline: libopus encode of 1 stream",
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut bytes = 0usize;
    for _ in 0..rounds {
        let t0 = Instant::now();
        let mut out = Vec::new();

        let mut mixer = RoomMixer::new(t0, mix, 1, &[], &mut out).unwrap();
        let cost = drive(t0, seconds, &packets, |now, step| match step {
            Some((k, p)) => mixer.handle_packet(now, ["a", "b", "c", "d"][k], &p),
            None => {
                mixer.handle_timeout(now, &mut out);
                bytes += out.len();
                out.clear();
            }
        });
        results[0].push(cost.as_secs_f64() / seconds as f64);

        let mut recorders: Vec<TrackRecorder> = (0..SPEAKERS)
            .map(|k| TrackRecorder::new(t0, k as u32, &[], &mut out))
            .collect();
        let cost = drive(t0, seconds, &packets, |now, step| match step {
            Some((k, p)) => recorders[k].handle_packet(now, &p, &mut out),
            None => {
                for r in &mut recorders {
                    r.handle_timeout(now, &mut out);
                }
                bytes += out.len();
                out.clear();
            }
        });
        results[1].push(cost.as_secs_f64() / seconds as f64);

        let config = EgressConfig {
            egress_id: "EG_bench".into(),
            room: "bench".into(),
            kind: EgressKind::RoomComposite {
                track_files: TrackFiles::PerParticipant,
            },
            mix,
            serial: 1,
        };
        let mut egress = Egress::new(t0, config).unwrap();
        let who = ["a", "b", "c", "d"];
        let cost = drive(t0, seconds, &packets, |now, step| {
            match step {
                Some((k, packet)) => egress.handle_input(
                    now,
                    Input::Packet {
                        participant: who[k],
                        track: who[k],
                        packet,
                    },
                ),
                None => {
                    while egress.poll_timeout().is_some_and(|t| t <= now) {
                        egress.handle_timeout(now);
                    }
                }
            }
            while let Some(o) = egress.poll_output() {
                std::hint::black_box(o);
            }
        });
        results[2].push(cost.as_secs_f64() / seconds as f64);

        let mut decoders: Vec<opus::Decoder> = (0..SPEAKERS)
            .map(|_| opus::Decoder::new(RATE, opus::Channels::Mono).unwrap())
            .collect();
        let mut pcm = vec![0f32; 5_760];
        let cost = drive(t0, seconds, &packets, |_, step| {
            if let Some((k, p)) = step {
                decoders[k]
                    .decode_float(p.payload, &mut pcm, false)
                    .unwrap();
            }
        });
        results[3].push(cost.as_secs_f64() / seconds as f64);

        let mut encoder =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Audio).unwrap();
        encoder.set_bitrate(opus::Bitrate::Bits(48_000)).unwrap();
        encoder.set_complexity(mix.complexity).unwrap();
        let frame: Vec<f32> = (0..FRAME).map(|n| (n as f32 * 0.05).sin() * 0.3).collect();
        let mut buf = vec![0u8; 4_000];
        let cost = drive(t0, seconds, &packets, |_, step| {
            if step.is_none() {
                std::hint::black_box(encoder.encode_float(&frame, &mut buf).unwrap());
            }
        });
        results[4].push(cost.as_secs_f64() / seconds as f64);
    }
    std::hint::black_box(bytes);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let medians: Vec<f64> = results.iter_mut().map(median).collect();
    println!(
        "{SPEAKERS} speakers, {seconds} s of audio, median of {rounds} rounds \
         (complexity {} for the mix encoder)",
        mix.complexity
    );
    println!("| path | CPU per audio second | share of one core | ÷ per-track |");
    println!("|---|---:|---:|---:|");
    for (name, m) in names.iter().zip(&medians) {
        println!(
            "| {name} | {:.2} ms | {:.3} % | {:.1}× |",
            m * 1e3,
            m * 100.0,
            m / medians[1]
        );
    }
}
