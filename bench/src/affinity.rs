//! Pinning threads to CPUs given as taskset-style lists (`0`, `0-1`, `0,2`), so that the server,
//! the harness and the baselines each keep to their own cores.

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
}
