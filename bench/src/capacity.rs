//! Capacity search: one room, a few speakers, listeners added step by step; each step holds for
//! a few seconds and is judged by its loss and p99 one-way latency. The search stops at the
//! first step over a limit (or the step cap) and reports the largest passing step as
//! listener-streams (listeners × speakers) per server core.
//!
//! The harness runs the listeners too, so it can saturate before the server: each step records
//! the harness's own CPU beside the server's, and a step where the harness is the busier side
//! says so.

use std::time::Duration;

use serde::Serialize;

use crate::client::{Depth, Role};
use crate::scenario::{Crowd, Progress, Sampler, ScenarioError, Target, percentile};
use crate::server::ProcProbe;

/// The ramp.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityParams {
    /// Speakers, all speaking.
    pub speakers: usize,
    /// Listeners of the first step.
    pub start: usize,
    /// Listeners added per step.
    pub step: usize,
    /// Most listeners; the search stops there.
    pub max_listeners: usize,
    /// Listener joins per second.
    pub join_rate: f64,
    /// Seconds each step is measured for (after one second to settle).
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub hold: Duration,
    /// Loss limit, as a fraction.
    pub loss_limit: f64,
    /// p99 one-way latency limit, milliseconds.
    pub p99_limit_ms: f64,
    /// How deeply listeners read what they receive.
    pub depth: Depth,
    /// Cores the server is pinned to, when it is.
    pub server_cores: Option<usize>,
    /// Cores the harness is pinned to, when it is.
    pub bench_cores: Option<usize>,
}

/// Above this share of its cores busy, the harness, not the server, may be what failed a step.
const HARNESS_BOUND: f64 = 0.85;

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Listeners present.
    pub listeners: usize,
    /// Listener-streams: listeners × speakers.
    pub streams: usize,
    /// Listeners that have heard audio.
    pub heard: u64,
    /// Loss over the hold.
    pub loss: f64,
    /// p99 one-way latency over the hold, ms.
    pub p99_ms: Option<f64>,
    /// Packets per second received by all listeners.
    pub rx_pps: f64,
    /// Server CPU, cores.
    pub server_cpu_cores: Option<f64>,
    /// Server RTP forwarded per second.
    pub server_out_pps: Option<f64>,
    /// Server RSS, KiB.
    pub server_rss_kib: Option<u64>,
    /// This harness's CPU, cores.
    pub harness_cpu_cores: Option<f64>,
    /// Within both limits, and every listener heard audio.
    pub pass: bool,
}

/// What the search found.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    /// The ramp.
    pub params: CapacityParams,
    /// Every step measured.
    pub steps: Vec<Step>,
    /// Why it stopped.
    pub stop: String,
    /// Largest passing step's listener-streams.
    pub max_streams: usize,
    /// That, divided by the server CPU measured at that step.
    pub streams_per_server_core: Option<f64>,
    /// Forwarded packets per second per server core at that step.
    pub out_pps_per_server_core: Option<f64>,
}

