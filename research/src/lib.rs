//! The researcher's client of the steward's query service.
//!
//! A researcher holds an Ed25519 signing key the steward registered (see [`keygen`]), a query
//! spec they wrote, and the steward's signed approval of that spec. This crate signs a
//! [`QueryRequest`] carrying both, sends it over TLS 1.3 to the query service, and renders the
//! differentially private [`ReleasedTable`] the service answers with ([`output`]).
//!
//! **Invariant:** the client links no code that opens a sealed batch and takes no vault key.
//! Its dependencies are the protocol crate and ordinary libraries: no analytics engine, no
//! polars, no HPKE or AES-GCM crate of its own. (The protocol crate defines the envelope and
//! batch formats, and with them the routines that open an envelope *given the vault's private
//! key*; this crate never calls them and never reads such a key, so the linker leaves them out
//! and all a researcher can obtain is what the service releases, with the budget charged for it.)
//! The test `tests/invariant.rs` checks the dependency list and the sources.
#![forbid(unsafe_code)]

pub mod output;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datadonor_schemas::privacy::{QueryRequest, ReleasedTable};
use datadonor_schemas::query::QuerySpec;
use datadonor_schemas::signing::{Context, SignedObject, SigningKey};
use datadonor_schemas::PROTOCOL_VERSION;
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

/// Media type of the service's problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Largest answer read from the service.
pub const MAX_ANSWER_LEN: usize = 64 << 20;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The service refused or failed the request with a problem document.
    #[error("{status} {kind}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// Machine-readable kind (`over-budget`, `not-approved`, …), control characters removed.
        kind: String,
        /// Explanation, control characters removed.
        detail: String,
    },
    /// A local file could not be read or written, or its content is invalid.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The CA file or the TLS configuration is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// The service URL is unusable.
    #[error("service URL: {0}")]
    Url(String),
    /// The connection or the HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The service answered something that is not what the protocol says.
    #[error("unexpected answer from the service: {0}")]
    BadAnswer(String),
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> ClientError {
    ClientError::File {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// Read a file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| file_err(path, e))
}

/// Load a researcher's signing key file.
pub fn load_key(path: &Path) -> Result<SigningKey, ClientError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_err(path, e))?);
    SigningKey::from_key_file(&text).map_err(|e| file_err(path, e))
}

/// Load a steward's signed approval file.
pub fn load_approval(path: &Path) -> Result<SignedObject, ClientError> {
    let bytes = read_file(path)?;
    SignedObject::from_bytes(&bytes).map_err(|e| file_err(path, e))
}

/// Load a query spec file, checking that it parses (the error names the file).
pub fn load_spec(path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    QuerySpec::from_toml(&text).map_err(|e| file_err(path, e))?;
    Ok(text)
}

/// Generate a signing key; write it to `out` (mode 0600) and its base64 public key to
/// `out.pub`. Refuses to overwrite either file. Returns the public key in base64.
pub fn keygen(out: &Path) -> Result<String, ClientError> {
    let pub_path = pub_path(out);
    for p in [out, pub_path.as_path()] {
        if p.exists() || p.symlink_metadata().is_ok() {
            return Err(file_err(p, "already exists; refusing to overwrite it"));
        }
    }
    let key = SigningKey::generate().map_err(|e| file_err(out, e))?;
    let public = key.public_key().to_base64();
    write_new(out, key.to_key_file().as_bytes(), true)?;
    write_new(&pub_path, format!("{public}\n").as_bytes(), false)?;
    Ok(public)
}

/// The public key file next to a key file: `FILE.pub`.
pub fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), ClientError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| file_err(path, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| file_err(path, e))
}

/// The current time in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Build and sign a request for `spec_toml` under `approval`: a random request id and `time`.
pub fn sign_request(
    key: &SigningKey,
    spec_toml: &str,
    approval: &SignedObject,
    time: i64,
) -> Result<SignedObject, ClientError> {
    let mut request_id = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut request_id)
        .map_err(|_| ClientError::Tls("the system random generator failed".into()))?;
    let request = QueryRequest {
        format: PROTOCOL_VERSION,
        request_id,
        time,
        spec_toml: spec_toml.to_string(),
        approval: approval.clone(),
    };
    Ok(SignedObject::sign(Context::QueryRequest, &request, key))
}

/// An HTTPS client of one query service, trusting only the CA certificates given.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    base: reqwest::Url,
    http: reqwest::Client,
}

