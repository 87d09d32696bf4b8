//! Where a process's threads spend a phase: on a CPU, or runnable and waiting for one.
//!
//! Linux keeps, per thread, the time it ran and the time it sat on a run queue waiting for a
//! CPU (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds). Read at the start and the end of a
//! phase, the difference tells whether a thread was slow because it had work or because it
//! waited for the core (a busy neighbour thread on the same core shows as run-queue wait).
//! Threads are grouped by name without trailing digits (`sfu-shard-0` and `sfu-shard-1` are
//! `sfu-shard`).

use std::collections::BTreeMap;
use std::io;

use serde::Serialize;

/// Per-thread counters of one process at one instant: (name group, tid, start time) → (run
/// ns, wait ns). The start time tells a thread from a later one that got its id again.
#[derive(Debug, Clone, Default)]
pub struct ThreadSample {
    threads: BTreeMap<(String, u32, u64), (u64, u64)>,
}

/// A group of threads' time over a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadTime {
    /// Thread name without trailing digits, dashes, underscores and spaces.
    pub group: String,
    /// Time on a CPU, ms.
    pub run_ms: u64,
    /// Time runnable but waiting for a CPU, ms.
    pub wait_ms: u64,
}

impl ThreadSample {
    /// Read every thread of process `pid` (`"self"` for this one). A thread that ends while
    /// it is read is left out; any other failure is an error (a partial sample would count a
    /// missing thread's whole life into the next phase).
    pub fn read(pid: &str) -> io::Result<ThreadSample> {
        let mut threads = BTreeMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let entry = entry?;
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let read = |file: &str| match std::fs::read(entry.path().join(file)) {
                Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            };
            let (Some(comm), Some(stat), Some(schedstat)) =
                (read("comm")?, read("stat")?, read("schedstat")?)
            else {
                continue;
            };
            let invalid = |what: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("/proc/{pid}/task/{tid}/{what}: unexpected contents"),
                )
            };
            let started = parse_start_time(&stat).ok_or_else(|| invalid("stat"))?;
            let times = parse_schedstat(&schedstat).ok_or_else(|| invalid("schedstat"))?;
            threads.insert((group(&comm), tid, started), times);
        }
        Ok(ThreadSample { threads })
    }

    /// Each group's time from `earlier` to this sample, groups that ran or waited. A thread born
    /// since counts from zero; a thread that ended since is not in this sample, so its time in
    /// the phase is not counted.
    pub fn since(&self, earlier: &ThreadSample) -> Vec<ThreadTime> {
        let mut groups: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for ((name, tid, started), (run, wait)) in &self.threads {
            let (run0, wait0) = earlier
                .threads
                .get(&(name.clone(), *tid, *started))
                .copied()
                .unwrap_or_default();
            let g = groups.entry(name).or_default();
            g.0 += run.saturating_sub(run0);
            g.1 += wait.saturating_sub(wait0);
        }
        groups
            .into_iter()
            .filter(|(_, (run, wait))| run + wait > 0)
            .map(|(group, (run, wait))| ThreadTime {
                group: group.to_owned(),
                run_ms: run / 1_000_000,
                wait_ms: wait / 1_000_000,
            })
            .collect()
    }
}

/// One line of the form `"sfu-shard 812 / 40"` per group: run / run-queue wait, ms; `-` for
/// none.
pub fn summary(times: &[ThreadTime]) -> String {
    if times.is_empty() {
        return "-".to_owned();
    }
    let parts: Vec<String> = times
        .iter()
        .map(|t| format!("{} {} / {}", t.group, t.run_ms, t.wait_ms))
        .collect();
    parts.join(", ")
}

/// The first two fields of a `schedstat` file: run time and run-queue wait, ns.
fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// Field 22 of a `/proc/<pid>/task/<tid>/stat` line: when the thread started, in clock ticks
/// since boot.
fn parse_start_time(stat: &str) -> Option<u64> {
    crate::server::stat_field(stat, 22)?.parse().ok()
}

/// A thread name without its trailing number: `sfu-shard-3` → `sfu-shard`.
fn group(comm: &str) -> String {
    comm.trim_end()
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .trim_end_matches(['-', '_', ' '])
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedstat_lines_and_names_parse() {
        assert_eq!(
            parse_schedstat("1200000 34000 17\n"),
            Some((1_200_000, 34_000))
        );
        assert_eq!(parse_schedstat("garbage"), None);
        let stat = "4242 (odd) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20";
        assert_eq!(parse_start_time(stat), Some(777));
        assert_eq!(parse_start_time("4242 (x) S 1 2"), None);
        assert_eq!(summary(&[]), "-");
        assert_eq!(group("sfu-shard-12\n"), "sfu-shard");
        assert_eq!(group("stoa"), "stoa");
    }

    #[test]
    fn a_spinning_thread_shows_in_its_group() {
        let spinner = std::thread::Builder::new()
            .name("spinner-7".into())
            .spawn(|| {
                let before = ThreadSample::read("self").expect("read /proc/self/task");
                let clock = crate::clock::Clock::start();
                let mut x = 0u64;
                // Spin until this thread has run 20 ms, whatever else the machine runs; bounded
                // in time.
                loop {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                    let times = ThreadSample::read("self").expect("read").since(&before);
                    let spun = times.iter().find(|t| t.group == "spinner");
                    if spun.is_some_and(|t| t.run_ms >= 20)
                        || clock.elapsed() > std::time::Duration::from_secs(10)
                    {
                        return times;
                    }
                }
            })
            .expect("spawn");
        let times = spinner.join().expect("spinner");
        let spun = times.iter().find(|t| t.group == "spinner");
        assert!(spun.is_some_and(|t| t.run_ms >= 20), "{times:?}");
        assert!(summary(&times).contains("spinner "), "{}", summary(&times));
    }
}
