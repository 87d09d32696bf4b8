//! `stoa-bench`: load-test a Stoa (or any LiveKit-compatible) server on this machine.
//!
//! ```text
//! stoa-bench run --scenario room --speakers 2 --listeners 50 --spawn target/release/stoa
//! stoa-bench capacity --speakers 1 --start 100 --step 100 --spawn target/release/stoa \
//!     --server-cpus 0 --bench-cpus 1
//! stoa-bench baseline --seconds 3
//! stoa-bench compare --stoa target/release/stoa --server-cpus 0 --bench-cpus 1 --out docs/bench
//! stoa-bench run --scenario join-storm --path both --listeners 1000 --join-rate 200 \
//!     --spawn target/release/stoa
//! stoa-bench api-load --members 10000 --spawn target/release/stoa
//! stoa-bench relay --spawn target/release/stoa --speakers 10 --listeners 100 \
//!     --server-cpus 0 --bench-cpus 1
//! ```

// A binary: it owns the clock and prints its reports.
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use stoa_bench::affinity;
use stoa_bench::capacity::{self, CapacityParams};
use stoa_bench::client::{Depth, Protocol};
use stoa_bench::compare::{self, CompareParams};
use stoa_bench::report::{Tick, progress_line};
use stoa_bench::scenario::{self, JoinPath, Kind, Params, Progress, Target};
use stoa_bench::server::ServerProcess;

/// Load generator for Stoa: LiveKit-protocol clients over real UDP on this machine.
#[derive(Debug, Parser)]
#[command(name = "stoa-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Play one scenario and print its report.
    Run(RunArgs),
    /// Ramp listeners until loss or latency passes its limit.
    Capacity(CapacityArgs),
    /// Measure what the kernel alone sends per core with sendmmsg.
    Baseline(BaselineArgs),
    /// In a private network namespace: the sendmmsg baseline, then the same capacity ramp and
    /// join storm against a spawned Stoa and a spawned Janus videoroom; writes the report,
    /// BENCHMARKS.md's tables and charts.
    Compare(CompareArgs),
    /// The control plane alone: users join one room through `POST /api/rooms/{id}/token` and
    /// the `/rtc` admission check, without media, in measured steps up to a large room.
    ApiLoad(ApiLoadArgs),
    /// Join storms in room B while room A idles, then while it is busy (reactions and speaker
    /// rotation), alternating; reports room B's join-to-first-audio either way.
    TwoRooms(TwoRoomsArgs),
    /// A room with speakers all speaking and listeners, its recording (Twirp `livekit.Egress`)
    /// off and on in alternating phases; reports the server's CPU and the listeners' latency
    /// and loss either way.
    Recording(RecordingArgs),
    /// One room across three nodes on one Redis, each `stoa serve` in its own network
    /// namespace joined by veth links: listeners on the room's origin and on two edges side by
    /// side, the relay hop's added latency and the CPU of a listener and of a node-to-node link.
    Relay(RelayArgs),
    /// Three nodes on one Redis (started here) under one room that spills over to edges; one
    /// node is killed with SIGKILL; reports how soon its listeners hear audio again.
    Failover(FailoverArgs),
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// The `stoa` binary to start as each node.
    #[arg(long, value_name = "PATH")]
    spawn: PathBuf,
    /// Speakers, all speaking (each link carries each of them once).
    #[arg(long, default_value_t = 4)]
    speakers: usize,
    /// Where the speakers are: on the room's origin (they join first), or on the first edge
    /// (they join once the origin is full; the origin hears them through its feed from it).
    #[arg(long, value_enum, default_value = "origin")]
    stage: stoa_bench::relay::Stage,
    /// Participants per node, its `node_capacity`: the speakers' node holds them and the rest
    /// as listeners, every other node as many listeners (an edge does not count the origin's
    /// speakers it mirrors).
    #[arg(long, default_value_t = 50)]
    listeners: usize,
    /// Listener joins per second.
    #[arg(long, default_value_t = 50.0)]
    join_rate: f64,
    /// Seconds each phase is measured.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// How deeply listeners read the audio.
    #[arg(long, value_enum, default_value = "header")]
    depth: Depth,
    /// With the speakers on the origin, rounds of the alternated listener cost after the
    /// phases: half the origin's listeners and as many of the first edge's leave and come
    /// back, a window measured either way (0 to 10).
    #[arg(long, default_value_t = 0)]
    rounds: usize,
    /// Pin the nodes and Redis to these CPUs (taskset list, e.g. `0`).
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Pin this harness to these CPUs (e.g. `1`).
    #[arg(long, value_name = "LIST")]
    bench_cpus: Option<String>,
    /// Harness worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the nodes' logs (node-N.log) into this directory.
    #[arg(long, value_name = "DIR")]
    logs: Option<PathBuf>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct FailoverArgs {
    /// Listeners in the room.
    #[arg(long, default_value_t = 1000)]
    listeners: usize,
    /// Their joins per second while the room fills.
    #[arg(long, default_value_t = 100.0)]
    join_rate: f64,
    /// Each node's `[control] node_capacity`: the origin takes this many participants, the rest
    /// spill over to the other nodes.
    #[arg(long, default_value_t = 501)]
    capacity: u64,
    /// Which node is killed.
    #[arg(long, value_enum, default_value = "edge")]
    kill: stoa_bench::failover::Victim,
    /// Each node in a network namespace of its own joined by veth links, as `relay` runs them
    /// (needs root); otherwise all on 127.0.0.1.
    #[arg(long)]
    namespaces: bool,
    /// Harness worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds after the kill when the run gives up.
    #[arg(long, default_value_t = 30)]
    give_up: u64,
    /// The `stoa` binary the nodes run.
    #[arg(long, value_name = "PATH")]
    spawn: PathBuf,
    /// Pin the nodes to these CPUs (taskset list, e.g. `0`).
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Pin this harness to these CPUs (e.g. `1`).
    #[arg(long, value_name = "LIST")]
    bench_cpus: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the nodes' logs (`node-0.log`…) into this directory.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RecordingArgs {
    /// Speakers, all speaking at once.
    #[arg(long, default_value_t = 4)]
    speakers: usize,
    /// Listeners.
    #[arg(long, default_value_t = 200)]
    listeners: usize,
    /// Listener joins per second.
    #[arg(long, default_value_t = 100.0)]
    join_rate: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10.0)]
    phase: f64,
    /// Phase pairs (one off, one on; the order alternates from pair to pair), 1 to 20.
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    #[command(flatten)]
    server: ServerArgs,
}

