//! Relayed media between two engines (an origin and an edge), simulated: str0m clients, both
//! engines' cores, and the links between them on a virtual clock. The edge's relay peer
//! offers to the origin, which accepts it as a single-connection subscriber; the origin's
//! publishers' tracks arrive on the edge as tracks of the relay peer, and the edge's own
//! listeners are subscribed to them like to any published track.
//!
//! Addresses are loopback-range labels only; nothing is sent anywhere.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, Heard, Packet, assert_rewrite_consistent};
use netem::{Input as NetemInput, Netem, NetemConfig, Output as NetemOutput};
use stoa_sfu::str0m::change::{SdpAnswer, SdpOffer};
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, MediaKind};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::ExtensionValues;
use stoa_sfu::str0m::{Candidate, Input, RtcConfig};
use stoa_sfu::{
    CommandKind, Datagrams, EngineCommand, Event, MediaLabel, Output, PeerConfig, PeerId, Publish,
    Sfu, SfuConfig, SfuError, ShardId, TrackId, UnpublishReason,
};

const SEC: Duration = Duration::from_secs(1);
const ORIGIN: &str = "127.0.0.1:7882";
const EDGE: &str = "127.0.0.2:7882";

/// The origin's subscriber peer for the (first) relay (ids are chosen by the owners).
fn relay_sub_id() -> PeerId {
    PeerId::new(ShardId(0), 1_000)
}

/// One relay link: the edge's relay peer, the origin's subscriber peer for it, and the
/// address of the link's own socket on the edge.
struct Link {
    edge: PeerId,
    origin: PeerId,
    local: SocketAddr,
    /// Whether the origin has created its subscriber peer for the link.
    accepted: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Node {
    Origin,
    Edge,
}

/// The link between the two engines in one direction: a fixed latency, and the RTP datagrams
/// (media, not RTCP, STUN or DTLS) to drop or hold back, counted from the first.
struct Wire {
    latency: Duration,
    in_flight: BTreeMap<(Instant, u64), Packet>,
    sent: u64,
    rtp: usize,
    drop_rtp: HashSet<usize>,
    /// RTP datagram index → extra delay (reordering behind the ones that follow).
    delay_rtp: Vec<(usize, Duration)>,
    cut: bool,
}

impl Wire {
    fn new() -> Self {
        Wire {
            latency: Duration::from_millis(15),
            in_flight: BTreeMap::new(),
            sent: 0,
            rtp: 0,
            drop_rtp: HashSet::new(),
            delay_rtp: Vec::new(),
            cut: false,
        }
    }

    fn send(&mut self, now: Instant, p: Packet) {
        if self.cut {
            return;
        }
        let mut at = now + self.latency;
        if is_rtp(&p.contents) {
            let i = self.rtp;
            self.rtp += 1;
            if self.drop_rtp.contains(&i) {
                return;
            }
            if let Some((_, extra)) = self.delay_rtp.iter().find(|(d, _)| *d == i) {
                at += *extra;
            }
        }
        self.sent += 1;
        self.in_flight.insert((at, self.sent), p);
    }

    fn next(&self) -> Option<Instant> {
        self.in_flight.keys().next().map(|(t, _)| *t)
    }

    fn due(&mut self, now: Instant) -> Vec<Packet> {
        let mut out = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        out
    }
}

/// SRTP media (RFC 7983: first octet 128..=191; RFC 5761: RTCP packet types 192..=223).
fn is_rtp(b: &[u8]) -> bool {
    b.len() > 12 && (128..=191).contains(&b[0]) && !(192..=223).contains(&b[1])
}

struct World {
    now: Instant,
    origin: Sfu,
    /// The edge's shard that owns the relay peers and the listeners.
    edge: Sfu,
    /// The edge's (first) relay peer.
    relay: PeerId,
    /// Every relay link, the first one's peers being `relay` and `relay_sub_id()`.
    links: Vec<Link>,
    origin_addr: SocketAddr,
    edge_addr: SocketAddr,
    clients: Vec<(Client, Node)>,
    /// Origin → edge and edge → origin.
    o2e: Wire,
    e2o: Wire,
    /// Every event of each engine, in order.
    origin_events: Vec<Event>,
    edge_events: Vec<Event>,
    /// The offers the relay peers made, as SDP text.
    relay_offers: Vec<String>,
    /// The payloads each publisher sent (by publisher byte), in order.
    sent_payloads: Vec<Vec<Vec<u8>>>,
    /// The destinations of the origin's RTP datagrams, one list per drain, in order.
    origin_rtp: Vec<Vec<SocketAddr>>,
    steps: u64,
}

fn engine(seed: u64, node: u8, addr: SocketAddr, start: Instant) -> Sfu {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = node;
    let mut config = SfuConfig::new(ShardId(0), s);
    config.candidates = vec![addr];
    Sfu::new(config, start)
}

/// The edge's relay link `i`: its peers on both engines and its own socket's address.
fn link_ids(i: usize) -> Link {
    Link {
        edge: PeerId::new(ShardId(0), 1_000 + i as u64),
        origin: PeerId::new(ShardId(0), 1_000 + i as u64),
        local: format!("127.0.0.2:{}", 50_010 + i).parse().unwrap(),
        accepted: false,
    }
}

impl World {
    fn new(seed: u64) -> Self {
        let start = Instant::now();
        let origin_addr: SocketAddr = ORIGIN.parse().unwrap();
        let edge_addr: SocketAddr = EDGE.parse().unwrap();
        let first = link_ids(0);
        World {
            now: start,
            origin: engine(seed, 1, origin_addr, start),
            edge: engine(seed, 2, edge_addr, start),
            relay: first.edge,
            links: vec![first],
            origin_addr,
            edge_addr,
            clients: Vec::new(),
            o2e: Wire::new(),
            e2o: Wire::new(),
            origin_events: Vec::new(),
            edge_events: Vec::new(),
            relay_offers: Vec::new(),
            sent_payloads: Vec::new(),
            origin_rtp: Vec::new(),
            steps: 0,
        }
    }

