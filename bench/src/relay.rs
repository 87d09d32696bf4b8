//! One room across three nodes: what the relay between nodes adds to a listener's latency, and
//! what a listener and a node-to-node link cost the nodes' CPU, measured side by side in one run.
//!
//! Three `stoa serve` processes share one `redis-server`, each in its own network namespace
//! linked to the harness's by a veth pair ([`crate::netns`]). Every node counts itself full at
//! `listeners` participants (`[control] node_capacity`), so placement puts people
//! deterministically: the speakers and the first listeners on the room's origin until it is
//! full, then the next listeners on one edge until it is full (`listeners` listeners: an edge
//! does not count the speakers it mirrors from the origin), then on the other. Everyone joins
//! through the product path (`POST /api/rooms/{id}/token`, then `/rtc` at the node it names),
//! and the harness files each listener under the node its grant named. The run goes through
//! seven phases, each measured for `window` once its joins have settled (every new listener
//! heard):
//!
//! 0. the room created, nobody in it;
//! 1. the speakers on the origin, all speaking;
//! 2. the origin filled with listeners (the single-node figure);
//! 3. one listener on the first edge, which links itself to the origin;
//! 4. the first edge filled;
//! 5. one listener on the second edge, which links itself too;
//! 6. the second edge filled: every listener's latency in this window, per node.
//!
//! From the nodes' CPU (`/proc/PID/stat`) in consecutive phases: a listener's cost on the origin
//! alone (2 − 1) and on each edge (4 − 3, 6 − 5); a link's cost on the origin (3 − 2, 5 − 4) and
//! on its edge (3 − 2 and 5 − 4 on that edge, less the one listener's share), in listeners. A
//! link carries every speaker's stream once and a listener receives every speaker's stream, so
//! a link's cost in listeners is a relayed stream's cost in listener-streams. For scale, a
//! speaker's cost on the origin (1 − 0) in listener-streams, less the other speakers' streams
//! it receives: what the origin pays to take in one published stream. Latency: each
//! packet's one-way time from the speaker's send stamp to a listener's arrival, on the
//! harness's one clock; an edge listener's packet takes one relay hop more than an origin
//! listener's. Every run is bounded in clients and time.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::baseline::{Place, WakeupBaseline, wakeup_baseline};
use crate::client::{Command, Depth, Protocol, Role};
use crate::clock::Clock;
use crate::netns::{HUB, NetnsError, NodeNet};
use crate::scenario::{Crowd, JoinPath, MAX_CLIENTS, ScenarioError, Target, percentile};
use crate::server::{ProcProbe, RedisProcess, ServerError, ServerProcess, scrape_metric};

/// Nodes of a run: the origin and two edges.
pub const NODES: usize = 3;
/// The API key every node of the run shares (relay links are signed with it).
pub const KEY: &str = "relaybench";
/// Its secret.
pub const SECRET: &str = "relaybench-secret-not-for-production-0123";
/// Redis's port on the hub.
const REDIS_PORT: u16 = 6379;
/// Seconds after which a node without a heartbeat is dead; its records refresh every third.
const PRESENCE_TTL: u64 = 3;
/// A speaker's packet interval (Opus frames of 20 ms).
const OPUS_FRAME_MS: f64 = 20.0;
/// About the size of a relayed audio datagram (RTP header and extensions, a 100-byte Opus
/// payload, the SRTP tag): what the wake-up floor sends.
const RELAYED_BYTES: usize = 140;
/// Pause after a phase's joins before its window (a new link's handshakes and negotiation
/// done).
const SETTLE: Duration = Duration::from_secs(3);
/// Longest wait for a phase's listeners to hear, or for a node's record to show it full.
const WAIT: Duration = Duration::from_secs(30);

