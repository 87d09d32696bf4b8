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
//!
//! With the speakers on an edge ([`Stage::Edge`]; the nodes keep no stage reserve) the phases
//! are: the room created; the origin filled with listeners (nobody speaks yet); one listener on
//! the first edge; the speakers, whom placement sends to that edge since the origin is full
//! (the origin opens its feed from the edge); the edge filled; one listener on the second
//! edge; the second edge filled. In the last window the first edge's listeners hear the
//! speakers on their own node, the origin's one hop away (the feed), the second edge's two
//! (the feed, then its link from the origin). The CPU of each phase is reported; the cost
//! figures are the origin stage's only.

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
/// Most rounds of the alternated listener cost.
const MAX_ROUNDS: usize = 10;

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

/// Which node the speakers are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The room's origin: they join first; an edge's listeners are one relay hop from them
    /// (the edge's link from the origin).
    Origin,
    /// The first edge: they join once the origin is full (the nodes' `stage_reserve` is 0);
    /// the origin's listeners are one hop from them (the origin's feed from that edge), the
    /// second edge's two (the feed, then that edge's link).
    Edge,
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct RelayParams {
    /// Speakers, all speaking.
    pub speakers: usize,
    /// Where they are.
    pub stage: Stage,
    /// Participants per node (`node_capacity`). Speakers on the origin: it carries them and
    /// `listeners - speakers` listeners, each edge `listeners` listeners (an edge does not
    /// count the speakers it mirrors from the origin). Speakers on the first edge: the origin
    /// and the second edge carry `listeners` listeners, the first edge the speakers and
    /// `listeners - speakers` listeners.
    pub listeners: usize,
    /// Listener joins per second.
    pub join_rate: f64,
    /// How long each phase is measured.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub window: Duration,
    /// How deeply listeners read the audio.
    pub depth: Depth,
    /// With the speakers on the origin: rounds of the alternated listener cost after the
    /// phases ([`Round`]); 0 for none.
    pub rounds: usize,
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
        // Each round's listeners come back as new clients.
        let rejoins = self.rounds.min(MAX_ROUNDS) * self.listeners;
        if self.listeners * NODES + rejoins > MAX_CLIENTS.min(15_000) {
            return invalid("too many clients");
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 1_000.0) {
            return invalid("join rate must be in (0, 1000] per second");
        }
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(300) {
            return invalid("the window must be 1 to 300 seconds");
        }
        if self.rounds > MAX_ROUNDS {
            return invalid("at most 10 rounds");
        }
        if self.rounds > 0 && self.stage != Stage::Origin {
            return invalid("rounds are measured with the speakers on the origin");
        }
        Ok(())
    }

    /// Upper bound on the wall time of the run (the clients leave by then).
    pub fn bound(&self) -> Duration {
        let joins = Duration::from_secs_f64((self.listeners * NODES) as f64 / self.join_rate);
        let rounds = self.rounds.min(MAX_ROUNDS) as u32;
        let rejoins = Duration::from_secs_f64(
            (self.rounds.min(MAX_ROUNDS) * self.listeners) as f64 / self.join_rate,
        );
        joins
            + rejoins
            + (self.window + SETTLE + WAIT * 2) * (7 + 2 * rounds)
            + WAIT * 2 * rounds
            + Duration::from_secs(60)
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
                "[keys]\n{KEY} = \"{SECRET}\"\n[control]\npresence_ttl = {PRESENCE_TTL}\nnode_capacity = {}\nstage_reserve = 0\n",
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

/// One round of the alternated listener cost (speakers on the origin, after the phases):
/// half the origin's listeners and as many of the first edge's leave, a window is measured,
/// they come back (new clients, placed by the product path where they were: the origin has
/// headroom again, then only the first edge), and a window is measured again. Both nodes
/// change by the same listeners in the same two windows, back to back, so what the machine
/// drifts between windows falls on both alike.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The window with fewer listeners.
    pub fewer: Phase,
    /// The window with them back.
    pub back: Phase,
    /// A listener's CPU on the origin and on the first edge, cores: each node's CPU change
    /// over its listener change between the two windows.
    pub listener: [Option<f64>; 2],
    /// The edge's over the origin's.
    pub edge_over_single: Option<f64>,
}

