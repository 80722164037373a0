//! The HTTP API (`PROTOCOL.md`, "HTTP API of the intake"): the axum [`Router`] built by [`app`],
//! its handlers, and the per-request middleware (request id, tracing span, latency, refusal
//! counting). Tests drive [`app`] with `tower::ServiceExt::oneshot`, without a socket.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use datadonor_schemas::checkpoint::NoteVerifier;
use datadonor_schemas::envelope::{HpkeConfig, HpkeConfigList};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::receipt::ReceiptBundle;
use datadonor_schemas::signing::PublicKey;
use datadonor_schemas::time::Clock;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde::Serialize;
use tracing::Instrument;

use crate::cluster::{parse_forwarded, SequencerClient, FORWARDED_CONTENT_TYPE, FORWARD_PATH};
use crate::commit::{CommitHandle, Job};
use crate::config::Config;
use crate::keys::{AuditorTokenHash, TransportKeys};
use crate::ledger::{LedgerSigner, LedgerState};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::studies::StudyRegistry;
use crate::validate::{
    check_payload, open_donation, sha256, validate_donation, validate_withdrawal,
};

/// Media type of donation envelopes.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/vnd.datadonor.envelope.v1";
/// Most entries returned by one `GET /v1/ledger/entries`.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;

/// Largest body of `POST /v1/ledger/events` (one ledger entry), in bytes.
pub const MAX_EVENT_BYTES: usize = datadonor_schemas::ledger::MAX_ENTRY_LEN;

/// The client's address, inserted into each request by the accept loop (tests may insert it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Everything the handlers share.
#[derive(Debug)]
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// Served studies.
    pub studies: StudyRegistry,
    /// Transport keys.
    pub transport: TransportKeys,
    /// The ledger's verifier key (its origin and public key).
    pub verifier: NoteVerifier,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Public reads per client address.
    pub public_reads: datadonor_service::ratelimit::RateLimiter<std::net::IpAddr>,
    /// What this intake does with donations and ledger requests.
    pub role: Role,
}

/// What an intake does with donations and ledger requests (`[cluster] role`).
#[derive(Debug)]
pub enum Role {
    /// Decides, seals, writes and signs: the only writer of the ledger.
    Sequencer(Sequencing),
    /// Opens donations and forwards them, and relays ledger requests, to a sequencer.
    Frontend(SequencerClient),
}

/// A sequencer's ledger: its key, committer and state.
#[derive(Debug)]
pub struct Sequencing {
    /// Ledger key.
    pub signer: Arc<LedgerSigner>,
    /// Auditor token hash.
    pub auditor: AuditorTokenHash,
    /// Analytics token hash (ledger events).
    pub analytics: AuditorTokenHash,
    /// Frontend token hash (forwarded donations); none: no frontend is accepted.
    pub frontends: Option<AuditorTokenHash>,
    /// Committer.
    pub commit: CommitHandle,
    /// Ledger state.
    pub state: Arc<RwLock<LedgerState>>,
    /// Witness cosignatures gathered for the published checkpoint.
    pub cosigned: Arc<RwLock<crate::witnessing::Cosigned>>,
}

/// Handler state.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Shared>);

impl AppState {
    /// The sequencer's ledger; `None` on a frontend.
    pub fn sequencing(&self) -> Option<&Sequencing> {
        match &self.0.role {
            Role::Sequencer(q) => Some(q),
            Role::Frontend(_) => None,
        }
    }
}

/// The router of the whole API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/studies", get(list_studies))
        .route("/v1/studies/{id}", get(get_study))
        .route("/v1/studies/{id}/bundle", get(get_bundle))
        .route("/v1/notices/{sha256}", get(get_notice))
        .route("/v1/hpke-config", get(hpke_config))
        .route("/v1/ledger-key", get(ledger_key))
        .route("/v1/donations", post(donate))
        .route("/v1/withdrawals", post(withdraw))
        .route("/v1/ledger/checkpoint", get(checkpoint))
        .route("/v1/ledger/inclusion", get(inclusion))
        .route("/v1/ledger/consistency", get(consistency))
        .route("/v1/ledger/entries", get(entries))
        .route("/v1/ledger/events", post(ledger_event))
        .route(FORWARD_PATH, post(forwarded_donation))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { Problem::NotFound })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limit_public_reads,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The public reads a client address is limited in: the tree head, proofs, notices and
