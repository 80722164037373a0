//! RFC 7807 problem documents: every refusal the intake sends, with its stable slug and status.
//!
//! A [`Problem`] is what leaves the server; it carries no internal detail. The detail of an
//! internal failure is logged (without secrets or health data) where it happens and the client
//! sees only `internal`. The slugs are part of the protocol (`PROTOCOL.md`): never rename one.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

/// Media type of problem documents.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Every reason the intake refuses a request. The slug and status of each are fixed by
/// `PROTOCOL.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// 413: the body exceeds the configured limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// 400: the envelope does not parse (magic, suite, lengths).
    #[error("malformed envelope")]
    MalformedEnvelope,
    /// 400: the envelope names a key id the intake does not hold, or one past its grace period.
    #[error("unknown or retired key id")]
    UnknownKeyId,
    /// 400: HPKE open failed, or the payload inside does not parse.
    #[error("envelope does not decrypt")]
    DecryptFailed,
    /// 400: the consent manifest is not a well-formed signed object of the right context.
    #[error("malformed consent manifest")]
    MalformedManifest,
    /// 400: a signature does not verify, or the signer is not the key the message names.
    #[error("bad signature")]
    BadSignature,
    /// 404 on `GET /v1/studies/{id}`, 422 inside a donation or withdrawal: no such study/version.
    #[error("unknown study")]
    UnknownStudy,
    /// 422: the manifest was made for a different rendition of the study (study hash).
    #[error("manifest is for another version of the study")]
    StudyMismatch,
    /// 422: a purpose the study does not offer (or none, or one twice).
    #[error("purpose not offered by the study")]
    PurposeNotInStudy,
    /// 422: the consent has expired, is dated in the future, or outlives the study's maximum.
    #[error("consent expired or out of the study's bounds")]
    ConsentExpired,
    /// 422: a manifest field differs from the study (controller, notice, categories, basis).
    #[error("manifest does not match the study")]
    ManifestMismatch,
    /// 400: the rows are not an Arrow IPC stream.
    #[error("rows do not decode")]
    MalformedRows,
    /// 422: the rows' schema differs from the study's.
    #[error("rows schema differs from the study's")]
    SchemaMismatch,
    /// 422: a value is outside its range or enumeration, or a period is malformed.
    #[error("value out of range")]
    ValueOutOfRange,
    /// 422: more rows than the configured limit.
    #[error("too many rows")]
    TooManyRows,
    /// 422: a row's donor is not the manifest's pseudonym.
    #[error("row pseudonym differs from the manifest's")]
    PseudonymMismatch,
    /// 409: the idempotency key was used for a different envelope.
    #[error("idempotency key reused for a different envelope")]
    IdempotencyConflict,
    /// 404: no consent for that pseudonym and record in that study.
    #[error("unknown consent")]
    UnknownConsent,
    /// 403: the withdrawal is not signed by the consent's donor key.
    #[error("withdrawal not signed by the consent's donor key")]
    WithdrawalKeyMismatch,
    /// 409: the consent was already withdrawn.
    #[error("consent already withdrawn")]
    AlreadyWithdrawn,
    /// 429: rate limit exceeded.
    #[error("rate limited")]
    RateLimited,
    /// 401: missing or wrong auditor token.
    #[error("unauthorized")]
    Unauthorized,
    /// 403: a ledger event of a type analytics may not append.
    #[error("forbidden entry type")]
    ForbiddenEntryType,
    /// 422: a ledger event's time is more than 5 minutes from the intake's clock.
    #[error("event time too far from the intake's clock")]
    EventTimeSkew,
    /// 400: anything else the client got wrong (query parameters, content type, JSON).
    #[error("bad request")]
    BadRequest,
    /// 404: no such route.
    #[error("not found")]
    NotFound,
    /// 408: the body did not arrive in time.
    #[error("request timeout")]
    Timeout,
    /// 500: an internal failure; nothing was written.
    #[error("internal error")]
    Internal,
    /// 503: shutting down, or the commit queue is full.
    #[error("service unavailable")]
    Unavailable,
}

