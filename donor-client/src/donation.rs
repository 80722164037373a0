//! Building what is sent: the signed consent manifest, the donation payload sealed to the
//! intake's current HPKE key, and signed withdrawals. No I/O here; [`crate::client`] sends.
//!
//! A [`SealedDonation`] is built once and its envelope bytes are what every retry sends, so the
//! intake's idempotency (same key, same envelope digest → the stored receipt) can never turn a
//! retry into a second donation.

use datadonor_schemas::consent::{check_manifest, ConsentManifest, Withdrawal, LEGAL_BASIS};
use datadonor_schemas::envelope::{DonationPayload, HpkeConfigList};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::signing::{SignedObject, SigningKey};
use datadonor_schemas::study::{rows_to_ipc, StudyDefinition, StudyId};
use datadonor_schemas::time::UnixSeconds;
use datadonor_schemas::PROTOCOL_VERSION;
use ring::rand::{SecureRandom, SystemRandom};

use crate::client::{sha256, PublishedStudy};
use crate::minimise::MinimisedRows;

/// The withdrawal method shown in manifests.
pub const WITHDRAWAL_METHOD: &str =
    "datadonor withdraw --study <id> (POST /v1/withdrawals, signed with the donor key)";

/// Errors preparing a donation or withdrawal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DonationError {
    /// A purpose the study does not offer.
    #[error("purpose {given:?} is not one of the study's purposes ({offered})")]
    UnknownPurpose {
        /// The purpose given.
        given: String,
        /// The study's purpose codes, comma separated.
        offered: String,
    },
    /// The study gives no notice in the language chosen.
    #[error("the study gives no notice in language {given:?} (it gives {offered})")]
    UnknownLanguage {
        /// The language asked for.
        given: String,
        /// The study's languages.
        offered: String,
    },
    /// No purpose, or one purpose twice.
    #[error("choose at least one purpose, each once")]
    BadPurposes,
    /// Expiry outside 1..=max_consent_days.
    #[error("consent expiry of {days} days is outside 1..={max} (the study's maximum)")]
    BadExpiry {
        /// Days chosen.
        days: u32,
        /// The study's maximum.
        max: u32,
    },
    /// Nothing to donate.
    #[error("nothing to donate: no row survived minimisation (see the preview's drop report)")]
    NoRows,
    /// The rows do not match the study (an internal inconsistency).
    #[error("rows: {0}")]
    Rows(String),
    /// The manifest does not pass the intake's own check.
    #[error("consent manifest: {0}")]
    Manifest(String),
    /// Sealing failed.
    #[error("sealing the envelope: {0}")]
    Seal(String),
    /// Randomness was unavailable.
    #[error("the system random number generator failed")]
    Random,
}

/// What the donor chose on the consent screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentChoice {
    /// Purpose codes, a non-empty subset of the study's.
    pub purposes: Vec<String>,
    /// Days until the consent lapses, at most the study's `max_consent_days`.
    pub expires_in_days: u32,
    /// The language of the notice the donor was shown, one of the study's
    /// ([`StudyDefinition::languages`]); its hash is what the manifest signs. `None`: the
    /// study's own language.
    pub language: Option<String>,
}

impl ConsentChoice {
    /// The hash of the notice shown in the chosen language.
    pub fn notice_sha256(&self, def: &StudyDefinition) -> Result<[u8; 32], DonationError> {
        let lang = self.language.as_deref().unwrap_or(def.language());
        def.texts(lang)
            .map(|t| t.notice_sha256)
            .ok_or_else(|| DonationError::UnknownLanguage {
                given: lang.to_string(),
                offered: def.languages().collect::<Vec<_>>().join(", "),
            })
    }
}

/// A donation ready to send: the envelope bytes are final.
#[derive(Clone)]
pub struct SealedDonation {
    /// The envelope (sent unchanged on every retry).
    pub envelope: Vec<u8>,
    /// Its SHA-256 (what the receipt's `request_sha256` must be).
    pub envelope_sha256: [u8; 32],
    /// The idempotency key inside.
    pub idempotency_key: [u8; 16],
    /// The manifest signed.
    pub manifest: ConsentManifest,
    /// Rows inside.
    pub rows: usize,
}

impl std::fmt::Debug for SealedDonation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedDonation(study: {}, rows: {}, envelope: {} bytes)",
            self.manifest.study_id,
            self.rows,
            self.envelope.len()
        )
    }
}

