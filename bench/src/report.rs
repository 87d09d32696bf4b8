//! What a run measured: built from every client's record and the per-second samples, printed
//! as a summary table and serialised as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::client::Outcome;
use crate::reception::{Step, Totals};
use crate::scenario::{Params, percentile};

/// Everything a finished run hands to [`Report::build`].
#[derive(Debug)]
pub struct RunRecord {
    /// What was run.
    pub params: Params,
    /// Every listener's totals and outcome.
    pub listeners: Vec<(Totals, Outcome)>,
    /// Every speaker's outcome.
    pub speakers: Vec<Outcome>,
    /// Per-second samples.
    pub ticks: Vec<Tick>,
    /// Server RSS before the clients joined, KiB.
    pub baseline_rss_kib: Option<u64>,
    /// Highest server RSS seen, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Time the room played after every listener was started.
    pub played: Duration,
    /// Speaker changes made.
    pub rotations: u64,
    /// Listeners replaced.
    pub churned: u64,
}

/// One per-second sample of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Seconds since the run began.
    pub t_s: f64,
    /// Listeners present.
    pub listeners: usize,
    /// Clients that have heard audio so far.
    pub heard: u64,
    /// Clients that failed so far.
    pub failed: u64,
    /// RTP packets per second received by all listeners.
    pub rx_pps: f64,
    /// Loss in the last second.
    pub loss: f64,
    /// p99 one-way latency in the last second.
    pub latency_p99_ms: Option<f64>,
    /// Server CPU in cores over the last second.
    pub server_cpu_cores: Option<f64>,
    /// Server resident memory, KiB.
    pub server_rss_kib: Option<u64>,
    /// RTP packets per second the server received (its `/metrics`).
    pub server_in_pps: Option<f64>,
    /// RTP packets per second the server forwarded (its `/metrics`).
    pub server_out_pps: Option<f64>,
    /// kbit/s the server's media sockets received (its `/metrics`, UDP payload).
    pub server_in_kbps: Option<f64>,
    /// kbit/s the server's media sockets sent (its `/metrics`, UDP payload).
    pub server_out_kbps: Option<f64>,
}

/// Quantiles of a distribution, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Quantiles {
    /// From unsorted microsecond samples; `None` when empty.
    pub fn from_us(mut us: Vec<u32>) -> Option<Quantiles> {
        us.sort_unstable();
        let ms = |q: f64| percentile(&us, q).map_or(0.0, |v| f64::from(v) / 1e3);
        (!us.is_empty()).then(|| Quantiles {
            count: us.len(),
            p50: ms(0.5),
            p95: ms(0.95),
            p99: ms(0.99),
            max: ms(1.0),
        })
    }
}

/// Client counts.
#[derive(Debug, Clone, Serialize)]
pub struct Clients {
    /// Speakers started.
    pub speakers: usize,
    /// Listeners started (including replacements).
    pub listeners: usize,
    /// Listeners that heard audio.
    pub heard: usize,
    /// Fewest distinct speakers' streams any listener that heard audio received.
    pub min_streams_heard: usize,
    /// Clients that stopped with an error.
    pub failed: usize,
    /// The first few errors, for diagnosis.
    pub errors: Vec<String>,
}

/// Server figures over the play phase.
#[derive(Debug, Clone, Serialize)]
pub struct ServerFigures {
    /// Mean CPU, cores.
    pub cpu_cores_mean: f64,
    /// Highest one-second CPU, cores.
    pub cpu_cores_max: f64,
    /// RSS before the clients joined, KiB.
    pub rss_kib_baseline: Option<u64>,
    /// Highest RSS, KiB.
    pub rss_kib_peak: Option<u64>,
    /// (peak - baseline) / clients, KiB.
    pub rss_kib_per_client: Option<f64>,
    /// Mean RTP packets in per second (server counters).
    pub rtp_in_pps: Option<f64>,
    /// Mean RTP packets forwarded per second (server counters).
    pub rtp_out_pps: Option<f64>,
    /// Forwarded packets per second per server core used.
    pub rtp_out_pps_per_core: Option<f64>,
    /// Mean kbit/s in through the media sockets (server counters).
    pub in_kbps: Option<f64>,
    /// Mean kbit/s out through the media sockets (server counters).
    pub out_kbps: Option<f64>,
}

/// A decoding listener's check of the audio itself.
#[derive(Debug, Clone, Serialize)]
pub struct AudioCheckRow {
    /// Frames decoded.
    pub frames: u64,
    /// Frames libopus refused.
    pub errors: u64,
    /// RMS level of the decoded audio (the tone is sent at about 0.21).
    pub rms: f64,
}

