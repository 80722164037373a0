//! Minimisation: from the importer's stream of [`SourceItem`]s to exactly the rows a study asks
//! for, and a [`MinimiseReport`] that counts everything else by the reason it was dropped.
//!
//! # What leaves and what does not
//!
//! A [`Minimiser`] is the importer's sink. It keeps, per generalised period (the study's day,
//! ISO week or month), only running sums and counts of the study's measures plus the first and
//! last observation date; per donor it keeps the birth date, sex and postcode (locally, to compute
//! the generalised dimensions) and the earliest onset of each study condition. Names, addresses,
//! identifier values, free-text answers, medication codes, source and device names are never
//! copied into any of its structures: they are only *counted* ([`DropReason`]). (The source's
//! local patient key is compared, to keep one patient's items, and never output.) Memory is therefore O(periods × fields), independent of the export's size.
//!
//! # Rules (the documented choices)
//!
//! * **Codes**: an observation feeds a field when its code system maps to the study's
//!   [`CodeSystemName`] (LOINC, SNOMED CT, RxNorm, HealthKit) and its code is one of the field's
//!   source codes (exact string match).
//! * **Units**: the source unit, trimmed, must equal the field's unit (factor 1) or the `from` of
//!   one of its `convert` entries (compared trimmed, exactly, case-sensitive); the value becomes
//!   `value * factor + offset`. Any other unit: [`DropReason::UnknownUnit`].
//! * **Ranges**: a converted value outside `[min, max]` (or not finite):
//!   [`DropReason::OutOfRange`]. Values are never clamped.
//! * **Several values in one period**: the row carries their arithmetic **mean** (of the values
//!   after conversion and range check). Means of in-range values are in range.
//! * **Dates**: an observation without a date cannot be placed in a period:
//!   [`DropReason::NoDate`]. The row's *reference date* is the latest observation date in the
//!   period.
//! * **Conditions**: a condition field is `true` when a diagnosis with one of its codes has an onset
//!   on or before the row's reference date. A study diagnosis without an onset date is counted
//!   ([`DropReason::ConditionWithoutOnset`]) and does not set any flag.
//! * **Age band**: the age in whole years at the row's reference date, from the export's birth date
//!   or, when the export has none, the birth date encoded in the donor's CPR number. If the donor
//!   was younger than the study's `min_age` at *any* observation of the period (the earliest date
//!   is checked), the whole row is dropped ([`DropReason::RowUnderMinAge`]), so no measurement
//!   taken before `min_age` leaves.
//! * **Sex**: the export's administrative sex; `unknown` when the export has none.
//! * **Residence**: the region or municipality of the postcode (the donor-stated postcode in
//!   [`MinimiseOptions::postcode`] wins over the export's); without a postcode (Apple Health
//!   exports have none), or with one that is not Danish or not assigned, every row is dropped
//!   ([`DropReason::RowUnknownPostcode`]).
//! * **Several patients**: an export with several patients (a Synthea CSV directory) needs
//!   [`MinimiseOptions::patient`]; items of other patients are counted
//!   ([`DropReason::OtherPatient`]) and never looked at. Items without a patient key (Apple Health)
//!   belong to the donor. [`Minimiser::finish_checked`] (and so [`minimise_paths`]) fails when
//!   the export holds several patients and none was chosen, or the chosen one is not in it, naming
//!   the patient keys it found (escaped, at most [`PATIENTS_LISTED`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, RecordBatch, StringArray};
use datadonor_schemas::geo::{municipality_of_postcode, region_of_postcode};
use datadonor_schemas::pseudonym::Pseudonym;
use datadonor_schemas::study::{
    age_band_label, CodeSystemName, FieldSource, RegionLevel, StudyDefinition,
};
use jiff::civil::Date;
use serde::Serialize;

use crate::import::{
    self, quoted, CodeSystem, Demographics, ImportError, ImportReport, ProblemKind, Sex,
    SourceItem, SourceValue,
};