/// Why a run could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The namespaces could not be made.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Redis or a node did not start.
    #[error("{what}: {source}")]
    Server {
        /// Which.
        what: String,
        /// Why.
        source: ServerError,
    },
    /// The nodes' configuration could not be written.
    #[error("write the nodes' configuration: {0}")]
    Io(#[from] std::io::Error),
    /// The wake-up floor could not be measured.
    #[error("wake-up floor: {0}")]
    Floor(std::io::Error),
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RelayParams {
    /// Speakers, all speaking, all on the origin.
    pub speakers: usize,
    /// Participants per node (`node_capacity`): the origin carries the speakers and
    /// `listeners - speakers` listeners, each edge `listeners` listeners (an edge does not
    /// count the speakers it mirrors from the origin).
    pub listeners: usize,
    /// Listener joins per second.
    pub join_rate: f64,
    /// How long each phase is measured.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub window: Duration,
    /// How deeply listeners read the audio.
    pub depth: Depth,
}

impl RelayParams {
    /// Check the bounds every run must respect.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: &str| Err(ScenarioError::Invalid(m.to_owned()));
        if !(1..=32).contains(&self.speakers) {
            return invalid("1 to 32 speakers");
        }
        if self.listeners < self.speakers + 2 {
            return invalid(
                "listeners per node must exceed the speakers by 2 (the origin holds both)",
            );
        }
        if self.listeners * NODES > MAX_CLIENTS.min(15_000) {
            return invalid("too many clients");
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 1_000.0) {
            return invalid("join rate must be in (0, 1000] per second");
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(300) {
            return invalid("the window must be 1 to 300 seconds");
        }
        Ok(())
    }

    /// Upper bound on the wall time of the run (the clients leave by then).
    pub fn bound(&self) -> Duration {
        let joins = Duration::from_secs_f64((self.listeners * NODES) as f64 / self.join_rate);
        joins + (self.window + SETTLE + WAIT * 2) * 7 + Duration::from_secs(60)
    }
}

/// Redis and three nodes, each in its own namespace; all stopped when dropped.
#[derive(Debug)]
pub struct Cluster {
    // Dropped in this order: the nodes (SIGTERM), their namespaces, Redis.
    servers: Vec<ServerProcess>,
    nets: Vec<NodeNet>,
    redis: RedisProcess,
    config: PathBuf,
}

impl Cluster {
    /// Start Redis on the hub and three nodes of `binary` (each under `taskset -c cpus` when
    /// given, counting itself full at `params.listeners` participants), the nodes' output in
    /// `logs/node-N.log` when given. Call [`crate::netns::isolate`] first, on this thread.
    pub fn start(
        binary: &Path,
        cpus: Option<&str>,
        params: &RelayParams,
        logs: Option<&Path>,
    ) -> Result<Cluster, RelayError> {
        let config =
            std::env::temp_dir().join(format!("stoa-bench-relay-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "[keys]\n{KEY} = \"{SECRET}\"\n[control]\npresence_ttl = {PRESENCE_TTL}\nnode_capacity = {}\n",
                params.listeners
            ),
        )?;
        let redis =
            RedisProcess::spawn(SocketAddr::from((HUB, REDIS_PORT)), cpus).map_err(|source| {
                RelayError::Server {
                    what: "redis-server".into(),
                    source,
                }
            })?;
        let lifetime = params.bound() + Duration::from_secs(120);
        let mut nets = Vec::new();
        let mut servers = Vec::new();
        for index in 1..=NODES as u8 {
            let net = NodeNet::create(index, lifetime)?;
            let log = logs.map(|d| d.join(format!("node-{index}.log")));
            let server =
                ServerProcess::spawn_in(&net, binary, cpus, &config, &redis.url, log.as_deref())
                    .map_err(|source| RelayError::Server {
                        what: format!("node {index} ({})", binary.display()),
                        source,
                    })?;
            nets.push(net);
            servers.push(server);
        }
        Ok(Cluster {
            servers,
            nets,
            redis,
            config,
        })
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> Vec<Node> {
        self.servers
            .iter()
            .map(|s| Node {
                http: s.http,
                pid: Some(s.pid()),
            })
            .collect()
    }

    /// Redis's process id.
    pub fn redis_pid(&self) -> u32 {
        self.redis.pid()
    }

    /// The wake-up floor next to the run ([`crate::baseline::wakeup_baseline`]): a sender in
    /// the first node's namespace, a forwarder in the second's (both on `cpus`, the nodes'),
    /// the sink on the hub, so that each datagram takes a relayed packet's way (veth, hub,
    /// veth) and the forwarder's send a listener packet's; `speakers` streams of 50 packets a
    /// second, for `window`.
    pub fn wakeup_floor(
        &self,
        cpus: Option<&str>,
        speakers: usize,
        window: Duration,
    ) -> Result<WakeupBaseline, RelayError> {
        let place = |net: &NodeNet| {
            let enter = net.enter();
            let cpus = cpus.map(str::to_owned);
            Place {
                setup: Box::new(move || {
                    enter()?;
                    if let Some(cpus) = cpus {
                        crate::affinity::pin(&cpus).map_err(std::io::Error::other)?;
                    }
                    Ok(())
                }),
                ip: IpAddr::V4(net.address),
            }
        };
        let (Some(a), Some(b)) = (self.nets.first(), self.nets.get(1)) else {
            return Err(RelayError::Floor(std::io::Error::other("two nodes needed")));
        };
        let rate = speakers as f64 * 1000.0 / OPUS_FRAME_MS;
        wakeup_baseline(
            place(a),
            place(b),
            IpAddr::V4(HUB),
            rate,
            RELAYED_BYTES,
            window,
        )
        .map_err(RelayError::Floor)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        // The nodes stop before their namespaces go (fields drop in declaration order).
        self.servers.clear();
        self.nets.clear();
    }
}

/// One node as the scenario sees it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Node {
    /// Its HTTP address (also its `public_url`'s).
    pub http: SocketAddr,
    /// Its process id, to read its CPU.
    pub pid: Option<u32>,
}

/// One node's listeners' latency in a window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    /// Median one-way latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Samples (packets with a send time).
    pub samples: usize,
    /// Fraction of expected packets that did not arrive.
    pub loss: f64,
}

