//! The published table in the formats researchers use: a readable text table, CSV, JSON,
//! Parquet, and an SVG bar chart. Only [`ResultTable`]s (disclosure control applied) can be
//! written; suppressed values are absent from every format and their reason is given.
//!
//! Precision: CSV, JSON and Parquet carry every value rounded by [`round_value`] to 6
//! significant digits (values of a million or more to the nearest integer), so counts are
//! exact and a mean is `23.9`, not `23.900000000000002`; CSV and JSON write the shortest
//! decimal that reads back as that value, whole numbers without a fraction. The text table shows integers as such and other values with 3
//! decimals.

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

/// A value as published in CSV, JSON and Parquet: rounded to 6 significant digits, or to the
/// nearest integer from 1,000,000 up (so counts stay exact). Not finite values are unchanged.
pub fn round_value(v: f64) -> f64 {
    if !v.is_finite() {
        v
    } else if v.abs() >= 1e6 {
        v.round()
    } else {
        format!("{v:.5e}").parse().unwrap_or(v)
    }
}

/// A value in JSON: rounded by [`round_value`]; whole numbers (counts) as integers.
fn json_number(v: f64) -> Value {
    let r = round_value(v);
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        json!(r as i64)
    } else {
        json!(r)
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
                .map(|v| v.map(|v| round_value(v).to_string()).unwrap_or_default()),
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
                .map(|(n, v)| (n.clone(), v.map_or(Value::Null, json_number)))
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
            .map(|r| r.values.get(m).copied().flatten().map(round_value))
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

/// The short mark drawn in place of a suppressed bar: `<k`, `<k values`, `secondary`.
fn short_label(s: Suppression) -> String {
    let l = s.label();
    l.strip_prefix("suppressed (")
        .and_then(|x| x.strip_suffix(')'))
        .unwrap_or(l)
        .to_string()
}

/// Draw an SVG chart of every measure: one bar panel per measure (small multiples, each
/// titled with the measure's column name) over the first dimension (its totals over the other
/// dimensions when the table has them), and a legend. Suppressed bars are not drawn; a grey
/// stub and a red mark with the reason (`<k`, `<k values`, `secondary`) stand in their place.
pub fn plot_svg(t: &ResultTable, path: &Path) -> Result<(), AnalyticsError> {
    let names = t.measure_names();
    let has_margins = t.rows.iter().any(|x| {
        x.key.iter().skip(1).all(Option::is_none) && x.key.first().is_some_and(Option::is_some)
    });
    let rows: Vec<&crate::query::ResultRow> = t
        .rows
        .iter()
        .filter(|r| {
            if t.dimensions.is_empty() {
                return true;
            }
            let first = r.key.first().is_some_and(Option::is_some);
            let rest_total = r.key.iter().skip(1).all(Option::is_none);
            first && (rest_total || !has_margins)
        })
        .collect();
    let labels: Vec<String> = rows
        .iter()
        .map(|r| {
            if t.dimensions.is_empty() {
                "all".to_string()
            } else {
                r.key
                    .iter()
                    .flatten()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" / ")
            }
        })
        .collect();
    let xdesc = t.dimensions.first().cloned().unwrap_or_default();
    let panels = names.len().max(1);
    let cols = panels.min(3);
    let grid_rows = panels.div_ceil(cols);
    let n = labels.len().max(1);
    let panel_w = (90 * n as u32 + 120).max(360);
    let panel_h = 320u32;
    let (title_h, legend_h) = (40u32, 36u32);
    let width = (panel_w * cols as u32).max(720);
    let height = title_h + panel_h * grid_rows as u32 + legend_h;
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (head, rest) = root.split_vertically(title_h);
        let (body, legend) = rest.split_vertically(panel_h * grid_rows as u32);
        let title = if t.title.is_empty() {
            "Query result".to_string()
        } else {
            t.title.clone()
        };
        head.draw(&Text::new(title, (12, 10), ("sans-serif", 18)))?;
        for (m, area) in body
            .split_evenly((grid_rows, cols))
            .iter()
            .enumerate()
            .take(names.len())
        {
            let values: Vec<(Option<f64>, Option<Suppression>)> = rows
                .iter()
                .map(|r| {
                    (
                        r.values.get(m).copied().flatten(),
                        r.suppressed.get(m).copied().flatten(),
                    )
                })
                .collect();
            let max = values.iter().filter_map(|v| v.0).fold(0.0f64, f64::max);
            let top = if max > 0.0 { max * 1.15 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(names[m].clone(), ("sans-serif", 16))
                .margin(10)
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
                .draw()?;
            for (i, (v, s)) in values.iter().enumerate() {
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
                        chart.draw_series(std::iter::once(Rectangle::new(
                            [(x0, 0.0), (x1, top * 0.02)],
                            RGBColor(170, 170, 170).filled(),
                        )))?;
                        chart.draw_series(std::iter::once(Text::new(
                            short_label(*s),
                            (x0, top * 0.08),
                            ("sans-serif", 12).into_font().color(&RED),
                        )))?;
                    }
                    (None, None) => {}
                }
            }
        }
        legend.draw(&Rectangle::new(
            [(12, 10), (26, 24)],
            BLUE.mix(0.7).filled(),
        ))?;
        legend.draw(&Text::new("published value", (32, 10), ("sans-serif", 13)))?;
        legend.draw(&Rectangle::new(
            [(172, 20), (186, 24)],
            RGBColor(170, 170, 170).filled(),
        ))?;
        legend.draw(&Text::new("suppressed", (192, 10), ("sans-serif", 13)))?;
        legend.draw(&Text::new(
            "<k, <k values, secondary: why (see the table's footnotes)",
            (282, 10),
            ("sans-serif", 13).into_font().color(&RED),
        ))?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| out_err(path, e))
}

