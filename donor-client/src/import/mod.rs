//! Streaming importers for a donor's own health export: FHIR R4 JSON (Bundles and Bulk Data NDJSON), the
//! Synthea CSV export, and Apple Health `export.xml` / `export.zip`.
//!
//! Every importer turns its source into a stream of [`SourceItem`]s handed one at a time to a caller-supplied
//! sink, and returns an [`ImportReport`] that accounts for every record it looked at. Nothing is minimised,
//! generalised or pseudonymised here: that is the minimiser's job, downstream. What this module guarantees is:
//!
//! - **Direct identifiers only ever travel in [`Demographics`].** Names, identifier values (SSN, driver's
//!   licence, passport, MRN, ...), street address lines and the postcode are read from the patient record and
//!   nowhere else; no other item carries them, so a caller can prove they never leave by checking the output
//!   against the `Demographics` it received. Observations whose *answer* is an identifier (LOINC `56799-0`,
//!   "What address do you live at?", asked by the PRAPARE screener Synthea simulates) are not emitted at all
//!   and are counted as [`SkipReason::IdentifyingObservation`]. Telecom values (phone, e-mail) are never read.
//! - **No record is dropped silently.** Each record (bundle entry, NDJSON line, CSV row, top-level XML
//!   element) is counted under its type in [`ImportReport::resources`] and then either produces at least one
//!   item ([`ImportReport::records_emitting`]) or is counted under exactly one [`SkipReason`]
//!   ([`ImportReport::skipped`]); [`ImportReport::is_balanced`] checks this. Only truly fatal conditions
//!   (I/O errors, input that is not the expected format at all, a syntax error that makes the rest of the
//!   stream unreadable, a size limit) are [`ImportError`]s. Items already handed to the sink before a fatal
//!   error must be discarded by the caller: the import as a whole failed.
//!
//! # Patient keys
//!
//! Every item carries `patient: Option<String>`, the *source's local key* of the patient it belongs to, so
//! that exports with several patients (a Synthea CSV export, Bulk Data NDJSON) can be split:
//! the Synthea `Id`/`PATIENT` column; in FHIR the Patient's `id` (or its `fullUrl` minus `urn:uuid:`) and, for
//! other resources, the `subject` reference reduced the same way (`urn:uuid:X`, `Patient/X` and
//! `https://host/fhir/Patient/X` all give `X`). Apple Health exports describe one person and have no key:
//! `None`. **The key is local and must not leave the device**: in Synthea data it equals the Patient's MRN
//! identifier, which is why that value is also listed in [`Demographics::national_ids`].
//!
//! # Dates
//!
//! Source date-times are converted to civil (wall-clock) values **as written**: an offset or `Z` is dropped,
//! not applied. `2019-06-03T19:01:34-04:00` becomes `2019-06-03T19:01:34`, Apple's `2024-01-01 01:01:36
//! +0200` becomes `2024-01-01T01:01:36`. That keeps the local calendar day the patient experienced (which is
//! what age bands and visit dates mean) and needs no time-zone database. FHIR partial dates (`1972`,
//! `1972-06`) cannot be represented by the output model: the item is still emitted, with the date `None`,
//! and a [`Note::ImpreciseDate`] is counted. A date that is present but unparsable skips an observation,
//! condition or medication ([`SkipReason::UnparsableDate`]), but never a patient record: demographics are
//! always emitted, so the identifiers they carry are always known to the caller.
//!
//! # Memory is bounded
//!
//! No importer holds a whole file. Each holds one record at a time, plus a few small, capped tables:
//!
//! - FHIR Bundle: `serde_json::Deserializer::from_reader` driven by a `DeserializeSeed` that walks the
//!   top-level object and the `entry` array; each entry is deserialised on its own, and only the fields the
//!   importer reads are kept (`text.div` narratives, attachments and every other field are skipped by the
//!   parser without being stored). One entry's text may not exceed [`Limits::max_bundle_entry_bytes`].
//!   Across entries only `Medication` codes (for `MedicationRequest.medicationReference`) and unresolved
//!   medication requests are kept, each table capped at [`Limits::max_reference_table`] small entries.
//! - NDJSON, CSV: one line / row in a reused buffer, at most [`Limits::max_record_bytes`] each.
//! - Apple XML: `quick_xml::Reader` over a `BufReader` with one reused event buffer; a single event (a tag
//!   with its attributes) may not exceed [`Limits::max_record_bytes`]; the prolog and DOCTYPE are read into
//!   memory once, capped at [`Limits::max_xml_prolog_bytes`]. A zip entry is decompressed as a stream, never
//!   extracted.
//! - The report keeps counters and at most [`Limits::max_samples`] sample problems.
//!
//! So peak memory is O(largest record + limits), independent of the export's size: a several-GB Apple export
//! costs the same as the 4 KB fixture.

