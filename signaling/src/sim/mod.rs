//! A deterministic world for the signaling core (feature `sim`, for tests and fuzzing): the
//! real [`Server`] driving real engine shards ([`stoa_sfu::Sfu`]) in memory, with LiveKit-like
//! clients made of two str0m peer connections each (the legacy `/rtc` protocol), or of one
//! (`/rtc/v1`, [`Sim::join_v1`]). No sockets, no sleeps: datagrams move
//! between the clients and the shards in memory, and a virtual clock jumps to the earliest
//! deadline. Every run is bounded in steps, so a livelock fails instead of hanging.
//!
//! Addresses are loopback labels only; nothing is sent anywhere.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    missing_debug_implementations,
    clippy::unwrap_in_result,
    clippy::type_complexity
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use livekit_protocol as lk;
use livekit_protocol::{signal_request, signal_response};
use prost::Message as _;
use stoa_sfu::str0m::Input;
use stoa_sfu::str0m::change::{SdpOffer, SdpPendingOffer};
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, MediaKind, Pt};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use stoa_sfu::{Datagrams, Output as SfuOutput, Routed, Sfu, SfuConfig, ShardId};

mod client;

use client::drain_pc;
pub use client::{Client, ClientPc, Side};

use crate::join;
use crate::proto::{AdminOp, AdminReply, Output, Server, ServerConfig, ServiceError, SessionId};
use crate::token::{Claims, VideoGrants};

/// The engine's address in the simulation.
pub const SFU_ADDR: &str = "127.0.0.1:7882";

/// Wall-clock time (Unix ms) at the simulation's start.
pub const START_UNIX_MS: i64 = 1_800_000_000_000;

/// The API key the simulated clients' tokens name (their `iss`).
pub const SIM_API_KEY: &str = "simkey";

/// Most settle rounds at one instant before the world is declared livelocked.
const MAX_ROUNDS: usize = 10_000;

/// What the world saw leave the core, besides client messages.
#[derive(Default)]
pub struct Seen {
    /// Webhook and observer events, by name and identity.
    pub events: Vec<(String, String)>,
    pub join_latencies: Vec<Duration>,
    /// Engine commands the core issued (before a fan-out is cut per shard).
    pub engine_commands: u64,
    /// Of those, data messages (one per room message, whatever the room's size).
    pub send_data_commands: u64,
    /// Tap changes for the recorder, in order.
    pub taps: Vec<crate::proto::TapChange>,
    /// Packets the engine tapped, by engine track.
    pub tapped: Vec<stoa_sfu::TrackId>,
}

/// The world. See the [module documentation](self).
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub server: Server,
    pub shards: Vec<Sfu>,
    pub clients: Vec<Client>,
    pub seen: Seen,
    by_session: HashMap<SessionId, usize>,
    by_addr: HashMap<SocketAddr, (usize, Side)>,
    /// Datagrams from clients to the engine.
    to_sfu: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    sealed: Datagrams,
    pub steps: u64,
    pub max_steps: u64,
    ping_interval: Duration,
}

/// How a client joins ([`Sim::join_as`]).
#[derive(Debug, Default, Clone, Copy)]
struct JoinAs {
    /// On `/rtc/v1`, with this many recvonly audio m-lines in its first offer; `None`: the
    /// legacy two-connection path.
    single: Option<u32>,
    /// Recvonly video m-lines in that offer (see [`Sim::join_v1_with_videos`]).
    videos: u32,
    /// The offer follows the join instead of riding in it (see [`Sim::join_v1_offer_after`]).
    offer_after: bool,
    /// Says it comes from livekit-client (`sdk=js`).
    js: bool,
    /// Sends AddTrack at once (see [`Sim::join_v1_adding_track`]).
    add_track: bool,
}

impl Sim {
    /// A world at `start` with `shards` engine shards and the core configured by `config`
    /// (its seed and shard count are set from `seed` and `shards`).
    pub fn new(start: Instant, seed: u64, shards: u16, config: ServerConfig) -> Self {
        Sim::with_engine(start, seed, shards, config, |_| {})
    }

    /// [`Sim::new`], with each engine shard's configuration adjusted by `engine` (after its
    /// seed and candidates are set).
    pub fn with_engine(
        start: Instant,
        seed: u64,
        shards: u16,
        mut config: ServerConfig,
        engine: impl Fn(&mut SfuConfig),
    ) -> Self {
        let sfu_addr: SocketAddr = SFU_ADDR.parse().expect("addr");
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        config.seed = s;
        config.engine_shards = shards;
        config.events = true;
        let ping_interval = Duration::from_secs(u64::from(config.ping_interval.max(1)));
        let engines = (0..shards)
            .map(|i| {
                let mut seed = s;
                seed[31] ^= i as u8 + 1;
                let mut c = SfuConfig::new(ShardId(i), seed);
                c.candidates = vec![sfu_addr];
                engine(&mut c);
                Sfu::new(c, start)
            })
            .collect();
        Sim {
            start,
            now: start,
            server: Server::new(config, start, START_UNIX_MS),
            shards: engines,
            clients: Vec::new(),
            seen: Seen::default(),
            by_session: HashMap::new(),
            by_addr: HashMap::new(),
            to_sfu: Vec::new(),
            sealed: Datagrams::default(),
            steps: 0,
            max_steps: 1_000_000,
            ping_interval,
        }
    }

