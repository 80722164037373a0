//! The intake's view of the consent ledger: the Merkle log, the indexes folded from its entries,
//! the ledger signing key, and receipts.
//!
//! The state is rebuilt from the [`crate::store::LedgerStore`] at startup ([`LedgerState::recover`])
//! and then changed only by the committer. With a store that keeps the indexes and the Merkle
//! nodes itself ([`crate::store::IndexedLedger`], PostgreSQL), [`LedgerState::recover_indexed`]
//! reads only the tree's right edge: the state then holds no entry, and its maps hold only what
//! the committer looked up for the group it is deciding ([`LedgerState::load`]), cleared when
//! the group is published; proofs, entries and receipts are read from the store. Readers (auditor endpoints) see only the prefix
//! covered by the latest signed checkpoint (`published_size`): entries of a group that is still
//! being made durable are invisible.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datadonor_schemas::checkpoint::{self, Checkpoint, NoteVerifier};
use datadonor_schemas::ledger::{ConsentState, LedgerEntry};
use datadonor_schemas::merkle::{
    consistency_nodes, consistency_proof_from, inclusion_nodes, inclusion_proof_from, leaf_hash,
    root_from, root_nodes, Frontier, Hash, MerkleLog, NodeId,
};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::receipt::{HexHash, Receipt, ReceiptBundle, ReceiptKind};
use datadonor_schemas::signing::{PublicKey, SigningKey};
use datadonor_schemas::study::StudyId;

use crate::store::{Found, IndexedLedger, LedgerRecords, LedgerStore, StoreError};

/// Errors of ledger state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A durable record is not a ledger entry.
    #[error("ledger record {index} does not parse: {reason}")]
    BadRecord {
        /// Index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// Checkpoint signing (bad origin).
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A proof or index out of range.
    #[error("merkle: {0}")]
    Merkle(#[from] datadonor_schemas::merkle::MerkleError),
    /// The indexed store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What the idempotency index remembers of a donation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DonationRecord {
    /// SHA-256 of the envelope.
    pub envelope_sha256: [u8; 32],
    /// Ledger index of its `DonationAccepted` entry.
    pub ledger_index: u64,
    /// Tree size of the checkpoint its receipt is issued under.
    pub receipt_size: u64,
}

/// What the intake remembers of a withdrawal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WithdrawalRecord {
    /// Ledger index of its `ConsentWithdrawn` entry.
    pub ledger_index: u64,
    /// Tree size of the checkpoint its receipt is issued under.
    pub receipt_size: u64,
}

/// The ledger key and checkpoint identity.
#[derive(Debug)]
pub struct LedgerSigner {
    key: SigningKey,
    origin: String,
    verifier: NoteVerifier,
}

impl LedgerSigner {
    /// A signer; the origin doubles as the note key name.
    pub fn new(key: SigningKey, origin: &str) -> Result<Self, LedgerError> {
        let verifier = NoteVerifier::new(origin, key.public_key().0)?;
        Checkpoint::new(origin, 0, datadonor_schemas::merkle::empty_root())?;
        Ok(Self {
            key,
            origin: origin.to_string(),
            verifier,
        })
    }
    /// The note verifier (for `/v1/ledger-key`).
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }
    /// The public key.
    pub fn public_key(&self) -> PublicKey {
        self.key.public_key()
    }
    /// The origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// Sign a checkpoint of `size` with `root`.
    pub fn checkpoint(&self, size: u64, root: Hash) -> Result<String, LedgerError> {
        let cp = Checkpoint::new(self.origin.clone(), size, root)?;
        Ok(checkpoint::sign(&cp, &self.origin, self.key.key_pair())?)
    }
}

/// A receipt bundle before its signature.
#[derive(Debug)]
pub struct UnsignedReceipt {
    receipt: Receipt,
    entry: Vec<u8>,
    inclusion_proof: Vec<HexHash>,
}

