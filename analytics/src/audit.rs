//! The auditor's tools: checks an outside auditor runs against the consent ledger and the
//! sealed batches, each producing a report that renders as text or as a self-contained HTML page.
//!
//! | function | what it checks |
//! |---|---|
//! | [`audit_log`] | the signed tree head: signature, consistency with the last verified head kept in a state directory, the root recomputed from the entries; with [`audit_log_witnessed`] also a quorum of witness cosignatures |
//! | [`audit_receipt`] | a donor's receipt: its signatures and proof, and the inclusion of its entry in the current verified log |
//! | [`audit_consents`], [`ConsentFold`] | the consent timeline per pseudonym of one study (from a view, or as the ledger streams) |
//! | [`audit_queries`] | every `query_run` entry, optionally against the signed approvals |
//! | [`audit_batches`] | that every row of every sealed batch was donated under a consent record the ledger knows, of the row's donor, granted when the batch was created and not withdrawn |
//!
//! Consent grants are taken only from the part of the log covered by a verified signed
//! checkpoint; withdrawals and erasures are taken from the whole log (the conservative
//! direction, as in [`LedgerView`]). Pseudonyms are shown as their first 12 hex digits.
//! Like the rest of the crate, [`audit_batches`] opens batches only in memory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datadonor_schemas::checkpoint::{self, NoteVerifier};
use datadonor_schemas::cosignature::{verify_quorum, CosignatureError, WitnessKey};
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::merkle::{self, Hash, MerkleLog};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::QueryApproval;
use datadonor_schemas::receipt::{verify_receipt, ReceiptBundle, VerifiedReceipt};
use datadonor_schemas::signing::{Context, PublicKey, Signed, SignedObject};
use datadonor_schemas::study::{StudyId, CONSENT_COLUMN, DONOR_COLUMN};
use datadonor_schemas::time::UnixSeconds;
use polars::prelude::*;

use crate::ledger::{
    verify_ledger_with, LedgerError, LedgerIndex, LedgerSource, LedgerView, PAGE, STATE_FILE,
};
use crate::sealed::{BatchError, BatchErrorKind};
use crate::store::BatchStore;
use crate::vault::VaultKey;
use crate::AnalyticsError;

/// Hex digits of a pseudonym shown in reports.
pub const PSEUDONYM_PREFIX_LEN: usize = 12;

/// A pseudonym as shown in reports: its first [`PSEUDONYM_PREFIX_LEN`] hex digits.
pub fn short_pseudonym(p: &Pseudonym) -> String {
    let mut h = p.to_hex();
    h.truncate(PSEUDONYM_PREFIX_LEN);
    h
}

/// A Unix time as RFC 3339 UTC text (or the number when out of range).
pub fn fmt_time(t: UnixSeconds) -> String {
    jiff::Timestamp::from_second(t)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| t.to_string())
}

fn input_err(path: &Path, detail: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Input {
        path: path.to_path_buf(),
        detail: detail.to_string().replace('\n', " "),
    }
}

// ---------------------------------------------------------------------------------------------
// audit log

/// The result of [`audit_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogAudit {
    /// Origin of the log.
    pub origin: String,
    /// Size of the verified head.
    pub size: u64,
    /// Root of the verified head (recomputed from the entries).
    pub root: Hash,
    /// Size of the head verified before this run, if the state directory held one.
    pub previous_size: Option<u64>,
    /// Entries after the head (not covered by a signature).
    pub tail: u64,
    /// Entries by type (`type` field), over the verified prefix.
    pub counts: BTreeMap<String, u64>,
    /// With required witnesses: the ones that cosigned the head, in note order, and the quorum.
    pub witnessed: Option<(Vec<String>, usize)>,
}

/// How often the checkpoint is fetched again while it lacks the witness quorum.
pub const WITNESS_POLL: Duration = Duration::from_millis(250);

/// The witnesses an auditor requires on the checkpoint, and how many of them.
#[derive(Debug, Clone)]
pub struct WitnessRequirement {
    /// The required witnesses' keys.
    pub witnesses: Vec<WitnessKey>,
    /// How many of them must have cosigned (`1 ..= witnesses`).
    pub quorum: usize,
    /// Latest cosignature timestamp accepted (the auditor's clock plus the allowed skew).
    pub max_time: u64,
    /// How long to fetch the checkpoint again while it lacks the quorum (the intake gathers
    /// cosignatures after publishing).
    pub max_wait: Duration,
}

/// A source whose checkpoint is returned only once it carries the witness quorum.
struct Witnessed<'a> {
    source: &'a dyn LedgerSource,
    verifiers: &'a [NoteVerifier],
    required: &'a WitnessRequirement,
    cosigned_by: Mutex<Vec<String>>,
}

impl Witnessed<'_> {
    fn check(&self, note: &[u8]) -> Result<Vec<String>, CosignatureError> {
        let r = self.required;
        let mut last = CosignatureError::Checkpoint(checkpoint::CheckpointError::UnverifiedNote);
        for v in self.verifiers {
            match verify_quorum(note, v, &r.witnesses, r.quorum, r.max_time) {
                Ok((_, found)) => {
                    return Ok(found
                        .iter()
                        .filter_map(|f| r.witnesses.get(f.witness))
                        .map(|w| w.name().to_string())
                        .collect())
                }
                // Signed by another of the verifiers, maybe.
                Err(e @ CosignatureError::Checkpoint(_)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

/// A ledger source whose checkpoint is accepted only with the witness quorum, owning what it
/// reads from: every audit command given `--witness` reads the ledger through one.
pub struct WitnessedSource {
    inner: Box<dyn LedgerSource>,
    verifiers: Vec<NoteVerifier>,
    required: WitnessRequirement,
}

impl WitnessedSource {
    /// `inner`, its checkpoints required to carry `required`'s quorum (the log's signature is
    /// checked against `verifiers`).
    pub fn new(
        inner: Box<dyn LedgerSource>,
        verifiers: Vec<NoteVerifier>,
        required: WitnessRequirement,
    ) -> Self {
        Self {
            inner,
            verifiers,
            required,
        }
    }
}

impl LedgerSource for WitnessedSource {
    fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
        let w = Witnessed {
            source: self.inner.as_ref(),
            verifiers: &self.verifiers,
            required: &self.required,
            cosigned_by: Mutex::new(Vec::new()),
        };
        w.checkpoint()
    }
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        self.inner.entries(start, end)
    }
    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        self.inner.consistency_proof(from, to)
    }
}

impl LedgerSource for Witnessed<'_> {
    fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
        let deadline = Instant::now() + self.required.max_wait;
        loop {
            let note = self.source.checkpoint()?;
            match self.check(&note) {
                Ok(names) => {
                    if let Ok(mut c) = self.cosigned_by.lock() {
                        *c = names;
                    }
                    return Ok(note);
                }
                Err(CosignatureError::QuorumNotMet { .. })
                    if Instant::now() + WITNESS_POLL <= deadline =>
                {
                    std::thread::sleep(WITNESS_POLL);
                }
                // The log's own signature is checked (and reported) by `verify_ledger`.
                Err(CosignatureError::Checkpoint(_)) => return Ok(note),
                Err(e) => return Err(LedgerError::Witnesses(e)),
            }
        }
    }
    fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        self.source.entries(start, end)
    }
    fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        self.source.consistency_proof(from, to)
    }
}

