//! Renderings of a released table: a text table for the terminal, CSV, JSON, Parquet and an SVG
//! bar chart. Every function is pure on a [`ReleasedTable`]; writing a file by its extension is
//! [`write_file`].
//!
//! Cells the service suppressed as a whole carry no values and are not listed in any rendering.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use datadonor_schemas::privacy::{ReleasedRow, ReleasedTable};
use datadonor_schemas::query::MeasureOp;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use plotters::prelude::*;

/// The label of a total over a dimension (a `null` key).
pub const TOTAL: &str = "(total)";

/// The file formats [`write_file`] writes, by extension.
pub const SUPPORTED_EXTENSIONS: &[&str] = &["csv", "json", "parquet"];

/// Errors of rendering or writing a table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// The file's extension names no supported format.
    #[error(
        "{path}: unsupported output format; the supported extensions are .csv, .json and .parquet"
    )]
    UnsupportedExtension {
        /// The file.
        path: String,
    },
    /// Writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// An encoder failed.
    #[error("{0}")]
    Encode(String),
}

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values.
    Csv,
    /// JSON with the table's metadata.
    Json,
    /// Parquet (ZSTD).
    Parquet,
}

/// The format of an output file, by its extension (case-insensitive).
pub fn format_of(path: &Path) -> Result<Format, OutputError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("csv") => Ok(Format::Csv),
        Some("json") => Ok(Format::Json),
        Some("parquet") => Ok(Format::Parquet),
        _ => Err(OutputError::UnsupportedExtension {
            path: path.display().to_string(),
        }),
    }
}

