//! A node dies under a room: how long until its listeners hear audio again?
//!
//! Three `stoa serve` nodes share one `redis-server` (both started here, on 127.0.0.1, or with
//! [`Params::namespaces`] each node in a network namespace of its own joined by veth links and
//! Redis and the clients on the hub's address, as `stoa-bench relay` runs them). A room
//! is created through `/api`; its host speaks on the room's origin, and listeners join through
//! the product path (user token, `POST /api/rooms/{id}/token`, `/rtc` at the URL it names)
//! until the origin is full (`[control] node_capacity`) and the rest spill over to the other
//! nodes, the room's edges. Then one node is killed with SIGKILL, as a crash would:
//!
//! - **an edge**: the edge carrying the most listeners. Its listeners' WebSockets close; each
//!   asks a living node's API for a token again at once (then after 0.25, 0.5, 1, 2 s… while
//!   that fails), as an application using the LiveKit SDK does, and joins where it is sent.
//! - **the origin**: the speaker's node. The speaker rejoins the same way (her token request
//!   moves the room to a living node); listeners on edges stay connected and should hear her
//!   again once their edge re-links to the room's new origin; the origin's own listeners
//!   rejoin.
//!
//! The speaker's client runs on a runtime thread of its own, so that the listeners' rejoins
//! (hundreds of DTLS handshakes at once on the harness's workers) do not hold back her audio.
//!
//! The listeners a kill concerns are the killed edge's own (their connections ended), or every
//! listener when the origin died; one has recovered at the first packet it receives after its
//! audio stopped (no packet for [`SILENT`], or its client ended). Other listeners whose audio
//! paused meanwhile are reported apart, with their pauses. The report gives, over the
//! concerned listeners, the share that recovered within the target (10 s for an edge,
//! 15 s after the speaker's rejoin for the origin) and the recovery times' quantiles, from the
//! kill and from the speaker's rejoin. Bounded: the run gives up [`Params::give_up`] after the
//! kill, and every client leaves by its deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{
    self, ClientHandle, ClientSpec, Command, Counters, Depth, Protocol, Role, Shared,
};
use crate::product::{self, Http, ProductJoin};
use crate::reception::Step;
use crate::scenario::{MAX_CLIENTS, ScenarioError, percentile};
use crate::server::ServerProcess;

/// A listener whose last packet is this old has lost its audio.
pub const SILENT: Duration = Duration::from_millis(300);
/// How often the run looks at every listener.
const POLL: Duration = Duration::from_millis(20);
/// Longest wait for the room to fill and every listener to hear the speaker.
const FILL_PLAY: Duration = Duration::from_secs(20);
/// The nodes of the cluster.
const NODES: usize = 3;
/// Redis's port on the hub's address, when the nodes run in namespaces.
const HUB_REDIS_PORT: u16 = 6379;
/// The API key and secret of `stoa serve --dev`.
const KEY: (&str, &str) = ("devkey", "secret");
/// Retry delays of a client whose connection ended: at once, then doubling from this, up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Which node dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Victim {
    /// The edge with the most listeners.
    Edge,
    /// The room's origin, where the speaker is.
    Origin,
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Listeners in the room.
    pub listeners: usize,
    /// Their joins per second while the room fills.
    pub join_rate: f64,
    /// Each node's `[control] node_capacity` (participants): the origin takes this many, the
    /// rest spill over to edges.
    pub capacity: u64,
    /// Which node is killed.
    pub victim: Victim,
    /// The run gives up this long after the kill.
    #[serde(serialize_with = "crate::scenario::seconds")]
    pub give_up: Duration,
    /// Each node in a network namespace of its own, joined to the harness's (the hub) by a
    /// veth pair, as `stoa-bench relay` runs them (`crate::netns`; the caller calls
    /// [`crate::netns::isolate`] first); otherwise every node on 127.0.0.1.
    pub namespaces: bool,
}