/// Node `node`'s CPU change from window `a` to window `b` and its listener change (more in
/// `b`), if both are known and it gained listeners.
fn change(a: &Phase, b: &Phase, node: usize) -> Option<(f64, usize)> {
    let added = b
        .listeners
        .get(node)?
        .checked_sub(*a.listeners.get(node)?)?;
    let cpu = |p: &Phase| p.cpu_cores.get(node).copied().flatten();
    (added > 0).then_some((cpu(b)? - cpu(a)?, added))
}

/// A listener's CPU on `node` from window `a` to window `b`: its CPU change over its listener
/// change.
fn per_listener(a: &Phase, b: &Phase, node: usize) -> Option<f64> {
    change(a, b, node).map(|(cpu, added)| cpu / added as f64)
}

impl Round {
    /// The round from its two windows, for the origin and the first edge (indices into the
    /// nodes).
    pub fn new(fewer: Phase, back: Phase, origin: usize, edge: usize) -> Round {
        let per = |node: usize| per_listener(&fewer, &back, node);
        let listener = [per(origin), per(edge)];
        let edge_over_single = match listener {
            [Some(o), Some(e)] if o > 0.0 => Some(e / o),
            _ => None,
        };
        Round {
            fewer,
            back,
            listener,
            edge_over_single,
        }
    }
}