/// How clients join, for `run`: one path, or both side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PathArg {
    /// Tokens minted by the harness, straight to `/rtc`.
    Direct,
    /// Through the control plane, as the web app does.
    Product,
    /// The same run twice, direct then product (a fresh server each with --spawn).
    Both,
}

#[derive(Debug, Args)]
struct TwoRoomsArgs {
    /// Room A's listeners.
    #[arg(long, default_value_t = 2000)]
    a_listeners: usize,
    /// Room A's speakers (the floor rotates among them).
    #[arg(long, default_value_t = 3)]
    a_speakers: usize,
    /// Room A's listener joins per second.
    #[arg(long, default_value_t = 200.0)]
    a_join_rate: f64,
    /// Busy room A: milliseconds between reactions.
    #[arg(long, default_value_t = 100)]
    reaction_ms: u64,
    /// Busy room A: seconds between floor changes.
    #[arg(long, default_value_t = 2.0)]
    rotate_every: f64,
    /// Listeners per room-B storm.
    #[arg(long, default_value_t = 500)]
    b_listeners: usize,
    /// Their joins per second.
    #[arg(long, default_value_t = 100.0)]
    b_join_rate: f64,
    /// Storm pairs (A idle, A busy).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Run room B's clients on a harness thread of their own (pinned like the rest of the
    /// harness), ahead of room A's: the rest of the harness (room A's clients, the storm
    /// driver) runs 10 nice steps lower, as if room B's clients were on separate devices.
    /// Give --server-cpus and --bench-cpus too: unpinned, the lowered harness also yields
    /// to the server, which changes what is measured.
    #[arg(long)]
    b_own_thread: bool,
    #[command(flatten)]
    server: ServerArgs,
}

