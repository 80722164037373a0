//! The intake's HTTP API (see `PROTOCOL.md`), from the donor's side: an [`Intake`] handle that is
//! cheap to clone and safe to share between many concurrent donations (one connection pool).
//!
//! * Every response is parsed strictly with the `schemas` types; 4xx/5xx answers are RFC 7807
//!   problem documents whose slug is surfaced in [`ClientError::Problem`].
//! * Donations are retried on network errors and 5xx with exponential backoff
//!   ([`RetryPolicy`]), always sending **the same envelope bytes**: the intake's idempotency
//!   answers a replay of the same idempotency key and envelope with the stored receipt, so a retry
//!   never makes a second donation.
//! * Receipts are verified with [`verify_receipt`] against a [`LedgerTrust`] (ledger key and
//!   note verifier), which callers pin on first use (see [`crate::keystore`]).
//! * With a [`WitnessPolicy`] (witness keys and a quorum, pinned per intake), a checkpoint is
//!   accepted only with cosignatures by a quorum of those witnesses
//!   ([`Intake::witnessed_checkpoint`]). The intake has its checkpoints cosigned in the
//!   background, so the client re-fetches the checkpoint every [`WITNESS_POLL`] until it carries
//!   the quorum, for at most [`WitnessPolicy::max_wait`] ([`WITNESS_WAIT`] by default).

use std::sync::Arc;
use std::time::Duration;

use datadonor_schemas::bundle::{check_notice, OpenedBundle, StudyBundle};
use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::cosignature::{verify_quorum, CosignatureError, WitnessKey};
use datadonor_schemas::envelope::HpkeConfigList;
use datadonor_schemas::merkle::ProofAnswer;
use datadonor_schemas::pseudonym::{Cpr, Pseudonym};
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle, VerifiedReceipt};
use datadonor_schemas::signing::{Context, PublicKey, SignedObject};
use datadonor_schemas::study::{StudyDefinition, StudyId};
use datadonor_schemas::threshold::{
    self, AnswerError, EvaluateRequest, InstanceAnswer, ThresholdError, MAX_ANSWER_LEN,
};
use datadonor_schemas::time::Clock;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::keystore::LedgerKeyInfo;
use crate::tls::{client_config, TlsError, TrustAnchors};

/// Media type of donation envelopes.
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.datadonor.envelope.v1";
/// Largest response body read.
const MAX_RESPONSE: usize = 2 * 1024 * 1024;
/// How long the client waits, by default, for the intake's checkpoint to carry the witness
/// quorum.
pub const WITNESS_WAIT: Duration = Duration::from_secs(10);
/// How often the checkpoint is re-fetched while waiting for the witness quorum.
pub const WITNESS_POLL: Duration = Duration::from_millis(250);
/// Latest cosignature timestamp accepted, relative to the client's clock (seconds).
pub const WITNESS_MAX_SKEW_SECS: u64 = 300;