impl ServiceClient {
    /// A client of the service at `service` (an `https://` URL) trusting the PEM certificates
    /// in `ca_pem`: TLS 1.3 only, rustls with the ring provider, no platform roots.
    pub fn new(service: &str, ca_pem: &[u8]) -> Result<Self, ClientError> {
        let base = reqwest::Url::parse(service).map_err(|e| ClientError::Url(e.to_string()))?;
        if base.scheme() != "https" {
            return Err(ClientError::Url(format!(
                "{service}: the query service is reached over https only"
            )));
        }
        if base.cannot_be_a_base() {
            return Err(ClientError::Url(format!("{service}: not a base URL")));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Tls(format!("CA file: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(format!("CA file: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Tls("CA file: no certificate in it".into()));
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(3600))
            .build()
            .map_err(|e| ClientError::Tls(datadonor_schemas::error_chain(&e)))?;
        Ok(Self { base, http })
    }

    /// A client trusting the CA certificates in the PEM file `ca`.
    pub fn from_ca_file(service: &str, ca: &Path) -> Result<Self, ClientError> {
        let pem = read_file(ca)?;
        Self::new(service, &pem).map_err(|e| match e {
            ClientError::Tls(d) => file_err(ca, d),
            other => other,
        })
    }

    fn url(&self, segments: &[&str]) -> Result<reqwest::Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::Url("not a base URL".into()))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Send a signed request (`POST /v1/queries`); the released table, or the service's
    /// problem.
    pub async fn send(&self, signed: &SignedObject) -> Result<ReleasedTable, ClientError> {
        let url = self.url(&["v1", "queries"])?;
        let resp = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(signed.to_bytes())
            .send()
            .await
            .map_err(|e| ClientError::Http(datadonor_schemas::error_chain(&e)))?;
        let body = answer(resp).await?;
        ReleasedTable::from_json(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }

    /// Sign a request for `spec_toml` under `approval` with `key` and send it.
    pub async fn query(
        &self,
        key: &SigningKey,
        spec_toml: &str,
        approval: &SignedObject,
    ) -> Result<ReleasedTable, ClientError> {
        let signed = sign_request(key, spec_toml, approval, now())?;
        self.send(&signed).await
    }

    /// The study's budgets and, with a researcher, theirs (`GET /v1/budget[/{researcher}]`).
    pub async fn budget(&self, researcher: Option<&str>) -> Result<serde_json::Value, ClientError> {
        let url = match researcher {
            Some(r) => self.url(&["v1", "budget", r])?,
            None => self.url(&["v1", "budget"])?,
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| ClientError::Http(datadonor_schemas::error_chain(&e)))?;
        let body = answer(resp).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// The body of a successful answer, or the problem of an unsuccessful one.
async fn answer(mut resp: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let status = resp.status();
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| ClientError::Http(datadonor_schemas::error_chain(&e)))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_LEN {
            return Err(ClientError::BadAnswer(format!(
                "the answer exceeds {MAX_ANSWER_LEN} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        return Ok(body);
    }
    Err(problem(status.as_u16(), &body))
}

/// The error of a problem document (or of an unexpected error body), with control characters
/// removed from the server's text.
pub fn problem(status: u16, body: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct Doc {
        title: Option<String>,
        detail: Option<String>,
    }
    let clip = |s: &str| -> String { output::sanitize(s).chars().take(2000).collect() };
    match serde_json::from_slice::<Doc>(body) {
        Ok(d) => ClientError::Problem {
            status,
            kind: clip(d.title.as_deref().unwrap_or("error")),
            detail: clip(d.detail.as_deref().unwrap_or("")),
        },
        Err(_) => ClientError::Problem {
            status,
            kind: "error".into(),
            detail: clip(&String::from_utf8_lossy(body)),
        },
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http(format!("runtime: {e}")))
}

/// Sign and send one query, blocking: the released table, or the service's problem.
///
/// Starts its own single-threaded runtime, so it must not be called from inside a Tokio
/// runtime (use [`ServiceClient::query`] there, or call it from `spawn_blocking`).
pub fn run_query_blocking(
    service: &str,
    ca: &Path,
    key: &SigningKey,
    spec_toml: &str,
    approval: &SignedObject,
) -> Result<ReleasedTable, ClientError> {
    let client = ServiceClient::from_ca_file(service, ca)?;
    runtime()?.block_on(client.query(key, spec_toml, approval))
}

/// The budgets, blocking (see [`run_query_blocking`] on runtimes).
pub fn budget_blocking(
    service: &str,
    ca: &Path,
    researcher: Option<&str>,
) -> Result<serde_json::Value, ClientError> {
    let client = ServiceClient::from_ca_file(service, ca)?;
    runtime()?.block_on(client.budget(researcher))
}

/// The line printed after a run: its ledger index, spend and the budgets left.
pub fn spend_summary(t: &ReleasedTable) -> String {
    let p = &t.privacy;
    format!(
        "logged query_run at ledger index {}; spent ε={}, δ={}; left for you: ε={}, δ={}; left for the study: ε={}, δ={}",
        t.ledger_index,
        p.epsilon,
        p.delta,
        round9(p.researcher_epsilon_left),
        round9(p.researcher_delta_left),
        round9(p.study_epsilon_left),
        round9(p.study_delta_left),
    )
}

fn round9(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let mag = v.abs().log10().floor() as i32;
    let scale = 10f64.powi(8 - mag);
    (v * scale).round() / scale
}

/// The budget answer in a readable form (falls back to the JSON when its shape is unknown).
pub fn budget_text(v: &serde_json::Value) -> String {
    let num = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_f64());
    let part = |o: &serde_json::Value| -> Option<String> {
        let (e, d) = (num(o, "epsilon")?, num(o, "delta")?);
        let (es, ds) = (num(o, "epsilon_spent")?, num(o, "delta_spent")?);
        Some(format!(
            "ε {} of {} spent ({} left); δ {} of {} spent ({} left)",
            round9(es),
            e,
            round9((e - es).max(0.0)),
            round9(ds),
            d,
            round9((d - ds).max(0.0))
        ))
    };
    let mut out = String::new();
    let Some(study) = v.get("study").and_then(part) else {
        return serde_json::to_string_pretty(v).unwrap_or_default();
    };
    let id = v.get("study_id").and_then(|s| s.as_str()).unwrap_or("?");
    out.push_str(&format!("study {}: {study}\n", output::sanitize(id)));
    if let Some(runs) = v.get("runs").and_then(|r| r.as_u64()) {
        out.push_str(&format!("runs logged: {runs}\n"));
    }
    if let Some(r) = v.get("researcher") {
        let name = r.get("name").and_then(|s| s.as_str()).unwrap_or("?");
        match part(r) {
            Some(p) => out.push_str(&format!("researcher {}: {p}\n", output::sanitize(name))),
            None => out.push_str(&format!(
                "researcher: {}\n",
                output::sanitize(&r.to_string())
            )),
        }
    }
    out
}
