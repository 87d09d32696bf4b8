//! One participant speaking the client side of the LiveKit protocol, as livekit-client does with
//! two peer connections and the subscriber primary: a WebSocket to `/rtc`, a subscriber
//! connection answering the server's offers, and for speakers a publisher connection
//! (`AddTrackRequest`, then its own offer) sending real Opus every 20 ms.
//!
//! Each client is one tokio task that owns its sockets and `Rtc`s; the scenario talks to it with
//! [`Command`]s and reads its [`Reception`]. Every wait is bounded, and the task ends by itself
//! at its deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::audio::{AudioCheck, FRAME_SAMPLES, Stamp, ToneLoop};
use crate::clock::Clock;
use crate::peer::{MAX_DATAGRAM, Peer};
use crate::reception::{Reception, RtpSeen, Step};

/// Longest wait for the WebSocket upgrade and for the join response (livekit-client waits 15 s
/// and 5 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Frame interval of the published audio.
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Audio level sent in the RFC 6464 extension, in -dBov.
const AUDIO_LEVEL: i8 = -20;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a client stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The WebSocket could not be opened.
    #[error("connect: {0}")]
    Connect(String),
    /// The server refused the upgrade.
    #[error("refused with HTTP {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The server closed the WebSocket.
    #[error("the server closed the connection")]
    Closed,
    /// The server sent something this client cannot use.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A local socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// A token could not be minted.
    #[error("token: {0}")]
    Token(String),
    /// The control plane refused or failed a call of the product path.
    #[error("api: {0}")]
    Api(String),
}

/// Whether a client publishes audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    /// Publishes a microphone track when told to speak, and subscribes.
    Speaker,
    /// Only subscribes.
    Listener,
}

/// How deeply a client reads received audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Depth {
    /// Count packets from their clear RTP headers (sequence number, timestamp, arrival) and
    /// hand str0m only the packets needed to calibrate latency (about one in 50) plus
    /// STUN, DTLS and RTCP: a cheap listener, so one core sinks many.
    Header,
    /// Let str0m decrypt and parse every packet.
    Decrypt,
    /// Decrypt every packet and decode it with libopus, to check the audio itself.
    Decode,
}

/// Which API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// LiveKit signaling on `/rtc` (Stoa, or any LiveKit-compatible server).
    Livekit,
    /// Janus's videoroom plugin over its WebSocket API, through [`crate::janus`]'s adapter.
    Janus,
}

/// What the scenario tells a running client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Publish (the first time) or unmute, and send audio.
    Speak,
    /// Mute and stop sending.
    Silence,
    /// Send a leave request and close.
    Leave,
}

/// Counters over all clients of a run, for the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Clients whose join response arrived.
    pub joined: AtomicU64,
    /// Clients that received audio.
    pub heard: AtomicU64,
    /// Clients that stopped with an error.
    pub failed: AtomicU64,
    /// RTP packets sent by speakers.
    pub rtp_sent: AtomicU64,
    /// RTP packets received by listeners.
    pub rtp_received: AtomicU64,
    /// RTP payload bytes received by listeners.
    pub bytes_received: AtomicU64,
}

/// What every client of a run shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The run's clock.
    pub clock: Clock,
    /// The audio speakers send.
    pub tone: Arc<ToneLoop>,
    /// Run-wide counters.
    pub counters: Arc<Counters>,
    /// The DTLS certificate of every client's peer connections.
    pub dtls_cert: Arc<DtlsCert>,
    /// The thread that reads header-only listeners' sockets, when the run has one.
    pub sink: Option<Arc<crate::sink::Sink>>,
}

/// A DTLS certificate for [`Shared::dtls_cert`], from str0m's crypto provider.
pub fn dtls_cert() -> Result<DtlsCert, ClientError> {
    str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| ClientError::Protocol("no DTLS certificate from the crypto provider".into()))
}

