//! The query engine: polars over opened batches, a group of batches per plan, with mergeable
//! partials.
//!
//! # Memory strategy
//!
//! Batches are opened in groups of a bounded number of rows (the caller opens the next group
//! while polars works on the current one), so at most a couple of groups' plaintext, and one
//! group's decoded columns, are in memory. Each group is one polars plan: a Parquet scan over
//! the in-memory buffers (no copy, no plaintext on disk; the buffers are zeroized when polars
//! drops them), the spec's filter, the consent filter as an inner join on the allowed records
//! (which also gives each row its donor's dense `u32` id, so no 64-hex pseudonym is decoded,
//! hashed or compared), and a `group_by` that reduces it to *partial aggregates* that merge
//! exactly:
//!
//! * the **cell–donor partial**: one row per (cell, donor) with the donor's row count and, per
//!   measured field, the count of values, their sum and their sum of squares (shifted by the
//!   middle of the field's range for numerical stability). Donor counts (`n_unique(donor)`),
//!   row counts, sums, means, standard deviations, and every `donor_mean` measure (including
//!   quantiles of donor means) follow exactly from it, as do the cells' donor sets that
//!   disclosure control needs, and every margin (a margin is the same partial re-grouped
//!   without one dimension). Its size is bounded by donors × cells, not by rows.
//! * for quantiles over all rows, a **value histogram** per (cell, bin): values are binned to
//!   1/[`QUANTILE_BINS`] of the field's declared range, so its size is bounded by
//!   cells × `QUANTILE_BINS` whatever the number of rows. The quantile is then exact over the
//!   binned values (for HbA1c, 3–20 %, the bin width is 0.00026 %).
//!
//! Each group's partial is merged into an accumulator as it arrives: cells are interned on
//! integer codes of their dimension values and each (cell, donor) — or (cell, bin) — has a
//! slot of sums, so a merge costs one hash lookup per partial row and the memory is bounded by
//! the partial sizes above, whatever the number of rows. Margins are folded from the slots at
//! the end on integer cell codes (a counting sort by (margin cell, donor) per margin). A single
//! polars plan over all batches would need every batch's decoded columns in memory at once
//! (polars' in-memory scan takes all buffers up front), which is what the groups avoid; a plan
//! per batch would pay polars' per-plan work and a partial per batch, which is what the groups
//! amortise.
//!
//! Rows are matched to consent by record: a row counts only when the consent record in its
//! `consent` column (the record it was donated under, added by the intake when it sealed) is
//! among the allowed records of the run, and it counts under the pseudonym that record was
//! granted to; a row of a withdrawn record is left out even when its donor has consented
//! again since. Rows without a consent record match none and are never
//! counted; a batch without the `consent` column is an error naming the batch, as is a
//! dimension value that is null in a counted row.
//!
//! Quantiles use linear interpolation between closest ranks (Hyndman–Fan type 7, polars'
//! `QuantileMethod::Linear`).

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::query::{
    CmpOp, Contribution, Filter, Literal, Measure, MeasureOp, QuerySpec, MAX_GROUP_BY,
};
use datadonor_schemas::study::{
    FieldType, StudyDefinition, CONSENT_COLUMN, DONOR_COLUMN, PERIOD_COLUMN,
};
use polars::prelude::*;
use polars_buffer::Buffer;
use zeroize::Zeroizing;

use crate::disclosure::CellKey;
use crate::sealed::{BatchError, BatchErrorKind};
use crate::AnalyticsError;

/// Bins of the value histogram of all-rows quantiles.
pub const QUANTILE_BINS: f64 = 65536.0;

const ROWS: &str = "__rows";
/// The engine-local donor id (`u32`) of a row: the dense id of the pseudonym its consent record
/// was granted to.
const DONOR_ID: &str = "__donor";
const BIN: &str = "__bin";
const COUNT: &str = "__count";

fn n_col(f: &str) -> String {
    format!("__n_{f}")
}
fn s_col(f: &str) -> String {
    format!("__s_{f}")
}
fn ss_col(f: &str) -> String {
    format!("__ss_{f}")
}

/// One aggregated cell, before disclosure control.
#[derive(Debug, Clone, PartialEq)]
pub struct AggCell {
    /// The key (`None` = total over that dimension).
    pub key: CellKey,
    /// Distinct donors (engine-local ids), sorted.
    pub donors: Vec<u32>,
    /// Per measured field (in [`AggregateTable::fields`] order), donors with a value.
    pub field_donors: Vec<Vec<u32>>,
    /// Rows.
    pub rows: u64,
    /// One value per measure of the spec.
    pub values: Vec<Option<f64>>,
}

/// The aggregated table, before disclosure control.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateTable {
    /// Dimension names.
    pub dimensions: Vec<String>,
    /// Measures, as in the spec.
    pub measures: Vec<Measure>,
    /// Fields measured, in first-use order.
    pub fields: Vec<String>,
    /// Cells, sorted by key (totals after values).
    pub cells: Vec<AggCell>,
    /// Rows read from the batches, before any filter.
    pub rows_scanned: u64,
    /// Batches read.
    pub batches: u64,
}