/// Errors talking to the intake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Bad configuration (URL, TLS).
    #[error("configuration: {0}")]
    Config(String),
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The network failed (after retries where they apply).
    #[error("{url}: {detail}")]
    Network {
        /// The request URL.
        url: String,
        /// The error chain.
        detail: String,
    },
    /// The intake refused with a problem document.
    #[error("{url}: intake refused ({status} {slug}): {title}")]
    Problem {
        /// The request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The machine-readable reason (`urn:datadonor:problem:<slug>`).
        slug: String,
        /// The human title.
        title: String,
    },
    /// A response did not parse or verify.
    #[error("{url}: invalid response: {detail}")]
    BadResponse {
        /// The request URL.
        url: String,
        /// What is wrong.
        detail: String,
    },
    /// The study's signature does not verify, or it is not signed by the configured steward.
    #[error("study {study}: {detail}")]
    StudySignature {
        /// Study id.
        study: String,
        /// What is wrong.
        detail: String,
    },
    /// The ledger key differs from the one pinned on first use.
    #[error(
        "the intake's ledger key differs from the one pinned on first use ({pinned}); refusing"
    )]
    LedgerKeyChanged {
        /// The pinned key (base64).
        pinned: String,
    },
    /// A receipt does not verify.
    #[error("receipt does not verify: {0}")]
    Receipt(String),
    /// The ledger read endpoints need the auditor token.
    #[error("the ledger read endpoints need --auditor-token")]
    NoAuditorToken,
    /// The study names no pseudonymisation service.
    #[error("study {0} names no pseudonymisation service; no pseudonym can be computed for it")]
    NoPseudonymiser(String),
    /// Too few pseudonymiser instances gave a valid answer.
    #[error("pseudonymisation: {0}")]
    Pseudonymiser(ThresholdError),
    /// The intake's checkpoint did not carry the witness quorum within the wait.
    #[error("the intake's checkpoint carries {valid} valid cosignatures by the required witnesses, the quorum is {quorum}")]
    WitnessQuorum {
        /// Distinct required witnesses whose cosignature verified (on the last checkpoint
        /// fetched).
        valid: usize,
        /// The quorum.
        quorum: usize,
    },
    /// Within the wait, no checkpoint carrying the witness quorum covered the tree needed.
    #[error("no checkpoint cosigned by the witness quorum covers {needed} entries (the last one covers {size})")]
    WitnessedTooSmall {
        /// Entries the checkpoint had to cover.
        needed: u64,
        /// Size of the last cosigned checkpoint fetched.
        size: u64,
    },
    /// A cosignature line by a required witness is invalid (forged, for another checkpoint,
    /// dated in the future, repeated), or the checkpoint does not open.
    #[error("witness cosignature: {0}")]
    Cosignature(CosignatureError),
}

/// A donor's pseudonym and how the instances answered.
#[derive(Debug, Clone)]
pub struct PseudonymOutcome {
    /// The per-study pseudonym.
    pub pseudonym: Pseudonym,
    /// The instances whose answers were combined.
    pub used: Vec<u16>,
    /// Instances whose answers verified but were not needed.
    pub spare: Vec<u16>,
    /// Instances that were down or answered wrongly, and why.
    pub rejected: Vec<AnswerError>,
}

/// A donor credential from the study's enrolment, sent to instances that require one. Never
/// printed.
#[derive(Clone)]
pub struct DonorCredentialToken(Zeroizing<String>);

impl DonorCredentialToken {
    /// Wrap an `Authorization` value (`Bearer …`); a bare token gets the `Bearer ` prefix.
    pub fn new(s: &str) -> Self {
        let t = s.trim();
        if t.starts_with("Bearer ") {
            Self(Zeroizing::new(t.to_string()))
        } else {
            Self(Zeroizing::new(format!("Bearer {t}")))
        }
    }
}

impl std::fmt::Debug for DonorCredentialToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DonorCredentialToken(<redacted>)")
    }
}

/// The slug of a problem document, escaped for display.
fn problem_slug(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let t = v.get("type")?.as_str()?;
    let slug = t.strip_prefix("urn:datadonor:problem:")?;
    Some(
        slug.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(64)
            .collect(),
    )
}

/// How donations are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Largest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// The auditor's bearer token: zeroized, never printed.
#[derive(Clone)]
pub struct AuditorToken(Zeroizing<String>);

impl AuditorToken {
    /// Wrap a token (64 hex digits).
    pub fn new(s: &str) -> Self {
        Self(Zeroizing::new(s.trim().to_string()))
    }
}

impl std::fmt::Debug for AuditorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditorToken(<redacted>)")
    }
}