/// bundles (anyone may read them, so each address gets a token bucket).
const PUBLIC_READS: [&str; 5] = [
    "/v1/ledger/checkpoint",
    "/v1/ledger/inclusion",
    "/v1/ledger/consistency",
    "/v1/notices/{sha256}",
    "/v1/studies/{id}/bundle",
];

async fn limit_public_reads(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let public = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|m| PUBLIC_READS.contains(&m.as_str()));
    if public {
        if let Some(ClientAddr(addr)) = req.extensions().get::<ClientAddr>() {
            if !s.0.public_reads.check(addr.ip()) {
                return Problem::RateLimited.into_response();
            }
        }
    }
    next.run(req).await
}

const ROUTES: [&str; 15] = [
    "/v1/studies",
    "/v1/studies/{id}",
    "/v1/studies/{id}/bundle",
    "/v1/notices/{sha256}",
    "/v1/hpke-config",
    "/v1/ledger-key",
    "/v1/donations",
    "/v1/withdrawals",
    "/v1/ledger/checkpoint",
    "/v1/ledger/inclusion",
    "/v1/ledger/consistency",
    "/v1/ledger/entries",
    FORWARD_PATH,
    "/healthz",
    "/metrics",
];

async fn observe(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route: &'static str = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| ROUTES.iter().find(|r| **r == m.as_str()).copied())
        .unwrap_or("other");
    let mut id = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let request_id = hex::encode(id);
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    s.0.metrics.observe(route, elapsed);
    if let Some(p) = resp.extensions().get::<Problem>() {
        s.0.metrics.rejected(*p);
        span.in_scope(|| {
            tracing::info!(
                status = p.status().as_u16(),
                reason = p.slug(),
                ms = elapsed.as_millis() as u64,
                "refused"
            )
        });
    } else {
        span.in_scope(|| {
            tracing::info!(
                status = resp.status().as_u16(),
                ms = elapsed.as_millis() as u64,
                "done"
            )
        });
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[derive(Serialize)]
struct StudyList {
    studies: Vec<String>,
}

async fn list_studies(State(s): State<AppState>) -> Json<StudyList> {
    Json(StudyList {
        studies: s.0.studies.ids().map(|i| i.to_string()).collect(),
    })
}

async fn get_study(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match s.0.studies.get(&id) {
        Some(st) => (
            [(header::CONTENT_TYPE, "application/json")],
            st.signed_bytes.clone(),
        )
            .into_response(),
        None => Problem::NotFound.into_response(),
    }
}

/// Public: the steward-signed bundle a donor pins (ledger and witness keys). Revalidated on use:
/// a steward may sign a new one.
async fn get_bundle(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = datadonor_schemas::study::StudyId::new(&id) else {
        return Problem::NotFound.into_response();
    };
    match s.0.studies.bundle(&id) {
        Some(b) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            b.to_vec(),
        )
            .into_response(),
        None => Problem::NotFound.into_response(),
    }
}

/// Public: a consent notice text by its SHA-256 (64 lowercase hex digits). A text never changes
/// under its hash: cacheable for good.
async fn get_notice(State(s): State<AppState>, Path(hash): Path<String>) -> Response {
    let mut h = [0u8; 32];
    if hash.len() != 64
        || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        || hex::decode_to_slice(&hash, &mut h).is_err()
    {
        return Problem::NotFound.into_response();
    }
    match s.0.studies.notice(&h) {
        Some(text) => (
            [
                (header::CONTENT_TYPE, "text/markdown; charset=utf-8"),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            text.to_string(),
        )
            .into_response(),
        None => Problem::NotFound.into_response(),
    }
}

async fn hpke_config(State(s): State<AppState>) -> Json<HpkeConfigList> {
    let now = s.0.clock.now();
    Json(HpkeConfigList {
        configs: s
            .0
            .transport
            .accepted(now)
            .map(|k| HpkeConfig::new(k.info.key_id, &k.public_key))
            .collect(),
    })
}

#[derive(Serialize)]
struct LedgerKey {
    public_key: String,
    vkey: String,
    origin: String,
}

async fn ledger_key(State(s): State<AppState>) -> Json<LedgerKey> {
    let v = &s.0.verifier;
    Json(LedgerKey {
        public_key: PublicKey(*v.public_key()).to_base64(),
        vkey: v.to_vkey(),
        origin: v.name().to_string(),
    })
}

/// Read a body within the size limit and the body timeout.
async fn read_body(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Problem> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(Problem::BodyTooLarge);
        }
    }
    let timeout = Config::ms(s.0.config.server.request_body_timeout_ms);
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Problem::Timeout),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            // `http_body_util::LengthLimitError` displays as "length limit exceeded"; the crate
            // is not a direct dependency, so the message is matched.
            if e.to_string().contains("length limit") {
                Err(Problem::BodyTooLarge)
            } else {
                Err(Problem::BadRequest)
            }
        }
    }
}