/// Why something from the export does not leave the device. Every item the minimiser receives
/// is either used or counted under exactly one of these (identifying strings inside a patient
/// record are counted one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// A name (given, family, maiden, contact) in a patient record.
    Name,
    /// A street address line in a patient record.
    Address,
    /// An identifier value (SSN, CPR, MRN, licence, passport, the source's patient id).
    Identifier,
    /// The exact birth date: only the age band at each row's date leaves.
    ExactBirthDate,
    /// The exact postcode: only the region or municipality leaves.
    ExactPostcode,
    /// A free-text or coded-text answer of an observation.
    FreeText,
    /// An observation without a value.
    NoValue,
    /// An observation whose code the study does not ask for.
    ObservationNotRequested,
    /// A measure in a unit that is neither the field's nor one of its conversions.
    UnknownUnit,
    /// A measure outside the field's range after conversion.
    OutOfRange,
    /// An observation without a date.
    NoDate,
    /// A diagnosis the study does not ask for.
    ConditionNotRequested,
    /// A study diagnosis without an onset date.
    ConditionWithoutOnset,
    /// A medication (no study field collects medications).
    Medication,
    /// An item of another patient in a multi-patient export.
    OtherPatient,
    /// A row (period) dropped because the export and the CPR give no birth date.
    RowNoBirthDate,
    /// A row (period) in which the donor was younger than the study's minimum age.
    RowUnderMinAge,
    /// A row (period) dropped because the postcode is missing or not a Danish postcode.
    RowUnknownPostcode,
}

impl DropReason {
    /// A short description for the preview.
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::Name => "names",
            DropReason::Address => "street addresses",
            DropReason::Identifier => "identifier values (SSN, CPR, MRN, licence, ...)",
            DropReason::ExactBirthDate => "exact birth date (only the age band leaves)",
            DropReason::ExactPostcode => "exact postcode (only the region leaves)",
            DropReason::FreeText => "free-text answers",
            DropReason::NoValue => "observations without a value",
            DropReason::ObservationNotRequested => "observations the study does not ask for",
            DropReason::UnknownUnit => "measures in an unknown unit",
            DropReason::OutOfRange => "measures outside the field's range",
            DropReason::NoDate => "observations without a date",
            DropReason::ConditionNotRequested => "diagnoses the study does not ask for",
            DropReason::ConditionWithoutOnset => "study diagnoses without an onset date",
            DropReason::Medication => "medications",
            DropReason::OtherPatient => "items of other patients in the export",
            DropReason::RowNoBirthDate => "periods dropped: no birth date",
            DropReason::RowUnderMinAge => "periods dropped: under the study's minimum age",
            DropReason::RowUnknownPostcode => "periods dropped: postcode unknown or not Danish",
        }
    }
}

/// Counts of what was used and what was dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MinimiseReport {
    /// Observations whose value went into a row (before row-level drops).
    pub observations_used: u64,
    /// Study diagnoses used for condition flags.
    pub conditions_used: u64,
    /// Rows produced.
    pub rows: u64,
    /// Dropped items (and identifying strings, and rows) by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Records the importer skipped, by the importer's reason.
    pub import_skipped: BTreeMap<String, u64>,
    /// The importer's sampled problems with the data (file, record, field, what), in the order
    /// met: a record it could not read, not one it leaves out on purpose. They may quote the
    /// source, so like the preview they stay on the device.
    pub import_problems: Vec<String>,
    /// Problems beyond those sampled.
    pub import_problems_omitted: u64,
}

impl MinimiseReport {
    /// The count for one reason.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
    fn add(&mut self, reason: DropReason, n: u64) {
        if n > 0 {
            *self.dropped.entry(reason).or_insert(0) += n;
        }
    }
    /// Merge the importer's skip counts and its sampled problems of skipped records.
    pub fn add_import_report(&mut self, r: &ImportReport) {
        for (reason, n) in r.skipped.iter().chain(r.skipped_components.iter()) {
            *self
                .import_skipped
                .entry(reason.describe().to_string())
                .or_insert(0) += n;
        }
        for p in &r.samples {
            if matches!(
                p.kind,
                ProblemKind::Skipped(_) | ProblemKind::ComponentSkipped(_)
            ) {
                self.import_problems.push(p.to_string());
            }
        }
        self.import_problems_omitted += r.samples_omitted;
    }
}