impl UnsignedReceipt {
    /// Sign with the ledger key.
    pub fn sign(self, signer: &LedgerSigner) -> ReceiptBundle {
        ReceiptBundle {
            receipt: self.receipt.sign(&signer.key),
            entry: self.entry,
            inclusion_proof: self.inclusion_proof,
        }
    }
}

/// Published checkpoints kept for receipts.
const RECENT_NOTES: usize = 64;

/// The folded ledger.
#[derive(Debug, Default)]
pub struct LedgerState {
    log: MerkleLog,
    entries: Vec<Vec<u8>>,
    /// Size covered by the latest signed checkpoint.
    published_size: u64,
    published_note: String,
    /// The most recently published checkpoints (size, signed note), newest last, so receipts
    /// carry the very note that was published for their size without signing it again.
    recent_notes: std::collections::VecDeque<(u64, String)>,
    donations: HashMap<[u8; 16], DonationRecord>,
    /// Consent records seen: (study, record id) → manifest SHA-256.
    consent_records: HashMap<(StudyId, [u8; 16]), [u8; 32]>,
    /// Latest consent per (study, pseudonym).
    consents: HashMap<(StudyId, Pseudonym), ConsentState>,
    withdrawals: HashMap<[u8; 32], WithdrawalRecord>,
    batches: HashSet<(String, String)>,
    /// The store that keeps the indexes and Merkle nodes, when it does: `log`, `entries` and
    /// `batches` then stay empty and the maps above are the current group's lookups.
    indexed: Option<Arc<dyn LedgerStore>>,
    /// The tree's right edge (indexed mode).
    frontier: Frontier,
    /// Indexed mode, the group being decided: the edge it started from and every node its
    /// leaves completed, and its entries, so its receipts need no read of the store.
    group_nodes: HashMap<NodeId, Hash>,
    group_entries: HashMap<u64, Vec<u8>>,
}

/// What a receipt is made of besides the entry's own fields: the entry, its inclusion proof
/// under the checkpoint of the receipt's size, and that checkpoint.
#[derive(Debug, Clone)]
pub struct ReceiptParts {
    /// Entry bytes.
    pub entry: Vec<u8>,
    /// Inclusion proof.
    pub proof: Vec<Hash>,
    /// The signed checkpoint (note text).
    pub checkpoint: String,
}

impl LedgerState {
    /// Rebuild from durable records, and publish a checkpoint of them. The leaf hashes are
    /// taken from `records` ([`LedgerRecords`] pairs each entry only with its own leaf hash), so
    /// no entry is hashed again here.
    pub fn recover(records: LedgerRecords, signer: &LedgerSigner) -> Result<Self, LedgerError> {
        let mut s = Self::default();
        let (entries, leaves) = records.into_parts();
        for leaf in leaves {
            s.log.push(leaf);
        }
        for (i, bytes) in entries.iter().enumerate() {
            let entry = LedgerEntry::from_bytes(bytes).map_err(|e| LedgerError::BadRecord {
                index: i as u64,
                reason: e.to_string(),
            })?;
            s.fold(&entry, i as u64, 0);
        }
        s.entries = entries;
        let size = s.size();
        for d in s.donations.values_mut() {
            d.receipt_size = size;
        }
        for w in s.withdrawals.values_mut() {
            w.receipt_size = size;
        }
        s.publish(signer)?;
        Ok(s)
    }

    /// Start from a store that keeps the indexes and the Merkle nodes
    /// ([`LedgerStore::as_indexed`]): read the size and the tree's right edge, and publish a
    /// checkpoint of them. Nothing else is read; memory does not grow with the ledger.
    pub fn recover_indexed(
        store: Arc<dyn LedgerStore>,
        signer: &LedgerSigner,
    ) -> Result<Self, LedgerError> {
        let idx = store
            .as_indexed()
            .ok_or_else(|| StoreError::Corrupt("the store keeps no indexes".into()))?;
        let size = idx.size()?;
        let frontier = Frontier::from_nodes(&idx.nodes(&root_nodes(size))?, size)?;
        let mut s = Self {
            indexed: Some(store),
            frontier,
            ..Self::default()
        };
        s.publish(signer)?;
        Ok(s)
    }

