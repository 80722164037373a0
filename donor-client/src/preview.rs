//! The preview: exactly the rows and columns that would leave the device, and the report of
//! everything that would not. Rendered as a plain-text table for the donor or as JSON for apps.
//!
//! The `donor` column holds the per-study pseudonym when it is known (it needs the intake's
//! OPRF); before that it shows [`PSEUDONYM_PLACEHOLDER`]. Every other cell is exactly the value
//! that goes into the Arrow rows.

use serde::Serialize;

use crate::minimise::{Cell, MinimiseReport, MinimisedRows};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::study::{DONOR_COLUMN, PERIOD_COLUMN};

/// Shown in the `donor` column before the pseudonym has been computed.
pub const PSEUDONYM_PLACEHOLDER: &str = "<study pseudonym>";

/// One column of the preview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PreviewColumn {
    /// Column name.
    pub name: String,
    /// What it holds, as the study describes it.
    pub description: String,
}

/// One row as it would leave the device.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewRow {
    /// The `donor` column.
    pub donor: String,
    /// The `period` column.
    pub period: String,
    /// The study's fields: `(name, value)`, in column order.
    pub cells: Vec<(String, Cell)>,
}

impl Serialize for PreviewRow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.cells.len() + 2))?;
        m.serialize_entry(DONOR_COLUMN, &self.donor)?;
        m.serialize_entry(PERIOD_COLUMN, &self.period)?;
        for (k, v) in &self.cells {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// What would leave the device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Preview {
    /// Study id.
    pub study: String,
    /// Study version.
    pub study_version: u32,
    /// Study title.
    pub title: String,
    /// SHA-256 of the consent notice the study refers to.
    pub notice_sha256: String,
    /// The value of the `donor` column.
    pub donor: String,
    /// Columns after `donor`: `period` and the study's fields.
    pub columns: Vec<PreviewColumn>,
    /// The rows, each as it leaves: `donor`, `period`, then the study's fields in order.
    pub rows: Vec<PreviewRow>,
    /// Everything that does not leave, counted by reason.
    pub report: MinimiseReport,
}

impl Preview {
    /// The preview of minimised rows, with the pseudonym if it is already known.
    pub fn new(rows: &MinimisedRows, pseudonym: Option<&Pseudonym>) -> Self {
        let study = rows.study();
        let mut columns = vec![PreviewColumn {
            name: PERIOD_COLUMN.to_string(),
            description: format!("{:?} of the observations", study.period).to_lowercase(),
        }];
        columns.extend(study.fields.iter().map(|f| PreviewColumn {
            name: f.name.clone(),
            description: f.description.clone(),
        }));
        let donor = pseudonym.map_or_else(|| PSEUDONYM_PLACEHOLDER.to_string(), |p| p.to_hex());
        Self {
            study: study.id.to_string(),
            study_version: study.version,
            title: study.title.clone(),
            notice_sha256: hex::encode(study.notice_sha256),
            rows: rows
                .rows
                .iter()
                .map(|r| PreviewRow {
                    donor: donor.clone(),
                    period: r.period.clone(),
                    cells: study
                        .fields
                        .iter()
                        .map(|f| f.name.clone())
                        .zip(r.cells.iter().cloned())
                        .collect(),
                })
                .collect(),
            donor,
            columns,
            report: rows.report.clone(),
        }
    }

    /// Pretty JSON (stable field order), ending in a newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// A plain-text table followed by the drop report.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "Study {} v{}: {}\nConsent notice SHA-256: {}\n",
            self.study, self.study_version, self.title, self.notice_sha256
        ));
        out.push_str(&format!(
            "{} row(s) would leave this device, each with {} = {}\n\n",
            self.rows.len(),
            DONOR_COLUMN,
            self.donor
        ));
        let headers: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                std::iter::once(r.period.clone())
                    .chain(r.cells.iter().map(|(_, c)| c.to_string()))
                    .collect()
            })
            .collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in &body {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        out.push_str(&table_line(headers.iter().copied(), &widths));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&table_line(rule.iter().map(String::as_str), &widths));
        for row in &body {
            out.push_str(&table_line(row.iter().map(String::as_str), &widths));
        }
        out.push_str("\nColumns:\n");
        for c in &self.columns {
            out.push_str(&format!("  {:<12} {}\n", c.name, c.description));
        }
        out.push_str("\nNot leaving this device:\n");
        if self.report.dropped.is_empty() && self.report.import_skipped.is_empty() {
            out.push_str("  (nothing)\n");
        }
        for (reason, n) in &self.report.dropped {
            out.push_str(&format!("  {n:>8}  {}\n", reason.describe()));
        }
        for (reason, n) in &self.report.import_skipped {
            out.push_str(&format!(
                "  {n:>8}  records skipped by the importer: {reason}\n"
            ));
        }
        let problems = &self.report.import_problems;
        if !problems.is_empty() {
            out.push_str("\nRecords the importer could not read:\n");
            for p in problems.iter().take(PROBLEMS_SHOWN) {
                out.push_str(&format!("  {p}\n"));
            }
            let more = (problems.len().saturating_sub(PROBLEMS_SHOWN) as u64)
                + self.report.import_problems_omitted;
            if more > 0 {
                out.push_str(&format!("  ... and {more} more (counted above)\n"));
            }
        }
        out
    }
}

/// Problems of the importer listed in the text preview; the rest are counted.
const PROBLEMS_SHOWN: usize = 10;

/// One line of the table: cells padded to the column widths, two spaces apart.
fn table_line<'a>(cells: impl Iterator<Item = &'a str>, widths: &[usize]) -> String {
    let mut l = String::new();
    for (i, (c, w)) in cells.zip(widths).enumerate() {
        if i > 0 {
            l.push_str("  ");
        }
        l.push_str(&format!("{c:<w$}"));
    }
    l.trim_end().to_string() + "\n"
}
