//! Pinning threads to CPUs given as taskset-style lists (`0`, `0-1`, `0,2`), so that the server,
//! the harness and the baselines each keep to their own cores; and lowering a harness thread's
//! priority, so that load it generates yields its CPU to clients being measured.

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// A CPU list that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("CPU list {list:?}: {reason}")]
pub struct AffinityError {
    list: String,
    reason: String,
}

/// The CPUs of a taskset-style list.
pub fn parse(list: &str) -> Result<Vec<usize>, AffinityError> {
    let bad = |reason: String| AffinityError {
        list: list.to_owned(),
        reason,
    };
    let number = |s: &str| s.trim().parse::<usize>().map_err(|e| bad(e.to_string()));
    let mut out = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                if a > b || b - a > 4096 {
                    return Err(bad(format!("bad range {part:?}")));
                }
                out.extend(a..=b);
            }
            None => out.push(number(part)?),
        }
    }
    Ok(out)
}

/// Pin the calling thread (and the threads it starts later) to `list`.
pub fn pin(list: &str) -> Result<(), AffinityError> {
    let mut set = CpuSet::new();
    for cpu in parse(list)? {
        set.set(cpu).map_err(|e| AffinityError {
            list: list.to_owned(),
            reason: format!("cpu {cpu}: {e}"),
        })?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| AffinityError {
        list: list.to_owned(),
        reason: format!("sched_setaffinity: {e}"),
    })
}

/// A priority that could not be lowered.
#[derive(Debug, thiserror::Error)]
pub enum PriorityError {
    /// Lowering by this much is out of range (1 to 19).
    #[error("lowering a priority by {0}: give 1 to 19")]
    Step(i32),
    /// The thread runs at the lowest priority already.
    #[error("the thread runs at nice {0} already: nothing is lower")]
    Lowest(i32),
    /// The system refused.
    #[error("setpriority: {0}")]
    System(#[from] std::io::Error),
}

/// Lower the calling thread's priority by `by` nice steps (1 to 19) from what it has, to at
/// most 19; the threads it starts later inherit it. Returns the new nice value. Raising a
/// thread's nice needs no privilege; on Linux each thread has its own, so the rest of the
/// process keeps its priority.
pub fn lower_priority(by: i32) -> Result<i32, PriorityError> {
    if !(1..=19).contains(&by) {
        return Err(PriorityError::Step(by));
    }
    let base = priority()?;
    if base >= 19 {
        return Err(PriorityError::Lowest(base));
    }
    let nice = (base + by).min(19);
    rustix::process::setpriority_process(None, nice).map_err(std::io::Error::from)?;
    Ok(nice)
}

/// The calling thread's nice value.
pub fn priority() -> std::io::Result<i32> {
    rustix::process::getpriority_process(None).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse("0").unwrap(), [0]);
        assert_eq!(parse("0-2,5").unwrap(), [0, 1, 2, 5]);
        assert!(parse("2-1").is_err());
        assert!(parse("x").is_err());
    }

    #[test]
    fn a_thread_lowers_its_own_priority_only() {
        let before = priority().expect("read nice");
        if before >= 19 {
            // Nothing is lower than where the tests run.
            assert!(matches!(lower_priority(1), Err(PriorityError::Lowest(19))));
            return;
        }
        let lowered = std::thread::spawn(|| {
            let nice = lower_priority(3).expect("raise nice");
            // A thread started now inherits it.
            let child = std::thread::spawn(priority).join().expect("child");
            (
                nice,
                priority().expect("read nice"),
                child.expect("child's nice"),
            )
        })
        .join()
        .expect("thread");
        let expected = (before + 3).min(19);
        assert_eq!(lowered, (expected, expected, expected));
        assert_eq!(
            priority().expect("read nice"),
            before,
            "this thread kept its own"
        );
        assert!(matches!(lower_priority(0), Err(PriorityError::Step(0))));
        assert!(matches!(lower_priority(20), Err(PriorityError::Step(20))));
    }
}