/// One step of the join and the time it took.
#[derive(Debug, Clone, Serialize)]
pub struct StepQuantiles {
    /// The step ([`Step::name`]); `audio` for the first audio packet.
    pub step: &'static str,
    /// From the step before it to this one.
    pub since_previous_ms: Quantiles,
}

/// For each step of the join and first audio: the time since the step before it, over the
/// listeners that heard audio (the others are skipped).
pub(crate) fn join_steps<'a>(totals: impl IntoIterator<Item = &'a Totals>) -> Vec<StepQuantiles> {
    let mut samples: Vec<Vec<u32>> = vec![Vec::new(); Step::ALL.len() + 1];
    for t in totals.into_iter().filter(|t| t.first_audio.is_some()) {
        let mut previous = Duration::ZERO;
        let reached = t.steps.iter().copied().chain([t.first_audio]);
        for (i, at) in reached.enumerate() {
            if let Some(at) = at {
                let took = at.saturating_sub(previous);
                samples[i].push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                previous = at;
            }
        }
    }
    let names = Step::ALL.iter().map(|s| s.name()).chain(["audio"]);
    names
        .zip(samples)
        .filter_map(|(step, us)| {
            Quantiles::from_us(us).map(|since_previous_ms| StepQuantiles {
                step,
                since_previous_ms,
            })
        })
        .collect()
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub params: Params,
    /// Wall time, seconds.
    pub wall_s: f64,
    /// Time the room played after every listener was started, seconds.
    pub played_s: f64,
    /// Speaker changes made (rotation).
    pub rotations: u64,
    /// Listeners replaced (churn).
    pub churned: u64,
    /// Client counts.
    pub clients: Clients,
    /// Client start (the token call on the product path, else the WebSocket connect) to first
    /// audio packet, per listener.
    pub join_to_first_audio_ms: Option<Quantiles>,
    /// The same time along the join's steps: for each step reached, the time since the step
    /// before it (the last step: to first audio), over listeners that heard audio. Where a
    /// join's tail comes from.
    pub join_steps_ms: Vec<StepQuantiles>,
    /// One-way latency (send stamp to receive), per packet.
    pub latency_ms: Option<Quantiles>,
    /// Final RFC 3550 jitter, per listener.
    pub jitter_ms: Option<Quantiles>,
    /// Longest gap between packets, per listener.
    pub longest_gap_ms: Option<Quantiles>,
    /// Packets expected from sequence numbers, over all listeners.
    pub expected: u64,
    /// Packets received, over all listeners.
    pub received: u64,
    /// Of those, packets str0m decrypted (the rest were read from their clear RTP header).
    pub decrypted: u64,
    /// 1 - received / expected.
    pub loss: f64,
    /// RTP packets sent by speakers.
    pub sent: u64,
    /// Packets per second received by all listeners during play.
    pub rx_pps: f64,
    /// Payload kbit/s received by all listeners over the run.
    pub rx_kbps: f64,
    /// Server figures, when its pid was known.
    pub server: Option<ServerFigures>,
    /// Decoding listeners' checks.
    pub audio_checks: Vec<AudioCheckRow>,
    /// Per-second samples.
    pub timeline: Vec<Tick>,
}