/// Which server, and how the harness runs.
#[derive(Debug, Args)]
struct ServerArgs {
    /// HTTP address of a running server (ignored with --spawn).
    #[arg(long, default_value = "127.0.0.1:7880")]
    url: SocketAddr,
    /// Its process id, to read its CPU and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this `stoa` binary as `serve --dev` on free loopback ports instead.
    #[arg(long, value_name = "PATH")]
    spawn: Option<PathBuf>,
    /// Pin the spawned server to these CPUs (taskset list, e.g. `0`).
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Pin this harness to these CPUs (e.g. `1`).
    #[arg(long, value_name = "LIST")]
    bench_cpus: Option<String>,
    /// With --spawn (one instance): this many media engine shards, each on its own UDP port
    /// (default: the server's dev default, one shard per CPU it may use, all on one port).
    #[arg(long, value_name = "N")]
    server_shards: Option<usize>,
    /// Harness worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// API key.
    #[arg(long, default_value = "devkey")]
    key: String,
    /// API secret.
    #[arg(long, default_value = "secret")]
    secret: String,
    /// Room name (direct path), or the title of the room created through /api (product path).
    #[arg(long, default_value = "bench")]
    room: String,
    /// With --spawn: use the Redis store at this URL (`redis://127.0.0.1:PORT/`).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// With --spawn and --redis-url: start this many nodes sharing the Redis store; on the
    /// product path clients call their /api in turn, and every client's media meets on the
    /// first node (where the room is created).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write SVG and PNG charts into this directory.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Which scenario.
    #[arg(long, value_enum, default_value = "room")]
    scenario: Kind,
    /// Speakers.
    #[arg(long, default_value_t = 2)]
    speakers: usize,
    /// Listeners.
    #[arg(long, default_value_t = 20)]
    listeners: usize,
    /// Listener joins per second.
    #[arg(long, default_value_t = 50.0)]
    join_rate: f64,
    /// Seconds the room plays after the last listener was started.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Churn: listeners replaced per second.
    #[arg(long, default_value_t = 2.0)]
    churn_rate: f64,
    /// Rotation: seconds per speaker.
    #[arg(long, default_value_t = 2.0)]
    rotate_every: f64,
    /// Listeners that also decode the audio with libopus.
    #[arg(long, default_value_t = 1)]
    decoders: usize,
    /// How deeply the other listeners read the audio.
    #[arg(long, value_enum, default_value = "header")]
    depth: Depth,
    /// How clients join.
    #[arg(long, value_enum, default_value = "direct")]
    path: PathArg,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
struct CapacityArgs {
    /// Speakers, all speaking.
    #[arg(long, default_value_t = 1)]
    speakers: usize,
    /// Listeners of the first step.
    #[arg(long, default_value_t = 100)]
    start: usize,
    /// Listeners added per step.
    #[arg(long, default_value_t = 100)]
    step: usize,
    /// Most listeners.
    #[arg(long, default_value_t = 2000)]
    max_listeners: usize,
    /// Listener joins per second.
    #[arg(long, default_value_t = 100.0)]
    join_rate: f64,
    /// Seconds each step is measured.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Loss limit, percent.
    #[arg(long, default_value_t = 1.0)]
    loss_limit: f64,
    /// p99 latency limit, ms.
    #[arg(long, default_value_t = 50.0)]
    p99_limit: f64,
    /// How deeply listeners read the audio.
    #[arg(long, value_enum, default_value = "header")]
    depth: Depth,
    /// How clients join.
    #[arg(long, value_enum, default_value = "direct")]
    path: JoinPath,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Args)]
