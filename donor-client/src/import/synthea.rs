//! Synthea CSV importer: `patients.csv`, `observations.csv`, `conditions.csv` and `medications.csv`, read row
//! by row with the `csv` crate into one reused record. Columns are looked up by header name,
//! case-insensitively, so Synthea v2 (no `CATEGORY`) and v3 (`CATEGORY`; `SYSTEM` in later conditions
//! exports; `MIDDLE` in patients) headers both work; extra columns are ignored.
//!
//! - `patients.csv` → [`Demographics`]: `Id` (also the patient key), `BIRTHDATE`, `GENDER` (`M`/`F`), `ZIP`,
//!   identifiers `SSN` (the primary national id), `DRIVERS`, `PASSPORT`; names `FIRST`, `MIDDLE`, `LAST`,
//!   `MAIDEN`; `ADDRESS`. `DEATHDATE`, `LAT`/`LON` and the rest are not read.
//! - `observations.csv` → [`SourceObservation`]: `CODE` is LOINC when it is a well-formed LOINC code, else
//!   Synthea's own (`QALY`, `DALY`, `QOLS`) under [`SYNTHEA_LOCAL_SYSTEM`]; `TYPE` `numeric` gives a quantity
//!   with `UNITS`, `text` gives text; without a `TYPE` the value decides. Blood pressure arrives as separate
//!   `8480-6`/`8462-4` rows and stays that way.
//! - `conditions.csv` → [`SourceCondition`] (SNOMED CT unless a `SYSTEM` column says otherwise), `START`.
//! - `medications.csv` → [`SourceMedication`] (RxNorm), `START` (a date-time; its date is kept).
//!
//! Every row carries its `PATIENT` (`Id` in `patients.csv`) as the item's patient key. A row that cannot be
//! read as CSV (wrong number of fields, invalid UTF-8) is counted as [`SkipReason::MalformedRecord`]; a header
//! without the required columns is an [`ImportError::UnexpectedFormat`].

use std::io::Read;
use std::path::{Path, PathBuf};

use super::codes::{self, CodeCheck};
use super::dates::{self, SourceDate};
use super::metered::{Meter, Metered};
use super::report::{quoted, Collector, Skip};
use super::{
    is_identifying_observation, Code, CodeSystem, Demographics, ImportError, ImportOptions,
    ImportReport, ItemSink, Note, RecordRef, Sex, SkipReason, SourceCondition, SourceItem,
    SourceMedication, SourceObservation, SourceValue,
};

/// The system given to Synthea's own observation codes (`QALY`, `DALY`, `QOLS`), which are not LOINC.
pub const SYNTHEA_LOCAL_SYSTEM: &str = "http://synthetichealth.github.io/synthea/";

/// A Synthea CSV table this importer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyntheaTable {
    /// `patients.csv`.
    Patients,
    /// `observations.csv`.
    Observations,
    /// `conditions.csv`.
    Conditions,
    /// `medications.csv`.
    Medications,
}

impl SyntheaTable {
    /// All tables, in the order a directory is imported (patients first, so demographics come first).
    pub const ALL: [SyntheaTable; 4] = [
        SyntheaTable::Patients,
        SyntheaTable::Observations,
        SyntheaTable::Conditions,
        SyntheaTable::Medications,
    ];

    /// The file name Synthea gives the table.
    pub fn file_name(self) -> &'static str {
        match self {
            SyntheaTable::Patients => "patients.csv",
            SyntheaTable::Observations => "observations.csv",
            SyntheaTable::Conditions => "conditions.csv",
            SyntheaTable::Medications => "medications.csv",
        }
    }

    /// The table a file name (not a path) denotes, case-insensitively.
    pub fn from_file_name(name: &str) -> Option<SyntheaTable> {
        SyntheaTable::ALL
            .into_iter()
            .find(|t| t.file_name().eq_ignore_ascii_case(name))
    }

    /// The type under which this table's rows are counted in [`ImportReport::resources`].
    pub fn resource_type(self) -> &'static str {
        match self {
            SyntheaTable::Patients => "Patient",
            SyntheaTable::Observations => "Observation",
            SyntheaTable::Conditions => "Condition",
            SyntheaTable::Medications => "MedicationRequest",
        }
    }
}

