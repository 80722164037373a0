//! The query engine: polars over opened batches, a group of batches per plan, with mergeable
//! partials.
//!
//! # Memory strategy
//!
//! Batches are opened in groups of a bounded plaintext size (the caller opens the next group
//! while polars works on the current one), so at most a couple of groups' plaintext is in
//! memory. Each group is one polars plan: a Parquet scan over the in-memory buffers (no copy,
//! no plaintext on disk; the buffers are zeroized when polars drops them), the consent and
//! spec filters, and a `group_by` that reduces it to *partial aggregates* that merge exactly:
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
//! Partials of new groups are stacked and re-aggregated (`group_by` + `sum`) whenever the
//! stack outgrows the merged table, which keeps the total work linear in the input and the
//! memory bounded by the partial sizes above. A single polars plan over all batches would need
//! every batch's plaintext in memory at once (polars' in-memory scan takes all buffers up
//! front), which is what the groups avoid; a plan per batch would pay polars' per-plan work and
//! a partial per batch, which is what the groups amortise.
//!
//! Rows are matched to consent by record: a row counts only when the consent record in its
//! `consent` column (the record it was donated under, added by the intake when it sealed) is
//! among the allowed records of the run; a row of a withdrawn record is left out even when its
//! donor has consented again since. Rows without a consent record match none and are never
//! counted; a batch without the `consent` column is an error naming the batch, as is a
//! dimension value that is null in a counted row.
//!
//! Quantiles use linear interpolation between closest ranks (Hyndman–Fan type 7, polars'
//! `QuantileMethod::Linear`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Cursor;
use std::path::{Path, PathBuf};

use datadonor_schemas::query::{
    CmpOp, Contribution, Filter, Literal, Measure, MeasureOp, QuerySpec,
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
/// Stacked partial rows below which no intermediate merge happens.
pub const MERGE_MIN_ROWS: usize = 256 * 1024;

const ROWS: &str = "__rows";
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

/// Stacked partial frames and their merged form.
#[derive(Default)]
struct Partial {
    merged: Option<DataFrame>,
    pending: Option<DataFrame>,
}

impl Partial {
    fn push(&mut self, df: DataFrame, keys: &[String]) -> Result<(), AnalyticsError> {
        match &mut self.pending {
            Some(p) => {
                p.vstack_mut_owned(df)?;
            }
            None => self.pending = Some(df),
        }
        let pending = self.pending.as_ref().map_or(0, DataFrame::height);
        let merged = self.merged.as_ref().map_or(0, DataFrame::height);
        if pending > MERGE_MIN_ROWS.max(merged) {
            self.merge(keys)?;
        }
        Ok(())
    }

    fn merge(&mut self, keys: &[String]) -> Result<(), AnalyticsError> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let mut all = match self.merged.take() {
            Some(m) => m,
            None => p.clear(),
        };
        all.vstack_mut_owned(p)?;
        let values: Vec<Expr> = all
            .get_column_names()
            .into_iter()
            .filter(|c| !keys.iter().any(|k| k.as_str() == c.as_str()))
            .map(|c| col(c.clone()).sum())
            .collect();
        let key_exprs: Vec<Expr> = keys.iter().map(|k| col(k.as_str())).collect();
        let merged = all.lazy().group_by(key_exprs).agg(values).collect()?;
        self.merged = Some(merged);
        Ok(())
    }

    fn finish(mut self, keys: &[String]) -> Result<Option<DataFrame>, AnalyticsError> {
        self.merge(keys)?;
        Ok(self.merged)
    }
}