/// Render the table in the format of `path`'s extension and write it there.
pub fn write_file(table: &ReleasedTable, path: &Path) -> Result<(), OutputError> {
    let bytes = match format_of(path)? {
        Format::Csv => to_csv(table)?.into_bytes(),
        Format::Json => to_json(table)?.into_bytes(),
        Format::Parquet => to_parquet(table)?,
    };
    std::fs::write(path, bytes).map_err(|source| OutputError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Remove control characters (terminal escapes, newlines) from text the service sent.
pub fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

fn published(t: &ReleasedTable) -> impl Iterator<Item = &ReleasedRow> {
    t.rows.iter().filter(|r| r.suppressed.is_none())
}

fn key_label(k: &Option<String>) -> String {
    match k {
        Some(s) => sanitize(s),
        None => TOTAL.to_string(),
    }
}

fn is_integral(v: f64) -> bool {
    v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15
}

/// A value for the text table: integral values without decimals, others with three.
pub fn format_value(v: f64) -> String {
    if is_integral(v) {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// A value rounded to the column's declared decimal places (JSON and Parquet carry it so).
pub fn round_column(v: f64, decimals: Option<u8>) -> f64 {
    match decimals {
        Some(d) if v.is_finite() => {
            let scale = 10f64.powi(i32::from(d));
            let r = (v * scale).round() / scale;
            if r == 0.0 {
                0.0
            } else {
                r
            }
        }
        _ => v,
    }
}

/// A value for CSV and the text table: with the column's declared decimal places when it has them (the
/// study's precision for its field; 0 for counts), else [`format_significant`].
pub fn format_column(v: f64, decimals: Option<u8>) -> String {
    match decimals {
        Some(d) if v.is_finite() => {
            let s = format!("{v:.prec$}", prec = usize::from(d));
            if s.trim_start_matches('-')
                .chars()
                .all(|c| c == '0' || c == '.')
            {
                s.trim_start_matches('-').to_string()
            } else {
                s
            }
        }
        _ => format_significant(v),
    }
}

/// A value for CSV: integers exact, others rounded to six significant digits.
pub fn format_significant(v: f64) -> String {
    if is_integral(v) {
        return format!("{v:.0}");
    }
    if !v.is_finite() {
        return v.to_string();
    }
    let mag = v.abs().log10().floor() as i32;
    if mag >= 5 {
        let scale = 10f64.powi(mag - 5);
        return format!("{:.0}", (v / scale).round() * scale);
    }
    let decimals = (5 - mag) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".to_string()
    } else {
        s
    }
}

fn cell_text(t: &ReleasedTable, row: &ReleasedRow, c: usize) -> String {
    let Some(v) = row.values.get(c).copied().flatten() else {
        return "-".to_string();
    };
    let quantile = t.columns.get(c).map(|c| c.op) == Some(MeasureOp::Quantile);
    let fmt = |x: f64| match t.columns.get(c).and_then(|c| c.decimals) {
        Some(d) => format_column(x, Some(d)),
        None => format_value(x),
    };
    match row.error95.get(c).copied().flatten() {
        Some(e) if !quantile => format!("{} ± {}", fmt(v), fmt(e)),
        _ => fmt(v),
    }
}

/// The text table printed to the terminal: a header block, the table, and footnotes.
pub fn to_text(t: &ReleasedTable) -> String {
    let mut out = String::new();
    let title = if t.title.is_empty() {
        "Query result".to_string()
    } else {
        sanitize(&t.title)
    };
    out.push_str(&title);
    out.push('\n');
    out.push_str(&format!(
        "study {}; researcher {}; purpose: {}\n",
        sanitize(t.study_id.as_str()),
        sanitize(&t.researcher),
        sanitize(&t.purpose)
    ));
    out.push_str(&format!(
        "differentially private: ε = {}, δ = {} this run; k = {}; contribution bounds L = {}, C = {}\n\n",
        t.privacy.epsilon,
        t.privacy.delta,
        t.k,
        t.bounds.max_rows_per_cell,
        t.bounds.max_cells_per_donor
    ));
    let mut header: Vec<String> = t.dimensions.iter().map(|d| sanitize(d)).collect();
    header.extend(t.columns.iter().map(|c| sanitize(&c.name)));
    let mut lines: Vec<Vec<String>> = Vec::new();
    for row in published(t) {
        let mut line: Vec<String> = (0..t.dimensions.len())
            .map(|i| row.key.get(i).map(key_label).unwrap_or_default())
            .collect();
        line.extend((0..t.columns.len()).map(|c| cell_text(t, row, c)));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .chain(std::iter::once(header[i].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let ndims = t.dimensions.len();
    let render = |cells: &[String]| -> String {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i < ndims {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        parts.join("  ").trim_end().to_string()
    };
    out.push_str(&render(&header));
    out.push('\n');
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&rule.join("  "));
    out.push('\n');
    for l in &lines {
        out.push_str(&render(l));
        out.push('\n');
    }
    if lines.is_empty() {
        out.push_str("(no cell above the threshold)\n");
    }
    out.push('\n');
    out.push_str("Every value is noisy: calibrated random noise was added to make the release differentially private.\n");
    out.push_str(
        "± is the half-width of a 95 % interval for the noise added (quantiles carry none).\n",
    );
    out.push_str(&format!(
        "Cells whose noisy donor count is below the threshold (k = {}) are not listed.\n",
        t.k
    ));
    let suppressed = t.cells_suppressed();
    if suppressed > 0 {
        out.push_str(&format!("{suppressed} cell(s) suppressed as a whole.\n"));
    }
    out
}

/// CSV: the dimensions, then per column `name` and `name_error95`; totals as `(total)`.
pub fn to_csv(t: &ReleasedTable) -> Result<String, OutputError> {
    let enc = |e: csv::Error| OutputError::Encode(format!("CSV: {e}"));
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = t.dimensions.clone();
    for c in &t.columns {
        header.push(c.name.clone());
        header.push(format!("{}_error95", c.name));
    }
    w.write_record(&header).map_err(enc)?;
    for row in published(t) {
        let mut rec: Vec<String> = (0..t.dimensions.len())
            .map(|i| match row.key.get(i) {
                Some(Some(s)) => s.clone(),
                _ => TOTAL.to_string(),
            })
            .collect();
        for (c, col) in t.columns.iter().enumerate() {
            let f = |v: Option<f64>| {
                v.map(|v| format_column(v, col.decimals))
                    .unwrap_or_default()
            };
            rec.push(f(row.values.get(c).copied().flatten()));
            rec.push(f(row.error95.get(c).copied().flatten()));
        }
        w.write_record(&rec).map_err(enc)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| OutputError::Encode(format!("CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| OutputError::Encode(format!("CSV: {e}")))
}

/// JSON: the table's metadata and `rows` of objects keyed by dimension and column names.
pub fn to_json_value(t: &ReleasedTable) -> serde_json::Value {
    use serde_json::{json, Map, Value};
    let rows: Vec<Value> = published(t)
        .map(|row| {
            let mut m = Map::new();
            for (i, d) in t.dimensions.iter().enumerate() {
                let v = row.key.get(i).cloned().flatten();
                m.insert(d.clone(), v.map(Value::String).unwrap_or(Value::Null));
            }
            for (c, col) in t.columns.iter().enumerate() {
                let num = |v: Option<f64>| {
                    v.map(|v| round_column(v, col.decimals))
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .unwrap_or(Value::Null)
                };
                m.insert(col.name.clone(), num(row.values.get(c).copied().flatten()));
                m.insert(
                    format!("{}_error95", col.name),
                    num(row.error95.get(c).copied().flatten()),
                );
            }
            Value::Object(m)
        })
        .collect();
    json!({
        "title": t.title,
        "study_id": t.study_id.as_str(),
        "researcher": t.researcher,
        "purpose": t.purpose,
        "k": t.k,
        "query_sha256": hex::encode(t.query_sha256),
        "approval_sha256": hex::encode(t.approval_sha256),
        "ledger_index": t.ledger_index,
        "privacy": t.privacy,
        "bounds": t.bounds,
        "dimensions": t.dimensions,
        "columns": t.columns,
        "cells_suppressed": t.cells_suppressed(),
        "rows": rows,
    })
}

/// [`to_json_value`], pretty-printed.
pub fn to_json(t: &ReleasedTable) -> Result<String, OutputError> {
    serde_json::to_string_pretty(&to_json_value(t))
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| OutputError::Encode(format!("JSON: {e}")))
}

/// The table as one Arrow record batch: Utf8 dimension columns (null for totals), Float64
/// value and `_error95` columns.
pub fn to_record_batch(t: &ReleasedTable) -> Result<RecordBatch, OutputError> {
    let rows: Vec<&ReleasedRow> = published(t).collect();
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, d) in t.dimensions.iter().enumerate() {
        fields.push(Field::new(d, DataType::Utf8, true));
        let a: StringArray = rows
            .iter()
            .map(|r| r.key.get(i).cloned().flatten())
            .collect();
        arrays.push(Arc::new(a));
    }
    for (c, col) in t.columns.iter().enumerate() {
        fields.push(Field::new(&col.name, DataType::Float64, true));
        let v: Float64Array = rows
            .iter()
            .map(|r| {
                r.values
                    .get(c)
                    .copied()
                    .flatten()
                    .map(|v| round_column(v, col.decimals))
            })
            .collect();
        arrays.push(Arc::new(v));
        fields.push(Field::new(
            format!("{}_error95", col.name),
            DataType::Float64,
            true,
        ));
        let e: Float64Array = rows
            .iter()
            .map(|r| {
                r.error95
                    .get(c)
                    .copied()
                    .flatten()
                    .map(|v| round_column(v, col.decimals))
            })
            .collect();
        arrays.push(Arc::new(e));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
        .map_err(|e| OutputError::Encode(format!("Arrow: {e}")))
}

/// Parquet bytes (ZSTD), one row group.
pub fn to_parquet(t: &ReleasedTable) -> Result<Vec<u8>, OutputError> {
    let enc = |e: parquet::errors::ParquetError| OutputError::Encode(format!("Parquet: {e}"));
    let batch = to_record_batch(t)?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props)).map_err(enc)?;
    w.write(&batch).map_err(enc)?;
    w.close().map_err(enc)?;
    Ok(buf)
}

/// An SVG of small multiples: one bar chart per released column (counts and every measure),
/// a bar per cell (totals excluded), with error bars of ±error95 where the table gives one, the
/// title above and a legend below. Cells the release left out are not drawn (the legend says
/// so).
pub fn to_svg(t: &ReleasedTable) -> Result<String, OutputError> {
    let rows: Vec<&ReleasedRow> = published(t)
        .filter(|r| r.key.iter().all(|k| k.is_some()))
        .collect();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            if r.key.is_empty() {
                "all".to_string()
            } else {
                r.key.iter().map(key_label).collect::<Vec<_>>().join(" / ")
            }
        })
        .collect();
    let xdesc = if t.dimensions.is_empty() {
        "cell".to_string()
    } else {
        t.dimensions
            .iter()
            .map(|d| sanitize(d))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let panels = t.columns.len().max(1);
    let cols = panels.min(3);
    let grid_rows = panels.div_ceil(cols);
    let n = labels.len().max(1);
    let panel_w = (80 * n as u32 + 140).max(360);
    let panel_h = 320u32;
    let (title_h, legend_h) = (40u32, 36u32);
    let width = (panel_w * cols as u32).max(720);
    let height = title_h + panel_h * grid_rows as u32 + legend_h;
    let title = if t.title.is_empty() {
        "Query result".to_string()
    } else {
        sanitize(&t.title)
    };
    let mut svg = String::new();
    {
        let draw = |svg: &mut String| -> Result<(), Box<dyn std::error::Error>> {
            let root = SVGBackend::with_string(svg, (width, height)).into_drawing_area();
            root.fill(&WHITE)?;
            let (head, rest) = root.split_vertically(title_h);
            let (body, legend) = rest.split_vertically(panel_h * grid_rows as u32);
            head.draw(&Text::new(title.clone(), (12, 10), ("sans-serif", 18)))?;
            for (c, area) in body
                .split_evenly((grid_rows, cols))
                .iter()
                .enumerate()
                .take(t.columns.len())
            {
                let col = &t.columns[c];
                let name = sanitize(&col.name);
                let bars: Vec<(usize, f64, Option<f64>)> = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| {
                        let v = r.values.get(c).copied().flatten()?;
                        Some((i, v, r.error95.get(c).copied().flatten()))
                    })
                    .collect();
                let hi = bars
                    .iter()
                    .map(|(_, v, e)| v + e.unwrap_or(0.0))
                    .fold(0.0f64, f64::max);
                let lo = bars
                    .iter()
                    .map(|(_, v, e)| v - e.unwrap_or(0.0))
                    .fold(0.0f64, f64::min);
                let span = (hi - lo).max(1e-9);
                let (y0, y1) = (
                    if lo < 0.0 { lo - span * 0.1 } else { 0.0 },
                    if hi > 0.0 { hi + span * 0.1 } else { 1.0 },
                );
                let mut chart = ChartBuilder::on(area)
                    .caption(name.clone(), ("sans-serif", 15))
                    .margin(10)
                    .x_label_area_size(50)
                    .y_label_area_size(60)
                    .build_cartesian_2d(0f64..n as f64, y0..y1)?;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(n * 2 + 1)
                    .x_label_formatter(&|x| {
                        let i = (*x - 0.5).round();
                        if (*x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                            labels.get(i as usize).cloned().unwrap_or_default()
                        } else {
                            String::new()
                        }
                    })
                    .x_desc(xdesc.clone())
                    .y_desc(format!("{name} (noisy)"))
                    .draw()?;
                chart.draw_series(bars.iter().map(|(i, v, _)| {
                    Rectangle::new(
                        [(*i as f64 + 0.15, 0.0), (*i as f64 + 0.85, *v)],
                        BLUE.mix(0.6).filled(),
                    )
                }))?;
                chart.draw_series(bars.iter().filter_map(|(i, v, e)| {
                    e.map(|e| {
                        ErrorBar::new_vertical(
                            *i as f64 + 0.5,
                            v - e,
                            *v,
                            v + e,
                            BLACK.stroke_width(2),
                            12,
                        )
                    })
                }))?;
            }
            legend.draw(&Text::new(
                format!(
                    "Bars: differentially private values (ε = {} this run); whiskers: 95 % interval of the noise; cells below the noisy threshold (k = {}) are not drawn.",
                    t.privacy.epsilon, t.k
                ),
                (12, 10),
                ("sans-serif", 13),
            ))?;
            root.present()?;
            Ok(())
        };
        draw(&mut svg).map_err(|e| OutputError::Encode(format!("SVG: {e}")))?;
    }
    Ok(svg)
}