/// Choices the donor makes outside the export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MinimiseOptions {
    /// In a multi-patient export, the source's local key of the donor's own record. Used only
    /// on the device.
    pub patient: Option<String>,
    /// The birth date encoded in the donor's CPR, used when the export has none.
    pub fallback_birth_date: Option<Date>,
    /// A donor-stated Danish postcode, overriding the export's.
    pub postcode: Option<String>,
    /// The donor's stated CPR number, checked against a CPR number the export names. Used only on
    /// the device.
    pub cpr: Option<datadonor_schemas::pseudonym::Cpr>,
}

impl MinimiseOptions {
    /// Options with the fallback birth date taken from a CPR number, which must also match a CPR
    /// number the export names (see [`MinimiseError::CprMismatch`]).
    pub fn with_cpr(mut self, cpr: &datadonor_schemas::pseudonym::Cpr) -> Self {
        self.fallback_birth_date = cpr.birth_date();
        self.cpr = Some(cpr.clone());
        self
    }
    /// Select the patient of a multi-patient export.
    pub fn with_patient(mut self, patient: impl Into<String>) -> Self {
        self.patient = Some(patient.into());
        self
    }
    /// Set a donor-stated postcode.
    pub fn with_postcode(mut self, postcode: impl Into<String>) -> Self {
        self.postcode = Some(postcode.into());
        self
    }
}

/// Errors of minimisation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MinimiseError {
    /// The import failed (names file, record and field).
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The export holds several patients and none was selected.
    #[error("{file}: the export holds records of more than one patient ({}); choose the donor's own with --patient ID", PatientList(.patients, *.more))]
    SeveralPatients {
        /// The file in which the second patient appeared (escaped).
        file: String,
        /// The patient keys found, in the order met, quoted and escaped (at most [`PATIENTS_LISTED`]).
        patients: Vec<String>,
        /// How many more patients the export holds.
        more: u64,
    },
    /// The patient selected with [`MinimiseOptions::patient`] has no record in the export.
    #[error("--patient {patient}: no record of this patient in the export ({})", PatientList(.found, *.more))]
    PatientNotFound {
        /// The key asked for, quoted and escaped.
        patient: String,
        /// The patient keys found, in the order met, quoted and escaped (at most [`PATIENTS_LISTED`]).
        found: Vec<String>,
        /// How many more patients the export holds.
        more: u64,
    },
    /// The donor's stated CPR number differs from the one the export names. Neither number is
    /// shown in full: only the last two digits of each and the first differing position.
    #[error("the CPR number given does not match the one in the export (…-{given_tail} vs …-{export_tail}, first differing at digit {position}); check for a typo")]
    CprMismatch {
        /// The last two digits of the stated CPR number.
        given_tail: String,
        /// The last two digits of the export's CPR number.
        export_tail: String,
        /// The first position (1-based) at which the two differ.
        position: usize,
    },
    /// No row survived minimisation.
    #[error("nothing to donate: no observation matches the study's fields (see the drop report)")]
    NoRows,
    /// Building the Arrow batch failed (an internal inconsistency).
    #[error("building the rows failed: {0}")]
    Arrow(String),
}

/// Most patient keys an error lists; the rest are counted.
pub const PATIENTS_LISTED: usize = 20;

/// Most distinct patient keys remembered to count them.
const PATIENTS_COUNTED: usize = 1_000_000;

/// Formats the patient keys an error lists: `patients found: "a", "b" and 3 more`.
struct PatientList<'a>(&'a [String], u64);

impl std::fmt::Display for PatientList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("it names no patient");
        }
        write!(f, "patients found: {}", self.0.join(", "))?;
        if self.1 > 0 {
            write!(f, " and {} more", self.1)?;
        }
        Ok(())
    }
}