    fn sfu(&mut self, node: Node) -> &mut Sfu {
        match node {
            Node::Origin => &mut self.origin,
            Node::Edge => &mut self.edge,
        }
    }

    fn new_client(&mut self, name: &str, node: Node, red: bool) -> usize {
        let i = self.clients.len();
        let addr: SocketAddr = format!("127.0.1.{}:{}", 1 + i, 40000 + i).parse().unwrap();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, red)
            .build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let link = NetemConfig::new().latency(Duration::from_millis(10));
        let client = Client {
            name: name.to_owned(),
            addr,
            rtc,
            peer: None,
            down: Netem::new(link.seed(i as u64 * 2 + 1)),
            up: Netem::new(link.seed(i as u64 * 2 + 2)),
            deadline: self.now,
            connected: false,
            heard: Vec::new(),
            send: None,
            sent: 0,
            publisher_byte: i as u8,
            alive: true,
            send_red: red,
            last_opus: None,
        };
        self.clients.push((client, node));
        self.sent_payloads.push(Vec::new());
        i
    }

    /// A client offering one sendonly audio m-line to `node` (a publisher connection).
    fn publisher(&mut self, name: &str, node: Node, red: bool) -> usize {
        let c = self.new_client(name, node, red);
        let now = self.now;
        let addr = self.addr_of(node);
        let client = &mut self.clients[c].0;
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
        let config = PeerConfig {
            candidates: vec![addr],
            publish: Publish::Allow,
        };
        let (peer, answer) = self.sfu(node).accept_offer(now, config, offer).unwrap();
        let client = &mut self.clients[c].0;
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
        self.pump();
        c
    }

    /// A client the engine of `node` offers to (a subscriber connection).
    fn listener(&mut self, name: &str, node: Node) -> usize {
        let c = self.new_client(name, node, false);
        let addr = self.addr_of(node);
        let now = self.now;
        let config = PeerConfig {
            candidates: vec![addr],
            publish: Publish::Deny,
        };
        let peer = self
            .sfu(node)
            .create_peer(now, config, &["_reliable"])
            .unwrap();
        self.clients[c].0.peer = Some(peer);
        self.pump();
        c
    }

    fn addr_of(&self, node: Node) -> SocketAddr {
        match node {
            Node::Origin => self.origin_addr,
            Node::Edge => self.edge_addr,
        }
    }

    fn peer(&self, c: usize) -> PeerId {
        self.clients[c].0.peer.unwrap()
    }

    fn client_of(&self, node: Node, peer: PeerId) -> Option<usize> {
        self.clients
            .iter()
            .position(|(cl, n)| *n == node && cl.peer == Some(peer))
    }

    /// Client `c` sends one 20 ms Opus packet (RED around it if negotiated); the payload is
    /// its index, its publisher byte and bytes that depend on both.
    fn send_audio(&mut self, c: usize, level: i8) {
        let now = self.now;
        let client = &mut self.clients[c].0;
        let Some((mid, pt)) = client.send else {
            return;
        };
        let index = client.sent;
        let mut payload = vec![0u8; 60];
        payload[0..4].copy_from_slice(&index.to_be_bytes());
        payload[4] = client.publisher_byte;
        for (j, b) in payload.iter_mut().enumerate().skip(5) {
            *b = (index as usize * 31 + j * 7 + usize::from(client.publisher_byte)) as u8;
        }
        let ext = ExtensionValues {
            audio_level: Some(-level.abs()),
            voice_activity: Some(true),
            ..Default::default()
        };
        let opus = payload.clone();
        if client.send_frame(now, (mid, pt), payload, ext) {
            self.sent_payloads[c].push(opus);
        }
    }

