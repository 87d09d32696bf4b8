//! Per-packet forwarding cost of the engine, side by side with stock str0m and the kernel.
//!
//! ```text
//! cargo bench -p stoa-sfu --bench forward -- [SUBSCRIBER_COUNTS] [PACKETS]
//! cargo bench -p stoa-sfu --bench forward -- 10,100,1000,5000 100
//! ```
//!
//! For each subscriber count K it measures, on one thread, in thread CPU time:
//!
//! - **stoa**: one publisher and K subscribers connected to one engine shard (real ICE, DTLS,
//!   SRTP, on an in-memory network); per packet: the publisher's SRTP datagram goes through
//!   `Sfu::handle_receive`, then `poll_output` is drained and `poll_datagrams` taken (K SRTP
//!   datagrams out, not sent). Reported per forwarded packet (÷ K). User space only: the core
//!   makes no system calls. `STOA_BENCH_FAST_PATH=off` measures the engine with its fast path
//!   disabled (every packet through str0m's send path).
//! - **str0m**: the stock str0m send path for the same K streams: K sender `Rtc`s in frame mode,
//!   each `Writer::write` of the same Opus payload and a drain of `poll_output` (as measured in
//!   reference/performance-anchors.md §4.3).
//! - **kernel**: `sendmmsg` in batches of 32 of 143-byte datagrams to K loopback destinations
//!   (a bound socket that is never read, so packets drop at its buffer): what the kernel alone
//!   costs per packet on this machine.
//!
//! With `STOA_BENCH_RED=1` it instead compares, side by side for each K, the engine forwarding
//! plain Opus (publisher and listeners without RED), RED (RFC 2198, one redundant frame, as
//! browsers send it) to listeners that negotiated RED, and the same RED stream to listeners that
//! did not (the engine sends them the primary Opus block).
//!
//! Listener-streams per core = 1 s / (stoa + kernel per packet) / 50 packets per second.
//! Every loop is bounded by the given counts; nothing leaves 127.0.0.1. Keep PACKETS × 20 ms
//! under about 15 s: the simulated listeners send no ICE checks while packets are measured, so
//! their ICE-lite pairs expire after 15 s.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, clippy::print_stdout)]

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use nix::time::{ClockId, clock_gettime};
use stoa_sfu::str0m::format::Codec;
use stoa_sfu::str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use stoa_sfu::str0m::net::{Protocol, Receive};
use stoa_sfu::str0m::rtp::{ExtensionValues, RtpWrite, SeqNo};
use stoa_sfu::str0m::{Candidate, Event as RtcEvent, Input, Output as RtcOutput, Rtc, RtcConfig};
use stoa_sfu::{
    Datagrams, Event, FastPath, MediaLabel, Output, PeerConfig, PeerId, Publish, Sfu, SfuConfig,
    ShardId, TrackId,
};

const SFU_ADDR: &str = "127.0.0.1:7882";
const PAYLOAD: usize = 100;

fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
}

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    peer: Option<PeerId>,
    connected: bool,
}

fn client(now: Instant, i: usize, rtp_mode: bool) -> Client {
    client_with(now, i, rtp_mode, false)
}

/// A client that offers and accepts RED around Opus when `red`.
fn client_with(now: Instant, i: usize, rtp_mode: bool, red: bool) -> Client {
    let addr: SocketAddr = format!(
        "127.{}.{}.{}:{}",
        1 + i / 62500,
        (i / 250) % 250,
        1 + i % 250,
        10000 + i % 50000
    )
    .parse()
    .unwrap();
    let mut rtc = RtcConfig::new()
        .set_rtp_mode(rtp_mode)
        .clear_codecs()
        .enable_opus(true, red)
        .build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    Client {
        rtc,
        addr,
        peer: None,
        connected: false,
    }
}

/// Drain a client; returns its datagrams.
fn drain(rtc: &mut Rtc, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
    while let Ok(o) = rtc.poll_output() {
        match o {
            RtcOutput::Timeout(_) => break,
            RtcOutput::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
            RtcOutput::Event(_) => {}
        }
    }
}