#[derive(Debug, Clone)]
struct FieldInfo {
    name: String,
    min: f64,
    max: f64,
    shift: f64,
}

/// Plaintext Parquet owned by a polars buffer: zeroized when polars drops its last reference.
struct ZeroizingBytes(Zeroizing<Vec<u8>>);

impl AsRef<[u8]> for ZeroizingBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Partial aggregates of the groups seen so far, merged as each group's partial arrives: one
/// slot per (cell, inner key) — the inner key is the donor id for the cell–donor partial, the
/// value's bin for a quantile histogram — holding summed integer and float columns. Cells are
/// interned on integer codes of their dimension values, so merging a group's partial costs a
/// hash lookup per partial row, and folding cells into margins never compares a string.
struct Accumulator {
    /// Per dimension: value → code, and code → value.
    codes: Vec<PlHashMap<String, u32>>,
    values: Vec<Vec<String>>,
    /// Cell (dimension codes) → cell id, and back.
    cell_ids: PlHashMap<[u32; MAX_DIMENSIONS], u32>,
    cells: Vec<[u32; MAX_DIMENSIONS]>,
    /// (cell id, inner key) → slot.
    slots: PlHashMap<(u32, i64), u32>,
    slot_cell: Vec<u32>,
    slot_inner: Vec<i64>,
    /// The summed columns, row-major (a slot's sums are adjacent in memory): `ni` integers and
    /// `nf` floats per slot.
    ni: usize,
    nf: usize,
    ints: Vec<u64>,
    floats: Vec<f64>,
}

impl Accumulator {
    fn new(dimensions: usize, ints: usize, floats: usize) -> Self {
        Self {
            codes: vec![PlHashMap::default(); dimensions],
            values: vec![Vec::new(); dimensions],
            cell_ids: PlHashMap::default(),
            cells: Vec::new(),
            slots: PlHashMap::default(),
            slot_cell: Vec::new(),
            slot_inner: Vec::new(),
            ni: ints,
            nf: floats,
            ints: Vec::new(),
            floats: Vec::new(),
        }
    }

    /// Merge a group's partial frame: the dimension columns (strings without nulls, checked by
    /// the caller), the `inner` key column and the summed columns, in the accumulator's order.
    fn add(
        &mut self,
        df: &DataFrame,
        group_by: &[String],
        inner: &str,
        int_cols: &[String],
        float_cols: &[String],
    ) -> Result<(), AnalyticsError> {
        let h = df.height();
        let mut row_cells = vec![[0u32; MAX_DIMENSIONS]; h];
        for (j, g) in group_by.iter().enumerate() {
            let ca = df.column(g)?.str()?;
            let (codes, values) = (&mut self.codes[j], &mut self.values[j]);
            for (row, v) in row_cells.iter_mut().zip(ca.iter()) {
                let v = v.ok_or_else(|| {
                    AnalyticsError::Engine(format!("column `{g}` has null values"))
                })?;
                row[j] = match codes.get(v) {
                    Some(c) => *c,
                    None => {
                        let c = values.len() as u32;
                        values.push(v.to_string());
                        codes.insert(v.to_string(), c);
                        c
                    }
                };
            }
        }
        let inner = column_values::<Int64Type>(&df.column(inner)?.cast(&DataType::Int64)?)?;
        if int_cols.len() != self.ni || float_cols.len() != self.nf {
            return Err(AnalyticsError::Engine(
                "partial columns do not match".into(),
            ));
        }
        let ints: Vec<Vec<u64>> = int_cols
            .iter()
            .map(|c| column_values::<UInt64Type>(df.column(c)?))
            .collect::<Result<_, _>>()?;
        let floats: Vec<Vec<f64>> = float_cols
            .iter()
            .map(|c| column_values::<Float64Type>(df.column(c)?))
            .collect::<Result<_, _>>()?;
        for (i, code) in row_cells.iter().enumerate() {
            let cells = &mut self.cells;
            let cell = *self.cell_ids.entry(*code).or_insert_with(|| {
                cells.push(*code);
                (cells.len() - 1) as u32
            });
            let next = self.slot_cell.len() as u32;
            let slot = *self.slots.entry((cell, inner[i])).or_insert(next) as usize;
            if slot == next as usize {
                self.slot_cell.push(cell);
                self.slot_inner.push(inner[i]);
                self.ints.extend(ints.iter().map(|c| c[i]));
                self.floats.extend(floats.iter().map(|c| c[i]));
            } else {
                let acc = &mut self.ints[slot * self.ni..(slot + 1) * self.ni];
                for (a, c) in acc.iter_mut().zip(&ints) {
                    *a += c[i];
                }
                let acc = &mut self.floats[slot * self.nf..(slot + 1) * self.nf];
                for (a, c) in acc.iter_mut().zip(&floats) {
                    *a += c[i];
                }
            }
        }
        Ok(())
    }

