//! The committer: group commit, the unit of sealing and of durability.
//!
//! # Durability design
//!
//! "Acknowledged means durable" and "the intake cannot read back what it stored" are reconciled by
//! making **the group commit itself the unit of sealing**; there is no write-ahead log of
//! envelopes, so there is nothing on disk that the intake's own keys could open.
//!
//! 1. Handlers validate a donation completely (HPKE open, manifest, study, rows) on a blocking
//!    thread and hand the validated rows to the committer over a bounded queue
//!    (`commit.queue_capacity`; full → `503 unavailable`, backpressure rather than unbounded
//!    memory).
//! 2. The committer (one dedicated thread, the only writer of ledger state) takes the first
//!    waiting job, then gathers more for up to `commit.group_window_ms` or until
//!    `commit.group_max_donations` jobs.
//! 3. Under the ledger lock it decides every job against the ledger state (idempotency, consent
//!    record reuse, withdrawal state), appending the new entries to the in-memory Merkle log
//!    (invisible to readers: they only see up to the last *published* checkpoint).
//! 4. For each study with accepted rows: rows (each donation's rows with the `consent` column,
//!    its consent record id, appended: the study's batch schema) → one Parquet file in memory
//!    (ZSTD) → sealed batch
//!    (fresh AES-256 data key wrapped to the vault public key, then zeroized; STREAM chunks) →
//!    [`crate::store::BatchStore::put`] (temp file, fsync, rename, fsync dir).
//! 5. The group's ledger entries (`ConsentGranted` for a consent record not seen before,
//!    `DonationAccepted` naming the batch, `ConsentWithdrawn`) are appended with **one fsync**.
//! 6. A checkpoint of the new tree is signed and published; only then does each handler learn
//!    its entry's index and build its receipt (signed by the ledger key, with the entry, the
//!    published checkpoint and an inclusion proof) on its own task, in parallel, while the
//!    committer moves on to the next group.
//!
//! Recovery at startup ([`recover`]): the ledger store drops a torn tail; the Merkle log and the
//! idempotency and consent indexes are rebuilt from the entries; every batch no
//! `DonationAccepted` entry names is deleted (it was sealed but its ledger entries never became
//! durable, so nobody was told it was accepted) and temporary files are removed.
//!
//! Consequences: every acknowledged donation is in exactly one sealed batch and in the ledger;
//! nothing unacknowledged stays visible after recovery (an entry that became durable but whose
//! receipt was lost is returned again when the client retries with its idempotency key);
//! plaintext rows exist only in memory, for the few milliseconds of a group. A failed write or
//! fsync *poisons* the committer: it answers `500 internal` to the group and `503 unavailable` to
//! everything after, because after a failed fsync the state of the file is unknown; the operator
//! restarts and recovery re-establishes the invariants.
//!
//! Analytics merges the small per-group batch files later; it holds the vault key, the intake
//! does not. Batch files written by any other component must not be placed directly in
//! `batches/<study>/` with a `<32 hex>.ddb` name unless a `DonationAccepted` entry names them,
//! or recovery deletes them as orphans.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::receipt::ReceiptBundle;
use datadonor_schemas::study::StudyId;
use datadonor_schemas::time::Clock;
use rand_core::{OsRng, RngCore};
use tokio::sync::oneshot;

use crate::ledger::{LedgerSigner, LedgerState, UnsignedReceipt};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::seal::{rows_to_parquet, seal_batch, VaultKey};
use crate::store::{BatchRef, BatchStore, LedgerStore, StoreError};
use crate::validate::{ValidatedDonation, ValidatedWithdrawal};

/// Where a donation or withdrawal landed: its ledger index and the published tree size its
/// receipt is issued under.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Ledger index of the entry.
    pub index: u64,
    /// Tree size of the receipt's checkpoint.
    pub size: u64,
    /// The receipt's entry, proof and checkpoint, when the committer had them at hand (a new
    /// entry with the indexes in the store): the handler then reads nothing.
    pub parts: Option<crate::ledger::ReceiptParts>,
}

