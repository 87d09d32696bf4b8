//! The scenarios: an audio room (S speakers × L listeners), a join storm (listeners joining at
//! R per second, judged by join-to-first-audio), churn (listeners leaving and new ones joining
//! while the room plays) and speaker rotation (one speaker at a time, the floor passing on while
//! the listeners keep listening). Every run is bounded in clients and in time.
//!
//! A [`Crowd`] holds the clients of one room; [`run`] plays a scenario with it and samples the
//! server each second; [`capacity`](crate::capacity) grows a crowd step by step.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audio::{AudioError, ToneLoop};
use crate::client::{
    self, ClientError, ClientHandle, ClientSpec, Command, Counters, Depth, Outcome, Protocol, Role,
    Shared,
};
use crate::clock::Clock;
use crate::reception::{Totals, Window};
use crate::report::{Report, RunRecord, Tick};
use crate::server::{ProcProbe, ProcSample, RtpCounters, scrape_rtp};
use crate::sink::Sink;

/// Most clients one run may start, whatever the parameters say.
pub const MAX_CLIENTS: usize = 20_000;
/// Longest run, whatever the parameters say.
pub const MAX_DURATION: Duration = Duration::from_secs(3_600);
/// After the planned end, how long clients may take to leave.
const GRACE: Duration = Duration::from_secs(10);
/// Churn pauses this long before the end of play.
const CHURN_QUIET: Duration = Duration::from_secs(2);

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The parameters are out of bounds.
    #[error("invalid parameters: {0}")]
    Invalid(String),
    /// libopus failed.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// A client could not be prepared.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The room could not be set up through the control API.
    #[error(transparent)]
    Api(#[from] crate::product::ApiError),
    /// A harness thread's priority could not be lowered.
    #[error(transparent)]
    Priority(#[from] crate::affinity::PriorityError),
}

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Speakers speak, listeners join at the join rate and listen for the duration.
    Room,
    /// Like `room`, judged by join-to-first-audio: set a high join rate.
    JoinStorm,
    /// Like `room`, and every 1/churn-rate seconds a listener leaves and a new one joins.
    Churn,
    /// One speaker at a time; every rotate-every seconds the next one takes the floor.
    Rotation,
}

/// How clients get into the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JoinPath {
    /// With access tokens the harness mints itself, straight to `/rtc` (any LiveKit server).
    Direct,
    /// As Stoa's web app does: the room is created and started through `/api` (hosted by the
    /// first speaker), and each client turns a user token into a media token with
    /// `POST /api/rooms/{id}/token` before opening `/rtc`.
    Product,
}

/// The server and the room.
#[derive(Debug, Clone)]
pub struct Target {
    /// HTTP address of the server (Janus: its WebSocket address).
    pub http: SocketAddr,
    /// The server's API.
    pub protocol: Protocol,
    /// API key and secret that sign tokens.
    pub key: String,
    /// API secret.
    pub secret: String,
    /// Room name.
    pub room: String,
    /// Process id of the server, to read its CPU and memory (same machine only).
    pub pid: Option<u32>,
    /// How clients join.
    pub path: JoinPath,
    /// On the product path, the nodes whose `/api` clients call in turn (several nodes
    /// sharing one Redis); empty: `http` alone. The room is created on `http`.
    pub api: Vec<SocketAddr>,
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// Which scenario.
    pub kind: Kind,
    /// Speakers (all speak at once, except in rotation).
    pub speakers: usize,
    /// Listeners.
    pub listeners: usize,
    /// Listener joins per second.
    pub join_rate: f64,
    /// How long the room plays once every listener has been started.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Churn: listeners replaced per second.
    pub churn_rate: f64,
    /// Rotation: seconds each speaker holds the floor.
    #[serde(serialize_with = "seconds")]
    pub rotate_every: Duration,
    /// Listeners that also decode the audio with libopus.
    pub decoders: usize,
    /// How deeply the other listeners read what they receive.
    pub depth: Depth,
}