fn read_state(
    state_dir: &Path,
    verifiers: &[NoteVerifier],
) -> Result<Option<checkpoint::Checkpoint>, AnalyticsError> {
    let path = state_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(note) => Ok(Some(
            checkpoint::open(&note, verifiers)
                .map_err(|e| LedgerError::State {
                    path: path.clone(),
                    detail: format!("stored checkpoint does not open: {e}"),
                })?
                .checkpoint,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LedgerError::State {
            path,
            detail: e.to_string(),
        }
        .into()),
    }
}

/// Fetch and verify the signed tree head of `source`: its signature by one of `verifiers`, the
/// root recomputed from the entries, and an RFC 9162 consistency proof from the head last
/// verified and kept in `state_dir` (a head not consistent with it is refused with
/// [`LedgerError::Inconsistent`] or [`LedgerError::Rollback`], and the state is left
/// unchanged). On success the new head is stored in `state_dir`.
pub fn audit_log(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: &Path,
) -> Result<LogAudit, AnalyticsError> {
    audit_log_witnessed(source, verifiers, state_dir, None)
}

/// [`crate::ledger::verify_ledger`] of `source` whose checkpoint must carry `required`'s quorum of witness
/// cosignatures (fetched again for up to its wait while it does not).
pub fn verify_witnessed(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: Option<&Path>,
    required: &WitnessRequirement,
) -> Result<LedgerView, LedgerError> {
    LedgerView::collect(|each| {
        verify_witnessed_with(source, verifiers, state_dir, required, each).map(Some)
    })
}

/// [`verify_witnessed`], streaming each entry to `each` ([`verify_ledger_with`]); the
/// checkpoint's size.
pub fn verify_witnessed_with(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: Option<&Path>,
    required: &WitnessRequirement,
    each: &mut dyn FnMut(LedgerEntry, bool),
) -> Result<u64, LedgerError> {
    let w = Witnessed {
        source,
        verifiers,
        required,
        cosigned_by: Mutex::new(Vec::new()),
    };
    verify_ledger_with(&w, verifiers, state_dir, each)
}

/// [`audit_log`], and with `witnesses` the head must also carry cosignatures by a quorum of
/// them (`verify_quorum`): the checkpoint is fetched again every [`WITNESS_POLL`] for up to
/// `max_wait` while too few have cosigned it, then the audit fails with
/// [`LedgerError::Witnesses`] (as it does at once for an invalid cosignature by a required
/// witness), leaving the state directory unchanged.
pub fn audit_log_witnessed(
    source: &dyn LedgerSource,
    verifiers: &[NoteVerifier],
    state_dir: &Path,
    witnesses: Option<&WitnessRequirement>,
) -> Result<LogAudit, AnalyticsError> {
    let previous = read_state(state_dir, verifiers)?;
    let witnessed = witnesses.map(|required| Witnessed {
        source,
        verifiers,
        required,
        cosigned_by: Mutex::new(Vec::new()),
    });
    // Streamed: each entry is counted and dropped, so the audit holds no entry.
    let mut counts = BTreeMap::new();
    let mut tail = 0u64;
    let mut count = |e: LedgerEntry, verified: bool| {
        if verified {
            *counts.entry(e.kind().to_string()).or_insert(0u64) += 1;
        } else {
            tail += 1;
        }
    };
    match &witnessed {
        Some(w) => verify_ledger_with(w, verifiers, Some(state_dir), &mut count)?,
        None => verify_ledger_with(source, verifiers, Some(state_dir), &mut count)?,
    };
    let witnessed = witnessed.map(|w| {
        let names = w.cosigned_by.lock().map(|c| c.to_vec()).unwrap_or_default();
        (names, w.required.quorum)
    });
    if let Some((names, quorum)) = &witnessed {
        if names.len() < *quorum {
            return Err(LedgerError::Witnesses(CosignatureError::QuorumNotMet {
                valid: names.len(),
                quorum: *quorum,
            })
            .into());
        }
    }
    // The head just verified and stored.
    let head = read_state(state_dir, verifiers)?.ok_or(LedgerError::NoCheckpoint)?;
    Ok(LogAudit {
        origin: head.origin,
        size: head.size,
        root: head.root,
        previous_size: previous.map(|c| c.size),
        tail,
        counts,
        witnessed,
    })
}

impl LogAudit {
    /// Plain-text report.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "origin: {}", self.origin);
        let _ = writeln!(s, "size: {}", self.size);
        let _ = writeln!(s, "root: {}", self.root.to_hex());
        match self.previous_size {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "consistent with the previously verified head of size {p}"
                );
            }
            None => {
                let _ = writeln!(s, "no previously verified head (first audit)");
            }
        }
        if let Some((names, quorum)) = &self.witnessed {
            let _ = writeln!(
                s,
                "cosigned by {} of the required witnesses (quorum {quorum}): {}",
                names.len(),
                names.join(", ")
            );
        }
        if self.tail > 0 {
            let _ = writeln!(s, "unsigned entries after the head: {}", self.tail);
        }
        for (k, n) in &self.counts {
            let _ = writeln!(s, "  {k}: {n}");
        }
        s
    }

    /// HTML report.
    pub fn to_html(&self) -> String {
        let mut r = HtmlReport::new("Ledger audit");
        r.summary("Origin", &self.origin);
        r.summary("Size", self.size);
        r.summary("Root", self.root.to_hex());
        r.summary(
            "Previous verified size",
            self.previous_size
                .map_or_else(|| "none (first audit)".to_string(), |p| p.to_string()),
        );
        if let Some((names, quorum)) = &self.witnessed {
            r.summary(
                "Witness cosignatures",
                format!("{} (quorum {quorum}): {}", names.len(), names.join(", ")),
            );
        }
        r.summary("Unsigned tail entries", self.tail);
        r.table(
            "Entries by type",
            &["type", "count"],
            self.counts
                .iter()
                .map(|(k, n)| vec![k.clone(), n.to_string()])
                .collect(),
        );
        r.render()
    }
}