/// Where and who a client is.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// HTTP address of the server (`/rtc` is appended), or Janus's WebSocket address.
    pub http: SocketAddr,
    /// The server's API.
    pub protocol: Protocol,
    /// Who this client is.
    pub identity: String,
    /// The loopback address its peer connections use.
    pub local_ip: std::net::Ipv4Addr,
    /// Access token (direct path; unused when `product` is set).
    pub token: String,
    /// Join through the control plane instead: a user token, `POST /api/rooms/{id}/token`,
    /// then `/rtc` with the media token and URL it returns.
    pub product: Option<crate::product::ProductJoin>,
    /// Speaker or listener.
    pub role: Role,
    /// How deeply this client reads what arrives.
    pub depth: Depth,
    /// The client leaves by itself at this instant.
    pub deadline: Instant,
}

/// A token for `identity` in `room`, signed with the server's API key.
pub fn mint(
    key: &str,
    secret: &str,
    room: &str,
    identity: &str,
    role: Role,
) -> Result<String, ClientError> {
    let grants = VideoGrants {
        room_join: true,
        room: room.to_owned(),
        can_publish: Some(role == Role::Speaker),
        can_subscribe: Some(true),
        can_publish_data: Some(false),
        ..Default::default()
    };
    AccessToken::with_api_key(key, secret)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(Duration::from_secs(3600))
        .to_jwt()
        .map_err(|e| ClientError::Token(e.to_string()))
}

/// How a client's task ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The error that stopped it, if any.
    pub error: Option<String>,
    /// RTP packets this client sent.
    pub sent: u64,
    /// Decoded frames, refused frames and RMS level, for clients that decode.
    pub audio: Option<(u64, u64, f64)>,
    /// Datagrams its sockets would not take.
    pub send_drops: u64,
}

/// A running client.
#[derive(Debug)]
pub struct ClientHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// What this client measured.
    pub reception: Arc<Mutex<Reception>>,
    /// Speaker or listener.
    pub role: Role,
    task: JoinHandle<Outcome>,
}

impl ClientHandle {
    /// Start a client on the current tokio runtime.
    pub fn spawn(spec: ClientSpec, shared: Shared) -> ClientHandle {
        let began = shared.clock.now();
        let reception = Arc::new(Mutex::new(Reception::new(shared.clock, began)));
        let (tx, rx) = mpsc::unbounded_channel();
        let role = spec.role;
        let task = tokio::spawn(run(spec, shared, reception.clone(), rx));
        ClientHandle {
            commands: tx,
            reception,
            role,
            task,
        }
    }

    /// Send a command; a client that already ended ignores it.
    pub fn command(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Whether the task ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Wait for the task (after [`Command::Leave`] or its deadline).
    pub async fn finish(self) -> Outcome {
        self.task.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("client task failed: {e}")),
            ..Outcome::default()
        })
    }
}

/// Where publishing stands.
#[derive(Debug)]
enum Publishing {
    /// Nothing published yet.
    Idle,
    /// AddTrack sent, waiting for TrackPublished.
    AwaitTrack { cid: String },
    /// Offer sent, waiting for the answer with this id.
    AwaitAnswer {
        sid: String,
        id: u32,
        mid: Mid,
        pending: SdpPendingOffer,
    },
    /// Negotiated: audio goes out on `mid` with payload type `pt`.
    Ready { sid: String, mid: Mid, pt: Pt },
}

/// Where a client's signal requests go.
#[derive(Debug)]
enum Outbound {
    /// Straight onto the LiveKit WebSocket.
    Livekit(SplitSink<Ws, WsMessage>),
    /// To the Janus adapter, which translates them.
    Janus(mpsc::Sender<signal_request::Message>),
}

struct Session {
    shared: Shared,
    /// Requests go out here.
    sink: Outbound,
    /// Responses arrive here from the reader task, which alone polls the WebSocket: polling
    /// it from the media loop would cost a read attempt (and tungstenite's buffer reset) per
    /// datagram.
    signals: mpsc::Receiver<Result<signal_response::Message, ClientError>>,
    _reader: AbortOnDrop,
    subscriber: Peer,
    publisher: Option<Peer>,
    publishing: Publishing,
    speaking: bool,
    /// Whether the scenario wants this client to speak (it may still be negotiating).
    floor: bool,
    /// Packets sent.
    frame: u64,
    /// When the first frame was sent, and the 20 ms frame slot of the last one: RTP
    /// timestamps follow this clock as a microphone's do, also across silences.
    audio_clock: Option<(Instant, u64)>,
    offer_id: u32,
    reception: Arc<Mutex<Reception>>,
    check: Option<AudioCheck>,
    depth: Depth,
    /// Counted as heard (shared with the sink, so that it is counted once).
    heard: Arc<std::sync::atomic::AtomicBool>,
    /// Datagrams the sink passed back, once it reads this listener's socket.
    passed: Option<mpsc::UnboundedReceiver<crate::sink::Passed>>,
    local_ip: std::net::Ipv4Addr,
}