/// The answer a handler waits for (the handler then builds and signs the receipt itself, off
/// the committer thread).
pub type Reply = oneshot::Sender<Result<Committed, Problem>>;

/// The answer to a ledger event.
pub type EventReply = oneshot::Sender<Result<EventAck, Problem>>;

/// Where a ledger event landed: its index, the signed checkpoint covering it and the inclusion
/// proof under that checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventAck {
    /// Ledger index.
    pub index: u64,
    /// Signed checkpoint (signed-note text).
    pub checkpoint: String,
    /// Inclusion proof of the entry under the checkpoint.
    pub inclusion_proof: Vec<datadonor_schemas::receipt::HexHash>,
}

/// Work for the committer.
pub enum Job {
    /// A ledger event from analytics (`query_run`, `erasure_done`), already checked.
    Event(Box<LedgerEntry>, EventReply),
    /// A validated donation.
    Donation(Box<ValidatedDonation>, Reply),
    /// A validated withdrawal.
    Withdrawal(Box<ValidatedWithdrawal>, Reply),
    /// Finish the current group and stop; the sender is signalled when done.
    Stop(std::sync::mpsc::Sender<()>),
}

/// Everything the committer needs.
#[derive(Debug, Clone)]
pub struct CommitContext {
    /// Ledger state shared with readers.
    pub state: Arc<RwLock<LedgerState>>,
    /// Ledger key.
    pub signer: Arc<LedgerSigner>,
    /// Ledger backend.
    pub ledger: Arc<dyn LedgerStore>,
    /// Batch backend.
    pub batches: Arc<dyn BatchStore>,
    /// Vault public key.
    pub vault: VaultKey,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Set after an I/O failure.
    pub poisoned: Arc<AtomicBool>,
    /// Largest group.
    pub group_max: usize,
    /// Group window.
    pub window: Duration,
    /// Time between two sweeps of unnamed batches while serving (`None`: only at start).
    pub sweep_every: Option<Duration>,
}

/// The handle handlers submit jobs through.
#[derive(Debug, Clone)]
pub struct CommitHandle {
    tx: SyncSender<Job>,
    poisoned: Arc<AtomicBool>,
    state: Arc<RwLock<LedgerState>>,
    signer: Arc<LedgerSigner>,
}

impl CommitHandle {
    /// Submit a job, wait until it is durable and published, and build its signed receipt.
    pub async fn submit(&self, make: impl FnOnce(Reply) -> Job) -> Result<ReceiptBundle, Problem> {
        let c = self.submit_job(make).await?;
        let failed = |e: crate::ledger::LedgerError| {
            tracing::error!(error = %e, "building a receipt failed");
            Problem::Internal
        };
        let unsigned = match c.parts {
            Some(parts) => UnsignedReceipt::from_parts(c.index, parts).map_err(failed)?,
            None => {
                let st = self.state.read().map_err(|_| Problem::Internal)?;
                st.unsigned_receipt(&self.signer, c.index, c.size)
                    .map_err(failed)?
            }
        };
        // Signed outside the state lock: the committer's writes do not wait for it.
        Ok(unsigned.sign(&self.signer))
    }

