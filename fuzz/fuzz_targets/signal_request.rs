//! Fuzzes what a client can send on `/rtc`: the input is decoded as `SignalRequest`s (binary
//! protobuf, and as proto3 JSON the way text frames are) and the decoded requests are fed, in
//! order, to a live session of the signaling service over a running media engine on 127.0.0.1.
//! The service must neither panic nor stop serving other callers.
//!
//! The same input is also read as the `join_request` of a `/rtc/v1` query, as it is and
//! base64-encoded (so that the decoder's later steps, gzip and protobuf, are reached too): it
//! must be refused with a 400 or read, never panic. When it reads, the session joins on `/rtc/v1`
//! with it (a publisher offer inside included); otherwise the first byte's second bit picks
//! `/rtc/v1` without an offer or the legacy `/rtc`.
//!
//! Input layout: a sequence of `[len: u8][len bytes]` chunks, each one WebSocket message.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use libfuzzer_sys::fuzz_target;
use livekit_protocol as lk;
use prost::Message;
use stoa_sfu::shell::{SfuRuntime, SfuSettings, UdpPorts};
use stoa_signaling::join;
use stoa_signaling::service::{ServiceConfig, Signaling};
use stoa_signaling::token::{Claims, VideoGrants};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

struct World {
    rt: Runtime,
    signaling: Signaling,
    _engine: SfuRuntime,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let settings = SfuSettings {
            bind_ip: "127.0.0.1".parse().expect("ip"),
            advertise_ip: "127.0.0.1".parse().expect("ip"),
            ports: UdpPorts::Mux(0),
            shards: 1,
        };
        let (engine, sfu, events) = SfuRuntime::start(&settings, [7; 32]).expect("engine");
        let signaling = rt.block_on(async { Signaling::start(ServiceConfig::default(), sfu, events) });
        World {
            rt,
            signaling,
            _engine: engine,
        }
    })
}

/// `text` escaped for a query string (`%XX` for everything but unreserved characters).
fn form_urlencoded_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut requests = Vec::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        if let Ok(r) = lk::SignalRequest::decode(chunk) {
            requests.extend(r.message);
        }
        if let Ok(text) = std::str::from_utf8(chunk) {
            if let Ok(r) = serde_json::from_str::<lk::SignalRequest>(text) {
                requests.extend(r.message);
            }
        }
    }
    let w = world();
    w.rt.block_on(async {
        let claims = Claims {
            sub: "fuzzer".into(),
            video: VideoGrants {
                room_join: true,
                room: "fuzz".into(),
                can_publish: Some(data.first().is_some_and(|b| b & 1 == 1)),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut params = join::parse_query("access_token=x&protocol=17").expect("params");
        params.single_pc = data.first().is_some_and(|b| b & 2 == 2);
        let text = String::from_utf8_lossy(data);
        let raw = form_urlencoded_value(&text);
        for value in [raw, URL_SAFE.encode(data)] {
            match join::parse_v1_request(&format!("access_token=x&join_request={value}"), None) {
                Ok(v1) => params = v1,
                Err(e) => assert!(
                    e.http_status() == 400 || e.http_status() == 401,
                    "odd refusal {e}"
                ),
            }
        }
        let (tx, mut rx) = mpsc::channel(stoa_signaling::service::OUTBOX);
        let Ok(session) = w.signaling.connect(claims, params, tx).await else {
            return;
        };
        for m in requests {
            let _ = w.signaling.request(session, m);
        }
        // Let the service work through them, then leave.
        tokio::time::sleep(Duration::from_millis(1)).await;
        w.signaling.closed(session, "fuzz input done");
        while rx.try_recv().is_ok() {}
        // The service still answers.
        let listed = tokio::time::timeout(Duration::from_secs(5), w.signaling.list_participants("fuzz")).await;
        assert!(listed.is_ok(), "signaling service stopped answering");
    });
});
