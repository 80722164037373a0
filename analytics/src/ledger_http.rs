//! The intake's ledger over HTTPS (`PROTOCOL.md`, "HTTP API of the intake"): the auditor
//! endpoints as a [`LedgerSource`] and `POST /v1/ledger/events` as a [`LedgerSink`].
//!
//! TLS 1.3 only, rustls, with the intake's CA given as a PEM file (no built-in roots). Bearer
//! tokens are held in zeroizing strings and never printed. The library API is synchronous; the
//! client drives a private tokio runtime with one worker thread, which keeps polling pooled
//! connections between calls: a connection the intake closed while the caller was busy (the
//! intake's idle cut-off) is noticed and dropped from the pool rather than reused. A read that
//! still fails in transport is retried once on a fresh connection; an append is not retried
//! (the intake may have logged it).

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use datadonor_schemas::checkpoint::{self, NoteVerifier};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, Hash};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::ledger::{Appended, LedgerError, LedgerSink, LedgerSource};

/// A client of the intake's ledger endpoints.
pub struct HttpLedger {
    base: String,
    auditor_token: Zeroizing<String>,
    analytics_token: Option<Zeroizing<String>>,
    client: reqwest::Client,
    /// Always `Some` until dropped (taken by `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    verifiers: Vec<NoteVerifier>,
}

impl Drop for HttpLedger {
    /// The private runtime is shut down without waiting, so the ledger may be dropped anywhere,
    /// also on an async task (the query service drops it when it stops).
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for HttpLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpLedger({}, tokens: <redacted>)", self.base)
    }
}

#[derive(Deserialize)]
struct EntriesResponse {
    start: u64,
    entries: Vec<String>,
}

#[derive(Deserialize)]
struct ProofResponse {
    proof: Vec<String>,
}

/// `GET /v1/ledger-key`.
#[derive(Debug, Clone, Deserialize)]
pub struct LedgerKey {
    /// Base64 Ed25519 key.
    pub public_key: String,
    /// Signed-note verifier key.
    pub vkey: String,
    /// Checkpoint origin.
    pub origin: String,
}

#[derive(Deserialize)]
struct EventResponse {
    index: u64,
    checkpoint: String,
    inclusion_proof: Vec<String>,
}

fn http_err(url: &str, detail: impl std::fmt::Display) -> LedgerError {
    LedgerError::Http {
        url: url.to_string(),
        detail: detail.to_string(),
    }
}

/// A transport error with its causes ("error sending request: connection closed before
/// message completed"), for the message of a [`LedgerError::Http`].
fn transport_err(url: &str, e: &reqwest::Error) -> LedgerError {
    http_err(url, datadonor_schemas::error_chain(e))
}

fn parse_proof(url: &str, proof: &[String]) -> Result<Vec<Hash>, LedgerError> {
    proof
        .iter()
        .map(|h| {
            let b = hex::decode(h).map_err(|_| http_err(url, "proof element is not hex"))?;
            Hash::from_slice(&b).map_err(|e| http_err(url, e))
        })
        .collect()
}

impl HttpLedger {
    /// A client for `base` (e.g. `https://intake.example:8443`), trusting only the CA
    /// certificates in `ca_pem`.
    pub fn new(
        base: &str,
        auditor_token: Zeroizing<String>,
        analytics_token: Option<Zeroizing<String>>,
        ca_pem: &[u8],
    ) -> Result<Self, LedgerError> {
        if !base.starts_with("https://") {
            return Err(http_err(base, "the ledger URL must be https://"));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .min_tls_version(reqwest::tls::Version::TLS_1_3)
            .timeout(std::time::Duration::from_secs(60));
        let certs = reqwest::Certificate::from_pem_bundle(ca_pem)
            .map_err(|e| http_err(base, format!("CA PEM: {e}")))?;
        if certs.is_empty() {
            return Err(http_err(base, "CA PEM holds no certificate"));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
        let client = builder.build().map_err(|e| http_err(base, e))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("datadonor-ledger-http")
            .enable_all()
            .build()
            .map_err(|e| http_err(base, e))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            auditor_token,
            analytics_token,
            client,
            rt: Some(rt),
            verifiers: Vec::new(),
        })
    }

    /// Load the CA PEM from a file.
    pub fn with_ca_file(
        base: &str,
        auditor_token: Zeroizing<String>,
        analytics_token: Option<Zeroizing<String>>,
        ca: &Path,
    ) -> Result<Self, LedgerError> {
        let pem = std::fs::read(ca).map_err(|source| LedgerError::Io {
            path: ca.to_path_buf(),
            source,
        })?;
        Self::new(base, auditor_token, analytics_token, &pem)
    }