#![deny(missing_docs)]

pub mod apple;
mod codes;
mod dates;
mod error;
pub mod fhir;
mod metered;
mod report;
pub mod synthea;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

pub use error::ImportError;
pub(crate) use report::quoted;
pub use report::{
    escape_controls, ImportReport, ItemCounts, Note, Problem, ProblemKind, SkipReason,
};
pub use synthea::SyntheaTable;

/// A terminology a [`Code`] comes from, derived from a FHIR `system` URI (or implied by the source format).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodeSystem {
    /// LOINC (`http://loinc.org`; also the malformed `http://loinc` that Synthea's vital-signs panels carry).
    Loinc,
    /// SNOMED CT (`http://snomed.info/sct`).
    Snomed,
    /// RxNorm (`http://www.nlm.nih.gov/research/umls/rxnorm`).
    RxNorm,
    /// Apple HealthKit type identifiers such as `HKQuantityTypeIdentifierHeartRate`.
    AppleHealthKit,
    /// Any other system, by its URI (or, for Synthea's own CSV codes, [`synthea::SYNTHEA_LOCAL_SYSTEM`]).
    Other(String),
}

impl CodeSystem {
    /// Maps a system URI to a code system. Case-insensitive, ignores a trailing `/`, and knows the HL7 OIDs.
    /// `http://loinc` (without `.org`, as in Synthea's `85353-1` panels) is LOINC.
    pub fn from_uri(uri: &str) -> CodeSystem {
        let trimmed = uri.trim();
        let norm = trimmed.trim_end_matches('/').to_ascii_lowercase();
        let norm = norm
            .strip_prefix("https://")
            .map_or(norm.clone(), |rest| format!("http://{rest}"));
        match norm.as_str() {
            "http://loinc.org" | "http://loinc" | "urn:oid:2.16.840.1.113883.6.1" => {
                CodeSystem::Loinc
            }
            "http://snomed.info/sct" | "urn:oid:2.16.840.1.113883.6.96" => CodeSystem::Snomed,
            "http://www.nlm.nih.gov/research/umls/rxnorm" | "urn:oid:2.16.840.1.113883.6.88" => {
                CodeSystem::RxNorm
            }
            "http://developer.apple.com/documentation/healthkit" => CodeSystem::AppleHealthKit,
            _ => CodeSystem::Other(trimmed.to_owned()),
        }
    }

    /// The canonical URI of this system (the stored URI for [`CodeSystem::Other`]).
    pub fn uri(&self) -> &str {
        match self {
            CodeSystem::Loinc => "http://loinc.org",
            CodeSystem::Snomed => "http://snomed.info/sct",
            CodeSystem::RxNorm => "http://www.nlm.nih.gov/research/umls/rxnorm",
            CodeSystem::AppleHealthKit => "http://developer.apple.com/documentation/healthkit",
            CodeSystem::Other(uri) => uri,
        }
    }

    /// Whether this is one of the named systems (not [`CodeSystem::Other`]).
    pub fn is_known(&self) -> bool {
        !matches!(self, CodeSystem::Other(_))
    }
}

impl fmt::Display for CodeSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodeSystem::Loinc => f.write_str("LOINC"),
            CodeSystem::Snomed => f.write_str("SNOMED CT"),
            CodeSystem::RxNorm => f.write_str("RxNorm"),
            CodeSystem::AppleHealthKit => f.write_str("HealthKit"),
            CodeSystem::Other(uri) => write!(f, "<{}>", report::Esc(uri)),
        }
    }
}

/// A coded concept: what was measured, diagnosed or prescribed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code {
    /// The terminology.
    pub system: CodeSystem,
    /// The code within it, as written in the source (e.g. `4548-4`, `44054006`, `HKQuantityTypeIdentifierHeartRate`).
    pub code: String,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.system, report::Esc(&self.code))
    }
}

/// The value of an observation, as the source gave it. Units are not converted here.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceValue {
    /// A number with its unit: the UCUM code when the source says the unit is UCUM, otherwise the unit as
    /// written (FHIR `valueQuantity`, a numeric Synthea row, a HealthKit quantity record).
    Quantity {
        /// The number.
        value: f64,
        /// The unit (e.g. `mm[Hg]`, `kg`, `count/min`).
        unit: String,
    },
    /// A textual or coded answer (FHIR `valueString`, the text of a `valueCodeableConcept`, a text Synthea
    /// row, a HealthKit category value such as `HKCategoryValueSleepAnalysisAsleepCore`).
    Text(String),
    /// The record exists but carries no value (a HealthKit category record without `value`).
    None,
}