/// One measured phase; per-node figures in the order the nodes were started.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What the phase adds.
    pub name: &'static str,
    /// Listeners whose grant named each node.
    pub listeners: Vec<usize>,
    /// Each node's CPU over the window, cores.
    pub cpu_cores: Vec<Option<f64>>,
    /// Redis's CPU over the window, cores.
    pub redis_cpu_cores: Option<f64>,
    /// The harness's own CPU over the window, cores (all its clients).
    pub harness_cpu_cores: Option<f64>,
    /// Each node's listeners' latency over the window.
    pub latency: Vec<Option<Latency>>,
    /// Whether the node records showed what placement needed before the next phase.
    pub placed: bool,
}

/// The figures the targets are about, from consecutive phases (`None` where a difference had
/// no listeners to divide by).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Costs {
    /// A listener's CPU on the origin alone (phases 2 − 1), cores.
    pub listener_single: Option<f64>,
    /// A speaker's CPU on the origin (1 − 0), in listener-streams, less the streams of the
    /// other speakers it receives: one published stream taken in.
    pub speaker_ingress_listener_streams: Option<f64>,
    /// A listener's CPU on each edge (4 − 3, 6 − 5), cores.
    pub listener_edge: [Option<f64>; 2],
    /// Edge listener ÷ single-node listener, per edge.
    pub edge_over_single: [Option<f64>; 2],
    /// Each link's CPU on the origin and on its edge, cores (the same differences as below).
    pub link_cores: [(Option<f64>, Option<f64>); 2],
    /// Each link's CPU on the origin (3 − 2, 5 − 4), in single-node listeners.
    pub link_origin_listeners: [Option<f64>; 2],
    /// Each link's CPU on its edge (its first phase less the previous, less its one listener),
    /// in single-node listeners.
    pub link_edge_listeners: [Option<f64>; 2],
    /// Each link's cost on both nodes, in single-node listeners: a relayed stream's cost in
    /// listener-streams.
    pub link_listener_streams: [Option<f64>; 2],
}

