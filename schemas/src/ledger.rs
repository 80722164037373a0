//! Typed entries of the consent ledger.
//!
//! The ledger is an append-only RFC 9162 Merkle log ([`crate::merkle`]) whose leaves are the
//! exact bytes of these entries (compact JSON, the `type` field first), and whose tree heads are
//! signed checkpoints ([`crate::checkpoint`]). Auditors fetch the bytes, hash them as leaves and
//! check them against signed heads; the bytes are therefore never re-serialised by a verifier.

use serde::{Deserialize, Serialize};

use crate::consent::ConsentManifest;
use crate::pseudonym::Pseudonym;
use crate::signing::PublicKey;
use crate::study::StudyId;
use crate::time::UnixSeconds;
use crate::wire::{hex16, hex32, opt_hex16, parse_json, WireError};

/// Largest entry accepted.
pub const MAX_ENTRY_LEN: usize = 64 * 1024;

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum LedgerEntry {
    /// A donor consented (the manifest verified and matched the study).
    ConsentGranted {
        /// When the intake recorded it.
        time: UnixSeconds,
        /// Study.
        study_id: StudyId,
        /// Study version.
        study_version: u32,
        /// Donor pseudonym.
        pseudonym: Pseudonym,
        /// Consent record id.
        #[serde(with = "hex16")]
        consent_record_id: [u8; 16],
        /// Purposes consented to.
        purposes: Vec<String>,
        /// When the consent was given, per the manifest.
        given_at: UnixSeconds,
        /// When it expires.
        expires_at: UnixSeconds,
        /// SHA-256 of the signed manifest payload.
        #[serde(with = "hex32")]
        manifest_sha256: [u8; 32],
        /// The donor key that may withdraw.
        donor_public_key: PublicKey,
    },
    /// A donation's rows were accepted into a sealed batch.
    DonationAccepted {
        /// When.
        time: UnixSeconds,
        /// Study.
        study_id: StudyId,
        /// Donor pseudonym.
        pseudonym: Pseudonym,
        /// Consent record the donation was made under.
        #[serde(with = "hex16")]
        consent_record_id: [u8; 16],
        /// The client's idempotency key.
        #[serde(with = "hex16")]
        idempotency_key: [u8; 16],
        /// SHA-256 of the envelope bytes as received.
        #[serde(with = "hex32")]
        envelope_sha256: [u8; 32],
        /// Rows accepted.
        rows: u32,
        /// The sealed batch holding them (hex batch id).
        batch_id: String,
    },
    /// A donor withdrew.
    ConsentWithdrawn {
        /// When.
        time: UnixSeconds,
        /// Study.
        study_id: StudyId,
        /// Donor pseudonym.
        pseudonym: Pseudonym,
        /// Consent record withdrawn.
        #[serde(with = "hex16")]
        consent_record_id: [u8; 16],
        /// SHA-256 of the signed withdrawal payload.
        #[serde(with = "hex32")]
        withdrawal_sha256: [u8; 32],
    },
    /// A withdrawn consent record's rows were erased from the sealed batches.
    ErasureDone {
        /// When.
        time: UnixSeconds,
        /// Study.
        study_id: StudyId,
        /// Donor pseudonym.
        pseudonym: Pseudonym,
        /// The withdrawn consent record whose rows were erased. Entries without it (written
        /// before rows were matched to consent by record) erased every withdrawn record of the
        /// pseudonym up to that entry.
        #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_hex16")]
        consent_record_id: Option<[u8; 16]>,
        /// Rows removed.
        rows_erased: u64,
        /// Batches rewritten (hex ids of the old batches).
        batches_rewritten: Vec<String>,
    },
    /// An approved query ran.
    QueryRun {
        /// When.
        time: UnixSeconds,
        /// Study.
        study_id: StudyId,
        /// Canonical hash of the query spec.
        #[serde(with = "hex32")]
        query_sha256: [u8; 32],
        /// SHA-256 of the signed approval payload.
        #[serde(with = "hex32")]
        approval_sha256: [u8; 32],
        /// Researcher.
        researcher: String,
        /// Purpose.
        purpose: String,
        /// Distinct donors whose consent covered the query.
        donors_considered: u64,
        /// Cells published.
        cells_published: u64,
        /// Cells suppressed.
        cells_suppressed: u64,
        /// The run's privacy loss and the budgets left after it (runs of the query service).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        privacy: Option<crate::privacy::RunPrivacy>,
    },
    /// A key was added or retired.
    KeyRotated {
        /// When.
        time: UnixSeconds,
        /// Which key: `hpke-transport`, `ledger`, `oprf`, `vault`.
        role: String,
        /// New key id.
        key_id: u32,
        /// SHA-256 of the new public key.
        #[serde(with = "hex32")]
        public_key_sha256: [u8; 32],
    },
}