    /// Hand a job to the committer (unless it is poisoned or its queue is full) and wait for
    /// its answer.
    async fn submit_job<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Problem>>) -> Job,
    ) -> Result<T, Problem> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Problem::Unavailable);
        }
        let (tx, rx) = oneshot::channel();
        match self.tx.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                return Err(Problem::Unavailable)
            }
        }
        rx.await.unwrap_or(Err(Problem::Unavailable))
    }

    /// Append a ledger event and wait until it is durable and published.
    pub async fn submit_event(&self, entry: LedgerEntry) -> Result<EventAck, Problem> {
        self.submit_job(|tx| Job::Event(Box::new(entry), tx)).await
    }

    /// Ask the committer to finish and wait until it has.
    pub fn stop(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Job::Stop(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Start the committer thread.
pub fn spawn(ctx: CommitContext, capacity: usize) -> std::io::Result<CommitHandle> {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let handle = CommitHandle {
        tx,
        poisoned: ctx.poisoned.clone(),
        state: ctx.state.clone(),
        signer: ctx.signer.clone(),
    };
    std::thread::Builder::new()
        .name("datadonor-committer".into())
        .spawn(move || run(ctx, rx))?;
    Ok(handle)
}

fn run(ctx: CommitContext, rx: Receiver<Job>) {
    let mut last_sweep = Instant::now();
    loop {
        let first = match ctx.sweep_every {
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
            Some(every) => {
                if last_sweep.elapsed() >= every {
                    sweep(&ctx);
                    last_sweep = Instant::now();
                }
                let left = every.saturating_sub(last_sweep.elapsed());
                match rx.recv_timeout(left) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let mut group = Vec::new();
        let mut stop = None;
        match first {
            Job::Stop(s) => stop = Some(s),
            j => group.push(j),
        }
        let deadline = Instant::now() + ctx.window;
        while stop.is_none() && group.len() < ctx.group_max {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Job::Stop(s)) => stop = Some(s),
                Ok(j) => group.push(j),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if !group.is_empty() {
            process_group(&ctx, group);
        }
        if let Some(s) = stop {
            // Release the stores (a database lock, an index file) before saying so: whoever
            // waits on the stop may reopen them at once.
            drop(ctx);
            let _ = s.send(());
            return;
        }
    }
}

/// Delete the batches no `DonationAccepted` entry names, between groups (so none of this
/// committer's own is in flight): what a sequencer that lost the ledger may still have written
/// after this one recovered. A failure is logged and retried at the next sweep.
fn sweep(ctx: &CommitContext) {
    if ctx.poisoned.load(Ordering::SeqCst) {
        return;
    }
    let listed = match ctx.batches.list() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "orphan sweep: listing the batches failed");
            return;
        }
    };
    let mut deleted = 0usize;
    for b in listed {
        let named = match ctx.state.read() {
            Ok(st) => st.references_batch(&b.study, &b.id_hex()),
            Err(_) => return,
        };
        match named {
            Ok(true) => {}
            Ok(false) => match ctx.batches.delete(&b) {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(error = %e, "orphan sweep: deleting a batch failed"),
            },
            Err(e) => {
                tracing::warn!(error = %e, "orphan sweep: reading the ledger's index failed");
                return;
            }
        }
    }
    if deleted > 0 {
        tracing::warn!(
            deleted,
            "orphan sweep removed batches no ledger entry names"
        );
        ctx.metrics.orphans_deleted(deleted);
    }
}

enum Outcome {
    /// A new entry at this index.
    New(u64),
    /// An existing entry (replay): index and receipt size (`None`: patched at group end).
    Existing(u64, Option<u64>),
    Fail(Problem),
}

#[derive(Debug, thiserror::Error)]
enum CommitError {
    #[error("state lock poisoned")]
    Lock,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

fn process_group(ctx: &CommitContext, group: Vec<Job>) {
    let mut replies: Vec<(Reply, Outcome)> = Vec::with_capacity(group.len());
    let mut events: Vec<(EventReply, u64)> = Vec::new();
    if ctx.poisoned.load(Ordering::SeqCst) {
        for j in group {
            match j {
                Job::Donation(_, r) | Job::Withdrawal(_, r) => {
                    let _ = r.send(Err(Problem::Unavailable));
                }
                Job::Event(_, r) => {
                    let _ = r.send(Err(Problem::Unavailable));
                }
                Job::Stop(_) => {}
            }
        }
        return;
    }
    let result = commit(ctx, group, &mut replies, &mut events);
    // With the indexes in the store, the group's receipts are made from what it kept in memory
    // (its entries and the tree's nodes), so no handler reads the store for them.
    let mut parts = std::collections::HashMap::new();
    if result.is_ok() {
        if let Ok(mut st) = ctx.state.write() {
            if st.is_indexed() {
                let new: Vec<u64> = replies
                    .iter()
                    .filter_map(|(_, o)| match o {
                        Outcome::New(i) => Some(*i),
                        _ => None,
                    })
                    .chain(events.iter().map(|(_, i)| *i))
                    .collect();
                let got = st.take_group_receipts(&new);
                parts.extend(new.into_iter().zip(got).filter_map(|(i, p)| Some((i, p?))));
            }
        }
    }
    let state = ctx.state.read();
    match (result, state) {
        (Ok(()), Ok(st)) => {
            let published = st.published_size();
            for (reply, outcome) in replies {
                let answer = match outcome {
                    Outcome::Fail(p) => Err(p),
                    Outcome::New(index) => Ok(Committed {
                        index,
                        size: published,
                        parts: parts.remove(&index),
                    }),
                    Outcome::Existing(index, None) => Ok(Committed {
                        index,
                        size: published,
                        parts: None,
                    }),
                    Outcome::Existing(index, Some(size)) => Ok(Committed {
                        index,
                        size,
                        parts: None,
                    }),
                };
                let _ = reply.send(answer);
            }
            let size = st.published_size();
            for (reply, index) in events {
                let proof = match parts.remove(&index) {
                    Some(p) => Ok(p.proof),
                    None => st.inclusion_proof(index, size),
                };
                let answer = proof
                    .map(|proof| EventAck {
                        index,
                        checkpoint: st.published_note().to_string(),
                        inclusion_proof: proof
                            .iter()
                            .map(|h| datadonor_schemas::receipt::HexHash(h.0))
                            .collect(),
                    })
                    .map_err(|_| Problem::Internal);
                let _ = reply.send(answer);
            }
        }
        (result, _) => {
            if let Err(e) = result {
                tracing::error!(error = %e, "commit failed; refusing further writes until restart");
            }
            ctx.poisoned.store(true, Ordering::SeqCst);
            for (reply, outcome) in replies {
                let answer = match outcome {
                    Outcome::Fail(p) => Err(p),
                    _ => Err(Problem::Internal),
                };
                let _ = reply.send(answer);
            }
            for (reply, _) in events {
                let _ = reply.send(Err(Problem::Internal));
            }
        }
    }
}

fn commit(
    ctx: &CommitContext,
    group: Vec<Job>,
    replies: &mut Vec<(Reply, Outcome)>,
    events: &mut Vec<(EventReply, u64)>,
) -> Result<(), CommitError> {
    let now = ctx.clock.now();
    let mut rows: BTreeMap<StudyId, (BatchRef, Vec<RecordBatch>, arrow::datatypes::SchemaRef)> =
        BTreeMap::new();
    let mut new_entries: Vec<Vec<u8>> = Vec::new();
    let mut patch_donations = Vec::new();
    let mut patch_withdrawals = Vec::new();
    // With the indexes in the store, one read answers every key the group's decisions need.
    let found = match ctx.ledger.as_indexed() {
        Some(idx) => Some(idx.lookup(&lookup_of(&group))?),
        None => None,
    };
    {
        let mut st = ctx.state.write().map_err(|_| CommitError::Lock)?;
        if let Some(found) = found {
            st.load(found);
        }
        for job in group {
            match job {
                Job::Donation(d, reply) => {
                    let outcome = decide_donation(&mut st, &d, now, &mut rows, &mut new_entries);
                    if let Outcome::New(_) = outcome {
                        patch_donations.push(d.idempotency_key);
                    }
                    replies.push((reply, outcome));
                }
                Job::Withdrawal(w, reply) => {
                    let outcome = decide_withdrawal(&mut st, &w, now, &mut new_entries);
                    if let Outcome::New(_) = outcome {
                        patch_withdrawals.push(w.sha256);
                    }
                    replies.push((reply, outcome));
                }
                Job::Event(entry, reply) => {
                    let index = push(&mut st, &entry, &mut new_entries);
                    events.push((reply, index));
                }
                Job::Stop(s) => {
                    let _ = s.send(());
                }
            }
        }
    }
    if new_entries.is_empty() {
        return Ok(());
    }
    for (study, (bref, batches, schema)) in &rows {
        let parquet = rows_to_parquet(schema, batches)?;
        let sealed = seal_batch(
            study.as_str(),
            bref.batch_id,
            now,
            &ctx.vault,
            parquet.as_slice(),
        )?;
        drop(parquet);
        ctx.batches.put(bref, &sealed)?;
        ctx.metrics.batch_flushed();
    }
    drop(rows);
    ctx.ledger.append(&new_entries)?;
    let mut st = ctx.state.write().map_err(|_| CommitError::Lock)?;
    let size = st.size();
    st.set_receipt_sizes(&patch_donations, &patch_withdrawals, size);
    st.publish(&ctx.signer)?;
    ctx.metrics.ledger_size(size);
    Ok(())
}

/// The keys a group's decisions read: idempotency keys, consent records and consents of its
/// donations; signed-withdrawal hashes and consents of its withdrawals.
fn lookup_of(group: &[Job]) -> crate::store::Lookup {
    let mut q = crate::store::Lookup::default();
    for job in group {
        match job {
            Job::Donation(d, _) => {
                let m = &d.manifest.body;
                let study = d.study.definition.id.clone();
                q.donations.push(d.idempotency_key);
                q.consent_records.push((study.clone(), m.record_id));
                q.consents.push((study, m.pseudonym));
            }
            Job::Withdrawal(w, _) => {
                let b = &w.withdrawal.body;
                q.withdrawals.push(w.sha256);
                q.consents.push((b.study_id.clone(), b.pseudonym));
            }
            Job::Event(..) | Job::Stop(_) => {}
        }
    }
    q
}

fn push(st: &mut LedgerState, entry: &LedgerEntry, new_entries: &mut Vec<Vec<u8>>) -> u64 {
    let bytes = entry.to_bytes();
    new_entries.push(bytes.clone());
    st.push(entry, bytes, u64::MAX)
}

fn decide_donation(
    st: &mut LedgerState,
    d: &ValidatedDonation,
    now: i64,
    rows: &mut BTreeMap<StudyId, (BatchRef, Vec<RecordBatch>, arrow::datatypes::SchemaRef)>,
    new_entries: &mut Vec<Vec<u8>>,
) -> Outcome {
    if let Some(rec) = st.donation(&d.idempotency_key) {
        return if rec.envelope_sha256 == d.envelope_sha256 {
            Outcome::Existing(
                rec.ledger_index,
                (rec.receipt_size != u64::MAX).then_some(rec.receipt_size),
            )
        } else {
            Outcome::Fail(Problem::IdempotencyConflict)
        };
    }
    let m = &d.manifest.body;
    let study = &d.study.definition.id;
    let manifest_sha = d.manifest.digest();
    let batch_schema = d.study.batch_schema.clone();
    let sealed_rows = match with_consent_column(&batch_schema, &d.rows, &m.record_id) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("rows of a validated donation do not fit the batch schema: {e}");
            return Outcome::Fail(Problem::Internal);
        }
    };
    match st.consent_record(study, &m.record_id) {
        Some(h) if h != manifest_sha => return Outcome::Fail(Problem::ManifestMismatch),
        Some(_) => {
            if st
                .consent(study, &m.pseudonym)
                .is_some_and(|c| c.consent_record_id == m.record_id && c.withdrawn_at.is_some())
            {
                return Outcome::Fail(Problem::AlreadyWithdrawn);
            }
        }
        None => {
            let granted = LedgerEntry::consent_granted(m, manifest_sha, now);
            push(st, &granted, new_entries);
        }
    }
    let slot = rows.entry(study.clone()).or_insert_with(|| {
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        (
            BatchRef {
                study: study.as_str().to_string(),
                batch_id: id,
            },
            Vec::new(),
            batch_schema,
        )
    });
    slot.1.push(sealed_rows);
    let accepted = LedgerEntry::DonationAccepted {
        time: now,
        study_id: study.clone(),
        pseudonym: m.pseudonym,
        consent_record_id: m.record_id,
        idempotency_key: d.idempotency_key,
        envelope_sha256: d.envelope_sha256,
        rows: u32::try_from(d.rows.num_rows()).unwrap_or(u32::MAX),
        batch_id: slot.0.id_hex(),
    };
    Outcome::New(push(st, &accepted, new_entries))
}

