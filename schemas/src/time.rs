//! Time as the protocol sees it: whole seconds since the Unix epoch, UTC, and a `Clock` trait so
//! that expiry, withdrawal and batch ageing are tested with a clock the test controls.

use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since 1970-01-01T00:00:00Z. Every timestamp on the wire is one of these (a JSON integer).
pub type UnixSeconds = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in Unix seconds.
    fn now(&self) -> UnixSeconds;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixSeconds {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // A clock before 1970 is a misconfigured machine; report the epoch rather than panic.
            Err(_) => 0,
        }
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: UnixSeconds) -> Self {
        Self(AtomicI64::new(t))
    }
    /// Set the time.
    pub fn set(&self, t: UnixSeconds) {
        self.0.store(t, Ordering::SeqCst);
    }
    /// Move the time forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixSeconds {
        self.0.load(Ordering::SeqCst)
    }
}

/// The civil UTC date of a Unix timestamp.
pub fn civil_date(t: UnixSeconds) -> Option<jiff::civil::Date> {
    let ts = jiff::Timestamp::from_second(t).ok()?;
    Some(ts.to_zoned(jiff::tz::TimeZone::UTC).date())
}