// ---------------------------------------------------------------------------------------------
// audit receipt

/// Parse a receipt file: a [`ReceiptBundle`], or the donor client's stored receipt JSON, which
/// holds the bundle in a `bundle` field.
pub fn parse_receipt_file(bytes: &[u8], path: &Path) -> Result<ReceiptBundle, AnalyticsError> {
    match ReceiptBundle::from_json(bytes) {
        Ok(b) => Ok(b),
        Err(direct) => {
            let v: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| input_err(path, format!("not JSON: {e}")))?;
            let Some(inner) = v.get("bundle") else {
                return Err(input_err(
                    path,
                    format!("neither a receipt bundle nor a stored receipt: {direct}"),
                ));
            };
            let inner = serde_json::to_vec(inner).map_err(|e| input_err(path, e))?;
            ReceiptBundle::from_json(&inner).map_err(|e| input_err(path, format!("bundle: {e}")))
        }
    }
}

/// The result of [`audit_receipt`].
#[derive(Debug, Clone)]
pub struct ReceiptAudit {
    /// The verified receipt.
    pub receipt: VerifiedReceipt,
    /// Size of the current verified head the entry was found under.
    pub current_size: u64,
    /// Root of that head.
    pub current_root: Hash,
}

impl ReceiptAudit {
    /// Plain-text report.
    pub fn render_text(&self) -> String {
        let r = &self.receipt.receipt;
        format!(
            "receipt valid: {} entry {} at index {} (study {}, pseudonym {}), issued {}\n\
             receipt head size {}; included in the current head of size {} (root {})\n",
            self.receipt.entry.kind(),
            hex::encode(r.entry_sha256),
            r.ledger_index,
            r.study_id,
            short_pseudonym(&r.pseudonym),
            fmt_time(r.issued_at),
            self.receipt.tree_size,
            self.current_size,
            self.current_root.to_hex()
        )
    }
}

/// Verify a receipt bundle with the ledger key (`ledger_key` signs receipts, `verifier` the
/// checkpoints), then check that its entry is in the current log: the current head is verified
/// with [`crate::ledger::verify_ledger`] (consistency against `state_dir` when given), the entry's leaf must be
/// the one at the receipt's index, its inclusion proof under the current head must verify, and
/// the receipt's head must be consistent with the current one.
pub fn audit_receipt(
    bundle: &ReceiptBundle,
    ledger_key: &PublicKey,
    verifier: &NoteVerifier,
    source: &dyn LedgerSource,
    state_dir: Option<&Path>,
) -> Result<ReceiptAudit, AnalyticsError> {
    let refused = |m: String| AnalyticsError::Refused(format!("receipt: {m}"));
    let verified =
        verify_receipt(bundle, ledger_key, verifier).map_err(|e| refused(e.to_string()))?;
    let verifiers = std::slice::from_ref(verifier);
    // Verified as it streams past; no entry is kept.
    verify_ledger_with(source, verifiers, state_dir, &mut |_, _| {})?;
    // Rebuild the verified log's leaves (verify_ledger has checked them against the head).
    let head = checkpoint::open(&source.checkpoint()?, verifiers)
        .map_err(LedgerError::from)?
        .checkpoint;
    let mut leaves = Vec::new();
    let mut start = 0u64;
    while start < head.size {
        let page = source.entries(start, (start + PAGE).min(head.size))?;
        if page.is_empty() {
            break;
        }
        start += page.len() as u64;
        leaves.extend(page.iter().map(|b| merkle::leaf_hash(b)));
    }
    let log = MerkleLog::from_leaves(leaves);
    if log.size() != head.size || log.root() != head.root {
        return Err(LedgerError::RootMismatch { size: head.size }.into());
    }
    let index = verified.receipt.ledger_index;
    if index >= head.size {
        return Err(refused(format!(
            "entry index {index} is not covered by the current head of size {}",
            head.size
        )));
    }
    let leaf = merkle::leaf_hash(&bundle.entry);
    if log.leaf(index) != Some(leaf) {
        return Err(refused(format!(
            "the log's entry at index {index} is not the receipt's entry"
        )));
    }
    let proof = log
        .inclusion_proof(index, head.size)
        .map_err(|e| refused(e.to_string()))?;
    merkle::verify_inclusion(
        index,
        head.size,
        leaf.as_bytes(),
        &proof,
        head.root.as_bytes(),
    )
    .map_err(|e| refused(format!("inclusion under the current head: {e}")))?;
    if verified.tree_size > head.size {
        return Err(refused(format!(
            "the receipt's head (size {}) is ahead of the current head (size {})",
            verified.tree_size, head.size
        )));
    }
    let cproof = if verified.tree_size == head.size {
        Vec::new()
    } else {
        log.consistency_proof(verified.tree_size, head.size)
            .map_err(|e| refused(e.to_string()))?
    };
    merkle::verify_consistency(
        verified.tree_size,
        head.size,
        &cproof,
        &verified.root,
        head.root.as_bytes(),
    )
    .map_err(|e| {
        refused(format!(
            "the receipt's head is not consistent with the current head: {e}"
        ))
    })?;
    Ok(ReceiptAudit {
        receipt: verified,
        current_size: head.size,
        current_root: head.root,
    })
}

// ---------------------------------------------------------------------------------------------
// audit consents

/// One pseudonym's consent history in a study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentTimeline {
    /// The pseudonym.
    pub pseudonym: Pseudonym,
    /// Times of `consent_granted` entries (verified prefix only).
    pub granted: Vec<UnixSeconds>,
    /// Times of `consent_withdrawn` entries.
    pub withdrawn: Vec<UnixSeconds>,
    /// Times of `erasure_done` entries.
    pub erased: Vec<UnixSeconds>,
}

impl ConsentTimeline {
    /// Consent in force: the last grant is later than the last withdrawal (or there is none).
    pub fn is_active(&self) -> bool {
        match (self.granted.last(), self.withdrawn.last()) {
            (Some(g), Some(w)) => g > w,
            (Some(_), None) => true,
            _ => false,
        }
    }
    /// Withdrawn and not erased since the last withdrawal, by pseudonym (the totals of
    /// [`audit_consents`] count pending erasures by consent record, see
    /// [`LedgerView::pending_erasures`]).
    pub fn is_pending_erasure(&self) -> bool {
        match (self.withdrawn.last(), self.erased.last()) {
            (Some(w), Some(e)) => e < w,
            (Some(_), None) => !self.is_active(),
            _ => false,
        }
    }
}