/// The run's result.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// What ran.
    pub params: RelayParams,
    /// The nodes, in the order they were started.
    pub nodes: Vec<Node>,
    /// Index of the origin, the first edge and the second edge in `nodes`.
    pub roles: [Option<usize>; 3],
    /// Speakers whose grant named the origin.
    pub speakers_on_origin: usize,
    /// Every phase in order.
    pub phases: Vec<Phase>,
    /// Listeners per node at the end, and how many of them heard the speakers.
    pub heard: Vec<(usize, usize)>,
    /// Clients that failed.
    pub failed: u64,
    /// Relay links each node started (`control_relays_started_total`) at the end: one on
    /// each edge, none on the origin.
    pub relays_started: Vec<Option<f64>>,
    /// What the phases say.
    pub costs: Costs,
    /// Latency added by the relay hop over the origin's listeners in the last phase, ms
    /// (p50, p99), per edge.
    pub added_ms: [Option<(f64, f64)>; 2],
    /// The wake-up floor measured after the phases ([`Cluster::wakeup_floor`]), if it was.
    pub floor: Option<WakeupBaseline>,
}

impl RelayReport {
    /// The summary tables.
    pub fn table(&self) -> String {
        // The nodes in role order; a node whose role is unknown last.
        let mut order: Vec<usize> = self.roles.iter().filter_map(|r| *r).collect();
        order.extend((0..self.nodes.len()).filter(|i| !self.roles.contains(&Some(*i))));
        let label = |i: usize| match self.roles.iter().position(|r| *r == Some(i)) {
            Some(0) => "origin",
            Some(1) => "edge 1",
            Some(2) => "edge 2",
            _ => "?",
        };
        let names: Vec<&str> = order.iter().map(|&i| label(i)).collect();
        let mut out = format!(
            "| phase | listeners {} | CPU {} (cores) | Redis CPU | harness CPU |\n|---|---:|---:|---:|---:|\n",
            names.join(" / "),
            names.join(" / ")
        );
        for p in &self.phases {
            let l: Vec<String> = order.iter().map(|&i| p.listeners[i].to_string()).collect();
            let c: Vec<String> = order
                .iter()
                .map(|&i| p.cpu_cores[i].map_or("-".into(), |c| format!("{c:.3}")))
                .collect();
            let one = |v: Option<f64>| v.map_or("-".into(), |c| format!("{c:.3}"));
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                p.name,
                l.join(" / "),
                c.join(" / "),
                one(p.redis_cpu_cores),
                one(p.harness_cpu_cores),
            ));
        }
        out.push_str("\n| node | listeners heard | latency p50 / p99 (last phase) | loss | relay hop adds p50 / p99 |\n|---|---:|---:|---:|---:|\n");
        let last = self.phases.last();
        for (k, &i) in order.iter().enumerate() {
            let (n, heard) = self.heard.get(i).copied().unwrap_or((0, 0));
            let lat = last.and_then(|p| p.latency[i]);
            let added = match k {
                1 | 2 => self.added_ms[k - 1]
                    .map_or("-".into(), |(a, b)| format!("{a:+.2} / {b:+.2} ms")),
                _ => "(single node)".into(),
            };
            out.push_str(&format!(
                "| {} | {heard}/{n} | {} | {} | {added} |\n",
                label(i),
                lat.map_or("-".into(), |l| format!(
                    "{:.2} / {:.2} ms",
                    l.p50_ms, l.p99_ms
                )),
                lat.map_or("-".into(), |l| format!("{:.3} %", l.loss * 100.0)),
            ));
        }
        let c = &self.costs;
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3} ms/s", v * 1e3));
        let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        out.push_str(&format!(
            "\nCPU per listener: single node {}, edge 1 {} ({}×), edge 2 {} ({}×)\n",
            ms(c.listener_single),
            ms(c.listener_edge[0]),
            x(c.edge_over_single[0]),
            ms(c.listener_edge[1]),
            x(c.edge_over_single[1]),
        ));
        out.push_str(&format!(
            "a speaker's stream taken in on the origin: {} listener-streams\n",
            x(c.speaker_ingress_listener_streams)
        ));
        for k in 0..2 {
            out.push_str(&format!(
                "link to edge {} (origin {}, edge {}): origin {} + edge {} = {} listener-streams per relayed stream\n",
                k + 1,
                ms(c.link_cores[k].0),
                ms(c.link_cores[k].1),
                x(c.link_origin_listeners[k]),
                x(c.link_edge_listeners[k]),
                x(c.link_listener_streams[k]),
            ));
        }
        if let (Some(f), Some(single)) = (&self.floor, c.listener_single)
            && self.params.speakers > 0
        {
            // One stream's share of the datagrams, each waking the forwarder once.
            let stream = f.ns_per_packet * 1e-9 * f.rate / self.params.speakers as f64;
            let floor = stream / (single / self.params.speakers as f64);
            let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.2}", v / floor));
            out.push_str(&format!(
                "wake-up floor (a bare forwarder woken by each of {:.0} datagrams/s, {} forwarded): {:.1} µs per datagram = {floor:.2} listener-streams per stream; a link on edge 1 / edge 2 costs {} / {}× the floor\n",
                f.rate,
                f.packets,
                f.ns_per_packet / 1e3,
                ratio(c.link_edge_listeners[0]),
                ratio(c.link_edge_listeners[1]),
            ));
        }
        let relays: Vec<String> = order
            .iter()
            .map(|&i| {
                self.relays_started
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or("0".into(), |v| format!("{v}"))
            })
            .collect();
        out.push_str(&format!(
            "speakers on the origin: {}/{}; failed clients: {}; relay links started on {}: {}\n",
            self.speakers_on_origin,
            self.params.speakers,
            self.failed,
            names.join(" / "),
            relays.join(" / ")
        ));
        out
    }
}

