//! What runs, compaction and the query service need from the verified ledger, folded entry by
//! entry as [`crate::ledger::verify_ledger_index`] streams the log: each consent record's state,
//! the withdrawals and erasures, the batches `donation_accepted` entries name, the runs per
//! approval and the privacy spent. No entry is kept; memory grows with consent records (about
//! 100 bytes each), not with entries.
//!
//! The rules are [`crate::ledger::LedgerView`]'s (which folds its own entries through this type):
//! grants and named batches count from the verified prefix only; withdrawals, erasures, runs
//! and spends count wherever they are in the log (the conservative direction).

use std::collections::{BTreeSet, HashMap, HashSet};

use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::privacy::PrivacySpend;
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::UnixSeconds;

use crate::ledger::RecordState;

/// One consent record as granted, its purposes as indices into [`LedgerIndex`]'s table.
#[derive(Debug, Clone)]
struct Record {
    pseudonym: Pseudonym,
    purposes: Box<[u16]>,
    expires_at: UnixSeconds,
}

/// One study's folded state.
#[derive(Debug, Clone, Default)]
struct StudyFold {
    /// Grants of the verified prefix, by record id (a later grant of one id replaces it).
    records: HashMap<[u8; 16], Record>,
    /// The first withdrawal of each record, anywhere in the log.
    withdrawn: HashMap<[u8; 16], UnixSeconds>,
    /// Withdrawn records no `erasure_done` entry covers yet, in log order.
    pending: BTreeSet<(Pseudonym, [u8; 16])>,
    /// Intake batches named by `donation_accepted` entries of the verified prefix.
    named: HashSet<[u8; 16]>,
    /// Privacy spent by each run, with its researcher, in log order (summed in that order).
    spent: Vec<(String, PrivacySpend)>,
}

/// The ledger folded for runs and compaction (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct LedgerIndex {
    studies: HashMap<StudyId, StudyFold>,
    purposes: Vec<String>,
    runs: HashMap<[u8; 32], u64>,
    entries: u64,
    tail: u64,
    /// Size of the verified checkpoint, when there is one.
    pub checkpoint_size: Option<u64>,
}