    /// Grants of a participant of `room` who may publish or only listen.
    pub fn grants(room: &str, publish: bool) -> VideoGrants {
        VideoGrants {
            room_join: true,
            room: room.into(),
            can_publish: Some(publish),
            can_subscribe: Some(true),
            can_publish_data: Some(true),
            ..Default::default()
        }
    }

    /// A new client joining with `grants`; returns its index, or the refusal.
    pub fn join_with(
        &mut self,
        identity: &str,
        grants: VideoGrants,
    ) -> Result<usize, crate::proto::Refused> {
        self.join_as(identity, grants, JoinAs::default())
    }

    /// A client joining `room` on `/rtc/v1` as livekit-client does: one connection, whose
    /// first offer (sent inside the join request) has the data channels and `sections`
    /// recvonly audio m-lines (livekit-client adds 3).
    pub fn join_v1(&mut self, room: &str, identity: &str, publish: bool, sections: u32) -> usize {
        self.join_v1_as(room, identity, publish, sections, JoinAs::default())
    }

    /// [`Sim::join_v1`] as Firefox does it: the join request carries no offer; the same offer
    /// follows as a `SignalRequest.offer` once the join response arrived.
    pub fn join_v1_offer_after(
        &mut self,
        room: &str,
        identity: &str,
        publish: bool,
        sections: u32,
    ) -> usize {
        let c = self.join_v1_without_offer(room, identity, publish, sections);
        self.send_first_offer(c);
        c
    }

    /// A client joining `room` on `/rtc/v1` with its offer inside the join request (like
    /// [`Sim::join_v1`]; from livekit-client, `sdk=js`, when `js`) and sending AddTrack for
    /// `mic-{identity}` at once, before anything else reaches it or the engine: as
    /// livekit-client republishes its tracks on the join response of a full reconnect.
    pub fn join_v1_adding_track(
        &mut self,
        room: &str,
        identity: &str,
        sections: u32,
        js: bool,
    ) -> usize {
        let how = JoinAs {
            js,
            add_track: true,
            ..JoinAs::default()
        };
        self.join_v1_as(room, identity, true, sections, how)
    }

    /// [`Sim::join_v1`] whose first offer also has `videos` recvonly video m-lines, as
    /// livekit-client's has (the engine takes no video codec).
    pub fn join_v1_with_videos(
        &mut self,
        room: &str,
        identity: &str,
        sections: u32,
        videos: u32,
    ) -> usize {
        let how = JoinAs {
            videos,
            ..JoinAs::default()
        };
        self.join_v1_as(room, identity, false, sections, how)
    }

    /// A `/rtc/v1` join whose offer is kept back, to send with [`Sim::send_first_offer`].
    pub fn join_v1_without_offer(
        &mut self,
        room: &str,
        identity: &str,
        publish: bool,
        sections: u32,
    ) -> usize {
        let how = JoinAs {
            offer_after: true,
            ..JoinAs::default()
        };
        self.join_v1_as(room, identity, publish, sections, how)
    }

    /// A `/rtc/v1` join of `room` whose first offer has `sections` recvonly audio m-lines,
    /// made as `how` says otherwise.
    fn join_v1_as(
        &mut self,
        room: &str,
        identity: &str,
        publish: bool,
        sections: u32,
        how: JoinAs,
    ) -> usize {
        let how = JoinAs {
            single: Some(sections),
            ..how
        };
        self.join_as(identity, Self::grants(room, publish), how)
            .expect("join refused")
    }

    /// Sends the offer a [`Sim::join_v1_without_offer`] kept back.
    pub fn send_first_offer(&mut self, c: usize) {
        if let Some(offer) = self.clients[c].first_offer.take() {
            let sd = lk::SessionDescription {
                r#type: "offer".into(),
                sdp: offer.sdp,
                id: offer.id,
                ..Default::default()
            };
            self.request(c, signal_request::Message::Offer(sd));
        }
    }

