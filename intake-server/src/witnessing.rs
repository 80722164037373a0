//! Asking the configured witnesses (`[[witnesses]]`) to cosign the published checkpoint.
//!
//! Publication does not wait for witnesses: the committer signs and publishes each checkpoint
//! and sends its receipts as before. A task checks the published checkpoint every
//! [`INTERVAL`] and posts it to every witness that has not cosigned that size yet (C2SP
//! tlog-witness `add-checkpoint`, with the consistency proof from the size the witness last
//! cosigned, learnt from its `409` answer after a restart). Each answer is verified against the
//! witness's key before it is kept, and `GET /v1/ledger/checkpoint` serves the checkpoint with
//! the cosignatures gathered for that very size. A client that needs a quorum retries until the
//! note carries it (normally within one interval plus the witnesses' round trip).

use std::time::Duration;

use datadonor_schemas::checkpoint;
use datadonor_schemas::cosignature::{
    self, parse_conflict_size, AddCheckpointRequest, Cosignature, CosignatureError, WitnessKey,
};
use tokio::sync::watch;

use crate::app::AppState;
use crate::config::ConfigError;
use crate::Error;

/// How often the task looks for a checkpoint the witnesses have not cosigned.
pub const INTERVAL: Duration = Duration::from_millis(250);

/// How long one witness request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Latest cosignature timestamp accepted, relative to the intake's clock.
const MAX_SKEW_SECS: u64 = 300;

/// Cosignatures gathered for one published checkpoint.
#[derive(Debug, Default, Clone)]
pub struct Cosigned {
    /// The checkpoint size they are for.
    pub size: u64,
    /// Cosignatures, in the order of `[[witnesses]]`, at most one per witness.
    pub lines: Vec<(usize, Cosignature)>,
}

impl Cosigned {
    /// `note` (the published checkpoint of `size`) with the cosignatures gathered for that size.
    pub fn note_with(&self, note: &str, size: u64) -> String {
        if self.size != size || self.lines.is_empty() {
            return note.to_string();
        }
        let lines: Vec<Cosignature> = self.lines.iter().map(|(_, c)| c.clone()).collect();
        cosignature::append_cosignatures(note, &lines)
    }

    fn add(&mut self, size: u64, witness: usize, c: Cosignature) {
        if self.size != size {
            self.size = size;
            self.lines.clear();
        }
        self.lines.retain(|(w, _)| *w != witness);
        self.lines.push((witness, c));
        self.lines.sort_by_key(|(w, _)| *w);
    }

    fn has(&self, size: u64, witness: usize) -> bool {
        self.size == size && self.lines.iter().any(|(w, _)| *w == witness)
    }
}

/// Why one request to a witness gave no cosignature (logged; retried at the next interval).
#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("request: {0}")]
    Http(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(u16),
    #[error("its size {0} is beyond the published size")]
    Ahead(u64),
    #[error("its 409 answer is malformed")]
    BadConflict,
    #[error("its answer: {0}")]
    Cosignature(#[from] CosignatureError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("the published checkpoint does not open")]
    Note,
    #[error("the ledger state is unavailable")]
    State,
}

struct Target {
    index: usize,
    url: String,
    key: WitnessKey,
    client: reqwest::Client,
    /// The size the witness last cosigned, as far as the intake knows.
    known: u64,
}

/// An HTTPS-only client that trusts only the CA in the PEM file at `ca_path` (not the system's
/// roots), built from `builder` (timeouts); `what` names the peer in errors.
pub(crate) fn pinned_client(
    ca_path: &std::path::Path,
    what: &str,
    builder: reqwest::ClientBuilder,
) -> Result<reqwest::Client, Error> {
    let pem = std::fs::read(ca_path).map_err(Error::io(format!(
        "reading the {what} CA {}",
        ca_path.display()
    )))?;
    let ca = reqwest::Certificate::from_pem(&pem)
        .map_err(|e| Error::Tls(format!("{}: {e}", ca_path.display())))?;
    builder
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .https_only(true)
        .build()
        .map_err(|e| Error::Tls(format!("{what} client: {e}")))
}

/// Starts the task if witnesses are configured; it stops when `stop` turns true.
pub fn spawn(state: AppState, stop: watch::Receiver<bool>) -> Result<(), Error> {
    let config = &state.0.config;
    if config.witnesses.is_empty() || state.sequencing().is_none() {
        return Ok(());
    }
    let mut targets = Vec::new();
    for (index, w) in config.witnesses.iter().enumerate() {
        let key = WitnessKey::parse_vkey(&w.vkey).map_err(|e| {
            Error::Config(ConfigError::Invalid(format!(
                "witnesses[{index}].vkey: {e}"
            )))
        })?;
        let client = pinned_client(
            &config.path(&w.ca_cert),
            "witness",
            reqwest::Client::builder().timeout(REQUEST_TIMEOUT),
        )?;
        targets.push(Target {
            index,
            url: format!("{}/add-checkpoint", w.url.trim_end_matches('/')),
            key,
            client,
            known: 0,
        });
    }
    tokio::spawn(run(state, targets, stop));
    Ok(())
}

async fn run(state: AppState, mut targets: Vec<Target>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
        for t in &mut targets {
            let Ok((size, note)) = published(&state) else {
                return;
            };
            let Some(q) = state.sequencing() else {
                return;
            };
            let done = q.cosigned.read().is_ok_and(|c| c.has(size, t.index));
            if done {
                continue;
            }
            let asked = tokio::select! {
                r = ask(&state, t, size, &note) => r,
                _ = stop.wait_for(|v| *v) => return,
            };
            match asked {
                Ok(c) => {
                    if let Ok(mut cosigned) = q.cosigned.write() {
                        cosigned.add(size, t.index, c);
                    }
                }
                Err(e) => tracing::warn!(witness = t.key.name(), error = %e, "no cosignature"),
            }
        }
    }
}

fn published(state: &AppState) -> Result<(u64, String), AskError> {
    let q = state.sequencing().ok_or(AskError::State)?;
    let s = q.state.read().map_err(|_| AskError::State)?;
    Ok((s.published_size(), s.published_note().to_string()))
}

/// One witness, one checkpoint: at most two requests (the second after a `409` taught the
/// witness's size).
async fn ask(
    state: &AppState,
    t: &mut Target,
    size: u64,
    note: &str,
) -> Result<Cosignature, AskError> {
    let q = state.sequencing().ok_or(AskError::State)?;
    let verifier = state.0.verifier.clone();
    let body = checkpoint::open(note.as_bytes(), std::slice::from_ref(&verifier))
        .map_err(|_| AskError::Note)?
        .checkpoint
        .to_body();
    for _ in 0..2 {
        if t.known > size {
            return Err(AskError::Ahead(t.known));
        }
        let old = t.known;
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            let s = q.state.read().map_err(|_| AskError::State)?;
            s.consistency_proof(old, size)?
        };
        let request = AddCheckpointRequest {
            old_size: old,
            proof,
            note: note.as_bytes().to_vec(),
        };
        let resp = t
            .client
            .post(&t.url)
            .body(request.to_bytes())
            .send()
            .await?;
        let status = resp.status().as_u16();
        let answer = resp.bytes().await?;
        match status {
            200 => {
                let now = u64::try_from(state.0.clock.now()).unwrap_or(0);
                let c = cosignature::verify_response(&body, &answer, &t.key, now + MAX_SKEW_SECS)?;
                t.known = size;
                return Ok(c);
            }
            409 => t.known = parse_conflict_size(&answer).ok_or(AskError::BadConflict)?,
            other => return Err(AskError::Status(other)),
        }
    }
    Err(AskError::Status(409))
}