async fn run(
    spec: ClientSpec,
    shared: Shared,
    reception: Arc<Mutex<Reception>>,
    commands: mpsc::UnboundedReceiver<Command>,
) -> Outcome {
    let counters = shared.counters.clone();
    let deadline = tokio::time::Instant::from_std(spec.deadline);
    let result = match tokio::time::timeout_at(deadline, connect(&spec, &shared, reception)).await {
        Ok(Ok(mut session)) => {
            counters.joined.fetch_add(1, Ordering::Relaxed);
            let r = session.drive(deadline, commands).await;
            let outcome = session.outcome();
            session.leave().await;
            r.map(|()| outcome)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Timeout("join before the deadline")),
    };
    match result {
        Ok(o) => o,
        Err(e) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "client failed");
            Outcome {
                error: Some(e.to_string()),
                ..Outcome::default()
            }
        }
    }
}

/// Open the WebSocket and read the join response.
async fn connect(
    spec: &ClientSpec,
    shared: &Shared,
    reception: Arc<Mutex<Reception>>,
) -> Result<Session, ClientError> {
    let subscriber = Peer::bind(shared.clock.now(), &shared.dtls_cert, spec.local_ip)?;
    let check = if spec.depth == Depth::Decode {
        AudioCheck::new().ok()
    } else {
        None
    };
    let (sink, signals, reader) = match spec.protocol {
        Protocol::Livekit => match &spec.product {
            None => {
                lock(&reception).set_server(spec.http);
                livekit(spec.http, &spec.token, &reception).await?
            }
            Some(join) => {
                let grant = crate::product::join(join, &spec.identity)
                    .await
                    .map_err(|e| ClientError::Api(e.to_string()))?;
                {
                    let mut r = lock(&reception);
                    r.mark(Step::Granted);
                    r.set_server(grant.rtc);
                }
                livekit(grant.rtc, &grant.token, &reception).await?
            }
        },
        Protocol::Janus => {
            let link = crate::janus::connect(spec.http, spec.role, &spec.identity).await?;
            (
                Outbound::Janus(link.requests),
                link.responses,
                AbortOnDrop(link.task),
            )
        }
    };
    Ok(Session {
        shared: shared.clone(),
        sink,
        signals,
        _reader: reader,
        subscriber,
        publisher: None,
        publishing: Publishing::Idle,
        speaking: false,
        floor: false,
        frame: 0,
        audio_clock: None,
        offer_id: 0,
        reception,
        check,
        depth: spec.depth,
        heard: Arc::default(),
        passed: None,
        local_ip: spec.local_ip,
    })
}

/// Signal responses, as a client's task reads them.
pub(crate) type Signals = mpsc::Receiver<Result<signal_response::Message, ClientError>>;

/// Open the LiveKit WebSocket, read the join response, and start the task that reads the rest.
async fn livekit(
    http: SocketAddr,
    token: &str,
    reception: &Mutex<Reception>,
) -> Result<(Outbound, Signals, AbortOnDrop), ClientError> {
    let url = format!(
        "ws://{http}/rtc?access_token={token}&auto_subscribe=1&sdk=rust&protocol=17&client_protocol=2"
    );
    let (mut ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| ClientError::Timeout("the WebSocket upgrade"))?
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => ClientError::Refused {
                status: r.status().as_u16(),
                body: r
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            },
            other => ClientError::Connect(other.to_string()),
        })?;
    lock(reception).mark(Step::Upgraded);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, next_response(&mut ws))
        .await
        .map_err(|_| ClientError::Timeout("the join response"))??;
    let signal_response::Message::Join(_) = first else {
        return Err(ClientError::Protocol(
            "the first message was not the join response".into(),
        ));
    };
    lock(reception).mark(Step::Joined);
    let (sink, mut stream) = ws.split();
    let (tx, signals) = mpsc::channel(64);
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let m = next_response(&mut stream).await;
            let end = m.is_err();
            if tx.send(m).await.is_err() || end {
                return;
            }
        }
    }));
    Ok((Outbound::Livekit(sink), signals, reader))
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next signal response; binary protobuf frames only, others skipped.
async fn next_response(
    ws: &mut (
             impl futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
             + Unpin
         ),
) -> Result<signal_response::Message, ClientError> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => {
                let r = lk::SignalResponse::decode(b.as_ref())
                    .map_err(|e| ClientError::Protocol(format!("undecodable response: {e}")))?;
                if let Some(m) = r.message {
                    return Ok(m);
                }
            }
            Some(Ok(WsMessage::Close(_))) | None => return Err(ClientError::Closed),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(ClientError::Connect(e.to_string())),
        }
    }
}

