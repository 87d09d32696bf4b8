//! Fuzzes the media engine's network input: arbitrary datagrams (STUN-, DTLS-, RTP-looking or
//! garbage) from arbitrary loopback sources into an engine shard that has a live peer. Nothing
//! may panic, and the engine must keep its deadline bookkeeping consistent.
//!
//! Input layout: `[source port: u16][len: u8][len bytes]` repeated.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use stoa_sfu::str0m::media::{Direction, MediaKind};
use stoa_sfu::str0m::net::Protocol;
use stoa_sfu::str0m::{Candidate, Rtc};
use stoa_sfu::{Datagrams, Output, PeerConfig, Publish, ShardId, Sfu, SfuConfig};

fuzz_target!(|data: &[u8]| {
    // Fixed start: the engine never reads the clock itself.
    let start = Instant::now();
    let sfu_addr: SocketAddr = "127.0.0.1:7882".parse().expect("addr");
    let mut sfu = Sfu::new(SfuConfig::new(ShardId(0), [5; 32]), start);

    // One real peer, so datagrams can match its ufrag or address.
    let client_addr: SocketAddr = "127.0.0.2:40000".parse().expect("addr");
    let mut client = Rtc::new(start);
    if let Ok(c) = Candidate::host(client_addr, "udp") {
        client.add_local_candidate(c);
    }
    let mut api = client.sdp_api();
    api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let Some((offer, _)) = api.apply() else { return };
    let config = PeerConfig {
        candidates: vec![sfu_addr],
        publish: Publish::Allow,
    };
    if sfu.accept_offer(start, config, offer).is_err() {
        return;
    }

    let mut now = start;
    let mut rest = data;
    let mut sent = Datagrams::default();
    while rest.len() >= 3 {
        let port = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(rest[2]).min(rest.len() - 3);
        let datagram = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let source = if port % 4 == 0 {
            client_addr
        } else {
            SocketAddr::from(([127, 0, 0, 3], port))
        };
        now += Duration::from_millis(u64::from(port % 50));
        let _ = sfu.handle_receive(now, Protocol::Udp, source, sfu_addr, datagram);
        sfu.handle_timeout(now);
        // Drain, bounded: a livelock would be a bug.
        for _ in 0..10_000 {
            if let Output::Timeout(t) = sfu.poll_output() {
                assert!(t >= start, "deadline before the engine started");
                break;
            }
        }
        // Every datagram leaves through one call; the queue is the caller's.
        sfu.poll_datagrams(&mut sent);
        sent.clear();
    }
});
