//! The engine over real UDP sockets on 127.0.0.1: two shards sharing one port, str0m clients
//! on their own sockets. Bounded in time; nothing leaves loopback.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_sfu::str0m::change::SdpOffer;
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, MediaKind, Mid, Pt};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use stoa_sfu::str0m::{Candidate, Event as RtcEvent, Input, Output as RtcOutput, Rtc, RtcConfig};
use stoa_sfu::{EngineCommand, ShardId};
use stoa_sfu::{Event, MediaLabel, PeerId, Publish, TrackId};
use tokio::sync::mpsc::Receiver;

struct Client {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    connected: bool,
    /// (sequence number, payload index) of every RTP packet received.
    heard: Vec<(u64, u32)>,
    /// The payload of every RTP packet received.
    payloads: Vec<Vec<u8>>,
    send: Option<(Mid, Pt)>,
    /// The byte filling this client's payloads after their index.
    fill: u8,
}

impl Client {
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
        Client {
            rtc,
            socket,
            addr,
            connected: false,
            heard: vec![],
            payloads: vec![],
            send: None,
            fill: 7,
        }
    }

    /// Read the socket, tick the clock, send what str0m wants sent.
    fn pump(&mut self) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            if let Ok(r) = Receive::new(Protocol::Udp, from, self.addr, &buf[..n]) {
                self.rtc
                    .handle_input(Input::Receive(Instant::now(), r))
                    .unwrap();
                self.drain();
            }
        }
        self.rtc
            .handle_input(Input::Timeout(Instant::now()))
            .unwrap();
        self.drain();
    }

    fn drain(&mut self) {
        loop {
            match self.rtc.poll_output().unwrap() {
                RtcOutput::Timeout(_) => break,
                RtcOutput::Transmit(t) => {
                    let _ = self.socket.send_to(&t.contents, t.destination);
                }
                RtcOutput::Event(RtcEvent::Connected) => self.connected = true,
                RtcOutput::Event(RtcEvent::RtpPacket(p)) => {
                    let b = &p.payload;
                    self.heard
                        .push((*p.seq_no, u32::from_be_bytes([b[0], b[1], b[2], b[3]])));
                    self.payloads.push(p.payload.to_vec());
                }
                RtcOutput::Event(_) => {}
            }
        }
    }

    fn send_audio(&mut self, index: u32) {
        let (mid, pt) = self.send.unwrap();
        let payload = payload_of(index, self.fill);
        let ext = ExtensionValues {
            audio_level: Some(-30),
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let tx = api.stream_tx_by_mid(mid, None).unwrap();
        tx.write_rtp(
            RtpWrite::new(
                pt,
                SeqNo::from(u64::from(index) + 1),
                index * 960,
                Instant::now(),
                payload,
            )
            .ext_vals(ext),
        );
        self.drain();
    }
}

/// What a client sends as packet `index`: the index, then `fill`.
fn payload_of(index: u32, fill: u8) -> Vec<u8> {
    let mut payload = vec![fill; 80];
    payload[0..4].copy_from_slice(&index.to_be_bytes());
    payload
}

/// Clients driven by a background thread every millisecond.
struct Clients {
    list: Arc<Mutex<Vec<Client>>>,
    stop: Arc<AtomicBool>,
}