    /// The cells of `mask` (bit `j` keeps dimension `j`, the others are totals): their keys,
    /// and for every cell id the index of its masked cell among those keys.
    fn masked_cells(&self, mask: u32) -> (Vec<CellKey>, Vec<u32>) {
        let d = self.values.len();
        let mut ids: HashMap<[u32; MAX_DIMENSIONS], u32> = HashMap::new();
        let mut keys: Vec<CellKey> = Vec::new();
        let mut of_cell = Vec::with_capacity(self.cells.len());
        for code in &self.cells {
            let mut k = [u32::MAX; MAX_DIMENSIONS];
            for (j, slot) in k.iter_mut().enumerate().take(d) {
                if mask >> j & 1 == 1 {
                    *slot = code[j];
                }
            }
            let id = *ids.entry(k).or_insert_with(|| {
                keys.push(
                    (0..d)
                        .map(|j| {
                            (k[j] != u32::MAX)
                                .then(|| self.values[j].get(k[j] as usize).cloned())
                                .flatten()
                        })
                        .collect(),
                );
                (keys.len() - 1) as u32
            });
            of_cell.push(id);
        }
        (keys, of_cell)
    }
}

/// A query in progress: feed it batches, then [`QueryEngine::finish`].
pub struct QueryEngine {
    spec: QuerySpec,
    fields: Vec<FieldInfo>,
    quantile_fields: Vec<usize>,
    needed: Vec<(String, DataType)>,
    /// The allowed consent records (`consent`, 32 hex digits) with their donor's dense id.
    allowed: DataFrame,
    filter: Option<Expr>,
    cells: Accumulator,
    hists: Vec<Accumulator>,
    rows_scanned: u64,
    batches: u64,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QueryEngine(study {}, {} batches, {} allowed consent records)",
            self.spec.study,
            self.batches,
            self.allowed.height()
        )
    }
}

fn dtype_of(study: &StudyDefinition, name: &str) -> Option<DataType> {
    if name == DONOR_COLUMN || name == PERIOD_COLUMN || name == CONSENT_COLUMN {
        return Some(DataType::String);
    }
    study.field(name).map(|f| match f.field_type() {
        FieldType::Number { .. } => DataType::Float64,
        FieldType::Flag => DataType::Boolean,
        FieldType::Category(_) => DataType::String,
    })
}

fn filter_fields(f: &Filter, out: &mut Vec<String>) {
    match f {
        Filter::All(v) | Filter::Any(v) => v.iter().for_each(|g| filter_fields(g, out)),
        Filter::Not(g) => filter_fields(g, out),
        Filter::Cmp { field, .. } | Filter::In { field, .. } => {
            if !out.contains(field) {
                out.push(field.clone());
            }
        }
    }
}

/// The polars expression of a spec filter.
pub fn filter_expr(f: &Filter) -> Expr {
    match f {
        Filter::All(v) => v
            .iter()
            .map(filter_expr)
            .reduce(|a, b| a.and(b))
            .unwrap_or(lit(true)),
        Filter::Any(v) => v
            .iter()
            .map(filter_expr)
            .reduce(|a, b| a.or(b))
            .unwrap_or(lit(false)),
        Filter::Not(g) => filter_expr(g).not(),
        Filter::Cmp { field, op, value } => {
            let c = col(field.as_str());
            let v = match value {
                Literal::Bool(b) => lit(*b),
                Literal::Number(n) => lit(*n),
                Literal::Text(t) => lit(t.clone()),
            };
            match op {
                CmpOp::Lt => c.lt(v),
                CmpOp::Le => c.lt_eq(v),
                CmpOp::Gt => c.gt(v),
                CmpOp::Ge => c.gt_eq(v),
                CmpOp::Eq => c.eq(v),
                CmpOp::Ne => c.neq(v),
            }
        }
        Filter::In { field, values } => {
            let s = Series::new("values".into(), values.clone());
            col(field.as_str()).is_in(lit(s).implode(false), false)
        }
    }
}

