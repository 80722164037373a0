//! The donation load generator the intake benchmarks share: concurrent TLS clients posting
//! envelopes until all are sent, with each request's latency.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// What a load run achieved.
pub struct LoadResult {
    pub ok: usize,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    /// The `p` quantile of the latencies.
    pub fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        let idx = ((l.len() as f64 - 1.0) * p).round() as usize;
        l.get(idx).copied().unwrap_or_default()
    }
    /// The `p` quantile in milliseconds.
    pub fn pct_ms(&self, p: f64) -> f64 {
        self.pct(p).as_secs_f64() * 1e3
    }
}

/// `clients` clients, client `i` posting to `urls[i % urls.len()]`, until `bodies` are all
/// sent; any answer but a success ends the run with an error.
pub async fn run_load(
    client: reqwest::Client,
    urls: Vec<String>,
    bodies: Arc<Vec<Vec<u8>>>,
    clients: usize,
) -> Result<LoadResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, url, bodies, next) = (
            client.clone(),
            urls[c % urls.len()].clone(),
            bodies.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/vnd.datadonor.envelope.v1")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = resp.status();
                let _ = resp.bytes().await?;
                if !status.is_success() {
                    bail!("donation {i} to {url} answered {status}");
                }
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(LoadResult {
        ok: latencies.len(),
        elapsed: start.elapsed(),
        latencies,
    })
}
