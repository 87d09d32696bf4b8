//! What one relay counts across all its [`Server`](super::Server)s: live allocations per
//! identity and in total, and the per-IP Allocate rate limit.
//!
//! A relay that runs one core per shard (thread) gives every core a clone of one [`Ledger`],
//! so the quotas and the rate limit hold for the relay as a whole, whichever shard a client's
//! datagrams land on. The ledger is touched only by Allocate requests and when an allocation
//! ends, never by relayed data, so the lock inside it is off the hot path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use super::rate_limit::{RateLimit, RateLimiter};
use super::server::Quotas;

/// Shared allocation counts and Allocate rate limit. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Ledger {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    quotas: Quotas,
    per_user: HashMap<String, usize>,
    total: usize,
    rate_limiter: RateLimiter,
}

/// Why an allocation is refused by the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaError {
    /// The identity holds [`Quotas::per_user`] allocations already.
    PerUser,
    /// The relay holds [`Quotas::total`] allocations already.
    Total,
}

impl Ledger {
    /// An empty ledger enforcing `quotas` and `rate_limit`.
    pub fn new(quotas: Quotas, rate_limit: RateLimit) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                quotas,
                per_user: HashMap::new(),
                total: 0,
                rate_limiter: RateLimiter::new(rate_limit),
            })),
        }
    }

    /// Counts a new allocation for `identity`, unless a quota is reached.
    pub fn try_allocate(&self, identity: &str) -> Result<(), QuotaError> {
        let mut state = self.lock();
        let count = state.per_user.get(identity).copied().unwrap_or(0);
        if count >= state.quotas.per_user {
            return Err(QuotaError::PerUser);
        }
        if state.total >= state.quotas.total {
            return Err(QuotaError::Total);
        }
        *state.per_user.entry(identity.to_owned()).or_insert(0) += 1;
        state.total += 1;
        Ok(())
    }

    /// An allocation of `identity` ended.
    pub fn release(&self, identity: &str) {
        let mut state = self.lock();
        if let Some(count) = state.per_user.get_mut(identity) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_user.remove(identity);
            }
            state.total = state.total.saturating_sub(1);
        }
    }

    /// Takes one Allocate attempt for `ip`; `false` when its bucket is empty.
    pub fn try_take(&self, now: Instant, ip: IpAddr) -> bool {
        self.lock().rate_limiter.try_take(now, ip)
    }

    /// Forgets refilled rate-limit buckets.
    pub fn sweep(&self, now: Instant) {
        self.lock().rate_limiter.sweep(now);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind, still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_quotas() {
        let a = Ledger::new(
            Quotas {
                per_user: 2,
                total: 3,
            },
            RateLimit::default(),
        );
        let b = a.clone();
        assert_eq!(a.try_allocate("x"), Ok(()));
        assert_eq!(b.try_allocate("x"), Ok(()));
        assert_eq!(a.try_allocate("x"), Err(QuotaError::PerUser));
        assert_eq!(b.try_allocate("y"), Ok(()));
        assert_eq!(a.try_allocate("z"), Err(QuotaError::Total));
        b.release("x");
        assert_eq!(a.try_allocate("z"), Ok(()));
        // Releasing an unknown identity changes nothing.
        a.release("nobody");
        assert_eq!(b.try_allocate("w"), Err(QuotaError::Total));
    }
}