impl Params {
    /// Check the bounds every run must respect.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: &str| Err(ScenarioError::Invalid(m.to_owned()));
        if self.speakers == 0 {
            return invalid("at least one speaker");
        }
        if self.speakers + self.listeners > MAX_CLIENTS {
            return invalid("too many clients");
        }
        if !(self.join_rate > 0.0 && self.join_rate <= 10_000.0) {
            return invalid("join rate must be in (0, 10000] per second");
        }
        if self.duration > MAX_DURATION || self.duration.is_zero() {
            return invalid("duration must be in (0, 3600] seconds");
        }
        if self.kind == Kind::Churn && !(self.churn_rate > 0.0 && self.churn_rate <= 1_000.0) {
            return invalid("churn rate must be in (0, 1000] per second");
        }
        if self.kind == Kind::Rotation && self.rotate_every < Duration::from_millis(100) {
            return invalid("rotate-every must be at least 0.1 s");
        }
        Ok(())
    }

    /// Upper bound on the wall time of the run: joins, play, grace.
    pub fn bound(&self) -> Duration {
        let joins = Duration::from_secs_f64(self.listeners as f64 / self.join_rate);
        joins + self.duration + GRACE + Duration::from_secs(10)
    }
}

/// The clients of one room, and what left ones measured.
#[derive(Debug)]
pub struct Crowd {
    target: Target,
    shared: Shared,
    deadline: Instant,
    speakers: Vec<ClientHandle>,
    listeners: Vec<ClientHandle>,
    started: usize,
    decoders: usize,
    decoders_started: usize,
    depth: Depth,
    /// Totals and outcomes of listeners that have left.
    gone: Vec<(Totals, Outcome)>,
    /// Where clients' peer connections bind.
    local_ip: std::net::Ipv4Addr,
    /// The control plane's room and a server token, on the product path.
    product: Option<(String, String)>,
}

/// The identity of the first speaker, who hosts the room on the product path.
pub const HOST: &str = "speaker-0";

impl Crowd {
    /// An empty crowd; every client it starts leaves by itself at `deadline`.
    pub fn new(
        target: Target,
        deadline: Instant,
        decoders: usize,
        depth: Depth,
    ) -> Result<Crowd, ScenarioError> {
        Crowd::new_named(target, deadline, decoders, depth, crate::sink::SINK_THREAD)
    }

    /// [`Crowd::new`], its header-only listeners' socket reader thread named `sink`.
    pub fn new_named(
        target: Target,
        deadline: Instant,
        decoders: usize,
        depth: Depth,
        sink: &str,
    ) -> Result<Crowd, ScenarioError> {
        let clock = Clock::start();
        let counters = Arc::new(Counters::default());
        // Header-only listeners hand their sockets to one reading thread.
        let sink = match depth {
            Depth::Header => Some(Arc::new(
                Sink::start_named(sink, clock, counters.clone()).map_err(ClientError::Io)?,
            )),
            Depth::Decrypt | Depth::Decode => None,
        };
        let shared = Shared {
            clock,
            tone: Arc::new(ToneLoop::encode()?),
            counters,
            dtls_cert: Arc::new(client::dtls_cert()?),
            sink,
        };
        // Janus's ICE pairs only candidates it can reach from its veth address (see
        // `crate::janus`), so its clients bind that address too.
        let local_ip = match target.protocol {
            Protocol::Janus => crate::janus::veth_loopback_address()
                .map_or(std::net::Ipv4Addr::LOCALHOST, |(_, ip)| ip),
            Protocol::Livekit => std::net::Ipv4Addr::LOCALHOST,
        };
        Ok(Crowd {
            local_ip,
            target,
            shared,
            deadline,
            speakers: Vec::new(),
            listeners: Vec::new(),
            started: 0,
            decoders,
            decoders_started: 0,
            depth,
            gone: Vec::new(),
            product: None,
        })
    }

    /// Like [`Crowd::new`]; on the product path it also creates and starts the room through
    /// `/api`, hosted by the first speaker.
    pub async fn open(
        target: Target,
        deadline: Instant,
        decoders: usize,
        depth: Depth,
    ) -> Result<Crowd, ScenarioError> {
        let path = target.path;
        let mut crowd = Crowd::new(target, deadline, decoders, depth)?;
        if path == JoinPath::Product {
            let t = &crowd.target;
            let server = crate::product::server_token(&t.key, &t.secret)?;
            let mut http = crate::product::Http::new(t.http)?;
            let room = crate::product::create_room(&mut http, &server, HOST, &t.room, None).await?;
            crowd.product = Some((room, server));
        }
        Ok(crowd)
    }

    /// Clients started from now on bind `ip` (a loopback address, or the harness's address in
    /// the namespaces it made, [`crate::netns::HUB`]).
    pub fn set_local_ip(&mut self, ip: std::net::Ipv4Addr) {
        self.local_ip = ip;
    }

    /// The server each present listener opened `/rtc` at (`None` while unknown), in join order.
    pub fn listener_servers(&self) -> Vec<Option<SocketAddr>> {
        self.listeners
            .iter()
            .map(|l| client::lock(&l.reception).server())
            .collect()
    }