impl QueryEngine {
    /// An engine for a validated spec, counting only rows donated under the `allowed`
    /// consent records (record id → the pseudonym the record was granted to, as the ledger
    /// says). A row counts under the donor of its consent record: donors are numbered densely
    /// (in pseudonym order) once per query, and the batches' 64-hex `donor` column is not read.
    pub fn new(
        spec: &QuerySpec,
        study: &StudyDefinition,
        allowed: &HashMap<[u8; 16], Pseudonym>,
    ) -> Result<Self, AnalyticsError> {
        spec.validate(study)
            .map_err(|e| AnalyticsError::Refused(e.to_string()))?;
        let mut fields: Vec<FieldInfo> = Vec::new();
        let mut quantile_fields = Vec::new();
        for m in &spec.measures {
            let Some(name) = &m.field else { continue };
            let idx = match fields.iter().position(|f| &f.name == name) {
                Some(i) => i,
                None => {
                    let (min, max) = match study.field(name).map(|f| f.field_type()) {
                        Some(FieldType::Number { min, max }) => (min, max),
                        _ => {
                            return Err(AnalyticsError::Refused(format!(
                                "{name:?} is not a numeric measure"
                            )))
                        }
                    };
                    fields.push(FieldInfo {
                        name: name.clone(),
                        min,
                        max,
                        shift: (min + max) / 2.0,
                    });
                    fields.len() - 1
                }
            };
            if m.op == MeasureOp::Quantile
                && spec.contribution == Contribution::AllRows
                && !quantile_fields.contains(&idx)
            {
                quantile_fields.push(idx);
            }
        }
        let mut names: Vec<String> = vec![CONSENT_COLUMN.to_string()];
        names.extend(spec.group_by.iter().cloned());
        if let Some(f) = &spec.filter {
            filter_fields(f, &mut names);
        }
        names.extend(fields.iter().map(|f| f.name.clone()));
        let mut needed: Vec<(String, DataType)> = Vec::new();
        for n in names {
            if needed.iter().any(|(m, _)| *m == n) {
                continue;
            }
            let dt = dtype_of(study, &n)
                .ok_or_else(|| AnalyticsError::Refused(format!("no field {n:?} in the study")))?;
            needed.push((n, dt));
        }
        let allowed = allowed_frame(allowed)?;
        let d = spec.group_by.len();
        let hists = quantile_fields
            .iter()
            .map(|_| Accumulator::new(d, 1, 0))
            .collect();
        let cells = Accumulator::new(d, 1 + fields.len(), 2 * fields.len());
        Ok(Self {
            spec: spec.clone(),
            fields,
            quantile_fields,
            needed,
            allowed,
            filter: spec.filter.as_ref().map(filter_expr),
            cells,
            hists,
            rows_scanned: 0,
            batches: 0,
        })
    }

    /// Columns a batch must provide, with their types.
    pub fn needed_columns(&self) -> &[(String, DataType)] {
        &self.needed
    }

    fn cell_keys(&self) -> Vec<String> {
        let mut k = self.spec.group_by.clone();
        k.push(DONOR_ID.to_string());
        k
    }

    /// Aggregate a group of opened batches (in-memory Parquet bytes, each labelled with its
    /// file for errors) in one polars plan.
    ///
    /// Each batch's footer is checked first (every needed column present with its type); the
    /// buffers are then handed to polars' Parquet scan without a copy and zeroized when polars
    /// drops its last reference.
    pub fn add_parquet_group(
        &mut self,
        batches: Vec<(PathBuf, Zeroizing<Vec<u8>>)>,
    ) -> Result<(), AnalyticsError> {
        if batches.is_empty() {
            return Ok(());
        }
        let mut files = Vec::with_capacity(batches.len());
        let mut buffers = Vec::with_capacity(batches.len());
        let mut rows = 0u64;
        for (file, parquet) in batches {
            rows += self.check_footer(&file, &parquet)?;
            buffers.push(Buffer::from_owner(ZeroizingBytes(parquet)));
            files.push(file);
        }
        let sources = ScanSources::Buffers(buffers.clone().into());
        let args = ScanArgsParquet {
            hive_options: HiveOptions {
                enabled: Some(false),
                ..Default::default()
            },
            ..Default::default()
        };
        let lf = LazyFrame::scan_parquet_sources(sources, args)?;
        if let Some(column) = self.add_frame(lf)? {
            // Name the batch: re-read the key column of each (the error path only).
            for (file, buf) in files.iter().zip(&buffers) {
                let df = ParquetReader::new(Cursor::new(buf.as_slice()))
                    .with_columns(Some(vec![column.clone()]))
                    .finish()
                    .map_err(|e| BatchError::new(file, BatchErrorKind::Content(e.to_string())))?;
                if df.column(&column).is_ok_and(|c| c.null_count() > 0) {
                    return Err(BatchError::new(
                        file,
                        BatchErrorKind::Content(format!("column `{column}` has null values")),
                    )
                    .into());
                }
            }
            return Err(AnalyticsError::Engine(format!(
                "column `{column}` has null values"
            )));
        }
        self.rows_scanned += rows;
        self.batches += files.len() as u64;
        Ok(())
    }

    /// Check a batch's footer against the needed columns; its row count.
    fn check_footer(&self, file: &Path, parquet: &[u8]) -> Result<u64, AnalyticsError> {
        let content = |m: String| BatchError::new(file, BatchErrorKind::Content(m));
        let columns: Vec<String> = self.needed.iter().map(|(n, _)| n.clone()).collect();
        let mut reader = ParquetReader::new(Cursor::new(parquet));
        let rows = reader.num_rows().map_err(|e| content(e.to_string()))?;
        let empty = reader
            .with_columns(Some(columns))
            .with_slice(Some((0, 0)))
            .finish()
            .map_err(|e| content(e.to_string()))?;
        for (name, dt) in &self.needed {
            let c = empty
                .column(name)
                .map_err(|_| content(format!("column `{name}` is missing")))?;
            if c.dtype() != dt {
                return Err(
                    content(format!("column `{name}` is {}, expected {dt}", c.dtype())).into(),
                );
            }
        }
        Ok(rows as u64)
    }

