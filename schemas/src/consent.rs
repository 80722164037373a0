//! Consent manifests and withdrawals, both signed by the donor's Ed25519 key.
//!
//! The manifest's fields follow ISO/IEC TS 27560 and the Kantara consent receipt: a record id,
//! the study and its controller, the purposes chosen (granular consent), the legal basis
//! (GDPR art. 9(2)(a), explicit consent), the data categories, when it was given and when it
//! expires, how to withdraw, the hash of the notice text shown, the donor's public key and the
//! per-study pseudonym. The intake checks a manifest against the study with [`check_manifest`].

use serde::{Deserialize, Serialize};

use crate::pseudonym::Pseudonym;
use crate::signing::{Context, PublicKey, SignatureError, Signed, SignedObject, SigningKey};
use crate::study::{Controller, StudyDefinition, StudyId};
use crate::time::UnixSeconds;
use crate::wire::{hex16, hex32};

/// The only legal basis Datadonor collects under: explicit consent, GDPR art. 9(2)(a).
pub const LEGAL_BASIS: &str = "gdpr-art-9-2-a";
/// Tolerated clock skew between donor device and intake.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Why a manifest or withdrawal is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// Signature, context or encoding.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The signer is not the donor key named in the body.
    #[error("signed by a key other than the donor key it names")]
    SignerMismatch,
    /// Study id or version differ from the study it is checked against.
    #[error("manifest is for study {found}, not {expected}")]
    StudyMismatch {
        /// The study checked against.
        expected: String,
        /// The study in the manifest.
        found: String,
    },
    /// A purpose the study does not offer.
    #[error("purpose {0:?} is not one of the study's")]
    UnknownPurpose(String),
    /// No purpose, or one twice.
    #[error("purposes must be non-empty and distinct")]
    BadPurposes,
    /// The consent has expired (or expires before it was given).
    #[error("consent expired")]
    Expired,
    /// Expiry beyond what the study allows.
    #[error("consent expiry is beyond the study's maximum")]
    ExpiryTooLong,
    /// Given in the future.
    #[error("consent is dated in the future")]
    FromTheFuture,
    /// A field differs from the study (controller, notice hash, legal basis, categories).
    #[error("manifest field `{0}` does not match the study")]
    FieldMismatch(&'static str),
}

/// A consent manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentManifest {
    /// Format version.
    pub format: u32,
    /// Random consent record id.
    #[serde(with = "hex16")]
    pub record_id: [u8; 16],
    /// Study id.
    pub study_id: StudyId,
    /// Study version consented to.
    pub study_version: u32,
    /// SHA-256 of the signed study payload the donor saw.
    #[serde(with = "hex32")]
    pub study_sha256: [u8; 32],
    /// The controller.
    pub controller: Controller,
    /// Purpose codes chosen, a non-empty subset of the study's.
    pub purposes: Vec<String>,
    /// Always [`LEGAL_BASIS`].
    pub legal_basis: String,
    /// The study's field names: the categories of data donated.
    pub data_categories: Vec<String>,
    /// When consent was given.
    pub given_at: UnixSeconds,
    /// When it lapses.
    pub expires_at: UnixSeconds,
    /// How to withdraw, as shown to the donor.
    pub withdrawal_method: String,
    /// SHA-256 of the notice text shown.
    #[serde(with = "hex32")]
    pub notice_sha256: [u8; 32],
    /// The donor key that signs this manifest and any withdrawal.
    pub donor_public_key: PublicKey,
    /// The per-study pseudonym.
    pub pseudonym: Pseudonym,
}

impl ConsentManifest {
    /// Sign with the donor key.
    pub fn sign(&self, key: &SigningKey) -> SignedObject {
        SignedObject::sign(Context::ConsentManifest, self, key)
    }

    /// Whether the consent covers `purpose` at time `t`.
    pub fn covers(&self, purpose: &str, t: UnixSeconds) -> bool {
        t < self.expires_at && self.purposes.iter().any(|p| p == purpose)
    }
}

