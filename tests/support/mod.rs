//! Shared by the binary's end-to-end tests: a `stoa serve` child process, plain HTTP/1.1
//! requests and a LiveKit signaling client over a raw WebSocket, all on 127.0.0.1 with every
//! wait bounded.

#![allow(dead_code, clippy::disallowed_methods, clippy::unwrap_in_result)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use livekit_protocol as lk;
use prost::Message as _;

pub mod api;
pub mod chromium;
pub mod cluster;
pub mod hooks;
pub mod tones;

/// Bound on any single wait.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Seconds since the Unix epoch, for minting tokens.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A signaling session joined to `room` as `identity`, with a token for ten minutes signed by
/// `key` and `secret`.
pub fn join_room(
    addr: SocketAddr,
    (key, secret): (&str, &str),
    room: &str,
    identity: &str,
) -> SignalClient {
    let mut claims = stoa_signaling::token::Claims::default();
    claims.video.room_join = true;
    claims.video.room = room.to_owned();
    let jwt = stoa_signaling::token::mint(
        key,
        secret,
        identity,
        None,
        claims.video,
        Duration::from_secs(600),
        unix_now(),
    )
    .expect("mint");
    SignalClient::join(addr, &jwt).0
}

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stoa-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A free loopback TCP port and UDP port, never one this test process handed out before.
///
/// The kernel may give a port that was just released to the next `bind(0)`, so two tests that
/// start servers at the same moment could otherwise both be told the same port: one server
/// fails to bind and the other's health check answers for both.
pub fn free_ports() -> (u16, u16) {
    (free_port(Proto::Tcp), free_port(Proto::Udp))
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Proto {
    Tcp,
    Udp,
}

fn free_port(proto: Proto) -> u16 {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static GIVEN: OnceLock<Mutex<HashSet<(Proto, u16)>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Mutex::default);
    for _ in 0..1000 {
        let port = match proto {
            Proto::Tcp => TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()),
            Proto::Udp => UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()),
        }
        .expect("free loopback port")
        .port();
        if given
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((proto, port))
        {
            return port;
        }
    }
    panic!("no loopback port that was not handed out before");
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (read from /proc), so
/// that a health check is known to have reached that process and not another one.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, remote address, state (0A = LISTEN), ..., inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_owned())
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            inodes.iter().any(|i| target == format!("socket:[{i}]"))
        })
    })
}

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `stoa serve --dev`, killed on drop.
pub struct Stoa {
    child: Child,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

impl Stoa {
    /// Starts `stoa serve --dev --config <config>` with `env`, and waits until it answers.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Stoa {
        Stoa::start_wrapped(config, env, &[])
    }

    /// As [`Stoa::start`], run through `wrapper` (a command that ends by exec'ing its
    /// arguments, as `unshare` does, so the process id stays the server's).
    pub fn start_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Stoa {
        Stoa::spawn_wrapped(config, env, wrapper).started()
    }

