//! The importers' fatal error: the whole import stops. Problems with individual records are not errors; they
//! are counted in the [`ImportReport`](super::ImportReport).

use std::fmt;

use super::report::Esc;
use super::RecordRef;

/// A fatal import error. Its `Display` escapes the control characters of any source text it quotes
/// (see [`escape_controls`](super::escape_controls)) and names the file, the record (line, bundle entry or XML position) and,
/// where there is one, the field: `observations.csv: line 1: field CODE: required column is missing`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Reading the source failed (including a corrupt compressed zip member).
    #[error("{}{}: I/O error: {}", Esc(file), At(at), Esc(&source.to_string()))]
    Io {
        /// The file.
        file: String,
        /// The record being read, if known.
        at: Option<RecordRef>,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The source is not the expected format at all: not JSON, not a FHIR Bundle, a CSV without the required
    /// columns, an XML document whose root is not `<HealthData>`, a zip without an Apple export.
    #[error("{}{}{}: {}", Esc(file), At(at), Field(field), Esc(detail))]
    UnexpectedFormat {
        /// The file.
        file: String,
        /// The record, if known.
        at: Option<RecordRef>,
        /// The field or column, if any.
        field: Option<String>,
        /// What was wrong.
        detail: String,
    },
    /// A syntax error that makes the rest of the stream unreadable (invalid JSON inside a Bundle, ill-formed
    /// XML).
    #[error("{}{}{}: {}", Esc(file), At(at), Field(field), Esc(detail))]
    Malformed {
        /// The file.
        file: String,
        /// The record, if known.
        at: Option<RecordRef>,
        /// The field, if known.
        field: Option<String>,
        /// What was wrong, with the parser's own position where it gives one.
        detail: String,
    },
    /// The source ends in the middle of a record or before its closing element.
    #[error("{}{}: file is truncated: {}", Esc(file), At(at), Esc(detail))]
    Truncated {
        /// The file.
        file: String,
        /// The record that was cut, if known.
        at: Option<RecordRef>,
        /// What was cut.
        detail: String,
    },
    /// A size limit from [`Limits`](super::Limits) was exceeded.
    #[error("{}{}: {what} exceeds the limit of {limit} bytes", Esc(file), At(at))]
    LimitExceeded {
        /// The file.
        file: String,
        /// The record being read.
        at: Option<RecordRef>,
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: u64,
    },
    /// The sink refused an item and stopped the import.
    #[error("import stopped by the consumer: {}", Esc(reason))]
    Rejected {
        /// Why.
        reason: String,
    },
}

impl ImportError {
    /// The file the error is about, if any.
    pub fn file(&self) -> Option<&str> {
        match self {
            ImportError::Io { file, .. }
            | ImportError::UnexpectedFormat { file, .. }
            | ImportError::Malformed { file, .. }
            | ImportError::Truncated { file, .. }
            | ImportError::LimitExceeded { file, .. } => Some(file),
            ImportError::Rejected { .. } => None,
        }
    }

    /// The record the error is about, if known.
    pub fn record(&self) -> Option<RecordRef> {
        match self {
            ImportError::Io { at, .. }
            | ImportError::UnexpectedFormat { at, .. }
            | ImportError::Malformed { at, .. }
            | ImportError::Truncated { at, .. }
            | ImportError::LimitExceeded { at, .. } => *at,
            ImportError::Rejected { .. } => None,
        }
    }
}

/// Formats an optional record as `: line 17`, or nothing.
struct At<'a>(&'a Option<RecordRef>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, ": {at}"),
            None => Ok(()),
        }
    }
}

/// Formats an optional field as `: field VALUE`, or nothing.
struct Field<'a>(&'a Option<String>);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(field) => write!(f, ": field {}", Esc(field)),
            None => Ok(()),
        }
    }
}
