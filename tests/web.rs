//! Web app walk-through: Stoa's own web app (`web/`, embedded in the binary) in two headless
//! Chromium browsers against `stoa serve --dev`, all inside a private network namespace
//! (`unshare -n`), so that nothing but loopback can be reached.
//!
//! The scenario lives in `tests/web/walkthrough.mjs` (a host signs in, creates a room and goes
//! live; a listener finds it, joins and hears the host, raises a hand, is approved and heard,
//! is moved back; a reaction crosses pages; the host ends the room and both see the summary).
//! It saves screenshots of every screen, desktop and phone sized, to `target/web-screenshots/`.
//! `tests/web/run.sh` starts the server and runs it; both bound every wait, and this test adds
//! an outer bound.
//!
//! Needs Debian's `chromium`, Node.js, `tests/web/node_modules` and a binary built after
//! `web/dist`: `./test.sh` installs and builds them. Run it alone with
//! `cargo test -p stoa --test web -- --nocapture`.

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

/// Outer bound; run.sh caps itself at 200 s.
const TIMEOUT: Duration = Duration::from_secs(230);

const CHROMIUM: &str = "/usr/bin/chromium";

fn web_test_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("web")
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
    let dir = web_test_dir();
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("Debian's chromium ({CHROMIUM})"));
    }
    if !runs("node") {
        missing.push("node (Node.js)".to_owned());
    }
    let playwright = dir
        .join("node_modules")
        .join("playwright-core")
        .join("package.json");
    if !playwright.exists() {
        missing.push(format!(
            "npm package playwright-core ({})",
            playwright.display()
        ));
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
fn web_app_walkthrough_in_chromium() {
    let missing = missing_prerequisites();
    assert!(
        missing.is_empty(),
        "the web walk-through cannot run; missing: {}.\nRun ./test.sh first: it installs \
         chromium, builds web/ and runs `npm ci` in tests/web.",
        missing.join(", ")
    );

    // Root gets a plain network namespace; anyone else a user namespace mapped to root.
    let unshare_flags = if is_root() { "-n" } else { "-rn" };
    let mut child = Command::new("unshare")
        .arg(unshare_flags)
        .arg("bash")
        .arg(web_test_dir().join("run.sh"))
        .arg(env!("CARGO_BIN_EXE_stoa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // The scenario targets the dev server run.sh starts, whatever the caller's environment.
        .env_remove("STOA_WEB_URL")
        .env(
            "WEB_SCREENSHOTS",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("web-screenshots"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn `unshare … bash tests/web/run.sh`");

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

    eprintln!("----- tests/web/run.sh stderr -----\n{stderr}");
    eprintln!("----- tests/web/run.sh stdout -----\n{stdout}");
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or("(no JSON summary)");

    let Some(status) = status else {
        panic!("tests/web/run.sh did not finish within {TIMEOUT:?}; killed it. Summary: {summary}");
    };
    assert!(
        status.success(),
        "web walk-through failed ({status}); its output is above. Summary: {summary}"
    );
}
