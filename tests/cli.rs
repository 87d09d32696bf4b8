//! End-to-end tests of the `stoa` binary: real processes, real sockets on 127.0.0.1.
//!
//! Every wait is bounded by [`TIMEOUT`], and a spawned server is killed when its test ends,
//! whether it passed or not.

// These tests own a clock: they bound every wait on a real process.
#![allow(
    clippy::disallowed_methods,
    reason = "tests bound real waits with the wall clock"
)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(20);

/// `stoa` with no `STOA_*` variable inherited from the test's environment.
fn stoa() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_stoa"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STOA_") {
            command.env_remove(name);
        }
    }
    command
        .env("STOA_DATA_DIR", support::scratch_dir("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A spawned `stoa`, killed on drop.
struct Running {
    child: Child,
    stdout_lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Option<JoinHandle<String>>,
}

impl Running {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command.spawn().expect("spawn stoa");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, stdout_lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Self {
            child,
            stdout_lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// Waits for a stdout line containing `needle` and returns it.
    fn wait_for_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(err) => {
                    let _ = self.child.kill();
                    let stderr = self.stderr();
                    panic!(
                        "no stdout line with {needle:?} ({err}); stdout: {:#?}; stderr: {stderr}",
                        self.stdout
                    );
                }
            }
        }
    }

    /// Waits for the process to exit and returns its status, stdout and stderr.
    fn wait(mut self) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "stoa did not exit within {TIMEOUT:?}; stdout: {:#?}",
                    self.stdout
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The process is gone, so the pipe readers finish.
        while let Ok(line) = self.stdout_lines.recv_timeout(TIMEOUT) {
            self.stdout.push(line);
        }
        let stderr = self.stderr();
        (status, self.stdout.join("\n"), stderr)
    }

    fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|reader| reader.join().expect("stderr reader"))
            .unwrap_or_default()
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` to completion (bounded by [`TIMEOUT`]).
fn run(command: &mut Command) -> (ExitStatus, String, String) {
    Running::spawn(command).wait()
}

/// Asserts a failed run printed exactly one `error: …` line on stderr, and returns it.
fn single_error_line(status: ExitStatus, stderr: &str) -> String {
    assert!(!status.success(), "stoa should fail; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got: {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    lines[0].to_owned()
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    listener.local_addr().expect("local addr").port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.local_addr().expect("local addr").port()
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// One HTTP/1.1 request over a plain TCP connection; returns the raw response.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(TIMEOUT))
        .expect("write timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    response
}

#[test]
fn version_prints_the_version() {
    let (status, stdout, stderr) = run(stoa().arg("--version"));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("stoa {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn unknown_config_key_is_one_line_naming_it() {
    let path = write_temp(
        "unknown-key.toml",
        "bind_ip = \"127.0.0.1\"\n\nfrobnicate = true\n",
    );
    let (status, _, stderr) = run(stoa().args(["serve", "--config"]).arg(&path));
    let line = single_error_line(status, &stderr);
    let expected = format!(
        "error: config {}:3: unknown field `frobnicate`",
        path.display()
    );
    assert!(line.starts_with(&expected), "{line}");
}

#[test]
fn config_file_from_stoa_config_is_read() {
    let path = write_temp("empty-secret.toml", "[keys]\nmykey = \"\"\n");
    let (status, _, stderr) = run(stoa().args(["serve", "--dev"]).env("STOA_CONFIG", &path));
    let line = single_error_line(status, &stderr);
    assert!(
        line.ends_with("keys.mykey: secret for API key `mykey` is empty"),
        "{line}"
    );
}

#[test]
fn serve_without_keys_or_dev_refuses() {
    let (status, _, stderr) = run(stoa().arg("serve").env("STOA_BIND_IP", "127.0.0.1"));
    let line = single_error_line(status, &stderr);
    assert!(line.starts_with("error: no API keys configured"), "{line}");
    assert!(line.contains("--dev"), "{line}");
}

#[test]
fn http_port_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (status, _, stderr) = run(stoa()
        .args(["serve", "--dev"])
        .env("STOA_HTTP_PORT", port.to_string())
        .env("STOA_RTC_UDP_PORT", free_udp_port().to_string()));
    let line = single_error_line(status, &stderr);
    assert_eq!(
        line,
        format!("error: HTTP port 127.0.0.1:{port} is already in use")
    );
}

#[test]
fn rtc_port_in_use_is_one_clear_line() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (status, _, stderr) = run(stoa()
        .args(["serve", "--dev"])
        .env("STOA_HTTP_PORT", free_tcp_port().to_string())
        .env("STOA_RTC_UDP_PORT", port.to_string()));
    let line = single_error_line(status, &stderr);
    assert_eq!(
        line,
        format!("error: RTC UDP port 127.0.0.1:{port} is already in use")
    );
}

#[test]
fn serve_dev_answers_healthz_and_stops_on_sigterm() {
    let (http_port, rtc_port) = (free_tcp_port(), free_udp_port());
    let secret = "s3cr3t-never-logged-4711";
    let mut server = Running::spawn(
        stoa()
            .args(["serve", "--dev"])
            .env("STOA_HTTP_PORT", http_port.to_string())
            .env("STOA_RTC_UDP_PORT", rtc_port.to_string())
            .env("STOA_KEYS", format!("testkey: {secret}")),
    );

    let line = server.wait_for_line("listening");
    assert!(
        line.contains(&format!("http=127.0.0.1:{http_port}")),
        "{line}"
    );
    assert!(
        line.contains(&format!("rtc_udp=127.0.0.1:{rtc_port}")),
        "{line}"
    );

    let addr = SocketAddr::from(([127, 0, 0, 1], http_port));
    let response = http_get(addr, "/healthz");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    assert_eq!(
        response.split_once("\r\n\r\n").map(|(_, body)| body),
        Some("ok"),
        "{response:?}"
    );
    let response = http_get(addr, "/no-such-page");
    assert!(response.starts_with("HTTP/1.1 404"), "{response:?}");

    server.terminate();
    let (status, stdout, stderr) = server.wait();
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(stdout.contains("stopped"), "{stdout}");
    assert!(stdout.contains("api_keys=testkey"), "{stdout}");
    assert!(!stdout.contains(secret), "a secret was logged: {stdout}");
}

/// The wall clock in Unix seconds, to verify tokens the binary just minted.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn token_dev_prints_only_a_token_that_verifies() {
    use stoa_signaling::token::{self, ApiKeys};

    let before = unix_now();
    let (status, stdout, stderr) =
        run(stoa().args(["token", "--dev", "--identity", "a", "--room", "r"]));
    assert!(status.success(), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let jwt = stdout.trim();
    assert_eq!(stdout, jwt, "stdout holds only the token");
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");

    let keys = ApiKeys::new([("devkey", "secret")]);
    let claims = keys.verify(jwt, unix_now()).expect("the token verifies");
    assert_eq!(claims.iss, "devkey");
    assert_eq!(claims.sub, "a");
    assert!(claims.video.room_join);
    assert_eq!(claims.video.room, "r");
    assert!(claims.video.can_publish() && claims.video.can_subscribe());
    assert!(!claims.video.room_admin);
    assert_eq!(token::can_join(&claims, "r"), Ok(()));
    // Valid from now for the default six hours.
    let nbf = u64::try_from(claims.nbf).expect("nbf");
    assert!((before..=unix_now()).contains(&nbf), "nbf {nbf}");
    assert_eq!(claims.exp - claims.nbf, 6 * 3600);

    // Another secret does not verify it.
    let wrong = ApiKeys::new([("devkey", "not-the-secret")]);
    assert!(wrong.verify(jwt, unix_now()).is_err());
}

#[test]
fn token_uses_configured_keys_and_grants() {
    use stoa_signaling::token::ApiKeys;

    // Production mode with keys from the environment only: no network settings are needed.
    let (status, stdout, stderr) = run(stoa()
        .args(["token", "--identity", "bob", "--room", "stage"])
        .args(["--name", "Bob", "--can-publish", "false", "--admin"])
        .args(["--valid-for", "30m", "--api-key", "k2"])
        .env("STOA_KEYS", "k1: s1, k2: s2"));
    assert!(status.success(), "stderr: {stderr}");
    let claims = ApiKeys::new([("k2", "s2")])
        .verify(stdout.trim(), unix_now())
        .expect("signed with k2");
    assert_eq!(claims.name, "Bob");
    assert_eq!(claims.video.can_publish, Some(false));
    assert!(!claims.video.can_publish_data());
    assert!(claims.video.room_admin);
    assert_eq!(claims.exp - claims.nbf, 30 * 60);

    // The config file works as for `serve`.
    let path = write_temp("token-keys.toml", "[keys]\nfilekey = \"filesecret\"\n");
    let (status, stdout, stderr) = run(stoa()
        .args(["token", "--identity", "c", "--room", "r", "--config"])
        .arg(&path));
    assert!(status.success(), "stderr: {stderr}");
    ApiKeys::new([("filekey", "filesecret")])
        .verify(stdout.trim(), unix_now())
        .expect("signed with the file's key");
}

#[test]
fn token_errors_are_one_line() {
    let (status, stdout, stderr) = run(stoa()
        .args(["token", "--identity", "a", "--room", "r"])
        .env("STOA_KEYS", "k1: s1, k2: s2"));
    let line = single_error_line(status, &stderr);
    assert_eq!(
        line,
        "error: several API keys are configured (k1, k2); choose one with --api-key"
    );
    assert!(stdout.is_empty(), "{stdout}");

    let (status, _, stderr) = run(stoa().args(["token", "--identity", "a", "--room", "r"]));
    let line = single_error_line(status, &stderr);
    assert!(line.starts_with("error: no API keys configured"), "{line}");

    let (status, _, stderr) = run(stoa().args(["token", "--dev", "--identity", "", "--room", "r"]));
    let line = single_error_line(status, &stderr);
    assert_eq!(
        line,
        "error: cannot create the token: a token that grants roomJoin needs an identity"
    );

    let path = write_temp("token-empty-secret.toml", "[keys]\nk = \"\"\n");
    let (status, _, stderr) = run(stoa()
        .args([
            "token",
            "--dev",
            "--identity",
            "a",
            "--room",
            "r",
            "--config",
        ])
        .arg(&path));
    let line = single_error_line(status, &stderr);
    assert!(
        line.ends_with("keys.k: secret for API key `k` is empty"),
        "{line}"
    );
}
