//! The steward's query service: the one process that holds the vault key and opens batches.
//! Researchers send signed requests and get differentially private tables back.
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /v1/queries` | a [`ReleasedTable`] (JSON) for a signed [`QueryRequest`] |
//! | `GET /v1/budget`, `GET /v1/budget/{researcher}` | the study's (and the researcher's) budgets and what is spent |
//! | `GET /healthz` | `ok` |
//!
//! A run goes in this order, and each step can refuse with a problem document:
//!
//! 1. the signed request parses (`400 bad-request`); its signature is valid and its key is a
//!    registered researcher's (`401 unknown-researcher`); its time is within
//!    [`REQUEST_SKEW_SECS`] of the service's clock (`400 stale-request`) and its id is new
//!    (`409 replayed-request`); the spec's researcher is the key's (`403 wrong-researcher`);
//! 2. the ledger is read from the intake and verified against its signed checkpoint, consistent
//!    with the last one this service verified;
//! 3. **under the service's lock**: the spec validates against the study (`422 invalid-spec`),
//!    the approval is a trusted steward's, covers this spec, researcher and purpose, is valid
//!    at the service's clock and has a run left, counting runs logged in the ledger and runs
//!    reserved here (`403 not-approved`); its privacy spend fits the study's and the
//!    researcher's budgets (`403 over-budget`). The run is then **reserved**: a line appended
//!    to `runs.jsonl` in the state directory and fsynced. The lock is released;
//! 4. the batches are opened in memory and aggregated, the release is computed with OpenDP
//!    ([`crate::private`]), the `query_run` entry with the spend and the budgets left is
//!    appended to the ledger, and only then is the table returned.
//!
//! A reserved run that fails afterwards stays spent: a refusal after the data was read could
//! otherwise be retried for free.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::privacy::{
    charge, PrivacySpend, QueryRequest, ReleasedTable, MAX_REQUEST_LEN, REQUEST_SKEW_SECS,
};
use datadonor_schemas::query::{check_approval, QuerySpec};
use datadonor_schemas::signing::{Context, PublicKey, Signed, SignedObject};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::time::{Clock, UnixSeconds};
use serde::{Deserialize, Serialize};

use crate::engine::QueryEngine;
use crate::ledger::ServiceLedger;
use crate::private;
use crate::query::{aggregate_store_cube, donors_of};
use crate::store::BatchStore;
use crate::vault::VaultKey;
use crate::AnalyticsError;

/// Media type of problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A refusal or failure, as a problem document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable reason (the last segment of the problem type).
    pub kind: &'static str,
    /// What is wrong, for a person.
    pub detail: String,
}

impl Problem {
    fn new(status: u16, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.detail)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("urn:datadonor:problem:{}", self.kind),
            "title": self.kind,
            "status": self.status,
            "detail": self.detail,
        });
        (
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [(header::CONTENT_TYPE, PROBLEM_CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

/// The researchers the steward registered: name → Ed25519 public key.
///
/// File format (`researchers`): one `name base64-public-key` pair per line; `#` starts a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Researchers(Vec<(String, PublicKey)>);

impl Researchers {
    /// Parse a researchers file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AnalyticsError> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |d: &str| AnalyticsError::KeyFile {
                path: path.to_path_buf(),
                detail: format!("line {}: {d}", i + 1),
            };
            let (name, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `name base64-public-key`"))?;
            let key = PublicKey::from_base64(key.trim())
                .map_err(|_| bad("not a base64 Ed25519 public key"))?;
            out.push((name.to_string(), key));
        }
        Ok(Self(out))
    }
    /// Load a researchers file.
    pub fn load(path: &Path) -> Result<Self, AnalyticsError> {
        let text = std::fs::read_to_string(path).map_err(|e| AnalyticsError::KeyFile {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Self::parse(&text, path)
    }
    /// The name registered with `key`.
    pub fn name_of(&self, key: &PublicKey) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, k)| k == key)
            .map(|(n, _)| n.as_str())
    }
}

/// One reserved run (a line of `runs.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// When it was reserved.
    pub time: UnixSeconds,
    /// Request id.
    pub request_id: String,
    /// SHA-256 of the approval's payload (hex).
    pub approval_sha256: String,
    /// Researcher.
    pub researcher: String,
    /// ε reserved.
    pub epsilon: f64,
    /// δ reserved.
    pub delta: f64,
}

/// The durable journal of reserved runs.
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    runs: Vec<Reservation>,
}