/// The donation's rows with the consent-record column appended (every row: `record_id` as 32
/// lowercase hex digits), in the study's batch schema.
fn with_consent_column(
    schema: &arrow::datatypes::SchemaRef,
    rows: &RecordBatch,
    record_id: &[u8; 16],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let hex = hex::encode(record_id);
    let consent = arrow::array::StringArray::from_iter_values(std::iter::repeat_n(
        hex.as_str(),
        rows.num_rows(),
    ));
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(consent));
    RecordBatch::try_new(schema.clone(), columns)
}

fn decide_withdrawal(
    st: &mut LedgerState,
    w: &ValidatedWithdrawal,
    now: i64,
    new_entries: &mut Vec<Vec<u8>>,
) -> Outcome {
    if let Some(rec) = st.withdrawal(&w.sha256) {
        return Outcome::Existing(
            rec.ledger_index,
            (rec.receipt_size != u64::MAX).then_some(rec.receipt_size),
        );
    }
    let b = &w.withdrawal.body;
    let Some(c) = st.consent(&b.study_id, &b.pseudonym) else {
        return Outcome::Fail(Problem::UnknownConsent);
    };
    if c.consent_record_id != b.consent_record_id {
        return Outcome::Fail(Problem::UnknownConsent);
    }
    if c.donor_public_key != w.withdrawal.signer {
        return Outcome::Fail(Problem::WithdrawalKeyMismatch);
    }
    if c.withdrawn_at.is_some() {
        return Outcome::Fail(Problem::AlreadyWithdrawn);
    }
    let entry = LedgerEntry::ConsentWithdrawn {
        time: now,
        study_id: b.study_id.clone(),
        pseudonym: b.pseudonym,
        consent_record_id: b.consent_record_id,
        withdrawal_sha256: w.sha256,
    };
    Outcome::New(push(st, &entry, new_entries))
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Ledger entries recovered.
    pub entries: u64,
    /// Unacknowledged batch files deleted.
    pub orphan_batches_deleted: usize,
    /// Temporary files deleted.
    pub temporaries_deleted: usize,
}

/// Rebuild ledger state from the stores and delete what was never acknowledged.
///
/// With a store that keeps the indexes ([`LedgerStore::as_indexed`]), only the tree's right edge
/// is read, and each listed batch is looked up in the store's index of named batches.
pub fn recover(
    ledger: &Arc<dyn LedgerStore>,
    batches: &dyn BatchStore,
    signer: &LedgerSigner,
) -> Result<(LedgerState, RecoveryReport), crate::Error> {
    let state = if ledger.as_indexed().is_some() {
        LedgerState::recover_indexed(ledger.clone(), signer)?
    } else {
        LedgerState::recover(ledger.recover_records()?, signer)?
    };
    let mut report = RecoveryReport {
        entries: state.size(),
        temporaries_deleted: batches.clean_temporaries()?,
        ..Default::default()
    };
    for b in batches.list()? {
        if !state.references_batch(&b.study, &b.id_hex())? {
            batches.delete(&b)?;
            report.orphan_batches_deleted += 1;
        }
    }
    Ok((state, report))
}