impl Params {
    /// Check the bounds every run must respect.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: &str| Err(ScenarioError::Invalid(m.to_owned()));
        if self.listeners == 0 || self.listeners * 3 > MAX_CLIENTS {
            return invalid("listeners must be 1 to a third of the client limit");
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 2_000.0) {
            return invalid("join rate must be in (0, 2000] per second");
        }
        // Once a node is gone the other two must hold everyone.
        if self.capacity == 0 || self.capacity * (NODES as u64 - 1) < self.listeners as u64 + 1 {
            return invalid("two nodes' capacity must hold every listener and the speaker");
        }
        if self.give_up < Duration::from_secs(1) || self.give_up > Duration::from_secs(120) {
            return invalid("give up 1 to 120 s after the kill");
        }
        Ok(())
    }

    fn fill_time(&self) -> Duration {
        Duration::from_secs_f64(self.listeners as f64 / self.join_rate)
    }
}

/// The run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What ran.
    pub params: Params,
    /// Listeners per node before the kill (node URL, listeners), as the nodes' records said.
    pub placed: Vec<(String, u64)>,
    /// Listeners that heard the speaker before the kill.
    pub heard_before: usize,
    /// Listeners the kill concerns: an edge's own listeners (their connections ended), or
    /// every listener when the origin died.
    pub affected: usize,
    /// Listeners not concerned by the kill whose audio still paused for [`SILENT`] or more.
    pub paused: usize,
    /// Their pauses, ms: p50, p95, p99, max.
    pub pause_ms: Option<[u32; 4]>,
    /// Of the affected, those that heard audio again before the run gave up.
    pub recovered: usize,
    /// Of them, those that heard audio again within the target: 10 s after the kill for an
    /// edge, 15 s after the speaker's rejoin for the origin.
    pub within_target: usize,
    /// `within_target / affected`.
    pub within_target_share: f64,
    /// Kill → audio again, ms: p50, p95, p99, max (recovered listeners).
    pub from_kill_ms: Option<[u32; 4]>,
    /// The speaker's rejoin (her new join response) → audio again, ms: p50, p95, p99, max
    /// (origin kills only).
    pub from_rejoin_ms: Option<[u32; 4]>,
    /// Kill → the speaker's new join response, ms (origin kills only).
    pub speaker_rejoined_ms: Option<u32>,
    /// Joins started after the kill (every listener's and the speaker's tries).
    pub rejoins: u64,
    /// Of them, those that failed (refused, or sent to the dead node).
    pub rejoins_failed: u64,
}

impl Report {
    /// The summary table.
    pub fn table(&self) -> String {
        let q = |v: Option<[u32; 4]>| {
            v.map_or_else(
                || "-".to_owned(),
                |[a, b, c, d]| format!("{a} / {b} / {c} / {d}"),
            )
        };
        let placed: Vec<String> = self
            .placed
            .iter()
            .map(|(url, n)| format!("{url}: {n}"))
            .collect();
        format!(
            "| killed | listeners per node | heard before | affected | recovered | within target | kill → audio p50 / p95 / p99 / max | rejoin → audio p50 / p95 / p99 / max | speaker rejoined | rejoins (failed) | others paused: pause p50 / p95 / p99 / max |\n\
             |---|---|---:|---:|---:|---:|---|---|---:|---:|---|\n\
             | {victim:?} | {placed} | {heard} | {affected} | {recovered} | {within} ({share:.1} %) | {kill} ms | {rejoin} | {speaker} | {rejoins} ({failed}) | {paused}: {pause} |\n",
            victim = self.params.victim,
            placed = placed.join(", "),
            heard = self.heard_before,
            affected = self.affected,
            recovered = self.recovered,
            within = self.within_target,
            share = self.within_target_share * 100.0,
            kill = q(self.from_kill_ms),
            rejoin = self
                .from_rejoin_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{} ms", q(Some(v)))),
            speaker = self
                .speaker_rejoined_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms")),
            rejoins = self.rejoins,
            failed = self.rejoins_failed,
            paused = self.paused,
            pause = self
                .pause_ms
                .map_or_else(|| "-".to_owned(), |v| format!("{} ms", q(Some(v)))),
        )
    }
}

/// One client's place in the room (a listener, or the speaker): the client now serving it and
/// what the run saw of its audio.
struct Slot {
    identity: String,
    role: Role,
    handle: ClientHandle,
    /// Packets its current client received at the last look, and when that count last grew.
    packets: u64,
    last_packet: Option<Instant>,
    /// When its audio stopped after the kill, and when it came back.
    lost: Option<Instant>,
    /// Its connection ended after the kill (it was on the killed node).
    dropped: bool,
    back: Option<Instant>,
    /// Its current client was started after the kill.
    rejoined: bool,
    /// Its client ended: the next one starts then.
    retry_at: Option<Instant>,
    /// Clients started for it since the kill.
    tries: u32,
}

