//! Receipts: the intake's signed acknowledgement of a donation or withdrawal, with the ledger
//! entry it appended, a signed tree head, and the inclusion proof of the entry under that head.
//!
//! Wire form of the response (`application/json`):
//!
//! ```json
//! {"receipt": <signed object, context "receipt">, "entry": "<base64 ledger entry bytes>",
//!  "inclusion_proof": ["<hex hash>", ...]}
//! ```
//!
//! [`verify_receipt`] checks, in order: the receipt signature by the ledger key; the checkpoint's
//! note signature by the same key; that `leaf_hash(entry) == entry_sha256`; that `ledger_index <
//! checkpoint size`; the inclusion proof; and that the entry is of the receipt's kind and names the
//! same study, pseudonym and consent record.

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, NoteVerifier};
use crate::ledger::LedgerEntry;
use crate::pseudonym::Pseudonym;
use crate::signing::{Context, PublicKey, SignatureError, Signed, SignedObject, SigningKey};
use crate::study::StudyId;
use crate::time::UnixSeconds;
use crate::wire::{b64, hex16, hex32, parse_json, WireError};

/// What a receipt acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// A donation (its entry is `donation_accepted`).
    Donation,
    /// A withdrawal (its entry is `consent_withdrawn`).
    Withdrawal,
}

/// The signed body of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Format version.
    pub format: u32,
    /// Kind.
    pub kind: ReceiptKind,
    /// Study.
    pub study_id: StudyId,
    /// Donor pseudonym.
    pub pseudonym: Pseudonym,
    /// Consent record.
    #[serde(with = "hex16")]
    pub consent_record_id: [u8; 16],
    /// SHA-256 of the request: the envelope bytes, or the signed withdrawal's payload (the
    /// ledger entry's `withdrawal_sha256`, which [`verify_receipt`] compares it with).
    #[serde(with = "hex32")]
    pub request_sha256: [u8; 32],
    /// Index of the ledger entry.
    pub ledger_index: u64,
    /// RFC 9162 leaf hash of the entry.
    #[serde(with = "hex32")]
    pub entry_sha256: [u8; 32],
    /// Signed checkpoint (signed-note text) of a tree that contains the entry.
    pub checkpoint: String,
    /// When issued.
    pub issued_at: UnixSeconds,
}

/// The HTTP response carrying a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBundle {
    /// The signed receipt.
    pub receipt: SignedObject,
    /// The ledger entry bytes.
    #[serde(with = "b64")]
    pub entry: Vec<u8>,
    /// Inclusion proof of the entry under the receipt's checkpoint.
    pub inclusion_proof: Vec<HexHash>,
}

/// A 32-byte hash as lowercase hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HexHash(#[serde(with = "hex32")] pub [u8; 32]);

/// Why a receipt does not verify.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// Encoding.
    #[error(transparent)]
    Malformed(#[from] WireError),
    /// Receipt signature.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// Checkpoint signature or format.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// Inclusion proof.
    #[error("inclusion proof: {0}")]
    Inclusion(#[from] crate::merkle::MerkleError),
    /// The receipt and its entry disagree.
    #[error("receipt does not match its ledger entry: {0}")]
    Mismatch(&'static str),
}

/// A verified receipt.
#[derive(Debug, Clone)]
pub struct VerifiedReceipt {
    /// The receipt body.
    pub receipt: Receipt,
    /// Its ledger entry.
    pub entry: LedgerEntry,
    /// The tree size of the checkpoint it was verified against.
    pub tree_size: u64,
    /// The root hash of that checkpoint.
    pub root: [u8; 32],
}

impl Receipt {
    /// Sign with the ledger key.
    pub fn sign(&self, key: &SigningKey) -> SignedObject {
        SignedObject::sign(Context::Receipt, self, key)
    }
}

impl ReceiptBundle {
    /// Parse the JSON response strictly.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReceiptError> {
        Ok(parse_json(bytes, "receipt bundle", 512 * 1024)?)
    }
}

/// Verify a receipt bundle against the intake's ledger key and checkpoint verifier.
pub fn verify_receipt(
    bundle: &ReceiptBundle,
    ledger_key: &PublicKey,
    verifier: &NoteVerifier,
) -> Result<VerifiedReceipt, ReceiptError> {
    let signed: Signed<Receipt> = bundle.receipt.open(Context::Receipt, "receipt")?;
    if &signed.signer != ledger_key {
        return Err(SignatureError::UnexpectedSigner.into());
    }
    let r = signed.body;
    let cp = checkpoint::open(r.checkpoint.as_bytes(), std::slice::from_ref(verifier))?;
    let leaf = crate::merkle::leaf_hash(&bundle.entry);
    if leaf.0 != r.entry_sha256 {
        return Err(ReceiptError::Mismatch("entry_sha256"));
    }
    let proof: Vec<Vec<u8>> = bundle
        .inclusion_proof
        .iter()
        .map(|h| h.0.to_vec())
        .collect();
    crate::merkle::verify_inclusion(
        r.ledger_index,
        cp.checkpoint.size,
        &leaf.0,
        &proof,
        &cp.checkpoint.root.0,
    )?;
    let entry = LedgerEntry::from_bytes(&bundle.entry)?;
    match (&entry, r.kind) {
        (
            LedgerEntry::DonationAccepted {
                study_id,
                pseudonym,
                consent_record_id,
                envelope_sha256,
                ..
            },
            ReceiptKind::Donation,
        ) => {
            if study_id != &r.study_id
                || pseudonym != &r.pseudonym
                || consent_record_id != &r.consent_record_id
            {
                return Err(ReceiptError::Mismatch("donation entry"));
            }
            if envelope_sha256 != &r.request_sha256 {
                return Err(ReceiptError::Mismatch("envelope_sha256"));
            }
        }
        (
            LedgerEntry::ConsentWithdrawn {
                study_id,
                pseudonym,
                consent_record_id,
                withdrawal_sha256,
                ..
            },
            ReceiptKind::Withdrawal,
        ) => {
            if study_id != &r.study_id
                || pseudonym != &r.pseudonym
                || consent_record_id != &r.consent_record_id
            {
                return Err(ReceiptError::Mismatch("withdrawal entry"));
            }
            if withdrawal_sha256 != &r.request_sha256 {
                return Err(ReceiptError::Mismatch("withdrawal_sha256"));
            }
        }
        _ => return Err(ReceiptError::Mismatch("entry type")),
    }
    Ok(VerifiedReceipt {
        receipt: r,
        entry,
        tree_size: cp.checkpoint.size,
        root: cp.checkpoint.root.0,
    })
}