    fn index(&self) -> Option<&dyn IndexedLedger> {
        self.indexed.as_deref().and_then(|s| s.as_indexed())
    }

    /// How many entries, index records and leaf hashes this state holds in memory (with the
    /// indexes in the store: none once a group is published).
    pub fn held_in_memory(&self) -> usize {
        self.entries.len()
            + self.log.leaves().len()
            + self.donations.len()
            + self.consent_records.len()
            + self.consents.len()
            + self.withdrawals.len()
            + self.batches.len()
            + self.group_nodes.len()
            + self.group_entries.len()
    }

    /// Whether the indexes live in the store (then [`LedgerState::load`] must precede a group).
    pub fn is_indexed(&self) -> bool {
        self.indexed.is_some()
    }

    /// Take what the store knows of a group's keys into the maps the decisions read.
    pub fn load(&mut self, found: Found) {
        for (k, d) in found.donations {
            self.donations.entry(k).or_insert(d);
        }
        for (k, h) in found.consent_records {
            self.consent_records.entry(k).or_insert(h);
        }
        for (k, c) in found.consents {
            self.consents.entry(k).or_insert(c);
        }
        for (k, w) in found.withdrawals {
            self.withdrawals.entry(k).or_insert(w);
        }
    }

    /// Append an entry in memory (not yet durable or published); returns its index.
    /// `receipt_size` is the tree size its receipt will be issued under.
    pub fn push(&mut self, entry: &LedgerEntry, bytes: Vec<u8>, receipt_size: u64) -> u64 {
        let index = if self.indexed.is_some() {
            if self.group_nodes.is_empty() {
                self.group_nodes.extend(self.frontier.edge());
            }
            let (index, done) = self.frontier.push(leaf_hash(&bytes));
            self.group_nodes.extend(done);
            self.group_entries.insert(index, bytes);
            index
        } else {
            let index = self.log.push(leaf_hash(&bytes));
            self.entries.push(bytes);
            index
        };
        self.fold(entry, index, receipt_size);
        index
    }

    /// Fold the entry at `index` into the indexes.
    fn fold(&mut self, entry: &LedgerEntry, index: u64, receipt_size: u64) {
        match entry {
            LedgerEntry::ConsentGranted {
                study_id,
                consent_record_id,
                manifest_sha256,
                ..
            } => {
                self.consent_records
                    .insert((study_id.clone(), *consent_record_id), *manifest_sha256);
                ConsentState::apply(&mut self.consents, entry);
            }
            LedgerEntry::DonationAccepted {
                study_id,
                idempotency_key,
                envelope_sha256,
                batch_id,
                ..
            } => {
                self.donations.insert(
                    *idempotency_key,
                    DonationRecord {
                        envelope_sha256: *envelope_sha256,
                        ledger_index: index,
                        receipt_size,
                    },
                );
                if self.indexed.is_none() {
                    self.batches
                        .insert((study_id.as_str().to_string(), batch_id.clone()));
                }
            }
            LedgerEntry::ConsentWithdrawn {
                withdrawal_sha256, ..
            } => {
                ConsentState::apply(&mut self.consents, entry);
                self.withdrawals.insert(
                    *withdrawal_sha256,
                    WithdrawalRecord {
                        ledger_index: index,
                        receipt_size,
                    },
                );
            }
            _ => {}
        }
    }

    /// Sign and publish a checkpoint of the whole in-memory log (call after it is durable).
    pub fn publish(&mut self, signer: &LedgerSigner) -> Result<(), LedgerError> {
        let size = self.size();
        let root = match self.indexed {
            Some(_) => self.frontier.root(),
            None => self.log.root(),
        };
        self.published_note = signer.checkpoint(size, root)?;
        if self.indexed.is_some() {
            // The group is durable in the store's indexes: forget its lookups.
            self.donations = HashMap::new();
            self.consent_records = HashMap::new();
            self.consents = HashMap::new();
            self.withdrawals = HashMap::new();
        }
        self.published_size = size;
        if self.recent_notes.len() == RECENT_NOTES {
            self.recent_notes.pop_front();
        }
        self.recent_notes
            .push_back((size, self.published_note.clone()));
        Ok(())
    }

