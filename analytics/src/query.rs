//! One approved query run, end to end: check the spec and its approval, fold consent from the
//! ledger, aggregate the sealed batches, apply disclosure control, and log the run.
//!
//! The order matters and is fixed here: nothing is decrypted before the spec validates and the
//! approval checks out (with the runs already logged under it counted from the ledger), and
//! nothing is returned before the `query_run` entry has been appended.

use polars::prelude::{ParquetReader, SerReader};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use datadonor_schemas::ledger::LedgerEntry;
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::{
    check_approval, spec_key_line, Measure, MeasureOp, QueryApproval, QueryError, QuerySpec,
};
use datadonor_schemas::signing::{Context, PublicKey, Signed, SignedObject};
use datadonor_schemas::study::StudyDefinition;
use datadonor_schemas::time::UnixSeconds;

use crate::disclosure::{self, CellKey, Suppression};
use crate::engine::{AggregateTable, CellDonorCube, QueryEngine};
use crate::ledger::{logged_at, Appended, LedgerIndex, LedgerSink};
use crate::store::BatchStore;
use crate::vault::VaultKey;
use crate::AnalyticsError;

/// Everything a run is judged by.
#[derive(Debug, Clone, Copy)]
pub struct QueryInputs<'a> {
    /// The researcher's spec.
    pub spec: &'a QuerySpec,
    /// The steward's signed approval.
    pub approval: &'a SignedObject,
    /// The study (signature already checked by the caller, see [`open_study`]).
    pub study: &'a StudyDefinition,
    /// Trusted approver (steward) keys.
    pub approvers: &'a [PublicKey],
    /// The time of the run.
    pub now: UnixSeconds,
}

/// One row of the published table.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRow {
    /// Cell key (`None` = total).
    pub key: CellKey,
    /// One value per column of [`ResultTable::measures`]; `None` when suppressed or empty.
    pub values: Vec<Option<f64>>,
    /// Per measure: why it is suppressed.
    pub suppressed: Vec<Option<Suppression>>,
    /// Cell-level suppression (all measures suppressed).
    pub cell: Option<Suppression>,
}

/// The published table: disclosure control applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultTable {
    /// Title from the spec.
    pub title: String,
    /// Effective k.
    pub k: u32,
    /// Dimension names.
    pub dimensions: Vec<String>,
    /// Measures (a `donors` measure first when the spec has none).
    pub measures: Vec<Measure>,
    /// Rows (cells).
    pub rows: Vec<ResultRow>,
}

impl ResultTable {
    /// Column names of the measures.
    pub fn measure_names(&self) -> Vec<String> {
        self.measures.iter().map(Measure::column_name).collect()
    }
    /// Cells published (not suppressed as a whole).
    pub fn cells_published(&self) -> u64 {
        self.rows.iter().filter(|r| r.cell.is_none()).count() as u64
    }
    /// Cells suppressed as a whole.
    pub fn cells_suppressed(&self) -> u64 {
        self.rows.iter().filter(|r| r.cell.is_some()).count() as u64
    }
}

/// A finished run.
#[derive(Debug, Clone)]
pub struct QueryOutcome {
    /// The published table.
    pub table: ResultTable,
    /// The ledger entry logged.
    pub entry: LedgerEntry,
    /// Where it was logged.
    pub appended: Appended,
}

/// Open a signed study definition and check that a trusted steward signed it.
pub fn open_study(
    bytes: &[u8],
    approvers: &[PublicKey],
) -> Result<StudyDefinition, AnalyticsError> {
    let obj = SignedObject::from_bytes(bytes)
        .map_err(|e| AnalyticsError::Refused(format!("study: {e}")))?;
    let signed: Signed<StudyDefinition> = obj
        .open(Context::StudyDefinition, "study definition")
        .map_err(|e| AnalyticsError::Refused(format!("study: {e}")))?;
    if !approvers.contains(&signed.signer) {
        return Err(AnalyticsError::Refused(
            "study is not signed by a trusted steward key".into(),
        ));
    }
    signed
        .body
        .validate()
        .map_err(|e| AnalyticsError::Refused(format!("study: {e}")))?;
    Ok(signed.body)
}

/// Validate the spec against the study and check the approval, counting the runs already
/// logged under it.
pub fn authorize(
    inputs: &QueryInputs<'_>,
    ledger: &LedgerIndex,
) -> Result<Signed<QueryApproval>, AnalyticsError> {
    inputs
        .spec
        .validate(inputs.study)
        .map_err(|e| AnalyticsError::Refused(e.to_string()))?;
    let runs = ledger.runs_of(&inputs.approval.payload_digest());
    let signed = check_approval(
        inputs.approval,
        inputs.spec,
        inputs.approvers,
        inputs.now,
        runs,
    )
    .map_err(|e| AnalyticsError::Refused(e.to_string()))?;
    if signed.body.study_id != inputs.study.id {
        return Err(AnalyticsError::Refused(
            "approval is for another study".into(),
        ));
    }
    Ok(signed)
}

