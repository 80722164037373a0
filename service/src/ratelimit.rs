//! Token-bucket rate limiting per key: the pseudonymisers limit per client address and per
//! donor credential (so that nobody can evaluate the pseudonymisation function over the CPR
//! space); the intake limits its public ledger reads per client address.
//!
//! Each key has a bucket of `burst` tokens refilled at `per_second`; a request takes one.
//! The table is bounded: when a new key would exceed [`MAX_TRACKED`] keys, buckets that have
//! refilled completely (indistinguishable from a fresh one) are dropped, and if none has, the
//! new key is refused until one has.

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
        if m.len() >= MAX_TRACKED && !m.contains_key(&addr) {
            let (burst, rate) = (self.burst, self.per_second);
            m.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            // Still full of keys that are all spending: a newcomer waits rather than growing
            // the table without bound.
            if m.len() >= MAX_TRACKED {
                return false;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_their_rate() {
        let l = RateLimiter::new(2, 1.0);
        let t = Instant::now();
        assert!(l.check_at(1u32, t));
        assert!(l.check_at(1u32, t));
        assert!(!l.check_at(1u32, t));
        assert!(l.check_at(2u32, t), "another key has its own bucket");
        assert!(l.check_at(1u32, t + std::time::Duration::from_millis(1100)));
    }

    #[test]
    fn the_table_never_grows_past_its_bound() {
        let l = RateLimiter::new(5, 0.001);
        let t = Instant::now();
        for k in 0..MAX_TRACKED as u32 {
            assert!(l.check_at(k, t));
        }
        // Every tracked key is spending: a new one is refused, a tracked one still served.
        assert!(!l.check_at(u32::MAX, t));
        assert!(l.check_at(7, t));
        assert_eq!(l.buckets.lock().map(|m| m.len()).unwrap_or(0), MAX_TRACKED);
        // Once buckets have refilled, they are pruned and the newcomer gets one.
        let later = t + std::time::Duration::from_secs(10_000);
        assert!(l.check_at(u32::MAX, later));
        assert!(l.buckets.lock().map(|m| m.len()).unwrap_or(0) < MAX_TRACKED);
    }
}