/// The rounds pooled: every round's CPU change over every round's listener change, per node;
/// the edge's over the origin's. Rounds whose placement was not confirmed are left out.
pub fn pooled(rounds: &[Round], origin: usize, edge: usize) -> Option<f64> {
    let sum = |node: usize| -> Option<f64> {
        let (mut cpu, mut listeners) = (0.0, 0usize);
        for r in rounds.iter().filter(|r| r.fewer.placed && r.back.placed) {
            let (c, l) = change(&r.fewer, &r.back, node)?;
            cpu += c;
            listeners += l;
        }
        (listeners > 0).then(|| cpu / listeners as f64)
    };
    let (o, e) = (sum(origin)?, sum(edge)?);
    (o > 0.0).then(|| e / o)
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
    /// Speakers whose grant named the node they were meant for (`params.stage`).
    pub speakers_placed: usize,
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
    /// Latency over the speakers' own node's listeners in the last phase, ms (p50, p99): with
    /// the speakers on the origin, each edge's (one hop each); on the first edge, the
    /// origin's (one hop, the feed) and the second edge's (two hops).
    pub added_ms: [Option<(f64, f64)>; 2],
    /// The wake-up floor measured after the phases ([`Cluster::wakeup_floor`]), if it was.
    pub floor: Option<WakeupBaseline>,
    /// The alternated listener cost, round by round (`params.rounds`).
    pub rounds: Vec<Round>,
    /// The rounds pooled: a listener on the first edge over one on the origin.
    pub rounds_edge_over_single: Option<f64>,
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
        out.push_str("\n| node | listeners heard | latency p50 / p99 (last phase) | loss | relay hops from the speakers | adds over the speakers' node p50 / p99 |\n|---|---:|---:|---:|---:|---:|\n");
        let last = self.phases.last();
        for &i in &order {
            let (n, heard) = self.heard.get(i).copied().unwrap_or((0, 0));
            let lat = last.and_then(|p| p.latency[i]);
            // The node's hops from the speakers, and its entry in `added_ms`, by its role.
            let role = self.roles.iter().position(|r| *r == Some(i));
            let (hops, entry) = match (self.params.stage, role) {
                (Stage::Origin, Some(k @ (1 | 2))) => (1, Some(k - 1)),
                (Stage::Edge, Some(0)) => (1, Some(0)),
                (Stage::Edge, Some(2)) => (2, Some(1)),
                _ => (0, None),
            };
            let added = match (entry, role) {
                (Some(e), _) => {
                    self.added_ms[e].map_or("-".into(), |(a, b)| format!("{a:+.2} / {b:+.2} ms"))
                }
                (None, Some(_)) => "(the speakers' node)".into(),
                (None, None) => "-".into(),
            };
            out.push_str(&format!(
                "| {} | {heard}/{n} | {} | {} | {hops} | {added} |\n",
                label(i),
                lat.map_or("-".into(), |l| format!(
                    "{:.2} / {:.2} ms",
                    l.p50_ms, l.p99_ms
                )),
                lat.map_or("-".into(), |l| format!("{:.3} %", l.loss * 100.0)),
            ));
        }
        if self.params.stage == Stage::Origin {
            self.cost_lines(&mut out);
        }
        if let [Some(origin), Some(edge), _] = self.roles
            && !self.rounds.is_empty()
        {
            out.push_str("\n| round | listeners origin / edge 1, fewer → back | CPU origin / edge 1, fewer → back (cores) | a listener, origin | a listener, edge 1 | edge ÷ origin |\n|---:|---:|---:|---:|---:|---:|\n");
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.3} ms/s", v * 1e3));
            let cpu =
                |p: &Phase, i: usize| p.cpu_cores[i].map_or("-".into(), |c| format!("{c:.3}"));
            for (k, r) in self.rounds.iter().enumerate() {
                out.push_str(&format!(
                    "| {} | {} / {} → {} / {} | {} / {} → {} / {} | {} | {} | {} |\n",
                    k + 1,
                    r.fewer.listeners[origin],
                    r.fewer.listeners[edge],
                    r.back.listeners[origin],
                    r.back.listeners[edge],
                    cpu(&r.fewer, origin),
                    cpu(&r.fewer, edge),
                    cpu(&r.back, origin),
                    cpu(&r.back, edge),
                    ms(r.listener[0]),
                    ms(r.listener[1]),
                    r.edge_over_single.map_or("-".into(), |v| format!("{v:.2}")),
                ));
            }
            out.push_str(&format!(
                "alternated rounds pooled: a listener on edge 1 costs {}× one on the origin\n",
                self.rounds_edge_over_single
                    .map_or("-".into(), |v| format!("{v:.3}"))
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
            "speakers on the origin: {}/{}, on the node meant ({}): {}; failed clients: {}; relay links started on {}: {}\n",
            self.speakers_on_origin,
            self.params.speakers,
            match self.params.stage {
                Stage::Origin => "the origin",
                Stage::Edge => "edge 1",
            },
            self.speakers_placed,
            self.failed,
            names.join(" / "),
            relays.join(" / ")
        ));
        out
    }

    /// The cost lines of a run with the speakers on the origin.
    fn cost_lines(&self, out: &mut String) {
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
    let ctx = Ctx {
        nodes,
        api,
        server: &server,
        clock,
        params,
    };
    let (phases, roles) = match params.stage {
        Stage::Origin => stage_on_origin(&mut m, &mut crowd, &ctx).await?,
        Stage::Edge => stage_on_edge(&mut m, &mut crowd, &ctx).await?,
    };
    let rounds = match roles {
        [Some(origin), Some(edge), _] if params.stage == Stage::Origin => {
            alternate(&mut m, &mut crowd, &ctx, origin, edge).await?
        }
        _ => Vec::new(),
    };
    let rounds_edge_over_single = match roles {
        [Some(origin), Some(edge), _] if !rounds.is_empty() => pooled(&rounds, origin, edge),
        _ => None,
    };
    let speakers = crowd.speaker_servers();
    let on = |role: Option<usize>| {
        speakers
            .iter()
            .filter(|s| role.is_some() && ctx.index_of(**s) == role)
            .count()
    };
    let speakers_on_origin = on(roles[0]);
    let speakers_placed = on(match params.stage {
        Stage::Origin => roles[0],
        Stage::Edge => roles[1],
    });

    let mut heard = vec![(0, 0); nodes.len()];
    for (server, h) in crowd
        .listener_servers()
        .into_iter()
        .zip(crowd.listeners_heard())
    {
        if let Some(i) = ctx.index_of(server) {
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
    let (costs, added_ms) = match params.stage {
        Stage::Origin => (
            costs(&phases, roles, params.speakers),
            added(phases.last(), roles[0], [roles[1], roles[2]]),
        ),
        Stage::Edge => (
            Costs::default(),
            added(phases.last(), roles[1], [roles[0], roles[2]]),
        ),
    };
    Ok(RelayReport {
        params: params.clone(),
        nodes: nodes.to_vec(),
        roles,
        speakers_on_origin,
        speakers_placed,
        phases,
        heard,
        failed,
        relays_started,
        costs,
        added_ms,
        floor: None,
        rounds,
        rounds_edge_over_single,
    })
}

/// The rounds of the alternated listener cost ([`Round`]) on the `origin` and the first
/// `edge` (indices into the nodes), after the phases left every node full.
async fn alternate(
    m: &mut Measure<'_>,
    crowd: &mut Crowd,
    ctx: &Ctx<'_>,
    origin: usize,
    edge: usize,
) -> Result<Vec<Round>, ScenarioError> {
    let (n, rate, clock) = (ctx.params.listeners, ctx.params.join_rate, ctx.clock);
    let k = (n - ctx.params.speakers) / 2;
    let (o, e) = (m.nodes[origin].http, m.nodes[edge].http);
    let mut rounds = Vec::new();
    for _ in 0..ctx.params.rounds {
        // None leaving (no listener known on a node) leaves the round unconfirmed.
        let left = [crowd.leave_on(o, k).await, crowd.leave_on(e, k).await];
        // Placement reads the records: they must show the room made before anyone comes back.
        let gone = left.iter().all(|l| *l > 0)
            && wait_records(ctx.api, ctx.server, clock, |records| {
                [(o, left[0]), (e, left[1])].iter().all(|(node, left)| {
                    record(records, *node)
                        .and_then(|r| r["participants"].as_u64())
                        .is_some_and(|p| p <= (n - left) as u64)
                })
            })
            .await;
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let fewer = m.phase("fewer listeners", crowd, gone).await;
        // The origin's come back first: it has headroom, so placement sends them there; once
        // it is full, the first edge is the one node with headroom.
        join(crowd, left[0], rate, clock, true).await?;
        let placed = ctx.wait_full(Some(origin), n).await;
        join(crowd, left[1], rate, clock, true).await?;
        let placed = ctx.wait_full(Some(edge), n).await && placed;
        let back = m.phase("listeners back", crowd, placed).await;
        rounds.push(Round::new(fewer, back, origin, edge));
    }
    Ok(rounds)
}

/// What the phase sequences share.
struct Ctx<'a> {
    /// The node whose `/api` every call goes to.
    api: SocketAddr,
    /// A server token for it.
    server: &'a str,
    clock: Clock,
    params: &'a RelayParams,
    /// The nodes, in the order they were started.
    nodes: &'a [Node],
}

impl Ctx<'_> {
    /// The index in the nodes of the node at `addr`.
    fn index_of(&self, addr: Option<SocketAddr>) -> Option<usize> {
        addr.and_then(|a| self.nodes.iter().position(|n| n.http == a))
    }

    /// The node of the listener who joined last, unless it is one of `not`.
    fn last_listener_node(&self, crowd: &Crowd, not: &[Option<usize>]) -> Option<usize> {
        crowd
            .listener_servers()
            .last()
            .and_then(|s| self.index_of(*s))
            .filter(|n| !not.contains(&Some(*n)))
    }

    /// Waits until the node at role `node` shows `count` participants in its record.
    async fn wait_full(&self, node: Option<usize>, count: usize) -> bool {
        let http = node.and_then(|n| self.nodes.get(n)).map(|n| n.http);
        wait_full(self.api, self.server, self.clock, http, count).await
    }

    /// The speakers join (placed by the product path) and speak; waits (bounded) until they
    /// sent audio and each opened `/rtc` at its node.
    async fn speakers_join(&self, crowd: &mut Crowd) -> Result<(), ScenarioError> {
        for _ in 0..self.params.speakers {
            crowd.join(Role::Speaker)?;
        }
        for i in 0..self.params.speakers {
            crowd.speaker(i, Command::Speak);
        }
        let until = self.clock.now() + WAIT;
        while (crowd.counters().rtp_sent.load(Ordering::Relaxed) < self.params.speakers as u64
            || crowd.speaker_servers().iter().any(Option::is_none))
            && self.clock.now() < until
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

/// The seven phases with the speakers on the origin (the module's doc); the phases and the
/// roles (origin, first edge, second edge).
async fn stage_on_origin(
    m: &mut Measure<'_>,
    crowd: &mut Crowd,
    ctx: &Ctx<'_>,
) -> Result<(Vec<Phase>, [Option<usize>; 3]), ScenarioError> {
    let (n, rate, clock) = (ctx.params.listeners, ctx.params.join_rate, ctx.clock);
    let mut phases = vec![m.phase("idle", crowd, true).await];
    ctx.speakers_join(crowd).await?;
    let origin = ctx.index_of(crowd.speaker_servers().first().copied().flatten());
    phases.push(m.phase("speakers", crowd, true).await);
    join(crowd, n - ctx.params.speakers, rate, clock, true).await?;
    let placed = ctx.wait_full(origin, n).await;
    phases.push(m.phase("origin full", crowd, placed).await);
    join(crowd, 1, rate, clock, true).await?;
    let edge1 = ctx.last_listener_node(crowd, &[origin]);
    phases.push(m.phase("edge 1: first listener", crowd, true).await);
    // An edge counts its own listeners only (not the origin's speakers it mirrors): it is
    // full at `n` listeners.
    join(crowd, n - 1, rate, clock, true).await?;
    let placed = ctx.wait_full(edge1, n).await;
    phases.push(m.phase("edge 1 full", crowd, placed).await);
    let edge2 = second_edge(m, crowd, ctx, &mut phases, [origin, edge1]).await?;
    Ok((phases, [origin, edge1, edge2]))
}

/// The phases with the speakers on the first edge: the origin filled with listeners, the
/// first edge's first listener (its link), the speakers (placed on that edge, the origin
/// being full with no stage reserve; the origin opens its feed from the edge), the edge
/// filled, then the second edge (linked to the origin, which sends it the fed speakers).
async fn stage_on_edge(
    m: &mut Measure<'_>,
    crowd: &mut Crowd,
    ctx: &Ctx<'_>,
) -> Result<(Vec<Phase>, [Option<usize>; 3]), ScenarioError> {
    let (n, rate, clock) = (ctx.params.listeners, ctx.params.join_rate, ctx.clock);
    let mut phases = vec![m.phase("idle", crowd, true).await];
    // Nobody speaks yet: these joins do not wait to hear.
    join(crowd, n, rate, clock, false).await?;
    let origin = crowd
        .listener_servers()
        .first()
        .and_then(|s| ctx.index_of(*s));
    let placed = ctx.wait_full(origin, n).await;
    phases.push(m.phase("origin full (listeners)", crowd, placed).await);
    join(crowd, 1, rate, clock, false).await?;
    let edge1 = ctx.last_listener_node(crowd, &[origin]);
    let placed = ctx.wait_full(edge1, 1).await;
    phases.push(m.phase("edge 1: first listener", crowd, placed).await);
    ctx.speakers_join(crowd).await?;
    wait_heard(crowd, 0, clock).await;
    phases.push(m.phase("speakers on edge 1", crowd, true).await);
    // The edge counts its speakers among its participants.
    join(crowd, n - 1 - ctx.params.speakers, rate, clock, true).await?;
    let placed = ctx.wait_full(edge1, n).await;
    phases.push(m.phase("edge 1 full", crowd, placed).await);
    let edge2 = second_edge(m, crowd, ctx, &mut phases, [origin, edge1]).await?;
    Ok((phases, [origin, edge1, edge2]))
}

/// The last two phases of either stage: the second edge's first listener (it links itself to
/// the origin), then the second edge filled. Returns its role: the node of that listener, if
/// neither of `taken` (the origin and the first edge).
async fn second_edge(
    m: &mut Measure<'_>,
    crowd: &mut Crowd,
    ctx: &Ctx<'_>,
    phases: &mut Vec<Phase>,
    taken: [Option<usize>; 2],
) -> Result<Option<usize>, ScenarioError> {
    let (n, rate, clock) = (ctx.params.listeners, ctx.params.join_rate, ctx.clock);
    join(crowd, 1, rate, clock, true).await?;
    let edge2 = ctx.last_listener_node(crowd, &taken);
    phases.push(m.phase("edge 2: first listener", crowd, true).await);
    join(crowd, n - 1, rate, clock, true).await?;
    phases.push(m.phase("edge 2 full", crowd, true).await);
    Ok(edge2)
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

/// `count` listeners join at `rate` per second; then wait (bounded) until all of them heard
/// (with `hear`) or opened `/rtc` at the node their grant named.
async fn join(
    crowd: &mut Crowd,
    count: usize,
    rate: f64,
    clock: Clock,
    hear: bool,
) -> Result<(), ScenarioError> {
    let before = crowd.listeners();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = clock.now();
    for _ in 0..count {
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        crowd.join(Role::Listener)?;
        next += gap;
    }
    if hear {
        wait_heard(crowd, before, clock).await;
    } else {
        let until = clock.now() + WAIT;
        while clock.now() < until
            && crowd
                .listener_servers()
                .get(before..)
                .is_some_and(|s| s.iter().any(Option::is_none))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Waits (bounded) until every listener from the `from`th on has heard.
async fn wait_heard(crowd: &Crowd, from: usize, clock: Clock) {
    let until = clock.now() + WAIT;
    while clock.now() < until {
        let heard = crowd.listeners_heard();
        if heard.get(from..).is_none_or(|h| h.iter().all(|h| *h)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let per_listener =
        |node: usize, a: usize, b: usize| per_listener(phases.get(a)?, phases.get(b)?, node);
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

/// The latency of the listeners of each of `others` over that of `home`'s (the speakers'
/// node) in `last`, ms (p50, p99).
fn added(
    last: Option<&Phase>,
    home: Option<usize>,
    others: [Option<usize>; 2],
) -> [Option<(f64, f64)>; 2] {
    let lat = |i: Option<usize>| last?.latency.get(i?).copied().flatten();
    let Some(o) = lat(home) else {
        return [None, None];
    };
    others.map(|e| lat(e).map(|l| (l.p50_ms - o.p50_ms, l.p99_ms - o.p99_ms)))
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
    fn rounds_compare_the_same_windows() {
        // Node 2 is the origin, node 0 the first edge. In the first round 5 listeners leave
        // each and come back: the origin's CPU changes by 0.005 (0.001 each), the edge's by
        // 0.0055 (0.0011 each); in the second 4 leave the origin, 5 the edge.
        let r1 = Round::new(
            phase([5, 10, 5], [0.02, 0.5, 0.03]),
            phase([10, 10, 10], [0.0255, 0.5, 0.035]),
            2,
            0,
        );
        let near = |v: Option<f64>, x: f64| v.is_some_and(|v| (v - x).abs() < 1e-9);
        assert!(
            near(r1.listener[0], 0.001) && near(r1.listener[1], 0.0011),
            "{r1:?}"
        );
        assert!(near(r1.edge_over_single, 1.1), "{r1:?}");
        let r2 = Round::new(
            phase([5, 10, 6], [0.02, 0.5, 0.03]),
            phase([10, 10, 10], [0.025, 0.5, 0.038]),
            2,
            0,
        );
        assert!(near(r2.listener[0], 0.002) && near(r2.listener[1], 0.001));
        // Pooled: the origin 0.013 over 9 listeners, the edge 0.0105 over 10.
        let pooled = pooled(&[r1.clone(), r2], 2, 0);
        assert!(near(pooled, (0.0105 / 10.0) / (0.013 / 9.0)), "{pooled:?}");
        // Nobody changed on a node: nothing to divide by.
        let none = Round::new(
            phase([5, 10, 10], [0.02, 0.5, 0.03]),
            phase([10, 10, 10], [0.025, 0.5, 0.03]),
            2,
            0,
        );
        assert!(none.listener[0].is_none() && none.edge_over_single.is_none());
        // A round whose placement was not confirmed is left out of the pooled figure.
        let mut unconfirmed = r1.clone();
        unconfirmed.back.placed = false;
        let only_r1 = super::pooled(&[r1.clone(), unconfirmed], 2, 0);
        assert!(near(only_r1, 1.1), "{only_r1:?}");
    }

    #[test]
    fn bounds_are_checked() {
        let p = RelayParams {
            speakers: 2,
            stage: Stage::Origin,
            listeners: 10,
            join_rate: 50.0,
            window: Duration::from_secs(5),
            depth: Depth::Header,
            rounds: 3,
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
            RelayParams {
                rounds: 11,
                ..p.clone()
            },
            RelayParams {
                stage: Stage::Edge,
                ..p.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
