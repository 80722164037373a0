//! Compaction: rewrite a study's sealed batches without the rows of withdrawn consent records,
//! merge small batches, and log one `erasure_done` entry per erased (donor, consent record).
//!
//! Rows are matched to consent by record (the batch's `consent` column): the rows donated
//! under a withdrawn record are erased even when the donor has consented again since under
//! another record, whose rows are kept.
//!
//! Only the batches the ledger accounts for are read ([`crate::store::BatchStore::readable`]).
//! Every batch holding a row of a withdrawn record, and every batch smaller than a quarter of the
//! target size when there are at least two of them, is opened in memory, filtered, and its
//! remaining rows are re-sealed into new batches of at most `target_rows` rows under fresh data
//! keys ([`crate::sealed::seal_batch`]). The old files are replaced through the store's journal
//! ([`crate::store::BatchStore::replace`]) and only then is the erasure logged.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::study::{StudyId, CONSENT_COLUMN, DONOR_COLUMN};
use datadonor_schemas::time::UnixSeconds;
use polars::prelude::*;
use zeroize::Zeroizing;

use crate::ledger::{logged_at, LedgerIndex, LedgerSink};
use crate::sealed::{seal_batch, BatchError, BatchErrorKind};
use crate::store::{BatchFile, BatchStore};
use crate::vault::VaultKey;
use crate::AnalyticsError;

