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

/// Per-thread counters of one process at one instant: (name group, tid) → (run ns, wait ns).
#[derive(Debug, Clone, Default)]
pub struct ThreadSample {
    threads: BTreeMap<(String, u32), (u64, u64)>,
}

/// A group of threads' time over a phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadTime {
    /// Thread name without trailing digits and dashes.
    pub group: String,
    /// Time on a CPU, ms.
    pub run_ms: u64,
    /// Time runnable but waiting for a CPU, ms.
    pub wait_ms: u64,
}

impl ThreadSample {
    /// Read every thread of process `pid` (`"self"` for this one).
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
            // A thread may end between the listing and the reads: skip it.
            let (Ok(comm), Ok(stat)) = (
                std::fs::read_to_string(entry.path().join("comm")),
                std::fs::read_to_string(entry.path().join("schedstat")),
            ) else {
                continue;
            };
            if let Some(times) = parse_schedstat(&stat) {
                threads.insert((group(&comm), tid), times);
            }
        }
        Ok(ThreadSample { threads })
    }

    /// Each group's time from `earlier` to this sample (threads born since count from zero).
    pub fn since(&self, earlier: &ThreadSample) -> Vec<ThreadTime> {
        let mut groups: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for ((name, tid), (run, wait)) in &self.threads {
            let (run0, wait0) = earlier
                .threads
                .get(&(name.clone(), *tid))
                .copied()
                .unwrap_or_default();
            let g = groups.entry(name).or_default();
            g.0 += run.saturating_sub(run0);
            g.1 += wait.saturating_sub(wait0);
        }
        groups
            .into_iter()
            .filter(|(_, (run, wait))| run + wait >= 1_000_000)
            .map(|(group, (run, wait))| ThreadTime {
                group: group.to_owned(),
                run_ms: run / 1_000_000,
                wait_ms: wait / 1_000_000,
            })
            .collect()
    }
}

/// One line of the form `"sfu-shard 812 / 40"` per group: run / run-queue wait, ms.
pub fn summary(times: &[ThreadTime]) -> String {
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
