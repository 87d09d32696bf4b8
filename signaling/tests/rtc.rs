//! `/rtc` over a real WebSocket on 127.0.0.1, with str0m clients on real UDP sockets speaking
//! the LiveKit protocol as livekit-client does (two peer connections, subscriber primary).
//! Every wait is bounded.
#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    clippy::too_many_lines,
    deprecated
)]

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::VideoGrants;
use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_sfu::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, MediaKind, Mid, Pt};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use stoa_sfu::str0m::{Candidate, Event as RtcEvent, Input, Output as RtcOutput, Rtc, RtcConfig};
use stoa_signaling::room::RoomLimits;
use stoa_signaling::service::{ServiceConfig, Signaling};
use stoa_signaling::token::{self, ApiKeys};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const KEY: &str = "devkey";
const SECRET: &str = "secret";
const WAIT: Duration = Duration::from_secs(10);

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

struct Server {
    http: SocketAddr,
    signaling: Signaling,
    _engine: SfuRuntime,
}

async fn server() -> Server {
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(0),
        shards: 2,
    };
    let (engine, sfu, events) = SfuRuntime::start(&settings, [1; 32]).unwrap();
    let signaling = Signaling::start(ServiceConfig::default(), sfu, events);
    let keys = Arc::new(ApiKeys::new([(KEY.to_owned(), SECRET.to_owned())]));
    let app = stoa_signaling::ws::router(signaling.clone(), keys);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        http,
        signaling,
        _engine: engine,
    }
}

fn grants(room: &str, publish: bool) -> VideoGrants {
    VideoGrants {
        room_join: true,
        room: room.into(),
        can_publish: Some(publish),
        can_subscribe: Some(true),
        can_publish_data: Some(true),
        ..Default::default()
    }
}