impl Clients {
    fn start() -> Self {
        let list = Arc::new(Mutex::new(Vec::<Client>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (list.clone(), stop.clone());
        std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::Relaxed) && Instant::now() < end {
                for c in l.lock().unwrap().iter_mut() {
                    c.pump();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Clients { list, stop }
    }

    fn with<T>(&self, i: usize, f: impl FnOnce(&mut Client) -> T) -> T {
        f(&mut self.list.lock().unwrap()[i])
    }

    fn add(&self, c: Client) -> usize {
        let mut l = self.list.lock().unwrap();
        l.push(c);
        l.len() - 1
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn next_offer(events: &mut Receiver<Event>, peer: PeerId, seen: &mut Vec<Event>) -> SdpOffer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(remaining, events.recv())
            .await
            .expect("no offer in time")
            .unwrap();
        match e {
            Event::Offer { peer: p, offer, .. } if p == peer => return offer,
            other => seen.push(other),
        }
    }
}

async fn next_answer(
    events: &mut Receiver<Event>,
    peer: PeerId,
    seen: &mut Vec<Event>,
) -> stoa_sfu::str0m::change::SdpAnswer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(remaining, events.recv())
            .await
            .expect("no answer in time")
            .unwrap();
        match e {
            Event::Answer {
                peer: p, answer, ..
            } if p == peer => return answer,
            Event::CommandFailed { peer: p, error, .. } if p == peer => panic!("refused: {error}"),
            other => seen.push(other),
        }
    }
}

async fn wait_for(
    events: &mut Receiver<Event>,
    seen: &mut Vec<Event>,
    what: &str,
    cond: impl Fn(&[Event]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond(seen) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let e = tokio::time::timeout(remaining, events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap();
        seen.push(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_is_heard_over_real_udp_across_shards() {
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(0),
        shards: 2,
    };
    let (runtime, sfu, mut events) = SfuRuntime::start(&settings, [3; 32]).unwrap();
    let addrs = sfu.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], addrs[1], "shards share one port");
    assert!(addrs[0].ip().is_loopback());
    let clients = Clients::start();
    let mut seen = Vec::new();

    // Publisher: client offers.
    let (offer, pending, mid) = {
        let mut c = Client::new();
        let mut api = c.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("s".into()),
            Some("mic".into()),
            None,
        );
        let (offer, pending) = api.apply().unwrap();
        let i = clients.add(c);
        assert_eq!(i, 0);
        (offer, pending, mid)
    };
    // The caller chooses peer ids; the shard is encoded in them.
    let pub_peer = PeerId::new(ShardId(0), 1);
    sfu.send(EngineCommand::AcceptOffer {
        peer: pub_peer,
        publish: Publish::Allow,
        offer,
        single: false,
        subscribe: Vec::new(),
        relay: false,
    })
    .unwrap();
    let answer = next_answer(&mut events, pub_peer, &mut seen).await;
    clients.with(0, |c| {
        c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let pt = c
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        c.send = Some((mid, pt));
    });

    // Subscribers: engine offers. Round robin puts them on both shards.
    let mut subs = Vec::new();
    for n in 0..3u64 {
        let peer = PeerId::new(sfu.pick_shard(), 10 + n);
        sfu.send(EngineCommand::CreatePeer {
            peer,
            publish: Publish::Deny,
            channels: vec!["_reliable".into()],
        })
        .unwrap();
        let offer = next_offer(&mut events, peer, &mut seen).await;
        let i = clients.add(Client::new());
        let answer = clients.with(i, |c| c.rtc.sdp_api().accept_offer(offer).unwrap());
        sfu.send(EngineCommand::HandleAnswer { peer, answer })
            .unwrap();
        subs.push((i, peer));
    }
    let shards: Vec<u16> = subs.iter().map(|(_, p)| p.shard().0).collect();
    assert!(
        shards.contains(&0) && shards.contains(&1),
        "subscribers on both shards: {shards:?}"
    );

    wait_for(
        &mut events,
        &mut seen,
        "connections and the track",
        |seen| {
            let connected = seen
                .iter()
                .filter(|e| matches!(e, Event::Connected(_)))
                .count();
            let published = seen
                .iter()
                .any(|e| matches!(e, Event::TrackPublished { .. }));
            connected == 4 && published
        },
    )
    .await;
    let track: TrackId = seen
        .iter()
        .find_map(|e| match e {
            Event::TrackPublished { track, label } => {
                assert_eq!(label.track_id, "mic");
                Some(*track)
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(track.peer, pub_peer);

    for (i, peer) in &subs {
        let (i, peer) = (*i, *peer);
        let label = MediaLabel {
            stream_id: "PA_x|TR_y".into(),
            track_id: "TR_y".into(),
        };
        sfu.send(EngineCommand::Subscribe {
            track,
            label,
            peers: vec![peer],
        })
        .unwrap();
        let offer = next_offer(&mut events, peer, &mut seen).await;
        assert!(
            offer.to_sdp_string().contains("a=msid:PA_x|TR_y TR_y"),
            "{}",
            offer.to_sdp_string()
        );
        let answer = clients.with(i, |c| c.rtc.sdp_api().accept_offer(offer).unwrap());
        sfu.send(EngineCommand::HandleAnswer { peer, answer })
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 100 packets, 5 ms apart.
    for i in 0..100u32 {
        clients.with(0, |c| c.send_audio(i));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let done = subs
            .iter()
            .all(|(i, _)| clients.with(*i, |c| c.heard.len() >= 100));
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, _) in &subs {
        let heard = clients.with(*i, |c| c.heard.clone());
        assert_eq!(heard.len(), 100, "subscriber {i} heard {}", heard.len());
        let mut sorted = heard.clone();
        sorted.sort();
        for (k, (seq, index)) in sorted.iter().enumerate() {
            assert_eq!(*index as usize, k, "payloads in sequence order");
            assert_eq!(
                *seq,
                sorted[0].0 + k as u64,
                "contiguous rewritten sequence"
            );
        }
    }
    let stats = sfu.stats().await.unwrap();
    let forwarded: u64 = stats.iter().map(|s| s.rtp_forwarded).sum();
    assert_eq!(forwarded, 300);
    drop(clients);
    runtime.shutdown();
}

/// Each publisher sends packets `indices`, 5 ms apart.
async fn send_each(clients: &Clients, publishers: &[usize], indices: std::ops::Range<u32>) {
    for k in indices {
        for i in publishers {
            clients.with(*i, |c| c.send_audio(k));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The port of the host candidate in an SDP.
fn candidate_port(sdp: &str) -> u16 {
    let line = sdp
        .lines()
        .find(|l| l.starts_with("a=candidate:"))
        .expect("a candidate");
    let fields: Vec<&str> = line.split(' ').collect();
    fields[5].parse().expect("a port")
}

/// Two rooms relayed between the same two engines over real UDP: the edge's shell gives each
/// relay link a socket of its own, so the two links to one origin differ in their 5-tuple.
/// Two publishers on the origin, each subscribed to its own link; an edge listener on each
/// shard subscribed to one link's relayed track: each hears its own publisher, byte for byte,
/// and nothing of the other. Closing one link closes its socket; the other keeps carrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relay_links_between_two_engines_both_carry_media() {
    let loopback = "127.0.0.1".parse().unwrap();
    let settings = |shards| SfuSettings {
        bind_ip: loopback,
        advertise_ip: loopback,
        ports: UdpPorts::Mux(0),
        shards,
    };
    let (origin_rt, origin, mut origin_events) = SfuRuntime::start(&settings(1), [5; 32]).unwrap();
    let (edge_rt, edge, mut edge_events) = SfuRuntime::start(&settings(2), [6; 32]).unwrap();
    let clients = Clients::start();
    let (mut oseen, mut eseen) = (Vec::new(), Vec::new());

    // Two publishers on the origin, with payloads told apart by their fill byte.
    let mut tracks = Vec::new();
    for (n, fill) in [(0u64, 0xA1u8), (1, 0xB2)] {
        let mut c = Client::new();
        c.fill = fill;
        let mut api = c.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some("s".into()),
            Some(format!("mic{n}")),
            None,
        );
        let (offer, pending) = api.apply().unwrap();
        let i = clients.add(c);
        let peer = PeerId::new(ShardId(0), 1 + n);
        origin
            .send(EngineCommand::AcceptOffer {
                peer,
                publish: Publish::Allow,
                offer,
                single: false,
                subscribe: Vec::new(),
                relay: false,
            })
            .unwrap();
        let answer = next_answer(&mut origin_events, peer, &mut oseen).await;
        clients.with(i, |c| {
            c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
            let pt = c
                .rtc
                .codec_config()
                .find(|p| p.spec().codec == Codec::Opus)
                .unwrap()
                .pt();
            c.send = Some((mid, pt));
        });
        tracks.push((i, peer));
    }
    wait_for(&mut origin_events, &mut oseen, "two tracks", |seen| {
        seen.iter()
            .filter(|e| matches!(e, Event::TrackPublished { .. }))
            .count()
            == 2
    })
    .await;
    let track_of = |peer: PeerId, seen: &[Event]| -> TrackId {
        seen.iter()
            .find_map(|e| match e {
                Event::TrackPublished { track, .. } if track.peer == peer => Some(*track),
                _ => None,
            })
            .unwrap()
    };

    // Two relay links from the same edge shard to the origin; the shell binds their sockets.
    let mut links = Vec::new();
    let mut ports = Vec::new();
    for (n, (_, publisher)) in tracks.iter().enumerate() {
        let relay = PeerId::new(ShardId(1), 500 + n as u64);
        edge.send(EngineCommand::CreateRelayPeer {
            peer: relay,
            audios: 1,
            channels: Vec::new(),
            local: None,
        })
        .unwrap();
        let offer = next_offer(&mut edge_events, relay, &mut eseen).await;
        ports.push(candidate_port(&offer.to_sdp_string()));
        let sub = PeerId::new(ShardId(0), 100 + n as u64);
        let track = track_of(*publisher, &oseen);
        let label = MediaLabel {
            stream_id: format!("PA_{n}|TR_{n}"),
            track_id: format!("TR_{n}"),
        };
        origin
            .send(EngineCommand::AcceptOffer {
                peer: sub,
                publish: Publish::Deny,
                offer,
                single: true,
                subscribe: vec![(track, label)],
                relay: true,
            })
            .unwrap();
        let answer = next_answer(&mut origin_events, sub, &mut oseen).await;
        edge.send(EngineCommand::HandleAnswer {
            peer: relay,
            answer,
        })
        .unwrap();
        links.push(relay);
    }
    let shard_port = edge.local_addrs()[0].port();
    assert_ne!(ports[0], ports[1], "each link has a socket of its own");
    assert!(!ports.contains(&shard_port), "{ports:?} vs {shard_port}");

    wait_for(
        &mut edge_events,
        &mut eseen,
        "both links relaying",
        |seen| {
            let connected = seen
                .iter()
                .filter(|e| matches!(e, Event::Connected(p) if links.contains(p)))
                .count();
            let relayed = seen
                .iter()
                .filter(|e| matches!(e, Event::RelayTrackPublished { .. }))
                .count();
            connected == 2 && relayed == 2
        },
    )
    .await;
    let relayed_on = |relay: PeerId, seen: &[Event]| -> (TrackId, MediaLabel) {
        seen.iter()
            .find_map(|e| match e {
                Event::RelayTrackPublished { track, label, .. } if track.peer == relay => {
                    Some((*track, label.clone()))
                }
                _ => None,
            })
            .unwrap()
    };

    // A listener on each edge shard, each subscribed to one link's relayed track.
    let mut listeners = Vec::new();
    for (n, relay) in links.iter().enumerate() {
        let peer = PeerId::new(ShardId(n as u16), 20 + n as u64);
        edge.send(EngineCommand::CreatePeer {
            peer,
            publish: Publish::Deny,
            channels: vec!["_reliable".into()],
        })
        .unwrap();
        let offer = next_offer(&mut edge_events, peer, &mut eseen).await;
        let i = clients.add(Client::new());
        let answer = clients.with(i, |c| c.rtc.sdp_api().accept_offer(offer).unwrap());
        edge.send(EngineCommand::HandleAnswer { peer, answer })
            .unwrap();
        let (track, label) = relayed_on(*relay, &eseen);
        edge.send(EngineCommand::Subscribe {
            track,
            label,
            peers: vec![peer],
        })
        .unwrap();
        let offer = next_offer(&mut edge_events, peer, &mut eseen).await;
        let answer = clients.with(i, |c| c.rtc.sdp_api().accept_offer(offer).unwrap());
        edge.send(EngineCommand::HandleAnswer { peer, answer })
            .unwrap();
        listeners.push(i);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let publishers: Vec<usize> = tracks.iter().map(|(i, _)| *i).collect();
    let heard_all = |want: usize, who: &[usize]| {
        who.iter()
            .all(|i| clients.with(*i, |c| c.payloads.len() >= want))
    };
    send_each(&clients, &publishers, 0..100).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !heard_all(100, &listeners) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, listener) in listeners.iter().enumerate() {
        let fill = clients.with(tracks[n].0, |c| c.fill);
        let (heard, payloads) = clients.with(*listener, |c| (c.heard.clone(), c.payloads.clone()));
        assert_eq!(heard.len(), 100, "listener {n} heard {}", heard.len());
        for ((_, index), payload) in heard.iter().zip(&payloads) {
            assert_eq!(
                payload,
                &payload_of(*index, fill),
                "listener {n}: another room's packet"
            );
        }
    }

    // Closing the first link closes its socket; the second keeps carrying.
    edge.send(EngineCommand::ClosePeer { peer: links[0] })
        .unwrap();
    wait_for(
        &mut edge_events,
        &mut eseen,
        "the first link gone",
        |seen| {
            seen.iter()
                .any(|e| matches!(e, Event::Disconnected(p) if *p == links[0]))
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while UdpSocket::bind(("127.0.0.1", ports[0])).is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        UdpSocket::bind(("127.0.0.1", ports[0])).is_ok(),
        "the closed link's port is free again"
    );
    send_each(&clients, &publishers, 100..150).await;
    let second = listeners[1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !heard_all(150, &[second]) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(clients.with(second, |c| c.payloads.len()), 150);
    assert_eq!(clients.with(listeners[0], |c| c.payloads.len()), 100);
    drop(clients);
    edge_rt.shutdown();
    origin_rt.shutdown();
}

#[test]
fn port_in_use_and_bad_settings_fail_clearly() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let settings = SfuSettings {
        bind_ip: "127.0.0.1".parse().unwrap(),
        advertise_ip: "127.0.0.1".parse().unwrap(),
        ports: UdpPorts::Mux(port),
        shards: 1,
    };
    let err = SfuRuntime::start(&settings, [0; 32]).unwrap_err();
    assert!(format!("{err:#}").contains("is already in use"), "{err:#}");

    let settings = SfuSettings {
        ports: UdpPorts::Range {
            start: 50010,
            end: 50010,
        },
        shards: 2,
        ..settings
    };
    let err = SfuRuntime::start(&settings, [0; 32]).unwrap_err();
    assert!(format!("{err:#}").contains("fewer ports"), "{err:#}");

    // An unspecified advertise address is refused before anything is bound.
    let settings = SfuSettings {
        advertise_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        ports: UdpPorts::Mux(0),
        ..settings
    };
    let err = SfuRuntime::start(&settings, [0; 32]).unwrap_err();
    assert!(format!("{err:#}").contains("unspecified"), "{err:#}");
}