/// The patient keys met in an export: the first few for messages, all (up to a cap) to count them.
#[derive(Default)]
struct PatientsMet {
    listed: Vec<String>,
    distinct: HashSet<String>,
    /// Keys past [`PATIENTS_COUNTED`], counted without being remembered (may count one twice).
    uncounted: u64,
}

impl PatientsMet {
    fn met(&mut self, key: &str) {
        if self.distinct.contains(key) {
            return;
        }
        if self.distinct.len() >= PATIENTS_COUNTED {
            self.uncounted += 1;
            return;
        }
        self.distinct.insert(key.to_owned());
        if self.listed.len() < PATIENTS_LISTED {
            self.listed.push(quoted(key));
        }
    }

    fn more(&self) -> u64 {
        (self.distinct.len() - self.listed.len()) as u64 + self.uncounted
    }
}

impl std::fmt::Debug for PatientsMet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PatientsMet(<{} redacted>)", self.distinct.len())
    }
}

/// One cell value of a minimised row.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    /// A measure (absent when not observed in the period).
    Number(Option<f64>),
    /// A condition flag.
    Flag(bool),
    /// A category (age band, sex, region or municipality code).
    Category(String),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Number(Some(v)) => write!(f, "{}", round6(*v)),
            Cell::Number(None) => f.write_str(""),
            Cell::Flag(b) => write!(f, "{b}"),
            Cell::Category(s) => f.write_str(s),
        }
    }
}

/// Values are rounded to 6 significant decimals, so the rows carry no more precision than a
/// measurement has (and conversion artefacts such as `7.800000000000001` do not leave).
pub(crate) fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// One row without the donor column: the period and the study's fields in declaration order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MinimisedRow {
    /// The generalised period.
    pub period: String,
    /// One cell per study field.
    pub cells: Vec<Cell>,
}

/// The minimised rows of one donor for one study, before the pseudonym is attached.
#[derive(Debug, Clone, PartialEq)]
pub struct MinimisedRows {
    study: StudyDefinition,
    /// Rows in period order.
    pub rows: Vec<MinimisedRow>,
    /// What was used and dropped.
    pub report: MinimiseReport,
}

impl MinimisedRows {
    /// The study these rows are for.
    pub fn study(&self) -> &StudyDefinition {
        &self.study
    }

    /// The Arrow batch that leaves the device: `donor`, `period`, then the study's fields.
    pub fn to_record_batch(&self, pseudonym: &Pseudonym) -> Result<RecordBatch, MinimiseError> {
        let n = self.rows.len();
        let donor = pseudonym.to_hex();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![donor.as_str(); n])),
            Arc::new(StringArray::from_iter_values(
                self.rows.iter().map(|r| r.period.as_str()),
            )),
        ];
        for (i, _) in self.study.fields.iter().enumerate() {
            let cells = self.rows.iter().map(|r| r.cells.get(i));
            let col: ArrayRef = match self.rows.first().and_then(|r| r.cells.get(i)) {
                Some(Cell::Flag(_)) => Arc::new(BooleanArray::from(
                    cells
                        .map(|c| matches!(c, Some(Cell::Flag(true))))
                        .collect::<Vec<_>>(),
                )),
                Some(Cell::Category(_)) => {
                    Arc::new(StringArray::from_iter_values(cells.map(|c| match c {
                        Some(Cell::Category(s)) => s.as_str(),
                        _ => "",
                    })))
                }
                _ => Arc::new(Float64Array::from(
                    cells
                        .map(|c| match c {
                            Some(Cell::Number(v)) => *v,
                            _ => None,
                        })
                        .collect::<Vec<_>>(),
                )),
            };
            columns.push(col);
        }
        let batch = RecordBatch::try_new(self.study.arrow_schema(), columns)
            .map_err(|e| MinimiseError::Arrow(e.to_string()))?;
        self.study
            .validate_rows(&batch, Some(&donor))
            .map_err(|e| MinimiseError::Arrow(e.to_string()))?;
        Ok(batch)
    }
}

