//! Allocate attempts per source IP: a token bucket each, in a bounded table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Most source IPs tracked at once. When full, buckets that have refilled are dropped; if none
/// has, attempts from untracked IPs are refused until some do (a flood of fresh source
/// addresses then costs the flooder, not the table).
pub const MAX_TRACKED_IPS: usize = 16_384;

/// Token bucket parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Attempts allowed in a burst.
    pub burst: u32,
    /// Attempts regained per second.
    pub per_second: u32,
}

impl Default for RateLimit {
    /// 64 attempts at once, 16 per second after that: a browser's two peer connections over
    /// three transports need 12 (each Allocate is sent twice, the first to learn the nonce).
    fn default() -> Self {
        Self {
            burst: 64,
            per_second: 16,
        }
    }
}

/// Buckets in thousandths of an attempt.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<IpAddr, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    updated: Instant,
}

impl RateLimiter {
    /// An empty table.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Takes one attempt for `ip`; `false` when its bucket is empty (or the table is full).
    pub fn try_take(&mut self, now: Instant, ip: IpAddr) -> bool {
        let full = u64::from(self.limit.burst) * 1000;
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= MAX_TRACKED_IPS {
            self.sweep(now);
            if self.buckets.len() >= MAX_TRACKED_IPS {
                return false;
            }
        }
        let per_second = u64::from(self.limit.per_second);
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            milli_tokens: full,
            updated: now,
        });
        let elapsed_ms = u64::try_from(now.saturating_duration_since(bucket.updated).as_millis())
            .unwrap_or(u64::MAX);
        bucket.milli_tokens = bucket
            .milli_tokens
            .saturating_add(elapsed_ms.saturating_mul(per_second))
            .min(full);
        bucket.updated = now;
        if bucket.milli_tokens >= 1000 {
            bucket.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }

    /// Drops buckets that would be full by now (they carry no information).
    pub fn sweep(&mut self, now: Instant) {
        let full = u64::from(self.limit.burst) * 1000;
        let per_second = u64::from(self.limit.per_second);
        self.buckets.retain(|_, bucket| {
            let elapsed_ms =
                u64::try_from(now.saturating_duration_since(bucket.updated).as_millis())
                    .unwrap_or(u64::MAX);
            bucket
                .milli_tokens
                .saturating_add(elapsed_ms.saturating_mul(per_second))
                < full
        });
    }

    /// How many IPs are tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no IP is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "tests pick an arbitrary start instant"
)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            burst: 3,
            per_second: 2,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| limiter.try_take(now, ip)));
        assert!(!limiter.try_take(now, ip));
        assert!(limiter.try_take(now + Duration::from_millis(500), ip));
        assert!(!limiter.try_take(now + Duration::from_millis(500), ip));
        // Another IP has its own bucket.
        assert!(limiter.try_take(now, "192.0.2.2".parse().unwrap()));
        limiter.sweep(now + Duration::from_secs(10));
        assert!(limiter.is_empty());
    }

    #[test]
    fn table_stays_bounded_under_a_flood_of_addresses() {
        let now = Instant::now();
        let mut limiter = RateLimiter::new(RateLimit {
            burst: 1,
            per_second: 1,
        });
        for i in 0..(MAX_TRACKED_IPS as u32 + 100) {
            limiter.try_take(now, IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(limiter.len(), MAX_TRACKED_IPS);
        // Once buckets refill, new addresses get in again.
        assert!(limiter.try_take(
            now + Duration::from_secs(2),
            "198.51.100.1".parse().unwrap()
        ));
    }
}
