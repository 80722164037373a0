//! Prometheus metrics (text exposition format 0.0.4), hand-rolled with atomics.
//!
//! Exposed: donations accepted, withdrawals accepted, refusals by problem slug, batch flushes,
//! ledger size, and a request latency histogram per route template. Labels never carry request
//! data (no pseudonyms, no study values, no addresses).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::problem::Problem;

/// Histogram bucket upper bounds in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The intake's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    donations_accepted: AtomicU64,
    withdrawals_accepted: AtomicU64,
    rejected: [AtomicU64; Problem::ALL.len()],
    batch_flushes: AtomicU64,
    orphans_deleted: AtomicU64,
    ledger_size: AtomicU64,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
}

impl Metrics {
    /// A donation receipt was sent.
    pub fn donation_accepted(&self) {
        self.donations_accepted.fetch_add(1, Ordering::Relaxed);
    }
    /// A withdrawal receipt was sent.
    pub fn withdrawal_accepted(&self) {
        self.withdrawals_accepted.fetch_add(1, Ordering::Relaxed);
    }
    /// A request was refused.
    pub fn rejected(&self, p: Problem) {
        if let Some(i) = Problem::ALL.iter().position(|q| *q == p) {
            if let Some(c) = self.rejected.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    /// A batch file was written.
    pub fn batch_flushed(&self) {
        self.batch_flushes.fetch_add(1, Ordering::Relaxed);
    }
    /// The orphan sweep deleted `n` unnamed batches.
    pub fn orphans_deleted(&self, n: usize) {
        self.orphans_deleted.fetch_add(n as u64, Ordering::Relaxed);
    }
    /// The published ledger size.
    pub fn ledger_size(&self, n: u64) {
        self.ledger_size.store(n, Ordering::Relaxed);
    }
    /// Record a request's latency under its route template.
    pub fn observe(&self, route: &'static str, d: Duration) {
        let s = d.as_secs_f64();
        if let Ok(mut m) = self.latency.lock() {
            let h = m.entry(route).or_default();
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                if s <= *b {
                    if let Some(c) = h.buckets.get_mut(i) {
                        *c += 1;
                    }
                }
            }
            h.count += 1;
            h.sum += s;
        }
    }
    /// Refusals counted for a problem.
    pub fn rejected_count(&self, p: Problem) -> u64 {
        Problem::ALL
            .iter()
            .position(|q| *q == p)
            .and_then(|i| self.rejected.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP datadonor_donations_accepted_total Donations acknowledged with a receipt."
        );
        let _ = writeln!(o, "# TYPE datadonor_donations_accepted_total counter");
        let _ = writeln!(
            o,
            "datadonor_donations_accepted_total {}",
            self.donations_accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP datadonor_withdrawals_accepted_total Withdrawals acknowledged with a receipt."
        );
        let _ = writeln!(o, "# TYPE datadonor_withdrawals_accepted_total counter");
        let _ = writeln!(
            o,
            "datadonor_withdrawals_accepted_total {}",
            self.withdrawals_accepted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP datadonor_requests_rejected_total Requests refused, by problem slug."
        );
        let _ = writeln!(o, "# TYPE datadonor_requests_rejected_total counter");
        for (p, c) in Problem::ALL.iter().zip(self.rejected.iter()) {
            let _ = writeln!(
                o,
                "datadonor_requests_rejected_total{{reason=\"{}\"}} {}",
                p.slug(),
                c.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP datadonor_batch_flushes_total Sealed batch files written."
        );
        let _ = writeln!(o, "# TYPE datadonor_batch_flushes_total counter");
        let _ = writeln!(
            o,
            "datadonor_batch_flushes_total {}",
            self.batch_flushes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP datadonor_orphan_batches_deleted_total Batches no ledger entry named, deleted while serving."
        );
        let _ = writeln!(o, "# TYPE datadonor_orphan_batches_deleted_total counter");
        let _ = writeln!(
            o,
            "datadonor_orphan_batches_deleted_total {}",
            self.orphans_deleted.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP datadonor_ledger_size Entries under the latest signed checkpoint."
        );
        let _ = writeln!(o, "# TYPE datadonor_ledger_size gauge");
        let _ = writeln!(
            o,
            "datadonor_ledger_size {}",
            self.ledger_size.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP datadonor_request_duration_seconds Request latency by route."
        );
        let _ = writeln!(o, "# TYPE datadonor_request_duration_seconds histogram");
        if let Ok(m) = self.latency.lock() {
            for (route, h) in m.iter() {
                for (b, c) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
                    let _ = writeln!(
                        o,
                        "datadonor_request_duration_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {c}"
                    );
                }
                let _ = writeln!(
                    o,
                    "datadonor_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    o,
                    "datadonor_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    h.sum
                );
                let _ = writeln!(
                    o,
                    "datadonor_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        o
    }
}