    /// Aggregate rows given as a lazy frame with the study's columns (no schema checks beyond
    /// polars' own; used for plaintext reference runs).
    pub fn add_lazy(&mut self, lf: LazyFrame) -> Result<(), AnalyticsError> {
        match self.add_frame(lf)? {
            Some(column) => Err(AnalyticsError::Engine(format!(
                "column `{column}` has null values"
            ))),
            None => {
                self.batches += 1;
                Ok(())
            }
        }
    }

    /// Aggregate one lazy frame into the partials: one polars plan (the cell partial and every
    /// histogram share the scan). `Some(column)` if a dimension column held a null, in which
    /// case nothing was added.
    fn add_frame(&mut self, lf: LazyFrame) -> Result<Option<String>, AnalyticsError> {
        let mut lf = lf;
        if let Some(f) = &self.filter {
            lf = lf.filter(f.clone());
        }
        // The consent filter and the donor's dense id in one step: an inner join on the
        // allowed records (a row of any other record, or of none, has no match).
        let mut lf = lf.join(
            self.allowed.clone().lazy(),
            [col(CONSENT_COLUMN)],
            [col(CONSENT_COLUMN)],
            JoinArgs::new(JoinType::Inner),
        );
        let casts: Vec<Expr> = self
            .spec
            .group_by
            .iter()
            .map(|d| col(d.as_str()).cast(DataType::String).alias(d.as_str()))
            .collect();
        if !casts.is_empty() {
            lf = lf.with_columns(casts);
        }
        let mut aggs = vec![len().cast(DataType::UInt64).alias(ROWS)];
        for f in &self.fields {
            let c = col(f.name.as_str());
            let d = c.clone() - lit(f.shift);
            aggs.push(
                c.clone()
                    .count()
                    .cast(DataType::UInt64)
                    .alias(n_col(&f.name)),
            );
            aggs.push(c.sum().alias(s_col(&f.name)));
            aggs.push((d.clone() * d).sum().alias(ss_col(&f.name)));
        }
        let keys: Vec<Expr> = self.cell_keys().iter().map(|k| col(k.as_str())).collect();
        let mut plans = vec![lf.clone().group_by(keys).agg(aggs)];
        for &fi in &self.quantile_fields {
            let f = &self.fields[fi];
            let step = (f.max - f.min) / QUANTILE_BINS;
            let c = col(f.name.as_str());
            let bin = (((c.clone() - lit(f.min)) / lit(step)) + lit(0.5))
                .cast(DataType::Int64)
                .alias(BIN);
            let mut keys: Vec<Expr> = self.spec.group_by.iter().map(|k| col(k.as_str())).collect();
            keys.push(col(BIN));
            plans.push(
                lf.clone()
                    .filter(c.is_not_null())
                    .with_columns([bin])
                    .group_by(keys)
                    .agg([len().cast(DataType::UInt64).alias(COUNT)]),
            );
        }
        let mut frames = if plans.len() == 1 {
            plans
                .into_iter()
                .map(LazyFrame::collect)
                .collect::<PolarsResult<Vec<_>>>()?
        } else {
            // One plan with several sinks: the scan is read once for all of them.
            let opt = lf.get_current_optimizations();
            LazyFrame::collect_all_with_engine(
                plans.into_iter().map(|p| p.logical_plan).collect(),
                Engine::Auto,
                opt,
            )?
        }
        .into_iter();
        let cells = frames
            .next()
            .ok_or_else(|| AnalyticsError::Engine("no cell partial".into()))?;
        for d in &self.spec.group_by {
            if cells.column(d)?.null_count() > 0 {
                return Ok(Some(d.clone()));
            }
        }
        let names: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
        let ints: Vec<String> = std::iter::once(ROWS.to_string())
            .chain(names.iter().map(|f| n_col(f)))
            .collect();
        let floats: Vec<String> = names
            .iter()
            .map(|f| s_col(f))
            .chain(names.iter().map(|f| ss_col(f)))
            .collect();
        self.cells
            .add(&cells, &self.spec.group_by, DONOR_ID, &ints, &floats)?;
        for (slot, h) in frames.enumerate() {
            if let Some(acc) = self.hists.get_mut(slot) {
                acc.add(&h, &self.spec.group_by, BIN, &[COUNT.to_string()], &[])?;
            }
        }
        Ok(None)
    }