impl Session {
    /// Serve signaling, both peers, audio ticks and commands until told to leave or the
    /// deadline.
    async fn drive(
        &mut self,
        deadline: tokio::time::Instant,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), ClientError> {
        let mut audio = tokio::time::interval(FRAME_INTERVAL);
        audio.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sub_buf = vec![0u8; MAX_DATAGRAM];
        let mut pub_buf = vec![0u8; MAX_DATAGRAM];
        // One timer, moved only when the next wake-up changes (not re-armed per datagram).
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            let next = self
                .publisher
                .as_ref()
                .map_or(self.subscriber.next_timeout, |p| {
                    p.next_timeout.min(self.subscriber.next_timeout)
                });
            let wake = tokio::time::Instant::from_std(next).min(deadline);
            if sleep.deadline() != wake {
                sleep.as_mut().reset(wake);
            }
            // Biased, datagrams first: nearly every wake-up is one, and polling the channels
            // and timers before finding it cost the harness more than the datagram itself.
            // None starves: a listener gets one datagram per speaker every 20 ms.
            tokio::select! {
                biased;
                r = recv_reader(self.subscriber.reader.as_ref(), &mut sub_buf) => {
                    let (n, from) = r?;
                    self.subscriber_datagram(from, n, &mut sub_buf, false);
                }
                Some((data, from)) = recv_passed(&mut self.passed) => {
                    let n = data.len().min(sub_buf.len());
                    sub_buf[..n].copy_from_slice(&data[..n]);
                    self.subscriber_datagram(from, n, &mut sub_buf, true);
                }
                m = self.signals.recv() => {
                    let m = m.unwrap_or(Err(ClientError::Closed))?;
                    if !self.signal(m).await? {
                        return Ok(());
                    }
                }
                r = recv_reader(self.publisher.as_ref().and_then(|p| p.reader.as_ref()), &mut pub_buf) => {
                    let (n, from) = r?;
                    let now = self.shared.clock.now();
                    if let Some(p) = self.publisher.as_mut() {
                        p.receive(now, from, &pub_buf[..n], &mut |_| {});
                    }
                }
                () = &mut sleep => {
                    if tokio::time::Instant::now() >= deadline {
                        return Ok(());
                    }
                    self.timeouts();
                }
                _ = audio.tick(), if self.speaking => self.send_frame(),
                _ = ping.tick() => {
                    let ping = lk::Ping { timestamp: self.shared.clock.elapsed().as_millis() as i64, rtt: 0 };
                    self.send(signal_request::Message::PingReq(ping)).await?;
                }
                c = commands.recv() => match c {
                    Some(Command::Speak) => self.speak().await?,
                    Some(Command::Silence) => self.silence().await?,
                    Some(Command::Leave) | None => return Ok(()),
                },
            }
        }
    }

    /// One datagram for the subscriber connection: read from its socket, or `passed` on by
    /// the sink (which already read what it could from the header).
    fn subscriber_datagram(&mut self, from: SocketAddr, n: usize, buf: &mut [u8], passed: bool) {
        let now = self.shared.clock.now();
        let header_only = self.depth == Depth::Header && self.subscriber.connected;
        let header_path = header_only && !passed;
        let reception = &self.reception;
        let check = &mut self.check;
        let counters = &self.shared.counters;
        let mut heard = false;
        let mut on_rtp = |p: RtpPacket| {
            let seen = RtpSeen {
                ssrc: *p.header.ssrc,
                seq: p.header.sequence_number,
                timestamp: p.header.timestamp,
                len: p.payload.len(),
            };
            lock(reception).record(seen, p.timestamp, Some(&p.payload));
            counters.rtp_received.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_received
                .fetch_add(p.payload.len() as u64, Ordering::Relaxed);
            heard = true;
            if let Some(c) = check.as_mut() {
                c.decode(&p.payload);
            }
        };
        // Header-only listeners count most RTP from the clear header and skip str0m for it.
        let header_read = |data: &[u8]| -> bool {
            header_path && read_header(reception, counters, data, now).is_some()
        };
        let mut connected = false;
        if !header_read(&buf[..n]) {
            connected |= self
                .subscriber
                .receive(now, from, &buf[..n], &mut on_rtp)
                .connected;
        }
        // Drain whatever else is queued on the socket before going back to select.
        if !passed {
            while let Some(Ok((n, from))) = self
                .subscriber
                .reader
                .as_ref()
                .map(|r| r.try_recv_from(buf))
            {
                if !header_read(&buf[..n]) {
                    connected |= self
                        .subscriber
                        .receive(now, from, &buf[..n], &mut on_rtp)
                        .connected;
                }
            }
        }
        if connected {
            lock(reception).mark(Step::Connected);
        }
        if (heard || header_only) && !self.heard.load(Ordering::Relaxed) && lock(reception).heard()
        {
            mark_heard(&self.heard, counters);
        }
        if header_only && self.passed.is_none() {
            self.hand_over();
        }
    }

    /// Let the run's sink read this header-only listener's socket from now on.
    fn hand_over(&mut self) {
        let Some(sink) = self.shared.sink.clone() else {
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        if sink.adopt(
            self.subscriber.socket.clone(),
            self.reception.clone(),
            self.heard.clone(),
            tx,
        ) {
            // Dropping the reader deregisters its descriptor from tokio; the sink reads the
            // socket itself.
            self.subscriber.reader = None;
            self.passed = Some(rx);
        }
    }

    fn timeouts(&mut self) {
        let now = self.shared.clock.now();
        let reception = &self.reception;
        let drained = self.subscriber.timeout(now, &mut |p: RtpPacket| {
            let seen = RtpSeen {
                ssrc: *p.header.ssrc,
                seq: p.header.sequence_number,
                timestamp: p.header.timestamp,
                len: p.payload.len(),
            };
            lock(reception).record(seen, p.timestamp, Some(&p.payload));
        });
        if drained.connected {
            lock(reception).mark(Step::Connected);
        }
        if let Some(p) = self.publisher.as_mut() {
            p.timeout(now, &mut |_| {});
        }
    }

    /// Handle one signal response; `false` when the server asked the client to leave.
    async fn signal(&mut self, m: signal_response::Message) -> Result<bool, ClientError> {
        match m {
            signal_response::Message::Offer(sd) => self.answer(sd).await?,
            signal_response::Message::Answer(sd) => {
                let was_ready = matches!(self.publishing, Publishing::Ready { .. });
                self.accept_answer(&sd)?;
                // Told to be silent while the track was being negotiated: mute it now.
                if let (false, false, Publishing::Ready { sid, .. }) =
                    (was_ready, self.floor, &self.publishing)
                {
                    let sid = sid.clone();
                    self.mute(sid, true).await?;
                }
            }
            signal_response::Message::TrackPublished(t) => self.offer_publisher(t).await?,
            signal_response::Message::Leave(_) => return Ok(false),
            _ => {}
        }
        Ok(true)
    }

    /// Answer a subscriber offer with the same id.
    async fn answer(&mut self, sd: lk::SessionDescription) -> Result<(), ClientError> {
        lock(&self.reception).mark(Step::Offered);
        let offer = SdpOffer::from_sdp_string(&sd.sdp)
            .map_err(|e| ClientError::Protocol(format!("bad offer: {e}")))?;
        let answer = self
            .subscriber
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| ClientError::Protocol(format!("offer not accepted: {e}")))?;
        self.subscriber.drain(&mut |_| {});
        let reply = lk::SessionDescription {
            r#type: "answer".into(),
            sdp: answer.to_sdp_string(),
            id: sd.id,
            ..Default::default()
        };
        self.send(signal_request::Message::Answer(reply)).await?;
        lock(&self.reception).mark(Step::Answered);
        Ok(())
    }

    async fn speak(&mut self) -> Result<(), ClientError> {
        self.floor = true;
        match &self.publishing {
            Publishing::Idle => {
                let cid = format!("mic-{}", self.shared.clock.elapsed().as_nanos());
                self.send(signal_request::Message::AddTrack(lk::AddTrackRequest {
                    cid: cid.clone(),
                    name: "microphone".into(),
                    r#type: lk::TrackType::Audio as i32,
                    source: lk::TrackSource::Microphone as i32,
                    ..Default::default()
                }))
                .await?;
                self.publishing = Publishing::AwaitTrack { cid };
                self.publisher = Some(Peer::bind(
                    self.shared.clock.now(),
                    &self.shared.dtls_cert,
                    self.local_ip,
                )?);
            }
            Publishing::Ready { sid, .. } => {
                let sid = sid.clone();
                self.mute(sid, false).await?;
                self.speaking = true;
            }
            Publishing::AwaitTrack { .. } | Publishing::AwaitAnswer { .. } => {}
        }
        Ok(())
    }

    async fn silence(&mut self) -> Result<(), ClientError> {
        self.floor = false;
        self.speaking = false;
        if let Publishing::Ready { sid, .. } = &self.publishing {
            let sid = sid.clone();
            self.mute(sid, true).await?;
        }
        Ok(())
    }

    async fn mute(&mut self, sid: String, muted: bool) -> Result<(), ClientError> {
        self.send(signal_request::Message::Mute(lk::MuteTrackRequest {
            sid,
            muted,
        }))
        .await
    }

    /// The track was accepted: offer it on the publisher connection.
    async fn offer_publisher(
        &mut self,
        published: lk::TrackPublishedResponse,
    ) -> Result<(), ClientError> {
        let Publishing::AwaitTrack { cid } = &self.publishing else {
            return Ok(());
        };
        if published.cid != *cid {
            return Ok(());
        }
        let cid = cid.clone();
        let sid = published
            .track
            .map(|t| t.sid)
            .ok_or_else(|| ClientError::Protocol("TrackPublished without a track".into()))?;
        let Some(peer) = self.publisher.as_mut() else {
            return Ok(());
        };
        let mut api = peer.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("stream".into()),
            Some(cid),
            None,
        );
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| ClientError::Protocol("nothing to offer".into()))?;
        peer.drain(&mut |_| {});
        self.offer_id += 1;
        let id = self.offer_id;
        self.publishing = Publishing::AwaitAnswer {
            sid,
            id,
            mid,
            pending,
        };
        let sd = lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id,
            ..Default::default()
        };
        self.send(signal_request::Message::Offer(sd)).await
    }

    fn accept_answer(&mut self, sd: &lk::SessionDescription) -> Result<(), ClientError> {
        let Publishing::AwaitAnswer { id, .. } = &self.publishing else {
            return Ok(());
        };
        if sd.id != *id {
            return Err(ClientError::Protocol(format!(
                "answer id {} for offer {id}",
                sd.id
            )));
        }
        let Publishing::AwaitAnswer {
            sid, mid, pending, ..
        } = std::mem::replace(&mut self.publishing, Publishing::Idle)
        else {
            return Ok(());
        };
        let answer = SdpAnswer::from_sdp_string(&sd.sdp)
            .map_err(|e| ClientError::Protocol(format!("bad answer: {e}")))?;
        let Some(peer) = self.publisher.as_mut() else {
            return Ok(());
        };
        peer.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| ClientError::Protocol(format!("answer not accepted: {e}")))?;
        let pt = peer
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
            .ok_or_else(|| ClientError::Protocol("no Opus in the answer".into()))?;
        peer.drain(&mut |_| {});
        self.publishing = Publishing::Ready { sid, mid, pt };
        self.speaking = self.floor;
        Ok(())
    }

    /// Send the next 20 ms frame, stamped with its send time.
    fn send_frame(&mut self) {
        let Publishing::Ready { mid, pt, .. } = &self.publishing else {
            return;
        };
        let (mid, pt) = (*mid, *pt);
        let Some(peer) = self.publisher.as_mut() else {
            return;
        };
        if !peer.connected {
            return;
        }
        let now = self.shared.clock.now();
        let slot = match self.audio_clock {
            None => 0,
            Some((t0, last)) => {
                let elapsed = now.saturating_duration_since(t0).as_micros();
                let slot = u64::try_from(elapsed / FRAME_INTERVAL.as_micros()).unwrap_or(u64::MAX);
                slot.max(last + 1)
            }
        };
        let t0 = self.audio_clock.map_or(now, |(t0, _)| t0);
        self.audio_clock = Some((t0, slot));
        let stamp = Stamp {
            seq: self.frame as u32,
            sent_ns: self.shared.clock.stamp(now),
        };
        let payload = stamp.apply(self.shared.tone.frame(slot));
        let ext = ExtensionValues {
            audio_level: Some(AUDIO_LEVEL),
            voice_activity: Some(true),
            ..Default::default()
        };
        let mut api = peer.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(
                pt,
                SeqNo::from(self.frame + 1),
                (slot * FRAME_SAMPLES as u64) as u32,
                now,
                payload,
            )
            .ext_vals(ext),
        );
        self.frame += 1;
        self.shared
            .counters
            .rtp_sent
            .fetch_add(1, Ordering::Relaxed);
        peer.drain(&mut |_| {});
    }

    async fn send(&mut self, m: signal_request::Message) -> Result<(), ClientError> {
        match &mut self.sink {
            Outbound::Livekit(sink) => {
                let bytes = lk::SignalRequest { message: Some(m) }.encode_to_vec();
                sink.send(WsMessage::Binary(bytes.into()))
                    .await
                    .map_err(|e| ClientError::Connect(e.to_string()))
            }
            Outbound::Janus(requests) => requests.send(m).await.map_err(|_| ClientError::Closed),
        }
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            error: None,
            sent: self.frame,
            audio: self.check.as_ref().map(AudioCheck::summary),
            send_drops: self.subscriber.send_drops
                + self.publisher.as_ref().map_or(0, |p| p.send_drops),
        }
    }

    /// Best effort: tell the server, then close.
    async fn leave(&mut self) {
        let leave = lk::LeaveRequest {
            reason: lk::DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.send(signal_request::Message::Leave(leave)).await;
            if let Outbound::Livekit(sink) = &mut self.sink {
                let _ = sink.close().await;
            }
        })
        .await;
    }
}