/// Totals of [`ConsentAudit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsentTotals {
    /// Distinct pseudonyms.
    pub donors: u64,
    /// `consent_granted` entries.
    pub granted: u64,
    /// `consent_withdrawn` entries.
    pub withdrawn: u64,
    /// `erasure_done` entries.
    pub erased: u64,
    /// Donors whose consent is in force.
    pub active: u64,
    /// Donors with a withdrawn consent record whose erasure is not logged yet.
    pub pending_erasure: u64,
}

/// The result of [`audit_consents`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentAudit {
    /// Study.
    pub study: StudyId,
    /// One timeline per pseudonym, ordered by first event.
    pub timelines: Vec<ConsentTimeline>,
    /// Totals.
    pub totals: ConsentTotals,
}

/// The consent timeline per pseudonym of `study`, from a view that holds every entry.
pub fn audit_consents(view: &LedgerView, study: &StudyId) -> ConsentAudit {
    let mut fold = ConsentFold::new(study);
    for e in &view.verified {
        fold.add(e, true);
    }
    for e in &view.tail {
        fold.add(e, false);
    }
    fold.finish()
}

/// [`audit_consents`] built as the ledger streams past, entry by entry in log order
/// ([`ConsentFold::add`]), keeping one timeline per pseudonym of the study and the study's
/// withdrawals and erasures (for the pending erasures), not the entries.
#[derive(Debug)]
pub struct ConsentFold {
    study: StudyId,
    /// Position of each pseudonym's timeline in `timelines` (the order of first events).
    at: HashMap<Pseudonym, usize>,
    timelines: Vec<ConsentTimeline>,
    totals: ConsentTotals,
    /// The study's withdrawals and erasures only: pending erasures by consent record, by the
    /// same rules a run uses.
    erasures: LedgerIndex,
}

impl ConsentFold {
    /// An empty fold for `study`.
    pub fn new(study: &StudyId) -> Self {
        Self {
            study: study.clone(),
            at: HashMap::new(),
            timelines: Vec::new(),
            totals: ConsentTotals::default(),
            erasures: LedgerIndex::new(),
        }
    }

    /// The next entry of the log; `verified` when a verified checkpoint covers it (a grant
    /// counts only then; withdrawals and erasures count wherever they are).
    pub fn add(&mut self, e: &LedgerEntry, verified: bool) {
        let (p, kind, time) = match e {
            LedgerEntry::ConsentGranted {
                study_id,
                pseudonym,
                time,
                ..
            } if study_id == &self.study && verified => (pseudonym, 0, *time),
            LedgerEntry::ConsentWithdrawn {
                study_id,
                pseudonym,
                time,
                ..
            } if study_id == &self.study => (pseudonym, 1, *time),
            LedgerEntry::ErasureDone {
                study_id,
                pseudonym,
                time,
                ..
            } if study_id == &self.study => (pseudonym, 2, *time),
            _ => return,
        };
        if kind != 0 {
            self.erasures.add(e, verified);
        }
        let i = *self.at.entry(*p).or_insert_with(|| {
            self.timelines.push(ConsentTimeline {
                pseudonym: *p,
                granted: Vec::new(),
                withdrawn: Vec::new(),
                erased: Vec::new(),
            });
            self.timelines.len() - 1
        });
        let t = &mut self.timelines[i];
        match kind {
            0 => {
                t.granted.push(time);
                self.totals.granted += 1;
            }
            1 => {
                t.withdrawn.push(time);
                self.totals.withdrawn += 1;
            }
            _ => {
                t.erased.push(time);
                self.totals.erased += 1;
            }
        }
    }

    /// The report.
    pub fn finish(mut self) -> ConsentAudit {
        self.erasures.finish();
        let mut totals = self.totals;
        totals.donors = self.timelines.len() as u64;
        totals.active = self.timelines.iter().filter(|t| t.is_active()).count() as u64;
        // By consent record: a donor who withdrew one record and consented again under another
        // is still pending until the withdrawn record's rows are erased.
        totals.pending_erasure = self
            .erasures
            .pending_erasures(&self.study)
            .into_iter()
            .map(|(p, _)| p)
            .collect::<HashSet<Pseudonym>>()
            .len() as u64;
        ConsentAudit {
            study: self.study,
            timelines: self.timelines,
            totals,
        }
    }
}

fn times(ts: &[UnixSeconds]) -> String {
    if ts.is_empty() {
        "-".into()
    } else {
        ts.iter()
            .map(|t| fmt_time(*t))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ConsentAudit {
    fn rows(&self) -> Vec<Vec<String>> {
        self.timelines
            .iter()
            .map(|t| {
                vec![
                    short_pseudonym(&t.pseudonym),
                    times(&t.granted),
                    times(&t.withdrawn),
                    times(&t.erased),
                ]
            })
            .collect()
    }

    fn total_pairs(&self) -> Vec<(&'static str, u64)> {
        let t = &self.totals;
        vec![
            ("donors", t.donors),
            ("granted", t.granted),
            ("withdrawn", t.withdrawn),
            ("erased", t.erased),
            ("active", t.active),
            ("pending erasure", t.pending_erasure),
        ]
    }

    /// Plain-text report.
    pub fn render_text(&self) -> String {
        let mut s = format!("study {}\n", self.study);
        let _ = writeln!(s, "pseudonym     granted | withdrawn | erased");
        for r in self.rows() {
            let _ = writeln!(s, "{}  {} | {} | {}", r[0], r[1], r[2], r[3]);
        }
        let totals: Vec<String> = self
            .total_pairs()
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "totals: {}", totals.join(", "));
        s
    }

    /// HTML report.
    pub fn to_html(&self) -> String {
        let mut r = HtmlReport::new(&format!("Consent audit: {}", self.study));
        for (k, v) in self.total_pairs() {
            r.summary(k, v);
        }
        r.table(
            "Consent timeline per pseudonym",
            &["pseudonym", "granted", "withdrawn", "erased"],
            self.rows(),
        );
        r.render()
    }
}

// ---------------------------------------------------------------------------------------------
// audit queries

/// Something wrong with a `query_run` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryFlag {
    /// No approval in the given set has this approval hash.
    NoApproval,
    /// The run is outside the approval's validity window.
    OutsideWindow {
        /// Valid from.
        not_before: UnixSeconds,
        /// Valid until (exclusive).
        not_after: UnixSeconds,
    },
    /// The run is beyond the approval's max runs.
    BeyondMaxRuns {
        /// This run's number under the approval (1-based).
        run: u64,
        /// Runs allowed.
        max_runs: u32,
    },
    /// The run names another study, purpose, researcher or query than its approval.
    Mismatch(&'static str),
    /// The budget left that the run records does not follow from the previous run's and this
    /// run's spend (basic composition).
    BudgetInconsistent(&'static str),
    /// The run spent more than its approval states.
    OverSpent,
}

impl std::fmt::Display for QueryFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryFlag::NoApproval => write!(f, "no matching approval"),
            QueryFlag::OutsideWindow {
                not_before,
                not_after,
            } => write!(
                f,
                "outside the approval window {} .. {}",
                fmt_time(*not_before),
                fmt_time(*not_after)
            ),
            QueryFlag::BeyondMaxRuns { run, max_runs } => {
                write!(f, "run {run} beyond the approval's max runs {max_runs}")
            }
            QueryFlag::Mismatch(what) => write!(f, "{what} differs from the approval"),
            QueryFlag::BudgetInconsistent(whose) => {
                write!(
                    f,
                    "{whose} budget left does not follow from the previous run"
                )
            }
            QueryFlag::OverSpent => write!(f, "spent more than the approval states"),
        }
    }
}

