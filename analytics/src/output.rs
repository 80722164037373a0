//! The published table in the formats researchers use: a readable text table, CSV, JSON,
//! Parquet, and an SVG bar chart. Only [`ResultTable`]s (disclosure control applied) can be
//! written; suppressed values are absent from every format and their reason is given.

use std::path::Path;

use plotters::prelude::*;
use polars::prelude::*;
use serde_json::{json, Map, Value};

use crate::disclosure::Suppression;
use crate::query::ResultTable;
use crate::AnalyticsError;

/// How a total appears in text, CSV and Parquet (JSON uses `null`).
pub const TOTAL_LABEL: &str = "(total)";

fn out_err(path: &Path, e: impl std::fmt::Display) -> AnalyticsError {
    AnalyticsError::Output {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn status_text(row: &crate::query::ResultRow, names: &[String]) -> String {
    if let Some(c) = row.cell {
        return c.label().to_string();
    }
    let parts: Vec<String> = names
        .iter()
        .zip(&row.suppressed)
        .filter_map(|(n, s)| s.map(|s| format!("{n}: {}", s.label())))
        .collect();
    if parts.is_empty() {
        "published".into()
    } else {
        format!("published; {}", parts.join("; "))
    }
}

/// The footnotes explaining suppression labels present in the table.
pub fn footnotes(t: &ResultTable) -> Vec<String> {
    let mut kinds: Vec<Suppression> = t
        .rows
        .iter()
        .flat_map(|r| r.suppressed.iter().flatten().copied())
        .collect();
    kinds.sort_by_key(|k| *k as u8);
    kinds.dedup();
    kinds
        .into_iter()
        .map(|k| match k {
            Suppression::FewDonors => format!(
                "suppressed (<k): fewer than k = {} distinct donors in the cell",
                t.k
            ),
            Suppression::FewValues => format!(
                "suppressed (<k values): fewer than k = {} distinct donors with a value of this measure",
                t.k
            ),
            Suppression::Secondary => {
                "suppressed (secondary): hidden so that a suppressed cell cannot be derived from totals".into()
            }
        })
        .collect()
}

/// A readable text table with footnotes.
pub fn render_text(t: &ResultTable) -> String {
    let names = t.measure_names();
    let mut header: Vec<String> = t.dimensions.clone();
    header.extend(names.iter().cloned());
    let mut grid: Vec<Vec<String>> = vec![header];
    for r in &t.rows {
        let mut line: Vec<String> = r
            .key
            .iter()
            .map(|k| k.clone().unwrap_or_else(|| TOTAL_LABEL.to_string()))
            .collect();
        for (v, s) in r.values.iter().zip(&r.suppressed) {
            line.push(match (v, s) {
                (_, Some(s)) => s.label().to_string(),
                (Some(v), None) => fmt_value(*v),
                (None, None) => "-".into(),
            });
        }
        grid.push(line);
    }
    let cols = grid.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            grid.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    if !t.title.is_empty() {
        out.push_str(&t.title);
        out.push('\n');
    }
    for (i, r) in grid.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| {
                let w = widths[c];
                if c < t.dimensions.len() {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
        }
    }
    for f in footnotes(t) {
        out.push_str(&format!("* {f}\n"));
    }
    out
}

/// Write CSV: dimensions, measures (empty when suppressed), and a `status` column.
pub fn write_csv(t: &ResultTable, path: &Path) -> Result<(), AnalyticsError> {
    let names = t.measure_names();
    let mut w = csv::Writer::from_path(path).map_err(|e| out_err(path, e))?;
    let mut header = t.dimensions.clone();
    header.extend(names.iter().cloned());
    header.push("status".into());
    w.write_record(&header).map_err(|e| out_err(path, e))?;
    for r in &t.rows {
        let mut rec: Vec<String> = r
            .key
            .iter()
            .map(|k| k.clone().unwrap_or_else(|| TOTAL_LABEL.to_string()))
            .collect();
        rec.extend(
            r.values
                .iter()
                .map(|v| v.map(|v| v.to_string()).unwrap_or_default()),
        );
        rec.push(status_text(r, &names));
        w.write_record(&rec).map_err(|e| out_err(path, e))?;
    }
    w.flush().map_err(|e| out_err(path, e))
}

/// The JSON form.
pub fn to_json(t: &ResultTable) -> Value {
    let names = t.measure_names();
    let rows: Vec<Value> = t
        .rows
        .iter()
        .map(|r| {
            let key: Map<String, Value> = t
                .dimensions
                .iter()
                .zip(&r.key)
                .map(|(d, k)| (d.clone(), k.clone().map_or(Value::Null, Value::String)))
                .collect();
            let values: Map<String, Value> = names
                .iter()
                .zip(&r.values)
                .map(|(n, v)| (n.clone(), v.map_or(Value::Null, |v| json!(v))))
                .collect();
            let suppressed: Map<String, Value> = names
                .iter()
                .zip(&r.suppressed)
                .filter_map(|(n, s)| s.map(|s| (n.clone(), json!(s.label()))))
                .collect();
            json!({
                "key": key,
                "values": values,
                "suppressed": suppressed,
                "status": status_text(r, &names),
            })
        })
        .collect();
    json!({
        "title": t.title,
        "k": t.k,
        "dimensions": t.dimensions,
        "measures": names,
        "rows": rows,
        "footnotes": footnotes(t),
    })
}

/// Write JSON.
pub fn write_json(t: &ResultTable, path: &Path) -> Result<(), AnalyticsError> {
    let bytes = serde_json::to_vec_pretty(&to_json(t)).map_err(|e| out_err(path, e))?;
    std::fs::write(path, bytes).map_err(|e| out_err(path, e))
}

/// The table as a polars frame (totals as [`TOTAL_LABEL`], suppressed values null, `status`).
pub fn to_frame(t: &ResultTable) -> Result<DataFrame, AnalyticsError> {
    let names = t.measure_names();
    let mut cols: Vec<Column> = Vec::new();
    for (j, d) in t.dimensions.iter().enumerate() {
        let v: Vec<String> = t
            .rows
            .iter()
            .map(|r| {
                r.key
                    .get(j)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| TOTAL_LABEL.to_string())
            })
            .collect();
        cols.push(Column::new(d.as_str().into(), v));
    }
    for (m, n) in names.iter().enumerate() {
        let v: Vec<Option<f64>> = t
            .rows
            .iter()
            .map(|r| r.values.get(m).copied().flatten())
            .collect();
        cols.push(Column::new(n.as_str().into(), v));
    }
    let status: Vec<String> = t.rows.iter().map(|r| status_text(r, &names)).collect();
    cols.push(Column::new("status".into(), status));
    Ok(DataFrame::new(t.rows.len(), cols)?)
}

/// Write Parquet.
pub fn write_parquet(t: &ResultTable, path: &Path) -> Result<(), AnalyticsError> {
    let mut df = to_frame(t)?;
    let f = std::fs::File::create(path).map_err(|e| out_err(path, e))?;
    ParquetWriter::new(f)
        .finish(&mut df)
        .map_err(|e| out_err(path, e))?;
    Ok(())
}

/// Write by extension: `.csv`, `.json` or `.parquet`.
pub fn write_by_extension(t: &ResultTable, path: &Path) -> Result<(), AnalyticsError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => write_csv(t, path),
        Some("json") => write_json(t, path),
        Some("parquet") => write_parquet(t, path),
        _ => Err(out_err(
            path,
            "unknown output format; use .csv, .json or .parquet",
        )),
    }
}

