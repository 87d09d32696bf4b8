//! What recording a room costs, on and off side by side in one run.
//!
//! One room holds a few speakers who all speak at once (each an active speaker) and a crowd
//! of listeners. The run then measures pairs of phases of the same length, recording off and
//! recording on (an audio-only room composite egress started and stopped through the server's
//! Twirp `livekit.Egress`, as a LiveKit server SDK does), the order alternating from pair to
//! pair (off-on, on-off, off-on, …) so that a machine getting busier or quieter during the run
//! weighs on both sides alike. Each phase reports the server's CPU (from `/proc/<pid>/stat`,
//! the first second after a switch left out) and the listeners' loss and one-way latency. Each
//! pair gives its own on/off figures (p99 ratio, loss, CPU difference), and the verdict takes
//! their **median**, which one phase disturbed by something else on the machine does not move
//! (pooled figures are reported as well). Every run is bounded in clients and time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use livekit_api::access_token::{AccessToken, VideoGrants};
use serde::Serialize;

use crate::client::{Command, Depth, Role};
use crate::clock::Clock;
use crate::reception::Window;
use crate::scenario::{Crowd, MAX_CLIENTS, ScenarioError, Target, percentile};
use crate::server::ProcProbe;

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingParams {
    /// Speakers, all speaking at once.
    pub speakers: usize,
    /// Listeners.
    pub listeners: usize,
    /// Listener joins per second.
    pub join_rate: f64,
    /// Length of each phase.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub phase: Duration,
    /// Phase pairs (one off, one on, in alternating order).
    pub rounds: usize,
}

/// The latency and loss target: on ≤ this × off (median of the pairs).
pub const TARGET_RATIO: f64 = 1.05;

impl RecordingParams {
    /// Check the bounds every run must respect.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: &str| Err(ScenarioError::Invalid(m.to_owned()));
        if self.speakers == 0 || self.speakers > 16 {
            return invalid("speakers must be 1..=16");
        }
        if self.speakers + self.listeners > MAX_CLIENTS {
            return invalid("too many clients");
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 1_000.0) {
            return invalid("join rate must be in (0, 1000] per second");
        }
        if self.phase < Duration::from_secs(3) || self.phase > Duration::from_secs(120) {
            return invalid("a phase lasts 3 to 120 seconds");
        }
        if self.rounds == 0 || self.rounds > 20 {
            return invalid("rounds must be 1..=20");
        }
        Ok(())
    }

    /// The longest the run may take.
    pub fn bound(&self) -> Duration {
        let joins = Duration::from_secs_f64(self.listeners as f64 / self.join_rate);
        joins + Duration::from_secs(30) + self.phase * (2 * self.rounds as u32)
    }
}

/// One phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// The pair it belongs to (from 1).
    pub pair: usize,
    /// Recording during it.
    pub recording: bool,
    /// Seconds measured.
    pub seconds: f64,
    /// Server CPU, in cores (1.0 = one core busy).
    pub server_cpu_cores: Option<f64>,
    /// Listeners' loss.
    pub loss: f64,
    /// Listeners' p99 one-way latency, ms.
    pub latency_p99_ms: Option<f64>,
    /// The egress that recorded it.
    pub egress_id: Option<String>,
}

/// One off/on pair, side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// From 1.
    pub pair: usize,
    /// Recording was on in the pair's first phase.
    pub on_first: bool,
    /// p99 latency off and on, ms.
    pub p99_off_on_ms: [Option<f64>; 2],
    /// p99 on over off.
    pub p99_on_over_off: Option<f64>,
    /// Loss off and on.
    pub loss_off_on: [f64; 2],
    /// CPU on minus off, percent of one core.
    pub cpu_cost_pct_of_core: Option<f64>,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingReport {
    /// What ran.
    pub params: RecordingParams,
    /// Listeners that heard audio before the phases began.
    pub heard: usize,
    /// Every phase, in order.
    pub phases: Vec<Phase>,
    /// Mean server CPU off and on, cores.
    pub cpu_off_on: [Option<f64>; 2],
    /// Recording's cost: CPU on minus off, percent of one core.
    pub cpu_cost_pct_of_core: Option<f64>,
    /// Pooled p99 latency off and on, ms.
    pub p99_off_on_ms: [Option<f64>; 2],
    /// p99 on over off.
    pub p99_on_over_off: Option<f64>,
    /// Pooled loss off and on.
    pub loss_off_on: [f64; 2],
    /// Each off/on pair.
    pub pairs: Vec<Pair>,
    /// Median over the pairs of p99 on over off: the latency verdict.
    pub median_p99_on_over_off: Option<f64>,
    /// Median over the pairs of the CPU cost, percent of one core.
    pub median_cpu_cost_pct_of_core: Option<f64>,
    /// Median over the pairs of loss on minus off (a fraction).
    pub median_loss_on_minus_off: Option<f64>,
    /// Pairs whose loss on exceeds `TARGET_RATIO` × off (0 when neither lost anything).
    pub pairs_losing_more_on: usize,
    /// The median p99 ratio is at most `TARGET_RATIO` and no more pairs lost more with
    /// recording on than the half.
    pub target_met: Option<bool>,
}