#[derive(Debug, Clone, Copy)]
struct Sum {
    total: f64,
    n: u32,
}

#[derive(Debug)]
struct PeriodAgg {
    first: Date,
    last: Date,
    sums: Vec<Option<Sum>>,
}

/// Locally kept facts about the donor, never copied into rows as such.
#[derive(Default)]
struct DonorFacts {
    birth_date: Option<Date>,
    sex: Option<Sex>,
    postcode: Option<String>,
}

impl std::fmt::Debug for DonorFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DonorFacts(<redacted>)")
    }
}

/// The streaming minimiser: feed it items with [`Minimiser::push`] (or use
/// [`minimise_paths`]), then call [`Minimiser::finish`].
#[derive(Debug)]
pub struct Minimiser {
    study: StudyDefinition,
    options: MinimiseOptions,
    /// (system, code) -> indexes of observation fields.
    observation_codes: HashMap<(CodeSystemName, String), Vec<usize>>,
    /// (system, code) -> indexes of condition fields.
    condition_codes: HashMap<(CodeSystemName, String), Vec<usize>>,
    /// The first patient key seen when none was selected: compared with later items' keys, never
    /// output.
    patient: Option<String>,
    /// Every patient key met, for the errors of [`Minimiser::finish_checked`].
    patients: PatientsMet,
    /// The selected patient was met.
    selected_found: bool,
    /// The file in which a second patient appeared when none was selected.
    second_patient_in: Option<String>,
    facts: DonorFacts,
    /// Earliest onset per condition field.
    onsets: Vec<Option<Date>>,
    periods: BTreeMap<String, PeriodAgg>,
    report: MinimiseReport,
}

fn system_name(s: &CodeSystem) -> Option<CodeSystemName> {
    match s {
        CodeSystem::Loinc => Some(CodeSystemName::Loinc),
        CodeSystem::Snomed => Some(CodeSystemName::Snomed),
        CodeSystem::RxNorm => Some(CodeSystemName::Rxnorm),
        CodeSystem::AppleHealthKit => Some(CodeSystemName::Apple),
        CodeSystem::Other(_) => None,
    }
}

