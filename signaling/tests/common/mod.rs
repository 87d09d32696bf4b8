//! Shared by the signaling integration tests: a server on 127.0.0.1 (engine + signaling +
//! `/rtc`), and a LiveKit-protocol client made of a WebSocket and two str0m peer connections
//! on real UDP sockets. Every wait is bounded.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods, deprecated)]

use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::VideoGrants;
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, MediaKind, Mid, Pt};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use stoa_sfu::str0m::{Candidate, Event as RtcEvent, Input, Output as RtcOutput, Rtc, RtcConfig};
use stoa_signaling::service::{ServiceConfig, Signaling};
use stoa_signaling::token::{self, ApiKeys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const KEY: &str = "devkey";
pub const SECRET: &str = "secret";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Server {
    pub http: SocketAddr,
    pub signaling: Signaling,
    /// Events the service gave its in-process observer, in order (names only).
    pub observed: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    /// The engine (two shards).
    pub sfu: stoa_sfu::shell::SfuHandle,
    pub _engine: SfuRuntime,
}

pub async fn server() -> Server {
    server_with(ServiceConfig::default()).await
}

/// A server with `config` (its observer replaced by one the test reads).
pub async fn server_with(config: ServiceConfig) -> Server {
    server_seeded(config, [1; 32]).await
}

/// [`server_with`], its engine seeded with `seed` (two engines in one test need two seeds,
/// or their ICE credentials would repeat each other's).
pub async fn server_seeded(config: ServiceConfig, seed: [u8; 32]) -> Server {
    server_knowing_url(|_| config, seed).await
}

/// [`server_seeded`], its config made knowing the server's own base URL
/// (`http://127.0.0.1:{port}`), as a node's relay credentials name it.
pub async fn server_knowing_url(
    make: impl FnOnce(String) -> ServiceConfig,
    seed: [u8; 32],
) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let config = make(format!("http://{http}"));
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(0),
        shards: 2,
    };
    let (engine, sfu, events) = SfuRuntime::start(&settings, seed).unwrap();
    let (observer, mut observed_rx) = tokio::sync::mpsc::channel::<lk::WebhookEvent>(1024);
    let observed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = observed.clone();
    tokio::spawn(async move {
        while let Some(e) = observed_rx.recv().await {
            let who = e.participant.map(|p| p.identity).unwrap_or_default();
            sink.lock().unwrap().push((e.event, who));
        }
    });
    let config = ServiceConfig {
        observer: Some(observer),
        ..config
    };
    let signaling = Signaling::start(config, sfu.clone(), events);
    let keys = Arc::new(ApiKeys::new([(KEY.to_owned(), SECRET.to_owned())]));
    let app = stoa_signaling::ws::router(signaling.clone(), keys);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        http,
        signaling,
        observed,
        sfu,
        _engine: engine,
    }
}

pub fn grants(room: &str, publish: bool) -> VideoGrants {
    stoa_signaling::sim::Sim::grants(room, publish)
}

pub fn mint(identity: &str, grants: VideoGrants) -> String {
    token::mint(
        KEY,
        SECRET,
        identity,
        None,
        grants,
        Duration::from_secs(600),
        now_unix(),
    )
    .unwrap()
}

/// A str0m peer connection on its own UDP socket, pumped by the client's thread.
pub struct Pc {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub addr: SocketAddr,
    pub connected: bool,
    pub heard: Vec<(u64, u32)>,
    pub send: Option<(Mid, Pt)>,
    pub sent: u32,
    pub channel_data: Vec<Vec<u8>>,
    pub channels: HashMap<String, stoa_sfu::str0m::channel::ChannelId>,
}