    /// Indexed mode, right after [`LedgerState::publish`]: the receipt parts of the group's new
    /// entries at `indexes`, from what the group kept in memory (no read of the store), and
    /// forget the group. `None` for an index the group did not add.
    pub fn take_group_receipts(&mut self, indexes: &[u64]) -> Vec<Option<ReceiptParts>> {
        let size = self.published_size;
        let out = indexes
            .iter()
            .map(|&i| {
                let entry = self.group_entries.get(&i)?.clone();
                let proof = inclusion_proof_from(&self.group_nodes, i, size).ok()?;
                Some(ReceiptParts {
                    entry,
                    proof,
                    checkpoint: self.published_note.clone(),
                })
            })
            .collect();
        self.group_nodes = HashMap::new();
        self.group_entries = HashMap::new();
        out
    }

    /// Set the receipt tree size of a group's new donations and withdrawals.
    pub fn set_receipt_sizes(
        &mut self,
        donations: &[[u8; 16]],
        withdrawals: &[[u8; 32]],
        size: u64,
    ) {
        for k in donations {
            if let Some(d) = self.donations.get_mut(k) {
                d.receipt_size = size;
            }
        }
        for k in withdrawals {
            if let Some(w) = self.withdrawals.get_mut(k) {
                w.receipt_size = size;
            }
        }
    }

    /// Entries in memory (durable or not).
    pub fn size(&self) -> u64 {
        match self.indexed {
            Some(_) => self.frontier.size(),
            None => self.log.size(),
        }
    }

    /// Size of the latest published checkpoint.
    pub fn published_size(&self) -> u64 {
        self.published_size
    }

    /// The latest published checkpoint (signed note).
    pub fn published_note(&self) -> &str {
        &self.published_note
    }

    /// A donation by idempotency key.
    pub fn donation(&self, key: &[u8; 16]) -> Option<DonationRecord> {
        self.donations.get(key).copied()
    }

    /// A withdrawal by the SHA-256 of its signed payload.
    pub fn withdrawal(&self, sha: &[u8; 32]) -> Option<WithdrawalRecord> {
        self.withdrawals.get(sha).copied()
    }

    /// The manifest hash of a consent record, if the record is known.
    pub fn consent_record(&self, study: &StudyId, record: &[u8; 16]) -> Option<[u8; 32]> {
        self.consent_records.get(&(study.clone(), *record)).copied()
    }

    /// The latest consent of a pseudonym in a study.
    pub fn consent(&self, study: &StudyId, p: &Pseudonym) -> Option<&ConsentState> {
        self.consents.get(&(study.clone(), *p))
    }

    /// Whether a batch is referenced by a `DonationAccepted` entry.
    pub fn references_batch(&self, study: &str, batch_hex: &str) -> Result<bool, LedgerError> {
        match self.index() {
            Some(idx) => Ok(idx.names_batch(study, batch_hex)?),
            None => Ok(self
                .batches
                .contains(&(study.to_string(), batch_hex.to_string()))),
        }
    }

