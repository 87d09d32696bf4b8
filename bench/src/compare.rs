//! Stoa next to its baselines in one run: what the kernel alone sends per core (`sendmmsg`),
//! then the same capacity ramp and the same join storm against a spawned `stoa serve --dev`
//! and a spawned Janus videoroom, each pinned to the same server cores, the harness on others.
//! The result is one JSON report, the Markdown tables of BENCHMARKS.md and SVG charts with both
//! servers on each.
//!
//! Janus needs a veth interface with a loopback-range address ([`crate::janus`]), and every
//! peer must stay on loopback, so `stoa-bench compare` first moves itself into a private network
//! namespace ([`isolate`]); both servers and every client run inside it.

use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::baseline::{BaselineReport, fanout_baseline, sendmmsg_baseline};
use crate::capacity::{self, CapacityParams, CapacityReport};
use crate::chart::{Chart, Series};
use crate::client::Protocol;
use crate::janus::JanusProcess;
use crate::report::Report;
use crate::scenario::{self, JoinPath, Kind, Params, Progress, ScenarioError, Target};
use crate::server::{ServerError, ServerProcess};

/// The address Janus's ICE uses, on the veth interface [`isolate`] makes.
pub const VETH_ADDRESS: &str = "127.0.0.2";

/// Why the comparison could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompareError {
    /// The network namespace could not be made (needs root or CAP_SYS_ADMIN).
    #[error("private network namespace: {0}")]
    Namespace(String),
    /// A server did not start.
    #[error("{server}: {source}")]
    Server {
        /// Which.
        server: &'static str,
        /// Why.
        source: ServerError,
    },
    /// The kernel baseline failed.
    #[error("sendmmsg baseline: {0}")]
    Baseline(io::Error),
    /// A scenario failed.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
}

/// Move this process into a new network namespace with only `lo` up and a veth pair whose one
/// end holds [`VETH_ADDRESS`]. Call it before any thread is started: threads started earlier
/// stay in the old namespace.
pub fn isolate() -> Result<(), CompareError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        CompareError::Namespace(format!("unshare(CLONE_NEWNET): {e} (run as root)"))
    })?;
    let ip = |args: &[&str]| -> Result<(), CompareError> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| CompareError::Namespace(format!("ip {}: {e}", args.join(" "))))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CompareError::Namespace(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "add", "jv0", "type", "veth", "peer", "name", "jv1"])?;
    // Janus would also offer the veth's IPv6 link-local address: keep it IPv4 only.
    for dev in ["jv0", "jv1"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
    }
    ip(&["addr", "add", &format!("{VETH_ADDRESS}/32"), "dev", "jv0"])?;
    ip(&["link", "set", "jv0", "up"])?;
    ip(&["link", "set", "jv1", "up"])
}

/// What to compare.
#[derive(Debug, Clone, Serialize)]
pub struct CompareParams {
    /// The `stoa` binary.
    pub stoa: PathBuf,
    /// CPUs both servers are pinned to (taskset list).
    pub server_cpus: Option<String>,
    /// CPUs of the harness (and of the fan-out baseline's reading thread).
    pub bench_cpus: Option<String>,
    /// The ramp, run against each server.
    pub capacity: CapacityParams,
    /// Join storm: listeners.
    pub storm_listeners: usize,
    /// Join storm: joins per second.
    pub storm_rate: f64,
    /// Join storm: seconds of play after the last join.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub storm_play: Duration,
    /// Janus's static event loops (0: one thread per handle, its default).
    pub janus_event_loops: usize,
    /// Seconds of the kernel baseline.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub baseline: Duration,
    /// How Stoa's clients join (Janus's always join directly).
    pub path: JoinPath,
}

/// One server's results.
#[derive(Debug, Clone, Serialize)]
pub struct ServerResult {
    /// "Stoa" or "Janus".
    pub name: &'static str,
    /// The capacity ramp.
    pub capacity: CapacityReport,
    /// Packets received by listeners per second per server core at the largest passing step:
    /// the forwarding rate as the clients saw it, measured the same way for both servers.
    pub rx_pps_per_server_core: Option<f64>,
    /// Growth of the server's RSS per added listener over the passing steps, KiB.
    pub rss_kib_per_listener: Option<f64>,
    /// The join storm.
    pub storm: Report,
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// What was run.
    pub params: CompareParams,
    /// `nproc` and the CPU model, for the record.
    pub machine: String,
    /// The kernel baseline on the server's CPUs: `sendmmsg` as fast as it goes to sockets
    /// that never read.
    pub baseline: BaselineReport,
    /// The kernel's fan-out floor on the server's CPUs: one datagram every 20 ms to each of as
    /// many reading sockets as Stoa's largest passing step had listeners.
    pub fanout: BaselineReport,
    /// Stoa, then Janus.
    pub servers: Vec<ServerResult>,
}

/// Pin the calling thread to `cpus`, if given.
fn pin(cpus: Option<&str>) -> io::Result<()> {
    cpus.map_or(Ok(()), |c| {
        crate::affinity::pin(c).map_err(io::Error::other)
    })
}