impl LedgerEntry {
    /// The `consent_granted` entry of a verified consent manifest (`manifest_sha256`: the
    /// digest of its signed payload), recorded at `time`.
    pub fn consent_granted(
        manifest: &ConsentManifest,
        manifest_sha256: [u8; 32],
        time: UnixSeconds,
    ) -> Self {
        LedgerEntry::ConsentGranted {
            time,
            study_id: manifest.study_id.clone(),
            study_version: manifest.study_version,
            pseudonym: manifest.pseudonym,
            consent_record_id: manifest.record_id,
            purposes: manifest.purposes.clone(),
            given_at: manifest.given_at,
            expires_at: manifest.expires_at,
            manifest_sha256,
            donor_public_key: manifest.donor_public_key,
        }
    }

    /// The leaf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    /// Parse leaf bytes strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        parse_json(bytes, "ledger entry", MAX_ENTRY_LEN)
    }
    /// The entry's time.
    pub fn time(&self) -> UnixSeconds {
        match self {
            LedgerEntry::ConsentGranted { time, .. }
            | LedgerEntry::DonationAccepted { time, .. }
            | LedgerEntry::ConsentWithdrawn { time, .. }
            | LedgerEntry::ErasureDone { time, .. }
            | LedgerEntry::QueryRun { time, .. }
            | LedgerEntry::KeyRotated { time, .. } => *time,
        }
    }
    /// The entry type as in the `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            LedgerEntry::ConsentGranted { .. } => "consent_granted",
            LedgerEntry::DonationAccepted { .. } => "donation_accepted",
            LedgerEntry::ConsentWithdrawn { .. } => "consent_withdrawn",
            LedgerEntry::ErasureDone { .. } => "erasure_done",
            LedgerEntry::QueryRun { .. } => "query_run",
            LedgerEntry::KeyRotated { .. } => "key_rotated",
        }
    }
    /// The RFC 9162 leaf hash of these bytes.
    pub fn leaf_hash(bytes: &[u8]) -> crate::merkle::Hash {
        crate::merkle::leaf_hash(bytes)
    }
}

/// The consent state of one pseudonym, folded from ledger entries in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentState {
    /// Purposes consented to.
    pub purposes: Vec<String>,
    /// Expiry.
    pub expires_at: UnixSeconds,
    /// When withdrawn, if withdrawn.
    pub withdrawn_at: Option<UnixSeconds>,
    /// The donor key.
    pub donor_public_key: PublicKey,
    /// Consent record id.
    pub consent_record_id: [u8; 16],
}

impl ConsentState {
    /// Whether rows of this donor count for `purpose` at time `t`.
    pub fn covers(&self, purpose: &str, t: UnixSeconds) -> bool {
        self.withdrawn_at.is_none()
            && t < self.expires_at
            && self.purposes.iter().any(|p| p == purpose)
    }
}

