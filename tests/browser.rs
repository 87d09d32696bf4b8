//! Browser end-to-end test: the unmodified `livekit-client` npm package, in headless Chromium,
//! against `stoa serve --dev`, both inside a private network namespace (`unshare -n`), so that
//! nothing but loopback can be reached.
//!
//! The scenario lives in `tests/browser/e2e.mjs` (two pages: A publishes a 1 kHz microphone,
//! B subscribes and hears it, B may not publish, A mutes, A leaves); `tests/browser/run.sh`
//! starts the server and runs it. Both bound every wait; this test adds an outer bound.
//!
//! A second test runs the scenario relay-only through Stoa's TURN relay over UDP, TCP and TLS.
//!
//! Needs Debian's `chromium`, Node.js and `tests/browser/node_modules`: `./test.sh` installs
//! them. Run it alone with
//! `cargo test -p stoa --test browser -- --nocapture`.

// This test owns a clock: it bounds the wait on a real process tree.
#![allow(
    clippy::disallowed_methods,
    reason = "the test bounds a real wait with the wall clock"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Outer bound; run.sh caps itself at 120 s.
const TIMEOUT: Duration = Duration::from_secs(150);

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
}

/// Whether `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether this process runs as root (then `unshare -n` works without a user namespace).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().next())
            == Some("0")
    })
}

/// What the test needs that is not there, each with why.
fn missing_prerequisites() -> Vec<String> {
    let dir = browser_dir();
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("Debian's chromium ({CHROMIUM})"));
    }
    if !runs("node") {
        missing.push("node (Node.js)".to_owned());
    }
    for package in ["livekit-client", "livekit-server-sdk", "playwright-core"] {
        let path = dir.join("node_modules").join(package).join("package.json");
        if !path.exists() {
            missing.push(format!("npm package {package} ({})", path.display()));
        }
    }
    if !runs("unshare") {
        missing.push("unshare (util-linux)".to_owned());
    }
    missing
}

/// Reads `pipe` to its end on a thread; the text arrives on the returned channel.
fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// The text `read_all` read, or a note if the pipe is still open at `deadline`.
fn collect(text: &mpsc::Receiver<String>, deadline: Instant) -> String {
    text.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|_| "(output unavailable: the pipe is still held open)".to_owned())
}

#[test]
fn livekit_client_in_chromium_talks_to_stoa() {
    run_scenario(None);
}

/// The same scenario with both pages relay-only (`iceTransportPolicy: 'relay'`) through Stoa's
/// own TURN relay, named in the JoinResponse with per-session credentials: over UDP, TCP and
/// TLS (`turns:`), each in its own namespace and server. B must hear A over a relay candidate
/// of that transport.
#[test]
fn livekit_client_hears_through_stoa_turn_over_udp_tcp_and_tls() {
    for transport in ["udp", "tcp", "tls"] {
        run_scenario(Some(transport));
    }
}

/// One browser at a time: two Chromiums at once on a small machine make timing flaky.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs tests/browser/run.sh in a private network namespace; `relay` selects relay-only mode.
fn run_scenario(relay: Option<&str>) {
    let _one = ONE_BROWSER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let missing = missing_prerequisites();
    assert!(
        missing.is_empty(),
        "the browser end-to-end test cannot run; missing: {}.\nRun ./test.sh first: it installs \
         chromium and runs `npm ci` in tests/browser.",
        missing.join(", ")
    );

    // Root gets a plain network namespace; anyone else a user namespace mapped to root.
    let unshare_flags = if is_root() { "-n" } else { "-rn" };
    let mut command = Command::new("unshare");
    command
        .arg(unshare_flags)
        .arg("bash")
        .arg(browser_dir().join("run.sh"))
        .arg(env!("CARGO_BIN_EXE_stoa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // The scenario targets the dev server run.sh starts, whatever the caller's environment.
        .env_remove("STOA_URL")
        .env_remove("STOA_API_KEY")
        .env_remove("STOA_API_SECRET")
        .env_remove("STOA_E2E_RELAY");
    if let Some(relay) = relay {
        command.env("STOA_E2E_RELAY", relay);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn `unshare … bash tests/browser/run.sh`");

    let stdout = read_all(child.stdout.take().expect("stdout is piped"));
    let stderr = read_all(child.stderr.take().expect("stderr is piped"));

    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for run.sh") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(200));
    };
    // A process that outlived run.sh may hold the pipes open: wait for them only briefly.
    let grace = Instant::now() + Duration::from_secs(5);
    let stdout = collect(&stdout, grace);
    let stderr = collect(&stderr, grace);

    let mode = relay.map_or("direct".to_owned(), |r| format!("relay over {r}"));
    eprintln!("----- tests/browser/run.sh ({mode}) stderr -----\n{stderr}");
    eprintln!("----- tests/browser/run.sh stdout -----\n{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or("(no JSON summary)");

    let Some(status) = status else {
        panic!(
            "tests/browser/run.sh ({mode}) did not finish within {TIMEOUT:?}; killed it. Summary: {summary}"
        );
    };
    assert!(
        status.success(),
        "browser end-to-end test ({mode}) failed ({status}); its output is above. Summary: {summary}"
    );
}