/// One observation: a measurement, lab result, survey answer or HealthKit sample.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceObservation {
    /// The source's local patient key (see the module docs); never to leave the device.
    pub patient: Option<String>,
    /// What was observed; for a panel's component, the component's code.
    pub code: Code,
    /// The value.
    pub value: SourceValue,
    /// When, as a civil date-time as written in the source (offset dropped, see the module docs).
    pub effective: Option<jiff::civil::DateTime>,
    /// Where in the source this came from.
    pub location: RecordLocation,
}

/// One diagnosis or problem.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceCondition {
    /// The source's local patient key; never to leave the device.
    pub patient: Option<String>,
    /// The condition (SNOMED CT in the supported sources).
    pub code: Code,
    /// Onset date, as written in the source.
    pub onset: Option<jiff::civil::Date>,
    /// Where in the source this came from.
    pub location: RecordLocation,
}

/// One medication prescription or order.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceMedication {
    /// The source's local patient key; never to leave the device.
    pub patient: Option<String>,
    /// The medication (RxNorm in the supported sources).
    pub code: Code,
    /// The date the prescription was written (FHIR `authoredOn`, Synthea `START`).
    pub authored: Option<jiff::civil::Date>,
    /// Where in the source this came from.
    pub location: RecordLocation,
}

/// Administrative sex as recorded in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sex {
    /// Female.
    Female,
    /// Male.
    Male,
    /// Other.
    Other,
    /// Recorded explicitly as unknown.
    Unknown,
}

/// The patient record: the only item that carries direct identifiers.
///
/// Its `Debug` output redacts every identifying field, so it is safe in logs.
#[derive(Clone, PartialEq, Default)]
pub struct Demographics {
    /// The source's local patient key; never to leave the device.
    pub patient: Option<String>,
    /// Date of birth.
    pub birth_date: Option<jiff::civil::Date>,
    /// Administrative sex.
    pub sex: Option<Sex>,
    /// Postal code of the (first current) address.
    pub postcode: Option<String>,
    /// The value of the identifier recognised as the national person number (US SSN, Danish CPR, Dutch BSN,
    /// UK NHS number, or an identifier typed `SS`/`NI`/`NN`), if any. Also listed in `national_ids`.
    pub primary_national_id: Option<String>,
    /// The value of an identifier whose system is the Danish CPR system (`urn:oid:1.2.208.176.1.2` or
    /// `http://cpr.dk`), if any, so the donor's stated CPR number can be checked against it on the device.
    /// Also listed in `national_ids`.
    pub cpr: Option<String>,
    /// Every identifier value found, in source order: SSN, CPR, MRN, driver's licence, passport, the Synthea
    /// patient id...
    pub national_ids: Vec<String>,
    /// Every name part found (given names, family names, full-text names, maiden names, contacts' names), each
    /// as its own string; prefixes and suffixes such as "Mr." are not included.
    pub names: Vec<String>,
    /// Every street address line (and full-text address) found, including contacts' addresses. City, state
    /// and postcode are not repeated here.
    pub addresses: Vec<String>,
    /// Where in the source this came from.
    pub location: Option<RecordLocation>,
}

impl fmt::Debug for Demographics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redacted<T>(value: &Option<T>) -> &'static str {
            if value.is_some() {
                "Some(<redacted>)"
            } else {
                "None"
            }
        }
        f.debug_struct("Demographics")
            .field("patient", &redacted(&self.patient))
            .field("birth_date", &redacted(&self.birth_date))
            .field("sex", &self.sex)
            .field("postcode", &redacted(&self.postcode))
            .field("primary_national_id", &redacted(&self.primary_national_id))
            .field("cpr", &redacted(&self.cpr))
            .field(
                "national_ids",
                &format_args!("<{} redacted>", self.national_ids.len()),
            )
            .field("names", &format_args!("<{} redacted>", self.names.len()))
            .field(
                "addresses",
                &format_args!("<{} redacted>", self.addresses.len()),
            )
            .field("location", &self.location)
            .finish()
    }
}

/// One imported item.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceItem {
    /// A patient record.
    Demographics(Demographics),
    /// An observation (one per component for panels such as blood pressure).
    Observation(SourceObservation),
    /// A condition.
    Condition(SourceCondition),
    /// A medication request.
    Medication(SourceMedication),
}