/// Draw a bar chart (SVG) of the first measure other than `donors` by the first dimension.
/// Suppressed bars are omitted and marked.
pub fn plot_svg(t: &ResultTable, path: &Path) -> Result<(), AnalyticsError> {
    let names = t.measure_names();
    let m = t
        .measures
        .iter()
        .position(|m| m.op != datadonor_schemas::query::MeasureOp::Donors)
        .unwrap_or(0);
    let bars: Vec<(String, Option<f64>, Option<Suppression>)> = t
        .rows
        .iter()
        .filter(|r| {
            if t.dimensions.is_empty() {
                return true;
            }
            let first = r.key.first().is_some_and(Option::is_some);
            let rest_total = r.key.iter().skip(1).all(Option::is_none);
            let has_margins = t.rows.iter().any(|x| {
                x.key.iter().skip(1).all(Option::is_none)
                    && x.key.first().is_some_and(Option::is_some)
            });
            first && (rest_total || !has_margins)
        })
        .map(|r| {
            let label = if t.dimensions.is_empty() {
                "all".to_string()
            } else {
                r.key
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            (
                label,
                r.values.get(m).copied().flatten(),
                r.suppressed.get(m).copied().flatten(),
            )
        })
        .collect();
    let max = bars.iter().filter_map(|b| b.1).fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.15 } else { 1.0 };
    let measure = names.get(m).cloned().unwrap_or_default();
    let xdesc = t.dimensions.first().cloned().unwrap_or_default();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let width = (120 * bars.len().max(1) as u32 + 160).max(480);
        let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = if t.title.is_empty() {
            measure.clone()
        } else {
            format!("{} — {measure}", t.title)
        };
        let n = bars.len().max(1);
        let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
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
            .y_desc(measure.clone())
            .draw()?;
        for (i, (_, v, s)) in bars.iter().enumerate() {
            let x0 = i as f64 + 0.15;
            let x1 = i as f64 + 0.85;
            match (v, s) {
                (Some(v), None) => {
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x0, 0.0), (x1, *v)],
                        BLUE.mix(0.7).filled(),
                    )))?;
                }
                (_, Some(s)) => {
                    chart.draw_series(std::iter::once(Text::new(
                        s.label().to_string(),
                        (x0, top * 0.05),
                        ("sans-serif", 12).into_font().color(&RED),
                    )))?;
                }
                (None, None) => {}
            }
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| out_err(path, e))
}
