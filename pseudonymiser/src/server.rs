//! One instance's HTTPS service: `POST /v1/evaluate` and nothing that touches donations.
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /v1/evaluate` | `{"index":i,"evaluated":"<b64 32>","proof":"<b64 64>"}` for `{"blinded":"<b64 32>"}` |
//! | `GET /v1/public-share` | `{"config_id","index","threshold","public_share","group_public_key"}` |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | Prometheus text |
//!
//! Limits: TLS 1.3 only; the handshake within `handshake_timeout_ms`; a connection is closed
//! politely (GOAWAY, or close after the response in flight) after `connection_timeout_ms`; a body over [`MAX_BODY`] is `413 body-too-large`; at most
//! `max_connections` connections at once. Rate limits: a token bucket per client address and,
//! where the configuration names a credential issuer, a credential is required and each
//! credential's subject has its own bucket (`429 rate-limited` with `Retry-After`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use datadonor_schemas::signing::PublicKey;
use datadonor_schemas::threshold::{DonorCredential, EvaluateRequest};
use datadonor_schemas::time::{Clock, SystemClock};
use datadonor_service::Peer;
use serde::{Deserialize, Serialize};

use crate::ratelimit::RateLimiter;
use crate::share::KeyShare;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024;
/// Media type of problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An instance's settings (`instance.toml` in its directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Share file, relative to the directory.
    pub share: PathBuf,
    /// Certificate chain (PEM), relative to the directory.
    pub tls_cert: PathBuf,
    /// Private key (PEM), relative to the directory.
    pub tls_key: PathBuf,
    /// Evaluations per client address: bucket size.
    pub per_address_burst: u32,
    /// Evaluations per client address: refill per second.
    pub per_address_per_second: f64,
    /// Evaluations per credential subject: bucket size.
    pub per_credential_burst: u32,
    /// Evaluations per credential subject: refill per second.
    pub per_credential_per_second: f64,
    /// The enrolment key whose credentials this instance requires (base64 Ed25519), if any.
    pub credential_issuer: Option<String>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// TLS handshake deadline.
    pub handshake_timeout_ms: u64,
    /// Longest life of one connection.
    pub connection_timeout_ms: u64,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            share: "share.json".into(),
            tls_cert: "tls/server.pem".into(),
            tls_key: "tls/server.key".into(),
            per_address_burst: 10,
            per_address_per_second: 0.5,
            per_credential_burst: 5,
            per_credential_per_second: 1.0 / 3600.0,
            credential_issuer: None,
            max_connections: 512,
            handshake_timeout_ms: 5_000,
            connection_timeout_ms: 30_000,
        }
    }
}

impl InstanceConfig {
    /// Parse `instance.toml`.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let c: Self = toml_de(text)?;
        c.validate()?;
        Ok(c)
    }

    /// The TOML form.
    pub fn to_toml(&self) -> String {
        toml_ser(self)
    }

    /// Check ranges.
    pub fn validate(&self) -> Result<(), String> {
        let rate_ok = |b: u32, r: f64| b >= 1 && r.is_finite() && r > 0.0;
        if !rate_ok(self.per_address_burst, self.per_address_per_second)
            || !rate_ok(self.per_credential_burst, self.per_credential_per_second)
        {
            return Err("rate limits need a burst >= 1 and a rate > 0".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if let Some(k) = &self.credential_issuer {
            PublicKey::from_base64(k)
                .map_err(|_| "credential_issuer is not a base64 Ed25519 key")?;
        }
        Ok(())
    }
}

fn toml_de(text: &str) -> Result<InstanceConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn toml_ser(c: &InstanceConfig) -> String {
    toml::to_string_pretty(c).unwrap_or_default()
}

/// Every reason an instance refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// 400: the body is not `{"blinded": …}`, or the Content-Type is not JSON.
    BadRequest,
    /// 422: the blinded element is not a valid non-identity ristretto255 element.
    InvalidElement,
    /// 401: a credential is required and none was given.
    CredentialRequired,
    /// 401: the credential does not verify, is for another service, or has expired.
    BadCredential,
    /// 413.
    BodyTooLarge,
    /// 429, with `Retry-After`.
    RateLimited,
    /// 404.
    NotFound,
}

impl Problem {
    /// `(status, slug, title)`.
    pub fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Problem::BadRequest => (StatusCode::BAD_REQUEST, "bad-request", "malformed request"),
            Problem::InvalidElement => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-element",
                "the blinded element is not a valid group element",
            ),
            Problem::CredentialRequired => (
                StatusCode::UNAUTHORIZED,
                "credential-required",
                "a donor credential is required",
            ),
            Problem::BadCredential => (
                StatusCode::UNAUTHORIZED,
                "bad-credential",
                "the donor credential is not valid",
            ),
            Problem::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "request body too large",
            ),
            Problem::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "too many evaluations; retry later",
            ),
            Problem::NotFound => (StatusCode::NOT_FOUND, "not-found", "no such resource"),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let body = serde_json::json!({
            "type": format!("urn:datadonor:problem:{slug}"),
            "title": title,
            "status": status.as_u16(),
        })
        .to_string();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if self == Problem::RateLimited {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        r
    }
}

#[derive(Debug, Default)]
struct Metrics {
    evaluations: AtomicU64,
    refused: AtomicU64,
    rate_limited: AtomicU64,
}

/// What every request handler sees.
#[derive(Debug)]
struct Shared {
    share: KeyShare,
    per_address: RateLimiter<IpAddr>,
    per_credential: RateLimiter<[u8; 16]>,
    issuer: Option<PublicKey>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
}

/// The router of one instance (for tests that drive it without TLS).
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/evaluate", post(evaluate))
        .route("/v1/public-share", get(public_share))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { Problem::NotFound })
        .with_state(shared)
}

type S = State<Arc<Shared>>;

async fn evaluate(
    State(s): S,
    Extension(Peer(addr)): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let refuse = |p: Problem| {
        s.metrics.refused.fetch_add(1, Ordering::Relaxed);
        if p == Problem::RateLimited {
            s.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        p
    };
    // The credential and the address limit are checked before the body is read.
    let subject = match &s.issuer {
        Some(issuer) => {
            let h = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| refuse(Problem::CredentialRequired))?;
            Some(
                DonorCredential::verify_bearer(h, issuer, &s.share.config_id, s.clock.now())
                    .map_err(|_| refuse(Problem::BadCredential))?,
            )
        }
        None => None,
    };
    if !s.per_address.check(addr) {
        return Err(refuse(Problem::RateLimited));
    }
    if let Some(sub) = subject {
        if !s.per_credential.check(sub) {
            return Err(refuse(Problem::RateLimited));
        }
    }
    // The media type, case-insensitively, with any parameters (`; charset=utf-8`).
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(refuse(Problem::BadRequest));
    }
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Err(refuse(if too_large {
                Problem::BodyTooLarge
            } else {
                Problem::BadRequest
            }));
        }
    };
    let req = EvaluateRequest::from_json(&bytes).map_err(|_| refuse(Problem::BadRequest))?;
    let answer = s
        .share
        .evaluate(&req.blinded)
        .map_err(|_| refuse(Problem::InvalidElement))?;
    s.metrics.evaluations.fetch_add(1, Ordering::Relaxed);
    let mut r = axum::Json(answer).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn public_share(State(s): S) -> Response {
    use base64::Engine as _;
    let e = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    axum::Json(serde_json::json!({
        "config_id": s.share.config_id,
        "index": s.share.index,
        "threshold": s.share.threshold,
        "public_share": e(&s.share.public_share()),
        "group_public_key": e(&s.share.group_public_key),
    }))
    .into_response()
}

async fn metrics(State(s): S) -> Response {
    let m = &s.metrics;
    let body = format!(
        "# TYPE datadonor_pseudonymiser_evaluations_total counter\n\
         datadonor_pseudonymiser_evaluations_total {}\n\
         # TYPE datadonor_pseudonymiser_refused_total counter\n\
         datadonor_pseudonymiser_refused_total {}\n\
         # TYPE datadonor_pseudonymiser_rate_limited_total counter\n\
         datadonor_pseudonymiser_rate_limited_total {}\n",
        m.evaluations.load(Ordering::Relaxed),
        m.refused.load(Ordering::Relaxed),
        m.rate_limited.load(Ordering::Relaxed),
    );
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Why an instance could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A file could not be read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The configuration or a key is unusable.
    #[error("{0}")]
    Config(String),
    /// The share file.
    #[error(transparent)]
    Share(#[from] crate::share::ShareError),
}

/// A running instance.
#[derive(Debug)]
pub struct RunningInstance {
    running: datadonor_service::Running,
    index: u16,
}

impl RunningInstance {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.running.addr()
    }
    /// `https://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        self.running.base_url()
    }
    /// The instance's Shamir index.
    pub fn index(&self) -> u16 {
        self.index
    }
    /// Stop accepting, let connections finish, and wait.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// Load `dir/instance.toml` (defaults when absent).
