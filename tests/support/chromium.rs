//! Browser end-to-end runs: a scenario script (`tests/<dir>/run.sh`, which starts `stoa serve`
//! and drives Debian's Chromium with npm packages from `tests/<dir>/node_modules`) inside a
//! private network namespace, so nothing but loopback can be reached, bounded in time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// `tests/<name>` in the repository.
pub fn test_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
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

/// What a run in `dir` needs that is not there (Chromium, Node.js, the npm `packages`,
/// `unshare`), each with why.
pub fn missing_prerequisites(dir: &Path, packages: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("Debian's chromium ({CHROMIUM})"));
    }
    if !runs("node") {
        missing.push("node (Node.js)".to_owned());
    }
    for package in packages {
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

/// How a run ended.
pub struct Run {
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// The scenario's last JSON line, its summary.
    pub fn summary(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|line| line.starts_with('{'))
            .unwrap_or("(no JSON summary)")
    }
}

/// Runs `bash <dir>/run.sh <stoa>` in a private network namespace with the environment set by
/// `env`, killing it after `timeout`.
pub fn run_in_namespace(dir: &Path, env: impl FnOnce(&mut Command), timeout: Duration) -> Run {
    // Root gets a plain network namespace; anyone else a user namespace mapped to root.
    let unshare_flags = if is_root() { "-n" } else { "-rn" };
    let mut command = Command::new("unshare");
    command
        .arg(unshare_flags)
        .arg("bash")
        .arg(dir.join("run.sh"))
        .arg(env!("CARGO_BIN_EXE_stoa"))
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    env(&mut command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn `unshare … bash {}/run.sh`: {e}", dir.display()));

    let stdout = read_all(child.stdout.take().expect("stdout is piped"));
    let stderr = read_all(child.stderr.take().expect("stderr is piped"));

    let deadline = Instant::now() + timeout;
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
    Run {
        status,
        stdout: collect(&stdout, grace),
        stderr: collect(&stderr, grace),
    }
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

/// Runs the two-node web scenario `scenario` (a file of `tests/web`) through
/// `tests/failover/run.sh`: two `stoa serve` nodes on one redis-server, each carrying
/// `node_capacity` participants (the default when `None`), the operator's server token signed
/// with the dev key. Prints the run's output and fails the test unless the scenario passed
/// within `timeout`.
pub fn run_two_node_scenario(scenario: &str, node_capacity: Option<u64>, timeout: Duration) {
    let missing = missing_prerequisites(&test_dir("web"), &["playwright-core"]);
    assert!(
        missing.is_empty(),
        "the two-node web scenario {scenario} cannot run; missing: {}.\nRun ./test.sh first: it \
         installs chromium, builds web/ and runs `npm ci` in tests/web.",
        missing.join(", ")
    );
    // The dev server's key (`stoa serve --dev`), for the operator's calls.
    let token = super::cluster::server_token(("devkey", "secret"));
    let run = run_in_namespace(
        &test_dir("failover"),
        |command| {
            command
                .env("FAILOVER_SERVER_TOKEN", &token)
                .env("FAILOVER_SCENARIO", scenario);
            if let Some(capacity) = node_capacity {
                command.env("FAILOVER_NODE_CAPACITY", capacity.to_string());
            }
        },
        timeout,
    );
    eprintln!("----- tests/failover/run.sh stderr -----\n{}", run.stderr);
    eprintln!("----- tests/failover/run.sh stdout -----\n{}", run.stdout);
    let summary = run.summary();
    let Some(status) = run.status else {
        panic!(
            "tests/failover/run.sh ({scenario}) did not finish within {timeout:?}; killed it. \
             Summary: {summary}"
        );
    };
    assert!(
        status.success(),
        "{scenario} failed ({status}); its output is above. Summary: {summary}"
    );
}