impl Pc {
    pub fn new() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        Pc {
            rtc,
            socket,
            addr,
            connected: false,
            heard: vec![],
            send: None,
            sent: 0,
            channel_data: vec![],
            channels: HashMap::new(),
        }
    }

    pub fn pump(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, &buf[..n]) {
                let _ = self.rtc.handle_input(Input::Receive(Instant::now(), r));
                self.drain();
            }
        }
        let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
        self.drain();
    }

    pub fn drain(&mut self) {
        while let Ok(o) = self.rtc.poll_output() {
            match o {
                RtcOutput::Timeout(_) => break,
                RtcOutput::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                RtcOutput::Event(RtcEvent::Connected) => self.connected = true,
                RtcOutput::Event(RtcEvent::RtpPacket(p)) => {
                    let b = &p.payload;
                    self.heard
                        .push((*p.seq_no, u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
                }
                RtcOutput::Event(RtcEvent::ChannelOpen(id, label)) => {
                    self.channels.insert(label, id);
                }
                RtcOutput::Event(RtcEvent::ChannelData(d)) => self.channel_data.push(d.data),
                RtcOutput::Event(_) => {}
            }
        }
    }

    pub fn send_audio(&mut self) {
        let Some((mid, pt)) = self.send else { return };
        let i = self.sent;
        let mut payload = vec![3u8; 60];
        payload[0..4].copy_from_slice(&i.to_be_bytes());
        let ext = ExtensionValues {
            audio_level: Some(-20),
            voice_activity: Some(true),
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(mid, None) {
            tx.write_rtp(
                RtpWrite::new(
                    pt,
                    SeqNo::from(u64::from(i) + 1),
                    i * 960,
                    Instant::now(),
                    payload,
                )
                .ext_vals(ext),
            );
            self.sent += 1;
        }
        self.drain();
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A LiveKit-protocol client: one WebSocket, a publisher and a subscriber connection.
pub struct Client {
    pub ws: Ws,
    pub publisher: Arc<Mutex<Pc>>,
    pub subscriber: Arc<Mutex<Pc>>,
    pub stop: Arc<AtomicBool>,
    pub join: lk::JoinResponse,
    /// Every response received, in order.
    pub log: Vec<signal_response::Message>,
    pub pending_pub: Option<SdpPendingOffer>,
    pub offer_id: u32,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub async fn connect_ws(http: SocketAddr, token: &str) -> Result<Ws, (u16, String)> {
    connect_ws_with(http, token, "").await
}

/// [`connect_ws`] with `extra` appended to the query (e.g. `&reconnect=1&sid=PA_…`).
pub async fn connect_ws_with(
    http: SocketAddr,
    token: &str,
    extra: &str,
) -> Result<Ws, (u16, String)> {
    let url = format!(
        "ws://{http}/rtc?access_token={token}&auto_subscribe=1&sdk=js&protocol=17&client_protocol=2{extra}"
    );
    match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body = r
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((r.status().as_u16(), body))
        }
        Err(e) => Err((0, e.to_string())),
    }
}

impl Client {
    pub async fn join(http: SocketAddr, token: &str) -> Client {
        let mut ws = connect_ws(http, token).await.unwrap();
        let first = tokio::time::timeout(WAIT, next_response(&mut ws))
            .await
            .unwrap()
            .unwrap();
        let signal_response::Message::Join(join) = first else {
            panic!("first message must be the join response, got {first:?}");
        };
        let publisher = Arc::new(Mutex::new(Pc::new()));
        let subscriber = Arc::new(Mutex::new(Pc::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s, st) = (publisher.clone(), subscriber.clone(), stop.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && Instant::now() < end {
                p.lock().unwrap().pump();
                s.lock().unwrap().pump();
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let mut c = Client {
            ws,
            publisher,
            subscriber,
            stop,
            join,
            log: vec![],
            pending_pub: None,
            offer_id: 0,
        };
        // Subscriber primary: the server's first offer carries the data channels.
        c.answer_next_offer().await;
        c
    }

    pub async fn send(&mut self, m: signal_request::Message) {
        let bytes = lk::SignalRequest { message: Some(m) }.encode_to_vec();
        self.ws.send(WsMessage::Binary(bytes.into())).await.unwrap();
    }

    /// Read responses until `pick` returns something; the rest goes to the log. Offers are
    /// answered on the way, as the client SDK does.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&signal_response::Message) -> Option<T>,
    ) -> T {
        if let Some(t) = self.log.iter().find_map(&mut pick) {
            return t;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(remaining, next_response(&mut self.ws))
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; log: {:#?}", self.log))
                .unwrap_or_else(|| panic!("connection closed waiting for {what}"));
            if let signal_response::Message::Offer(sd) = &m {
                self.answer(sd.clone()).await;
            }
            if let Some(t) = pick(&m) {
                self.log.push(m);
                return t;
            }
            self.log.push(m);
        }
    }

    pub async fn answer(&mut self, sd: lk::SessionDescription) {
        let offer = SdpOffer::from_sdp_string(&sd.sdp).unwrap();
        let answer = {
            let mut pc = self.subscriber.lock().unwrap();
            let a = pc.rtc.sdp_api().accept_offer(offer).unwrap();
            pc.drain();
            a
        };
        let sd = lk::SessionDescription {
            r#type: "answer".into(),
            sdp: answer.to_sdp_string(),
            id: sd.id,
            ..Default::default()
        };
        self.send(signal_request::Message::Answer(sd)).await;
    }

    pub async fn answer_next_offer(&mut self) {
        self.wait_for("subscriber offer", |m| {
            matches!(m, signal_response::Message::Offer(_)).then_some(())
        })
        .await;
    }

    /// AddTrack, then the publisher offer; returns the track sid.
    pub async fn publish(&mut self) -> String {
        let cid = "mic-cid-1".to_owned();
        self.send(signal_request::Message::AddTrack(lk::AddTrackRequest {
            cid: cid.clone(),
            name: "microphone".into(),
            r#type: lk::TrackType::Audio as i32,
            source: lk::TrackSource::Microphone as i32,
            ..Default::default()
        }))
        .await;
        let track = self
            .wait_for("track published", |m| match m {
                signal_response::Message::TrackPublished(t) => t.track.clone(),
                _ => None,
            })
            .await;
        assert!(track.sid.starts_with("TR_"), "{}", track.sid);
        self.offer_publisher(&cid).await;
        let answer = self.wait_for_answer().await;
        let mut pc = self.publisher.lock().unwrap();
        let pending = self.pending_pub.take().unwrap();
        pc.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let pt = pc
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        let mid = pc.send.map(|s| s.0).unwrap();
        pc.send = Some((mid, pt));
        pc.drain();
        track.sid
    }

    pub async fn offer_publisher(&mut self, cid: &str) {
        let offer = {
            let mut pc = self.publisher.lock().unwrap();
            let mut api = pc.rtc.sdp_api();
            let mid = api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("stream".into()),
                Some(cid.into()),
                None,
            );
            api.add_channel("_reliable".into());
            let (offer, pending) = api.apply().unwrap();
            pc.send = Some((mid, Pt::from(111)));
            self.pending_pub = Some(pending);
            offer
        };
        self.offer_id += 1;
        let sd = lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: self.offer_id,
            ..Default::default()
        };
        self.send(signal_request::Message::Offer(sd)).await;
    }

    pub async fn wait_for_answer(&mut self) -> SdpAnswer {
        let id = self.offer_id;
        let sd = self
            .wait_for("publisher answer", |m| match m {
                signal_response::Message::Answer(sd) => Some(sd.clone()),
                _ => None,
            })
            .await;
        assert_eq!(sd.id, id, "the answer must echo the offer id");
        SdpAnswer::from_sdp_string(&sd.sdp).unwrap()
    }

    pub fn heard(&self) -> Vec<(u64, u32)> {
        self.subscriber.lock().unwrap().heard.clone()
    }

    pub fn sid(&self) -> String {
        self.join.participant.as_ref().unwrap().sid.clone()
    }

    /// Whether any update so far mentions participant `sid`.
    pub fn saw_participant(&self, sid: &str) -> bool {
        self.log.iter().any(|m| match m {
            signal_response::Message::Update(u) => u.participants.iter().any(|p| p.sid == sid),
            _ => false,
        })
    }

    /// Read whatever arrives for `d` (answering offers).
    pub async fn drain_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let remaining = end.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, next_response(&mut self.ws)).await {
                Ok(Some(m)) => {
                    if let signal_response::Message::Offer(sd) = &m {
                        self.answer(sd.clone()).await;
                    }
                    self.log.push(m);
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

pub async fn next_response(ws: &mut Ws) -> Option<signal_response::Message> {
    loop {
        match ws.next().await? {
            Ok(WsMessage::Binary(b)) => {
                return lk::SignalResponse::decode(b.as_ref()).ok()?.message;
            }
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Wait until `cond` holds, polling (bounded).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn send_audio(c: &Client, n: u32) {
    for _ in 0..n {
        c.publisher.lock().unwrap().send_audio();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A webhook receiver on 127.0.0.1: every request's `Authorization` and body, answered 200.
pub async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
                    let header = |name: &str| {
                        head.lines().find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                        })
                    };
                    let len: usize = header("content-length").unwrap().parse().unwrap();
                    if raw.len() < split + 4 + len {
                        continue;
                    }
                    assert_eq!(
                        header("content-type").as_deref(),
                        Some("application/webhook+json")
                    );
                    let body = String::from_utf8(raw[split + 4..split + 4 + len].to_vec()).unwrap();
                    let _ = tx.send((header("authorization").unwrap(), body));
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (format!("http://{addr}/webhook"), rx)
}