fn content_type_is(headers: &HeaderMap, want: &str) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(v) => v
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(want)),
    }
}

async fn donate(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    if !content_type_is(&headers, ENVELOPE_CONTENT_TYPE) {
        // The body is read all the same (within the size limit and the body timeout), so that
        // an HTTP/2 stream ends cleanly after the answer instead of being reset.
        let _ = read_body(&s, &headers, body, s.0.config.limits.max_body_bytes).await;
        return Err(Problem::BadRequest);
    }
    let bytes = read_body(&s, &headers, body, s.0.config.limits.max_body_bytes).await?;
    let shared = s.0.clone();
    let now = s.0.clock.now();
    let q = match &s.0.role {
        Role::Sequencer(q) => q,
        Role::Frontend(client) => {
            // Open here (the transport key's work), check again and decide at the sequencer.
            let (sha, payload) = tokio::task::spawn_blocking(move || {
                open_donation(&bytes, &shared.transport, now).map(|p| (sha256(&bytes), p))
            })
            .await
            .map_err(|_| Problem::Internal)??;
            let resp = client.forward_donation(&sha, &payload).await;
            if resp.status() == StatusCode::OK {
                s.0.metrics.donation_accepted();
            }
            return Ok(resp);
        }
    };
    let validated = tokio::task::spawn_blocking(move || {
        validate_donation(
            &bytes,
            &shared.transport,
            &shared.studies,
            now,
            shared.config.limits.max_rows_per_donation,
        )
    })
    .await
    .map_err(|_| Problem::Internal)??;
    let bundle = q
        .commit
        .submit(|r| Job::Donation(Box::new(validated), r))
        .await?;
    s.0.metrics.donation_accepted();
    Ok(Json(bundle).into_response())
}

