//! Deterministic simulation harness: str0m client peers and one or more engine shards joined by
//! `str0m-netem` links on a virtual clock. No sockets, no sleeps; every run is bounded in steps.
//!
//! Addresses are loopback-range labels only; nothing is sent anywhere.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::unwrap_in_result,
    clippy::disallowed_methods
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netem::{Input as NetemInput, Netem, NetemConfig, Output as NetemOutput};
use stoa_sfu::proto::forwarder::OPUS_CLOCK_RATE;
use stoa_sfu::str0m::change::SdpOffer;
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, MediaKind, Mid, Pt};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use stoa_sfu::str0m::{Candidate, Event as RtcEvent, Input, Output as RtcOutput, Rtc, RtcConfig};
use stoa_sfu::{
    Datagrams, Event, FastPath, MediaLabel, Output, PeerConfig, PeerId, Publish, Relay, Routed,
    Sfu, SfuConfig, ShardId, SlotId, Tapped, TrackId,
};

/// A datagram in flight.
#[derive(Clone, Debug)]
pub struct Packet {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

impl AsRef<[u8]> for Packet {
    fn as_ref(&self) -> &[u8] {
        &self.contents
    }
}

/// One received RTP packet, as a client saw it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub at: Instant,
    pub mid: Option<Mid>,
    pub ssrc: u32,
    pub seq_no: u64,
    pub timestamp: u32,
    pub audio_level: Option<i8>,
    /// The publisher's packet index, carried in the first 4 payload bytes.
    pub index: u32,
    /// The publisher's id byte, carried in payload byte 4.
    pub publisher: u8,
    /// The payload type it came with.
    pub pt: u8,
    /// The whole payload when it came as RED (RFC 2198); `index` and `publisher` are then read
    /// from its primary block.
    pub red: Option<Vec<u8>>,
    /// The Opus payload (the primary block of a RED packet).
    pub opus: Vec<u8>,
}

/// A simulated browser: a full-ICE str0m peer in RTP mode.
pub struct Client {
    pub name: String,
    pub addr: SocketAddr,
    pub rtc: Rtc,
    /// The engine peer for this client.
    pub peer: Option<PeerId>,
    /// Link towards this client (engine → client).
    pub down: Netem<Packet>,
    /// Link from this client (client → engine).
    pub up: Netem<Packet>,
    pub deadline: Instant,
    pub connected: bool,
    pub heard: Vec<Heard>,
    /// The client's sending m-line and its Opus payload type.
    pub send: Option<(Mid, Pt)>,
    pub sent: u32,
    pub publisher_byte: u8,
    pub alive: bool,
    /// Whether the client sends RED when it negotiated it (as browsers do).
    pub send_red: bool,
    /// The Opus payload of the previous packet sent, repeated in the next RED packet.
    pub last_opus: Option<Vec<u8>>,
}

impl Client {
    /// The negotiated Opus and RED payload types.
    pub fn pts(&self) -> (Option<Pt>, Option<Pt>) {
        let opus = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus);
        (opus.map(|p| p.pt()), opus.and_then(|p| p.red()))
    }
}

/// An RFC 2198 payload: `redundant` blocks of payload type `pt`, each `ts_step` ticks older than
/// the next, then the primary.
impl Client {
    /// Sends Opus frame number `self.sent` with `payload` on `mid` (RED around it once
    /// negotiated, as browsers do: the previous frame as its redundant block) and drains.
    /// Whether it was written (the stream exists).
    pub fn send_frame(
        &mut self,
        now: Instant,
        (mid, pt): (Mid, Pt),
        payload: Vec<u8>,
        ext: ExtensionValues,
    ) -> bool {
        let index = self.sent;
        let ts = (u64::from(index) * OPUS_CLOCK_RATE / 50) as u32;
        let (pt, payload) = match self.pts().1 {
            Some(red) if self.send_red => {
                let previous = self.last_opus.replace(payload.clone());
                let redundant: Vec<&[u8]> = previous.iter().map(Vec::as_slice).collect();
                (red, red_payload(*pt, 960, &redundant, &payload))
            }
            _ => (pt, payload),
        };
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return false;
        };
        tx.write_rtp(
            RtpWrite::new(pt, SeqNo::from(u64::from(index) + 1), ts, now, payload).ext_vals(ext),
        );
        self.sent += 1;
        self.drain(now);
        true
    }
}