    /// Merge the partials into the aggregated table (with every margin when the spec asks for
    /// totals).
    pub fn finish(self) -> Result<AggregateTable, AnalyticsError> {
        let masks = self.masks();
        let nf = self.fields.len();
        let partials = cell_partials(&self.cells, nf, &masks);
        // Histograms of all-rows quantiles, per cell and margin.
        let hist_cube: Vec<HashMap<CellKey, BTreeMap<i64, u64>>> =
            self.hists.iter().map(|h| hist_cells(h, &masks)).collect();
        let mut cells = Vec::with_capacity(partials.len());
        for cell in partials {
            let CellPartial {
                key,
                donors: ids,
                rows: donor_rows,
                n,
                s,
                ss,
            } = cell;
            let rows: u64 = donor_rows.iter().sum();
            let mut field_donors = vec![Vec::new(); nf];
            let mut means: Vec<Vec<f64>> = vec![Vec::new(); nf];
            let mut tot_n = vec![0u64; nf];
            let mut tot_s = vec![0.0f64; nf];
            let mut tot_ss = vec![0.0f64; nf];
            for (i, id) in ids.iter().enumerate() {
                for f in 0..nf {
                    let c = n[f][i];
                    if c > 0 {
                        field_donors[f].push(*id);
                        means[f].push(s[f][i] / c as f64);
                        tot_n[f] += c;
                        tot_s[f] += s[f][i];
                        tot_ss[f] += ss[f][i];
                    }
                }
            }
            let mut values = Vec::with_capacity(self.spec.measures.len());
            for m in &self.spec.measures {
                let fi = m
                    .field
                    .as_ref()
                    .and_then(|n| self.fields.iter().position(|f| &f.name == n));
                let v = match (m.op, fi) {
                    (MeasureOp::Donors, _) => Some(ids.len() as f64),
                    (MeasureOp::Rows, _) => Some(rows as f64),
                    (_, None) => None,
                    (op, Some(f)) => match self.spec.contribution {
                        Contribution::DonorMean => {
                            let xs = &mut means[f];
                            match op {
                                MeasureOp::Sum => (!xs.is_empty()).then(|| xs.iter().sum()),
                                MeasureOp::Mean => mean(xs),
                                MeasureOp::Std => std_dev(xs),
                                MeasureOp::Quantile => {
                                    xs.sort_by(f64::total_cmp);
                                    quantile_sorted(xs, m.q.unwrap_or(0.5))
                                }
                                _ => None,
                            }
                        }
                        Contribution::AllRows => {
                            let n = tot_n[f] as f64;
                            let shift = self.fields[f].shift;
                            match op {
                                MeasureOp::Sum => (tot_n[f] > 0).then_some(tot_s[f]),
                                MeasureOp::Mean => (tot_n[f] > 0).then(|| tot_s[f] / n),
                                MeasureOp::Std => (tot_n[f] > 1).then(|| {
                                    let sd = tot_s[f] - shift * n;
                                    ((tot_ss[f] - sd * sd / n) / (n - 1.0)).max(0.0).sqrt()
                                }),
                                MeasureOp::Quantile => {
                                    let slot = self.quantile_fields.iter().position(|q| *q == f);
                                    slot.and_then(|s| hist_cube.get(s))
                                        .and_then(|h| h.get(&key))
                                        .and_then(|h| {
                                            let fi = &self.fields[f];
                                            let step = (fi.max - fi.min) / QUANTILE_BINS;
                                            quantile_weighted(h, m.q.unwrap_or(0.5))
                                                .map(|b| fi.min + b * step)
                                        })
                                }
                                _ => None,
                            }
                        }
                    },
                };
                values.push(v);
            }
            cells.push(AggCell {
                key,
                donors: ids,
                field_donors,
                rows,
                values,
            });
        }
        // Values first, totals last, within each position.
        cells.sort_by(|a, b| {
            let ka: Vec<(bool, &Option<String>)> = a.key.iter().map(|v| (v.is_none(), v)).collect();
            let kb: Vec<(bool, &Option<String>)> = b.key.iter().map(|v| (v.is_none(), v)).collect();
            ka.cmp(&kb)
        });
        Ok(AggregateTable {
            dimensions: self.spec.group_by.clone(),
            measures: self.spec.measures.clone(),
            fields: self.fields.iter().map(|f| f.name.clone()).collect(),
            cells,
            rows_scanned: self.rows_scanned,
            batches: self.batches,
        })
    }

    /// The cells asked for: bit `j` of a mask keeps dimension `j`; every combination when the
    /// spec asks for totals, the full grouping only otherwise.
    fn masks(&self) -> Vec<u32> {
        let d = self.spec.group_by.len();
        if self.spec.totals {
            (0..1u32 << d).rev().collect()
        } else {
            vec![(1u32 << d) - 1]
        }
    }
}

/// One donor's partial aggregate in one cell: rows, and per measured field the count of values,
/// their sum and their sum of squares (shifted by the middle of the field's range).
#[derive(Debug, Clone, PartialEq)]
pub struct DonorCell {
    /// Rows.
    pub rows: u64,
    /// Per field: values.
    pub n: Vec<u64>,
    /// Per field: sum of values.
    pub s: Vec<f64>,
    /// Per field: sum of squared (value − middle of the range).
    pub ss: Vec<f64>,
}

/// A measured field and its declared range.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRange {
    /// Field name.
    pub name: String,
    /// Declared minimum.
    pub min: f64,
    /// Declared maximum.
    pub max: f64,
}