impl RecordingReport {
    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
        let cores = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1} %", v * 100.0));
        let ratio = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
        let mut out = String::from(
            "| phase | pair | recording | server CPU (% of one core) | listeners' loss | p99 latency (ms) |\n|---|---|---|---|---|---|\n",
        );
        for (i, p) in self.phases.iter().enumerate() {
            out += &format!(
                "| {} | {} | {} | {} | {:.3} % | {} |\n",
                i + 1,
                p.pair,
                if p.recording { "on" } else { "off" },
                cores(p.server_cpu_cores),
                p.loss * 100.0,
                ms(p.latency_p99_ms)
            );
        }
        out += &format!(
            "\nRecording costs {} of one core ({} off, {} on); listeners' p99 {} ms off, {} ms on (on/off {}); loss {:.3} % off, {:.3} % on.\n",
            self.cpu_cost_pct_of_core
                .map_or("–".into(), |v| format!("{v:.2} %")),
            cores(self.cpu_off_on[0]),
            cores(self.cpu_off_on[1]),
            ms(self.p99_off_on_ms[0]),
            ms(self.p99_off_on_ms[1]),
            self.p99_on_over_off
                .map_or("–".into(), |v| format!("{v:.3}")),
            self.loss_off_on[0] * 100.0,
            self.loss_off_on[1] * 100.0,
        );
        out += "\n| pair | order | p99 off (ms) | p99 on (ms) | p99 on/off | loss off | loss on | CPU cost (% of one core) |\n|---|---|---|---|---|---|---|---|\n";
        for p in &self.pairs {
            out += &format!(
                "| {} | {} | {} | {} | {} | {:.3} % | {:.3} % | {} |\n",
                p.pair,
                if p.on_first { "on, off" } else { "off, on" },
                ms(p.p99_off_on_ms[0]),
                ms(p.p99_off_on_ms[1]),
                ratio(p.p99_on_over_off),
                p.loss_off_on[0] * 100.0,
                p.loss_off_on[1] * 100.0,
                p.cpu_cost_pct_of_core
                    .map_or("–".into(), |v| format!("{v:.2}")),
            );
        }
        out += &format!(
            "\nMedian of {} pairs: p99 on/off {}, CPU cost {} of one core, loss on − off {}; pairs losing more with recording on: {}. Target (median p99 on/off ≤ {TARGET_RATIO}, loss no worse): {}.\n",
            self.pairs.len(),
            ratio(self.median_p99_on_over_off),
            self.median_cpu_cost_pct_of_core
                .map_or("–".into(), |v| format!("{v:.2} %")),
            self.median_loss_on_minus_off
                .map_or("–".into(), |v| format!("{:.3} %", v * 100.0)),
            self.pairs_losing_more_on,
            match self.target_met {
                Some(true) => "met",
                Some(false) => "not met",
                None => "not measured",
            },
        );
        out
    }
}

