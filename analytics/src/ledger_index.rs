//! What runs, compaction, the query service and the batch audit need from the verified ledger,
//! folded entry by entry as [`crate::ledger::verify_ledger_index`] streams the log: each consent
//! record's state and grant time, the withdrawals and erasures, the batches `donation_accepted`
//! entries name, the runs per approval and the privacy spent. No entry is kept; memory grows
//! with consent records (72 bytes each), not with entries.
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

/// One consent record as granted (72 bytes): its purposes as a bit set over [`LedgerIndex`]'s
/// table of purposes (the first 64 of them; the rare record naming a later one keeps its list
/// in `StudyFold::wide` as well).
#[derive(Debug, Clone)]
struct Record {
    id: [u8; 16],
    pseudonym: Pseudonym,
    purposes: u64,
    expires_at: UnixSeconds,
    /// The grant entry's time.
    granted_at: UnixSeconds,
}

/// One study's folded state.
#[derive(Debug, Clone, Default)]
struct StudyFold {
    /// Grants of the verified prefix: in log order while folding, then (after
    /// [`LedgerIndex::finish`]) sorted by record id with only the last grant of each id.
    records: Vec<Record>,
    /// Purposes beyond the bit set's 64, by record id (last grant).
    wide: HashMap<[u8; 16], Vec<u16>>,
    /// The first withdrawal of each record, anywhere in the log.
    withdrawn: HashMap<[u8; 16], UnixSeconds>,
    /// The records each donor withdrew, in log order (an `erasure_done` entry without a record
    /// covers those withdrawn before it).
    withdrawn_by: HashMap<Pseudonym, Vec<[u8; 16]>>,
    /// The last `erasure_done` time per record.
    erased_at: HashMap<[u8; 16], UnixSeconds>,
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

