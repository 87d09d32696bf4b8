//! The control plane alone, ramped to a large room: token minting and admission without media.
//!
//! A room is created and started through `/api` (server token, hosted by `host`). Then
//! `members` users join it in steps, by `concurrency` workers: each mints the user's token,
//! calls `POST /api/rooms/{id}/token` and then `GET /rtc/validate` with the media token it got
//! (the `/rtc` admission check: token, bans, kicks, membership, the member's current grants)
//! on the node that token names, and moves to the next user. With several servers (instances
//! sharing one Redis), users are spread over them in turn.
//!
//! Each step records joins per second, the quantiles of both calls, failures, the size of the
//! room as its host reads it (`GET /api/rooms/{id}`) and every server's RSS, so that the report
//! can set the first step (an empty room) against the last (a full one), and give the memory
//! per member as the RSS slope over the ramp.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::product::{ApiError, Http};
use crate::report::Quantiles;
use crate::server::ProcProbe;

/// Most members one run may add.
pub const MAX_MEMBERS: usize = 100_000;
/// Most concurrent workers.
pub const MAX_CONCURRENCY: usize = 1_024;

/// One server of the run.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its process id, to read its memory.
    pub pid: Option<u32>,
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct ApiLoadParams {
    /// Users who join, in all.
    pub members: usize,
    /// Users per measured step.
    pub step: usize,
    /// Concurrent workers (each one user at a time).
    pub concurrency: usize,
    /// Also run the `/rtc` admission check (`GET /rtc/validate`) with each media token.
    pub admission: bool,
    /// API key and secret.
    #[serde(skip)]
    pub key: String,
    /// API secret.
    #[serde(skip)]
    pub secret: String,
    /// Longest the whole run may take.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub bound: Duration,
}

/// One step of the ramp.
#[derive(Debug, Clone, Serialize)]
pub struct ApiStep {
    /// Members before the step.
    pub members_from: usize,
    /// Members after it.
    pub members_to: usize,
    /// Joins that succeeded.
    pub joins: usize,
    /// Joins that failed.
    pub failures: usize,
    /// Wall time of the step, seconds.
    pub seconds: f64,
    /// Successful joins (token + admission) per second.
    pub joins_per_s: f64,
    /// `POST /api/rooms/{id}/token`.
    pub token_ms: Option<Quantiles>,
    /// `GET /rtc/validate`.
    pub admission_ms: Option<Quantiles>,
    /// Bytes of `GET /api/rooms/{id}` as the host reads it, after the step.
    pub room_view_bytes: Option<usize>,
    /// RSS of every server after the step, KiB, summed.
    pub server_rss_kib: Option<u64>,
}