/// Receive on a peer's tokio reader, or never when there is none.
async fn recv_reader(
    reader: Option<&tokio::net::UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match reader {
        Some(r) => r.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The next datagram the sink passed back, or never when the sink does not read this
/// listener.
async fn recv_passed(
    passed: &mut Option<mpsc::UnboundedReceiver<crate::sink::Passed>>,
) -> Option<crate::sink::Passed> {
    match passed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Record `data` from its clear RTP header, unless it is not RTP or the listener wants it
/// decrypted (to calibrate latency): then `None`, and str0m must have it. Otherwise whether the
/// listener has now heard audio.
pub(crate) fn read_header(
    reception: &Mutex<Reception>,
    counters: &Counters,
    data: &[u8],
    now: Instant,
) -> Option<bool> {
    let seen = RtpSeen::parse(data)?;
    let mut r = lock(reception);
    if r.wants_payload(seen.ssrc, now) {
        return None;
    }
    r.record(seen, now, None);
    let heard = r.heard();
    drop(r);
    counters.rtp_received.fetch_add(1, Ordering::Relaxed);
    counters
        .bytes_received
        .fetch_add(seen.len as u64, Ordering::Relaxed);
    Some(heard)
}

/// Count a listener as heard, once, whichever of its task and the sink sees it first.
pub(crate) fn mark_heard(flag: &std::sync::atomic::AtomicBool, counters: &Counters) {
    // The load spares a read-modify-write per packet once counted.
    if !flag.load(Ordering::Relaxed) && !flag.swap(true, Ordering::Relaxed) {
        counters.heard.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lock a reception record even if a panicking thread poisoned it (the data is counters).
pub fn lock(reception: &Mutex<Reception>) -> std::sync::MutexGuard<'_, Reception> {
    reception.lock().unwrap_or_else(PoisonError::into_inner)
}