/// An engine with one publisher and `k` connected, subscribed listeners.
struct StoaRoom {
    now: Instant,
    sfu: Sfu,
    publisher: Client,
    pub_send: (Mid, Pt),
    subs: Vec<Client>,
    track: TrackId,
    /// Packets the publisher sent so far (its sequence numbers continue across runs).
    sent: u32,
    /// Where the engine's fast path leaves sealed datagrams (reused, as the shell does).
    sealed: Datagrams,
    /// The publisher's RED payload type, when it sends RED.
    red_pt: Option<Pt>,
}

/// Who speaks RED in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Red {
    publisher: bool,
    listeners: bool,
}

impl Red {
    const NONE: Red = Red {
        publisher: false,
        listeners: false,
    };
}

impl StoaRoom {
    fn new(k: usize, fast_path: FastPath) -> Self {
        Self::with_red(k, fast_path, Red::NONE)
    }

    fn with_red(k: usize, fast_path: FastPath, red: Red) -> Self {
        let start = Instant::now();
        let sfu_addr: SocketAddr = SFU_ADDR.parse().unwrap();
        let mut config = SfuConfig::new(ShardId(0), [9; 32]);
        config.fast_path = fast_path;
        let mut sfu = Sfu::new(config, start);
        let config = |publish| PeerConfig {
            candidates: vec![sfu_addr],
            publish,
        };
        let mut publisher = client_with(start, 0, true, red.publisher);
        let mut api = publisher.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let (peer, answer) = sfu
            .accept_offer(start, config(Publish::Allow), offer)
            .unwrap();
        publisher
            .rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap();
        publisher.peer = Some(peer);
        let opus = publisher
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap();
        let (pt, red_pt) = (opus.pt(), opus.red());
        assert_eq!(
            red_pt.is_some(),
            red.publisher,
            "RED not negotiated as asked"
        );
        let mut room = StoaRoom {
            now: start,
            sfu,
            publisher,
            pub_send: (mid, pt),
            subs: Vec::new(),
            track: TrackId { peer, mid },
            sent: 0,
            sealed: Datagrams::default(),
            red_pt,
        };
        for i in 0..k {
            let mut c = client_with(start, i + 1, true, red.listeners);
            let peer = room.sfu.create_peer(start, config(Publish::Deny), &[]).ok();
            c.peer = peer;
            room.subs.push(c);
        }
        // A first offer with no m-lines is not possible; subscribe right away so the first
        // offer carries the audio m-line.
        for i in 0..k {
            let peer = room.subs[i].peer.unwrap();
            let label = MediaLabel {
                stream_id: "PA_p|TR_t".into(),
                track_id: "TR_t".into(),
            };
            room.sfu.subscribe(start, peer, room.track, label).unwrap();
        }
        room.settle(Duration::from_secs(3));
        assert!(
            room.subs
                .iter()
                .all(|c| room.sfu.is_connected(c.peer.unwrap())),
            "not all connected"
        );
        room
    }

    fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        if addr == self.publisher.addr {
            return Some(0);
        }
        self.subs.iter().position(|c| c.addr == addr).map(|i| i + 1)
    }

    fn client_mut(&mut self, i: usize) -> &mut Client {
        if i == 0 {
            &mut self.publisher
        } else {
            &mut self.subs[i - 1]
        }
    }

    /// Run negotiation and handshakes on a lossless zero-latency network.
    fn settle(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(5);
            let now = self.now;
            let mut to_sfu = Vec::new();
            for i in 0..=self.subs.len() {
                let c = self.client_mut(i);
                c.rtc.handle_input(Input::Timeout(now)).unwrap();
                drain(&mut c.rtc, &mut to_sfu);
            }
            let sfu_addr: SocketAddr = SFU_ADDR.parse().unwrap();
            for (src, dst, data) in to_sfu {
                self.sfu.handle_receive(now, Protocol::Udp, src, dst, &data);
            }
            self.sfu.handle_timeout(now);
            let mut to_clients = Vec::new();
            loop {
                match self.sfu.poll_output() {
                    Output::Timeout(_) => break,
                    Output::Event(Event::Offer { peer, offer, .. }) => {
                        let i = self.subs.iter().position(|c| c.peer == Some(peer)).unwrap() + 1;
                        let c = self.client_mut(i);
                        let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                        let mut out = Vec::new();
                        drain(&mut c.rtc, &mut out);
                        for (src, dst, data) in out {
                            self.sfu.handle_receive(now, Protocol::Udp, src, dst, &data);
                        }
                        self.sfu.handle_answer(now, peer, answer).unwrap();
                    }
                    Output::Event(_) | Output::Relay(_) => {}
                }
            }
            self.sfu.poll_datagrams(&mut self.sealed);
            for d in self.sealed.iter() {
                to_clients.push((d.destination, d.contents.to_vec()));
            }
            self.sealed.clear();
            for (dst, data) in to_clients {
                if let Some(i) = self.index_of(dst) {
                    let c = self.client_mut(i);
                    let r = Receive::new(Protocol::Udp, sfu_addr, dst, &data).unwrap();
                    c.rtc.handle_input(Input::Receive(now, r)).unwrap();
                    let mut out = Vec::new();
                    drain(&mut c.rtc, &mut out);
                    for (src, dst, data) in out {
                        self.sfu.handle_receive(now, Protocol::Udp, src, dst, &data);
                    }
                }
            }
        }
    }

    /// Forward `packets` 20 ms apart; returns (thread CPU in the engine, packets forwarded).
    fn measure(&mut self, packets: u32) -> (Duration, u64) {
        let before = self.sfu.stats().rtp_forwarded;
        let mut cpu = Duration::ZERO;
        let (mid, pt) = self.pub_send;
        for _ in 0..packets {
            let i = self.sent;
            self.sent += 1;
            self.now += Duration::from_millis(20);
            let now = self.now;
            let mut api = self.publisher.rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, None).unwrap();
            let ext = ExtensionValues {
                audio_level: Some(-30),
                voice_activity: Some(true),
                ..Default::default()
            };
            // RED as browsers send it: the previous frame, then this one (both PAYLOAD bytes).
            let (send_pt, payload) = match self.red_pt {
                Some(red_pt) => {
                    let mut red = vec![
                        0x80 | *pt,
                        (960u16 >> 6) as u8,
                        ((960u16 & 0x3f) << 2) as u8,
                    ];
                    red.push(PAYLOAD as u8);
                    red.push(*pt);
                    red.extend_from_slice(&[2u8; PAYLOAD]);
                    red.extend_from_slice(&[1u8; PAYLOAD]);
                    (red_pt, red)
                }
                None => (pt, vec![1u8; PAYLOAD]),
            };
            tx.write_rtp(
                RtpWrite::new(
                    send_pt,
                    SeqNo::from(u64::from(i) + 1),
                    i * 960,
                    now,
                    payload,
                )
                .ext_vals(ext),
            );
            let mut out = Vec::new();
            drain(&mut self.publisher.rtc, &mut out);
            self.publisher
                .rtc
                .handle_input(Input::Timeout(now))
                .unwrap();
            drain(&mut self.publisher.rtc, &mut out);

            let t0 = thread_cpu();
            for (src, dst, data) in &out {
                self.sfu
                    .handle_receive(now, Protocol::Udp, *src, *dst, data);
            }
            self.sfu.handle_timeout(now);
            let mut sent = 0usize;
            loop {
                if let Output::Timeout(_) = self.sfu.poll_output() {
                    break;
                }
            }
            // What the shell does next: take the datagrams (a buffer swap), hand them to
            // sendmmsg (not here), and reuse the buffer.
            self.sfu.poll_datagrams(&mut self.sealed);
            sent += self.sealed.iter().map(|d| d.contents.len()).sum::<usize>();
            self.sealed.clear();
            cpu += thread_cpu() - t0;
            std::hint::black_box(sent);
        }
        (cpu, self.sfu.stats().rtp_forwarded - before)
    }
}