    fn join_as(
        &mut self,
        identity: &str,
        grants: VideoGrants,
        how: JoinAs,
    ) -> Result<usize, crate::proto::Refused> {
        let single = how.single;
        let i = self.clients.len();
        let tag = i as u8;
        let base = 2 * i;
        let addr = |n: usize| -> SocketAddr {
            format!("127.1.{}.{}:{}", n / 250, 1 + n % 250, 40000 + n % 20000)
                .parse()
                .expect("addr")
        };
        let claims = Claims {
            sub: identity.into(),
            iss: SIM_API_KEY.into(),
            video: grants,
            ..Default::default()
        };
        let sdk = if how.js { "&sdk=js" } else { "" };
        let mut params =
            join::parse_query(&format!("access_token=x&protocol=17&auto_subscribe=1{sdk}"))
                .expect("params");
        let mut publisher = ClientPc::new(addr(base), self.now);
        let mut pending_pub = None;
        let mut recv_mids = Vec::new();
        let mut deferred = None;
        if let Some(sections) = single {
            let mut api = publisher.rtc.sdp_api();
            api.add_channel("_reliable".into());
            api.add_channel("_lossy".into());
            for _ in 0..sections {
                recv_mids.push(api.add_media(
                    MediaKind::Audio,
                    Direction::RecvOnly,
                    None,
                    None,
                    None,
                ));
            }
            for _ in 0..how.videos {
                api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
            }
            let (offer, pending) = api.apply().expect("a first offer");
            pending_pub = Some(pending);
            params.single_pc = true;
            let initial = join::InitialOffer {
                sdp: offer.to_sdp_string(),
                id: 1,
            };
            if how.offer_after {
                deferred = Some(initial);
            } else {
                params.publisher_offer = Some(initial);
            }
        }
        let session = self.server.connect(self.now, claims, params)?;
        if how.add_track {
            let add = lk::AddTrackRequest {
                cid: format!("mic-{identity}"),
                name: "microphone".into(),
                r#type: lk::TrackType::Audio as i32,
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            };
            self.server
                .handle_request(self.now, session, signal_request::Message::AddTrack(add));
        }
        let client = Client {
            identity: identity.into(),
            session: Some(session),
            publisher,
            subscriber: ClientPc::new(addr(base + 1), self.now),
            log: Vec::new(),
            closed: None,
            pending_pub,
            send: None,
            sent: 0,
            offer_id: u32::from(single.is_some()),
            heard: Vec::new(),
            data: Vec::new(),
            pinging: true,
            last_ping: self.now,
            answering: true,
            single: single.is_some(),
            recv_mids,
            asked_when_connected: Vec::new(),
            published_when_connected: Vec::new(),
            wanted_sections: 0,
            reoffer: false,
            first_offer: None,
            tag,
        };
        self.by_addr
            .insert(client.publisher.addr, (i, Side::Publisher));
        self.by_addr
            .insert(client.subscriber.addr, (i, Side::Subscriber));
        self.by_session.insert(session, i);
        self.clients.push(client);
        self.clients[i].first_offer = deferred;
        self.settle();
        Ok(i)
    }

    /// A client joining `room`, publishing allowed or not.
    pub fn join(&mut self, room: &str, identity: &str, publish: bool) -> usize {
        self.join_with(identity, Self::grants(room, publish))
            .expect("join refused")
    }

    /// Send a request from client `c` (ignored once its session closed).
    pub fn request(&mut self, c: usize, message: signal_request::Message) {
        let Some(session) = self.clients[c].session else {
            return;
        };
        if self.clients[c].closed.is_some() {
            return;
        }
        self.server.handle_request(self.now, session, message);
        self.settle();
    }

    /// Client `c`'s connection drops.
    pub fn disconnect(&mut self, c: usize) {
        if let Some(session) = self.clients[c].session
            && self.clients[c].closed.is_none()
        {
            self.clients[c].closed = Some("client went away".into());
            self.server
                .handle_closed(self.now, session, "client went away");
            self.settle();
        }
    }

    /// Client `c`'s network comes back after [`Sim::disconnect`]: it resumes its session as
    /// livekit-client does (`reconnect=1&sid=…` with its own token, then an ICE-restart
    /// publisher offer if it publishes). Returns the refusal, if any.
    pub fn resume(&mut self, c: usize) -> Result<SessionId, crate::proto::Refused> {
        let identity = self.clients[c].identity.clone();
        self.resume_as(c, &identity)
    }

    /// [`Sim::resume`] with a token for `identity` (not necessarily the client's own).
    pub fn resume_as(
        &mut self,
        c: usize,
        identity: &str,
    ) -> Result<SessionId, crate::proto::Refused> {
        let me = self.clients[c].me().expect("client never joined");
        let room = self.clients[c]
            .find(|m| match m {
                signal_response::Message::Join(j) => j.room.as_ref().map(|r| r.name.clone()),
                _ => None,
            })
            .expect("client never joined");
        let claims = Claims {
            sub: identity.into(),
            video: Self::grants(&room, true),
            ..Default::default()
        };
        let query = format!(
            "access_token=x&protocol=17&reconnect=1&reconnect_reason=1&sid={}",
            me.sid
        );
        let mut params = join::parse_query(&query).expect("params");
        // On /rtc/v1 the same fields come in the join request, without an offer.
        params.single_pc = self.clients[c].single;
        let session = self.server.connect(self.now, claims, params)?;
        let client = &mut self.clients[c];
        client.session = Some(session);
        client.closed = None;
        client.last_ping = self.now;
        self.by_session.insert(session, c);
        self.settle();
        let restart = self.clients[c].send.is_some() || self.clients[c].single;
        if restart && self.clients[c].is_open() {
            self.restart_publisher_ice(c);
        }
        Ok(session)
    }

    /// An ICE-restart offer on client `c`'s publisher connection, as livekit-client sends after
    /// a resume.
    fn restart_publisher_ice(&mut self, c: usize) {
        let client = &mut self.clients[c];
        let mut api = client.publisher.rtc.sdp_api();
        api.ice_restart(true);
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        let sd = self.publisher_offer(c, offer, pending);
        self.request(c, signal_request::Message::Offer(sd));
    }

    /// Run an administrative operation.
    pub fn admin(&mut self, op: AdminOp) -> Result<AdminReply, ServiceError> {
        let r = self.server.handle_admin(self.now, op);
        self.settle();
        r
    }