    /// Whether each present listener has heard audio, in join order.
    pub fn listeners_heard(&self) -> Vec<bool> {
        self.listeners
            .iter()
            .map(|l| client::lock(&l.reception).heard())
            .collect()
    }

    /// The server each speaker opened `/rtc` at (`None` while unknown).
    pub fn speaker_servers(&self) -> Vec<Option<SocketAddr>> {
        self.speakers
            .iter()
            .map(|s| client::lock(&s.reception).server())
            .collect()
    }

    /// The window since the previous call (this or [`Crowd::window`]) of every present
    /// listener, summed per server they opened `/rtc` at.
    pub fn windows_by_server(&self) -> Vec<(Option<SocketAddr>, Window)> {
        let mut by: Vec<(Option<SocketAddr>, Window)> = Vec::new();
        for l in &self.listeners {
            let (server, w) = {
                let mut r = client::lock(&l.reception);
                (r.server(), r.take_window())
            };
            match by.iter_mut().find(|(s, _)| *s == server) {
                Some((_, all)) => all.merge(w),
                None => by.push((server, w)),
            }
        }
        by
    }

    /// The control plane's room id on the product path.
    pub fn product_room(&self) -> Option<&str> {
        self.product.as_ref().map(|(r, _)| r.as_str())
    }

    /// The run's clock.
    pub fn clock(&self) -> Clock {
        self.shared.clock
    }

    /// Run-wide counters.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Listeners currently in the room (started and not told to leave).
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Start one client.
    pub fn join(&mut self, role: Role) -> Result<(), ScenarioError> {
        if self.started >= MAX_CLIENTS {
            return Err(ScenarioError::Invalid("client limit reached".into()));
        }
        let identity = match role {
            Role::Speaker => format!("speaker-{}", self.started),
            Role::Listener => format!("listener-{}", self.started),
        };
        self.started += 1;
        let (token, product) = match &self.product {
            None => {
                let token = client::mint(
                    &self.target.key,
                    &self.target.secret,
                    &self.target.room,
                    &identity,
                    role,
                )?;
                (token, None)
            }
            Some((room, server)) => {
                let user_token = crate::product::user_token(
                    &self.target.key,
                    &self.target.secret,
                    &identity,
                    &identity,
                )?;
                let stage_with =
                    (role == Role::Speaker && identity != HOST).then(|| server.clone());
                let api = match self.target.api.as_slice() {
                    [] => self.target.http,
                    nodes => nodes[self.started % nodes.len()],
                };
                let join = crate::product::ProductJoin {
                    api,
                    room: room.clone(),
                    user_token,
                    stage_with,
                };
                (String::new(), Some(join))
            }
        };
        let depth = match role {
            Role::Listener if self.decoders_started < self.decoders => {
                self.decoders_started += 1;
                Depth::Decode
            }
            Role::Listener => self.depth,
            Role::Speaker => Depth::Decrypt,
        };
        let spec = ClientSpec {
            http: self.target.http,
            protocol: self.target.protocol,
            identity,
            local_ip: self.local_ip,
            token,
            product,
            role,
            depth,
            deadline: self.deadline,
        };
        let handle = ClientHandle::spawn(spec, self.shared.clone());
        match role {
            Role::Speaker => self.speakers.push(handle),
            Role::Listener => self.listeners.push(handle),
        }
        Ok(())
    }

    /// Tell speaker `index` what to do.
    pub fn speaker(&self, index: usize, command: Command) {
        if let Some(s) = self.speakers.get(index) {
            s.command(command);
        }
    }

    /// The oldest listener leaves; what it measured is kept.
    pub async fn leave_oldest(&mut self) {
        if self.listeners.is_empty() {
            return;
        }
        let handle = self.listeners.remove(0);
        self.let_go(vec![handle]).await;
    }

    /// `leaving` leave together; what they measured is kept.
    async fn let_go(&mut self, leaving: Vec<ClientHandle>) {
        for handle in &leaving {
            handle.command(Command::Leave);
        }
        for handle in leaving {
            let totals = client::lock(&handle.reception).totals();
            let outcome = handle.finish().await;
            self.gone.push((totals, outcome));
        }
    }