/// Stock str0m: `k` connected sender/receiver pairs in frame mode; cost of write + drain.
fn str0m_baseline(k: usize, packets: u32) -> Duration {
    let start = Instant::now();
    let mut pairs = Vec::with_capacity(k);
    for i in 0..k {
        let mut l = client(start, 2 * i, false);
        let mut r = client(start, 2 * i + 1, false);
        let mut api = l.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().unwrap();
        let answer = r.rtc.sdp_api().accept_offer(offer).unwrap();
        l.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let pt = l
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Opus)
            .unwrap()
            .pt();
        pairs.push((l, r, mid, pt));
    }
    let mut now = start;
    // Connect all pairs.
    for _ in 0..400 {
        now += Duration::from_millis(5);
        for (l, r, _, _) in &mut pairs {
            exchange(now, l, r);
            exchange(now, r, l);
        }
        if pairs.iter().all(|(l, r, _, _)| l.connected && r.connected) {
            break;
        }
    }
    let mut cpu = Duration::ZERO;
    let mut media_sent = 0u64;
    let data = vec![1u8; PAYLOAD];
    for i in 0..packets {
        now += Duration::from_millis(20);
        let t0 = thread_cpu();
        for (l, _, mid, pt) in &mut pairs {
            l.rtc.handle_input(Input::Timeout(now)).unwrap();
            if let Some(w) = l.rtc.writer(*mid) {
                let _ = w.write(
                    *pt,
                    now,
                    MediaTime::new(u64::from(i) * 960, Frequency::FORTY_EIGHT_KHZ),
                    data.clone(),
                );
            }
            let mut sent = 0;
            while let Ok(o) = l.rtc.poll_output() {
                match o {
                    RtcOutput::Timeout(_) => break,
                    RtcOutput::Transmit(t) => {
                        sent += t.contents.len();
                        // SRTP media (RTCP is smaller than a 100-byte payload plus headers).
                        if t.contents.len() > PAYLOAD {
                            media_sent += 1;
                        }
                    }
                    RtcOutput::Event(RtcEvent::Connected) | RtcOutput::Event(_) => {}
                }
            }
            std::hint::black_box(sent);
        }
        cpu += thread_cpu() - t0;
    }
    // Frame mode sends a packet on the timer run after its write: all but the last.
    let expected = u64::from(packets.saturating_sub(1)) * k as u64;
    assert!(
        media_sent >= expected,
        "stock str0m sent {media_sent} media packets, expected {expected}: not all pairs connected"
    );
    cpu
}

/// Tick `a`, then deliver datagrams between `a` and `b` until both are quiet (bounded).
fn exchange(now: Instant, a: &mut Client, b: &mut Client) {
    a.rtc.handle_input(Input::Timeout(now)).unwrap();
    let mut to_b = Vec::new();
    drain_client(a, &mut to_b);
    for _ in 0..50 {
        if to_b.is_empty() {
            break;
        }
        let mut to_a = Vec::new();
        for (src, dst, data) in to_b.drain(..) {
            let rcv = Receive::new(Protocol::Udp, src, dst, &data).unwrap();
            b.rtc.handle_input(Input::Receive(now, rcv)).unwrap();
            drain_client(b, &mut to_a);
        }
        for (src, dst, data) in to_a {
            let rcv = Receive::new(Protocol::Udp, src, dst, &data).unwrap();
            a.rtc.handle_input(Input::Receive(now, rcv)).unwrap();
            drain_client(a, &mut to_b);
        }
    }
}

/// Drain a client, noting when it connects.
fn drain_client(c: &mut Client, out: &mut Vec<(SocketAddr, SocketAddr, Vec<u8>)>) {
    while let Ok(o) = c.rtc.poll_output() {
        match o {
            RtcOutput::Timeout(_) => break,
            RtcOutput::Transmit(t) => out.push((t.source, t.destination, t.contents.to_vec())),
            RtcOutput::Event(RtcEvent::Connected) => c.connected = true,
            RtcOutput::Event(_) => {}
        }
    }
}