    /// AddTrack and a publisher offer with one audio m-line and the `_reliable` channel.
    pub fn publish(&mut self, c: usize) {
        let cid = format!("mic-{}", self.clients[c].identity);
        self.request(
            c,
            signal_request::Message::AddTrack(lk::AddTrackRequest {
                cid: cid.clone(),
                name: "microphone".into(),
                r#type: lk::TrackType::Audio as i32,
                source: lk::TrackSource::Microphone as i32,
                ..Default::default()
            }),
        );
        self.offer_publisher(c, Some(&cid));
    }

    /// A publisher offer: with an audio m-line labelled `cid`, or data channel only.
    pub fn offer_publisher(&mut self, c: usize, cid: Option<&str>) {
        let client = &mut self.clients[c];
        let mut api = client.publisher.rtc.sdp_api();
        let mid = cid.map(|cid| {
            api.add_media(
                MediaKind::Audio,
                Direction::SendOnly,
                Some("stream".into()),
                Some(cid.into()),
                None,
            )
        });
        if !client.publisher.channels.contains_key("_reliable") && !client.single {
            api.add_channel("_reliable".into());
        }
        // A browser's receiving m-lines stay recvonly in every offer it makes.
        for mid in &client.recv_mids {
            api.set_direction(*mid, Direction::RecvOnly);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        if let Some(mid) = mid {
            client.send = Some((mid, Pt::from(111)));
        }
        let sd = self.publisher_offer(c, offer, pending);
        self.request(c, signal_request::Message::Offer(sd));
    }

    /// Files client `c`'s publisher offer as pending and returns it as the client sends it
    /// (with the next offer id); what the connection has to send meanwhile goes to the engine.
    fn publisher_offer(
        &mut self,
        c: usize,
        offer: SdpOffer,
        pending: SdpPendingOffer,
    ) -> lk::SessionDescription {
        let now = self.now;
        let client = &mut self.clients[c];
        client.pending_pub = Some(pending);
        client.offer_id += 1;
        let sd = lk::SessionDescription {
            r#type: "offer".into(),
            sdp: offer.to_sdp_string(),
            id: client.offer_id,
            ..Default::default()
        };
        drain_pc(
            &mut client.publisher,
            now,
            &mut self.to_sfu,
            c,
            Side::Publisher,
            None,
        );
        sd
    }

    /// Client `c` sends `n` Opus packets, 20 ms apart, running the world between them.
    pub fn speak(&mut self, c: usize, n: u32) {
        for _ in 0..n {
            self.send_audio(c);
            self.run_for(Duration::from_millis(20));
        }
    }

    fn send_audio(&mut self, c: usize) {
        let now = self.now;
        let client = &mut self.clients[c];
        let Some((mid, pt)) = client.send else {
            return;
        };
        let index = client.sent;
        let mut payload = vec![0u8; 40];
        payload[0..4].copy_from_slice(&index.to_be_bytes());
        payload[4] = client.tag;
        let ext = ExtensionValues {
            audio_level: Some(-20),
            voice_activity: Some(true),
            ..Default::default()
        };
        let mut api = client.publisher.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(
            RtpWrite::new(
                pt,
                SeqNo::from(u64::from(index) + 1),
                index * 960,
                now,
                payload,
            )
            .ext_vals(ext),
        );
        client.sent += 1;
        let _ = client.publisher.rtc.handle_input(Input::Timeout(now));
        drain_pc(
            &mut client.publisher,
            now,
            &mut self.to_sfu,
            c,
            Side::Publisher,
            None,
        );
        self.settle();
    }

    /// Client `c` sends a user data packet on its publisher's `_reliable` channel.
    pub fn send_data(&mut self, c: usize, payload: &[u8]) -> bool {
        #[allow(deprecated)]
        let packet = lk::DataPacket {
            kind: lk::data_packet::Kind::Reliable as i32,
            value: Some(lk::data_packet::Value::User(lk::UserPacket {
                payload: payload.to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        self.send_packet(c, &packet)
    }

    /// Client `c` sends `packet` as it is (whatever identity or topic it claims) on its
    /// publisher's `_reliable` channel.
    pub fn send_packet(&mut self, c: usize, packet: &lk::DataPacket) -> bool {
        let now = self.now;
        let client = &mut self.clients[c];
        let Some(&id) = client.publisher.channels.get("_reliable") else {
            return false;
        };
        let Some(mut ch) = client.publisher.rtc.channel(id) else {
            return false;
        };
        let ok = ch.write(true, &packet.encode_to_vec()).is_ok();
        drain_pc(
            &mut client.publisher,
            now,
            &mut self.to_sfu,
            c,
            Side::Publisher,
            None,
        );
        self.settle();
        ok
    }

    /// Run until every open client's subscriber connection is up, at most `max` of simulated
    /// time; returns whether they came up.
    pub fn connect_all(&mut self, max: Duration) -> bool {
        self.run_until(max, |s| {
            s.clients
                .iter()
                .filter(|c| c.is_open())
                .all(|c| c.subscriber.connected)
        })
    }

    /// A speaker (identity `speaker`) and `listeners` listeners (`{prefix}0`, `{prefix}1`, …)
    /// join `room`; once every subscriber connection is up the speaker publishes. Returns the
    /// speaker and the listeners, or what did not come up within 10 s of simulated time each.
    pub fn stage(
        &mut self,
        room: &str,
        speaker: &str,
        prefix: &str,
        listeners: usize,
    ) -> Result<(usize, Vec<usize>), &'static str> {
        let speaker = self.join(room, speaker, true);
        let ls: Vec<usize> = (0..listeners)
            .map(|i| self.join(room, &format!("{prefix}{i}"), false))
            .collect();
        if !self.connect_all(Duration::from_secs(10)) {
            return Err("subscriber connections did not come up");
        }
        self.publish(speaker);
        if !self.run_until(Duration::from_secs(10), |s| {
            s.clients[speaker].publisher.connected
        }) {
            return Err("publisher did not connect");
        }
        Ok((speaker, ls))
    }

    /// Run the world for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step(end);
        }
    }

    /// Run until `done` holds, at most `max` of simulated time; returns whether it held.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + max;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            self.step(end);
        }
    }