/// Parse and verify a signed manifest: signature under the manifest context, by the key the
/// manifest names.
pub fn open_manifest(bytes: &[u8]) -> Result<Signed<ConsentManifest>, ConsentError> {
    let obj = SignedObject::from_bytes(bytes)?;
    let signed: Signed<ConsentManifest> = obj.open(Context::ConsentManifest, "consent manifest")?;
    if signed.signer != signed.body.donor_public_key {
        return Err(ConsentError::SignerMismatch);
    }
    Ok(signed)
}

/// Check a verified manifest against the study it names, at time `now`.
pub fn check_manifest(
    m: &ConsentManifest,
    study: &StudyDefinition,
    study_sha256: &[u8; 32],
    now: UnixSeconds,
) -> Result<(), ConsentError> {
    if m.study_id != study.id || m.study_version != study.version {
        return Err(ConsentError::StudyMismatch {
            expected: format!("{} v{}", study.id, study.version),
            found: format!("{} v{}", m.study_id, m.study_version),
        });
    }
    if m.format != crate::PROTOCOL_VERSION {
        return Err(ConsentError::FieldMismatch("format"));
    }
    if &m.study_sha256 != study_sha256 {
        return Err(ConsentError::FieldMismatch("study_sha256"));
    }
    if m.controller != study.controller {
        return Err(ConsentError::FieldMismatch("controller"));
    }
    if !study.notice_hashes().any(|h| h == m.notice_sha256) {
        return Err(ConsentError::FieldMismatch("notice_sha256"));
    }
    if m.legal_basis != LEGAL_BASIS {
        return Err(ConsentError::FieldMismatch("legal_basis"));
    }
    let names: Vec<&str> = study.fields.iter().map(|f| f.name.as_str()).collect();
    if m.data_categories
        .iter()
        .map(String::as_str)
        .ne(names.iter().copied())
    {
        return Err(ConsentError::FieldMismatch("data_categories"));
    }
    if m.purposes.is_empty() {
        return Err(ConsentError::BadPurposes);
    }
    for (i, p) in m.purposes.iter().enumerate() {
        if m.purposes.iter().skip(i + 1).any(|q| q == p) {
            return Err(ConsentError::BadPurposes);
        }
        if !study.purpose_codes().any(|c| c == p) {
            return Err(ConsentError::UnknownPurpose(p.clone()));
        }
    }
    if m.given_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
        return Err(ConsentError::FromTheFuture);
    }
    if m.expires_at <= now || m.expires_at <= m.given_at {
        return Err(ConsentError::Expired);
    }
    let max = i64::from(study.max_consent_days).saturating_mul(86_400);
    if m.expires_at.saturating_sub(m.given_at) > max {
        return Err(ConsentError::ExpiryTooLong);
    }
    Ok(())
}

/// A withdrawal of consent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    /// Format version.
    pub format: u32,
    /// Random id of this request (idempotency).
    #[serde(with = "hex16")]
    pub request_id: [u8; 16],
    /// Study id.
    pub study_id: StudyId,
    /// The donor's pseudonym in that study.
    pub pseudonym: Pseudonym,
    /// The consent record withdrawn.
    #[serde(with = "hex16")]
    pub consent_record_id: [u8; 16],
    /// When.
    pub withdrawn_at: UnixSeconds,
    /// The donor key of the consent (must sign this).
    pub donor_public_key: PublicKey,
}

impl Withdrawal {
    /// Sign with the donor key.
    pub fn sign(&self, key: &SigningKey) -> SignedObject {
        SignedObject::sign(Context::Withdrawal, self, key)
    }
}

/// Parse and verify a signed withdrawal (signer = the key it names). Whether that key is the one
/// on the consent record is the ledger's check.
pub fn open_withdrawal(bytes: &[u8]) -> Result<Signed<Withdrawal>, ConsentError> {
    let obj = SignedObject::from_bytes(bytes)?;
    let signed: Signed<Withdrawal> = obj.open(Context::Withdrawal, "withdrawal")?;
    if signed.signer != signed.body.donor_public_key {
        return Err(ConsentError::SignerMismatch);
    }
    if signed.body.format != crate::PROTOCOL_VERSION {
        return Err(ConsentError::FieldMismatch("format"));
    }
    Ok(signed)
}