impl SourceItem {
    /// The source's local patient key of this item.
    pub fn patient(&self) -> Option<&str> {
        match self {
            SourceItem::Demographics(d) => d.patient.as_deref(),
            SourceItem::Observation(o) => o.patient.as_deref(),
            SourceItem::Condition(c) => c.patient.as_deref(),
            SourceItem::Medication(m) => m.patient.as_deref(),
        }
    }

    /// Where in the source this item came from.
    pub fn location(&self) -> Option<&RecordLocation> {
        match self {
            SourceItem::Demographics(d) => d.location.as_ref(),
            SourceItem::Observation(o) => Some(&o.location),
            SourceItem::Condition(c) => Some(&c.location),
            SourceItem::Medication(m) => Some(&m.location),
        }
    }
}

/// A record inside a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordRef {
    /// A 1-based line: a CSV row (the header is line 1) or an NDJSON line.
    Line(u64),
    /// A 0-based index into a FHIR Bundle's `entry` array, displayed FHIRPath-style as `entry[12]`.
    BundleEntry(u64),
    /// The file's one top-level FHIR resource (a file holding a single resource, or a `List`).
    Resource,
    /// A 0-based index into the `contained` array of a file's top-level FHIR `List`, displayed as
    /// `contained[3]`.
    Contained(u64),
    /// An XML element: the 1-based line and the 0-based byte offset of its `<`.
    XmlElement {
        /// 1-based line.
        line: u64,
        /// 0-based byte offset from the start of the XML document.
        byte_offset: u64,
    },
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordRef::Line(line) => write!(f, "line {line}"),
            RecordRef::BundleEntry(index) => write!(f, "entry[{index}]"),
            RecordRef::Resource => f.write_str("resource"),
            RecordRef::Contained(index) => write!(f, "contained[{index}]"),
            RecordRef::XmlElement { line, byte_offset } => {
                write!(f, "line {line} (byte {byte_offset})")
            }
        }
    }
}

/// A file (as named by the caller; a zip member is `archive.zip!/member.xml`) and a record in it.
///
/// For local diagnostics only: like the patient key it must not leave the device, because file names can be
/// identifying (Synthea names its FHIR files after the patient, e.g. `Lanell756_Goodwin327_<uuid>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordLocation {
    /// The file, shared between all items of one file so that millions of items do not copy the path.
    pub file: Arc<str>,
    /// The record.
    pub record: RecordRef,
}

impl fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", report::Esc(&self.file), self.record)
    }
}

/// A supported source format, as detected by [`detect_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// A FHIR R4 JSON Bundle (any type) or FHIR Bulk Data NDJSON; told apart by content.
    FhirJson,
    /// A directory holding Synthea CSV tables.
    SyntheaCsvDirectory,
    /// One Synthea CSV table, recognised by its file name.
    SyntheaCsvFile(SyntheaTable),
    /// Apple Health `export.xml` (any localised name).
    AppleHealthXml,
    /// Apple Health `export.zip`.
    AppleHealthZip,
}

/// Size limits that keep memory bounded on hostile or broken input. Exceeding one is a fatal
/// [`ImportError::LimitExceeded`]. Start from `Limits::default()` and change fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Largest single CSV row, NDJSON line or XML event (a tag with its attributes). Default 16 MiB.
    pub max_record_bytes: u64,
    /// Largest single FHIR Bundle entry, counted in bytes of JSON text including fields that are skipped
    /// without being stored (attachments). Default 256 MiB.
    pub max_bundle_entry_bytes: u64,
    /// Most `Medication` definitions remembered, and most medication requests waiting for a reference to
    /// resolve, per FHIR file. Beyond it, references count as unresolved. Default 100 000.
    pub max_reference_table: usize,
    /// Most bytes read before an XML document's root element (declaration, comments, DOCTYPE). Default 4 MiB.
    pub max_xml_prolog_bytes: u64,
    /// Most bytes of each zip member read to check whether it is the Apple export. Default 1 MiB.
    pub max_zip_sniff_bytes: u64,
    /// Most sample problems kept in the report. Default 64.
    pub max_samples: usize,
    /// Most top-level Apple blood-pressure and dietary records remembered (as 16-byte digests) to
    /// tell whether a `<Correlation>`'s member duplicates one. Default 1 000 000.
    pub max_correlation_keys: usize,
    /// Most sample problems kept per reason. Default 5.
    pub max_samples_per_kind: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 16 * 1024 * 1024,
            max_bundle_entry_bytes: 256 * 1024 * 1024,
            max_reference_table: 100_000,
            max_xml_prolog_bytes: 4 * 1024 * 1024,
            max_zip_sniff_bytes: 1024 * 1024,
            max_samples: 64,
            max_correlation_keys: 1_000_000,
            max_samples_per_kind: 5,
        }
    }
}