    /// The oldest `count` listeners who opened `/rtc` at `server` leave (together); what they
    /// measured is kept. Returns how many left.
    pub async fn leave_on(&mut self, server: SocketAddr, count: usize) -> usize {
        let mut leaving = Vec::new();
        let mut i = 0;
        while i < self.listeners.len() && leaving.len() < count {
            if client::lock(&self.listeners[i].reception).server() == Some(server) {
                leaving.push(self.listeners.remove(i));
            } else {
                i += 1;
            }
        }
        let left = leaving.len();
        self.let_go(leaving).await;
        left
    }

    /// The window of every present listener since the previous call.
    pub fn window(&self) -> Window {
        let mut w = Window::default();
        for l in &self.listeners {
            w.merge(client::lock(&l.reception).take_window());
        }
        w
    }

    /// Everyone leaves; returns every listener's totals and outcome (including earlier
    /// leavers), and the speakers' outcomes.
    pub async fn finish(mut self) -> (Vec<(Totals, Outcome)>, Vec<Outcome>) {
        for c in self.listeners.iter().chain(&self.speakers) {
            c.command(Command::Leave);
        }
        let mut listeners = std::mem::take(&mut self.gone);
        for l in std::mem::take(&mut self.listeners) {
            let totals = client::lock(&l.reception).totals();
            listeners.push((totals, l.finish().await));
        }
        let mut speakers = Vec::new();
        for s in std::mem::take(&mut self.speakers) {
            speakers.push(s.finish().await);
        }
        (listeners, speakers)
    }
}

/// Samples the server and the crowd once per tick.
#[derive(Debug)]
pub struct Sampler {
    probe: Option<ProcProbe>,
    /// Where the server's `/metrics` are (none for Janus).
    http: Option<SocketAddr>,
    last_rtp: Option<(Instant, RtpCounters)>,
    last_rx: (Instant, u64),
    began: Instant,
    /// One entry per tick.
    pub ticks: Vec<Tick>,
    /// RSS before any client joined, KiB.
    pub baseline_rss_kib: Option<u64>,
}

impl Sampler {
    /// A sampler of `target`'s process (if its pid is known) and of `crowd`.
    pub fn new(target: &Target, crowd: &Crowd) -> Sampler {
        let now = crowd.clock().now();
        let mut probe = target.pid.map(ProcProbe::new);
        let baseline_rss_kib = probe
            .as_mut()
            .and_then(|p| p.sample(now).ok())
            .map(|s| s.rss_kib);
        let http = (target.protocol == Protocol::Livekit).then_some(target.http);
        Sampler {
            probe,
            http,
            last_rtp: None,
            last_rx: (now, 0),
            began: now,
            ticks: Vec::new(),
            baseline_rss_kib,
        }
    }

    /// Take one sample: server CPU and RSS, server RTP rates, and the crowd's window.
    pub async fn tick(&mut self, crowd: &Crowd) -> Tick {
        let now = crowd.clock().now();
        let server: Option<ProcSample> = self.probe.as_mut().and_then(|p| p.sample(now).ok());
        let rtp = match self.http {
            Some(http) => tokio::task::spawn_blocking(move || scrape_rtp(http))
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let (mut server_in_pps, mut server_out_pps) = (None, None);
        let (mut server_in_kbps, mut server_out_kbps) = (None, None);
        if let (Some(r), Some((then, before))) = (rtp, self.last_rtp) {
            let dt = now.saturating_duration_since(then).as_secs_f64().max(1e-3);
            let kbps = |a: Option<f64>, b: Option<f64>| Some((a? - b?) * 8.0 / 1e3 / dt);
            server_in_pps = Some((r.received - before.received) / dt);
            server_out_pps = Some((r.forwarded - before.forwarded) / dt);
            server_in_kbps = kbps(r.bytes_in, before.bytes_in);
            server_out_kbps = kbps(r.bytes_out, before.bytes_out);
        }
        if let Some(r) = rtp {
            self.last_rtp = Some((now, r));
        }
        let rx = crowd.counters().rtp_received.load(Ordering::Relaxed);
        let dt = now
            .saturating_duration_since(self.last_rx.0)
            .as_secs_f64()
            .max(1e-3);
        let rx_pps = (rx - self.last_rx.1) as f64 / dt;
        self.last_rx = (now, rx);
        let mut w = crowd.window();
        w.latency_us.sort_unstable();
        let tick = Tick {
            t_s: now.saturating_duration_since(self.began).as_secs_f64(),
            listeners: crowd.listeners(),
            heard: crowd.counters().heard.load(Ordering::Relaxed),
            failed: crowd.counters().failed.load(Ordering::Relaxed),
            rx_pps,
            loss: w.loss(),
            latency_p99_ms: percentile(&w.latency_us, 0.99).map(|us| f64::from(us) / 1e3),
            server_cpu_cores: server.map(|s| s.cpu_cores),
            server_rss_kib: server.map(|s| s.rss_kib),
            server_in_pps,
            server_out_pps,
            server_in_kbps,
            server_out_kbps,
        };
        self.ticks.push(tick.clone());
        tick
    }
}

/// Durations in reports are seconds.
pub(crate) fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The `q` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[u32], q: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(i.min(sorted.len() - 1)).copied()
}

