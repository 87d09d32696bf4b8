//! The server under test: started as a child process (optionally pinned to some cores with
//! `taskset`), or an already running one known by its pid; its CPU time and resident memory are
//! read from `/proc/<pid>/stat` and `/proc/<pid>/status`, and its packet counters from its
//! Prometheus `/metrics`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI
/// this runs on).
const TICKS_PER_SECOND: f64 = 100.0;
/// Longest wait for a started server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the server could not be started or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The process could not be spawned, or a port found.
    #[error("start the server: {0}")]
    Spawn(#[from] io::Error),
    /// It did not listen in time.
    #[error("the server did not listen on {0} within 20 s (or exited)")]
    NotListening(SocketAddr),
}

/// A `stoa serve --dev` child process on free loopback ports, with its own state directory;
/// killed (and the directory removed) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    data_dir: PathBuf,
    /// Its HTTP and WebSocket address.
    pub http: SocketAddr,
}

impl ServerProcess {
    /// Start `binary serve --dev` on free 127.0.0.1 ports, under `taskset -c cpus` when given,
    /// and wait (bounded) until it listens. Its output goes to `log` when given.
    pub fn spawn(
        binary: &Path,
        cpus: Option<&str>,
        log: Option<&Path>,
    ) -> Result<ServerProcess, ServerError> {
        ServerProcess::spawn_with(binary, cpus, log, &[])
    }