/// Configuration of an [`Intake`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IntakeConfig {
    /// Base URL, `https://host[:port]` (a trailing `/` and `/v1` are tolerated).
    pub base_url: String,
    /// TLS trust.
    pub trust: TrustAnchors,
    /// The auditor token for the ledger read endpoints, if the donor has one.
    pub auditor_token: Option<AuditorToken>,
    /// When set, studies must be signed by this steward key.
    pub steward_key: Option<PublicKey>,
    /// Retry policy of donations and withdrawals.
    pub retry: RetryPolicy,
    /// Timeout of one request.
    pub timeout: Duration,
    /// The donor credential pseudonymiser instances may require.
    pub credential: Option<DonorCredentialToken>,
}

impl IntakeConfig {
    /// A configuration with defaults: no auditor token, no steward key, default retries,
    /// 60 s timeout.
    pub fn new(base_url: impl Into<String>, trust: TrustAnchors) -> Self {
        Self {
            base_url: base_url.into(),
            trust,
            auditor_token: None,
            steward_key: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
            credential: None,
        }
    }
}

/// A study as published by the intake: the verified definition, the signed object and the
/// digest the consent manifest refers to.
#[derive(Debug, Clone)]
pub struct PublishedStudy {
    /// The definition.
    pub definition: StudyDefinition,
    /// The signed object as received.
    pub signed: SignedObject,
    /// SHA-256 of the signed payload (`study_sha256` in manifests).
    pub sha256: [u8; 32],
    /// The steward key that signed it.
    pub steward: PublicKey,
}

impl PublishedStudy {
    /// Verify a signed study object (and, when given, its signer).
    pub fn from_signed(
        signed: SignedObject,
        steward: Option<&PublicKey>,
    ) -> Result<Self, ClientError> {
        let err = |detail: String| ClientError::StudySignature {
            study: "?".into(),
            detail,
        };
        let signer = signed
            .verify(Context::StudyDefinition)
            .map_err(|e| err(e.to_string()))?;
        let definition =
            StudyDefinition::from_json(&signed.payload).map_err(|e| err(e.to_string()))?;
        if steward.is_some_and(|s| s != &signer) {
            return Err(ClientError::StudySignature {
                study: definition.id.to_string(),
                detail: format!(
                    "signed by {}, not by the configured steward key",
                    signer.to_base64()
                ),
            });
        }
        Ok(Self {
            sha256: signed.payload_digest(),
            definition,
            signed,
            steward: signer,
        })
    }
}

/// The ledger key and checkpoint verifier receipts are checked against.
#[derive(Debug, Clone)]
pub struct LedgerTrust {
    /// The ledger's Ed25519 key.
    pub key: PublicKey,
    /// The signed-note verifier (same key, named).
    pub verifier: NoteVerifier,
    /// What was pinned.
    pub info: LedgerKeyInfo,
}

impl LedgerTrust {
    /// Check that the vkey carries the same key as `public_key`.
    pub fn from_info(info: &LedgerKeyInfo) -> Result<Self, ClientError> {
        let verifier =
            NoteVerifier::parse_vkey(&info.vkey).map_err(|e| ClientError::BadResponse {
                url: "ledger-key".into(),
                detail: e.to_string(),
            })?;
        if verifier.public_key() != &info.public_key.0 {
            return Err(ClientError::BadResponse {
                url: "ledger-key".into(),
                detail: "vkey and public_key differ".into(),
            });
        }
        Ok(Self {
            key: info.public_key,
            verifier,
            info: info.clone(),
        })
    }

    /// Verify a receipt bundle.
    pub fn verify(&self, bundle: &ReceiptBundle) -> Result<VerifiedReceipt, ClientError> {
        verify_receipt(bundle, &self.key, &self.verifier)
            .map_err(|e| ClientError::Receipt(e.to_string()))
    }
}

/// The witnesses a donor requires on every checkpoint of one intake, and how many of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessPolicy {
    witnesses: Vec<WitnessKey>,
    quorum: usize,
    /// How long to wait for the intake's checkpoint to carry the quorum.
    pub max_wait: Duration,
}