pub fn red_payload(pt: u8, ts_step: u16, redundant: &[&[u8]], primary: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let n = redundant.len() as u16;
    for (i, block) in redundant.iter().enumerate() {
        let ts = ts_step * (n - i as u16);
        let len = block.len() as u16;
        out.extend_from_slice(&[
            0x80 | pt,
            (ts >> 6) as u8,
            (((ts & 0x3f) << 2) as u8) | ((len >> 8) as u8 & 0x03),
            len as u8,
        ]);
    }
    out.push(pt & 0x7f);
    for block in redundant {
        out.extend_from_slice(block);
    }
    out.extend_from_slice(primary);
    out
}

impl Client {
    /// Drain after a mutation, then tick the clock once: str0m only schedules ICE checks
    /// after it has seen a timeout input.
    pub fn drain(&mut self, now: Instant) {
        self.drain_once(now);
        if self.rtc.handle_input(Input::Timeout(now)).is_ok() {
            self.drain_once(now);
        }
    }

    fn drain_once(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(RtcOutput::Timeout(t)) => {
                    self.deadline = t;
                    break;
                }
                Ok(RtcOutput::Transmit(t)) => self.up.handle_input(NetemInput::Packet(
                    now,
                    Packet {
                        source: t.source,
                        destination: t.destination,
                        contents: t.contents.to_vec(),
                    },
                )),
                Ok(RtcOutput::Event(e)) => match e {
                    RtcEvent::Connected => self.connected = true,
                    RtcEvent::RtpPacket(p) => {
                        let pt = *p.header.payload_type;
                        let is_red = self.pts().1.is_some_and(|red| *red == pt);
                        let (red, payload) = if is_red {
                            let whole = p.payload.to_vec();
                            let primary = red_primary(&whole).to_vec();
                            (Some(whole), primary)
                        } else {
                            (None, p.payload.to_vec())
                        };
                        let index = payload
                            .get(0..4)
                            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(u32::MAX);
                        self.heard.push(Heard {
                            at: now,
                            mid: p.header.ext_vals.mid,
                            ssrc: *p.header.ssrc,
                            seq_no: *p.seq_no,
                            timestamp: p.header.timestamp,
                            audio_level: p.header.ext_vals.audio_level,
                            index,
                            publisher: payload.get(4).copied().unwrap_or(0),
                            pt,
                            red,
                            opus: payload,
                        });
                    }
                    _ => {}
                },
                Err(e) => panic!("client {} rtc error: {e}", self.name),
            }
        }
    }
}

/// What the harness remembers of engine events.
#[derive(Default)]
pub struct Seen {
    pub published: Vec<(TrackId, MediaLabel)>,
    pub unpublished: Vec<TrackId>,
    pub connected: Vec<PeerId>,
    pub disconnected: Vec<PeerId>,
    pub speakers: Vec<(TrackId, bool)>,
    pub channel_data: Vec<(PeerId, Vec<u8>)>,
}

/// The world: shards, clients, a clock.
pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub shards: Vec<Sfu>,
    pub sfu_addr: SocketAddr,
    pub clients: Vec<Client>,
    pub by_addr: HashMap<SocketAddr, usize>,
    pub by_peer: HashMap<PeerId, usize>,
    pub seen: Seen,
    pub steps: u64,
    pub seed: u64,
    pub link: NetemConfig,
    /// Which shard the next client lands on (round robin) and which shard "receives"
    /// each client's datagrams (as SO_REUSEPORT hashing would pick).
    next_shard: usize,
    pub recv_shard: HashMap<usize, usize>,
    /// Whether new clients offer and accept RED (RFC 2198) around Opus, as browsers do.
    pub red: bool,
    /// Packets of tapped tracks, drained after every step unless `hold_taps` is set (a shell
    /// that does not drain, to see the bound).
    pub tapped: Vec<Tapped>,
    pub hold_taps: bool,
}