impl Slot {
    fn new(identity: String, role: Role, handle: ClientHandle) -> Slot {
        Slot {
            identity,
            role,
            handle,
            packets: 0,
            last_packet: None,
            lost: None,
            dropped: false,
            back: None,
            rejoined: false,
            retry_at: None,
            tries: 0,
        }
    }
}

/// The wait before try `tries` (0: at once, then 0.25, 0.5, 1, 2, 2… s).
fn backoff(tries: u32) -> Duration {
    match tries {
        0 => Duration::ZERO,
        n => (RETRY_FIRST * 2u32.saturating_pow(n - 1)).min(RETRY_MAX),
    }
}

/// Plays the scenario with `binary` (`stoa`) as the nodes, pinned to `server_cpus` if given,
/// their logs (at `info`) in `log_dir` if given.
pub async fn run(
    binary: &Path,
    server_cpus: Option<&str>,
    log_dir: Option<&Path>,
    params: &Params,
) -> Result<Report, ScenarioError> {
    params.validate()?;
    let config_dir =
        std::env::temp_dir().join(format!("stoa-bench-failover-{}", std::process::id()));
    let config = write_config(&config_dir, params.capacity)?;
    let result = if params.namespaces {
        in_namespaces(binary, server_cpus, log_dir, &config, params).await
    } else {
        on_loopback(binary, server_cpus, log_dir, &config, params).await
    };
    let _ = std::fs::remove_dir_all(&config_dir);
    result
}

/// Redis and the nodes on 127.0.0.1.
async fn on_loopback(
    binary: &Path,
    server_cpus: Option<&str>,
    log_dir: Option<&Path>,
    config: &Path,
    params: &Params,
) -> Result<Report, ScenarioError> {
    let redis = crate::server::RedisProcess::spawn_loopback(None)
        .map_err(|e| ScenarioError::Invalid(format!("redis-server: {e}")))?;
    let config_env = config.to_string_lossy().into_owned();
    let mut nodes: Vec<Option<ServerProcess>> = Vec::new();
    for i in 0..NODES {
        let log = log_dir.map(|d| d.join(format!("node-{i}.log")));
        let node = ServerProcess::spawn_node_with(
            binary,
            server_cpus,
            &redis.url,
            log.as_deref(),
            &[
                ("STOA_CONFIG", config_env.as_str()),
                (
                    "STOA_LOG_LEVEL",
                    if log.is_some() { "info" } else { "warn" },
                ),
            ],
        )
        .map_err(|e| ScenarioError::Invalid(e.to_string()))?;
        nodes.push(Some(node));
    }
    let result = play(&mut nodes, params).await;
    drop(nodes);
    drop(redis);
    result
}

/// Redis on the hub and each node in a namespace of its own (10.77.N.2), so that a node-to-node
/// packet and every client's crosses veth links, as between machines.
async fn in_namespaces(
    binary: &Path,
    server_cpus: Option<&str>,
    log_dir: Option<&Path>,
    config: &Path,
    params: &Params,
) -> Result<Report, ScenarioError> {
    let setup = |e: &dyn std::fmt::Display| ScenarioError::Invalid(e.to_string());
    let redis = crate::server::RedisProcess::spawn(
        SocketAddr::from((crate::netns::HUB, HUB_REDIS_PORT)),
        None,
    )
    .map_err(|e| ScenarioError::Invalid(format!("redis-server: {e}")))?;
    // The namespaces outlive any run: filling, the kill and the give-up, with a margin.
    let lifetime = params.fill_time() + FILL_PLAY + params.give_up + Duration::from_secs(120);
    let mut nets = Vec::new();
    let mut nodes: Vec<Option<ServerProcess>> = Vec::new();
    for index in 1..=NODES as u8 {
        let net = crate::netns::NodeNet::create(index, lifetime).map_err(|e| setup(&e))?;
        let log = log_dir.map(|d| d.join(format!("node-{index}.log")));
        let node = ServerProcess::spawn_in(
            &net,
            binary,
            server_cpus,
            config,
            &redis.url,
            log.as_deref(),
        )
        .map_err(|e| setup(&e))?;
        nets.push(net);
        nodes.push(Some(node));
    }
    let result = play(&mut nodes, params).await;
    // The nodes first, then their namespaces, then Redis.
    drop(nodes);
    drop(nets);
    drop(redis);
    result
}