/// One `query_run` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRunRecord {
    /// Ledger index.
    pub index: u64,
    /// When.
    pub time: UnixSeconds,
    /// Study.
    pub study: StudyId,
    /// Researcher.
    pub researcher: String,
    /// Purpose.
    pub purpose: String,
    /// Cells published.
    pub cells_published: u64,
    /// Cells suppressed.
    pub cells_suppressed: u64,
    /// SHA-256 of the signed approval payload.
    pub approval_sha256: [u8; 32],
    /// The run's privacy spend and the budgets left after it (runs of the query service).
    pub privacy: Option<datadonor_schemas::privacy::RunPrivacy>,
    /// Problems found (empty without approvals to check against, or when the run is in order).
    pub flags: Vec<QueryFlag>,
}

/// Privacy budget use of one researcher in one study, summed over their runs (basic
/// composition).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetUse {
    /// Study.
    pub study: StudyId,
    /// Researcher.
    pub researcher: String,
    /// Runs with a recorded spend.
    pub runs: u64,
    /// ε spent.
    pub epsilon: f64,
    /// δ spent.
    pub delta: f64,
    /// ε left for the researcher after their last run, as recorded.
    pub epsilon_left: f64,
    /// δ left for the researcher after their last run, as recorded.
    pub delta_left: f64,
}

/// The result of [`audit_queries`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueryAudit {
    /// Every run, in log order.
    pub runs: Vec<QueryRunRecord>,
    /// Budget use per study and researcher, in order of first run.
    pub budgets: Vec<BudgetUse>,
    /// Whether the runs were checked against approvals.
    pub checked: bool,
    /// Approvals checked against.
    pub approvals: u64,
}

impl QueryAudit {
    /// Runs with at least one flag.
    pub fn flagged(&self) -> usize {
        self.runs.iter().filter(|r| !r.flags.is_empty()).count()
    }
}

/// Read every signed approval in `dir` (every regular file; each must be a signed
/// `query-approval` object with a valid signature). When `trusted` is given, approvals by
/// other keys are refused.
pub fn load_approvals(
    dir: &Path,
    trusted: Option<&[PublicKey]>,
) -> Result<Vec<Signed<QueryApproval>>, AnalyticsError> {
    let rd = std::fs::read_dir(dir).map_err(|e| input_err(dir, e))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for e in rd {
        let e = e.map_err(|e| input_err(dir, e))?;
        if e.file_type().map_err(|e| input_err(dir, e))?.is_file() {
            paths.push(e.path());
        }
    }
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let bytes = std::fs::read(&p).map_err(|e| input_err(&p, e))?;
        let obj = SignedObject::from_bytes(&bytes).map_err(|e| input_err(&p, e))?;
        let signed: Signed<QueryApproval> = obj
            .open(Context::QueryApproval, "query approval")
            .map_err(|e| input_err(&p, e))?;
        if let Some(t) = trusted {
            if !t.contains(&signed.signer) {
                return Err(input_err(&p, "approval signed by an untrusted key"));
            }
        }
        out.push(signed);
    }
    Ok(out)
}

/// Every `query_run` entry of the log; with `approvals`, flag runs with no matching approval,
/// runs outside their approval's window, runs beyond its max runs (counted in log order), and
/// runs naming another study, purpose or researcher than their approval.
pub fn audit_queries(view: &LedgerView, approvals: Option<&[Signed<QueryApproval>]>) -> QueryAudit {
    audit_query_runs(
        view.all().enumerate().map(|(i, e)| (i as u64, e)),
        approvals,
    )
}

/// [`audit_queries`] over `(index in the log, entry)` pairs in log order, of which only the
/// `query_run` entries matter (what `audit queries` keeps while it streams the ledger).
pub fn audit_query_runs<'a>(
    entries: impl IntoIterator<Item = (u64, &'a LedgerEntry)>,
    approvals: Option<&[Signed<QueryApproval>]>,
) -> QueryAudit {
    let by_digest: HashMap<[u8; 32], &QueryApproval> = approvals
        .unwrap_or_default()
        .iter()
        .map(|a| (a.digest(), &a.body))
        .collect();
    let mut counts: HashMap<[u8; 32], u64> = HashMap::new();
    let mut runs = Vec::new();
    let mut budgets: Vec<BudgetUse> = Vec::new();
    // The last recorded study budget left, per study.
    let mut study_left: HashMap<StudyId, (f64, f64)> = HashMap::new();
    for (i, e) in entries {
        let LedgerEntry::QueryRun {
            time,
            study_id,
            query_sha256,
            approval_sha256,
            researcher,
            purpose,
            cells_published,
            cells_suppressed,
            privacy,
            ..
        } = e
        else {
            continue;
        };
        let mut flags = Vec::new();
        if let Some(p) = privacy {
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
            let close_delta =
                |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-12);
            match budgets
                .iter_mut()
                .find(|b| &b.study == study_id && &b.researcher == researcher)
            {
                Some(b) => {
                    if !close(b.epsilon_left - p.epsilon, p.researcher_epsilon_left)
                        || !close_delta(b.delta_left - p.delta, p.researcher_delta_left)
                    {
                        flags.push(QueryFlag::BudgetInconsistent("researcher's"));
                    }
                    b.runs += 1;
                    b.epsilon += p.epsilon;
                    b.delta += p.delta;
                    b.epsilon_left = p.researcher_epsilon_left;
                    b.delta_left = p.researcher_delta_left;
                }
                None => budgets.push(BudgetUse {
                    study: study_id.clone(),
                    researcher: researcher.clone(),
                    runs: 1,
                    epsilon: p.epsilon,
                    delta: p.delta,
                    epsilon_left: p.researcher_epsilon_left,
                    delta_left: p.researcher_delta_left,
                }),
            }
            if let Some((e_left, d_left)) = study_left.get(study_id) {
                if !close(e_left - p.epsilon, p.study_epsilon_left)
                    || !close_delta(d_left - p.delta, p.study_delta_left)
                {
                    flags.push(QueryFlag::BudgetInconsistent("study's"));
                }
            }
            study_left.insert(study_id.clone(), (p.study_epsilon_left, p.study_delta_left));
        }
        if approvals.is_some() {
            match by_digest.get(approval_sha256) {
                None => flags.push(QueryFlag::NoApproval),
                Some(a) => {
                    let n = counts.entry(*approval_sha256).or_insert(0);
                    *n += 1;
                    if *time < a.not_before || *time >= a.not_after {
                        flags.push(QueryFlag::OutsideWindow {
                            not_before: a.not_before,
                            not_after: a.not_after,
                        });
                    }
                    if *n > u64::from(a.max_runs) {
                        flags.push(QueryFlag::BeyondMaxRuns {
                            run: *n,
                            max_runs: a.max_runs,
                        });
                    }
                    if &a.study_id != study_id {
                        flags.push(QueryFlag::Mismatch("study"));
                    }
                    if &a.purpose != purpose {
                        flags.push(QueryFlag::Mismatch("purpose"));
                    }
                    if &a.researcher != researcher {
                        flags.push(QueryFlag::Mismatch("researcher"));
                    }
                    if &a.query_sha256 != query_sha256 {
                        flags.push(QueryFlag::Mismatch("query hash"));
                    }
                    if let (Some(p), Some(spend)) = (privacy, a.privacy) {
                        if p.epsilon > spend.epsilon * (1.0 + 1e-9)
                            || p.delta > spend.delta * (1.0 + 1e-9)
                        {
                            flags.push(QueryFlag::OverSpent);
                        }
                    }
                }
            }
        }
        runs.push(QueryRunRecord {
            index: i,
            time: *time,
            study: study_id.clone(),
            researcher: researcher.clone(),
            purpose: purpose.clone(),
            cells_published: *cells_published,
            cells_suppressed: *cells_suppressed,
            approval_sha256: *approval_sha256,
            privacy: *privacy,
            flags,
        });
    }
    QueryAudit {
        runs,
        budgets,
        checked: approvals.is_some(),
        approvals: by_digest.len() as u64,
    }
}