/// Runs the phases against `target` (its `pid` gives the CPU figures).
pub async fn run(
    target: Target,
    params: &RecordingParams,
) -> Result<RecordingReport, ScenarioError> {
    params.validate()?;
    let clock = Clock::start();
    let deadline = clock.now() + params.bound();
    let mut crowd = Crowd::new(target.clone(), deadline, 0, Depth::Header)?;
    for i in 0..params.speakers {
        crowd.join(Role::Speaker)?;
        crowd.speaker(i, Command::Speak);
    }
    let gap = Duration::from_secs_f64(1.0 / params.join_rate);
    let mut next = clock.now();
    for _ in 0..params.listeners {
        sleep_until(next).await;
        crowd.join(Role::Listener)?;
        next += gap;
    }
    let settle = clock.now() + Duration::from_secs(20);
    while crowd.counters().heard.load(Ordering::Relaxed) < params.listeners as u64
        && clock.now() < settle
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let heard = crowd.counters().heard.load(Ordering::Relaxed) as usize;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let token = record_token(&target)?;
    let mut probe = target.pid.map(ProcProbe::new);
    let mut phases = Vec::new();
    let mut pooled: [(Vec<u32>, Window, Vec<f64>); 2] = Default::default();
    for round in 0..params.rounds * 2 {
        let (pair, second) = (round / 2, round % 2 == 1);
        // Off then on in even pairs, on then off in odd ones.
        let recording = second != (pair % 2 == 1);
        let egress_id = if recording {
            let (http, room, token) = (target.http, target.room.clone(), token.clone());
            let id = tokio::task::spawn_blocking(move || start_egress(http, &room, &token))
                .await
                .map_err(|e| ScenarioError::Invalid(format!("egress task: {e}")))??;
            Some(id)
        } else {
            None
        };
        // The first second after a switch is left out.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let began = clock.now();
        if let Some(p) = probe.as_mut() {
            let _ = p.sample(began);
        }
        let _ = crowd.window();
        tokio::time::sleep(params.phase - Duration::from_secs(1)).await;
        let ended = clock.now();
        let cpu = probe
            .as_mut()
            .and_then(|p| p.sample(ended).ok())
            .map(|s| s.cpu_cores);
        let mut w = crowd.window();
        w.latency_us.sort_unstable();
        let p99 = percentile(&w.latency_us, 0.99).map(|us| f64::from(us) / 1e3);
        phases.push(Phase {
            pair: pair + 1,
            recording,
            seconds: ended.saturating_duration_since(began).as_secs_f64(),
            server_cpu_cores: cpu,
            loss: w.loss(),
            latency_p99_ms: p99,
            egress_id: egress_id.clone(),
        });
        let pool = &mut pooled[usize::from(recording)];
        pool.0.extend(w.latency_us.iter().copied());
        pool.1.merge(w);
        pool.2.extend(cpu);
        if let Some(id) = egress_id {
            let (http, token) = (target.http, token.clone());
            tokio::task::spawn_blocking(move || stop_egress(http, &id, &token))
                .await
                .map_err(|e| ScenarioError::Invalid(format!("egress task: {e}")))??;
        }
    }
    let _ = crowd.finish().await;
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let cpu_off_on = [mean(&pooled[0].2), mean(&pooled[1].2)];
    let p99 = |i: usize| {
        let mut all = pooled[i].0.clone();
        all.sort_unstable();
        percentile(&all, 0.99).map(|us| f64::from(us) / 1e3)
    };
    let p99_off_on_ms = [p99(0), p99(1)];
    let pairs = pairs_of(&phases);
    let median_p99_on_over_off = median(pairs.iter().filter_map(|p| p.p99_on_over_off));
    let pairs_losing_more_on = pairs
        .iter()
        .filter(|p| p.loss_off_on[1] > p.loss_off_on[0] * TARGET_RATIO)
        .count();
    Ok(RecordingReport {
        median_cpu_cost_pct_of_core: median(pairs.iter().filter_map(|p| p.cpu_cost_pct_of_core)),
        median_loss_on_minus_off: median(pairs.iter().map(|p| p.loss_off_on[1] - p.loss_off_on[0])),
        target_met: median_p99_on_over_off
            .map(|r| r <= TARGET_RATIO && pairs_losing_more_on * 2 <= pairs.len()),
        median_p99_on_over_off,
        pairs_losing_more_on,
        pairs,
        params: params.clone(),
        heard,
        cpu_cost_pct_of_core: cpu_off_on[0]
            .zip(cpu_off_on[1])
            .map(|(off, on)| (on - off) * 100.0),
        cpu_off_on,
        p99_on_over_off: p99_off_on_ms[0]
            .zip(p99_off_on_ms[1])
            .filter(|(off, _)| *off > 0.0)
            .map(|(off, on)| on / off),
        p99_off_on_ms,
        loss_off_on: [pooled[0].1.loss(), pooled[1].1.loss()],
        phases,
    })
}