/// `POST /v1/internal/donations` (a sequencer's): a donation a frontend opened. The payload is
/// checked again in full (manifest signature, study, rows), then committed like any donation.
async fn forwarded_donation(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ReceiptBundle>, Problem> {
    let body = read_body(&s, &headers, body, s.0.config.limits.max_body_bytes).await;
    let Some(q) = s.sequencing() else {
        return Err(Problem::NotFound);
    };
    let Some(frontends) = &q.frontends else {
        return Err(Problem::Unauthorized);
    };
    authorize_with(frontends, &headers)?;
    let body = body?;
    if !content_type_is(&headers, FORWARDED_CONTENT_TYPE) {
        return Err(Problem::BadRequest);
    }
    let shared = s.0.clone();
    let now = s.0.clock.now();
    let validated = tokio::task::spawn_blocking(move || {
        let (sha, payload) = parse_forwarded(&body)?;
        check_payload(
            &payload,
            sha,
            &shared.studies,
            now,
            shared.config.limits.max_rows_per_donation,
        )
    })
    .await
    .map_err(|_| Problem::Internal)??;
    let bundle = q
        .commit
        .submit(|r| Job::Donation(Box::new(validated), r))
        .await?;
    s.0.metrics.donation_accepted();
    Ok(Json(bundle))
}

/// A frontend relays a request to the sequencer as it came: method, path and query, the
/// client's `Authorization` and `Content-Type`, and the body.
async fn relay(
    client: &SequencerClient,
    method: http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    client
        .send(
            method,
            path,
            headers.get(header::AUTHORIZATION).cloned(),
            headers.get(header::CONTENT_TYPE).cloned(),
            body,
        )
        .await
}

async fn withdraw(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: http::Uri,
    body: Body,
) -> Result<Response, Problem> {
    let bytes = read_body(&s, &headers, body, s.0.config.limits.max_body_bytes).await?;
    let q = match &s.0.role {
        Role::Sequencer(q) => q,
        Role::Frontend(client) => {
            let resp = relay(client, http::Method::POST, &uri, &headers, bytes).await;
            if resp.status() == StatusCode::OK {
                s.0.metrics.withdrawal_accepted();
            }
            return Ok(resp);
        }
    };
    let shared = s.0.clone();
    let validated =
        tokio::task::spawn_blocking(move || validate_withdrawal(&bytes, &shared.studies))
            .await
            .map_err(|_| Problem::Internal)??;
    let bundle = q
        .commit
        .submit(|r| Job::Withdrawal(Box::new(validated), r))
        .await?;
    s.0.metrics.withdrawal_accepted();
    Ok(Json(bundle).into_response())
}

fn authorize(q: &Sequencing, headers: &HeaderMap) -> Result<(), Problem> {
    authorize_with(&q.auditor, headers)
}

fn authorize_with(expected: &AuditorTokenHash, headers: &HeaderMap) -> Result<(), Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Problem::Unauthorized)?;
    if expected.matches(token.trim()) {
        Ok(())
    } else {
        Err(Problem::Unauthorized)
    }
}

fn query_u64(uri: &http::Uri, name: &str) -> Result<u64, Problem> {
    let q = uri.query().ok_or(Problem::BadRequest)?;
    let mut found = None;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').ok_or(Problem::BadRequest)?;
        if k == name {
            if found.is_some() || v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Problem::BadRequest);
            }
            found = Some(v.parse::<u64>().map_err(|_| Problem::BadRequest)?);
        }
    }
    found.ok_or(Problem::BadRequest)
}

fn read_state(q: &Sequencing) -> Result<std::sync::RwLockReadGuard<'_, LedgerState>, Problem> {
    q.state.read().map_err(|_| Problem::Internal)
}

/// The sequencer's ledger, or (on a frontend) the sequencer's answer to the same request.
async fn sequencer_or_relay<'a>(
    s: &'a AppState,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<&'a Sequencing, Response> {
    match &s.0.role {
        Role::Sequencer(q) => Ok(q),
        Role::Frontend(client) => {
            Err(relay(client, http::Method::GET, uri, headers, Bytes::new()).await)
        }
    }
}

/// Public: the signed tree head names no donor. Revalidated on every use (it changes with
/// every commit).
async fn checkpoint(
    State(s): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let q = match sequencer_or_relay(&s, &uri, &headers).await {
        Ok(q) => q,
        Err(relayed) => return Ok(relayed),
    };
    let (size, note) = {
        let state = read_state(q)?;
        (state.published_size(), state.published_note().to_string())
    };
    // The witnesses' cosignatures of this very checkpoint, if gathered yet.
    let note = q
        .cosigned
        .read()
        .map_err(|_| Problem::Internal)?
        .note_with(&note, size);
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        note,
    )
        .into_response())
}

/// A proof between two published tree sizes never changes: cacheable for good.
fn immutable(body: ProofResponse) -> Response {
    let mut r = Json(body).into_response();
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    r
}

#[derive(Serialize)]
struct ProofResponse {
    proof: Vec<String>,
}