/// Run a kernel baseline on a thread of its own pinned to the server's CPUs (not on tokio's
/// blocking pool, whose threads are reused and would stay pinned).
async fn on_server_cpus(
    params: &CompareParams,
    baseline: impl FnOnce() -> io::Result<BaselineReport> + Send + 'static,
) -> Result<BaselineReport, CompareError> {
    let cpus = params.server_cpus.clone();
    let thread = std::thread::Builder::new()
        .name("baseline".into())
        .spawn(move || {
            pin(cpus.as_deref())?;
            baseline()
        })
        .map_err(CompareError::Baseline)?;
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| CompareError::Baseline(io::Error::other(e)))?
        .map_err(|_| CompareError::Baseline(io::Error::other("the baseline thread panicked")))?
        .map_err(CompareError::Baseline)
}

/// Run everything, one server at a time; the baselines on threads of their own pinned to the
/// server's CPUs.
pub async fn run(
    params: &CompareParams,
    progress: &mut dyn Progress,
) -> Result<CompareReport, CompareError> {
    let seconds = params.baseline;
    let baseline = on_server_cpus(params, move || sendmmsg_baseline(seconds, 1000, 100)).await?;
    let mut servers = Vec::new();
    for name in ["Stoa", "Janus"] {
        let capacity = {
            let (target, _guard) = spawn(name, params)?;
            capacity::search(target, &params.capacity, progress).await?
        };
        let storm = {
            let (target, _guard) = spawn(name, params)?;
            let storm = Params {
                kind: Kind::JoinStorm,
                speakers: 1,
                listeners: params.storm_listeners,
                join_rate: params.storm_rate,
                duration: params.storm_play,
                churn_rate: 1.0,
                rotate_every: Duration::from_secs(1),
                decoders: 1,
                depth: params.capacity.depth,
            };
            scenario::run(target, &storm, progress).await?
        };
        servers.push(ServerResult {
            name,
            rx_pps_per_server_core: rx_per_core(&capacity),
            rss_kib_per_listener: rss_slope(&capacity),
            capacity,
            storm,
        });
    }
    // The fan-out floor at the size Stoa reached (its first step when none passed).
    let listeners = servers
        .first()
        .and_then(|s| s.capacity.steps.iter().rev().find(|st| st.pass))
        .map_or(params.capacity.start, |st| st.listeners);
    let bench_cpus = params.bench_cpus.clone();
    let fanout = on_server_cpus(params, move || {
        fanout_baseline(seconds, listeners, 100, move || {
            let _ = pin(bench_cpus.as_deref());
        })
    })
    .await?;
    Ok(CompareReport {
        params: params.clone(),
        machine: machine(),
        baseline,
        fanout,
        servers,
    })
}