    /// Like [`ServerProcess::spawn`], with `STOA_*` settings of its own (e.g.
    /// `STOA_REDIS_URL` for the Redis store).
    pub fn spawn_with(
        binary: &Path,
        cpus: Option<&str>,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<ServerProcess, ServerError> {
        ServerProcess::spawn_inner(binary, cpus, log, env, false, None)
    }

    /// Like [`ServerProcess::spawn_with`], with `shards` media engine shards, each on its own
    /// UDP port of a free range (as a node outside dev mode runs them), rather than every shard
    /// on one shared port: there, a datagram lands on whichever shard the kernel picks and
    /// waits for that shard's turn before it is passed to its peer's.
    pub fn spawn_sharded(
        binary: &Path,
        cpus: Option<&str>,
        log: Option<&Path>,
        env: &[(&str, &str)],
        shards: usize,
    ) -> Result<ServerProcess, ServerError> {
        ServerProcess::spawn_inner(binary, cpus, log, env, false, Some(shards))
    }

    /// One node of several sharing the Redis store at `redis_url`, whose public URL is its own
    /// address: a room placed on it (the node with the most headroom when the room is
    /// created) sends every client's media here, whichever node answers the token request.
    pub fn spawn_node(
        binary: &Path,
        cpus: Option<&str>,
        redis_url: &str,
    ) -> Result<ServerProcess, ServerError> {
        ServerProcess::spawn_node_with(binary, cpus, redis_url, None, &[])
    }

    /// Like [`ServerProcess::spawn_node`], its output to `log` when given, with `STOA_*`
    /// settings of its own.
    pub fn spawn_node_with(
        binary: &Path,
        cpus: Option<&str>,
        redis_url: &str,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<ServerProcess, ServerError> {
        let mut all = vec![("STOA_REDIS_URL", redis_url)];
        all.extend_from_slice(env);
        ServerProcess::spawn_inner(binary, cpus, log, &all, true, None)
    }

    fn spawn_inner(
        binary: &Path,
        cpus: Option<&str>,
        log: Option<&Path>,
        env: &[(&str, &str)],
        own_public_url: bool,
        shards: Option<usize>,
    ) -> Result<ServerProcess, ServerError> {
        let http_port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut command = pinned_command(binary, cpus);
        clear_stoa_env(&mut command);
        // A state directory of its own, so that servers started side by side never share one.
        let data_dir =
            std::env::temp_dir().join(format!("stoa-bench-{}-{http_port}", std::process::id()));
        std::fs::create_dir_all(&data_dir)?;
        command
            .args(["serve", "--dev", "--http-port"])
            .arg(http_port.to_string());
        match shards {
            Some(shards) => {
                let start = free_udp_range(shards)?;
                let config = data_dir.join("rtc.toml");
                std::fs::write(&config, rtc_range_config(start, shards))?;
                command.env("STOA_CONFIG", &config);
            }
            None => {
                let udp_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
                command.arg("--rtc-udp-port").arg(udp_port.to_string());
            }
        }
        let (stdout, stderr) = outputs(log)?;
        let child = command
            .env("STOA_LOG_LEVEL", "warn")
            .env("STOA_DATA_DIR", &data_dir)
            .envs(env.iter().copied())
            .envs(
                own_public_url.then(|| ("STOA_PUBLIC_URL", format!("ws://127.0.0.1:{http_port}"))),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        let mut server = ServerProcess {
            child,
            data_dir,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        };
        wait_listening(server.http, &mut server.child)?;
        Ok(server)
    }

    /// One node of several in its own network namespace `net` (`stoa serve --dev --config
    /// config`, bound to and advertising the namespace's address, the same ports in every
    /// namespace), under `taskset -c cpus` when given, its public URL its own address, the
    /// Redis store at `redis_url`; waits (bounded) until it listens. Its output goes to `log`
    /// when given.
    pub fn spawn_in(
        net: &crate::netns::NodeNet,
        binary: &Path,
        cpus: Option<&str>,
        config: &Path,
        redis_url: &str,
        log: Option<&Path>,
    ) -> Result<ServerProcess, ServerError> {
        let http = SocketAddr::from((net.address, NAMESPACE_HTTP_PORT));
        let mut command = match cpus {
            Some(cpus) => {
                let mut c = net.command("taskset");
                c.args(["-c", cpus]).arg(binary);
                c
            }
            None => net.command(binary),
        };
        clear_stoa_env(&mut command);
        let data_dir = std::env::temp_dir().join(format!(
            "stoa-bench-{}-node{}",
            std::process::id(),
            net.index
        ));
        std::fs::create_dir_all(&data_dir)?;
        let (stdout, stderr) = outputs(log)?;
        let child = command
            .args(["serve", "--dev", "--config"])
            .arg(config)
            .args(["--bind-ip", &net.address.to_string(), "--http-port"])
            .arg(NAMESPACE_HTTP_PORT.to_string())
            .arg("--rtc-udp-port")
            .arg(NAMESPACE_RTC_PORT.to_string())
            .env("STOA_LOG_LEVEL", "warn")
            .env("STOA_DATA_DIR", &data_dir)
            .env("STOA_REDIS_URL", redis_url)
            .env("STOA_PUBLIC_URL", format!("ws://{http}"))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()?;
        let mut server = ServerProcess {
            child,
            data_dir,
            http,
        };
        wait_listening(server.http, &mut server.child)?;
        Ok(server)
    }

    /// Kills it with SIGKILL, as a crash would: no draining, its registry record left to
    /// expire.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it has exited.
    pub fn is_dead(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id (that of `stoa` itself: `taskset` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The HTTP port of a node in its own network namespace.
const NAMESPACE_HTTP_PORT: u16 = 7880;
/// Its RTC UDP port.
const NAMESPACE_RTC_PORT: u16 = 7882;

/// Only flags and the caller decide a server's ports and keys: clear inherited STOA_* settings.
fn clear_stoa_env(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STOA_") {
            command.env_remove(name);
        }
    }
}

/// A child's stdout and stderr: both into `log`, or nowhere.
fn outputs(log: Option<&Path>) -> io::Result<(Stdio, Stdio)> {
    Ok(match log {
        Some(path) => {
            let file = std::fs::File::create(path)?;
            (Stdio::from(file.try_clone()?), Stdio::from(file))
        }
        None => (Stdio::null(), Stdio::null()),
    })
}

/// A `redis-server` without persistence on `addr`, for the nodes of a run to share; killed
/// when dropped.
#[derive(Debug)]
pub struct RedisProcess {
    child: Child,
    /// `redis://ADDR/`.
    pub url: String,
}

impl RedisProcess {
    /// Start it under `taskset -c cpus` when given, and wait (bounded) until it listens.
    pub fn spawn(addr: SocketAddr, cpus: Option<&str>) -> Result<RedisProcess, ServerError> {
        let mut child = pinned_command("redis-server", cpus)
            .args(["--bind", &addr.ip().to_string(), "--port"])
            .arg(addr.port().to_string())
            // Bound to an address of a namespace the harness made, reachable from its nodes
            // only; protected mode would refuse them (no password).
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_listening(addr, &mut child)?;
        Ok(RedisProcess {
            child,
            url: format!("redis://{addr}/"),
        })
    }

    /// Start one on a free 127.0.0.1 port. The port is found with `bind(0)` and released, so
    /// another process may take it first: a server that exits (it could not bind) is started
    /// again on another port.
    pub fn spawn_loopback(cpus: Option<&str>) -> Result<RedisProcess, ServerError> {
        let mut last = None;
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match RedisProcess::spawn(addr, cpus) {
                Ok(mut redis) => {
                    // One that cannot bind exits at once; whatever listens then is another's.
                    std::thread::sleep(Duration::from_millis(150));
                    if matches!(redis.child.try_wait(), Ok(None)) {
                        return Ok(redis);
                    }
                    last = Some(ServerError::NotListening(addr));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ServerError::NotListening(SocketAddr::from((
            [127, 0, 0, 1],
            0,
        )))))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[rtc]` settings of `shards` shards on the ports from `start` (one each).
fn rtc_range_config(start: u16, shards: usize) -> String {
    let shards = shards.max(1);
    let end = usize::from(start) + shards - 1;
    format!("[rtc]\nport_range_start = {start}\nport_range_end = {end}\nshards = {shards}\n")
}

/// The first of `count` consecutive UDP ports free on 127.0.0.1 now (found by binding them;
/// released before the server takes them, so another process could take one first, which the
/// server's start-up then reports).
fn free_udp_range(count: usize) -> io::Result<u16> {
    let count = u16::try_from(count.clamp(1, 255)).unwrap_or(255);
    for _ in 0..50 {
        let start = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        let Some(end) = start.checked_add(count - 1) else {
            continue;
        };
        let held: io::Result<Vec<UdpSocket>> = (start..=end)
            .map(|p| UdpSocket::bind(("127.0.0.1", p)))
            .collect();
        if held.is_ok() {
            return Ok(start);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no {count} consecutive free UDP ports on 127.0.0.1"),
    ))
}

/// `program`, under `taskset -c cpus` when given (taskset execs it, so the child's pid is the
/// program's).
pub(crate) fn pinned_command(program: impl AsRef<std::ffi::OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Wait, at most [`START_TIMEOUT`], until `addr` accepts TCP connections; fails early when
/// `child` exits.
pub(crate) fn wait_listening(addr: SocketAddr, child: &mut Child) -> Result<(), ServerError> {
    // The harness owns a clock: this bounds a real wait.
    #[allow(clippy::disallowed_methods)]
    let deadline = Instant::now() + START_TIMEOUT;
    #[allow(clippy::disallowed_methods)]
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
            return Err(ServerError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// How long a server stopped with SIGTERM may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Drop for ServerProcess {
    /// Stops the server as an operator would, with SIGTERM: a node sharing Redis marks itself
    /// draining at once, so the next run's token calls never place a room on it while its
    /// registry record outlives it (a SIGKILLed node stays "alive" there until the record's
    /// TTL). Killed if it has not exited within `STOP_TIMEOUT`.
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
            // The harness owns a clock: this bounds a real wait.
            #[allow(clippy::disallowed_methods)]
            let deadline = Instant::now() + STOP_TIMEOUT;
            #[allow(clippy::disallowed_methods)]
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// CPU and memory of one process at one instant.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcSample {
    /// CPU used since the previous sample, in cores (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Reads a process's CPU time and RSS from `/proc`.
#[derive(Debug)]
pub struct ProcProbe {
    pid: u32,
    last: Option<(Instant, u64)>,
}

impl ProcProbe {
    /// A probe of process `pid`.
    pub fn new(pid: u32) -> ProcProbe {
        ProcProbe { pid, last: None }
    }

    /// Sample now; the CPU figure covers the time since the previous sample (0 the first time).
    pub fn sample(&mut self, now: Instant) -> io::Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        let ticks = parse_cpu_ticks(&stat)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let rss_kib = parse_rss_kib(&status).unwrap_or(0);
        let cpu_cores = match self.last {
            Some((then, before)) => {
                let wall = now.saturating_duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    ticks.saturating_sub(before) as f64 / TICKS_PER_SECOND / wall
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        Ok(ProcSample { cpu_cores, rss_kib })
    }
}

/// Field `field` (numbered as in proc(5), 3 or more: the state is field 3) of a
/// `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` line. The command name in parentheses
/// (field 2) may hold spaces and parentheses, so fields are counted after the last `)`.
pub fn stat_field(stat: &str, field: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(field.checked_sub(3)?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let utime: u64 = stat_field(stat, 14)?.parse().ok()?;
    let stime: u64 = stat_field(stat, 15)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` of a `/proc/<pid>/status` file, KiB.
fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The server's own counters: RTP packets received from publishers and forwarded to
/// subscribers (`sfu_rtp_packets_*_total` on `/metrics`), and bytes through its media sockets
/// (`sfu_bytes_*_total`, UDP payload of every datagram).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RtpCounters {
    /// RTP packets received.
    pub received: f64,
    /// RTP packets forwarded.
    pub forwarded: f64,
    /// Bytes received on the media sockets, when the server counts them.
    pub bytes_in: Option<f64>,
    /// Bytes sent from the media sockets, when the server counts them.
    pub bytes_out: Option<f64>,
}

/// The text of `/metrics` (blocking, bounded by a 2 s timeout); `None` when unavailable.
fn scrape(http: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&http, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the first series of `name` (any labels) on `/metrics`; `None` when the server
/// has none (yet) or is unavailable.
pub fn scrape_metric(http: SocketAddr, name: &str) -> Option<f64> {
    let text = scrape(http)?;
    metric_value(&text, name)
}

/// The value of the first series of `name` in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Live peers of each media engine shard, in shard order (`sfu_shard_peers`; blocking, bounded
/// by a 2 s timeout); empty when unavailable.
pub fn scrape_shard_peers(http: SocketAddr) -> Vec<u64> {
    scrape(http).map_or_else(Vec::new, |text| shard_peers(&text))
}

/// The `sfu_shard_peers{shard="i"}` series of Prometheus text, in shard order.
fn shard_peers(text: &str) -> Vec<u64> {
    (0..)
        .map_while(|shard| metric_value(text, &format!("sfu_shard_peers{{shard=\"{shard}\"}}")))
        .map(|peers| peers as u64)
        .collect()
}

/// Scrape `/metrics` (blocking, bounded by a 2 s timeout); `None` when unavailable.
pub fn scrape_rtp(http: SocketAddr) -> Option<RtpCounters> {
    let text = scrape(http)?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .filter(|l| l.starts_with(name))
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
    };
    Some(RtpCounters {
        received: value("sfu_rtp_packets_received_total")?,
        forwarded: value("sfu_rtp_packets_forwarded_total")?,
        bytes_in: value("sfu_bytes_received_total"),
        bytes_out: value("sfu_bytes_sent_total"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_status() {
        let stat = "4242 (stoa (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(
            parse_rss_kib("Name:\tstoa\nVmRSS:\t   51200 kB\n"),
            Some(51_200)
        );
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_peers_per_shard_in_shard_order() {
        let text = "# TYPE sfu_shard_peers gauge\nsfu_shard_peers{shard=\"1\"} 501\n\
                    sfu_shard_peers{shard=\"0\"} 1003\nsfu_shard_peers_x 7\nsfu_peers 1504\n";
        assert_eq!(shard_peers(text), [1003, 501]);
        assert!(shard_peers("sfu_peers 3\n").is_empty());
    }

    #[test]
    fn reads_one_metric() {
        let text = "# HELP x\ncontrol_relays_started_total_x 9\ncontrol_relays_started_total 2\n";
        assert_eq!(
            metric_value(text, "control_relays_started_total"),
            Some(2.0)
        );
        assert_eq!(metric_value("a{b=\"c\"} 3\n", "a"), Some(3.0));
        assert_eq!(metric_value(text, "absent"), None);
    }

    #[test]
    fn probes_this_process() {
        let mut probe = ProcProbe::new(std::process::id());
        #[allow(clippy::disallowed_methods)]
        let s = probe.sample(Instant::now()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
