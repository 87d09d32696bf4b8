//! Speakers publishing tones through real WebRTC (stoa-bench's str0m peers, joined through the
//! control plane), and what the tests measure of recorded audio: tone levels (Goertzel) and
//! finished Ogg/Opus files, read with stoa-egress's reader.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stoa_bench::client::{self, ClientHandle, ClientSpec, Command, Depth, Protocol, Role, Shared};
use stoa_bench::product::ProductJoin;
use stoa_control::auth::Keys;
use stoa_control::model::UserId;
use stoa_egress::OpusStream;

/// A user token for the control API, signed with `key` and `secret`.
pub fn user_token((key, secret): (&str, &str), id: &str) -> String {
    Keys::new(vec![(key.into(), secret.into())])
        .expect("keys")
        .user_token(
            &UserId::parse(id).expect("user id"),
            id,
            Duration::from_secs(3600),
        )
        .expect("user token")
}

/// Speakers publishing tones (stoa-bench's str0m peers), joined through the control plane.
pub struct Speakers {
    runtime: tokio::runtime::Runtime,
    shared: Shared,
    addr: SocketAddr,
    room: String,
    keys: (String, String),
}

impl Speakers {
    /// Speakers of `room` on the server at `addr`, whose user tokens `keys` sign.
    pub fn new(addr: SocketAddr, room: &str, (key, secret): (&str, &str)) -> Speakers {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let clock = stoa_bench::clock::Clock::start();
        let shared = Shared {
            clock,
            tone: Arc::new(stoa_bench::audio::ToneLoop::encode_tone(440).expect("tone")),
            counters: Arc::default(),
            dtls_cert: Arc::new(client::dtls_cert().expect("certificate")),
            sink: None,
        };
        Speakers {
            runtime,
            shared,
            addr,
            room: room.to_owned(),
            keys: (key.to_owned(), secret.to_owned()),
        }
    }

    /// `identity` joins (a speaker through the control plane) and sends an `hz` tone.
    pub fn join(&self, identity: &str, hz: u32) -> ClientHandle {
        let _entered = self.runtime.enter();
        let spec = ClientSpec {
            http: self.addr,
            protocol: Protocol::Livekit,
            identity: identity.to_owned(),
            local_ip: Ipv4Addr::LOCALHOST,
            token: String::new(),
            product: Some(ProductJoin {
                api: self.addr,
                room: self.room.clone(),
                user_token: user_token((&self.keys.0, &self.keys.1), identity),
                stage_with: None,
            }),
            role: Role::Speaker,
            depth: Depth::Decrypt,
            deadline: Instant::now() + Duration::from_secs(120),
        };
        let shared = Shared {
            tone: Arc::new(stoa_bench::audio::ToneLoop::encode_tone(hz).expect("tone")),
            ..self.shared.clone()
        };
        let client = ClientHandle::spawn(spec, shared);
        client.command(Command::Speak);
        client
    }

    /// Waits (bounded) until `n` more packets were sent by all speakers together.
    pub fn wait_sent(&self, n: u64) {
        let sent = || {
            self.shared
                .counters
                .rtp_sent
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let target = sent() + n;
        let deadline = Instant::now() + super::TIMEOUT;
        while sent() < target {
            assert!(Instant::now() < deadline, "speakers are not sending");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Waits (bounded) until `file` is a finished Ogg/Opus stream, and returns it.
pub fn finished(file: &Path) -> OpusStream {
    let deadline = Instant::now() + super::TIMEOUT;
    loop {
        if let Ok(bytes) = std::fs::read(file)
            && let Ok(stream) = OpusStream::parse(&bytes)
            && stream.end_granule.is_some()
        {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "{} was not finished",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The level of the `hz` tone in each 100 ms (Goertzel), as an amplitude.
pub fn tone_levels(samples: &[f32], hz: u32) -> Vec<f32> {
    let w = 2.0 * std::f32::consts::PI * hz as f32 / 48_000.0;
    let coefficient = 2.0 * w.cos();
    samples
        .chunks(4_800)
        .map(|c| {
            let (mut s1, mut s2) = (0f32, 0f32);
            for x in c {
                let s0 = x + coefficient * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
            2.0 * power.max(0.0).sqrt() / c.len() as f32
        })
        .collect()
}