impl QueryAudit {
    fn rows(&self) -> Vec<Vec<String>> {
        self.runs
            .iter()
            .map(|r| {
                vec![
                    r.index.to_string(),
                    fmt_time(r.time),
                    r.study.to_string(),
                    r.researcher.clone(),
                    r.purpose.clone(),
                    r.cells_published.to_string(),
                    r.cells_suppressed.to_string(),
                    r.privacy
                        .map_or_else(|| "-".into(), |p| format!("{}", p.epsilon)),
                    hex::encode(r.approval_sha256),
                    if r.flags.is_empty() {
                        if self.checked {
                            "ok".into()
                        } else {
                            "-".into()
                        }
                    } else {
                        r.flags
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    },
                ]
            })
            .collect()
    }

    const HEADERS: [&'static str; 10] = [
        "index",
        "time",
        "study",
        "researcher",
        "purpose",
        "published",
        "suppressed",
        "epsilon",
        "approval sha256",
        "flags",
    ];

    const BUDGET_HEADERS: [&'static str; 7] = [
        "study",
        "researcher",
        "runs",
        "epsilon spent",
        "delta spent",
        "epsilon left",
        "delta left",
    ];

    fn budget_rows(&self) -> Vec<Vec<String>> {
        self.budgets
            .iter()
            .map(|b| {
                vec![
                    b.study.to_string(),
                    b.researcher.clone(),
                    b.runs.to_string(),
                    round_budget(b.epsilon),
                    round_budget(b.delta),
                    round_budget(b.epsilon_left),
                    round_budget(b.delta_left),
                ]
            })
            .collect()
    }

    fn summary_line(&self) -> String {
        if self.checked {
            format!(
                "totals: {}, {} flagged, {} checked",
                plural(self.runs.len() as u64, "run", "runs"),
                self.flagged(),
                plural(self.approvals, "approval", "approvals")
            )
        } else {
            format!(
                "totals: {} (not checked against approvals)",
                plural(self.runs.len() as u64, "run", "runs")
            )
        }
    }

    /// Plain-text report: a header row, then one row per run, columns aligned (left-aligned
    /// text, right-aligned counts; the last column, the flags, is not padded).
    pub fn render_text(&self) -> String {
        let mut s = aligned_text(&Self::HEADERS, &self.rows(), &[0, 5, 6, 7]);
        let _ = writeln!(s, "{}", self.summary_line());
        if !self.budgets.is_empty() {
            let _ = writeln!(s, "\nprivacy budget per researcher (basic composition):");
            s.push_str(&aligned_text(
                &Self::BUDGET_HEADERS,
                &self.budget_rows(),
                &[2, 3, 4, 5, 6],
            ));
        }
        s
    }

    /// HTML report.
    pub fn to_html(&self) -> String {
        let mut r = HtmlReport::new("Query audit");
        r.summary("Runs", self.runs.len());
        if self.checked {
            r.summary("Flagged runs", self.flagged());
            r.summary("Approvals checked", self.approvals);
        } else {
            r.summary("Approvals", "not checked");
        }
        r.table("Query runs", &Self::HEADERS, self.rows());
        if !self.budgets.is_empty() {
            r.table(
                "Privacy budget per researcher (basic composition)",
                &Self::BUDGET_HEADERS,
                self.budget_rows(),
            );
        }
        r.render()
    }
}

/// A budget amount with 9 significant digits (sums of floating-point spends).
fn round_budget(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    format!("{}", format!("{v:.8e}").parse::<f64>().unwrap_or(v))
}

// ---------------------------------------------------------------------------------------------
// audit batches

/// What is wrong with rows of one donor and consent record in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchViolationKind {
    /// The consent record's `consent_granted` entry is later than the batch's creation.
    NoConsent,
    /// The consent record was withdrawn and its erasure is logged (an `erasure_done` entry
    /// naming the record, or an older one of the donor without a record), yet rows remain.
    Erased {
        /// Time of the erasure entry.
        at: UnixSeconds,
    },
    /// The consent record was withdrawn; its rows remain, awaiting compaction.
    Withdrawn {
        /// Time of the withdrawal.
        at: UnixSeconds,
    },
    /// The consent column names no consent record the (verified) ledger knows for the study,
    /// or is not 32 lowercase hex digits.
    UnknownRecord,
    /// The consent record belongs to another pseudonym than the rows' donor.
    OtherDonor(Pseudonym),
    /// The donor column holds something that is not a pseudonym.
    BadPseudonym(String),
}