/// Whole years from `birth` to `at`; `None` when `at` is before `birth`.
pub fn age_at(birth: Date, at: Date) -> Option<u8> {
    if at < birth {
        return None;
    }
    let mut years = i32::from(at.year()) - i32::from(birth.year());
    if (at.month(), at.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    Some(u8::try_from(years.max(0)).unwrap_or(u8::MAX))
}

impl Minimiser {
    /// A minimiser for one study and one donor.
    pub fn new(study: &StudyDefinition, options: MinimiseOptions) -> Self {
        let mut observation_codes: HashMap<_, Vec<usize>> = HashMap::new();
        let mut condition_codes: HashMap<_, Vec<usize>> = HashMap::new();
        for (i, f) in study.fields.iter().enumerate() {
            match &f.source {
                FieldSource::Observation { codes, .. } => {
                    for c in codes {
                        observation_codes
                            .entry((c.system, c.code.clone()))
                            .or_default()
                            .push(i);
                    }
                }
                FieldSource::Condition { codes } => {
                    for c in codes {
                        condition_codes
                            .entry((c.system, c.code.clone()))
                            .or_default()
                            .push(i);
                    }
                }
                _ => {}
            }
        }
        Self {
            patient: None,
            patients: PatientsMet::default(),
            selected_found: false,
            second_patient_in: None,
            study: study.clone(),
            options,
            observation_codes,
            condition_codes,
            facts: DonorFacts::default(),
            onsets: vec![None; study.fields.len()],
            periods: BTreeMap::new(),
            report: MinimiseReport::default(),
        }
    }

    /// Whether the item belongs to the donor. Once a second patient appears without a selection,
    /// no item does: [`Minimiser::finish_checked`] then fails, listing the patients.
    fn is_donor(&mut self, item: &SourceItem) -> bool {
        let Some(key) = item.patient() else {
            return self.second_patient_in.is_none();
        };
        self.patients.met(key);
        if let Some(selected) = &self.options.patient {
            let is_selected = selected == key;
            self.selected_found |= is_selected;
            return is_selected;
        }
        match &self.patient {
            None => {
                self.patient = Some(key.to_string());
                true
            }
            Some(p) if p == key && self.second_patient_in.is_none() => true,
            Some(p) if p == key => false,
            Some(_) => {
                if self.second_patient_in.is_none() {
                    self.second_patient_in = Some(
                        item.location()
                            .map(|l| import::escape_controls(&l.file).into_owned())
                            .unwrap_or_default(),
                    );
                }
                false
            }
        }
    }

    /// The patient selection's error, if any: several patients and none chosen, or the chosen one
    /// absent from the export.
    pub fn check_patients(&self) -> Result<(), MinimiseError> {
        if let Some(file) = &self.second_patient_in {
            return Err(MinimiseError::SeveralPatients {
                file: file.clone(),
                patients: self.patients.listed.clone(),
                more: self.patients.more(),
            });
        }
        match &self.options.patient {
            Some(selected) if !self.selected_found => Err(MinimiseError::PatientNotFound {
                patient: quoted(selected),
                found: self.patients.listed.clone(),
                more: self.patients.more(),
            }),
            _ => Ok(()),
        }
    }

    /// [`Minimiser::check_patients`], then [`Minimiser::finish`].
    pub fn finish_checked(self) -> Result<MinimisedRows, MinimiseError> {
        self.check_patients()?;
        Ok(self.finish())
    }

    /// Take one item from the importer. An item of another patient is counted, and so is every
    /// item once a second patient appeared without a selection (see [`Minimiser::finish_checked`]).
    pub fn push(&mut self, item: SourceItem) -> Result<(), MinimiseError> {
        if !self.is_donor(&item) {
            self.report.add(DropReason::OtherPatient, 1);
            return Ok(());
        }
        match item {
            SourceItem::Demographics(d) => self.demographics(d)?,
            SourceItem::Observation(o) => {
                let Some(sys) = system_name(&o.code.system) else {
                    self.report.add(
                        match o.value {
                            SourceValue::Text(_) => DropReason::FreeText,
                            _ => DropReason::ObservationNotRequested,
                        },
                        1,
                    );
                    return Ok(());
                };
                let fields = self.observation_codes.get(&(sys, o.code.code.clone()));
                let (value, unit) = match (&o.value, fields) {
                    (SourceValue::Text(_), _) => {
                        self.report.add(DropReason::FreeText, 1);
                        return Ok(());
                    }
                    (_, None) => {
                        self.report.add(DropReason::ObservationNotRequested, 1);
                        return Ok(());
                    }
                    (SourceValue::None, Some(_)) => {
                        self.report.add(DropReason::NoValue, 1);
                        return Ok(());
                    }
                    (SourceValue::Quantity { value, unit }, Some(_)) => (*value, unit.trim()),
                };
                let fields = fields.cloned().unwrap_or_default();
                let Some(date) = o.effective.map(|dt| dt.date()) else {
                    self.report.add(DropReason::NoDate, 1);
                    return Ok(());
                };
                let mut used = false;
                let mut reason = DropReason::UnknownUnit;
                for i in fields {
                    let Some(FieldSource::Observation {
                        unit: field_unit,
                        min,
                        max,
                        convert,
                        ..
                    }) = self.study.fields.get(i).map(|f| &f.source)
                    else {
                        continue;
                    };
                    let converted = if unit == field_unit.trim() {
                        Some(value)
                    } else {
                        convert
                            .iter()
                            .find(|c| c.from.trim() == unit)
                            .map(|c| value * c.factor + c.offset)
                    };
                    let Some(v) = converted else {
                        continue;
                    };
                    if !(v.is_finite() && *min <= v && v <= *max) {
                        reason = DropReason::OutOfRange;
                        continue;
                    }
                    self.add_value(date, i, v);
                    used = true;
                }
                if used {
                    self.report.observations_used += 1;
                } else {
                    self.report.add(reason, 1);
                }
            }
            SourceItem::Condition(c) => {
                let fields = system_name(&c.code.system)
                    .and_then(|s| self.condition_codes.get(&(s, c.code.code.clone())));
                match (fields, c.onset) {
                    (None, _) => self.report.add(DropReason::ConditionNotRequested, 1),
                    (Some(_), None) => self.report.add(DropReason::ConditionWithoutOnset, 1),
                    (Some(fields), Some(onset)) => {
                        for &i in fields {
                            if let Some(slot) = self.onsets.get_mut(i) {
                                *slot = Some(slot.map_or(onset, |o| o.min(onset)));
                            }
                        }
                        self.report.conditions_used += 1;
                    }
                }
            }
            SourceItem::Medication(_) => self.report.add(DropReason::Medication, 1),
        }
        Ok(())
    }

    fn demographics(&mut self, d: Demographics) -> Result<(), MinimiseError> {
        if let (Some(given), Some(found)) = (&self.options.cpr, d.cpr.as_deref()) {
            check_cpr(given, found)?;
        }
        // Identifying strings are counted, never stored.
        self.report.add(DropReason::Name, d.names.len() as u64);
        self.report
            .add(DropReason::Address, d.addresses.len() as u64);
        let ids = d.national_ids.len() as u64
            + u64::from(
                d.primary_national_id
                    .as_ref()
                    .is_some_and(|p| !d.national_ids.contains(p)),
            );
        self.report.add(DropReason::Identifier, ids);
        if self.facts.birth_date.is_none() {
            self.facts.birth_date = d.birth_date;
        }
        if self.facts.sex.is_none() {
            self.facts.sex = d.sex;
        }
        if self.facts.postcode.is_none() {
            self.facts.postcode = d.postcode;
        }
        Ok(())
    }

    fn add_value(&mut self, date: Date, field: usize, v: f64) {
        let period = self.study.period.period_of(date);
        let nfields = self.study.fields.len();
        let agg = self.periods.entry(period).or_insert_with(|| PeriodAgg {
            first: date,
            last: date,
            sums: vec![None; nfields],
        });
        agg.first = agg.first.min(date);
        agg.last = agg.last.max(date);
        if let Some(slot) = agg.sums.get_mut(field) {
            let s = slot.get_or_insert(Sum { total: 0.0, n: 0 });
            s.total += v;
            s.n += 1;
        }
    }

    /// Build the rows and the report.
    pub fn finish(mut self) -> MinimisedRows {
        if self.facts.birth_date.is_some() {
            self.report.add(DropReason::ExactBirthDate, 1);
        }
        let postcode = self
            .options
            .postcode
            .clone()
            .or_else(|| self.facts.postcode.clone());
        if postcode.is_some() {
            self.report.add(DropReason::ExactPostcode, 1);
        }
        let birth = self.facts.birth_date.or(self.options.fallback_birth_date);
        let sex = match self.facts.sex {
            Some(Sex::Female) => "female",
            Some(Sex::Male) => "male",
            Some(Sex::Other) => "other",
            Some(Sex::Unknown) | None => "unknown",
        };
        let mut rows = Vec::new();
        let periods = std::mem::take(&mut self.periods);
        'period: for (period, agg) in periods {
            let mut cells = Vec::with_capacity(self.study.fields.len());
            for (i, f) in self.study.fields.iter().enumerate() {
                let cell = match &f.source {
                    FieldSource::Observation { .. } => Cell::Number(
                        agg.sums
                            .get(i)
                            .copied()
                            .flatten()
                            .map(|s| round6(s.total / f64::from(s.n.max(1)))),
                    ),
                    FieldSource::Condition { .. } => Cell::Flag(
                        self.onsets
                            .get(i)
                            .copied()
                            .flatten()
                            .is_some_and(|o| o <= agg.last),
                    ),
                    FieldSource::AgeBand {
                        years,
                        min_age,
                        top_age,
                    } => {
                        let Some(birth) = birth else {
                            self.report.add(DropReason::RowNoBirthDate, 1);
                            continue 'period;
                        };
                        let first = age_at(birth, agg.first);
                        let last = age_at(birth, agg.last);
                        match (first, last) {
                            (Some(a), Some(b)) if a >= *min_age => {
                                match age_band_label(b, *years, *min_age, *top_age) {
                                    Some(l) => Cell::Category(l),
                                    None => {
                                        self.report.add(DropReason::RowUnderMinAge, 1);
                                        continue 'period;
                                    }
                                }
                            }
                            _ => {
                                self.report.add(DropReason::RowUnderMinAge, 1);
                                continue 'period;
                            }
                        }
                    }
                    FieldSource::Sex => Cell::Category(sex.to_string()),
                    FieldSource::Residence { level } => {
                        let label = postcode.as_deref().and_then(|p| match level {
                            RegionLevel::Region => {
                                region_of_postcode(p).map(|r| r.label().to_string())
                            }
                            RegionLevel::Municipality => {
                                municipality_of_postcode(p).map(|m| m.code.to_string())
                            }
                        });
                        match label {
                            Some(l) => Cell::Category(l),
                            None => {
                                self.report.add(DropReason::RowUnknownPostcode, 1);
                                continue 'period;
                            }
                        }
                    }
                };
                cells.push(cell);
            }
            rows.push(MinimisedRow { period, cells });
        }
        self.report.rows = rows.len() as u64;
        MinimisedRows {
            study: self.study,
            rows,
            report: self.report,
        }
    }
}