/// Kernel: sendmmsg of 143-byte datagrams to `k` destinations on 127.0.0.1.
fn kernel_baseline(k: usize, packets: usize) -> Duration {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    // K distinct destinations: the sink and (for K>1) closed ports would cost ICMP; use the
    // one sink address K times, which keeps the send path the same per datagram.
    let dests: Vec<SockaddrStorage> = (0..k).map(|_| SockaddrStorage::from(sink_addr)).collect();
    let payload = [5u8; 143];
    let total = packets * k;
    let mut sent = 0;
    let t0 = thread_cpu();
    while sent < total {
        let n = 32.min(total - sent);
        let slices: Vec<[IoSlice<'_>; 1]> = (0..n).map(|_| [IoSlice::new(&payload)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> =
            (0..n).map(|j| Some(dests[(sent + j) % k])).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
        match sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => sent += r.count().max(1),
            Err(_) => sent += n,
        }
    }
    let cpu = thread_cpu() - t0;
    drop(sink);
    cpu
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let counts: Vec<usize> = args
        .first()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let packets: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(100);

    let fast_path = match std::env::var("STOA_BENCH_FAST_PATH").as_deref() {
        Ok("off") => FastPath::Disabled,
        _ => FastPath::Enabled,
    };
    if std::env::var("STOA_BENCH_RED").is_ok_and(|v| v == "1") {
        red_table(&counts, packets, fast_path);
        return;
    }
    println!(
        "| subscribers | stoa ns/pkt (user) | stock str0m ns/pkt | stoa / str0m | kernel sendmmsg ns/pkt | stoa / kernel | listener-streams per core |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for k in counts {
        let mut room = StoaRoom::new(k, fast_path);
        // Warm up caches and str0m's internal state, then measure.
        room.measure(10);
        let (cpu, forwarded) = room.measure(packets);
        assert_eq!(
            forwarded,
            u64::from(packets) * k as u64,
            "every packet must reach every subscriber"
        );
        let room_stats = room.sfu.stats();
        if fast_path == FastPath::Enabled {
            assert_eq!(
                room_stats.rtp_forwarded_direct, room_stats.rtp_forwarded,
                "every packet must take the fast path"
            );
        }
        drop(room);
        let stoa = cpu.as_nanos() as f64 / forwarded as f64;
        if std::env::var("STOA_BENCH_ONLY_STOA").is_ok() {
            println!(
                "| {k} | {:.0} | - | - | - | - | - | {:?}",
                cpu.as_nanos() as f64 / forwarded as f64,
                room_stats
            );
            continue;
        }
        let stock = str0m_baseline(k, packets).as_nanos() as f64 / (f64::from(packets) * k as f64);
        let kernel = kernel_baseline(k.max(32), packets as usize).as_nanos() as f64
            / (f64::from(packets) * k.max(32) as f64);
        let streams = 1e9 / (stoa + kernel) / 50.0;
        println!(
            "| {k} | {stoa:.0} | {stock:.0} | {:.2} | {kernel:.0} | {:.2} | {streams:.0} |",
            stoa / stock,
            stoa / kernel
        );
    }
}

/// Plain Opus, RED to RED listeners and RED to Opus-only listeners, side by side: the three
/// rooms are built first, then measured in alternation (5 rounds of `packets` / 5 each, each
/// round starting with another room), so that drift in the machine's load falls on all three
/// alike.
fn red_table(counts: &[usize], packets: u32, fast_path: FastPath) {
    const ROUNDS: u32 = 5;
    let cases = [
        Red::NONE,
        Red {
            publisher: true,
            listeners: true,
        },
        Red {
            publisher: true,
            listeners: false,
        },
    ];
    println!(
        "| subscribers | Opus → Opus ns/pkt | RED → RED ns/pkt | RED→RED / Opus | RED → Opus (primary) ns/pkt | RED→Opus / Opus |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &k in counts {
        let mut rooms: Vec<StoaRoom> = cases
            .iter()
            .map(|&red| {
                let mut room = StoaRoom::with_red(k, fast_path, red);
                room.measure(10);
                room
            })
            .collect();
        let mut cpu = [Duration::ZERO; 3];
        let mut forwarded = [0u64; 3];
        for round in 0..ROUNDS as usize {
            // Each round starts with another room, so none is always measured first.
            for j in 0..rooms.len() {
                let i = (round + j) % rooms.len();
                let (c, f) = rooms[i].measure((packets / ROUNDS).max(1));
                cpu[i] += c;
                forwarded[i] += f;
            }
        }
        for (room, red) in rooms.iter().zip(cases) {
            let stats = room.sfu.stats();
            assert_eq!(
                stats.rtp_forwarded,
                stats.rtp_in * k as u64,
                "{red:?}: packets lost"
            );
            if fast_path == FastPath::Enabled {
                assert_eq!(
                    stats.rtp_forwarded_direct, stats.rtp_forwarded,
                    "{red:?}: slow path used"
                );
            }
            assert_eq!(stats.rtp_dropped_malformed, 0, "{red:?}");
        }
        let ns: Vec<f64> = (0..3)
            .map(|i| cpu[i].as_nanos() as f64 / forwarded[i] as f64)
            .collect();
        println!(
            "| {k} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            ns[0],
            ns[1],
            ns[1] / ns[0],
            ns[2],
            ns[2] / ns[0]
        );
    }
}