struct ApiLoadArgs {
    /// Users who join, in all.
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    /// Users per measured step.
    #[arg(long, default_value_t = 500)]
    step: usize,
    /// Concurrent workers.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Skip the `/rtc` admission check (token calls only).
    #[arg(long)]
    no_admission: bool,
    /// HTTP addresses of running servers (ignored with --spawn).
    #[arg(long, default_value = "127.0.0.1:7880")]
    url: Vec<SocketAddr>,
    /// Start this `stoa` binary as `serve --dev` instead (`--instances` of them).
    #[arg(long, value_name = "PATH")]
    spawn: Option<PathBuf>,
    /// With --spawn: servers to start; more than one needs --redis-url.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// With --spawn: use the Redis store at this URL.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Pin the spawned servers to these CPUs (taskset list).
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Pin this harness to these CPUs.
    #[arg(long, value_name = "LIST")]
    bench_cpus: Option<String>,
    /// Harness worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// API key.
    #[arg(long, default_value = "devkey")]
    key: String,
    /// API secret.
    #[arg(long, default_value = "secret")]
    secret: String,
    /// Longest the run may take, seconds.
    #[arg(long, default_value_t = 1800)]
    bound: u64,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BaselineArgs {
    /// Seconds to send.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Destination sockets.
    #[arg(long, default_value_t = 1000)]
    destinations: usize,
    /// Datagram size, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Pin to these CPUs.
    #[arg(long, value_name = "LIST")]
    bench_cpus: Option<String>,
    /// Instead: the fan-out floor, one datagram every 20 ms to each destination, read by
    /// another thread.
    #[arg(long)]
    fanout: bool,
    /// With --fanout: pin the reading thread to these CPUs.
    #[arg(long, value_name = "LIST")]
    reader_cpus: Option<String>,
    /// Write the result as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// The `stoa` binary to spawn.
    #[arg(long, value_name = "PATH")]
    stoa: PathBuf,
    /// Pin both servers to these CPUs (taskset list).
    #[arg(long, value_name = "LIST")]
    server_cpus: Option<String>,
    /// Pin this harness to these CPUs.
    #[arg(long, value_name = "LIST")]
    bench_cpus: Option<String>,
    /// Listeners of the ramp's first step.
    #[arg(long, default_value_t = 200)]
    start: usize,
    /// Listeners added per step.
    #[arg(long, default_value_t = 200)]
    step: usize,
    /// Most listeners of the ramp.
    #[arg(long, default_value_t = 4000)]
    max_listeners: usize,
    /// Ramp joins per second.
    #[arg(long, default_value_t = 200.0)]
    join_rate: f64,
    /// Seconds each ramp step is measured.
    #[arg(long, default_value_t = 4)]
    hold: u64,
    /// Loss limit, percent.
    #[arg(long, default_value_t = 1.0)]
    loss_limit: f64,
    /// p99 latency limit, ms.
    #[arg(long, default_value_t = 50.0)]
    p99_limit: f64,
    /// Join storm: listeners.
    #[arg(long, default_value_t = 1000)]
    storm_listeners: usize,
    /// Join storm: joins per second.
    #[arg(long, default_value_t = 200.0)]
    storm_rate: f64,
    /// Join storm: seconds of play after the last join.
    #[arg(long, default_value_t = 5.0)]
    storm_play: f64,
    /// Janus's static event-loop threads (0: one thread per handle, Janus's default).
    #[arg(long, default_value_t = 1)]
    janus_event_loops: usize,
    /// Seconds of the kernel baseline.
    #[arg(long, default_value_t = 3.0)]
    baseline_seconds: f64,
    /// Harness worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// How Stoa's clients join (Janus's always join directly).
    #[arg(long, value_enum, default_value = "direct")]
    path: JoinPath,
    /// Write compare.json, compare.md and the charts into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// Progress: on a terminal a bar of listeners present against the run's target, with the
/// last second's figures beside it; otherwise (logs, CI) one line per second.
struct Lines {
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
}

impl Lines {
    fn new(quiet: bool, listeners: usize) -> Lines {
        use std::io::IsTerminal as _;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(listeners as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:30} {pos:>5}/{len} listeners  {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Lines { quiet, bar }
    }
}

impl Progress for Lines {
    fn line(&mut self, tick: &Tick) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(tick.listeners as u64);
                bar.set_message(format!(
                    "heard {}  failed {}  rx {:.0} pkt/s  loss {:.2} %  p99 {} ms  server cpu {}",
                    tick.heard,
                    tick.failed,
                    tick.rx_pps,
                    tick.loss * 100.0,
                    tick.latency_p99_ms
                        .map_or("-".into(), |p| format!("{p:.1}")),
                    tick.server_cpu_cores
                        .map_or("-".into(), |c| format!("{c:.2}")),
                ));
            }
            None if !self.quiet => eprintln!("{}", progress_line(tick)),
            None => {}
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Compare(_)) {
        // Before any thread starts: threads keep the namespace they started in.
        compare::isolate()?;
    }
    if matches!(cli.command, Cmd::Relay(_))
        || matches!(&cli.command, Cmd::Failover(a) if a.namespaces)
    {
        // Before any thread starts, for the same reason: the harness's own namespace, the hub
        // the nodes' namespaces link to.
        stoa_bench::netns::isolate()?;
    }
    match cli.command {
        Cmd::Run(a) => {
            let params = Params {
                kind: a.scenario,
                speakers: a.speakers,
                listeners: a.listeners,
                join_rate: a.join_rate,
                duration: secs(a.duration)?,
                churn_rate: a.churn_rate,
                rotate_every: secs(a.rotate_every)?,
                decoders: a.decoders,
                depth: a.depth,
            };
            params.validate()?;
            let paths: &[JoinPath] = match a.path {
                PathArg::Direct => &[JoinPath::Direct],
                PathArg::Product => &[JoinPath::Product],
                PathArg::Both => &[JoinPath::Direct, JoinPath::Product],
            };
            let runtime = runtime(&a.server)?;
            let mut reports = Vec::new();
            for &path in paths {
                let (target, _server) = target(&a.server, path)?;
                let mut lines = Lines::new(a.server.quiet, params.listeners);
                let report = runtime.block_on(scenario::run(target, &params, &mut lines))?;
                println!("{path:?} path:\n{}", report.table());
                reports.push((path, report));
            }
            if let [(_, direct), (_, product)] = reports.as_slice() {
                println!("{}", stoa_bench::report::side_by_side(direct, product));
            }
            let json = match reports.as_slice() {
                [(_, one)] => one.json(),
                _ => serde_json::to_string_pretty(
                    &reports
                        .iter()
                        .map(|(p, r)| (format!("{p:?}").to_lowercase(), r))
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )
                .context("serialise")?,
            };
            write_json(a.server.json.as_ref(), &json)?;
            if let Some((_, last)) = reports.last() {
                write_charts(a.server.plots.as_ref(), stoa_bench::chart::run_charts(last))?;
            }
        }
        Cmd::Capacity(a) => {
            let params = CapacityParams {
                speakers: a.speakers,
                start: a.start,
                step: a.step,
                max_listeners: a.max_listeners,
                join_rate: a.join_rate,
                hold: Duration::from_secs(a.hold),
                loss_limit: a.loss_limit / 100.0,
                p99_limit_ms: a.p99_limit,
                depth: a.depth,
                server_cores: a.server.server_cpus.as_deref().map(count_cpus),
                bench_cores: a.server.bench_cpus.as_deref().map(count_cpus),
            };
            let (target, _server) = target(&a.server, a.path)?;
            let runtime = runtime(&a.server)?;
            let mut lines = Lines::new(a.server.quiet, params.max_listeners);
            let report = runtime.block_on(capacity::search(target, &params, &mut lines))?;
            println!("{}", report.table());
            let json = serde_json::to_string_pretty(&report).context("serialise")?;
            write_json(a.server.json.as_ref(), &json)?;
            write_charts(
                a.server.plots.as_ref(),
                stoa_bench::chart::capacity_charts(&report),
            )?;
        }
        Cmd::Baseline(a) => {
            if let Some(cpus) = &a.bench_cpus {
                affinity::pin(cpus)?;
            }
            let r = if a.fanout {
                let reader = a.reader_cpus.clone();
                stoa_bench::baseline::fanout_baseline(
                    secs(a.seconds)?,
                    a.destinations,
                    a.payload,
                    move || {
                        if let Some(c) = reader {
                            let _ = affinity::pin(&c);
                        }
                    },
                )
                .context("fan-out baseline")?
            } else {
                stoa_bench::baseline::sendmmsg_baseline(secs(a.seconds)?, a.destinations, a.payload)
                    .context("sendmmsg baseline")?
            };
            println!(
                "{} baseline: {} datagrams of {} bytes to {} sockets in {:.2} s, {:.2} CPU s: {:.0} pkt/s, {:.0} pkt/s per core",
                if a.fanout { "fan-out" } else { "sendmmsg" },
                r.packets,
                r.payload,
                r.destinations,
                r.seconds,
                r.cpu_seconds,
                r.pps,
                r.pps_per_core
            );
            let json = serde_json::to_string_pretty(&r).context("serialise")?;
            write_json(a.json.as_ref(), &json)?;
        }
        Cmd::Recording(a) => {
            let params = stoa_bench::recording::RecordingParams {
                speakers: a.speakers,
                listeners: a.listeners,
                join_rate: a.join_rate,
                phase: secs(a.phase)?,
                rounds: a.rounds,
            };
            params.validate()?;
            let (target, _server) = target(&a.server, JoinPath::Direct)?;
            let runtime = runtime(&a.server)?;
            let report = runtime.block_on(stoa_bench::recording::run(target, &params))?;
            println!("{}", report.table());
            let json = serde_json::to_string_pretty(&report).context("serialise")?;
            write_json(a.server.json.as_ref(), &json)?;
        }
        Cmd::Failover(a) => {
            let params = stoa_bench::failover::Params {
                listeners: a.listeners,
                join_rate: a.join_rate,
                capacity: a.capacity,
                victim: a.kill,
                give_up: Duration::from_secs(a.give_up),
                namespaces: a.namespaces,
            };
            params.validate()?;
            if let Some(cpus) = &a.bench_cpus {
                affinity::pin(cpus)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(a.threads.max(1))
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let report = runtime.block_on(stoa_bench::failover::run(
                &a.spawn,
                a.server_cpus.as_deref(),
                a.log_dir.as_deref(),
                &params,
            ))?;
            println!("{}", report.table());
            let json = serde_json::to_string_pretty(&report).context("serialise")?;
            write_json(a.json.as_ref(), &json)?;
        }
        Cmd::TwoRooms(a) => {
            let params = stoa_bench::two_rooms::TwoRoomsParams {
                a_listeners: a.a_listeners,
                a_speakers: a.a_speakers,
                a_join_rate: a.a_join_rate,
                reaction_every: Duration::from_millis(a.reaction_ms),
                rotate_every: secs(a.rotate_every)?,
                b_listeners: a.b_listeners,
                b_join_rate: a.b_join_rate,
                rounds: a.rounds,
                b_own_thread: a.b_own_thread,
            };
            params.validate()?;
            let (target, _server) = target(&a.server, JoinPath::Direct)?;
            // Room B's runtime first, so that its thread keeps the priority this process
            // started at; this thread, and every thread it starts from now on (room A's
            // clients and socket reader, the storm driver), runs below it.
            let b_runtime = if a.b_own_thread {
                if let Some(cpus) = &a.server.bench_cpus {
                    affinity::pin(cpus)?;
                }
                let (b, _) = stoa_bench::two_rooms::room_b_runtime()
                    .context("room B's runtime, ahead of room A's clients")?;
                Some(b)
            } else {
                None
            };
            let runtime = runtime(&a.server)?;
            let report = runtime.block_on(stoa_bench::two_rooms::run(
                target,
                &params,
                b_runtime.as_ref().map(|r| r.handle().clone()),
            ))?;
            println!("{}", report.table());
            let json = serde_json::to_string_pretty(&report).context("serialise")?;
            write_json(a.server.json.as_ref(), &json)?;
        }
        Cmd::Compare(a) => {
            if let Some(dir) = &a.out {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let server_cores = a.server_cpus.as_deref().map(count_cpus);
            let params = CompareParams {
                stoa: a.stoa.clone(),
                server_cpus: a.server_cpus.clone(),
                bench_cpus: a.bench_cpus.clone(),
                capacity: CapacityParams {
                    speakers: 1,
                    start: a.start,
                    step: a.step,
                    max_listeners: a.max_listeners,
                    join_rate: a.join_rate,
                    hold: Duration::from_secs(a.hold),
                    loss_limit: a.loss_limit / 100.0,
                    p99_limit_ms: a.p99_limit,
                    depth: Depth::Header,
                    server_cores,
                    bench_cores: a.bench_cpus.as_deref().map(count_cpus),
                },
                storm_listeners: a.storm_listeners,
                storm_rate: a.storm_rate,
                storm_play: secs(a.storm_play)?,
                janus_event_loops: a.janus_event_loops,
                baseline: secs(a.baseline_seconds)?,
                path: a.path,
            };
            if let Some(cpus) = &a.bench_cpus {
                affinity::pin(cpus)?;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(a.threads.clamp(1, 64))
                .enable_all()
                .build()
                .context("tokio runtime")?;
            let mut lines = Lines::new(a.quiet, a.max_listeners.max(a.storm_listeners));
            let report = runtime.block_on(compare::run(&params, &mut lines))?;
            let markdown = report.markdown();
            println!("{markdown}");
            if let Some(dir) = &a.out {
                let json = serde_json::to_string_pretty(&report).context("serialise")?;
                write_json(Some(&dir.join("compare.json")), &json)?;
                std::fs::write(dir.join("compare.md"), &markdown)
                    .with_context(|| format!("write {}", dir.join("compare.md").display()))?;
                write_charts(Some(dir), report.charts())?;
            }
        }
        Cmd::ApiLoad(a) => api_load(&a)?,
        Cmd::Relay(a) => relay(&a)?,
    }
    Ok(())
}

fn api_load(a: &ApiLoadArgs) -> anyhow::Result<()> {
    if a.instances == 0 || a.instances > 8 {
        bail!("--instances must be 1 to 8");
    }
    if a.instances > 1 && a.redis_url.is_none() && a.spawn.is_some() {
        bail!("several instances share a room only through Redis: add --redis-url");
    }
    let mut processes = Vec::new();
    let nodes: Vec<stoa_bench::apiload::Node> = match &a.spawn {
        Some(path) => {
            let env: Vec<(&str, &str)> = a
                .redis_url
                .as_deref()
                .map(|u| vec![("STOA_REDIS_URL", u)])
                .unwrap_or_default();
            for _ in 0..a.instances {
                let p = ServerProcess::spawn_with(path, a.server_cpus.as_deref(), None, &env)
                    .with_context(|| format!("start {}", path.display()))?;
                processes.push(p);
            }
            processes
                .iter()
                .map(|p| stoa_bench::apiload::Node {
                    http: p.http,
                    pid: Some(p.pid()),
                })
                .collect()
        }
        None => a
            .url
            .iter()
            .map(|&http| stoa_bench::apiload::Node { http, pid: None })
            .collect(),
    };
    if nodes.iter().any(|n| !n.http.ip().is_loopback()) {
        bail!("stoa-bench only drives servers on this machine's loopback addresses");
    }
    if let Some(cpus) = &a.bench_cpus {
        affinity::pin(cpus)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.clamp(1, 64))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let params = stoa_bench::apiload::ApiLoadParams {
        members: a.members,
        step: a.step,
        concurrency: a.concurrency,
        admission: !a.no_admission,
        key: a.key.clone(),
        secret: a.secret.clone(),
        bound: Duration::from_secs(a.bound.clamp(1, 3600)),
    };
    let report = runtime.block_on(stoa_bench::apiload::run(&nodes, &params))?;
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report).context("serialise")?;
    write_json(a.json.as_ref(), &json)?;
    drop(processes);
    Ok(())
}

fn relay(a: &RelayArgs) -> anyhow::Result<()> {
    use stoa_bench::relay::{Cluster, RelayParams};
    let params = RelayParams {
        speakers: a.speakers,
        stage: a.stage,
        listeners: a.listeners,
        join_rate: a.join_rate,
        window: secs(a.window)?,
        depth: a.depth,
        rounds: a.rounds,
    };
    params.validate()?;
    if let Some(dir) = &a.logs {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let cluster = Cluster::start(
        &a.spawn,
        a.server_cpus.as_deref(),
        &params,
        a.logs.as_deref(),
    )
    .context("start Redis and three nodes in their namespaces")?;
    // After the nodes started, so that they do not inherit the harness's CPUs.
    if let Some(cpus) = &a.bench_cpus {
        affinity::pin(cpus)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.clamp(1, 64))
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let mut report = runtime.block_on(stoa_bench::relay::run(
        &cluster.nodes(),
        Some(cluster.redis_pid()),
        &params,
    ))?;
    // The clients are gone: the nodes are quiet while the floor is measured beside them.
    match cluster.wakeup_floor(a.server_cpus.as_deref(), a.speakers, params.window) {
        Ok(floor) => report.floor = Some(floor),
        Err(e) => eprintln!("stoa-bench relay: {e}; the report goes without it"),
    }
    println!("{}", report.table());
    let json = serde_json::to_string_pretty(&report).context("serialise")?;
    write_json(a.json.as_ref(), &json)?;
    drop(runtime);
    drop(cluster);
    Ok(())
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    if !(s > 0.0 && s <= 3600.0) {
        bail!("durations must be in (0, 3600] seconds, got {s}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// The target server: spawned (kept alive by the returned processes) or given.
fn target(a: &ServerArgs, path: JoinPath) -> anyhow::Result<(Target, Vec<ServerProcess>)> {
    if !a.url.ip().is_loopback() {
        bail!("stoa-bench only drives servers on this machine's loopback addresses");
    }
    if a.instances == 0 || a.instances > 8 {
        bail!("--instances must be 1 to 8");
    }
    let mut processes = Vec::new();
    if a.server_shards.is_some() && (a.spawn.is_none() || a.instances > 1) {
        bail!("--server-shards needs --spawn and one instance");
    }
    if a.server_shards.is_some_and(|n| n == 0 || n > 255) {
        bail!("--server-shards must be 1 to 255");
    }
    match (&a.spawn, a.redis_url.as_deref()) {
        (Some(bin), Some(redis)) if a.instances > 1 => {
            for _ in 0..a.instances {
                let p = ServerProcess::spawn_node(bin, a.server_cpus.as_deref(), redis)
                    .with_context(|| format!("start {}", bin.display()))?;
                processes.push(p);
            }
        }
        (Some(bin), redis) => {
            if a.instances > 1 {
                bail!("several instances share a room only through Redis: add --redis-url");
            }
            let env: Vec<(&str, &str)> = redis
                .map(|u| vec![("STOA_REDIS_URL", u)])
                .unwrap_or_default();
            let cpus = a.server_cpus.as_deref();
            let p = match a.server_shards {
                Some(shards) => ServerProcess::spawn_sharded(bin, cpus, None, &env, shards),
                None => ServerProcess::spawn_with(bin, cpus, None, &env),
            }
            .with_context(|| format!("start {}", bin.display()))?;
            processes.push(p);
        }
        (None, _) if a.instances > 1 => bail!("--instances needs --spawn"),
        (None, _) => {}
    }
    let (http, pid) = match processes.first() {
        Some(p) => (p.http, Some(p.pid())),
        None => (a.url, a.server_pid),
    };
    let api = if processes.len() > 1 {
        processes.iter().map(|p| p.http).collect()
    } else {
        Vec::new()
    };
    Ok((
        Target {
            http,
            protocol: Protocol::Livekit,
            key: a.key.clone(),
            secret: a.secret.clone(),
            room: a.room.clone(),
            pid,
            path,
            api,
        },
        processes,
    ))
}

fn runtime(a: &ServerArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    if let Some(cpus) = &a.bench_cpus {
        affinity::pin(cpus)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.clamp(1, 64))
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn count_cpus(list: &str) -> usize {
    affinity::parse(list).map_or(0, |c| c.len())
}

fn write_json(path: Option<&PathBuf>, json: &str) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(p, json).with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

fn write_charts(
    dir: Option<&PathBuf>,
    charts: Vec<(&'static str, stoa_bench::chart::Chart)>,
) -> anyhow::Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let fonts = stoa_bench::chart::Fonts::system();
    for (stem, chart) in charts {
        let path = dir.join(format!("{stem}.svg"));
        std::fs::write(&path, chart.svg()).with_context(|| format!("write {}", path.display()))?;
        let path = dir.join(format!("{stem}.png"));
        std::fs::write(&path, chart.png(&fonts)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
