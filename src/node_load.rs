//! This node's load for its record in the node registry (`stoa_control::nodes`): the media
//! plane's rooms and participants, the listener-streams it forwards (measured: forwarded
//! packets per second over the Opus packet rate) and the process's CPU share, each read when
//! the control plane writes the record.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use stoa_control::nodes::{LoadSource, NodeLoad};
use stoa_sfu::shell::SfuHandle;
use stoa_signaling::service::Signaling;

use crate::metrics::QUERY_TIMEOUT;

/// Packets per second one listener-stream of Opus in 20 ms frames carries.
const PACKETS_PER_STREAM: f64 = 50.0;

/// The media plane and process counters the load is read from.
#[derive(Debug)]
pub struct MediaLoad {
    signaling: Signaling,
    sfu: SfuHandle,
    /// CPU seconds of the process and packets forwarded, at the last reading.
    last: Mutex<Option<Reading>>,
    cores: f64,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    at: Instant,
    cpu: Duration,
    forwarded: u64,
}

impl MediaLoad {
    /// Reads `signaling` and `sfu`.
    pub fn new(signaling: Signaling, sfu: SfuHandle) -> MediaLoad {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        MediaLoad {
            signaling,
            sfu,
            last: Mutex::new(None),
            cores: cores as f64,
        }
    }
}

#[async_trait::async_trait]
impl LoadSource for MediaLoad {
    // The shell owns the clock: rates over the time between two records.
    #[allow(clippy::disallowed_methods)]
    async fn load(&self) -> NodeLoad {
        let mut load = NodeLoad::default();
        if let Ok(Ok(s)) = tokio::time::timeout(QUERY_TIMEOUT, self.signaling.stats()).await {
            load.rooms = s.rooms;
            load.participants = s.publishers + s.listeners;
            load.listeners = s.listeners;
        }
        let forwarded = match tokio::time::timeout(QUERY_TIMEOUT, self.sfu.stats()).await {
            Ok(Ok(shards)) => shards.iter().map(|s| s.rtp_forwarded).sum(),
            _ => 0,
        };
        let now = Reading {
            at: Instant::now(),
            cpu: process_cpu().unwrap_or_default(),
            forwarded,
        };
        let before = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(now);
        if let Some(before) = before {
            let wall = now.at.duration_since(before.at).as_secs_f64();
            if wall > 0.0 {
                let cpu = now.cpu.saturating_sub(before.cpu).as_secs_f64();
                load.cpu = (cpu / wall / self.cores).clamp(0.0, 1.0) as f32;
                let packets = now.forwarded.saturating_sub(before.forwarded) as f64;
                load.streams = (packets / wall / PACKETS_PER_STREAM).round() as u64;
            }
        }
        load
    }
}

/// The CPU time (user and system) this process used so far, from `/proc/self/stat`.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    // After the name: state (3), … utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // Linux reports them in USER_HZ, 100 per second for every user-space program.
    Some(Duration::from_millis((utime + stime) * 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn process_cpu_time_is_read_and_grows() {
        let before = process_cpu().unwrap_or_else(|| panic!("no /proc/self/stat"));
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = process_cpu().unwrap_or_default();
        assert!(after > before, "{before:?} then {after:?}");
    }
}