impl Journal {
    fn open(path: &Path) -> Result<Self, AnalyticsError> {
        let bad = |detail: String| AnalyticsError::Store {
            path: path.to_path_buf(),
            detail,
        };
        let mut runs = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    // A torn last line (a crash during the append) is dropped: that run was
                    // never answered.
                    match serde_json::from_str::<Reservation>(line) {
                        Ok(r) => runs.push(r),
                        Err(_) if i + 1 == text.lines().count() && !text.ends_with('\n') => {}
                        Err(e) => return Err(bad(format!("line {}: {e}", i + 1))),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        Ok(Self {
            path: path.to_path_buf(),
            runs,
        })
    }

    fn append(&mut self, r: Reservation) -> Result<(), AnalyticsError> {
        let bad = |detail: String| AnalyticsError::Store {
            path: self.path.clone(),
            detail,
        };
        let mut line = serde_json::to_vec(&r).map_err(|e| bad(e.to_string()))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| bad(e.to_string()))?;
        f.write_all(&line).map_err(|e| bad(e.to_string()))?;
        f.sync_all().map_err(|e| bad(e.to_string()))?;
        self.runs.push(r);
        Ok(())
    }

    fn runs_of(&self, approval: &str) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.approval_sha256 == approval)
            .count() as u64
    }

    fn spent(&self, researcher: Option<&str>) -> PrivacySpend {
        self.runs
            .iter()
            .filter(|r| researcher.is_none_or(|n| r.researcher == n))
            .fold(PrivacySpend::default(), |s, r| {
                s.plus(PrivacySpend {
                    epsilon: r.epsilon,
                    delta: r.delta,
                })
            })
    }
}

fn max_spend(a: PrivacySpend, b: PrivacySpend) -> PrivacySpend {
    PrivacySpend {
        epsilon: a.epsilon.max(b.epsilon),
        delta: a.delta.max(b.delta),
    }
}

/// Everything the service runs with.
pub struct QueryService {
    study: StudyDefinition,
    approvers: Vec<PublicKey>,
    researchers: Researchers,
    vault: VaultKey,
    store: BatchStore,
    ledger: Box<dyn ServiceLedger + Send + Sync>,
    journal: Mutex<Journal>,
    seen: Mutex<HashMap<[u8; 16], UnixSeconds>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for QueryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueryService(study {})", self.study.id)
    }
}

/// The pieces a [`QueryService`] is built from.
pub struct ServiceParts {
    /// The study (its steward signature already checked).
    pub study: StudyDefinition,
    /// Trusted steward keys (approvals).
    pub approvers: Vec<PublicKey>,
    /// Registered researchers.
    pub researchers: Researchers,
    /// The vault key.
    pub vault: VaultKey,
    /// The study's batches (a directory or a bucket prefix).
    pub store: BatchStore,
    /// The intake's ledger, verified on every read.
    pub ledger: Box<dyn ServiceLedger + Send + Sync>,
    /// Where `runs.jsonl` is kept.
    pub state_dir: PathBuf,
    /// The clock approvals and requests are judged by.
    pub clock: Arc<dyn Clock>,
}

impl QueryService {
    /// Build the service; refuses a study without a privacy policy.
    pub fn new(p: ServiceParts) -> Result<Self, AnalyticsError> {
        if p.study.privacy.is_none() {
            return Err(AnalyticsError::Refused(format!(
                "study {} declares no privacy budget ([privacy]); the service releases nothing without one",
                p.study.id
            )));
        }
        std::fs::create_dir_all(&p.state_dir).map_err(|e| AnalyticsError::Store {
            path: p.state_dir.clone(),
            detail: e.to_string(),
        })?;
        let journal = Journal::open(&p.state_dir.join("runs.jsonl"))?;
        Ok(Self {
            study: p.study,
            approvers: p.approvers,
            researchers: p.researchers,
            vault: p.vault,
            store: p.store,
            ledger: p.ledger,
            journal: Mutex::new(journal),
            seen: Mutex::new(HashMap::new()),
            clock: p.clock,
        })
    }

    /// Check a signed request up to the run: who sent it, when, and whether it was seen.
    fn admit(&self, body: &[u8]) -> Result<(QueryRequest, String), Problem> {
        let bad = |d: String| Problem::new(400, "bad-request", d);
        let obj = SignedObject::from_bytes(body).map_err(|e| bad(e.to_string()))?;
        let signed: Signed<QueryRequest> = obj
            .open(Context::QueryRequest, "query request")
            .map_err(|e| Problem::new(401, "bad-signature", e.to_string()))?;
        let name = self
            .researchers
            .name_of(&signed.signer)
            .ok_or_else(|| {
                Problem::new(
                    401,
                    "unknown-researcher",
                    "the request is not signed by a registered researcher key",
                )
            })?
            .to_string();
        let req = signed.body;
        if req.format != datadonor_schemas::PROTOCOL_VERSION {
            return Err(bad(format!("format {} is not supported", req.format)));
        }
        let now = self.clock.now();
        if (req.time - now).abs() > REQUEST_SKEW_SECS {
            return Err(Problem::new(
                400,
                "stale-request",
                format!("the request's time is more than {REQUEST_SKEW_SECS} s from the service's clock"),
            ));
        }
        let mut seen = self.seen.lock().map_err(|_| internal("request ids"))?;
        seen.retain(|_, t| *t > now - 2 * REQUEST_SKEW_SECS);
        if seen.insert(req.request_id, req.time).is_some() {
            return Err(Problem::new(
                409,
                "replayed-request",
                "this request id was seen before",
            ));
        }
        Ok((req, name))
    }