/// Each pair's off and on phases side by side.
fn pairs_of(phases: &[Phase]) -> Vec<Pair> {
    phases
        .chunks(2)
        .filter_map(|two| {
            let off = two.iter().find(|p| !p.recording)?;
            let on = two.iter().find(|p| p.recording)?;
            let p99 = [off.latency_p99_ms, on.latency_p99_ms];
            Some(Pair {
                pair: off.pair,
                on_first: two[0].recording,
                p99_on_over_off: p99[0]
                    .zip(p99[1])
                    .filter(|(off, _)| *off > 0.0)
                    .map(|(off, on)| on / off),
                p99_off_on_ms: p99,
                loss_off_on: [off.loss, on.loss],
                cpu_cost_pct_of_core: off
                    .server_cpu_cores
                    .zip(on.server_cpu_cores)
                    .map(|(off, on)| (on - off) * 100.0),
            })
        })
        .collect()
}

/// The median (the mean of the middle two for an even count); `None` for none.
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// A token with the `roomRecord` grant the Egress API needs.
fn record_token(target: &Target) -> Result<String, ScenarioError> {
    let grants = VideoGrants {
        room_record: true,
        ..Default::default()
    };
    AccessToken::with_api_key(&target.key, &target.secret)
        .with_identity("bench-recorder")
        .with_grants(grants)
        .with_ttl(Duration::from_secs(3600))
        .to_jwt()
        .map_err(|e| ScenarioError::Invalid(format!("record token: {e}")))
}

/// One Twirp `livekit.Egress` call with a JSON body; the answer's JSON.
fn egress_call(
    http: SocketAddr,
    method: &str,
    body: &serde_json::Value,
    token: &str,
) -> Result<serde_json::Value, ScenarioError> {
    let failed = |why: String| ScenarioError::Invalid(format!("Egress {method}: {why}"));
    let body = body.to_string();
    let timeout = Duration::from_secs(10);
    let mut stream =
        TcpStream::connect_timeout(&http, timeout).map_err(|e| failed(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let request = format!(
        "POST /twirp/livekit.Egress/{method} HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| failed(e.to_string()))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| failed(e.to_string()))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| failed("no HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(failed(format!("{head}: {body}")));
    }
    serde_json::from_str(body).map_err(|e| failed(e.to_string()))
}

/// Starts an audio-only room composite egress to an Ogg file; its id.
fn start_egress(http: SocketAddr, room: &str, token: &str) -> Result<String, ScenarioError> {
    let body = serde_json::json!({
        "roomName": room,
        "audioOnly": true,
        "fileOutputs": [{"fileType": "OGG"}],
    });
    let info = egress_call(http, "StartRoomCompositeEgress", &body, token)?;
    info["egressId"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ScenarioError::Invalid(format!("no egress id in {info}")))
}

fn stop_egress(http: SocketAddr, id: &str, token: &str) -> Result<(), ScenarioError> {
    egress_call(
        http,
        "StopEgress",
        &serde_json::json!({ "egressId": id }),
        token,
    )
    .map(|_| ())
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(pair: usize, recording: bool, p99: f64, loss: f64, cpu: f64) -> Phase {
        Phase {
            pair,
            recording,
            seconds: 10.0,
            server_cpu_cores: Some(cpu),
            loss,
            latency_p99_ms: Some(p99),
            egress_id: None,
        }
    }

    #[test]
    fn pairs_side_by_side_whatever_their_order_and_a_median_one_phase_does_not_move() {
        let phases = [
            phase(1, false, 10.0, 0.0, 0.27),
            phase(1, true, 10.2, 0.0, 0.28),
            phase(2, true, 50.0, 0.0, 0.28),
            phase(2, false, 10.0, 0.0, 0.27),
            phase(3, false, 8.0, 0.01, 0.27),
            phase(3, true, 8.0, 0.01, 0.27),
        ];
        let pairs = pairs_of(&phases);
        assert_eq!(pairs.len(), 3);
        assert!(pairs[1].on_first && !pairs[0].on_first);
        assert_eq!(pairs[1].p99_off_on_ms, [Some(10.0), Some(50.0)]);
        let ratios: Vec<f64> = pairs.iter().filter_map(|p| p.p99_on_over_off).collect();
        assert_eq!(ratios, [1.02, 5.0, 1.0]);
        // One disturbed pair (5×) does not move the median.
        assert_eq!(median(ratios.into_iter()), Some(1.02));
        assert!((pairs[0].cpu_cost_pct_of_core.unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(median([1.0, 3.0].into_iter()), Some(2.0));
        assert_eq!(median(std::iter::empty()), None);
    }
}