/// Imports one table from a reader; `file` names it in locations and errors.
pub fn import_table<R: Read>(
    table: SyntheaTable,
    reader: R,
    file: &str,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let mut collector = Collector::new(options.limits, sink);
    collector.start_file(file);
    read_table(table, reader, &mut collector)?;
    Ok(collector.finish())
}

/// Imports every supported table in a directory, patients first. Other files are listed in
/// [`ImportReport::ignored_files`]; a directory without any supported table is an error.
pub fn import_dir(
    dir: &Path,
    options: &ImportOptions,
    sink: &mut ItemSink<'_>,
) -> Result<ImportReport, ImportError> {
    let dir_name = dir.display().to_string();
    let io_error = |source| ImportError::Io {
        file: dir_name.clone(),
        at: None,
        source,
    };
    let mut tables: [Option<PathBuf>; 4] = Default::default();
    let mut ignored = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match SyntheaTable::from_file_name(&name) {
            Some(table) => {
                if let Some(slot) = SyntheaTable::ALL
                    .iter()
                    .position(|t| *t == table)
                    .and_then(|i| tables.get_mut(i))
                {
                    *slot = Some(entry.path());
                }
            }
            None => ignored.push(name),
        }
    }
    if tables.iter().all(Option::is_none) {
        return Err(ImportError::UnexpectedFormat {
            file: dir_name,
            at: None,
            field: None,
            detail: "no Synthea CSV table (patients.csv, observations.csv, conditions.csv, medications.csv) \
                     in the directory"
                .into(),
        });
    }
    let mut collector = Collector::new(options.limits, sink);
    for (table, path) in SyntheaTable::ALL.into_iter().zip(tables) {
        let Some(path) = path else { continue };
        let name = path.display().to_string();
        let file = std::fs::File::open(&path).map_err(|source| ImportError::Io {
            file: name.clone(),
            at: None,
            source,
        })?;
        collector.start_file(&name);
        read_table(table, file, &mut collector)?;
    }
    ignored.sort();
    for name in ignored {
        collector.ignore_file(name);
    }
    Ok(collector.finish())
}

/// Column indexes, resolved from the header by name.
struct Columns {
    patient: usize,
    code: Option<usize>,
    value: Option<usize>,
    date: Option<usize>,
    units: Option<usize>,
    kind: Option<usize>,
    system: Option<usize>,
    birth_date: Option<usize>,
    gender: Option<usize>,
    zip: Option<usize>,
    identifiers: Vec<usize>,
    ssn: Option<usize>,
    names: Vec<usize>,
    address: Option<usize>,
}

impl Columns {
    fn resolve(
        table: SyntheaTable,
        header: &csv::StringRecord,
        file: &str,
    ) -> Result<Columns, ImportError> {
        let find = |name: &str| {
            header.iter().position(|h| {
                h.trim_start_matches('\u{feff}')
                    .trim()
                    .eq_ignore_ascii_case(name)
            })
        };
        let required = |name: &str| {
            find(name).ok_or_else(|| {
                let mut shown: String = header
                    .iter()
                    .collect::<Vec<_>>()
                    .join(",")
                    .chars()
                    .take(120)
                    .collect();
                if shown.is_empty() {
                    shown.push_str("(empty)");
                }
                ImportError::UnexpectedFormat {
                    file: file.to_owned(),
                    at: Some(RecordRef::Line(1)),
                    field: Some(name.to_owned()),
                    detail: format!(
                        "required column is missing: not a Synthea {} (header: {})",
                        table.file_name(),
                        quoted(&shown)
                    ),
                }
            })
        };
        let patient_column = if table == SyntheaTable::Patients {
            "Id"
        } else {
            "PATIENT"
        };
        let mut columns = Columns {
            patient: required(patient_column)?,
            code: None,
            value: None,
            date: None,
            units: None,
            kind: None,
            system: None,
            birth_date: None,
            gender: None,
            zip: None,
            identifiers: Vec::new(),
            ssn: None,
            names: Vec::new(),
            address: None,
        };
        match table {
            SyntheaTable::Patients => {
                columns.birth_date = find("BIRTHDATE");
                columns.gender = find("GENDER");
                columns.zip = find("ZIP");
                columns.ssn = find("SSN");
                columns.identifiers = ["Id", "SSN", "DRIVERS", "PASSPORT"]
                    .into_iter()
                    .filter_map(find)
                    .collect();
                columns.names = ["FIRST", "MIDDLE", "LAST", "MAIDEN"]
                    .into_iter()
                    .filter_map(find)
                    .collect();
                columns.address = find("ADDRESS");
            }
            SyntheaTable::Observations => {
                columns.code = Some(required("CODE")?);
                columns.value = Some(required("VALUE")?);
                columns.date = find("DATE");
                columns.units = find("UNITS");
                columns.kind = find("TYPE");
            }
            SyntheaTable::Conditions => {
                columns.code = Some(required("CODE")?);
                columns.date = find("START");
                columns.system = find("SYSTEM");
            }
            SyntheaTable::Medications => {
                columns.code = Some(required("CODE")?);
                columns.date = find("START");
            }
        }
        Ok(columns)
    }
}