    /// Checkpoint verifiers used to check the receipts of appended events.
    pub fn set_verifiers(&mut self, verifiers: Vec<NoteVerifier>) {
        self.verifiers = verifiers;
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, LedgerError> {
        self.rt.as_ref().ok_or_else(|| LedgerError::Http {
            url: self.base.clone(),
            detail: "the ledger client is shut down".into(),
        })
    }

    fn get(&self, path: &str, token: Option<&str>) -> Result<Vec<u8>, LedgerError> {
        let url = format!("{}{path}", self.base);
        self.runtime()?.block_on(async {
            let send = || {
                let mut req = self.client.get(&url);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                req.send()
            };
            let resp = match send().await {
                Ok(resp) => resp,
                // A read is safe to repeat: once more, on a fresh connection.
                Err(e) if e.is_request() || e.is_connect() => {
                    tracing::debug!(url = %url, "ledger read failed in transport; retrying once");
                    send().await.map_err(|e| transport_err(&url, &e))?
                }
                Err(e) => return Err(transport_err(&url, &e)),
            };
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| transport_err(&url, &e))?;
            if !status.is_success() {
                return Err(http_err(&url, format!("{status}: {}", problem_slug(&body))));
            }
            Ok(body.to_vec())
        })
    }

    /// `GET /v1/ledger-key` (trust on first use unless the caller pins a vkey).
    pub fn ledger_key(&self) -> Result<LedgerKey, LedgerError> {
        let url = format!("{}/v1/ledger-key", self.base);
        let body = self.get("/v1/ledger-key", None)?;
        serde_json::from_slice(&body).map_err(|e| http_err(&url, e))
    }
}

fn problem_slug(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Problem {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Problem>(body)
        .map(|p| {
            p.kind
                .trim_start_matches("urn:datadonor:problem:")
                .to_string()
        })
        .unwrap_or_else(|_| "no problem document".into())
}

impl LedgerSource for HttpLedger {
    fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
        self.get("/v1/ledger/checkpoint", Some(&self.auditor_token))
    }

    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        let path = format!("/v1/ledger/entries?start={start}&end={end}");
        let url = format!("{}{path}", self.base);
        let body = self.get(&path, Some(&self.auditor_token))?;
        let r: EntriesResponse = serde_json::from_slice(&body).map_err(|e| http_err(&url, e))?;
        if r.start != start {
            return Err(http_err(&url, format!("response starts at {}", r.start)));
        }
        r.entries
            .iter()
            .map(|e| {
                STANDARD
                    .decode(e.as_bytes())
                    .map_err(|_| http_err(&url, "entry is not base64"))
            })
            .collect()
    }

    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        let path = format!("/v1/ledger/consistency?from={from}&to={to}");
        let url = format!("{}{path}", self.base);
        let body = self.get(&path, Some(&self.auditor_token))?;
        let r: ProofResponse = serde_json::from_slice(&body).map_err(|e| http_err(&url, e))?;
        parse_proof(&url, &r.proof)
    }
}

impl LedgerSink for HttpLedger {
    fn append(&self, entry: &LedgerEntry) -> Result<Appended, LedgerError> {
        let url = format!("{}/v1/ledger/events", self.base);
        let token = self
            .analytics_token
            .as_ref()
            .ok_or_else(|| http_err(&url, "no analytics token configured"))?;
        let bytes = entry.to_bytes();
        let body = self.runtime()?.block_on(async {
            let resp = self
                .client
                .post(&url)
                .bearer_auth(token.as_str())
                .header("content-type", "application/json")
                .body(bytes.clone())
                .send()
                .await
                .map_err(|e| transport_err(&url, &e))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| transport_err(&url, &e))?;
            if !status.is_success() {
                return Err(LedgerError::Append(format!(
                    "{url}: {status}: {}",
                    problem_slug(&body)
                )));
            }
            Ok(body.to_vec())
        })?;
        let r: EventResponse = serde_json::from_slice(&body).map_err(|e| http_err(&url, e))?;
        if !self.verifiers.is_empty() {
            // The receipt must prove that exactly our bytes were appended.
            let cp = checkpoint::open(r.checkpoint.as_bytes(), &self.verifiers)?.checkpoint;
            let proof = parse_proof(&url, &r.inclusion_proof)?;
            merkle::verify_inclusion(
                r.index,
                cp.size,
                merkle::leaf_hash(&bytes).as_bytes(),
                &proof,
                cp.root.as_bytes(),
            )
            .map_err(|e| {
                LedgerError::Append(format!("inclusion proof of the appended entry: {e}"))
            })?;
        }
        Ok(Appended { index: r.index })
    }
}