    /// Drain both engines: events (routing the relay's negotiation between them and
    /// answering offers for clients), then datagrams onto the links.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            for node in [Node::Origin, Node::Edge] {
                loop {
                    match self.sfu(node).poll_output() {
                        Output::Timeout(_) => break,
                        Output::Relay(r) => panic!("one shard per engine: {r:?}"),
                        Output::Event(e) => {
                            progressed = true;
                            self.on_event(node, e);
                        }
                    }
                }
                let mut out = Datagrams::default();
                self.sfu(node).poll_datagrams(&mut out);
                if node == Node::Origin {
                    let rtp: Vec<SocketAddr> = out
                        .iter()
                        .filter(|d| is_rtp(d.contents))
                        .map(|d| d.destination)
                        .collect();
                    if !rtp.is_empty() {
                        self.origin_rtp.push(rtp);
                    }
                }
                for d in out.iter() {
                    progressed = true;
                    let p = Packet {
                        source: d.source,
                        destination: d.destination,
                        contents: d.contents.to_vec(),
                    };
                    let now = self.now;
                    let to_edge = d.destination == self.edge_addr
                        || self.links.iter().any(|l| l.local == d.destination);
                    if to_edge && node == Node::Origin {
                        self.o2e.send(now, p);
                    } else if d.destination == self.origin_addr && node == Node::Edge {
                        self.e2o.send(now, p);
                    } else if let Some((c, _)) = self
                        .clients
                        .iter_mut()
                        .find(|(c, _)| c.addr == d.destination)
                    {
                        c.down.handle_input(NetemInput::Packet(now, p));
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_event(&mut self, node: Node, e: Event) {
        let now = self.now;
        match (&e, node) {
            // The relay's negotiation, as the two nodes' signaling would carry it.
            (Event::Offer { peer, offer, .. }, Node::Edge)
                if self.links.iter().any(|l| l.edge == *peer) =>
            {
                let sdp = offer.to_sdp_string();
                self.relay_offers.push(sdp.clone());
                let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                let link = self.links.iter_mut().find(|l| l.edge == *peer).unwrap();
                let cmd = if link.accepted {
                    EngineCommand::HandleOffer {
                        peer: link.origin,
                        offer,
                    }
                } else {
                    link.accepted = true;
                    EngineCommand::AcceptOffer {
                        peer: link.origin,
                        publish: Publish::Deny,
                        offer,
                        single: true,
                        subscribe: Vec::new(),
                        relay: true,
                    }
                };
                self.origin.handle_command(now, cmd);
            }
            (Event::Answer { peer, answer, .. }, Node::Origin)
                if self.links.iter().any(|l| l.origin == *peer) =>
            {
                let answer = SdpAnswer::from_sdp_string(&answer.to_sdp_string()).unwrap();
                let link = self.links.iter().find(|l| l.origin == *peer).unwrap();
                let cmd = EngineCommand::HandleAnswer {
                    peer: link.edge,
                    answer,
                };
                self.edge.handle_command(now, cmd);
            }
            (Event::SectionsNeeded { peer, audios }, Node::Origin)
                if self.links.iter().any(|l| l.origin == *peer) =>
            {
                let link = self.links.iter().find(|l| l.origin == *peer).unwrap();
                let cmd = EngineCommand::OfferRelaySections {
                    peer: link.edge,
                    audios: *audios,
                };
                self.edge.handle_command(now, cmd);
            }
            // A client's subscriber connection.
            (Event::Offer { peer, offer, .. }, _) => {
                if let Some(c) = self.client_of(node, *peer) {
                    let offer = SdpOffer::from_sdp_string(&offer.to_sdp_string()).unwrap();
                    let client = &mut self.clients[c].0;
                    let answer = client.rtc.sdp_api().accept_offer(offer).unwrap();
                    client.drain(now);
                    let peer = *peer;
                    self.sfu(node).handle_answer(now, peer, answer).unwrap();
                }
            }
            _ => {}
        }
        match node {
            Node::Origin => self.origin_events.push(e),
            Node::Edge => self.edge_events.push(e),
        }
    }

    fn step(&mut self, limit: Instant) {
        self.steps += 1;
        assert!(self.steps < 2_000_000, "simulation did not settle");
        let mut next = limit;
        for node in [Node::Origin, Node::Edge] {
            if let Output::Timeout(t) = self.sfu(node).poll_output() {
                next = next.min(t);
            }
        }
        for (c, _) in &self.clients {
            if c.alive {
                next = next.min(c.deadline);
            }
            next = next.min(c.up.poll_timeout()).min(c.down.poll_timeout());
        }
        for w in [&self.o2e, &self.e2o] {
            if let Some(t) = w.next() {
                next = next.min(t);
            }
        }
        self.now = self.now.max(next);
        let now = self.now;

        for p in self.o2e.due(now) {
            self.receive(Node::Edge, p);
        }
        for p in self.e2o.due(now) {
            self.receive(Node::Origin, p);
        }
        for i in 0..self.clients.len() {
            let node = self.clients[i].1;
            self.clients[i].0.up.handle_input(NetemInput::Timeout(now));
            while let Some(out) = self.clients[i].0.up.poll_output() {
                if let NetemOutput::Packet(p) = out {
                    self.receive(node, p);
                }
            }
            self.clients[i]
                .0
                .down
                .handle_input(NetemInput::Timeout(now));
            while let Some(out) = self.clients[i].0.down.poll_output() {
                let NetemOutput::Packet(p) = out else {
                    continue;
                };
                let client = &mut self.clients[i].0;
                if let Ok(r) = Receive::new(Protocol::Udp, p.source, p.destination, &p.contents) {
                    client.rtc.handle_input(Input::Receive(now, r)).unwrap();
                    client.drain(now);
                }
            }
            let client = &mut self.clients[i].0;
            if client.deadline <= now {
                client.rtc.handle_input(Input::Timeout(now)).unwrap();
                client.drain(now);
            }
        }
        self.origin.handle_timeout(now);
        self.edge.handle_timeout(now);
        self.pump();
    }

    fn receive(&mut self, node: Node, p: Packet) {
        let now = self.now;
        self.sfu(node)
            .handle_receive(now, Protocol::Udp, p.source, p.destination, &p.contents);
        self.pump();
    }

    fn run_until(&mut self, timeout: Duration, what: &str, mut cond: impl FnMut(&World) -> bool) {
        let limit = self.now + timeout;
        while !cond(self) {
            if self.now >= limit {
                for e in &self.origin_events {
                    eprintln!("origin: {}", describe(e));
                }
                for e in &self.edge_events {
                    eprintln!("edge: {}", describe(e));
                }
                for o in &self.relay_offers {
                    eprintln!("relay offer:\n{o}");
                }
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            self.step(limit);
        }
    }

    /// Run for `d`, calling `tick` every 20 ms.
    fn run_for(&mut self, d: Duration, mut tick: impl FnMut(&mut World)) {
        let end = self.now + d;
        let mut at = self.now;
        while self.now < end {
            if self.now >= at {
                tick(self);
                at += Duration::from_millis(20);
            }
            self.step(at.min(end));
        }
    }

    fn clients_connected(&self) -> bool {
        self.clients.iter().all(|(c, node)| {
            let engine = match node {
                Node::Origin => &self.origin,
                Node::Edge => &self.edge,
            };
            c.connected && c.peer.is_some_and(|p| engine.is_connected(p))
        })
    }

    fn relay_connected(&self) -> bool {
        self.links
            .iter()
            .all(|l| self.edge.is_connected(l.edge) && self.origin.is_connected(l.origin))
    }

    /// The track the origin filed for client `c`.
    fn origin_track(&self, c: usize) -> TrackId {
        let peer = self.peer(c);
        self.origin_events
            .iter()
            .find_map(|e| match e {
                Event::TrackPublished { track, .. } if track.peer == peer => Some(*track),
                _ => None,
            })
            .expect("no track published")
    }

    /// The relayed tracks the edge filed, with their labels and SSRCs.
    fn relayed(&self) -> Vec<(TrackId, MediaLabel, Option<u32>)> {
        self.edge_events
            .iter()
            .filter_map(|e| match e {
                Event::RelayTrackPublished { track, label, ssrc } => {
                    Some((*track, label.clone(), *ssrc))
                }
                _ => None,
            })
            .collect()
    }

    /// The edge track relayed under `label`.
    fn relayed_track(&self, label: &MediaLabel) -> Option<TrackId> {
        self.relayed()
            .into_iter()
            .find(|(_, l, _)| l == label)
            .map(|(t, _, _)| t)
    }

    /// Create the relay (the edge offers, the origin accepts) and connect it.
    fn link(&mut self, audios: u32) {
        self.open_link(0, audios);
    }

    /// Create relay link `i` (one more than those made so far, or the first), from its own
    /// socket's address, and connect it.
    fn open_link(&mut self, i: usize, audios: u32) {
        if i == self.links.len() {
            self.links.push(link_ids(i));
        }
        let now = self.now;
        let (peer, local) = (self.links[i].edge, self.links[i].local);
        // A link on the edge's own address is one without a socket of its own.
        let local = (local != self.edge_addr).then_some(local);
        self.edge.handle_command(
            now,
            EngineCommand::CreateRelayPeer {
                peer,
                audios,
                channels: vec!["_relay".into()],
                local,
            },
        );
        self.pump();
        self.run_until(10 * SEC, "relay connected", |w| w.relay_connected());
    }

    /// The origin subscribes the relay to client `c`'s track, labelled as its signaling
    /// would (the participant and track sids in the msid).
    fn relay_track_of(&mut self, c: usize) -> MediaLabel {
        self.relay_track_to(0, c)
    }

    /// The origin subscribes relay link `i` to client `c`'s track.
    fn relay_track_to(&mut self, i: usize, c: usize) -> MediaLabel {
        let track = self.origin_track(c);
        let name = self.clients[c].0.name.clone();
        let label = MediaLabel {
            stream_id: format!("PA_{name}|TR_{name}"),
            track_id: format!("TR_{name}"),
        };
        let now = self.now;
        self.origin.handle_command(
            now,
            EngineCommand::Subscribe {
                track,
                label: label.clone(),
                peers: vec![self.links[i].origin],
            },
        );
        self.pump();
        label
    }

    fn subscribe_on_edge(&mut self, listener: usize, track: TrackId, label: MediaLabel) {
        let now = self.now;
        let peers = vec![self.peer(listener)];
        self.edge.handle_command(
            now,
            EngineCommand::Subscribe {
                track,
                label,
                peers,
            },
        );
        self.pump();
    }

    fn heard_from(&self, listener: usize, publisher: usize) -> Vec<Heard> {
        let byte = self.clients[publisher].0.publisher_byte;
        self.clients[listener]
            .0
            .heard
            .iter()
            .filter(|h| h.publisher == byte)
            .cloned()
            .collect()
    }

    /// Every packet `listener` heard from `publisher` carries exactly the Opus payload the
    /// publisher sent with that index.
    fn assert_payloads_match(&self, listener: usize, publisher: usize) {
        let heard = self.heard_from(listener, publisher);
        assert!(!heard.is_empty(), "nothing heard");
        for h in &heard {
            let sent = &self.sent_payloads[publisher][h.index as usize];
            assert_eq!(&h.opus, sent, "payload of index {} differs", h.index);
        }
    }
}

fn describe(e: &Event) -> String {
    match e {
        Event::Answer {
            peer,
            answer,
            sending,
        } => {
            format!("Answer {peer} {sending:?}\n{}", answer.to_sdp_string())
        }
        Event::Offer { peer, .. } => format!("Offer {peer}"),
        other => format!("{other:?}"),
    }
}

/// Every live audio m-line of an SDP is `recvonly`.
fn only_recvonly_audio(sdp: &str) -> bool {
    let mut audio = false;
    let mut ok = true;
    let mut any = false;
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            audio = line.starts_with("m=audio") && !line.starts_with("m=audio 0 ");
            any |= audio;
        } else if audio && matches!(line, "a=sendonly" | "a=sendrecv" | "a=inactive") {
            ok = false;
        }
    }
    any && ok && !sdp.contains("m=video")
}

/// The whole path: two publishers on the origin, a relay from the edge that asks for sections
/// as the origin subscribes it, two relayed tracks filed on the edge with the origin's
/// labels, and an edge listener that receives both publishers' audio byte for byte, with its
/// audio level, while the edge detects the speaker.
#[test]
fn edge_listener_hears_origin_publishers_through_the_relay() {
    let mut w = World::new(21);
    let alice = w.publisher("alice", Node::Origin, false);
    let bob = w.publisher("bob", Node::Origin, false);
    w.run_until(10 * SEC, "publishers connected", |w| w.clients_connected());
    w.link(1);

    // The relay offered recvonly audio only (and a data channel), and the origin took it as
    // a subscriber that may not publish.
    assert!(
        only_recvonly_audio(&w.relay_offers[0]),
        "{}",
        w.relay_offers[0]
    );
    assert!(w.relay_offers[0].contains("m=application"));
    assert!(
        !w.origin_events
            .iter()
            .any(|e| matches!(e, Event::CommandFailed { .. }))
    );
    assert!(
        !w.edge_events
            .iter()
            .any(|e| matches!(e, Event::CommandFailed { .. }))
    );
    assert!(
        w.relayed().is_empty(),
        "nothing subscribed yet, nothing relayed"
    );

    // Two subscriptions in a row: the first takes the offered section, the second needs one
    // more; the origin asks, the edge offers, until both m-lines are labelled.
    let la = w.relay_track_of(alice);
    let lb = w.relay_track_of(bob);
    w.run_until(5 * SEC, "both tracks relayed", |w| {
        w.relayed_track(&la).is_some() && w.relayed_track(&lb).is_some()
    });
    assert!(w.relay_offers.len() >= 2, "sections were asked for");
    for sdp in &w.relay_offers {
        assert!(only_recvonly_audio(sdp), "{sdp}");
    }
    let relayed = w.relayed();
    assert_eq!(relayed.len(), 2, "{relayed:?}");
    for (track, _, ssrc) in &relayed {
        assert_eq!(track.peer, w.relay);
        assert!(ssrc.is_some(), "the origin announced the m-line's SSRC");
    }
    let (ta, tb) = (w.relayed_track(&la).unwrap(), w.relayed_track(&lb).unwrap());
    assert_ne!(ta.mid, tb.mid);

    // A new offer asked for while every m-line carries a track: it adds one spare m-line
    // (str0m makes no offer without a change), which the origin leaves idle; nothing
    // relayed changes.
    let audio_lines = |sdp: &str| sdp.matches("m=audio").count();
    let offers = w.relay_offers.len();
    let before = audio_lines(&w.relay_offers[offers - 1]);
    let (now, relay) = (w.now, w.relay);
    w.edge.handle_command(
        now,
        EngineCommand::OfferRelaySections {
            peer: relay,
            audios: 0,
        },
    );
    w.pump();
    w.run_for(SEC / 2, |_| {});
    assert_eq!(w.relay_offers.len(), offers + 1);
    assert_eq!(audio_lines(&w.relay_offers[offers]), before + 1);
    assert_eq!(w.relayed().len(), 2);
    assert!(
        !w.edge_events
            .iter()
            .any(|e| matches!(e, Event::TrackUnpublished { .. }))
    );

    // The relay's data channel carries the origin's messages (speaker changes, reactions).
    let channel = w
        .origin_events
        .iter()
        .find_map(|e| match e {
            Event::ChannelOpen {
                peer,
                channel,
                label,
            } if *peer == relay_sub_id() => {
                assert_eq!(label, "_relay");
                Some(*channel)
            }
            _ => None,
        })
        .expect("relay channel open on the origin");
    let now = w.now;
    w.origin.handle_command(
        now,
        EngineCommand::SendData {
            targets: vec![(relay_sub_id(), channel)],
            binary: true,
            data: std::sync::Arc::from(&b"speakers: alice"[..]),
        },
    );
    w.pump();
    w.run_until(SEC, "relay data", |w| {
        w.edge_events.iter().any(|e| {
            matches!(e, Event::ChannelData { peer, data, .. }
                if *peer == w.relay && data == b"speakers: alice")
        })
    });

    // A listener on the edge, subscribed to the relayed tracks as to published ones.
    let carol = w.listener("carol", Node::Edge);
    w.run_until(10 * SEC, "listener connected", |w| w.clients_connected());
    w.subscribe_on_edge(carol, ta, la.clone());
    w.subscribe_on_edge(carol, tb, lb.clone());
    assert_eq!(w.edge.subscriber_count(ta), 1);
    assert_eq!(w.edge.subscriber_count(tb), 1);
    w.run_for(SEC / 2, |_| {});

    w.run_for(3 * SEC, |w| {
        w.send_audio(alice, 20);
        w.send_audio(bob, 90);
    });
    w.run_for(SEC / 2, |_| {});

    for publisher in [alice, bob] {
        let heard = w.heard_from(carol, publisher);
        let sent = w.clients[publisher].0.sent as usize;
        assert!(
            heard.len() + 5 >= sent && heard.len() <= sent,
            "heard {} of {sent} packets",
            heard.len()
        );
        assert_rewrite_consistent(&heard);
        w.assert_payloads_match(carol, publisher);
    }
    // The audio level travelled over both hops.
    let levels: HashSet<Option<i8>> = w
        .heard_from(carol, alice)
        .iter()
        .map(|h| h.audio_level)
        .collect();
    assert_eq!(levels, HashSet::from([Some(-20)]));
    // Distinct streams for distinct tracks.
    assert_ne!(
        w.heard_from(carol, alice)[0].ssrc,
        w.heard_from(carol, bob)[0].ssrc
    );
    // The edge's speaker detection sees the loud relayed track, not the quiet one.
    let spoke: Vec<TrackId> = w
        .edge_events
        .iter()
        .filter_map(|e| match e {
            Event::SpeakersChanged(list) => Some(list.iter().filter(|s| s.active).map(|s| s.key)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(spoke.contains(&ta), "{spoke:?}");
    assert!(!spoke.contains(&tb), "{spoke:?}");
    let stats = w.edge.stats();
    assert!(stats.rtp_in > 0 && stats.rtp_forwarded > 0, "{stats:?}");
    assert_eq!(stats.rtp_dropped_unauthorized, 0, "{stats:?}");
    // Once per edge: the origin forwarded each packet once to the relay, whatever the number
    // of listeners behind it.
    assert_eq!(w.origin.subscriber_count(w.origin_track(alice)), 1);
}

/// Fill the origin–edge path up to a listener hearing `publisher` (with RED or not).
fn linked_room(seed: u64, red: bool) -> (World, usize, usize, TrackId) {
    let mut w = World::new(seed);
    let alice = w.publisher("alice", Node::Origin, red);
    w.run_until(10 * SEC, "publisher connected", |w| w.clients_connected());
    w.link(1);
    let la = w.relay_track_of(alice);
    w.run_until(5 * SEC, "track relayed", |w| w.relayed_track(&la).is_some());
    let ta = w.relayed_track(&la).unwrap();
    let carol = w.listener("carol", Node::Edge);
    w.run_until(10 * SEC, "listener connected", |w| w.clients_connected());
    w.subscribe_on_edge(carol, ta, la);
    w.run_for(SEC / 2, |_| {});
    (w, alice, carol, ta)
}

/// The origin serves the relay link first in each fan-out, before its own listeners who
/// subscribed earlier: the edge's listeners wait for one packet on the origin, not for its
/// whole batch.
#[test]
fn origin_sends_to_the_relay_before_its_own_listeners() {
    let mut w = World::new(25);
    let alice = w.publisher("alice", Node::Origin, false);
    let bob = w.listener("bob", Node::Origin);
    let dan = w.listener("dan", Node::Origin);
    w.run_until(10 * SEC, "clients connected", |w| w.clients_connected());
    let track = w.origin_track(alice);
    let now = w.now;
    let peers = vec![w.peer(bob), w.peer(dan)];
    w.origin.handle_command(
        now,
        EngineCommand::Subscribe {
            track,
            label: MediaLabel {
                stream_id: "PA_alice|TR_alice".into(),
                track_id: "TR_alice".into(),
            },
            peers,
        },
    );
    w.pump();
    w.link(1);
    let la = w.relay_track_of(alice);
    w.run_until(5 * SEC, "track relayed", |w| w.relayed_track(&la).is_some());
    w.run_for(SEC / 2, |_| {});
    w.origin_rtp.clear();
    w.run_for(SEC, |w| w.send_audio(alice, 30));

    assert!(!w.heard_from(bob, alice).is_empty(), "bob heard nothing");
    assert!(!w.heard_from(dan, alice).is_empty(), "dan heard nothing");
    let (bob_addr, dan_addr) = (w.clients[bob].0.addr, w.clients[dan].0.addr);
    // Each of alice's packets is one drain with three RTP datagrams: the relay's and the
    // two listeners'.
    let fanouts: Vec<&Vec<SocketAddr>> = w.origin_rtp.iter().filter(|b| b.len() == 3).collect();
    assert!(fanouts.len() >= 40, "{} fan-outs seen", fanouts.len());
    for b in fanouts {
        assert_eq!(
            b[0], w.links[0].local,
            "the relay is not served first: {b:?}"
        );
        assert!(
            b[1..].contains(&bob_addr) && b[1..].contains(&dan_addr),
            "{b:?}"
        );
    }
}

/// Packets lost and reordered on the origin → edge link: the listener hears every other
/// packet, once, in a stream whose sequence numbers and timestamps still follow the
/// publisher's, and the edge counts the gaps.
#[test]
fn relay_link_survives_loss_and_reordering() {
    let (mut w, alice, carol, _) = linked_room(22, false);
    w.o2e.drop_rtp = HashSet::from([20, 21, 45]);
    // Held back 50 ms: it arrives after the two that follow it.
    w.o2e.delay_rtp = vec![(70, Duration::from_millis(50))];
    w.run_for(3 * SEC, |w| w.send_audio(alice, 30));
    w.run_for(SEC / 2, |_| {});

    let heard = w.heard_from(carol, alice);
    let sent = w.clients[alice].0.sent as usize;
    assert_eq!(heard.len(), sent - 3, "all but the three dropped");
    assert_rewrite_consistent(&heard);
    w.assert_payloads_match(carol, alice);
    // The held-back packet arrived late and was still forwarded.
    let order: Vec<u32> = heard.iter().map(|h| h.index).collect();
    assert!(order.windows(2).any(|p| p[1] < p[0]), "nothing reordered");
    let indices: HashSet<u32> = order.iter().copied().collect();
    assert_eq!(indices.len(), sent - 3);
    let stats = w.edge.stats();
    // Three lost, and the late one counted as a gap before it came.
    assert_eq!(stats.rtp_lost, 4, "{stats:?}");
    assert_eq!(stats.rtp_recovered, 0, "{stats:?}");
}

/// With RED from the publisher (passed through by the origin), the edge rebuilds packets lost
/// on the relay link from the redundant blocks and forwards them to a listener that takes
/// plain Opus: it hears every packet.
#[test]
fn edge_rebuilds_relay_losses_from_red() {
    let (mut w, alice, carol, _) = linked_room(23, true);
    // Isolated losses: each one's copy rides in the next packet.
    w.o2e.drop_rtp = HashSet::from([15, 40, 77]);
    w.run_for(3 * SEC, |w| w.send_audio(alice, 30));
    w.run_for(SEC / 2, |_| {});

    let heard = w.heard_from(carol, alice);
    let sent = w.clients[alice].0.sent as usize;
    assert!(
        heard.iter().all(|h| h.red.is_none()),
        "the listener takes plain Opus"
    );
    let first = heard[0].index as usize;
    assert_eq!(heard.len(), sent - first, "every packet from the first on");
    assert_rewrite_consistent(&heard);
    w.assert_payloads_match(carol, alice);
    let stats = w.edge.stats();
    assert_eq!(stats.rtp_lost, 3, "{stats:?}");
    assert_eq!(stats.rtp_recovered, 3, "{stats:?}");
}

/// The origin drops the relay (its signaling closed the subscriber): the edge's relay peer
/// loses ICE, and closing it unpublishes the relayed track and idles the listener's slot;
/// closing it directly does the same at once.
#[test]
fn relay_loss_unpublishes_relayed_tracks() {
    let (mut w, alice, carol, ta) = linked_room(24, false);
    w.run_for(SEC, |w| w.send_audio(alice, 30));
    assert!(!w.heard_from(carol, alice).is_empty());

    let now = w.now;
    w.origin.handle_command(
        now,
        EngineCommand::ClosePeer {
            peer: relay_sub_id(),
        },
    );
    w.pump();
    w.run_until(60 * SEC, "the edge notices the relay is gone", |w| {
        w.edge_events
            .iter()
            .any(|e| matches!(e, Event::IceLost(p) | Event::Disconnected(p) if *p == w.relay))
    });
    // As the owner does when it gives up on a peer.
    if w.edge.is_relay_peer(w.relay) {
        let now = w.now;
        w.edge
            .handle_command(now, EngineCommand::ClosePeer { peer: w.relay });
        w.pump();
    }
    let unpublished = w.edge_events.iter().any(|e| {
        matches!(e, Event::TrackUnpublished { track, reason: UnpublishReason::PeerGone }
            if *track == ta)
    });
    assert!(unpublished, "relayed track not unpublished");
    assert!(
        w.edge_events
            .iter()
            .any(|e| matches!(e, Event::Disconnected(p) if *p == w.relay))
    );
    assert_eq!(w.edge.subscriber_count(ta), 0);
    assert_eq!(w.edge.stats().tracks, 0);
    // The listener's connection is untouched.
    assert!(w.edge.is_connected(w.peer(carol)));
}

/// A relay peer only receives and only offers: subscribing it (which would send toward the
/// origin), a remote offer to it, changing its publish permission and an ICE restart are
/// refused; an offer that tried to publish would be refused by the origin anyway.
#[test]
fn relay_peer_never_sends() {
    let (mut w, _alice, carol, ta) = linked_room(25, false);
    let now = w.now;
    let label = MediaLabel {
        stream_id: "PA_x|TR_x".into(),
        track_id: "TR_x".into(),
    };
    let err = w.edge.subscribe(now, w.relay, ta, label).unwrap_err();
    assert!(matches!(err, SfuError::RelayPeer(_)), "{err}");
    let err = w
        .edge
        .set_publish(now, w.relay, Publish::Allow)
        .unwrap_err();
    assert!(matches!(err, SfuError::RelayPeer(_)), "{err}");
    let err = w.edge.restart_ice(now, w.relay).unwrap_err();
    assert!(matches!(err, SfuError::RelayPeer(_)), "{err}");

    // A remote offer (here: one a client would send) is refused as a command.
    let mut rtc = RtcConfig::new().build(now);
    let mut api = rtc.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, _) = api.apply().unwrap();
    w.edge.handle_command(
        now,
        EngineCommand::HandleOffer {
            peer: w.relay,
            offer,
        },
    );
    w.pump();
    assert!(w.edge_events.iter().any(|e| matches!(
        e,
        Event::CommandFailed { peer, command: CommandKind::HandleOffer, error: SfuError::RelayPeer(_) }
            if *peer == w.relay
    )));
    // Asking an ordinary peer for relay sections is refused too.
    let peer = w.peer(carol);
    w.edge
        .handle_command(now, EngineCommand::OfferRelaySections { peer, audios: 1 });
    w.pump();
    assert!(w.edge_events.iter().any(|e| matches!(
        e,
        Event::CommandFailed {
            command: CommandKind::OfferRelaySections,
            error: SfuError::NotRelayPeer(_),
            ..
        }
    )));
    // Nothing of the relay's m-lines carries media toward the origin: the origin received
    // no RTP from it.
    assert_eq!(w.origin.stats().rtp_dropped_unauthorized, 0);
    // The relayed track is still there and fed.
    assert_eq!(w.edge.subscriber_count(ta), 1);
}

/// Two rooms relayed between the same two engines: two relay links from one edge to one
/// origin, each from a socket of its own (same origin address, distinct local addresses), so
/// their 5-tuples differ. Each link carries its room's publisher only, and each edge listener,
/// subscribed to its room's relayed track, hears that publisher byte for byte and nothing of
/// the other room. Closing one link leaves the other carrying.
#[test]
fn two_links_between_the_same_engines_carry_their_own_rooms() {
    let mut w = World::new(27);
    let alice = w.publisher("alice", Node::Origin, false);
    let bob = w.publisher("bob", Node::Origin, false);
    w.run_until(10 * SEC, "publishers connected", |w| w.clients_connected());
    w.open_link(0, 1);
    w.open_link(1, 1);
    let (first, second) = (w.links[0].edge, w.links[1].edge);
    assert_ne!(w.links[0].local, w.links[1].local);
    // Each link's offer names its own socket as its only candidate.
    assert_eq!(w.relay_offers.len(), 2);
    for (offer, link) in w.relay_offers.iter().zip(&w.links) {
        assert!(
            offer.contains(&format!(" {} typ host", link.local.port())),
            "{offer}"
        );
        assert_eq!(offer.matches("a=candidate:").count(), 1, "{offer}");
    }

    // Room one (alice) on the first link, room two (bob) on the second.
    let la = w.relay_track_to(0, alice);
    let lb = w.relay_track_to(1, bob);
    w.run_until(5 * SEC, "both tracks relayed", |w| {
        w.relayed_track(&la).is_some() && w.relayed_track(&lb).is_some()
    });
    let (ta, tb) = (w.relayed_track(&la).unwrap(), w.relayed_track(&lb).unwrap());
    assert_eq!(ta.peer, first, "alice's track arrives on the first link");
    assert_eq!(tb.peer, second, "bob's track arrives on the second link");
    assert_eq!(w.relayed().len(), 2, "{:?}", w.relayed());

    let carol = w.listener("carol", Node::Edge);
    let dave = w.listener("dave", Node::Edge);
    w.run_until(10 * SEC, "listeners connected", |w| w.clients_connected());
    w.subscribe_on_edge(carol, ta, la);
    w.subscribe_on_edge(dave, tb, lb);
    w.run_for(SEC / 2, |_| {});
    w.run_for(3 * SEC, |w| {
        w.send_audio(alice, 20);
        w.send_audio(bob, 40);
    });
    w.run_for(SEC / 2, |_| {});

    for (listener, own, other) in [(carol, alice, bob), (dave, bob, alice)] {
        let heard = w.heard_from(listener, own);
        let sent = w.clients[own].0.sent as usize;
        assert!(
            heard.len() + 5 >= sent && heard.len() <= sent,
            "heard {} of {sent} packets",
            heard.len()
        );
        assert_rewrite_consistent(&heard);
        w.assert_payloads_match(listener, own);
        assert!(
            w.heard_from(listener, other).is_empty(),
            "a listener heard the other room's publisher"
        );
    }
    // The origin sent each room's packets to its own link's address only.
    let stats = w.edge.stats();
    assert_eq!(stats.datagrams_unknown, 0, "{stats:?}");
    assert_eq!(stats.rtp_dropped_unauthorized, 0, "{stats:?}");

    // Closing the first link ends room one's relayed track; room two keeps flowing.
    let now = w.now;
    w.edge
        .handle_command(now, EngineCommand::ClosePeer { peer: first });
    w.pump();
    assert!(w.edge_events.iter().any(|e| matches!(
        e,
        Event::TrackUnpublished { track, reason: UnpublishReason::PeerGone } if *track == ta
    )));
    let before = w.heard_from(dave, bob).len();
    w.run_for(SEC, |w| w.send_audio(bob, 40));
    w.run_for(SEC / 2, |_| {});
    assert!(
        w.heard_from(dave, bob).len() >= before + 45,
        "the second link stopped with the first"
    );
    assert!(w.edge.is_connected(second));
    w.assert_payloads_match(dave, bob);
}

/// Without a socket of its own (`local: None`, an engine driven without the shell), a relay
/// peer uses the shard's address: its offer names it, and the origin's datagrams to it reach
/// the relay peer.
#[test]
fn a_relay_peer_without_a_socket_of_its_own_uses_the_shards_address() {
    let mut w = World::new(28);
    w.links[0].local = w.edge_addr;
    let alice = w.publisher("alice", Node::Origin, false);
    w.run_until(10 * SEC, "publisher connected", |w| w.clients_connected());
    w.link(1);
    let port = format!(" {} typ host", w.edge_addr.port());
    assert!(w.relay_offers[0].contains(&port), "{}", w.relay_offers[0]);
    let la = w.relay_track_of(alice);
    w.run_until(5 * SEC, "track relayed", |w| w.relayed_track(&la).is_some());
    let ta = w.relayed_track(&la).unwrap();
    let carol = w.listener("carol", Node::Edge);
    w.run_until(10 * SEC, "listener connected", |w| w.clients_connected());
    w.subscribe_on_edge(carol, ta, la);
    w.run_for(SEC / 2, |_| {});
    w.run_for(2 * SEC, |w| w.send_audio(alice, 30));
    w.run_for(SEC / 2, |_| {});
    let heard = w.heard_from(carol, alice);
    let sent = w.clients[alice].0.sent as usize;
    assert!(heard.len() + 5 >= sent, "heard {} of {sent}", heard.len());
    w.assert_payloads_match(carol, alice);
}