    /// Run one signed request to the end: the released table, or a problem.
    pub fn run(&self, body: &[u8]) -> Result<ReleasedTable, Problem> {
        let (req, name) = self.admit(body)?;
        let spec = QuerySpec::from_toml(&req.spec_toml)
            .map_err(|e| Problem::new(422, "invalid-spec", e.to_string().replace('\n', " ")))?;
        if spec.researcher != name {
            return Err(Problem::new(
                403,
                "wrong-researcher",
                format!(
                    "the spec names researcher {:?}; the request is signed by {name:?}",
                    spec.researcher
                ),
            ));
        }
        spec.validate(&self.study)
            .map_err(|e| Problem::new(422, "invalid-spec", e.to_string()))?;
        private::check_spec(&spec).map_err(|e| Problem::new(422, "invalid-spec", e.to_string()))?;
        let view = self
            .ledger
            .verified_index()
            .map_err(|e| Problem::new(502, "ledger-unavailable", e.to_string()))?;
        let approval_digest = req.approval.payload_digest();
        let approval_hex = hex::encode(approval_digest);
        let policy = self
            .study
            .privacy
            .ok_or_else(|| internal("no privacy policy"))?;
        // Reserve under the lock: approval runs and budgets are read and charged in one step.
        let (spend, run_privacy, now) = {
            let mut journal = self.journal.lock().map_err(|_| internal("journal"))?;
            let now = self.clock.now();
            let runs = view
                .runs_of(&approval_digest)
                .max(journal.runs_of(&approval_hex));
            let approval = check_approval(&req.approval, &spec, &self.approvers, now, runs)
                .map_err(|e| Problem::new(403, "not-approved", e.to_string()))?;
            if approval.body.study_id != self.study.id {
                return Err(Problem::new(
                    403,
                    "not-approved",
                    "the approval is for another study",
                ));
            }
            let spend = approval.body.privacy.ok_or_else(|| {
                Problem::new(
                    403,
                    "not-approved",
                    "the approval states no privacy spend (epsilon, delta) for a run",
                )
            })?;
            let study_spent = max_spend(journal.spent(None), view.spent(&self.study.id, None));
            let researcher_spent = max_spend(
                journal.spent(Some(&name)),
                view.spent(&self.study.id, Some(&name)),
            );
            let rp = charge(&policy, study_spent, researcher_spent, spend)
                .map_err(|e| Problem::new(403, "over-budget", e.to_string()))?;
            journal
                .append(Reservation {
                    time: now,
                    request_id: hex::encode(req.request_id),
                    approval_sha256: approval_hex.clone(),
                    researcher: name.clone(),
                    epsilon: spend.epsilon,
                    delta: spend.delta,
                })
                .map_err(|e| internal(&e.to_string()))?;
            (spend, rp, now)
        };
        let started = std::time::Instant::now();
        let records = view.allowed_record_donors(&self.study.id, &spec.purpose, now);
        let engine = QueryEngine::new(&spec, &self.study, &records).map_err(engine_problem)?;
        let cube = aggregate_store_cube(engine, &self.store, &view, &self.study, &self.vault)
            .map_err(engine_problem)?;
        let k = spec.effective_k(&self.study);
        let mut release =
            private::release(&cube, &spec, &policy, spend, k).map_err(engine_problem)?;
        for c in &mut release.columns {
            if let Some(f) = c.field.as_deref().and_then(|f| self.study.field(f)) {
                c.decimals = f.decimals();
            }
        }
        let published = release.rows.len() as u64;
        let entry = LedgerEntry::QueryRun {
            time: crate::ledger::logged_at(now, started),
            study_id: self.study.id.clone(),
            query_sha256: spec.hash(),
            approval_sha256: approval_digest,
            researcher: name.clone(),
            purpose: spec.purpose.clone(),
            donors_considered: donors_of(&records),
            cells_published: published,
            cells_suppressed: release.cells_seen.saturating_sub(published),
            privacy: Some(run_privacy),
        };
        let appended = self
            .ledger
            .append(&entry)
            .map_err(|e| Problem::new(502, "ledger-unavailable", e.to_string()))?;
        Ok(ReleasedTable {
            format: datadonor_schemas::PROTOCOL_VERSION,
            study_id: self.study.id.clone(),
            query_sha256: spec.hash(),
            approval_sha256: approval_digest,
            researcher: name,
            purpose: spec.purpose.clone(),
            title: spec.title.clone(),
            k,
            dimensions: spec.group_by.clone(),
            columns: release.columns,
            rows: release.rows,
            privacy: run_privacy,
            bounds: release.bounds,
            ledger_index: appended.index,
        })
    }