/// The exact cell–donor partials of a run, every margin included: what the differentially
/// private release bounds and adds noise to.
#[derive(Debug, Clone, PartialEq)]
pub struct CellDonorCube {
    /// Dimension names.
    pub dimensions: Vec<String>,
    /// Measures, as in the spec.
    pub measures: Vec<Measure>,
    /// Fields measured, in first-use order.
    pub fields: Vec<FieldRange>,
    /// Cell key → (engine-local donor id, the donor's partial in that cell), ascending by id.
    pub cells: BTreeMap<CellKey, Vec<(u32, DonorCell)>>,
    /// Rows read from the batches, before any filter.
    pub rows_scanned: u64,
    /// Batches read.
    pub batches: u64,
}

impl QueryEngine {
    /// Merge the partials into the cell–donor cube (with every margin when the spec asks for
    /// totals), without computing any statistic.
    pub fn finish_cube(self) -> Result<CellDonorCube, AnalyticsError> {
        let masks = self.masks();
        let nf = self.fields.len();
        let mut cells: BTreeMap<CellKey, Vec<(u32, DonorCell)>> = BTreeMap::new();
        for cell in cell_partials(&self.cells, nf, &masks) {
            let donors = cell
                .donors
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let dc = DonorCell {
                        rows: cell.rows[i],
                        n: (0..nf).map(|f| cell.n[f][i]).collect(),
                        s: (0..nf).map(|f| cell.s[f][i]).collect(),
                        ss: (0..nf).map(|f| cell.ss[f][i]).collect(),
                    };
                    (*id, dc)
                })
                .collect();
            cells.insert(cell.key, donors);
        }
        Ok(CellDonorCube {
            dimensions: self.spec.group_by.clone(),
            measures: self.spec.measures.clone(),
            fields: self
                .fields
                .iter()
                .map(|f| FieldRange {
                    name: f.name.clone(),
                    min: f.min,
                    max: f.max,
                })
                .collect(),
            cells,
            rows_scanned: self.rows_scanned,
            batches: self.batches,
        })
    }
}

/// The allowed consent records as a frame to join on: `consent` (the record id in 32 hex
/// digits, as batches hold it) and [`DONOR_ID`], the dense id of the record's pseudonym.
fn allowed_frame(allowed: &HashMap<[u8; 16], Pseudonym>) -> Result<DataFrame, AnalyticsError> {
    let ids: BTreeMap<Pseudonym, u32> = {
        let mut ps: Vec<Pseudonym> = allowed.values().copied().collect();
        ps.sort_unstable();
        ps.dedup();
        ps.into_iter().zip(0u32..).collect()
    };
    let mut rows: Vec<(String, u32)> = allowed
        .iter()
        .filter_map(|(r, p)| ids.get(p).map(|id| (hex::encode(r), *id)))
        .collect();
    rows.sort_unstable();
    let (records, donors): (Vec<String>, Vec<u32>) = rows.into_iter().unzip();
    Ok(DataFrame::new(
        records.len(),
        vec![
            Column::new(CONSENT_COLUMN.into(), records),
            Column::new(DONOR_ID.into(), donors),
        ],
    )?)
}

/// Group-by dimensions a spec may have ([`QuerySpec::validate`] refuses more, and the engine
/// validates every spec it runs): the width of a cell's code.
const MAX_DIMENSIONS: usize = MAX_GROUP_BY;

/// The values of a column without nulls.
fn column_values<T: PolarsNumericType>(c: &Column) -> Result<Vec<T::Native>, AnalyticsError> {
    let s = c.as_materialized_series().rechunk();
    let ca = s.unpack::<T>()?;
    if ca.null_count() > 0 {
        return Err(AnalyticsError::Engine(format!(
            "partial column `{}` has null values",
            c.name()
        )));
    }
    Ok(ca.into_no_null_iter().collect())
}

/// One cell of a cell–donor partial, every donor's sums merged: donors ascending, and per
/// donor its rows and, per measured field, the count, sum and shifted sum of squares.
struct CellPartial {
    key: CellKey,
    donors: Vec<u32>,
    rows: Vec<u64>,
    n: Vec<Vec<u64>>,
    s: Vec<Vec<f64>>,
    ss: Vec<Vec<f64>>,
}