/// What the ramp measured.
#[derive(Debug, Clone, Serialize)]
pub struct ApiLoadReport {
    /// What was run.
    pub params: ApiLoadParams,
    /// Servers.
    pub nodes: usize,
    /// The room.
    pub room: String,
    /// Every step.
    pub steps: Vec<ApiStep>,
    /// Joins per second of the last step over the first.
    pub throughput_ratio: Option<f64>,
    /// p95 of the token call, last step over first.
    pub token_p95_ratio: Option<f64>,
    /// RSS growth per member over the ramp (least squares), KiB, all servers together.
    pub rss_kib_per_member: Option<f64>,
    /// The first few errors.
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Samples {
    token_us: Vec<u32>,
    admission_us: Vec<u32>,
    failures: usize,
    errors: Vec<String>,
}

/// Run the ramp against `nodes` (the room is created on the first).
pub async fn run(nodes: &[Node], params: &ApiLoadParams) -> Result<ApiLoadReport, ApiError> {
    if nodes.is_empty()
        || params.members == 0
        || params.members > MAX_MEMBERS
        || params.step == 0
        || params.concurrency == 0
        || params.concurrency > MAX_CONCURRENCY
    {
        return Err(ApiError::Protocol(format!(
            "invalid parameters: 1 to {MAX_MEMBERS} members, a step, 1 to {MAX_CONCURRENCY} workers"
        )));
    }
    #[allow(clippy::disallowed_methods)]
    let deadline = Instant::now() + params.bound;
    let server = crate::product::server_token(&params.key, &params.secret)?;
    let host_token = crate::product::user_token(&params.key, &params.secret, "host", "Host")?;
    let mut http = Http::new(nodes[0].http)?;
    let room = crate::product::create_room(&mut http, &server, "host", "API load", None).await?;
    let mut probes: Vec<Option<ProcProbe>> =
        nodes.iter().map(|n| n.pid.map(ProcProbe::new)).collect();
    let mut steps = Vec::new();
    let mut errors = Vec::new();
    let mut from = 0;
    while from < params.members {
        #[allow(clippy::disallowed_methods)]
        if Instant::now() > deadline {
            errors.push("the run's time bound passed".to_owned());
            break;
        }
        let to = (from + params.step).min(params.members);
        let next = Arc::new(AtomicUsize::new(from));
        let samples = Arc::new(Mutex::new(Samples::default()));
        #[allow(clippy::disallowed_methods)]
        let began = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..params.concurrency.min(to - from) {
            let (next, samples) = (next.clone(), samples.clone());
            let (nodes, room) = (nodes.to_vec(), room.clone());
            let (key, secret, admission) =
                (params.key.clone(), params.secret.clone(), params.admission);
            workers.push(tokio::spawn(async move {
                let mut conns: Vec<Option<Http>> = nodes.iter().map(|_| None).collect();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return;
                    }
                    #[allow(clippy::disallowed_methods)]
                    if Instant::now() > deadline {
                        return;
                    }
                    let n = i % nodes.len();
                    let r = one(&mut conns, &nodes, n, &room, &key, &secret, i, admission).await;
                    let mut s = samples.lock().unwrap_or_else(PoisonError::into_inner);
                    match r {
                        Ok((t, a)) => {
                            s.token_us.push(t);
                            s.admission_us.extend(a);
                        }
                        Err(e) => {
                            s.failures += 1;
                            if s.errors.len() < 5 {
                                s.errors.push(e.to_string());
                            }
                        }
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
        let seconds = began.elapsed().as_secs_f64().max(1e-6);
        let s = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
        let joins = s.token_us.len();
        errors.extend(
            s.errors
                .into_iter()
                .take(5usize.saturating_sub(errors.len())),
        );
        let view = http
            .call(
                "GET",
                &format!("/api/rooms/{room}"),
                Some(&host_token),
                None,
            )
            .await
            .map(|b| b.len())
            .ok();
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let rss: Vec<u64> = probes
            .iter_mut()
            .filter_map(|p| {
                p.as_mut()
                    .and_then(|p| p.sample(now).ok())
                    .map(|s| s.rss_kib)
            })
            .collect();
        steps.push(ApiStep {
            members_from: from,
            members_to: to,
            joins,
            failures: s.failures,
            seconds,
            joins_per_s: joins as f64 / seconds,
            token_ms: Quantiles::from_us(s.token_us),
            admission_ms: Quantiles::from_us(s.admission_us),
            room_view_bytes: view,
            server_rss_kib: (!rss.is_empty()).then(|| rss.iter().sum()),
        });
        from = to;
    }
    let ratio = |f: &dyn Fn(&ApiStep) -> Option<f64>| -> Option<f64> {
        let (a, b) = (f(steps.first()?)?, f(steps.last()?)?);
        (a > 0.0 && steps.len() > 1).then(|| b / a)
    };
    let throughput_ratio = ratio(&|s| Some(s.joins_per_s));
    let token_p95_ratio = ratio(&|s| s.token_ms.as_ref().map(|q| q.p95));
    let points: Vec<(f64, f64)> = steps
        .iter()
        .filter_map(|s| Some((s.members_to as f64, s.server_rss_kib? as f64)))
        .collect();
    Ok(ApiLoadReport {
        params: params.clone(),
        nodes: nodes.len(),
        room,
        throughput_ratio,
        token_p95_ratio,
        rss_kib_per_member: slope(&points),
        steps,
        errors,
    })
}

/// One user's join through node `n`: (token call µs, admission call µs).
#[allow(clippy::too_many_arguments)]
async fn one(
    conns: &mut [Option<Http>],
    nodes: &[Node],
    n: usize,
    room: &str,
    key: &str,
    secret: &str,
    i: usize,
    admission: bool,
) -> Result<(u32, Option<u32>), ApiError> {
    let identity = format!("member-{i}");
    let user = crate::product::user_token(key, secret, &identity, &format!("Member {i}"))?;
    if conns[n].is_none() {
        conns[n] = Some(Http::new(nodes[n].http)?);
    }
    let Some(http) = conns[n].as_mut() else {
        return Err(ApiError::Protocol("no connection".into()));
    };
    #[allow(clippy::disallowed_methods)]
    let t0 = Instant::now();
    let grant = crate::product::media_token(http, room, &user).await?;
    let token_us = micros(t0.elapsed());
    if !admission {
        return Ok((token_us, None));
    }
    // The node the token names; with several nodes and no public URL, the one that answered.
    let m = nodes.iter().position(|x| x.http == grant.rtc).unwrap_or(n);
    if conns[m].is_none() {
        conns[m] = Some(Http::new(nodes[m].http)?);
    }
    let Some(http) = conns[m].as_mut() else {
        return Err(ApiError::Protocol("no connection".into()));
    };
    #[allow(clippy::disallowed_methods)]
    let t1 = Instant::now();
    http.call(
        "GET",
        &format!("/rtc/validate?access_token={}", grant.token),
        None,
        None,
    )
    .await?;
    Ok((token_us, Some(micros(t1.elapsed()))))
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Least-squares slope of `points` (y per x).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

impl ApiLoadReport {
    /// The ramp as a table, with the ratios under it.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let q = |x: &Option<Quantiles>, f: fn(&Quantiles) -> f64| {
            x.as_ref().map_or("-".into(), |q| format!("{:.1}", f(q)))
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>13} {:>7} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "members",
            "joins",
            "failed",
            "joins/s",
            "token p50",
            "token p95",
            "admit p50",
            "admit p95",
            "view bytes",
            "rss MiB"
        );
        for st in &self.steps {
            let _ = writeln!(
                s,
                "{:>13} {:>7} {:>6} {:>8.0} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
                format!("{}-{}", st.members_from, st.members_to),
                st.joins,
                st.failures,
                st.joins_per_s,
                q(&st.token_ms, |q| q.p50),
                q(&st.token_ms, |q| q.p95),
                q(&st.admission_ms, |q| q.p50),
                q(&st.admission_ms, |q| q.p95),
                st.room_view_bytes.map_or("-".into(), |b| b.to_string()),
                st.server_rss_kib
                    .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            );
        }
        let f = |v: Option<f64>, d: usize| v.map_or("-".into(), |v| format!("{v:.d$}"));
        let _ = writeln!(
            s,
            "last/first step: joins/s {}x, token p95 {}x; RSS per member {} KiB; {} node(s)",
            f(self.throughput_ratio, 2),
            f(self.token_p95_ratio, 2),
            f(self.rss_kib_per_member, 2),
            self.nodes
        );
        for e in &self.errors {
            let _ = writeln!(s, "error: {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line() {
        let pts = [(0.0, 10.0), (100.0, 60.0), (200.0, 110.0)];
        assert!((slope(&pts).unwrap_or(0.0) - 0.5).abs() < 1e-9);
        assert_eq!(slope(&pts[..1]), None);
    }
}