/// One violation found by [`audit_batches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchViolation {
    /// Batch id (hex).
    pub batch_id: String,
    /// Batch creation time.
    pub created_at: UnixSeconds,
    /// The donor, when the cell parsed.
    pub pseudonym: Option<Pseudonym>,
    /// The consent column's value of these rows (a record id as 32 hex digits when well formed).
    pub consent_record: String,
    /// Rows of this donor and consent record in the batch.
    pub rows: u64,
    /// What is wrong.
    pub kind: BatchViolationKind,
}

impl std::fmt::Display for BatchViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = self
            .pseudonym
            .as_ref()
            .map_or_else(|| "?".to_string(), short_pseudonym);
        match &self.kind {
            BatchViolationKind::NoConsent => write!(
                f,
                "batch {}: {} of {who} without consent granted by {}",
                self.batch_id,
                plural(self.rows, "row", "rows"),
                fmt_time(self.created_at)
            ),
            BatchViolationKind::Erased { at } => write!(
                f,
                "batch {}: {} of {who} {} after erasure at {}",
                self.batch_id,
                plural(self.rows, "row", "rows"),
                if self.rows == 1 { "remains" } else { "remain" },
                fmt_time(*at)
            ),
            BatchViolationKind::Withdrawn { at } => write!(
                f,
                "batch {}: {} of {who} under consent record {} withdrawn at {}",
                self.batch_id,
                plural(self.rows, "row", "rows"),
                short_record(&self.consent_record),
                fmt_time(*at)
            ),
            BatchViolationKind::UnknownRecord => write!(
                f,
                "batch {}: {} of {who} under consent record {:?} the ledger does not know",
                self.batch_id,
                plural(self.rows, "row", "rows"),
                short_record(&self.consent_record)
            ),
            BatchViolationKind::OtherDonor(owner) => write!(
                f,
                "batch {}: {} of {who} under consent record {} of {}",
                self.batch_id,
                plural(self.rows, "row", "rows"),
                short_record(&self.consent_record),
                short_pseudonym(owner)
            ),
            BatchViolationKind::BadPseudonym(v) => write!(
                f,
                "batch {}: {} with a malformed donor value {v:?}",
                self.batch_id,
                plural(self.rows, "row", "rows")
            ),
        }
    }
}

/// The first [`PSEUDONYM_PREFIX_LEN`] characters of a consent column value.
fn short_record(v: &str) -> &str {
    v.get(..PSEUDONYM_PREFIX_LEN).unwrap_or(v)
}

/// The result of [`audit_batches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAudit {
    /// Study.
    pub study: StudyId,
    /// Batches opened.
    pub batches: u64,
    /// Rows read.
    pub rows: u64,
    /// Distinct donors seen.
    pub donors: u64,
    /// Violations.
    pub violations: Vec<BatchViolation>,
    /// Intake batches no `donation_accepted` entry names (hex ids): their group never reached
    /// the ledger, no run or compaction reads them, and the intake's sweep deletes them. Listed,
    /// not opened.
    pub unnamed: Vec<String>,
}

/// Rows per (donor value, consent value) of a batch; a missing consent column is an error
/// naming the file.
fn donor_counts(
    path: &Path,
    bytes: &[u8],
) -> Result<BTreeMap<(String, String), u64>, AnalyticsError> {
    let content = |e: PolarsError| -> AnalyticsError {
        BatchError::new(path, BatchErrorKind::Content(e.to_string())).into()
    };
    let df = ParquetReader::new(std::io::Cursor::new(bytes))
        .with_columns(Some(vec![
            DONOR_COLUMN.to_string(),
            CONSENT_COLUMN.to_string(),
        ]))
        .finish()
        .map_err(content)?;
    let donors = df
        .column(DONOR_COLUMN)
        .map_err(content)?
        .str()
        .map_err(content)?;
    let records = df
        .column(CONSENT_COLUMN)
        .map_err(content)?
        .str()
        .map_err(content)?;
    let mut out = BTreeMap::new();
    for (d, r) in donors.iter().zip(records.iter()) {
        let key = (
            d.unwrap_or_default().to_string(),
            r.unwrap_or_default().to_string(),
        );
        *out.entry(key).or_insert(0u64) += 1;
    }
    Ok(out)
}

/// A consent column value as a record id: exactly 32 lowercase hex digits.
fn parse_record(v: &str) -> Option<[u8; 16]> {
    if v.len() != 32 || v.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(v, &mut out).ok()?;
    Some(out)
}

/// Check every row of every sealed batch of `study` in `store` against the consent record it
/// was donated under (its `consent` column): the record must have a `consent_granted` entry
/// (in the verified prefix) at or before the batch's `created_at`, for the row's donor, and must
/// not be withdrawn (a withdrawal or erasure anywhere in the log counts). Rows of a withdrawn
/// record are a violation whether or not the donor has consented again since under another
/// record; once compaction has erased them the batches are clean again. Batches are opened in
/// memory with `vault`; the intake batches no `donation_accepted` entry names are listed
/// (`unnamed`), not opened, as no run reads them.
pub fn audit_batches(
    ledger: &LedgerIndex,
    store: &BatchStore,
    vault: &VaultKey,
    study: &StudyId,
) -> Result<BatchAudit, AnalyticsError> {
    let mut audit = BatchAudit {
        study: study.clone(),
        batches: 0,
        rows: 0,
        donors: 0,
        violations: Vec::new(),
        unnamed: Vec::new(),
    };
    let mut seen: HashSet<String> = HashSet::new();
    let readable = store.readable(study, ledger)?;
    audit.unnamed = readable
        .unnamed
        .iter()
        .map(|b| b.header.batch_id_hex())
        .collect();
    for opened in store.open_batches(readable.files, vault) {
        let (bf, opened) = opened?;
        let created = opened.header.created_at;
        let batch_id = opened.header.batch_id_hex();
        let counts = donor_counts(&bf.path, &opened.plaintext)?;
        drop(opened);
        audit.batches += 1;
        for ((value, consent), rows) in counts {
            audit.rows += rows;
            seen.insert(value.clone());
            let violation = |pseudonym, kind| BatchViolation {
                batch_id: batch_id.clone(),
                created_at: created,
                pseudonym,
                consent_record: consent.clone(),
                rows,
                kind,
            };
            let Some(p) = Pseudonym::from_hex(&value) else {
                audit
                    .violations
                    .push(violation(None, BatchViolationKind::BadPseudonym(value)));
                continue;
            };
            let Some((record, state)) =
                parse_record(&consent).and_then(|r| ledger.record_state(study, &r).map(|s| (r, s)))
            else {
                audit
                    .violations
                    .push(violation(Some(p), BatchViolationKind::UnknownRecord));
                continue;
            };
            if state.pseudonym != p {
                audit.violations.push(violation(
                    Some(p),
                    BatchViolationKind::OtherDonor(state.pseudonym),
                ));
            }
            if state.granted_at > created {
                audit
                    .violations
                    .push(violation(Some(p), BatchViolationKind::NoConsent));
            }
            if let Some(at) = ledger.erased_at(study, &record) {
                audit
                    .violations
                    .push(violation(Some(p), BatchViolationKind::Erased { at }));
            } else if let Some(at) = state.withdrawn_at {
                audit
                    .violations
                    .push(violation(Some(p), BatchViolationKind::Withdrawn { at }));
            }
        }
    }
    audit.donors = seen.len() as u64;
    Ok(audit)
}