/// Options for an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Size limits.
    pub limits: Limits,
    /// Emit every `Record` nested in an Apple Health `<Correlation>` (blood pressure, food), without
    /// checking for a top-level copy. Off by default: Apple's DTD states that "any Records that appear as
    /// children of a correlation also appear as top-level records in this document", which is true of
    /// most exports but not all; so when off, a member is emitted unless a top-level `Record` with the
    /// same type, start and source exists, and otherwise counted as [`SkipReason::CorrelationMember`].
    pub emit_apple_correlation_members: bool,
}

/// The sink every importer hands items to. Returning an error stops the import and is passed through.
pub type ItemSink<'a> = dyn FnMut(SourceItem) -> Result<(), ImportError> + 'a;

/// Imports a file or directory with default options, detecting its format (see [`detect_format`]).
pub fn import_path(path: &Path, sink: &mut ItemSink<'_>) -> Result<ImportReport, ImportError> {
    import_path_with(path, &ImportOptions::default(), sink)
}

/// Imports a file or directory, detecting its format (see [`detect_format`]).
pub fn import_path_with(
    path: &Path,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let format = detect_format(path)?;
    let name = path.display().to_string();
    match format {
        SourceFormat::SyntheaCsvDirectory => synthea::import_dir(path, options, sink),
        SourceFormat::SyntheaCsvFile(table) => {
            let file = open(path)?;
            synthea::import_table(table, file, &name, options, sink)
        }
        SourceFormat::FhirJson => {
            let file = open(path)?;
            let ndjson = path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                e.eq_ignore_ascii_case("ndjson") || e.eq_ignore_ascii_case("jsonl")
            });
            if ndjson {
                fhir::import_ndjson(file, &name, options, sink)
            } else {
                fhir::import_json(file, &name, options, sink)
            }
        }
        SourceFormat::AppleHealthXml => {
            let file = open(path)?;
            apple::import_xml(
                BufReader::with_capacity(256 * 1024, file),
                &name,
                options,
                sink,
            )
        }
        SourceFormat::AppleHealthZip => {
            let file = open(path)?;
            apple::import_zip(BufReader::new(file), &name, options, sink)
        }
    }
}

/// Detects the format of a file or directory: a directory is a Synthea CSV export; a file starting with a
/// zip signature is an Apple `export.zip`, with `<` an Apple `export.xml`, with `{` FHIR JSON (after an
/// optional UTF-8 BOM and whitespace); a file named like a Synthea table (`observations.csv`, ...) is that
/// table.
pub fn detect_format(path: &Path) -> Result<SourceFormat, ImportError> {
    let name = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| ImportError::Io {
        file: name.clone(),
        at: None,
        source,
    })?;
    if meta.is_dir() {
        return Ok(SourceFormat::SyntheaCsvDirectory);
    }
    let mut reader = BufReader::with_capacity(1024, open(path)?);
    let head = reader.fill_buf().map_err(|source| ImportError::Io {
        file: name.clone(),
        at: None,
        source,
    })?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(SourceFormat::AppleHealthZip);
    }
    let body = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'<') => return Ok(SourceFormat::AppleHealthXml),
        Some(b'{') => return Ok(SourceFormat::FhirJson),
        _ => {}
    }
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(table) = SyntheaTable::from_file_name(file_name) {
        return Ok(SourceFormat::SyntheaCsvFile(table));
    }
    Err(ImportError::UnexpectedFormat {
        file: name,
        at: None,
        field: None,
        detail: "not a recognised export: expected FHIR JSON (a Bundle or NDJSON), a Synthea CSV table \
                 (patients.csv, observations.csv, conditions.csv, medications.csv) or directory, or an Apple \
                 Health export.xml / export.zip"
            .into(),
    })
}

fn open(path: &Path) -> Result<File, ImportError> {
    File::open(path).map_err(|source| ImportError::Io {
        file: path.display().to_string(),
        at: None,
        source,
    })
}

/// LOINC codes whose answer is itself a direct identifier; such observations are never emitted.
const IDENTIFYING_OBSERVATION_CODES: &[&str] = &[
    // PRAPARE "What address do you live at?": the answer is the patient's street address.
    "56799-0",
];

fn is_identifying_observation(code: &Code) -> bool {
    code.system == CodeSystem::Loinc && IDENTIFYING_OBSERVATION_CODES.contains(&code.code.as_str())
}