    /// Advance the clock to the next deadline (at most `limit`), fire timers, settle.
    pub fn step(&mut self, limit: Instant) {
        self.steps += 1;
        assert!(self.steps < self.max_steps, "simulation did not settle");
        let mut next = limit;
        if let Output::Timeout(t) = self.server.poll_output() {
            next = next.min(t);
        }
        for s in &mut self.shards {
            if let SfuOutput::Timeout(t) = s.poll_output() {
                next = next.min(t);
            }
        }
        for c in &self.clients {
            if c.closed.is_none() {
                next = next.min(c.publisher.deadline).min(c.subscriber.deadline);
                if c.pinging {
                    next = next.min(c.last_ping + self.ping_interval);
                }
            }
        }
        self.now = self.now.max(next);
        let now = self.now;
        self.server.handle_timeout(now);
        for s in &mut self.shards {
            s.handle_timeout(now);
        }
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.closed.is_some() {
                continue;
            }
            for side in [Side::Publisher, Side::Subscriber] {
                let receives = side == Side::Subscriber || c.single;
                let (pc, sink) = match side {
                    Side::Publisher => (&mut c.publisher, (&mut c.heard, &mut c.data)),
                    Side::Subscriber => (&mut c.subscriber, (&mut c.heard, &mut c.data)),
                };
                if pc.deadline <= now {
                    let _ = pc.rtc.handle_input(Input::Timeout(now));
                    drain_pc(
                        pc,
                        now,
                        &mut self.to_sfu,
                        i,
                        side,
                        Some(sink).filter(|_| receives),
                    );
                }
            }
            if c.pinging && c.last_ping + self.ping_interval <= now {
                c.last_ping = now;
                if let Some(session) = c.session {
                    let ping = lk::Ping {
                        timestamp: 0,
                        rtt: 0,
                    };
                    self.server.handle_request(
                        now,
                        session,
                        signal_request::Message::PingReq(ping),
                    );
                }
            }
        }
        self.settle();
    }

    /// Move everything that can move at the current instant.
    pub fn settle(&mut self) {
        for _ in 0..MAX_ROUNDS {
            if !self.round() {
                return;
            }
        }
        panic!("the world did not settle at one instant");
    }

    fn round(&mut self) -> bool {
        let now = self.now;
        let mut progressed = false;
        // The core's outputs.
        loop {
            match self.server.poll_output() {
                Output::Timeout(_) => break,
                out => {
                    progressed = true;
                    self.core_output(out);
                }
            }
        }
        // The shards' outputs.
        for s in 0..self.shards.len() {
            loop {
                match self.shards[s].poll_output() {
                    SfuOutput::Timeout(_) => break,
                    SfuOutput::Event(e) => {
                        progressed = true;
                        self.server.handle_engine_event(now, e);
                    }
                    SfuOutput::Relay(r) => {
                        progressed = true;
                        let to = usize::from(r.to.0);
                        self.shards[to].handle_relay(now, r);
                    }
                }
            }
            while let Some(t) = self.shards[s].poll_tapped() {
                progressed = true;
                self.seen.tapped.push(t.track);
            }
            self.shards[s].poll_datagrams(&mut self.sealed);
        }
        // Engine → clients.
        if !self.sealed.is_empty() {
            progressed = true;
            let mut sealed = std::mem::take(&mut self.sealed);
            for d in sealed.iter() {
                let Some(&(c, side)) = self.by_addr.get(&d.destination) else {
                    continue;
                };
                let client = &mut self.clients[c];
                if client.closed.is_some() {
                    continue;
                }
                let (pc, heard, data) = match side {
                    Side::Publisher if client.single => (
                        &mut client.publisher,
                        Some(&mut client.heard),
                        Some(&mut client.data),
                    ),
                    Side::Publisher => (&mut client.publisher, None, None),
                    Side::Subscriber => (
                        &mut client.subscriber,
                        Some(&mut client.heard),
                        Some(&mut client.data),
                    ),
                };
                if let Ok(r) = Receive::new(Protocol::Udp, d.source, d.destination, d.contents) {
                    let _ = pc.rtc.handle_input(Input::Receive(now, r));
                }
                drain_pc(pc, now, &mut self.to_sfu, c, side, heard.zip(data));
            }
            sealed.clear();
            self.sealed = sealed;
        }
        // Clients → engine.
        if !self.to_sfu.is_empty() {
            progressed = true;
            for (source, destination, contents) in std::mem::take(&mut self.to_sfu) {
                if let Routed::Foreign(shard) = self.shards[0].handle_receive(
                    now,
                    Protocol::Udp,
                    source,
                    destination,
                    &contents,
                ) && let Some(s) = self.shards.get_mut(usize::from(shard.0))
                {
                    s.handle_receive(now, Protocol::Udp, source, destination, &contents);
                }
            }
        }
        progressed
    }

    fn core_output(&mut self, out: Output) {
        let now = self.now;
        match out {
            Output::Send(session, message) => {
                let Some(&c) = self.by_session.get(&session) else {
                    return;
                };
                let Some(message) = message.message else {
                    return;
                };
                // Messages for a connection the client replaced (resumed) go nowhere.
                if self.clients[c].closed.is_some() || self.clients[c].session != Some(session) {
                    return;
                }
                self.client_message(c, session, message);
            }
            Output::Close(session, why) => {
                if let Some(&c) = self.by_session.get(&session)
                    && self.clients[c].session == Some(session)
                {
                    self.clients[c].closed.get_or_insert(why);
                }
            }
            Output::Engine(command) => {
                self.seen.engine_commands += 1;
                if matches!(command, stoa_sfu::EngineCommand::SendData { .. }) {
                    self.seen.send_data_commands += 1;
                }
                for (shard, part) in command.split() {
                    if let Some(s) = self.shards.get_mut(usize::from(shard.0)) {
                        s.handle_command(now, part);
                    }
                }
            }
            Output::Webhook(e) | Output::Observe(e) => {
                let who = e.participant.map(|p| p.identity).unwrap_or_default();
                self.seen.events.push((e.event, who));
            }
            Output::JoinLatency(d) => self.seen.join_latencies.push(d),
            Output::Tap(change) => self.seen.taps.push(change),
            _ => {}
        }
    }

    /// A message for client `c`: logged; offers answered and answers applied, as the SDK does.
    fn client_message(&mut self, c: usize, session: SessionId, message: signal_response::Message) {
        let now = self.now;
        let client = &mut self.clients[c];
        match &message {
            signal_response::Message::Offer(sd) if client.answering => {
                if let Ok(offer) = SdpOffer::from_sdp_string(&sd.sdp)
                    && let Ok(answer) = client.subscriber.rtc.sdp_api().accept_offer(offer)
                {
                    drain_pc(
                        &mut client.subscriber,
                        now,
                        &mut self.to_sfu,
                        c,
                        Side::Subscriber,
                        None,
                    );
                    let sd = lk::SessionDescription {
                        r#type: "answer".into(),
                        sdp: answer.to_sdp_string(),
                        id: sd.id,
                        ..Default::default()
                    };
                    client.log.push(message);
                    self.server
                        .handle_request(now, session, signal_request::Message::Answer(sd));
                    return;
                }
            }
            signal_response::Message::Answer(sd) => {
                if let (Some(pending), Ok(answer)) = (
                    client.pending_pub.take(),
                    stoa_sfu::str0m::change::SdpAnswer::from_sdp_string(&sd.sdp),
                ) && client
                    .publisher
                    .rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .is_ok()
                {
                    if let Some((mid, _)) = client.send
                        && let Some(pt) = client
                            .publisher
                            .rtc
                            .codec_config()
                            .find(|p| p.spec().codec == Codec::Opus)
                            .map(|p| p.pt())
                    {
                        client.send = Some((mid, pt));
                    }
                    drain_pc(
                        &mut client.publisher,
                        now,
                        &mut self.to_sfu,
                        c,
                        Side::Publisher,
                        None,
                    );
                }
                if client.single && client.reoffer {
                    client.log.push(message);
                    self.reoffer_single(c, session);
                    return;
                }
            }
            signal_response::Message::TrackPublished(_) => {
                client
                    .published_when_connected
                    .push(client.publisher.rtc.is_connected());
            }
            // The server wants more m-lines, or a new offer (one connection).
            signal_response::Message::MediaSectionsRequirement(req) if client.single => {
                client
                    .asked_when_connected
                    .push(client.publisher.rtc.is_connected());
                client.wanted_sections += req.num_audios;
                client.reoffer = true;
                let idle = client.pending_pub.is_none();
                client.log.push(message);
                if idle {
                    self.reoffer_single(c, session);
                }
                return;
            }
            // A refused offer leaves the client's pending offer unanswered; roll it back so it
            // can offer again.
            // (An offer kept back is not the refused one: its pending state stays.)
            signal_response::Message::RequestResponse(_)
                if client.first_offer.is_none() && client.pending_pub.take().is_some() =>
            {
                client.send = None;
            }
            _ => {}
        }
        client.log.push(message);
    }

    /// A one-connection client offers again, as livekit-client does after a
    /// `MediaSectionsRequirement`: with the recvonly audio m-lines asked for added, and its
    /// receiving m-lines recvonly again (those the server answered inactive included).
    fn reoffer_single(&mut self, c: usize, session: SessionId) {
        let now = self.now;
        let client = &mut self.clients[c];
        client.reoffer = false;
        let mut api = client.publisher.rtc.sdp_api();
        for _ in 0..std::mem::take(&mut client.wanted_sections) {
            client.recv_mids.push(api.add_media(
                MediaKind::Audio,
                Direction::RecvOnly,
                None,
                None,
                None,
            ));
        }
        for mid in &client.recv_mids {
            api.set_direction(*mid, Direction::RecvOnly);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        let sd = self.publisher_offer(c, offer, pending);
        self.server
            .handle_request(now, session, signal_request::Message::Offer(sd));
    }

    // ------------------------------------------------------------------ views

    /// The first client with `identity`.
    pub fn client(&self, identity: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.identity == identity)
            .expect("no such client")
    }

    /// Participant snapshots of `room` as the core has them.
    pub fn participants(&mut self, room: &str) -> Vec<lk::ParticipantInfo> {
        match self.server.handle_admin(
            self.now,
            AdminOp::ListParticipants {
                room: room.to_owned(),
            },
        ) {
            Ok(AdminReply::Participants(p)) => p,
            _ => vec![],
        }
    }
}