#[cfg(test)]
mod tests {
    use datadonor_schemas::query::{Measure, MeasureOp};

    use super::*;
    use crate::query::ResultRow;

    fn measure(op: MeasureOp, field: Option<&str>) -> Measure {
        Measure {
            op,
            field: field.map(str::to_string),
            q: None,
        }
    }

    fn row(
        key: &[Option<&str>],
        values: &[Option<f64>],
        suppressed: &[Option<Suppression>],
    ) -> ResultRow {
        ResultRow {
            key: key.iter().map(|k| k.map(str::to_string)).collect(),
            values: values.to_vec(),
            suppressed: suppressed.to_vec(),
            cell: None,
        }
    }

    /// Region by t2d with region totals: donors, mean HbA1c and mean BMI.
    fn table() -> ResultTable {
        let none = [None, None, None];
        ResultTable {
            title: "HbA1c and BMI by region".into(),
            k: 5,
            dimensions: vec!["region".into(), "t2d".into()],
            measures: vec![
                measure(MeasureOp::Donors, None),
                measure(MeasureOp::Mean, Some("hba1c")),
                measure(MeasureOp::Mean, Some("bmi")),
            ],
            rows: vec![
                row(
                    &[Some("nord"), Some("true")],
                    &[Some(7.0), Some(48.1), Some(30.2)],
                    &none,
                ),
                row(
                    &[Some("nord"), None],
                    &[Some(12.0), Some(23.900000000000002), Some(27.123456789)],
                    &none,
                ),
                row(
                    &[Some("syd"), None],
                    &[Some(1_234_567.8), None, Some(0.000123456789)],
                    &[None, Some(Suppression::FewValues), None],
                ),
                row(&[None, None], &[Some(20.0), Some(41.0), Some(28.0)], &none),
            ],
        }
    }

    #[test]
    fn values_are_rounded_to_six_significant_digits() {
        assert_eq!(round_value(23.900000000000002), 23.9);
        assert_eq!(round_value(27.123456789), 27.1235);
        assert_eq!(round_value(0.000123456789), 0.000123457);
        assert_eq!(round_value(1_234_567.8), 1_234_568.0);
        assert_eq!(round_value(12.0), 12.0);
        assert_eq!(round_value(-0.1 - 0.2), -0.3);
        assert!(round_value(f64::NAN).is_nan());
    }

    #[test]
    fn csv_and_json_carry_rounded_values() {
        let t = table();
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("t.csv");
        write_csv(&t, &p).expect("csv written");
        assert_eq!(
            std::fs::read_to_string(&p).expect("csv"),
            "region,t2d,donors,mean_hba1c,mean_bmi,status\n\
             nord,true,7,48.1,30.2,published\n\
             nord,(total),12,23.9,27.1235,published\n\
             syd,(total),1234568,,0.000123457,published; mean_hba1c: suppressed (<k values)\n\
             (total),(total),20,41,28,published\n"
        );
        let v = to_json(&t);
        let values = &v["rows"][1]["values"];
        assert_eq!(values["donors"].to_string(), "12");
        assert_eq!(values["mean_hba1c"].to_string(), "23.9");
        assert_eq!(values["mean_bmi"].to_string(), "27.1235");
        assert_eq!(v["rows"][2]["values"]["donors"].to_string(), "1234568");
        assert!(v["rows"][2]["values"]["mean_hba1c"].is_null());
        let df = to_frame(&t).expect("frame");
        let col = df
            .column("mean_hba1c")
            .expect("column")
            .f64()
            .expect("f64")
            .clone();
        assert_eq!(col.get(1), Some(23.9));
    }

    #[test]
    fn the_plot_has_one_panel_per_measure_a_legend_and_marks_suppressed_bars() {
        let t = table();
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("t.svg");
        plot_svg(&t, &p).expect("svg written");
        let svg = std::fs::read_to_string(&p).expect("svg");
        // Every text element's content.
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| {
                t.split_once('>')
                    .and_then(|(_, rest)| rest.split_once("</text>"))
            })
            .map(|(text, _)| text.trim())
            .collect();
        for name in ["donors", "mean_hba1c", "mean_bmi"] {
            assert_eq!(
                texts.iter().filter(|t| **t == name).count(),
                1,
                "one panel titled {name}: {texts:?}"
            );
        }
        assert!(texts.contains(&"HbA1c and BMI by region"), "{texts:?}");
        assert!(texts.contains(&"published value"), "{texts:?}");
        assert!(texts.contains(&"suppressed"), "{texts:?}");
        // syd's mean HbA1c is suppressed: its mark stands in the second panel.
        assert!(texts.contains(&"&lt;k values"), "{texts:?}");
        // Region totals: one bar label per region.
        assert_eq!(
            texts.iter().filter(|t| **t == "nord").count(),
            3,
            "{texts:?}"
        );
    }
}