impl Report {
    /// Aggregate a finished run.
    pub fn build(run: RunRecord) -> Report {
        let RunRecord {
            params,
            listeners,
            speakers,
            ticks,
            baseline_rss_kib,
            peak_rss_kib,
            wall,
            played,
            rotations,
            churned,
        } = run;
        let errors: Vec<String> = listeners
            .iter()
            .map(|(_, o)| o)
            .chain(&speakers)
            .filter_map(|o| o.error.clone())
            .collect();
        let mut first = Vec::new();
        let mut latency = Vec::new();
        let mut jitter = Vec::new();
        let mut gaps = Vec::new();
        let (mut expected, mut received, mut bytes, mut decrypted) = (0u64, 0u64, 0u64, 0u64);
        let mut heard = 0;
        let mut min_streams = usize::MAX;
        let mut audio_checks = Vec::new();
        for (t, o) in &listeners {
            if let Some(f) = t.first_audio {
                heard += 1;
                min_streams = min_streams.min(t.streams);
                first.push(u32::try_from(f.as_micros()).unwrap_or(u32::MAX));
                jitter.push(t.jitter_us as u32);
                gaps.push(u32::try_from(t.longest_gap.as_micros()).unwrap_or(u32::MAX));
            }
            latency.extend_from_slice(&t.latency_us);
            expected += t.expected;
            received += t.received;
            decrypted += t.decrypted;
            bytes += t.bytes;
            if let Some((frames, errors, rms)) = o.audio {
                audio_checks.push(AudioCheckRow {
                    frames,
                    errors,
                    rms,
                });
            }
        }
        let loss = if expected == 0 {
            0.0
        } else {
            expected.saturating_sub(received) as f64 / expected as f64
        };
        // Play-phase ticks: those after every listener was started.
        let play_from = wall.as_secs_f64() - played.as_secs_f64();
        let play: Vec<&Tick> = ticks.iter().filter(|t| t.t_s >= play_from - 0.5).collect();
        let mean = |f: &dyn Fn(&Tick) -> Option<f64>| {
            let v: Vec<f64> = play.iter().filter_map(|t| f(t)).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let rx_pps = mean(&|t| Some(t.rx_pps)).unwrap_or(0.0);
        let clients = params.speakers + listeners.len();
        let server = mean(&|t| t.server_cpu_cores).map(|cpu| {
            let out = mean(&|t| t.server_out_pps);
            ServerFigures {
                cpu_cores_mean: cpu,
                cpu_cores_max: play
                    .iter()
                    .filter_map(|t| t.server_cpu_cores)
                    .fold(0.0, f64::max),
                rss_kib_baseline: baseline_rss_kib,
                rss_kib_peak: peak_rss_kib,
                rss_kib_per_client: match (baseline_rss_kib, peak_rss_kib) {
                    (Some(b), Some(p)) if clients > 0 => {
                        Some(p.saturating_sub(b) as f64 / clients as f64)
                    }
                    _ => None,
                },
                rtp_in_pps: mean(&|t| t.server_in_pps),
                rtp_out_pps: out,
                rtp_out_pps_per_core: out.filter(|_| cpu > 0.01).map(|o| o / cpu),
                in_kbps: mean(&|t| t.server_in_kbps),
                out_kbps: mean(&|t| t.server_out_kbps),
            }
        });
        Report {
            wall_s: wall.as_secs_f64(),
            played_s: played.as_secs_f64(),
            rotations,
            churned,
            clients: Clients {
                speakers: speakers.len(),
                listeners: listeners.len(),
                heard,
                min_streams_heard: if heard == 0 { 0 } else { min_streams },
                failed: errors.len(),
                errors: errors.into_iter().take(5).collect(),
            },
            join_to_first_audio_ms: Quantiles::from_us(first),
            join_steps_ms: join_steps(listeners.iter().map(|(t, _)| t)),
            latency_ms: Quantiles::from_us(latency),
            jitter_ms: Quantiles::from_us(jitter),
            longest_gap_ms: Quantiles::from_us(gaps),
            expected,
            received,
            decrypted,
            loss,
            sent: speakers.iter().map(|s| s.sent).sum(),
            rx_pps,
            rx_kbps: bytes as f64 * 8.0 / 1e3 / wall.as_secs_f64().max(1e-3),
            server,
            audio_checks,
            timeline: ticks,
            params,
        }
    }

    /// The summary table, for a terminal.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let _ = writeln!(
            s,
            "scenario {:?}: {} speakers x {} listeners, join {}/s, {:.1} s played ({:.1} s wall)",
            p.kind,
            self.clients.speakers,
            self.clients.listeners,
            p.join_rate,
            self.played_s,
            self.wall_s
        );
        let _ = writeln!(
            s,
            "clients       heard {}/{} listeners, {} failed{}",
            self.clients.heard,
            self.clients.listeners,
            self.clients.failed,
            self.clients
                .errors
                .first()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let q = |name: &str, q: &Option<Quantiles>, s: &mut String| {
            let _ = match q {
                Some(q) => writeln!(
                    s,
                    "{name:<13} p50 {:>8.2}  p95 {:>8.2}  p99 {:>8.2}  max {:>8.2} ms  (n={})",
                    q.p50, q.p95, q.p99, q.max, q.count
                ),
                None => writeln!(s, "{name:<13} no samples"),
            };
        };
        q("join→audio", &self.join_to_first_audio_ms, &mut s);
        for step in &self.join_steps_ms {
            q(
                &format!("  ↳ {}", step.step),
                &Some(step.since_previous_ms.clone()),
                &mut s,
            );
        }
        q("latency", &self.latency_ms, &mut s);
        q("jitter", &self.jitter_ms, &mut s);
        q("longest gap", &self.longest_gap_ms, &mut s);
        let _ = writeln!(
            s,
            "loss          {:.3} %  ({} of {} packets received; {} sent by speakers)",
            self.loss * 100.0,
            self.received,
            self.expected,
            self.sent
        );
        let _ = writeln!(
            s,
            "received      {:.0} pkt/s during play, {:.0} kbit/s over the run, {:.1} % decrypted",
            self.rx_pps,
            self.rx_kbps,
            100.0 * self.decrypted as f64 / self.received.max(1) as f64
        );
        if let Some(sv) = &self.server {
            let _ = writeln!(
                s,
                "server cpu    mean {:.2} cores, max {:.2} cores",
                sv.cpu_cores_mean, sv.cpu_cores_max
            );
            let _ = writeln!(
                s,
                "server rss    {} KiB before, {} KiB peak, {} KiB per client",
                opt(sv.rss_kib_baseline.map(|v| v as f64), 0),
                opt(sv.rss_kib_peak.map(|v| v as f64), 0),
                opt(sv.rss_kib_per_client, 1)
            );
            let _ = writeln!(
                s,
                "server rtp    in {} pkt/s, out {} pkt/s, {} pkt/s per core",
                opt(sv.rtp_in_pps, 0),
                opt(sv.rtp_out_pps, 0),
                opt(sv.rtp_out_pps_per_core, 0)
            );
            let _ = writeln!(
                s,
                "server bytes  in {} kbit/s, out {} kbit/s",
                opt(sv.in_kbps, 0),
                opt(sv.out_kbps, 0)
            );
        }
        for c in &self.audio_checks {
            let _ = writeln!(
                s,
                "audio check   {} frames decoded, {} refused, rms {:.3}",
                c.frames, c.errors, c.rms
            );
        }
        s
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The one-line progress form of a tick.
pub fn progress_line(t: &Tick) -> String {
    format!(
        "[{:>5.0} s] listeners {:>5}  heard {:>5}  failed {:>3}  rx {:>8.0} pkt/s  loss {:>6.2} %  p99 {} ms  server cpu {} rss {} MiB",
        t.t_s,
        t.listeners,
        t.heard,
        t.failed,
        t.rx_pps,
        t.loss * 100.0,
        opt(t.latency_p99_ms, 1),
        opt(t.server_cpu_cores, 2),
        opt(t.server_rss_kib.map(|k| k as f64 / 1024.0), 0),
    )
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Two runs of the same scenario, direct tokens against the product path, side by side:
/// join-to-first-audio quantiles, failures, and the product/direct ratios.
pub fn side_by_side(direct: &Report, product: &Report) -> String {
    let mut s = String::new();
    let j = |r: &Report| r.join_to_first_audio_ms.clone();
    let q = |r: &Report, f: fn(&Quantiles) -> f64| {
        j(r).map_or("-".to_owned(), |q| format!("{:.0}", f(&q)))
    };
    let _ = writeln!(
        s,
        "| path | heard | failed | join→first audio p50 / p95 / p99 | latency p99 | server CPU mean |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, r) in [("direct tokens", direct), ("product path", product)] {
        let _ = writeln!(
            s,
            "| {name} | {} / {} | {} | {} / {} / {} ms | {} ms | {} |",
            r.clients.heard,
            r.clients.listeners,
            r.clients.failed,
            q(r, |q| q.p50),
            q(r, |q| q.p95),
            q(r, |q| q.p99),
            r.latency_ms
                .as_ref()
                .map_or("-".to_owned(), |l| format!("{:.1}", l.p99)),
            r.server
                .as_ref()
                .map_or("-".to_owned(), |f| format!("{:.2}", f.cpu_cores_mean)),
        );
    }
    if let (Some(a), Some(b)) = (j(direct), j(product))
        && a.p95 > 0.0
        && a.p50 > 0.0
    {
        let _ = writeln!(
            s,
            "\nproduct / direct: join→first audio p50 {:.2}×, p95 **{:.2}×**",
            b.p50 / a.p50,
            b.p95 / a.p95
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::reception::Reception;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn join_steps_are_times_between_the_steps_a_listener_reached() {
        let totals = |steps: [Option<u64>; 6], audio: u64| {
            let clock = Clock::start();
            let mut t = Reception::new(clock, clock.now()).totals();
            t.steps = steps.map(|s| s.map(ms));
            t.first_audio = Some(ms(audio));
            t
        };
        // Direct tokens: no `granted` step.
        let a = totals([None, Some(2), Some(5), Some(9), Some(10), Some(30)], 40);
        let b = totals([None, Some(4), Some(9), Some(15), Some(16), Some(96)], 100);
        let steps = join_steps([&a, &b]);
        let names: Vec<&str> = steps.iter().map(|s| s.step).collect();
        assert_eq!(
            names,
            [
                "upgraded",
                "joined",
                "offered",
                "answered",
                "connected",
                "audio"
            ]
        );
        let max = |name: &str| {
            let s = steps.iter().find(|s| s.step == name).expect("step");
            (s.since_previous_ms.count, s.since_previous_ms.max)
        };
        assert_eq!(max("upgraded"), (2, 4.0));
        assert_eq!(max("offered"), (2, 6.0));
        assert_eq!(max("connected"), (2, 80.0));
        assert_eq!(max("audio"), (2, 10.0));
    }
}