impl Problem {
    /// Every problem, for metrics and documentation.
    pub const ALL: [Problem; 29] = [
        Problem::BodyTooLarge,
        Problem::MalformedEnvelope,
        Problem::UnknownKeyId,
        Problem::DecryptFailed,
        Problem::MalformedManifest,
        Problem::BadSignature,
        Problem::UnknownStudy,
        Problem::StudyMismatch,
        Problem::PurposeNotInStudy,
        Problem::ConsentExpired,
        Problem::ManifestMismatch,
        Problem::MalformedRows,
        Problem::SchemaMismatch,
        Problem::ValueOutOfRange,
        Problem::TooManyRows,
        Problem::PseudonymMismatch,
        Problem::IdempotencyConflict,
        Problem::UnknownConsent,
        Problem::WithdrawalKeyMismatch,
        Problem::AlreadyWithdrawn,
        Problem::RateLimited,
        Problem::Unauthorized,
        Problem::ForbiddenEntryType,
        Problem::EventTimeSkew,
        Problem::BadRequest,
        Problem::NotFound,
        Problem::Timeout,
        Problem::Internal,
        Problem::Unavailable,
    ];

    /// The stable machine-readable slug.
    pub fn slug(self) -> &'static str {
        match self {
            Problem::BodyTooLarge => "body-too-large",
            Problem::MalformedEnvelope => "malformed-envelope",
            Problem::UnknownKeyId => "unknown-key-id",
            Problem::DecryptFailed => "decrypt-failed",
            Problem::MalformedManifest => "malformed-manifest",
            Problem::BadSignature => "bad-signature",
            Problem::UnknownStudy => "unknown-study",
            Problem::StudyMismatch => "study-mismatch",
            Problem::PurposeNotInStudy => "purpose-not-in-study",
            Problem::ConsentExpired => "consent-expired",
            Problem::ManifestMismatch => "manifest-mismatch",
            Problem::MalformedRows => "malformed-rows",
            Problem::SchemaMismatch => "schema-mismatch",
            Problem::ValueOutOfRange => "value-out-of-range",
            Problem::TooManyRows => "too-many-rows",
            Problem::PseudonymMismatch => "pseudonym-mismatch",
            Problem::IdempotencyConflict => "idempotency-conflict",
            Problem::UnknownConsent => "unknown-consent",
            Problem::WithdrawalKeyMismatch => "withdrawal-key-mismatch",
            Problem::AlreadyWithdrawn => "already-withdrawn",
            Problem::RateLimited => "rate-limited",
            Problem::Unauthorized => "unauthorized",
            Problem::ForbiddenEntryType => "forbidden-entry-type",
            Problem::EventTimeSkew => "event-time-skew",
            Problem::BadRequest => "bad-request",
            Problem::NotFound => "not-found",
            Problem::Timeout => "timeout",
            Problem::Internal => "internal",
            Problem::Unavailable => "unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Problem::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::MalformedEnvelope
            | Problem::UnknownKeyId
            | Problem::DecryptFailed
            | Problem::MalformedManifest
            | Problem::BadSignature
            | Problem::MalformedRows
            | Problem::BadRequest => StatusCode::BAD_REQUEST,
            Problem::UnknownStudy
            | Problem::StudyMismatch
            | Problem::PurposeNotInStudy
            | Problem::ConsentExpired
            | Problem::ManifestMismatch
            | Problem::SchemaMismatch
            | Problem::ValueOutOfRange
            | Problem::TooManyRows
            | Problem::PseudonymMismatch
            | Problem::EventTimeSkew => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::IdempotencyConflict | Problem::AlreadyWithdrawn => StatusCode::CONFLICT,
            Problem::UnknownConsent | Problem::NotFound => StatusCode::NOT_FOUND,
            Problem::WithdrawalKeyMismatch | Problem::ForbiddenEntryType => StatusCode::FORBIDDEN,
            Problem::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Problem::Unauthorized => StatusCode::UNAUTHORIZED,
            Problem::Timeout => StatusCode::REQUEST_TIMEOUT,
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Problem::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The `type` URI.
    pub fn type_uri(self) -> String {
        format!("urn:datadonor:problem:{}", self.slug())
    }

    /// The problem document body.
    pub fn body(self) -> String {
        serde_json::json!({
            "type": self.type_uri(),
            "title": self.to_string(),
            "status": self.status().as_u16(),
        })
        .to_string()
    }

    /// The problem with a slug, if any (for clients and tests).
    pub fn from_slug(slug: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.slug() == slug)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.body()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if self == Problem::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self == Problem::RateLimited {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp.extensions_mut().insert(self);
        resp
    }
}