/// A server process of either kind, kept alive by the guard.
enum Guard {
    Stoa(#[allow(dead_code)] ServerProcess),
    Janus(#[allow(dead_code)] JanusProcess),
}

fn spawn(name: &'static str, params: &CompareParams) -> Result<(Target, Guard), CompareError> {
    let cpus = params.server_cpus.as_deref();
    let wrap = |source| CompareError::Server {
        server: name,
        source,
    };
    let (http, protocol, pid, guard) = if name == "Janus" {
        let p = JanusProcess::spawn(cpus, params.janus_event_loops).map_err(wrap)?;
        (p.ws, Protocol::Janus, p.pid(), Guard::Janus(p))
    } else {
        let p = ServerProcess::spawn(&params.stoa, cpus, None).map_err(wrap)?;
        (p.http, Protocol::Livekit, p.pid(), Guard::Stoa(p))
    };
    let target = Target {
        http,
        protocol,
        key: "devkey".into(),
        secret: "secret".into(),
        room: "bench".into(),
        pid: Some(pid),
        path: if protocol == Protocol::Livekit {
            params.path
        } else {
            JoinPath::Direct
        },
        api: Vec::new(),
    };
    Ok((target, guard))
}

fn rx_per_core(r: &CapacityReport) -> Option<f64> {
    let best = r.steps.iter().rev().find(|s| s.pass)?;
    let cores = best.server_cpu_cores.filter(|c| *c > 0.01)?;
    Some(best.rx_pps / cores)
}

/// Least-squares slope of RSS against listeners over every step (memory does not depend on
/// whether a step met the limits).
fn rss_slope(r: &CapacityReport) -> Option<f64> {
    let points: Vec<(f64, f64)> = r
        .steps
        .iter()
        .filter_map(|s| Some((s.listeners as f64, s.server_rss_kib? as f64)))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn machine() -> String {
    // /proc/cpuinfo, not available_parallelism: the harness may be pinned to one CPU already.
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU", str::trim);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {}", kernel.trim())
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

impl CompareReport {
    /// The tables of BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Machine: {}.\n", self.machine);
        let _ = writeln!(
            s,
            "Kernel alone (`sendmmsg`, batches of 32, {}-byte datagrams to {} sockets, server CPU): \
             **{:.0} pkt/s per core**.\n",
            self.baseline.payload, self.baseline.destinations, self.baseline.pps_per_core
        );
        let _ = writeln!(
            s,
            "Kernel fan-out floor (one 100-byte datagram every 20 ms to each of {} sockets that a \
             thread on the harness CPU reads, batches of 32, server CPU): **{:.0} pkt/s per core**.\n",
            self.fanout.destinations, self.fanout.pps_per_core
        );
        let _ = writeln!(
            s,
            "| server | max listener-streams (< {:.0} % loss, p99 < {:.0} ms) | server CPU there | \
             listener-streams per core | received pkt/s per core | / sendmmsg | / fan-out floor | \
             RSS per listener | stopped at |",
            self.params.capacity.loss_limit * 100.0,
            self.params.capacity.p99_limit_ms
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.servers {
            let best = r.capacity.steps.iter().rev().find(|st| st.pass);
            let _ = writeln!(
                s,
                "| {} | {} | {} | **{}** | {} | {} | {} | {} KiB | {} |",
                r.name,
                r.capacity.max_streams,
                opt(best.and_then(|b| b.server_cpu_cores), 2),
                opt(r.capacity.streams_per_server_core, 0),
                opt(r.rx_pps_per_server_core, 0),
                opt(
                    r.rx_pps_per_server_core
                        .map(|v| v / self.baseline.pps_per_core),
                    2
                ),
                opt(
                    r.rx_pps_per_server_core
                        .map(|v| v / self.fanout.pps_per_core),
                    2
                ),
                opt(r.rss_kib_per_listener, 0),
                r.capacity.stop
            );
        }
        if let [stoa, janus] = self.servers.as_slice()
            && let (Some(a), Some(b)) = (
                stoa.capacity.streams_per_server_core,
                janus.capacity.streams_per_server_core,
            )
            && b > 0.0
        {
            let _ = writeln!(
                s,
                "\nStoa / Janus, listener-streams per server core: **{:.2}×**.",
                a / b
            );
        }
        for r in &self.servers {
            let _ = writeln!(s, "\n{} ramp:\n", r.name);
            let _ = writeln!(
                s,
                "| listeners | loss | p99 latency | received pkt/s | server CPU | server RSS | harness CPU | pass |"
            );
            let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|:--:|");
            for st in &r.capacity.steps {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} % | {} ms | {:.0} | {} | {} MiB | {} | {} |",
                    st.listeners,
                    st.loss * 100.0,
                    opt(st.p99_ms, 1),
                    st.rx_pps,
                    opt(st.server_cpu_cores, 2),
                    st.server_rss_kib
                        .map_or("-".into(), |k| format!("{}", k / 1024)),
                    opt(st.harness_cpu_cores, 2),
                    if st.pass { "yes" } else { "no" }
                );
            }
        }
        let _ = writeln!(
            s,
            "\nJoin storm ({} listeners at {:.0}/s, 1 speaker):\n",
            self.params.storm_listeners, self.params.storm_rate
        );
        let _ = writeln!(
            s,
            "| server | heard | failed | join→first audio p50 / p95 / p99 | latency p50 / p99 | loss | server CPU mean | RSS per client |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.servers {
            let st = &r.storm;
            let j = st.join_to_first_audio_ms.as_ref();
            let l = st.latency_ms.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} / {} | {} | {} / **{}** / {} ms | {} / {} ms | {:.2} % | {} | {} KiB |",
                r.name,
                st.clients.heard,
                st.clients.listeners,
                st.clients.failed,
                opt(j.map(|q| q.p50), 0),
                opt(j.map(|q| q.p95), 0),
                opt(j.map(|q| q.p99), 0),
                opt(l.map(|q| q.p50), 1),
                opt(l.map(|q| q.p99), 1),
                st.loss * 100.0,
                opt(st.server.as_ref().map(|f| f.cpu_cores_mean), 2),
                opt(st.server.as_ref().and_then(|f| f.rss_kib_per_client), 0),
            );
        }
        s
    }

    /// Charts with one line per server: (file stem, chart).
    pub fn charts(&self) -> Vec<(&'static str, Chart)> {
        let series = |f: &dyn Fn(&capacity::Step) -> Option<f64>| -> Vec<Series> {
            self.servers
                .iter()
                .map(|r| Series {
                    name: r.name.into(),
                    points: r
                        .capacity
                        .steps
                        .iter()
                        .filter_map(|s| f(s).map(|y| (s.listeners as f64, y)))
                        .collect(),
                })
                .collect()
        };
        let chart = Chart::against_listeners;
        vec![
            (
                "compare-loss",
                chart(
                    "Loss against listeners",
                    "loss %",
                    series(&|s| Some(s.loss * 100.0)),
                ),
            ),
            (
                "compare-latency",
                chart(
                    "p99 one-way latency against listeners",
                    "ms",
                    series(&|s| s.p99_ms),
                ),
            ),
            (
                "compare-cpu",
                chart(
                    "Server CPU against listeners",
                    "cores",
                    series(&|s| s.server_cpu_cores),
                ),
            ),
            (
                "compare-rss",
                chart(
                    "Server memory against listeners",
                    "MiB",
                    series(&|s| s.server_rss_kib.map(|k| k as f64 / 1024.0)),
                ),
            ),
        ]
    }
}
