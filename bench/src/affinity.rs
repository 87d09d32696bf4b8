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

/// Give the calling thread (and the threads it starts later, which inherit it) nice value
/// `nice` (1 to 19: lower priority than the default 0; raising a thread's nice needs no
/// privilege). On Linux each thread has its own nice value, so the rest of the process keeps
/// its own.
pub fn lower_priority(nice: i32) -> std::io::Result<()> {
    if !(1..=19).contains(&nice) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("nice {nice}: a lower priority is 1 to 19"),
        ));
    }
    rustix::process::setpriority_process(None, nice).map_err(std::io::Error::from)
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
        // Lower than this thread's, whatever nice the tests run at.
        let target = (before + 1).clamp(12, 19);
        let lowered = std::thread::spawn(move || {
            lower_priority(target).expect("raise nice");
            // A thread started now inherits it.
            let child = std::thread::spawn(priority).join().expect("child");
            (priority().expect("read nice"), child.expect("child's nice"))
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, (target, target));
        assert_eq!(
            priority().expect("read nice"),
            before,
            "this thread kept its own"
        );
        assert!(lower_priority(0).is_err() && lower_priority(20).is_err());
    }
}