/// Compaction settings.
#[derive(Debug, Clone, Copy)]
pub struct CompactOptions {
    /// Rows per rewritten batch.
    pub target_rows: usize,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_rows: 1_000_000,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactionReport {
    /// Per erased (hex pseudonym, hex consent record): rows removed and the old batches they
    /// were in.
    pub erased: BTreeMap<(String, String), (u64, Vec<String>)>,
    /// Old batch files removed.
    pub removed: Vec<PathBuf>,
    /// New batch files written.
    pub written: Vec<PathBuf>,
    /// Rows carried over into the new batches.
    pub rows_kept: u64,
    /// Ledger entries appended.
    pub entries_logged: u64,
}

fn parquet_bytes(df: &mut DataFrame) -> Result<Zeroizing<Vec<u8>>, AnalyticsError> {
    let mut out = Zeroizing::new(Vec::new());
    ParquetWriter::new(&mut *out).finish(df)?;
    Ok(out)
}

/// Compact the study's batches in `store`.
pub fn compact(
    store: &BatchStore,
    study: &StudyId,
    vault: &VaultKey,
    ledger: &LedgerIndex,
    sink: &dyn LedgerSink,
    now: UnixSeconds,
    opts: CompactOptions,
) -> Result<CompactionReport, AnalyticsError> {
    let started = std::time::Instant::now();
    let pending = ledger.pending_erasures(study);
    let withdrawn: HashSet<[u8; 16]> = ledger
        .record_states(study)
        .into_iter()
        .filter(|(_, s)| s.withdrawn_at.is_some())
        .map(|(r, _)| r)
        .chain(pending.iter().map(|(_, r)| *r))
        .collect();
    let mut erase_hex: Vec<String> = withdrawn.iter().map(hex::encode).collect();
    erase_hex.sort_unstable();
    let erase_series = Series::new("erase".into(), erase_hex);
    let files = store.readable(study, ledger)?.files;
    let small = opts.target_rows / 4;
    let mut report = CompactionReport::default();
    // First pass: which batches hold rows of withdrawn records, and which are small.
    let mut plan: Vec<(&BatchFile, String, bool, usize)> = Vec::new();
    for (f, opened) in files.iter().zip(store.open_batches(files.clone(), vault)) {
        let (_, opened) = opened?;
        let df = read(
            &f.path,
            &opened.plaintext,
            Some(vec![DONOR_COLUMN.to_string(), CONSENT_COLUMN.to_string()]),
        )?;
        let hits = df
            .lazy()
            .filter(col(CONSENT_COLUMN).is_in(lit(erase_series.clone()).implode(false), false))
            .group_by([col(DONOR_COLUMN), col(CONSENT_COLUMN)])
            .agg([len().cast(DataType::UInt64).alias("n")])
            .collect()?;
        let donors = hits.column(DONOR_COLUMN)?.str()?;
        let records = hits.column(CONSENT_COLUMN)?.str()?;
        let counts = hits.column("n")?.u64()?;
        let id = f.header.batch_id_hex();
        for i in 0..hits.height() {
            if let (Some(d), Some(r), Some(n)) = (donors.get(i), records.get(i), counts.get(i)) {
                let e = report
                    .erased
                    .entry((d.to_string(), r.to_string()))
                    .or_default();
                e.0 += n;
                e.1.push(id.clone());
            }
        }
        let rows = read_rows(&f.path, &opened.plaintext)?;
        plan.push((f, id, hits.height() > 0, rows));
    }
    let smalls = plan.iter().filter(|p| p.3 < small).count();
    let rewrite: Vec<&(&BatchFile, String, bool, usize)> = plan
        .iter()
        .filter(|p| p.2 || (smalls >= 2 && p.3 < small))
        .collect();
    if !rewrite.is_empty() {
        let mut new_batches = Vec::new();
        let mut acc: Option<DataFrame> = None;
        for (f, _, _, _) in &rewrite {
            let opened = store.open_batch(f, vault)?;
            let df = read(&f.path, &opened.plaintext, None)?;
            let kept = df
                .lazy()
                .filter(
                    col(CONSENT_COLUMN)
                        .is_in(lit(erase_series.clone()).implode(false), false)
                        .not(),
                )
                .collect()?;
            report.rows_kept += kept.height() as u64;
            match &mut acc {
                Some(a) => {
                    a.vstack_mut_owned(kept)?;
                }
                None => acc = Some(kept),
            }
            while acc.as_ref().is_some_and(|a| a.height() >= opts.target_rows) {
                if let Some(a) = acc.take() {
                    let mut head = a.slice(0, opts.target_rows);
                    let rest = a.slice(opts.target_rows as i64, a.height());
                    new_batches.push(seal_frame(&mut head, study, now, vault)?);
                    acc = (rest.height() > 0).then_some(rest);
                }
            }
        }
        if let Some(mut a) = acc.take() {
            if a.height() > 0 {
                new_batches.push(seal_frame(&mut a, study, now, vault)?);
            }
        }
        let remove: Vec<PathBuf> = rewrite.iter().map(|p| p.0.path.clone()).collect();
        report.written = store.replace(&remove, &new_batches)?;
        report.removed = remove;
    }
    for (p, record) in pending {
        let record_hex = hex::encode(record);
        let mut rows = 0u64;
        let mut batches: Vec<String> = Vec::new();
        for ((_, r), (n, ids)) in &report.erased {
            if *r == record_hex {
                rows += n;
                for id in ids {
                    if !batches.contains(id) {
                        batches.push(id.clone());
                    }
                }
            }
        }
        sink.append(&LedgerEntry::ErasureDone {
            time: logged_at(now, started),
            study_id: study.clone(),
            pseudonym: p,
            consent_record_id: Some(record),
            rows_erased: rows,
            batches_rewritten: batches,
        })?;
        report.entries_logged += 1;
    }
    Ok(report)
}

fn read(
    path: &std::path::Path,
    bytes: &[u8],
    columns: Option<Vec<String>>,
) -> Result<DataFrame, AnalyticsError> {
    ParquetReader::new(std::io::Cursor::new(bytes))
        .with_columns(columns)
        .finish()
        .map_err(|e| BatchError::new(path, BatchErrorKind::Content(e.to_string())).into())
}

fn read_rows(path: &std::path::Path, bytes: &[u8]) -> Result<usize, AnalyticsError> {
    ParquetReader::new(std::io::Cursor::new(bytes))
        .num_rows()
        .map_err(|e| BatchError::new(path, BatchErrorKind::Content(e.to_string())).into())
}

fn seal_frame(
    df: &mut DataFrame,
    study: &StudyId,
    now: UnixSeconds,
    vault: &VaultKey,
) -> Result<(datadonor_schemas::batch::BatchHeader, Vec<u8>), AnalyticsError> {
    let bytes = parquet_bytes(df)?;
    Ok(seal_batch(&bytes, study, now, &vault.public())?)
}