pub fn load_config(dir: &Path) -> Result<InstanceConfig, ServeError> {
    let p = dir.join("instance.toml");
    match std::fs::read_to_string(&p) {
        Ok(t) => InstanceConfig::from_toml(&t)
            .map_err(|e| ServeError::Config(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(InstanceConfig::default()),
        Err(e) => Err(ServeError::Io(p.display().to_string(), e)),
    }
}

/// Start the instance whose directory is `dir` with `config`.
pub async fn start(dir: &Path, config: InstanceConfig) -> Result<RunningInstance, ServeError> {
    start_with_clock(dir, config, Arc::new(SystemClock)).await
}

/// [`start`] with a given clock (credential expiry in tests).
pub async fn start_with_clock(
    dir: &Path,
    config: InstanceConfig,
    clock: Arc<dyn Clock>,
) -> Result<RunningInstance, ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let share = KeyShare::read(&dir.join(&config.share))?;
    let tls =
        datadonor_service::tls_config(&dir.join(&config.tls_cert), &dir.join(&config.tls_key))
            .map_err(ServeError::Config)?;
    let issuer = match &config.credential_issuer {
        Some(k) => Some(
            PublicKey::from_base64(k)
                .map_err(|_| ServeError::Config("credential_issuer".into()))?,
        ),
        None => None,
    };
    let index = share.index;
    let shared = Arc::new(Shared {
        share,
        per_address: RateLimiter::new(config.per_address_burst, config.per_address_per_second),
        per_credential: RateLimiter::new(
            config.per_credential_burst,
            config.per_credential_per_second,
        ),
        issuer,
        clock,
        metrics: Metrics::default(),
    });
    let limits = datadonor_service::ConnLimits {
        max_connections: config.max_connections,
        handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
        connection_lifetime: Duration::from_millis(config.connection_timeout_ms),
    };
    let running = datadonor_service::start(config.listen, tls, router(shared), limits)
        .await
        .map_err(|e| ServeError::Io(format!("binding {}", config.listen), e))?;
    let addr = running.addr();
    tracing::info!(%addr, index, "pseudonymiser listening");
    Ok(RunningInstance { running, index })
}
