//! The witness's HTTPS service.
//!
//! | method and path | answer |
//! |---|---|
//! | `POST /add-checkpoint` | C2SP tlog-witness: `200` with the cosignature line; `409` (`text/x.tlog.size`) with the witness's size; `400`, `403`, `404`, `413`, `422` problem documents |
//! | `GET /{origin hash}/checkpoint` | the last cosigned checkpoint of that log (`404` if none) |
//! | `GET /healthz` | `ok` |
//!
//! The status codes are the ones tlog-witness mandates; the bodies of refusals are RFC 9457
//! problem documents (`application/problem+json`), except `409`, whose body the spec fixes.
//! Problem documents name the failed check, never echo input bytes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use datadonor_schemas::cosignature::{MAX_REQUEST_SIZE, SIZE_CONTENT_TYPE};

use crate::witness::{Refusal, Witness};

/// Media type of problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

fn problem(status: StatusCode, slug: &str, title: &str, extra: Option<(&str, String)>) -> Response {
    let mut doc = serde_json::json!({
        "type": format!("urn:datadonor:problem:{slug}"),
        "title": title,
        "status": status.as_u16(),
    });
    if let (Some((k, v)), Some(map)) = (extra, doc.as_object_mut()) {
        map.insert(k.to_string(), serde_json::Value::String(v));
    }
    let mut r = (status, doc.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    r
}

/// The HTTP answer to a refusal.
pub fn refusal_response(r: &Refusal) -> Response {
    use StatusCode as S;
    match r {
        Refusal::Malformed(_) => problem(
            S::BAD_REQUEST,
            "bad-request",
            "malformed add-checkpoint request",
            None,
        ),
        Refusal::MalformedCheckpoint(_) => problem(
            S::BAD_REQUEST,
            "bad-checkpoint",
            "the checkpoint is not a canonical checkpoint",
            None,
        ),
        Refusal::UnknownLog => problem(S::NOT_FOUND, "unknown-log", "unknown log origin", None),
        Refusal::BadSignature(_) => problem(
            S::FORBIDDEN,
            "bad-log-signature",
            "no valid signature by the log's key",
            None,
        ),
        Refusal::OldAfterNew { .. } => problem(
            S::BAD_REQUEST,
            "old-after-new",
            "old size is larger than the checkpoint size",
            None,
        ),
        Refusal::Conflict { size } => {
            let mut resp = (S::CONFLICT, format!("{size}\n")).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(SIZE_CONTENT_TYPE),
            );
            resp
        }
        Refusal::EmptyTreeRoot => problem(
            S::UNPROCESSABLE_ENTITY,
            "empty-tree-root",
            "a checkpoint of size 0 must have the empty tree's root",
            None,
        ),
        Refusal::ProofFromZero => problem(
            S::UNPROCESSABLE_ENTITY,
            "proof-from-zero",
            "a consistency proof from size 0 must be empty",
            None,
        ),
        Refusal::Fork { cosigned } => problem(
            S::UNPROCESSABLE_ENTITY,
            "fork",
            "same size as the checkpoint this witness cosigned, different root",
            Some(("cosigned_checkpoint", cosigned.clone())),
        ),
        Refusal::Inconsistent { cosigned, .. } => problem(
            S::UNPROCESSABLE_ENTITY,
            "inconsistent",
            "the consistency proof does not verify against the checkpoint this witness cosigned",
            Some(("cosigned_checkpoint", cosigned.clone())),
        ),
        Refusal::State(_) | Refusal::Cosign => problem(
            S::INTERNAL_SERVER_ERROR,
            "internal",
            "the witness could not record the checkpoint",
            None,
        ),
    }
}

/// Connection limits of a witness served in process by [`start`].
pub const IN_PROCESS_LIMITS: datadonor_service::ConnLimits = datadonor_service::ConnLimits {
    max_connections: 64,
    handshake_timeout: std::time::Duration::from_secs(10),
    connection_lifetime: std::time::Duration::from_secs(60),
};

/// Serves `witness` over TLS on `listen`, on a task of the current runtime: a witness in the
/// same process as its caller (the embedded demo, tests). Stop it with
/// [`datadonor_service::Running::shutdown`].
pub async fn start(
    witness: Witness,
    listen: std::net::SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<datadonor_service::Running> {
    datadonor_service::start(listen, tls, router(Arc::new(witness)), IN_PROCESS_LIMITS).await
}

/// A witness of the one log `origin` (verified with `log`), keeping its state in `state_dir`
/// and the system clock, served in process by [`start`]: the embedded demo's and the tests'
/// witnesses.
pub async fn start_for_log(
    signer: datadonor_schemas::cosignature::WitnessSigner,
    origin: &str,
    log: datadonor_schemas::checkpoint::NoteVerifier,
    state_dir: &std::path::Path,
    listen: std::net::SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<datadonor_service::Running> {
    let state = crate::state::StateDir::open(state_dir).map_err(std::io::Error::other)?;
    let witness = Witness::new(
        signer,
        vec![(origin.to_string(), log)],
        state,
        Arc::new(datadonor_schemas::time::SystemClock),
    );
    start(witness, listen, tls).await
}

/// The witness's router (for tests that drive it without TLS, and for [`datadonor_service::start`]).
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/{origin_hash}/checkpoint", get(checkpoint))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async {
            problem(StatusCode::NOT_FOUND, "not-found", "no such resource", None)
        })
        .with_state(witness)
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_REQUEST_SIZE).await {
        Ok(b) => b,
        Err(e) => {
            let too_large = e
                .into_inner()
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body-too-large",
                    "request body too large",
                    None,
                )
            } else {
                problem(
                    StatusCode::BAD_REQUEST,
                    "bad-request",
                    "the request body could not be read",
                    None,
                )
            };
        }
    };
    // Verification and the fsynced state write block: keep them off the async workers.
    let decided = tokio::task::spawn_blocking(move || w.add_checkpoint(&bytes)).await;
    match decided {
        Ok(Ok(lines)) => {
            tracing::info!("cosigned");
            let mut r = (StatusCode::OK, lines).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        Ok(Err(refusal)) => {
            tracing::info!(refusal = %refusal, "refused");
            refusal_response(&refusal)
        }
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            None,
        ),
    }
}

async fn checkpoint(State(w): State<Arc<Witness>>, Path(origin_hash): Path<String>) -> Response {
    let w2 = Arc::clone(&w);
    let found = tokio::task::spawn_blocking(move || w2.cosigned_by_hash(&origin_hash)).await;
    match found {
        Ok(Ok(Some(state))) => {
            let mut r = (StatusCode::OK, state.note).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
        Ok(Ok(None)) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "no checkpoint cosigned for that log",
            None,
        ),
        _ => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            None,
        ),
    }
}