impl ConsentState {
    /// Fold one ledger entry into consent states keyed by (study, pseudonym). A consent replaces
    /// an earlier one for the same key (a re-consent after expiry); a withdrawal ends the
    /// consent record it names, and only that one. Other entry types change nothing.
    pub fn apply(
        states: &mut std::collections::HashMap<(StudyId, Pseudonym), ConsentState>,
        entry: &LedgerEntry,
    ) {
        match entry {
            LedgerEntry::ConsentGranted {
                study_id,
                pseudonym,
                purposes,
                expires_at,
                donor_public_key,
                consent_record_id,
                ..
            } => {
                states.insert(
                    (study_id.clone(), *pseudonym),
                    ConsentState {
                        purposes: purposes.clone(),
                        expires_at: *expires_at,
                        withdrawn_at: None,
                        donor_public_key: *donor_public_key,
                        consent_record_id: *consent_record_id,
                    },
                );
            }
            LedgerEntry::ConsentWithdrawn {
                study_id,
                pseudonym,
                time,
                consent_record_id,
                ..
            } => {
                if let Some(s) = states.get_mut(&(study_id.clone(), *pseudonym)) {
                    if &s.consent_record_id == consent_record_id {
                        s.withdrawn_at.get_or_insert(*time);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Fold a study's ledger entries into the consent state per pseudonym, with
/// [`ConsentState::apply`].
pub fn consent_states<'a>(
    study: &StudyId,
    entries: impl IntoIterator<Item = &'a LedgerEntry>,
) -> std::collections::HashMap<Pseudonym, ConsentState> {
    let mut all = std::collections::HashMap::new();
    for e in entries {
        let entry_study = match e {
            LedgerEntry::ConsentGranted { study_id, .. }
            | LedgerEntry::ConsentWithdrawn { study_id, .. } => study_id,
            _ => continue,
        };
        if entry_study == study {
            ConsentState::apply(&mut all, e);
        }
    }
    all.into_iter().map(|((_, p), s)| (p, s)).collect()
}

/// How the records of a ledger file end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordTail {
    /// Every byte belongs to a complete, intact record.
    Clean,
    /// The last record is incomplete: a write that never finished (never acknowledged).
    Torn,
    /// Record `index` has an impossible length or a leaf hash that does not match its bytes.
    Corrupt {
        /// Index of the first bad record.
        index: u64,
    },
}

/// The records of a ledger file, as far as they are intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecords<'a> {
    /// Entry bytes of the intact records, in order.
    pub entries: Vec<&'a [u8]>,
    /// The RFC 9162 leaf hash of each entry in `entries` (same order), as computed from its
    /// bytes and found equal to the hash stored in its record.
    pub leaf_hashes: Vec<crate::merkle::Hash>,
    /// Length of the intact prefix.
    pub valid_len: usize,
    /// What follows the intact prefix.
    pub tail: RecordTail,
}

/// Append one ledger-file record: `u32 BE length || entry bytes || 32-byte RFC 9162 leaf hash`.
pub fn encode_ledger_record(entry: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(entry.len() as u32).to_be_bytes());
    out.extend_from_slice(entry);
    out.extend_from_slice(&crate::merkle::leaf_hash(entry).0);
}

/// Decode a ledger file's records, stopping at the first incomplete or damaged one.
pub fn decode_ledger_records(bytes: &[u8]) -> LedgerRecords<'_> {
    let mut entries = Vec::new();
    let mut leaf_hashes = Vec::new();
    let mut pos = 0usize;
    let tail = loop {
        if pos == bytes.len() {
            break RecordTail::Clean;
        }
        let Some(len_bytes) = bytes.get(pos..pos + 4) else {
            break RecordTail::Torn;
        };
        let mut l = [0u8; 4];
        l.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(l) as usize;
        if len == 0 || len > MAX_ENTRY_LEN {
            break RecordTail::Corrupt {
                index: entries.len() as u64,
            };
        }
        let start = pos + 4;
        let (Some(entry), Some(hash)) = (
            bytes.get(start..start + len),
            bytes.get(start + len..start + len + 32),
        ) else {
            break RecordTail::Torn;
        };
        let leaf = crate::merkle::leaf_hash(entry);
        if leaf.0 != hash {
            break RecordTail::Corrupt {
                index: entries.len() as u64,
            };
        }
        entries.push(entry);
        leaf_hashes.push(leaf);
        pos = start + len + 32;
    };
    LedgerRecords {
        entries,
        leaf_hashes,
        valid_len: pos,
        tail,
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn consent_fold_withdraws_only_the_named_record() {
        let study = StudyId::new("t2d-dk").unwrap();
        let p = Pseudonym([7; 32]);
        let granted = |record: u8, t: i64| LedgerEntry::ConsentGranted {
            time: t,
            study_id: study.clone(),
            study_version: 1,
            pseudonym: p,
            consent_record_id: [record; 16],
            purposes: vec!["a".into()],
            given_at: t,
            expires_at: t + 100,
            manifest_sha256: [0; 32],
            donor_public_key: PublicKey([1; 32]),
        };
        let withdrawn = |record: u8, t: i64| LedgerEntry::ConsentWithdrawn {
            time: t,
            study_id: study.clone(),
            pseudonym: p,
            consent_record_id: [record; 16],
            withdrawal_sha256: [0; 32],
        };
        let log = [granted(1, 10), withdrawn(2, 20)];
        assert!(
            consent_states(&study, &log)[&p].covers("a", 30),
            "another record's withdrawal ends nothing"
        );
        let log = [granted(1, 10), withdrawn(1, 20)];
        assert_eq!(consent_states(&study, &log)[&p].withdrawn_at, Some(20));
        let log = [granted(1, 10), withdrawn(1, 20), granted(3, 30)];
        assert!(
            consent_states(&study, &log)[&p].covers("a", 40),
            "a re-consent replaces the withdrawn one"
        );
        let other = StudyId::new("other-study").unwrap();
        assert!(consent_states(&other, &log).is_empty());
    }

    #[test]
    fn erasure_done_names_its_record_and_older_entries_still_parse() {
        let old = br#"{"type":"erasure_done","time":5,"study_id":"t2d-dk","pseudonym":"0707070707070707070707070707070707070707070707070707070707070707","rows_erased":3,"batches_rewritten":[]}"#;
        let e = LedgerEntry::from_bytes(old).unwrap();
        assert!(matches!(
            e,
            LedgerEntry::ErasureDone {
                consent_record_id: None,
                ..
            }
        ));
        assert_eq!(e.to_bytes(), old.to_vec(), "absent stays absent");
        let LedgerEntry::ErasureDone {
            time,
            study_id,
            pseudonym,
            rows_erased,
            batches_rewritten,
            ..
        } = e
        else {
            unreachable!()
        };
        let new = LedgerEntry::ErasureDone {
            time,
            study_id,
            pseudonym,
            consent_record_id: Some([0xab; 16]),
            rows_erased,
            batches_rewritten,
        };
        let bytes = new.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""consent_record_id":"abababababababababababababababab""#));
        assert_eq!(LedgerEntry::from_bytes(&bytes).unwrap(), new);
        let upper = text.replace("abababab", "ABABABAB");
        assert!(LedgerEntry::from_bytes(upper.as_bytes()).is_err());
        let null = text.replace(r#""abababababababababababababababab""#, "null");
        assert!(LedgerEntry::from_bytes(null.as_bytes()).is_err());
    }

    #[test]
    fn records_round_trip_and_tails_are_classified() {
        let mut file = Vec::new();
        encode_ledger_record(b"{\"a\":1}", &mut file);
        encode_ledger_record(b"{\"b\":2}", &mut file);
        let whole = decode_ledger_records(&file);
        assert_eq!(whole.entries, vec![&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]]);
        assert_eq!(
            whole.leaf_hashes,
            vec![
                crate::merkle::leaf_hash(b"{\"a\":1}"),
                crate::merkle::leaf_hash(b"{\"b\":2}")
            ]
        );
        assert_eq!(
            (whole.valid_len, whole.tail),
            (file.len(), RecordTail::Clean)
        );
        let first_len = 4 + 7 + 32;
        for cut in first_len + 1..file.len() {
            let torn = decode_ledger_records(&file[..cut]);
            assert_eq!(
                (torn.entries.len(), torn.valid_len, torn.tail),
                (1, first_len, RecordTail::Torn),
                "cut {cut}"
            );
        }
        let mut flipped = file.clone();
        flipped[first_len + 6] ^= 1;
        let bad = decode_ledger_records(&flipped);
        assert_eq!(
            (bad.entries.len(), bad.leaf_hashes.len(), bad.tail),
            (1, 1, RecordTail::Corrupt { index: 1 })
        );
        let zero = decode_ledger_records(&[0, 0, 0, 0]);
        assert_eq!(zero.tail, RecordTail::Corrupt { index: 0 });
    }
}