impl BatchAudit {
    fn summary_line(&self) -> String {
        format!(
            "study {}: {}, {}, {}, {}",
            self.study,
            plural(self.batches, "batch", "batches"),
            plural(self.rows, "row", "rows"),
            plural(self.donors, "donor", "donors"),
            plural(self.violations.len() as u64, "violation", "violations")
        )
    }

    /// Plain-text report.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        for v in &self.violations {
            let _ = writeln!(s, "violation: {v}");
        }
        for id in &self.unnamed {
            let _ = writeln!(
                s,
                "not in the ledger: intake batch {id} (no donation_accepted entry names it; never read)"
            );
        }
        let _ = writeln!(s, "{}", self.summary_line());
        s
    }

    /// HTML report.
    pub fn to_html(&self) -> String {
        let mut r = HtmlReport::new(&format!("Batch audit: {}", self.study));
        r.summary("Batches", self.batches);
        r.summary("Rows", self.rows);
        r.summary("Donors", self.donors);
        r.summary("Violations", self.violations.len());
        r.summary(
            "Intake batches not in the ledger (never read)",
            self.unnamed.len(),
        );
        r.table(
            "Violations",
            &["batch", "created", "pseudonym", "rows", "violation"],
            self.violations
                .iter()
                .map(|v| {
                    vec![
                        v.batch_id.clone(),
                        fmt_time(v.created_at),
                        v.pseudonym
                            .as_ref()
                            .map_or_else(|| "-".to_string(), short_pseudonym),
                        v.rows.to_string(),
                        v.to_string(),
                    ]
                })
                .collect(),
        );
        r.render()
    }
}

// ---------------------------------------------------------------------------------------------
// HTML

/// `n` with the singular or plural noun: `1 donor`, `0 donors`, `2 donors`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// A plain-text table: the header row, then `rows`, each column padded to its widest cell
/// and separated by two spaces; columns in `right` are right-aligned, the last column is not
/// padded and trailing spaces are trimmed.
pub fn aligned_text(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (c, cell) in r.iter().enumerate().take(cols) {
            widths[c] = widths[c].max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let w = widths.get(c).copied().unwrap_or(0);
                if c + 1 == cols {
                    cell.clone()
                } else if right.contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        let _ = writeln!(s, "{}", cells.join("  ").trim_end());
    }
    s
}

/// Escape text for HTML element content and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse;margin:.5em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}td.num{text-align:right}\
td.hash{overflow-wrap:anywhere;word-break:break-all;font-family:monospace;min-width:12ch}\
div.table{max-width:100%;overflow-x:auto}\
dl.summary{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}\
dl.summary dt{font-weight:bold}dl.summary dd{margin:0}\
footer{margin-top:2em;font-size:.8em;color:#666}";

/// A self-contained HTML report: a title, summary pairs and tables; inline CSS, no scripts.
#[derive(Debug, Clone, Default)]
pub struct HtmlReport {
    title: String,
    summary: Vec<(String, String)>,
    tables: Vec<(String, Vec<String>, Vec<Vec<String>>)>,
}

impl HtmlReport {
    /// An empty report.
    pub fn new(title: &str) -> Self {
        Self {
            title: title.to_string(),
            ..Self::default()
        }
    }
    /// Add a summary line.
    pub fn summary(&mut self, key: &str, value: impl std::fmt::Display) {
        self.summary.push((key.to_string(), value.to_string()));
    }
    /// Add a table.
    pub fn table(&mut self, caption: &str, headers: &[&str], rows: Vec<Vec<String>>) {
        self.tables.push((
            caption.to_string(),
            headers.iter().map(|h| h.to_string()).collect(),
            rows,
        ));
    }
    /// The page.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let t = html_escape(&self.title);
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{t}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{t}</h1>\n"
        );
        if !self.summary.is_empty() {
            s.push_str("<h2>Totals</h2>\n<dl class=\"summary\">\n");
            for (k, v) in &self.summary {
                let _ = writeln!(s, "<dt>{}</dt><dd>{}</dd>", html_escape(k), html_escape(v));
            }
            s.push_str("</dl>\n");
        }
        for (caption, headers, rows) in &self.tables {
            let _ = writeln!(s, "<h2>{}</h2>", html_escape(caption));
            if rows.is_empty() {
                s.push_str("<p>None.</p>\n");
                continue;
            }
            s.push_str("<div class=\"table\">\n<table>\n<thead><tr>");
            for h in headers {
                let _ = write!(s, "<th>{}</th>", html_escape(h));
            }
            s.push_str("</tr></thead>\n<tbody>\n");
            for r in rows {
                s.push_str("<tr>");
                for (i, c) in r.iter().enumerate() {
                    // Identifiers (pseudonym prefixes, batch ids) may happen to be all digits;
                    // only counts and times are right-aligned.
                    let identifier = headers.get(i).is_some_and(|h| {
                        h.contains("pseudonym") || h.contains("batch") || h.contains("id")
                    });
                    let num =
                        !identifier && !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit());
                    // Hashes are one long word: let them wrap so that the columns after
                    // them stay on the page.
                    let hash = headers
                        .get(i)
                        .is_some_and(|h| h.contains("sha256") || h.contains("hash"));
                    let class = if num {
                        " class=\"num\""
                    } else if hash {
                        " class=\"hash\""
                    } else {
                        ""
                    };
                    let _ = write!(s, "<td{class}>{}</td>", html_escape(c));
                }
                s.push_str("</tr>\n");
            }
            s.push_str("</tbody>\n</table>\n</div>\n");
        }
        let _ = write!(
            s,
            "<footer>Generated by datadonor-analytics audit at {}.</footer>\n</body>\n</html>\n",
            html_escape(&jiff::Timestamp::now().to_string())
        );
        s
    }
}

/// Write an HTML report to `path`.
pub fn write_html(path: &Path, html: &str) -> Result<(), AnalyticsError> {
    std::fs::write(path, html).map_err(|e| AnalyticsError::Output {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}