/// Public: hashes only (a donor checks a receipt without any token).
async fn inclusion(
    State(s): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (index, size) = (query_u64(&uri, "index")?, query_u64(&uri, "size")?);
    let q = match sequencer_or_relay(&s, &uri, &headers).await {
        Ok(q) => q,
        Err(relayed) => return Ok(relayed),
    };
    let st = read_state(q)?;
    let proof = st
        .inclusion_proof(index, size)
        .map_err(|_| Problem::BadRequest)?;
    Ok(immutable(ProofResponse {
        proof: proof.iter().map(|h| h.to_hex()).collect(),
    }))
}

/// Public: hashes only.
async fn consistency(
    State(s): State<AppState>,
    uri: http::Uri,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let (from, to) = (query_u64(&uri, "from")?, query_u64(&uri, "to")?);
    if from == 0 || from > to {
        return Err(Problem::BadRequest);
    }
    let q = match sequencer_or_relay(&s, &uri, &headers).await {
        Ok(q) => q,
        Err(relayed) => return Ok(relayed),
    };
    let st = read_state(q)?;
    let proof = st
        .consistency_proof(from, to)
        .map_err(|_| Problem::BadRequest)?;
    Ok(immutable(ProofResponse {
        proof: proof.iter().map(|h| h.to_hex()).collect(),
    }))
}

#[derive(Serialize)]
struct EntriesResponse {
    start: u64,
    entries: Vec<String>,
}

async fn entries(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: http::Uri,
) -> Result<Response, Problem> {
    let q = match sequencer_or_relay(&s, &uri, &headers).await {
        Ok(q) => q,
        Err(relayed) => return Ok(relayed),
    };
    authorize(q, &headers)?;
    let (start, end) = (query_u64(&uri, "start")?, query_u64(&uri, "end")?);
    if end < start || end - start > MAX_ENTRIES_PER_CALL {
        return Err(Problem::BadRequest);
    }
    let st = read_state(q)?;
    // A range reaching past the published log is answered with the entries that exist, so a
    // reader can page without knowing the size; a start past the end is an error.
    let end = end.min(st.published_size());
    if start > end {
        return Err(Problem::BadRequest);
    }
    let list = st
        .entries(start, end)
        .map_err(|e| {
            tracing::error!(error = %e, "reading ledger entries failed");
            Problem::Internal
        })?
        .ok_or(Problem::BadRequest)?;
    Ok(Json(EntriesResponse {
        start,
        entries: list
            .iter()
            .map(|e| base64::engine::general_purpose::STANDARD.encode(e))
            .collect(),
    })
    .into_response())
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.0.metrics.render(),
    )
        .into_response()
}

/// Most a ledger event's time may differ from the intake's clock.
const EVENT_CLOCK_SKEW_SECS: i64 = 300;

/// `POST /v1/ledger/events`: analytics appends `query_run` and `erasure_done` entries.
async fn ledger_event(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: http::Uri,
    body: Body,
) -> Result<Response, Problem> {
    // Read first (bounded: one ledger entry), so that a refusal of the token still ends an
    // HTTP/2 stream cleanly and an oversized body is a problem document.
    let body = read_body(&s, &headers, body, MAX_EVENT_BYTES).await;
    let q = match &s.0.role {
        Role::Sequencer(q) => q,
        Role::Frontend(client) => {
            return Ok(relay(client, http::Method::POST, &uri, &headers, body?).await)
        }
    };
    authorize_with(&q.analytics, &headers)?;
    let body = body?;
    let entry = LedgerEntry::from_bytes(&body).map_err(|_| Problem::BadRequest)?;
    let study = match &entry {
        LedgerEntry::QueryRun { study_id, .. } | LedgerEntry::ErasureDone { study_id, .. } => {
            study_id
        }
        _ => return Err(Problem::ForbiddenEntryType),
    };
    if s.0.studies.get(study.as_str()).is_none() {
        return Err(Problem::UnknownStudy);
    }
    if (entry.time() - s.0.clock.now()).abs() > EVENT_CLOCK_SKEW_SECS {
        return Err(Problem::EventTimeSkew);
    }
    let ack = q.commit.submit_event(entry).await?;
    Ok(Json(ack).into_response())
}