/// Rows per polars plan: batches are opened into groups of about this many rows (from each
/// batch's Parquet footer) and each group is aggregated by one plan. Fewer, larger plans
/// amortise polars' per-plan work; the bound keeps the decoded columns of a group (about
/// 150 bytes a row for the example query, a copy of them for the consent join) small whatever
/// the store holds.
pub const GROUP_ROWS: usize = 2_000_000;

/// Aggregate every batch of the study in the store. Batches are opened on a second thread into
/// groups of about [`GROUP_ROWS`] rows, one group ahead of the engine, so decryption overlaps
/// with polars; at most two groups' plaintext is in memory at any time.
pub fn aggregate_store(
    engine: QueryEngine,
    store: &BatchStore,
    ledger: &LedgerIndex,
    study: &StudyDefinition,
    vault: &VaultKey,
) -> Result<AggregateTable, AnalyticsError> {
    aggregate_store_in_groups(engine, store, ledger, study, vault, GROUP_ROWS)
}

/// [`aggregate_store`] with groups of about `group_rows` rows (1: a plan per batch).
pub fn aggregate_store_in_groups(
    mut engine: QueryEngine,
    store: &BatchStore,
    ledger: &LedgerIndex,
    study: &StudyDefinition,
    vault: &VaultKey,
    group_rows: usize,
) -> Result<AggregateTable, AnalyticsError> {
    feed_store(&mut engine, store, ledger, study, vault, group_rows)?;
    engine.finish()
}

/// Aggregate every batch of the study into the exact cell–donor partials, for the
/// differentially private release (the query service).
pub fn aggregate_store_cube(
    mut engine: QueryEngine,
    store: &BatchStore,
    ledger: &LedgerIndex,
    study: &StudyDefinition,
    vault: &VaultKey,
) -> Result<CellDonorCube, AnalyticsError> {
    feed_store(&mut engine, store, ledger, study, vault, GROUP_ROWS)?;
    engine.finish_cube()
}

/// Feed every batch of the study the ledger accounts for ([`BatchStore::readable`]) to the
/// engine, in groups of about `group_rows` rows.
fn feed_store(
    engine: &mut QueryEngine,
    store: &BatchStore,
    ledger: &LedgerIndex,
    study: &StudyDefinition,
    vault: &VaultKey,
    group_rows: usize,
) -> Result<(), AnalyticsError> {
    let files = store.readable(&study.id, ledger)?.files;
    std::thread::scope(|s| {
        // A rendezvous channel: the opener holds at most one finished group while the engine works
        // on another, so at most two groups of plaintext exist at once.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<_>, AnalyticsError>>(0);
        s.spawn(move || {
            let mut group = Vec::new();
            let mut rows = 0usize;
            for opened in store.open_batches(files, vault) {
                match opened {
                    Ok((f, o)) => {
                        // An unreadable footer counts as one row here; the engine's footer check
                        // names the batch.
                        rows += ParquetReader::new(std::io::Cursor::new(o.plaintext.as_slice()))
                            .num_rows()
                            .map_or(1, |n| n.max(1));
                        group.push((f.path.clone(), o.plaintext));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                        return;
                    }
                }
                if rows >= group_rows {
                    rows = 0;
                    if tx.send(Ok(std::mem::take(&mut group))).is_err() {
                        return;
                    }
                }
            }
            if !group.is_empty() {
                let _ = tx.send(Ok(group));
            }
        });
        for group in rx {
            engine.add_parquet_group(group?)?;
        }
        Ok(())
    })
}

/// Apply disclosure control to an aggregated table.
pub fn apply_disclosure(
    agg: &AggregateTable,
    spec: &QuerySpec,
    k: u32,
) -> Result<ResultTable, AnalyticsError> {
    let keys: Vec<CellKey> = agg.cells.iter().map(|c| c.key.clone()).collect();
    let donors: Vec<Vec<u32>> = agg.cells.iter().map(|c| c.donors.clone()).collect();
    let cell_status =
        disclosure::suppress(&keys, &donors, k, spec.totals, &[], Suppression::FewDonors);
    disclosure::check(&keys, &donors, k, spec.totals, &cell_status)
        .map_err(AnalyticsError::Engine)?;
    let mut field_status = Vec::new();
    for f in 0..agg.fields.len() {
        let fd: Vec<Vec<u32>> = agg
            .cells
            .iter()
            .map(|c| c.field_donors[f].clone())
            .collect();
        let st = disclosure::suppress(
            &keys,
            &fd,
            k,
            spec.totals,
            &cell_status,
            Suppression::FewValues,
        );
        disclosure::check(&keys, &fd, k, spec.totals, &st).map_err(AnalyticsError::Engine)?;
        field_status.push(st);
    }
    let has_donors = agg.measures.iter().any(|m| m.op == MeasureOp::Donors);
    let mut measures = Vec::new();
    if !has_donors {
        measures.push(Measure {
            op: MeasureOp::Donors,
            field: None,
            q: None,
        });
    }
    measures.extend(agg.measures.iter().cloned());
    let rows = agg
        .cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut values = Vec::new();
            let mut suppressed = Vec::new();
            if !has_donors {
                values.push(Some(c.donors.len() as f64));
                suppressed.push(cell_status[i]);
            }
            for (m, v) in agg.measures.iter().zip(&c.values) {
                let st = match m
                    .field
                    .as_ref()
                    .and_then(|n| agg.fields.iter().position(|f| f == n))
                {
                    Some(f) => field_status[f][i],
                    None => cell_status[i],
                };
                values.push(v.filter(|_| st.is_none()));
                suppressed.push(st);
            }
            for (v, st) in values.iter_mut().zip(&suppressed) {
                if st.is_some() {
                    *v = None;
                }
            }
            ResultRow {
                key: c.key.clone(),
                values,
                suppressed,
                cell: cell_status[i],
            }
        })
        .collect();
    Ok(ResultTable {
        title: spec.title.clone(),
        k,
        dimensions: agg.dimensions.clone(),
        measures,
        rows,
    })
}