    /// Published entry bytes in `[start, end)`; `Ok(None)` for a range beyond them.
    pub fn entries(&self, start: u64, end: u64) -> Result<Option<Cow<'_, [Vec<u8>]>>, LedgerError> {
        if start > end || end > self.published_size {
            return Ok(None);
        }
        match self.index() {
            Some(idx) => Ok(Some(Cow::Owned(idx.entries(start, end)?))),
            None => Ok(self
                .entries
                .get(start as usize..end as usize)
                .map(Cow::Borrowed)),
        }
    }

    /// The bytes of entry `index` (durable, published or not).
    fn entry_bytes(&self, index: u64, size: u64) -> Result<Cow<'_, [u8]>, LedgerError> {
        let missing = datadonor_schemas::merkle::MerkleError::IndexOutOfRange { index, size };
        match self.index() {
            Some(idx) => Ok(Cow::Owned(
                idx.entries(index, index + 1)?.pop().ok_or(missing)?,
            )),
            None => Ok(Cow::Borrowed(
                self.entries.get(index as usize).ok_or(missing)?.as_slice(),
            )),
        }
    }

    /// Inclusion proof within published sizes.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        if size > self.published_size {
            return Err(datadonor_schemas::merkle::MerkleError::SizeOutOfRange {
                size,
                available: self.published_size,
            }
            .into());
        }
        match self.index() {
            Some(idx) => Ok(inclusion_proof_from(
                &idx.nodes(&inclusion_nodes(index, size)?)?,
                index,
                size,
            )?),
            None => Ok(self.log.inclusion_proof(index, size)?),
        }
    }

    /// Consistency proof within published sizes.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        if to > self.published_size {
            return Err(datadonor_schemas::merkle::MerkleError::SizeOutOfRange {
                size: to,
                available: self.published_size,
            }
            .into());
        }
        match self.index() {
            Some(idx) => Ok(consistency_proof_from(
                &idx.nodes(&consistency_nodes(from, to)?)?,
                from,
                to,
            )?),
            None => Ok(self.log.consistency_proof(from, to)?),
        }
    }

    /// The receipt of the entry at `index`, under the checkpoint of `size`. Deterministic
    /// (Ed25519 signatures are), so a replay gets byte-identical receipts.
    pub fn receipt(
        &self,
        signer: &LedgerSigner,
        index: u64,
        size: u64,
    ) -> Result<ReceiptBundle, LedgerError> {
        Ok(self.unsigned_receipt(signer, index, size)?.sign(signer))
    }

    /// Everything of a receipt but its signature, so a caller can sign it after releasing the
    /// state lock.
    pub fn unsigned_receipt(
        &self,
        signer: &LedgerSigner,
        index: u64,
        size: u64,
    ) -> Result<UnsignedReceipt, LedgerError> {
        let bytes = self.entry_bytes(index, size)?;
        let checkpoint = match self.recent_notes.iter().rev().find(|(s, _)| *s == size) {
            Some((_, note)) => note.clone(),
            None => {
                let root = match self.index() {
                    Some(idx) => root_from(&idx.nodes(&root_nodes(size))?, size)?,
                    None => self.log.root_at(size)?,
                };
                signer.checkpoint(size, root)?
            }
        };
        let proof = match self.index() {
            Some(idx) => {
                inclusion_proof_from(&idx.nodes(&inclusion_nodes(index, size)?)?, index, size)?
            }
            None => self.log.inclusion_proof(index, size)?,
        };
        UnsignedReceipt::from_parts(
            index,
            ReceiptParts {
                entry: bytes.into_owned(),
                proof,
                checkpoint,
            },
        )
    }
}