pub const SFU_ADDR: &str = "127.0.0.1:7882";

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with_shards(seed, 1)
    }

    pub fn with_shards(seed: u64, n: usize) -> Self {
        Self::with_config(seed, n, FastPath::Enabled)
    }

    /// `n` shards forwarding through the fast path or through str0m's own send path.
    pub fn with_config(seed: u64, n: usize, fast_path: FastPath) -> Self {
        tracing_subscriber_init();
        let start = Instant::now();
        let shards = (0..n)
            .map(|i| {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&seed.to_le_bytes());
                s[8] = i as u8;
                let mut config = SfuConfig::new(ShardId(i as u16), s);
                config.fast_path = fast_path;
                Sfu::new(config, start)
            })
            .collect();
        Sim {
            start,
            now: start,
            shards,
            sfu_addr: SFU_ADDR.parse().unwrap(),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            by_peer: HashMap::new(),
            seen: Seen::default(),
            steps: 0,
            seed,
            link: NetemConfig::new().latency(Duration::from_millis(10)),
            next_shard: 0,
            recv_shard: HashMap::new(),
            red: false,
            tapped: Vec::new(),
            hold_taps: false,
        }
    }

    pub fn sfu(&mut self) -> &mut Sfu {
        &mut self.shards[0]
    }

    fn shard_of(&self, peer: PeerId) -> usize {
        peer.shard().0 as usize
    }

    fn new_client(&mut self, name: &str) -> usize {
        let i = self.clients.len();
        let addr: SocketAddr = format!("127.0.{}.{}:{}", 1 + i / 250, 1 + i % 250, 40000 + i)
            .parse()
            .unwrap();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, self.red)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let link_seed = self.seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let client = Client {
            name: name.to_owned(),
            addr,
            rtc,
            peer: None,
            down: Netem::new(self.link.seed(link_seed)),
            up: Netem::new(self.link.seed(link_seed ^ 1)),
            deadline: self.now,
            connected: false,
            heard: Vec::new(),
            send: None,
            sent: 0,
            publisher_byte: i as u8,
            alive: true,
            send_red: self.red,
            last_opus: None,
        };
        self.clients.push(client);
        self.by_addr.insert(addr, i);
        // Datagrams from this client arrive on a shard chosen by address hashing, not
        // necessarily the owner: pick a deterministic "wrong" one half of the time.
        let n = self.shards.len();
        self.recv_shard.insert(i, (i * 7 + 3) % n);
        i
    }

    fn next_shard(&mut self) -> usize {
        let s = self.next_shard % self.shards.len();
        self.next_shard += 1;
        s
    }

    fn peer_config(&self, publish: Publish) -> PeerConfig {
        PeerConfig {
            candidates: vec![self.sfu_addr],
            publish,
        }
    }

    /// A client that offers one sendonly audio m-line (a LiveKit publisher connection).
    /// Returns the client index, or the engine's refusal.
    pub fn join_publisher(
        &mut self,
        name: &str,
        publish: Publish,
    ) -> Result<usize, stoa_sfu::SfuError> {
        let c = self.new_client(name);
        let shard = self.next_shard();
        let now = self.now;
        let client = &mut self.clients[c];
        let mut api = client.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("mic-stream".into()),
            Some(format!("cid-{name}")),
            None,
        );
        api.add_channel("_reliable".into());
        let (offer, pending) = api.apply().unwrap();
        let config = self.peer_config(publish);
        let (peer, answer) = match self.shards[shard].accept_offer(now, config, offer) {
            Ok(ok) => ok,
            Err(e) => {
                self.clients[c].alive = false;
                return Err(e);
            }
        };
        let client = &mut self.clients[c];
        client.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let pt = client
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        client.send = Some((mid, pt));
        client.peer = Some(peer);
        client.drain(now);
        self.by_peer.insert(peer, c);
        self.pump_events();
        Ok(c)
    }

    /// A client offering only a data channel (a LiveKit publisher connection of a listener).
    pub fn join_data_only(&mut self, name: &str, publish: Publish) -> usize {
        let c = self.new_client(name);
        let shard = self.next_shard();
        let now = self.now;
        let client = &mut self.clients[c];
        let mut api = client.rtc.sdp_api();
        api.add_channel("_reliable".into());
        let (offer, pending) = api.apply().unwrap();
        let config = self.peer_config(publish);
        let (peer, answer) = self.shards[shard].accept_offer(now, config, offer).unwrap();
        let client = &mut self.clients[c];
        client.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        client.peer = Some(peer);
        client.drain(now);
        self.by_peer.insert(peer, c);
        self.pump_events();
        c
    }

    /// A client for which the engine makes the offer (a LiveKit subscriber connection).
    pub fn join_subscriber(&mut self, name: &str) -> usize {
        let c = self.new_client(name);
        let shard = self.next_shard();
        let config = self.peer_config(Publish::Deny);
        let peer = self.shards[shard]
            .create_peer(self.now, config, &["_reliable", "_lossy"])
            .unwrap();
        self.clients[c].peer = Some(peer);
        self.by_peer.insert(peer, c);
        self.pump_events();
        c
    }

    /// Offer a client's own re-offer (e.g. adding a microphone later).
    pub fn client_reoffer_send(&mut self, c: usize) -> Result<(), stoa_sfu::SfuError> {
        let now = self.now;
        let peer = self.clients[c].peer.unwrap();
        let client = &mut self.clients[c];
        let mut api = client.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("mic-stream".into()),
            Some(format!("cid-late-{c}")),
            None,
        );
        let (offer, pending) = api.apply().unwrap();
        let shard = self.shard_of(peer);
        let answer = self.shards[shard].handle_offer(now, peer, offer)?;
        let client = &mut self.clients[c];
        client.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let pt = client
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        client.send = Some((mid, pt));
        client.drain(now);
        self.pump_events();
        Ok(())
    }

    pub fn peer(&self, c: usize) -> PeerId {
        self.clients[c].peer.unwrap()
    }

    /// The track published by client `c` (the latest one).
    pub fn track_of(&self, c: usize) -> TrackId {
        let peer = self.peer(c);
        self.seen
            .published
            .iter()
            .rev()
            .find(|(t, _)| t.peer == peer)
            .map(|(t, _)| *t)
            .expect("client published no track")
    }

    pub fn subscribe(&mut self, sub: usize, track: TrackId) -> SlotId {
        let peer = self.peer(sub);
        let shard = self.shard_of(peer);
        let label = MediaLabel {
            stream_id: format!("PA_{}|TR_{}", track.peer.as_u64(), track.mid),
            track_id: format!("TR_{}", track.mid),
        };
        let slot = self.shards[shard]
            .subscribe(self.now, peer, track, label)
            .unwrap();
        self.pump_events();
        slot
    }

    pub fn shard_for(&mut self, c: usize) -> &mut Sfu {
        let shard = self.shard_of(self.peer(c));
        &mut self.shards[shard]
    }

    /// Client `c` sends one 20 ms Opus packet with the given audio level.
    pub fn send_audio(&mut self, c: usize, level: i8) {
        let now = self.now;
        let client = &mut self.clients[c];
        if !client.alive {
            return;
        }
        let Some((mid, pt)) = client.send else {
            return;
        };
        let index = client.sent;
        let mut payload = vec![0u8; 60];
        payload[0..4].copy_from_slice(&index.to_be_bytes());
        payload[4] = client.publisher_byte;
        let ext = ExtensionValues {
            audio_level: Some(-level.abs()),
            voice_activity: Some(level.abs() < 50),
            ..Default::default()
        };
        client.send_frame(now, (mid, pt), payload, ext);
    }

    /// Handle engine outputs: route transmits into links, relays between shards, events into
    /// `seen` (answering offers for the clients).
    pub fn pump_events(&mut self) {
        loop {
            let mut progressed = false;
            for s in 0..self.shards.len() {
                loop {
                    match self.shards[s].poll_output() {
                        Output::Timeout(_) => break,
                        Output::Relay(r) => {
                            progressed = true;
                            self.deliver_relay(r);
                        }
                        Output::Event(e) => {
                            progressed = true;
                            self.on_event(s, e);
                        }
                    }
                }
                if !self.hold_taps {
                    while let Some(t) = self.shards[s].poll_tapped() {
                        self.tapped.push(t);
                    }
                }
                let mut sealed = Datagrams::default();
                self.shards[s].poll_datagrams(&mut sealed);
                for d in sealed.iter() {
                    progressed = true;
                    if let Some(&c) = self.by_addr.get(&d.destination) {
                        let pkt = Packet {
                            source: d.source,
                            destination: d.destination,
                            contents: d.contents.to_vec(),
                        };
                        self.clients[c]
                            .down
                            .handle_input(NetemInput::Packet(self.now, pkt));
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn deliver_relay(&mut self, r: Relay) {
        let to = r.to.0 as usize;
        let now = self.now;
        self.shards[to].handle_relay(now, r);
    }

    fn on_event(&mut self, shard: usize, e: Event) {
        let now = self.now;
        match e {
            Event::Offer { peer, offer, .. } => {
                let Some(&c) = self.by_peer.get(&peer) else {
                    return;
                };
                let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap();
                let client = &mut self.clients[c];
                let answer = client.rtc.sdp_api().accept_offer(offer).unwrap();
                client.drain(now);
                self.shards[shard].handle_answer(now, peer, answer).unwrap();
            }
            Event::TrackPublished { track, label } => self.seen.published.push((track, label)),
            Event::TrackUnpublished { track, .. } => self.seen.unpublished.push(track),
            Event::Connected(p) => self.seen.connected.push(p),
            // As the signaling layer does once it gives up on the client.
            Event::IceLost(p) => {
                let _ = self.shards[shard].close_peer(now, p);
            }
            Event::Disconnected(p) => self.seen.disconnected.push(p),
            Event::SpeakersChanged(list) => {
                for s in list {
                    self.seen.speakers.push((s.key, s.active));
                }
            }
            Event::ChannelData { peer, data, .. } => self.seen.channel_data.push((peer, data)),
            _ => {}
        }
    }

    /// Advance the clock to the next thing that happens (bounded by `limit`), and do it.
    pub fn step(&mut self, limit: Instant) {
        self.steps += 1;
        assert!(self.steps < 5_000_000, "simulation did not settle");
        let mut next = limit;
        for s in &mut self.shards {
            if let Output::Timeout(t) = s.poll_output() {
                next = next.min(t);
            }
        }
        for c in &self.clients {
            if c.alive {
                next = next.min(c.deadline);
            }
            next = next.min(c.up.poll_timeout()).min(c.down.poll_timeout());
        }
        self.now = self.now.max(next);
        let now = self.now;

        for i in 0..self.clients.len() {
            // Client → engine.
            self.clients[i].up.handle_input(NetemInput::Timeout(now));
            while let Some(out) = self.clients[i].up.poll_output() {
                let NetemOutput::Packet(p) = out else {
                    continue;
                };
                self.deliver_to_sfu(i, p);
            }
            // Engine → client.
            self.clients[i].down.handle_input(NetemInput::Timeout(now));
            while let Some(out) = self.clients[i].down.poll_output() {
                let NetemOutput::Packet(p) = out else {
                    continue;
                };
                let client = &mut self.clients[i];
                if !client.alive {
                    continue;
                }
                if let Ok(r) = Receive::new(Protocol::Udp, p.source, p.destination, &p.contents) {
                    client.rtc.handle_input(Input::Receive(now, r)).unwrap();
                    client.drain(now);
                }
            }
            let client = &mut self.clients[i];
            if client.alive && client.deadline <= now {
                client.rtc.handle_input(Input::Timeout(now)).unwrap();
                client.drain(now);
            }
        }
        for s in 0..self.shards.len() {
            self.shards[s].handle_timeout(now);
        }
        self.pump_events();
    }

    fn deliver_to_sfu(&mut self, client: usize, p: Packet) {
        let now = self.now;
        let mut shard = self.recv_shard[&client];
        for _ in 0..2 {
            match self.shards[shard].handle_receive(
                now,
                Protocol::Udp,
                p.source,
                p.destination,
                &p.contents,
            ) {
                Routed::Foreign(other) => shard = other.0 as usize,
                Routed::Handled | Routed::Dropped => break,
            }
        }
        self.pump_events();
    }

    /// Run until `cond` holds or `timeout` of simulated time passes; panics on timeout.
    pub fn run_until(&mut self, timeout: Duration, what: &str, mut cond: impl FnMut(&Sim) -> bool) {
        let limit = self.now + timeout;
        while !cond(self) {
            assert!(
                self.now < limit,
                "timed out after {timeout:?} waiting for {what}"
            );
            self.step(limit);
        }
    }

    /// Run for `d` of simulated time, with `each_tick` called every 20 ms (to send audio).
    pub fn run_for(&mut self, d: Duration, mut each_tick: impl FnMut(&mut Sim)) {
        let end = self.now + d;
        let mut tick = self.now;
        while self.now < end {
            if self.now >= tick {
                each_tick(self);
                tick += Duration::from_millis(20);
            }
            self.step(tick.min(end));
        }
    }

    pub fn all_connected(&self) -> bool {
        self.clients.iter().filter(|c| c.alive).all(|c| {
            c.connected
                && c.peer
                    .is_some_and(|p| self.shards[p.shard().0 as usize].is_connected(p))
        })
    }

    pub fn connect_all(&mut self) {
        self.run_until(Duration::from_secs(10), "all peers connected", |s| {
            s.all_connected()
        });
    }

    /// Drop a client without telling the engine (network gone).
    pub fn kill(&mut self, c: usize) {
        self.clients[c].alive = false;
    }
}

/// The primary block of a well-formed RED payload (the harness reads what the engine sent).
pub fn red_primary(payload: &[u8]) -> &[u8] {
    let mut pos = 0;
    let mut data = 0;
    while payload[pos] & 0x80 != 0 {
        data += (usize::from(payload[pos + 2] & 0x03) << 8) | usize::from(payload[pos + 3]);
        pos += 4;
    }
    &payload[pos + 1 + data..]
}

fn tracing_subscriber_init() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Check that `heard` (from one publisher) is a correctly rewritten stream: sequence numbers
/// move exactly with the publisher's index (gaps only where packets were lost), timestamps
/// move by 960 per index, and nothing arrives twice.
pub fn assert_rewrite_consistent(heard: &[Heard]) {
    assert!(!heard.is_empty(), "nothing heard");
    let first = &heard[0];
    let mut seen = std::collections::HashSet::new();
    for h in heard {
        let di = i64::from(h.index) - i64::from(first.index);
        let ds = h.seq_no as i64 - first.seq_no as i64;
        assert_eq!(
            ds, di,
            "sequence does not follow the publisher: {h:?} vs first {first:?}"
        );
        let dt = h.timestamp.wrapping_sub(first.timestamp) as i32;
        assert_eq!(
            i64::from(dt),
            di * 960,
            "timestamp does not follow the publisher: {h:?}"
        );
        assert!(seen.insert(h.seq_no), "duplicate {h:?}");
        assert_eq!(h.ssrc, first.ssrc, "subscriber SSRC changed");
    }
}