fn mint(identity: &str, grants: VideoGrants) -> String {
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
struct Pc {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    connected: bool,
    heard: Vec<(u64, u32)>,
    send: Option<(Mid, Pt)>,
    sent: u32,
    channel_data: Vec<Vec<u8>>,
    channels: HashMap<String, stoa_sfu::str0m::channel::ChannelId>,
}

impl Pc {
    fn new() -> Self {
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

    fn pump(&mut self) {
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

    fn drain(&mut self) {
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

    fn send_audio(&mut self) {
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

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A LiveKit-protocol client: one WebSocket, a publisher and a subscriber connection.
struct Client {
    ws: Ws,
    publisher: Arc<Mutex<Pc>>,
    subscriber: Arc<Mutex<Pc>>,
    stop: Arc<AtomicBool>,
    join: lk::JoinResponse,
    /// Every response received, in order.
    log: Vec<signal_response::Message>,
    pending_pub: Option<SdpPendingOffer>,
    offer_id: u32,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn connect_ws(http: SocketAddr, token: &str) -> Result<Ws, (u16, String)> {
    let url = format!(
        "ws://{http}/rtc?access_token={token}&auto_subscribe=1&sdk=js&protocol=17&client_protocol=2"
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
    async fn join(http: SocketAddr, token: &str) -> Client {
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

    async fn send(&mut self, m: signal_request::Message) {
        let bytes = lk::SignalRequest { message: Some(m) }.encode_to_vec();
        self.ws.send(WsMessage::Binary(bytes.into())).await.unwrap();
    }

    /// Read responses until `pick` returns something; the rest goes to the log. Offers are
    /// answered on the way, as the client SDK does.
    async fn wait_for<T>(
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

    async fn answer(&mut self, sd: lk::SessionDescription) {
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

    async fn answer_next_offer(&mut self) {
        self.wait_for("subscriber offer", |m| {
            matches!(m, signal_response::Message::Offer(_)).then_some(())
        })
        .await;
    }

    /// AddTrack, then the publisher offer; returns the track sid.
    async fn publish(&mut self) -> String {
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

    async fn offer_publisher(&mut self, cid: &str) {
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

    async fn wait_for_answer(&mut self) -> SdpAnswer {
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

    fn heard(&self) -> Vec<(u64, u32)> {
        self.subscriber.lock().unwrap().heard.clone()
    }

    fn sid(&self) -> String {
        self.join.participant.as_ref().unwrap().sid.clone()
    }

    /// Whether any update so far mentions participant `sid`.
    fn saw_participant(&self, sid: &str) -> bool {
        self.log.iter().any(|m| match m {
            signal_response::Message::Update(u) => u.participants.iter().any(|p| p.sid == sid),
            _ => false,
        })
    }

    /// Read whatever arrives for `d` (answering offers).
    async fn drain_for(&mut self, d: Duration) {
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

async fn next_response(ws: &mut Ws) -> Option<signal_response::Message> {
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
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send_audio(c: &Client, n: u32) {
    for _ in 0..n {
        c.publisher.lock().unwrap().send_audio();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_and_listeners_over_rtc() {
    let s = server().await;
    let room = "audio-room";

    // Speaker joins and publishes.
    let mut alice = Client::join(s.http, &mint("alice", grants(room, true))).await;
    let join = &alice.join;
    assert!(!join.server_info.as_ref().unwrap().version.is_empty());
    assert!(join.subscriber_primary);
    let perm = join
        .participant
        .as_ref()
        .unwrap()
        .permission
        .clone()
        .unwrap();
    assert!(perm.can_publish && perm.can_subscribe);
    assert!(
        alice
            .join
            .participant
            .as_ref()
            .unwrap()
            .sid
            .starts_with("PA_")
    );
    let track_sid = alice.publish().await;
    eventually("alice's connections", || {
        alice.publisher.lock().unwrap().connected && alice.subscriber.lock().unwrap().connected
    })
    .await;

    // A listener joins: sees alice and her track, gets an offer with LiveKit's stream id.
    let mut bob = Client::join(s.http, &mint("bob", grants(room, false))).await;
    let alice_info = bob
        .join
        .other_participants
        .iter()
        .find(|p| p.identity == "alice")
        .cloned();
    let alice_info = match alice_info {
        Some(a) if !a.tracks.is_empty() => a,
        _ => {
            bob.wait_for("alice's track", |m| match m {
                signal_response::Message::Update(u) => u
                    .participants
                    .iter()
                    .find(|p| p.identity == "alice" && !p.tracks.is_empty())
                    .cloned(),
                _ => None,
            })
            .await
        }
    };
    assert_eq!(alice_info.tracks[0].sid, track_sid);
    let offer = bob
        .wait_for("offer with alice's track", |m| match m {
            signal_response::Message::Offer(sd) if sd.sdp.contains("a=msid:") => Some(sd.clone()),
            _ => None,
        })
        .await;
    assert!(
        offer.sdp.contains(&format!(
            "a=msid:{}|{} {}",
            alice_info.sid, track_sid, track_sid
        )),
        "stream id must be PA|TR: {}",
        offer.sdp
    );
    assert_eq!(offer.mid_to_track_id.values().next(), Some(&track_sid));
    eventually("bob's subscriber connection", || {
        bob.subscriber.lock().unwrap().connected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Bob hears alice.
    send_audio(&alice, 60).await;
    eventually("bob hears alice", || bob.heard().len() >= 55).await;
    let heard = bob.heard();
    let mut seqs: Vec<u64> = heard.iter().map(|h| h.0).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), heard.len(), "no duplicates");

    // Bob may not publish: AddTrack and an offer with audio are refused.
    bob.send(signal_request::Message::AddTrack(lk::AddTrackRequest {
        cid: "evil".into(),
        r#type: lk::TrackType::Audio as i32,
        source: lk::TrackSource::Microphone as i32,
        ..Default::default()
    }))
    .await;
    let refused = bob
        .wait_for("AddTrack refusal", |m| match m {
            signal_response::Message::RequestResponse(r) => Some(r.clone()),
            signal_response::Message::TrackPublished(_) => panic!("listener got a track published"),
            _ => None,
        })
        .await;
    assert_eq!(
        refused.reason,
        lk::request_response::Reason::NotAllowed as i32
    );
    bob.offer_publisher("evil").await;
    bob.wait_for("offer refusal", |m| match m {
        signal_response::Message::RequestResponse(r) if r.message.contains("offer refused") => {
            Some(())
        }
        signal_response::Message::Answer(_) => panic!("listener's audio offer was answered"),
        _ => None,
    })
    .await;

    // A second listener is not announced to bob, but is to alice (a speaker).
    let mut carol = Client::join(s.http, &mint("carol", grants(room, false))).await;
    alice
        .wait_for("carol announced to the speaker", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .any(|p| p.identity == "carol")
                .then_some(()),
            _ => None,
        })
        .await;
    bob.drain_for(Duration::from_millis(700)).await;
    assert!(
        !bob.saw_participant(&carol.sid()),
        "listeners must not be announced to listeners"
    );
    let audience = bob
        .log
        .iter()
        .rev()
        .find_map(|m| match m {
            signal_response::Message::RoomUpdate(r) => r.room.as_ref().map(|r| r.num_participants),
            _ => None,
        })
        .unwrap();
    assert_eq!(audience, 3, "the audience size reaches everyone");

    // Alice mutes: bob sees it, and the engine stops forwarding.
    alice
        .send(signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: true,
        }))
        .await;
    bob.wait_for("mute", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.identity == "alice" && p.tracks.iter().any(|t| t.sid == track_sid && t.muted)
            })
            .then_some(()),
        _ => None,
    })
    .await;
    let before = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bob.heard().len() <= before + 1,
        "muted audio still forwarded"
    );

    // Reactions ride on data packets: stamped with the sender's identity by the server.
    let reaction = lk::DataPacket {
        kind: lk::data_packet::Kind::Reliable as i32,
        participant_identity: "someone-else".into(),
        value: Some(lk::data_packet::Value::User(lk::UserPacket {
            payload: b"clap".to_vec(),
            topic: Some("reaction".into()),
            participant_identity: "spoofed".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    eventually("bob's data channel", || {
        bob.subscriber
            .lock()
            .unwrap()
            .channels
            .contains_key("_reliable")
    })
    .await;
    {
        let mut pc = alice.publisher.lock().unwrap();
        let id = *pc
            .channels
            .get("_reliable")
            .expect("alice's publisher data channel is open");
        pc.rtc
            .channel(id)
            .unwrap()
            .write(true, &reaction.encode_to_vec())
            .unwrap();
        pc.drain();
    }
    eventually("bob receives the reaction", || {
        !bob.subscriber.lock().unwrap().channel_data.is_empty()
    })
    .await;
    let got =
        lk::DataPacket::decode(bob.subscriber.lock().unwrap().channel_data[0].as_slice()).unwrap();
    assert_eq!(got.participant_identity, "alice");
    let Some(lk::data_packet::Value::User(user)) = got.value else {
        panic!("not a user packet")
    };
    assert_eq!(user.payload, b"clap");
    assert_eq!(
        user.participant_identity, "alice",
        "identity is stamped by the server"
    );

    // The engine's speaker detector reached bob: alice spoke loudly before muting.
    let alice_sid = alice.sid();
    bob.wait_for("alice as active speaker", |m| match m {
        signal_response::Message::SpeakersChanged(c) => c
            .speakers
            .iter()
            .any(|sp| sp.sid == alice_sid && sp.active)
            .then_some(()),
        _ => None,
    })
    .await;

    // Alice unmutes; bob unsubscribes (nothing forwarded), then subscribes again.
    alice
        .send(signal_request::Message::Mute(lk::MuteTrackRequest {
            sid: track_sid.clone(),
            muted: false,
        }))
        .await;
    bob.wait_for("unmute", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.identity == "alice" && p.tracks.iter().any(|t| t.sid == track_sid && !t.muted)
            })
            .then_some(()),
        _ => None,
    })
    .await;
    let subscription = |subscribe| {
        signal_request::Message::Subscription(lk::UpdateSubscription {
            track_sids: vec![track_sid.clone()],
            subscribe,
            participant_tracks: vec![],
        })
    };
    bob.send(subscription(false)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bob.heard().len() <= before + 1,
        "unsubscribed audio still forwarded"
    );
    bob.send(subscription(true)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = bob.heard().len();
    send_audio(&alice, 30).await;
    eventually("bob hears alice again", || bob.heard().len() >= before + 25).await;

    // A host force-mutes alice: her client is told, bob sees it, the engine stops forwarding.
    let muted = s
        .signaling
        .mute_published_track(room, "alice", &track_sid, true)
        .await
        .unwrap();
    assert!(muted.muted);
    alice
        .wait_for("server mute", |m| match m {
            signal_response::Message::Mute(m) => (m.sid == track_sid && m.muted).then_some(()),
            _ => None,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = bob.heard().len();
    send_audio(&alice, 20).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        bob.heard().len() <= before + 1,
        "force-muted audio still forwarded"
    );

    // A listener invited on stage can publish at once, without reconnecting, and is heard.
    let perm = lk::ParticipantPermission {
        can_subscribe: true,
        can_publish: true,
        can_publish_data: true,
        can_publish_sources: vec![lk::TrackSource::Microphone as i32],
        ..Default::default()
    };
    s.signaling
        .update_permission(room, "carol", perm)
        .await
        .unwrap();
    carol
        .wait_for("carol's own permission update", |m| match m {
            signal_response::Message::Update(u) => u
                .participants
                .iter()
                .any(|p| {
                    p.identity == "carol" && p.permission.as_ref().is_some_and(|x| x.can_publish)
                })
                .then_some(()),
            _ => None,
        })
        .await;
    let carol_track = carol.publish().await;
    bob.wait_for("carol on stage with a track", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| p.identity == "carol" && p.tracks.iter().any(|t| t.sid == carol_track))
            .then_some(()),
        _ => None,
    })
    .await;
    eventually("carol's publisher connection", || {
        carol.publisher.lock().unwrap().connected
    })
    .await;
    bob.drain_for(Duration::from_millis(300)).await;
    let before = bob.heard().len();
    send_audio(&carol, 40).await;
    eventually("bob hears carol", || bob.heard().len() >= before + 35).await;

    // Revoking alice's publish permission unpublishes her track at once.
    let perm = lk::ParticipantPermission {
        can_subscribe: true,
        can_publish: false,
        can_publish_data: true,
        ..Default::default()
    };
    let info = s
        .signaling
        .update_permission(room, "alice", perm)
        .await
        .unwrap();
    assert!(!info.permission.unwrap().can_publish);
    alice
        .wait_for("track_unpublished", |m| match m {
            signal_response::Message::TrackUnpublished(t) => {
                (t.track_sid == track_sid).then_some(())
            }
            _ => None,
        })
        .await;

    // As a listener now, alice leaves bob's view (listeners do not see listeners)...
    let gone = |m: &signal_response::Message| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.sid == alice_sid && p.state == lk::participant_info::State::Disconnected as i32
            })
            .then_some(()),
        _ => None,
    };
    bob.wait_for("alice out of a listener's view", gone).await;
    // ...and comes back into it when she may speak again.
    let perm = lk::ParticipantPermission {
        can_subscribe: true,
        can_publish: true,
        can_publish_data: true,
        ..Default::default()
    };
    s.signaling
        .update_permission(room, "alice", perm)
        .await
        .unwrap();
    bob.log.clear();
    bob.wait_for("alice back on stage", |m| match m {
        signal_response::Message::Update(u) => u
            .participants
            .iter()
            .any(|p| {
                p.sid == alice_sid
                    && p.state != lk::participant_info::State::Disconnected as i32
                    && p.permission.as_ref().is_some_and(|x| x.can_publish)
            })
            .then_some(()),
        _ => None,
    })
    .await;

    // Alice leaves; bob sees her go.
    alice
        .send(signal_request::Message::Leave(lk::LeaveRequest::default()))
        .await;
    bob.wait_for("alice disconnected", gone).await;
    drop(carol);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_isolated() {
    let s = server().await;
    let room = "r";

    // Tokens: forged, expired, wrong room grant missing.
    let forged = token::mint(
        KEY,
        "not-the-secret",
        "x",
        None,
        grants(room, true),
        Duration::from_secs(600),
        now_unix(),
    )
    .unwrap();
    let (status, body) = connect_ws(s.http, &forged).await.err().unwrap();
    assert_eq!(status, 401, "{body}");
    let expired = token::mint(
        KEY,
        SECRET,
        "x",
        None,
        grants(room, true),
        Duration::from_secs(60),
        now_unix() - 3600,
    )
    .unwrap();
    let (status, _) = connect_ws(s.http, &expired).await.err().unwrap();
    assert_eq!(status, 401);
    let (status, _) = connect_ws(s.http, "garbage").await.err().unwrap();
    assert_eq!(status, 401);

    // The v1 path is absent (with CORS), so livekit-client falls back to /rtc.
    let http = reqwest_like_get(s.http, "/rtc/v1/validate?access_token=x").await;
    assert!(http.starts_with("HTTP/1.1 404"), "{http}");
    assert!(
        http.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{http}"
    );
    assert!(!http.contains("requested room does not exist"));
    let ok = reqwest_like_get(
        s.http,
        &format!(
            "/rtc/validate?access_token={}",
            mint("v", grants(room, false))
        ),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    // A good session in the room.
    let mut good = Client::join(s.http, &mint("good", grants(room, true))).await;

    // Malformed protobuf: that session is closed with a reason; the good one is untouched.
    let mut bad = connect_ws(s.http, &mint("bad", grants(room, false)))
        .await
        .unwrap();
    let first = next_response(&mut bad).await.unwrap();
    assert!(matches!(first, signal_response::Message::Join(_)));
    bad.send(WsMessage::Binary(vec![0xff, 0xff, 0xff, 0x01, 0x02].into()))
        .await
        .unwrap();
    let reason = loop {
        match tokio::time::timeout(WAIT, bad.next()).await.unwrap() {
            Some(Ok(WsMessage::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert!(reason.contains("malformed signal request"), "{reason}");

    // Garbage SDP gets an error response, the session stays.
    good.send(signal_request::Message::Offer(lk::SessionDescription {
        r#type: "offer".into(),
        sdp: "this is not sdp".into(),
        id: 7,
        ..Default::default()
    }))
    .await;
    let err = good
        .wait_for("SDP error", |m| match m {
            signal_response::Message::RequestResponse(r) => Some(r.message.clone()),
            _ => None,
        })
        .await;
    assert!(err.contains("malformed SDP"), "{err}");
    good.send(signal_request::Message::Ping(42)).await;
    good.wait_for("pong", |m| {
        matches!(m, signal_response::Message::Pong(42)).then_some(())
    })
    .await;

    // Out-of-order and unknown ids: an answer nobody asked for, a mute of an unknown track.
    good.send(signal_request::Message::Mute(lk::MuteTrackRequest {
        sid: "TR_nope".into(),
        muted: true,
    }))
    .await;
    good.send(signal_request::Message::PingReq(lk::Ping {
        timestamp: 5,
        rtt: 0,
    }))
    .await;
    good.wait_for("pong after junk", |m| match m {
        signal_response::Message::PongResp(p) => (p.last_ping_timestamp == 5).then_some(()),
        _ => None,
    })
    .await;

    // A duplicate identity replaces the older session.
    let _again = Client::join(s.http, &mint("good", grants(room, true))).await;
    good.wait_for("duplicate identity leave", |m| match m {
        signal_response::Message::Leave(l) => {
            (l.reason == lk::DisconnectReason::DuplicateIdentity as i32).then_some(())
        }
        _ => None,
    })
    .await;
    let list = s.signaling.list_participants(room).await.unwrap();
    assert_eq!(list.iter().filter(|p| p.identity == "good").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_participants_is_enforced_and_rooms_created_by_api() {
    let s = server().await;
    let limits = RoomLimits {
        max_participants: 1,
        ..RoomLimits::default()
    };
    let created = s.signaling.create_room("small", limits).await.unwrap();
    assert!(created.sid.starts_with("RM_"));
    assert_eq!(created.max_participants, 1);
    let again = s
        .signaling
        .create_room("small", RoomLimits::default())
        .await
        .unwrap();
    assert_eq!(again.sid, created.sid, "CreateRoom is idempotent");

    let first = Client::join(s.http, &mint("first", grants("small", false))).await;
    assert_eq!(first.join.room.as_ref().unwrap().sid, created.sid);
    let (status, body) = connect_ws(s.http, &mint("second", grants("small", false)))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("full"), "{body}");
    // The same identity may still reconnect (it replaces itself).
    let _again = Client::join(s.http, &mint("first", grants("small", false))).await;
    drop(first);
}

/// A minimal HTTP/1.1 GET over a plain TCP connection; returns the raw response head and body.
async fn reqwest_like_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}