    /// Waits until it answers.
    fn started(mut self) -> Stoa {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some((200, _)) = try_request(self.addr, "GET", "/healthz", None, None)
                && listens_on(self.pid(), self.addr.port())
            {
                return self;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("stoa exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "stoa did not start:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `stoa serve --dev --config <config>` with `env` on free loopback ports, without
    /// waiting for it.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> Stoa {
        Stoa::spawn_wrapped(config, env, &[])
    }

    /// Free loopback ports, except an HTTP port the caller names in `env` (`STOA_HTTP_PORT`,
    /// e.g. one from [`free_ports`] that a node's `STOA_PUBLIC_URL` names too).
    fn spawn_wrapped(config: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> Stoa {
        let (mut http_port, rtc_port) = free_ports();
        if let Some((_, port)) = env.iter().find(|(k, _)| *k == "STOA_HTTP_PORT") {
            http_port = port.parse().expect("STOA_HTTP_PORT");
        }
        let log = config.with_extension(format!("{http_port}.log"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_stoa"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_stoa")),
        };
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("STOA_") {
                command.env_remove(name);
            }
        }
        command
            .args(["serve", "--dev", "--config"])
            .arg(config)
            .env("STOA_HTTP_PORT", http_port.to_string())
            .env("STOA_RTC_UDP_PORT", rtc_port.to_string())
            // `stop` should not wait out a drain for clients a test left connected.
            .env("STOA_DRAIN_SECONDS", "1");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn stoa");
        let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
        Stoa { child, addr, log }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status code, once it has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it with SIGTERM and waits (bounded) for it to exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Stoa {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; `None` if the connection fails.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let content = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".to_owned()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{content}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// One HTTP/1.1 request that must get an answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    try_request(addr, method, path, token, body)
        .unwrap_or_else(|| panic!("no answer to {method} {path}"))
}

/// A LiveKit signaling session over a raw WebSocket.
pub struct SignalClient {
    stream: TcpStream,
}

impl SignalClient {
    /// Connects to `/rtc` with `jwt`; on refusal, the HTTP status and body.
    pub fn connect(addr: SocketAddr, jwt: &str) -> Result<SignalClient, (u16, String)> {
        Self::open(
            addr,
            &format!("/rtc?access_token={jwt}&protocol=16&auto_subscribe=1"),
        )
    }

    fn upgraded(mut stream: TcpStream) -> Result<SignalClient, (u16, String)> {
        // Read the response head byte by byte so no frame byte is consumed with it.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("read upgrade response");
            head.push(byte[0]);
            assert!(head.len() < 8192, "response head too long");
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            // The connection stays open (keep-alive): read exactly the announced body.
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = stream.read_exact(&mut body);
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        Ok(SignalClient { stream })
    }

    /// Connects and reads the `JoinResponse`.
    pub fn join(addr: SocketAddr, jwt: &str) -> (SignalClient, lk::JoinResponse) {
        let mut client = SignalClient::connect(addr, jwt)
            .unwrap_or_else(|(status, body)| panic!("join refused: {status} {body}"));
        match client.next_response().map(|r| r.message) {
            Some(Some(lk::signal_response::Message::Join(join))) => (client, join),
            other => panic!("expected a JoinResponse, got {other:?}"),
        }
    }

    /// The next frame: (opcode, payload). Server frames are never masked.
    fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).ok()?;
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut n = [0u8; 2];
                self.stream.read_exact(&mut n).ok()?;
                u64::from(u16::from_be_bytes(n))
            }
            127 => {
                let mut n = [0u8; 8];
                self.stream.read_exact(&mut n).ok()?;
                u64::from_be_bytes(n)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        self.stream.read_exact(&mut payload).ok()?;
        Some((opcode, payload))
    }

    /// The next protocol message; `None` on a close frame or a closed stream.
    pub fn next_response(&mut self) -> Option<lk::SignalResponse> {
        loop {
            let (opcode, payload) = self.frame()?;
            match opcode {
                0x2 => {
                    return Some(lk::SignalResponse::decode(payload.as_slice()).expect("decode"));
                }
                0x8 => return None,
                _ => {}
            }
        }
    }

    /// The next text message (for JSON WebSockets such as `/api/events`).
    pub fn next_text(&mut self) -> Option<String> {
        loop {
            let (opcode, payload) = self.frame()?;
            match opcode {
                0x1 => return Some(String::from_utf8_lossy(&payload).into_owned()),
                0x8 => return None,
                _ => {}
            }
        }
    }

    /// Upgrades `path` (with its query) to a WebSocket; on refusal, the status and body.
    pub fn open(addr: SocketAddr, path: &str) -> Result<SignalClient, (u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .expect("send upgrade");
        Self::upgraded(stream)
    }

    /// Reads until `want` matches a message (bounded by the read timeout); panics otherwise.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        mut want: impl FnMut(&lk::signal_response::Message) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match self.next_response() {
                Some(lk::SignalResponse {
                    message: Some(m), ..
                }) => {
                    if let Some(t) = want(&m) {
                        return t;
                    }
                }
                Some(_) => {}
                None => panic!("session closed while waiting for {what}"),
            }
        }
        panic!("timed out waiting for {what}");
    }

    /// Waits for an update of participant `identity` matching `want`.
    pub fn wait_participant(
        &mut self,
        identity: &str,
        what: &str,
        want: impl Fn(&lk::ParticipantInfo) -> bool,
    ) -> lk::ParticipantInfo {
        self.wait_for(what, |m| match m {
            lk::signal_response::Message::Update(u) => u
                .participants
                .iter()
                .find(|p| p.identity == identity && want(p))
                .cloned(),
            _ => None,
        })
    }

    /// Sends a protocol request (one masked binary frame, as a client must).
    pub fn send(&mut self, message: lk::signal_request::Message) {
        let payload = lk::SignalRequest {
            message: Some(message),
        }
        .encode_to_vec();
        let mut frame = vec![0x82];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        // A zero mask leaves the payload as it is.
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.extend_from_slice(&payload);
        self.stream.write_all(&frame).expect("send request");
    }

    /// Pings and waits for the pong: the session is alive.
    pub fn ping(&mut self) {
        self.send(lk::signal_request::Message::Ping(7));
        self.wait_for("a pong", |m| match m {
            lk::signal_response::Message::Pong(7) => Some(()),
            _ => None,
        });
    }

    /// Leaves as LiveKit SDKs do: a `LeaveRequest`, then a close frame (both masked, as a
    /// client must; a zero mask leaves the payload as it is). A connection closed without a
    /// leave is held for a resume instead (see signaling's session resume).
    pub fn close(mut self) {
        let leave = lk::SignalRequest {
            message: Some(lk::signal_request::Message::Leave(lk::LeaveRequest {
                reason: lk::DisconnectReason::ClientInitiated as i32,
                ..Default::default()
            })),
        }
        .encode_to_vec();
        let mut frame = vec![
            0x82,
            0x80 | u8::try_from(leave.len()).expect("short"),
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(&leave);
        let _ = self.stream.write_all(&frame);
        let _ = self.stream.write_all(&[0x88, 0x80, 0, 0, 0, 0]);
    }
}
