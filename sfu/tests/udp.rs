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
    send: Option<(Mid, Pt)>,
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
            send: None,
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
                }
                RtcOutput::Event(_) => {}
            }
        }
    }

    fn send_audio(&mut self, index: u32) {
        let (mid, pt) = self.send.unwrap();
        let mut payload = vec![7u8; 80];
        payload[0..4].copy_from_slice(&index.to_be_bytes());
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