/// Run the scenario against `nodes` (started by [`Cluster::start`], the first one's API used
/// for every call), reading Redis's CPU from `redis_pid` when given.
pub async fn run(
    nodes: &[Node],
    redis_pid: Option<u32>,
    params: &RelayParams,
) -> Result<RelayReport, ScenarioError> {
    params.validate()?;
    if nodes.len() != NODES {
        return Err(ScenarioError::Invalid(format!("{NODES} nodes needed")));
    }
    let clock = Clock::start();
    let deadline = clock.now() + params.bound();
    let api = nodes[0].http;
    let server = crate::product::server_token(KEY, SECRET)?;
    // Every node registered before the room is placed.
    wait_records(api, &server, clock, |records| {
        nodes.iter().all(|n| record(records, n.http).is_some())
    })
    .await;
    let target = Target {
        http: api,
        protocol: Protocol::Livekit,
        key: KEY.into(),
        secret: SECRET.into(),
        room: "relay".into(),
        pid: None,
        path: JoinPath::Product,
        api: Vec::new(),
    };
    let mut crowd = Crowd::open(target, deadline, 0, params.depth).await?;
    crowd.set_local_ip(HUB);
    let mut probes: Vec<Option<ProcProbe>> =
        nodes.iter().map(|n| n.pid.map(ProcProbe::new)).collect();
    let mut redis = redis_pid.map(ProcProbe::new);

    let mut m = Measure {
        nodes,
        clock,
        window: params.window,
        probes: &mut probes,
        redis: &mut redis,
        harness: ProcProbe::new(std::process::id()),
    };
    let idle = m.phase("idle", &crowd, true).await;
    for _ in 0..params.speakers {
        crowd.join(Role::Speaker)?;
    }
    for i in 0..params.speakers {
        crowd.speaker(i, Command::Speak);
    }
    let until = clock.now() + WAIT;
    while crowd.counters().rtp_sent.load(Ordering::Relaxed) < params.speakers as u64
        && clock.now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let index_of =
        |addr: Option<SocketAddr>| addr.and_then(|a| nodes.iter().position(|n| n.http == a));
    let speakers = crowd.speaker_servers();
    let origin = index_of(speakers.first().copied().flatten());
    let speakers_on_origin = speakers
        .iter()
        .filter(|s| origin.is_some() && index_of(**s) == origin)
        .count();

    let mut phases = Vec::new();
    phases.push(m.phase("speakers", &crowd, true).await);
    phases.insert(0, idle);
    let n = params.listeners;
    let rate = params.join_rate;
    join(&mut crowd, n - params.speakers, rate, clock).await?;
    let placed = wait_full(api, &server, clock, origin.map(|o| nodes[o].http), n).await;
    phases.push(m.phase("origin full", &crowd, placed).await);
    join(&mut crowd, 1, rate, clock).await?;
    let edge1 = crowd
        .listener_servers()
        .last()
        .and_then(|s| index_of(*s))
        .filter(|e| Some(*e) != origin);
    phases.push(m.phase("edge 1: first listener", &crowd, true).await);
    // An edge counts its own listeners only (not the origin's speakers it mirrors): it is
    // full at `n` listeners.
    let per_edge = n;
    join(&mut crowd, per_edge - 1, rate, clock).await?;
    let placed = wait_full(api, &server, clock, edge1.map(|e| nodes[e].http), n).await;
    phases.push(m.phase("edge 1 full", &crowd, placed).await);
    join(&mut crowd, 1, rate, clock).await?;
    let edge2 = crowd
        .listener_servers()
        .last()
        .and_then(|s| index_of(*s))
        .filter(|e| Some(*e) != origin && Some(*e) != edge1);
    phases.push(m.phase("edge 2: first listener", &crowd, true).await);
    join(&mut crowd, per_edge - 1, rate, clock).await?;
    phases.push(m.phase("edge 2 full", &crowd, true).await);

    let mut heard = vec![(0, 0); nodes.len()];
    for (server, h) in crowd
        .listener_servers()
        .into_iter()
        .zip(crowd.listeners_heard())
    {
        if let Some(i) = index_of(server) {
            heard[i].0 += 1;
            heard[i].1 += usize::from(h);
        }
    }
    let failed = crowd.counters().failed.load(Ordering::Relaxed);
    let mut relays_started = Vec::new();
    for n in nodes {
        let http = n.http;
        let started = tokio::task::spawn_blocking(move || {
            scrape_metric(http, "control_relays_started_total")
        })
        .await
        .ok()
        .flatten();
        relays_started.push(started);
    }
    let _ = crowd.finish().await;
    let roles = [origin, edge1, edge2];
    let costs = costs(&phases, roles, params.speakers);
    let added_ms = added(phases.last(), roles);
    Ok(RelayReport {
        params: params.clone(),
        nodes: nodes.to_vec(),
        roles,
        speakers_on_origin,
        phases,
        heard,
        failed,
        relays_started,
        costs,
        added_ms,
        floor: None,
    })
}