fn random<const N: usize>() -> Result<[u8; N], DonationError> {
    let mut b = [0u8; N];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| DonationError::Random)?;
    Ok(b)
}

/// Check the donor's choices against the study.
pub fn check_choice(def: &StudyDefinition, consent: &ConsentChoice) -> Result<(), DonationError> {
    if consent.purposes.is_empty() {
        return Err(DonationError::BadPurposes);
    }
    for (i, p) in consent.purposes.iter().enumerate() {
        if !def.purpose_codes().any(|c| c == p) {
            return Err(DonationError::UnknownPurpose {
                given: p.clone(),
                offered: def.purpose_codes().collect::<Vec<_>>().join(", "),
            });
        }
        if consent.purposes.iter().skip(i + 1).any(|q| q == p) {
            return Err(DonationError::BadPurposes);
        }
    }
    consent.notice_sha256(def)?;
    if consent.expires_in_days == 0 || consent.expires_in_days > def.max_consent_days {
        return Err(DonationError::BadExpiry {
            days: consent.expires_in_days,
            max: def.max_consent_days,
        });
    }
    Ok(())
}

/// Build the manifest, sign it, encode the rows and seal the payload to the intake's current key.
pub fn seal_donation(
    study: &PublishedStudy,
    rows: &MinimisedRows,
    pseudonym: &Pseudonym,
    donor_key: &SigningKey,
    consent: &ConsentChoice,
    hpke: &HpkeConfigList,
    now: UnixSeconds,
) -> Result<SealedDonation, DonationError> {
    check_choice(&study.definition, consent)?;
    if rows.rows.is_empty() {
        return Err(DonationError::NoRows);
    }
    let def = &study.definition;
    if rows.study() != def {
        return Err(DonationError::Rows(
            "rows were minimised for another study definition".into(),
        ));
    }
    let batch = rows
        .to_record_batch(pseudonym)
        .map_err(|e| DonationError::Rows(e.to_string()))?;
    let ipc = rows_to_ipc(&batch).map_err(|e| DonationError::Rows(e.to_string()))?;
    let manifest = ConsentManifest {
        format: PROTOCOL_VERSION,
        record_id: random()?,
        study_id: def.id.clone(),
        study_version: def.version,
        study_sha256: study.sha256,
        controller: def.controller.clone(),
        purposes: consent.purposes.clone(),
        legal_basis: LEGAL_BASIS.to_string(),
        data_categories: def.fields.iter().map(|f| f.name.clone()).collect(),
        given_at: now,
        expires_at: now.saturating_add(i64::from(consent.expires_in_days) * 86_400),
        withdrawal_method: WITHDRAWAL_METHOD.to_string(),
        notice_sha256: consent.notice_sha256(def)?,
        donor_public_key: donor_key.public_key(),
        pseudonym: *pseudonym,
    };
    check_manifest(&manifest, def, &study.sha256, now)
        .map_err(|e| DonationError::Manifest(e.to_string()))?;
    let signed = manifest.sign(donor_key);
    let payload = DonationPayload {
        idempotency_key: random()?,
        manifest: signed.to_bytes(),
        rows: ipc,
    };
    let (key_id, pk) = hpke
        .current()
        .map_err(|e| DonationError::Seal(e.to_string()))?;
    let envelope = payload
        .seal(key_id, &pk)
        .map_err(|e| DonationError::Seal(e.to_string()))?;
    Ok(SealedDonation {
        envelope_sha256: sha256(&envelope),
        envelope,
        idempotency_key: payload.idempotency_key,
        manifest,
        rows: batch.num_rows(),
    })
}

/// A signed withdrawal of a consent record.
pub fn sign_withdrawal(
    study_id: &StudyId,
    pseudonym: &Pseudonym,
    consent_record_id: [u8; 16],
    donor_key: &SigningKey,
    now: UnixSeconds,
) -> Result<SignedObject, DonationError> {
    let w = Withdrawal {
        format: PROTOCOL_VERSION,
        request_id: random()?,
        study_id: study_id.clone(),
        pseudonym: *pseudonym,
        consent_record_id,
        withdrawn_at: now,
        donor_public_key: donor_key.public_key(),
    };
    Ok(w.sign(donor_key))
}