/// How many donors the allowed consent records belong to (a donor may hold several records):
/// the `donors_considered` a run logs.
pub fn donors_of(records: &HashMap<[u8; 16], Pseudonym>) -> u64 {
    records.values().collect::<HashSet<_>>().len() as u64
}

/// The consent records that cover the spec's purpose now, with the pseudonym each was granted
/// to: the rows donated under them are the ones a run counts, each under that donor.
pub fn allowed_records(
    inputs: &QueryInputs<'_>,
    ledger: &LedgerIndex,
) -> HashMap<[u8; 16], Pseudonym> {
    ledger.allowed_record_donors(&inputs.study.id, &inputs.spec.purpose, inputs.now)
}

/// Run an approved query over the store and log it. Nothing is returned unless the run was
/// logged.
pub fn run_query(
    inputs: &QueryInputs<'_>,
    ledger: &LedgerIndex,
    store: &BatchStore,
    vault: &VaultKey,
    sink: &dyn LedgerSink,
) -> Result<QueryOutcome, AnalyticsError> {
    let started = std::time::Instant::now();
    authorize(inputs, ledger)?;
    let records = allowed_records(inputs, ledger);
    let engine = QueryEngine::new(inputs.spec, inputs.study, &records)?;
    let agg = aggregate_store(engine, store, ledger, inputs.study, vault)?;
    let k = inputs.spec.effective_k(inputs.study);
    let table = apply_disclosure(&agg, inputs.spec, k)?;
    let entry = LedgerEntry::QueryRun {
        time: logged_at(inputs.now, started),
        study_id: inputs.study.id.clone(),
        query_sha256: inputs.spec.hash(),
        approval_sha256: inputs.approval.payload_digest(),
        researcher: inputs.spec.researcher.clone(),
        purpose: inputs.spec.purpose.clone(),
        donors_considered: donors_of(&records),
        cells_published: table.cells_published(),
        cells_suppressed: table.cells_suppressed(),
        privacy: None,
    };
    let appended = sink.append(&entry)?;
    Ok(QueryOutcome {
        table,
        entry,
        appended,
    })
}

/// A query spec read from a file, with its text, so that errors can name the line.
#[derive(Debug, Clone)]
pub struct SpecFile {
    /// The parsed spec.
    pub spec: QuerySpec,
    /// Where it was read from.
    pub path: PathBuf,
    text: String,
}

impl SpecFile {
    /// Check the spec against its study; a refusal names the file, the line and the key, as
    /// `q.toml:7: group_by[1]: "hba1c" is a measure; only dimensions can be grouped by`.
    pub fn validate(&self, study: &StudyDefinition) -> Result<(), AnalyticsError> {
        self.spec.check(study).map_err(|e| {
            // The reason itself, without the variant's "refused: " or "invalid query: ".
            let what = match &e.error {
                QueryError::Refused(m) | QueryError::Invalid(m) => m.clone(),
                other => other.to_string(),
            };
            // "filter: ..." under the key `filter` says it once.
            let name = e.key.split('[').next().unwrap_or_default();
            let what = what.strip_prefix(&format!("{name}: ")).unwrap_or(&what);
            let file = self.path.display();
            AnalyticsError::Refused(match spec_key_line(&self.text, &e.key) {
                Some(line) => format!("{file}:{line}: {}: {what}", e.key),
                None => format!("{file}: {}: {what}", e.key),
            })
        })
    }
}

/// Read a spec file; errors name the file and carry the TOML line, column and key.
pub fn load_spec(path: &Path) -> Result<SpecFile, AnalyticsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AnalyticsError::Refused(format!("{}: {e}", path.display())))?;
    let spec = QuerySpec::from_toml(&text).map_err(|e| {
        AnalyticsError::Refused(format!(
            "{}: {}",
            path.display(),
            e.to_string().replace('\n', " ")
        ))
    })?;
    Ok(SpecFile {
        spec,
        path: path.to_path_buf(),
        text,
    })
}