/// Rooms and identities the scripted actions draw from.
const ROOMS: [&str; 2] = ["a", "b"];
const IDENTITIES: [&str; 6] = ["p0", "p1", "p2", "p3", "p4", "p5"];

impl Sim {
    /// One action chosen by three bytes (for the fuzz target and randomized tests): a client
    /// joins (on `/rtc` or `/rtc/v1`), leaves, drops, publishes, sends garbage or real requests, the server changes a
    /// permission, mutes, removes, sends data, records a room or stops, or time passes. Bounded: at most 2 s of
    /// simulated time per action.
    pub fn act(&mut self, op: u8, x: u8, y: u8) {
        let identity = IDENTITIES[usize::from(x) % IDENTITIES.len()];
        let room = ROOMS[usize::from(y) % ROOMS.len()];
        // The newest client with this identity, if its session is open.
        let open = self
            .clients
            .iter()
            .rposition(|c| c.identity == identity)
            .filter(|&c| self.clients[c].is_open());
        match (op % 16, open) {
            (0, _) => {
                let _ = self.join_with(identity, Self::grants(room, y & 4 != 0));
            }
            // On /rtc/v1, with 0 to 3 receiving m-lines in the first offer.
            (1, _) => {
                let grants = Self::grants(room, y & 4 != 0);
                let single = Some(u32::from(y % 4));
                let _ = self.join_as(
                    identity,
                    grants,
                    JoinAs {
                        single,
                        ..JoinAs::default()
                    },
                );
            }
            (2, Some(c)) => self.request(c, signal_request::Message::Leave(Default::default())),
            (3, Some(c)) => self.disconnect(c),
            (4, Some(c)) => self.publish(c),
            (5, Some(c)) => self.offer_publisher(c, None),
            (6, Some(c)) => {
                let sd = lk::SessionDescription {
                    r#type: if y & 1 == 0 { "offer" } else { "answer" }.into(),
                    sdp: format!("v=0\r\no=- {y} 0 IN IP4 0.0.0.0\r\nbroken"),
                    id: u32::from(y),
                    ..Default::default()
                };
                let m = if y & 1 == 0 {
                    signal_request::Message::Offer(sd)
                } else {
                    signal_request::Message::Answer(sd)
                };
                self.request(c, m);
            }
            (7, Some(c)) => {
                let sid = self.any_track_sid(y).unwrap_or_else(|| format!("TR_{y}"));
                self.request(
                    c,
                    signal_request::Message::Mute(lk::MuteTrackRequest {
                        sid,
                        muted: y & 1 == 0,
                    }),
                );
            }
            (8, Some(c)) => {
                let sid = self.any_track_sid(y).unwrap_or_default();
                self.request(
                    c,
                    signal_request::Message::Subscription(lk::UpdateSubscription {
                        track_sids: vec![sid],
                        subscribe: y & 1 == 0,
                        participant_tracks: vec![],
                    }),
                );
            }
            (9, Some(c)) => {
                self.request(
                    c,
                    signal_request::Message::AddTrack(lk::AddTrackRequest {
                        cid: format!("cid-{y}"),
                        r#type: i32::from(y % 3),
                        source: i32::from(y % 4),
                        ..Default::default()
                    }),
                );
            }
            (10, _) => {
                let permission = lk::ParticipantPermission {
                    can_publish: y & 1 == 0,
                    can_subscribe: true,
                    can_publish_data: true,
                    can_publish_sources: if y & 2 == 0 {
                        vec![]
                    } else {
                        vec![lk::TrackSource::Camera as i32]
                    },
                    ..Default::default()
                };
                let update = crate::proto::ParticipantUpdate {
                    permission: Some(permission),
                    ..Default::default()
                };
                let _ = self.admin(AdminOp::UpdateParticipant {
                    room: room.into(),
                    identity: identity.into(),
                    update: Box::new(update),
                });
            }
            (11, _) => {
                let _ = self.admin(AdminOp::RemoveParticipant {
                    room: room.into(),
                    identity: identity.into(),
                });
            }
            (12, _) => {
                let track_sid = self.any_track_sid(y).unwrap_or_default();
                let _ = self.admin(AdminOp::MuteTrack {
                    room: room.into(),
                    identity: identity.into(),
                    track_sid,
                    muted: y & 1 == 0,
                });
            }
            (13, Some(c)) => {
                self.send_data(c, &[y]);
                self.send_audio(c);
            }
            (14, _) => {
                if y == 0 {
                    let _ = self.admin(AdminOp::DeleteRoom { room: room.into() });
                } else if y & 8 != 0 {
                    let _ = self.admin(AdminOp::SetRecording {
                        room: room.into(),
                        recording: y & 16 != 0,
                    });
                } else {
                    let _ = self.admin(AdminOp::SendData {
                        room: room.into(),
                        data: Box::new(crate::proto::SendData {
                            payload: vec![y],
                            reliable: y & 1 == 0,
                            ..Default::default()
                        }),
                    });
                }
            }
            (15, _) if y & 1 == 1 => {
                // The newest client with this identity resumes (open or not), now and then with
                // another identity's token.
                if let Some(c) = self.clients.iter().rposition(|c| c.identity == identity)
                    && self.clients[c].me().is_some()
                {
                    let _ = if y & 2 == 0 {
                        self.resume(c)
                    } else {
                        let other = IDENTITIES[usize::from(y >> 2) % IDENTITIES.len()];
                        self.resume_as(c, other)
                    };
                }
            }
            _ => self.run_for(Duration::from_millis(u64::from(y) * 8)),
        }
    }