impl LedgerIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn purpose_id(&mut self, p: &str) -> u16 {
        match self.purposes.iter().position(|q| q == p) {
            Some(i) => i as u16,
            None => {
                self.purposes.push(p.to_string());
                (self.purposes.len() - 1) as u16
            }
        }
    }

    /// Fold the next entry of the log; `verified` when the checkpoint covers it. Entries must
    /// come in log order.
    pub fn add(&mut self, e: &LedgerEntry, verified: bool) {
        self.entries += 1;
        if !verified {
            self.tail += 1;
        }
        match e {
            LedgerEntry::ConsentGranted {
                study_id,
                pseudonym,
                consent_record_id,
                purposes,
                expires_at,
                ..
            } if verified => {
                // Interning bounds the table by the distinct purposes; a ledger naming more than
                // u16 can count is refused by the intake long before (a study's purposes).
                let ids: Box<[u16]> = purposes
                    .iter()
                    .take(usize::from(u16::MAX))
                    .map(|p| self.purpose_id(p))
                    .collect();
                self.studies
                    .entry(study_id.clone())
                    .or_default()
                    .records
                    .insert(
                        *consent_record_id,
                        Record {
                            pseudonym: *pseudonym,
                            purposes: ids,
                            expires_at: *expires_at,
                        },
                    );
            }
            LedgerEntry::ConsentWithdrawn {
                study_id,
                pseudonym,
                consent_record_id,
                time,
                ..
            } => {
                let s = self.studies.entry(study_id.clone()).or_default();
                s.withdrawn.entry(*consent_record_id).or_insert(*time);
                s.pending.insert((*pseudonym, *consent_record_id));
            }
            LedgerEntry::ErasureDone {
                study_id,
                pseudonym,
                consent_record_id,
                ..
            } => {
                let s = self.studies.entry(study_id.clone()).or_default();
                match consent_record_id {
                    Some(r) => {
                        s.pending.remove(&(*pseudonym, *r));
                    }
                    // Written before rows were matched by record: every record of the donor
                    // withdrawn before it.
                    None => {
                        let done: Vec<_> = s
                            .pending
                            .range((*pseudonym, [0; 16])..=(*pseudonym, [0xff; 16]))
                            .copied()
                            .collect();
                        for k in done {
                            s.pending.remove(&k);
                        }
                    }
                }
            }
            LedgerEntry::DonationAccepted {
                study_id, batch_id, ..
            } if verified => {
                // A batch is named by its lowercase hex id (the object's name); another spelling
                // names no batch.
                let mut id = [0u8; 16];
                if hex::decode_to_slice(batch_id, &mut id).is_ok() && hex::encode(id) == *batch_id {
                    let s = self.studies.entry(study_id.clone()).or_default();
                    s.named.insert(id);
                }
            }
            LedgerEntry::QueryRun {
                study_id,
                approval_sha256,
                researcher,
                privacy,
                ..
            } => {
                *self.runs.entry(*approval_sha256).or_default() += 1;
                if let Some(p) = privacy {
                    let s = self.studies.entry(study_id.clone()).or_default();
                    s.spent.push((
                        researcher.clone(),
                        PrivacySpend {
                            epsilon: p.epsilon,
                            delta: p.delta,
                        },
                    ));
                }
            }
            _ => {}
        }
    }

    /// Entries folded.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Entries folded from beyond the verified checkpoint.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Consent records held (every study): what this index's memory grows with.
    pub fn records(&self) -> usize {
        self.studies.values().map(|s| s.records.len()).sum()
    }

    fn study(&self, study: &StudyId) -> Option<&StudyFold> {
        self.studies.get(study)
    }

    /// The state of every consent record of a study, by record id.
    pub fn record_states(&self, study: &StudyId) -> HashMap<[u8; 16], RecordState> {
        let Some(s) = self.study(study) else {
            return HashMap::new();
        };
        s.records
            .iter()
            .map(|(id, r)| {
                (
                    *id,
                    RecordState {
                        pseudonym: r.pseudonym,
                        purposes: r
                            .purposes
                            .iter()
                            .map(|p| self.purposes[usize::from(*p)].clone())
                            .collect(),
                        expires_at: r.expires_at,
                        withdrawn_at: s.withdrawn.get(id).copied(),
                    },
                )
            })
            .collect()
    }

    /// Consent records whose rows count for `purpose` at `now` (granted in the verified
    /// prefix, not withdrawn, not expired, consenting to the purpose), with the donor each was
    /// granted to: the donor the query engine counts a row under.
    pub fn allowed_record_donors(
        &self,
        study: &StudyId,
        purpose: &str,
        now: UnixSeconds,
    ) -> HashMap<[u8; 16], Pseudonym> {
        let (Some(s), Some(p)) = (
            self.study(study),
            self.purposes.iter().position(|q| q == purpose),
        ) else {
            return HashMap::new();
        };
        s.records
            .iter()
            .filter(|(id, r)| {
                !s.withdrawn.contains_key(*id)
                    && now < r.expires_at
                    && r.purposes.iter().any(|q| usize::from(*q) == p)
            })
            .map(|(id, r)| (*id, r.pseudonym))
            .collect()
    }

    /// The ids of [`LedgerIndex::allowed_record_donors`].
    pub fn allowed_records(
        &self,
        study: &StudyId,
        purpose: &str,
        now: UnixSeconds,
    ) -> HashSet<[u8; 16]> {
        self.allowed_record_donors(study, purpose, now)
            .into_keys()
            .collect()
    }

    /// Pseudonyms with at least one consent record that covers `purpose` at `now`.
    pub fn allowed_donors(
        &self,
        study: &StudyId,
        purpose: &str,
        now: UnixSeconds,
    ) -> HashSet<Pseudonym> {
        self.allowed_record_donors(study, purpose, now)
            .into_values()
            .collect()
    }

    /// Runs logged under an approval (by SHA-256 of its signed payload), anywhere in the log.
    pub fn runs_of(&self, approval_sha256: &[u8; 32]) -> u64 {
        self.runs.get(approval_sha256).copied().unwrap_or(0)
    }

    /// Privacy spent by the study's logged runs, of one researcher or of all, anywhere in the
    /// log.
    pub fn spent(&self, study: &StudyId, researcher: Option<&str>) -> PrivacySpend {
        let Some(s) = self.study(study) else {
            return PrivacySpend::default();
        };
        s.spent
            .iter()
            .filter(|(r, _)| researcher.is_none_or(|n| n == r.as_str()))
            .fold(PrivacySpend::default(), |a, (_, p)| a.plus(*p))
    }

    /// Withdrawn consent records of a study with no `erasure_done` entry yet, as (pseudonym,
    /// record id), sorted.
    pub fn pending_erasures(&self, study: &StudyId) -> Vec<(Pseudonym, [u8; 16])> {
        self.study(study)
            .map(|s| s.pending.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether a `donation_accepted` entry of the verified prefix names this intake batch of
    /// the study.
    pub fn names_batch(&self, study: &StudyId, batch_id: &[u8; 16]) -> bool {
        self.study(study)
            .is_some_and(|s| s.named.contains(batch_id))
    }

    /// The intake batches (hex ids) `donation_accepted` entries of the verified prefix name.
    pub fn named_batches(&self, study: &StudyId) -> HashSet<String> {
        self.study(study)
            .map(|s| s.named.iter().map(hex::encode).collect())
            .unwrap_or_default()
    }
}