/// The merged cell–donor partial folded into the cells of every mask (the cells asked for and
/// their margins). A margin's donor partial is the sum of the donor's partials in the cells it
/// covers: the slots are ordered by (masked cell, donor) once per mask and each run summed.
fn cell_partials(acc: &Accumulator, nf: usize, masks: &[u32]) -> Vec<CellPartial> {
    let donors: Vec<u32> = acc.slot_inner.iter().map(|d| *d as u32).collect();
    let (ni, nfl) = (acc.ni, acc.nf);
    let mut out = Vec::new();
    for &mask in masks {
        let (keys, of_cell) = acc.masked_cells(mask);
        let cell_of: Vec<u32> = acc.slot_cell.iter().map(|c| of_cell[*c as usize]).collect();
        let order = order_by_cell_and_donor(&cell_of, keys.len(), &donors);
        let mut cells: Vec<CellPartial> = keys
            .into_iter()
            .map(|key| CellPartial {
                key,
                donors: Vec::new(),
                rows: Vec::new(),
                n: vec![Vec::new(); nf],
                s: vec![Vec::new(); nf],
                ss: vec![Vec::new(); nf],
            })
            .collect();
        let mut last: Option<(u32, u32)> = None;
        for &i in &order {
            let i = i as usize;
            let k = (cell_of[i], donors[i]);
            let Some(cell) = cells.get_mut(cell_of[i] as usize) else {
                continue;
            };
            // Slot i: ints = rows, then n per field; floats = s per field, then ss per field.
            let ints = &acc.ints[i * ni..(i + 1) * ni];
            let floats = &acc.floats[i * nfl..(i + 1) * nfl];
            if last == Some(k) {
                // The same donor in the same cell: add to its sums.
                let at = cell.donors.len() - 1;
                cell.rows[at] += ints[0];
                for f in 0..nf {
                    cell.n[f][at] += ints[1 + f];
                    cell.s[f][at] += floats[f];
                    cell.ss[f][at] += floats[nf + f];
                }
            } else {
                cell.donors.push(donors[i]);
                cell.rows.push(ints[0]);
                for f in 0..nf {
                    cell.n[f].push(ints[1 + f]);
                    cell.s[f].push(floats[f]);
                    cell.ss[f].push(floats[nf + f]);
                }
            }
            last = Some(k);
        }
        out.extend(cells);
    }
    out
}

/// The row indices ordered by (cell, donor): a two-pass counting sort (by donor, then stably
/// by cell), linear in the rows, the cells and the donor ids.
fn order_by_cell_and_donor(cell_of: &[u32], cells: usize, donors: &[u32]) -> Vec<u32> {
    let stable_by = |order: &[u32], key: &dyn Fn(usize) -> usize, buckets: usize| -> Vec<u32> {
        let mut start = vec![0usize; buckets + 1];
        for &i in order {
            start[key(i as usize) + 1] += 1;
        }
        for b in 1..start.len() {
            start[b] += start[b - 1];
        }
        let mut out = vec![0u32; order.len()];
        for &i in order {
            let slot = &mut start[key(i as usize)];
            out[*slot] = i;
            *slot += 1;
        }
        out
    };
    let all: Vec<u32> = (0..cell_of.len() as u32).collect();
    let max_donor = donors.iter().copied().max().map_or(0, |m| m as usize + 1);
    let by_donor = stable_by(&all, &|i| donors[i] as usize, max_donor);
    stable_by(&by_donor, &|i| cell_of[i] as usize, cells)
}

/// The merged value histogram of one all-rows quantile folded into the cells of every mask:
/// cell key → bin → count.
fn hist_cells(acc: &Accumulator, masks: &[u32]) -> HashMap<CellKey, BTreeMap<i64, u64>> {
    let mut out: HashMap<CellKey, BTreeMap<i64, u64>> = HashMap::new();
    for &mask in masks {
        let (keys, of_cell) = acc.masked_cells(mask);
        let mut hists: Vec<BTreeMap<i64, u64>> = vec![BTreeMap::new(); keys.len()];
        for (i, c) in acc.slot_cell.iter().enumerate() {
            if let Some(h) = hists.get_mut(of_cell[*c as usize] as usize) {
                *h.entry(acc.slot_inner[i]).or_insert(0) += acc.ints[i * acc.ni];
            }
        }
        out.extend(keys.into_iter().zip(hists));
    }
    out
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn std_dev(xs: &[f64]) -> Option<f64> {
    if xs.len() < 2 {
        return None;
    }
    let m = mean(xs)?;
    let v = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64;
    Some(v.sqrt())
}

/// Type-7 quantile of sorted values.
pub fn quantile_sorted(xs: &[f64], q: f64) -> Option<f64> {
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    let (a, b) = (*xs.get(lo)?, *xs.get(hi)?);
    Some(a + (h - lo as f64) * (b - a))
}

/// Type-7 quantile of a histogram (value → count); returns a value in bin units.
fn quantile_weighted(h: &BTreeMap<i64, u64>, q: f64) -> Option<f64> {
    let n: u64 = h.values().sum();
    if n == 0 {
        return None;
    }
    let pos = (n - 1) as f64 * q;
    let lo = pos.floor() as u64;
    let hi = pos.ceil() as u64;
    let at = |rank: u64| -> Option<f64> {
        let mut seen = 0u64;
        for (v, c) in h {
            seen += c;
            if rank < seen {
                return Some(*v as f64);
            }
        }
        None
    };
    let (a, b) = (at(lo)?, at(hi)?);
    Some(a + (pos - lo as f64) * (b - a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_type_7() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&xs, 0.5), Some(2.5));
        assert_eq!(quantile_sorted(&xs, 0.25), Some(1.75));
        let h: BTreeMap<i64, u64> = [(1, 1), (2, 1), (3, 1), (4, 1)].into_iter().collect();
        assert_eq!(quantile_weighted(&h, 0.5), Some(2.5));
        let h: BTreeMap<i64, u64> = [(1, 3), (10, 1)].into_iter().collect();
        assert_eq!(quantile_weighted(&h, 0.5), Some(1.0));
        assert_eq!(quantile_weighted(&h, 1.0), Some(10.0));
    }
}