impl WitnessPolicy {
    /// `quorum` of `witnesses` (`1 <= quorum <= witnesses`, no key twice), waiting up to
    /// [`WITNESS_WAIT`].
    pub fn new(witnesses: Vec<WitnessKey>, quorum: usize) -> Result<Self, ClientError> {
        if quorum == 0 || quorum > witnesses.len() {
            return Err(ClientError::Config(format!(
                "witness quorum {quorum} cannot be met by {} witnesses (it must be between 1 and the number of witnesses)",
                witnesses.len()
            )));
        }
        for (i, w) in witnesses.iter().enumerate() {
            if witnesses
                .iter()
                .skip(i + 1)
                .any(|o| o.names(w.name(), w.key_hash()))
            {
                return Err(ClientError::Config(format!(
                    "witness {} is given twice",
                    w.name()
                )));
            }
        }
        Ok(Self {
            witnesses,
            quorum,
            max_wait: WITNESS_WAIT,
        })
    }

    /// [`WitnessPolicy::new`] from verifier keys (`<name>+<key ID>+<base64(0x04 || key)>`).
    pub fn from_vkeys(vkeys: &[String], quorum: usize) -> Result<Self, ClientError> {
        let keys = vkeys
            .iter()
            .map(|v| {
                WitnessKey::parse_vkey(v.trim())
                    .map_err(|e| ClientError::Config(format!("witness key {v:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(keys, quorum)
    }

    /// The same policy with another wait.
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The required witnesses.
    pub fn witnesses(&self) -> &[WitnessKey] {
        &self.witnesses
    }

    /// Their verifier keys, in order.
    pub fn vkeys(&self) -> Vec<String> {
        self.witnesses.iter().map(WitnessKey::to_vkey).collect()
    }

    /// The quorum.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Checks a cosigned checkpoint note: the ledger's signature, every line by a required
    /// witness valid and dated no later than `max_time`, and at least the quorum of them
    /// ([`verify_quorum`]). Returns the checkpoint and the names of the witnesses that
    /// cosigned it.
    pub fn check(
        &self,
        note: &[u8],
        ledger: &NoteVerifier,
        max_time: u64,
    ) -> Result<(Checkpoint, Vec<String>), ClientError> {
        match verify_quorum(note, ledger, &self.witnesses, self.quorum, max_time) {
            Ok((cp, found)) => {
                let names = found
                    .iter()
                    .filter_map(|f| self.witnesses.get(f.witness))
                    .map(|w| w.name().to_string())
                    .collect();
                Ok((cp, names))
            }
            Err(CosignatureError::QuorumNotMet { valid, quorum }) => {
                Err(ClientError::WitnessQuorum { valid, quorum })
            }
            Err(e) => Err(ClientError::Cosignature(e)),
        }
    }
}

/// A checkpoint that carried the witness quorum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedCheckpoint {
    /// The cosigned note as served.
    pub note: String,
    /// Its checkpoint.
    pub checkpoint: Checkpoint,
    /// The required witnesses that cosigned it, in note order.
    pub cosigned_by: Vec<String>,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StudyList {
    studies: Vec<String>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    config: IntakeConfig,
}

/// A handle on one intake. Clone it freely: clones share the connection pool.
#[derive(Clone)]
pub struct Intake {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Intake({})", self.inner.base)
    }
}

/// Outcome of one attempt.
enum Attempt {
    Done(Vec<u8>),
    Retry(ClientError),
    Fail(ClientError),
}

impl Intake {
    /// Build the handle (TLS configuration and connection pool; no request is made).
    pub fn new(config: IntakeConfig) -> Result<Self, ClientError> {
        let mut base = config.base_url.trim().trim_end_matches('/').to_string();
        if let Some(b) = base.strip_suffix("/v1") {
            base = b.to_string();
        }
        if !base.starts_with("https://") {
            return Err(ClientError::Config(format!(
                "intake URL {base:?} must start with https://"
            )));
        }
        let tls = client_config(&config.trust)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(15))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("datadonor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(datadonor_schemas::error_chain(&e)))?;
        Ok(Self {
            inner: Arc::new(Inner { http, base, config }),
        })
    }

    /// The same intake, sending `credential` to pseudonymiser instances.
    pub fn with_credential(self, credential: DonorCredentialToken) -> Self {
        let mut config = self.inner.config.clone();
        config.credential = Some(credential);
        Self {
            inner: Arc::new(Inner {
                http: self.inner.http.clone(),
                base: self.inner.base.clone(),
                config,
            }),
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.inner.base, path)
    }

    async fn attempt(&self, req: reqwest::RequestBuilder, url: &str) -> Attempt {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry(ClientError::Network {
                    url: url.to_string(),
                    detail: datadonor_schemas::error_chain(&e),
                })
            }
        };
        let status = resp.status();
        let body = match read_limited(resp, MAX_RESPONSE).await {
            Ok(b) => b,
            Err(detail) => {
                return Attempt::Retry(ClientError::Network {
                    url: url.to_string(),
                    detail,
                })
            }
        };
        if status.is_success() {
            return Attempt::Done(body);
        }
        let (slug, title) = match serde_json::from_slice::<Problem>(&body) {
            Ok(p) => (
                p.kind
                    .strip_prefix("urn:datadonor:problem:")
                    .unwrap_or(&p.kind)
                    .to_string(),
                p.title,
            ),
            Err(_) => (
                "unknown".to_string(),
                status.canonical_reason().unwrap_or("").to_string(),
            ),
        };
        let err = ClientError::Problem {
            url: url.to_string(),
            status: status.as_u16(),
            slug,
            title,
        };
        if status.is_server_error() || status.as_u16() == 429 {
            Attempt::Retry(err)
        } else {
            Attempt::Fail(err)
        }
    }

    /// Send with retries; `build` makes the request anew for every attempt.
    async fn send(
        &self,
        url: &str,
        retry: bool,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, ClientError> {
        let policy = self.inner.config.retry;
        let attempts = if retry { policy.max_attempts.max(1) } else { 1 };
        let mut backoff = policy.initial_backoff;
        let mut last = None;
        for i in 0..attempts {
            if i > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            match self.attempt(build(), url).await {
                Attempt::Done(b) => return Ok(b),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) => {
                    tracing::debug!(attempt = i + 1, error = %e, "retrying");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Network {
            url: url.to_string(),
            detail: "no attempt made".into(),
        }))
    }

    async fn get(&self, path: &str, auditor: bool) -> Result<Vec<u8>, ClientError> {
        let url = self.url(path);
        let token = if auditor {
            Some(
                self.inner
                    .config
                    .auditor_token
                    .clone()
                    .ok_or(ClientError::NoAuditorToken)?,
            )
        } else {
            None
        };
        self.send(&url, true, || {
            let r = self.inner.http.get(&url);
            match &token {
                Some(t) => r.bearer_auth(t.0.as_str()),
                None => r,
            }
        })
        .await
    }

    fn bad(&self, path: &str, detail: impl std::fmt::Display) -> ClientError {
        ClientError::BadResponse {
            url: self.url(path),
            detail: detail.to_string(),
        }
    }

    /// `GET /v1/studies`.
    pub async fn studies(&self) -> Result<Vec<String>, ClientError> {
        let p = "/v1/studies";
        let b = self.get(p, false).await?;
        let l: StudyList = serde_json::from_slice(&b).map_err(|e| self.bad(p, e))?;
        Ok(l.studies)
    }

    /// `GET /v1/studies/{id}`, verified (steward key checked when configured).
    pub async fn study(&self, id: &StudyId) -> Result<PublishedStudy, ClientError> {
        let p = format!("/v1/studies/{id}");
        let b = self.get(&p, false).await?;
        let signed = SignedObject::from_bytes(&b).map_err(|e| self.bad(&p, e))?;
        let s = PublishedStudy::from_signed(signed, self.inner.config.steward_key.as_ref())?;
        if &s.definition.id != id {
            return Err(self.bad(&p, "the intake served another study"));
        }
        Ok(s)
    }

    /// `GET /v1/studies/{id}/bundle`: the steward-signed bundle of `study`, verified against the
    /// study (same id, version, signed payload and signer) and the session's ledger key.
    pub async fn study_bundle(
        &self,
        study: &PublishedStudy,
        ledger: &LedgerTrust,
    ) -> Result<OpenedBundle, ClientError> {
        let p = format!("/v1/studies/{}/bundle", study.definition.id);
        let b = self.get(&p, false).await?;
        let signed = SignedObject::from_bytes(&b).map_err(|e| self.bad(&p, e))?;
        let opened = StudyBundle::open(&signed, Some(&study.steward)).map_err(|e| {
            ClientError::StudySignature {
                study: study.definition.id.to_string(),
                detail: e.to_string(),
            }
        })?;
        opened
            .check_study(&study.definition, &study.sha256, &study.steward)
            .and_then(|()| opened.check_ledger(&ledger.key))
            .map_err(|e| ClientError::StudySignature {
                study: study.definition.id.to_string(),
                detail: e.to_string(),
            })?;
        Ok(opened)
    }

    /// `GET /v1/notices/{sha256}`: a consent notice text, checked against its hash.
    pub async fn notice(&self, sha256: &[u8; 32]) -> Result<String, ClientError> {
        let p = format!("/v1/notices/{}", hex::encode(sha256));
        let b = self.get(&p, false).await?;
        check_notice(&b, sha256)
            .map(str::to_string)
            .map_err(|e| self.bad(&p, e))
    }

    /// `GET /v1/hpke-config`.
    pub async fn hpke_configs(&self) -> Result<HpkeConfigList, ClientError> {
        let p = "/v1/hpke-config";
        let b = self.get(p, false).await?;
        let l = HpkeConfigList::from_json(&b).map_err(|e| self.bad(p, e))?;
        l.current().map_err(|e| self.bad(p, e))?;
        Ok(l)
    }

    /// `GET /v1/ledger-key`.
    pub async fn ledger_key(&self) -> Result<LedgerKeyInfo, ClientError> {
        let p = "/v1/ledger-key";
        let b = self.get(p, false).await?;
        serde_json::from_slice(&b).map_err(|e| self.bad(p, e))
    }

    /// Fetch the ledger key and check it against a pin (trust on first use).
    pub async fn ledger_trust(
        &self,
        pinned: Option<&LedgerKeyInfo>,
    ) -> Result<LedgerTrust, ClientError> {
        let fetched = self.ledger_key().await?;
        if let Some(pin) = pinned {
            if pin != &fetched {
                return Err(ClientError::LedgerKeyChanged {
                    pinned: pin.public_key.to_base64(),
                });
            }
        }
        LedgerTrust::from_info(&fetched)
    }

    /// The donor's per-study pseudonym from the study's threshold pseudonymisation service:
    /// blind the CPR, send `B` to every instance at once, verify each answer's proof against
    /// the instance's public share, combine `t` of them, finalise, derive. Only `B` leaves the
    /// device. Up to `n − t` instances may be down or answer wrongly.
    pub async fn pseudonym(
        &self,
        cpr: &Cpr,
        study: &StudyDefinition,
    ) -> Result<PseudonymOutcome, ClientError> {
        let config = study
            .pseudonymiser
            .as_ref()
            .ok_or_else(|| ClientError::NoPseudonymiser(study.id.to_string()))?;
        let blind = threshold::blind(cpr).map_err(ClientError::Pseudonymiser)?;
        let req = serde_json::to_vec(&EvaluateRequest {
            blinded: blind.blinded,
        })
        .unwrap_or_default();
        let mut tasks = tokio::task::JoinSet::new();
        for inst in &config.instances {
            let (http, url, body, index) = (
                self.inner.http.clone(),
                format!("{}/v1/evaluate", inst.url),
                req.clone(),
                inst.index,
            );
            let credential = self.inner.config.credential.clone();
            tasks.spawn(async move {
                let mut rb = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body);
                if let Some(c) = credential {
                    rb = rb.header("authorization", c.0.as_str());
                }
                let unavailable = |detail: String| AnswerError::Unavailable { index, detail };
                // A pooled connection the instance has just closed fails before the request is
                // processed: try once more on a fresh one (an evaluation changes no state).
                let retry = rb.try_clone();
                let resp = match rb.send().await {
                    Ok(r) => r,
                    Err(first) => match retry {
                        Some(again) if first.is_request() || first.is_connect() => again
                            .send()
                            .await
                            .map_err(|e| unavailable(datadonor_schemas::error_chain(&e)))?,
                        _ => return Err(unavailable(datadonor_schemas::error_chain(&first))),
                    },
                };
                let status = resp.status();
                let bytes = read_limited(resp, MAX_ANSWER_LEN)
                    .await
                    .map_err(unavailable)?;
                if !status.is_success() {
                    let slug = problem_slug(&bytes).unwrap_or_else(|| "no problem document".into());
                    return Err(unavailable(format!("{} {slug}", status.as_u16())));
                }
                let answer =
                    InstanceAnswer::from_json(&bytes).map_err(|e| AnswerError::Malformed {
                        index,
                        detail: e.to_string(),
                    })?;
                if answer.index != index {
                    return Err(AnswerError::Malformed {
                        index,
                        detail: format!("answered as instance {}", answer.index),
                    });
                }
                Ok(answer)
            });
        }
        let mut answers = Vec::new();
        let mut failed = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(a)) => answers.push(a),
                Ok(Err(e)) => failed.push(e),
                Err(e) => failed.push(AnswerError::Unavailable {
                    index: 0,
                    detail: e.to_string(),
                }),
            }
        }
        let combined = blind
            .combine(config, &answers, failed)
            .map_err(ClientError::Pseudonymiser)?;
        Ok(PseudonymOutcome {
            pseudonym: combined.output.study_pseudonym(study.id.as_str()),
            used: combined.used,
            spare: combined.spare,
            rejected: combined.rejected,
        })
    }

    /// `POST /v1/donations` with the envelope, retried with the same bytes; returns the
    /// receipt bundle, verified against `ledger` and the envelope's digest.
    pub async fn post_donation(
        &self,
        envelope: &[u8],
        ledger: &LedgerTrust,
    ) -> Result<(ReceiptBundle, VerifiedReceipt), ClientError> {
        self.post_for_receipt(
            "/v1/donations",
            ENVELOPE_MEDIA_TYPE,
            envelope.to_vec(),
            sha256(envelope),
            "envelope",
            ledger,
        )
        .await
    }

    /// `POST /v1/withdrawals` with a signed withdrawal; verified like a donation receipt.
    pub async fn post_withdrawal(
        &self,
        signed: &SignedObject,
        ledger: &LedgerTrust,
    ) -> Result<(ReceiptBundle, VerifiedReceipt), ClientError> {
        self.post_for_receipt(
            "/v1/withdrawals",
            "application/json",
            signed.to_bytes(),
            signed.payload_digest(),
            "withdrawal",
            ledger,
        )
        .await
    }

    /// POST a request that the intake answers with a receipt (with retries: the same bytes every
    /// time), verify the receipt and check that it names this request's digest.
    async fn post_for_receipt(
        &self,
        p: &str,
        content_type: &'static str,
        body: Vec<u8>,
        request_sha256: [u8; 32],
        what: &str,
        ledger: &LedgerTrust,
    ) -> Result<(ReceiptBundle, VerifiedReceipt), ClientError> {
        let url = self.url(p);
        let b = self
            .send(&url, true, || {
                self.inner
                    .http
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body.clone())
            })
            .await?;
        let bundle = ReceiptBundle::from_json(&b).map_err(|e| self.bad(p, e))?;
        let v = ledger.verify(&bundle)?;
        if v.receipt.request_sha256 != request_sha256 {
            return Err(ClientError::Receipt(format!(
                "receipt is for another {what}"
            )));
        }
        Ok((bundle, v))
    }

    /// `GET /v1/ledger/checkpoint` (public), verified with the ledger's note verifier.
    pub async fn checkpoint(
        &self,
        ledger: &LedgerTrust,
    ) -> Result<(String, checkpoint::SignedCheckpoint), ClientError> {
        let p = "/v1/ledger/checkpoint";
        let b = self.get(p, false).await?;
        let cp = checkpoint::open(&b, std::slice::from_ref(&ledger.verifier))
            .map_err(|e| self.bad(p, e))?;
        let text = String::from_utf8(b).map_err(|e| self.bad(p, e))?;
        Ok((text, cp))
    }

    /// `GET /v1/ledger/checkpoint`, accepted only when it carries `policy`'s witness quorum
    /// ([`WitnessPolicy::check`], cosignatures dated up to [`WITNESS_MAX_SKEW_SECS`] after
    /// `clock`) and covers at least `min_size` entries. While it does not, it is fetched again
    /// every [`WITNESS_POLL`] for up to `policy.max_wait`; then [`ClientError::WitnessQuorum`]
    /// (naming how many valid cosignatures the last one carried) or
    /// [`ClientError::WitnessedTooSmall`]. An invalid cosignature by a required witness fails at
    /// once ([`ClientError::Cosignature`]).
    pub async fn witnessed_checkpoint(
        &self,
        ledger: &LedgerTrust,
        policy: &WitnessPolicy,
        min_size: u64,
        clock: &dyn Clock,
    ) -> Result<WitnessedCheckpoint, ClientError> {
        let p = "/v1/ledger/checkpoint";
        let deadline = tokio::time::Instant::now() + policy.max_wait;
        loop {
            let b = self.get(p, false).await?;
            let max_time = u64::try_from(clock.now())
                .unwrap_or(0)
                .saturating_add(WITNESS_MAX_SKEW_SECS);
            let pending = match policy.check(&b, &ledger.verifier, max_time) {
                Ok((checkpoint, cosigned_by)) if checkpoint.size >= min_size => {
                    let note = String::from_utf8(b).map_err(|e| self.bad(p, e))?;
                    return Ok(WitnessedCheckpoint {
                        note,
                        checkpoint,
                        cosigned_by,
                    });
                }
                Ok((checkpoint, _)) => ClientError::WitnessedTooSmall {
                    needed: min_size,
                    size: checkpoint.size,
                },
                Err(e @ ClientError::WitnessQuorum { .. }) => e,
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() + WITNESS_POLL > deadline {
                return Err(pending);
            }
            tokio::time::sleep(WITNESS_POLL).await;
        }
    }

    async fn proof(&self, path: String) -> Result<Vec<[u8; 32]>, ClientError> {
        let b = self.get(&path, false).await?;
        let r = ProofAnswer::from_json(&b).map_err(|e| self.bad(&path, e))?;
        Ok(r.proof.into_iter().map(|h| h.0).collect())
    }

    /// `GET /v1/ledger/inclusion` (public).
    pub async fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
    ) -> Result<Vec<[u8; 32]>, ClientError> {
        self.proof(format!("/v1/ledger/inclusion?index={index}&size={size}"))
            .await
    }

    /// `GET /v1/ledger/consistency` (public).
    pub async fn consistency_proof(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<[u8; 32]>, ClientError> {
        self.proof(format!("/v1/ledger/consistency?from={from}&to={to}"))
            .await
    }

    /// Whether an auditor token is configured.
    pub fn has_auditor_token(&self) -> bool {
        self.inner.config.auditor_token.is_some()
    }
}

/// SHA-256.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > limit {
                    return Err(format!("response larger than {limit} bytes"));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(datadonor_schemas::error_chain(&e)),
        }
    }
}