/// Run the ramp against `target`.
pub async fn search(
    target: Target,
    params: &CapacityParams,
    progress: &mut dyn Progress,
) -> Result<CapacityReport, ScenarioError> {
    if params.speakers == 0 || params.step == 0 || params.start == 0 {
        return Err(ScenarioError::Invalid(
            "speakers, start and step must be positive".into(),
        ));
    }
    if params.max_listeners + params.speakers > crate::scenario::MAX_CLIENTS
        || params.hold > Duration::from_secs(600)
        || params.join_rate.is_nan()
        || params.join_rate <= 0.0
    {
        return Err(ScenarioError::Invalid("ramp out of bounds".into()));
    }
    let steps_max = (params.max_listeners.saturating_sub(params.start)) / params.step + 1;
    let per_step = Duration::from_secs_f64(params.step.max(params.start) as f64 / params.join_rate)
        + params.hold
        + Duration::from_secs(3);
    let bound = per_step * u32::try_from(steps_max).unwrap_or(u32::MAX) + Duration::from_secs(30);
    let probe_clock = crate::clock::Clock::start();
    let deadline = probe_clock.now() + bound;
    let mut crowd = Crowd::open(target.clone(), deadline, 1, params.depth).await?;
    let clock = crowd.clock();
    let mut sampler = Sampler::new(&target, &crowd);
    let mut harness = ProcProbe::new(std::process::id());
    for i in 0..params.speakers {
        crowd.join(Role::Speaker)?;
        crowd.speaker(i, crate::client::Command::Speak);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut steps = Vec::new();
    let mut stop = format!("reached {} listeners", params.max_listeners);
    let mut want = params.start;
    let gap = Duration::from_secs_f64(1.0 / params.join_rate);
    while want <= params.max_listeners {
        while crowd.listeners() < want {
            crowd.join(Role::Listener)?;
            tokio::time::sleep(gap).await;
        }
        // Settle: let the last joiners connect, then start the step's window afresh.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = crowd.window();
        let _ = harness.sample(clock.now());
        let _ = sampler.tick(&crowd).await;
        let mut window = crate::reception::Window::default();
        let mut cpu = Vec::new();
        let mut out = Vec::new();
        let mut rx = Vec::new();
        let mut rss = None;
        let mut harness_cpu = Vec::new();
        let secs = params.hold.as_secs().max(1);
        for _ in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            window.merge(crowd.window());
            let t = sampler.tick(&crowd).await;
            progress.line(&t);
            cpu.extend(t.server_cpu_cores);
            out.extend(t.server_out_pps);
            rx.push(t.rx_pps);
            rss = t.server_rss_kib.or(rss);
            if let Ok(h) = harness.sample(clock.now()) {
                harness_cpu.push(h.cpu_cores);
            }
        }
        window.latency_us.sort_unstable();
        let p99_ms = percentile(&window.latency_us, 0.99).map(|us| f64::from(us) / 1e3);
        let heard = crowd
            .counters()
            .heard
            .load(std::sync::atomic::Ordering::Relaxed);
        let loss = window.loss();
        let pass = loss <= params.loss_limit
            && p99_ms.is_some_and(|p| p <= params.p99_limit_ms)
            && heard >= want as u64;
        steps.push(Step {
            listeners: want,
            streams: want * params.speakers,
            heard,
            loss,
            p99_ms,
            rx_pps: mean(&rx).unwrap_or(0.0),
            server_cpu_cores: mean(&cpu),
            server_out_pps: mean(&out),
            server_rss_kib: rss,
            harness_cpu_cores: mean(&harness_cpu),
            pass,
        });
        if !pass {
            stop = format!(
                "{want} listeners: loss {:.2} %, p99 {} ms, {heard} heard",
                loss * 100.0,
                p99_ms.map_or("-".into(), |p| format!("{p:.1}"))
            );
            // Per core: the harness has as many as the server when both are pinned.
            let per_core = |cores: Option<f64>, pinned: Option<usize>| {
                cores.map(|c| c / pinned.unwrap_or(1).max(1) as f64)
            };
            let harness = per_core(mean(&harness_cpu), params.bench_cores);
            let server = per_core(mean(&cpu), params.server_cores);
            if let (Some(h), Some(s)) = (harness, server)
                && h >= HARNESS_BOUND
                && h > s
            {
                stop.push_str(&format!(
                    " (harness-bound: harness {h:.2} of its cores busy, server {s:.2})"
                ));
            }
            break;
        }
        want += params.step;
    }
    let _ = crowd.finish().await;
    let best = steps.iter().rev().find(|s| s.pass);
    Ok(CapacityReport {
        max_streams: best.map_or(0, |s| s.streams),
        streams_per_server_core: best.and_then(|s| {
            s.server_cpu_cores
                .filter(|c| *c > 0.01)
                .map(|c| s.streams as f64 / c)
        }),
        out_pps_per_server_core: best.and_then(|s| {
            let c = s.server_cpu_cores.filter(|c| *c > 0.01)?;
            s.server_out_pps.map(|o| o / c)
        }),
        stop,
        steps,
        params: params.clone(),
    })
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

impl CapacityReport {
    /// The ramp as a table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>9} {:>8} {:>8} {:>9} {:>10} {:>10} {:>11} {:>12} {:>5}",
            "listeners",
            "streams",
            "loss %",
            "p99 ms",
            "rx pkt/s",
            "server cpu",
            "server out/s",
            "harness cpu",
            "pass"
        );
        for st in &self.steps {
            let _ = writeln!(
                s,
                "{:>9} {:>8} {:>8.3} {:>9} {:>10.0} {:>10} {:>11} {:>12} {:>5}",
                st.listeners,
                st.streams,
                st.loss * 100.0,
                st.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
                st.rx_pps,
                st.server_cpu_cores
                    .map_or("-".into(), |c| format!("{c:.2}")),
                st.server_out_pps.map_or("-".into(), |c| format!("{c:.0}")),
                st.harness_cpu_cores
                    .map_or("-".into(), |c| format!("{c:.2}")),
                if st.pass { "yes" } else { "no" }
            );
        }
        let _ = writeln!(s, "stopped: {}", self.stop);
        let _ = writeln!(
            s,
            "max {} listener-streams; {} streams per server core; {} forwarded pkt/s per server core",
            self.max_streams,
            self.streams_per_server_core
                .map_or("-".into(), |v| format!("{v:.0}")),
            self.out_pps_per_server_core
                .map_or("-".into(), |v| format!("{v:.0}"))
        );
        s
    }
}
