//! Validation of donations and withdrawals, in the order `PROTOCOL.md` fixes; the first failure
//! is reported. Pure CPU work on untrusted bytes (HPKE open, Arrow decode): handlers run it in
//! `spawn_blocking`. Idempotency and consent-state checks need the ledger and happen in the
//! committer ([`crate::commit`]).

use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray};
use datadonor_schemas::consent::{
    check_manifest, open_manifest, open_withdrawal, ConsentError, ConsentManifest, Withdrawal,
};
use datadonor_schemas::envelope::{DonationPayload, Envelope, EnvelopeError};
use datadonor_schemas::signing::{SignatureError, Signed};
use datadonor_schemas::study::{rows_from_ipc, StudyError, DONOR_COLUMN};
use datadonor_schemas::time::UnixSeconds;

use crate::keys::TransportKeys;
use crate::problem::Problem;
use crate::studies::{LoadedStudy, StudyRegistry};

/// A donation that passed every stateless check.
pub struct ValidatedDonation {
    /// The study.
    pub study: Arc<LoadedStudy>,
    /// The verified manifest.
    pub manifest: Signed<ConsentManifest>,
    /// The rows (plaintext health data: memory only, until sealed).
    pub rows: RecordBatch,
    /// Idempotency key.
    pub idempotency_key: [u8; 16],
    /// SHA-256 of the envelope bytes.
    pub envelope_sha256: [u8; 32],
}

impl std::fmt::Debug for ValidatedDonation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ValidatedDonation(study: {}, rows: {})",
            self.study.definition.id,
            self.rows.num_rows()
        )
    }
}

/// A withdrawal that passed every stateless check.
#[derive(Debug)]
pub struct ValidatedWithdrawal {
    /// The verified withdrawal.
    pub withdrawal: Signed<Withdrawal>,
    /// SHA-256 of its signed payload.
    pub sha256: [u8; 32],
}

fn map_signature(e: &SignatureError) -> Problem {
    match e {
        SignatureError::Malformed(_) | SignatureError::WrongContext { .. } => {
            Problem::MalformedManifest
        }
        _ => Problem::BadSignature,
    }
}

fn map_consent(e: &ConsentError) -> Problem {
    match e {
        ConsentError::Signature(s) => map_signature(s),
        ConsentError::SignerMismatch => Problem::BadSignature,
        ConsentError::StudyMismatch { .. } => Problem::UnknownStudy,
        ConsentError::FieldMismatch("study_sha256") => Problem::StudyMismatch,
        ConsentError::FieldMismatch(_) => Problem::ManifestMismatch,
        ConsentError::UnknownPurpose(_) | ConsentError::BadPurposes => Problem::PurposeNotInStudy,
        ConsentError::Expired | ConsentError::ExpiryTooLong | ConsentError::FromTheFuture => {
            Problem::ConsentExpired
        }
        _ => Problem::ManifestMismatch,
    }
}

fn map_rows(e: &StudyError) -> Problem {
    match e {
        StudyError::TooManyRows { .. } => Problem::TooManyRows,
        StudyError::SchemaMismatch(_) => Problem::SchemaMismatch,
        StudyError::BadValue { .. } => Problem::ValueOutOfRange,
        _ => Problem::MalformedRows,
    }
}

/// Validate an envelope up to (not including) idempotency.
pub fn validate_donation(
    body: &[u8],
    keys: &TransportKeys,
    studies: &StudyRegistry,
    now: UnixSeconds,
    max_rows: usize,
) -> Result<ValidatedDonation, Problem> {
    let payload = open_donation(body, keys, now)?;
    check_payload(&payload, sha256(body), studies, now, max_rows)
}

/// The first half of [`validate_donation`]: parse the envelope and open it with the transport
/// key it names (what a frontend does before forwarding the payload to the sequencer).
pub fn open_donation(
    body: &[u8],
    keys: &TransportKeys,
    now: UnixSeconds,
) -> Result<DonationPayload, Problem> {
    let env = Envelope::parse(body).map_err(|_| Problem::MalformedEnvelope)?;
    let key = keys.lookup(env.key_id, now).ok_or(Problem::UnknownKeyId)?;
    env.open(&key.private_key).map_err(|e| match e {
        EnvelopeError::Malformed(_) => Problem::MalformedEnvelope,
        _ => Problem::DecryptFailed,
    })
}

/// The second half of [`validate_donation`]: every check of an opened payload (manifest
/// signature and fields, study, rows, pseudonym), in `PROTOCOL.md`'s order. The sequencer runs
/// it again on a payload a frontend forwards, so a frontend cannot record a consent its donor
/// did not sign.
pub fn check_payload(
    payload: &DonationPayload,
    envelope_sha256: [u8; 32],
    studies: &StudyRegistry,
    now: UnixSeconds,
    max_rows: usize,
) -> Result<ValidatedDonation, Problem> {
    let manifest = open_manifest(&payload.manifest).map_err(|e| map_consent(&e))?;
    let m = &manifest.body;
    let study = studies
        .get(m.study_id.as_str())
        .filter(|s| s.definition.version == m.study_version)
        .ok_or(Problem::UnknownStudy)?
        .clone();
    check_manifest(m, &study.definition, &study.sha256, now).map_err(|e| map_consent(&e))?;
    let rows = rows_from_ipc(&payload.rows, max_rows).map_err(|e| map_rows(&e))?;
    if rows.num_rows() == 0 {
        return Err(Problem::MalformedRows);
    }
    study
        .definition
        .validate_rows_against(&rows, &study.arrow_schema, None)
        .map_err(|e| map_rows(&e))?;
    let donor = rows
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or(Problem::SchemaMismatch)?;
    let want = m.pseudonym.to_hex();
    if rows.schema().field(0).name() != DONOR_COLUMN
        || (0..donor.len()).any(|i| donor.is_null(i) || donor.value(i) != want)
    {
        return Err(Problem::PseudonymMismatch);
    }
    // Re-label the columns with the study's own schema: drops any schema or field metadata the
    // client attached (nothing but the study's columns reaches a batch).
    let rows = RecordBatch::try_new(study.arrow_schema.clone(), rows.columns().to_vec())
        .map_err(|_| Problem::SchemaMismatch)?;
    Ok(ValidatedDonation {
        study,
        envelope_sha256,
        idempotency_key: payload.idempotency_key,
        manifest,
        rows,
    })
}

/// Validate a signed withdrawal (signature and study); consent checks happen in the committer.
pub fn validate_withdrawal(
    body: &[u8],
    studies: &StudyRegistry,
) -> Result<ValidatedWithdrawal, Problem> {
    let w = open_withdrawal(body).map_err(|e| match e {
        ConsentError::Signature(SignatureError::Malformed(_))
        | ConsentError::Signature(SignatureError::WrongContext { .. })
        | ConsentError::FieldMismatch(_) => Problem::BadRequest,
        _ => Problem::BadSignature,
    })?;
    if studies.get(w.body.study_id.as_str()).is_none() {
        return Err(Problem::UnknownStudy);
    }
    Ok(ValidatedWithdrawal {
        sha256: w.digest(),
        withdrawal: w,
    })
}

/// SHA-256.
pub fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