/// What every phase samples.
struct Measure<'a> {
    nodes: &'a [Node],
    clock: Clock,
    window: Duration,
    probes: &'a mut Vec<Option<ProcProbe>>,
    redis: &'a mut Option<ProcProbe>,
    harness: ProcProbe,
}

impl Measure<'_> {
    /// Let the joins settle, then measure one window.
    async fn phase(&mut self, name: &'static str, crowd: &Crowd, placed: bool) -> Phase {
        tokio::time::sleep(SETTLE).await;
        let _ = crowd.windows_by_server();
        let start = self.clock.now();
        for p in self.probes.iter_mut().flatten() {
            let _ = p.sample(start);
        }
        if let Some(p) = self.redis.as_mut() {
            let _ = p.sample(start);
        }
        let _ = self.harness.sample(start);
        tokio::time::sleep(self.window).await;
        let end = self.clock.now();
        let cpu_cores = self
            .probes
            .iter_mut()
            .map(|p| {
                p.as_mut()
                    .and_then(|p| p.sample(end).ok())
                    .map(|s| s.cpu_cores)
            })
            .collect();
        let redis_cpu_cores = self
            .redis
            .as_mut()
            .and_then(|p| p.sample(end).ok())
            .map(|s| s.cpu_cores);
        let harness_cpu_cores = self.harness.sample(end).ok().map(|s| s.cpu_cores);
        let windows = crowd.windows_by_server();
        let servers = crowd.listener_servers();
        let listeners = self
            .nodes
            .iter()
            .map(|n| servers.iter().filter(|s| **s == Some(n.http)).count())
            .collect();
        let latency = self
            .nodes
            .iter()
            .map(|n| {
                let (_, w) = windows.iter().find(|(s, _)| *s == Some(n.http))?;
                let mut us = w.latency_us.clone();
                us.sort_unstable();
                Some(Latency {
                    p50_ms: f64::from(percentile(&us, 0.5)?) / 1e3,
                    p99_ms: f64::from(percentile(&us, 0.99)?) / 1e3,
                    samples: us.len(),
                    loss: w.loss(),
                })
            })
            .collect();
        Phase {
            name,
            listeners,
            cpu_cores,
            redis_cpu_cores,
            harness_cpu_cores,
            latency,
            placed,
        }
    }
}

