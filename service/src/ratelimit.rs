//! Token-bucket rate limiting per key: the pseudonymisers limit per client address and per
//! donor credential (so that nobody can evaluate the pseudonymisation function over the CPR
//! space); the intake limits its public ledger reads per client address.
//!
//! Each key has a bucket of `burst` tokens refilled at `per_second`; a request takes one.
//! The table is bounded: when it exceeds [`MAX_TRACKED`] keys, buckets that have refilled
//! completely (indistinguishable from a fresh one) are dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

/// Most addresses tracked before full buckets are pruned.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A per-key token bucket limiter.
#[derive(Debug)]
pub struct RateLimiter<K> {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> RateLimiter<K> {
    /// A limiter.
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take a token for `addr`; false when the bucket is empty.
    pub fn check(&self, addr: K) -> bool {
        self.check_at(addr, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (tests).
    pub fn check_at(&self, addr: K, now: Instant) -> bool {
        let Ok(mut m) = self.buckets.lock() else {
            return false;
        };
        if m.len() >= MAX_TRACKED {
            let (burst, rate) = (self.burst, self.per_second);
            m.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
        }
        let b = m.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