fn write_config(dir: &Path, capacity: u64) -> Result<PathBuf, ScenarioError> {
    let io = |e: std::io::Error| ScenarioError::Invalid(format!("write the nodes' config: {e}"));
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join("stoa.toml");
    std::fs::write(&path, format!("[control]\nnode_capacity = {capacity}\n")).map_err(io)?;
    Ok(path)
}

async fn play(
    nodes: &mut [Option<ServerProcess>],
    params: &Params,
) -> Result<Report, ScenarioError> {
    let apis: Vec<SocketAddr> = nodes.iter().flatten().map(|n| n.http).collect();
    let server = product::server_token(KEY.0, KEY.1)?;
    let shared = shared()?;
    let clock = shared.clock;
    // Every node's record is in the registry before the room is placed.
    let bound = clock.now() + Duration::from_secs(20);
    while registry(apis[0], &server).await.len() < NODES {
        if clock.now() > bound {
            return Err(ScenarioError::Invalid(
                "the nodes did not all register".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut http = Http::new(apis[0])?;
    let room = product::create_room(&mut http, &server, "host", "failover", None).await?;

    let deadline =
        clock.now() + params.fill_time() + FILL_PLAY + params.give_up + Duration::from_secs(30);
    let mut next_api = 0usize;
    // Clients bind the hub's address when the nodes are in namespaces: the nodes cannot reach
    // the hub's 127.0.0.1.
    let local_ip = if params.namespaces {
        crate::netns::HUB
    } else {
        std::net::Ipv4Addr::LOCALHOST
    };
    // The speaker runs on a runtime (a thread) of her own: hundreds of listeners rejoining at
    // once, with their DTLS handshakes, would otherwise delay her audio ticks on the harness's
    // workers, and every listener would seem to pause.
    let speaker_runtime = OwnRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("speaker")
            .enable_all()
            .build()
            .map_err(client::ClientError::Io)?,
    ));
    let mut spawn =
        |identity: &str, role: Role, apis: &[SocketAddr]| -> Result<ClientHandle, ScenarioError> {
            next_api += 1;
            let api = apis[next_api % apis.len()];
            let user_token = product::user_token(KEY.0, KEY.1, identity, identity)?;
            let spec = ClientSpec {
                http: api,
                protocol: Protocol::Livekit,
                identity: identity.to_owned(),
                local_ip,
                token: String::new(),
                product: Some(ProductJoin {
                    api,
                    room: room.clone(),
                    user_token,
                    stage_with: None,
                }),
                role,
                depth: match role {
                    Role::Speaker => Depth::Decrypt,
                    Role::Listener => Depth::Header,
                },
                deadline,
            };
            let _speaker = match (role, speaker_runtime.0.as_ref()) {
                (Role::Speaker, Some(rt)) => Some(rt.handle().enter()),
                _ => None,
            };
            Ok(ClientHandle::spawn(spec, shared.clone()))
        };

    // The host speaks on the origin; listeners fill it and spill over.
    let handle = spawn("host", Role::Speaker, &apis)?;
    handle.command(Command::Speak);
    let mut speaker = Slot::new("host".to_owned(), Role::Speaker, handle);
    let origin = origin_of(apis[0], &room).await?;
    let mut slots = Vec::with_capacity(params.listeners);
    let gap = Duration::from_secs_f64(1.0 / params.join_rate);
    // The origin fills first; the rest join once its record shows it full (the registry is as
    // fresh as the last heartbeat), so that they spill over to edges.
    let first = params
        .listeners
        .min(usize::try_from(params.capacity).unwrap_or(usize::MAX) - 1);
    for i in 0..params.listeners {
        if i == first {
            let full = |n: &serde_json::Value| {
                n["public_url"] == origin.as_str()
                    && n["participants"].as_u64() >= Some(params.capacity)
            };
            let bound = clock.now() + FILL_PLAY;
            while !registry(apis[0], &server).await.iter().any(full) && clock.now() < bound {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let identity = format!("listener-{i}");
        let handle = spawn(&identity, Role::Listener, &apis)?;
        slots.push(Slot::new(identity, Role::Listener, handle));
        tokio::time::sleep(gap).await;
    }
    let bound = clock.now() + FILL_PLAY;
    while slots.iter().any(|s| !heard(s)) && clock.now() < bound {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heard_before = slots.iter().filter(|s| heard(s)).count();
    // The registry's counts, once every listener shows in them.
    let bound = clock.now() + FILL_PLAY;
    let mut records = registry(apis[0], &server).await;
    while listed(&records) < heard_before as u64 && clock.now() < bound {
        tokio::time::sleep(Duration::from_millis(200)).await;
        records = registry(apis[0], &server).await;
    }
    let placed: Vec<(String, u64)> = records
        .iter()
        .map(|n| {
            (
                n["public_url"].as_str().unwrap_or_default().to_owned(),
                n["listeners"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let victim_url = match params.victim {
        Victim::Origin => origin.clone(),
        Victim::Edge => placed
            .iter()
            .filter(|(url, n)| *url != origin && *n > 0)
            .max_by_key(|(_, n)| *n)
            .map(|(url, _)| url.clone())
            .ok_or_else(|| ScenarioError::Invalid("no edge".into()))?,
    };
    let victim = nodes
        .iter()
        .position(|n| {
            n.as_ref()
                .is_some_and(|n| format!("ws://{}", n.http) == victim_url)
        })
        .ok_or_else(|| ScenarioError::Invalid(format!("no node at {victim_url}")))?;

    tracing::info!(%origin, %victim_url, ?placed, "killing a node");
    // The kill.
    let now = clock.now();
    for s in std::iter::once(&mut speaker).chain(slots.iter_mut()) {
        look(s, now);
    }
    if let Some(node) = nodes[victim].as_mut() {
        node.kill();
    }
    let killed = clock.now();
    let living: Vec<SocketAddr> = nodes
        .iter_mut()
        .flatten()
        .filter_map(|n| (!n.is_dead()).then_some(n.http))
        .collect();
    let (mut rejoins, mut rejoins_failed) = (0u64, 0u64);
    let mut speaker_back: Option<Instant> = None;
    let give_up = killed + params.give_up;
    loop {
        let now = clock.now();
        for s in std::iter::once(&mut speaker).chain(slots.iter_mut()) {
            look(s, now);
            if !s.handle.is_finished() {
                continue;
            }
            // Its connection ended: it asks a living node's API again, after a backoff.
            let Some(at) = s.retry_at else {
                s.lost.get_or_insert(now);
                s.dropped = true;
                if s.rejoined {
                    rejoins_failed += 1;
                }
                s.retry_at = Some(now + backoff(s.tries));
                continue;
            };
            if now < at {
                continue;
            }
            let handle = spawn(&s.identity, s.role, &living)?;
            if s.role == Role::Speaker {
                handle.command(Command::Speak);
            }
            let old = std::mem::replace(&mut s.handle, handle);
            let _ = old.finish().await;
            (s.packets, s.rejoined, s.retry_at) = (0, true, None);
            s.tries += 1;
            rejoins += 1;
        }
        if speaker_back.is_none() && speaker.rejoined && joined(&speaker.handle) {
            speaker_back = Some(now);
        }
        let done = slots.iter().all(|s| s.lost.is_none() || s.back.is_some());
        let settled = now.duration_since(killed) > SILENT * 3;
        let speaking = params.victim == Victim::Edge || speaker_back.is_some();
        if (done && settled && speaking) || now >= give_up {
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    // Recovery times.
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let quantiles = |v: &[u32]| -> Option<[u32; 4]> {
        Some([
            percentile(v, 0.50)?,
            percentile(v, 0.95)?,
            percentile(v, 0.99)?,
            *v.last()?,
        ])
    };
    // An edge's death concerns its own listeners; the origin's, every listener. Others whose
    // audio paused meanwhile (the cluster and this harness absorbing the rejoins) are counted
    // apart.
    let concerned = |s: &Slot| match params.victim {
        Victim::Edge => s.dropped,
        Victim::Origin => s.lost.is_some(),
    };
    let affected: Vec<&Slot> = slots.iter().filter(|s| concerned(s)).collect();
    let mut pauses: Vec<u32> = slots
        .iter()
        .filter(|s| !concerned(s))
        .filter_map(|s| Some(ms(s.back?.saturating_duration_since(s.lost?))))
        .collect();
    pauses.sort_unstable();
    let mut from_kill: Vec<u32> = affected
        .iter()
        .filter_map(|s| s.back.map(|b| ms(b.duration_since(killed))))
        .collect();
    from_kill.sort_unstable();
    let mut from_rejoin: Vec<u32> = match speaker_back {
        Some(at) if params.victim == Victim::Origin => affected
            .iter()
            .filter_map(|s| s.back.map(|b| ms(b.saturating_duration_since(at))))
            .collect(),
        _ => Vec::new(),
    };
    from_rejoin.sort_unstable();
    let within_target = match params.victim {
        Victim::Edge => from_kill.iter().filter(|t| **t <= 10_000).count(),
        Victim::Origin => from_rejoin.iter().filter(|t| **t <= 15_000).count(),
    };
    let report = Report {
        params: params.clone(),
        placed,
        heard_before,
        affected: affected.len(),
        paused: pauses.len(),
        pause_ms: quantiles(&pauses),
        recovered: from_kill.len(),
        within_target,
        within_target_share: if affected.is_empty() {
            0.0
        } else {
            within_target as f64 / affected.len() as f64
        },
        from_kill_ms: quantiles(&from_kill),
        from_rejoin_ms: quantiles(&from_rejoin),
        speaker_rejoined_ms: speaker_back.map(|at| ms(at.duration_since(killed))),
        rejoins,
        rejoins_failed,
    };
    for s in std::iter::once(&speaker).chain(&slots) {
        s.handle.command(Command::Leave);
    }
    for s in std::iter::once(speaker).chain(slots) {
        let _ = s.handle.finish().await;
    }
    Ok(report)
}

/// Updates what the run knows of slot `s`'s audio at `now`.
fn look(s: &mut Slot, now: Instant) {
    let packets = client::lock(&s.handle.reception).packets();
    if packets > s.packets {
        s.packets = packets;
        s.last_packet = Some(now);
        if s.lost.is_some() && s.back.is_none() {
            s.back = Some(now);
        }
    } else if s.lost.is_none()
        && s.last_packet
            .is_some_and(|t| now.duration_since(t) >= SILENT)
    {
        // Silent since the last packet: lost when that packet came.
        s.lost = s.last_packet;
    }
}

fn heard(s: &Slot) -> bool {
    client::lock(&s.handle.reception).heard()
}

fn joined(c: &ClientHandle) -> bool {
    let at = Step::ALL.iter().position(|s| *s == Step::Joined);
    at.is_some_and(|i| client::lock(&c.reception).totals().steps[i].is_some())
}

/// What every client of the run shares.
fn shared() -> Result<Shared, ScenarioError> {
    let clock = crate::clock::Clock::start();
    let counters = Arc::new(Counters::default());
    let sink =
        crate::sink::Sink::start(clock, counters.clone()).map_err(client::ClientError::Io)?;
    Ok(Shared {
        clock,
        tone: Arc::new(crate::audio::ToneLoop::encode()?),
        counters,
        dtls_cert: Arc::new(client::dtls_cert()?),
        sink: Some(Arc::new(sink)),
    })
}

/// A runtime shut down without waiting when dropped (a runtime may not be dropped, and so
/// wait, inside another's async context).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The living nodes' records (`GET /api/nodes`), empty when it cannot be read.
async fn registry(api: SocketAddr, server: &str) -> Vec<serde_json::Value> {
    let Ok(mut http) = Http::new(api) else {
        return Vec::new();
    };
    let Ok(body) = http.call("GET", "/api/nodes", Some(server), None).await else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    v.as_array()
        .or_else(|| v["nodes"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// Listeners in the nodes' records.
fn listed(records: &[serde_json::Value]) -> u64 {
    records.iter().filter_map(|n| n["listeners"].as_u64()).sum()
}

/// The room's origin: the URL the host's token names.
async fn origin_of(api: SocketAddr, room: &str) -> Result<String, ScenarioError> {
    let mut http = Http::new(api)?;
    let token = product::user_token(KEY.0, KEY.1, "host", "host")?;
    let grant = product::media_token(&mut http, room, &token).await?;
    Ok(format!("ws://{}", grant.rtc))
}