/// `count` listeners join at `rate` per second; then wait (bounded) until all of them heard.
async fn join(
    crowd: &mut Crowd,
    count: usize,
    rate: f64,
    clock: Clock,
) -> Result<(), ScenarioError> {
    let before = crowd.listeners();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = clock.now();
    for _ in 0..count {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        crowd.join(Role::Listener)?;
        next += gap;
    }
    let until = clock.now() + WAIT;
    while clock.now() < until {
        let heard = crowd.listeners_heard();
        if heard[before..].iter().all(|h| *h) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Wait (bounded) until the node records show the node at `node` with `count` participants,
/// then for the token path's one-second cache of them; whether they did. Placement reads those
/// records, so a scenario that needs the next join placed by what it just joined waits here.
pub async fn wait_full(
    api: SocketAddr,
    server: &str,
    clock: Clock,
    node: Option<SocketAddr>,
    count: usize,
) -> bool {
    let Some(node) = node else { return false };
    let full = wait_records(api, server, clock, |records| {
        record(records, node)
            .and_then(|r| r["participants"].as_u64())
            .is_some_and(|p| p >= count as u64)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    full
}

/// Poll `GET /api/nodes` at `api` with the server token `server` (bounded by 30 s) until `ok`
/// holds of its records; whether it did.
pub async fn wait_records(
    api: SocketAddr,
    server: &str,
    clock: Clock,
    ok: impl Fn(&[serde_json::Value]) -> bool,
) -> bool {
    let until = clock.now() + WAIT;
    while clock.now() < until {
        if let Ok(mut http) = crate::product::Http::new(api)
            && let Ok(body) = http.call("GET", "/api/nodes", Some(server), None).await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
            && ok(v["nodes"].as_array().map_or(&[][..], |a| a.as_slice()))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The record of the node whose public URL is `ws://{http}`.
pub fn record(records: &[serde_json::Value], http: SocketAddr) -> Option<&serde_json::Value> {
    let url = format!("ws://{http}");
    records.iter().find(|r| r["public_url"] == url.as_str())
}

/// The costs from the phases (in [`run`]'s order), the nodes' roles and the number of speakers.
pub fn costs(phases: &[Phase], roles: [Option<usize>; 3], speakers: usize) -> Costs {
    let cpu = |p: usize, node: usize| phases.get(p)?.cpu_cores.get(node).copied().flatten();
    let count =
        |p: usize, node: usize| phases.get(p).and_then(|ph| ph.listeners.get(node).copied());
    // A listener's cost on `node` from phase a to phase b.
    let per_listener = |node: usize, a: usize, b: usize| -> Option<f64> {
        let added = count(b, node)?.checked_sub(count(a, node)?)?;
        (added > 0).then_some(())?;
        Some((cpu(b, node)? - cpu(a, node)?) / added as f64)
    };
    let mut c = Costs::default();
    let [Some(origin), edge1, edge2] = roles else {
        return c;
    };
    c.listener_single = per_listener(origin, 1, 2);
    let stream = c.listener_single.map(|l| l / speakers.max(1) as f64);
    c.speaker_ingress_listener_streams = cpu(1, origin)
        .zip(cpu(0, origin))
        .zip(stream.filter(|s| *s > 0.0))
        .map(|((b, a), st)| (b - a) / speakers.max(1) as f64 / st - (speakers - 1) as f64);
    for (k, (edge, first)) in [(edge1, 3usize), (edge2, 5)].into_iter().enumerate() {
        let Some(edge) = edge else { continue };
        c.listener_edge[k] = per_listener(edge, first, first + 1);
        let single = c.listener_single.filter(|s| *s > 0.0);
        c.edge_over_single[k] = c.listener_edge[k].zip(single).map(|(e, s)| e / s);
        let on_origin = cpu(first, origin)
            .zip(cpu(first - 1, origin))
            .map(|(b, a)| b - a);
        let joined = count(first, edge)
            .zip(count(first - 1, edge))
            .map(|(b, a)| b.saturating_sub(a) as f64);
        let on_edge = cpu(first, edge)
            .zip(cpu(first - 1, edge))
            .zip(joined.zip(c.listener_edge[k]))
            .map(|((b, a), (j, l))| b - a - j * l);
        c.link_cores[k] = (on_origin, on_edge);
        c.link_origin_listeners[k] = on_origin.zip(single).map(|(o, s)| o / s);
        c.link_edge_listeners[k] = on_edge.zip(single).map(|(e, s)| e / s);
        c.link_listener_streams[k] = c.link_origin_listeners[k]
            .zip(c.link_edge_listeners[k])
            .map(|(o, e)| o + e);
    }
    c
}

/// Each edge's listeners' latency over the origin's in `last`, ms (p50, p99).
fn added(last: Option<&Phase>, roles: [Option<usize>; 3]) -> [Option<(f64, f64)>; 2] {
    let lat = |i: Option<usize>| last?.latency.get(i?).copied().flatten();
    let Some(o) = lat(roles[0]) else {
        return [None, None];
    };
    [roles[1], roles[2]].map(|e| lat(e).map(|l| (l.p50_ms - o.p50_ms, l.p99_ms - o.p99_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(listeners: [usize; 3], cpu: [f64; 3]) -> Phase {
        Phase {
            name: "p",
            listeners: listeners.to_vec(),
            cpu_cores: cpu.iter().map(|c| Some(*c)).collect(),
            redis_cpu_cores: None,
            harness_cpu_cores: None,
            latency: vec![None; 3],
            placed: true,
        }
    }

    #[test]
    fn costs_come_from_consecutive_phases() {
        // Node 1 is the origin, node 0 the first edge, node 2 the second. A listener costs
        // 0.001 cores everywhere; a link 0.002 on the origin and 0.003 on its edge.
        let phases = [
            phase([0, 0, 0], [0.01, 0.03, 0.01]),
            phase([0, 0, 0], [0.01, 0.05, 0.01]),
            phase([0, 10, 0], [0.01, 0.06, 0.01]),
            phase([1, 10, 0], [0.014, 0.062, 0.01]),
            phase([11, 10, 0], [0.024, 0.062, 0.01]),
            phase([11, 10, 1], [0.024, 0.064, 0.014]),
            phase([11, 10, 11], [0.024, 0.064, 0.024]),
        ];
        // Two speakers cost 0.02: 0.01 each, i.e. 20 listener-streams (0.0005 each), of which
        // one is the other speaker's stream it receives.
        let c = costs(&phases, [Some(1), Some(0), Some(2)], 2);
        let near = |v: Option<f64>, x: f64| v.is_some_and(|v| (v - x).abs() < 1e-9);
        assert!(near(c.listener_single, 0.001), "{c:?}");
        assert!(near(c.speaker_ingress_listener_streams, 19.0), "{c:?}");
        assert!(near(c.listener_edge[0], 0.001) && near(c.listener_edge[1], 0.001));
        assert!(near(c.edge_over_single[0], 1.0));
        assert!(near(c.link_origin_listeners[0], 2.0) && near(c.link_origin_listeners[1], 2.0));
        assert!(near(c.link_edge_listeners[0], 3.0) && near(c.link_edge_listeners[1], 3.0));
        assert!(near(c.link_listener_streams[1], 5.0));
        // Without an origin nothing is derived.
        assert!(
            costs(&phases, [None, Some(0), Some(2)], 2)
                .listener_single
                .is_none()
        );
    }

    #[test]
    fn bounds_are_checked() {
        let p = RelayParams {
            speakers: 2,
            listeners: 10,
            join_rate: 50.0,
            window: Duration::from_secs(5),
            depth: Depth::Header,
        };
        assert!(p.validate().is_ok());
        assert!(p.bound() < Duration::from_secs(3_600));
        for bad in [
            RelayParams {
                speakers: 0,
                ..p.clone()
            },
            RelayParams {
                listeners: 3,
                ..p.clone()
            },
            RelayParams {
                listeners: 6_000,
                ..p.clone()
            },
            RelayParams {
                join_rate: 0.0,
                ..p.clone()
            },
            RelayParams {
                window: Duration::ZERO,
                ..p.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