/// Compares the donor's stated CPR number with one found in the export, after the same
/// normalisation (`DDMMYY-SSSS` or ten digits). A value the export names that is not a CPR number
/// at all is not compared.
fn check_cpr(given: &datadonor_schemas::pseudonym::Cpr, found: &str) -> Result<(), MinimiseError> {
    let Ok(found) = datadonor_schemas::pseudonym::Cpr::parse(found) else {
        return Ok(());
    };
    let (a, b) = (given.digits(), found.digits());
    if a == b {
        return Ok(());
    }
    let tail = |s: &str| {
        s.get(s.len().saturating_sub(2)..)
            .unwrap_or_default()
            .to_string()
    };
    let position = a
        .chars()
        .zip(b.chars())
        .position(|(x, y)| x != y)
        .unwrap_or(0)
        + 1;
    Err(MinimiseError::CprMismatch {
        given_tail: tail(a),
        export_tail: tail(b),
        position,
    })
}

/// Import every path (FHIR, Synthea CSV, Apple Health) and minimise the items for `study`.
/// `on_progress` is called with the number of items seen so far, every 4096 items.
pub fn minimise_paths(
    paths: &[&Path],
    study: &StudyDefinition,
    options: MinimiseOptions,
    on_progress: &mut dyn FnMut(u64),
) -> Result<MinimisedRows, MinimiseError> {
    let mut m = Minimiser::new(study, options);
    let mut reports = Vec::new();
    let mut seen = 0u64;
    for path in paths {
        let mut failure: Option<MinimiseError> = None;
        let result = import::import_path(path, &mut |item| {
            seen += 1;
            if seen % 4096 == 0 {
                on_progress(seen);
            }
            m.push(item).map_err(|e| {
                let reason = e.to_string();
                failure = Some(e);
                ImportError::Rejected { reason }
            })
        });
        match (result, failure) {
            (_, Some(e)) => return Err(e),
            (Err(e), None) => return Err(e.into()),
            (Ok(r), None) => reports.push(r),
        }
    }
    on_progress(seen);
    let mut out = m.finish_checked()?;
    for r in &reports {
        out.report.add_import_report(r);
    }
    Ok(out)
}