    /// The budgets and what is spent of them, for the study and (if given) one researcher.
    pub fn budget(&self, researcher: Option<&str>) -> Result<serde_json::Value, Problem> {
        let policy = self
            .study
            .privacy
            .ok_or_else(|| internal("no privacy policy"))?;
        let journal = self.journal.lock().map_err(|_| internal("journal"))?;
        let study = journal.spent(None);
        let mut v = serde_json::json!({
            "study_id": self.study.id.as_str(),
            "study": {"epsilon": policy.epsilon, "delta": policy.delta,
                      "epsilon_spent": study.epsilon, "delta_spent": study.delta},
            "runs": journal.runs.len(),
        });
        if let Some(r) = researcher {
            let s = journal.spent(Some(r));
            v["researcher"] = serde_json::json!({"name": r,
                "epsilon": policy.researcher_epsilon, "delta": policy.researcher_delta,
                "epsilon_spent": s.epsilon, "delta_spent": s.delta});
        }
        Ok(v)
    }
}

fn internal(what: &str) -> Problem {
    Problem::new(500, "internal", format!("internal error: {what}"))
}

fn engine_problem(e: AnalyticsError) -> Problem {
    match e {
        AnalyticsError::Refused(m) => Problem::new(422, "invalid-spec", m),
        other => {
            tracing::error!(error = %other, "query run failed");
            Problem::new(500, "run-failed", other.to_string())
        }
    }
}

async fn queries(State(svc): State<Arc<QueryService>>, body: axum::body::Body) -> Response {
    // Any body over the limit, declared or streamed, is a problem document.
    let body: Bytes = match axum::body::to_bytes(body, MAX_REQUEST_LEN).await {
        Ok(b) => b,
        Err(e) if e.to_string().contains("length limit") => {
            return Problem::new(
                413,
                "body-too-large",
                format!("the limit is {MAX_REQUEST_LEN} bytes"),
            )
            .into_response()
        }
        Err(_) => {
            return Problem::new(400, "bad-request", "the body could not be read").into_response()
        }
    };
    let result = tokio::task::spawn_blocking(move || svc.run(&body)).await;
    match result {
        Ok(Ok(table)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&table).unwrap_or_default(),
        )
            .into_response(),
        Ok(Err(p)) => {
            tracing::info!(status = p.status, kind = p.kind, "query refused");
            p.into_response()
        }
        Err(_) => internal("the run stopped").into_response(),
    }
}

async fn study_budget(State(svc): State<Arc<QueryService>>) -> Response {
    budget_response(&svc, None)
}

async fn researcher_budget(
    State(svc): State<Arc<QueryService>>,
    UrlPath(researcher): UrlPath<String>,
) -> Response {
    budget_response(&svc, Some(&researcher))
}

fn budget_response(svc: &QueryService, researcher: Option<&str>) -> Response {
    match svc.budget(researcher) {
        Ok(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
            .into_response(),
        Err(p) => p.into_response(),
    }
}

/// The service's routes (for tests that drive it without TLS).
pub fn router(svc: Arc<QueryService>) -> Router {
    Router::new()
        .route("/v1/queries", post(queries))
        .route("/v1/budget", get(study_budget))
        .route("/v1/budget/{researcher}", get(researcher_budget))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { Problem::new(404, "not-found", "no such endpoint").into_response() })
        .with_state(svc)
}

/// Serve over TLS 1.3 at `listen` (certificate and key in PEM).
pub async fn start(
    svc: Arc<QueryService>,
    listen: SocketAddr,
    cert: &Path,
    key: &Path,
) -> Result<datadonor_service::Running, AnalyticsError> {
    let tls = datadonor_service::tls_config(cert, key).map_err(AnalyticsError::Refused)?;
    let limits = datadonor_service::ConnLimits {
        max_connections: 256,
        handshake_timeout: Duration::from_secs(10),
        connection_lifetime: Duration::from_secs(600),
    };
    datadonor_service::start(listen, tls, router(svc), limits)
        .await
        .map_err(|e| AnalyticsError::Refused(format!("binding {listen}: {e}")))
}
