//! The study bundle: what a donor's device pins the first time it meets a study.
//!
//! A steward signs (context `study-bundle`) the digest of the signed study, the ledger's
//! verifier key and the witnesses (with the quorum) whose cosignatures a donor requires on the
//! ledger's checkpoints. The consent notice texts are not in the bundle: the study names each
//! by its SHA-256, and the intake serves them by that hash (`GET /v1/notices/{sha256}`), so a
//! donor checks that the text shown is the text the manifest signs. `PROTOCOL.md`, "Study
//! bundles and notices".

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::checkpoint::NoteVerifier;
use crate::cosignature::WitnessKey;
use crate::signing::{Context, PublicKey, SignatureError, Signed, SignedObject, SigningKey};
use crate::study::{StudyDefinition, StudyId};
use crate::wire::hex32;

/// The largest consent notice text, in bytes.
pub const MAX_NOTICE_LEN: usize = 64 * 1024;

/// The most witnesses a bundle names.
pub const MAX_WITNESSES: usize = 16;

/// Errors of bundles and notice texts.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BundleError {
    /// The signed object is not a valid bundle signature, or its payload does not parse.
    #[error("bundle signature: {0}")]
    Signature(#[from] SignatureError),
    /// `format` is not [`crate::PROTOCOL_VERSION`].
    #[error("bundle format {0} is not supported")]
    Format(u32),
    /// The ledger's vkey does not parse.
    #[error("bundle ledger_vkey: {0}")]
    LedgerKey(String),
    /// A witness vkey does not parse, or two witnesses share a name.
    #[error("bundle witness {index}: {detail}")]
    Witness {
        /// Position in `witnesses`.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// The quorum is 0 with witnesses named, more than the witnesses, or there are too many.
    #[error("bundle witness_quorum {quorum} does not fit {witnesses} witnesses")]
    Quorum {
        /// The quorum.
        quorum: u32,
        /// How many witnesses are named.
        witnesses: usize,
    },
    /// The bundle is for another study, version or study object.
    #[error("bundle is for another study: {0}")]
    StudyMismatch(&'static str),
    /// The bundle and the study were signed by different keys.
    #[error("bundle and study are signed by different keys")]
    SignerMismatch,
    /// The bundle's ledger key is not the intake's.
    #[error("bundle names another ledger key than the intake's")]
    LedgerMismatch,
    /// The notice text is not UTF-8 or longer than [`MAX_NOTICE_LEN`].
    #[error("notice text is not UTF-8 of at most {MAX_NOTICE_LEN} bytes")]
    NoticeMalformed,
    /// The notice text does not hash to the study's notice hash.
    #[error("notice text does not match its SHA-256")]
    NoticeMismatch,
}

/// The body of a signed study bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyBundle {
    /// Format version; must be [`crate::PROTOCOL_VERSION`].
    pub format: u32,
    /// The study.
    pub study_id: StudyId,
    /// The study's version.
    pub study_version: u32,
    /// SHA-256 of the signed study's payload (as consent manifests name it).
    #[serde(with = "hex32")]
    pub study_sha256: [u8; 32],
    /// The ledger's signed-note verifier key (`name+hash+base64`).
    pub ledger_vkey: String,
    /// The witnesses' verifier keys.
    pub witnesses: Vec<String>,
    /// How many of `witnesses` must cosign a checkpoint a donor accepts (0 without witnesses).
    pub witness_quorum: u32,
}

/// A verified bundle with its parsed keys.
#[derive(Debug, Clone)]
pub struct OpenedBundle {
    /// The bundle as signed.
    pub signed: Signed<StudyBundle>,
    /// The ledger's verifier.
    pub ledger: NoteVerifier,
    /// The witnesses.
    pub witnesses: Vec<WitnessKey>,
}

impl StudyBundle {
    /// The bundle of `study` (with its signed payload's digest) for a ledger and its witnesses.
    pub fn new(
        study: &StudyDefinition,
        study_sha256: [u8; 32],
        ledger_vkey: &str,
        witnesses: Vec<String>,
        witness_quorum: u32,
    ) -> Self {
        Self {
            format: crate::PROTOCOL_VERSION,
            study_id: study.id.clone(),
            study_version: study.version,
            study_sha256,
            ledger_vkey: ledger_vkey.to_string(),
            witnesses,
            witness_quorum,
        }
    }

    /// Check the format, parse every key and check the quorum.
    pub fn parsed_keys(&self) -> Result<(NoteVerifier, Vec<WitnessKey>), BundleError> {
        if self.format != crate::PROTOCOL_VERSION {
            return Err(BundleError::Format(self.format));
        }
        let ledger = NoteVerifier::parse_vkey(&self.ledger_vkey)
            .map_err(|e| BundleError::LedgerKey(e.to_string()))?;
        if self.witnesses.len() > MAX_WITNESSES {
            return Err(BundleError::Quorum {
                quorum: self.witness_quorum,
                witnesses: self.witnesses.len(),
            });
        }
        let mut keys: Vec<WitnessKey> = Vec::with_capacity(self.witnesses.len());
        for (index, v) in self.witnesses.iter().enumerate() {
            let k = WitnessKey::parse_vkey(v).map_err(|e| BundleError::Witness {
                index,
                detail: e.to_string(),
            })?;
            if keys.iter().any(|o| o.name() == k.name()) {
                return Err(BundleError::Witness {
                    index,
                    detail: format!("name {:?} appears twice", k.name()),
                });
            }
            keys.push(k);
        }
        let q = self.witness_quorum as usize;
        if q > keys.len() || (q == 0) != keys.is_empty() {
            return Err(BundleError::Quorum {
                quorum: self.witness_quorum,
                witnesses: keys.len(),
            });
        }
        Ok((ledger, keys))
    }

    /// Sign the bundle as a steward.
    pub fn sign(&self, key: &SigningKey) -> SignedObject {
        SignedObject::sign(Context::StudyBundle, self, key)
    }

    /// Verify a signed bundle (and its signer, when given) and parse its keys.
    pub fn open(
        signed: &SignedObject,
        steward: Option<&PublicKey>,
    ) -> Result<OpenedBundle, BundleError> {
        let opened: Signed<StudyBundle> = signed.open(Context::StudyBundle, "study bundle")?;
        if steward.is_some_and(|s| s != &opened.signer) {
            return Err(SignatureError::UnexpectedSigner.into());
        }
        let (ledger, witnesses) = opened.body.parsed_keys()?;
        Ok(OpenedBundle {
            signed: opened,
            ledger,
            witnesses,
        })
    }
}

impl OpenedBundle {
    /// Check that the bundle is for this signed study (same id, version, digest, signer).
    pub fn check_study(
        &self,
        study: &StudyDefinition,
        study_sha256: &[u8; 32],
        study_signer: &PublicKey,
    ) -> Result<(), BundleError> {
        let b = &self.signed.body;
        if b.study_id != study.id {
            return Err(BundleError::StudyMismatch("study_id"));
        }
        if b.study_version != study.version {
            return Err(BundleError::StudyMismatch("study_version"));
        }
        if &b.study_sha256 != study_sha256 {
            return Err(BundleError::StudyMismatch("study_sha256"));
        }
        if &self.signed.signer != study_signer {
            return Err(BundleError::SignerMismatch);
        }
        Ok(())
    }

    /// Check that the bundle's ledger key is `public_key`.
    pub fn check_ledger(&self, public_key: &PublicKey) -> Result<(), BundleError> {
        if self.ledger.public_key() == &public_key.0 {
            Ok(())
        } else {
            Err(BundleError::LedgerMismatch)
        }
    }
}

/// SHA-256 of a notice text: how studies and manifests name it.
pub fn notice_sha256(text: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, text);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Check a notice text received for `expected`: UTF-8, at most [`MAX_NOTICE_LEN`] bytes, and
/// hashing to `expected`. Returns the text.
pub fn check_notice<'a>(text: &'a [u8], expected: &[u8; 32]) -> Result<&'a str, BundleError> {
    if text.len() > MAX_NOTICE_LEN {
        return Err(BundleError::NoticeMalformed);
    }
    if &notice_sha256(text) != expected {
        return Err(BundleError::NoticeMismatch);
    }
    std::str::from_utf8(text).map_err(|_| BundleError::NoticeMalformed)
}