    /// The index of what `stream` hands out (each entry with whether a verified checkpoint
    /// covers it, in log order; the checkpoint's size, if any).
    pub fn fold<E>(
        stream: impl FnOnce(&mut dyn FnMut(LedgerEntry, bool)) -> Result<Option<u64>, E>,
    ) -> Result<Self, E> {
        let mut index = Self::new();
        let size = stream(&mut |e, is_verified| index.add(&e, is_verified))?;
        index.checkpoint_size = size;
        index.finish();
        Ok(index)
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
    /// come in log order, and [`LedgerIndex::finish`] follow the last.
    pub(crate) fn add(&mut self, e: &LedgerEntry, verified: bool) {
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
                time,
                ..
            } if verified => {
                // Interning bounds the table by the distinct purposes (a study names a handful;
                // the intake refuses others).
                let ids: Vec<u16> = purposes
                    .iter()
                    .take(usize::from(u16::MAX))
                    .map(|p| self.purpose_id(p))
                    .collect();
                let bits = ids
                    .iter()
                    .filter(|i| **i < 64)
                    .fold(0u64, |b, i| b | (1 << i));
                let s = self.studies.entry(study_id.clone()).or_default();
                if ids.iter().any(|i| *i >= 64) {
                    s.wide.insert(*consent_record_id, ids);
                } else if !s.wide.is_empty() {
                    s.wide.remove(consent_record_id);
                }
                s.records.push(Record {
                    id: *consent_record_id,
                    pseudonym: *pseudonym,
                    purposes: bits,
                    expires_at: *expires_at,
                    granted_at: *time,
                });
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
                s.withdrawn_by
                    .entry(*pseudonym)
                    .or_default()
                    .push(*consent_record_id);
                s.pending.insert((*pseudonym, *consent_record_id));
            }
            LedgerEntry::ErasureDone {
                study_id,
                pseudonym,
                consent_record_id,
                time,
                ..
            } => {
                let s = self.studies.entry(study_id.clone()).or_default();
                let erased: &[[u8; 16]] = match consent_record_id {
                    Some(r) => std::slice::from_ref(r),
                    None => s.withdrawn_by.get(pseudonym).map_or(&[], Vec::as_slice),
                };
                for r in erased {
                    let t = s.erased_at.entry(*r).or_insert(*time);
                    *t = (*t).max(*time);
                }
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

    /// Sort each study's grants by record id, keeping the last grant of each id: what the
    /// queries below expect. [`LedgerIndex::fold`] and `LedgerView::index` call it.
    pub(crate) fn finish(&mut self) {
        for s in self.studies.values_mut() {
            // Latest first, then a stable sort: the first of each id is its last grant.
            s.records.reverse();
            s.records.sort_by_key(|r| r.id);
            s.records.dedup_by(|later, first| later.id == first.id);
            s.records.shrink_to_fit();
        }
    }

    fn covers(&self, s: &StudyFold, r: &Record, purpose: usize) -> bool {
        if purpose < 64 {
            r.purposes & (1 << purpose) != 0
        } else {
            s.wide
                .get(&r.id)
                .is_some_and(|ids| ids.iter().any(|i| usize::from(*i) == purpose))
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
            .map(|r| (r.id, self.state_of(s, r)))
            .collect()
    }

    fn state_of(&self, s: &StudyFold, r: &Record) -> RecordState {
        RecordState {
            pseudonym: r.pseudonym,
            purposes: self
                .purposes
                .iter()
                .enumerate()
                .filter(|(i, _)| self.covers(s, r, *i))
                .map(|(_, p)| p.clone())
                .collect(),
            expires_at: r.expires_at,
            withdrawn_at: s.withdrawn.get(&r.id).copied(),
            granted_at: r.granted_at,
        }
    }

    /// One consent record's state (a binary search of the sorted grants).
    pub fn record_state(&self, study: &StudyId, id: &[u8; 16]) -> Option<RecordState> {
        let s = self.study(study)?;
        let r = s
            .records
            .binary_search_by(|r| r.id.cmp(id))
            .ok()
            .and_then(|i| s.records.get(i))?;
        Some(self.state_of(s, r))
    }

    /// When the rows of a record were last logged as erased: an `erasure_done` entry naming it,
    /// or an older one without a record, which erased every record of its donor withdrawn
    /// before it.
    pub fn erased_at(&self, study: &StudyId, id: &[u8; 16]) -> Option<UnixSeconds> {
        self.study(study)?.erased_at.get(id).copied()
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
            .filter(|r| {
                !s.withdrawn.contains_key(&r.id) && now < r.expires_at && self.covers(s, r, p)
            })
            .map(|r| (r.id, r.pseudonym))
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

#[cfg(test)]
mod tests {
    use super::*;
    use datadonor_schemas::signing::PublicKey;

    fn grant(record: u8, purposes: &[String]) -> LedgerEntry {
        LedgerEntry::ConsentGranted {
            time: 10,
            study_id: StudyId::new("study-a").expect("id"),
            study_version: 1,
            pseudonym: Pseudonym([record; 32]),
            consent_record_id: [record; 16],
            purposes: purposes.to_vec(),
            given_at: 10,
            expires_at: 100,
            manifest_sha256: [0; 32],
            donor_public_key: PublicKey([record; 32]),
        }
    }

    #[test]
    fn the_last_grant_of_a_record_counts_and_purposes_beyond_64_are_kept() {
        let study = StudyId::new("study-a").expect("id");
        let p: Vec<String> = (0..70).map(|i| format!("p{i}")).collect();
        let index = LedgerIndex::fold(|each| {
            // Records 1..=64 intern p0..p63; record 100 names p69 (a 70th purpose).
            for r in 1..=64u8 {
                each(grant(r, &p[usize::from(r) - 1..usize::from(r)]), true);
            }
            each(grant(100, &[p[68].clone(), p[69].clone()]), true);
            // Record 7 granted again for p1 only: that grant is the one that counts.
            each(grant(7, &[p[1].clone()]), true);
            // A grant after the checkpoint does not count.
            each(grant(200, &[p[1].clone()]), false);
            Ok::<_, ()>(Some(66))
        })
        .expect("folded");
        assert_eq!(index.records(), 65);
        let allowed = |purpose: &str| {
            let mut ids: Vec<u8> = index
                .allowed_records(&study, purpose, 50)
                .into_iter()
                .map(|r| r[0])
                .collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(allowed("p69"), vec![100]);
        assert_eq!(allowed("p68"), vec![100]);
        assert_eq!(allowed("p1"), vec![2, 7]);
        assert_eq!(
            allowed("p6"),
            Vec::<u8>::new(),
            "record 7's first grant is replaced"
        );
        assert_eq!(allowed("p63"), vec![64]);
        assert_eq!(allowed("nothing"), Vec::<u8>::new());
        let states = index.record_states(&study);
        assert_eq!(states[&[100; 16]].purposes, vec!["p68", "p69"]);
        assert_eq!(states[&[7; 16]].purposes, vec!["p1"]);
        assert!(!states.contains_key(&[200; 16]));
    }
}