impl UnsignedReceipt {
    /// The receipt of the entry at `index` from its parts (no ledger state needed).
    pub fn from_parts(index: u64, parts: ReceiptParts) -> Result<Self, LedgerError> {
        let entry = LedgerEntry::from_bytes(&parts.entry).map_err(|e| LedgerError::BadRecord {
            index,
            reason: e.to_string(),
        })?;
        let issued_at = entry.time();
        let (kind, study_id, pseudonym, consent_record_id, request_sha256) = match entry {
            LedgerEntry::DonationAccepted {
                study_id,
                pseudonym,
                consent_record_id,
                envelope_sha256,
                ..
            } => (
                ReceiptKind::Donation,
                study_id,
                pseudonym,
                consent_record_id,
                envelope_sha256,
            ),
            LedgerEntry::ConsentWithdrawn {
                study_id,
                pseudonym,
                consent_record_id,
                withdrawal_sha256,
                ..
            } => (
                ReceiptKind::Withdrawal,
                study_id,
                pseudonym,
                consent_record_id,
                withdrawal_sha256,
            ),
            _ => {
                return Err(LedgerError::BadRecord {
                    index,
                    reason: "no receipt for this entry type".into(),
                })
            }
        };
        let receipt = Receipt {
            format: datadonor_schemas::PROTOCOL_VERSION,
            kind,
            study_id,
            pseudonym,
            consent_record_id,
            request_sha256,
            ledger_index: index,
            entry_sha256: leaf_hash(&parts.entry).0,
            checkpoint: parts.checkpoint,
            issued_at,
        };
        Ok(Self {
            receipt,
            entry: parts.entry,
            inclusion_proof: parts.proof.into_iter().map(|h| HexHash(h.0)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LedgerSigner {
        LedgerSigner::new(
            SigningKey::from_seed(&[3; 32]).unwrap(),
            crate::config::DEFAULT_ORIGIN,
        )
        .unwrap()
    }

    /// Key rotations, donations and withdrawals, interleaved.
    fn entries() -> Vec<Vec<u8>> {
        let study = StudyId::new("t2d-dk").unwrap();
        (0..6u8)
            .map(|i| {
                let time = 1_700_000_000 + i64::from(i);
                match i % 3 {
                    0 => LedgerEntry::KeyRotated {
                        time,
                        role: "hpke-transport".into(),
                        key_id: u32::from(i),
                        public_key_sha256: [i; 32],
                    },
                    1 => LedgerEntry::DonationAccepted {
                        time,
                        study_id: study.clone(),
                        pseudonym: Pseudonym([i; 32]),
                        consent_record_id: [i; 16],
                        idempotency_key: [i; 16],
                        envelope_sha256: [i; 32],
                        rows: 1,
                        batch_id: hex::encode([i; 16]),
                    },
                    _ => LedgerEntry::ConsentWithdrawn {
                        time,
                        study_id: study.clone(),
                        pseudonym: Pseudonym([i; 32]),
                        consent_record_id: [i; 16],
                        withdrawal_sha256: [i; 32],
                    },
                }
                .to_bytes()
            })
            .collect()
    }

    #[test]
    fn recovery_from_hashed_records_matches_pushing_the_entries() {
        let signer = signer();
        let mut pushed = LedgerState::default();
        for bytes in entries() {
            let entry = LedgerEntry::from_bytes(&bytes).unwrap();
            pushed.push(&entry, bytes, 0);
        }
        pushed.publish(&signer).unwrap();
        let records = LedgerRecords::new(entries());
        let recovered = LedgerState::recover(records, &signer).unwrap();
        assert_eq!(recovered.size(), 6);
        assert_eq!(recovered.published_note(), pushed.published_note());
        assert_eq!(
            recovered.entries(0, 6).unwrap(),
            pushed.entries(0, 6).unwrap()
        );
        for i in 0..6 {
            assert_eq!(
                recovered.inclusion_proof(i, 6).unwrap(),
                pushed.inclusion_proof(i, 6).unwrap()
            );
        }
        for (i, d) in [(1u8, 1u64), (4, 4)] {
            let got = recovered.donation(&[i; 16]).unwrap();
            assert_eq!((got.ledger_index, got.receipt_size), (d, 6));
            assert!(recovered
                .references_batch("t2d-dk", &hex::encode([i; 16]))
                .unwrap());
        }
        for (i, w) in [(2u8, 2u64), (5, 5)] {
            let got = recovered.withdrawal(&[i; 32]).unwrap();
            assert_eq!((got.ledger_index, got.receipt_size), (w, 6));
        }
        // A record that is not a ledger entry is named by its index.
        let mut bad = entries();
        bad[3] = b"{}".to_vec();
        assert!(matches!(
            LedgerState::recover(LedgerRecords::new(bad), &signer),
            Err(LedgerError::BadRecord { index: 3, .. })
        ));
    }
}