fn read_table<R: Read>(
    table: SyntheaTable,
    reader: R,
    c: &mut Collector<'_, '_>,
) -> Result<(), ImportError> {
    let limit = c.limits().max_record_bytes;
    let meter = Meter::new(limit);
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .buffer_capacity(64 * 1024)
        .from_reader(Metered::new(reader, meter.clone()));
    let header_error = |err: csv::Error, c: &Collector<'_, '_>| -> ImportError {
        let file = c.file().to_owned();
        let at = Some(RecordRef::Line(1));
        if meter.tripped() {
            return ImportError::LimitExceeded {
                file,
                at,
                what: "the CSV header",
                limit,
            };
        }
        let detail = format!("not a Synthea CSV header: {err}");
        match err.into_kind() {
            csv::ErrorKind::Io(source) => ImportError::Io { file, at, source },
            _ => ImportError::UnexpectedFormat {
                file,
                at,
                field: None,
                detail,
            },
        }
    };
    meter.mark();
    let header = match csv.headers() {
        Ok(header) => header.clone(),
        Err(err) => return Err(header_error(err, c)),
    };
    let columns = Columns::resolve(table, &header, c.file())?;
    let kind = table.resource_type();
    let mut record = csv::StringRecord::new();
    loop {
        meter.mark();
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, csv::Position::line);
                let at = RecordRef::Line(line);
                c.seen(kind);
                let outcome = match table {
                    SyntheaTable::Patients => {
                        patient_row(c, at, &record, &columns).map(|()| Ok(()))
                    }
                    SyntheaTable::Observations => observation_row(c, at, &record, &columns),
                    SyntheaTable::Conditions => condition_row(c, at, &record, &columns),
                    SyntheaTable::Medications => medication_row(c, at, &record, &columns),
                }?;
                match outcome {
                    Ok(()) => c.record_emitted(),
                    Err(skip) => c.skip(at, skip),
                }
            }
            Err(err) => {
                let file = c.file().to_owned();
                if meter.tripped() {
                    let at = err.position().map(|p| RecordRef::Line(p.line()));
                    return Err(ImportError::LimitExceeded {
                        file,
                        at,
                        what: "a CSV row",
                        limit,
                    });
                }
                let at = RecordRef::Line(err.position().map_or(0, csv::Position::line));
                match err.kind() {
                    csv::ErrorKind::Utf8 { err: utf8, .. } => {
                        c.seen(kind);
                        let field = format!("field {}", utf8.field() + 1);
                        c.skip(
                            at,
                            Skip::new(SkipReason::MalformedRecord, field, "invalid UTF-8"),
                        );
                    }
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => {
                        c.seen(kind);
                        let detail = format!("{len} fields where the header has {expected_len}");
                        c.skip(at, Skip::new(SkipReason::MalformedRecord, "row", detail));
                    }
                    _ => {
                        let detail = err.to_string();
                        return Err(match err.into_kind() {
                            csv::ErrorKind::Io(source) => ImportError::Io {
                                file,
                                at: Some(at),
                                source,
                            },
                            _ => ImportError::Malformed {
                                file,
                                at: Some(at),
                                field: None,
                                detail,
                            },
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// The trimmed, non-empty field at `column`.
fn field(record: &csv::StringRecord, column: Option<usize>) -> Option<&str> {
    column
        .and_then(|i| record.get(i))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

type RowResult = Result<Result<(), Skip>, ImportError>;

fn patient_row(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    record: &csv::StringRecord,
    cols: &Columns,
) -> Result<(), ImportError> {
    let mut d = Demographics {
        patient: field(record, Some(cols.patient)).map(str::to_owned),
        location: Some(c.location(at)),
        ..Demographics::default()
    };
    if let Some(text) = field(record, cols.birth_date) {
        match dates::parse(text) {
            Some(SourceDate::Partial) => c.note(at, Note::ImpreciseDate, "BIRTHDATE", quoted(text)),
            Some(date) => d.birth_date = date.date(),
            None => c.note(at, Note::UnparsableBirthDate, "BIRTHDATE", quoted(text)),
        }
    }
    if let Some(gender) = field(record, cols.gender) {
        d.sex = match gender.to_ascii_lowercase().as_str() {
            "f" | "female" => Some(Sex::Female),
            "m" | "male" => Some(Sex::Male),
            _ => {
                c.note(at, Note::UnrecognisedSex, "GENDER", quoted(gender));
                None
            }
        };
    }
    d.postcode = field(record, cols.zip).map(str::to_owned);
    d.primary_national_id = field(record, cols.ssn).map(str::to_owned);
    for &i in &cols.identifiers {
        push_unique(&mut d.national_ids, field(record, Some(i)));
    }
    for &i in &cols.names {
        push_unique(&mut d.names, field(record, Some(i)));
    }
    push_unique(&mut d.addresses, field(record, cols.address));
    c.emit(SourceItem::Demographics(d))
}

fn push_unique(list: &mut Vec<String>, value: Option<&str>) {
    if let Some(value) = value {
        if !list.iter().any(|v| v == value) {
            list.push(value.to_owned());
        }
    }
}

fn observation_row(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    record: &csv::StringRecord,
    cols: &Columns,
) -> RowResult {
    let Some(code) = field(record, cols.code) else {
        return Ok(Err(Skip::new(SkipReason::MissingCode, "CODE", "empty")));
    };
    let code = match codes::check_loinc(code) {
        CodeCheck::Invalid => Code {
            system: CodeSystem::Other(SYNTHEA_LOCAL_SYSTEM.to_owned()),
            code: code.to_owned(),
        },
        verdict => {
            if verdict == CodeCheck::BadCheckDigit {
                c.note(
                    at,
                    Note::CheckDigitMismatch,
                    "CODE",
                    format!("LOINC {} has a wrong check digit", quoted(code)),
                );
            }
            Code {
                system: CodeSystem::Loinc,
                code: code.to_owned(),
            }
        }
    };
    if is_identifying_observation(&code) {
        return Ok(Err(Skip::new(
            SkipReason::IdentifyingObservation,
            "CODE",
            code.code,
        )));
    }
    let effective = match date(c, at, "DATE", field(record, cols.date)) {
        Ok(date) => date.and_then(SourceDate::date_time),
        Err(skip) => return Ok(Err(skip)),
    };
    let Some(raw) = field(record, cols.value) else {
        return Ok(Err(Skip::new(SkipReason::MissingValue, "VALUE", "empty")));
    };
    let units = field(record, cols.units);
    let number = || raw.parse::<f64>().ok().filter(|v| v.is_finite());
    let value = match field(record, cols.kind)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("numeric") => {
            let Some(number) = number() else {
                return Ok(Err(Skip::new(
                    SkipReason::UnparsableValue,
                    "VALUE",
                    format!("not a number {}", quoted(raw)),
                )));
            };
            let Some(unit) = units else {
                return Ok(Err(Skip::new(
                    SkipReason::MissingUnit,
                    "UNITS",
                    format!("{number} without unit"),
                )));
            };
            SourceValue::Quantity {
                value: number,
                unit: unit.to_owned(),
            }
        }
        Some("text") => SourceValue::Text(raw.to_owned()),
        _ => match (number(), units) {
            (Some(number), Some(unit)) => SourceValue::Quantity {
                value: number,
                unit: unit.to_owned(),
            },
            _ => SourceValue::Text(raw.to_owned()),
        },
    };
    let patient = field(record, Some(cols.patient)).map(str::to_owned);
    let location = c.location(at);
    c.emit(SourceItem::Observation(SourceObservation {
        patient,
        code,
        value,
        effective,
        location,
    }))?;
    Ok(Ok(()))
}

fn condition_row(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    record: &csv::StringRecord,
    cols: &Columns,
) -> RowResult {
    let system = field(record, cols.system).map_or(CodeSystem::Snomed, system_from_name);
    let code = match checked_code(c, at, system, field(record, cols.code)) {
        Ok(code) => code,
        Err(skip) => return Ok(Err(skip)),
    };
    let onset = match date(c, at, "START", field(record, cols.date)) {
        Ok(date) => date.and_then(SourceDate::date),
        Err(skip) => return Ok(Err(skip)),
    };
    let patient = field(record, Some(cols.patient)).map(str::to_owned);
    let location = c.location(at);
    c.emit(SourceItem::Condition(SourceCondition {
        patient,
        code,
        onset,
        location,
    }))?;
    Ok(Ok(()))
}

fn medication_row(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    record: &csv::StringRecord,
    cols: &Columns,
) -> RowResult {
    let code = match checked_code(c, at, CodeSystem::RxNorm, field(record, cols.code)) {
        Ok(code) => code,
        Err(skip) => return Ok(Err(skip)),
    };
    let authored = match date(c, at, "START", field(record, cols.date)) {
        Ok(date) => date.and_then(SourceDate::date),
        Err(skip) => return Ok(Err(skip)),
    };
    let patient = field(record, Some(cols.patient)).map(str::to_owned);
    let location = c.location(at);
    c.emit(SourceItem::Medication(SourceMedication {
        patient,
        code,
        authored,
        location,
    }))?;
    Ok(Ok(()))
}

/// The `CODE` column checked against `system`.
fn checked_code(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    system: CodeSystem,
    code: Option<&str>,
) -> Result<Code, Skip> {
    let Some(code) = code else {
        return Err(Skip::new(SkipReason::MissingCode, "CODE", "empty"));
    };
    match codes::check(&system, code) {
        CodeCheck::Invalid => Err(Skip::new(
            SkipReason::InvalidCode,
            "CODE",
            format!("{} is not a valid {system} code", quoted(code)),
        )),
        verdict => {
            if verdict == CodeCheck::BadCheckDigit {
                c.note(
                    at,
                    Note::CheckDigitMismatch,
                    "CODE",
                    format!("{system} {} has a wrong check digit", quoted(code)),
                );
            }
            Ok(Code {
                system,
                code: code.to_owned(),
            })
        }
    }
}

/// Parses an optional date column; a partial date is noted and gives `None`.
fn date(
    c: &mut Collector<'_, '_>,
    at: RecordRef,
    column: &'static str,
    text: Option<&str>,
) -> Result<Option<SourceDate>, Skip> {
    let Some(text) = text else { return Ok(None) };
    match dates::parse(text) {
        Some(SourceDate::Partial) => {
            c.note(at, Note::ImpreciseDate, column, quoted(text));
            Ok(None)
        }
        Some(date) => Ok(Some(date)),
        None => Err(Skip::new(
            SkipReason::UnparsableDate,
            column,
            format!("not a date {}", quoted(text)),
        )),
    }
}

/// A `SYSTEM` column value: Synthea's names (`SNOMED-CT`, `LOINC`, `RxNorm`) or a URI.
fn system_from_name(name: &str) -> CodeSystem {
    let upper = name.trim().to_ascii_uppercase().replace([' ', '_'], "-");
    match upper.as_str() {
        "SNOMED-CT" | "SNOMED" | "SNOMEDCT" | "SCT" => CodeSystem::Snomed,
        "LOINC" => CodeSystem::Loinc,
        "RXNORM" => CodeSystem::RxNorm,
        _ => CodeSystem::from_uri(name),
    }
}