/// Where progress lines go.
pub trait Progress {
    /// One line per second while a run goes on.
    fn line(&mut self, tick: &Tick);
}

/// Progress that is not shown.
#[derive(Debug)]
pub struct Quiet;

impl Progress for Quiet {
    fn line(&mut self, _: &Tick) {}
}

/// Play one scenario against `target` and report.
pub async fn run(
    target: Target,
    params: &Params,
    progress: &mut dyn Progress,
) -> Result<Report, ScenarioError> {
    params.validate()?;
    let clock = Clock::start();
    let began = clock.now();
    let deadline = began + params.bound();
    let mut crowd = Crowd::open(target.clone(), deadline, params.decoders, params.depth).await?;
    let mut sampler = Sampler::new(&target, &crowd);
    let second = Duration::from_secs(1);
    let mut next_tick = began + second;

    // Speakers first, so listeners join a room that already plays.
    for _ in 0..params.speakers {
        crowd.join(Role::Speaker)?;
    }
    let speaking = if params.kind == Kind::Rotation {
        1
    } else {
        params.speakers
    };
    for i in 0..speaking {
        crowd.speaker(i, Command::Speak);
    }
    let audio_deadline = clock.now() + Duration::from_secs(10);
    while crowd.counters().rtp_sent.load(Ordering::Relaxed) < speaking as u64
        && clock.now() < audio_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Listeners at the join rate.
    let gap = Duration::from_secs_f64(1.0 / params.join_rate);
    let mut next_join = clock.now();
    for _ in 0..params.listeners {
        sleep_until(next_join).await;
        crowd.join(Role::Listener)?;
        next_join += gap;
        if clock.now() >= next_tick {
            progress.line(&sampler.tick(&crowd).await);
            next_tick += second;
        }
    }
    let joined_at = clock.now();

    // Play: churn and rotation act on their own clocks; sample every second.
    let end = joined_at + params.duration;
    let churn_gap = if params.kind == Kind::Churn {
        Some(Duration::from_secs_f64(1.0 / params.churn_rate))
    } else {
        None
    };
    let mut next_churn = churn_gap.map(|g| joined_at + g);
    let mut next_rotation = (params.kind == Kind::Rotation && params.speakers > 1)
        .then(|| joined_at + params.rotate_every);
    let mut floor = 0usize;
    let mut rotations = 0u64;
    let mut churned = 0u64;
    loop {
        let now = clock.now();
        if now >= end {
            break;
        }
        let mut wake = end.min(next_tick);
        if let Some(t) = next_churn {
            wake = wake.min(t);
        }
        if let Some(t) = next_rotation {
            wake = wake.min(t);
        }
        sleep_until(wake).await;
        let now = clock.now();
        // No churn in the last seconds, so that replacements have time to hear the room.
        if let (Some(t), Some(g)) = (next_churn, churn_gap)
            && now >= t
            && now + CHURN_QUIET < end
        {
            crowd.leave_oldest().await;
            crowd.join(Role::Listener)?;
            churned += 1;
            next_churn = Some(t + g);
        }
        if let Some(t) = next_rotation
            && now >= t
        {
            crowd.speaker(floor, Command::Silence);
            floor = (floor + 1) % params.speakers;
            crowd.speaker(floor, Command::Speak);
            rotations += 1;
            next_rotation = Some(t + params.rotate_every);
        }
        if now >= next_tick {
            progress.line(&sampler.tick(&crowd).await);
            next_tick += second;
        }
    }
    let played = clock.now().saturating_duration_since(joined_at);
    let peak_rss = sampler.ticks.iter().filter_map(|t| t.server_rss_kib).max();
    let (listeners, speakers) = crowd.finish().await;
    let wall = clock.now().saturating_duration_since(began);
    Ok(Report::build(RunRecord {
        params: params.clone(),
        listeners,
        speakers,
        ticks: std::mem::take(&mut sampler.ticks),
        baseline_rss_kib: sampler.baseline_rss_kib,
        peak_rss_kib: peak_rss,
        wall,
        played,
        rotations,
        churned,
    }))
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}