/// A query in progress: feed it batches, then [`QueryEngine::finish`].
pub struct QueryEngine {
    spec: QuerySpec,
    fields: Vec<FieldInfo>,
    quantile_fields: Vec<usize>,
    needed: Vec<(String, DataType)>,
    allowed: Series,
    filter: Option<Expr>,
    cells: Partial,
    hists: Vec<Partial>,
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
            self.allowed.len()
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
    /// consent records (record ids).
    pub fn new(
        spec: &QuerySpec,
        study: &StudyDefinition,
        allowed: &HashSet<[u8; 16]>,
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
        let mut names: Vec<String> = vec![DONOR_COLUMN.to_string(), CONSENT_COLUMN.to_string()];
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
        let mut records: Vec<String> = allowed.iter().map(hex::encode).collect();
        records.sort_unstable();
        let hists = quantile_fields.iter().map(|_| Partial::default()).collect();
        Ok(Self {
            spec: spec.clone(),
            fields,
            quantile_fields,
            needed,
            allowed: Series::new("allowed".into(), records),
            filter: spec.filter.as_ref().map(filter_expr),
            cells: Partial::default(),
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
        k.push(DONOR_COLUMN.to_string());
        k
    }

    fn hist_keys(&self) -> Vec<String> {
        let mut k = self.spec.group_by.clone();
        k.push(BIN.to_string());
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
        let mut lf =
            lf.filter(col(CONSENT_COLUMN).is_in(lit(self.allowed.clone()).implode(false), false));
        if let Some(f) = &self.filter {
            lf = lf.filter(f.clone());
        }
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
        let ck = self.cell_keys();
        self.cells.push(cells, &ck)?;
        let hk = self.hist_keys();
        for (slot, h) in frames.enumerate() {
            self.hists[slot].push(h, &hk)?;
        }
        Ok(None)
    }

    /// Merge the partials into the aggregated table (with every margin when the spec asks for
    /// totals).
    pub fn finish(self) -> Result<AggregateTable, AnalyticsError> {
        let ck = self.cell_keys();
        let hk = self.hist_keys();
        let d = self.spec.group_by.len();
        let masks: Vec<u32> = if self.spec.totals {
            (0..1u32 << d).rev().collect()
        } else {
            vec![(1u32 << d) - 1]
        };
        let nf = self.fields.len();
        let names: Vec<String> = self.fields.iter().map(|f| f.name.clone()).collect();
        let cube = cube_of(self.cells.finish(&ck)?, &self.spec.group_by, &names, &masks)?;
        // Histograms of all-rows quantiles.
        let mut hist_cube: Vec<HashMap<CellKey, BTreeMap<i64, u64>>> = Vec::new();
        for p in self.hists {
            let mut m: HashMap<CellKey, BTreeMap<i64, u64>> = HashMap::new();
            if let Some(df) = p.finish(&hk)? {
                let dims = dimension_columns(&df, &self.spec.group_by)?;
                let bins = df.column(BIN)?.i64()?;
                let counts = df.column(COUNT)?.u64()?;
                for i in 0..df.height() {
                    let (Some(b), Some(n)) = (bins.get(i), counts.get(i)) else {
                        continue;
                    };
                    let full: Vec<Option<String>> =
                        dims.iter().map(|c| c.get(i).map(str::to_string)).collect();
                    for mask in &masks {
                        *m.entry(masked_key(&full, *mask))
                            .or_default()
                            .entry(b)
                            .or_insert(0) += n;
                    }
                }
            }
            hist_cube.push(m);
        }
        let mut cells = Vec::with_capacity(cube.len());
        for (key, donors) in cube {
            let mut ids: Vec<u32> = donors.keys().copied().collect();
            ids.sort_unstable();
            let rows: u64 = donors.values().map(|a| a.rows).sum();
            let mut field_donors = vec![Vec::new(); nf];
            let mut means: Vec<Vec<f64>> = vec![Vec::new(); nf];
            let mut tot_n = vec![0u64; nf];
            let mut tot_s = vec![0.0f64; nf];
            let mut tot_ss = vec![0.0f64; nf];
            for id in &ids {
                let Some(a) = donors.get(id) else { continue };
                for f in 0..nf {
                    if a.n[f] > 0 {
                        field_donors[f].push(*id);
                        means[f].push(a.s[f] / a.n[f] as f64);
                        tot_n[f] += a.n[f];
                        tot_s[f] += a.s[f];
                        tot_ss[f] += a.ss[f];
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
                            let mut xs = means[f].clone();
                            match op {
                                MeasureOp::Sum => (!xs.is_empty()).then(|| xs.iter().sum()),
                                MeasureOp::Mean => mean(&xs),
                                MeasureOp::Std => std_dev(&xs),
                                MeasureOp::Quantile => {
                                    xs.sort_by(f64::total_cmp);
                                    quantile_sorted(&xs, m.q.unwrap_or(0.5))
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
    /// Cell key → engine-local donor id → the donor's partial in that cell.
    pub cells: BTreeMap<CellKey, HashMap<u32, DonorCell>>,
    /// Rows read from the batches, before any filter.
    pub rows_scanned: u64,
    /// Batches read.
    pub batches: u64,
}

impl QueryEngine {
    /// Merge the partials into the cell–donor cube (with every margin when the spec asks for
    /// totals), without computing any statistic.
    pub fn finish_cube(self) -> Result<CellDonorCube, AnalyticsError> {
        let ck = self.cell_keys();
        let d = self.spec.group_by.len();
        let masks: Vec<u32> = if self.spec.totals {
            (0..1u32 << d).rev().collect()
        } else {
            vec![(1u32 << d) - 1]
        };
        let names: Vec<String> = self.fields.iter().map(|f| f.name.clone()).collect();
        let cells = cube_of(self.cells.finish(&ck)?, &self.spec.group_by, &names, &masks)?;
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

/// Fold the merged cell partial into (masked key) → donor id → [`DonorCell`].
fn cube_of(
    df: Option<DataFrame>,
    group_by: &[String],
    fields: &[String],
    masks: &[u32],
) -> Result<BTreeMap<CellKey, HashMap<u32, DonorCell>>, AnalyticsError> {
    let nf = fields.len();
    let mut donor_ids: HashMap<String, u32> = HashMap::new();
    let mut cube: BTreeMap<CellKey, HashMap<u32, DonorCell>> = BTreeMap::new();
    let Some(df) = df else { return Ok(cube) };
    let dims = dimension_columns(&df, group_by)?;
    let donor = df.column(DONOR_COLUMN)?.str()?;
    let rows = df.column(ROWS)?.u64()?;
    let ns: Vec<&UInt64Chunked> = fields
        .iter()
        .map(|f| df.column(&n_col(f)).and_then(|c| c.u64()))
        .collect::<PolarsResult<_>>()?;
    let ss: Vec<&Float64Chunked> = fields
        .iter()
        .map(|f| df.column(&s_col(f)).and_then(|c| c.f64()))
        .collect::<PolarsResult<_>>()?;
    let sss: Vec<&Float64Chunked> = fields
        .iter()
        .map(|f| df.column(&ss_col(f)).and_then(|c| c.f64()))
        .collect::<PolarsResult<_>>()?;
    for i in 0..df.height() {
        let Some(dn) = donor.get(i) else { continue };
        let next = donor_ids.len() as u32;
        let id = *donor_ids.entry(dn.to_string()).or_insert(next);
        let full: Vec<Option<String>> = dims.iter().map(|c| c.get(i).map(str::to_string)).collect();
        for mask in masks {
            let acc = cube
                .entry(masked_key(&full, *mask))
                .or_default()
                .entry(id)
                .or_insert_with(|| DonorCell {
                    rows: 0,
                    n: vec![0; nf],
                    s: vec![0.0; nf],
                    ss: vec![0.0; nf],
                });
            acc.rows += rows.get(i).unwrap_or(0);
            for f in 0..nf {
                acc.n[f] += ns[f].get(i).unwrap_or(0);
                acc.s[f] += ss[f].get(i).unwrap_or(0.0);
                acc.ss[f] += sss[f].get(i).unwrap_or(0.0);
            }
        }
    }
    Ok(cube)
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

/// The group-by columns of a partial-aggregate frame, as strings.
fn dimension_columns<'a>(
    df: &'a DataFrame,
    group_by: &[String],
) -> PolarsResult<Vec<&'a StringChunked>> {
    group_by
        .iter()
        .map(|g| df.column(g).and_then(|c| c.str()))
        .collect()
}

/// The cell key of a row's dimension values with the dimensions not in `mask` replaced by the
/// total (`None`): bit `j` of `mask` keeps dimension `j`.
fn masked_key(full: &[Option<String>], mask: u32) -> CellKey {
    full.iter()
        .enumerate()
        .map(|(j, v)| if mask >> j & 1 == 1 { v.clone() } else { None })
        .collect()
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