    fn any_track_sid(&self, pick: u8) -> Option<String> {
        let sids: Vec<String> = self
            .server
            .rooms()
            .flat_map(|r| r.participants.values())
            .flat_map(|p| p.tracks.keys().cloned())
            .collect();
        if sids.is_empty() {
            return None;
        }
        Some(sids[usize::from(pick) % sids.len()].clone())
    }

    /// The invariants between the core and the engine, checked after every action: a
    /// participant who may not publish has no published track; every session's peers exist in
    /// the engine, and the engine has no other peers; sessions, participants and the core's
    /// counts agree.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut participants = 0u64;
        for room in self.server.rooms() {
            for p in room.participants.values() {
                participants += 1;
                if !p.can_publish() && !p.tracks.is_empty() {
                    return Err(format!(
                        "{} may not publish but has {} track(s)",
                        p.identity,
                        p.tracks.len()
                    ));
                }
                if self.server.session_of_participant(&p.sid).is_none() {
                    return Err(format!("{} has no session", p.identity));
                }
            }
        }
        let stats = self.server.stats();
        if stats.sessions + stats.held != participants {
            return Err(format!(
                "{} sessions and {} held but {participants} participants",
                stats.sessions, stats.held
            ));
        }
        if stats.publishers + stats.listeners != participants {
            return Err("role counts disagree with participants".into());
        }
        let mut peers = 0u64;
        // Every peer placed on a shard is a session's, in the session's room, and back.
        let mut placed: HashMap<stoa_sfu::PeerId, &str> = self.server.placed_peers().collect();
        for session in self.server.sessions() {
            let Some((publisher, subscriber)) = self.server.session_peers(session) else {
                return Err("a listed session has no peers entry".into());
            };
            let room = self.server.session_room(session);
            // On one connection (`/rtc/v1`) both are the same peer.
            let subscriber = subscriber.filter(|s| Some(*s) != publisher);
            for peer in [publisher, subscriber].into_iter().flatten() {
                if placed.remove(&peer) != room {
                    return Err(format!("session peer {peer} is not placed in its room"));
                }
                peers += 1;
                let shard = self
                    .shards
                    .get(usize::from(peer.shard().0))
                    .ok_or_else(|| format!("{peer} names no shard"))?;
                if shard.ice_ufrag(peer).is_none() {
                    return Err(format!("session peer {peer} unknown to the engine"));
                }
            }
        }
        // The recorder's view: the tracks named tapped (by the last change about each) are
        // exactly the published tracks of recorded rooms.
        let mut tapped = std::collections::BTreeMap::new();
        for change in &self.seen.taps {
            tapped.insert(change.track, change.tapped);
        }
        let tapped: std::collections::BTreeSet<_> = tapped
            .into_iter()
            .filter_map(|(track, on)| on.then_some(track))
            .collect();
        let recorded: std::collections::BTreeSet<_> = self
            .server
            .rooms()
            .filter(|r| r.recording)
            .flat_map(|r| r.participants.values())
            .flat_map(|p| p.tracks.values().filter_map(|t| t.engine))
            .collect();
        if tapped != recorded {
            return Err(format!(
                "tapped tracks {tapped:?}, published tracks of recorded rooms {recorded:?}"
            ));
        }
        if let Some(peer) = placed.keys().next() {
            return Err(format!("peer {peer} is placed but belongs to no session"));
        }
        let engine: u64 = self.shards.iter().map(|s| s.stats().peers).sum();
        if engine != peers {
            return Err(format!("engine has {engine} peers, sessions {peers}"));
        }
        let tracks: u64 = self.shards.iter().map(|s| s.stats().tracks).sum();
        if stats.tracks > tracks {
            return Err(format!(
                "signaling lists {} tracks, the engine {tracks}",
                stats.tracks
            ));
        }
        Ok(())
    }
}
